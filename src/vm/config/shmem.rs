//! Shared memory between VMs: `elvisor,shmem` region nodes under /chosen and the
//! `elvisor,shmem-map` subnodes of the VMs that map them (see docs/configuration.md).
//!
//! A region has a name and a size; each VM that maps it says where it appears in its guest
//! physical space and whether it may write to it. The VMs that map a region are its members,
//! numbered in configuration order (VM nodes in order, then map subnodes in order): that number
//! is the member's doorbell index (`vdev::doorbell`). [`link`] checks every mapping against the
//! regions and the VM's own guest memory map once all VMs are parsed.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use elvisor_abi::doorbell::MAX_PEERS;
use elvisor_abi::layout as abi;

use crate::fdt::{ConfigError, Lineage, Node, be64, compatible_with, is_enabled, prop, str_prop};
use crate::mm::{BLOCK_2M, PhysAddr, PhysRange};

use super::VmConfig;

/// Largest region: 1 GiB.
pub const MAX_REGION_BYTES: u64 = 1 << 30;
/// Most regions one VM maps (one doorbell page and SPI each).
pub const MAX_MAPS_PER_VM: usize = abi::DOORBELL_COUNT as usize;
/// Guest addresses must stay below this (the smallest IPA space elvisor gives a VM: 40 bits on
/// a 40-bit PA CPU such as the Cortex-A72 of the Raspberry Pi 4, where stage 2 starts at 44).
pub const MAX_GUEST_ADDRESS: u64 = 1 << 40;

/// A region, as described by a `compatible = "elvisor,shmem"` node under /chosen.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ShmemRegion {
    /// Full path of the node, for diagnostics.
    pub node_path: String,
    /// Property `elvisor,name`, else the node name.
    pub name: String,
    /// Property `size` (one 64-bit value): a nonzero multiple of 2 MiB.
    pub size_bytes: u64,
    /// The members, in doorbell-index order: (VM index, index into that VM's `shmem`).
    pub members: Vec<(usize, usize)>,
}

/// One VM's mapping of a region (an `elvisor,shmem-map` subnode of its VM node).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ShmemMap {
    /// Full path of the subnode, for diagnostics.
    pub node_path: String,
    /// Property `elvisor,shmem`: the region's name.
    pub region_name: String,
    /// Property `elvisor,guest-address`: where the region appears in the guest (4 KiB aligned).
    pub guest_address: u64,
    /// Property `read-only`: guest writes fault (stage-2 read-only).
    pub read_only: bool,
    /// Property `elvisor,pci`: the mapping is an ivshmem-like PCI function (`vdev::pci`)
    /// instead of a doorbell page and a `generic-uio` node.
    pub pci: bool,
    /// Filled in by [`link`]: the region (index into the platform's regions), its size, this
    /// VM's member index and the member count.
    pub region: usize,
    pub size_bytes: u64,
    pub index: usize,
    pub peers: usize,
}

/// The `elvisor,shmem` region nodes among `chosen`'s children.
pub(crate) fn parse_regions(chosen: &Lineage<'_>) -> Result<Vec<ShmemRegion>, ConfigError> {
    let base = chosen.path();
    let mut out: Vec<ShmemRegion> = Vec::new();
    for child in chosen.node().children() {
        if !compatible_with(child, &["elvisor,shmem"]) || !is_enabled(child) {
            continue;
        }
        let path = format!("{base}/{}", child.name);
        let err = |property: &str, problem: String| ConfigError::new(&path, property, problem);
        let name = match str_prop(child, "elvisor,name") {
            Ok(Some(n)) if !n.is_empty() => n.to_string(),
            Ok(Some(_)) => return Err(err("elvisor,name", "empty".into())),
            Ok(None) => child.name.to_string(),
            Err(problem) => return Err(err("elvisor,name", problem.into())),
        };
        let size_bytes = match prop(child, "size") {
            None => return Err(err("size", "missing".into())),
            Some(v) if v.len() == 8 => be64(v, 0).unwrap_or(0),
            Some(_) => {
                return Err(err(
                    "size",
                    "must be one 64-bit byte count (two cells)".into(),
                ));
            }
        };
        if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK_2M) || size_bytes > MAX_REGION_BYTES
        {
            return Err(err(
                "size",
                format!("{size_bytes:#x} bytes is not a nonzero multiple of 2 MiB up to 1 GiB"),
            ));
        }
        if let Some(other) = out.iter().find(|r| r.name == name) {
            return Err(err(
                "elvisor,name",
                format!(
                    "region name \"{name}\" is already used by {}",
                    other.node_path
                ),
            ));
        }
        out.push(ShmemRegion {
            node_path: path.clone(),
            name,
            size_bytes,
            members: Vec::new(),
        });
    }
    Ok(out)
}

