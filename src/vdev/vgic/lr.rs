//! List-register management: which interrupts a vCPU's list registers hold, in which order
//! they are loaded, and how the hardware's view is folded back after an exit.
//!
//! The LRs are modelled as plain [`Lr`] values, independent of the GIC version; the arch code
//! converts them to and from `ICH_LR<n>_EL2` ([`encode_v3`] / [`decode_v3`]) or `GICH_LR<n>`
//! ([`encode_v2`] / [`decode_v2`]). The contract with the arch side, per vCPU:
//!
//! ```text
//!   exit ──> if live_lrs(v) != 0: read those LRs from hardware into `lrs`;
//!            freed = sync(v, lrs); write zero to the LRs in `freed`
//!        ──> handle the exit (MMIO, SGIs, device inputs; they kick / dirty vCPUs)
//!        ──> if needs_flush(v): r = flush(v, lrs); write the LRs in r.changed to hardware;
//!            ICH_HCR_EL2.UIE (GICH_HCR.UIE) = r.overflow
//!        ──> enter the guest
//! ```
//!
//! `lrs` is the vCPU's shadow of its hardware LRs, the same length (the number of implemented
//! LRs, at most [`MAX_LRS`]) on every call. `sync` must run after every exit where LRs were live
//! and before `flush`, or `flush` would act on stale state. Maintenance interrupts:
//!
//! * `Lr::eoi_maint` (ICH_LR.EOI / GICH_LR.EOI) is set on level-sensitive interrupts without a
//!   hardware link, so their line is re-sampled after the guest deactivates them, and on GICv2
//!   SGIs with further sources pending, so the next source's instance follows.
//! * [`FlushResult::overflow`]: interrupts are left out for want of LRs. Underflow (UIE: at most
//!   one LR valid) brings the vCPU back to refill. Every LR is in use when this is set, so with
//!   more than one LR the maintenance interrupt cannot fire at once.
//!
//! Order: active interrupts first (their deactivation must find an LR), then by priority (lowest
//! value first), then by INTID. When no LR is free, a pending arrival with a strictly higher
//! priority evicts the lowest-priority *pending* (never active) entry back to software, so four
//! LRs still deliver in priority order.

use super::regs::{GICH_LR, ICH_LR};
use super::state::{GicVersion, Irq, KickSet, NR_SGIS, Vgic};

/// Most list registers handled (GICH_VTR.ListRegs allows 64; ICH_VTR_EL2 16).
pub const MAX_LRS: usize = 64;

/// State of a list register entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum LrState {
    #[default]
    Invalid,
    Pending,
    Active,
    PendingActive,
}

impl LrState {
    /// The two-bit State field (both layouts use the same encoding).
    pub const fn bits(self) -> u8 {
        match self {
            Self::Invalid => 0,
            Self::Pending => 1,
            Self::Active => 2,
            Self::PendingActive => 3,
        }
    }
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Invalid,
            1 => Self::Pending,
            2 => Self::Active,
            _ => Self::PendingActive,
        }
    }
    pub const fn from_flags(pending: bool, active: bool) -> Self {
        match (pending, active) {
            (false, false) => Self::Invalid,
            (true, false) => Self::Pending,
            (false, true) => Self::Active,
            (true, true) => Self::PendingActive,
        }
    }
    pub const fn pending(self) -> bool {
        matches!(self, Self::Pending | Self::PendingActive)
    }
    pub const fn active(self) -> bool {
        matches!(self, Self::Active | Self::PendingActive)
    }
}

/// One list register, independent of the GIC version.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Lr {
    /// Virtual INTID.
    pub intid: u32,
    /// Priority (the low three bits are zero).
    pub priority: u8,
    pub state: LrState,
    /// Group 1 (else group 0).
    pub group1: bool,
    /// HW bit: the physical INTID the guest's deactivation also deactivates.
    pub hw: Option<u32>,
    /// Request a maintenance interrupt when the guest deactivates it (only without `hw`).
    pub eoi_maint: bool,
    /// GICv2 SGIs: the source CPU (GICH_LR.CPUID); zero otherwise.
    pub source: u8,
}

impl Lr {
    /// An empty list register.
    pub const INVALID: Self = Self {
        intid: 0,
        priority: 0,
        state: LrState::Invalid,
        group1: false,
        hw: None,
        eoi_maint: false,
        source: 0,
    };
}

/// `ICH_LR<n>_EL2` image of `lr`: vINTID 31:0, pINTID 44:32 (HW = 1) or EOI 41 (HW = 0),
/// Priority 55:48, Group 60, HW 61, State 63:62.
pub fn encode_v3(lr: &Lr) -> u64 {
    let mut v = ICH_LR::vINTID.val(u64::from(lr.intid))
        + ICH_LR::Priority.val(u64::from(lr.priority))
        + ICH_LR::Group.val(u64::from(lr.group1))
        + ICH_LR::State.val(u64::from(lr.state.bits()));
    match lr.hw {
        Some(p) => v += ICH_LR::HW::SET + ICH_LR::pINTID.val(u64::from(p)),
        None => v += ICH_LR::EOI.val(u64::from(lr.eoi_maint)),
    }
    v.value
}

