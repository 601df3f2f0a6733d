//! The kernel's spin locks: a waiter waits for an event (WFE) between attempts instead of
//! spinning on ISB.
//!
//! Why: a CPU spinning with ISB keeps its core busy and, under QEMU's single-threaded TCG
//! (`-icount`, or more vCPUs than host threads), keeps the lock holder from running at all
//! until QEMU's round-robin takes the CPU away (tens of milliseconds of guest time: a victim
//! VM's timer interrupts arrived up to 55 ms late behind a spinning CPU). QEMU implements WFE
//! as a yield to the next CPU; on hardware WFE sleeps until an event: the lock holder's store
//! clearing this CPU's exclusive monitor, an SEV, or the counter event stream that
//! `guest::CNTHCTL_EVENT_STREAM` keeps running on every CPU (ARM ARM D12.2.2), which bounds
//! the wait even where the compare-and-swap left no monitor armed. Linux waits the same way
//! (`smp_cond_load_acquire`, its spin-lock slow paths).

/// spin's relax strategy for [`Mutex`]: one WFE per failed attempt (a plain spin hint on the
/// host, where the unit tests run).
pub struct WaitForEvent;

impl spin::RelaxStrategy for WaitForEvent {
    #[inline(always)]
    fn relax() {
        #[cfg(target_os = "none")]
        aarch64_cpu::asm::wfe();
        #[cfg(not(target_os = "none"))]
        core::hint::spin_loop();
    }
}

/// The kernel's mutex: `spin`'s ticket-free spin lock with [`WaitForEvent`] between attempts.
pub type Mutex<T> = spin::mutex::Mutex<T, WaitForEvent>;
