//! GICv2 and GICv3 for test guests: found in the device tree, brought up the way Linux brings
//! them up, with the operations interrupt tests need (GIC architecture spec IHI 0069 for
//! GICv3, IHI 0048 for GICv2).
//!
//! ```text
//!   GICv3 ("arm,gic-v3")                     GICv2 ("arm,cortex-a15-gic", "arm,gic-400")
//!   reg[0] GICD  0x0800_0000 (64 KiB)        reg[0] GICD  0x0800_0000 (4 KiB)
//!   reg[1] GICR  0x080A_0000, per CPU:       reg[1] GICC  0x0801_0000 (8 KiB; GICC_DIR at
//!          +0x00000 RD_base  (CTLR, TYPER,          +0x1000): under a hypervisor the GICV
//!                             WAKER, PIDR2)         virtual CPU interface
//!          +0x10000 SGI_base (SGI/PPI bank:
//!                             IGROUPR0, I[SC]ENABLER0, I[SC]PENDR0, I[SC]ACTIVER0, IPRIORITYR)
//!   CPU interface: ICC_* system registers    SGI/PPI bank: in the GICD (banked per CPU)
//! ```
//!
//! SGIs and PPIs (INTID 0..31) live in the redistributor's SGI frame (v3) or the banked first
//! words of the distributor (v2); [`Gic`] hides the difference. All interrupts are used in the
//! group Linux uses: group 1 on GICv3 (taken as IRQ with ICC_IGRPEN1_EL1), group 0 on GICv2
//! (its reset group; with GICC_CTLR.FIQEn = 0 it is an IRQ, acknowledged with GICC_IAR).
//!
//! Every register is accessed 32 bits wide (GICR_TYPER: 64 bits, as Linux reads it), one
//! `ldr`/`str` each, so a hypervisor's MMIO emulation sees a valid syndrome.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use fdt::Fdt;

use crate::arch::gicv3 as icc;
use crate::arch::mmio::Region;

/// Distributor register offsets (GICD_*).
pub mod gicd {
    /// Control register.
    pub const CTLR: usize = 0x0000;
    /// Interrupt controller type register.
    pub const TYPER: usize = 0x0004;
    /// Implementer identification register.
    pub const IIDR: usize = 0x0008;
    /// Interrupt group registers.
    pub const IGROUPR: usize = 0x0080;
    /// Interrupt set-enable registers.
    pub const ISENABLER: usize = 0x0100;
    /// Interrupt clear-enable registers.
    pub const ICENABLER: usize = 0x0180;
    /// Interrupt set-pending registers.
    pub const ISPENDR: usize = 0x0200;
    /// Interrupt clear-pending registers.
    pub const ICPENDR: usize = 0x0280;
    /// Interrupt set-active registers.
    pub const ISACTIVER: usize = 0x0300;
    /// Interrupt clear-active registers.
    pub const ICACTIVER: usize = 0x0380;
    /// Interrupt priority registers (one byte per INTID).
    pub const IPRIORITYR: usize = 0x0400;
    /// GICv2: interrupt processor targets registers (one byte per INTID).
    pub const ITARGETSR: usize = 0x0800;
    /// Interrupt configuration registers.
    pub const ICFGR: usize = 0x0c00;
    /// GICv2: software generated interrupt register.
    pub const SGIR: usize = 0x0f00;
    /// GICv2: SGI clear-pending registers (one byte per SGI, one bit per source CPU).
    pub const CPENDSGIR: usize = 0x0f10;
    /// GICv2: SGI set-pending registers.
    pub const SPENDSGIR: usize = 0x0f20;
    /// GICv2: peripheral ID2 (ArchRev in bits `[7:4]`).
    pub const PIDR2_V2: usize = 0x0fe8;
    /// GICv3: peripheral ID2 (ArchRev in bits `[7:4]`).
    pub const PIDR2_V3: usize = 0xffe8;

    /// GICv3 CTLR (single security state, DS = 1 as a guest sees it): EnableGrp0.
    pub const CTLR_ENABLE_GRP0: u32 = 1 << 0;
    /// CTLR: EnableGrp1 (GICv3 DS = 1 / GICv2 without security extensions).
    pub const CTLR_ENABLE_GRP1: u32 = 1 << 1;
    /// GICv3 CTLR: ARE (affinity routing enable).
    pub const CTLR_ARE: u32 = 1 << 4;
    /// GICv3 CTLR: RWP (register write pending).
    pub const CTLR_RWP: u32 = 1 << 31;

