//! Single instructions that are expected to fault: how guests test the hypervisor's injected
//! aborts and UNDEFs.
//!
//! Each probe arms [`crate::exception`], executes one instruction in `asm!` (so the compiler
//! never has to reason about a faulting Rust access) and returns the exception it raised, or
//! the instruction's result if it raised none.

use core::arch::asm;

use crate::exception::{self, Fault, Recovery};

/// Panics unless `addr` lies outside guest RAM (where the image, stack and DTB are), which is
/// what makes the data probes safe: they cannot touch a Rust object.
fn assert_outside_ram(addr: usize) {
    assert!(
        !crate::mem::in_guest_ram(addr),
        "probe address {addr:#x} is inside guest RAM; probes are for unbacked or device IPAs"
    );
    assert!(
        addr.is_multiple_of(4),
        "probe address {addr:#x} is not 4-byte aligned"
    );
}

/// A 32-bit load from `addr`. Panics if `addr` is in guest RAM or misaligned.
pub fn read_u32(addr: usize) -> Result<u32, Fault> {
    assert_outside_ram(addr);
    exception::arm(Recovery::SkipInstruction);
    let value: u32;
    // SAFETY: `addr` is outside guest RAM, so the load reads no Rust object; it may hit a device
    // register or nothing (the expected case: an injected external abort, recovered by skipping
    // the `ldr`, after which `value` is the stale register content and is discarded).
    unsafe {
        asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, preserves_flags))
    };
    exception::disarm().map_or(Ok(value), Err)
}

/// A 32-bit store to `addr`. Panics if `addr` is in guest RAM or misaligned.
pub fn write_u32(addr: usize, value: u32) -> Result<(), Fault> {
    assert_outside_ram(addr);
    exception::arm(Recovery::SkipInstruction);
    // SAFETY: `addr` is outside guest RAM, so the store changes no Rust object; it may hit a
    // device register or nothing (the expected case: an injected external abort, recovered by
    // skipping the `str`).
    unsafe {
        asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
    };
    exception::disarm().map_or(Ok(()), Err)
}

/// `blr addr` with x30 = the instruction after it, expecting the fetch at `addr` (or soon
/// after) to fault; the handler then resumes at x30. Returns `Ok(())` if the code at `addr`
/// returned on its own.
///
/// Any synchronous exception while armed resumes at the saved x30, so memory that reads as
/// zeros (`udf #0`) or junk is survived too.
///
/// # Safety
/// `addr` must be unbacked (the fetch aborts), or hold an UNDEFINED encoding, or be a function
/// following the AAPCS64 that takes no arguments and returns; it must not be code that writes
/// memory or changes system state before faulting.
pub unsafe fn branch(addr: usize) -> Result<(), Fault> {
    exception::arm(Recovery::ReturnToLr);
    // SAFETY: the caller guarantees the target faults at once or is a well-behaved function;
    // either way control comes back here with the AAPCS64 callee-saved registers intact (the
    // vector code restores all registers; a function preserves them), and `clobber_abi("C")`
    // tells the compiler the caller-saved ones and x30 are gone.
    unsafe { asm!("blr {a}", a = in(reg) addr, clobber_abi("C")) };
    exception::disarm().map_or(Ok(()), Err)
}

/// Branches to `addr` if it is provably unbacked, returning what the fetch raised.
///
/// "Provably": a 32-bit read of `addr` ([`read_u32`]) first has to raise a data abort taken
/// to EL1; only then is the `blr` made (see [`branch`]). Returns `None`, without branching, if
/// the read did not fault, since then `addr` may hold something that executes.
/// Panics if `addr` is in guest RAM or misaligned.
pub fn branch_unbacked(addr: usize) -> Option<Result<(), Fault>> {
    let read_fault = read_u32(addr).err()?;
    if read_fault.esr.ec() != crate::exception::ec::DABT_CURRENT {
        return None;
    }
    // SAFETY: a data read of `addr` just raised an abort, so the IPA is not backed by memory
    // or a device the guest can read, and neither will a fetch from it be: it aborts as well.
    Some(unsafe { branch(addr) })
}

/// `mrs x, mdccsr_el0` (debug communications channel status). Under elvisor MDCR_EL2.TDA traps
/// it and, being a register the hypervisor does not emulate, it must come back UNDEFINED.
pub fn read_mdccsr_el0() -> Result<u64, Fault> {
    exception::arm(Recovery::SkipInstruction);
    let value: u64;
    // SAFETY: reading MDCCSR_EL0 has no side effects; if it raises an exception, the `mrs` is
    // skipped and `value` (stale) is discarded.
    unsafe { asm!("mrs {}, mdccsr_el0", out(reg) value, options(nostack, preserves_flags)) };
    exception::disarm().map_or(Ok(value), Err)
}

/// `mrs x, DISR_EL1` (S3_0_C12_C1_1, the deferred interrupt status of FEAT_RAS): the value, or
/// the exception the read raised. Without FEAT_RAS (a Cortex-A72) the encoding is UNDEFINED.
/// Under a hypervisor with HCR_EL2.AMO set, EL1 reads and writes of DISR_EL1 reach VDISR_EL2
/// (ARM ARM, the DISR_EL1 and VDISR_EL2 descriptions), which the hypervisor has to keep per vCPU.
pub fn read_disr_el1() -> Result<u64, Fault> {
    exception::arm(Recovery::SkipInstruction);
    let value: u64;
    // SAFETY: reading DISR_EL1 has no side effects; if it is UNDEFINED the `mrs` is skipped and
    // `value` (stale) is discarded. The generic encoding needs no assembler RAS feature.
    unsafe { asm!("mrs {}, S3_0_C12_C1_1", out(reg) value, options(nostack, preserves_flags)) };
    exception::disarm().map_or(Ok(value), Err)
}

/// `msr DISR_EL1, x`, returning the exception the write raised, if any (see [`read_disr_el1`]).
pub fn write_disr_el1(value: u64) -> Result<(), Fault> {
    exception::arm(Recovery::SkipInstruction);
    // SAFETY: DISR_EL1 only records a deferred SError; writing it raises no exception by itself
    // (an `esb` would consume it, and the runtime executes none) and touches no memory. An
    // UNDEFINED `msr` is skipped. The `isb` completes the write before the next access.
    unsafe {
        asm!("msr S3_0_C12_C1_1, {}", "isb", in(reg) value, options(nostack, preserves_flags))
    };
    exception::disarm().map_or(Ok(()), Err)
}
