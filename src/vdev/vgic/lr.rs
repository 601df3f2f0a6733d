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
use super::state::{
    BitIter, GicVersion, Irq, KickSet, NR_PRIVATE, NR_SGIS, PRIORITY_MASK, Vgic, VgicError,
    low_bits,
};
use crate::vdev::VcpuId;
use alloc::format;
use alloc::string::String;

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

/// A candidate for an LR: its sort key (lower is better) and INTID.
#[derive(Clone, Copy)]
struct Candidate {
    key: u64,
    intid: u32,
}

/// Candidates one scan of [`Vgic::flush`] collects: a full scan per 16 LRs filled (real GICs
/// have at most 16 LRs but GICv2 allows 64), and a small array to initialise on every flush.
const TOPK: usize = 16;

/// The best `cap` (at most `N`) candidates seen so far, sorted best first.
pub(super) struct TopK<const N: usize> {
    items: [Candidate; N],
    len: usize,
    cap: usize,
}

impl<const N: usize> TopK<N> {
    fn new(cap: usize) -> Self {
        Self {
            items: [Candidate { key: 0, intid: 0 }; N],
            len: 0,
            cap: cap.min(N),
        }
    }

    /// As many as the capacity: there may be more candidates than were kept.
    fn is_full(&self) -> bool {
        self.len == self.cap
    }

    fn offer(&mut self, c: Candidate) {
        let mut pos = if self.len < self.cap {
            self.len += 1;
            self.len - 1
        } else {
            match self.items.get(self.cap.wrapping_sub(1)) {
                Some(worst) if c.key < worst.key => self.cap - 1,
                _ => return,
            }
        };
        // Insertion: shift worse entries down one place.
        while pos > 0 {
            let Some(&prev) = self.items.get(pos - 1) else {
                break;
            };
            if prev.key <= c.key {
                break;
            }
            if let Some(slot) = self.items.get_mut(pos) {
                *slot = prev;
            }
            pos -= 1;
        }
        if let Some(slot) = self.items.get_mut(pos) {
            *slot = c;
        }
    }

    fn as_slice(&self) -> &[Candidate] {
        self.items.get(..self.len).unwrap_or(&[])
    }
}

/// What [`Vgic::place_all`] did.
#[derive(Default)]
struct Placed {
    count: usize,
    /// A lower-priority pending entry was evicted for a candidate.
    evicted: bool,
    /// A candidate found no LR (all full, none evictable).
    stuck: bool,
}

/// Sort key: active first, then priority, then INTID.
fn candidate_key(irq: &Irq, intid: u32) -> u64 {
    (u64::from(!irq.active) << 48) | (u64::from(irq.priority) << 32) | u64::from(intid)
}

/// Writes `new` into slot `i` of `lrs`, noting a change.
fn set_slot(lrs: &mut [Lr], i: usize, new: Lr, changed: &mut u64) {
    if let Some(slot) = lrs.get_mut(i)
        && *slot != new
    {
        *slot = new;
        *changed |= 1u64 << i;
    }
}

impl Vgic {
    fn is_v2_sgi(&self, intid: u32) -> bool {
        self.version == GicVersion::V2 && intid < NR_SGIS
    }

    /// Whether `intid` may now be *delivered* (not just held active) to `v`: enabled, its group
    /// enabled in the distributor, and targeted at `v`.
    fn deliverable_to(&self, intid: u32, irq: &Irq, v: usize) -> bool {
        irq.enabled && self.group_enabled(irq) && self.targets(intid, v, irq, v)
    }

