//! PMUv3 for guests: the per-vCPU performance monitor state and the emulation of the trapped
//! PMU registers (the hardware side is `arch::aarch64::pmu`, the glue `kernel::pmu`).
//!
//! Every PMU register access of a guest traps (MDCR_EL2.TPM and TPMCR stay set for good, as
//! KVM keeps them): the counters themselves are the CPU's, but a guest writing an event type
//! or the cycle-counter filter directly could set PMEVTYPER<n>_EL0.NSH / PMCCFILTR_EL0.NSH and
//! count at EL2, the hypervisor. A Cortex-A72 is ARMv8.0: it has no MDCR_EL2.HPMD
//! (FEAT_PMUv3p1) to prohibit counting at EL2 in hardware, so the filter values must pass
//! through the hypervisor; with NSH = 0 the event is not counted at EL2 (ARM ARM D13.3 / the
//! PMEVTYPER<n>_EL0 description: "NSH: EL2 (Non-secure) filtering bit ... 0 = do not count
//! events in EL2"). Trapping costs an exit per PMU access, which is what a guest `perf` pays
//! under KVM too; a guest that never touches the PMU pays nothing.
//!
//! A vCPU starts as a non-user: nothing of it is in the hardware. Its first PMU access makes
//! it a *PMU user*: its state is loaded into the CPU, and from then on it is saved at put and
//! loaded at load (only for users, like the debug registers in `vm::debug`); a put leaves the
//! PMU stopped (PMCR_EL0.E = 0, every counter and interrupt disabled), so a vCPU switched out
//! stops counting and the next vCPU cannot see or disturb its counters (it traps too).
//!
//! While a user is loaded the hardware is authoritative for the counters, their enables and
//! overflow flags; this shadow holds what the hardware does not: PMSELR_EL0, PMUSERENR_EL0
//! (written through, so EL0 accesses the guest did not allow trap to its own EL1 first),
//! and the guest's PMINTENSET_EL1. The guest gets all `n` counters the host has
//! (MDCR_EL2.HPMN = n, so PMCR_EL0.E governs all of them): nothing in the hypervisor counts.
//!
//! The overflow interrupt: the virtual PPI 23 is a level, high while
//! `PMOVSSET & PMINTENSET & PMCR.E` (ARM ARM D13.6, "Generating overflow interrupt requests")
//! is non-zero for the guest's counters. The physical PPI 23 is the hypervisor's: the
//! hardware PMINTENSET holds the guest's enables only while the virtual line is low; when
//! the physical interrupt fires the kernel raises the virtual line and clears the hardware
//! enables (so the physical line falls and cannot storm). Every trapped access re-evaluates
//! the line ([`sync_irq`]): once the guest has cleared its overflow flags (or disabled the
//! interrupt) the line falls and the hardware enables are restored.

#![forbid(unsafe_code)]

use crate::arch::aarch64::esr::SysRegAccess;

/// The PMU overflow interrupt: PPI 7, INTID 23 (Arm Base System Architecture).
pub const PMU_INTID: u32 = 23;

/// The largest PMUVer offered: FEAT_PMUv3p1 (0b0100). Later versions bring registers or
/// fields not emulated here (PMMIR_EL1 with v3p4, 64-bit event counters and PMCR.LP with
/// v3p5, ...).
pub const PMUVER_MAX: u64 = 0b0100;

/// PMCR_EL0 fields.
pub const PMCR_E: u64 = 1 << 0;
pub const PMCR_P: u64 = 1 << 1;
pub const PMCR_C: u64 = 1 << 2;
pub const PMCR_D: u64 = 1 << 3;
pub const PMCR_X: u64 = 1 << 4;
pub const PMCR_DP: u64 = 1 << 5;
pub const PMCR_LC: u64 = 1 << 6;
const PMCR_N_SHIFT: u32 = 11;
const PMCR_N_MASK: u64 = 0x1f << PMCR_N_SHIFT;
/// What a guest's PMCR_EL0 write keeps: E, D, DP, LC (P and C are actions; X, exporting
/// events, stays off).
pub const PMCR_WRITABLE: u64 = PMCR_E | PMCR_D | PMCR_DP | PMCR_LC;

