//! Bounded waits: every wait ends after a counter deadline (and an iteration cap, should the
//! counter stand still), so a broken hypervisor gives a FAIL line, not a hang.
//!
//! Two kinds:
//! - [`spin_until`]: IRQs unmasked, busy-polling. For interrupts that must arrive (or must not)
//!   right after the guest made them pending.
//! - [`sleep_until`]: the race-free WFI loop, IRQs masked around the check (`wfi` still wakes
//!   on a pending IRQ, which is then taken by briefly unmasking). A `wfi` can only be ended by
//!   an interrupt, so these waits run with a [`Watchdog`] on the other EL1 timer that keeps
//!   re-arming itself: if the interrupt under test never comes, the watchdog's does. It runs at
//!   the highest priority, so an interrupt left active (running priority stuck) cannot hold it
//!   back. (Only a hypervisor that delivers no interrupt at all to a vCPU in WFI can still hang
//!   the guest.)

use elvisor_guest_rt::arch::irq;
use elvisor_guest_rt::gic::{self, Gic};
use elvisor_guest_rt::timer::{self, Timer};

use crate::Ctx;

/// Cap on busy-poll iterations (a few seconds of TCG), for a counter that does not move.
const SPIN_LIMIT: u64 = 50_000_000;

/// Cap on wake-ups of a WFI loop, for a `wfi` that returns at once every time.
const WAKEUP_LIMIT: u64 = 10_000_000;

/// Whether `now` is at or past `deadline` (counter values, wrap-safe).
pub fn reached(now: u64, deadline: u64) -> bool {
    now.wrapping_sub(deadline) as i64 >= 0
}

/// Counter ticks in `ms` milliseconds.
pub fn ms(ms: u64) -> u64 {
    timer::ticks_from_us(ms * 1000)
}

/// Unmasks IRQs and polls until `done()` or `ticks` of the virtual counter passed, then masks
/// IRQs again. Returns `done()`.
pub fn spin_until(ticks: u64, done: impl Fn() -> bool) -> bool {
    let start = Timer::Virtual.count();
    irq::unmask();
    for _ in 0..SPIN_LIMIT {
        if done() || Timer::Virtual.count().wrapping_sub(start) >= ticks {
            break;
        }
        core::hint::spin_loop();
    }
    irq::mask();
    done()
}

/// Unmasks IRQs for `ticks` of the virtual counter (to see what arrives), then masks them.
pub fn spin_for(ticks: u64) {
    spin_until(ticks, || false);
}

/// Busy-waits `ticks` of the virtual counter with IRQs left as they are (masked: nothing is
/// taken, but physical interrupts still reach the hypervisor).
pub fn masked_spin_for(ticks: u64) {
    let start = Timer::Virtual.count();
    for _ in 0..SPIN_LIMIT {
        if Timer::Virtual.count().wrapping_sub(start) >= ticks {
            break;
        }
        core::hint::spin_loop();
    }
}

/// Lets any pending IRQ be taken: unmask, `isb`, mask.
pub fn take_pending() {
    irq::unmask();
    irq::mask();
}

/// The race-free WFI loop. IRQs must be masked on entry and are on return.
///
/// Repeats: `done()`? return true; `clock` past `deadline`? return false; re-arm the watchdog;
/// `wfi`; take whatever is pending.
pub fn sleep_until(
    clock: Timer,
    deadline: u64,
    watchdog: &Watchdog,
    done: impl Fn() -> bool,
) -> bool {
    for _ in 0..WAKEUP_LIMIT {
        if done() {
            return true;
        }
        if reached(clock.count(), deadline) {
            return false;
        }
        watchdog.keep_armed();
        irq::wfi();
        take_pending();
    }
    done()
}

/// An EL1 timer used only to end WFI waits whose interrupt never came.
#[derive(Debug)]
pub struct Watchdog {
    timer: Timer,
    period_ticks: u64,
    gic: Gic,
    intid: u32,
}

/// The watchdog's priority: the highest, above anything a test leaves active.
const WATCHDOG_PRIORITY: u8 = 0x00;

impl Watchdog {
    /// Arms `timer` to fire in `first_ticks`, then every `period_ticks` while
    /// [`keep_armed`](Self::keep_armed) is called; its INTID is enabled at the highest priority
    /// until the watchdog is stopped.
    pub fn start(ctx: &Ctx, timer: Timer, first_ticks: u64, period_ticks: u64) -> Self {
        let intid = ctx.timers.intid(timer);
        ctx.gic.set_priority(intid, WATCHDOG_PRIORITY);
        ctx.gic.enable(intid);
        timer.arm_after(first_ticks);
        Self {
            timer,
            period_ticks,
            gic: ctx.gic,
            intid,
        }
    }

    /// Re-arms the timer if it fired (the handler masked it) or was stopped.
    pub fn keep_armed(&self) {
        if !self.timer.is_armed() {
            self.timer.arm_after(self.period_ticks);
        }
    }

    /// Stops the timer and gives its INTID the default priority back.
    pub fn stop(&self) {
        self.timer.stop();
        self.gic.set_priority(self.intid, gic::DEFAULT_PRIORITY);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}
