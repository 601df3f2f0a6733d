//! Optional CPU features as an EL1 guest sees them: the AArch64 ID registers, and one probe per
//! feature that runs the feature's instructions and returns what they did or the exception
//! they raised.
//!
//! A hypervisor decides what its guests are told (it traps the ID registers) and what they can
//! execute (its trap controls); the two have to agree. These probes let a guest compare them:
//! an advertised feature must work, and an instruction of a feature that is not advertised
//! must be UNDEFINED, as on a CPU that lacks it.
//!
//! Every probe arms [`crate::exception`] with [`Recovery::ReturnToLr`] and sets x30 to a label
//! after its instruction sequence: a faulting instruction resumes there, so the rest of a
//! sequence (SMSTOP after SMSTART, SETM/SETE after SETP, AUTIA after PACIA) never runs after
//! the first one was refused, and whatever state the probe changed first (CPACR_EL1,
//! SCTLR_EL1) is restored after the label either way. Instructions newer than the assembler's
//! default feature set are written as `.inst` words with fixed registers; each says what it
//! is (the encodings were checked with `llvm-objdump --mattr=+all`). None of the probes is
//! `nomem`: the exception handler writes the fault record that `exception::disarm` reads.

use core::arch::asm;

use crate::exception::{self, Fault, Recovery};

/// The AArch64 ID registers the guests read (op0 = 3, op1 = 0, CRn = 0: readable at EL1 on
/// every ARMv8-A CPU, reserved encodings read as zero; a hypervisor traps them with
/// HCR_EL2.TID3 and answers what it chooses to show): the one reader of them in the guests
/// (guests/cpufeat, sve, pmu, debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdReg {
    /// ID_AA64PFR0_EL1 (S3_0_C0_C4_0): RAS, SVE, CSV2, ...
    Pfr0,
    /// ID_AA64PFR1_EL1 (S3_0_C0_C4_1): MTE, SME, NMI, CSV2_frac, ...
    Pfr1,
    /// ID_AA64ZFR0_EL1 (S3_0_C0_C4_4): the SVE instruction extensions (0 without SVE).
    Zfr0,
    /// ID_AA64DFR0_EL1 (S3_0_C0_C5_0): DebugVer, BRPs, WRPs, PMUVer [11:8], ...
    Dfr0,
    /// ID_AA64ISAR0_EL1 (S3_0_C0_C6_0).
    Isar0,
    /// ID_AA64ISAR1_EL1 (S3_0_C0_C6_1): pointer authentication (APA, API), LS64, ...
    Isar1,
    /// ID_AA64ISAR2_EL1 (S3_0_C0_C6_2): WFxT, MOPS, APA3, ...
    Isar2,
    /// ID_AA64MMFR0_EL1 (S3_0_C0_C7_0).
    Mmfr0,
    /// ID_AA64MMFR1_EL1 (S3_0_C0_C7_1).
    Mmfr1,
    /// ID_AA64MMFR2_EL1 (S3_0_C0_C7_2).
    Mmfr2,
    /// ID_AA64MMFR3_EL1 (S3_0_C0_C7_3): TCR2, SCTLR2, S1PIE, S1POE, AIE, ...
    Mmfr3,
}

impl IdReg {
    /// The registers of the feature checks (guests/cpufeat prints them), in encoding order;
    /// without [`IdReg::Zfr0`] and [`IdReg::Dfr0`], which other guests read.
    pub const ALL: [Self; 9] = [
        Self::Pfr0,
        Self::Pfr1,
        Self::Isar0,
        Self::Isar1,
        Self::Isar2,
        Self::Mmfr0,
        Self::Mmfr1,
        Self::Mmfr2,
        Self::Mmfr3,
    ];