/// The cycle counter's bit in PMCNTEN/PMINTEN/PMOVS.
pub const CYCLE: u64 = 1 << 31;

/// PMEVTYPER<n>_EL0 / PMCCFILTR_EL0 filter bits kept: P (31, EL1), U (30, EL0), NSK (29),
/// NSU (28). NSH (27, EL2), M (26, EL3), MT (25) and SH (24, Secure EL2) are forced to 0:
/// a guest never counts at EL2 or above.
const FILTER_KEEP: u64 = 0xf << 28;

/// The largest number of event counters (PMCR_EL0.N is five bits; 31 is the cycle counter).
pub const MAX_COUNTERS: usize = 31;

/// Whether a PMU version field of ID_AA64DFR0_EL1 (PMUVer [11:8]) is a PMUv3 (0 = none,
/// 0xf = IMPLEMENTATION DEFINED, not PMUv3).
pub fn is_pmuv3(pmuver: u64) -> bool {
    pmuver != 0 && pmuver != 0xf
}

/// ID_AA64DFR0_EL1.PMUVer as a VM with a PMU sees it: the hardware's, at most [`PMUVER_MAX`].
pub fn guest_pmuver(hw_dfr0: u64) -> u64 {
    let v = (hw_dfr0 >> 8) & 0xf;
    if is_pmuv3(v) { v.min(PMUVER_MAX) } else { 0 }
}

/// An ID register value (`S3_0_C0_C<crm>_<op2>`, already sanitized: PMUVer clear) with the
/// VM's PMUVer (0 without a PMU) in ID_AA64DFR0_EL1.
#[inline(always)]
pub fn id_value(crm: u8, op2: u8, v: u64, pmuver: u8) -> u64 {
    if (crm, op2) == (5, 0) {
        v | (u64::from(pmuver) << 8)
    } else {
        v
    }
}

/// An event type or cycle-counter filter value as the hardware may hold it for a guest:
/// the EL1/EL0 filter bits and the event number (16 bits from PMUv3p1, 10 before).
pub fn sanitize_evtyper(v: u64, pmuver: u64) -> u64 {
    let event = if pmuver >= 0b0100 { 0xffff } else { 0x3ff };
    v & (FILTER_KEEP | event)
}

/// PMCCFILTR_EL0: the filter bits only (the event field is RES0).
pub fn sanitize_ccfilter(v: u64) -> u64 {
    v & FILTER_KEEP
}

/// A vCPU's PMU (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PmuState {
    /// Event counters offered (PMCR_EL0.N); the VM has a PMU only with `present`.
    pub n: u8,
    /// Whether the VM has a PMU (its DT node, PMUVer non-zero); otherwise PMU accesses UNDEF.
    pub present: bool,
    /// ID_AA64DFR0_EL1.PMUVer the guest sees.
    pub pmuver: u8,
    /// A PMU user: its state goes into the hardware when it takes a CPU.
    pub user: bool,
    /// Its state is in this CPU's hardware now.
    pub live: bool,
    /// Saved while not live: PMCR_EL0 (the [`PMCR_WRITABLE`] bits).
    pub pmcr: u64,
    /// Saved while not live: PMCNTENSET_EL0, PMOVSSET_EL0.
    pub cnten: u64,
    pub ovs: u64,
    /// Always the guest's: PMINTENSET_EL1, PMSELR_EL0, PMUSERENR_EL0.
    pub inten: u64,
    pub selr: u64,
    pub userenr: u64,
    /// Saved while not live: the counters and their types.
    pub ccntr: u64,
    pub ccfiltr: u64,
    pub evcntr: [u64; MAX_COUNTERS],
    pub evtyper: [u64; MAX_COUNTERS],
}

impl PmuState {
    /// The state of a vCPU of a VM with (`n` counters, `pmuver`) or without a PMU.
    pub fn new(present: bool, n: u8, pmuver: u8) -> Self {
        Self {
            present,
            n: n.min(MAX_COUNTERS as u8),
            pmuver,
            ..Default::default()
        }
    }