    /// Fills `vcpu`'s list registers before it enters the guest. See the module documentation.
    pub fn flush(&mut self, vcpu: VcpuId, lrs: &mut [Lr]) -> FlushResult {
        let Some(v) = self.vcpu_index(vcpu) else {
            return FlushResult::default();
        };
        let n = lrs.len().min(MAX_LRS);
        let all = low_bits(n);
        let (mut live, scrub, hw_spis) = self
            .vcpus
            .get(v)
            .map_or((0, false, false), |s| (s.lr_live & all, s.scrub, s.hw_spis));
        let mut changed = 0;
        if scrub {
            // The hardware LRs hold unknown values: rewrite every one.
            changed = all;
            for i in BitIter(all & !live) {
                set_slot(lrs, i, Lr::INVALID, &mut changed);
            }
        }

        // 1. Merge requests into the LRs we hold; retract what may no longer be delivered.
        let mut kick = KickSet::EMPTY;
        for i in BitIter(live) {
            if let Some(intid) = self.reconcile(v, i, lrs, &mut live, &mut changed) {
                kick = kick.union(self.touch(intid, v));
            }
        }

        // 2. The best candidates not in an LR, and 3. place them, best first, evicting
        // lower-priority pending entries when full. One scan finds up to TOPK candidates;
        // another follows only while scans come back full and LRs remain to fill.
        let mut overflow = false;
        // Only what changed since the last flush can be a new candidate, unless a full scan
        // was asked for (or the last flush left interrupts out).
        let (scan, hints, nhints) = self.vcpus.get(v).map_or((true, [0; 4], 0), |s| {
            (s.scan, s.hints, usize::from(s.nhints))
        });
        loop {
            // (placed, candidates in all, whether the candidate list was capped)
            let (placed, total, capped) = if scan {
                let (best, total) = self.candidates(v, n);
                let placed = self.place_all(v, best.as_slice(), lrs, all, &mut live, &mut changed);
                (placed, total, best.is_full())
            } else {
                let hinted = hints.get(..nhints).unwrap_or(&[]);
                let (best, total) = self.hinted_candidates(v, n, hinted);
                let placed = self.place_all(v, best.as_slice(), lrs, all, &mut live, &mut changed);
                (placed, total, best.is_full())
            };
            if placed.evicted {
                overflow = true;
            }
            if total <= placed.count {
                break;
            }
            // More candidates than placed: either no LR could take them (overflow), or the
            // list was capped and the next round may place more.
            if !(capped && !placed.stuck && live != all) {
                overflow = true;
                break;
            }
        }

        // Only a vCPU that had a hardware-linked SPI injected looks (see `VcpuState::hw_spis`).
        let check_lines = hw_spis
            && BitIter(live).any(|i| {
                lrs.get(i).is_some_and(|lr| {
                    lr.hw.is_some()
                        && lr.intid >= NR_PRIVATE
                        && lr.state == LrState::Pending
                        && self
                            .irq(lr.intid, v)
                            .is_some_and(|irq| irq.hw_level() && !irq.checked)
                })
            });
        if let Some(s) = self.vcpus.get_mut(v) {
            s.lr_live = live;
            s.dirty = false;
            s.scrub = false;
            // Interrupts left out are found by the next flush's scan.
            s.scan = overflow;
            s.nhints = 0;
            s.hw_spis = check_lines;
        }
        FlushResult {
            overflow,
            live,
            changed,
            kick: KickSet(kick.0 & !KickSet::single(v).0),
            check_lines,
        }
    }

    /// After an exit that trapped the guest's acknowledge for [`FlushResult::check_lines`]:
    /// [`Vgic::sync`] re-sampled the lines of `vcpu`'s pending hardware-linked entries and took
    /// back those that fell; the rest were high at that moment and are marked checked, so the
    /// next flush (which must run: the vCPU is marked) stops asking for the trap. `lrs` is the
    /// vCPU's LR shadow as the sync left it.
    pub fn check_lines_done(&mut self, vcpu: VcpuId, lrs: &[Lr]) {
        let Some(v) = self.vcpu_index(vcpu) else {
            return;
        };
        let live = self.live_lrs(vcpu);
        for i in BitIter(live) {
            let Some(lr) = lrs.get(i) else {
                continue;
            };
            if lr.hw.is_some()
                && let Some(irq) = self.irq_mut(lr.intid, v)
            {
                irq.checked = true;
            }
        }
        if let Some(s) = self.vcpus.get_mut(v) {
            s.dirty = true;
        }
    }

