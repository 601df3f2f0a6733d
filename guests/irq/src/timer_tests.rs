//! Tests of the EL1 timers and of WFI: the virtual timer (the guest's own hardware timer under
//! elvisor), the physical timer (trapped and emulated), and WFI blocking and waking.
//!
//! Times are counter ticks (CNTFRQ_EL0), so the bounds hold under TCG and `-icount` alike:
//! a timer interrupt must not come before CVAL and must come within [`LATE_MS`] after it.

use elvisor_guest_rt::Report;
use elvisor_guest_rt::arch::irq;
use elvisor_guest_rt::gic::{self, SgiTarget};
use elvisor_guest_rt::timer::{self, CTL_ENABLE, CTL_ISTATUS, Timer};

use crate::Ctx;
use crate::findings::Findings;
use crate::log::{self, Snapshot};
use crate::wait::{self, Watchdog, ms, reached};

/// How far ahead the timer tests arm their timer.
const DELAY_MS: u64 = 1;
/// How late after CVAL a timer interrupt may be taken (generous: TCG, `-icount`, a busy host).
const LATE_MS: u64 = 100;
/// How far ahead `wfi-wakes` arms the timer it sleeps on.
const SLEEP_MS: u64 = 5;
/// Attempts of `wfi-wakes` (a) whose timer may fire before the guest reaches its `wfi`.
const EARLY_ATTEMPTS: u32 = 3;
/// How long a WFI with an interrupt already pending may take to return.
const IMMEDIATE_MS: u64 = 10;
/// Re-arm period of a watchdog that has fired.
const WATCHDOG_PERIOD_MS: u64 = 20;
/// How long to watch for duplicate deliveries.
const QUIET_MS: u64 = 2;

/// Microseconds from `earlier` to `later` (negative if `later` is before `earlier`).
fn us_between(earlier: u64, later: u64) -> i64 {
    let ticks = later.wrapping_sub(earlier) as i64;
    let us = timer::us_from_ticks(ticks.unsigned_abs()) as i64;
    if ticks < 0 { -us } else { us }
}

/// Enables both timer interrupts at the GIC (one is tested, the other is the watchdog).
fn enable_timer_interrupts(ctx: &Ctx) {
    for t in [Timer::Virtual, Timer::Physical] {
        t.stop();
        let intid = ctx.timers.intid(t);
        ctx.gic.set_priority(intid, gic::DEFAULT_PRIORITY);
        ctx.gic.enable(intid);
    }
}

/// `vtimer` / `ptimer`: `timer` armed 1 ms ahead, WFI until its interrupt: delivered exactly
/// once, at or after CVAL, within 100 ms of it, with CTL.ISTATUS set in the handler, and no
/// longer pending once the timer is stopped.
pub fn timer(report: &mut Report, ctx: &Ctx, timer: Timer, name: &str) {
    let gic = &ctx.gic;
    let intid = ctx.timers.intid(timer);
    ctx.prepare(report, name);
    enable_timer_interrupts(ctx);
    let mut f = Findings::new();

    let late = ms(LATE_MS);
    let cval = timer.arm_after(ms(DELAY_MS));
    let watchdog = Watchdog::start(
        ctx,
        timer.other(),
        ms(DELAY_MS + LATE_MS + WATCHDOG_PERIOD_MS),
        ms(WATCHDOG_PERIOD_MS),
    );
    let done = wait::sleep_until(timer, cval.wrapping_add(late), &watchdog, || {
        log::count_of(intid) >= 1
    });
    wait::spin_for(ms(QUIET_MS));
    watchdog.stop();
    let ctl_after = timer.control();
    timer.stop();
    let log = Snapshot::take();

    match log.first_of(intid) {
        Some(delivery) => {
            f.expect(
                log.count_of(intid) == 1 && log.total == log.count_of(intid),
                format_args!("delivered {} (want [{intid}] once)", log.intids()),
            );
            f.expect(
                reached(delivery.count, cval),
                format_args!(
                    "taken {} us before CVAL (count {:#x}, CVAL {cval:#x})",
                    -us_between(cval, delivery.count),
                    delivery.count
                ),
            );
            f.expect(
                !reached(delivery.count, cval.wrapping_add(late)),
                format_args!(
                    "taken {} us after CVAL (bound {LATE_MS} ms)",
                    us_between(cval, delivery.count)
                ),
            );
            let want = CTL_ENABLE | CTL_ISTATUS;
            f.expect(
                delivery.timer_ctl & want == want,
                format_args!(
                    "CNT{}_CTL_EL0={:#x} in the handler, want ENABLE and ISTATUS set",
                    if timer == Timer::Virtual { "V" } else { "P" },
                    delivery.timer_ctl
                ),
            );
        }
        None => f.fail(format_args!(
            "no INTID {intid} within {LATE_MS} ms after CVAL (sleep loop {}; CTL {ctl_after:#x} \
             ISENABLER0 {:#x} ISPENDR0 {:#x})",
            if done { "done" } else { "timed out" },
            gic.banked_enabled(),
            gic.banked_pending()
        )),
    }
    f.expect(
        log.count_other_than(&[intid]) == 0,
        format_args!(
            "other interrupts (the watchdog is INTID {}): delivered {}",
            ctx.timers.intid(timer.other()),
            log.intids()
        ),
    );
    f.expect(
        !gic.is_pending(intid) && !gic.is_active(intid),
        format_args!(
            "INTID {intid} after the handler's EOI and stopping the timer: pending {}, active {} \
             (want neither)",
            gic.is_pending(intid),
            gic.is_active(intid)
        ),
    );
    let leftover = ctx.drain();
    f.expect(
        leftover == 0,
        format_args!("{leftover} interrupt(s) still pending"),
    );
    f.finish(report, name);
}

