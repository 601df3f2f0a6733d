//! Host device tree -> platform description.
//!
//! The EL2 kernel learns everything about the machine from the DTB it was booted with (x0):
//! RAM and reserved memory, CPUs, the GIC and its frames, the console UART, the timer PPIs,
//! the PSCI conduit and the VM configuration nodes under /chosen. A DTB that lacks something
//! required fails with a [`ConfigError`] that names the node and the property.
//!
//! The blob is read by [`crate::fdt`]; each piece of the machine has its own module here, and
//! the VM nodes are parsed by [`crate::vm::config`].
#![forbid(unsafe_code)]

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::fdt::{Dtb, Lineage, compatible_with, is_enabled, lookup, memreserve, prop, str_prop};
use crate::mm::{PhysAddr, PhysRange};
use crate::vm::config::{VmConfig, VmLimits, parse_vm};

pub use crate::fdt::{ConfigError, fdt_total_size};

mod cpus;
mod gic;
mod memory;
mod psci;
mod timer;
mod uart;

use cpus::parse_cpus;
use gic::parse_gic;
use memory::{parse_memory, parse_reserved_memory};
use psci::parse_psci;
use timer::parse_timer;
pub use uart::KNOWN_CONSOLES;
use uart::{console_node, parse_uart};

/// How a secondary CPU is started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EnableMethod {
    /// PSCI CPU_ON through the firmware conduit.
    Psci,
    /// Spin table: write the entry point to `release_addr`, then SEV.
    SpinTable { release_addr: PhysAddr },
}

/// A physical CPU as listed under /cpus.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cpu {
    /// The `reg` value: MPIDR_EL1 affinity fields (Aff3 in bits 39:32, Aff2..Aff0 in 23:0).
    pub mpidr: u64,
    pub enable_method: EnableMethod,
}

/// A GIC architecture version: the host's interrupt controller's, and so the one its guests see
/// (their CPU interface is the hardware's virtual one). Defined once; the vGIC re-exports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GicVersion {
    /// GICv2 with the virtualization extensions: guests get GICD (emulated) plus the hardware
    /// GICV mapped as their GICC.
    V2,
    /// GICv3: guests get affinity routing (ARE=1) and a single security state (DS=1): GICD, one
    /// GICR frame pair per vCPU, the CPU interface through ICV_* system registers.
    V3,
}

/// The physical interrupt controller.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Gic {
    pub version: GicVersion,
    /// Distributor.
    pub gicd: PhysRange,
    /// GICv3 redistributor regions (empty on GICv2).
    pub gicr: Vec<PhysRange>,
    /// GICv2 CPU interface (also present on some GICv3 systems for legacy; optional).
    pub gicc: Option<PhysRange>,
    /// GICv2 virtual interface control (GICH).
    pub gich: Option<PhysRange>,
    /// GICv2 virtual CPU interface (GICV).
    pub gicv: Option<PhysRange>,
    /// Maintenance interrupt, as an INTID (PPI 9 -> 25).
    pub maintenance_intid: Option<u32>,
}

/// Architected timer interrupts, as INTIDs (PPI n -> 16 + n).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timer {
    pub secure_phys_intid: u32,
    pub phys_intid: u32,
    pub virt_intid: u32,
    pub hyp_phys_intid: u32,
    /// EL2 virtual timer (ARMv8.1 VHE), when the DT lists a fifth interrupt.
    pub hyp_virt_intid: Option<u32>,
}

/// The console UART (from /chosen stdout-path).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Uart {
    /// Path of the node, for diagnostics.
    pub path: String,
    pub base: PhysAddr,
    pub size_bytes: u64,
    /// Its interrupt, as an INTID, if the node has one.
    pub intid: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PsciConduit {
    Smc,
    Hvc,
}

