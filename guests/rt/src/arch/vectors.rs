//! EL1 exception vectors: save the interrupted context, call Rust, restore, `eret`.
//!
//! VBAR_EL1 points at a 2 KiB aligned table of 16 entries, 0x80 bytes each (ARM ARM D1.10.2):
//!
//! ```text
//!   offset  source                      kind (ExceptionKind index)
//!   0x000   current EL, SP_EL0          0 sync   1 IRQ   2 FIQ   3 SError
//!   0x200   current EL, SP_ELx          4 sync   5 IRQ   6 FIQ   7 SError
//!   0x400   lower EL, AArch64           8 sync   9 IRQ  10 FIQ  11 SError
//!   0x600   lower EL, AArch32          12 sync  13 IRQ  14 FIQ  15 SError
//! ```
//!
//! Each entry pushes a [`TrapFrame`] (all of x0..x30, ELR/SPSR, and the whole FP/SIMD file,
//! because an expected fault can interrupt compiled Rust code that keeps values in v-registers)
//! and calls `handle` with `(kind, ESR_EL1, FAR_EL1, ELR_EL1, &mut frame)`. The handler may
//! change `frame.elr` to choose where `eret` resumes; everything else is restored as saved.

use core::arch::global_asm;
use core::mem::{offset_of, size_of};

/// The interrupted context as the vector code saves it on the stack.
#[repr(C, align(16))]
#[derive(Debug)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// ELR_EL1: where `eret` resumes.
    pub elr: u64,
    /// SPSR_EL1: the interrupted PSTATE.
    pub spsr: u64,
    /// FPSR.
    pub fpsr: u64,
    /// FPCR.
    pub fpcr: u64,
    _pad: u64,
    /// q0..q31.
    pub q: [u128; 32],
}

const FRAME_SIZE: usize = size_of::<TrapFrame>();
const OFF_X: usize = offset_of!(TrapFrame, x);
const OFF_X30: usize = OFF_X + 30 * 8;
const OFF_ELR: usize = offset_of!(TrapFrame, elr);
const OFF_SPSR: usize = offset_of!(TrapFrame, spsr);
const OFF_FPSR: usize = offset_of!(TrapFrame, fpsr);
const OFF_FPCR: usize = offset_of!(TrapFrame, fpcr);
const OFF_Q: usize = offset_of!(TrapFrame, q);

// The assembly below relies on this layout: x30 and ELR adjacent (one stp), FPSR and FPCR
// adjacent, the q block 16-byte aligned and within the signed, scaled 7-bit `stp q` offset
// range (max 1008), and the frame a multiple of 16 so SP stays aligned.
const _: () = {
    assert!(OFF_X == 0);
    assert!(OFF_ELR == OFF_X30 + 8);
    assert!(OFF_SPSR == OFF_ELR + 8);
    assert!(OFF_FPCR == OFF_FPSR + 8);
    assert!(OFF_Q.is_multiple_of(16) && OFF_Q + 30 * 16 <= 1008);
    assert!(FRAME_SIZE.is_multiple_of(16) && FRAME_SIZE <= 4095);
    assert!(FRAME_SIZE == 31 * 8 + 5 * 8 + 32 * 16);
};

