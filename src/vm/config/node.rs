//! VM nodes: /chosen children compatible with "elvisor,vm" (see docs/configuration.md).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::fdt::{
    ConfigError, Dtb, InterruptParent, Lineage, be32, be64, cells_value, compatible_with,
    gic_intid, is_enabled, prop, reg, reg_count, resolve_path, str_prop, string_list, u32_prop,
};
use crate::mm::{BLOCK_2M, PhysAddr, PhysRange};

use super::{Passthrough, VmConfig};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;

/// What a VM node is checked against.
pub(crate) struct VmLimits<'r> {
    pub(crate) dt: &'r Dtb<'r>,
    pub(crate) gic: &'r InterruptParent<'r>,
    pub(crate) host_cpus: usize,
    pub(crate) ram: &'r [PhysRange],
    /// Ranges a module must not overlap, with a description for the error.
    pub(crate) forbidden: &'r [(PhysRange, &'static str)],
}

pub(crate) fn parse_vm(lin: &Lineage<'_>, limits: &VmLimits<'_>) -> Result<VmConfig, ConfigError> {
    let node = lin.node();
    let path = lin.path();
    let err = |property: &str, problem: String| ConfigError::new(&path, property, problem);

    let name = match str_prop(node, "elvisor,name") {
        Ok(Some(name)) if !name.is_empty() => name.to_string(),
        Ok(Some(_)) => return Err(err("elvisor,name", "empty".into())),
        Ok(None) => node.name.to_string(),
        Err(problem) => return Err(err("elvisor,name", problem.into())),
    };

    let vcpus = match u32_prop(node, "cpus") {
        Ok(Some(n)) if (1..=MAX_VCPUS).contains(&n) => n,
        Ok(Some(n)) => return Err(err("cpus", format!("{n} is not in 1..={MAX_VCPUS}"))),
        Ok(None) => return Err(err("cpus", "missing".into())),
        Err(problem) => return Err(err("cpus", problem.into())),
    };

    let mut cpu_affinity = Vec::new();
    if let Some(value) = prop(node, "elvisor,cpu-affinity") {
        if value.len() != vcpus as usize * 4 {
            return Err(err(
                "elvisor,cpu-affinity",
                format!("must list one host CPU index per vCPU ({vcpus})"),
            ));
        }
        for index in 0..vcpus as usize {
            let pcpu = be32(value, index * 4)
                .ok_or_else(|| err("elvisor,cpu-affinity", "malformed".into()))?;
            if pcpu as usize >= limits.host_cpus {
                return Err(err(
                    "elvisor,cpu-affinity",
                    format!(
                        "CPU {pcpu} does not exist (the host has {})",
                        limits.host_cpus
                    ),
                ));
            }
            cpu_affinity.push(pcpu);
        }
    }
    // Without an affinity list the kernel places the vCPUs on the least-loaded CPUs
    // (vm::placement); more vCPUs than CPUs simply share them.

    let memory_bytes = match prop(node, "memory") {
        None => return Err(err("memory", "missing".into())),
        Some(value) if value.len() == 8 => be64(value, 0).unwrap_or(0),
        Some(_) => {
            return Err(err(
                "memory",
                "must be one 64-bit byte count (two cells)".into(),
            ));
        }
    };
    if memory_bytes == 0 || !memory_bytes.is_multiple_of(BLOCK_2M) {
        return Err(err(
            "memory",
            format!("{memory_bytes:#x} bytes is not a nonzero multiple of 2 MiB"),
        ));
    }

    let host_address = match prop(node, "elvisor,host-address") {
        None => None,
        Some(value) if value.len() == 8 => {
            let base = be64(value, 0).unwrap_or(0);
            let bad = |problem: String| Err(err("elvisor,host-address", problem));
            let Some(end) = base.checked_add(memory_bytes) else {
                return bad(format!("{base:#x} plus the VM's memory wraps"));
            };
            let range = PhysRange::new(PhysAddr(base), end - base);
            if !base.is_multiple_of(BLOCK_2M) {
                return bad(format!("{base:#x} is not a multiple of 2 MiB"));
            }
            if !limits
                .ram
                .iter()
                .any(|r| r.base <= range.base && range.end() <= r.end())
            {
                return bad(format!("{range} is not inside host RAM"));
            }
            if let Some((_, what)) = limits.forbidden.iter().find(|(r, _)| r.overlaps(&range)) {
                return bad(format!("{range} overlaps {what}"));
            }
            Some(PhysAddr(base))
        }
        Some(_) => {
            return Err(err(
                "elvisor,host-address",
                "must be one 64-bit address (two cells)".into(),
            ));
        }
    };

    let direct_map = prop(node, "elvisor,direct-map").is_some();
    if direct_map && host_address.is_none() {
        return Err(err(
            "elvisor,direct-map",
            "needs elvisor,host-address: the guest sees its RAM where it is on the host".into(),
        ));
    }

    let bootargs = match str_prop(node, "bootargs") {
        Ok(args) => args.unwrap_or("").to_string(),
        Err(problem) => return Err(err("bootargs", problem.into())),
    };

    let power_button = match u32_prop(node, "elvisor,power-button") {
        Ok(None | Some(1)) => true,
        Ok(Some(0)) => false,
        Ok(Some(n)) => {
            return Err(err(
                "elvisor,power-button",
                format!("{n} is neither 0 (no power button) nor 1"),
            ));
        }
        Err(problem) => return Err(err("elvisor,power-button", problem.into())),
    };
    let autostart = match u32_prop(node, "elvisor,autostart") {
        Ok(None | Some(1)) => true,
        Ok(Some(0)) => false,
        Ok(Some(n)) => return Err(err("elvisor,autostart", format!("{n} is not 0 or 1"))),
        Err(problem) => return Err(err("elvisor,autostart", problem.into())),
    };

    let sve_vector_bits = match u32_prop(node, "elvisor,sve-vector-length") {
        Ok(Some(bits)) if crate::vm::sve::valid_vector_bits(bits) => Some(bits),
        Ok(Some(bits)) => {
            return Err(err(
                "elvisor,sve-vector-length",
                format!(
                    "{bits} is neither 0 (no SVE) nor a multiple of 128 from 128 to 2048 (bits)"
                ),
            ));
        }
        Ok(None) => None,
        Err(problem) => return Err(err("elvisor,sve-vector-length", problem.into())),
    };

    let pmu = match u32_prop(node, "elvisor,pmu") {
        Ok(None | Some(1)) => true,
        Ok(Some(0)) => false,
        Ok(Some(n)) => {
            return Err(err(
                "elvisor,pmu",
                format!("{n} is neither 0 (no PMU) nor 1"),
            ));
        }
        Err(problem) => return Err(err("elvisor,pmu", problem.into())),
    };

    let (kernel, ramdisk) = parse_modules(lin, limits)?;
    let passthrough = parse_passthrough(lin, limits)?;
    let kernel = kernel.ok_or_else(|| {
        ConfigError::new(
            &path,
            "",
            "no kernel module (a child node compatible with \"multiboot,kernel\")",
        )
    })?;
    let mut images = alloc::vec![kernel];
    images.extend(ramdisk);
    let disks = super::disk::parse_disks(lin, limits, &images)?;
    let shmem = super::shmem::parse_maps(lin)?;
    let nics = super::nic::parse_nics(lin, disks.len())?;

    Ok(VmConfig {
        name,
        node_path: path.clone(),
        vcpus,
        cpu_affinity,
        memory_bytes,
        host_address,
        direct_map,
        bootargs,
        kernel,
        ramdisk,
        passthrough,
        disks,
        power_button,
        autostart,
        sve_vector_bits,
        pmu,
        shmem,
        nics,
    })
}

