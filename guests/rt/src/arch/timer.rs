//! The EL1 generic timers and counters (ARM ARM D11 "The Generic Timer in AArch64 state").
//!
//! ```text
//!   CNTFRQ_EL0      counter frequency in Hz
//!   CNTVCT_EL0      virtual count  (physical count - CNTVOFF_EL2 under a hypervisor)
//!   CNTPCT_EL0      physical count
//!   CNTV_CTL_EL0 / CNTV_CVAL_EL0   EL1 virtual timer  (the guest's own under elvisor)
//!   CNTP_CTL_EL0 / CNTP_CVAL_EL0   EL1 physical timer (trapped and emulated under elvisor)
//!   CTL: bit 0 ENABLE, bit 1 IMASK, bit 2 ISTATUS (read-only)
//! ```
//!
//! Counter reads are preceded by an `isb` so they are not executed early (ARM ARM D11.2.2:
//! reads of the counter can occur speculatively and out of order). Timer writes are followed by
//! an `isb` so the new condition applies to what comes next.

use core::arch::asm;

/// CNTx_CTL_EL0.ENABLE.
pub const CTL_ENABLE: u64 = 1 << 0;
/// CNTx_CTL_EL0.IMASK.
pub const CTL_IMASK: u64 = 1 << 1;
/// CNTx_CTL_EL0.ISTATUS (read-only): the timer condition is met.
pub const CTL_ISTATUS: u64 = 1 << 2;

macro_rules! read_sysreg {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading a generic-timer register accessible at EL1 has no side effects
        // (the `isb` only orders it after earlier instructions).
        unsafe {
            asm!("isb", concat!("mrs {}, ", $name), out(reg) value, options(nostack, preserves_flags))
        };
        value
    }};
}

macro_rules! write_sysreg {
    ($name:literal, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: the EL1 timer registers only affect this PE's timer interrupt, which the
        // guest handles; no memory is touched.
        unsafe {
            asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) value, options(nostack, preserves_flags))
        };
    }};
}

/// CNTFRQ_EL0: the counter frequency in Hz.
pub fn frequency_hz() -> u64 {
    read_sysreg!("cntfrq_el0")
}

/// CNTVCT_EL0.
pub fn virtual_count() -> u64 {
    read_sysreg!("cntvct_el0")
}

/// CNTPCT_EL0.
pub fn physical_count() -> u64 {
    read_sysreg!("cntpct_el0")
}

/// CNTV_CTL_EL0.
pub fn virtual_control() -> u64 {
    read_sysreg!("cntv_ctl_el0")
}

/// Writes CNTV_CTL_EL0.
pub fn set_virtual_control(value: u64) {
    write_sysreg!("cntv_ctl_el0", value)
}

/// CNTV_CVAL_EL0.
pub fn virtual_compare() -> u64 {
    read_sysreg!("cntv_cval_el0")
}

/// Writes CNTV_CVAL_EL0.
pub fn set_virtual_compare(value: u64) {
    write_sysreg!("cntv_cval_el0", value)
}

/// CNTP_CTL_EL0.
pub fn physical_control() -> u64 {
    read_sysreg!("cntp_ctl_el0")
}

/// Writes CNTP_CTL_EL0.
pub fn set_physical_control(value: u64) {
    write_sysreg!("cntp_ctl_el0", value)
}

/// CNTP_CVAL_EL0.
pub fn physical_compare() -> u64 {
    read_sysreg!("cntp_cval_el0")
}

/// Writes CNTP_CVAL_EL0.
pub fn set_physical_compare(value: u64) {
    write_sysreg!("cntp_cval_el0", value)
}