    /// Bits of the guest's counters in PMCNTEN/PMINTEN/PMOVS: the cycle counter and `n`
    /// event counters.
    pub fn mask(&self) -> u64 {
        CYCLE | ((1u64 << self.n) - 1)
    }

    /// The reset state of the same PMU (vCPU reset).
    pub fn reset(&mut self) {
        *self = Self::new(self.present, self.n, self.pmuver);
    }

    /// Whether the overflow interrupt is asserted given the overflow flags and PMCR_EL0.
    pub fn level(&self, ovs: u64, pmcr: u64) -> bool {
        pmcr & PMCR_E != 0 && ovs & self.inten & self.mask() != 0
    }

    /// The PMINTENSET value the hardware gets: the guest's while the line is low, none while
    /// the virtual line is high (the physical interrupt must not fire again).
    pub fn hw_inten(&self, level: bool) -> u64 {
        if level { 0 } else { self.inten & self.mask() }
    }
}

/// A PMU register of the hardware, as [`PmuHw`] accesses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwReg {
    Pmcr,
    CntenSet,
    CntenClr,
    IntenSet,
    IntenClr,
    OvsSet,
    OvsClr,
    Swinc,
    Ccntr,
    Ccfiltr,
    Ceid0,
    Ceid1,
    Userenr,
    Evcntr(u8),
    Evtyper(u8),
}

/// The CPU's PMU (arch::aarch64::pmu), or a model of it in the tests.
pub trait PmuHw {
    fn read(&mut self, r: HwReg) -> u64;
    fn write(&mut self, r: HwReg, v: u64);
}

/// A guest-visible PMU register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Pmcr,
    CntenSet,
    CntenClr,
    OvsClr,
    Swinc,
    Selr,
    Ceid0,
    Ceid1,
    Ccntr,
    Xevtyper,
    Xevcntr,
    Userenr,
    IntenSet,
    IntenClr,
    OvsSet,
    /// PMEVCNTR<n>_EL0.
    Evcntr(u8),
    /// PMEVTYPER<n>_EL0; n = 31 is PMCCFILTR_EL0.
    Evtyper(u8),
}

/// Which PMU register a trapped access names, if it is one (op0 = 3, CRn = 9 or 14).
pub fn decode(acc: &SysRegAccess) -> Option<Reg> {
    if acc.op0 != 3 {
        return None;
    }
    let r = match (acc.op1, acc.crn, acc.crm, acc.op2) {
        (3, 9, 12, 0) => Reg::Pmcr,
        (3, 9, 12, 1) => Reg::CntenSet,
        (3, 9, 12, 2) => Reg::CntenClr,
        (3, 9, 12, 3) => Reg::OvsClr,
        (3, 9, 12, 4) => Reg::Swinc,
        (3, 9, 12, 5) => Reg::Selr,
        (3, 9, 12, 6) => Reg::Ceid0,
        (3, 9, 12, 7) => Reg::Ceid1,
        (3, 9, 13, 0) => Reg::Ccntr,
        (3, 9, 13, 1) => Reg::Xevtyper,
        (3, 9, 13, 2) => Reg::Xevcntr,
        (3, 9, 14, 0) => Reg::Userenr,
        (0, 9, 14, 1) => Reg::IntenSet,
        (0, 9, 14, 2) => Reg::IntenClr,
        (3, 9, 14, 3) => Reg::OvsSet,
        // PMEVCNTR<n>_EL0: CRm = 0b10:n[4:3], op2 = n[2:0]; PMEVTYPER<n>_EL0: CRm = 0b11:...
        (3, 14, crm @ 8..=11, op2) => Reg::Evcntr(((crm - 8) << 3) | op2),
        (3, 14, crm @ 12..=15, op2) => Reg::Evtyper(((crm - 12) << 3) | op2),
        _ => return None,
    };
    Some(r)
}

