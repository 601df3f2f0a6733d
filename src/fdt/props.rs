//! Property decoding: strings, cells, `reg` with `ranges` translation, GIC interrupt
//! specifiers. All bounds-checked; problems come back as a [`Fault`] naming the level.

use super::lineage::{Fault, Lineage};
use super::reader::{Node, be32};

pub(crate) fn prop<'a>(node: Node<'a>, name: &str) -> Option<&'a [u8]> {
    node.property(name).map(|p| p.value)
}

/// A property holding one NUL-terminated UTF-8 string.
pub(crate) fn as_string(value: &[u8]) -> Option<&str> {
    let (&last, text) = value.split_last()?;
    if last != 0 || text.contains(&0) {
        return None;
    }
    core::str::from_utf8(text).ok()
}

pub(crate) fn str_prop<'a>(node: Node<'a>, name: &str) -> Result<Option<&'a str>, &'static str> {
    match prop(node, name) {
        None => Ok(None),
        Some(value) => as_string(value)
            .map(Some)
            .ok_or("not a NUL-terminated UTF-8 string"),
    }
}

/// The entries of a string-list property (empty when malformed).
pub(crate) fn string_list(value: &[u8]) -> impl Iterator<Item = &str> {
    let body = match value.split_last() {
        Some((0, body)) => body,
        _ => &[],
    };
    body.split(|&b| b == 0)
        .filter(move |_| !body.is_empty())
        .filter_map(|s| core::str::from_utf8(s).ok())
}

pub(crate) fn compatible_with(node: Node<'_>, any_of: &[&str]) -> bool {
    prop(node, "compatible").is_some_and(|v| string_list(v).any(|c| any_of.contains(&c)))
}

/// `status` absent, "okay" or "ok" (Devicetree Specification v0.4, 2.3.4).
pub(crate) fn is_enabled(node: Node<'_>) -> bool {
    match prop(node, "status") {
        None => true,
        Some(value) => matches!(as_string(value), Some("okay" | "ok")),
    }
}

pub(crate) fn u32_prop(node: Node<'_>, name: &str) -> Result<Option<u32>, &'static str> {
    match prop(node, name) {
        None => Ok(None),
        Some(value) if value.len() == 4 => Ok(be32(value, 0)),
        Some(_) => Err("must be exactly one 32-bit cell"),
    }
}

/// `count` cells starting at cell `first`, as one number; `None` when out of bounds or wider
/// than 64 bits (leading zero cells are fine, so a 3-cell value with a zero top cell reads).
pub(crate) fn cells_value(value: &[u8], first: usize, count: usize) -> Option<u64> {
    let mut acc: u64 = 0;
    for i in 0..count {
        let cell = be32(value, first.checked_add(i)?.checked_mul(4)?)?;
        if acc >> 32 != 0 {
            return None;
        }
        acc = (acc << 32) | u64::from(cell);
    }
    Some(acc)
}

/// `#address-cells` or `#size-cells` of the node at `level` (the cells its children use).
pub(crate) fn cells_of(
    lin: &Lineage<'_>,
    level: usize,
    name: &'static str,
) -> Result<usize, Fault> {
    // Devicetree Specification v0.4, 2.3.5: absent means 2 address cells and 1 size cell.
    let default = if name == "#address-cells" { 2 } else { 1 };
    match u32_prop(lin.level(level), name) {
        Ok(None) => Ok(default),
        Ok(Some(n)) if n <= 4 => Ok(n as usize),
        Ok(Some(_)) => Err(Fault {
            level,
            property: name,
            problem: "more than 4 cells",
        }),
        Err(problem) => Err(Fault {
            level,
            property: name,
            problem,
        }),
    }
}

/// Translates `addr` (an address on the bus of the node at `bus`, i.e. in the address space of
/// its children) into a CPU physical address through the `ranges` of `bus` and every ancestor.
pub(crate) fn translate(lin: &Lineage<'_>, bus: usize, addr: u64, size: u64) -> Result<u64, Fault> {
    let mut bus = bus;
    let mut addr = addr;
    while bus > 0 {
        let fault = |problem| Fault {
            level: bus,
            property: "ranges",
            problem,
        };
        let ranges = prop(lin.level(bus), "ranges").ok_or(fault(
            "missing, so addresses below this node cannot be translated",
        ))?;
        if !ranges.is_empty() {
            let child_cells = cells_of(lin, bus, "#address-cells")?;
            let size_cells = cells_of(lin, bus, "#size-cells")?;
            let parent_cells = cells_of(lin, bus - 1, "#address-cells")?;
            let entry_cells = child_cells + parent_cells + size_cells;
            if entry_cells == 0 || !ranges.len().is_multiple_of(entry_cells * 4) {
                return Err(fault("length is not a whole number of entries"));
            }
            let mut translated = None;
            for entry in 0..ranges.len() / (entry_cells * 4) {
                let first = entry * entry_cells;
                let (Some(child), Some(parent), Some(len)) = (
                    cells_value(ranges, first, child_cells),
                    cells_value(ranges, first + child_cells, parent_cells),
                    cells_value(ranges, first + child_cells + parent_cells, size_cells),
                ) else {
                    // An entry we cannot represent (e.g. PCI space codes) maps nothing we use.
                    continue;
                };
                let Some(offset) = addr.checked_sub(child) else {
                    continue;
                };
                if offset < len && size <= len - offset {
                    translated = parent.checked_add(offset);
                    break;
                }
            }
            addr = translated.ok_or(fault("no entry covers the address of a node below"))?;
        }
        bus -= 1;
    }
    Ok(addr)
}

/// The node's `reg` value, its number of entries and the parent's address and size cells.
pub(crate) type RegLayout<'a> = (&'a [u8], usize, usize, usize);

