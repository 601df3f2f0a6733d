//! The guest device-tree node of the emulated PCI host (`vdev::pci`), for VMs whose
//! shared-memory mappings say `elvisor,pci`: a `pci-host-ecam-generic` bridge (Linux
//! Documentation/devicetree/bindings/pci/host-generic-pci.yaml) with bus 0 only, a memory
//! window for the BAR0 register pages and one for each function's region (BAR2, identity
//! mapped: PCI address = CPU address), INTA of device k routed to the mapping's doorbell SPI
//! (level), and `linux,pci-probe-only` in /chosen so Linux keeps the BARs where they are
//! instead of reassigning them (the BARs do not move: their addresses are where stage 2 maps
//! the region).
#![forbid(unsafe_code)]

use alloc::format;
use alloc::vec::Vec;

use elvisor_abi::layout as abi;
use vm_fdt::FdtWriter;

use super::{FdtGenError, GIC_PHANDLE, GIC_SPI, GuestShmem, IRQ_TYPE_LEVEL_HIGH, check_region};

/// `ranges` space codes (PCI bus binding, IEEE 1275): 32-bit and 64-bit memory space.
const SPACE_MEM32: u32 = 0x0200_0000;
const SPACE_MEM64: u32 = 0x0300_0000;

/// The mappings shown as PCI functions, with their device numbers.
fn functions(shmem: &[GuestShmem]) -> impl Iterator<Item = (u32, &GuestShmem)> {
    shmem.iter().filter_map(|s| s.pci_device.map(|d| (d, s)))
}

/// `/chosen/linux,pci-probe-only = <1>` when the VM has a PCI host.
pub(super) fn write_chosen(w: &mut FdtWriter, shmem: &[GuestShmem]) -> Result<(), FdtGenError> {
    if functions(shmem).next().is_some() {
        w.property_u32("linux,pci-probe-only", 1)?;
    }
    Ok(())
}

/// One `ranges` entry: PCI address = CPU address.
fn range(out: &mut Vec<u32>, base: u64, size: u64) {
    let space = if base + size <= 1 << 32 {
        SPACE_MEM32
    } else {
        SPACE_MEM64
    };
    let (hi, lo) = ((base >> 32) as u32, base as u32);
    out.extend_from_slice(&[space, hi, lo, hi, lo, (size >> 32) as u32, size as u32]);
}

/// The `pcie@<ecam>` node, if any mapping is a PCI function.
pub(super) fn write_host(
    w: &mut FdtWriter,
    shmem: &[GuestShmem],
    gic: bool,
) -> Result<(), FdtGenError> {
    if functions(shmem).next().is_none() {
        return Ok(());
    }
    let node = w.begin_node(&format!("pcie@{:x}", abi::PCI_ECAM_BASE))?;
    w.property_string("compatible", "pci-host-ecam-generic")?;
    w.property_string("device_type", "pci")?;
    w.property_array_u64("reg", &[abi::PCI_ECAM_BASE, abi::PCI_ECAM_SIZE])?;
    w.property_array_u32("bus-range", &[0, 0])?;
    w.property_u32("#address-cells", 3)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("dma-coherent")?;
    let mut ranges = Vec::new();
    range(
        &mut ranges,
        abi::PCI_BAR0_BASE,
        abi::PCI_BAR0_SIZE * abi::DOORBELL_COUNT,
    );
    for (_, s) in functions(shmem) {
        check_region("shared memory", s.base, s.size_bytes)?;
        // The configuration makes it a power of two, aligned: exactly BAR2.
        range(&mut ranges, s.base, s.size_bytes);
    }
    w.property_array_u32("ranges", &ranges)?;
    if gic {
        // Child: (phys.hi with the device number, mid, lo, pin); parent: the GIC's two
        // address cells, then its three interrupt cells.
        w.property_u32("#interrupt-cells", 1)?;
        w.property_array_u32("interrupt-map-mask", &[0x1f << 11, 0, 0, 7])?;
        let mut map = Vec::new();
        for (dev, s) in functions(shmem) {
            map.extend_from_slice(&[
                dev << 11,
                0,
                0,
                1,
                GIC_PHANDLE,
                0,
                0,
                GIC_SPI,
                s.intid.saturating_sub(32),
                IRQ_TYPE_LEVEL_HIGH,
            ]);
        }
        w.property_array_u32("interrupt-map", &map)?;
    }
    w.end_node(node)?;
    Ok(())
}
