//! IRQ masking (PSTATE.I), `wfi`, and the slot for the guest's IRQ handler.
//!
//! The vector code calls the handler set with [`set_handler`] for an IRQ taken at EL1
//! ([`crate::exception`] dispatches it). Handlers run with PSTATE.I set by the exception entry
//! (no nesting), on the interrupted stack, and return through the vector code's `eret`.
//!
//! Only PSTATE.I is touched here: FIQs stay masked (group 0 under GICv3 would be a FIQ; the
//! guests use group 1), and so do SError and debug.

use core::arch::asm;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The guest's IRQ handler, or null: a `fn()` cast to a data pointer.
static HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// ELR_EL1 of the IRQ being handled (the interrupted instruction), for [`interrupted_at`].
static INTERRUPTED_AT: AtomicU64 = AtomicU64::new(0);

/// Installs (or with `None` removes) the function the vectors call for every IRQ.
///
/// The handler must acknowledge the interrupt at the interrupt controller (or mask its source):
/// it is called again as soon as it returns if the IRQ is still signalled.
pub fn set_handler(handler: Option<fn()>) {
    let raw = handler.map_or(core::ptr::null_mut(), |f| f as *mut ());
    HANDLER.store(raw, Ordering::SeqCst);
}

/// Where the IRQ now being handled interrupted the program: its preferred return address
/// (ELR_EL1), the first instruction not executed. Meaningful inside the handler only.
pub fn interrupted_at() -> u64 {
    INTERRUPTED_AT.load(Ordering::SeqCst)
}

pub(crate) fn set_interrupted_at(elr: u64) {
    INTERRUPTED_AT.store(elr, Ordering::SeqCst);
}

/// The installed IRQ handler, if any.
pub(crate) fn handler() -> Option<fn()> {
    let raw = HANDLER.load(Ordering::SeqCst);
    if raw.is_null() {
        return None;
    }
    // SAFETY: `set_handler` is the only writer of HANDLER and stores either null (excluded
    // above) or a `fn()` cast to `*mut ()`; a function pointer round-trips through a data
    // pointer of the same size unchanged (both are 64-bit addresses on AArch64).
    Some(unsafe { core::mem::transmute::<*mut (), fn()>(raw) })
}

/// Masks IRQs at the PE (`msr daifset, #2`).
///
/// Not `nomem`: it is a compiler barrier, so memory accesses the handler shares with the caller
/// are not moved out of the masked section.
pub fn mask() {
    // SAFETY: setting PSTATE.I only defers IRQs; no memory is touched.
    unsafe { asm!("msr daifset, #2", options(nostack, preserves_flags)) };
}

/// Unmasks IRQs at the PE (`msr daifclr, #2; isb`): a pending IRQ is taken before this returns.
///
/// The `isb` makes the point where a pending interrupt is taken precise (ARM ARM D1.3.6: the
/// PSTATE change is synchronised by the next context synchronization event).
pub fn unmask() {
    // SAFETY: clearing PSTATE.I lets the installed handler run (or, without one, the runtime
    // report the IRQ and power off); the vector code preserves every register of this context.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack, preserves_flags)) };
}

/// Whether IRQs are masked at the PE (DAIF.I).
pub fn masked() -> bool {
    let daif: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & (1 << 7) != 0
}

/// `wfi`: waits for an interrupt (or any other wake-up event; it may also return at once).
///
/// With IRQs masked at the PE a pending IRQ still ends the wait (ARM ARM D1.6.2 "Wait For
/// Interrupt"), without being taken; so `mask(); if !done { wfi() }; unmask()` is the race-free
/// way to sleep until a handler has run.
pub fn wfi() {
    // SAFETY: `wfi` only suspends execution; not `nomem`, so it orders like a call.
    unsafe { asm!("wfi", options(nostack, preserves_flags)) };
}

/// Unmasks IRQs, executes one `wfi`, masks IRQs again; returns the address of that `wfi`.
///
/// One asm block, so the address is exact. An IRQ taken with [`interrupted_at`] at or before
/// that address was taken before the wait began (the `wfi` then ran after the handler); one
/// taken at the address after it ended the wait.
pub fn unmask_wfi_mask() -> u64 {
    let wfi_at: u64;
    // SAFETY: as `unmask`, `wfi` and `mask`: the handler may run between them and the vector
    // code preserves every register of this context; `adr` only computes an address.
    unsafe {
        asm!(
            "adr {at}, 2f",
            "msr daifclr, #2",
            "isb",
            "2: wfi",
            "msr daifset, #2",
            at = out(reg) wfi_at,
            options(nostack, preserves_flags),
        )
    };
    wfi_at
}

/// `isb`: context synchronization, for callers that change system state and must see it applied.
pub fn isb() {
    // SAFETY: a barrier has no effect beyond ordering.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}