    /// The best (up to `n`, at most TOPK) interrupts for `v` that are not in an LR and want
    /// one, and how many there are in all. Only indexed interrupts are looked at (see
    /// `Vgic::maybe`): this vCPU's private bank, then the SPIs; those found with nothing
    /// pending, active or in an LR leave the index.
    /// Places `cands` (best first) in free LRs, evicting lower-priority pending entries
    /// when none is free.
    fn place_all(
        &mut self,
        v: usize,
        cands: &[Candidate],
        lrs: &mut [Lr],
        all: u64,
        live: &mut u64,
        changed: &mut u64,
    ) -> Placed {
        let mut p = Placed::default();
        for c in cands {
            let slot = match BitIter(all & !*live).next() {
                Some(free) => free,
                None => match self.victim(lrs, *live, c) {
                    Some(victim) => {
                        self.evict(v, victim, lrs, live, changed);
                        p.evicted = true;
                        victim
                    }
                    None => {
                        p.stuck = true;
                        break;
                    }
                },
            };
            self.place(v, c.intid, slot, lrs, changed);
            *live |= 1u64 << slot;
            p.count += 1;
        }
        p
    }

    /// The hinted interrupts that want an LR of `v` (see `VcpuState::hints`).
    /// Whether `irq` (INTID `intid`, bank `bank`) wants one of `v`'s list registers now: not
    /// in an LR, targeted at `v`, and active or deliverable.
    fn is_candidate(&self, intid: u32, bank: usize, irq: &Irq, v: usize) -> bool {
        self.wants_lr(irq)
            && self.targets(intid, bank, irq, v)
            && (irq.active || self.deliverable_to(intid, irq, v))
    }

    fn hinted_candidates(&mut self, v: usize, n: usize, hints: &[u32]) -> (TopK<4>, usize) {
        let mut best = TopK::new(n);
        let mut total = 0usize;
        for &intid in hints {
            let bank = if intid < NR_PRIVATE { v } else { 0 };
            let Some(irq) = self.irq(intid, bank) else {
                continue;
            };
            if !self.is_candidate(intid, bank, irq, v) {
                continue;
            }
            total += 1;
            best.offer(Candidate {
                key: candidate_key(irq, intid),
                intid,
            });
        }
        (best, total)
    }

    pub(super) fn candidates(&mut self, v: usize, n: usize) -> (TopK<TOPK>, usize) {
        let mut best = TopK::new(n);
        let mut total = 0usize;
        let first = v * NR_PRIVATE as usize;
        let plen = self.private.len();
        let spi_end = plen + self.spis.len();
        // Returns true for an idle interrupt (to drop from the index).
        let mut visit = |this: &Self, flat: usize| {
            let (intid, irq) = if flat < plen {
                ((flat - first) as u32, this.private.get(flat))
            } else {
                (
                    NR_PRIVATE + (flat - plen) as u32,
                    this.spis.get(flat - plen),
                )
            };
            let Some(irq) = irq else {
                return false;
            };
            if irq.owner.is_none() && !irq.active && !irq.pending_sw() {
                return true;
            }
            if !this.is_candidate(intid, v, irq, v) {
                return false;
            }
            total += 1;
            best.offer(Candidate {
                key: candidate_key(irq, intid),
                intid,
            });
            false
        };
        self.scan_maybe_unindex(first, first + NR_PRIVATE as usize, &mut visit);
        self.scan_maybe_unindex(plen, spi_end, &mut visit);
        (best, total)
    }