/// The `elvisor,shmem-map` subnodes of a VM node (unlinked: see [`link`]).
pub(super) fn parse_maps(vm: &Lineage<'_>) -> Result<Vec<ShmemMap>, ConfigError> {
    let vm_path = vm.path();
    let mut out = Vec::new();
    for child in vm.node().children() {
        if !compatible_with(child, &["elvisor,shmem-map"]) || !is_enabled(child) {
            continue;
        }
        out.push(parse_map(&vm_path, child)?);
    }
    if out.len() > MAX_MAPS_PER_VM {
        return Err(ConfigError::new(
            &out[MAX_MAPS_PER_VM].node_path,
            "compatible",
            format!("a VM maps at most {MAX_MAPS_PER_VM} shared-memory regions"),
        ));
    }
    Ok(out)
}

fn parse_map(vm_path: &str, child: Node<'_>) -> Result<ShmemMap, ConfigError> {
    let path = format!("{vm_path}/{}", child.name);
    let err = |property: &str, problem: String| ConfigError::new(&path, property, problem);
    let region_name = match str_prop(child, "elvisor,shmem") {
        Ok(Some(n)) if !n.is_empty() => n.to_string(),
        Ok(Some(_)) => return Err(err("elvisor,shmem", "empty".into())),
        Ok(None) => return Err(err("elvisor,shmem", "missing".into())),
        Err(problem) => return Err(err("elvisor,shmem", problem.into())),
    };
    let guest_address = match prop(child, "elvisor,guest-address") {
        None => return Err(err("elvisor,guest-address", "missing".into())),
        Some(v) if v.len() == 8 => be64(v, 0).unwrap_or(0),
        Some(_) => {
            return Err(err(
                "elvisor,guest-address",
                "must be one 64-bit address (two cells)".into(),
            ));
        }
    };
    if !guest_address.is_multiple_of(0x1000) {
        return Err(err(
            "elvisor,guest-address",
            format!("{guest_address:#x} is not a multiple of 4 KiB"),
        ));
    }
    Ok(ShmemMap {
        node_path: path.clone(),
        region_name,
        guest_address,
        read_only: prop(child, "read-only").is_some(),
        pci: prop(child, "elvisor,pci").is_some(),
        region: 0,
        size_bytes: 0,
        index: 0,
        peers: 0,
    })
}

/// The guest-physical windows a VM has besides its RAM (emulated devices, doorbells,
/// passthrough devices), with a name for errors.
fn device_windows(vm: &VmConfig) -> Vec<(PhysRange, String)> {
    let w = |base: u64, size: u64, what: &str| (PhysRange::new(PhysAddr(base), size), what.into());
    let mut out = alloc::vec![
        w(abi::GICD_BASE, abi::GICD_SIZE, "the GIC distributor"),
        w(abi::GICC_BASE, abi::GICC_SIZE, "the GIC CPU interface"),
        w(
            abi::GICR_BASE,
            abi::GICR_STRIDE * u64::from(vm.vcpus),
            "the GIC redistributors"
        ),
        w(abi::UART_BASE, abi::UART_SIZE, "the PL011 UART"),
        w(0x0a00_0000, 0x200 * 32, "the virtio-mmio window"),
        w(
            abi::DOORBELL_BASE,
            abi::DOORBELL_SIZE * abi::DOORBELL_COUNT,
            "the doorbell pages"
        ),
        w(
            abi::PCI_ECAM_BASE,
            abi::PCI_BAR0_BASE + abi::PCI_BAR0_SIZE * abi::DOORBELL_COUNT - abi::PCI_ECAM_BASE,
            "the PCI host (ECAM and BAR0 windows)"
        ),
    ];
    if vm.power_button {
        out.push(w(abi::GPIO_BASE, abi::GPIO_SIZE, "the PL061 GPIO"));
    }
    for p in &vm.passthrough {
        for r in &p.regs {
            out.push((*r, format!("passthrough device {}", p.host_path)));
        }
    }
    out
}