    /// TYPER.ITLinesNumber: the distributor supports 32 * (N + 1) INTIDs.
    pub const TYPER_ITLINES_MASK: u32 = 0x1f;
}

/// Redistributor register offsets (GICR_*): RD_base frame, then SGI_base frame.
pub mod gicr {
    /// RD_base: control register.
    pub const CTLR: usize = 0x0000;
    /// RD_base: type register (64 bits).
    pub const TYPER: usize = 0x0008;
    /// RD_base: wake register.
    pub const WAKER: usize = 0x0014;
    /// RD_base: peripheral ID2.
    pub const PIDR2: usize = 0xffe8;
    /// Offset of the SGI_base frame from RD_base.
    pub const SGI_BASE: usize = 0x1_0000;
    /// Size of one redistributor (RD_base + SGI_base) without GICv4 virtual LPI frames.
    pub const FRAME_BYTES: usize = 0x2_0000;
    /// Size of one redistributor with the GICv4 VLPI and reserved frames (TYPER.VLPIS = 1).
    pub const FRAME_BYTES_VLPI: usize = 0x4_0000;

    /// CTLR.RWP.
    pub const CTLR_RWP: u32 = 1 << 3;
    /// TYPER.VLPIS.
    pub const TYPER_VLPIS: u64 = 1 << 1;
    /// TYPER.Last: the last redistributor of its region.
    pub const TYPER_LAST: u64 = 1 << 4;
    /// TYPER.Affinity_Value, bits `[63:32]`: Aff3.Aff2.Aff1.Aff0.
    pub const TYPER_AFFINITY_SHIFT: u32 = 32;
    /// WAKER.ProcessorSleep.
    pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    /// WAKER.ChildrenAsleep.
    pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
}

/// GICv2 CPU interface register offsets (GICC_*, or GICV_* through a hypervisor).
pub mod gicc {
    /// Control register.
    pub const CTLR: usize = 0x0000;
    /// Priority mask register.
    pub const PMR: usize = 0x0004;
    /// Binary point register.
    pub const BPR: usize = 0x0008;
    /// Interrupt acknowledge register.
    pub const IAR: usize = 0x000c;
    /// End of interrupt register.
    pub const EOIR: usize = 0x0010;
    /// Running priority register.
    pub const RPR: usize = 0x0014;
    /// Highest priority pending interrupt register.
    pub const HPPIR: usize = 0x0018;
    /// Aliased binary point register (group 1).
    pub const ABPR: usize = 0x001c;
    /// Active priorities register 0 (GICV_APR under a hypervisor: GICH_APR of the vCPU).
    pub const APR: usize = 0x00d0;
    /// CPU interface identification register.
    pub const IIDR: usize = 0x00fc;
    /// Deactivate interrupt register (second 4 KiB page).
    pub const DIR: usize = 0x1000;
    /// Size of the register block the driver needs (up to and including DIR).
    pub const SIZE_BYTES: usize = 0x2000;

    /// CTLR.EnableGrp0.
    pub const CTLR_ENABLE_GRP0: u32 = 1 << 0;
    /// CTLR bypass-disable bits (FIQBypDisGrp0/IRQBypDisGrp0/FIQBypDisGrp1/IRQBypDisGrp1),
    /// preserved as Linux preserves them.
    pub const CTLR_BYPASS_MASK: u32 = 0xf << 5;
    /// CTLR.EOImodeNS (the only EOImode bit of a non-secure or virtual CPU interface).
    pub const CTLR_EOIMODE: u32 = 1 << 9;
}

/// ICC_* bits.
pub mod icc_bits {
    /// ICC_SRE_EL1.SRE.
    pub const SRE_SRE: u64 = 1 << 0;
    /// ICC_CTLR_EL1.EOImode.
    pub const CTLR_EOIMODE: u64 = 1 << 1;
    /// ICC_CTLR_EL1.PRIbits, bits `[10:8]`: priority bits implemented, minus one.
    pub const CTLR_PRIBITS_SHIFT: u32 = 8;
    /// ICC_CTLR_EL1.PRIbits mask (after the shift).
    pub const CTLR_PRIBITS_MASK: u64 = 0x7;
    /// ICC_IGRPEN1_EL1.Enable.
    pub const IGRPEN1_ENABLE: u64 = 1 << 0;
    /// ICC_SGI1R_EL1.IRM: to every PE but self.
    pub const SGI1R_IRM: u64 = 1 << 40;
}

