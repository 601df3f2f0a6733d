//! elvisor PMU guest: PMUv3 in a VM counts this VM's cycles and instructions at EL1/EL0 only,
//! raises its overflow interrupt through the vGIC, and keeps its counters when the vCPU is
//! switched out; a VM configured without a PMU sees none.
//!
//! ```text
//!   role main (default)
//!   id        ID_AA64DFR0_EL1.PMUVer is a PMUv3, PMCR_EL0.N >= 2, the DT has an
//!             "arm,armv8-pmuv3" node with PPI 7 (INTID 23)
//!   count     cycle counter and event counter 0 (INST_RETIRED if PMCEID0 has it, else
//!             CPU_CYCLES) over a loop: both count, instructions between the loop's length and
//!             20x it; PMCR.P/C zero them
//!   filter    the same event with PMEVTYPER0.P = 1 (EL1 excluded): nothing counted at EL1
//!   no-el2    200 hypercalls (PSCI_VERSION): fewer than 60 instructions (or cycles) per call
//!             are counted, so the hypervisor's handling of them (hundreds) is not
//!   overflow  counter 1 preset 2000 below its 32-bit overflow, PMINTENSET bit 1: the PMU
//!             interrupt (INTID 23) is taken exactly once, PMOVSSET bit 1 set in the handler,
//!             and not again once cleared
//!   undef     PMEVTYPER30_EL0 (beyond PMCR.N) is UNDEFINED
//!   switch    `pmu.rounds` rounds: counter 0 counts INST_RETIRED/CPU_CYCLES at EL1 while
//!             the vCPU yields (elvisor's YIELD hypercall) to the other VMs of its CPU, which
//!             reset and reprogram their own PMU: the count never goes backwards and each
//!             yield adds less than one busy loop of another VM
//!   role disturb: `pmu.rounds` rounds of PMCR.P|C|E, other counter values and types, a busy
//!             loop and a yield (no checks of its own besides `count`)
//!   role none: PMUVer = 0, PMCR_EL0 UNDEFINED, no PMU node in the DT
//! ```
//!
//! Output: `PMU PASS/FAIL: <check>` lines, then `PMU RESULT: passed=N failed=M` and SYSTEM_OFF.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::hint::black_box;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use elvisor_guest_rt::arch::features::IdReg;
use elvisor_guest_rt::arch::{irq, pmu};
use elvisor_guest_rt::exception::ec;
use elvisor_guest_rt::gic::{self, Gic};
use elvisor_guest_rt::{BootInfo, Report, dt};

elvisor_guest_rt::entry!(main);

const PMU_INTID: u32 = 23;
const E: u64 = 1 << 0;
const P: u64 = 1 << 1;
const C: u64 = 1 << 2;
const LC: u64 = 1 << 6;
const CYCLE: u64 = 1 << 31;
/// PMEVTYPER.P: do not count at EL1.
const EXCL_EL1: u64 = 1 << 31;
const INST_RETIRED: u64 = 0x08;
const CPU_CYCLES: u64 = 0x11;
/// Iterations of the measured loop.
const LOOP: u64 = 20_000;

static IRQS: AtomicU32 = AtomicU32::new(0);
static OVS_SEEN: AtomicU64 = AtomicU64::new(0);
static OTHER_IRQS: AtomicU32 = AtomicU32::new(0);

fn busy(n: u64) {
    let mut x = 0u64;
    for i in 0..n {
        x = black_box(x.wrapping_add(i));
    }
    black_box(x);
}

fn yield_now() {
    let _ = elvisor_guest_rt::smccc::call(elvisor_guest_rt::abi::hypercall::YIELD, 0, 0, 0);
}