/// The passthrough subnodes of a VM node: each names a host device by path; its `reg`
/// windows (translated through the host's `ranges`) and its GIC SPIs go to the VM.
fn parse_passthrough(
    vm: &Lineage<'_>,
    limits: &VmLimits<'_>,
) -> Result<Vec<Passthrough>, ConfigError> {
    let vm_path = vm.path();
    let mut out = Vec::new();
    for child in vm.node().children() {
        if !compatible_with(child, &["elvisor,passthrough"]) || !is_enabled(child) {
            continue;
        }
        let path = format!("{vm_path}/{}", child.name);
        let err = |property: &str, problem: String| ConfigError::new(&path, property, problem);
        let host_path = match str_prop(child, "elvisor,host-path") {
            Ok(Some(p)) => p,
            Ok(None) => return Err(err("elvisor,host-path", "missing".into())),
            Err(problem) => return Err(err("elvisor,host-path", problem.into())),
        };
        let host = resolve_path(limits.dt, host_path)
            .ok_or_else(|| err("elvisor,host-path", format!("no node {host_path}")))?;
        if !is_enabled(host.node()) {
            return Err(err("elvisor,host-path", format!("{host_path} is disabled")));
        }
        let compatible = prop(host.node(), "compatible")
            .map(|v| string_list(v).map(String::from).collect())
            .unwrap_or_default();
        let count = reg_count(&host).map_err(|f| host.error(f))?;
        let mut regs = Vec::new();
        for i in 0..count {
            if let Some((base, size)) = reg(&host, i).map_err(|f| host.error(f))? {
                let r = PhysRange::new(PhysAddr(base), size);
                if size == 0 || limits.ram.iter().any(|m| m.overlaps(&r)) {
                    return Err(err(
                        "elvisor,host-path",
                        format!("{host_path} reg {r} is empty or RAM: only devices pass through"),
                    ));
                }
                regs.push(r);
            }
        }
        let mut irqs = Vec::new();
        if let Some(spec) = prop(host.node(), "interrupts") {
            if !limits.gic.is_parent_of(&host) {
                return Err(err(
                    "elvisor,host-path",
                    format!("{host_path}: its interrupts do not go to the GIC"),
                ));
            }
            for idx in 0..spec.len() / 12 {
                let intid = gic_intid(spec, idx).map_err(|p| {
                    err("elvisor,host-path", format!("{host_path} interrupts: {p}"))
                })?;
                let Some(intid) = intid else { continue };
                if intid < 32 {
                    return Err(err(
                        "elvisor,host-path",
                        format!("{host_path}: INTID {intid} is not an SPI; only SPIs pass through"),
                    ));
                }
                // Flags cell: 1/2 = edge, 4/8 = level.
                let level = be32(spec, idx * 12 + 8).is_some_and(|f| f & 0xc != 0);
                irqs.push((intid, level));
            }
        }
        out.push(Passthrough {
            node_path: path.clone(),
            host_path: host_path.into(),
            compatible,
            regs,
            irqs,
        });
    }
    Ok(out)
}