/// The spurious INTID: no pending interrupt (GICv2 and GICv3).
pub const SPURIOUS_INTID: u32 = 1023;
/// The number of SGIs (INTIDs 0..15).
pub const SGI_COUNT: u32 = 16;
/// The first SPI; INTIDs below it are banked per CPU.
pub const FIRST_SPI: u32 = 32;
/// The priority [`Gic::init_cpu`] gives every SGI and PPI (Linux's GICD_INT_DEF_PRI).
pub const DEFAULT_PRIORITY: u8 = 0xa0;
/// PMR value that masks nothing.
pub const PRIORITY_MASK_NONE: u8 = 0xff;

/// Compatible strings of GICv3 nodes.
pub const V3_COMPATIBLE: &[&str] = &["arm,gic-v3"];
/// Compatible strings of GICv2 nodes.
pub const V2_COMPATIBLE: &[&str] = &[
    "arm,cortex-a15-gic",
    "arm,gic-400",
    "arm,cortex-a9-gic",
    "arm,cortex-a7-gic",
];

/// Polls of a "write pending" or "asleep" bit before giving up.
const POLL_LIMIT: u32 = 1_000_000;

/// Which GIC architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// GICv2: memory-mapped CPU interface.
    V2,
    /// GICv3: system-register CPU interface, redistributors, affinity routing.
    V3,
}

/// Why the GIC could not be found or brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicError {
    /// x0 did not point at a device tree.
    NoDeviceTree,
    /// No node with a GICv2 or GICv3 `compatible`.
    NoGicNode,
    /// The GIC node's `reg` lacks entry `index`.
    MissingReg {
        /// The missing `reg` entry.
        index: usize,
    },
    /// A register block is misaligned, too small or overlaps the image or the device tree.
    UnusableRegion {
        /// Its base.
        base: usize,
        /// Its size.
        len_bytes: usize,
    },
    /// No redistributor in the GICR region has this CPU's affinity.
    NoRedistributor {
        /// MPIDR_EL1 of this CPU.
        mpidr: u64,
    },
    /// ICC_SRE_EL1.SRE stayed 0: the system-register CPU interface is not available.
    SystemRegistersDisabled {
        /// ICC_SRE_EL1 after writing SRE = 1.
        sre: u64,
    },
    /// A register's busy bit did not clear.
    Timeout {
        /// What was polled.
        what: &'static str,
        /// Its last value.
        value: u32,
    },
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoDeviceTree => write!(f, "no device tree"),
            Self::NoGicNode => write!(
                f,
                "no GIC node (compatible {V3_COMPATIBLE:?} or {V2_COMPATIBLE:?})"
            ),
            Self::MissingReg { index } => write!(f, "GIC node has no reg entry {index}"),
            Self::UnusableRegion { base, len_bytes } => {
                write!(
                    f,
                    "unusable GIC register block {base:#x} size {len_bytes:#x}"
                )
            }
            Self::NoRedistributor { mpidr } => {
                write!(f, "no redistributor with the affinity of MPIDR {mpidr:#x}")
            }
            Self::SystemRegistersDisabled { sre } => {
                write!(f, "ICC_SRE_EL1.SRE stays 0 (ICC_SRE_EL1 = {sre:#x})")
            }
            Self::Timeout { what, value } => write!(f, "{what} stuck at {value:#x}"),
        }
    }
}

/// An acknowledged interrupt: the raw IAR value and how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iar {
    raw: u32,
    version: Version,
}

impl Iar {
    /// An IAR value read earlier (say, recorded by an IRQ handler) on a GIC of `version`.
    pub fn from_raw(raw: u32, version: Version) -> Self {
        Self { raw, version }
    }

    /// The value as read from ICC_IAR1_EL1 / GICC_IAR (what EOIR and DIR want back).
    pub fn raw(self) -> u32 {
        self.raw
    }

    /// The INTID: bits `[23:0]` on GICv3, `[9:0]` on GICv2.
    pub fn intid(self) -> u32 {
        match self.version {
            Version::V3 => self.raw & 0xff_ffff,
            Version::V2 => self.raw & 0x3ff,
        }
    }

    /// GICv2 SGIs: the source CPU interface, bits `[12:10]`.
    pub fn source_cpu(self) -> Option<u32> {
        (self.version == Version::V2 && self.intid() < SGI_COUNT).then_some((self.raw >> 10) & 7)
    }

    /// INTIDs 1020..=1023: nothing was acknowledged.
    pub fn is_special(self) -> bool {
        (1020..=1023).contains(&self.intid())
    }
}

