//! What guests see of the CPU's ID registers (trapped with HCR_EL2.TID3).
//!
//! The rule: a feature the guest is told about works, and a feature it is not told about is
//! trapped where the architecture allows (see `arch::aarch64::guest` for HCR_EL2, HCRX_EL2,
//! the fine-grained traps and CPTR_EL2; docs/ARCHITECTURE.md has the table). Hidden:
//! - SVE, except for a VM that has it ([`sanitize_vm`], `vm::sve`): its state is then switched
//!   with the FP/SIMD registers and its ID fields are the CPU's;
//! - features whose state is not switched between vCPUs: SME, PMU, SPE, trace, BRBE,
//!   MTE tag storage (MTE2+; the instructions-only level, whose IRG/ADDG/SUBG execute and
//!   cannot be trapped, is reported as MTE = 1), AMU, MPAM, pointer authentication (its
//!   instructions trap while HCR_EL2.API = 0 and UNDEF), NMI (ALLINT writes trap through
//!   HCRX_EL2.TALLINT), GCS, FPMR, and everything in ID_AA64MMFR3_EL1 (TCR2, SCTLR2, the
//!   permission-indirection and overlay registers, MAIR2: trapped by HCRX_EL2 or the
//!   fine-grained traps);
//! - SCXTNUM_ELx (FEAT_CSV2_2/3, CSV2 > 1 or CSV2_frac > 1): trapped by HCR_EL2.EnSCXT = 0,
//!   so CSV2 is reported as 1 (CSV2_frac at most 1p1);
//! - what only exists at EL2 or EL3, which a guest has not: EL2, EL3, Secure EL2, RME, VHE,
//!   HCRX, nested virtualization, FGT, FWB, TWED, XNX, EVT.
//!
//! - WFxT: a trapped WFIT is answered with UNDEFINED (its syndrome says TI = WFIT). It is not
//!   advertised because QEMU 10.0.2 reports a trapped WFIT as a plain WFI (TI = 0, no register),
//!   so its deadline cannot be honoured there (docs/qemu-bugs.md); WFET is trapped only where
//!   vCPUs share a CPU (TWE) and otherwise runs natively, like WFE.
//!
//! Kept because they work: self-hosted debug (breakpoints, watchpoints, software step, the OS
//! lock: switched lazily per vCPU, `vm::debug`), RAS (the error-record registers are RAZ/WI: no records, as KVM
//! does; DISR_EL1 is VDISR_EL2, switched per vCPU), MOPS (enabled through HCRX_EL2.MSCEn), and
//! the plain EL0/EL1 instruction-set features.

/// Clears the `bits` wide field at `lsb`.
const fn clear(v: u64, lsb: u32, bits: u32) -> u64 {
    v & !(((1u64 << bits) - 1) << lsb)
}

/// The 4-bit field at `lsb`.
const fn field(v: u64, lsb: u32) -> u64 {
    (v >> lsb) & 0xf
}

/// Caps the 4-bit unsigned field at `lsb` to `max`.
const fn cap(v: u64, lsb: u32, max: u64) -> u64 {
    if field(v, lsb) > max {
        clear(v, lsb, 4) | (max << lsb)
    } else {
        v
    }
}

/// Clears every 4-bit field whose `lsb` is listed.
fn clear_fields(mut v: u64, lsbs: &[u32]) -> u64 {
    for &lsb in lsbs {
        v = clear(v, lsb, 4);
    }
    v
}

/// The value a vCPU reads for `S3_0_C0_C<crm>_<op2>` given the hardware value `hw`, where
/// `sve` says whether its VM has SVE: then ID_AA64PFR0_EL1.SVE [35:32] and ID_AA64ZFR0_EL1
/// (which SVE instructions beyond the base set exist; none brings state of its own) are the
/// CPU's, otherwise as [`sanitize`].
pub fn sanitize_vm(crm: u8, op2: u8, hw: u64, sve: bool) -> u64 {
    match (sve, crm, op2) {
        (true, 4, 0) => sanitize(4, 0, hw) | (hw & (0xf << 32)),
        (true, 4, 4) => hw,
        _ => sanitize(crm, op2, hw),
    }
}