fn main(boot: &BootInfo) {
    let mut report = Report::new("PMU");
    irq::mask();
    let arg = |k: &str| boot.bootarg(k);
    let role = arg("pmu.role").unwrap_or("main");
    let rounds: u64 = boot.bootarg_parse("pmu.rounds").unwrap_or(100);
    let dfr0 = IdReg::Dfr0.read();
    let pmuver = (dfr0 >> 8) & 0xf;
    let node = boot
        .fdt
        .as_ref()
        .and_then(|f| dt::find_compatible(f, &["arm,armv8-pmuv3"]));
    report.note(format_args!(
        "elvisor PMU guest: role={role} DFR0={dfr0:#x} PMUVer={pmuver} DT node={}",
        node.is_some()
    ));

    if role == "none" {
        report.check(
            "id",
            pmuver == 0 && node.is_none(),
            format_args!("PMUVer={pmuver}, DT node {}", node.is_some()),
        );
        match pmu::try_read_pmcr() {
            Err(f) if f.esr.ec() == ec::UNKNOWN => report.pass("undef"),
            Err(f) => report.fail("undef", format_args!("PMCR_EL0: {f}")),
            Ok(v) => report.fail("undef", format_args!("PMCR_EL0 read {v:#x}")),
        }
        report.finish();
        return;
    }

    let n = (pmu::pmcr() >> 11) & 0x1f;
    let intid = node
        .and_then(|nd| dt::gic_interrupt(nd, 0))
        .and_then(|i| i.intid());
    report.check(
        "id",
        pmuver != 0 && pmuver != 0xf && n >= 2 && intid == Some(PMU_INTID),
        format_args!("PMUVer={pmuver} N={n} DT interrupt {intid:?}"),
    );
    let insns = pmu::pmceid(0) & (1 << INST_RETIRED) != 0;
    let event = if insns { INST_RETIRED } else { CPU_CYCLES };
    report.note(format_args!(
        "N={n} PMCEID0={:#x} event {event:#x} ({})",
        pmu::pmceid(0),
        if insns {
            "instructions"
        } else {
            "cycles: no INST_RETIRED"
        }
    ));
    if role == "disturb" {
        count(&mut report, event);
        disturb(rounds);
        report.finish();
        return;
    }
    count(&mut report, event);
    filter(&mut report, event);
    no_el2(&mut report, event);
    overflow(&mut report, boot, event);
    match pmu::try_write_pmevtyper30(CPU_CYCLES) {
        Err(f) if f.esr.ec() == ec::UNKNOWN || n > 30 => report.pass("undef"),
        Err(f) => report.fail("undef", format_args!("PMEVTYPER30_EL0: {f}")),
        Ok(()) => report.fail("undef", format_args!("PMEVTYPER30_EL0 written with N={n}")),
    }
    switch(&mut report, event, rounds);
    report.finish();
}

/// Counts `event` on counter 0 and cycles over `f` at EL1 (and EL0); returns (cycles, events).
fn measure(typer: u64, f: impl FnOnce()) -> (u64, u64) {
    pmu::set_pmcr(P | C | LC);
    pmu::set_pmccfiltr(typer & EXCL_EL1);
    pmu::set_pmevtyper0(typer);
    pmu::set_pmcntenset(CYCLE | 1);
    pmu::set_pmcr(E | LC);
    f();
    pmu::set_pmcr(LC);
    let r = (pmu::pmccntr(), pmu::pmevcntr0());
    pmu::set_pmcntenclr(CYCLE | 1);
    r
}

fn count(report: &mut Report, event: u64) {
    let (cycles, events) = measure(event, || busy(LOOP));
    report.note(format_args!(
        "{LOOP} iterations: {cycles} cycles, {events} events"
    ));
    let ok = cycles > 0 && (LOOP..=LOOP * 20).contains(&events);
    // PMUv3 before v3p5 (what elvisor offers, PMUVer < 6): 32-bit event counters.
    pmu::set_pmevcntr1(u64::MAX);
    let wide = pmu::pmevcntr1();
    let pmuver = (IdReg::Dfr0.read() >> 8) & 0xf;
    let want = if pmuver < 6 { 0xffff_ffff } else { u64::MAX };
    // PMCR.P and C zero the counters.
    pmu::set_pmcr(P | C);
    let zeroed = pmu::pmccntr() == 0 && pmu::pmevcntr0() == 0;
    report.check(
        "count",
        ok && zeroed && wide == want,
        format_args!("cycles {cycles} events {events} zeroed {zeroed} PMEVCNTR1 {wide:#x}"),
    );
}

fn filter(report: &mut Report, event: u64) {
    let (cycles, events) = measure(event | EXCL_EL1, || busy(LOOP));
    report.check(
        "filter",
        cycles < 100 && events < 100,
        format_args!("with EL1 excluded: {cycles} cycles, {events} events at EL1"),
    );
}

fn no_el2(report: &mut Report, event: u64) {
    const CALLS: u64 = 200;
    let (cycles, events) = measure(event, || {
        for _ in 0..CALLS {
            // PSCI_VERSION: handled by the hypervisor, a few guest instructions each.
            let _ = elvisor_guest_rt::smccc::call(0x8400_0000, 0, 0, 0);
        }
    });
    report.note(format_args!(
        "{CALLS} hypercalls: {cycles} cycles, {events} events"
    ));
    report.check(
        "no-el2",
        events < CALLS * 60 && events > 0,
        format_args!("{events} events for {CALLS} hypercalls"),
    );
}

