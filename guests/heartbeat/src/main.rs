//! elvisor heartbeat guest: prints `HB: beat N` every 100 ms, sleeping in WFI until the EL1
//! virtual timer fires, so the vCPU blocks between beats. A VM that keeps beating while
//! others run, reset or misbehave is the system tests' witness that it was left alone.
//!
//! Bootargs (`/chosen/bootargs` of the VM):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `hb.beats=N` | 30 | beats before the RESULT line |
//! | `hb.period-ms=P` | 100 | time between beats |
//! | `hb.reset-at=K` | none | on the first boot (`elvisor,reset-count` 0) call PSCI SYSTEM_RESET after beat K; after the reset, run normally |
//! | `hb.max-late-ms=L` | 2000 | a beat later than this past its deadline fails the run (the VM was starved) |
//! | `hb.exit-armed=1` | 0 | leave the virtual timer firing (armed at "now", IRQs masked, so it stays pending) when the VM powers off: the hypervisor must not let a stopped VM's timer act on its CPU |
//! | `hb.checksum-kib=K` | 0 | fill K KiB of free RAM (from RAM base + 32 MiB) with a seeded pattern and check it at every beat: a VM whose memory another VM or the hypervisor changes fails `memory` |
//!
//! ```text
//!   HB: heartbeat: beats=30 period=100 ms reset-at=None reset-count=Some(0) ...
//!   HB: beat 1 ... HB: beat 30            deadlines at start + n * period (absolute, no drift)
//!   HB: 30 beats in 3001 ms; latest beat 3 ms late
//!   HB PASS: beats                          no beat early, none later than max-late, no watchdog
//!   HB PASS: system-reset                   (reset mode, after the reset: reset-count >= 1)
//!   HB RESULT: passed=1 failed=0            then PSCI SYSTEM_OFF
//! ```
//!
//! Each sleep also arms the EL1 physical timer 10 periods out as a watchdog, so a virtual
//! timer interrupt that never comes ends the run with a FAIL line instead of a hang.
//!
//! Without a hypervisor: `qemu-system-aarch64 -M virt -cpu max -m 1G -nographic -kernel
//! heartbeat.img` beats 30 times and passes (no reset count, so `hb.reset-at` is ignored).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use elvisor_guest_rt::arch::irq;
use elvisor_guest_rt::gic::{self, Gic};
use elvisor_guest_rt::gic_setup;
use elvisor_guest_rt::smccc::psci;
use elvisor_guest_rt::timer::{self, Timer, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, Report};

elvisor_guest_rt::entry!(main);

const DEFAULT_BEATS: u32 = 30;
const DEFAULT_PERIOD_MS: u64 = 100;
const DEFAULT_MAX_LATE_MS: u64 = 2_000;
/// The watchdog fires this many periods after a beat's deadline.
const WATCHDOG_PERIODS: u64 = 10;

/// Set by the IRQ handler when the virtual timer fired (and was masked).
static VIRTUAL_FIRED: AtomicBool = AtomicBool::new(false);
/// Set by the IRQ handler when the physical-timer watchdog fired.
static WATCHDOG_FIRED: AtomicBool = AtomicBool::new(false);
/// Interrupts that are neither timer (counted by the handler).
static OTHER_IRQS: AtomicU32 = AtomicU32::new(0);
/// The timer INTIDs, for the handler.
static VIRTUAL_INTID: AtomicU32 = AtomicU32::new(27);
static PHYSICAL_INTID: AtomicU32 = AtomicU32::new(30);

struct Options {
    beats: u32,
    period_ms: u64,
    reset_at: Option<u32>,
    max_late_ms: u64,
    checksum_kib: u64,
    exit_armed: bool,
}

fn options(boot: &BootInfo) -> Options {
    Options {
        beats: boot.bootarg_parse("hb.beats").unwrap_or(DEFAULT_BEATS),
        period_ms: boot
            .bootarg_parse("hb.period-ms")
            .filter(|&ms| ms > 0)
            .unwrap_or(DEFAULT_PERIOD_MS),
        reset_at: boot.bootarg_parse("hb.reset-at"),
        max_late_ms: boot
            .bootarg_parse("hb.max-late-ms")
            .unwrap_or(DEFAULT_MAX_LATE_MS),
        checksum_kib: boot.bootarg_parse("hb.checksum-kib").unwrap_or(0),
        exit_armed: boot.bootarg_parse::<u32>("hb.exit-armed") == Some(1),
    }
}

