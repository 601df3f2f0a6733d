//! FP/SIMD register file save and restore (lazy switching between vCPUs).
//!
//! The kernel itself is soft-float and never touches these registers; they hold the state of
//! the vCPU that used FP/SIMD last on this CPU (the "FP owner"). When another vCPU loads, its
//! FP/SIMD use traps (CPTR_EL2); the trap saves the owner's registers and loads its own.

use core::arch::asm;

use crate::vm::vcpu::FpState;

/// Saves the FP/SIMD registers into `s`. FP must not be trapped at EL2.
pub fn save(s: &mut FpState) {
    let p = s as *mut FpState;
    // SAFETY: stores 528 bytes into `*s` (q0..q31, FPSR, FPCR); `s` is a valid, exclusive,
    // 16-byte aligned FpState. The kernel's code never holds values in these registers.
    unsafe {
        asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "stp q0, q1, [{p}, #0]",
            "stp q2, q3, [{p}, #32]",
            "stp q4, q5, [{p}, #64]",
            "stp q6, q7, [{p}, #96]",
            "stp q8, q9, [{p}, #128]",
            "stp q10, q11, [{p}, #160]",
            "stp q12, q13, [{p}, #192]",
            "stp q14, q15, [{p}, #224]",
            "stp q16, q17, [{p}, #256]",
            "stp q18, q19, [{p}, #288]",
            "stp q20, q21, [{p}, #320]",
            "stp q22, q23, [{p}, #352]",
            "stp q24, q25, [{p}, #384]",
            "stp q26, q27, [{p}, #416]",
            "stp q28, q29, [{p}, #448]",
            "stp q30, q31, [{p}, #480]",
            "mrs {t}, fpsr",
            "str {t}, [{p}, #512]",
            "mrs {t}, fpcr",
            "str {t}, [{p}, #520]",
            p = in(reg) p,
            t = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// Loads the FP/SIMD registers from `s`. FP must not be trapped at EL2.
pub fn restore(s: &FpState) {
    let p = s as *const FpState;
    // SAFETY: loads from a valid FpState; only the FP/SIMD registers (guest state) change.
    unsafe {
        asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "ldp q0, q1, [{p}, #0]",
            "ldp q2, q3, [{p}, #32]",
            "ldp q4, q5, [{p}, #64]",
            "ldp q6, q7, [{p}, #96]",
            "ldp q8, q9, [{p}, #128]",
            "ldp q10, q11, [{p}, #160]",
            "ldp q12, q13, [{p}, #192]",
            "ldp q14, q15, [{p}, #224]",
            "ldp q16, q17, [{p}, #256]",
            "ldp q18, q19, [{p}, #288]",
            "ldp q20, q21, [{p}, #320]",
            "ldp q22, q23, [{p}, #352]",
            "ldp q24, q25, [{p}, #384]",
            "ldp q26, q27, [{p}, #416]",
            "ldp q28, q29, [{p}, #448]",
            "ldp q30, q31, [{p}, #480]",
            "ldr {t}, [{p}, #512]",
            "msr fpsr, {t}",
            "ldr {t}, [{p}, #520]",
            "msr fpcr, {t}",
            p = in(reg) p,
            t = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}
