//! The virtual distributor (GICD), GICv3 and GICv2 flavours.
//!
//! ```text
//!   offset          GICv3 (ARE=1, DS=1)              GICv2 (no Security Extensions)
//!   0x0000          CTLR                             CTLR
//!   0x0004          TYPER (RO)                       TYPER (RO)
//!   0x0008          IIDR (RO)                        IIDR (RO)
//!   0x000C          TYPER2 (RO, 0)                   reserved
//!   0x0080-0x00FC   IGROUPR       \                  IGROUPR        \  word 0 (INTIDs 0-31)
//!   0x0100-0x03FC   IS/IC ENABLER, PENDR, ACTIVER    the same          banked per CPU on
//!   0x0400-0x07F8   IPRIORITYR (byte)                IPRIORITYR       GICv2; RAZ/WI on
//!   0x0800-0x0BF8   ITARGETSR: RAZ/WI (ARE)          ITARGETSR (byte)  GICv3 (the GICR has
//!   0x0C00-0x0CFC   ICFGR         /                  ICFGR          /  them)
//!   0x0D00-0x0D7C   IGRPMODR: RAZ/WI (DS)            reserved
//!   0x0E00-0x0EFC   NSACR: RAZ/WI (DS)               NSACR: RAZ/WI
//!   0x0F00          SGIR: RAZ/WI                     SGIR (WO)
//!   0x0F10-0x0F2C   C/SPENDSGIR: RAZ/WI              CPENDSGIR / SPENDSGIR (byte)
//!   0x6100-0x7FD8   IROUTER<n> (64-bit)              reserved
//!   0xFFD0-0xFFFC   ID registers (PIDR2 = 0x3B)      (0xFD0-0xFFC: PIDR2 = 0x2B)
//!   anything else   reserved: RAZ/WI
//! ```
//!
//! Identification: IIDR is 0x4500_043B on GICv3 (Implementer 0x43B = Arm, as KVM does, with
//! our own ProductID 0x45 'E', which matches no Linux erratum workaround) and 0x0200_043B on
//! GICv2 (GIC-400 style). The ID register blocks are QEMU's (GIC-500 / GIC-400 part numbers).
//!
//! GICD_TYPER (GICv3): ITLinesNumber from the SPI count, IDbits = 9 (10-bit INTIDs), A3V = 1
//! (Aff3 is routed), No1N = 0 (1-of-N routing is implemented, see [`Vgic::spi_targets`]),
//! RSS = 1 exactly when some vCPU has Aff0 above 15, everything else (LPIs, MBIs, ESPIs, NMIs,
//! security) 0. CPUNumber is 0: it only describes ARE=0 operation.

use super::access::{BitReg, Shape, check, extract32, extract64, place32, place64};
use super::regs::{GICD_CTLR, GICD_CTLR_V2, GICD_SGIR, GICD_TYPER, IROUTER_MASK};
use super::state::{GicVersion, KickSet, NR_PRIVATE, NR_SGIS, Vgic};
use crate::vdev::{AccessWidth, MmioError, VcpuId};

/// Size of the distributor window (the GICv2 registers occupy its first 4 KiB).
pub const GICD_SIZE_BYTES: u64 = 0x1_0000;

/// Register offsets (the distributor register maps of IHI 0069 and IHI 0048B).
mod offset {
    pub const CTLR: u64 = 0x0000;
    pub const TYPER: u64 = 0x0004;
    pub const IIDR: u64 = 0x0008;
    pub const TYPER2: u64 = 0x000C;
    /// IGROUPR; the other one-bit-per-INTID arrays follow every 0x80 bytes up to ICACTIVER.
    pub const IGROUPR: u64 = 0x0080;
    pub const ICACTIVER_END: u64 = 0x03FC;
    pub const IPRIORITYR: u64 = 0x0400;
    pub const IPRIORITYR_END: u64 = 0x07FC;
    pub const ITARGETSR: u64 = 0x0800;
    pub const ITARGETSR_END: u64 = 0x0BFC;
    pub const ICFGR: u64 = 0x0C00;
    pub const ICFGR_END: u64 = 0x0CFC;
    pub const SGIR: u64 = 0x0F00;
    pub const CPENDSGIR: u64 = 0x0F10;
    pub const CPENDSGIR_END: u64 = 0x0F1C;
    pub const SPENDSGIR: u64 = 0x0F20;
    pub const SPENDSGIR_END: u64 = 0x0F2C;
    /// `IROUTER<n>` is at 0x6000 + 8n; n < 32 is reserved.
    pub const IROUTER_BASE: u64 = 0x6000;
    pub const IROUTER_END: u64 = 0x7FDC;
    pub const ID_V3: u64 = 0xFFD0;
    pub const ID_V3_END: u64 = 0xFFFC;
    pub const ID_V2: u64 = 0x0FD0;
    pub const ID_V2_END: u64 = 0x0FFC;
}

