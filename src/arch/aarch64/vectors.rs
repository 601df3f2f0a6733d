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
//! it: x0..x18, x30, ELR and SPSR. The guest's x19..x29 stay in the CPU because the Rust code
//! preserves them (AAPCS64 callee-saved). The fast path returns the frame if it handled the
//! exit, and the restore reloads the same registers. Otherwise it returns the frame with bit 0
//! set: the vector then saves x19..x29 into the frame as well and calls
//! `elvisor_exit(frame, EXIT_SYNC)`. The fast path must therefore never read or write the
//! frame's x19..x29, since they are stale there.
//!
//! **Other exits** (IRQ, FIQ, SError) save the whole frame and call `elvisor_exit(frame,
//! kind)`. It returns the frame to resume (another vCPU's when the scheduler switched), which
//! `guest_resume` restores in full before it `eret`s.
//!
//! Exceptions taken *from EL2 itself* are hypervisor bugs: the fatal vectors switch to the
//! per-CPU exception stack (the kernel stack may have overflowed into its guard page),
//! save the registers and call `elvisor_el2_fatal`, which reports and parks the CPU.

use crate::vm::vcpu::{REGS_ELR, REGS_HOST_SP, REGS_SPSR};

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

// ELR_EL2, SPSR_EL2 and x30 from the frame at SP (both resumes).
.macro LOAD_ELR_SPSR_X30
    ldp     x30, x1, [sp, #{elr_minus_8}]
    ldr     x2, [sp, #{spsr}]
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

// Synchronous exit: caller-saved registers only, then the fast path (see the module docs).
.macro GUEST_EXIT_SYNC
    SAVE_X0_X17
    str     x18, [sp, #144]
    mrs     x0, elr_el2
    mrs     x1, spsr_el2
    stp     x30, x0, [sp, #{elr_minus_8}]
    str     x1, [sp, #{spsr}]
    mov     x0, sp
    ldr     x2, [sp, #{host_sp}]
    mov     sp, x2
    bl      elvisor_sync_fast
    tbnz    x0, #0, elvisor_sync_slow
    b       elvisor_fast_resume
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
    stp     x30, x0, [sp, #{elr_minus_8}]
    str     x1, [sp, #{spsr}]
    mov     x0, sp
    ldr     x2, [sp, #{host_sp}]
    mov     sp, x2
    mov     x1, #\kind
    mov     x29, xzr
    bl      elvisor_exit
    b       elvisor_guest_resume
.endm

.macro EL2_FATAL kind
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
    // Current EL with SP_EL2: a fault in the hypervisor.
    .balign 0x80
    EL2_FATAL 0
    .balign 0x80
    EL2_FATAL 1
    .balign 0x80
    EL2_FATAL 2
    .balign 0x80
    EL2_FATAL 3
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

    .text
    .balign 64
    // The fast path handled the exit: x0 = the frame. Restores what GUEST_EXIT_SYNC saved
    // (x19..x29 still hold the guest's values).
elvisor_fast_resume:
    mov     sp, x0
    LOAD_ELR_SPSR_X30
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
    str     x29, [x0, #232]
    mov     x1, #{exit_sync}
    mov     x29, xzr
    bl      elvisor_exit
    b       elvisor_guest_resume

    .balign 64
    .global elvisor_guest_resume
    // x0 = the GuestRegs frame to run. SP_EL2 becomes the frame until the next exit.
elvisor_guest_resume:
    mov     sp, x0
    LOAD_ELR_SPSR_X30
    LOAD_X0_X17
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    eret
"#,
    elr_minus_8 = const REGS_ELR - 8,
    spsr = const REGS_SPSR,
    host_sp = const REGS_HOST_SP,
    fatal_frame = const FATAL_FRAME_BYTES,
    exit_sync = const EXIT_SYNC,
);

unsafe extern "C" {
    fn elvisor_guest_resume(regs: *mut crate::vm::vcpu::GuestRegs) -> !;
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