    /// The architectural name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pfr0 => "ID_AA64PFR0_EL1",
            Self::Pfr1 => "ID_AA64PFR1_EL1",
            Self::Zfr0 => "ID_AA64ZFR0_EL1",
            Self::Dfr0 => "ID_AA64DFR0_EL1",
            Self::Isar0 => "ID_AA64ISAR0_EL1",
            Self::Isar1 => "ID_AA64ISAR1_EL1",
            Self::Isar2 => "ID_AA64ISAR2_EL1",
            Self::Mmfr0 => "ID_AA64MMFR0_EL1",
            Self::Mmfr1 => "ID_AA64MMFR1_EL1",
            Self::Mmfr2 => "ID_AA64MMFR2_EL1",
            Self::Mmfr3 => "ID_AA64MMFR3_EL1",
        }
    }

    /// The register's value. The generic `S3_0_C0_Cn_m` names need no assembler support for
    /// the newer registers (ISAR2, MMFR3).
    pub fn read(self) -> u64 {
        macro_rules! read_id {
            ($name:literal) => {{
                let value: u64;
                // SAFETY: the ID register space (op0 3, op1 0, CRn 0, CRm 1..7) is readable at
                // EL1 with no side effects; unallocated encodings there read as zero.
                unsafe {
                    asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags))
                };
                value
            }};
        }
        match self {
            Self::Pfr0 => read_id!("S3_0_C0_C4_0"),
            Self::Pfr1 => read_id!("S3_0_C0_C4_1"),
            Self::Zfr0 => read_id!("S3_0_C0_C4_4"),
            Self::Dfr0 => read_id!("S3_0_C0_C5_0"),
            Self::Isar0 => read_id!("S3_0_C0_C6_0"),
            Self::Isar1 => read_id!("S3_0_C0_C6_1"),
            Self::Isar2 => read_id!("S3_0_C0_C6_2"),
            Self::Mmfr0 => read_id!("S3_0_C0_C7_0"),
            Self::Mmfr1 => read_id!("S3_0_C0_C7_1"),
            Self::Mmfr2 => read_id!("S3_0_C0_C7_2"),
            Self::Mmfr3 => read_id!("S3_0_C0_C7_3"),
        }
    }
}

