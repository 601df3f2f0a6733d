//! What the distributor and redistributor windows share: the access-width policy, and the
//! per-INTID register arrays (IGROUPR, IS/ICENABLER, IS/ICPENDR, IS/ICACTIVER, IPRIORITYR,
//! ICFGR) that both expose, the GICR for one vCPU's SGIs and PPIs, the GICD for SPIs (and, on
//! GICv2, for the accessing CPU's banked SGIs and PPIs).
//!
//! Width policy (IHI 0069 and IHI 0048B, "memory-mapped register access"): every register
//! takes aligned 32-bit accesses; IPRIORITYR, ITARGETSR, CPENDSGIR and SPENDSGIR also take byte
//! accesses; the 64-bit registers (`GICD_IROUTER<n>`, GICR_TYPER) take 64-bit accesses and 32-bit
//! accesses to either half. Anything else the specification leaves UNPREDICTABLE, and we refuse it
//! with [`MmioError::BadAccess`] (an external abort in the guest, which makes a driver bug
//! visible): misaligned accesses, halfword accesses anywhere, byte accesses to word-only registers,
//! 64-bit accesses to 32-bit registers. Reserved offsets are RAZ/WI for byte and word accesses.

use super::state::{GicVersion, KickSet, NR_SGIS, PRIORITY_MASK, Vgic};
use crate::vdev::{AccessWidth, MmioError};

/// How a register may be accessed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Shape {
    /// 32-bit accesses only.
    Word,
    /// Byte or 32-bit accesses.
    ByteOrWord,
    /// A 64-bit register: 64-bit accesses, or 32-bit accesses to either half.
    Double,
    /// Reserved space: RAZ/WI to byte and 32-bit accesses.
    Reserved,
}

/// Applies the width policy to an access of `width` at `offset` to a register of `shape`.
pub(super) fn check(shape: Shape, offset: u64, width: AccessWidth) -> Result<(), MmioError> {
    if offset & (width.bytes() - 1) != 0 {
        return Err(MmioError::BadAccess);
    }
    match (shape, width) {
        (_, AccessWidth::Half) => Err(MmioError::BadAccess),
        (Shape::Double, AccessWidth::Double | AccessWidth::Word) => Ok(()),
        (_, AccessWidth::Double) => Err(MmioError::BadAccess),
        (Shape::Double | Shape::Word, AccessWidth::Byte) => Err(MmioError::BadAccess),
        _ => Ok(()),
    }
}

/// The part of the 32-bit register `reg` an access of `width` at `offset` reads.
pub(super) fn extract32(reg: u32, offset: u64, width: AccessWidth) -> u64 {
    let shift = u32::try_from(8 * (offset % 4)).unwrap_or(0);
    u64::from(reg.checked_shr(shift).unwrap_or(0)) & width.mask()
}

/// The part of the 64-bit register `reg` an access of `width` at `offset` reads.
pub(super) fn extract64(reg: u64, offset: u64, width: AccessWidth) -> u64 {
    let shift = u32::try_from(8 * (offset % 8)).unwrap_or(0);
    reg.checked_shr(shift).unwrap_or(0) & width.mask()
}

/// A write of `value` by an access of `width` at `offset` into a 32-bit register: the value in
/// place and the byte lanes it covers.
pub(super) fn place32(value: u64, offset: u64, width: AccessWidth) -> (u32, u32) {
    let shift = u32::try_from(8 * (offset % 4)).unwrap_or(0);
    let lanes = u32::try_from(width.mask() & u64::from(u32::MAX)).unwrap_or(u32::MAX);
    let lanes = lanes.checked_shl(shift).unwrap_or(0);
    let value = u32::try_from(value & width.mask() & u64::from(u32::MAX)).unwrap_or(0);
    (value.checked_shl(shift).unwrap_or(0) & lanes, lanes)
}

/// A write into a 64-bit register: the value in place and the byte lanes it covers.
pub(super) fn place64(value: u64, offset: u64, width: AccessWidth) -> (u64, u64) {
    let shift = u32::try_from(8 * (offset % 8)).unwrap_or(0);
    let lanes = width.mask().checked_shl(shift).unwrap_or(0);
    (
        (value & width.mask()).checked_shl(shift).unwrap_or(0) & lanes,
        lanes,
    )
}

/// The one-bit-per-INTID registers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum BitReg {
    /// IGROUPR.
    Group,
    /// ISENABLER.
    SetEnable,
    /// ICENABLER.
    ClearEnable,
    /// ISPENDR.
    SetPending,
    /// ICPENDR.
    ClearPending,
    /// ISACTIVER.
    SetActive,
    /// ICACTIVER.
    ClearActive,
}

impl BitReg {
    /// The register of the one-bit-per-INTID block at `base + 0x80 * index` (IGROUPR at 0x80,
    /// ISENABLER at 0x100, ... ICACTIVER at 0x380), the same in the GICD and GICR SGI_base.
    pub(super) fn from_block(block: u64) -> Option<Self> {
        Some(match block {
            1 => Self::Group,
            2 => Self::SetEnable,
            3 => Self::ClearEnable,
            4 => Self::SetPending,
            5 => Self::ClearPending,
            6 => Self::SetActive,
            7 => Self::ClearActive,
            _ => return None,
        })
    }
}

impl Vgic {
    /// GICv2 SGIs: their enable bits are RAO/WI and their pending state lives in
    /// CPENDSGIR/SPENDSGIR (ISPENDR/ICPENDR writes ignored).
    pub(super) fn is_v2_sgi_id(&self, intid: u32) -> bool {
        self.version == GicVersion::V2 && intid < NR_SGIS
    }

