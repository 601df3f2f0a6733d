//! The GICv3 CPU interface system registers (GIC architecture spec IHI 0069, chapter 12), as
//! an EL1 guest sees them: under a hypervisor with ICH_HCR_EL2.En they are the virtual
//! ICV_* registers; on bare EL1 the physical ICC_* ones.
//!
//! Only call these when the device tree says the GIC is a GICv3 and ICC_SRE_EL1.SRE reads 1:
//! otherwise they are UNDEFINED (a GICv2 system, `-cpu cortex-a72` with a GICv2).
//!
//! Writes that acknowledge, complete or generate interrupts are not `nomem`, so the compiler
//! keeps them in program order with the memory the IRQ handler shares with the caller.

use core::arch::asm;

use crate::exception::{self, Fault, Recovery};

macro_rules! read_icc {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: an ICC register read at EL1 with the system-register interface enabled
        // touches no memory. (IAR reads acknowledge an interrupt: a GIC side effect only.)
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) value, options(nostack, preserves_flags)) };
        value
    }};
}

macro_rules! write_icc {
    ($name:literal, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: an ICC register write at EL1 changes only GIC CPU-interface state; the `isb`
        // makes it take effect before the next instruction (IHI 0069 12.1.6).
        unsafe {
            asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) value, options(nostack, preserves_flags))
        };
    }};
}

/// ICC_SRE_EL1 (bit 0 SRE: system-register interface enabled).
pub fn sre() -> u64 {
    read_icc!("icc_sre_el1")
}

/// Writes ICC_SRE_EL1.
pub fn set_sre(value: u64) {
    write_icc!("icc_sre_el1", value)
}

/// ICC_PMR_EL1: priority mask.
pub fn pmr() -> u64 {
    read_icc!("icc_pmr_el1")
}

/// Writes ICC_PMR_EL1.
pub fn set_pmr(value: u64) {
    write_icc!("icc_pmr_el1", value)
}

/// ICC_BPR0_EL1: group 0 binary point.
pub fn bpr0() -> u64 {
    read_icc!("icc_bpr0_el1")
}

/// Writes ICC_BPR0_EL1.
pub fn set_bpr0(value: u64) {
    write_icc!("icc_bpr0_el1", value)
}

/// ICC_BPR1_EL1.
pub fn bpr1() -> u64 {
    read_icc!("icc_bpr1_el1")
}

/// Writes ICC_BPR1_EL1.
pub fn set_bpr1(value: u64) {
    write_icc!("icc_bpr1_el1", value)
}

/// ICC_CTLR_EL1 (bit 1 EOImode).
pub fn ctlr() -> u64 {
    read_icc!("icc_ctlr_el1")
}

/// Writes ICC_CTLR_EL1.
pub fn set_ctlr(value: u64) {
    write_icc!("icc_ctlr_el1", value)
}

/// ICC_IGRPEN0_EL1 (bit 0 Enable: group 0).
pub fn igrpen0() -> u64 {
    read_icc!("icc_igrpen0_el1")
}

/// Writes ICC_IGRPEN0_EL1.
pub fn set_igrpen0(value: u64) {
    write_icc!("icc_igrpen0_el1", value)
}

/// ICC_IGRPEN1_EL1 (bit 0 Enable).
pub fn igrpen1() -> u64 {
    read_icc!("icc_igrpen1_el1")
}

/// Writes ICC_IGRPEN1_EL1.
pub fn set_igrpen1(value: u64) {
    write_icc!("icc_igrpen1_el1", value)
}

/// ICC_IAR1_EL1: acknowledges the highest-priority pending group 1 interrupt (1023: none).
pub fn iar1() -> u64 {
    read_icc!("icc_iar1_el1")
}

/// ICC_EOIR1_EL1: priority drop (and deactivation when ICC_CTLR_EL1.EOImode = 0).
pub fn set_eoir1(value: u64) {
    write_icc!("icc_eoir1_el1", value)
}

/// ICC_DIR_EL1: deactivates an interrupt (EOImode = 1).
pub fn set_dir(value: u64) {
    write_icc!("icc_dir_el1", value)
}

/// ICC_RPR_EL1: the running priority (0xff when idle).
pub fn rpr() -> u64 {
    read_icc!("icc_rpr_el1")
}

/// ICC_HPPIR1_EL1: the highest-priority pending group 1 interrupt, without acknowledging it.
pub fn hppir1() -> u64 {
    read_icc!("icc_hppir1_el1")
}

