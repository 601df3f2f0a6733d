//! The virtual GICv3 redistributors: one 128 KiB frame pair per vCPU, vCPU 0 first, in one
//! window. Every frame is reachable from every vCPU; the frame (not the accessing vCPU) selects
//! the bank of SGIs and PPIs.
//!
//! ```text
//!   frame n = window + n * 0x2_0000
//!   RD_base   +0x0000 GICR_CTLR      (EnableLPIs RAZ/WI, RWP/UWP 0: all zeros)
//!             +0x0004 GICR_IIDR      (= GICD_IIDR)
//!             +0x0008 GICR_TYPER     (64-bit RO: Affinity_Value 63:32 = vCPU n's MPIDR,
//!                                      Processor_Number 23:8 = n, Last 4 on the final frame)
//!             +0x0010 GICR_STATUSR   (RAZ/WI)
//!             +0x0014 GICR_WAKER     (ProcessorSleep 1 RW, ChildrenAsleep 2 mirrors it;
//!                                      both 1 at reset)
//!             +0xFFD0-0xFFFC ID registers (PIDR2 = 0x3B)
//!   SGI_base  +0x10080 IGROUPR0, +0x10100 ISENABLER0, +0x10180 ICENABLER0,
//!             +0x10200 ISPENDR0, +0x10280 ICPENDR0, +0x10300 ISACTIVER0, +0x10380 ICACTIVER0,
//!             +0x10400-0x1041C IPRIORITYR0-7 (byte), +0x10C00 ICFGR0 (SGIs: RO, edge),
//!             +0x10C04 ICFGR1 (PPIs: RW), +0x10D00 IGRPMODR0 and +0x10E00 NSACR (RAZ/WI, DS=1)
//!   anything else (LPI registers included: GICD_TYPER.LPIS = 0): RAZ/WI
//! ```
//!
//! GICR_WAKER does not gate delivery (as KVM, which even makes it RAZ/WI); it only decides
//! which vCPUs take part in 1-of-N SPI distribution.

use super::access::{BitReg, Shape, check, extract32, extract64, place32};
use super::dist::{GICD_IIDR_V3, gicr_id};
use super::regs::{GICR_TYPER, GICR_WAKER};
use super::state::{GicVersion, KickSet, Vgic};
use crate::vdev::{AccessWidth, MmioError, VcpuId};

/// Size of one vCPU's redistributor (RD_base and SGI_base frames).
pub const GICR_FRAME_BYTES: u64 = 0x2_0000;
/// Offset of the SGI_base frame inside a redistributor.
const SGI_BASE: u64 = 0x1_0000;

/// Register offsets inside the frames (IHI 0069, redistributor register maps).
mod offset {
    pub const CTLR: u64 = 0x0000;
    pub const IIDR: u64 = 0x0004;
    pub const TYPER: u64 = 0x0008;
    pub const TYPER_HI: u64 = 0x000C;
    pub const STATUSR: u64 = 0x0010;
    pub const WAKER: u64 = 0x0014;
    pub const ID: u64 = 0xFFD0;
    pub const ID_END: u64 = 0xFFFC;
    // SGI_base frame.
    pub const IGROUPR0: u64 = 0x0080;
    pub const ICACTIVER0: u64 = 0x0380;
    pub const IPRIORITYR: u64 = 0x0400;
    pub const IPRIORITYR_END: u64 = 0x041C;
    pub const ICFGR0: u64 = 0x0C00;
    pub const ICFGR1: u64 = 0x0C04;
    pub const IGRPMODR0: u64 = 0x0D00;
    pub const NSACR: u64 = 0x0E00;
}

/// A decoded redistributor register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RedistReg {
    Ctlr,
    Iidr,
    Typer,
    Waker,
    Bits(BitReg),
    /// IPRIORITYR word starting at the INTID.
    Priority(u32),
    /// ICFGR0 (INTIDs 0-15) or ICFGR1 (16-31).
    Config(u32),
    Id(u8),
    RazWi(Shape),
}

impl RedistReg {
    fn decode(off: u64) -> Self {
        let word = off & !3;
        if off < SGI_BASE {
            return match word {
                offset::CTLR => Self::Ctlr,
                offset::IIDR => Self::Iidr,
                offset::TYPER | offset::TYPER_HI => Self::Typer,
                offset::STATUSR => Self::RazWi(Shape::Word),
                offset::WAKER => Self::Waker,
                offset::ID..=offset::ID_END => {
                    gicr_id(word - offset::ID).map_or(Self::RazWi(Shape::Reserved), Self::Id)
                }
                _ => Self::RazWi(Shape::Reserved),
            };
        }
        let word = word - SGI_BASE;
        match word {
            offset::IGROUPR0..=offset::ICACTIVER0 if word.is_multiple_of(0x80) => {
                BitReg::from_block(word / 0x80).map_or(Self::RazWi(Shape::Reserved), Self::Bits)
            }
            offset::IPRIORITYR..=offset::IPRIORITYR_END => {
                Self::Priority(u32::try_from(word - offset::IPRIORITYR).unwrap_or(0))
            }
            offset::ICFGR0 => Self::Config(0),
            offset::ICFGR1 => Self::Config(16),
            offset::IGRPMODR0 | offset::NSACR => Self::RazWi(Shape::Word),
            _ => Self::RazWi(Shape::Reserved),
        }
    }

