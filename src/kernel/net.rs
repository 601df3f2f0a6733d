//! A VM's NICs at run time: each `elvisor,virtio-net` node as a virtio-net device
//! (`vdev::virtio::net`) in the virtio-mmio slot after the VM's disks, plugged into the
//! virtual switch it names (`vdev::switch`), created when the first VM that names it is built.
//!
//! A frame goes from the sender's exit straight into the receiver's RAM: the receiver's port
//! has its own accessor to that RAM (`GuestRamAccess`, which backs blocks on demand), and the
//! receiver's interrupt is raised through [`super::shmem::set_vm_line`], the same path a
//! doorbell takes, which kicks the receiver's CPU. Lock order: sender's bus -> switch FDB
//! (released) ; sender's bus -> receiver's port -> both VMs' RAM backing (released) ->
//! receiver's vGIC (docs/ARCHITECTURE.md, "Globals, locks and their order").

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use log::info;

use super::VmError;
use crate::arch::aarch64::sync::Mutex;
use crate::mm::{PhysAddr, PhysRange};
use crate::vdev::MmioBus;
use crate::vdev::switch::Switch;
use crate::vdev::virtio::net::{IrqLine, Net};
use crate::vdev::virtio::{self, VirtioMmio};
use crate::vm::VmId;
use crate::vm::config::{Nic, Passthrough, VmConfig, mac_string};

/// Every switch, by name (filled while VMs are built; read by the shell's `info`).
static SWITCHES: Mutex<Vec<Arc<Switch>>> = Mutex::new(Vec::new());

fn switch(name: &str) -> Arc<Switch> {
    let mut all = SWITCHES.lock();
    if let Some(s) = all.iter().find(|s| s.name() == name) {
        return s.clone();
    }
    let s = Arc::new(Switch::new(String::from(name)));
    all.push(s.clone());
    s
}

/// A NIC's interrupt: SPI `intid` of VM `vm`.
struct VmLine {
    vm: VmId,
    intid: u32,
}

impl IrqLine for VmLine {
    fn set(&self, level: bool) {
        super::shmem::set_vm_line(self.vm, self.intid, level);
    }
}

/// Puts `nic` in virtio-mmio slot `slot` of VM `id`'s bus and plugs it into its switch.
/// Returns the guest device-tree node of the slot.
pub(super) fn add_nic(
    id: VmId,
    cfg: &VmConfig,
    nic: &Nic,
    slot: usize,
    ram: &'static super::ram::VmRam,
    bus: &mut MmioBus,
) -> Result<Passthrough, VmError> {
    let base = virtio::slot_base(slot);
    let intid = virtio::slot_intid(slot);
    let bad = |property: &'static str, problem: String| VmError {
        node: nic.node_path.clone(),
        property,
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
            problem: format!("INTID {intid} belongs to virtio-mmio slot {slot}"),
        });
    }
    let sw = switch(&nic.switch);
    let line = Arc::new(VmLine { vm: id, intid });
    let mut net = Net::new(nic.mac, ram.guest_access(), line);
    let port = sw.attach(nic.mac, net.sink()).ok_or_else(|| {
        bad(
            "elvisor,switch",
            format!("switch \"{}\" has no free port", nic.switch),
        )
    })?;
    net.plug(sw, port);
    let mut dev = VirtioMmio::new(ram.guest_access(), net);
    dev.set_label(format!("{} virtio-net@{:#x}", cfg.name, base.0));
    // The device drives its line itself (from other CPUs too): no bus edge reports.
    bus.add(base, Box::new(dev)).map_err(|_| VmError {
        node: cfg.node_path.clone(),
        property: "compatible",
        problem: format!("virtio-mmio slot {slot} overlaps another device window"),
    })?;
    info!(
        "{}: virtio-net in slot {slot} at {:#x} (SPI {}): {}, switch \"{}\" port {port}",
        cfg.name,
        base.0,
        intid - 32,
        mac_string(&nic.mac),
        nic.switch
    );
    Ok(Passthrough {
        node_path: nic.node_path.clone(),
        host_path: format!("/virtio_mmio@{:x}", base.0),
        compatible: alloc::vec![String::from("virtio,mmio")],
        regs: alloc::vec![PhysRange::new(PhysAddr(base.0), virtio::SLOT_SIZE)],
        irqs: alloc::vec![(intid, true)],
    })
}

/// The NICs of a VM configured as `cfg`, with their switch ports' counters, for the shell's
/// `info` (the port is found by the NIC's MAC, unique on its switch).
pub(super) fn nic_snaps(cfg: &VmConfig) -> Vec<crate::shell::NicSnap> {
    let all = SWITCHES.lock();
    cfg.nics
        .iter()
        .map(|nic| {
            let found = all.iter().find(|s| s.name() == nic.switch).and_then(|sw| {
                let n = sw.ports().position(|p| p.mac == nic.mac)?;
                Some((n, sw.port(n)?.stats.counts()))
            });
            let c = found.map(|(_, c)| c).unwrap_or_default();
            crate::shell::NicSnap {
                mac: mac_string(&nic.mac),
                switch: nic.switch.clone(),
                port: found.map(|(n, _)| n),
                tx_frames: c.tx_frames,
                tx_malformed: c.tx_malformed,
                tx_oversize: c.tx_oversize,
                rx_frames: c.rx_frames,
                rx_no_buffer: c.rx_no_buffer,
                rx_not_ready: c.rx_not_ready,
                rx_too_small: c.rx_too_small,
            }
        })
        .collect()
}
