//! The hardware side of guest self-hosted debug (policy in `vm::debug`): loading a debug
//! user's breakpoints, watchpoints, MDSCR_EL1, MDCCINT_EL1 and OS lock into the CPU, saving
//! them, and disarming the CPU before a vCPU that did not set them runs.
//!
//! These registers have no EL2 copy and no `_EL12` alias: EL2 reads and writes the one set
//! whatever HCR_EL2.E2H says. Leaving a guest's values loaded while the hypervisor runs is
//! harmless: MDCR_EL2.TDE = 0 and HCR_EL2.TGE = 0 make EL1 the debug target, and debug
//! exceptions other than BRK are never taken from an Exception level above the debug target
//! (ARM ARM D2.4 "Enabling debug exceptions": at EL2 they are disabled unless the target is
//! EL2, which also needs MDSCR_EL1.KDE and PSTATE.D = 0); the hypervisor executes no BRK.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::vm::debug::{
    self, DebugShadow, MDCCINT_WRITABLE, MDSCR_WRITABLE, sanitize_bcr, sanitize_bvr, sanitize_wcr,
    sanitize_wvr,
};

/// Per physical CPU: a debug user's registers were loaded since the CPU was last disarmed.
static OWNED: [AtomicBool; super::cpu::MAX_CPUS] =
    [const { AtomicBool::new(false) }; super::cpu::MAX_CPUS];

macro_rules! sysreg {
    (read $name:expr) => {{
        let v: u64;
        // SAFETY: reads a debug register that EL2 may access; no side effects.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
    (write $name:expr, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: writes guest debug state only; debug exceptions are not taken at EL2 while
        // the debug target is EL1 (module documentation), so the hypervisor is unaffected.
        unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
    }};
}

/// Generates `read_point(kind, n)` / `write_point(kind, n, v)` over the numbered registers
/// (their number is part of the instruction encoding).
macro_rules! points {
    ($($n:literal),*) => {
        /// Reads DBG{BVR,BCR,WVR,WCR}<n>_EL1 (`kind` 0..=3 in that order).
        fn read_point(kind: u8, n: usize) -> u64 {
            match (kind, n) {
                $(
                    (0, $n) => sysreg!(read concat!("dbgbvr", $n, "_el1")),
                    (1, $n) => sysreg!(read concat!("dbgbcr", $n, "_el1")),
                    (2, $n) => sysreg!(read concat!("dbgwvr", $n, "_el1")),
                    (3, $n) => sysreg!(read concat!("dbgwcr", $n, "_el1")),
                )*
                _ => 0,
            }
        }

        /// Writes DBG{BVR,BCR,WVR,WCR}<n>_EL1 (`kind` 0..=3 in that order).
        fn write_point(kind: u8, n: usize, v: u64) {
            match (kind, n) {
                $(
                    (0, $n) => sysreg!(write concat!("dbgbvr", $n, "_el1"), v),
                    (1, $n) => sysreg!(write concat!("dbgbcr", $n, "_el1"), v),
                    (2, $n) => sysreg!(write concat!("dbgwvr", $n, "_el1"), v),
                    (3, $n) => sysreg!(write concat!("dbgwcr", $n, "_el1"), v),
                )*
                _ => {}
            }
        }
    };
}
points!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

/// This CPU's breakpoint and watchpoint counts (ID_AA64DFR0_EL1, what guests are told too).
fn counts() -> (usize, usize) {
    debug::counts(super::idregs::read(5, 0))
}

fn isb() {
    // SAFETY: barrier only. A direct write to a system register takes effect for later
    // instructions after a context synchronization event (ARM ARM D24.1.2); the ERET into
    // the guest is one too, this makes the state exact for EL2's own reads as well.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Loads `d` into this CPU (masked again: the saved values may come from the guest's direct
/// hardware writes), with the hardware OS lock unlocked (it resets locked; the guest's lock
/// is emulated, `vm::debug`), and marks it live.
pub fn load(d: &mut DebugShadow, cpu: usize) {
    let (brps, wrps) = counts();
    for n in 0..brps {
        write_point(0, n, sanitize_bvr(d.bvr[n]));
        write_point(1, n, sanitize_bcr(d.bcr[n]));
    }
    for n in 0..wrps {
        write_point(2, n, sanitize_wvr(d.wvr[n]));
        write_point(3, n, sanitize_wcr(d.wcr[n]));
    }
    sysreg!(write "mdccint_el1", d.mdccint & MDCCINT_WRITABLE);
    sysreg!(write "mdscr_el1", d.mdscr & MDSCR_WRITABLE);
    sysreg!(write "oslar_el1", 0);
    isb();
    OWNED[cpu % super::cpu::MAX_CPUS].store(true, Ordering::Relaxed);
    d.live = true;
}

/// Saves a live vCPU's registers from this CPU, then disarms it. The vCPU stays a debug user
/// only while its MDSCR_EL1 can make anything fire (MDE or SS).
pub fn save(d: &mut DebugShadow, cpu: usize) {
    let (brps, wrps) = counts();
    for n in 0..brps {
        d.bvr[n] = read_point(0, n);
        d.bcr[n] = read_point(1, n);
    }
    for n in 0..wrps {
        d.wvr[n] = read_point(2, n);
        d.wcr[n] = read_point(3, n);
    }
    d.mdccint = sysreg!(read "mdccint_el1") & MDCCINT_WRITABLE;
    d.mdscr = sysreg!(read "mdscr_el1") & MDSCR_WRITABLE;
    d.live = false;
    d.user = d.armed();
    disarm(cpu);
}

/// Whether this CPU may hold a debug user's registers (see [`disarm`]).
pub fn owned(cpu: usize) -> bool {
    OWNED[cpu % super::cpu::MAX_CPUS].load(Ordering::Relaxed)
}

/// Makes sure nothing a previous vCPU set can fire: every breakpoint and watchpoint disabled
/// (DBGBCR/DBGWCR.E = 0), MDSCR_EL1 cleared (no MDE, KDE or SS), the DCC interrupts off.
/// The addresses are left; a later debug user loads all of its own.
pub fn disarm(cpu: usize) {
    let (brps, wrps) = counts();
    for n in 0..brps {
        write_point(1, n, 0);
    }
    for n in 0..wrps {
        write_point(3, n, 0);
    }
    sysreg!(write "mdccint_el1", 0);
    sysreg!(write "mdscr_el1", 0);
    isb();
    OWNED[cpu % super::cpu::MAX_CPUS].store(false, Ordering::Relaxed);
}
