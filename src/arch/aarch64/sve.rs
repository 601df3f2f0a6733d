//! SVE register file save and restore, and the CPU's vector lengths (lazy switching between
//! vCPUs, with `fp`; the ownership rules are in `kernel::fpu`, the saved state in `vm::sve`).
//!
//! Every function here runs with CPTR_EL2 letting EL2 use FP/SIMD and SVE
//! ([`super::guest::guest_cptr_sve`] or the probe's own setting): the SVE instructions and
//! ZCR_EL2/ZCR_EL12 accesses are trapped at EL2 otherwise (ARM ARM D24.2.37, CPTR_EL2.ZEN/TZ,
//! and the `CheckSVEEnabled` pseudocode). EL2's own vector length is ZCR_EL2's: the register
//! file is saved and loaded at the vCPU's length (ZCR_EL2.LEN = the vCPU's), which is at least
//! the length the guest runs at (its ZCR_EL1 can only lower it), so nothing the guest can
//! reach is left out. Where EL3 exists it must not trap SVE (CPTR_EL3.EZ = 1, as Linux's
//! booting.rst requires of the firmware).

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::vm::sve::{SveState, ZCR_LEN_MASK, p_offset, words_for};

/// The boot CPU's largest vector length in bytes (ZCR_EL2.LEN = 15, then RDVL); 0 without SVE.
static MAX_VL: AtomicU32 = AtomicU32::new(0);

/// The CPU's largest SVE vector length in bytes, `None` if it has no SVE (Cortex-A72).
pub fn max_vl() -> Option<u32> {
    Some(MAX_VL.load(Ordering::Relaxed)).filter(|&v| v != 0)
}

/// FEAT_SVE: ID_AA64PFR0_EL1.SVE, bits [35:32].
fn has_sve() -> bool {
    use aarch64_cpu::registers::ID_AA64PFR0_EL1;
    use tock_registers::interfaces::Readable;
    (ID_AA64PFR0_EL1.get() >> 32) & 0xf != 0
}

/// Writes ZCR_EL2.LEN and returns the vector length EL2 then has, in bytes (RDVL). SVE must
/// be enabled at EL2 (CPTR_EL2).
fn set_len(len: u8) -> usize {
    let vl: u64;
    // SAFETY: ZCR_EL2 (S3_4_C1_C2_0, the EL2 encoding in both E2H modes) only sets the vector
    // length of EL2 and the cap for EL1/EL0; the ISB makes the new length apply to the RDVL
    // after it (ARM ARM D24.1.2: a system register write needs a context synchronization
    // event). Register contents beyond a shorter length may be lost: callers save first.
    unsafe {
        asm!(
            ".arch_extension sve",
            "msr s3_4_c1_c2_0, {len}",
            "isb",
            "rdvl {vl}, #1",
            len = in(reg) u64::from(len) & ZCR_LEN_MASK,
            vl = out(reg) vl,
            options(nomem, nostack, preserves_flags),
        )
    };
    vl as usize
}

/// Runs `f` with SVE enabled at EL2, then puts CPTR_EL2 back as it was.
fn with_sve_enabled<R>(f: impl FnOnce() -> R) -> R {
    let old: u64;
    // SAFETY: reading CPTR_EL2 has no side effects.
    unsafe { asm!("mrs {}, cptr_el2", out(reg) old, options(nomem, nostack, preserves_flags)) };
    super::guest::write_cptr(super::guest::guest_cptr_sve());
    let r = f();
    super::guest::write_cptr(old);
    r
}

/// Probes this CPU's largest vector length (per CPU at bring-up, before any guest runs there).
/// The boot CPU's becomes [`max_vl`]; a CPU that differs is reported (its vCPUs' buffers are
/// sized by LEN, not by the boot CPU, so a different rounding cannot overflow them).
pub fn init_cpu() {
    if !has_sve() {
        return;
    }
    let vl = with_sve_enabled(|| set_len(ZCR_LEN_MASK as u8)) as u32;
    match MAX_VL.compare_exchange(0, vl, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => {}
        Err(boot) if boot == vl => {}
        Err(boot) => log::warn!(
            "SVE: this CPU's largest vector length is {} bits, the boot CPU's {}",
            vl * 8,
            boot * 8
        ),
    }
}

/// The vector length in bytes this CPU gives for ZCR_EL2.LEN = `len` (a length the CPU does
/// not support rounds down to one it does). Changes ZCR_EL2: only when no vCPU in SVE mode
/// owns the registers here, or just before one is loaded.
pub fn vl_for_len(len: u8) -> usize {
    if max_vl().is_none() {
        return 0;
    }
    with_sve_enabled(|| set_len(len))
}

/// Whether the buffer of `s` holds the register file at vector length `vl`.
fn fits(s: &SveState, vl: usize) -> bool {
    vl != 0 && vl <= s.capacity_vl() && words_for(vl) <= s.regs.len()
}

