//! Shared memory between VMs at run time: each `elvisor,shmem` region's frames, taken from the
//! frame allocator once at boot (zeroed once, never freed: a VM reset keeps what is in them),
//! mapped into the stage 2 of every VM that maps the region, and each mapping's doorbell page
//! (`vdev::doorbell`) on that VM's bus, whose interrupt lines go to the members' vGICs.
//!
//! Locks: a ring runs in the ringing vCPU's exit, with its VM's bus locked, then takes the
//! region's doorbell group and then the target VM's vGIC (bus -> group -> vGIC, the order every
//! other device takes bus -> vGIC in); nothing takes a bus or a group with a vGIC held.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use log::info;
use spin::Once;

use super::sched::CPU_MPIDR;
use super::{FRAMES, VmError};
use crate::arch::aarch64::gic;
use crate::arch::aarch64::ram::RamRegion;
use crate::arch::aarch64::sync::Mutex;
use crate::mm::GuestPhysAddr;
use crate::mm::pagetable::S2Kind;
use crate::platform::Platform;
use crate::vdev::MmioBus;
use crate::vdev::doorbell::{Doorbell, DoorbellGroup, DoorbellLines, SharedGroup};
use crate::vdev::pci::{Ivshmem, PciHost};
use crate::vdev::vgic::KickSet;
use crate::vm::config::VmConfig;
use crate::vm::fdt::GuestShmem;
use crate::vm::{VcpuId, VmId, layout};

/// One region at run time.
struct Region {
    /// Its frames, for the life of the hypervisor.
    ram: RamRegion,
    group: SharedGroup,
    lines: Arc<Lines>,
}

/// The doorbell lines of a region's members: (VM, INTID) each.
struct Lines {
    members: Vec<(VmId, u32)>,
}

impl DoorbellLines for Lines {
    fn set_line(&self, member: usize, level: bool) {
        if let Some(&(id, intid)) = self.members.get(member) {
            set_vm_line(id, intid, level);
        }
    }
}

/// Drives the level of SPI `intid` of VM `id` from any CPU (a doorbell, a virtual switch
/// delivering a frame), and on a rising edge kicks the CPUs of the vCPUs it targets.
/// Takes the target VM's vGIC lock: callers may hold a bus, a doorbell group or a switch
/// port lock, never a vGIC lock.
pub(super) fn set_vm_line(id: VmId, intid: u32, level: bool) {
    // Before the VMs are published nothing runs that could ring.
    let Some(&vm) = super::vms().get(usize::from(id.0)) else {
        return;
    };
    let mut kicks = {
        let mut vg = vm.vgic.lock();
        let k = vg
            .set_level(intid, VcpuId(0), level)
            .unwrap_or(KickSet::EMPTY);
        k.union(vg.take_kicks())
    };
    if !level {
        return;
    }
    // As the power button does: a vCPU 0 waiting in WFI looks again even when the vGIC
    // reported no target (the line's interrupt not enabled yet, say).
    if kicks.is_empty() {
        kicks = KickSet::single(0);
    }
    // A kick for every target's CPU, this one included: the kick interrupt, taken right
    // after the return to the ringing guest, brings this CPU to its scheduler when the
    // target waits here.
    if super::lifecycle::kick_all(vm, kicks) {
        let me = super::sched::this_index();
        if let Some(mpidr) = CPU_MPIDR.get(me) {
            gic::kick(mpidr.load(Ordering::Relaxed), me);
        }
    }
}

static REGIONS: Once<Result<Vec<Region>, (String, String)>> = Once::new();

/// Every region, allocated and zeroed on the first call (when the first VM is built).
fn regions(plat: &Platform) -> Result<&'static [Region], VmError> {
    let all = REGIONS.call_once(|| {
        let mut out = Vec::new();
        for r in &plat.shmem {
            let mut ram =
                RamRegion::alloc(&mut FRAMES.lock(), r.size_bytes).map_err(|largest| {
                    (
                        r.node_path.clone(),
                        format!(
                            "{} MiB do not fit in the host RAM still free (at most {} MiB would)",
                            r.size_bytes >> 20,
                            largest >> 20
                        ),
                    )
                })?;
            // Zeroed once, and cleaned to the Point of Coherency: a guest that reads with its
            // MMU off (non-cacheable) sees the zeros too.
            ram.zero_range(0, r.size_bytes);
            ram.clean_range(0, r.size_bytes);
            let members = r
                .members
                .iter()
                .map(|&(vm, map)| (VmId(vm as u16), layout::DOORBELL_INTID + map as u32))
                .collect();
            info!(
                "shmem \"{}\": {} MiB at host {:#x}, mapped by {} VM(s)",
                r.name,
                r.size_bytes >> 20,
                ram.pieces().pieces().first().map_or(0, |p| p.base.0),
                r.members.len()
            );
            out.push(Region {
                ram,
                group: Arc::new(Mutex::new(DoorbellGroup::new(r.members.len()))),
                lines: Arc::new(Lines { members }),
            });
        }
        Ok(out)
    });
    match all {
        Ok(v) => Ok(v),
        Err((node, problem)) => Err(VmError {
            node: node.clone(),
            property: "size",
            problem: problem.clone(),
        }),
    }
}