/// Where an SGI goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgiTarget {
    /// This CPU only (GICv3: its own affinity; GICv2: TargetListFilter = 0b10).
    Current,
    /// Every CPU but this one (GICv3: IRM = 1; GICv2: TargetListFilter = 0b01).
    Others,
    /// The CPU with this MPIDR. GICv3: Aff0 must be below 16 (no range selector). GICv2: the
    /// CPU interface number is taken to be Aff0 (true for QEMU `virt` and elvisor's vGIC).
    Mpidr(u64),
    /// The CPUs with Aff3..Aff1 = 0 and Aff0 bit set in this mask (GICv3: ICC_SGI1R_EL1
    /// TargetList; GICv2: GICD_SGIR CPUTargetList, bits 8..15 ignored).
    List(u16),
}

/// A GIC as this CPU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gic {
    version: Version,
    gicd: Region,
    /// GICv3: this CPU's redistributor (RD_base and SGI_base). GICv2: the CPU interface.
    cpu: Region,
}

/// MPIDR_EL1 affinity in the GICR_TYPER / GICD_IROUTER layout: Aff3.Aff2.Aff1.Aff0.
pub fn affinity_of(mpidr: u64) -> u32 {
    (((mpidr >> 32) & 0xff) << 24 | (mpidr & 0xff_ffff)) as u32
}

fn region(range: Range<usize>) -> Result<Region, GicError> {
    let len_bytes = range.end - range.start;
    Region::new(range.start, len_bytes).ok_or(GicError::UnusableRegion {
        base: range.start,
        len_bytes,
    })
}

impl Gic {
    /// Finds the GIC in the device tree and, for GICv3, this CPU's redistributor (by
    /// GICR_TYPER affinity, walking the first redistributor region until TYPER.Last).
    pub fn discover(fdt: Option<&Fdt<'static>>) -> Result<Self, GicError> {
        let fdt = fdt.ok_or(GicError::NoDeviceTree)?;
        let reg =
            |node, index| crate::dt::reg_range(node, index).ok_or(GicError::MissingReg { index });
        if let Some(node) = crate::dt::find_compatible(fdt, V3_COMPATIBLE) {
            let gicd = region(reg(node, 0)?)?;
            let gicr = reg(node, 1)?;
            let stride =
                crate::dt::u32_property(node, "redistributor-stride").map(|stride| stride as usize);
            let cpu = find_redistributor(gicr, stride, crate::arch::mpidr())?;
            return Ok(Self {
                version: Version::V3,
                gicd,
                cpu,
            });
        }
        let node = crate::dt::find_compatible(fdt, V2_COMPATIBLE).ok_or(GicError::NoGicNode)?;
        let gicd = region(reg(node, 0)?)?;
        let gicc = reg(node, 1)?;
        // The driver needs GICC_DIR in the second page; QEMU's tree says 8 KiB or 64 KiB.
        if gicc.end - gicc.start < gicc::SIZE_BYTES {
            return Err(GicError::UnusableRegion {
                base: gicc.start,
                len_bytes: gicc.end - gicc.start,
            });
        }
        Ok(Self {
            version: Version::V2,
            gicd,
            cpu: region(gicc)?,
        })
    }

    /// GICv2 or GICv3.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The distributor block.
    pub fn distributor(&self) -> Region {
        self.gicd
    }

    /// GICv3: this CPU's redistributor (RD_base, SGI_base at +64 KiB).
    pub fn redistributor(&self) -> Option<Region> {
        (self.version == Version::V3).then_some(self.cpu)
    }

    /// GICv2: the CPU interface block (GICC, or GICV under a hypervisor).
    pub fn cpu_interface(&self) -> Option<Region> {
        (self.version == Version::V2).then_some(self.cpu)
    }

    // --- identification ------------------------------------------------------------------------

    /// GICD_PIDR2 (0xFFE8 on GICv3, 0xFE8 on GICv2).
    pub fn distributor_pidr2(&self) -> u32 {
        self.gicd.read32(match self.version {
            Version::V3 => gicd::PIDR2_V3,
            Version::V2 => gicd::PIDR2_V2,
        })
    }

    /// GICD_TYPER.
    pub fn distributor_typer(&self) -> u32 {
        self.gicd.read32(gicd::TYPER)
    }

    /// GICD_CTLR.
    pub fn distributor_ctlr(&self) -> u32 {
        self.gicd.read32(gicd::CTLR)
    }

    /// GICv3: GICR_TYPER of this CPU's redistributor.
    pub fn redistributor_typer(&self) -> Option<u64> {
        Some(self.redistributor()?.read64(gicr::TYPER))
    }

    /// GICv3: GICR_PIDR2 of this CPU's redistributor.
    pub fn redistributor_pidr2(&self) -> Option<u32> {
        Some(self.redistributor()?.read32(gicr::PIDR2))
    }