    /// [`Vgic::inject_hw`] of a private interrupt of `vcpu`, delivered straight into a free
    /// list register when that is all a [`Vgic::flush`] would do: nothing else was waiting for
    /// the vCPU's flush (it was not dirty) and an LR is free. `lrs` is the vCPU's LR shadow,
    /// current since its last sync. Returns the kicks and the LRs changed (to write to
    /// hardware); none changed means the interrupt waits for the next flush as usual.
    ///
    /// This is the running vCPU's own virtual timer on its way in: the full flush scans the
    /// index, this touches one interrupt.
    pub fn inject_hw_into(
        &mut self,
        intid: u32,
        vcpu: VcpuId,
        lrs: &mut [Lr],
    ) -> Result<(KickSet, u64), VgicError> {
        let v = usize::from(vcpu.0);
        let idle = self
            .vcpus
            .get(v)
            .is_some_and(|s| !s.dirty && !s.scrub && !s.scan);
        if !idle || intid >= NR_PRIVATE {
            return Ok((self.inject_hw(intid, vcpu)?, 0));
        }
        let n = lrs.len().min(MAX_LRS);
        let all = low_bits(n);
        let live = self.vcpus.get(v).map_or(all, |s| s.lr_live) & all;
        let free = BitIter(all & !live).next();
        // What `inject_hw` does, without marking the vCPU for a flush yet.
        let bank = self.take_hw(intid, vcpu)?;
        let placeable = self
            .irq(intid, v)
            .is_some_and(|irq| self.is_candidate(intid, v, irq, v));
        let Some(slot) = free.filter(|_| placeable) else {
            // The usual way: the vCPU's next flush.
            return Ok((self.touch(intid, bank), 0));
        };
        let mut changed = 0;
        self.place(v, intid, slot, lrs, &mut changed);
        if let Some(s) = self.vcpus.get_mut(v) {
            s.lr_live = live | (1u64 << slot);
        }
        Ok((KickSet::EMPTY, changed | (1u64 << slot)))
    }

    /// The LR to give up for candidate `c` when all are full: the lowest-priority entry that is
    /// only pending and has a strictly lower priority than `c` (any pending one if `c` is
    /// active, which must get an LR).
    fn victim(&self, lrs: &[Lr], live: u64, c: &Candidate) -> Option<usize> {
        let c_active = c.key >> 48 == 0;
        let c_priority = u8::try_from((c.key >> 32) & 0xFF).unwrap_or(u8::MAX);
        BitIter(live)
            .filter_map(|i| lrs.get(i).map(|lr| (i, lr)))
            .filter(|(_, lr)| lr.state == LrState::Pending)
            .filter(|(_, lr)| c_active || lr.priority > c_priority)
            .max_by_key(|(_, lr)| (lr.priority, lr.intid))
            .map(|(i, _)| i)
    }

    /// Returns the pending-only entry in slot `i` to the software state.
    fn evict(&mut self, v: usize, i: usize, lrs: &mut [Lr], live: &mut u64, changed: &mut u64) {
        let Some(&lr) = lrs.get(i) else {
            return;
        };
        let v2_sgi = self.is_v2_sgi(lr.intid);
        if let Some(irq) = self.irq_mut(lr.intid, v)
            && irq.owner == Some(vcpu_u16(v))
        {
            if v2_sgi {
                irq.sgi_sources |= 1u8.checked_shl(lr.source.into()).unwrap_or(0);
            } else if irq.edge {
                irq.latch = true;
            }
            // Level-sensitive (hardware-linked or not): the latch and line never left software.
            irq.owner = None;
            irq.lr_state = LrState::Invalid;
            irq.unpend_req = false;
        }
        set_slot(lrs, i, Lr::INVALID, changed);
        *live &= !(1u64 << i);
    }

