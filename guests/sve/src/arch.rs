//! Everything in the SVE guest that touches the CPU directly: turning SVE on at EL1, the vector
//! length, ZCR_EL1, and the register-file round trips. The only module of the crate with
//! `asm!`/`unsafe`.
//!
//! The Z registers hold the V registers in their low 128 bits, and compiled Rust code uses the
//! V registers (a write to one zeroes the rest of its Z register): so a check that the SVE
//! registers survive a wait loads them, waits and stores them in one `asm!` block, with every
//! V register declared clobbered.

use core::arch::asm;

/// Bytes of a register file image at the largest vector length (2048 bits): 32 Z registers,
/// then 16 P registers and FFR at 1/8 of that each.
pub const FILE_BYTES: usize = 32 * 256 + 17 * 32;

/// A register file image at vector length `vl` bytes: Z0-Z31 at `n * vl`, P0-P15 at
/// `32 * vl + n * vl / 8`, FFR after P15 (the layout `str z/p, [x, #n, mul vl]` gives).
#[repr(C, align(16))]
pub struct File(pub [u8; FILE_BYTES]);

impl File {
    pub const fn zeroed() -> Self {
        Self([0; FILE_BYTES])
    }
}

/// CPACR_EL1.ZEN = 0b11: SVE not trapped at EL1 or EL0 (FPEN is already 0b11).
pub fn enable_sve() {
    // SAFETY: CPACR_EL1 only controls FP/SVE/SME traps at EL1/EL0; the ISB makes the change
    // apply to the instructions after it.
    unsafe {
        asm!(
            "mrs {t}, cpacr_el1",
            "orr {t}, {t}, #(3 << 16)",
            "msr cpacr_el1, {t}",
            "isb",
            t = out(reg) _,
            options(nomem, nostack, preserves_flags),
        )
    };
}

/// RDVL: the vector length in bytes. SVE must be enabled ([`enable_sve`]).
pub fn vector_length() -> usize {
    let vl: u64;
    // SAFETY: RDVL writes one general register.
    unsafe {
        asm!(
            ".arch_extension sve",
            "rdvl {}, #1",
            out(reg) vl,
            options(nomem, nostack, preserves_flags),
        )
    };
    vl as usize
}

