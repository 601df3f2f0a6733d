//! The PMUv3 registers as an EL1 guest uses them (performance monitors, ARM ARM D13), for
//! guests/pmu. Every access is a plain `mrs`/`msr` (under elvisor each one traps and is
//! emulated); [`try_read_pmcr`] probes whether the PMU exists at all. ID_AA64DFR0_EL1 (PMUVer)
//! is read through [`super::features::IdReg::Dfr0`], like every ID register.

use core::arch::asm;

use crate::exception::{self, Fault, Recovery};

/// Generates a reader and a writer for each named PMU register.
macro_rules! regs {
    ($($(#[$doc:meta])* $read:ident / $write:ident = $name:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $read() -> u64 {
                let v: u64;
                // SAFETY: reading a PMU register has no side effect on memory.
                unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
                v
            }

            $(#[$doc])*
            pub fn $write(v: u64) {
                // SAFETY: the PMU registers only configure counting; the `isb` makes the
                // change apply to what follows (ARM ARM D24.1.2).
                unsafe { asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) v, options(nomem, nostack, preserves_flags)) };
            }
        )*
    };
}

regs! {
    /// PMCR_EL0: E (0), P (1), C (2), LC (6), N [15:11].
    pmcr / set_pmcr = "pmcr_el0";
    pmcntenset / set_pmcntenset = "pmcntenset_el0";
    pmcntenclr / set_pmcntenclr = "pmcntenclr_el0";
    pmintenset / set_pmintenset = "pmintenset_el1";
    pmintenclr / set_pmintenclr = "pmintenclr_el1";
    pmovsset / set_pmovsset = "pmovsset_el0";
    pmovsclr / set_pmovsclr = "pmovsclr_el0";
    pmselr / set_pmselr = "pmselr_el0";
    pmxevtyper / set_pmxevtyper = "pmxevtyper_el0";
    pmxevcntr / set_pmxevcntr = "pmxevcntr_el0";
    pmccntr / set_pmccntr = "pmccntr_el0";
    pmccfiltr / set_pmccfiltr = "pmccfiltr_el0";
    pmuserenr / set_pmuserenr = "pmuserenr_el0";
    pmevtyper0 / set_pmevtyper0 = "pmevtyper0_el0";
    pmevcntr0 / set_pmevcntr0 = "pmevcntr0_el0";
    pmevtyper1 / set_pmevtyper1 = "pmevtyper1_el0";
    pmevcntr1 / set_pmevcntr1 = "pmevcntr1_el0";
}

/// PMSWINC_EL0 (write-only): increments the event counters whose bit is set and that count
/// event 0x00 (SW_INCR).
pub fn set_pmswinc(v: u64) {
    // SAFETY: as the other PMU writes.
    unsafe {
        asm!("msr pmswinc_el0, {}", "isb", in(reg) v, options(nomem, nostack, preserves_flags))
    };
}

/// PMCEID0_EL0 / PMCEID1_EL0 (read-only): the common events implemented.
pub fn pmceid(n: u8) -> u64 {
    let v: u64;
    if n == 0 {
        // SAFETY: reading an ID-like PMU register has no side effect.
        unsafe {
            asm!("mrs {}, pmceid0_el0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
    } else {
        // SAFETY: as above.
        unsafe {
            asm!("mrs {}, pmceid1_el0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
    }
    v
}

/// Reads PMCR_EL0, or returns the exception it raised (UNDEFINED without a PMU).
pub fn try_read_pmcr() -> Result<u64, Fault> {
    exception::arm(Recovery::ReturnToLr);
    let value: u64;
    // SAFETY: reading PMCR_EL0 has no side effects; if it is UNDEFINED, execution resumes at
    // `1:` and the stale `value` is discarded.
    unsafe {
        asm!(
            "mov {v}, xzr",
            "adr x30, 1f",
            "mrs {v}, pmcr_el0",
            "1:",
            v = out(reg) value,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(value), Err)
}

/// Writes PMEVTYPER<n>_EL0 for a counter number the caller expects not to exist (through
/// its direct encoding, `n` = 30), returning the exception it raised.
pub fn try_write_pmevtyper30(v: u64) -> Result<(), Fault> {
    exception::arm(Recovery::ReturnToLr);
    // SAFETY: configures a counter that is not expected to exist; a fault resumes at `1:`.
    unsafe {
        asm!(
            "adr x30, 1f",
            "msr pmevtyper30_el0, {v}",
            "isb",
            "1:",
            v = in(reg) v,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(()), Err)
}