/// Resolves every VM's mappings against `regions`: the region must exist, a VM maps a region
/// once, a region has at most 32 members, and the mapping must fit the VM's guest memory map
/// (not over its RAM, its devices or its other mappings). Fills in the members of each region
/// and each mapping's region, size, index and member count.
pub(crate) fn link(vms: &mut [VmConfig], regions: &mut [ShmemRegion]) -> Result<(), ConfigError> {
    for (vm_index, vm) in vms.iter_mut().enumerate() {
        let ram_base = match (vm.direct_map, vm.host_address) {
            (true, Some(h)) => h.0,
            _ => abi::RAM_BASE,
        };
        let ram = PhysRange::new(PhysAddr(ram_base), vm.memory_bytes);
        let windows = device_windows(vm);
        let mut placed: Vec<(PhysRange, String)> = Vec::new();
        for (map_index, map) in vm.shmem.iter_mut().enumerate() {
            let err = |property: &str, problem: String| {
                ConfigError::new(&map.node_path, property, problem)
            };
            let Some(r) = regions.iter().position(|r| r.name == map.region_name) else {
                return Err(err(
                    "elvisor,shmem",
                    format!(
                        "no shared-memory region \"{}\" (a /chosen node compatible with \
                         \"elvisor,shmem\")",
                        map.region_name
                    ),
                ));
            };
            let region = &mut regions[r];
            if region.members.iter().any(|&(v, _)| v == vm_index) {
                return Err(err(
                    "elvisor,shmem",
                    format!(
                        "region \"{}\" is already mapped by this VM",
                        map.region_name
                    ),
                ));
            }
            if region.members.len() >= MAX_PEERS {
                return Err(ConfigError::new(
                    &region.node_path,
                    "elvisor,name",
                    format!("more than {MAX_PEERS} VMs map region \"{}\"", region.name),
                ));
            }
            let end = map.guest_address.checked_add(region.size_bytes);
            let Some(end) = end.filter(|&e| e <= MAX_GUEST_ADDRESS) else {
                return Err(err(
                    "elvisor,guest-address",
                    format!(
                        "{:#x} plus the region's {:#x} bytes goes past the guest's 40-bit \
                         address space",
                        map.guest_address, region.size_bytes
                    ),
                ));
            };
            // A PCI BAR is a power of two, naturally aligned (the BAR is where the region is).
            if map.pci
                && (!region.size_bytes.is_power_of_two()
                    || !map.guest_address.is_multiple_of(region.size_bytes))
            {
                return Err(err(
                    "elvisor,pci",
                    format!(
                        "a PCI BAR needs a power-of-two region size aligned to it: region \"{}\" \
                         has {:#x} bytes at {:#x}",
                        map.region_name, region.size_bytes, map.guest_address
                    ),
                ));
            }
            let range = PhysRange::new(PhysAddr(map.guest_address), end - map.guest_address);
            if range.overlaps(&ram) {
                return Err(err(
                    "elvisor,guest-address",
                    format!("{range} overlaps the VM's RAM at {ram}"),
                ));
            }
            if let Some((_, what)) = windows
                .iter()
                .chain(placed.iter())
                .find(|(w, _)| w.overlaps(&range))
            {
                return Err(err(
                    "elvisor,guest-address",
                    format!("{range} overlaps {what}"),
                ));
            }
            placed.push((range, format!("the mapping {}", map.node_path)));
            region.members.push((vm_index, map_index));
            map.region = r;
            map.size_bytes = region.size_bytes;
            map.index = region.members.len() - 1;
        }
    }
    for region in regions.iter() {
        for &(v, m) in &region.members {
            if let Some(map) = vms.get_mut(v).and_then(|vm| vm.shmem.get_mut(m)) {
                map.peers = region.members.len();
            }
        }
    }
    Ok(())
}
