//! Host tests of the PMU emulation against a model of the hardware registers.

use super::*;

/// The hardware: set/clear pairs folded into one value, like the CPU does.
#[derive(Default)]
struct Model {
    pmcr: u64,
    cnten: u64,
    inten: u64,
    ovs: u64,
    swinc: u64,
    ccntr: u64,
    ccfiltr: u64,
    userenr: u64,
    evcntr: [u64; 31],
    evtyper: [u64; 31],
}

impl PmuHw for Model {
    fn read(&mut self, r: HwReg) -> u64 {
        match r {
            HwReg::Pmcr => self.pmcr,
            HwReg::CntenSet | HwReg::CntenClr => self.cnten,
            HwReg::IntenSet | HwReg::IntenClr => self.inten,
            HwReg::OvsSet | HwReg::OvsClr => self.ovs,
            HwReg::Swinc => 0,
            HwReg::Ccntr => self.ccntr,
            HwReg::Ccfiltr => self.ccfiltr,
            // Cortex-A72-like: common events 0..0x3f, nothing above.
            HwReg::Ceid0 => 0xdead_0000_6e3f_fffb,
            HwReg::Ceid1 => 0xbeef_0000_0000_0000,
            HwReg::Userenr => self.userenr,
            HwReg::Evcntr(i) => self.evcntr[i as usize],
            HwReg::Evtyper(i) => self.evtyper[i as usize],
        }
    }
    fn write(&mut self, r: HwReg, v: u64) {
        match r {
            HwReg::Pmcr => self.pmcr = v,
            HwReg::CntenSet => self.cnten |= v,
            HwReg::CntenClr => self.cnten &= !v,
            HwReg::IntenSet => self.inten |= v,
            HwReg::IntenClr => self.inten &= !v,
            HwReg::OvsSet => self.ovs |= v,
            HwReg::OvsClr => self.ovs &= !v,
            HwReg::Swinc => self.swinc |= v,
            HwReg::Ccntr => self.ccntr = v,
            HwReg::Ccfiltr => self.ccfiltr = v,
            HwReg::Ceid0 | HwReg::Ceid1 => panic!("read-only"),
            HwReg::Userenr => self.userenr = v,
            HwReg::Evcntr(i) => self.evcntr[i as usize] = v,
            HwReg::Evtyper(i) => self.evtyper[i as usize] = v,
        }
    }
}

fn a72() -> (PmuState, Model) {
    let hw = Model {
        // IMP 0x41, IDCODE 0x03, N = 6 (what the hardware says at EL2).
        pmcr: 0x4103_3000,
        ..Default::default()
    };
    (PmuState::new(true, 6, 1), hw)
}

fn acc(op1: u8, crn: u8, crm: u8, op2: u8) -> SysRegAccess {
    SysRegAccess {
        op0: 3,
        op1,
        crn,
        crm,
        op2,
        rt: 0,
        read: true,
    }
}

#[test]
fn decodes_every_register() {
    assert_eq!(decode(&acc(3, 9, 12, 0)), Some(Reg::Pmcr));
    assert_eq!(decode(&acc(0, 9, 14, 1)), Some(Reg::IntenSet));
    assert_eq!(decode(&acc(3, 9, 14, 3)), Some(Reg::OvsSet));
    assert_eq!(decode(&acc(3, 14, 8, 0)), Some(Reg::Evcntr(0)));
    assert_eq!(decode(&acc(3, 14, 11, 6)), Some(Reg::Evcntr(30)));
    assert_eq!(decode(&acc(3, 14, 12, 5)), Some(Reg::Evtyper(5)));
    assert_eq!(
        decode(&acc(3, 14, 15, 7)),
        Some(Reg::Evtyper(31)),
        "PMCCFILTR"
    );
    // PMMIR_EL1 (v3p4) is not offered; CNTFRQ_EL0 (3,3,14,0,0) is not the PMU.
    assert_eq!(decode(&acc(0, 9, 14, 6)), None);
    assert_eq!(decode(&acc(3, 14, 0, 0)), None);
}

#[test]
fn pmcr_reports_n_and_keeps_guest_bits_only() {
    let (mut st, mut hw) = a72();
    assert_eq!(
        access(&mut st, &mut hw, Reg::Pmcr, None),
        Outcome::Read(0x4103_3000)
    );
    hw.evcntr[2] = 77;
    hw.ccntr = 99;
    // E, P, C, X, LC and N = 31 written: N is read-only, X stays off, P/C act once.
    access(
        &mut st,
        &mut hw,
        Reg::Pmcr,
        Some(PMCR_E | PMCR_P | PMCR_C | PMCR_X | PMCR_LC | (31 << 11)),
    );
    assert_eq!(hw.evcntr[2], 0);
    assert_eq!(hw.ccntr, 0);
    assert_eq!(hw.pmcr, 0x4103_3000 | PMCR_E | PMCR_LC);
    let mut fewer = PmuState::new(true, 2, 1);
    assert_eq!(
        access(&mut fewer, &mut hw, Reg::Pmcr, None),
        Outcome::Read(0x4103_1000 | PMCR_E | PMCR_LC),
        "N = 2"
    );
}

