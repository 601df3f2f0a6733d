//! Physical interrupts taken at EL2: routing to vCPUs, the virtual and emulated timers, device
//! lines of passed-through SPIs, kicks.

use core::sync::atomic::Ordering;

use super::console_input::console_input;
use super::lifecycle::kick_all;
use super::lrs::write_lrs;
use super::sched::{CpuSched, MAINT_INTID, relink_vtimer};
use super::{PLATFORM, Vm, VmState};
use crate::arch::aarch64::{gic, guest, timer};
use crate::vdev::vgic::{self, KickSet};
use crate::vm::VcpuId;
use crate::vm::timer::{PTIMER_INTID, VTIMER_INTID};
use crate::vm::vcpu::Vcpu;

/// Acknowledges and routes every pending physical interrupt. `cur` is the running vCPU, if
/// the CPU was running one. Returns true when the scheduler must look (a kick, a timer tick,
/// an interrupt for another vCPU of this CPU).
pub(super) fn handle_irqs(s: &mut CpuSched, mut cur: Option<&mut Vcpu>) -> bool {
    let mut resched = false;
    let plat = PLATFORM.get();
    let maint = plat
        .and_then(|p| p.gic.maintenance_intid)
        .unwrap_or(MAINT_INTID);
    let uart = plat.and_then(|p| p.uart.intid);
    while let Some(a) = gic::ack() {
        let intid = a.intid;
        gic::eoi(a);
        if intid == VTIMER_INTID {
            // The loaded vCPU's virtual timer: forwarded with the HW bit; stays active until
            // the guest deactivates it.
            if let Some(l) = s.loaded
                && let Some(sl) = s.slots.get(l)
            {
                match cur.as_mut() {
                    // The vCPU that exited (or waits in place) is the loaded one: straight
                    // into a free list register if nothing else waits for its flush.
                    Some(v) if v.slot == l => inject_vtimer(sl.vm, v),
                    _ => {
                        let _ = sl.vm.vgic.lock().inject_hw(VTIMER_INTID, sl.id);
                    }
                }
            }
            continue;
        }
        if let Some(vm) = super::passthrough_owner(intid) {
            let kicks = vm
                .vgic
                .lock()
                .inject_hw(intid, VcpuId(0))
                .unwrap_or(KickSet(0));
            // The vGIC says which vCPU the SPI is routed to; kick that one only (and look at
            // the scheduler if it lives here: it may be blocked).
            resched |= kick_all(vm, kicks);
            continue;
        }
        gic::deactivate(a);
        if intid == gic::KICK_SGI {
            // Requests are read by the scheduler, unless the kick can only be news for the
            // running vCPU's vGIC state (which the flush on entry picks up).
            resched |= kick_needs_scheduler(s, cur.as_deref());
        } else if intid == timer::HYP_TIMER_INTID {
            timer::disarm();
            resched = true;
            super::lifecycle::button_timers();
            if let Some(v) = cur.as_mut() {
                let vm = super::vm_of(v);
                update_ptimer(vm, v);
            }
        } else if intid == maint {
            // Underflow (UIE): the exit synced the list registers and marked a refill; UIE is
            // level-sensitive, so turn it off now. The flush on entry re-arms it if needed.
            // (TALL1, a pending line check, stays as it was.)
            let hcr = cur.as_ref().map_or(gic::HCR_EN, |v| v.hcr & !gic::HCR_UIE);
            gic::write_hcr(hcr);
            if let Some(v) = cur.as_mut() {
                v.hcr = hcr;
            }
        } else if Some(intid) == uart {
            console_input();
            resched = true;
        } else if intid == crate::vm::pmu::PMU_INTID {
            resched |= super::pmu::irq(cur.as_deref_mut());
        } else if intid == gic::HALT_SGI {
            // Another CPU failed: park here (kernel::halt).
            super::halt::check();
        } else {
            log::debug!("unexpected physical interrupt {intid}");
        }
    }
    resched
}

/// Whether a kick must go through the scheduler: unless `cur` is alone on this CPU, loaded,
/// and still meant to run (its VM running, its power on, no CPU_ON start pending), the kick
/// may be a request only the scheduler acts on (a stop, a reset, a CPU_ON, a wake-up).
fn kick_needs_scheduler(s: &CpuSched, cur: Option<&Vcpu>) -> bool {
    let Some(v) = cur else {
        return true;
    };
    if s.slots.len() != 1 || s.loaded != Some(v.slot) {
        return true;
    }
    let vm = super::vm_of(v);
    let p = &vm.power[v.id.0 as usize];
    vm.state.load(Ordering::Acquire) != VmState::Running as u8 || !p.is_on() || p.start_pending()
}

/// The running vCPU's own virtual timer fired: inject it, straight into a list register
/// when the vGIC allows ([`vgic::Vgic::inject_hw_into`]).
fn inject_vtimer(vm: &Vm, v: &mut Vcpu) {
    // The timer is level-sensitive and has one physical instance at a time. If its interrupt
    // is already in a list register (the shadow is current: the exit synced it), this
    // acknowledge is that same instance, re-signalled because `load` deactivated the PPI:
    // link it to that entry rather than latch a second one, which the guest would take after
    // the first as a spurious early timer interrupt.
    let mut used = v.lr_used;
    while used != 0 {
        let i = used.trailing_zeros() as usize;
        used &= used - 1;
        if let Some(lr) = v.lrs.get_mut(i)
            && lr.intid == VTIMER_INTID
            && lr.state != vgic::LrState::Invalid
        {
            if lr.hw.is_none() {
                relink_vtimer(lr);
                write_lrs(v, 1 << i);
            }
            return;
        }
    }
    let n = gic::nr_lrs().min(v.lrs.len());
    let r = vm
        .vgic
        .lock()
        .inject_hw_into(VTIMER_INTID, v.id, &mut v.lrs[..n]);
    if let Ok((_, changed)) = r
        && changed != 0
    {
        write_lrs(v, changed);
        v.lr_used |= changed;
    }
}

/// The vGIC's [`vgic::LineSampler`]: the current level of a hardware-linked level line. The
/// virtual timer is read from the CPU's CNTV_CTL, which holds the running vCPU's timer, so only
/// for that vCPU (`local`); another vCPU's timer is re-sampled at its own exits. A passthrough
/// SPI's line is its pending bit at the physical distributor (the hypervisor keeps it active
/// while the guest owns it, so the bit is the line).
pub(super) fn sample_hw_line(pintid: u32, local: bool) -> Option<bool> {
    if pintid == VTIMER_INTID {
        local.then(guest::vtimer_line)
    } else if pintid >= 32 {
        Some(gic::spi_line_pending(pintid))
    } else {
        None
    }
}

/// Re-evaluates a vCPU's emulated EL1 physical timer line; returns the counter value used.
pub(super) fn update_ptimer(vm: &Vm, v: &mut Vcpu) -> u64 {
    let now = timer::now();
    let level = v.ptimer.level(now);
    let _ = vm.vgic.lock().set_level(PTIMER_INTID, v.id, level);
    now
}

/// After an MMIO access or console input: propagate changed device interrupt outputs (the
/// PL011's SPI) to the vGIC.
pub(super) fn sample_device_lines(vm: &Vm, id: VcpuId) {
    let mut bus = vm.mmio.lock();
    bus.irq_changes(|intid, level| {
        let _ = vm.vgic.lock().set_level(intid, id, level);
    });
}
