//! The two SMCCC conduits, `hvc #0` and `smc #0` (SMCCC v1.4, DEN0028, section 2).
//!
//! Arguments in x0 (function id) and x1..x3, results in x0..x3. SMCCC v1.1+ callees preserve
//! x4..x17, but every call here declares x0..x17 clobbered anyway: the point of these guests is
//! to catch a hypervisor that gets this wrong, and a wrong hypervisor must not corrupt the
//! compiler's view of the registers. The instructions are the `smccc` crate's `hvc64` and
//! `smc64`, which pass x1..x17 and take back x0..x17 (the arguments past x3 are zero).
//!
//! Calls are safe functions, as in the `smccc` crate: the callee is the hypervisor (or firmware),
//! which by contract changes guest memory only where a call's definition says so, and none of
//! the calls the runtime makes hands it guest memory.
//!
//! The `try_*` variants run the instruction armed for an exception ([`crate::exception`]), so a
//! hypervisor that answers with an injected UNDEF (or no hypervisor: `smc` at EL1 without EL3 is
//! UNDEFINED) returns `Err(fault)` instead of ending the guest.

use crate::exception::{self, Fault, Recovery};

/// x1..x17 for an SMC64/HVC64 call with three arguments.
fn args(a1: u64, a2: u64, a3: u64) -> [u64; 17] {
    let mut args = [0; 17];
    args[..3].copy_from_slice(&[a1, a2, a3]);
    args
}

/// x0..x3 of an SMC64/HVC64 result.
fn results(r: [u64; 18]) -> [u64; 4] {
    [r[0], r[1], r[2], r[3]]
}

/// `hvc #0` with x0 = `fid`, x1..x3 = `a1..a3`; returns x0..x3.
#[inline(always)]
pub fn hvc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    results(smccc::hvc64(fid, args(a1, a2, a3)))
}

/// `smc #0` with x0 = `fid`, x1..x3 = `a1..a3`; returns x0..x3.
#[inline(always)]
pub fn smc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    results(smccc::smc64(fid, args(a1, a2, a3)))
}

/// [`hvc_call`], returning the exception instead if the `hvc` raised one.
pub fn try_hvc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> Result<[u64; 4], Fault> {
    exception::arm(Recovery::SkipInstruction);
    let ret = hvc_call(fid, a1, a2, a3);
    exception::disarm().map_or(Ok(ret), Err)
}

/// [`smc_call`], returning the exception instead if the `smc` raised one.
pub fn try_smc_call(fid: u32, a1: u64, a2: u64, a3: u64) -> Result<[u64; 4], Fault> {
    exception::arm(Recovery::SkipInstruction);
    let ret = smc_call(fid, a1, a2, a3);
    exception::disarm().map_or(Ok(ret), Err)
}
