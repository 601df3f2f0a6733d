//! What the device tree tells a guest: its UART, RAM, PSCI conduit and reset count.
//!
//! elvisor generates each guest's device tree (`/chosen` with `stdout-path` and
//! `elvisor,reset-count`, `/memory`, `/cpus`, `/psci`). Under QEMU `-kernel` without a
//! hypervisor the same code reads QEMU's tree, which has no reset count. Anything missing falls
//! back to the QEMU `virt` layout, so a guest always gets a console.

use core::ops::Range;

use fdt::Fdt;
use fdt::node::FdtNode;

use crate::smccc::Conduit;

/// The PL011 of QEMU `virt` (and of elvisor's guests today), used when the tree names none.
pub const DEFAULT_UART_BASE: usize = elvisor_abi::layout::UART_BASE as usize;

/// `/chosen` property: how many times this VM has been reset with PSCI SYSTEM_RESET.
pub const RESET_COUNT_PROPERTY: &str = elvisor_abi::dt::RESET_COUNT_PROPERTY;

/// The boot environment, discovered once from the device tree in x0.
pub struct BootInfo {
    /// x0 at entry: the IPA the loader said the device tree is at.
    pub dtb: usize,
    /// The parsed device tree, if x0 pointed at a valid one.
    pub fdt: Option<Fdt<'static>>,
    /// Base of the console PL011.
    pub uart_base: usize,
    /// Whether `uart_base` came from the tree (`stdout-path` or an `arm,pl011` node).
    pub uart_from_dtb: bool,
    /// `/chosen/elvisor,reset-count`: `None` if absent (not running under elvisor).
    pub reset_count: Option<u32>,
    /// The first `/memory` region.
    pub ram: Option<Range<usize>>,
    /// `/psci` `method`: the conduit for PSCI calls (HVC unless the tree says "smc").
    pub psci_conduit: Conduit,
}

impl BootInfo {
    /// Reads everything the runtime needs from the tree at `dtb` (x0 at entry).
    pub(crate) fn discover(dtb: usize) -> Self {
        let fdt = crate::arch::boot::dtb_bytes(dtb).and_then(|bytes| Fdt::new(bytes).ok());
        let uart = fdt.as_ref().and_then(find_uart);
        Self {
            dtb,
            uart_base: uart.unwrap_or(DEFAULT_UART_BASE),
            uart_from_dtb: uart.is_some(),
            reset_count: fdt.as_ref().and_then(reset_count),
            ram: fdt.as_ref().and_then(first_memory_region),
            psci_conduit: fdt.as_ref().and_then(psci_conduit).unwrap_or(Conduit::Hvc),
            fdt,
        }
    }

    /// `/chosen/bootargs`, if the tree has it.
    pub fn bootargs(&self) -> Option<&'static str> {
        let fdt = self.fdt.as_ref()?;
        find_node(fdt, "/chosen")?.property("bootargs")?.as_str()
    }

    /// The value of `key=value` in `/chosen/bootargs` (the last one if repeated); `Some("")`
    /// for a bare `key`.
    pub fn bootarg(&self, key: &str) -> Option<&'static str> {
        self.bootargs()?
            .split_ascii_whitespace()
            .filter_map(|word| match word.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if word == key => Some(""),
                _ => None,
            })
            .next_back()
    }

    /// `key=value` from the bootargs parsed as a `T` (a number, say); `None` if the key is
    /// missing or its value does not parse.
    pub fn bootarg_parse<T: core::str::FromStr>(&self, key: &str) -> Option<T> {
        self.bootarg(key)?.parse().ok()
    }

    /// The device tree's bytes as an address range, if there is a valid tree.
    pub fn dtb_range(&self) -> Option<Range<usize>> {
        let fdt = self.fdt.as_ref()?;
        Some(self.dtb..self.dtb + fdt.total_size())
    }
}

/// The node at `path` (absolute, or an alias name), found by walking `children()` from the root.
///
/// `Fdt::find_node` of fdt 0.1.5 stops at FDT_NOP tokens between sibling nodes and misses every
/// node after them. QEMU leaves such NOPs when it edits a `-dtb` tree (it NOPs out the
/// `/memory` node and adds its own), so `/chosen`, `/cpus` and the UART become invisible.
/// Child iteration skips NOPs correctly.
pub fn find_node<'b>(fdt: &'b Fdt<'static>, path: &str) -> Option<FdtNode<'b, 'static>> {
    let path = match path.strip_prefix('/') {
        Some(_) => path,
        None => find_node(fdt, "/aliases")?.property(path)?.as_str()?,
    };
    let mut node = fdt.find_node("/")?;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        node = node.children().find(|child| {
            child.name == component
                || (!component.contains('@') && child.name.split('@').next() == Some(component))
        })?;
    }
    Some(node)
}

/// `/chosen/stdout-path` (with any `:options` suffix dropped, aliases resolved), else the first
/// `arm,pl011` node: its first `reg` address.
fn find_uart(fdt: &Fdt<'static>) -> Option<usize> {
    let from_stdout = find_node(fdt, "/chosen")
        .and_then(|chosen| chosen.property("stdout-path"))
        .and_then(|prop| prop.as_str())
        .and_then(|path| find_node(fdt, path.split(':').next().unwrap_or(path)));
    let node = from_stdout.or_else(|| fdt.find_compatible(&["arm,pl011"]))?;
    let base = node.reg()?.next()?.starting_address as usize;
    (base != 0).then_some(base)
}

fn reset_count(fdt: &Fdt<'static>) -> Option<u32> {
    let prop = find_node(fdt, "/chosen")?.property(RESET_COUNT_PROPERTY)?;
    let bytes: [u8; 4] = prop.value.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn first_memory_region(fdt: &Fdt<'static>) -> Option<Range<usize>> {
    let region = find_node(fdt, "/memory")?.reg()?.next()?;
    let start = region.starting_address as usize;
    Some(start..start.checked_add(region.size?)?)
}

fn psci_conduit(fdt: &Fdt<'static>) -> Option<Conduit> {
    match find_node(fdt, "/psci")?.property("method")?.as_str()? {
        "hvc" => Some(Conduit::Hvc),
        "smc" => Some(Conduit::Smc),
        _ => None,
    }
}