    /// Loads `intid` (bank `v` if private) into free slot `i`, moving its pending state there.
    fn place(&mut self, v: usize, intid: u32, i: usize, lrs: &mut [Lr], changed: &mut u64) {
        let v2_sgi = self.is_v2_sgi(intid);
        let Some(irq) = self.irq_mut(intid, v) else {
            return;
        };
        let active = irq.active;
        let hw = if irq.hw_active { irq.hw } else { None };
        let mut source = 0;
        let pending = if v2_sgi {
            // One source per LR, lowest first; the others wait for this one's EOI.
            if irq.sgi_sources == 0 {
                false
            } else {
                source = u8::try_from(irq.sgi_sources.trailing_zeros()).unwrap_or(0);
                irq.sgi_sources &= !(1u8 << (source & 7));
                true
            }
        } else if hw.is_some() && active {
            // Never pending+active with HW: the physical side holds the pending state.
            false
        } else if !irq.edge {
            // Level-sensitive, hardware-linked or not: the latch stays until the guest
            // acknowledges; the line keeps being followed.
            irq.latch || irq.line
        } else {
            core::mem::take(&mut irq.latch)
        };
        let state = LrState::from_flags(pending, active);
        let lr = Lr {
            intid,
            priority: irq.priority & PRIORITY_MASK,
            state,
            group1: irq.group1,
            hw,
            eoi_maint: hw.is_none() && (irq.level_sw() || (v2_sgi && irq.sgi_sources != 0)),
            source,
        };
        irq.owner = Some(vcpu_u16(v));
        irq.lr_state = state;
        irq.lr_source = source;
        irq.unpend_req = false;
        irq.active_req = None;
        set_slot(lrs, i, lr, changed);
    }

    /// Merges the requests recorded against the interrupt in live slot `i` into the LR, and
    /// retracts it if it is only pending and may no longer be delivered here. Returns the INTID
    /// of a retracted interrupt (it may be deliverable elsewhere now).
    fn reconcile(
        &mut self,
        v: usize,
        i: usize,
        lrs: &mut [Lr],
        live: &mut u64,
        changed: &mut u64,
    ) -> Option<u32> {
        let Some(&lr) = lrs.get(i) else {
            *live &= !(1u64 << i);
            return None;
        };
        let v2_sgi = self.is_v2_sgi(lr.intid);
        let owned = self
            .irq(lr.intid, v)
            .is_some_and(|irq| irq.owner == Some(vcpu_u16(v)));
        if !owned {
            // Not ours (stale after a reset): drop it.
            set_slot(lrs, i, Lr::INVALID, changed);
            *live &= !(1u64 << i);
            return None;
        }
        let deliverable = self
            .irq(lr.intid, v)
            .is_some_and(|irq| self.deliverable_to(lr.intid, irq, v));
        let irq = self.irq_mut(lr.intid, v)?;
        let mut pending = lr.state.pending();
        let mut active = lr.state.active();
        if let Some(req) = irq.active_req.take() {
            active = req;
        }
        if v2_sgi {
            if irq.unpend_req {
                pending = false;
            }
            let bit = 1u8.checked_shl(lr.source.into()).unwrap_or(0);
            if irq.sgi_sources & bit != 0 {
                irq.sgi_sources &= !bit;
                pending = true;
            }
        } else if !irq.edge {
            // Level-sensitive: the pending state is the software latch and line, which may have
            // fallen since the flush that loaded the LR (a line re-sampled low). A HW entry
            // has no pending-and-active form: the physical GIC holds the pending half.
            pending = (irq.latch || irq.line) && !(lr.hw.is_some() && active);
        } else {
            if irq.unpend_req {
                pending = false;
            }
            if irq.latch && !(lr.hw.is_some() && active) {
                irq.latch = false;
                pending = true;
            }
        }
        irq.unpend_req = false;

        let mut hw_done = None;
        let mut retracted = None;
        let new = if pending && !active && !deliverable {
            retracted = Some(lr.intid);
            // Retract: the pending state goes back to software.
            if v2_sgi {
                irq.sgi_sources |= 1u8.checked_shl(lr.source.into()).unwrap_or(0);
            } else if irq.edge {
                irq.latch = true;
            }
            None
        } else if !pending && !active {
            // Cleared by ICPENDR / ICACTIVER or a fallen line. A HW link whose physical
            // interrupt is still active needs the hypervisor to deactivate it now (the physical
            // GIC then tracks the line again: a line still high is signalled anew).
            if lr.hw.is_some() && irq.hw_active {
                irq.hw_active = false;
                irq.line = false;
                hw_done = irq.hw;
            }
            irq.active = false;
            None
        } else {
            let state = LrState::from_flags(pending, active);
            Some(Lr {
                priority: irq.priority & PRIORITY_MASK,
                group1: irq.group1,
                state,
                eoi_maint: lr.hw.is_none() && (irq.level_sw() || (v2_sgi && irq.sgi_sources != 0)),
                ..lr
            })
        };
        match new {
            Some(new) => {
                irq.lr_state = new.state;
                irq.active = new.state.active();
                set_slot(lrs, i, new, changed);
            }
            None => {
                irq.owner = None;
                irq.lr_state = LrState::Invalid;
                set_slot(lrs, i, Lr::INVALID, changed);
                *live &= !(1u64 << i);
            }
        }
        self.hw_deactivate.extend(hw_done);
        retracted
    }