fn main(boot: &BootInfo) {
    let mut report = Report::new("HB");
    irq::mask();
    let opts = options(boot);
    let reset_count = boot.reset_count;
    // Reset mode needs elvisor's reset count: without it (bare QEMU) there is no second boot
    // to tell from the first.
    let reset_now = opts.reset_at.filter(|_| reset_count == Some(0));
    report.note(format_args!(
        "heartbeat: beats={} period={} ms reset-at={:?} reset-count={:?} max-late={} ms",
        opts.beats, opts.period_ms, opts.reset_at, reset_count, opts.max_late_ms,
    ));

    let timers = TimerInterrupts::discover(boot.fdt.as_ref());
    let gic = match bring_up(boot, &timers) {
        Ok(gic) => gic,
        Err(error) => {
            report.fail("beats", format_args!("GIC bring-up: {error}"));
            report.finish();
            return;
        }
    };

    let memory = Pattern::fill(opts.checksum_kib);
    let mut memory_failure = None;
    let period = timer::ticks_from_us(opts.period_ms * 1000);
    let max_late = timer::ticks_from_us(opts.max_late_ms * 1000);
    let start = Timer::Virtual.count();
    let mut deadline = start;
    let mut latest_late = 0u64;
    let mut failure = None;
    for beat in 1..=opts.beats {
        deadline = deadline.wrapping_add(period);
        match sleep_until(deadline, period * WATCHDOG_PERIODS) {
            Ok(now) => {
                let late = now.wrapping_sub(deadline);
                if (late as i64) < 0 {
                    failure = Some((beat, "woke before its deadline", now));
                    break;
                }
                latest_late = latest_late.max(late);
                if late > max_late {
                    failure = Some((beat, "later than hb.max-late-ms", now));
                    break;
                }
                // Far behind (a stopped VM?): restart the schedule from now, no burst of beats.
                if late > period {
                    deadline = now;
                }
            }
            Err(now) => {
                failure = Some((beat, "no virtual timer interrupt: watchdog fired", now));
                break;
            }
        }
        if memory_failure.is_none() {
            memory_failure = memory.check().err().map(|e| (beat, e));
        }
        report.note(format_args!("beat {beat}"));
        if reset_now == Some(beat) {
            report.note(format_args!("SYSTEM_RESET after beat {beat}"));
            Timer::Virtual.stop();
            Timer::Physical.stop();
            let ret = psci::system_reset();
            report.fail(
                "system-reset",
                format_args!("PSCI SYSTEM_RESET returned {ret}"),
            );
            report.finish();
            return;
        }
    }
    Timer::Virtual.stop();
    Timer::Physical.stop();
    let _ = gic;

    let elapsed_ms = timer::us_from_ticks(Timer::Virtual.count().wrapping_sub(start)) / 1000;
    report.note(format_args!(
        "{} beats in {elapsed_ms} ms; latest beat {} ms late",
        opts.beats,
        timer::us_from_ticks(latest_late) / 1000
    ));
    let other = OTHER_IRQS.load(Ordering::SeqCst);
    match failure {
        Some((beat, why, now)) => report.fail(
            "beats",
            format_args!(
                "beat {beat}: {why} (deadline {deadline:#x}, now {now:#x}, {} ms in)",
                timer::us_from_ticks(now.wrapping_sub(start)) / 1000
            ),
        ),
        None if other != 0 => report.fail(
            "beats",
            format_args!("{other} interrupt(s) that are not timers"),
        ),
        None => report.pass("beats"),
    }
    if opts.checksum_kib > 0 {
        match memory_failure {
            None => report.pass("memory"),
            Some((beat, (addr, want, got))) => report.fail(
                "memory",
                format_args!("at beat {beat}: word {addr:#x} is {got:#x}, was {want:#x}"),
            ),
        }
    }
    if opts.reset_at.is_some() && reset_count.is_some() {
        report.check(
            "system-reset",
            reset_count >= Some(1),
            format_args!("reset-count is {reset_count:?} after the reset"),
        );
    }
    if opts.exit_armed {
        // Left firing through the power-off: expired at once, never taken (IRQs masked), so
        // its interrupt is pending when the VM stops.
        irq::mask();
        Timer::Virtual.arm_at(Timer::Virtual.count());
        report.note(format_args!("virtual timer left firing for the power-off"));
    }
    report.finish();
}

