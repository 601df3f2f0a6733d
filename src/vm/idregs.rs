//! What guests see of the CPU's ID registers (trapped with HCR_EL2.TID3).
//!
//! Features the hypervisor does not virtualize are hidden, so a guest (Linux) never tries to
//! use them: SVE and SME (their state is not switched and their traps are UNDEFINED), the PMU,
//! SPE, trace and BRBE (their registers trap), MTE, AMU, MPAM, pointer authentication (its
//! keys are not switched between vCPUs), WFxT (a WFIT timeout would not be honoured), and
//! EL2/EL3 (a guest has neither).

/// Clears `bits` wide field at `lsb`.
const fn clear(v: u64, lsb: u32, bits: u32) -> u64 {
    v & !(((1u64 << bits) - 1) << lsb)
}

/// The value a guest reads for `S3_0_C0_C<crm>_<op2>` given the hardware value `hw`.
pub fn sanitize(crm: u8, op2: u8, hw: u64) -> u64 {
    match (crm, op2) {
        // ID_AA64PFR0_EL1: EL2 [11:8], EL3 [15:12], SVE [35:32], SEL2 [39:36], MPAM [43:40],
        // AMU [47:44].
        (4, 0) => {
            let mut v = hw;
            for lsb in [8, 12, 32, 36, 40, 44] {
                v = clear(v, lsb, 4);
            }
            v
        }
        // ID_AA64PFR1_EL1: MTE [11:8], MPAM_frac [19:16], SME [27:24], NMI [39:36],
        // MTE_frac [43:40], GCS [47:44].
        (4, 1) => {
            let mut v = hw;
            for lsb in [8, 16, 24, 36, 40, 44] {
                v = clear(v, lsb, 4);
            }
            v
        }
        // ID_AA64ZFR0_EL1 (SVE), ID_AA64SMFR0_EL1 (SME).
        (4, 4) | (4, 5) => 0,
        // ID_AA64DFR0_EL1: TraceVer [7:4], PMUVer [11:8], PMSVer [35:32], TraceFilt [43:40],
        // TraceBuffer [47:44], MTPMU [51:48], BRBE [55:52].
        (5, 0) => {
            let mut v = hw;
            for lsb in [4, 8, 32, 40, 44, 48, 52] {
                v = clear(v, lsb, 4);
            }
            v
        }
        // ID_AA64ISAR1_EL1: APA [7:4], API [11:8], GPA [27:24], GPI [31:28].
        (6, 1) => {
            let mut v = hw;
            for lsb in [4, 8, 24, 28] {
                v = clear(v, lsb, 4);
            }
            v
        }
        // ID_AA64ISAR2_EL1: WFxT [3:0] (WFIT's timeout is not honoured), GPA3 [11:8],
        // APA3 [15:12].
        (6, 2) => clear(clear(clear(hw, 0, 4), 8, 4), 12, 4),
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
        assert_eq!(
            sanitize(6, 1, 0x0000_0000_1111_1110) & 0xff0,
            0,
            "no pointer auth"
        );
        assert_eq!(sanitize(7, 0, 0xabc), 0xabc, "MMFR0 untouched");
    }
}