/// `wfi-wakes`: (a) WFI with IRQs unmasked and the virtual timer 5 ms ahead returns only after
/// CVAL, with the timer interrupt taken; (b) likewise with IRQs masked (the pending interrupt
/// ends the WFI and is taken on unmasking); WFI returns at once with IRQs masked and (c) an SGI
/// or (d) an expired virtual timer already pending, or (e) the virtual timer pending again
/// because its handler re-armed it at "now" before the EOI (the line never fell: the guest's EOI
/// deactivated the physical interrupt while it was asserted, and the hypervisor must still be
/// woken by it; QEMU's GICv2 does not re-signal it by itself, docs/qemu-bugs.md).
pub fn wfi_wakes(report: &mut Report, ctx: &Ctx) {
    const SGI: u32 = 5;
    let gic = &ctx.gic;
    let vintid = ctx.timers.virtual_;
    ctx.prepare(report, "wfi-wakes");
    enable_timer_interrupts(ctx);
    gic.set_priority(SGI, gic::DEFAULT_PRIORITY);
    gic.enable(SGI);
    let mut f = Findings::new();
    let watchdog_first = ms(SLEEP_MS + LATE_MS);

    // (a) unmasked: the interrupt is taken, then WFI has returned. The watchdog is armed
    // first (its accesses trap), so only a few instructions lie between arming the timer and
    // the wait. If the guest is still held up until CVAL before it reaches the `wfi` (its host
    // thread descheduled for SLEEP_MS: a loaded machine), the timer interrupts *before* the
    // wait, and the wait rightly lasts until the next interrupt, the watchdog. That attempt
    // says nothing about WFI, so it is repeated with a longer delay; the return address the
    // handler saw tells the two cases apart exactly (`irq::unmask_wfi_mask`).
    let mut sleep_ms = SLEEP_MS;
    let mut early_attempts = 0;
    let (cval, woke, log, before_wait) = loop {
        ctx.prepare(report, "wfi-wakes (a)");
        let watchdog = Watchdog::start(
            ctx,
            Timer::Physical,
            ms(sleep_ms + LATE_MS),
            ms(WATCHDOG_PERIOD_MS),
        );
        let cval = Timer::Virtual.arm_after(ms(sleep_ms));
        let wfi_at = irq::unmask_wfi_mask();
        let woke = Timer::Virtual.count();
        watchdog.stop();
        Timer::Virtual.stop();
        let log = Snapshot::take();
        let before_wait = log.total >= 1 && log::first_interrupted_at() <= wfi_at;
        if !before_wait || early_attempts + 1 >= EARLY_ATTEMPTS {
            break (cval, woke, log, before_wait);
        }
        early_attempts += 1;
        report.note(format_args!(
            "wfi-wakes (a): the timer interrupted before the wfi (guest held up {sleep_ms} ms \
             by the host); again with {} ms",
            sleep_ms * 4
        ));
        sleep_ms *= 4;
    };
    f.expect(
        !before_wait,
        format_args!(
            "(a) the timer interrupted before the wfi in all {EARLY_ATTEMPTS} attempts, last \
             with {sleep_ms} ms"
        ),
    );
    f.expect(
        reached(woke, cval),
        format_args!(
            "(a) WFI with IRQs unmasked returned {} us before CVAL, interrupts taken {}",
            -us_between(cval, woke),
            log.intids()
        ),
    );
    f.expect(
        log.count_of(vintid) == 1 && log.total == 1,
        format_args!(
            "(a) WFI with IRQs unmasked: delivered {} (want [{vintid}])",
            log.intids()
        ),
    );

    // (b) masked: the pending interrupt ends the WFI without being taken.
    ctx.prepare(report, "wfi-wakes (b)");
    let cval = Timer::Virtual.arm_after(ms(SLEEP_MS));
    let watchdog = Watchdog::start(ctx, Timer::Physical, watchdog_first, ms(WATCHDOG_PERIOD_MS));
    irq::wfi();
    let woke = Timer::Virtual.count();
    let taken_while_masked = log::total();
    wait::take_pending();
    watchdog.stop();
    Timer::Virtual.stop();
    let log = Snapshot::take();
    f.expect(
        reached(woke, cval),
        format_args!(
            "(b) WFI with IRQs masked returned {} us before CVAL",
            -us_between(cval, woke)
        ),
    );
    f.expect(
        taken_while_masked == 0 && log.count_of(vintid) == 1 && log.total == 1,
        format_args!(
            "(b) WFI with IRQs masked: {taken_while_masked} taken while masked, \
             delivered {} after unmasking (want [{vintid}])",
            log.intids()
        ),
    );

    // (c) an SGI already pending: WFI must not block.
    ctx.prepare(report, "wfi-wakes (c)");
    gic.send_sgi(SGI, SgiTarget::Current);
    let watchdog = Watchdog::start(ctx, Timer::Physical, ms(LATE_MS), ms(WATCHDOG_PERIOD_MS));
    let before = Timer::Virtual.count();
    irq::wfi();
    let after = Timer::Virtual.count();
    wait::take_pending();
    watchdog.stop();
    let log = Snapshot::take();
    f.expect(
        after.wrapping_sub(before) < ms(IMMEDIATE_MS),
        format_args!(
            "(c) WFI with SGI {SGI} pending blocked for {} us (bound {IMMEDIATE_MS} ms)",
            us_between(before, after)
        ),
    );
    f.expect(
        log.count_of(SGI) == 1 && log.total == 1,
        format_args!(
            "(c) delivered {} after the WFI (want [{SGI}])",
            log.intids()
        ),
    );

    // (d) the virtual timer already expired: WFI must not block.
    ctx.prepare(report, "wfi-wakes (d)");
    Timer::Virtual.arm_at(Timer::Virtual.count());
    let watchdog = Watchdog::start(ctx, Timer::Physical, ms(LATE_MS), ms(WATCHDOG_PERIOD_MS));
    let before = Timer::Virtual.count();
    irq::wfi();
    let after = Timer::Virtual.count();
    wait::take_pending();
    watchdog.stop();
    Timer::Virtual.stop();
    let log = Snapshot::take();
    f.expect(
        after.wrapping_sub(before) < ms(IMMEDIATE_MS),
        format_args!(
            "(d) WFI with the virtual timer expired blocked for {} us (bound {IMMEDIATE_MS} ms)",
            us_between(before, after)
        ),
    );
    f.expect(
        log.count_of(vintid) == 1 && log.total == 1,
        format_args!(
            "(d) delivered {} after the WFI (want [{vintid}])",
            log.intids()
        ),
    );

    // (e) re-armed in its own handler: the first instance is taken with IRQs unmasked
    // (busy-polling), and the second must follow at once: taken during the same poll (the
    // physical interrupt is signalled again as soon as the guest's EOI deactivates it), or
    // ending the WFI that follows. Both deliveries record the counter at handler entry; the
    // second must come within IMMEDIATE_MS of the first, not with the watchdog.
    ctx.prepare(report, "wfi-wakes (e)");
    let watchdog = Watchdog::start(ctx, Timer::Physical, ms(LATE_MS), ms(WATCHDOG_PERIOD_MS));
    log::set_rearm_virtual(1);
    Timer::Virtual.arm_at(Timer::Virtual.count());
    let first = wait::spin_until(ms(LATE_MS), || log::count_of(vintid) >= 1);
    if log::count_of(vintid) < 2 {
        irq::wfi();
        wait::take_pending();
    }
    watchdog.stop();
    Timer::Virtual.stop();
    log::set_rearm_virtual(0);
    let log = Snapshot::take();
    let times: [Option<u64>; 2] = {
        let mut t = log
            .deliveries()
            .iter()
            .filter(|d| d.intid == vintid)
            .map(|d| d.count);
        [t.next(), t.next()]
    };
    f.expect(
        first,
        format_args!("(e) the timer armed at \"now\" was not taken within {LATE_MS} ms"),
    );
    match times {
        [Some(a), Some(b)] => f.expect(
            b.wrapping_sub(a) < ms(IMMEDIATE_MS),
            format_args!(
                "(e) the virtual timer re-armed by its handler came again {} us after the \
                 first instance (bound {IMMEDIATE_MS} ms; delivered {})",
                us_between(a, b),
                log.intids()
            ),
        ),
        _ => f.expect(
            false,
            format_args!(
                "(e) delivered {} (want [{vintid}, {vintid}]: the re-armed timer once more)",
                log.intids()
            ),
        ),
    }
    f.expect(
        log.count_of(vintid) == 2,
        format_args!(
            "(e) delivered {} (want the virtual timer twice)",
            log.intids()
        ),
    );

    let leftover = ctx.drain();
    f.expect(
        leftover == 0,
        format_args!("{leftover} interrupt(s) still pending"),
    );
    f.finish(report, "wfi-wakes");
}
