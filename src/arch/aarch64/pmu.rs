//! The hardware side of guest PMUs (policy and emulation in `vm::pmu`): the CPU's PMU
//! registers as [`PmuHw`], loading a PMU user's state into the CPU and saving it.
//!
//! EL2 reaches every PMU register and every counter whatever MDCR_EL2.HPMN says (HPMN only
//! limits EL1 and EL0, ARM ARM D13.4 "Partitioning the counters"), and none of them has an
//! EL2 copy or an `_EL12` alias, so the same accessors serve VHE and non-VHE. The guest's
//! counters may stay loaded while the hypervisor runs: it never counts at EL2, because every
//! filter value the hardware holds for a guest has NSH = 0 (`vm::pmu::sanitize_evtyper`).

use core::arch::asm;

use crate::vm::pmu::{CYCLE, HwReg, PMCR_WRITABLE, PmuHw, PmuState};

macro_rules! rd {
    ($name:expr) => {{
        let v: u64;
        // SAFETY: reads a PMU register from EL2, where every PMU register is accessible; no
        // side effects.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

macro_rules! wr {
    ($name:expr, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: changes only the guest-owned performance monitors; the hypervisor does not
        // use them and is never counted (module documentation).
        unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
    }};
}

/// Generates `read_counter(typer, n)` / `write_counter(typer, n, v)` over PMEVCNTR<n>_EL0
/// (`typer` false) and PMEVTYPER<n>_EL0 (true): the number is part of the encoding.
macro_rules! counters {
    ($($n:literal),*) => {
        fn read_counter(typer: bool, n: u8) -> u64 {
            match (typer, n) {
                $(
                    (false, $n) => rd!(concat!("pmevcntr", $n, "_el0")),
                    (true, $n) => rd!(concat!("pmevtyper", $n, "_el0")),
                )*
                _ => 0,
            }
        }

        fn write_counter(typer: bool, n: u8, v: u64) {
            match (typer, n) {
                $(
                    (false, $n) => wr!(concat!("pmevcntr", $n, "_el0"), v),
                    (true, $n) => wr!(concat!("pmevtyper", $n, "_el0"), v),
                )*
                _ => {}
            }
        }
    };
}
counters!(
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30
);

/// This CPU's PMU.
pub struct Hw;

impl PmuHw for Hw {
    fn read(&mut self, r: HwReg) -> u64 {
        match r {
            HwReg::Pmcr => rd!("pmcr_el0"),
            HwReg::CntenSet | HwReg::CntenClr => rd!("pmcntenset_el0"),
            HwReg::IntenSet | HwReg::IntenClr => rd!("pmintenset_el1"),
            HwReg::OvsSet | HwReg::OvsClr => rd!("pmovsset_el0"),
            HwReg::Swinc => 0,
            HwReg::Ccntr => rd!("pmccntr_el0"),
            HwReg::Ccfiltr => rd!("pmccfiltr_el0"),
            HwReg::Ceid0 => rd!("pmceid0_el0"),
            HwReg::Ceid1 => rd!("pmceid1_el0"),
            HwReg::Userenr => rd!("pmuserenr_el0"),
            HwReg::Evcntr(n) => read_counter(false, n),
            HwReg::Evtyper(n) => read_counter(true, n),
        }
    }

    fn write(&mut self, r: HwReg, v: u64) {
        match r {
            HwReg::Pmcr => wr!("pmcr_el0", v),
            HwReg::CntenSet => wr!("pmcntenset_el0", v),
            HwReg::CntenClr => wr!("pmcntenclr_el0", v),
            HwReg::IntenSet => wr!("pmintenset_el1", v),
            HwReg::IntenClr => wr!("pmintenclr_el1", v),
            HwReg::OvsSet => wr!("pmovsset_el0", v),
            HwReg::OvsClr => wr!("pmovsclr_el0", v),
            HwReg::Swinc => wr!("pmswinc_el0", v),
            HwReg::Ccntr => wr!("pmccntr_el0", v),
            HwReg::Ccfiltr => wr!("pmccfiltr_el0", v),
            HwReg::Ceid0 | HwReg::Ceid1 => {}
            HwReg::Userenr => wr!("pmuserenr_el0", v),
            HwReg::Evcntr(n) => write_counter(false, n, v),
            HwReg::Evtyper(n) => write_counter(true, n, v),
        }
    }
}

fn isb() {
    // SAFETY: barrier only. Direct writes to the PMU registers take effect for later
    // instructions after a context synchronization event (ARM ARM D24.1.2 "Synchronization
    // requirements for System registers"); the ERET into the guest is one too, this keeps
    // EL2's own reads and the order "stop, then save" exact.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// PMCR_EL0.N: the event counters this CPU has (read at EL2: all of them).
pub fn host_counters() -> u8 {
    ((rd!("pmcr_el0") >> 11) & 0x1f) as u8
}

/// Loads a PMU user's state into this CPU and marks it live: counters and types first, then
/// the enables, overflow flags and PMCR_EL0 last (so nothing counts half loaded).
#[inline(never)]
pub fn load(st: &mut PmuState) {
    let mut hw = Hw;
    for i in 0..st.n {
        hw.write(HwReg::Evtyper(i), st.evtyper[usize::from(i)]);
        hw.write(HwReg::Evcntr(i), st.evcntr[usize::from(i)]);
    }
    hw.write(HwReg::Ccfiltr, st.ccfiltr);
    hw.write(HwReg::Ccntr, st.ccntr);
    let all = u64::from(u32::MAX);
    hw.write(HwReg::OvsClr, all);
    hw.write(HwReg::OvsSet, st.ovs);
    hw.write(HwReg::CntenClr, all);
    hw.write(HwReg::CntenSet, st.cnten);
    let level = st.level(st.ovs, st.pmcr);
    hw.write(HwReg::IntenClr, all);
    hw.write(HwReg::IntenSet, st.hw_inten(level));
    hw.write(HwReg::Userenr, st.userenr);
    let keep = hw.read(HwReg::Pmcr) & !PMCR_WRITABLE;
    hw.write(HwReg::Pmcr, keep | st.pmcr);
    isb();
    st.live = true;
}

/// Stops the PMU (PMCR_EL0.E = 0), then saves a live user's state and leaves every counter,
/// overflow interrupt and EL0 access disabled: a vCPU switched out stops counting.
#[inline(never)]
pub fn save(st: &mut PmuState) {
    let mut hw = Hw;
    let pmcr = hw.read(HwReg::Pmcr);
    hw.write(HwReg::Pmcr, pmcr & !PMCR_WRITABLE);
    isb();
    st.pmcr = pmcr & PMCR_WRITABLE;
    let mask = st.mask();
    st.cnten = hw.read(HwReg::CntenSet) & mask;
    st.ovs = hw.read(HwReg::OvsSet) & mask;
    st.ccntr = hw.read(HwReg::Ccntr);
    st.ccfiltr = hw.read(HwReg::Ccfiltr);
    for i in 0..st.n {
        st.evtyper[usize::from(i)] = hw.read(HwReg::Evtyper(i));
        st.evcntr[usize::from(i)] = hw.read(HwReg::Evcntr(i));
    }
    quiesce();
    st.live = false;
}

/// Disables every counter, overflow interrupt and EL0 access of this CPU's PMU (also what
/// the physical overflow interrupt does when no PMU user is running to take it).
pub fn quiesce() {
    let mut hw = Hw;
    let all = u64::from(u32::MAX) | CYCLE;
    hw.write(HwReg::CntenClr, all);
    hw.write(HwReg::IntenClr, all);
    hw.write(HwReg::Userenr, 0);
    let pmcr = hw.read(HwReg::Pmcr);
    hw.write(HwReg::Pmcr, pmcr & !PMCR_WRITABLE);
    isb();
}

/// Clears the hardware overflow-interrupt enables (the virtual line is raised instead).
pub fn mask_irq() {
    Hw.write(HwReg::IntenClr, u64::from(u32::MAX));
    isb();
}
