//! Interrupt benchmarks on one CPU: `virtual-eoi`, `timer-irq-latency` and `vtimer-tick`.
//!
//! - `virtual-eoi`: an SGI is made pending outside the timed region (GICv3: GICR_ISPENDR0,
//!   GICv2: GICD_SPENDSGIR; both trap to the hypervisor's distributor model), the guest waits
//!   until its CPU interface shows it (ICC_HPPIR1_EL1 / GICC_HPPIR), and then only the
//!   acknowledge and end-of-interrupt are timed: `mrs icc_iar1_el1` + `msr icc_eoir1_el1`
//!   (GICv3: the virtual ICV_* registers, served from a list register without an exit) or
//!   GICC_IAR + GICC_EOIR reads/writes (GICv2: the GICV page mapped at the guest's GICC). IRQs
//!   stay masked at the PE throughout, so the SGI is never taken as an exception.
//! - `timer-irq-latency`: the EL1 virtual timer is armed a little ahead, the guest sleeps in
//!   `wfi`, and the bench vector's first instruction reads CNTVCT_EL0: latency = that count
//!   minus CNTV_CVAL_EL0, i.e. every instruction from the timer condition to the guest's IRQ
//!   vector. IRQs are masked around the `wfi` and unmasked for one instruction after each
//!   wake-up (the race-free sleep), so one `msr daifclr` is part of every latency, natively too.
//! - `vtimer-tick`: a periodic 100 Hz tick. Each round arms the virtual timer one period
//!   after the previous tick's condition, sleeps in `wfi` and takes the interrupt (acknowledge,
//!   the timer switched off, EOI, as above). It times every instruction from the timer
//!   condition until the loop is back, ready to arm the next tick. Under `-icount
//!   shift=0,sleep=off` an idle CPU costs no instructions (the clock jumps to the next timer),
//!   so this is exactly what a tick costs the guest. The hypervisor's own work between the
//!   guest's `wfi` and its physical `wfi` (the block path) falls in that jump and is not seen;
//!   `timer-irq-latency` and `vm-switch` cover that path.

use core::sync::atomic::Ordering;

use elvisor_guest_rt::gic::{self, Gic, Iar, Version, gicd};
use elvisor_guest_rt::timer::{self, Timer, TimerInterrupts};

use crate::arch::{self, CpuInterface, IrqRecord, Mmio};
use crate::results::{Outcome, text};

/// The SGI `virtual-eoi` uses.
const EOI_SGI: u32 = 5;

/// Polls of the highest-pending register before giving up on a pended SGI.
const PENDING_POLLS: u32 = 10_000;

/// How far ahead the timer is armed.
const TIMER_LEAD_US: u64 = 20;
/// The period of `vtimer-tick` (a 100 Hz guest tick).
const TICK_PERIOD_US: u64 = 10_000;
/// When the watchdog (the EL1 physical timer) ends a `wfi` that no virtual timer IRQ ended:
/// this long after the virtual timer's condition.
const WATCHDOG_US: u64 = 10_000;

/// The primary CPU's record of its last IRQ (bench vector).
static RECORD: IrqRecord = IrqRecord::new();

/// The CPU interface as [`arch::ack_eoi_timed`] wants it.
pub fn cpu_interface(gic: &Gic) -> Option<CpuInterface> {
    match gic.version() {
        Version::V3 => Some(CpuInterface::V3),
        Version::V2 => {
            let block = gic.cpu_interface()?;
            Mmio::block(block.base(), block.len_bytes()).map(CpuInterface::V2)
        }
    }
}

fn gicc_mmio(gic: &Gic) -> Option<Mmio> {
    let block = gic.cpu_interface()?;
    Mmio::block(block.base(), block.len_bytes())
}

/// Makes `sgi` pending on this CPU through the distributor/redistributor pending registers.
fn pend_sgi(gic: &Gic, sgi: u32) {
    match gic.version() {
        // GICR_ISPENDR0 (SGI_base + 0x200): SGIs are ordinary bits there.
        Version::V3 => gic.set_pending(sgi),
        // GICD_SPENDSGIR: one byte per SGI, one bit per source CPU; source = CPU interface 0.
        // A byte store: see `Mmio::write8`.
        Version::V2 => {
            if let Some(reg) = Mmio::byte(gic.distributor().base() + gicd::SPENDSGIR + sgi as usize)
            {
                reg.write8(1);
            }
        }
    }
}