    fn shape(self) -> Shape {
        match self {
            Self::Priority(_) => Shape::ByteOrWord,
            Self::Typer => Shape::Double,
            Self::RazWi(shape) => shape,
            _ => Shape::Word,
        }
    }
}

impl Vgic {
    /// Size of the redistributor window: one frame pair per vCPU.
    pub fn redist_size_bytes(&self) -> u64 {
        GICR_FRAME_BYTES * u64::try_from(self.vcpus.len()).unwrap_or(0)
    }

    /// GICR_TYPER of vCPU `n`'s redistributor.
    fn gicr_typer(&self, n: usize) -> u64 {
        let mpidr = self.vcpus.get(n).map_or(0, |v| v.mpidr);
        // Aff3.Aff2.Aff1.Aff0 packed into 32 bits.
        let affinity = ((mpidr >> 8) & 0xFF00_0000) | (mpidr & 0x00FF_FFFF);
        let last = n + 1 == self.vcpus.len();
        (GICR_TYPER::Affinity_Value.val(affinity)
            + GICR_TYPER::Processor_Number.val(u64::try_from(n).unwrap_or(0))
            + GICR_TYPER::Last.val(u64::from(last)))
        .value
    }

    /// Splits a window offset into (frame's vCPU, offset in the frame, decoded register).
    fn decode_redist(&self, offset: u64) -> Result<(Option<usize>, u64, RedistReg), MmioError> {
        if self.version != GicVersion::V3 {
            return Err(MmioError::BadAccess);
        }
        let frame = usize::try_from(offset / GICR_FRAME_BYTES).unwrap_or(usize::MAX);
        let off = offset % GICR_FRAME_BYTES;
        if frame >= self.vcpus.len() {
            return Ok((None, off, RedistReg::RazWi(Shape::Reserved)));
        }
        Ok((Some(frame), off, RedistReg::decode(off)))
    }

    /// A guest read of the redistributor window by vCPU `vcpu`.
    pub fn redist_read(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
    ) -> Result<u64, MmioError> {
        let accessor = self.vcpu_index(vcpu).ok_or(MmioError::BadAccess)?;
        let (frame, off, reg) = self.decode_redist(offset)?;
        check(reg.shape(), off, width)?;
        let Some(n) = frame else {
            return Ok(0);
        };
        let word = match reg {
            RedistReg::Bits(reg @ (BitReg::SetPending | BitReg::ClearPending)) => {
                // The pending state follows hardware-linked lines at the moment of the read
                // (another vCPU's timer only as of its own last exit: see `LineSampler`).
                self.resample_word(0, n, accessor);
                self.read_bits(reg, 0, n)
            }
            RedistReg::Typer => return Ok(extract64(self.gicr_typer(n), off, width)),
            RedistReg::Iidr => GICD_IIDR_V3,
            RedistReg::Waker => {
                let asleep = u32::from(self.vcpus.get(n).is_some_and(|v| v.asleep));
                (GICR_WAKER::ProcessorSleep.val(asleep) + GICR_WAKER::ChildrenAsleep.val(asleep))
                    .value
            }
            RedistReg::Bits(reg) => self.read_bits(reg, 0, n),
            RedistReg::Priority(first) => self.read_priority(first, n),
            RedistReg::Config(first) => self.read_config(first, n),
            RedistReg::Id(id) => u32::from(id),
            RedistReg::Ctlr | RedistReg::RazWi(_) => 0,
        };
        Ok(extract32(word, off, width))
    }

    /// A guest write to the redistributor window by vCPU `vcpu`. vCPUs to kick accumulate for
    /// [`Vgic::take_kicks`].
    pub fn redist_write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        self.vcpu_index(vcpu).ok_or(MmioError::BadAccess)?;
        let (frame, off, reg) = self.decode_redist(offset)?;
        check(reg.shape(), off, width)?;
        let Some(n) = frame else {
            return Ok(());
        };
        let (value, lanes) = place32(value, off, width);
        let kicks = match reg {
            RedistReg::Waker => {
                let asleep = GICR_WAKER::ProcessorSleep.is_set(value);
                match self.vcpus.get_mut(n) {
                    Some(v) if v.asleep != asleep => {
                        v.asleep = asleep;
                        // 1-of-N SPIs may now go to (or no longer to) this vCPU.
                        v.rescan();
                        KickSet::single(n)
                    }
                    _ => KickSet::EMPTY,
                }
            }
            RedistReg::Bits(reg) => self.write_bits(reg, 0, n, value),
            RedistReg::Priority(first) => self.write_priority(first, n, value, lanes),
            RedistReg::Config(first) => self.write_config(first, n, value),
            RedistReg::Ctlr
            | RedistReg::Iidr
            | RedistReg::Typer
            | RedistReg::Id(_)
            | RedistReg::RazWi(_) => KickSet::EMPTY,
        };
        self.mmio_kicks = self.mmio_kicks.union(kicks);
        Ok(())
    }
}
