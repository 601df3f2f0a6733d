//! Physical CPUs under /cpus and how each is started.

use alloc::format;
use alloc::vec::Vec;

use crate::fdt::{
    ConfigError, Dtb, Lineage, Node, as_string, be64, cells_of, cells_value, lookup, prop,
    string_list,
};
use crate::mm::PhysAddr;

use super::{Cpu, EnableMethod};

pub(super) fn parse_cpus(dt: &Dtb<'_>) -> Result<Vec<Cpu>, ConfigError> {
    let mut lin = lookup(dt, "/cpus").ok_or_else(|| ConfigError::new("/cpus", "", "missing"))?;
    let address_cells = cells_of(&lin, lin.last(), "#address-cells").map_err(|f| lin.error(f))?;
    if !(1..=2).contains(&address_cells) {
        return Err(ConfigError::new(
            "/cpus",
            "#address-cells",
            "must be 1 or 2",
        ));
    }
    let mut cpus: Vec<Cpu> = Vec::new();
    for child in lin.node().children() {
        if child.name.split('@').next() != Some("cpu")
            || prop(child, "device_type").and_then(as_string) != Some("cpu")
            || !lin.push(child)
        {
            continue;
        }
        let cpu = parse_cpu(&lin, child, address_cells);
        let path = lin.path();
        lin.pop();
        let cpu = cpu?;
        if cpus.iter().any(|c| c.mpidr == cpu.mpidr) {
            return Err(ConfigError::new(
                &path,
                "reg",
                format!("MPIDR {:#x} is listed twice", cpu.mpidr),
            ));
        }
        cpus.push(cpu);
    }
    if cpus.is_empty() {
        return Err(ConfigError::new(
            "/cpus",
            "",
            "no cpu node with device_type \"cpu\"",
        ));
    }
    Ok(cpus)
}

pub(super) fn parse_cpu(
    lin: &Lineage<'_>,
    node: Node<'_>,
    address_cells: usize,
) -> Result<Cpu, ConfigError> {
    let path = lin.path();
    let value = prop(node, "reg").ok_or_else(|| ConfigError::new(&path, "reg", "missing"))?;
    if value.len() < address_cells * 4 {
        return Err(ConfigError::new(
            &path,
            "reg",
            "shorter than #address-cells of /cpus",
        ));
    }
    let mpidr = cells_value(value, 0, address_cells)
        .ok_or_else(|| ConfigError::new(&path, "reg", "malformed"))?;
    if !crate::arch::aarch64::mpidr::is_affinity(mpidr) {
        return Err(ConfigError::new(
            &path,
            "reg",
            format!("{mpidr:#x} is not an MPIDR affinity value"),
        ));
    }
    let method = prop(node, "enable-method")
        .ok_or_else(|| ConfigError::new(&path, "enable-method", "missing"))?;
    let enable_method = match string_list(method).next() {
        Some("psci") => EnableMethod::Psci,
        Some("spin-table") => {
            let release = prop(node, "cpu-release-addr")
                .ok_or_else(|| ConfigError::new(&path, "cpu-release-addr", "missing"))?;
            if release.len() != 8 {
                return Err(ConfigError::new(
                    &path,
                    "cpu-release-addr",
                    "must be one 64-bit value (two cells)",
                ));
            }
            let addr = be64(release, 0)
                .ok_or_else(|| ConfigError::new(&path, "cpu-release-addr", "malformed"))?;
            EnableMethod::SpinTable {
                release_addr: PhysAddr(addr),
            }
        }
        Some(other) => {
            return Err(ConfigError::new(
                &path,
                "enable-method",
                format!("\"{other}\" is not supported (only \"psci\" and \"spin-table\")"),
            ));
        }
        None => return Err(ConfigError::new(&path, "enable-method", "not a string")),
    };
    Ok(Cpu {
        mpidr,
        enable_method,
    })
}
