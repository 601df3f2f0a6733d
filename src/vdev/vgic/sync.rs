//! Folding the hardware's view of a vCPU's list registers back into the vGIC after an exit
//! ([`Vgic::sync`]), and the questions asked of the result: is anything deliverable (WFI),
//! what is the highest pending priority, are the LRs consistent.

use alloc::format;
use alloc::string::String;

use super::kick::{BitIter, low_bits};
use super::lr::{Lr, LrState, MAX_LRS, set_slot, vcpu_u16};
use super::state::{Irq, NR_PRIVATE, NR_SGIS, PRIORITY_MASK, Vgic};
use crate::vdev::VcpuId;

impl Vgic {
    /// Merges the requests recorded against the interrupt in live slot `i` into the LR, and
    /// retracts it if it is only pending and may no longer be delivered here. Returns the INTID
    /// of a retracted interrupt (it may be deliverable elsewhere now).
    pub(super) fn reconcile(
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
    pub(super) fn retire_fallen(
        &mut self,
        v: usize,
        lrs: &mut [Lr],
        mut live: u64,
        candidates: u64,
    ) -> u64 {
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
    pub(super) fn pending_priorities(&self, vcpu: VcpuId) -> impl Iterator<Item = u8> + '_ {
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
}