    /// GICv3: GICR_WAKER.
    pub fn redistributor_waker(&self) -> Option<u32> {
        Some(self.redistributor()?.read32(gicr::WAKER))
    }

    /// GICv2: GICC_IIDR.
    pub fn cpu_interface_iidr(&self) -> Option<u32> {
        Some(self.cpu_interface()?.read32(gicc::IIDR))
    }

    // --- bring-up ------------------------------------------------------------------------------

    /// Enables the distributor: GICv3 ARE + both groups (waiting for RWP), GICv2 both groups.
    /// Bits a hypervisor's distributor does not implement stay as they are.
    pub fn init_distributor(&self) -> Result<(), GicError> {
        let ctlr = self.gicd.read32(gicd::CTLR);
        match self.version {
            Version::V3 => {
                let want = gicd::CTLR_ARE | gicd::CTLR_ENABLE_GRP1 | gicd::CTLR_ENABLE_GRP0;
                self.gicd.write32(gicd::CTLR, ctlr | want);
                // Every SPI in group 1, as Linux's gic_dist_init does (GICv3 guests take
                // group-1 interrupts as IRQs).
                let lines = ((self.gicd.read32(gicd::TYPER) & 0x1f) + 1) * 32;
                for word in 1..lines / 32 {
                    self.gicd
                        .write32(gicd::IGROUPR + word as usize * 4, u32::MAX);
                }
                self.poll_clear(self.gicd, gicd::CTLR, gicd::CTLR_RWP, "GICD_CTLR.RWP")
            }
            Version::V2 => {
                let want = gicd::CTLR_ENABLE_GRP0 | gicd::CTLR_ENABLE_GRP1;
                self.gicd.write32(gicd::CTLR, ctlr | want);
                Ok(())
            }
        }
    }

    /// GICv3: clears GICR_WAKER.ProcessorSleep and waits for ChildrenAsleep to clear (IHI 0069
    /// 11.1 "Power management"). Returns the final GICR_WAKER. GICv2: nothing to do, `Ok(0)`.
    pub fn wake_redistributor(&self) -> Result<u32, GicError> {
        let Some(rd) = self.redistributor() else {
            return Ok(0);
        };
        let waker = rd.read32(gicr::WAKER);
        rd.write32(gicr::WAKER, waker & !gicr::WAKER_PROCESSOR_SLEEP);
        self.poll_clear(
            rd,
            gicr::WAKER,
            gicr::WAKER_CHILDREN_ASLEEP,
            "GICR_WAKER.ChildrenAsleep",
        )?;
        Ok(rd.read32(gicr::WAKER))
    }

    /// Brings up this CPU's SGIs/PPIs and CPU interface as Linux does: SGIs and PPIs disabled,
    /// not pending, not active, at [`DEFAULT_PRIORITY`] (GICv3: group 1); PMR = 0xff,
    /// binary point 0, EOImode 0, the interface enabled (GICv3 ICC_IGRPEN1_EL1, GICv2
    /// GICC_CTLR.EnableGrp0).
    ///
    /// GICv3 sets ICC_SRE_EL1.SRE first and fails if it does not stick.
    pub fn init_cpu(&self) -> Result<(), GicError> {
        if self.version == Version::V3 {
            icc::set_sre(icc::sre() | icc_bits::SRE_SRE);
            let sre = icc::sre();
            if sre & icc_bits::SRE_SRE == 0 {
                return Err(GicError::SystemRegistersDisabled { sre });
            }
        }
        let (bank, base) = self.banked();
        if self.version == Version::V3 {
            bank.write32(base + gicd::IGROUPR, u32::MAX);
        }
        bank.write32(base + gicd::ICENABLER, u32::MAX);
        if self.version == Version::V3 {
            self.poll_clear(self.cpu, gicr::CTLR, gicr::CTLR_RWP, "GICR_CTLR.RWP")?;
        }
        bank.write32(base + gicd::ICPENDR, u32::MAX);
        if self.version == Version::V2 {
            // GICv2 SGI pending state is per source and cleared here, not through ICPENDR0.
            for word in 0..4 {
                self.gicd.write32(gicd::CPENDSGIR + 4 * word, u32::MAX);
            }
        }
        bank.write32(base + gicd::ICACTIVER, u32::MAX);
        let priorities = u32::from_ne_bytes([DEFAULT_PRIORITY; 4]);
        for word in 0..(FIRST_SPI as usize / 4) {
            bank.write32(base + gicd::IPRIORITYR + 4 * word, priorities);
        }

        self.set_priority_mask(PRIORITY_MASK_NONE);
        match self.version {
            Version::V3 => {
                icc::set_bpr1(0);
                icc::set_ctlr(icc::ctlr() & !icc_bits::CTLR_EOIMODE);
                icc::set_igrpen1(icc_bits::IGRPEN1_ENABLE);
            }
            Version::V2 => {
                self.cpu.write32(gicc::BPR, 0);
                let bypass = self.cpu.read32(gicc::CTLR) & gicc::CTLR_BYPASS_MASK;
                self.cpu
                    .write32(gicc::CTLR, bypass | gicc::CTLR_ENABLE_GRP0);
            }
        }
        Ok(())
    }