// SAFETY (of the assembly as a whole): entered only by the hardware through VBAR_EL1, on the
// current EL1 stack; it writes nothing but its own stack frame, calls `handle` with a pointer
// to that exclusively owned frame, and restores every register the interrupted code had except
// ELR_EL1, which the handler may move on purpose.
global_asm!(
    ".macro ELVISOR_VENTRY kind",
    "    .balign 0x80",
    "    sub     sp, sp, #{frame_size}",
    "    stp     x0, x1, [sp, #{off_x}]",
    "    mov     x0, #\\kind",
    "    b       elvisor_guest_exception_common",
    ".endm",
    "",
    ".pushsection .text.vectors, \"ax\"",
    ".balign 0x800",
    ".global elvisor_guest_vectors",
    "elvisor_guest_vectors:",
    "    ELVISOR_VENTRY 0",
    "    ELVISOR_VENTRY 1",
    "    ELVISOR_VENTRY 2",
    "    ELVISOR_VENTRY 3",
    "    ELVISOR_VENTRY 4",
    "    ELVISOR_VENTRY 5",
    "    ELVISOR_VENTRY 6",
    "    ELVISOR_VENTRY 7",
    "    ELVISOR_VENTRY 8",
    "    ELVISOR_VENTRY 9",
    "    ELVISOR_VENTRY 10",
    "    ELVISOR_VENTRY 11",
    "    ELVISOR_VENTRY 12",
    "    ELVISOR_VENTRY 13",
    "    ELVISOR_VENTRY 14",
    "    ELVISOR_VENTRY 15",
    "",
    // x0 = kind; the interrupted x0/x1 are already in the frame.
    "elvisor_guest_exception_common:",
    "    stp     x2, x3, [sp, #{off_x} + 2 * 8]",
    "    stp     x4, x5, [sp, #{off_x} + 4 * 8]",
    "    stp     x6, x7, [sp, #{off_x} + 6 * 8]",
    "    stp     x8, x9, [sp, #{off_x} + 8 * 8]",
    "    stp     x10, x11, [sp, #{off_x} + 10 * 8]",
    "    stp     x12, x13, [sp, #{off_x} + 12 * 8]",
    "    stp     x14, x15, [sp, #{off_x} + 14 * 8]",
    "    stp     x16, x17, [sp, #{off_x} + 16 * 8]",
    "    stp     x18, x19, [sp, #{off_x} + 18 * 8]",
    "    stp     x20, x21, [sp, #{off_x} + 20 * 8]",
    "    stp     x22, x23, [sp, #{off_x} + 22 * 8]",
    "    stp     x24, x25, [sp, #{off_x} + 24 * 8]",
    "    stp     x26, x27, [sp, #{off_x} + 26 * 8]",
    "    stp     x28, x29, [sp, #{off_x} + 28 * 8]",
    "    mrs     x3, elr_el1",
    "    stp     x30, x3, [sp, #{off_x30}]",
    "    mrs     x2, spsr_el1",
    "    str     x2, [sp, #{off_spsr}]",
    "    mrs     x4, fpsr",
    "    mrs     x5, fpcr",
    "    stp     x4, x5, [sp, #{off_fpsr}]",
    "    stp     q0, q1, [sp, #{off_q} + 0 * 16]",
    "    stp     q2, q3, [sp, #{off_q} + 2 * 16]",
    "    stp     q4, q5, [sp, #{off_q} + 4 * 16]",
    "    stp     q6, q7, [sp, #{off_q} + 6 * 16]",
    "    stp     q8, q9, [sp, #{off_q} + 8 * 16]",
    "    stp     q10, q11, [sp, #{off_q} + 10 * 16]",
    "    stp     q12, q13, [sp, #{off_q} + 12 * 16]",
    "    stp     q14, q15, [sp, #{off_q} + 14 * 16]",
    "    stp     q16, q17, [sp, #{off_q} + 16 * 16]",
    "    stp     q18, q19, [sp, #{off_q} + 18 * 16]",
    "    stp     q20, q21, [sp, #{off_q} + 20 * 16]",
    "    stp     q22, q23, [sp, #{off_q} + 22 * 16]",
    "    stp     q24, q25, [sp, #{off_q} + 24 * 16]",
    "    stp     q26, q27, [sp, #{off_q} + 26 * 16]",
    "    stp     q28, q29, [sp, #{off_q} + 28 * 16]",
    "    stp     q30, q31, [sp, #{off_q} + 30 * 16]",
    // handle(kind, esr, far, elr, frame)
    "    mrs     x1, esr_el1",
    "    mrs     x2, far_el1",
    "    mov     x4, sp",
    "    bl      {handle}",
    "    ldp     q0, q1, [sp, #{off_q} + 0 * 16]",
    "    ldp     q2, q3, [sp, #{off_q} + 2 * 16]",
    "    ldp     q4, q5, [sp, #{off_q} + 4 * 16]",
    "    ldp     q6, q7, [sp, #{off_q} + 6 * 16]",
    "    ldp     q8, q9, [sp, #{off_q} + 8 * 16]",
    "    ldp     q10, q11, [sp, #{off_q} + 10 * 16]",
    "    ldp     q12, q13, [sp, #{off_q} + 12 * 16]",
    "    ldp     q14, q15, [sp, #{off_q} + 14 * 16]",
    "    ldp     q16, q17, [sp, #{off_q} + 16 * 16]",
    "    ldp     q18, q19, [sp, #{off_q} + 18 * 16]",
    "    ldp     q20, q21, [sp, #{off_q} + 20 * 16]",
    "    ldp     q22, q23, [sp, #{off_q} + 22 * 16]",
    "    ldp     q24, q25, [sp, #{off_q} + 24 * 16]",
    "    ldp     q26, q27, [sp, #{off_q} + 26 * 16]",
    "    ldp     q28, q29, [sp, #{off_q} + 28 * 16]",
    "    ldp     q30, q31, [sp, #{off_q} + 30 * 16]",
    "    ldp     x4, x5, [sp, #{off_fpsr}]",
    "    msr     fpsr, x4",
    "    msr     fpcr, x5",
    "    ldr     x2, [sp, #{off_spsr}]",
    "    msr     spsr_el1, x2",
    "    ldp     x30, x3, [sp, #{off_x30}]",
    "    msr     elr_el1, x3",
    "    ldp     x2, x3, [sp, #{off_x} + 2 * 8]",
    "    ldp     x4, x5, [sp, #{off_x} + 4 * 8]",
    "    ldp     x6, x7, [sp, #{off_x} + 6 * 8]",
    "    ldp     x8, x9, [sp, #{off_x} + 8 * 8]",
    "    ldp     x10, x11, [sp, #{off_x} + 10 * 8]",
    "    ldp     x12, x13, [sp, #{off_x} + 12 * 8]",
    "    ldp     x14, x15, [sp, #{off_x} + 14 * 8]",
    "    ldp     x16, x17, [sp, #{off_x} + 16 * 8]",
    "    ldp     x18, x19, [sp, #{off_x} + 18 * 8]",
    "    ldp     x20, x21, [sp, #{off_x} + 20 * 8]",
    "    ldp     x22, x23, [sp, #{off_x} + 22 * 8]",
    "    ldp     x24, x25, [sp, #{off_x} + 24 * 8]",
    "    ldp     x26, x27, [sp, #{off_x} + 26 * 8]",
    "    ldp     x28, x29, [sp, #{off_x} + 28 * 8]",
    "    ldp     x0, x1, [sp, #{off_x}]",
    "    add     sp, sp, #{frame_size}",
    "    eret",
    ".popsection",
    frame_size = const FRAME_SIZE,
    off_x = const OFF_X,
    off_x30 = const OFF_X30,
    off_spsr = const OFF_SPSR,
    off_fpsr = const OFF_FPSR,
    off_q = const OFF_Q,
    handle = sym handle,
);

/// Called by the vector code with the exception's syndrome and the saved context.
extern "C" fn handle(kind: u64, esr: u64, far: u64, elr: u64, frame: &mut TrapFrame) {
    crate::exception::dispatch(kind as usize, esr, far, elr, frame);
}