/// ZCR_EL1 (S3_0_C1_C2_0).
pub fn zcr_el1() -> u64 {
    let v: u64;
    // SAFETY: reading ZCR_EL1 has no side effects (SVE enabled, so it does not trap at EL1).
    unsafe { asm!("mrs {}, s3_0_c1_c2_0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes ZCR_EL1 (its LEN asks for a vector length, capped by the hypervisor's ZCR_EL2).
pub fn set_zcr_el1(v: u64) {
    // SAFETY: ZCR_EL1 only sets the vector length of EL1/EL0; nothing of Rust's lives in the
    // SVE registers beyond the V registers, which do not change size. ISB: RDVL after this
    // sees the new length.
    unsafe {
        asm!("msr s3_0_c1_c2_0, {}", "isb", in(reg) v, options(nomem, nostack, preserves_flags))
    };
}

/// The asm text that stores Z0-Z31, P0-P15 and FFR at the address in operand `$base` (the
/// [`File`] layout), using operand `p` as scratch; P0 is overwritten by RDFFR after it was
/// stored. One definition for [`dump`] and [`round_trip`].
macro_rules! store_file {
    ($base:literal) => {
        concat!(
            "str z0, [{",
            $base,
            "}, #0, mul vl]\n",
            "str z1, [{",
            $base,
            "}, #1, mul vl]\n",
            "str z2, [{",
            $base,
            "}, #2, mul vl]\n",
            "str z3, [{",
            $base,
            "}, #3, mul vl]\n",
            "str z4, [{",
            $base,
            "}, #4, mul vl]\n",
            "str z5, [{",
            $base,
            "}, #5, mul vl]\n",
            "str z6, [{",
            $base,
            "}, #6, mul vl]\n",
            "str z7, [{",
            $base,
            "}, #7, mul vl]\n",
            "str z8, [{",
            $base,
            "}, #8, mul vl]\n",
            "str z9, [{",
            $base,
            "}, #9, mul vl]\n",
            "str z10, [{",
            $base,
            "}, #10, mul vl]\n",
            "str z11, [{",
            $base,
            "}, #11, mul vl]\n",
            "str z12, [{",
            $base,
            "}, #12, mul vl]\n",
            "str z13, [{",
            $base,
            "}, #13, mul vl]\n",
            "str z14, [{",
            $base,
            "}, #14, mul vl]\n",
            "str z15, [{",
            $base,
            "}, #15, mul vl]\n",
            "str z16, [{",
            $base,
            "}, #16, mul vl]\n",
            "str z17, [{",
            $base,
            "}, #17, mul vl]\n",
            "str z18, [{",
            $base,
            "}, #18, mul vl]\n",
            "str z19, [{",
            $base,
            "}, #19, mul vl]\n",
            "str z20, [{",
            $base,
            "}, #20, mul vl]\n",
            "str z21, [{",
            $base,
            "}, #21, mul vl]\n",
            "str z22, [{",
            $base,
            "}, #22, mul vl]\n",
            "str z23, [{",
            $base,
            "}, #23, mul vl]\n",
            "str z24, [{",
            $base,
            "}, #24, mul vl]\n",
            "str z25, [{",
            $base,
            "}, #25, mul vl]\n",
            "str z26, [{",
            $base,
            "}, #26, mul vl]\n",
            "str z27, [{",
            $base,
            "}, #27, mul vl]\n",
            "str z28, [{",
            $base,
            "}, #28, mul vl]\n",
            "str z29, [{",
            $base,
            "}, #29, mul vl]\n",
            "str z30, [{",
            $base,
            "}, #30, mul vl]\n",
            "str z31, [{",
            $base,
            "}, #31, mul vl]\n",
            "addvl {p}, {",
            $base,
            "}, #16\n",
            "addvl {p}, {p}, #16\n",
            "str p0, [{p}, #0, mul vl]\n",
            "str p1, [{p}, #1, mul vl]\n",
            "str p2, [{p}, #2, mul vl]\n",
            "str p3, [{p}, #3, mul vl]\n",
            "str p4, [{p}, #4, mul vl]\n",
            "str p5, [{p}, #5, mul vl]\n",
            "str p6, [{p}, #6, mul vl]\n",
            "str p7, [{p}, #7, mul vl]\n",
            "str p8, [{p}, #8, mul vl]\n",
            "str p9, [{p}, #9, mul vl]\n",
            "str p10, [{p}, #10, mul vl]\n",
            "str p11, [{p}, #11, mul vl]\n",
            "str p12, [{p}, #12, mul vl]\n",
            "str p13, [{p}, #13, mul vl]\n",
            "str p14, [{p}, #14, mul vl]\n",
            "str p15, [{p}, #15, mul vl]\n",
            "rdffr p0.b\n",
            "str p0, [{p}, #16, mul vl]",
        )
    };
}

/// Stores Z0-Z31, P0-P15 and FFR into `out` as they are (the first SVE use of a fresh vCPU).
pub fn dump(out: &mut File) {
    let z = out.0.as_mut_ptr();
    // SAFETY: stores 32 * VL + 17 * VL / 8 <= FILE_BYTES bytes into `out` (VL <= 256 bytes,
    // the architectural maximum). P0 is overwritten by RDFFR after it was stored; the SVE
    // registers hold nothing of Rust's.
    unsafe {
        asm!(
            ".arch_extension sve",
            store_file!("z"),
            z = in(reg) z,
            p = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// How [`round_trip`] lets time pass with the registers loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `wfi` until CNTVCT_EL0 reaches the deadline (the virtual timer, armed by the caller,
    /// ends the wait; IRQs stay masked at the PE, a pending one still wakes `wfi`).
    Wfi,
    /// `wfe` until the deadline: on a shared CPU each `wfe` traps and yields.
    Wfe,
    /// Spin until the deadline: the hypervisor's time slice preempts it.
    Spin,
}

/// Loads the register file from `src` (Z, P, FFR at the current vector length) and FPCR/FPSR
/// from `fpcr`/`fpsr`, waits until CNTVCT_EL0 >= `deadline` as `wait` says, stores Z, P, FFR
/// to `dst` and returns FPCR and FPSR as they were then. FPCR is put back afterwards. The FFR
/// image must be a valid FFR value (true elements first).
pub fn round_trip(
    src: &File,
    dst: &mut File,
    fpcr: u64,
    fpsr: u64,
    wait: Wait,
    deadline: u64,
) -> (u64, u64) {
    let (fpcr_out, fpsr_out): (u64, u64);
    let mode: u64 = match wait {
        Wait::Wfi => 0,
        Wait::Wfe => 1,
        Wait::Spin => 2,
    };
    // SAFETY: loads from `src` and stores to `dst`, 32 * VL + 17 * VL / 8 <= FILE_BYTES bytes
    // each. Every V register (the low half of a Z register) is declared clobbered, and the
    // P registers, FFR and FPSR hold nothing of Rust's; FPCR is restored. `wfi`/`wfe` only
    // suspend execution; IRQs stay as they were (masked: no handler runs in between).
    unsafe {
        asm!(
            ".arch_extension sve",
            "mrs {saved}, fpcr",
            "msr fpcr, {fpcr}",
            "msr fpsr, {fpsr}",
            "addvl {p}, {src}, #16",
            "addvl {p}, {p}, #16",
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
            "ldr z0, [{src}, #0, mul vl]",
            "ldr z1, [{src}, #1, mul vl]",
            "ldr z2, [{src}, #2, mul vl]",
            "ldr z3, [{src}, #3, mul vl]",
            "ldr z4, [{src}, #4, mul vl]",
            "ldr z5, [{src}, #5, mul vl]",
            "ldr z6, [{src}, #6, mul vl]",
            "ldr z7, [{src}, #7, mul vl]",
            "ldr z8, [{src}, #8, mul vl]",
            "ldr z9, [{src}, #9, mul vl]",
            "ldr z10, [{src}, #10, mul vl]",
            "ldr z11, [{src}, #11, mul vl]",
            "ldr z12, [{src}, #12, mul vl]",
            "ldr z13, [{src}, #13, mul vl]",
            "ldr z14, [{src}, #14, mul vl]",
            "ldr z15, [{src}, #15, mul vl]",
            "ldr z16, [{src}, #16, mul vl]",
            "ldr z17, [{src}, #17, mul vl]",
            "ldr z18, [{src}, #18, mul vl]",
            "ldr z19, [{src}, #19, mul vl]",
            "ldr z20, [{src}, #20, mul vl]",
            "ldr z21, [{src}, #21, mul vl]",
            "ldr z22, [{src}, #22, mul vl]",
            "ldr z23, [{src}, #23, mul vl]",
            "ldr z24, [{src}, #24, mul vl]",
            "ldr z25, [{src}, #25, mul vl]",
            "ldr z26, [{src}, #26, mul vl]",
            "ldr z27, [{src}, #27, mul vl]",
            "ldr z28, [{src}, #28, mul vl]",
            "ldr z29, [{src}, #29, mul vl]",
            "ldr z30, [{src}, #30, mul vl]",
            "ldr z31, [{src}, #31, mul vl]",
            "2:",
            "cmp {mode}, #1",
            "b.lo 3f",
            "b.eq 4f",
            "b 5f",
            "3: wfi",
            "b 5f",
            "4: wfe",
            "5: isb",
            "mrs {t}, cntvct_el0",
            "cmp {t}, {deadline}",
            "b.lo 2b",
            store_file!("dst"),
            "mrs {fpcr}, fpcr",
            "mrs {fpsr}, fpsr",
            "msr fpcr, {saved}",
            src = in(reg) src.0.as_ptr(),
            dst = in(reg) dst.0.as_mut_ptr(),
            mode = in(reg) mode,
            deadline = in(reg) deadline,
            fpcr = inout(reg) fpcr => fpcr_out,
            fpsr = inout(reg) fpsr => fpsr_out,
            saved = out(reg) _,
            p = out(reg) _,
            t = out(reg) _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack),
        )
    };
    (fpcr_out, fpsr_out)
}