/// Whether EL0 may access `reg` (a read, or a write) under PMUSERENR_EL0 `userenr`: EN (0)
/// allows every EL0-accessible register, SW (1) PMSWINC_EL0 writes, CR (2) PMCCNTR_EL0 reads,
/// ER (3) event counter reads and PMSELR_EL0 (ARM ARM D24, PMUSERENR_EL0). The EL1-only
/// PMINTENSET/CLR_EL1 never are. The CPU checks the same before it traps to EL2 (the
/// guest's PMUSERENR_EL0 is written through), so this only matters while the hardware value
/// is not the guest's yet.
pub fn el0_allowed(reg: Reg, read: bool, userenr: u64) -> bool {
    let en = userenr & 1 != 0;
    match reg {
        Reg::IntenSet | Reg::IntenClr => false,
        Reg::Swinc if !read => en || userenr & 0b10 != 0,
        Reg::Ccntr if read => en || userenr & 0b100 != 0,
        Reg::Evcntr(_) | Reg::Xevcntr if read => en || userenr & 0b1000 != 0,
        Reg::Selr => en || userenr & 0b1000 != 0,
        _ => en,
    }
}

/// The outcome of an emulated PMU access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Read(u64),
    Written,
    Undefined,
}

/// Performs a guest access to `reg` (a write of `write`, or a read) on a live PMU user's
/// state: counters in `hw`, the rest in `st`. Read-only registers written, write-only ones
/// read, and counters the guest does not have (direct accesses) are UNDEFINED; the indirect
/// PMXEV* registers with PMSELR_EL0.SEL naming a counter that does not exist are RAZ/WI
/// (CONSTRAINED UNPREDICTABLE, ARM ARM D13.5). Call [`sync_irq`] afterwards.
pub fn access(st: &mut PmuState, hw: &mut dyn PmuHw, reg: Reg, write: Option<u64>) -> Outcome {
    use Outcome::*;
    let mask = st.mask();
    let n = st.n;
    match (reg, write) {
        (Reg::Pmcr, None) => {
            let v = hw.read(HwReg::Pmcr);
            Read((v & !(PMCR_N_MASK | PMCR_P | PMCR_C | PMCR_X)) | (u64::from(n) << PMCR_N_SHIFT))
        }
        (Reg::Pmcr, Some(v)) => {
            if v & PMCR_P != 0 {
                for i in 0..n {
                    hw.write(HwReg::Evcntr(i), 0);
                }
            }
            if v & PMCR_C != 0 {
                hw.write(HwReg::Ccntr, 0);
            }
            let keep = hw.read(HwReg::Pmcr) & !(PMCR_WRITABLE | PMCR_P | PMCR_C | PMCR_X);
            hw.write(HwReg::Pmcr, keep | (v & PMCR_WRITABLE));
            Written
        }
        (Reg::CntenSet | Reg::CntenClr, None) => Read(hw.read(HwReg::CntenSet) & mask),
        (Reg::CntenSet, Some(v)) => set(hw, HwReg::CntenSet, v & mask),
        (Reg::CntenClr, Some(v)) => set(hw, HwReg::CntenClr, v & mask),
        (Reg::OvsSet | Reg::OvsClr, None) => Read(hw.read(HwReg::OvsSet) & mask),
        (Reg::OvsSet, Some(v)) => set(hw, HwReg::OvsSet, v & mask),
        (Reg::OvsClr, Some(v)) => set(hw, HwReg::OvsClr, v & mask),
        (Reg::IntenSet | Reg::IntenClr, None) => Read(st.inten & mask),
        (Reg::IntenSet, Some(v)) => {
            st.inten |= v & mask;
            Written
        }
        (Reg::IntenClr, Some(v)) => {
            st.inten &= !(v & mask);
            Written
        }
        // Software increment of event counters only (bit 31 is RES0/WI).
        (Reg::Swinc, Some(v)) => set(hw, HwReg::Swinc, v & mask & !CYCLE),
        (Reg::Selr, None) => Read(st.selr),
        (Reg::Selr, Some(v)) => {
            st.selr = v & 0x1f;
            Written
        }
        (Reg::Ceid0, None) => Read(hw.read(HwReg::Ceid0) & ceid_mask(st.pmuver)),
        (Reg::Ceid1, None) => Read(hw.read(HwReg::Ceid1) & ceid_mask(st.pmuver)),
        (Reg::Ccntr, None) => Read(hw.read(HwReg::Ccntr)),
        (Reg::Ccntr, Some(v)) => set(hw, HwReg::Ccntr, v),
        (Reg::Userenr, None) => Read(st.userenr),
        (Reg::Userenr, Some(v)) => {
            // EN (0), SW (1), CR (2), ER (3).
            st.userenr = v & 0xf;
            set(hw, HwReg::Userenr, st.userenr)
        }
        (Reg::Evcntr(i), w) => match counter(st, i) {
            Some(i) => counter_access(st, hw, i, false, w),
            None => Undefined,
        },
        (Reg::Evtyper(31), w) => counter_access(st, hw, 31, true, w),
        (Reg::Evtyper(i), w) => match counter(st, i) {
            Some(i) => counter_access(st, hw, i, true, w),
            None => Undefined,
        },
        (Reg::Xevtyper, w) => {
            let sel = st.selr as u8;
            if sel == 31 || sel < n {
                counter_access(st, hw, sel, true, w)
            } else {
                raz_wi(w)
            }
        }
        // PMSELR_EL0.SEL = 31 with PMXEVCNTR_EL0 is CONSTRAINED UNPREDICTABLE too: RAZ/WI.
        (Reg::Xevcntr, w) => match counter(st, st.selr as u8) {
            Some(i) => counter_access(st, hw, i, false, w),
            None => raz_wi(w),
        },
        // Writes of read-only registers, reads of PMSWINC_EL0.
        (Reg::Ceid0 | Reg::Ceid1, Some(_)) | (Reg::Swinc, None) => Undefined,
    }
}

