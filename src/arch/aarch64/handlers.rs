//! The one interface through which the architecture code calls up into the kernel.
//!
//! The vectors, the fatal-exception handler and the CPU start-up code need the kernel's exit
//! policy, its scheduler's `enter` and its halt protocol, but must not name the kernel (the
//! layers go one way: kernel -> arch). The kernel implements [`Handlers`], and the binary's
//! entry glue (src/main.rs) installs the implementation once with [`install_handlers!`]
//! (aarch64-rt's `ExceptionHandlers` is the model). The macro defines one symbol per method;
//! the arch code declares those symbols and calls them, so the call is as direct as a call
//! within the crate (with LTO, inlined), and a missing installation is a link error.
//!
//! [`install_handlers!`]: crate::install_handlers

use core::fmt;

use super::cpu::VcpuPtr;
use super::esr::Esr;
use crate::vm::vcpu::Vcpu;

/// Kind of guest exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExitKind {
    Sync(Esr),
    Irq,
    Fiq,
    SError(Esr),
}

/// What the CPU does after a full-path exit.
pub enum Next {
    /// Return to the vCPU that exited (no scheduler, no reload).
    Resume,
    /// Run this vCPU (possibly the same one, after a pass through the scheduler); the arch
    /// code calls [`Handlers::enter`] on it first.
    Switch(VcpuPtr),
}

/// What a CPU entering the failure path does.
pub enum Role {
    /// First to fail: print the report, then [`Handlers::halt_finish`].
    Report,
    /// Another CPU failed first (index): say so and park ([`Handlers::halt_follow`]).
    Follow(usize),
    /// This CPU failed again inside its own failure path ([`Handlers::halt_nested`]).
    Nested,
}

/// What the kernel provides to the architecture code. All run at EL2 with IRQs masked.
pub trait Handlers {
    /// The synchronous-exit fast path. `full_frame` says whether x19..x28 were saved in the
    /// frame; without them the handler must refuse (return false) any exit that would read
    /// or write one of them. True when the exit was handled and the vCPU can resume.
    fn fast_sync(v: &mut Vcpu, esr: Esr, full_frame: bool) -> bool;
    /// The full exit path: what to run next.
    fn handle_exit(v: &mut Vcpu, kind: ExitKind) -> Next;
    /// Makes `v` the vCPU this CPU runs next (load its state if it is not loaded yet).
    fn enter(v: &mut Vcpu);
    /// Enters the failure path (see kernel::halt).
    fn halt_begin() -> Role;
    /// Another CPU failed first: say so (with `also`, this CPU's own failure) and park.
    fn halt_follow(first: usize, also: Option<&dyn fmt::Display>) -> !;
    /// A failure inside the failure path: park at once.
    fn halt_nested() -> !;
    /// The report is out: wait for the others to park, then park.
    fn halt_finish() -> !;
    /// Whether the first `n` CPUs have come up (the self-test waits for them).
    fn cpus_up(n: usize) -> bool;
}