/// SME: with CPACR_EL1.SMEN = 0b11 (EL1 and EL0 SME not trapped at EL1), `smstart` (SMSTART
/// SM and ZA, 0xd503477f) then `smstop` (0xd503467f). CPACR_EL1 is restored afterwards.
///
/// Entering and leaving Streaming SVE mode zeroes the SVE (and so the FP/SIMD) registers,
/// which is why every v-register is a clobber. Without SME (or with SME trapped by a
/// hypervisor) `smstart` is UNDEFINED and nothing changed.
pub fn sme_start_stop() -> Result<(), Fault> {
    exception::arm(Recovery::ReturnToLr);
    // SAFETY: CPACR_EL1 only controls FP/SVE/SME traps at EL1/EL0 and is put back as it was.
    // SMSTART/SMSTOP touch only PSTATE.SM/ZA and the vector, predicate and ZA registers (all
    // declared clobbered; ZA is dropped again by SMSTOP) and FPSR, which Rust does not keep
    // across asm. A fault resumes at `1:` with x30 (clobbered) pointing there.
    unsafe {
        asm!(
            "mrs {saved}, cpacr_el1",
            "orr {tmp}, {saved}, #(3 << 24)",
            "msr cpacr_el1, {tmp}",
            "isb",
            "adr x30, 1f",
            ".inst 0xd503477f", // smstart
            ".inst 0xd503467f", // smstop
            "1:",
            "msr cpacr_el1, {saved}",
            "isb",
            saved = out(reg) _,
            tmp = out(reg) _,
            out("x30") _,
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
    exception::disarm().map_or(Ok(()), Err)
}

/// SVE: with CPACR_EL1.ZEN = 0b11, `rdvl x0, #1` (0x04bf5020): the SVE vector length in
/// bytes, or the exception. CPACR_EL1 is restored afterwards.
pub fn sve_vector_length() -> Result<u64, Fault> {
    exception::arm(Recovery::ReturnToLr);
    let length: u64;
    // SAFETY: CPACR_EL1 only controls FP/SVE/SME traps and is put back; RDVL writes x0 alone
    // and touches no memory. A fault resumes at `1:`, x0 is then stale and discarded.
    unsafe {
        asm!(
            "mrs {saved}, cpacr_el1",
            "orr {tmp}, {saved}, #(3 << 16)",
            "msr cpacr_el1, {tmp}",
            "isb",
            "mov x0, xzr",
            "adr x30, 1f",
            ".inst 0x04bf5020", // rdvl x0, #1
            "1:",
            "msr cpacr_el1, {saved}",
            "isb",
            saved = out(reg) _,
            tmp = out(reg) _,
            out("x0") length,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(length), Err)
}

/// FEAT_WFxT: `wfit x0` (0xd5031020) with x0 = `deadline`, a CNTVCT_EL0 value. Returns when
/// the counter reaches the deadline, on any WFI wake-up event (a pending interrupt wakes it
/// even with PSTATE.I set), or at once (the architecture allows spurious returns).
pub fn wfit(deadline: u64) -> Result<(), Fault> {
    exception::arm(Recovery::ReturnToLr);
    // SAFETY: WFIT only suspends execution; not `nomem`, so it orders like a call. A fault
    // (UNDEFINED without WFxT) resumes at `1:`.
    unsafe {
        asm!(
            "adr x30, 1f",
            ".inst 0xd5031020", // wfit x0
            "1:",
            in("x0") deadline,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(()), Err)
}

/// FEAT_MOPS: `setp [x0]!, x1!, x2` / `setm` / `sete` (0x19c20420, 0x19c24420, 0x19c28420):
/// the memory-set sequence, filling `buf` with `value`. On an exception (SETP UNDEFINED) the
/// rest of the sequence is skipped and `buf` may be partly written.
pub fn mops_memset(buf: &mut [u8], value: u8) -> Result<(), Fault> {
    exception::arm(Recovery::ReturnToLr);
    // SAFETY: the SET sequence stores `value` to exactly [x0, x0 + x1): `buf`, which the
    // exclusive borrow lets this function overwrite with any bytes. The destination, size and
    // value registers are distinct and none is x31, as MOPS requires; the three instructions
    // are consecutive with the same registers (the architecture requires that too). They
    // update x0, x1 and NZCV (hence no `preserves_flags`). A fault resumes at `1:`.
    unsafe {
        asm!(
            "adr x30, 1f",
            ".inst 0x19c20420", // setp [x0]!, x1!, x2
            ".inst 0x19c24420", // setm [x0]!, x1!, x2
            ".inst 0x19c28420", // sete [x0]!, x1!, x2
            "1:",
            inout("x0") buf.as_mut_ptr() => _,
            inout("x1") buf.len() => _,
            in("x2") u64::from(value),
            out("x30") _,
            options(nostack),
        )
    };
    exception::disarm().map_or(Ok(()), Err)
}

/// Defines a probe that reads a system register by its generic name.
macro_rules! read_probe {
    ($(#[$doc:meta])* $fn_name:ident, $reg:literal) => {
        $(#[$doc])*
        pub fn $fn_name() -> Result<u64, Fault> {
            exception::arm(Recovery::ReturnToLr);
            let value: u64;
            // SAFETY: reading this register has no side effects and touches no memory; if it
            // is UNDEFINED, execution resumes at `1:` and the stale `value` is discarded.
            unsafe {
                asm!(
                    "mov {v}, xzr",
                    "adr x30, 1f",
                    concat!("mrs {v}, ", $reg),
                    "1:",
                    v = out(reg) value,
                    out("x30") _,
                    options(nostack, preserves_flags),
                )
            };
            exception::disarm().map_or(Ok(value), Err)
        }
    };
}

read_probe!(
    /// FEAT_RAS: ERRIDR_EL1 (S3_0_C5_C3_0), the number of error records (NUM, `[15:0]`).
    read_erridr_el1,
    "S3_0_C5_C3_0"
);
read_probe!(
    /// FEAT_CSV2_2 / CSV2_1p2: SCXTNUM_EL1 (S3_0_C13_C0_7), the EL1 software context number.
    read_scxtnum_el1,
    "S3_0_C13_C0_7"
);
read_probe!(
    /// FEAT_TCR2: TCR2_EL1 (S3_0_C2_C0_3).
    read_tcr2_el1,
    "S3_0_C2_C0_3"
);
read_probe!(
    /// FEAT_SCTLR2: SCTLR2_EL1 (S3_0_C1_C0_3).
    read_sctlr2_el1,
    "S3_0_C1_C0_3"
);
read_probe!(
    /// FEAT_S1PIE: PIR_EL1 (S3_0_C10_C2_3), the EL1&0 stage 1 permission indirection.
    read_pir_el1,
    "S3_0_C10_C2_3"
);
read_probe!(
    /// FEAT_S1PIE: PIRE0_EL1 (S3_0_C10_C2_2), the EL0 permission indirection.
    read_pire0_el1,
    "S3_0_C10_C2_2"
);
read_probe!(
    /// FEAT_S1POE: POR_EL1 (S3_0_C10_C2_4), the EL1 permission overlay.
    read_por_el1,
    "S3_0_C10_C2_4"
);
read_probe!(
    /// FEAT_AIE: MAIR2_EL1 (S3_0_C10_C2_1), the extended memory attribute indirection.
    read_mair2_el1,
    "S3_0_C10_C2_1"
);
read_probe!(
    /// FEAT_NMI: ALLINT (S3_0_C4_C3_0), bit 13 masks every interrupt, NMIs included.
    read_allint,
    "S3_0_C4_C3_0"
);

/// FEAT_RAS: writes ERRSELR_EL1 (S3_0_C5_C3_1), the error record selector.
pub fn write_errselr_el1(value: u64) -> Result<(), Fault> {
    exception::arm(Recovery::ReturnToLr);
    // SAFETY: ERRSELR_EL1 only selects which error record the ERX* registers show; the runtime
    // uses none of them. No memory is touched; a fault resumes at `1:`.
    unsafe {
        asm!(
            "adr x30, 1f",
            "msr S3_0_C5_C3_1, {v}",
            "isb",
            "1:",
            v = in(reg) value,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(()), Err)
}

/// Pointer authentication with the IA key enabled: sets SCTLR_EL1.EnIA (bit 31), runs
/// `pacia x0, x1` (0xdac10020) on `pointer` with `modifier`, then `autia x2, x1` (0xdac11022)
/// on the result, and restores SCTLR_EL1. Returns (signed, authenticated).
///
/// Without FEAT_PAuth PACIA is UNDEFINED; a hypervisor that hides it traps it with
/// HCR_EL2.API = 0 (only while EnIA is set) and has to answer UNDEFINED too.
pub fn pac_round_trip(pointer: u64, modifier: u64) -> Result<(u64, u64), Fault> {
    exception::arm(Recovery::ReturnToLr);
    let signed: u64;
    let authenticated: u64;
    // SAFETY: SCTLR_EL1.EnIA only enables the IA-key instructions; nothing compiled in this
    // image uses them (no branch protection), and SCTLR_EL1 is put back as it was. PACIA and
    // AUTIA compute on registers alone. A fault resumes at `1:`, the outputs are then stale.
    unsafe {
        asm!(
            "mrs {saved}, sctlr_el1",
            "orr {tmp}, {saved}, #(1 << 31)",
            "msr sctlr_el1, {tmp}",
            "isb",
            "mov x2, xzr",
            "adr x30, 1f",
            ".inst 0xdac10020", // pacia x0, x1
            "mov x2, x0",
            ".inst 0xdac11022", // autia x2, x1
            "1:",
            "msr sctlr_el1, {saved}",
            "isb",
            saved = out(reg) _,
            tmp = out(reg) _,
            inout("x0") pointer => signed,
            in("x1") modifier,
            out("x2") authenticated,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok((signed, authenticated)), Err)
}

/// The hint-space `pacia1716` (HINT #8, 0xd503211f): signs x17 with modifier x16 when FEAT_PAuth
/// is implemented and SCTLR_EL1.EnIA is set, and is a NOP otherwise. SCTLR_EL1.EnIA is set to
/// `enable_ia` for the instruction and restored after. Returns x17 afterwards.
pub fn pacia1716(pointer: u64, modifier: u64, enable_ia: bool) -> Result<u64, Fault> {
    exception::arm(Recovery::ReturnToLr);
    let result: u64;
    // SAFETY: as for `pac_round_trip`: SCTLR_EL1.EnIA is the only bit changed and is restored;
    // the hint computes on x16/x17 alone. A fault resumes at `1:`.
    unsafe {
        asm!(
            "mrs {saved}, sctlr_el1",
            "bic {tmp}, {saved}, #(1 << 31)",
            "orr {tmp}, {tmp}, {enable}",
            "msr sctlr_el1, {tmp}",
            "isb",
            "adr x30, 1f",
            ".inst 0xd503211f", // pacia1716 (hint #8)
            "1:",
            "msr sctlr_el1, {saved}",
            "isb",
            saved = out(reg) _,
            tmp = out(reg) _,
            enable = in(reg) u64::from(enable_ia) << 31,
            inout("x17") pointer => result,
            in("x16") modifier,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(result), Err)
}

/// FEAT_NMI with the immediate form: `msr ALLINT, #1` (0xd501411f), read ALLINT, `msr ALLINT,
/// #0` (0xd501401f), read ALLINT. Returns the two values read (bit 13 set, then clear).
///
/// With ALLINT set every interrupt is masked; nothing here waits for one, and it is cleared
/// before returning. Without FEAT_NMI (or with the writes trapped by HCRX_EL2.TALLINT and
/// refused by the hypervisor) the first write is UNDEFINED and nothing changed.
pub fn allint_immediate() -> Result<(u64, u64), Fault> {
    exception::arm(Recovery::ReturnToLr);
    let set: u64;
    let clear: u64;
    // SAFETY: ALLINT only masks interrupts (the runtime runs with them masked here anyway) and
    // is cleared again at the end; no memory is touched. A fault resumes at `1:`.
    unsafe {
        asm!(
            "mov {set}, xzr",
            "mov {clear}, xzr",
            "adr x30, 1f",
            ".inst 0xd501411f", // msr ALLINT, #1
            "mrs {set}, S3_0_C4_C3_0",
            ".inst 0xd501401f", // msr ALLINT, #0
            "mrs {clear}, S3_0_C4_C3_0",
            "1:",
            set = out(reg) set,
            clear = out(reg) clear,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok((set, clear)), Err)
}

/// FEAT_NMI with the register form: `msr ALLINT, x` (S3_0_C4_C3_0) with `value`, read it back,
/// then `msr ALLINT, xzr`. Returns the value read back.
pub fn allint_register(value: u64) -> Result<u64, Fault> {
    exception::arm(Recovery::ReturnToLr);
    let read: u64;
    // SAFETY: as for `allint_immediate`: interrupt masking only, cleared at the end.
    unsafe {
        asm!(
            "mov {read}, xzr",
            "adr x30, 1f",
            "msr S3_0_C4_C3_0, {v}",
            "mrs {read}, S3_0_C4_C3_0",
            "msr S3_0_C4_C3_0, xzr",
            "1:",
            v = in(reg) value,
            read = out(reg) read,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(read), Err)
}

/// FEAT_MTE: `irg x0, x1` (0x9adf1020): `pointer` with a random allocation tag in bits
/// `[59:56]` (tag 0 when tag generation is off). No memory is accessed.
pub fn irg(pointer: u64) -> Result<u64, Fault> {
    exception::arm(Recovery::ReturnToLr);
    let tagged: u64;
    // SAFETY: IRG computes on registers (and reads GCR_EL1/RGSR_EL1); no memory is touched.
    // A fault resumes at `1:`.
    unsafe {
        asm!(
            "mov x0, xzr",
            "adr x30, 1f",
            ".inst 0x9adf1020", // irg x0, x1
            "1:",
            out("x0") tagged,
            in("x1") pointer,
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(tagged), Err)
}

/// 64 bytes on a 64-byte boundary: what LD64B reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Block64(pub [u64; 8]);

/// FEAT_LS64: `ld64b x0, [x8]` (0xf83fd100), a single-copy atomic 64-byte load of `block` into
/// x0..x7. With the MMU off every data access is Device-nGnRnE, a memory type LD64B supports.
pub fn ld64b(block: &Block64) -> Result<[u64; 8], Fault> {
    exception::arm(Recovery::ReturnToLr);
    let mut words = [0u64; 8];
    // SAFETY: LD64B only reads the 64 bytes at x8 = `block`, a shared borrow of 64 aligned
    // bytes, into x0..x7 (all outputs). A fault resumes at `1:` with the outputs stale.
    unsafe {
        asm!(
            "adr x30, 1f",
            ".inst 0xf83fd100", // ld64b x0, [x8]
            "1:",
            in("x8") block as *const Block64,
            out("x0") words[0], out("x1") words[1], out("x2") words[2], out("x3") words[3],
            out("x4") words[4], out("x5") words[5], out("x6") words[6], out("x7") words[7],
            out("x30") _,
            options(nostack, preserves_flags),
        )
    };
    exception::disarm().map_or(Ok(words), Err)
}