/// The kernel and ramdisk module subnodes of a VM node. Their `reg` is a host physical range in
/// the VM node's own `#address-cells`/`#size-cells` (default 2/2), not translated: /chosen is
/// not a bus.
fn parse_modules(
    vm: &Lineage<'_>,
    limits: &VmLimits<'_>,
) -> Result<(Option<PhysRange>, Option<PhysRange>), ConfigError> {
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

    let mut kernel = None;
    let mut ramdisk = None;
    for child in node.children() {
        let is_kernel = compatible_with(child, &["multiboot,kernel"]);
        let is_ramdisk = compatible_with(child, &["multiboot,ramdisk"]);
        if !(is_kernel || is_ramdisk) || !is_enabled(child) {
            continue;
        }
        let path = format!("{vm_path}/{}", child.name);
        let err = |property: &str, problem: String| ConfigError::new(&path, property, problem);
        let value = prop(child, "reg").ok_or_else(|| err("reg", "missing".into()))?;
        if value.len() != (address_cells + size_cells) * 4 {
            return Err(err(
                "reg",
                "must be exactly one (address, size) pair in the VM node's cells".into(),
            ));
        }
        let base = cells_value(value, 0, address_cells);
        let size = cells_value(value, address_cells, size_cells);
        let (Some(base), Some(size)) = (base, size) else {
            return Err(err("reg", "malformed".into()));
        };
        if size == 0 || base.checked_add(size).is_none() {
            return Err(err("reg", "empty or wrapping range".into()));
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
        let (slot, kind) = if is_kernel {
            (&mut kernel, "kernel")
        } else {
            (&mut ramdisk, "ramdisk")
        };
        if slot.is_some() {
            return Err(err(
                "compatible",
                format!("a second {kind} module; a VM takes exactly one"),
            ));
        }
        *slot = Some(range);
    }
    Ok((kernel, ramdisk))
}
