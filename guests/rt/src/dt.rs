//! Device-tree lookups beyond what [`crate::boot`] needs: nodes by `compatible`, CPU count,
//! `reg` ranges and three-cell `interrupts` specifiers.
//!
//! Like [`crate::boot::find_node`], everything here walks the tree with `children()`, never
//! with `Fdt::find_compatible`/`all_nodes`, which share fdt 0.1.5's trouble with FDT_NOP
//! tokens between siblings in trees that QEMU or a hypervisor edited in place.

use core::ops::Range;

use fdt::Fdt;
use fdt::node::FdtNode;

use crate::boot::find_node;

/// Deepest nesting searched: device trees are shallow; the bound keeps the recursion finite.
const MAX_DEPTH: usize = 8;

/// The first node, depth-first from the root, whose `compatible` list contains one of `with`.
pub fn find_compatible<'b>(fdt: &'b Fdt<'static>, with: &[&str]) -> Option<FdtNode<'b, 'static>> {
    search(find_node(fdt, "/")?, with, 0)
}

fn search<'b>(
    node: FdtNode<'b, 'static>,
    with: &[&str],
    depth: usize,
) -> Option<FdtNode<'b, 'static>> {
    if is_compatible(node, with) {
        return Some(node);
    }
    if depth >= MAX_DEPTH {
        return None;
    }
    node.children()
        .find_map(|child| search(child, with, depth + 1))
}

/// Whether `node`'s `compatible` list contains one of `with`.
pub fn is_compatible(node: FdtNode<'_, 'static>, with: &[&str]) -> bool {
    node.compatible()
        .is_some_and(|compatible| compatible.all().any(|c| with.contains(&c)))
}

/// The number of `cpu` nodes under `/cpus` (`device_type = "cpu"`, or named `cpu@...`).
pub fn cpu_count(fdt: &Fdt<'static>) -> usize {
    let Some(cpus) = find_node(fdt, "/cpus") else {
        return 0;
    };
    cpus.children()
        .filter(|cpu| {
            cpu.property("device_type").and_then(|p| p.as_str()) == Some("cpu")
                || cpu.name.split('@').next() == Some("cpu")
        })
        .count()
}

/// The `index`th `reg` entry of `node` as an address range (the size is required).
pub fn reg_range(node: FdtNode<'_, 'static>, index: usize) -> Option<Range<usize>> {
    let region = node.reg()?.nth(index)?;
    let start = region.starting_address as usize;
    Some(start..start.checked_add(region.size?)?)
}

/// A 32-bit big-endian cell property of `node`, if present and exactly one cell.
pub fn u32_property(node: FdtNode<'_, 'static>, name: &str) -> Option<u32> {
    let bytes: [u8; 4] = node.property(name)?.value.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// One GIC `interrupts` specifier (Linux `arm,gic` binding): `<type number flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicInterrupt {
    /// 0 = SPI, 1 = PPI.
    pub kind: u32,
    /// SPI number (INTID - 32) or PPI number (INTID - 16).
    pub number: u32,
    /// Trigger type in bits `[3:0]` (1 edge rising, 4 level high), GICv2 CPU mask in `[15:8]`.
    pub flags: u32,
}

impl GicInterrupt {
    /// The GIC INTID: PPIs start at 16, SPIs at 32. `None` for an unknown type.
    pub fn intid(self) -> Option<u32> {
        match self.kind {
            0 => self.number.checked_add(32),
            1 => self.number.checked_add(16),
            _ => None,
        }
    }
}

/// The `index`th three-cell specifier of `node`'s `interrupts` property.
///
/// (`FdtNode::interrupts` of fdt 0.1.5 only understands one- and two-cell specifiers.)
pub fn gic_interrupt(node: FdtNode<'_, 'static>, index: usize) -> Option<GicInterrupt> {
    let value = node.property("interrupts")?.value;
    let cell = |i: usize| -> Option<u32> {
        let bytes: [u8; 4] = value.get(4 * i..4 * i + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    };
    Some(GicInterrupt {
        kind: cell(3 * index)?,
        number: cell(3 * index + 1)?,
        flags: cell(3 * index + 2)?,
    })
}
