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