fn on_irq() {
    let Some(gic) = gic::installed() else {
        return;
    };
    let iar = gic.acknowledge();
    if iar.is_special() {
        return;
    }
    if iar.intid() == PMU_INTID {
        let ovs = pmu::pmovsclr();
        OVS_SEEN.fetch_or(ovs, Ordering::SeqCst);
        // Clear the flag: the level falls before the EOI.
        pmu::set_pmovsclr(ovs);
        IRQS.fetch_add(1, Ordering::SeqCst);
    } else {
        OTHER_IRQS.fetch_add(1, Ordering::SeqCst);
    }
    gic.end_of_interrupt(iar);
}

fn overflow(report: &mut Report, boot: &BootInfo, event: u64) {
    // `pmu.spin-hvc=0` leaves the hypercalls out (docs/qemu-bugs.md).
    let spin_hvc = boot.bootarg("pmu.spin-hvc") != Some("0");
    let gic = match Gic::discover(boot.fdt.as_ref()).and_then(|g| {
        g.init_distributor()?;
        g.wake_redistributor()?;
        g.init_cpu()?;
        Ok(g)
    }) {
        Ok(g) => g,
        Err(e) => {
            report.fail("overflow", format_args!("GIC bring-up: {e:?}"));
            return;
        }
    };
    gic::install(&gic);
    irq::set_handler(Some(on_irq));
    gic.enable(PMU_INTID);
    pmu::set_pmcr(P | C | LC);
    pmu::set_pmevtyper1(event);
    pmu::set_pmevcntr1(0xffff_ffff - 2000);
    pmu::set_pmovsclr(u64::from(u32::MAX));
    pmu::set_pmintenset(1 << 1);
    pmu::set_pmcntenset(1 << 1);
    pmu::set_pmcr(E | LC);
    irq::unmask();
    let mut spins = 0u64;
    while IRQS.load(Ordering::SeqCst) == 0 && spins < 1000 {
        busy(1000);
        // QEMU (10.0, TCG) notices an event counter's overflow at the next change of
        // exception level, not while EL1 code runs on: one hypercall per spin gives it one.
        // Real hardware raises the interrupt at the overflow.
        if spin_hvc {
            let _ = elvisor_guest_rt::smccc::call(0x8400_0000, 0, 0, 0);
        }
        spins += 1;
    }
    // Keep counting a while: the cleared overflow must not be signalled again.
    busy(LOOP);
    irq::mask();
    pmu::set_pmcr(LC);
    pmu::set_pmintenclr(1 << 1);
    pmu::set_pmcntenclr(1 << 1);
    gic.disable(PMU_INTID);
    let irqs = IRQS.load(Ordering::SeqCst);
    let ovs = OVS_SEEN.load(Ordering::SeqCst);
    report.check(
        "overflow",
        irqs == 1 && ovs & 2 != 0 && pmu::pmovsset() & 2 == 0 && !gic.is_pending(PMU_INTID),
        format_args!(
            "{irqs} PMU interrupts (other {}), PMOVS seen {ovs:#x}, after {spins} spins",
            OTHER_IRQS.load(Ordering::SeqCst)
        ),
    );
}

/// Counter 0 counts across yields to the other VMs on this CPU.
fn switch(report: &mut Report, event: u64, rounds: u64) {
    pmu::set_pmcr(P | C | LC);
    pmu::set_pmevtyper0(event);
    pmu::set_pmevcntr0(0);
    pmu::set_pmcntenset(1);
    pmu::set_pmcr(E | LC);
    let mut last = pmu::pmevcntr0();
    let mut worst = 0u64;
    let mut bad = 0u64;
    for _ in 0..rounds {
        busy(100);
        let before = pmu::pmevcntr0();
        yield_now();
        let after = pmu::pmevcntr0();
        if before < last || after < before {
            bad += 1;
        }
        worst = worst.max(after.wrapping_sub(before));
        last = after;
    }
    pmu::set_pmcr(LC);
    report.note(format_args!(
        "{rounds} yields: largest step across a yield {worst}, total {last}"
    ));
    // The disturbing VM runs a busy loop of LOOP iterations (> LOOP instructions) per round.
    report.check(
        "switch",
        bad == 0 && worst < LOOP && last > 0,
        format_args!(
            "{rounds} yields: {bad} went backwards, largest step across a yield {worst}, total {last}"
        ),
    );
}

/// Another VM's PMU use on the same CPU: resets, enables all, writes its own values.
fn disturb(rounds: u64) {
    for r in 0..rounds {
        pmu::set_pmcr(P | C | LC);
        pmu::set_pmevtyper0(CPU_CYCLES);
        pmu::set_pmevcntr0(0x8000_0000 + r);
        pmu::set_pmevtyper1(INST_RETIRED);
        pmu::set_pmcntenset(CYCLE | 3);
        pmu::set_pmcr(E | LC);
        busy(LOOP);
        yield_now();
    }
    pmu::set_pmcr(P | C);
    pmu::set_pmcntenclr(CYCLE | 3);
}