/// Saves the SVE register file (Z0-Z31, P0-P15, FFR, FPSR, FPCR, the guest's ZCR_EL1) into
/// `s` at the vCPU's vector length (ZCR_EL2.LEN = `s.len`). SVE and FP must be enabled at EL2.
/// Returns false, saving nothing, if the length does not fit the buffer (cannot happen: the
/// buffer is sized for LEN). Leaves P0 holding FFR: the caller loads another file next.
pub fn save(s: &mut SveState) -> bool {
    let vl = set_len(s.len);
    if !fits(s, vl) {
        return false;
    }
    let z = s.regs.as_mut_ptr() as u64;
    let (fpsr, fpcr): (u64, u64);
    // SAFETY: stores 32 * VL + 17 * VL / 8 bytes from `z`, inside `s.regs` (checked just
    // above against the VL RDVL gave with this ZCR_EL2). Only SVE/FP registers (guest state,
    // which the soft-float kernel never uses) are read, and P0 is overwritten by RDFFR after
    // it was stored.
    unsafe {
        asm!(
            ".arch_extension sve",
            "str z0, [{z}, #0, mul vl]",
            "str z1, [{z}, #1, mul vl]",
            "str z2, [{z}, #2, mul vl]",
            "str z3, [{z}, #3, mul vl]",
            "str z4, [{z}, #4, mul vl]",
            "str z5, [{z}, #5, mul vl]",
            "str z6, [{z}, #6, mul vl]",
            "str z7, [{z}, #7, mul vl]",
            "str z8, [{z}, #8, mul vl]",
            "str z9, [{z}, #9, mul vl]",
            "str z10, [{z}, #10, mul vl]",
            "str z11, [{z}, #11, mul vl]",
            "str z12, [{z}, #12, mul vl]",
            "str z13, [{z}, #13, mul vl]",
            "str z14, [{z}, #14, mul vl]",
            "str z15, [{z}, #15, mul vl]",
            "str z16, [{z}, #16, mul vl]",
            "str z17, [{z}, #17, mul vl]",
            "str z18, [{z}, #18, mul vl]",
            "str z19, [{z}, #19, mul vl]",
            "str z20, [{z}, #20, mul vl]",
            "str z21, [{z}, #21, mul vl]",
            "str z22, [{z}, #22, mul vl]",
            "str z23, [{z}, #23, mul vl]",
            "str z24, [{z}, #24, mul vl]",
            "str z25, [{z}, #25, mul vl]",
            "str z26, [{z}, #26, mul vl]",
            "str z27, [{z}, #27, mul vl]",
            "str z28, [{z}, #28, mul vl]",
            "str z29, [{z}, #29, mul vl]",
            "str z30, [{z}, #30, mul vl]",
            "str z31, [{z}, #31, mul vl]",
            "add {p}, {z}, {poff}",
            "str p0, [{p}, #0, mul vl]",
            "str p1, [{p}, #1, mul vl]",
            "str p2, [{p}, #2, mul vl]",
            "str p3, [{p}, #3, mul vl]",
            "str p4, [{p}, #4, mul vl]",
            "str p5, [{p}, #5, mul vl]",
            "str p6, [{p}, #6, mul vl]",
            "str p7, [{p}, #7, mul vl]",
            "str p8, [{p}, #8, mul vl]",
            "str p9, [{p}, #9, mul vl]",
            "str p10, [{p}, #10, mul vl]",
            "str p11, [{p}, #11, mul vl]",
            "str p12, [{p}, #12, mul vl]",
            "str p13, [{p}, #13, mul vl]",
            "str p14, [{p}, #14, mul vl]",
            "str p15, [{p}, #15, mul vl]",
            "rdffr p0.b",
            "str p0, [{p}, #16, mul vl]",
            "mrs {fpsr}, fpsr",
            "mrs {fpcr}, fpcr",
            z = in(reg) z,
            poff = in(reg) p_offset(vl) as u64,
            p = out(reg) _,
            fpsr = out(reg) fpsr,
            fpcr = out(reg) fpcr,
            options(nostack, preserves_flags),
        )
    };
    s.fpsr = fpsr;
    s.fpcr = fpcr;
    s.zcr_el1 = read_zcr_el1();
    s.vl = vl as u32;
    true
}