/// The value a guest without SVE reads for `S3_0_C0_C<crm>_<op2>` given the hardware value
/// `hw`.
pub fn sanitize(crm: u8, op2: u8, hw: u64) -> u64 {
    match (crm, op2) {
        // ID_AA64PFR0_EL1: EL2 [11:8], EL3 [15:12], SVE [35:32], SEL2 [39:36], MPAM [43:40],
        // AMU [47:44], RME [55:52] hidden; CSV2 [59:56] at most 1.
        (4, 0) => cap(clear_fields(hw, &[8, 12, 32, 36, 40, 44, 52]), 56, 1),
        // ID_AA64PFR1_EL1: MTE [11:8] at most 1 (instructions only); CSV2_frac [35:32] at
        // most 1; MPAM_frac [19:16], SME [27:24], RNDR_trap [31:28], NMI [39:36],
        // MTE_frac [43:40], GCS [47:44], THE [51:48], MTEX [55:52], DF2 [59:56],
        // PFAR [63:60] hidden.
        (4, 1) => {
            let v = clear_fields(hw, &[16, 24, 28, 36, 40, 44, 48, 52, 56, 60]);
            cap(cap(v, 8, 1), 32, 1)
        }
        // ID_AA64PFR2_EL1 (MTE store-only/permission/FAR, FPMR, ...), ID_AA64ZFR0_EL1 (SVE),
        // ID_AA64SMFR0_EL1 (SME), ID_AA64FPFR0_EL1 (FP8, needs FPMR).
        (4, 2) | (4, 4) | (4, 5) | (4, 7) => 0,
        // ID_AA64DFR0_EL1: TraceVer [7:4], PMUVer [11:8], PMSVer [35:32], TraceFilt [43:40],
        // TraceBuffer [47:44], MTPMU [51:48], BRBE [55:52], ExtTrcBuff [59:56],
        // HPMN0 [63:60] hidden. Self-hosted debug is virtualized (vm::debug): BRPs [15:12],
        // WRPs [23:20], CTX_CMPs [31:28] and DoubleLock [39:36] are the hardware's (every
        // breakpoint and watchpoint is switched); DebugVer [3:0] at most FEAT_Debugv8p8
        // (0b1010): v8p9 brings the banked MDSELR_EL1 (more than 16 breakpoints), not offered.
        (5, 0) => cap(
            clear_fields(hw, &[4, 8, 32, 40, 44, 48, 52, 56, 60]),
            0,
            0xa,
        ),
        // ID_AA64DFR1_EL1: PMU/SPE/breakpoint extensions beyond DFR0 (none virtualized).
        (5, 1) => 0,
        // ID_AA64ISAR1_EL1: APA [7:4], API [11:8], GPA [27:24], GPI [31:28], LS64 [63:60]
        // (its instructions trap through HCRX_EL2.EnALS/EnAS0/EnASR = 0).
        (6, 1) => clear_fields(hw, &[4, 8, 24, 28, 60]),
        // ID_AA64ISAR2_EL1: WFxT [3:0], GPA3 [11:8], APA3 [15:12], PAC_frac [27:24],
        // SYSREG_128 [35:32], SYSINSTR_128 [39:36], ATS1A [63:60] hidden; MOPS kept.
        (6, 2) => clear_fields(hw, &[0, 8, 12, 24, 32, 36, 60]),
        // ID_AA64MMFR0_EL1: FGT [59:56] (an EL2 feature).
        (7, 0) => clear(hw, 56, 4),
        // ID_AA64MMFR1_EL1: VH [11:8], XNX [31:28], TWED [35:32], HCX [43:40] (EL2 features).
        (7, 1) => clear_fields(hw, &[8, 28, 32, 40]),
        // ID_AA64MMFR2_EL1: NV [27:24], FWB [43:40], EVT [59:56] (EL2 features).
        (7, 2) => clear_fields(hw, &[24, 40, 56]),
        // ID_AA64MMFR3_EL1: every feature in it brings EL1 registers that are not switched.
        (7, 3) => 0,
        // AArch32 ID_DFR0_EL1: PerfMon [27:24].
        (1, 2) => clear(hw, 24, 4),
        _ => hw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_unvirtualized_features() {
        // -cpu max-like PFR0: EL0-3 AArch64+32, FP, AdvSIMD, GIC, RAS, SVE, SEL2, DIT...
        let pfr0 = 0x1101_1111_0011_2222u64 | (1 << 32) | (1 << 36);
        let v = sanitize(4, 0, pfr0);
        assert_eq!((v >> 32) & 0xf, 0, "SVE hidden");
        assert_eq!((v >> 8) & 0xf, 0, "no EL2 for the guest");
        assert_eq!(v & 0xff, pfr0 & 0xff, "EL0/EL1 kept");
        assert_eq!(sanitize(4, 4, 0x1234), 0);
        let dfr0 = 0x0000_0001_f010_f706u64;
        let v = sanitize(5, 0, dfr0);
        assert_eq!((v >> 8) & 0xf, 0, "no PMU");
        assert_eq!(v & 0xf, 6, "debug architecture kept");
        assert_eq!((v >> 12) & 0xf, 0xf, "breakpoints kept");
        assert_eq!((v >> 20) & 0xf, 1, "watchpoints kept");
        assert_eq!(sanitize(5, 0, 0xb) & 0xf, 0xa, "no Debugv8p9 banks");
        assert_eq!(
            sanitize(6, 1, 0x0000_0000_1111_1110) & 0xff0,
            0,
            "no pointer auth"
        );
        assert_eq!(
            sanitize(7, 0, 0xabc),
            0xabc,
            "MMFR0's translation fields kept"
        );
    }

    #[test]
    fn sve_only_for_vms_that_have_it() {
        let pfr0 = 0x1301_1111_1011_1112u64 | (1 << 32);
        assert_eq!(field(sanitize_vm(4, 0, pfr0, false), 32), 0);
        assert_eq!(field(sanitize_vm(4, 0, pfr0, true), 32), 1);
        assert_eq!(
            sanitize_vm(4, 0, pfr0, true) & !(0xf << 32),
            sanitize(4, 0, pfr0) & !(0xf << 32),
            "the other fields as for any VM"
        );
        let zfr0 = 0x0110_0110_0001_0021u64;
        assert_eq!(sanitize_vm(4, 4, zfr0, true), zfr0);
        assert_eq!(sanitize_vm(4, 4, zfr0, false), 0);
        assert_eq!(sanitize_vm(4, 5, 0x11, true), 0, "SME stays hidden");
        assert_eq!(sanitize_vm(5, 0, 0xf00, true), sanitize(5, 0, 0xf00));
    }

    /// QEMU 10 `-cpu max` values, as a guest read them before: each feature that did not work
    /// for the guest is gone, each that does is kept.
    #[test]
    fn qemu_max_features_are_honest() {
        // PFR0 with RAS 1, CSV2 3, DIT 1, AMU 1, SEL2 1.
        let pfr0 = 0x1301_1111_1011_1112u64;
        let v = sanitize(4, 0, pfr0);
        assert_eq!(field(v, 56), 1, "CSV2 capped: SCXTNUM traps");
        assert_eq!(field(v, 28), 1, "RAS kept: ERR* are RAZ/WI");
        assert_eq!(field(v, 44), 0, "no AMU");
        assert_eq!(field(v, 36), 0, "no Secure EL2");
        assert_eq!(field(v, 48), 1, "DIT kept");
        // PFR1: BT 1, SSBS 2, MTE 3, CSV2_frac 2, NMI 1, GCS 1.
        let pfr1 = 0x0000_1012_0000_0321u64;
        let v = sanitize(4, 1, pfr1);
        assert_eq!(field(v, 0), 1, "BTI kept");
        assert_eq!(field(v, 4), 2, "SSBS kept");
        assert_eq!(field(v, 8), 1, "MTE: instructions only");
        assert_eq!(field(v, 32), 1, "CSV2_frac capped");
        assert_eq!(field(v, 36), 0, "no NMI");
        assert_eq!(field(v, 44), 0, "no GCS");
        // ISAR2: WFxT 2, MOPS 1, APA3 1, CLRBHB 1.
        let isar2 = 0x0000_0000_1001_1002u64 | (1 << 12);
        let v = sanitize(6, 2, isar2);
        assert_eq!(field(v, 0), 0, "WFxT hidden: QEMU misreports trapped WFIT");
        assert_eq!(field(v, 16), 1, "MOPS kept: HCRX_EL2.MSCEn");
        assert_eq!(field(v, 12), 0, "no PAuth (QARMA3)");
        assert_eq!(field(v, 28), 1, "CLRBHB kept");
        assert_eq!(sanitize(7, 3, 0x0011_1111), 0, "no TCR2/S1PIE/S1POE/...");
        let mmfr1 = 0x0000_1011_1021_1122u64;
        let v = sanitize(7, 1, mmfr1);
        assert_eq!(field(v, 8), 0, "no VHE for a guest without EL2");
        assert_eq!(field(v, 40), 0, "no HCRX");
        assert_eq!(field(v, 20), 2, "PAN kept");
        assert_eq!(sanitize(7, 0, 1 << 56) >> 56, 0, "no FGT");
        assert_eq!(sanitize(4, 2, 0x1_0000_0001), 0, "no FPMR/MTE extras");
    }
}