/// GICv3 GICD_IIDR: ProductID 0x45 ('E'), Arm implementer code.
pub const GICD_IIDR_V3: u32 = 0x4500_043B;
/// GICv2 GICD_IIDR, GIC-400 style.
pub const GICD_IIDR_V2: u32 = 0x0200_043B;

/// GICD PIDR4-7, PIDR0-3, CIDR0-3 of a GICv3 (0xFFD0-0xFFFC): PIDR2.ArchRev = 3.
const GICD_ID_V3: [u8; 12] = [
    0x44, 0x00, 0x00, 0x00, 0x92, 0xB4, 0x3B, 0x00, 0x0D, 0xF0, 0x05, 0xB1,
];
/// The same block of a GICv2 (0xFD0-0xFFC): ICPIDR2.ArchRev = 2.
const GICD_ID_V2: [u8; 12] = [
    0x04, 0x00, 0x00, 0x00, 0x90, 0xB4, 0x2B, 0x00, 0x0D, 0xF0, 0x05, 0xB1,
];

/// A decoded distributor register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DistReg {
    Ctlr,
    Typer,
    Iidr,
    Typer2,
    /// A one-bit-per-INTID register word starting at the INTID.
    Bits(BitReg, u32),
    /// IPRIORITYR word starting at the INTID.
    Priority(u32),
    /// ITARGETSR word starting at the INTID (GICv2).
    Targets(u32),
    /// ICFGR word starting at the INTID.
    Config(u32),
    /// GICD_SGIR (GICv2).
    Sgir,
    /// CPENDSGIR / SPENDSGIR word starting at the SGI (GICv2).
    SgiPend {
        set: bool,
        first: u32,
    },
    /// `IROUTER<n>` of INTID n (GICv3).
    Router(u32),
    /// An identification register.
    Id(u8),
    /// RAZ/WI with the access rules of the given shape.
    RazWi(Shape),
}

impl DistReg {
    fn shape(self) -> Shape {
        match self {
            Self::Priority(_) | Self::Targets(_) | Self::SgiPend { .. } => Shape::ByteOrWord,
            Self::Router(_) => Shape::Double,
            Self::RazWi(shape) => shape,
            _ => Shape::Word,
        }
    }
}