/// Everything the kernel needs to know about the machine.
#[derive(Clone, Debug)]
pub struct Platform {
    /// Usable RAM as listed by the memory nodes (before reservations).
    pub ram: Vec<PhysRange>,
    /// Memory that must not be handed out: /memreserve/ entries, /reserved-memory children,
    /// the DTB itself, the hypervisor image and every VM module. Sorted by base.
    pub reserved: Vec<PhysRange>,
    pub cpus: Vec<Cpu>,
    pub gic: Gic,
    pub uart: Uart,
    pub timer: Timer,
    /// PSCI conduit from /psci `method`; `None` when the DT has no PSCI node (e.g. raspi4b).
    pub psci: Option<PsciConduit>,
    /// /chosen `bootargs` of the host (the hypervisor's command line), empty if absent.
    pub bootargs: String,
    /// /chosen `rng-seed` of the host (firmware or QEMU entropy), empty if absent.
    pub rng_seed: Vec<u8>,
    /// VMs described under /chosen (nodes compatible with "elvisor,vm").
    pub vms: Vec<VmConfig>,
    /// Shared-memory regions described under /chosen (nodes compatible with "elvisor,shmem"),
    /// with the VMs that map them.
    pub shmem: Vec<crate::vm::config::ShmemRegion>,
}

/// The host device tree, checked once (header, nesting, every token: what `Dtb::new` walks),
/// then shared by the early lookups and [`parse_host`]. Checking it again for each of them was
/// a good part of the hypervisor's own boot time.
#[derive(Clone, Copy)]
pub struct HostDtb<'a>(Dtb<'a>);

impl<'a> HostDtb<'a> {
    /// The blob if it is a well-formed device tree. Allocation-free.
    pub fn new(blob: &'a [u8]) -> Option<Self> {
        Dtb::new(blob).ok().map(Self)
    }

    /// The blob, cut to its `totalsize`.
    pub fn blob(&self) -> &'a [u8] {
        self.0.blob
    }

    /// The base of the console PL011 named by /chosen `stdout-path`, translated through
    /// `ranges`.
    ///
    /// Allocation-free: it runs before the heap exists, e.g. to report that the image was
    /// entered at EL1. Falls back to the lowest-numbered `serialN` alias that names an enabled
    /// PL011 when `stdout-path` names some other UART (the Raspberry Pi 4 DTB names the
    /// mini-UART).
    pub fn console(&self) -> Option<PhysAddr> {
        let console = console_node(&self.0).ok()?;
        let (base, _) = crate::fdt::reg(&console, 0).ok()??;
        Some(PhysAddr(base))
    }

    /// The console node's path (allocates: only after the heap is up).
    pub fn console_path(&self) -> Option<alloc::string::String> {
        Some(console_node(&self.0).ok()?.path())
    }

    /// The host's /chosen `bootargs`, if present and a valid string. Allocation-free.
    pub fn bootargs(&self) -> Option<&'a str> {
        let chosen = lookup(&self.0, "/chosen")?;
        str_prop(chosen.node(), "bootargs").ok()?
    }

    /// The PSCI conduit named by the host's /psci node, if there is a valid one.
    /// Allocation-free: it lets a configuration error that stops the boot still power the
    /// machine off the way every other stop does.
    pub fn psci(&self) -> Option<PsciConduit> {
        parse_psci(&self.0).ok()?
    }
}

/// [`HostDtb::console`] of a blob.
pub fn early_console(dtb: &[u8]) -> Option<PhysAddr> {
    HostDtb::new(dtb)?.console()
}

/// [`HostDtb::bootargs`] of a blob.
pub fn early_bootargs(dtb: &[u8]) -> Option<&str> {
    HostDtb::new(dtb)?.bootargs()
}

/// [`HostDtb::psci`] of a blob.
pub fn early_psci(dtb: &[u8]) -> Option<PsciConduit> {
    HostDtb::new(dtb)?.psci()
}

/// Parses the host device tree.
///
/// `dtb` is the blob (at least `totalsize` bytes), `dtb_pa` the physical address it lives at and
/// `image` the hypervisor image; both are added to [`Platform::reserved`], as are the
/// /memreserve/ entries, the /reserved-memory children and every VM module.
pub fn parse(dtb: &[u8], dtb_pa: PhysAddr, image: PhysRange) -> Result<Platform, ConfigError> {
    let dt = Dtb::new(dtb).map_err(|problem| ConfigError::new("/", "", problem))?;
    parse_host(&HostDtb(dt), dtb_pa, image)
}

