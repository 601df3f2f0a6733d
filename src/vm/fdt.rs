//! Guest device-tree generation (vm-fdt with `alloc`).
//!
//! Each VM boots with a device tree we write from its configuration, following the Linux arm64
//! boot protocol (x0 = DTB). The tree describes exactly what the VM gets:
//!
//! ```text
//! /                     #address-cells = 2, #size-cells = 2, compatible = "elvisor,vm"
//! ├── chosen            bootargs, stdout-path, linux,initrd-start/end, elvisor,reset-count
//! ├── memory@<base>     device_type = "memory", reg = <base size>
//! ├── cpus              cpu@<mpidr>: reg = MPIDR affinity, enable-method = "psci"
//! ├── psci              PSCI 1.0 / 0.2 over HVC (our emulation)
//! ├── intc@<gicd>       GICv3 (GICD + GICR) or GICv2 (GICD + GICC), phandle 1
//! ├── timer             PPIs 13 (secure phys), 14 (phys), 11 (virt), 10 (hyp phys)
//! ├── apb-pclk          24 MHz fixed clock for the PL011, phandle 2
//! └── pl011@<base>      the emulated console UART
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use vm_fdt::FdtWriter;

use crate::mm::GuestPhysAddr;
use crate::platform::GicVersion;

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
        }
    }
}

/// MPIDR_EL1 affinity fields: Aff3 (39:32) and Aff2..Aff0 (23:0).
const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;

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
        if mpidr & !MPIDR_AFFINITY_MASK != 0 {
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
    }
    if let Some((base, size)) = spec.initrd {
        check_region("initrd", base.as_u64(), size)?;
    }
    Ok(())
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
    w.property_u32("elvisor,reset-count", spec.reset_count)?;
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

    w.end_node(root)?;
    Ok(w.finish()?)
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
    Ok(())
}