/// Maps the VM's shared-memory regions into its stage 2 and puts a doorbell page for each on
/// its bus. Returns the guest device-tree nodes that describe them.
pub(super) fn attach(
    cfg: &VmConfig,
    plat: &Platform,
    ram: &'static super::ram::VmRam,
    bus: &mut MmioBus,
) -> Result<Vec<GuestShmem>, VmError> {
    if cfg.shmem.is_empty() {
        return Ok(Vec::new());
    }
    let regions = regions(plat)?;
    let mut nodes = Vec::new();
    let mut pci = PciHost::new();
    for (k, map) in cfg.shmem.iter().enumerate() {
        let bad = |property: &'static str, problem: String| VmError {
            node: map.node_path.clone(),
            property,
            problem,
        };
        let Some(region) = regions.get(map.region) else {
            return Err(bad("elvisor,shmem", "not linked to a region".into()));
        };
        let doorbell = if map.pci {
            GuestPhysAddr(layout::PCI_BAR0_BASE + layout::PCI_BAR0_SIZE * k as u64)
        } else {
            layout::doorbell_base(k)
        };
        let intid = layout::DOORBELL_INTID + k as u32;
        if let Some(pt) = cfg
            .passthrough
            .iter()
            .find(|p| p.irqs.iter().any(|&(i, _)| i == intid))
        {
            return Err(VmError {
                node: pt.node_path.clone(),
                property: "elvisor,host-path",
                problem: format!("INTID {intid} belongs to the doorbell of {}", map.node_path),
            });
        }
        let mut ipa = map.guest_address;
        for piece in region.ram.pieces().pieces() {
            ram.stage2()
                .map(
                    GuestPhysAddr(ipa),
                    piece.base,
                    piece.size_bytes,
                    S2Kind::Shared {
                        writable: !map.read_only,
                    },
                )
                .map_err(|e| bad("elvisor,guest-address", format!("stage-2 map: {e}")))?;
            ipa += piece.size_bytes;
        }
        let pci_device = if map.pci {
            // The mapping is device k of the VM's PCI host: its registers are BAR0, the
            // region (mapped just above, where BAR2 says) BAR2, its INTx the doorbell SPI.
            let bar0 = layout::PCI_BAR0_BASE + layout::PCI_BAR0_SIZE * k as u64;
            let f = Ivshmem::new(
                region.group.clone(),
                region.lines.clone(),
                map.index,
                bar0 as u32,
                map.guest_address,
                map.size_bytes,
            );
            if !pci.insert(k, f) {
                return Err(bad("elvisor,pci", "no PCI slot for the mapping".into()));
            }
            Some(k as u32)
        } else {
            bus.add(
                doorbell,
                Box::new(Doorbell::new(
                    region.group.clone(),
                    region.lines.clone(),
                    map.index,
                    map.read_only,
                )),
            )
            .map_err(|_| {
                bad(
                    "compatible",
                    "the doorbell page overlaps another device".into(),
                )
            })?;
            None
        };
        let name = plat
            .shmem
            .get(map.region)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        info!(
            "{}: shmem \"{name}\" at {:#x} ({} MiB{}), member {} of {}, {} at {:#x} (SPI {})",
            cfg.name,
            map.guest_address,
            map.size_bytes >> 20,
            if map.read_only { ", read-only" } else { "" },
            map.index,
            map.peers,
            if map.pci {
                "PCI ivshmem, BAR0"
            } else {
                "doorbell"
            },
            doorbell.0,
            intid - 32
        );
        nodes.push(GuestShmem {
            name,
            base: map.guest_address,
            size_bytes: map.size_bytes,
            doorbell: doorbell.0,
            intid,
            index: map.index as u32,
            peers: map.peers as u32,
            read_only: map.read_only,
            pci_device,
        });
    }
    if !pci.is_empty() {
        bus.add(GuestPhysAddr(layout::PCI_ECAM_BASE), Box::new(pci))
            .map_err(|_| VmError {
                node: cfg
                    .shmem
                    .first()
                    .map(|m| m.node_path.clone())
                    .unwrap_or_default(),
                property: "elvisor,pci",
                problem: "the PCI host's window overlaps another device".into(),
            })?;
    }
    Ok(nodes)
}