/// [`parse`] of a tree checked already.
pub fn parse_host(
    host: &HostDtb<'_>,
    dtb_pa: PhysAddr,
    image: PhysRange,
) -> Result<Platform, ConfigError> {
    let dt = host.0;
    let blob = dt.blob;
    let root = Lineage::root(&dt).ok_or_else(|| ConfigError::new("/", "", "no root node"))?;

    let ram = parse_memory(&root)?;
    let dtb_range = PhysRange::new(dtb_pa, blob.len() as u64);

    let mut reserved = memreserve(blob).map_err(|problem| {
        ConfigError::new("/", "", format!("memory reservation block: {problem}"))
    })?;
    parse_reserved_memory(&dt, &mut reserved)?;
    // A VM module must not overlap anything reserved so far.
    let mut forbidden: Vec<(PhysRange, &'static str)> = reserved
        .iter()
        .map(|r| (*r, "memory reserved by the host device tree"))
        .collect();
    forbidden.push((dtb_range, "the host device tree"));
    forbidden.push((image, "the hypervisor image"));
    reserved.push(dtb_range);
    reserved.push(image);

    let cpus = parse_cpus(&dt)?;
    let (gic, gic_node) = parse_gic(&root)?;
    let timer = parse_timer(&root, &gic_node)?;
    let uart = parse_uart(&dt, &gic_node)?;
    let psci = parse_psci(&dt)?;

    let chosen = lookup(&dt, "/chosen");
    let bootargs = match &chosen {
        Some(chosen) => str_prop(chosen.node(), "bootargs")
            .map_err(|problem| ConfigError::new("/chosen", "bootargs", problem))?
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    };
    let rng_seed = chosen
        .as_ref()
        .and_then(|c| prop(c.node(), "rng-seed"))
        .map(<[u8]>::to_vec)
        .unwrap_or_default();

    let mut vms: Vec<VmConfig> = Vec::new();
    let mut shmem = Vec::new();
    if let Some(chosen) = &chosen {
        shmem = crate::vm::config::parse_shmem_regions(chosen)?;
        let limits = VmLimits {
            dt: &dt,
            gic: &gic_node,
            host_cpus: cpus.len(),
            ram: &ram,
            forbidden: &forbidden,
        };
        let mut lin = *chosen;
        for child in chosen.node().children() {
            if !compatible_with(child, &["elvisor,vm"]) || !is_enabled(child) || !lin.push(child) {
                continue;
            }
            let vm = parse_vm(&lin, &limits);
            lin.pop();
            let vm = vm?;
            if let Some(other) = vms.iter().find(|other| other.name == vm.name) {
                return Err(ConfigError::new(
                    &vm.node_path,
                    "elvisor,name",
                    format!(
                        "name \"{}\" is already used by {}",
                        vm.name, other.node_path
                    ),
                ));
            }
            crate::vm::config::check_disks_against(&vm, &vms)?;
            crate::vm::config::check_nics_against(&vm, &vms)?;
            crate::vm::config::check_host_ram_against(&vm, &vms)?;
            // RAM at a fixed host address is kept from the frame allocator like a module.
            reserved.extend(vm.fixed_host_ram());
            reserved.push(vm.kernel);
            reserved.extend(vm.ramdisk);
            reserved.extend(vm.disks.iter().map(|d| d.range));
            vms.push(vm);
        }
    }
    crate::vm::config::link_shmem(&mut vms, &mut shmem)?;
    reserved.sort_by_key(|r| (r.base, r.size_bytes));

    Ok(Platform {
        ram,
        reserved,
        cpus,
        gic,
        uart,
        timer,
        psci,
        bootargs,
        rng_seed,
        vms,
        shmem,
    })
}

#[cfg(test)]
mod tests;
