//! Guest device-tree generation (vm-fdt with `alloc`).
//!
//! Each VM boots with a device tree we write from its configuration, following the Linux arm64
//! boot protocol (x0 = DTB). The tree describes exactly what the VM gets:
//!
//! ```text
//! /                     #address-cells = 2, #size-cells = 2, compatible = "elvisor,vm"
//! ├── chosen            bootargs, stdout-path, linux,initrd-start/end, elvisor,reset-count,
//! │                     rng-seed, kaslr-seed
//! ├── memory@<base>     device_type = "memory", reg = <base size>
//! ├── cpus              cpu@<mpidr>: reg = MPIDR affinity, enable-method = "psci"
//! ├── psci              PSCI 1.0 / 0.2 over HVC (our emulation)
//! ├── intc@<gicd>       GICv3 (GICD + GICR) or GICv2 (GICD + GICC), phandle 1
//! ├── timer             PPIs 13 (secure phys), 14 (phys), 11 (virt), 10 (hyp phys)
//! ├── apb-pclk          24 MHz fixed clock for the PL011 (and PrimeCell devices), phandle 2
//! ├── pl011@<base>      the emulated console UART
//! └── one node per entry of `passthrough`: host devices, the VM's virtio-mmio devices, its
//!     PL061 (`arm,pl061`: gpio-controller, #gpio-cells = 2, phandle 3) and `gpio-keys`
//!     (its `poweroff` key: KEY_POWER on line 3 of that PL061, as in QEMU virt's tree)
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use vm_fdt::FdtWriter;

use crate::mm::GuestPhysAddr;
use crate::platform::GicVersion;
use crate::vm::layout;

/// The emulated console UART (a PL011) as the guest sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestUart {
    pub base: GuestPhysAddr,
    pub size_bytes: u64,
    /// Its interrupt as an INTID (an SPI, 32..1020); only described when a GIC is present.
    pub intid: Option<u32>,
}

/// The (virtual) interrupt controller as the guest sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestGic {
    pub version: GicVersion,
    /// Distributor (base, size in bytes).
    pub gicd: (GuestPhysAddr, u64),
    /// GICv3: the redistributor region; GICv2: the CPU interface (backed by GICV).
    pub gicr_or_gicc: (GuestPhysAddr, u64),
    /// Maintenance interrupt as an INTID (a PPI, 16..32), if it is to be described.
    pub maintenance_intid: Option<u32>,
    /// The PMU overflow interrupt as an INTID (PPI 23) if the VM has a PMU (`vm::pmu`): an
    /// "arm,armv8-pmuv3" node is written.
    pub pmu_intid: Option<u32>,
}

/// Everything that goes into one guest's device tree.
#[derive(Clone, Debug)]
pub struct GuestFdt<'a> {
    pub ram_base: GuestPhysAddr,
    pub ram_bytes: u64,
    /// One MPIDR affinity value per vCPU, vCPU 0 first.
    pub mpidrs: &'a [u64],
    pub uart: Option<GuestUart>,
    pub gic: Option<GuestGic>,
    pub bootargs: &'a str,
    /// Initial ramdisk (base, size in bytes) in guest physical memory.
    pub initrd: Option<(GuestPhysAddr, u64)>,
    /// How often the VM has been reset (0 on first boot); lets a guest tell a reboot apart.
    pub reset_count: u32,
    /// Host devices passed through: each gets a copy of its node (same address, SPIs).
    pub passthrough: &'a [crate::vm::config::Passthrough],
    /// Shared-memory mappings with their doorbells ([`write_shmem`]).
    pub shmem: &'a [GuestShmem],
    /// `/chosen/rng-seed` (bytes for the guest's RNG at boot) and `/chosen/kaslr-seed`.
    pub rng_seed: Option<&'a [u8]>,
    pub kaslr_seed: Option<u64>,
}