    /// Folds the hardware's view of `vcpu`'s LRs back after an exit: entries the guest
    /// deactivated leave the LRs (a level-sensitive interrupt whose line is still high is
    /// pending again: the resample on EOI), acknowledged ones are recorded as active, and a
    /// hardware-linked entry the guest deactivated has deactivated its physical interrupt.
    ///
    /// Returns the LRs that left use (bit n = LR n): they are reset to [`Lr::INVALID`] in `lrs`
    /// and must be written to hardware as zero, because an invalid LR whose EOI bit is set stays
    /// flagged in ICH_EISR_EL2 (GICH_EISR) and keeps the maintenance interrupt asserted.
    pub fn sync(&mut self, vcpu: VcpuId, lrs: &mut [Lr]) -> u64 {
        let Some(v) = self.vcpu_index(vcpu) else {
            return 0;
        };
        let n = lrs.len().min(MAX_LRS);
        let before = self.vcpus.get(v).map_or(0, |s| s.lr_live) & low_bits(n);
        let mut live = before;
        let mut ignored = 0;
        let mut retired = [0u32; 4];
        let mut nretired = 0usize;
        let mut many_retired = false;
        let mut resample = 0u64;
        for i in BitIter(live) {
            let Some(&lr) = lrs.get(i) else {
                continue;
            };
            let irq = self
                .irq_mut(lr.intid, v)
                .filter(|irq| irq.owner == Some(vcpu_u16(v)));
            let Some(irq) = irq else {
                set_slot(lrs, i, Lr::INVALID, &mut ignored);
                live &= !(1u64 << i);
                continue;
            };
            if irq.lr_state.pending() && !lr.state.pending() {
                // Acknowledged: that consumes a level-sensitive interrupt's ISPENDR latch, and
                // makes a clear request moot.
                if !irq.edge {
                    irq.latch = false;
                }
                irq.unpend_req = false;
            }
            if lr.state == LrState::Invalid {
                irq.owner = None;
                irq.lr_state = LrState::Invalid;
                irq.active = irq.active_req.take() == Some(true);
                irq.unpend_req = false;
                if lr.hw.is_some() {
                    // The guest's deactivation deactivated the physical interrupt: the
                    // physical GIC tracks the line from here and signals a new instance.
                    irq.hw_active = false;
                    irq.line = false;
                }
                // It may want an LR again (a level still high, an edge latched meanwhile).
                match retired.get_mut(nretired) {
                    Some(slot) => *slot = lr.intid,
                    None => many_retired = true,
                }
                nretired += 1;
                set_slot(lrs, i, Lr::INVALID, &mut ignored);
                live &= !(1u64 << i);
            } else {
                irq.lr_state = lr.state;
                irq.active = lr.state.active();
                if lr.hw.is_some() && lr.state == LrState::Pending {
                    resample |= 1u64 << i;
                }
            }
        }
        if resample != 0 {
            live = self.retire_fallen(v, lrs, live, resample);
        }
        let freed = before & !live;
        if let Some(s) = self.vcpus.get_mut(v) {
            s.lr_live = live;
            // A freed LR can take an interrupt left out before (then `scan` is set already).
            s.dirty |= freed != 0;
            if many_retired {
                s.rescan();
            } else {
                for &intid in retired.get(..nretired).unwrap_or(&[]) {
                    s.hint(intid);
                }
            }
        }
        freed
    }

