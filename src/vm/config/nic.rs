//! `nic` subnodes of a VM node: virtio-net devices plugged into named virtual switches (see
//! docs/configuration.md and `vdev::switch`).
//!
//! ```dts
//!     nic0 {
//!         compatible = "elvisor,virtio-net";
//!         mac-address = [52 54 00 12 34 01];     /* 6 bytes, unicast, not all zero */
//!         elvisor,switch = "lan0";                /* switches exist by being named */
//!     };
//! ```
//!
//! A VM's NICs (in node order) take the virtio-mmio slots after its disks. A switch is
//! created by the first NIC that names it; two NICs on one switch may not share a MAC.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::fdt::{ConfigError, Lineage, compatible_with, is_enabled, prop, str_prop};
use crate::vdev::switch::MAX_PORTS;
use crate::vdev::virtio::SLOT_COUNT;

use super::VmConfig;

/// A NIC of a VM: a virtio-net device on a virtual switch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Nic {
    /// The nic subnode, for diagnostics.
    pub node_path: String,
    /// Property `mac-address`.
    pub mac: [u8; 6],
    /// Property `elvisor,switch`: the switch's name.
    pub switch: String,
}

/// A MAC in the usual notation.
pub fn mac_string(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The `elvisor,virtio-net` subnodes of VM node `vm`; `disks` virtio-mmio slots are taken.
pub(crate) fn parse_nics(vm: &Lineage<'_>, disks: usize) -> Result<Vec<Nic>, ConfigError> {
    let vm_path = vm.path();
    let mut nics: Vec<Nic> = Vec::new();
    for child in vm.node().children() {
        if !compatible_with(child, &["elvisor,virtio-net"]) || !is_enabled(child) {
            continue;
        }
        let path = format!("{vm_path}/{}", child.name);
        let err = |property: &str, problem: String| ConfigError::new(&path, property, problem);
        if disks + nics.len() == SLOT_COUNT {
            return Err(err(
                "compatible",
                format!("more than {SLOT_COUNT} disks and NICs (one virtio-mmio slot each)"),
            ));
        }
        let value =
            prop(child, "mac-address").ok_or_else(|| err("mac-address", "missing".into()))?;
        let mac: [u8; 6] = value
            .try_into()
            .map_err(|_| err("mac-address", format!("{} bytes, not 6", value.len())))?;
        if mac[0] & 1 != 0 {
            return Err(err(
                "mac-address",
                format!("{} is a multicast address", mac_string(&mac)),
            ));
        }
        if mac == [0; 6] {
            return Err(err("mac-address", "all zeros".into()));
        }
        let switch = match str_prop(child, "elvisor,switch") {
            Ok(Some(s)) if !s.is_empty() => s.to_string(),
            Ok(_) => return Err(err("elvisor,switch", "missing".into())),
            Err(problem) => return Err(err("elvisor,switch", problem.into())),
        };
        nics.push(Nic {
            node_path: path.clone(),
            mac,
            switch,
        });
    }
    Ok(nics)
}

/// No two NICs on one switch (of `vm` and the VMs configured before it) share a MAC, and no
/// switch has more than [`MAX_PORTS`] NICs.
pub(crate) fn check_nics_against(vm: &VmConfig, earlier: &[VmConfig]) -> Result<(), ConfigError> {
    for (k, nic) in vm.nics.iter().enumerate() {
        let before = earlier
            .iter()
            .flat_map(|c| c.nics.iter())
            .chain(vm.nics[..k].iter())
            .filter(|o| o.switch == nic.switch);
        let mut ports = 1;
        for other in before {
            if other.mac == nic.mac {
                return Err(ConfigError::new(
                    &nic.node_path,
                    "mac-address",
                    format!(
                        "{} is already on switch \"{}\" ({})",
                        mac_string(&nic.mac),
                        nic.switch,
                        other.node_path
                    ),
                ));
            }
            ports += 1;
        }
        if ports > MAX_PORTS {
            return Err(ConfigError::new(
                &nic.node_path,
                "elvisor,switch",
                format!("switch \"{}\" has {MAX_PORTS} ports already", nic.switch),
            ));
        }
    }
    Ok(())
}
