//! Filling a vCPU's list registers before it enters the guest ([`Vgic::flush`]): which
//! interrupts get an LR, in which order, and when a higher-priority arrival evicts a pending
//! entry (the order and the eviction rule are in [`super::lr`]'s module documentation).

use super::kick::{BitIter, KickSet, low_bits};
use super::lr::{FlushResult, Lr, LrState, MAX_LRS, set_slot, vcpu_u16};
use super::state::{Irq, NR_PRIVATE, PRIORITY_MASK, Vgic, VgicError};
use crate::vdev::VcpuId;

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

impl Vgic {
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
}

impl Vgic {
    fn candidates(&mut self, v: usize, n: usize) -> (TopK<TOPK>, usize) {
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
}

impl Vgic {
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