/// ICC_SGI1R_EL1: generates a group 1 SGI.
///
/// A `dsb sy` comes first so earlier stores (to memory the target reads, or to GIC registers
/// such as the SGI's priority) are complete before the SGI can be taken, as Linux does
/// (`gic_ipi_send_mask`); the `isb` after it lets a self-targeted SGI be taken promptly.
pub fn set_sgi1r(value: u64) {
    // SAFETY: generating an SGI changes only GIC state; the barriers touch no memory.
    unsafe {
        asm!("dsb sy", "msr icc_sgi1r_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags))
    };
}

/// The active-priorities registers the architecture allows: ICC_AP0R<n>_EL1 (group 0) and
/// ICC_AP1R<n>_EL1 (group 1) for n = 0..=3.
pub const ACTIVE_PRIORITY_REGISTERS: u8 = 4;

// The active-priorities registers exist only as far as the priority bits go (IHI 0069,
// ICC_AP0R<n>_EL1 "Configurations": n = 0 always, n = 1 with 6 or more bits, n = 2 and 3 with
// 7; Linux's gic_cpu_sys_reg_init follows ICC_CTLR_EL1.PRIbits). For the virtual
// ICV_AP<g>R<n>_EL1 the count follows ICH_VTR_EL2.PREbits, which a guest cannot read and
// which may be smaller than the PRIbits it sees. An unimplemented one is UNDEFINED, so the accessors below run under the
// runtime's expected-exception facility and hand such an exception back instead of ending the
// guest.

macro_rules! try_read_icc {
    ($name:literal) => {{
        exception::arm(Recovery::SkipInstruction);
        let value: u64;
        // SAFETY: an ICC register read at EL1 touches no memory; if the register is not
        // implemented the `mrs` is UNDEFINED, the armed handler skips it and `value` (stale) is
        // discarded below.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) value, options(nostack, preserves_flags)) };
        exception::disarm().map_or(Ok(value), Err)
    }};
}

macro_rules! try_write_icc {
    ($name:literal, $value:expr) => {{
        let value: u64 = $value;
        exception::arm(Recovery::SkipInstruction);
        // SAFETY: an ICC register write at EL1 changes only GIC CPU-interface state (here the
        // active priorities, which decide the running priority and so which interrupts are
        // signalled); an UNDEFINED `msr` is skipped by the armed handler. The `isb` makes the
        // write take effect before the next instruction (IHI 0069 12.1.6).
        unsafe {
            asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) value, options(nostack, preserves_flags))
        };
        exception::disarm().map_or(Ok(()), Err)
    }};
}

/// Reads ICC_AP<group>R<n>_EL1 (`group` 0 or 1, `n` 0..=3), or the exception the read raised
/// (an UNDEF for a register this CPU interface does not implement). Panics on other arguments.
pub fn active_priorities(group: u8, n: u8) -> Result<u64, Fault> {
    match (group, n) {
        (0, 0) => try_read_icc!("icc_ap0r0_el1"),
        (0, 1) => try_read_icc!("icc_ap0r1_el1"),
        (0, 2) => try_read_icc!("icc_ap0r2_el1"),
        (0, 3) => try_read_icc!("icc_ap0r3_el1"),
        (1, 0) => try_read_icc!("icc_ap1r0_el1"),
        (1, 1) => try_read_icc!("icc_ap1r1_el1"),
        (1, 2) => try_read_icc!("icc_ap1r2_el1"),
        (1, 3) => try_read_icc!("icc_ap1r3_el1"),
        _ => panic!("no ICC_AP{group}R{n}_EL1"),
    }
}

/// Writes ICC_AP<group>R<n>_EL1, returning the exception the write raised, if any. Panics on
/// arguments outside `group` 0..=1, `n` 0..=3.
///
/// Setting a bit makes that priority group active without any interrupt being active: the
/// running priority rises and lower-priority interrupts are no longer signalled to this CPU
/// (bit 0 of AP0R0: nothing is). Only for tests of how a hypervisor keeps this state per vCPU.
pub fn set_active_priorities(group: u8, n: u8, value: u64) -> Result<(), Fault> {
    match (group, n) {
        (0, 0) => try_write_icc!("icc_ap0r0_el1", value),
        (0, 1) => try_write_icc!("icc_ap0r1_el1", value),
        (0, 2) => try_write_icc!("icc_ap0r2_el1", value),
        (0, 3) => try_write_icc!("icc_ap0r3_el1", value),
        (1, 0) => try_write_icc!("icc_ap1r0_el1", value),
        (1, 1) => try_write_icc!("icc_ap1r1_el1", value),
        (1, 2) => try_write_icc!("icc_ap1r2_el1", value),
        (1, 3) => try_write_icc!("icc_ap1r3_el1", value),
        _ => panic!("no ICC_AP{group}R{n}_EL1"),
    }
}
