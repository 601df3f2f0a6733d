//! EL2 exception vectors and the world switch.
//!
//! While a guest runs, SP_EL2 points at its vCPU's [`GuestRegs`] frame, so an exit saves
//! registers straight into the frame without needing a scratch register, then switches to this
//! CPU's kernel stack (`host_sp`, stored in the frame). IRQs stay masked throughout. Nothing but
//! general registers, ELR and SPSR moves on this path: guest EL1 system registers stay in the
//! CPU.
//!
//! **Synchronous exits** (hypercalls, traps, aborts) first try the fast path,
//! `elvisor_sync_fast(frame)`. Only the registers a procedure call may clobber are saved for
//! it: x0..x18, x29, x30, ELR and SPSR. The guest's x19..x28 stay in the CPU because the Rust
//! code preserves them (AAPCS64 callee-saved); x29 is saved and zeroed so that the hypervisor's
//! frame-pointer chain is rooted at zero, never at a guest-chosen address. The fast path returns
//! the frame if it handled the exit, and the restore reloads the same registers. Otherwise it
//! returns the frame with bit 0 set: the vector then saves x19..x28 into the frame as well and
//! calls `elvisor_exit(frame, EXIT_SYNC)`. The fast path must therefore never read or write the
//! frame's x19..x28, since they are stale there.
//!
//! **Other exits** (IRQ, FIQ, SError) save the whole frame and call `elvisor_exit(frame,
//! kind)`. It returns the frame to resume (another vCPU's when the scheduler switched), which
//! `guest_resume` restores in full before it `eret`s.
//!
//! Exceptions taken *from EL2 itself* are hypervisor bugs: the fatal vectors switch to the
//! per-CPU exception stack (the kernel stack may have overflowed into its guard page),
//! save the registers and call `elvisor_el2_fatal`, which reports and parks the CPU.

use crate::vm::vcpu::{
    COUNTERS_IRQ, COUNTERS_SYNC, REGS_ELR, REGS_HOST_SP, REGS_SPSR, REGS_X0, VCPU_COUNTERS,
};
const _: () = assert!(VCPU_COUNTERS == REGS_HOST_SP + 8);

// The paired loads and stores below rely on this layout: x29, x30 adjacent, then ELR, SPSR.
const _: () = assert!(REGS_X0 + 30 * 8 + 8 == REGS_ELR && REGS_ELR + 8 == REGS_SPSR);

/// `kind` argument of `elvisor_exit`.
pub const EXIT_SYNC: u64 = 0;
pub const EXIT_IRQ: u64 = 1;
pub const EXIT_FIQ: u64 = 2;
pub const EXIT_SERROR: u64 = 3;

/// Size of the register frame the fatal vectors push: x0..x30 + padding.
pub const FATAL_FRAME_BYTES: u64 = 32 * 8;

