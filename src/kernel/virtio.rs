//! A VM's virtio-mmio devices: each `disk` module as a virtio-blk device in slot 0, 1, ... of
//! QEMU virt's virtio-mmio window, then each NIC as a virtio-net device (`super::net`), and an
//! empty transport in every other slot (issue 14:
//! probing the window never faults). The devices run in the exit handler (`vdev::virtio`);
//! their interrupt outputs go to SPI 16 + slot through the bus's edge reports.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::info;

use crate::arch::aarch64::ram;
use crate::mm::{PhysAddr, PhysRange};
use crate::platform::Platform;
use crate::vdev::MmioBus;
use crate::vdev::virtio::blk::Blk;
use crate::vdev::virtio::empty::EmptySlot;
use crate::vdev::virtio::{self, VirtioMmio};
use crate::vm::config::{Passthrough, VmConfig, disk_id_bytes};

use super::VmError;

/// Puts the VM's virtio-mmio slots on its bus. Returns the guest device-tree nodes of the
/// slots that hold a device (`virtio,mmio`, its window and its level-sensitive SPI), in the
/// form the guest DT generator writes for device nodes.
pub(super) fn add_devices(
    id: crate::vm::VmId,
    cfg: &VmConfig,
    plat: &Platform,
    ram: &'static super::ram::VmRam,
    bus: &mut MmioBus,
) -> Result<Vec<Passthrough>, VmError> {
    let mut nodes = Vec::new();
    for n in 0..virtio::SLOT_COUNT {
        let base = virtio::slot_base(n);
        let intid = virtio::slot_intid(n);
        let placed = match cfg.disks.get(n) {
            Some(d) => {
                let bad = |problem: String| VmError {
                    node: d.node_path.clone(),
                    property: "reg",
                    problem,
                };
                if let Some(pt) = cfg
                    .passthrough
                    .iter()
                    .find(|p| p.irqs.iter().any(|&(i, _)| i == intid))
                {
                    return Err(VmError {
                        node: pt.node_path.clone(),
                        property: "elvisor,host-path",
                        problem: format!("INTID {intid} belongs to virtio-mmio slot {n}"),
                    });
                }
                let bytes = ram::take_disk(d.range, &plat.ram, &plat.reserved)
                    .ok_or_else(|| bad(format!("{} is not a reserved disk module", d.range)))?;
                let sectors = bytes.len() / 512;
                let blk = Blk::new(bytes, d.read_only, disk_id_bytes(d));
                let mut dev = VirtioMmio::new(ram.guest_access(), blk);
                dev.set_label(format!("{} virtio-blk@{:#x}", cfg.name, base.0));
                info!(
                    "{}: virtio-blk in slot {n} at {:#x} (SPI {}): {} sectors{}, disk at host {:#x}",
                    cfg.name,
                    base.0,
                    intid - 32,
                    sectors,
                    if d.read_only { ", read-only" } else { "" },
                    d.range.base.0
                );
                nodes.push(Passthrough {
                    node_path: d.node_path.clone(),
                    host_path: format!("/virtio_mmio@{:x}", base.0),
                    compatible: alloc::vec![String::from("virtio,mmio")],
                    regs: alloc::vec![PhysRange::new(PhysAddr(base.0), virtio::SLOT_SIZE)],
                    irqs: alloc::vec![(intid, true)],
                });
                bus.add_with_irq(base, Box::new(dev), Some(intid))
            }
            None => match n.checked_sub(cfg.disks.len()).and_then(|k| cfg.nics.get(k)) {
                Some(nic) => {
                    nodes.push(super::net::add_nic(id, cfg, nic, n, ram, bus)?);
                    Ok(())
                }
                None => bus.add(base, Box::new(EmptySlot)),
            },
        };
        placed.map_err(|_| VmError {
            node: cfg.node_path.clone(),
            property: "compatible",
            problem: format!("virtio-mmio slot {n} overlaps another device window"),
        })?;
    }
    Ok(nodes)
}