/// The [`Lr`] an `ICH_LR<n>_EL2` value describes.
pub fn decode_v3(value: u64) -> Lr {
    let hw = ICH_LR::HW.is_set(value);
    Lr {
        intid: u32::try_from(ICH_LR::vINTID.read(value)).unwrap_or(0),
        priority: u8::try_from(ICH_LR::Priority.read(value)).unwrap_or(0),
        state: LrState::from_bits(u8::try_from(ICH_LR::State.read(value)).unwrap_or(0)),
        group1: ICH_LR::Group.is_set(value),
        hw: hw.then(|| u32::try_from(ICH_LR::pINTID.read(value)).unwrap_or(0)),
        eoi_maint: !hw && ICH_LR::EOI.is_set(value),
        source: 0,
    }
}

/// `GICH_LR<n>` image of `lr`: VirtualID 9:0, PhysicalID 19:10 (HW = 1) or CPUID 12:10 and EOI 19
/// (HW = 0), Priority 27:23 (the top five bits of the priority), State 29:28, Grp1 30, HW 31.
pub fn encode_v2(lr: &Lr) -> u32 {
    let mut v = GICH_LR::VirtualID.val(lr.intid & GICH_LR::VirtualID.mask)
        + GICH_LR::Priority.val(u32::from(lr.priority >> 3))
        + GICH_LR::State.val(u32::from(lr.state.bits()))
        + GICH_LR::Grp1.val(u32::from(lr.group1));
    match lr.hw {
        Some(p) => v += GICH_LR::HW::SET + GICH_LR::PhysicalID.val(p & GICH_LR::PhysicalID.mask),
        None => {
            v += GICH_LR::CPUID.val(u32::from(lr.source) & GICH_LR::CPUID.mask)
                + GICH_LR::EOI.val(u32::from(lr.eoi_maint));
        }
    }
    v.value
}

/// The [`Lr`] a `GICH_LR<n>` value describes.
pub fn decode_v2(value: u32) -> Lr {
    let hw = GICH_LR::HW.is_set(value);
    Lr {
        intid: GICH_LR::VirtualID.read(value),
        priority: u8::try_from(GICH_LR::Priority.read(value) << 3).unwrap_or(0),
        state: LrState::from_bits(u8::try_from(GICH_LR::State.read(value)).unwrap_or(0)),
        group1: GICH_LR::Grp1.is_set(value),
        hw: hw.then(|| GICH_LR::PhysicalID.read(value)),
        eoi_maint: !hw && GICH_LR::EOI.is_set(value),
        source: if hw {
            0
        } else {
            u8::try_from(GICH_LR::CPUID.read(value)).unwrap_or(0)
        },
    }
}

/// What [`Vgic::flush`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FlushResult {
    /// Deliverable interrupts did not fit: enable the underflow maintenance interrupt
    /// (ICH_HCR_EL2.UIE / GICH_HCR.UIE) to come back and refill.
    pub overflow: bool,
    /// LRs that hold an interrupt now (bit n = LR n).
    pub live: u64,
    /// LRs whose contents changed and must be written to hardware.
    pub changed: u64,
    /// Other vCPUs to kick: an interrupt retracted from this vCPU's LRs (disabled, re-routed)
    /// may now be delivered to them.
    pub kick: KickSet,
    /// A hardware-linked level SPI (a passthrough device) waits in an LR, only pending, and its
    /// line has not been re-sampled since it was injected: the guest may lower it by a
    /// passthrough access with no exit and then acknowledge a stale instance. The caller traps
    /// the guest's acknowledge (GICv3: ICH_HCR_EL2.TALL1), re-samples at that exit ([`Vgic::sync`])
    /// and calls [`Vgic::check_lines_done`]. (The virtual timer needs no trap: the hypervisor
    /// reads its line at any exit.)
    pub check_lines: bool,
}

/// Writes `new` into slot `i` of `lrs`, noting a change.
pub(super) fn set_slot(lrs: &mut [Lr], i: usize, new: Lr, changed: &mut u64) {
    if let Some(slot) = lrs.get_mut(i)
        && *slot != new
    {
        *slot = new;
        *changed |= 1u64 << i;
    }
}

impl Vgic {
    pub(super) fn is_v2_sgi(&self, intid: u32) -> bool {
        self.version == GicVersion::V2 && intid < NR_SGIS
    }

    /// Whether `intid` may now be *delivered* (not just held active) to `v`: enabled, its group
    /// enabled in the distributor, and targeted at `v`.
    pub(super) fn deliverable_to(&self, intid: u32, irq: &Irq, v: usize) -> bool {
        irq.enabled && self.group_enabled(irq) && self.targets(intid, v, irq, v)
    }
}

/// `v` as the `u16` of a [`VcpuId`] (vCPU indices are below 64).
pub(super) fn vcpu_u16(v: usize) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}