    /// Reads 32 bits of `reg` for INTIDs `first..first + 32` (bank `bank` for private ones).
    /// Unimplemented INTIDs read as zero.
    pub(super) fn read_bits(&self, reg: BitReg, first: u32, bank: usize) -> u32 {
        (0..32u32).fold(0, |acc, bit| {
            let Some(irq) = first.checked_add(bit).and_then(|i| self.irq(i, bank)) else {
                return acc;
            };
            let set = match reg {
                BitReg::Group => irq.group1,
                BitReg::SetEnable | BitReg::ClearEnable => irq.enabled,
                BitReg::SetPending | BitReg::ClearPending => irq.pending_view(),
                BitReg::SetActive | BitReg::ClearActive => irq.active_view(),
            };
            acc | (u32::from(set) << bit)
        })
    }

    /// Writes 32 bits of `reg` for INTIDs `first..first + 32`. Unimplemented INTIDs ignore it.
    pub(super) fn write_bits(
        &mut self,
        reg: BitReg,
        first: u32,
        bank: usize,
        value: u32,
    ) -> KickSet {
        let mut kicks = KickSet::EMPTY;
        for bit in 0..32u32 {
            let Some(intid) = first.checked_add(bit) else {
                break;
            };
            let one = value & (1 << bit) != 0;
            // Only IGROUPR acts on zeros.
            if !one && reg != BitReg::Group {
                continue;
            }
            let v2_sgi = self.is_v2_sgi_id(intid);
            let Some(irq) = self.irq_mut(intid, bank) else {
                continue;
            };
            let before = *irq;
            match reg {
                BitReg::Group => irq.group1 = one,
                BitReg::SetEnable => irq.enabled = true,
                BitReg::ClearEnable if !v2_sgi => irq.enabled = false,
                BitReg::SetPending if !v2_sgi => irq.latch = true,
                BitReg::ClearPending if !v2_sgi => {
                    irq.latch = false;
                    if irq.owner.is_some() {
                        irq.unpend_req = true;
                    }
                }
                BitReg::SetActive => {
                    if irq.owner.is_some() {
                        irq.active_req = Some(true);
                    } else {
                        irq.active = true;
                    }
                }
                BitReg::ClearActive => {
                    if irq.owner.is_some() {
                        irq.active_req = Some(false);
                    } else {
                        irq.active = false;
                    }
                }
                BitReg::ClearEnable | BitReg::SetPending | BitReg::ClearPending => {}
            }
            if *irq != before {
                if matches!(reg, BitReg::ClearPending | BitReg::ClearActive) {
                    self.settle_hw(intid, bank);
                }
                kicks = kicks.union(self.touch(intid, bank));
            }
        }
        kicks
    }

    /// IPRIORITYR word for INTIDs `first..first + 4`.
    pub(super) fn read_priority(&self, first: u32, bank: usize) -> u32 {
        (0..4u32).fold(0, |acc, k| {
            let p = first
                .checked_add(k)
                .and_then(|i| self.irq(i, bank))
                .map_or(0, |irq| irq.priority);
            acc | (u32::from(p) << (8 * k))
        })
    }

    /// Writes the byte lanes `lanes` of the IPRIORITYR word for INTIDs `first..first + 4`.
    pub(super) fn write_priority(
        &mut self,
        first: u32,
        bank: usize,
        value: u32,
        lanes: u32,
    ) -> KickSet {
        let mut kicks = KickSet::EMPTY;
        for k in 0..4u32 {
            if lanes & (0xFF << (8 * k)) == 0 {
                continue;
            }
            let Some(intid) = first.checked_add(k) else {
                break;
            };
            let byte = u8::try_from((value >> (8 * k)) & 0xFF).unwrap_or(0) & PRIORITY_MASK;
            let Some(irq) = self.irq_mut(intid, bank) else {
                continue;
            };
            if irq.priority != byte {
                irq.priority = byte;
                kicks = kicks.union(self.touch(intid, bank));
            }
        }
        kicks
    }

    /// ICFGR word for INTIDs `first..first + 16`: `Int_config[1]` = edge; `Int_config[0]` RAZ.
    pub(super) fn read_config(&self, first: u32, bank: usize) -> u32 {
        (0..16u32).fold(0, |acc, k| {
            let edge = first
                .checked_add(k)
                .and_then(|i| self.irq(i, bank))
                .is_some_and(|irq| irq.edge);
            acc | (u32::from(edge) << (2 * k + 1))
        })
    }

    /// Writes the ICFGR word for INTIDs `first..first + 16`. SGIs are always edge-triggered
    /// (read-only); PPIs and SPIs are programmable (as QEMU; the PPI case is IMPLEMENTATION
    /// DEFINED in the specification).
    pub(super) fn write_config(&mut self, first: u32, bank: usize, value: u32) -> KickSet {
        let mut kicks = KickSet::EMPTY;
        for k in 0..16u32 {
            let Some(intid) = first.checked_add(k) else {
                break;
            };
            if intid < NR_SGIS {
                continue;
            }
            let edge = value & (1 << (2 * k + 1)) != 0;
            let Some(irq) = self.irq_mut(intid, bank) else {
                continue;
            };
            if irq.edge != edge {
                irq.edge = edge;
                kicks = kicks.union(self.touch(intid, bank));
            }
        }
        kicks
    }
}