/// Distributor and CPU interface up, both timer PPIs enabled, the handler installed.
fn bring_up(boot: &BootInfo, timers: &TimerInterrupts) -> Result<Gic, gic::GicError> {
    Timer::Virtual.stop();
    Timer::Physical.stop();
    VIRTUAL_INTID.store(timers.virtual_, Ordering::SeqCst);
    PHYSICAL_INTID.store(timers.physical, Ordering::SeqCst);
    gic_setup::bring_up(
        boot.fdt.as_ref(),
        &[timers.virtual_, timers.physical],
        on_irq,
    )
}

/// Sleeps in WFI until the virtual timer fires at `deadline`: `Ok(now)`; or the watchdog
/// `watchdog_ticks` later: `Err(now)`. IRQs masked on entry and return.
fn sleep_until(deadline: u64, watchdog_ticks: u64) -> Result<u64, u64> {
    VIRTUAL_FIRED.store(false, Ordering::SeqCst);
    WATCHDOG_FIRED.store(false, Ordering::SeqCst);
    Timer::Virtual.arm_at(deadline);
    Timer::Physical.arm_at(
        deadline
            .wrapping_add(watchdog_ticks)
            .wrapping_add(Timer::Physical.count().wrapping_sub(Timer::Virtual.count())),
    );
    // The race-free sleep: check with IRQs masked, `wfi` (a pending IRQ still ends it), then
    // let the handler run.
    while !VIRTUAL_FIRED.load(Ordering::SeqCst) && !WATCHDOG_FIRED.load(Ordering::SeqCst) {
        irq::wfi();
        irq::unmask();
        irq::mask();
    }
    let now = Timer::Virtual.count();
    Timer::Physical.stop();
    if VIRTUAL_FIRED.load(Ordering::SeqCst) {
        Ok(now)
    } else {
        Timer::Virtual.stop();
        Err(now)
    }
}

/// Masks whichever timer fired (its level drops) and records it.
fn on_irq() {
    let Some(gic) = gic::installed() else {
        return;
    };
    let iar = gic.acknowledge();
    if iar.is_special() {
        return;
    }
    let intid = iar.intid();
    if intid == VIRTUAL_INTID.load(Ordering::SeqCst) {
        Timer::Virtual.mask();
        VIRTUAL_FIRED.store(true, Ordering::SeqCst);
    } else if intid == PHYSICAL_INTID.load(Ordering::SeqCst) {
        Timer::Physical.mask();
        WATCHDOG_FIRED.store(true, Ordering::SeqCst);
    } else {
        OTHER_IRQS.store(OTHER_IRQS.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }
    gic.end_of_interrupt(iar);
}

/// Words of free RAM filled with a pattern at start and compared at every beat: what this VM
/// wrote must stay as written, whatever other VMs do.
struct Pattern {
    words: usize,
}

/// Where the pattern starts: RAM base + 32 MiB, clear of the image, its stack and the DTB.
const PATTERN_OFFSET: usize = 32 << 20;

impl Pattern {
    fn word(i: usize) -> u32 {
        let x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (x >> 32) as u32 ^ x as u32
    }

    fn addr(i: usize) -> Option<usize> {
        let ram = elvisor_guest_rt::mem::guest_ram()?;
        Some(ram.start + PATTERN_OFFSET + 4 * i)
    }

    fn fill(kib: u64) -> Self {
        let mut words = 0;
        for i in 0..(kib as usize * 256) {
            match Self::addr(i).and_then(elvisor_guest_rt::mem::free_ram_word) {
                Some(w) => w.store(Self::word(i), Ordering::SeqCst),
                None => break,
            }
            words = i + 1;
        }
        Self { words }
    }

    /// `Err((address, expected, found))` for the first word that changed.
    fn check(&self) -> Result<(), (usize, u32, u32)> {
        for i in 0..self.words {
            let Some(addr) = Self::addr(i) else { break };
            let Some(w) = elvisor_guest_rt::mem::free_ram_word(addr) else {
                break;
            };
            let got = w.load(Ordering::SeqCst);
            if got != Self::word(i) {
                return Err((addr, Self::word(i), got));
            }
        }
        Ok(())
    }
}