    /// Part of [`Vgic::sync`]: the hardware-linked entries in `candidates` (bit n = LR n) are
    /// only pending: the guest has not acknowledged them. Their line may have fallen without
    /// an exit (a timer disabled or masked, CVAL moved ahead, a device cleared by a
    /// passthrough access), and a pending LR would still deliver them. Each level one is
    /// re-sampled; one found low is taken back now, while the guest cannot touch the LR, and
    /// the physical interrupt the hypervisor left active is handed to
    /// [`Vgic::take_hw_deactivation`], so that the next rise of the line is signalled (KVM does
    /// the same in its LR fold for mapped level interrupts). Returns the live LRs left.
    #[inline(never)]
    fn retire_fallen(&mut self, v: usize, lrs: &mut [Lr], mut live: u64, candidates: u64) -> u64 {
        let Some(sample) = self.sampler else {
            return live;
        };
        let mut ignored = 0;
        for i in BitIter(candidates) {
            let Some(&lr) = lrs.get(i) else {
                continue;
            };
            let Some(p) = lr.hw else {
                continue;
            };
            let Some(irq) = self
                .irq_mut(lr.intid, v)
                .filter(|irq| irq.owner == Some(vcpu_u16(v)))
            else {
                continue;
            };
            if irq.latch || !irq.hw_level() || sample(p, true) != Some(false) {
                continue;
            }
            irq.line = false;
            irq.hw_active = false;
            irq.owner = None;
            irq.lr_state = LrState::Invalid;
            irq.active = irq.active_req.take() == Some(true);
            irq.unpend_req = false;
            self.hw_deactivate.push(p);
            set_slot(lrs, i, Lr::INVALID, &mut ignored);
            live &= !(1u64 << i);
            if let Some(s) = self.vcpus.get_mut(v) {
                s.hint(lr.intid);
            }
        }
        live
    }

