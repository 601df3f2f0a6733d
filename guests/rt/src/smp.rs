//! Several CPUs: starting secondaries with PSCI CPU_ON, waiting for each other, and a lock.
//!
//! ```text
//!   boot CPU                                  secondary CPU (index = MPIDR_EL1.Aff0)
//!   start_cpu(mpidr, main, ctx)
//!     ENTRY[index] = main
//!     PSCI CPU_ON(mpidr, secondary entry, ctx) -> arch::smp entry code: FP on, own stack,
//!                                                 VBAR_EL1 -> secondary_start
//!                                                 main(&CpuBoot { index, context_id = ctx, .. })
//!                                                 returns -> IRQs masked, PSCI CPU_OFF
//! ```
//!
//! # Memory model (MMU off)
//!
//! The runtime leaves the MMU off on every CPU, so every data access is Device-nGnRnE: not
//! cached, so coherent between CPUs without maintenance, but the architecture does not promise
//! that exclusives (`ldxr`/`stxr`: Rust's `compare_exchange`, `fetch_add`, `swap`) work on it.
//! CPUs therefore share data only through atomic *loads and stores* with `Ordering::SeqCst`
//! (`ldar`/`stlr`, which are ordered with each other: sequentially consistent), and every
//! shared word has a single writer. Mutual exclusion without read-modify-write is Lamport's
//! bakery algorithm ([`BakeryLock`]), which is what the console uses so that lines printed by
//! different CPUs do not interleave.
//!
//! Waiting is `wfe` in a loop ([`wait_until`]), and the writer publishes with
//! [`notify`] (`dsb sy; sev`). A hypervisor that traps WFE may take it as a hint to run
//! another vCPU (the point when vCPUs share a physical CPU); one that does not trap it leaves
//! the wait to the hardware's event register. Every wait is bounded by the virtual counter.

use fdt::Fdt;

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::arch::{self, MAX_CPUS};
use crate::smccc::psci;
use crate::timer;

pub use crate::arch::smp::{STACK_BYTES, secondary_entry_address};

/// Cap on loop iterations of a wait, should the counter stand still.
const WAIT_ITERATIONS_LIMIT: u64 = 100_000_000;

/// What a secondary CPU's main function gets.
pub struct CpuBoot {
    /// This CPU's index: MPIDR_EL1.Aff0.
    pub index: usize,
    /// MPIDR_EL1 as this CPU reads it.
    pub mpidr: u64,
    /// x0 at entry: the context id its starter passed to CPU_ON.
    pub context_id: u64,
    /// CurrentEL.EL at entry (1 under elvisor).
    pub entry_el: u8,
    /// DAIF at entry (PSCI: all masked, 0x3c0).
    pub entry_daif: u64,
    /// SCTLR_EL1 at entry (PSCI: MMU and caches off, bit 0 M = 0).
    pub entry_sctlr: u64,
    /// The device tree the boot CPU was given, parsed again for this CPU.
    pub fdt: Option<Fdt<'static>>,
}

/// What the entry code found, handed to [`secondary_start`].
pub(crate) struct EntryState {
    pub index: usize,
    pub context_id: u64,
    pub current_el: u8,
    pub daif: u64,
    pub sctlr: u64,
}

/// The CPU index of `mpidr`, if it is one the runtime can start (Aff0 below [`MAX_CPUS`],
/// Aff1..Aff3 zero).
pub fn index_of(mpidr: u64) -> Option<usize> {
    let aff0 = (mpidr & 0xff) as usize;
    let upper = mpidr & 0xff_0000_ff00;
    (upper == 0 && aff0 < MAX_CPUS).then_some(aff0)
}

/// The affinity value (what PSCI takes as `target_cpu`) of CPU `index`: Aff0 = index.
pub fn mpidr_of(index: usize) -> u64 {
    index as u64
}

/// Starts the CPU with MPIDR `target_mpidr` in the runtime's secondary entry code, which runs
/// `main` on that CPU's own stack with [`CpuBoot::context_id`] = `context_id`. Returns the PSCI
/// CPU_ON code (see [`crate::smccc::psci_ret`]).
///
/// A target the runtime has no stack for (see [`index_of`]) is still passed to CPU_ON, to test
/// the hypervisor's answer; should it start, it parks without running any Rust code.
pub fn start_cpu(target_mpidr: u64, main: fn(&CpuBoot), context_id: u64) -> i64 {
    if let Some(index) = index_of(target_mpidr) {
        arch::smp::set_entry(index, main);
    }
    // The store above reaches memory before the CPU_ON call: `hvc` is a context
    // synchronization event and the stores are to Device memory, which is not cached.
    arch::smp::send_event();
    psci::cpu_on(target_mpidr, secondary_entry_address() as u64, context_id)
}

