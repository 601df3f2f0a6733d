//! A zero-copy reader for flattened device trees, and the configuration error every parser of
//! one reports.
//!
//! The blob is untrusted input, read by this small reader (`Dtb`, `Node`) rather than the `fdt`
//! crate: fdt 0.1.5 `assert`s, `unwrap`s and slices unchecked on malformed blobs, and it cannot
//! walk `FDT_NOP` tokens between nodes. Those are legal, and QEMU leaves hundreds of them in the
//! DTB it hands a `raspi4b` guest (it deletes the nodes of devices it does not model with
//! libfdt's `fdt_nop_node`): fdt 0.1.5 panics iterating that tree's root. The reader checks the
//! header and every token once (`Dtb::new`), then bounds-checks every read anyway. The tests
//! keep the `fdt` crate as an independent oracle.
//!
//! Addresses are translated to CPU physical addresses through every ancestor's `ranges`
//! (Devicetree Specification v0.4, 2.3.8): the Raspberry Pi 4 puts its devices under /soc, whose
//! `ranges` maps bus address 0x7e00_0000 to 0xfe00_0000 and 0x4000_0000 to 0xff80_0000.
#![forbid(unsafe_code)]

use alloc::string::{String, ToString};
use core::fmt;

mod lineage;
mod props;
mod reader;
#[cfg(test)]
mod tests;

pub use reader::fdt_total_size;

pub(crate) use lineage::{Lineage, find_first, lookup, resolve_path, visit};
pub(crate) use props::{
    InterruptParent, as_string, cells_of, cells_value, compatible_with, gic_intid, is_enabled,
    prop, reg, reg_count, str_prop, string_list, u32_prop,
};
pub(crate) use reader::{Dtb, Node, be32, be64, memreserve};
#[cfg(test)]
pub(crate) use reader::{FDT_END_NODE, FDT_PROP, nop_node};

/// A missing or malformed piece of a device tree: the host's description of the machine or a
/// VM node. Every configuration error names the node and the property.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConfigError {
    /// Path of the node, e.g. "/cpus/cpu@0".
    pub node: String,
    /// The property, e.g. "reg"; empty when the node itself is missing.
    pub property: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.property.is_empty() {
            write!(f, "device tree node {}: {}", self.node, self.problem)
        } else {
            write!(
                f,
                "device tree node {} property \"{}\": {}",
                self.node, self.property, self.problem
            )
        }
    }
}

impl ConfigError {
    /// An error about `property` of the node at `node` ("" for the node itself).
    pub fn new(node: &str, property: &str, problem: impl Into<String>) -> Self {
        Self {
            node: node.to_string(),
            property: property.to_string(),
            problem: problem.into(),
        }
    }
}
