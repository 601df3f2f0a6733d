//! The two SMCCC conduits, `hvc #0` and `smc #0` (SMCCC v1.4, DEN0028, section 2).
//!
//! Arguments in x0 (function id) and x1..x3, results in x0..x3. SMCCC v1.1+ callees preserve
//! x4..x17, but every call here declares x0..x17 clobbered anyway: the point of these guests is
//! to catch a hypervisor that gets this wrong, and a wrong hypervisor must not corrupt the
//! compiler's view of the registers.
//!
//! Calls are safe functions, as in the `smccc` crate: the callee is the hypervisor (or firmware),
//! which by contract changes guest memory only where a call's definition says so, and none of
//! the calls the runtime makes hands it guest memory.
//!
//! The `try_*` variants run the instruction armed for an exception ([`crate::exception`]), so a
//! hypervisor that answers with an injected UNDEF (or no hypervisor: `smc` at EL1 without EL3 is
//! UNDEFINED) returns `Err(fault)` instead of ending the guest.

use core::arch::asm;

use crate::exception::{self, Fault, Recovery};

macro_rules! smccc_asm {
    ($insn:literal, $fid:expr, $a1:expr, $a2:expr, $a3:expr) => {{
        let (r0, r1, r2, r3): (u64, u64, u64, u64);
        // SAFETY: an SMCCC call reads and writes x0..x17 only (declared below) and, for every
        // function a guest makes, does not write guest memory it was not given. It may not
        // return (SYSTEM_OFF/RESET), which needs no special handling. If it raises an
        // exception instead, the vector code restores every register and resumes either after
        // the instruction (when armed) or never (unexpected: report and power off).
        unsafe {
            asm!(
                $insn,
                inout("x0") u64::from($fid) => r0,
                inout("x1") $a1 => r1,
                inout("x2") $a2 => r2,
                inout("x3") $a3 => r3,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _,
                options(nostack),
            )
        };
        [r0, r1, r2, r3]
    }};
}

/// `hvc #0` with x0 = `fid`, x1..x3 = `a1..a3`; returns x0..x3.
pub fn hvc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    smccc_asm!("hvc #0", fid, a1, a2, a3)
}

/// `smc #0` with x0 = `fid`, x1..x3 = `a1..a3`; returns x0..x3.
pub fn smc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    smccc_asm!("smc #0", fid, a1, a2, a3)
}

/// [`hvc_call`], returning the exception instead if the `hvc` raised one.
pub fn try_hvc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> Result<[u64; 4], Fault> {
    exception::arm(Recovery::SkipInstruction);
    let ret = smccc_asm!("hvc #0", fid, a1, a2, a3);
    exception::disarm().map_or(Ok(ret), Err)
}

/// [`smc_call`], returning the exception instead if the `smc` raised one.
pub fn try_smc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> Result<[u64; 4], Fault> {
    exception::arm(Recovery::SkipInstruction);
    let ret = smccc_asm!("smc #0", fid, a1, a2, a3);
    exception::disarm().map_or(Ok(ret), Err)
}