pub(crate) fn reg_layout<'a>(lin: &Lineage<'a>) -> Result<Option<RegLayout<'a>>, Fault> {
    let level = lin.last();
    let Some(value) = prop(lin.node(), "reg") else {
        return Ok(None);
    };
    let Some(bus) = level.checked_sub(1) else {
        return Err(Fault {
            level,
            property: "reg",
            problem: "the root node cannot have reg",
        });
    };
    let address_cells = cells_of(lin, bus, "#address-cells")?;
    let size_cells = cells_of(lin, bus, "#size-cells")?;
    let entry_bytes = (address_cells + size_cells) * 4;
    if address_cells == 0 || !value.len().is_multiple_of(entry_bytes) {
        return Err(Fault {
            level,
            property: "reg",
            problem: "length is not a whole number of (address, size) entries",
        });
    }
    Ok(Some((
        value,
        value.len() / entry_bytes,
        address_cells,
        size_cells,
    )))
}

/// Entry `index` of the node's `reg` as a translated (CPU physical base, size) pair; `None` when
/// the node has no `reg` or fewer entries.
pub(crate) fn reg(lin: &Lineage<'_>, index: usize) -> Result<Option<(u64, u64)>, Fault> {
    let Some((value, count, address_cells, size_cells)) = reg_layout(lin)? else {
        return Ok(None);
    };
    if index >= count {
        return Ok(None);
    }
    let fault = |problem| Fault {
        level: lin.last(),
        property: "reg",
        problem,
    };
    let first = index * (address_cells + size_cells);
    let addr =
        cells_value(value, first, address_cells).ok_or(fault("address wider than 64 bits"))?;
    let size = cells_value(value, first + address_cells, size_cells)
        .ok_or(fault("size wider than 64 bits"))?;
    if addr.checked_add(size).is_none() {
        return Err(fault("range runs past the top of the address space"));
    }
    let base = translate(lin, lin.last() - 1, addr, size)?;
    Ok(Some((base, size)))
}

pub(crate) fn reg_count(lin: &Lineage<'_>) -> Result<usize, Fault> {
    Ok(reg_layout(lin)?.map_or(0, |(_, count, _, _)| count))
}

/// Decodes entry `index` of a 3-cell GIC interrupt specifier list (GIC DT binding:
/// type 0 = SPI n -> INTID 32 + n, type 1 = PPI n -> INTID 16 + n).
pub(crate) fn gic_intid(spec: &[u8], index: usize) -> Result<Option<u32>, &'static str> {
    if !spec.len().is_multiple_of(12) {
        return Err("length is not a whole number of 3-cell specifiers");
    }
    let (Some(kind), Some(number)) = (be32(spec, index * 12), be32(spec, index * 12 + 4)) else {
        return Ok(None);
    };
    match kind {
        0 if number < 988 => Ok(Some(32 + number)),
        1 if number < 16 => Ok(Some(16 + number)),
        0 | 1 => Err("interrupt number out of range"),
        _ => Err("unsupported interrupt type (only SPI and PPI)"),
    }
}

/// An interrupt controller node (the GIC, as found by `platform::gic`), for
/// interrupt-parent checks.
pub(crate) struct InterruptParent<'a> {
    pub(crate) phandle: Option<u32>,
    pub(crate) lineage: Lineage<'a>,
}

impl InterruptParent<'_> {
    /// True when interrupts of the node at `lin` go to this GIC: the nearest `interrupt-parent`
    /// (on the node or an ancestor) is the GIC's phandle, or, without one, the tree parent is
    /// the GIC itself.
    pub(crate) fn is_parent_of(&self, lin: &Lineage<'_>) -> bool {
        for level in (0..=lin.last()).rev() {
            if let Ok(Some(phandle)) = u32_prop(lin.level(level), "interrupt-parent") {
                return self.phandle == Some(phandle);
            }
        }
        lin.last() >= 1
            && lin.last() - 1 == self.lineage.last()
            && lin.level(lin.last() - 1).name == self.lineage.node().name
    }
}