    fn poll_clear(
        &self,
        block: Region,
        offset: usize,
        bits: u32,
        what: &'static str,
    ) -> Result<(), GicError> {
        let mut value = 0;
        for _ in 0..POLL_LIMIT {
            value = block.read32(offset);
            if value & bits == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(GicError::Timeout { what, value })
    }

    // --- per-interrupt state -------------------------------------------------------------------

    /// The block and base offset holding this CPU's SGI/PPI registers in the GICD layout.
    fn banked(&self) -> (Region, usize) {
        match self.version {
            Version::V3 => (self.cpu, gicr::SGI_BASE),
            Version::V2 => (self.gicd, 0),
        }
    }

    /// The block and base offset of the registers for `intid`.
    fn bank_for(&self, intid: u32) -> (Region, usize) {
        if intid < FIRST_SPI {
            self.banked()
        } else {
            (self.gicd, 0)
        }
    }

    fn write_bit(&self, register: usize, intid: u32) {
        let (block, base) = self.bank_for(intid);
        block.write32(
            base + register + 4 * (intid / 32) as usize,
            1 << (intid % 32),
        );
    }

    fn read_bit(&self, register: usize, intid: u32) -> bool {
        let (block, base) = self.bank_for(intid);
        block.read32(base + register + 4 * (intid / 32) as usize) & (1 << (intid % 32)) != 0
    }

    /// Enables forwarding of `intid` (ISENABLER).
    pub fn enable(&self, intid: u32) {
        self.write_bit(gicd::ISENABLER, intid);
    }

    /// Disables forwarding of `intid` (ICENABLER).
    pub fn disable(&self, intid: u32) {
        self.write_bit(gicd::ICENABLER, intid);
    }

    /// Whether `intid` is enabled.
    pub fn is_enabled(&self, intid: u32) -> bool {
        self.read_bit(gicd::ISENABLER, intid)
    }

    /// Whether `intid` is pending (ISPENDR; for GICv2 SGIs: from any source).
    pub fn is_pending(&self, intid: u32) -> bool {
        self.read_bit(gicd::ISPENDR, intid)
    }

    /// Whether `intid` is active (ISACTIVER).
    pub fn is_active(&self, intid: u32) -> bool {
        self.read_bit(gicd::ISACTIVER, intid)
    }

    /// Makes a PPI or SPI pending (ISPENDR). For SGIs use [`Self::send_sgi`].
    pub fn set_pending(&self, intid: u32) {
        self.write_bit(gicd::ISPENDR, intid);
    }

    /// Clears the pending state of `intid` (GICv2 SGIs: from every source, via CPENDSGIR).
    pub fn clear_pending(&self, intid: u32) {
        if self.version == Version::V2 && intid < SGI_COUNT {
            let byte = intid as usize;
            self.gicd
                .write32(gicd::CPENDSGIR + (byte & !3), 0xff << (8 * (byte % 4)));
        } else {
            self.write_bit(gicd::ICPENDR, intid);
        }
    }

    /// Clears the active state of `intid` (ICACTIVER).
    pub fn clear_active(&self, intid: u32) {
        self.write_bit(gicd::ICACTIVER, intid);
    }

    /// The pending bits of INTIDs 0..31 (this CPU's ISPENDR0).
    pub fn banked_pending(&self) -> u32 {
        let (block, base) = self.banked();
        block.read32(base + gicd::ISPENDR)
    }

    /// The active bits of INTIDs 0..31 (this CPU's ISACTIVER0).
    pub fn banked_active(&self) -> u32 {
        let (block, base) = self.banked();
        block.read32(base + gicd::ISACTIVER)
    }

    /// The enable bits of INTIDs 0..31 (this CPU's ISENABLER0).
    pub fn banked_enabled(&self) -> u32 {
        let (block, base) = self.banked();
        block.read32(base + gicd::ISENABLER)
    }

    /// Sets the priority of `intid` (read-modify-write of its 32-bit IPRIORITYR word, which the
    /// GIC specs require to be accessible; unimplemented low bits read as zero).
    pub fn set_priority(&self, intid: u32, priority: u8) {
        let (block, base) = self.bank_for(intid);
        let offset = base + gicd::IPRIORITYR + (intid as usize & !3);
        let shift = 8 * (intid % 4);
        let word = block.read32(offset) & !(0xff << shift);
        block.write32(offset, word | u32::from(priority) << shift);
    }

    /// The priority of `intid` as the GIC stores it.
    pub fn priority(&self, intid: u32) -> u8 {
        let (block, base) = self.bank_for(intid);
        let offset = base + gicd::IPRIORITYR + (intid as usize & !3);
        (block.read32(offset) >> (8 * (intid % 4))) as u8
    }

    // --- CPU interface -------------------------------------------------------------------------

    /// Acknowledges the highest-priority pending interrupt (ICC_IAR1_EL1 / GICC_IAR).
    pub fn acknowledge(&self) -> Iar {
        let raw = match self.version {
            Version::V3 => icc::iar1() as u32,
            Version::V2 => self.cpu.read32(gicc::IAR),
        };
        Iar {
            raw,
            version: self.version,
        }
    }

    /// Ends an interrupt (ICC_EOIR1_EL1 / GICC_EOIR): priority drop, and deactivation too
    /// unless EOImode = 1.
    pub fn end_of_interrupt(&self, iar: Iar) {
        match self.version {
            Version::V3 => icc::set_eoir1(iar.raw.into()),
            Version::V2 => self.cpu.write32(gicc::EOIR, iar.raw),
        }
    }

    /// Deactivates an interrupt (ICC_DIR_EL1 / GICC_DIR); only meaningful with EOImode = 1.
    pub fn deactivate(&self, iar: Iar) {
        match self.version {
            Version::V3 => icc::set_dir(iar.raw.into()),
            Version::V2 => self.cpu.write32(gicc::DIR, iar.raw),
        }
    }

    /// Sets the priority mask (ICC_PMR_EL1 / GICC_PMR): only priorities numerically below it
    /// are signalled.
    pub fn set_priority_mask(&self, mask: u8) {
        match self.version {
            Version::V3 => icc::set_pmr(mask.into()),
            Version::V2 => self.cpu.write32(gicc::PMR, mask.into()),
        }
    }

    /// The priority mask as read back (unimplemented low bits read as zero).
    pub fn priority_mask(&self) -> u8 {
        match self.version {
            Version::V3 => icc::pmr() as u8,
            Version::V2 => self.cpu.read32(gicc::PMR) as u8,
        }
    }

    /// The running priority (ICC_RPR_EL1 / GICC_RPR): 0xff when no interrupt is active.
    pub fn running_priority(&self) -> u8 {
        match self.version {
            Version::V3 => icc::rpr() as u8,
            Version::V2 => self.cpu.read32(gicc::RPR) as u8,
        }
    }

    /// The highest-priority pending interrupt, not acknowledged (ICC_HPPIR1_EL1 / GICC_HPPIR).
    pub fn highest_pending(&self) -> Iar {
        let raw = match self.version {
            Version::V3 => icc::hppir1() as u32,
            Version::V2 => self.cpu.read32(gicc::HPPIR),
        };
        Iar {
            raw,
            version: self.version,
        }
    }

    /// Selects split EOI (EOImode = 1: EOIR only drops priority, DIR deactivates) or not.
    /// Returns whether the bit reads back as written.
    pub fn set_split_eoi(&self, split: bool) -> bool {
        match self.version {
            Version::V3 => {
                let ctlr = icc::ctlr() & !icc_bits::CTLR_EOIMODE;
                icc::set_ctlr(if split {
                    ctlr | icc_bits::CTLR_EOIMODE
                } else {
                    ctlr
                });
            }
            Version::V2 => {
                let ctlr = self.cpu.read32(gicc::CTLR) & !gicc::CTLR_EOIMODE;
                let ctlr = if split {
                    ctlr | gicc::CTLR_EOIMODE
                } else {
                    ctlr
                };
                self.cpu.write32(gicc::CTLR, ctlr);
            }
        }
        self.split_eoi() == split
    }

    /// Whether EOImode = 1.
    pub fn split_eoi(&self) -> bool {
        match self.version {
            Version::V3 => icc::ctlr() & icc_bits::CTLR_EOIMODE != 0,
            Version::V2 => self.cpu.read32(gicc::CTLR) & gicc::CTLR_EOIMODE != 0,
        }
    }

    /// Generates SGI `sgi` (0..15) for `target`: ICC_SGI1R_EL1 (group 1) on GICv3, GICD_SGIR
    /// (group 0, NSATT = 0) on GICv2.
    pub fn send_sgi(&self, sgi: u32, target: SgiTarget) {
        let sgi = sgi % SGI_COUNT;
        match self.version {
            Version::V3 => {
                let intid = u64::from(sgi) << 24;
                let value = match target {
                    SgiTarget::Current => sgi1r_to(crate::arch::mpidr(), intid),
                    SgiTarget::Mpidr(mpidr) => sgi1r_to(mpidr, intid),
                    SgiTarget::Others => icc_bits::SGI1R_IRM | intid,
                    SgiTarget::List(mask) => intid | u64::from(mask),
                };
                icc::set_sgi1r(value);
            }
            Version::V2 => {
                let value = match target {
                    SgiTarget::Current => 0b10 << 24,
                    SgiTarget::Others => 0b01 << 24,
                    SgiTarget::Mpidr(mpidr) => (1 << (mpidr & 7)) << 16,
                    SgiTarget::List(mask) => u32::from(mask & 0xff) << 16,
                } | sgi;
                self.gicd.write32(gicd::SGIR, value);
            }
        }
    }
}

/// ICC_SGI1R_EL1 for one PE: Aff3 `[55:48]`, Aff2 `[39:32]`, INTID `[27:24]`, Aff1 `[23:16]`,
/// TargetList `[15:0]` with the bit for Aff0 (RS = 0, so Aff0 < 16).
fn sgi1r_to(mpidr: u64, intid: u64) -> u64 {
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    aff3 << 48 | aff2 << 32 | intid | aff1 << 16 | 1 << (mpidr & 0xf)
}

/// Walks the redistributors in `gicr` (each `stride` bytes, or as GICR_TYPER.VLPIS says) for
/// the one whose GICR_TYPER affinity is this CPU's.
fn find_redistributor(
    gicr: Range<usize>,
    stride: Option<usize>,
    mpidr: u64,
) -> Result<Region, GicError> {
    let want = affinity_of(mpidr);
    let mut base = gicr.start;
    while base
        .checked_add(gicr::FRAME_BYTES)
        .is_some_and(|end| end <= gicr.end)
    {
        let frame = region(base..base + gicr::FRAME_BYTES)?;
        let typer = frame.read64(gicr::TYPER);
        if (typer >> gicr::TYPER_AFFINITY_SHIFT) as u32 == want {
            return Ok(frame);
        }
        if typer & gicr::TYPER_LAST != 0 {
            break;
        }
        let step = stride.unwrap_or(if typer & gicr::TYPER_VLPIS != 0 {
            gicr::FRAME_BYTES_VLPI
        } else {
            gicr::FRAME_BYTES
        });
        base = match base.checked_add(step.max(gicr::FRAME_BYTES)) {
            Some(next) => next,
            None => break,
        };
    }
    Err(GicError::NoRedistributor { mpidr })
}

// The GIC the IRQ handler uses, published with plain atomic stores (see `install`).
static INSTALLED_VERSION: AtomicU8 = AtomicU8::new(0);
static INSTALLED_GICD: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
static INSTALLED_CPU: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// Publishes `gic` for code that cannot be handed it, such as an IRQ handler.
pub fn install(gic: &Gic) {
    INSTALLED_VERSION.store(0, Ordering::SeqCst);
    INSTALLED_GICD[0].store(gic.gicd.base(), Ordering::SeqCst);
    INSTALLED_GICD[1].store(gic.gicd.len_bytes(), Ordering::SeqCst);
    INSTALLED_CPU[0].store(gic.cpu.base(), Ordering::SeqCst);
    INSTALLED_CPU[1].store(gic.cpu.len_bytes(), Ordering::SeqCst);
    let version = match gic.version {
        Version::V2 => 2,
        Version::V3 => 3,
    };
    INSTALLED_VERSION.store(version, Ordering::SeqCst);
}

/// The GIC last [`install`]ed.
pub fn installed() -> Option<Gic> {
    let version = match INSTALLED_VERSION.load(Ordering::SeqCst) {
        2 => Version::V2,
        3 => Version::V3,
        _ => return None,
    };
    let block = |cell: &[AtomicUsize; 2]| {
        Region::new(
            cell[0].load(Ordering::SeqCst),
            cell[1].load(Ordering::SeqCst),
        )
    };
    Some(Gic {
        version,
        gicd: block(&INSTALLED_GICD)?,
        cpu: block(&INSTALLED_CPU)?,
    })
}