#[test]
fn filters_never_count_at_el2() {
    let (mut st, mut hw) = a72();
    // P | NSH | M | SH | event 0x11, and an event number beyond v8.0's ten bits.
    let v = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 24) | 0x8011;
    access(&mut st, &mut hw, Reg::Evtyper(3), Some(v));
    assert_eq!(hw.evtyper[3], (1 << 31) | 0x11);
    access(&mut st, &mut hw, Reg::Evtyper(31), Some(v));
    assert_eq!(hw.ccfiltr, 1 << 31, "PMCCFILTR: no NSH, no event field");
    access(&mut st, &mut hw, Reg::Selr, Some(4));
    access(&mut st, &mut hw, Reg::Xevtyper, Some(u64::MAX));
    assert_eq!(hw.evtyper[4], (0xf << 28) | 0x3ff);
    // With PMUv3p1, 16-bit event numbers.
    let mut p1 = PmuState::new(true, 6, 4);
    access(&mut p1, &mut hw, Reg::Evtyper(0), Some(v));
    assert_eq!(hw.evtyper[0], (1 << 31) | 0x8011);
}

#[test]
fn counters_beyond_n_undef_or_raz_wi() {
    let (mut st, mut hw) = a72();
    assert_eq!(
        access(&mut st, &mut hw, Reg::Evcntr(6), None),
        Outcome::Undefined
    );
    assert_eq!(
        access(&mut st, &mut hw, Reg::Evtyper(30), Some(1)),
        Outcome::Undefined
    );
    access(&mut st, &mut hw, Reg::Selr, Some(0xff));
    assert_eq!(st.selr, 31);
    assert_eq!(
        access(&mut st, &mut hw, Reg::Xevcntr, Some(5)),
        Outcome::Written
    );
    access(&mut st, &mut hw, Reg::Selr, Some(7));
    assert_eq!(
        access(&mut st, &mut hw, Reg::Xevcntr, None),
        Outcome::Read(0)
    );
    assert_eq!(hw.evcntr, [0; 31]);
    // Enables of counters the guest does not have are ignored.
    access(&mut st, &mut hw, Reg::CntenSet, Some(u64::MAX));
    assert_eq!(hw.cnten, CYCLE | 0x3f);
    access(&mut st, &mut hw, Reg::Swinc, Some(u64::MAX));
    assert_eq!(hw.swinc, 0x3f, "no software increment of the cycle counter");
    assert_eq!(
        access(&mut st, &mut hw, Reg::Swinc, None),
        Outcome::Undefined
    );
    assert_eq!(
        access(&mut st, &mut hw, Reg::Ceid0, Some(0)),
        Outcome::Undefined
    );
    assert_eq!(
        access(&mut st, &mut hw, Reg::Ceid0, None),
        Outcome::Read(0x6e3f_fffb),
        "PMUv3: no high events"
    );
}

#[test]
fn overflow_interrupt_is_a_level_and_masks_the_hardware() {
    let (mut st, mut hw) = a72();
    access(&mut st, &mut hw, Reg::IntenSet, Some(CYCLE | 1));
    assert!(!sync_irq(&st, &mut hw));
    assert_eq!(hw.inten, CYCLE | 1, "armed while the line is low");
    // Counter 0 overflows with PMCR.E = 0: no interrupt.
    hw.ovs = 1;
    assert!(!sync_irq(&st, &mut hw));
    access(&mut st, &mut hw, Reg::Pmcr, Some(PMCR_E));
    assert!(sync_irq(&st, &mut hw));
    assert_eq!(hw.inten, 0, "the physical interrupt cannot fire again");
    assert_eq!(
        access(&mut st, &mut hw, Reg::IntenSet, None),
        Outcome::Read(CYCLE | 1),
        "the guest still reads its enables"
    );
    // The guest clears the flag: the line falls, the hardware is armed again.
    access(&mut st, &mut hw, Reg::OvsClr, Some(1));
    assert!(!sync_irq(&st, &mut hw));
    assert_eq!(hw.inten, CYCLE | 1);
    // Disabling the interrupt also lowers the line.
    hw.ovs = CYCLE;
    assert!(sync_irq(&st, &mut hw));
    access(&mut st, &mut hw, Reg::IntenClr, Some(CYCLE));
    assert!(!sync_irq(&st, &mut hw));
    assert_eq!(hw.inten, 1);
}

#[test]
fn userenr_and_reset() {
    let (mut st, mut hw) = a72();
    access(&mut st, &mut hw, Reg::Userenr, Some(u64::MAX));
    assert_eq!((st.userenr, hw.userenr), (0xf, 0xf));
    st.user = true;
    st.inten = 3;
    st.reset();
    assert_eq!(st, PmuState::new(true, 6, 1));
    assert_eq!(guest_pmuver(0x1030_5106), 1);
    assert_eq!(guest_pmuver(0x0000_0706), PMUVER_MAX, "capped at v3p1");
    assert_eq!(guest_pmuver(0x0000_0f06), 0, "IMPLEMENTATION DEFINED PMU");
}

#[test]
fn el0_follows_pmuserenr() {
    assert!(!el0_allowed(Reg::Pmcr, true, 0));
    assert!(el0_allowed(Reg::Pmcr, true, 1));
    assert!(!el0_allowed(Reg::IntenSet, true, 0xf), "EL1 only");
    assert!(el0_allowed(Reg::Swinc, false, 0b10));
    assert!(el0_allowed(Reg::Ccntr, true, 0b100));
    assert!(
        !el0_allowed(Reg::Ccntr, false, 0b100),
        "CR allows reads only"
    );
    assert!(el0_allowed(Reg::Evcntr(2), true, 0b1000));
    assert!(el0_allowed(Reg::Selr, false, 0b1000));
    assert!(!el0_allowed(Reg::Evtyper(2), true, 0b1110));
}
