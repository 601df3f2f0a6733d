//! The last-resort path: when one CPU panics or takes a fatal exception at EL2, every CPU stops.
//!
//! ```text
//!  failing CPU (the reporter)                        every other CPU (a follower)
//!  begin: FAILED = me, halt SGI to the others ─────> takes it (guest exit or idle): check()
//!  report: message, registers, backtrace             stops running guests, waits (bounded)
//!  REPORT_DONE ────────────────────────────────────> "elvisor: cpuN halted (cpuM failed)"
//!  waits (bounded) for every PARKED                  PARKED[n], parks
//!  "elvisor: halted: all CPUs parked", parks
//! ```
//!
//! The followers stop running guests as soon as the SGI arrives, but print their line only
//! once the report is out, so the report reads in one piece. Nothing here powers the machine
//! off: a hypervisor that failed must not look as if it had shut down cleanly. Nothing here
//! allocates or takes a lock without a bound either: the CPU that failed may hold the heap's,
//! the console's or the GIC driver's.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use super::PLATFORM;
use super::sched::{CPU_MPIDR, CPU_UP};
use crate::arch::aarch64::cpu::{self, MAX_CPUS};
use crate::arch::aarch64::firmware;
use crate::arch::aarch64::handlers::Role;
use crate::arch::aarch64::{exit as arch_exit, gic, timer};
use crate::platform;

/// No CPU has failed.
const NONE: usize = usize::MAX;
/// The CPU that failed first (the reporter), or [`NONE`].
static FAILED: AtomicUsize = AtomicUsize::new(NONE);
/// The reporter has printed its report.
static REPORT_DONE: AtomicBool = AtomicBool::new(false);
/// Each follower sets its flag just before it parks.
static PARKED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// How many times each CPU entered the failure path: more than once is a failure inside it.
static DEPTH: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// How long a follower waits for the report before printing its line anyway.
const REPORT_WAIT_MS: u64 = 3000;
/// How long the reporter waits for the others to park.
const PARK_WAIT_MS: u64 = 2000;
/// Tries at the GICv2 driver lock per halt SGI (the failed CPU may hold it).
const KICK_SPINS: u32 = 1_000_000;

fn this_index() -> usize {
    cpu::this_cpu().map_or(0, |p| p.index).min(MAX_CPUS - 1)
}

/// Enters the failure path (the panic handler and the fatal-exception handler call it first).
/// The first CPU to get here becomes the reporter and stops every other CPU that is running.
pub fn begin() -> Role {
    let me = this_index();
    if DEPTH[me].fetch_add(1, Ordering::AcqRel) > 0 {
        return Role::Nested;
    }
    match FAILED.compare_exchange(NONE, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            stop_others(me);
            Role::Report
        }
        Err(first) => Role::Follow(first),
    }
}

/// Sends the halt SGI to every other CPU that runs vCPUs. `gic::try_send_halt` orders the
/// FAILED store before the SGI (a DSB, as for the kick), so a CPU taking it sees the flag.
fn stop_others(me: usize) {
    for i in (0..MAX_CPUS).filter(|&i| i != me && CPU_UP[i].load(Ordering::Acquire)) {
        if !gic::try_send_halt(CPU_MPIDR[i].load(Ordering::Relaxed), i, KICK_SPINS) {
            crate::println!("elvisor: cpu{me}: cannot stop cpu{i} (GIC driver lock held)");
        }
    }
}

/// Parks this CPU if another one has failed. Called where a CPU takes the halt SGI (from a
/// guest or from its idle loop: the same interrupt handling) and when it starts scheduling,
/// never on the exit fast path nor on the kick's path.
#[inline]
pub fn check() {
    let first = FAILED.load(Ordering::Acquire);
    if first != NONE {
        stop_here(first);
    }
}

#[cold]
fn stop_here(first: usize) -> ! {
    let me = this_index();
    if DEPTH[me].fetch_add(1, Ordering::AcqRel) > 0 || first == me {
        // Already on its way out (the failure path does not come back here).
        cpu::park()
    }
    follow(first, None)
}

