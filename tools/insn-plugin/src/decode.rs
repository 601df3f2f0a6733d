//! A64 instruction classes that cost more than their count on a real core.
//!
//! Encodings from the Arm ARM (DDI 0487), section C4.1 "A64 instruction set encoding":
//!
//! - System instructions with register argument, C5.2 "System instruction class encoding
//!   overview": bits[31:22] = 0b1101010100, then L (bit 21), op0 (20:19), op1 (18:16),
//!   CRn (15:12), CRm (11:8), op2 (7:5), Rt (4:0).
//!   - op0 = 0: CRn = 3 barriers (op2 = 4 DSB, 5 DMB, 6 ISB, 7 SB, 2 CLREX; op2 = 1 with
//!     CRm<1:0> = 0b10 is DSB with the nXS qualifier, FEAT_XS); CRn = 4 MSR (immediate), a
//!     PSTATE field write (DAIFSet/DAIFClr, SPSel, ...); CRn = 2 hints (WFI, WFE, ...).
//!   - op0 = 1: SYS/SYSL (C5.2.4): CRn = 7 holds IC (CRm = 1, 5), AT (CRm = 8, 9), the
//!     prediction restriction instructions (op1 = 3, CRm = 3) and DC (every other CRm); CRn = 8
//!     and CRn = 9 (the nXS forms) hold TLBI.
//!   - op0 = 2, 3: MRS (L = 1) and MSR (register) (L = 0), debug and other system registers.
//! - Exception generation (C4.1.66): bits[31:24] = 0xD4, opc (23:21) = 0, LL (1:0) = 1 SVC,
//!   2 HVC, 3 SMC.
//! - ERET 0xD69F03E0, ERETAA 0xD69F0BFF, ERETAB 0xD69F0FFF (C6.2 ERET, ERETAA/ERETAB).

/// What one instruction is, for the counts. `Plain` instructions are only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Nothing special.
    Plain,
    /// MRS: a system (or debug) register read.
    Mrs,
    /// MSR (register) or MSR (immediate, a PSTATE field): a system register write.
    Msr,
    /// DSB (with or without nXS, including SSBB/PSSBB).
    Dsb,
    /// DMB.
    Dmb,
    /// ISB.
    Isb,
    /// SB, CLREX: other barriers.
    OtherBarrier,
    /// TLBI.
    Tlbi,
    /// DC (data cache maintenance, including DC ZVA).
    Dc,
    /// IC (instruction cache maintenance).
    Ic,
    /// AT (address translation).
    At,
    /// SVC, HVC, SMC: exception-generating calls.
    Call,
    /// ERET, ERETAA, ERETAB.
    Eret,
}

/// The counter register an instruction reads, for instructions that are counter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `mrs xN, cntvct_el0` (op0 3, op1 3, CRn 14, CRm 0, op2 2).
    Virtual,
    /// `mrs xN, cntpct_el0` (op2 1).
    Physical,
}

const SYSTEM_MASK: u32 = 0xFFC0_0000;
const SYSTEM: u32 = 0xD500_0000;
const EXCEPTION_MASK: u32 = 0xFFE0_001F;
const MRS_CNTVCT_EL0: u32 = 0xD53B_E040;
const MRS_CNTPCT_EL0: u32 = 0xD53B_E020;

/// The class of the A64 instruction `word`.
pub fn classify(word: u32) -> Class {
    if matches!(word, 0xD69F_03E0 | 0xD69F_0BFF | 0xD69F_0FFF) {
        return Class::Eret;
    }
    if matches!(word & EXCEPTION_MASK, 0xD400_0001..=0xD400_0003) {
        return Class::Call;
    }
    if word & SYSTEM_MASK != SYSTEM {
        return Class::Plain;
    }
    let read = word & (1 << 21) != 0;
    let op0 = (word >> 19) & 3;
    let op1 = (word >> 16) & 7;
    let crn = (word >> 12) & 0xF;
    let crm = (word >> 8) & 0xF;
    let op2 = (word >> 5) & 7;
    match op0 {
        0 if read => Class::Plain,
        0 => match (crn, op2) {
            (3, 4) => Class::Dsb,
            (3, 1) if crm & 3 == 2 => Class::Dsb,
            (3, 5) => Class::Dmb,
            (3, 6) => Class::Isb,
            (3, 2 | 7) => Class::OtherBarrier,
            (4, _) => Class::Msr,
            _ => Class::Plain,
        },
        1 => match (crn, crm) {
            (7, 1 | 5) => Class::Ic,
            (7, 8 | 9) => Class::At,
            (7, 3) if op1 == 3 => Class::Plain,
            (7, _) => Class::Dc,
            (8 | 9, _) => Class::Tlbi,
            _ => Class::Plain,
        },
        _ if read => Class::Mrs,
        _ => Class::Msr,
    }
}