core::arch::global_asm!(
    r#"
// x0..x17 from the frame at SP (both resumes).
.macro LOAD_X0_X17
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
.endm

// ELR_EL2, SPSR_EL2, x29 and x30 from the frame at SP (both resumes).
.macro LOAD_ELR_SPSR_X29_X30
    ldp     x29, x30, [sp, #{x29}]
    ldp     x1, x2, [sp, #{elr}]
    msr     elr_el2, x1
    msr     spsr_el2, x2
.endm

// x0..x17 into the frame at SP (both exits).
.macro SAVE_X0_X17
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
.endm

// Synchronous exit: caller-saved registers and x29 only, then the fast path (see the module
// docs). x29 is zeroed so the hypervisor's frame-pointer chain ends here instead of at a
// guest-chosen value (the backtrace walker would follow it).
.macro GUEST_EXIT_SYNC
    SAVE_X0_X17
    str     x18, [sp, #144]
    mrs     x0, elr_el2
    mrs     x1, spsr_el2
    stp     x29, x30, [sp, #{x29}]
    stp     x0, x1, [sp, #{elr}]
    mov     x0, sp
    // The kernel stack top and this vCPU's exit counters (`Vcpu::counters`, right after
    // host_sp): one LDP; then the count, only this CPU writes it.
    ldp     x2, x3, [sp, #{host_sp}]
    ldr     x4, [x3, #{count_sync}]
    add     x4, x4, #1
    str     x4, [x3, #{count_sync}]
    mov     sp, x2
    mov     x29, xzr
    bl      elvisor_sync_fast
    tbz     x0, #0, elvisor_fast_resume
    b       elvisor_sync_slow
.endm

.macro GUEST_EXIT kind
    SAVE_X0_X17
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x0, elr_el2
    mrs     x1, spsr_el2
    str     x30, [sp, #{x30}]
    stp     x0, x1, [sp, #{elr}]
    mov     x0, sp
    ldp     x2, x3, [sp, #{host_sp}]
    ldr     x4, [x3, #{count_irq}]
    add     x4, x4, #1
    str     x4, [x3, #{count_irq}]
    mov     sp, x2
    mov     x1, #\kind
    mov     x29, xzr
    bl      elvisor_exit
    b       elvisor_guest_resume
.endm

// x18 is needed as a scratch register before anything can be saved (SP may point into a
// guard page), so its value is parked in SP_EL0 first: the hypervisor runs on SP_EL2 and never
// uses SP_EL0, and after a fatal exception no guest on this CPU is resumed, so the guest EL0
// stack pointer it held is not needed either. It goes into the frame's x18 slot below.
.macro EL2_FATAL kind
    msr     sp_el0, x18
    mrs     x18, tpidr_el2
    cbz     x18, 1f
    ldr     x18, [x18]              // PerCpu.exc_sp
    mov     sp, x18
1:  sub     sp, sp, #{fatal_frame}
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mrs     x0, sp_el0              // x18 as it was at the exception (x0 is saved already)
    str     x0, [sp, #144]
    mov     x0, sp
    mov     x1, #\kind
    bl      elvisor_el2_fatal
    b       .
.endm

    .section .text.vectors, "ax"
    .balign 2048
    .global el2_vectors
el2_vectors:
    // Current EL with SP_EL0: never used (the kernel runs on SP_EL2).
    .balign 0x80
    EL2_FATAL 0
    .balign 0x80
    EL2_FATAL 1
    .balign 0x80
    EL2_FATAL 2
    .balign 0x80
    EL2_FATAL 3
    // Current EL with SP_EL2: a fault in the hypervisor (an SError may be the one a guest
    // left pending, taken on purpose in the probe window: see elvisor_el2_serror; a
    // synchronous abort may be a boot-time device probe's: see elvisor_el2_sync).
    .balign 0x80
    b       elvisor_el2_sync
    .balign 0x80
    EL2_FATAL 1
    .balign 0x80
    EL2_FATAL 2
    .balign 0x80
    b       elvisor_el2_serror
    // Lower EL, AArch64: guest exits.
    .balign 0x80
    GUEST_EXIT_SYNC
    .balign 0x80
    GUEST_EXIT 1
    .balign 0x80
    GUEST_EXIT 2
    .balign 0x80
    GUEST_EXIT 3
    // Lower EL, AArch32 (a 32-bit guest EL0 faulting on stage 2): same frame layout.
    .balign 0x80
    GUEST_EXIT_SYNC
    .balign 0x80
    GUEST_EXIT 1
    .balign 0x80
    GUEST_EXIT 2
    .balign 0x80
    GUEST_EXIT 3

    // The exit tails stay in .text.vectors, next to the table: GUEST_EXIT_SYNC reaches
    // elvisor_fast_resume with a TBZ, whose range is only +/-32 KiB (ARM ARM C6.2.363), and
    // an unoptimised build's .text is far larger than that.
    .balign 64
    // The fast path handled the exit: x0 = the frame. Restores what GUEST_EXIT_SYNC saved
    // (x19..x29 still hold the guest's values).
elvisor_fast_resume:
    mov     sp, x0
    LOAD_ELR_SPSR_X29_X30
    LOAD_X0_X17
    ldr     x18, [sp, #144]
    eret

    // The fast path declined: x0 = the frame | 1, SP = the kernel stack top again. Completes
    // the frame with the callee-saved registers (still the guest's) and takes the full path.
elvisor_sync_slow:
    and     x0, x0, #~1
    stp     x19, x20, [x0, #152]
    stp     x21, x22, [x0, #168]
    stp     x23, x24, [x0, #184]
    stp     x25, x26, [x0, #200]
    stp     x27, x28, [x0, #216]
    mov     x1, #{exit_sync}
    mov     x29, xzr
    bl      elvisor_exit
    b       elvisor_guest_resume

    // An SError taken at EL2. Inside elvisor_serror_probe's window it is a guest's SError that
    // was still pending when the guest exited: x0 = its syndrome, resume at the window's end
    // (masked again there). Anywhere else it is fatal. x16/x17 go through the stack: the probe
    // is an AAPCS64 call, so inside the window they are free, and outside they are restored
    // before the fatal report saves every register.
elvisor_el2_serror:
    sub     sp, sp, #16
    stp     x16, x17, [sp]
    mrs     x16, elr_el2
    adr     x17, elvisor_serror_window
    cmp     x16, x17
    b.lo    1f
    adr     x17, elvisor_serror_window_end
    cmp     x16, x17
    b.hi    1f
    ldp     x16, x17, [sp]
    add     sp, sp, #16
    mrs     x0, esr_el2
    adr     x1, elvisor_serror_window_end
    msr     elr_el2, x1
    eret
1:  ldp     x16, x17, [sp]
    add     sp, sp, #16
    EL2_FATAL 3

    // A synchronous exception taken at EL2. When it is the one load of elvisor_probe_read32
    // (ELR_EL2 is that load and x16 holds its address, which the probe sets just before), the
    // load aborted: resume at elvisor_probe_faulted. Anything else is fatal. Only x18 is used,
    // parked in SP_EL0 as EL2_FATAL parks it, so no stack is touched before the check (the
    // fault may be a stack overflow).
elvisor_el2_sync:
    msr     sp_el0, x18
    mrs     x18, elr_el2
    cmp     x18, x16
    b.ne    1f
    adr     x18, elvisor_probe_load
    cmp     x18, x16
    b.ne    1f
    adr     x18, elvisor_probe_faulted
    msr     elr_el2, x18
    mrs     x18, sp_el0
    eret
1:  mrs     x18, sp_el0
    EL2_FATAL 0

    // u64 elvisor_probe_read32(u64 pa): the 32-bit value at `pa`, or u64::MAX when the load
    // takes a synchronous external abort (nothing decodes the address: ARM ARM D17.2.37, ESR
    // DFSC 0b010000). x16 (IP0, free across a call under AAPCS64) marks the load for
    // elvisor_el2_sync.
    .global elvisor_probe_read32
elvisor_probe_read32:
    adr     x16, elvisor_probe_load
elvisor_probe_load:
    ldr     w0, [x0]
    ret
elvisor_probe_faulted:
    mov     x0, #-1
    ret

    // u64 elvisor_serror_probe(void): opens a window in which a pending SError is taken
    // (PSTATE.A clear, then ISB, ARM ARM D1.3.5 / D17.2: an unmasked pending SError is taken
    // before the ISB completes). Returns 0, or the SError's ESR_EL2 when one was pending.
    .global elvisor_serror_probe
elvisor_serror_probe:
    mov     x0, xzr
elvisor_serror_window:
    msr     daifclr, #4
    isb
elvisor_serror_window_end:
    msr     daifset, #4
    ret

    .balign 64
    .global elvisor_guest_resume
    // x0 = the GuestRegs frame to run. SP_EL2 becomes the frame until the next exit.
elvisor_guest_resume:
    mov     sp, x0
    LOAD_ELR_SPSR_X29_X30
    LOAD_X0_X17
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldr     x28, [sp, #224]
    eret
"#,
    x29 = const REGS_X0 + 29 * 8,
    x30 = const REGS_X0 + 30 * 8,
    elr = const REGS_ELR,
    host_sp = const REGS_HOST_SP,
    count_sync = const COUNTERS_SYNC,
    count_irq = const COUNTERS_IRQ,
    fatal_frame = const FATAL_FRAME_BYTES,
    exit_sync = const EXIT_SYNC,
);

unsafe extern "C" {
    fn elvisor_guest_resume(regs: *mut crate::vm::vcpu::GuestRegs) -> !;
    fn elvisor_serror_probe() -> u64;
    fn elvisor_probe_read32(pa: u64) -> u64;
}

/// Takes an SError that is pending on this CPU, if any, and returns its syndrome.
///
/// A guest's access can raise an SError that is still pending when the guest exits (PSTATE.A
/// is masked on the way in to EL2). Left alone, it would be taken after the `eret` into
/// whichever vCPU runs next, possibly another VM's, which would then be blamed and stopped.
/// Called when a vCPU is taken off the CPU, it ties the SError to the vCPU that caused it,
/// as Linux's `__guest_exit` does with its abort window.
pub fn take_pending_serror() -> Option<u64> {
    // SAFETY: the probe only unmasks SErrors for two instructions at EL2; an SError taken
    // there returns to the probe's end with its syndrome (see elvisor_el2_serror), any other
    // exception is fatal as everywhere. It clobbers only caller-saved registers.
    let esr = unsafe { elvisor_serror_probe() };
    (esr != 0).then_some(esr)
}

/// Reads the 32-bit word at physical address `pa` (the MMU off, or `pa` mapped), or `None`
/// when nothing answers there: the load took a synchronous external abort (caught by
/// `elvisor_el2_sync`), or it left an SError pending (taken in [`take_pending_serror`]'s
/// window; an interconnect may report a read of an absent device either way).
///
/// # Safety
/// A read of `pa` must have no side effect that anything relies on: an identification
/// register, RAM, or nothing at all. (It is for boot-time probes of what the device tree
/// claims, before anything else has touched the device.)
pub unsafe fn probe_read32(pa: u64) -> Option<u32> {
    if !pa.is_multiple_of(4) {
        return None;
    }
    // SAFETY: the caller guarantees the read is harmless; an abort on it resumes at the
    // probe's fault return (elvisor_el2_sync), which clobbers only x0/x16/x18 (x18 restored).
    let v = unsafe { elvisor_probe_read32(pa) };
    if take_pending_serror().is_some() {
        return None;
    }
    u32::try_from(v).ok()
}

/// Enters (or re-enters) a guest with the given frame. Never returns: the next time this CPU
/// runs hypervisor code is the next exit, on a fresh kernel stack.
///
/// # Safety
/// `regs` must be the frame of a vCPU whose EL1 context, stage 2 and trap configuration are
/// loaded on this CPU, with `host_sp` set to this CPU's kernel stack top, and it must stay
/// valid (not moved or freed) while the guest runs.
pub unsafe fn enter_guest(regs: *mut crate::vm::vcpu::GuestRegs) -> ! {
    // SAFETY: the caller upholds the contract above.
    unsafe { elvisor_guest_resume(regs) }
}