/// `virtual-eoi` over `iters` SGIs.
pub fn virtual_eoi(gic: &Gic, iters: u64) -> Outcome {
    let Some(cpu) = cpu_interface(gic) else {
        return Outcome::Failed(text!("unusable GICv2 CPU interface block"));
    };
    gic.set_priority(EOI_SGI, gic::DEFAULT_PRIORITY);
    gic.enable(EOI_SGI);
    let mut real = 0u64;
    let mut base = 0u64;
    let mut outcome = None;
    for round in 0..iters {
        pend_sgi(gic, EOI_SGI);
        let seen = (0..PENDING_POLLS).any(|_| gic.highest_pending().intid() == EOI_SGI);
        if !seen {
            outcome = Some(Outcome::Failed(text!(
                "round {round}: the pended SGI {EOI_SGI} never showed in the highest-pending register (last {:#x})",
                gic.highest_pending().raw()
            )));
            break;
        }
        let (ticks, iar) = arch::ack_eoi_timed(cpu, true);
        let iar = Iar::from_raw(iar, gic.version());
        if iar.intid() != EOI_SGI {
            if !iar.is_special() {
                gic.end_of_interrupt(iar);
            }
            outcome = Some(Outcome::Failed(text!(
                "round {round}: acknowledged {:#x}, expected SGI {EOI_SGI}",
                iar.raw()
            )));
            break;
        }
        real += ticks;
        base += arch::ack_eoi_timed(cpu, false).0;
    }
    gic.disable(EOI_SGI);
    gic.clear_pending(EOI_SGI);
    outcome.unwrap_or_else(|| Outcome::measured(iters, real as i64 - base as i64))
}

/// `timer-irq-latency` over `rounds` timer interrupts.
pub fn timer_irq_latency(gic: &Gic, timers: &TimerInterrupts, rounds: u64) -> Outcome {
    timer_rounds(gic, timers, rounds, Rounds::Latency)
}

/// `vtimer-tick` over `rounds` ticks of [`TICK_PERIOD_US`].
pub fn vtimer_tick(gic: &Gic, timers: &TimerInterrupts, rounds: u64) -> Outcome {
    timer_rounds(gic, timers, rounds, Rounds::Tick)
}

/// What a round of [`timer_rounds`] arms and measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounds {
    /// Armed [`TIMER_LEAD_US`] after now; measured from the timer condition to the vector.
    Latency,
    /// Armed one [`TICK_PERIOD_US`] after the previous condition (a periodic tick); measured
    /// from the timer condition to the guest's loop, the interrupt handled (acknowledged, the
    /// timer switched off, EOI) and ready to arm the next tick.
    Tick,
}

fn timer_rounds(gic: &Gic, timers: &TimerInterrupts, rounds: u64, kind: Rounds) -> Outcome {
    let (vtimer, ptimer) = (timers.virtual_, timers.physical);
    for intid in [vtimer, ptimer] {
        gic.set_priority(intid, gic::DEFAULT_PRIORITY);
        gic.enable(intid);
    }
    RECORD.configure(gicc_mmio(gic), vtimer, ptimer);
    let ahead = timer::ticks_from_us(match kind {
        Rounds::Latency => TIMER_LEAD_US,
        Rounds::Tick => TICK_PERIOD_US,
    });
    let watchdog = timer::ticks_from_us(WATCHDOG_US);

    let outcome = arch::with_bench_vectors(|| {
        let (mut sum, mut min, mut max) = (0i64, i64::MAX, i64::MIN);
        let mut cval = arch::now();
        for round in 0..rounds {
            RECORD.reset();
            cval = match kind {
                Rounds::Latency => arch::now(),
                Rounds::Tick => cval,
            }
            .wrapping_add(ahead);
            let deadline = cval.wrapping_add(watchdog);
            Timer::Physical.arm_at(deadline);
            arch::timer_irq_wait(&RECORD, cval, deadline);
            let back = arch::now();
            Timer::Physical.stop();
            Timer::Virtual.stop();
            let count = RECORD.count.load(Ordering::SeqCst);
            let iar = Iar::from_raw(RECORD.iar.load(Ordering::SeqCst) as u32, gic.version());
            if count == 0 {
                return Outcome::Failed(text!(
                    "round {round}: no interrupt within {WATCHDOG_US} us (not even the watchdog)"
                ));
            }
            if iar.intid() != vtimer {
                return Outcome::Failed(text!(
                    "round {round}: interrupt {} arrived instead of the virtual timer ({vtimer}); the watchdog (physical timer) is {ptimer}",
                    iar.intid()
                ));
            }
            let end = match kind {
                Rounds::Latency => RECORD.time.load(Ordering::SeqCst),
                Rounds::Tick => back,
            };
            let cost = end.wrapping_sub(cval) as i64;
            sum += cost;
            min = min.min(cost);
            max = max.max(cost);
        }
        Outcome::Measured {
            iters: rounds,
            total: sum,
            range: Some((min, max)),
            extra: match kind {
                Rounds::Latency => text!("lead_ticks={ahead}"),
                Rounds::Tick => text!("period_ticks={ahead}"),
            },
        }
    });
    for intid in [vtimer, ptimer] {
        gic.disable(intid);
        gic.clear_pending(intid);
    }
    outcome
}