/// Which counter `word` reads, if it is `mrs xN, cntvct_el0` or `mrs xN, cntpct_el0`.
pub fn counter_read(word: u32) -> Option<Counter> {
    match word & !0x1F {
        MRS_CNTVCT_EL0 => Some(Counter::Virtual),
        MRS_CNTPCT_EL0 => Some(Counter::Physical),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Words as `llvm-mc -triple=aarch64 -mattr=+sb,+xs -show-encoding` assembles each mnemonic.
    #[test]
    fn system_registers() {
        assert_eq!(classify(0xD53B_E040), Class::Mrs); // mrs x0, cntvct_el0
        assert_eq!(classify(0xD51C_1100), Class::Msr); // msr hcr_el2, x0
        assert_eq!(classify(0xD538_1000), Class::Mrs); // mrs x0, sctlr_el1
        assert_eq!(classify(0xD503_42DF), Class::Msr); // msr daifset, #2
        assert_eq!(classify(0xD510_0240), Class::Msr); // msr mdscr_el1, x0 (op0 = 2)
    }

    #[test]
    fn barriers() {
        assert_eq!(classify(0xD503_3F9F), Class::Dsb); // dsb sy
        assert_eq!(classify(0xD503_3B9F), Class::Dsb); // dsb ish
        assert_eq!(classify(0xD503_3BBF), Class::Dmb); // dmb ish
        assert_eq!(classify(0xD503_3FDF), Class::Isb); // isb
        assert_eq!(classify(0xD503_30FF), Class::OtherBarrier); // sb
        assert_eq!(classify(0xD503_3A3F), Class::Dsb); // dsb ishnxs
        assert_eq!(classify(0xD503_207F), Class::Plain); // wfi
        assert_eq!(classify(0xD503_201F), Class::Plain); // nop
    }

    #[test]
    fn maintenance() {
        assert_eq!(classify(0xD508_831F), Class::Tlbi); // tlbi vmalle1is
        assert_eq!(classify(0xD50C_871F), Class::Tlbi); // tlbi alle2
        assert_eq!(classify(0xD50C_8020), Class::Tlbi); // tlbi ipas2e1is, x0
        assert_eq!(classify(0xD50B_7420), Class::Dc); // dc zva, x0
        assert_eq!(classify(0xD50B_7E20), Class::Dc); // dc civac, x0
        assert_eq!(classify(0xD50B_7A20), Class::Dc); // dc cvac, x0
        assert_eq!(classify(0xD508_751F), Class::Ic); // ic iallu
        assert_eq!(classify(0xD50B_7520), Class::Ic); // ic ivau, x0
        assert_eq!(classify(0xD508_7800), Class::At); // at s1e1r, x0
    }

    #[test]
    fn exceptions() {
        assert_eq!(classify(0xD400_0002), Class::Call); // hvc #0
        assert_eq!(classify(0xD400_0003), Class::Call); // smc #0
        assert_eq!(classify(0xD400_0001), Class::Call); // svc #0
        assert_eq!(classify(0xD69F_03E0), Class::Eret); // eret
        assert_eq!(classify(0xD65F_03C0), Class::Plain); // ret
        assert_eq!(classify(0x8B02_0020), Class::Plain); // add x0, x1, x2
    }

    #[test]
    fn counter_reads() {
        assert_eq!(counter_read(0xD53B_E049), Some(Counter::Virtual)); // mrs x9, cntvct_el0
        assert_eq!(counter_read(0xD53B_E036), Some(Counter::Physical)); // mrs x22, cntpct_el0
        assert_eq!(counter_read(0xD53B_E220), None); // mrs x0, cntp_ctl_el0
    }
}