/// `n` as a `u32` INTID offset (register offsets within the window are small).
fn u32_of(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Vgic {
    fn decode_dist(&self, offset: u64) -> DistReg {
        let v3 = self.version == GicVersion::V3;
        let word = offset & !3;
        let reg = match word {
            offset::CTLR => DistReg::Ctlr,
            offset::TYPER => DistReg::Typer,
            offset::IIDR => DistReg::Iidr,
            offset::TYPER2 if v3 => DistReg::Typer2,
            offset::IGROUPR..=offset::ICACTIVER_END => match BitReg::from_block(word / 0x80) {
                Some(reg) => DistReg::Bits(reg, u32_of((word % 0x80) * 8)),
                None => DistReg::RazWi(Shape::Reserved),
            },
            offset::IPRIORITYR..=offset::IPRIORITYR_END => {
                DistReg::Priority(u32_of(word - offset::IPRIORITYR))
            }
            offset::ITARGETSR..=offset::ITARGETSR_END if !v3 => {
                DistReg::Targets(u32_of(word - offset::ITARGETSR))
            }
            // ITARGETSR is RES0 with affinity routing, but keeps its byte accessibility.
            offset::ITARGETSR..=offset::ITARGETSR_END => DistReg::RazWi(Shape::ByteOrWord),
            offset::ICFGR..=offset::ICFGR_END => {
                DistReg::Config(u32_of((word - offset::ICFGR) * 4))
            }
            offset::SGIR if !v3 => DistReg::Sgir,
            offset::CPENDSGIR..=offset::CPENDSGIR_END if !v3 => DistReg::SgiPend {
                set: false,
                first: u32_of(word - offset::CPENDSGIR),
            },
            offset::SPENDSGIR..=offset::SPENDSGIR_END if !v3 => DistReg::SgiPend {
                set: true,
                first: u32_of(word - offset::SPENDSGIR),
            },
            offset::CPENDSGIR..=offset::SPENDSGIR_END => DistReg::RazWi(Shape::ByteOrWord),
            offset::IROUTER_BASE..=offset::IROUTER_END if v3 => {
                let intid = u32_of((word - offset::IROUTER_BASE) / 8);
                if intid < NR_PRIVATE {
                    DistReg::RazWi(Shape::Double)
                } else {
                    DistReg::Router(intid)
                }
            }
            offset::ID_V3..=offset::ID_V3_END if v3 => id_reg(&GICD_ID_V3, word - offset::ID_V3),
            offset::ID_V2..=offset::ID_V2_END if !v3 => id_reg(&GICD_ID_V2, word - offset::ID_V2),
            _ => DistReg::RazWi(Shape::Reserved),
        };
        // With affinity routing the SGI/PPI words live in the GICR: RAZ/WI here.
        match reg {
            DistReg::Bits(_, first) | DistReg::Priority(first) | DistReg::Config(first)
                if v3 && first < NR_PRIVATE =>
            {
                DistReg::RazWi(reg.shape())
            }
            _ => reg,
        }
    }

    /// GICD_TYPER.
    /// GICD_TYPER (constant for the VM: computed once, in [`Vgic::new`]).
    pub(super) fn gicd_typer(&self) -> u32 {
        let it_lines = self.nr_intids() / 32 - 1;
        match self.version {
            GicVersion::V3 => {
                let rss = self.vcpus.iter().any(|v| v.mpidr & 0xFF > 15);
                (GICD_TYPER::ITLinesNumber.val(it_lines)
                    + GICD_TYPER::IDbits.val(9)
                    + GICD_TYPER::A3V::SET
                    + GICD_TYPER::RSS.val(u32::from(rss)))
                .value
            }
            GicVersion::V2 => {
                let cpus = u32::try_from(self.vcpus.len())
                    .unwrap_or(1)
                    .saturating_sub(1);
                (GICD_TYPER::ITLinesNumber.val(it_lines) + GICD_TYPER::CPUNumber.val(cpus)).value
            }
        }
    }

    fn gicd_ctlr(&self) -> u32 {
        match self.version {
            GicVersion::V3 => {
                (GICD_CTLR::EnableGrp0.val(u32::from(self.enable_grp0))
                    + GICD_CTLR::EnableGrp1.val(u32::from(self.enable_grp1))
                    + GICD_CTLR::ARE::SET
                    + GICD_CTLR::DS::SET)
                    .value
            }
            GicVersion::V2 => {
                (GICD_CTLR_V2::EnableGrp0.val(u32::from(self.enable_grp0))
                    + GICD_CTLR_V2::EnableGrp1.val(u32::from(self.enable_grp1)))
                .value
            }
        }
    }

    fn write_gicd_ctlr(&mut self, value: u32) -> KickSet {
        // The enable bits sit at the same place in both layouts; ARE and DS are RAO/WI, RWP
        // and E1NWF RAZ/WI.
        let grp0 = GICD_CTLR::EnableGrp0.is_set(value);
        let grp1 = GICD_CTLR::EnableGrp1.is_set(value);
        if grp0 == self.enable_grp0 && grp1 == self.enable_grp1 {
            return KickSet::EMPTY;
        }
        self.enable_grp0 = grp0;
        self.enable_grp1 = grp1;
        self.touch_all()
    }

    /// CPU-interface bits implemented in ITARGETSR / SGIR target lists.
    fn cpu_mask(&self) -> u8 {
        u8::try_from(KickSet::all(self.vcpus.len()).0 & 0xFF).unwrap_or(u8::MAX)
    }

    /// ITARGETSR word for INTIDs `first..first + 4`, as seen by CPU `accessor`.
    fn read_targets(&self, first: u32, accessor: usize) -> u32 {
        if self.vcpus.len() == 1 {
            // Uniprocessor: RAZ/WI (IHI 0048B, GICD_ITARGETSRn).
            return 0;
        }
        (0..4u32).fold(0, |acc, k| {
            let intid = first.saturating_add(k);
            let byte = if intid < NR_PRIVATE {
                // Banked, read-only: the accessing CPU's own bit.
                u8::try_from(KickSet::single(accessor).0 & 0xFF).unwrap_or(0)
            } else {
                self.irq(intid, 0).map_or(0, |irq| irq.targets)
            };
            acc | (u32::from(byte) << (8 * k))
        })
    }

    fn write_targets(&mut self, first: u32, value: u32, lanes: u32) -> KickSet {
        if self.vcpus.len() == 1 {
            return KickSet::EMPTY;
        }
        let mask = self.cpu_mask();
        let mut kicks = KickSet::EMPTY;
        for k in 0..4u32 {
            let intid = first.saturating_add(k);
            if lanes & (0xFF << (8 * k)) == 0 || intid < NR_PRIVATE {
                continue;
            }
            let byte = u8::try_from((value >> (8 * k)) & 0xFF).unwrap_or(0) & mask;
            let Some(irq) = self.irq_mut(intid, 0) else {
                continue;
            };
            if irq.targets != byte {
                irq.targets = byte;
                kicks = kicks.union(self.touch(intid, 0));
            }
        }
        kicks
    }

    /// GICD_SGIR write by CPU `sender`.
    fn write_sgir(&mut self, sender: usize, value: u32) -> KickSet {
        use GICD_SGIR::TargetListFilter::Value;
        let intid = GICD_SGIR::SGIINTID.read(value);
        let list = u64::from(GICD_SGIR::CPUTargetList.read(value));
        let own = KickSet::single(sender).0;
        let targets = match GICD_SGIR::TargetListFilter.read_as_enum(value) {
            Some(Value::List) => list,
            Some(Value::AllButSelf) => !own,
            Some(Value::SelfOnly) => own,
            // 0b11 is reserved: no SGI.
            None => 0,
        };
        self.sgi_v2(sender, intid, targets)
    }

    /// CPENDSGIR / SPENDSGIR word for SGIs `first..first + 4` of CPU `bank`: one byte of source
    /// CPUs per SGI.
    fn read_sgi_pend(&self, first: u32, bank: usize) -> u32 {
        (0..4u32).fold(0, |acc, k| {
            let byte = self.irq(first.saturating_add(k), bank).map_or(0, |irq| {
                let in_lr = irq.owner.is_some() && irq.lr_state.pending() && !irq.unpend_req;
                let lr_bit = if in_lr {
                    1u8.checked_shl(irq.lr_source.into()).unwrap_or(0)
                } else {
                    0
                };
                irq.sgi_sources | lr_bit
            });
            acc | (u32::from(byte) << (8 * k))
        })
    }

    fn write_sgi_pend(
        &mut self,
        set: bool,
        first: u32,
        bank: usize,
        value: u32,
        lanes: u32,
    ) -> KickSet {
        let mask = self.cpu_mask();
        let mut kicks = KickSet::EMPTY;
        for k in 0..4u32 {
            let intid = first.saturating_add(k);
            if lanes & (0xFF << (8 * k)) == 0 || intid >= NR_SGIS {
                continue;
            }
            let bits = u8::try_from((value >> (8 * k)) & 0xFF).unwrap_or(0) & mask;
            let Some(irq) = self.irq_mut(intid, bank) else {
                continue;
            };
            let before = *irq;
            if set {
                irq.sgi_sources |= bits;
            } else {
                irq.sgi_sources &= !bits;
                let lr_bit = 1u8.checked_shl(irq.lr_source.into()).unwrap_or(0);
                if irq.owner.is_some() && bits & lr_bit != 0 {
                    irq.unpend_req = true;
                }
            }
            if *irq != before {
                kicks = kicks.union(self.touch(intid, bank));
            }
        }
        kicks
    }

    /// A guest read of the distributor by vCPU `vcpu`.
    pub fn dist_read(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
    ) -> Result<u64, MmioError> {
        let accessor = self.vcpu_index(vcpu).ok_or(MmioError::BadAccess)?;
        if offset >= GICD_SIZE_BYTES {
            return Err(MmioError::BadAccess);
        }
        let reg = self.decode_dist(offset);
        check(reg.shape(), offset, width)?;
        let word = match reg {
            DistReg::Router(intid) => {
                let route = self.irq(intid, 0).map_or(0, |irq| irq.route);
                return Ok(extract64(route, offset, width));
            }
            DistReg::Ctlr => self.gicd_ctlr(),
            DistReg::Typer => self.typer,
            DistReg::Iidr => match self.version {
                GicVersion::V3 => GICD_IIDR_V3,
                GicVersion::V2 => GICD_IIDR_V2,
            },
            DistReg::Bits(reg @ (BitReg::SetPending | BitReg::ClearPending), first) => {
                // The pending state follows hardware-linked lines at the moment of the read.
                self.resample_word(first, accessor, accessor);
                self.read_bits(reg, first, accessor)
            }
            DistReg::Bits(reg, first) => self.read_bits(reg, first, accessor),
            DistReg::Priority(first) => self.read_priority(first, accessor),
            DistReg::Targets(first) => self.read_targets(first, accessor),
            DistReg::Config(first) => self.read_config(first, accessor),
            DistReg::SgiPend { first, .. } => self.read_sgi_pend(first, accessor),
            DistReg::Id(id) => u32::from(id),
            // SGIR is write-only; TYPER2 is all zeros.
            DistReg::Typer2 | DistReg::Sgir | DistReg::RazWi(_) => 0,
        };
        Ok(extract32(word, offset, width))
    }

    /// A guest write to the distributor by vCPU `vcpu`. vCPUs to kick accumulate for
    /// [`Vgic::take_kicks`].
    pub fn dist_write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        let accessor = self.vcpu_index(vcpu).ok_or(MmioError::BadAccess)?;
        if offset >= GICD_SIZE_BYTES {
            return Err(MmioError::BadAccess);
        }
        let reg = self.decode_dist(offset);
        check(reg.shape(), offset, width)?;
        if let DistReg::Router(intid) = reg {
            let (value, lanes) = place64(value, offset, width);
            if let Some(irq) = self.irq_mut(intid, 0) {
                let route = ((irq.route & !lanes) | value) & IROUTER_MASK;
                if route != irq.route {
                    // Kick the old owner (to retract) and the new target.
                    let before = self.touch(intid, 0);
                    if let Some(irq) = self.irq_mut(intid, 0) {
                        irq.route = route;
                    }
                    let after = self.touch(intid, 0);
                    self.mmio_kicks = self.mmio_kicks.union(before).union(after);
                }
            }
            return Ok(());
        }
        let (value, lanes) = place32(value, offset, width);
        let kicks = match reg {
            DistReg::Ctlr => self.write_gicd_ctlr(value),
            DistReg::Bits(reg, first) => self.write_bits(reg, first, accessor, value),
            DistReg::Priority(first) => self.write_priority(first, accessor, value, lanes),
            DistReg::Targets(first) => self.write_targets(first, value, lanes),
            DistReg::Config(first) => self.write_config(first, accessor, value),
            DistReg::Sgir => self.write_sgir(accessor, value),
            DistReg::SgiPend { set, first } => {
                self.write_sgi_pend(set, first, accessor, value, lanes)
            }
            // Read-only and reserved registers ignore writes.
            DistReg::Typer
            | DistReg::Iidr
            | DistReg::Typer2
            | DistReg::Router(_)
            | DistReg::Id(_)
            | DistReg::RazWi(_) => KickSet::EMPTY,
        };
        self.mmio_kicks = self.mmio_kicks.union(kicks);
        Ok(())
    }
}

/// Identification register at `rel` bytes into an ID block.
fn id_reg(block: &[u8; 12], rel: u64) -> DistReg {
    usize::try_from(rel / 4)
        .ok()
        .and_then(|i| block.get(i))
        .map_or(DistReg::RazWi(Shape::Reserved), |&id| DistReg::Id(id))
}

/// The identification registers for the redistributor (GICR PIDR0 = 0x93, the rest as GICD).
pub(super) fn gicr_id(rel: u64) -> Option<u8> {
    let i = usize::try_from(rel / 4).ok()?;
    if i == 4 {
        return Some(0x93);
    }
    GICD_ID_V3.get(i).copied()
}