/// Why a guest device tree could not be generated.
#[derive(Debug, PartialEq, Eq)]
pub enum FdtGenError {
    /// The FDT writer refused something (bad string, name, size...).
    Writer(vm_fdt::Error),
    /// `ram_bytes` is zero.
    NoRam,
    /// `mpidrs` is empty.
    NoCpus,
    /// An MPIDR with bits outside the affinity fields (Aff3 39:32, Aff2..Aff0 23:0).
    BadMpidr(u64),
    /// Two vCPUs with the same MPIDR.
    DuplicateMpidr(u64),
    /// A region (named) that is empty or runs past the top of the address space.
    BadRegion(&'static str),
    /// An interrupt (named) whose INTID is not of the required kind (SPI or PPI).
    BadIntid { what: &'static str, intid: u32 },
    /// A passthrough device whose node name (the last component of its host path) is empty or
    /// already taken by another node at the root: siblings' names must differ (Devicetree
    /// Specification v0.4, 2.2.1).
    BadNodeName(String),
}

impl From<vm_fdt::Error> for FdtGenError {
    fn from(e: vm_fdt::Error) -> Self {
        Self::Writer(e)
    }
}

impl fmt::Display for FdtGenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Writer(e) => write!(f, "guest device tree: {e}"),
            Self::NoRam => write!(f, "guest device tree: the VM has no RAM"),
            Self::NoCpus => write!(f, "guest device tree: the VM has no vCPUs"),
            Self::BadMpidr(m) => write!(f, "guest device tree: {m:#x} is not an MPIDR affinity"),
            Self::DuplicateMpidr(m) => {
                write!(f, "guest device tree: MPIDR {m:#x} is used by two vCPUs")
            }
            Self::BadRegion(what) => {
                write!(
                    f,
                    "guest device tree: the {what} region is empty or wraps around"
                )
            }
            Self::BadIntid { what, intid } => {
                write!(
                    f,
                    "guest device tree: INTID {intid} is not valid for the {what}"
                )
            }
            Self::BadNodeName(name) => write!(
                f,
                "guest device tree: passthrough node name \"{name}\" is empty or already used"
            ),
        }
    }
}

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;
/// The first `arm,pl061` node, the GPIO controller `gpio-keys` refers to.
const GPIO_PHANDLE: u32 = 3;

/// linux,code of the power button: KEY_POWER (Linux include/uapi/linux/input-event-codes.h).
const KEY_POWER: u32 = 116;
/// GPIO specifier flags (include/dt-bindings/gpio/gpio.h): GPIO_ACTIVE_HIGH.
const GPIO_ACTIVE_HIGH: u32 = 0;

/// Interrupt specifier cells of the GIC binding: first cell 0 = SPI, 1 = PPI.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// Third cell: IRQ_TYPE_LEVEL_HIGH.
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// GICv2 PPIs also carry a CPU mask in bits 15:8 (all of CPUs 0-3, as Linux's DTs do).
const GICV2_PPI_CPU_MASK: u32 = 0xf00;

/// Architected timer PPIs (Arm Base System Architecture): secure phys, non-secure phys, virt,
/// hyp phys, in the order of the "arm,armv8-timer" binding.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// The PL011 reference clock QEMU and the Raspberry Pi firmware describe.
const UART_CLOCK_HZ: u32 = 24_000_000;

fn check_region(what: &'static str, base: u64, size_bytes: u64) -> Result<(), FdtGenError> {
    if size_bytes == 0 || base.checked_add(size_bytes).is_none() {
        return Err(FdtGenError::BadRegion(what));
    }
    Ok(())
}

fn validate(spec: &GuestFdt<'_>) -> Result<(), FdtGenError> {
    if spec.ram_bytes == 0 {
        return Err(FdtGenError::NoRam);
    }
    check_region("RAM", spec.ram_base.as_u64(), spec.ram_bytes)?;
    if spec.mpidrs.is_empty() {
        return Err(FdtGenError::NoCpus);
    }
    for (i, &mpidr) in spec.mpidrs.iter().enumerate() {
        if !crate::arch::aarch64::mpidr::is_affinity(mpidr) {
            return Err(FdtGenError::BadMpidr(mpidr));
        }
        if spec.mpidrs[..i].contains(&mpidr) {
            return Err(FdtGenError::DuplicateMpidr(mpidr));
        }
    }
    if let Some(uart) = &spec.uart {
        check_region("UART", uart.base.as_u64(), uart.size_bytes)?;
        if let Some(intid) = uart.intid
            && !(32..1020).contains(&intid)
        {
            return Err(FdtGenError::BadIntid {
                what: "UART (an SPI)",
                intid,
            });
        }
    }
    if let Some(gic) = &spec.gic {
        check_region("GIC distributor", gic.gicd.0.as_u64(), gic.gicd.1)?;
        check_region(
            "GIC redistributor / CPU interface",
            gic.gicr_or_gicc.0.as_u64(),
            gic.gicr_or_gicc.1,
        )?;
        if let Some(intid) = gic.maintenance_intid
            && !(16..32).contains(&intid)
        {
            return Err(FdtGenError::BadIntid {
                what: "GIC maintenance interrupt (a PPI)",
                intid,
            });
        }
        if let Some(intid) = gic.pmu_intid
            && !(16..32).contains(&intid)
        {
            return Err(FdtGenError::BadIntid {
                what: "PMU overflow interrupt (a PPI)",
                intid,
            });
        }
    }
    if let Some((base, size)) = spec.initrd {
        check_region("initrd", base.as_u64(), size)?;
    }
    // The root's children: ours (as `generate` names them), then one per passthrough device.
    let mut names = vec![
        "chosen".to_string(),
        format!("memory@{:x}", spec.ram_base.as_u64()),
        "cpus".to_string(),
        "psci".to_string(),
    ];
    if let Some(gic) = &spec.gic {
        names.push(format!("intc@{:x}", gic.gicd.0.as_u64()));
        names.push("timer".to_string());
    }
    if let Some(uart) = &spec.uart {
        names.push("apb-pclk".to_string());
        names.push(format!("pl011@{:x}", uart.base.as_u64()));
    }
    for dev in spec.passthrough {
        let name = passthrough_name(dev);
        if name.is_empty() || names.iter().any(|n| n == name) {
            return Err(FdtGenError::BadNodeName(name.to_string()));
        }
        names.push(name.to_string());
    }
    Ok(())
}