/// Installs `$t`'s [`Handlers`] as the ones the architecture code calls. Invoke it exactly
/// once, in the binary's entry glue.
#[macro_export]
macro_rules! install_handlers {
    ($t:ty) => {
        const _: () = {
            use $crate::arch::aarch64::esr::Esr;
            use $crate::arch::aarch64::handlers::{ExitKind, Handlers, Next, Role};
            use $crate::vm::vcpu::Vcpu;

            // Inlined into the arch caller under LTO (the symbol stays for the link).
            #[inline(always)]
            #[unsafe(no_mangle)]
            fn elvisor_handler_fast_sync(v: &mut Vcpu, esr: Esr, full_frame: bool) -> bool {
                <$t as Handlers>::fast_sync(v, esr, full_frame)
            }
            // Inlined into the arch caller under LTO (the symbol stays for the link).
            #[inline(always)]
            #[unsafe(no_mangle)]
            fn elvisor_handler_handle_exit(v: &mut Vcpu, kind: ExitKind) -> Next {
                <$t as Handlers>::handle_exit(v, kind)
            }
            // Inlined into the arch caller under LTO (the symbol stays for the link).
            #[inline(always)]
            #[unsafe(no_mangle)]
            fn elvisor_handler_enter(v: &mut Vcpu) {
                <$t as Handlers>::enter(v)
            }
            #[unsafe(no_mangle)]
            fn elvisor_handler_halt_begin() -> Role {
                <$t as Handlers>::halt_begin()
            }
            #[unsafe(no_mangle)]
            fn elvisor_handler_halt_follow(
                first: usize,
                also: Option<&dyn core::fmt::Display>,
            ) -> ! {
                <$t as Handlers>::halt_follow(first, also)
            }
            #[unsafe(no_mangle)]
            fn elvisor_handler_halt_nested() -> ! {
                <$t as Handlers>::halt_nested()
            }
            #[unsafe(no_mangle)]
            fn elvisor_handler_halt_finish() -> ! {
                <$t as Handlers>::halt_finish()
            }
            #[unsafe(no_mangle)]
            fn elvisor_handler_cpus_up(n: usize) -> bool {
                <$t as Handlers>::cpus_up(n)
            }
        };
    };
}

// The symbols `install_handlers!` defines. Their signatures here and in the macro are the same
// text; a mismatch would be undefined behaviour, so they live side by side in this file.
unsafe extern "Rust" {
    fn elvisor_handler_fast_sync(v: &mut Vcpu, esr: Esr, full_frame: bool) -> bool;
    fn elvisor_handler_handle_exit(v: &mut Vcpu, kind: ExitKind) -> Next;
    fn elvisor_handler_enter(v: &mut Vcpu);
    fn elvisor_handler_halt_begin() -> Role;
    fn elvisor_handler_halt_follow(first: usize, also: Option<&dyn fmt::Display>) -> !;
    fn elvisor_handler_halt_nested() -> !;
    fn elvisor_handler_halt_finish() -> !;
    fn elvisor_handler_cpus_up(n: usize) -> bool;
}

// Safe wrappers: each calls the installed handler. SAFETY (all of them): the symbol is defined
// by `install_handlers!`, with the signature declared above, forwarding to a safe trait method;
// the link fails if it is not installed, so the call reaches that safe Rust function.

#[inline(always)]
pub(super) fn fast_sync(v: &mut Vcpu, esr: Esr, full_frame: bool) -> bool {
    // SAFETY: see above.
    unsafe { elvisor_handler_fast_sync(v, esr, full_frame) }
}

#[inline(always)]
pub(super) fn handle_exit(v: &mut Vcpu, kind: ExitKind) -> Next {
    // SAFETY: see above.
    unsafe { elvisor_handler_handle_exit(v, kind) }
}

#[inline(always)]
pub(super) fn enter(v: &mut Vcpu) {
    // SAFETY: see above.
    unsafe { elvisor_handler_enter(v) }
}

pub(super) fn halt_begin() -> Role {
    // SAFETY: see above.
    unsafe { elvisor_handler_halt_begin() }
}

pub(super) fn halt_follow(first: usize, also: Option<&dyn fmt::Display>) -> ! {
    // SAFETY: see above.
    unsafe { elvisor_handler_halt_follow(first, also) }
}

pub(super) fn halt_nested() -> ! {
    // SAFETY: see above.
    unsafe { elvisor_handler_halt_nested() }
}

pub(super) fn halt_finish() -> ! {
    // SAFETY: see above.
    unsafe { elvisor_handler_halt_finish() }
}

#[cfg_attr(not(feature = "selftest"), allow(dead_code))]
pub(super) fn cpus_up(n: usize) -> bool {
    // SAFETY: see above.
    unsafe { elvisor_handler_cpus_up(n) }
}
