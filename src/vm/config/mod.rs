//! VM configuration as data: one /chosen node per VM (in the spirit of Xen's dom0less).
//!
//! See docs/configuration.md for the binding. [`crate::platform::parse`] walks the host device
//! tree and hands each VM node to [`parse_vm`] (in `node.rs`); this file holds the resulting
//! types.
#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::vec::Vec;

use alloc::format;

use crate::fdt::ConfigError;
use crate::mm::{PhysAddr, PhysRange};

mod disk;
mod nic;
mod node;
mod shmem;

pub(crate) use disk::check_disks_against;
pub use disk::disk_id_bytes;
pub(crate) use nic::check_nics_against;
pub use nic::{Nic, mac_string};

pub use node::MAX_VCPUS;
pub(crate) use node::{VmLimits, parse_vm};
pub use shmem::{MAX_MAPS_PER_VM, ShmemMap, ShmemRegion};
pub(crate) use shmem::{link as link_shmem, parse_regions as parse_shmem_regions};

/// One VM, as described by a `compatible = "elvisor,vm"` node under /chosen.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VmConfig {
    /// Human-readable name (property `elvisor,name`, else the node name).
    pub name: String,
    /// Full path of the node, for diagnostics.
    pub node_path: String,
    /// Number of vCPUs (property `cpus`).
    pub vcpus: u32,
    /// Physical CPU (index into the host /cpus list) for each vCPU (property
    /// `elvisor,cpu-affinity`); empty means the default placement (`vm::placement`).
    pub cpu_affinity: Vec<u32>,
    /// Guest RAM size in bytes (property `memory`, one 64-bit value in two cells).
    pub memory_bytes: u64,
    /// Where the guest's RAM must be in host memory (property `elvisor,host-address`), else
    /// anywhere the frame allocator finds room, in one or more pieces.
    pub host_address: Option<PhysAddr>,
    /// Property `elvisor,direct-map`: the guest sees its RAM at the host address it has
    /// (guest-physical = host-physical), for passthrough devices that DMA without an IOMMU.
    /// Needs `elvisor,host-address`.
    pub direct_map: bool,
    /// Guest command line (property `bootargs`), empty if absent.
    pub bootargs: String,
    /// The kernel module: where the loader (QEMU, U-Boot) put the image in host memory.
    pub kernel: PhysRange,
    /// Optional initial ramdisk module.
    pub ramdisk: Option<PhysRange>,
    /// Host devices passed through to this VM (subnodes compatible "elvisor,passthrough").
    pub passthrough: Vec<Passthrough>,
    /// Disk images given to this VM as virtio-blk devices (subnodes compatible
    /// "elvisor,disk"), in virtio-mmio slot order.
    pub disks: Vec<Disk>,
    /// Whether the VM gets the emulated PL061 GPIO controller with its power button (property
    /// `elvisor,power-button`, default 1; 0 leaves QEMU virt's GPIO address and SPI 7 free).
    pub power_button: bool,
    /// Property `elvisor,autostart`: false (`<0>`) builds the VM but leaves it stopped until
    /// the shell's `start`.
    pub autostart: bool,
    /// Property `elvisor,sve-vector-length`, in bits: `Some(0)` turns SVE off for this VM,
    /// another value caps its vector length (`vm::sve`); `None`: the CPU's largest.
    pub sve_vector_bits: Option<u32>,
    /// Property `elvisor,pmu`, default 1: the VM gets the CPU's PMUv3 (`vm::pmu`) where there
    /// is one; 0 gives it none (PMUVer 0, PMU registers UNDEFINED, no DT node).
    pub pmu: bool,
    /// Shared-memory regions this VM maps (subnodes compatible "elvisor,shmem-map"), in node
    /// order; linked to the regions by [`link_shmem`].
    pub shmem: Vec<ShmemMap>,
    /// virtio-net devices on virtual switches (subnodes compatible "elvisor,virtio-net"), in
    /// virtio-mmio slot order after the disks.
    pub nics: Vec<Nic>,
}

impl VmConfig {
    /// The host RAM this VM asked for by `elvisor,host-address`.
    pub fn fixed_host_ram(&self) -> Option<PhysRange> {
        self.host_address
            .map(|base| PhysRange::new(base, self.memory_bytes))
    }

    /// The modules the loader placed for this VM: kernel, ramdisk, disks.
    fn modules(&self) -> Vec<(PhysRange, &'static str)> {
        let mut m = alloc::vec![(self.kernel, "kernel module")];
        m.extend(self.ramdisk.map(|r| (r, "ramdisk module")));
        m.extend(self.disks.iter().map(|d| (d.range, "disk module")));
        m
    }
}

/// A VM whose RAM is at a fixed host address (`elvisor,host-address`) must not share a byte
/// with any module or any other VM's fixed RAM, nor may a later VM's module fall in it.
pub(crate) fn check_host_ram_against(
    vm: &VmConfig,
    earlier: &[VmConfig],
) -> Result<(), ConfigError> {
    let err = |problem: String| ConfigError::new(&vm.node_path, "elvisor,host-address", problem);
    if let Some(ram) = vm.fixed_host_ram() {
        if let Some((m, what)) = vm.modules().into_iter().find(|(m, _)| m.overlaps(&ram)) {
            return Err(err(format!(
                "RAM {ram} overlaps this VM's own {what} at {m}"
            )));
        }
        for other in earlier {
            let theirs = other
                .modules()
                .into_iter()
                .chain(other.fixed_host_ram().map(|r| (r, "RAM")));
            for (m, what) in theirs {
                if m.overlaps(&ram) {
                    return Err(err(format!(
                        "RAM {ram} overlaps the {what} of {} at {m}",
                        other.node_path
                    )));
                }
            }
        }
    }
    for other in earlier {
        if let Some(theirs) = other.fixed_host_ram()
            && let Some((m, what)) = vm.modules().into_iter().find(|(m, _)| m.overlaps(&theirs))
        {
            return Err(ConfigError::new(
                &vm.node_path,
                "reg",
                format!("the {what} at {m} lies in the RAM of {}", other.node_path),
            ));
        }
    }
    Ok(())
}

/// A disk module (`vm::config::disk`): a disk image in host RAM that the VM reads and writes
/// through virtio-blk. Writes go to that host RAM, so they survive VM resets and restarts but
/// not a power-off of the machine.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Disk {
    /// The disk subnode, for diagnostics.
    pub node_path: String,
    /// Where the loader put the image (host physical).
    pub range: PhysRange,
    /// Property `read-only`: VIRTIO_BLK_F_RO, every write fails.
    pub read_only: bool,
    /// The GET_ID string (property `elvisor,id`, else the node name).
    pub id: String,
}

/// A host device given to a VM: its registers appear at the same guest physical address,
/// its SPIs are forwarded with the HW bit (the guest's deactivation deactivates the physical
/// interrupt), and the guest's device tree gets a copy of the node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Passthrough {
    /// The VM's passthrough subnode, for diagnostics.
    pub node_path: String,
    /// The host node (property `elvisor,host-path`).
    pub host_path: String,
    /// The host node's `compatible` strings.
    pub compatible: Vec<String>,
    /// Its register windows (host physical = guest physical).
    pub regs: Vec<PhysRange>,
    /// Its interrupts: (INTID, level-sensitive). SPIs only.
    pub irqs: Vec<(u32, bool)>,
}