    /// The interrupts that are pending for `vcpu`: in its LRs (as of the last sync), or
    /// deliverable to it from software. Yields priorities.
    fn pending_priorities(&self, vcpu: VcpuId) -> impl Iterator<Item = u8> + '_ {
        let v = self.vcpu_index(vcpu);
        let private = (0..NR_PRIVATE).map(move |intid| (intid, v.unwrap_or(usize::MAX)));
        let shared = (NR_PRIVATE..self.nr_intids()).map(|intid| (intid, 0));
        private.chain(shared).filter_map(move |(intid, bank)| {
            let v = v?;
            let irq = self.irq(intid, bank)?;
            let in_lr = irq.owner == Some(vcpu_u16(v)) && irq.lr_state.pending();
            let in_sw =
                irq.owner.is_none() && irq.pending_sw() && self.deliverable_to(intid, irq, v);
            (in_lr || in_sw).then_some(irq.priority)
        })
    }

    /// Whether an interrupt is pending for `vcpu` (in an LR, or deliverable from software):
    /// a vCPU in WFI with one must not block. The CPU interface's priority mask and group
    /// enables (ICH_VMCR_EL2) are the caller's to apply, with
    /// [`Vgic::highest_pending_priority`].
    pub fn has_deliverable(&self, vcpu: VcpuId) -> bool {
        // The same test as `pending_priorities`, as direct slice walks with an early exit:
        // the scheduler asks this for every blocked vCPU it looks at.
        let Some(v) = self.vcpu_index(vcpu) else {
            return false;
        };
        let me = Some(vcpu_u16(v));
        let counts = |intid: u32, irq: &Irq| {
            (irq.owner == me && irq.lr_state.pending())
                || (irq.owner.is_none() && irq.pending_sw() && self.deliverable_to(intid, irq, v))
        };
        let first = v * NR_PRIVATE as usize;
        let plen = self.private.len();
        self.scan_maybe(first, first + NR_PRIVATE as usize, |flat| {
            self.private
                .get(flat)
                .is_some_and(|irq| counts((flat - first) as u32, irq))
        }) || self.scan_maybe(plen, plen + self.spis.len(), |flat| {
            self.spis
                .get(flat - plen)
                .is_some_and(|irq| counts(NR_PRIVATE + (flat - plen) as u32, irq))
        })
    }

    /// The highest priority (lowest value) among the interrupts [`Vgic::has_deliverable`]
    /// counts.
    pub fn highest_pending_priority(&self, vcpu: VcpuId) -> Option<u8> {
        self.pending_priorities(vcpu).min()
    }

    /// Cross-checks `vcpu`'s list-register bookkeeping against `lrs`, its list registers as the
    /// last [`Vgic::flush`] left them: every live LR holds an interrupt owned by `vcpu` in the
    /// state recorded for it, each such interrupt is in exactly one LR, no owned interrupt lacks
    /// an LR, and an edge interrupt pending in an LR has no software latch left (delivery
    /// exactly once). Says what is wrong. A self-check for the host tests' storms and for the
    /// fuzzer (fuzz/); the hypervisor never calls it.
    #[doc(hidden)]
    pub fn check_lrs(&self, vcpu: VcpuId, lrs: &[Lr]) -> Result<(), String> {
        let v = self.vcpu_index(vcpu).ok_or("unknown vCPU")?;
        let live = self.live_lrs(vcpu);
        if lrs.len() < 64 && live >> lrs.len() != 0 {
            return Err(format!("live mask {live:#x} beyond {} LRs", lrs.len()));
        }
        let mut seen = 0usize;
        for (i, lr) in lrs.iter().enumerate() {
            if live
                & 1u64
                    .checked_shl(u32::try_from(i).unwrap_or(64))
                    .unwrap_or(0)
                == 0
            {
                continue;
            }
            let intid = lr.intid;
            if lr.state == LrState::Invalid {
                return Err(format!("live LR {i} invalid"));
            }
            let irq = self
                .irq(intid, v)
                .ok_or_else(|| format!("live LR {i} holds unknown INTID {intid}"))?;
            if irq.owner != Some(vcpu.0) || irq.lr_state != lr.state {
                return Err(format!("LR {i}: INTID {intid} not owned as it holds it"));
            }
            if lrs
                .iter()
                .take(i)
                .enumerate()
                .any(|(j, other)| live & (1u64 << j) != 0 && other.intid == intid)
            {
                return Err(format!("INTID {intid} in two LRs"));
            }
            if !lr.state.active() && irq.hw.is_none() && irq.edge && intid >= NR_SGIS && irq.latch {
                return Err(format!("INTID {intid} both in an LR and latched"));
            }
            seen += 1;
        }
        let owned_private = (0..NR_PRIVATE)
            .filter(|&i| self.irq(i, v).is_some_and(|irq| irq.owner == Some(vcpu.0)))
            .count();
        let owned_spi = (NR_PRIVATE..self.nr_intids())
            .filter(|&i| self.irq(i, 0).is_some_and(|irq| irq.owner == Some(vcpu.0)))
            .count();
        if owned_private + owned_spi != seen {
            return Err(format!(
                "{} interrupts owned, {seen} in LRs",
                owned_private + owned_spi
            ));
        }
        Ok(())
    }

    /// How many deliverable interrupts a full scan finds that could go into `vcpu`'s
    /// `nr_lrs` list registers but are in none: after a flush that left an LR free and reported
    /// no overflow, this must be 0 (the flush's hints missed nothing). Host tests and fuzzer only.
    #[doc(hidden)]
    pub fn missed_candidates(&mut self, vcpu: VcpuId, nr_lrs: usize) -> usize {
        match self.vcpu_index(vcpu) {
            Some(v) => self.candidates(v, nr_lrs).1,
            None => 0,
        }
    }
}

/// `v` as the `u16` of a [`VcpuId`] (vCPU indices are below 64).
fn vcpu_u16(v: usize) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}