fn set(hw: &mut dyn PmuHw, r: HwReg, v: u64) -> Outcome {
    hw.write(r, v);
    Outcome::Written
}

fn raz_wi(w: Option<u64>) -> Outcome {
    match w {
        Some(_) => Outcome::Written,
        None => Outcome::Read(0),
    }
}

/// Event counter `i` if the guest has it.
fn counter(st: &PmuState, i: u8) -> Option<u8> {
    (i < st.n).then_some(i)
}

/// PMCEID0/1_EL0: the low 32 bits (common events 0x00..0x3f) always; the high ones
/// (0x4000..0x403f) only from PMUv3p1.
fn ceid_mask(pmuver: u8) -> u64 {
    if pmuver >= 0b0100 {
        u64::MAX
    } else {
        0xffff_ffff
    }
}

/// An event counter (`typer` false) or its type (true) for counter `i` (31: the cycle
/// counter's filter, PMCCFILTR_EL0).
fn counter_access(
    st: &PmuState,
    hw: &mut dyn PmuHw,
    i: u8,
    typer: bool,
    w: Option<u64>,
) -> Outcome {
    let r = match (typer, i) {
        (true, 31) => HwReg::Ccfiltr,
        (true, i) => HwReg::Evtyper(i),
        (false, i) => HwReg::Evcntr(i),
    };
    match w {
        // PMUv3 before v3p5: 32-bit event counters (the CPU's may be 64 bits wide).
        None if matches!(r, HwReg::Evcntr(_)) => Outcome::Read(hw.read(r) & 0xffff_ffff),
        None => Outcome::Read(hw.read(r)),
        Some(v) => {
            let v = match r {
                HwReg::Ccfiltr => sanitize_ccfilter(v),
                HwReg::Evtyper(_) => sanitize_evtyper(v, u64::from(st.pmuver)),
                // PMUv3 before v3p5: 32-bit event counters.
                _ => v & 0xffff_ffff,
            };
            set(hw, r, v)
        }
    }
}

/// Re-evaluates the overflow interrupt of a live PMU user after a trapped access: returns the
/// level of the virtual PPI 23 and gives the hardware the PMINTENSET that goes with it.
pub fn sync_irq(st: &PmuState, hw: &mut dyn PmuHw) -> bool {
    let level = st.level(hw.read(HwReg::OvsSet), hw.read(HwReg::Pmcr));
    let inten = st.hw_inten(level);
    hw.write(HwReg::IntenClr, !inten & 0xffff_ffff);
    hw.write(HwReg::IntenSet, inten);
    level
}

#[cfg(test)]
#[path = "pmu_tests.rs"]
mod tests;