/// Rust entry of every secondary CPU (called by the entry code in `arch::smp`).
pub(crate) fn secondary_start(entry: EntryState) -> ! {
    let fdt = crate::mem::dtb_address()
        .and_then(crate::arch::boot::dtb_bytes)
        .and_then(|bytes| Fdt::new(bytes).ok());
    let boot = CpuBoot {
        index: entry.index,
        mpidr: arch::mpidr(),
        context_id: entry.context_id,
        entry_el: entry.current_el,
        entry_daif: entry.daif,
        entry_sctlr: entry.sctlr,
        fdt,
    };
    if let Some(main) = arch::smp::entry(entry.index) {
        main(&boot);
    }
    arch::irq::mask();
    psci::cpu_off();
    arch::halt()
}

/// Publishes earlier stores and wakes CPUs waiting in [`wait_until`] (`dsb sy; sev`).
pub fn notify() {
    arch::smp::send_event();
}

/// Waits with `wfe` until `done()` or `timeout_ticks` of the virtual counter have passed.
/// Returns `done()`. IRQs are left as they are (unmasked: handlers run during the wait).
pub fn wait_until(timeout_ticks: u64, done: impl Fn() -> bool) -> bool {
    let start = timer::Timer::Virtual.count();
    for _ in 0..WAIT_ITERATIONS_LIMIT {
        if done() {
            return true;
        }
        if timer::Timer::Virtual.count().wrapping_sub(start) >= timeout_ticks {
            break;
        }
        arch::smp::wait_for_event();
    }
    done()
}

/// Counter ticks in `ms` milliseconds.
pub fn ms(ms: u64) -> u64 {
    timer::ticks_from_us(ms.saturating_mul(1000))
}

/// Lamport's bakery lock for up to [`MAX_CPUS`] CPUs, from atomic loads and stores alone (no
/// exclusives: see the module documentation).
///
/// Re-entrant in the only way a runtime needs: if this CPU already holds (or is taking) the
/// lock, say because an IRQ handler or a panic prints while the interrupted code was printing,
/// [`lock`](Self::lock) returns `None` and the caller goes on unlocked. Waits are bounded: a
/// CPU that holds the lock for longer than [`BakeryLock::PATIENCE_MS`] (stuck, or powered off
/// while holding it) is ignored, so printing can never deadlock.
#[derive(Debug)]
pub struct BakeryLock {
    choosing: [AtomicBool; MAX_CPUS],
    number: [AtomicU32; MAX_CPUS],
}

/// Holding a [`BakeryLock`]; dropping it releases the lock.
#[derive(Debug)]
pub struct BakeryGuard<'a> {
    lock: &'a BakeryLock,
    me: usize,
}

impl BakeryLock {
    /// How long a CPU waits for the lock before going on without it.
    pub const PATIENCE_MS: u64 = 200;

    /// An unlocked lock.
    pub const fn new() -> Self {
        Self {
            choosing: [const { AtomicBool::new(false) }; MAX_CPUS],
            number: [const { AtomicU32::new(0) }; MAX_CPUS],
        }
    }

    /// Takes the lock for this CPU; `None` if this CPU holds it already (see the type's
    /// documentation) or the wait ran out of patience.
    pub fn lock(&self) -> Option<BakeryGuard<'_>> {
        let me = arch::cpu_index();
        if self.number[me].load(Ordering::SeqCst) != 0 {
            return None;
        }
        // Doorway: take a number one above every number in use.
        self.choosing[me].store(true, Ordering::SeqCst);
        let max = self
            .number
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .max()
            .unwrap_or(0);
        let mine = max.wrapping_add(1).max(1);
        self.number[me].store(mine, Ordering::SeqCst);
        self.choosing[me].store(false, Ordering::SeqCst);
        notify();
        // Bakery: wait for every CPU with a smaller (number, index) to finish.
        let patience = ms(Self::PATIENCE_MS);
        for other in (0..MAX_CPUS).filter(|&other| other != me) {
            let entered = wait_until(patience, || !self.choosing[other].load(Ordering::SeqCst));
            let served = wait_until(patience, || {
                let theirs = self.number[other].load(Ordering::SeqCst);
                theirs == 0 || (theirs, other) > (mine, me)
            });
            if !(entered && served) {
                // Out of patience: take a turn anyway rather than hang.
                break;
            }
        }
        Some(BakeryGuard { lock: self, me })
    }
}

impl Default for BakeryLock {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BakeryGuard<'_> {
    fn drop(&mut self) {
        self.lock.number[self.me].store(0, Ordering::SeqCst);
        notify();
    }
}