/// Reporter: the report is out. Waits (bounded) until every other running CPU has parked,
/// says so, and parks.
pub fn finish() -> ! {
    let me = this_index();
    REPORT_DONE.store(true, Ordering::Release);
    let deadline = deadline_after(PARK_WAIT_MS);
    loop {
        let running = still_running(me);
        if running == 0 {
            crate::println!("elvisor: halted: all CPUs parked");
            break;
        }
        if timer::now() >= deadline {
            crate::println!(
                "elvisor: halted: {} did not stop within {PARK_WAIT_MS} ms; the others are parked",
                CpuList(running)
            );
            break;
        }
        core::hint::spin_loop();
    }
    cpu::park()
}

/// The CPUs other than `me` that run vCPUs and have not parked, as a bit mask.
fn still_running(me: usize) -> u64 {
    (0..MAX_CPUS)
        .filter(|&i| {
            i != me && CPU_UP[i].load(Ordering::Acquire) && !PARKED[i].load(Ordering::Acquire)
        })
        .fold(0, |m, i| m | 1 << i)
}

/// Follower: waits (bounded) for the reporter's report, prints one line, parks. `also` is this
/// CPU's own failure when it failed too, after the reporter.
pub fn follow(first: usize, also: Option<&dyn fmt::Display>) -> ! {
    let me = this_index();
    let deadline = deadline_after(REPORT_WAIT_MS);
    while !REPORT_DONE.load(Ordering::Acquire) && timer::now() < deadline {
        core::hint::spin_loop();
    }
    match also {
        Some(what) => crate::println!(
            "elvisor: cpu{me} halted (cpu{first} failed); cpu{me} had failed too: {what}"
        ),
        None => crate::println!("elvisor: cpu{me} halted (cpu{first} failed)"),
    }
    PARKED[me].store(true, Ordering::Release);
    cpu::park()
}

/// A failure inside the failure path (the report itself faulted or panicked). The first time,
/// one line and the rest of this CPU's part; after that, silence: printing may be what fails.
pub fn nested() -> ! {
    let me = this_index();
    if DEPTH[me].load(Ordering::Acquire) == 2 {
        crate::println!("elvisor: cpu{me}: another failure inside the failure report; cut short");
        if FAILED.load(Ordering::Acquire) == me {
            finish()
        }
    }
    PARKED[me].store(true, Ordering::Release);
    cpu::park()
}

/// The panic handler: the message, the syndrome registers of the last exception, a backtrace,
/// then every CPU parks.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match begin() {
        Role::Report => {}
        Role::Follow(first) => follow(first, Some(&info.message())),
        Role::Nested => nested(),
    }
    crate::println!("elvisor: PANIC on cpu{}: {info}", this_index());
    let [esr, elr, far, hpfar] = arch_exit::fault_registers().map(|(_, v)| v);
    crate::println!(
        "  last exception taken: ESR_EL2={esr:#x} ELR_EL2={elr:#x} FAR_EL2={far:#x} HPFAR_EL2={hpfar:#x}"
    );
    arch_exit::backtrace(&[], arch_exit::frame_pointer());
    finish()
}

/// Counter value `ms` milliseconds from now.
fn deadline_after(ms: u64) -> u64 {
    timer::now().saturating_add(timer::frequency().saturating_mul(ms) / 1000)
}

/// "cpu2, cpu3" for a CPU bit mask, without allocating.
struct CpuList(u64);

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for i in (0..64).filter(|i| self.0 & (1 << i) != 0) {
            write!(f, "{sep}cpu{i}")?;
            sep = ", ";
        }
        Ok(())
    }
}

/// Powers the machine off through the firmware's PSCI; where there is none (the Raspberry Pi
/// 4's firmware has no PSCI), says that the machine is halted and parks.
pub(super) fn power_off() -> ! {
    stop_machine(PLATFORM.get().and_then(|p| p.psci))
}

/// Every way the hypervisor stops ends here: PSCI SYSTEM_OFF through `conduit`, else one
/// "halted" line and the CPU parked (scripts and the test harness end QEMU on that line).
pub(super) fn stop_machine(conduit: Option<platform::PsciConduit>) -> ! {
    firmware::system_off(conduit);
    crate::println!(
        "elvisor: halted: no PSCI SYSTEM_OFF to power off with; the machine can be reset or switched off now"
    );
    cpu::park()
}
