//! The reader against real blobs, with the `fdt` crate as an independent oracle.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::ControlFlow;

use super::*;
use crate::mm::{PhysAddr, PhysRange};

static GICV3: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-gicv3.dtb");
static GICV2: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-gicv2.dtb");
static GICV3_VM: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-gicv3-vm.dtb");
static RPI4B: &[u8] = include_bytes!("../../tests/fixtures/rpi4b.dtb");
static RPI4B_QEMU: &[u8] = include_bytes!("../../tests/fixtures/rpi4b-qemu.dtb");

fn range(base: u64, size: u64) -> PhysRange {
    PhysRange::new(PhysAddr(base), size)
}

#[test]
fn total_size() {
    assert_eq!(fdt_total_size(GICV3), Some(0x10_0000));
    assert_eq!(fdt_total_size(&RPI4B_QEMU[..8]), Some(74772));
    assert_eq!(fdt_total_size(&RPI4B[..7]), None);
    assert_eq!(fdt_total_size(&[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 8]), None);
    assert_eq!(fdt_total_size(&[0; 64]), None);
}

/// A node's name and its properties' names and values.
type NodeDump = (String, Vec<(String, Vec<u8>)>);

/// The `fdt` crate, as an independent reader, sees the same nodes and properties as ours
/// on the blobs it can read (those without FDT_NOP tokens).
#[test]
fn reader_agrees_with_fdt_crate() {
    for blob in [GICV3, GICV2, GICV3_VM, RPI4B] {
        let theirs = fdt::Fdt::new(blob).unwrap();
        let dtb = Dtb::new(blob).unwrap();
        let mut lin = Lineage::root(&dtb).unwrap();
        let mut ours = Vec::new();
        let _ = visit::<()>(&mut lin, &mut |l| {
            let props: Vec<(String, Vec<u8>)> = l
                .node()
                .properties()
                .map(|p| (p.name.to_string(), p.value.to_vec()))
                .collect();
            let name = if l.last() == 0 { "/" } else { l.node().name };
            ours.push((name.to_string(), props));
            ControlFlow::Continue(())
        });
        let theirs: Vec<NodeDump> = theirs
            .all_nodes()
            .map(|n| {
                let props = n
                    .properties()
                    .map(|p| (p.name.to_string(), p.value.to_vec()))
                    .collect();
                (n.name.to_string(), props)
            })
            .collect();
        assert_eq!(ours, theirs);
        let rsv: Vec<PhysRange> = fdt::Fdt::new(blob)
            .unwrap()
            .memory_reservations()
            .map(|r| range(r.address() as u64, r.size() as u64))
            .collect();
        assert_eq!(memreserve(dtb.blob).unwrap(), rsv);
    }
}
