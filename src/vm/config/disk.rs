//! `disk` modules of a VM node: disk images the loader placed in host RAM, each given to the
//! VM as a virtio-blk device (see docs/configuration.md).
//!
//! ```dts
//!     disk0 {
//!         compatible = "elvisor,disk", "multiboot,module";
//!         reg = <0x0 0x64000000 0x0 0x100600>;   /* any size; whole 512-byte sectors count */
//!         read-only;                              /* optional */
//!         elvisor,id = "scratch";                 /* optional GET_ID string, else the node name */
//!     };
//! ```
//!
//! Disk i of a VM (in node order) sits in virtio-mmio slot i of QEMU virt's window. A disk is
//! the guest's writable storage, so unlike a kernel or ramdisk it is owned by exactly one VM:
//! it may not overlap any other module of any VM.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::fdt::{
    ConfigError, Lineage, cells_value, compatible_with, is_enabled, prop, str_prop, u32_prop,
};
use crate::mm::{PhysAddr, PhysRange};
use crate::vdev::virtio::SLOT_COUNT;

use super::node::VmLimits;
use super::{Disk, VmConfig};

/// The `disk` subnodes of VM node `vm`, checked against host RAM, the hypervisor's own
/// ranges and the VM's other modules.
pub(crate) fn parse_disks(
    vm: &Lineage<'_>,
    limits: &VmLimits<'_>,
    modules: &[PhysRange],
) -> Result<Vec<Disk>, ConfigError> {
    let node = vm.node();
    let vm_path = vm.path();
    let cells = |name: &'static str| -> Result<usize, ConfigError> {
        match u32_prop(node, name) {
            Ok(None) => Ok(2),
            Ok(Some(n @ 1..=2)) => Ok(n as usize),
            Ok(Some(_)) => Err(ConfigError::new(&vm_path, name, "must be 1 or 2")),
            Err(problem) => Err(ConfigError::new(&vm_path, name, problem)),
        }
    };
    let address_cells = cells("#address-cells")?;
    let size_cells = cells("#size-cells")?;
    let mut disks: Vec<Disk> = Vec::new();
    for child in node.children() {
        if !compatible_with(child, &["elvisor,disk"]) || !is_enabled(child) {
            continue;
        }
        let path = format!("{vm_path}/{}", child.name);
        let err = |property: &str, problem: String| ConfigError::new(&path, property, problem);
        if disks.len() == SLOT_COUNT {
            return Err(err(
                "compatible",
                format!("more than {SLOT_COUNT} disks (one virtio-mmio slot each)"),
            ));
        }
        let value = prop(child, "reg").ok_or_else(|| err("reg", "missing".into()))?;
        if value.len() != (address_cells + size_cells) * 4 {
            return Err(err(
                "reg",
                "must be exactly one (address, size) pair in the VM node's cells".into(),
            ));
        }
        let (Some(base), Some(size)) = (
            cells_value(value, 0, address_cells),
            cells_value(value, address_cells, size_cells),
        ) else {
            return Err(err("reg", "malformed".into()));
        };
        if size < 512 || base.checked_add(size).is_none() {
            return Err(err(
                "reg",
                "smaller than one 512-byte sector, or wrapping".into(),
            ));
        }
        let range = PhysRange::new(PhysAddr(base), size);
        if !limits
            .ram
            .iter()
            .any(|r| r.base <= range.base && range.end() <= r.end())
        {
            return Err(err("reg", format!("{range} is not inside RAM")));
        }
        if let Some((_, what)) = limits.forbidden.iter().find(|(r, _)| r.overlaps(&range)) {
            return Err(err("reg", format!("{range} overlaps {what}")));
        }
        if modules.iter().any(|m| m.overlaps(&range)) {
            return Err(err(
                "reg",
                format!("{range} overlaps this VM's kernel or ramdisk"),
            ));
        }
        if let Some(other) = disks.iter().find(|d| d.range.overlaps(&range)) {
            return Err(err(
                "reg",
                format!("{range} overlaps disk {}", other.node_path),
            ));
        }
        let read_only = prop(child, "read-only").is_some();
        let id = match str_prop(child, "elvisor,id") {
            Ok(Some(id)) => id.to_string(),
            Ok(None) => child.name.to_string(),
            Err(problem) => return Err(err("elvisor,id", problem.into())),
        };
        disks.push(Disk {
            node_path: path.clone(),
            range,
            read_only,
            id,
        });
    }
    Ok(disks)
}

/// A disk belongs to one VM: it may not overlap a module (kernel, ramdisk or disk) of a VM
/// configured before `vm`, nor may `vm`'s modules overlap an earlier VM's disk.
pub(crate) fn check_disks_against(vm: &VmConfig, earlier: &[VmConfig]) -> Result<(), ConfigError> {
    let modules = |c: &VmConfig| -> Vec<PhysRange> {
        let mut m: Vec<PhysRange> = Vec::new();
        m.push(c.kernel);
        m.extend(c.ramdisk);
        m.extend(c.disks.iter().map(|d| d.range));
        m
    };
    for other in earlier {
        let theirs = modules(other);
        for d in &vm.disks {
            if let Some(m) = theirs.iter().find(|m| m.overlaps(&d.range)) {
                return Err(ConfigError::new(
                    &d.node_path,
                    "reg",
                    format!("{m} is a module of {}", other.node_path),
                ));
            }
        }
        for d in &other.disks {
            if let Some(m) = modules(vm).iter().find(|m| m.overlaps(&d.range)) {
                return Err(ConfigError::new(
                    &vm.node_path,
                    "reg",
                    format!("module {m} overlaps disk {}", d.node_path),
                ));
            }
        }
    }
    Ok(())
}

/// A disk's GET_ID string as the device returns it (at most 20 bytes, §5.2.6).
pub fn disk_id_bytes(d: &Disk) -> &[u8] {
    let b = d.id.as_bytes();
    &b[..b.len().min(20)]
}