/// A passthrough device's node name in the guest: its host node's (the path's last component).
fn passthrough_name(dev: &crate::vm::config::Passthrough) -> &str {
    dev.host_path.rsplit('/').next().unwrap_or_default()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Writes the guest's device tree blob.
pub fn generate(spec: &GuestFdt<'_>) -> Result<Vec<u8>, FdtGenError> {
    validate(spec)?;
    let mut w = FdtWriter::new()?;

    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "elvisor,vm")?;
    w.property_string("model", "elvisor virtual machine")?;
    if spec.gic.is_some() {
        w.property_u32("interrupt-parent", GIC_PHANDLE)?;
    }

    let uart_path = spec
        .uart
        .as_ref()
        .map(|uart| format!("/pl011@{:x}", uart.base.as_u64()));

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", spec.bootargs)?;
    if let Some(path) = &uart_path {
        w.property_string("stdout-path", path)?;
    }
    if let Some((base, size)) = spec.initrd {
        // The end is exclusive (Documentation/devicetree/bindings/chosen.txt).
        w.property_u64("linux,initrd-start", base.as_u64())?;
        w.property_u64("linux,initrd-end", base.as_u64() + size)?;
    }
    w.property_u32(elvisor_abi::dt::RESET_COUNT_PROPERTY, spec.reset_count)?;
    // Entropy for the guest's RNG and KASLR (Linux: drivers/of/fdt.c; the guest's CRNG is
    // seeded from rng-seed before anything needs it). Fresh for every boot (vm::entropy).
    if let Some(seed) = spec.rng_seed {
        w.property("rng-seed", seed)?;
    }
    if let Some(k) = spec.kaslr_seed {
        w.property_u64("kaslr-seed", k)?;
    }
    pci::write_chosen(&mut w, spec.shmem)?;
    w.end_node(chosen)?;

    let memory = w.begin_node(&format!("memory@{:x}", spec.ram_base.as_u64()))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[spec.ram_base.as_u64(), spec.ram_bytes])?;
    w.end_node(memory)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 0)?;
    for &mpidr in spec.mpidrs {
        let cpu = w.begin_node(&format!("cpu@{mpidr:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        w.property_u64("reg", mpidr)?;
        w.property_string("enable-method", "psci")?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list("compatible", strings(&["arm,psci-1.0", "arm,psci-0.2"]))?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    if let Some(gic) = &spec.gic {
        write_gic(&mut w, gic)?;
    }

    if let Some(uart) = &spec.uart {
        let clock = w.begin_node("apb-pclk")?;
        w.property_string("compatible", "fixed-clock")?;
        w.property_u32("#clock-cells", 0)?;
        w.property_u32("clock-frequency", UART_CLOCK_HZ)?;
        w.property_string("clock-output-names", "clk24mhz")?;
        w.property_phandle(CLOCK_PHANDLE)?;
        w.end_node(clock)?;

        // `uart_path` is Some whenever `spec.uart` is.
        let name = uart_path
            .as_deref()
            .unwrap_or("/pl011")
            .trim_start_matches('/');
        let node = w.begin_node(name)?;
        w.property_string_list("compatible", strings(&["arm,pl011", "arm,primecell"]))?;
        w.property_array_u64("reg", &[uart.base.as_u64(), uart.size_bytes])?;
        w.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
        w.property_string_list("clock-names", strings(&["uartclk", "apb_pclk"]))?;
        if let (Some(intid), Some(_)) = (uart.intid, &spec.gic) {
            w.property_array_u32("interrupts", &[GIC_SPI, intid - 32, IRQ_TYPE_LEVEL_HIGH])?;
        }
        w.end_node(node)?;
    }

    let gpio_controller = spec
        .passthrough
        .iter()
        .position(|d| d.compatible.iter().any(|c| c == "arm,pl061"));
    for (i, dev) in spec.passthrough.iter().enumerate() {
        let compat: Vec<&str> = dev.compatible.iter().map(String::as_str).collect();
        if compat == ["gpio-keys"] {
            // The power button (kernel::lifecycle::press_power_button) of the VM's PL061.
            if gpio_controller.is_some() {
                write_gpio_keys(&mut w, passthrough_name(dev))?;
            }
            continue;
        }
        let node = w.begin_node(passthrough_name(dev))?;
        w.property_string_list("compatible", strings(&compat))?;
        let reg: Vec<u64> = dev
            .regs
            .iter()
            .flat_map(|r| [r.base.as_u64(), r.size_bytes])
            .collect();
        w.property_array_u64("reg", &reg)?;
        if compat.contains(&"arm,pl061") {
            w.property_null("gpio-controller")?;
            w.property_u32("#gpio-cells", 2)?;
            if gpio_controller == Some(i) {
                w.property_phandle(GPIO_PHANDLE)?;
            }
        }
        if spec.gic.is_some() && !dev.irqs.is_empty() {
            let irqs: Vec<u32> = dev
                .irqs
                .iter()
                .flat_map(|&(intid, level)| {
                    [
                        GIC_SPI,
                        intid - 32,
                        if level { IRQ_TYPE_LEVEL_HIGH } else { 1 },
                    ]
                })
                .collect();
            w.property_array_u32("interrupts", &irqs)?;
        }
        // virtio-mmio devices (ours) reach guest RAM through the cacheable EL2 map, so
        // the guest must treat them as coherent (QEMU virt says the same of its own).
        if compat.contains(&"virtio,mmio") {
            w.property_null("dma-coherent")?;
        }
        // AMBA (PrimeCell) devices need their bus clock to probe under Linux.
        if spec.uart.is_some() && compat.contains(&"arm,primecell") {
            w.property_array_u32("clocks", &[CLOCK_PHANDLE])?;
            w.property_string("clock-names", "apb_pclk")?;
        }
        w.end_node(node)?;
    }

    for shm in spec.shmem.iter().filter(|s| s.pci_device.is_none()) {
        write_shmem(&mut w, shm, spec.gic.is_some())?;
    }
    pci::write_host(&mut w, spec.shmem, spec.gic.is_some())?;

    w.end_node(root)?;
    Ok(w.finish()?)
}

/// A VM's mapping of a shared-memory region and its doorbell page (`kernel::shmem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestShmem {
    /// The region's name (`elvisor,name` of its host node).
    pub name: String,
    /// Where the region is in the guest, and its size.
    pub base: u64,
    pub size_bytes: u64,
    /// The doorbell page (4 KiB) and its level-sensitive SPI.
    pub doorbell: u64,
    pub intid: u32,
    /// This VM's member index and the number of members.
    pub index: u32,
    pub peers: u32,
    pub read_only: bool,
    /// `Some(k)`: the mapping is device k of the emulated PCI host (`vdev::pci`), its
    /// registers (BAR0) at `doorbell`, and gets no `shmem@` node ([`pci::write_host`]).
    pub pci_device: Option<u32>,
}

/// A `shmem@<base>` node: `compatible = "elvisor,shmem", "generic-uio"` (so Linux's
/// uio_pdrv_genirq binds it with `uio_pdrv_genirq.of_id=generic-uio`: map 0 is the region,
/// map 1 the doorbell page, the interrupt the doorbell), `reg` = the region then the doorbell
/// page, `interrupts` = the doorbell SPI, and `elvisor,name`, `elvisor,index`,
/// `elvisor,peers`, `read-only` for a guest to find its way. The region lies outside
/// `/memory`, so no `/reserved-memory` entry is needed: no guest treats it as RAM.
fn write_shmem(w: &mut FdtWriter, shm: &GuestShmem, gic: bool) -> Result<(), FdtGenError> {
    check_region("shared memory", shm.base, shm.size_bytes)?;
    let node = w.begin_node(&format!("shmem@{:x}", shm.base))?;
    w.property_string_list(
        "compatible",
        strings(&[elvisor_abi::doorbell::COMPATIBLE, "generic-uio"]),
    )?;
    w.property_array_u64(
        "reg",
        &[
            shm.base,
            shm.size_bytes,
            shm.doorbell,
            elvisor_abi::layout::DOORBELL_SIZE,
        ],
    )?;
    if gic {
        w.property_array_u32(
            "interrupts",
            &[GIC_SPI, shm.intid.saturating_sub(32), IRQ_TYPE_LEVEL_HIGH],
        )?;
    }
    w.property_string("elvisor,name", &shm.name)?;
    w.property_u32("elvisor,index", shm.index)?;
    w.property_u32("elvisor,peers", shm.peers)?;
    if shm.read_only {
        w.property_null("read-only")?;
    }
    w.end_node(node)?;
    Ok(())
}

/// The guest nodes of a VM's power button (`kernel::build`): its emulated PL061 at
/// [`layout::GPIO_BASE`] with its level-sensitive SPI, and the `gpio-keys` node that
/// [`generate`] writes with the `poweroff` key on the PL061's line
/// [`layout::POWER_BUTTON_LINE`]. `vm_node` is the VM's node path, for diagnostics.
pub fn power_button_nodes(vm_node: &str) -> [crate::vm::config::Passthrough; 2] {
    use crate::mm::{PhysAddr, PhysRange};
    [
        crate::vm::config::Passthrough {
            node_path: vm_node.to_string(),
            host_path: format!("/pl061@{:x}", layout::GPIO_BASE.as_u64()),
            compatible: strings(&["arm,pl061", "arm,primecell"]),
            regs: vec![PhysRange::new(
                PhysAddr(layout::GPIO_BASE.as_u64()),
                layout::GPIO_SIZE,
            )],
            irqs: vec![(layout::GPIO_INTID, true)],
        },
        crate::vm::config::Passthrough {
            node_path: vm_node.to_string(),
            host_path: "/gpio-keys".to_string(),
            compatible: strings(&["gpio-keys"]),
            regs: Vec::new(),
            irqs: Vec::new(),
        },
    ]
}

/// QEMU virt's power button: a `gpio-keys` node whose `poweroff` key is KEY_POWER on line
/// [`layout::POWER_BUTTON_LINE`] of the PL061 (phandle [`GPIO_PHANDLE`]), active high.
fn write_gpio_keys(w: &mut FdtWriter, name: &str) -> Result<(), FdtGenError> {
    let keys = w.begin_node(name)?;
    w.property_string("compatible", "gpio-keys")?;
    let key = w.begin_node("poweroff")?;
    w.property_string("label", "GPIO Key Poweroff")?;
    w.property_u32("linux,code", KEY_POWER)?;
    w.property_array_u32(
        "gpios",
        &[
            GPIO_PHANDLE,
            u32::from(layout::POWER_BUTTON_LINE),
            GPIO_ACTIVE_HIGH,
        ],
    )?;
    w.end_node(key)?;
    w.end_node(keys)?;
    Ok(())
}

/// The interrupt controller and the architected timer, whose PPIs it delivers.
fn write_gic(w: &mut FdtWriter, gic: &GuestGic) -> Result<(), FdtGenError> {
    let ppi_flags = match gic.version {
        GicVersion::V3 => IRQ_TYPE_LEVEL_HIGH,
        GicVersion::V2 => GICV2_PPI_CPU_MASK | IRQ_TYPE_LEVEL_HIGH,
    };

    let (gicd, gicd_bytes) = gic.gicd;
    let (second, second_bytes) = gic.gicr_or_gicc;
    let node = w.begin_node(&format!("intc@{:x}", gicd.as_u64()))?;
    match gic.version {
        GicVersion::V3 => {
            w.property_string("compatible", "arm,gic-v3")?;
            w.property_u32("#redistributor-regions", 1)?;
        }
        GicVersion::V2 => w.property_string("compatible", "arm,cortex-a15-gic")?,
    }
    w.property_array_u64(
        "reg",
        &[gicd.as_u64(), gicd_bytes, second.as_u64(), second_bytes],
    )?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    w.property_phandle(GIC_PHANDLE)?;
    if let Some(intid) = gic.maintenance_intid {
        w.property_array_u32("interrupts", &[GIC_PPI, intid - 16, ppi_flags])?;
    }
    w.end_node(node)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    let mut cells = vec![];
    for ppi in TIMER_PPIS {
        cells.extend_from_slice(&[GIC_PPI, ppi, ppi_flags]);
    }
    w.property_array_u32("interrupts", &cells)?;
    w.property_null("always-on")?;
    w.end_node(timer)?;

    if let Some(intid) = gic.pmu_intid {
        let pmu = w.begin_node("pmu")?;
        w.property_string("compatible", "arm,armv8-pmuv3")?;
        w.property_array_u32("interrupts", &[GIC_PPI, intid - 16, ppi_flags])?;
        w.end_node(pmu)?;
    }
    Ok(())
}

mod pci;
#[cfg(test)]
mod tests;