/// Loads the SVE register file from `s` and sets ZCR_EL2.LEN to the vCPU's (its vector length
/// cap while it runs). SVE and FP must be enabled at EL2. Returns false, loading nothing, if
/// the vector length does not fit the buffer or differs from the one `s` was laid out at.
pub fn restore(s: &SveState) -> bool {
    let vl = set_len(s.len);
    if !fits(s, vl) || vl != s.vl as usize {
        return false;
    }
    let z = s.regs.as_ptr() as u64;
    // SAFETY: loads from inside `s.regs` (checked above, as in `save`); only the SVE/FP
    // registers and FPSR/FPCR change, which are the guest's.
    unsafe {
        asm!(
            ".arch_extension sve",
            "add {p}, {z}, {poff}",
            "ldr p0, [{p}, #16, mul vl]",
            "wrffr p0.b",
            "ldr p0, [{p}, #0, mul vl]",
            "ldr p1, [{p}, #1, mul vl]",
            "ldr p2, [{p}, #2, mul vl]",
            "ldr p3, [{p}, #3, mul vl]",
            "ldr p4, [{p}, #4, mul vl]",
            "ldr p5, [{p}, #5, mul vl]",
            "ldr p6, [{p}, #6, mul vl]",
            "ldr p7, [{p}, #7, mul vl]",
            "ldr p8, [{p}, #8, mul vl]",
            "ldr p9, [{p}, #9, mul vl]",
            "ldr p10, [{p}, #10, mul vl]",
            "ldr p11, [{p}, #11, mul vl]",
            "ldr p12, [{p}, #12, mul vl]",
            "ldr p13, [{p}, #13, mul vl]",
            "ldr p14, [{p}, #14, mul vl]",
            "ldr p15, [{p}, #15, mul vl]",
            "ldr z0, [{z}, #0, mul vl]",
            "ldr z1, [{z}, #1, mul vl]",
            "ldr z2, [{z}, #2, mul vl]",
            "ldr z3, [{z}, #3, mul vl]",
            "ldr z4, [{z}, #4, mul vl]",
            "ldr z5, [{z}, #5, mul vl]",
            "ldr z6, [{z}, #6, mul vl]",
            "ldr z7, [{z}, #7, mul vl]",
            "ldr z8, [{z}, #8, mul vl]",
            "ldr z9, [{z}, #9, mul vl]",
            "ldr z10, [{z}, #10, mul vl]",
            "ldr z11, [{z}, #11, mul vl]",
            "ldr z12, [{z}, #12, mul vl]",
            "ldr z13, [{z}, #13, mul vl]",
            "ldr z14, [{z}, #14, mul vl]",
            "ldr z15, [{z}, #15, mul vl]",
            "ldr z16, [{z}, #16, mul vl]",
            "ldr z17, [{z}, #17, mul vl]",
            "ldr z18, [{z}, #18, mul vl]",
            "ldr z19, [{z}, #19, mul vl]",
            "ldr z20, [{z}, #20, mul vl]",
            "ldr z21, [{z}, #21, mul vl]",
            "ldr z22, [{z}, #22, mul vl]",
            "ldr z23, [{z}, #23, mul vl]",
            "ldr z24, [{z}, #24, mul vl]",
            "ldr z25, [{z}, #25, mul vl]",
            "ldr z26, [{z}, #26, mul vl]",
            "ldr z27, [{z}, #27, mul vl]",
            "ldr z28, [{z}, #28, mul vl]",
            "ldr z29, [{z}, #29, mul vl]",
            "ldr z30, [{z}, #30, mul vl]",
            "ldr z31, [{z}, #31, mul vl]",
            "msr fpsr, {fpsr}",
            "msr fpcr, {fpcr}",
            z = in(reg) z,
            poff = in(reg) p_offset(vl) as u64,
            p = out(reg) _,
            fpsr = in(reg) s.fpsr,
            fpcr = in(reg) s.fpcr,
            options(nostack, preserves_flags),
        )
    };
    write_zcr_el1(s.zcr_el1);
    true
}

/// The guest's ZCR_EL1: ZCR_EL12 (S3_5_C1_C2_0) under VHE, where the EL1 name means ZCR_EL2.
fn read_zcr_el1() -> u64 {
    let v: u64;
    if super::guest::vhe() {
        // SAFETY: reading the guest's ZCR_EL1 through its EL12 alias has no side effects.
        unsafe {
            asm!("mrs {}, s3_5_c1_c2_0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
    } else {
        // SAFETY: with E2H = 0 the EL1 name (S3_0_C1_C2_0) is the guest's register.
        unsafe {
            asm!("mrs {}, s3_0_c1_c2_0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
    }
    v
}

/// Writes the guest's ZCR_EL1 (see [`read_zcr_el1`]); it takes effect when the guest runs
/// (the exception return is a context synchronization event).
fn write_zcr_el1(v: u64) {
    if super::guest::vhe() {
        // SAFETY: guest state only: the vector length the guest's EL1/EL0 ask for.
        unsafe {
            asm!("msr s3_5_c1_c2_0, {}", in(reg) v, options(nomem, nostack, preserves_flags))
        };
    } else {
        // SAFETY: as above, through the EL1 name (E2H = 0).
        unsafe {
            asm!("msr s3_0_c1_c2_0, {}", in(reg) v, options(nomem, nostack, preserves_flags))
        };
    }
}
