//! elvisor spy guest: two VMs time-sliced on one physical CPU, one planting values in the
//! per-vCPU GIC CPU-interface and RAS state, the other watching that it never sees them and
//! that its interrupts keep coming. A regression test for state a world switch must swap.
//!
//! Bootargs (`/chosen/bootargs` of the VM):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `spy.role=plant\|watch\|plant-all\|watch-all` | watch | which half of which test this VM is |
//! | `spy.plant-ms=P` | 300 | plant, plant-all: how long to keep re-writing the markers before SYSTEM_OFF |
//! | `spy.watch-ms=W` | 1500 | watch, watch-all: how long to watch |
//! | `spy.tail-ms=T` | 700 | watch, watch-all: the last T ms must see a timer interrupt (the planter is gone by then) |
//! | `spy.period-ms=N` | 10 | watch, watch-all: virtual timer period |
//! | `spy.max-pending-ms=M` | 300 | watch, watch-all: a timer condition pending longer without its IRQ fails |
//! | `spy.sweep-ms=S` | 5 | watch-all: time between two sweeps of every readable register |
//! | `spy.plant-codes=LO..HI` | all | plant-all: write only encodings with LO <= code < HI (15-bit code: op0 - 2, op1, CRn, CRm, op2), to bisect a failure |
//!
//! `plant-all` and `watch-all` do the same for every system-register encoding (module [`all`]).
//!
//! What is planted (every register that exists here; the watcher reads the same ones):
//!
//! ```text
//!   GICv3  ICC_AP0R0_EL1 = 0x1         priority 0 active: a vCPU interface that keeps it
//!                                      signals nothing any more (the original attack)
//!          ICC_AP1R0_EL1 = 0x10        priority 0x20 active (above every usual priority)
//!          ICC_AP0R1..3 / AP1R1..3     only where ICC_CTLR_EL1.PRIbits gives 6 or 7 bits
//!          ICC_PMR/BPR0/BPR1/IGRPEN0/CTLR.EOImode   other values than the watcher's
//!   GICv2  GICC_APR = 0x10             (GICV_APR: the vCPU's GICH_APR)
//!          GICC_PMR/BPR/ABPR/CTLR.EOImode
//!   both   DISR_EL1 = 0x8000_0a11      A | AET | EA | DFSC: VDISR_EL2 under HCR_EL2.AMO;
//!                                      skipped where DISR_EL1 is UNDEFINED (no FEAT_RAS)
//! ```
//!
//! The planter writes them, checks they read back, re-writes them every millisecond for
//! `spy.plant-ms` with IRQs masked (so the watcher gets the CPU while they are live), then
//! powers off with PSCI SYSTEM_OFF leaving them set: what a VM that stops leaves on the CPU.
//!
//! The watcher brings its GIC up as the heartbeat guest does, runs the virtual timer every
//! `spy.period-ms` and, for `spy.watch-ms`, reads the registers every millisecond. It never
//! writes the planted ones, so any non-zero value (or a setting other than its own) came from
//! another VM: the first one per register is a FAIL line naming it. It polls the counter rather
//! than sleeping in WFI, so interrupts that stop coming become a FAIL, not a hang.
//!
//! ```text
//!   SPY: watching for 1500 ms: ICC_AP0R0_EL1 ICC_AP1R0_EL1 DISR_EL1 ...
//!   SPY PASS: clean-icc-ap0r0          (one per planted register)
//!   SPY PASS: clean-icc-ap1r0
//!   SPY PASS: clean-disr               (or "SPY: clean-disr: skipped: ..." without FEAT_RAS)
//!   SPY PASS: clean-settings           PMR, BPR, group enables, CTLR as the watcher left them
//!   SPY PASS: vtimer-delivery          never pending spy.max-pending-ms without its IRQ
//!   SPY PASS: irq-after-plant          timer IRQs in the last spy.tail-ms
//!   SPY RESULT: passed=6 failed=0      then PSCI SYSTEM_OFF
//!   PLANT PASS: planted                / PLANT RESULT: passed=1 failed=0 (the planter)
//! ```
//!
//! Without a hypervisor each role passes on its own (`qemu-system-aarch64 -M virt,gic-version=3
//! -cpu max -m 1G -nographic -kernel spy.img`, add `-append spy.role=plant`): one CPU, nothing
//! to share.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod all;

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use elvisor_guest_rt::arch::{gicv3 as icc, irq, probe};
use elvisor_guest_rt::exception::Fault;
use elvisor_guest_rt::gic::{self, Gic, Version, gicc, icc_bits};
use elvisor_guest_rt::gic_setup;
use elvisor_guest_rt::timer::{self, CTL_ENABLE, CTL_IMASK, CTL_ISTATUS, Timer, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, Report};

elvisor_guest_rt::entry!(main);

const DEFAULT_PLANT_MS: u64 = 300;
const DEFAULT_WATCH_MS: u64 = 1_500;
const DEFAULT_TAIL_MS: u64 = 700;
const DEFAULT_PERIOD_MS: u64 = 10;
const DEFAULT_MAX_PENDING_MS: u64 = 300;
const DEFAULT_SWEEP_MS: u64 = 5;
/// How often both roles touch the registers.
const POLL_US: u64 = 1_000;
/// A gap this long between two looks at the timer means the watcher was not running (another
/// VM had the CPU): the pending time starts again, since a vCPU cannot take an IRQ while it is
/// not scheduled. With 10 ms time slices a blocked interrupt still shows up many times over.
const DESCHEDULED_GAP_US: u64 = 50_000;

/// The plant marker of DISR_EL1: A (bit 31, a deferred SError recorded), AET = 0b010
/// (`[12:10]`, restartable), EA (bit 9), DFSC = 0x11 (asynchronous SError).
const DISR_MARKER: u64 = 1 << 31 | 0b010 << 10 | 1 << 9 | 0x11;

/// The planter's priority mask: it would mask the watcher's timer (priority 0xa0) if it leaked.
const PLANT_PMR: u64 = 0x30;

/// Timer interrupts taken by the watcher's handler.
static TIMER_IRQS: AtomicU32 = AtomicU32::new(0);
/// Interrupts that are not the virtual timer.
static OTHER_IRQS: AtomicU32 = AtomicU32::new(0);
/// The virtual timer's INTID and period, for the handler.
static VIRTUAL_INTID: AtomicU32 = AtomicU32::new(27);
static PERIOD_TICKS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Plant,
    Watch,
    PlantAll,
    WatchAll,
}

struct Options {
    role: Result<Role, &'static str>,
    plant_ms: u64,
    watch_ms: u64,
    tail_ms: u64,
    period_ms: u64,
    max_pending_ms: u64,
    sweep_ms: u64,
    /// plant-all: write only encodings whose 15-bit code (op0 - 2, op1, CRn, CRm, op2) is in
    /// this range, for bisecting a failure.
    plant_codes: core::ops::Range<u32>,
}

fn options(boot: &BootInfo) -> Options {
    fn number(boot: &BootInfo, key: &str, default: u64) -> u64 {
        boot.bootarg_parse(key)
            .filter(|&ms| ms > 0)
            .unwrap_or(default)
    }
    let role = match boot.bootarg("spy.role") {
        None | Some("watch") => Ok(Role::Watch),
        Some("plant") => Ok(Role::Plant),
        Some("plant-all") => Ok(Role::PlantAll),
        Some("watch-all") => Ok(Role::WatchAll),
        Some(other) => Err(other),
    };
    let watch_ms = number(boot, "spy.watch-ms", DEFAULT_WATCH_MS);
    Options {
        role,
        plant_ms: number(boot, "spy.plant-ms", DEFAULT_PLANT_MS),
        watch_ms,
        tail_ms: number(boot, "spy.tail-ms", DEFAULT_TAIL_MS).min(watch_ms),
        period_ms: number(boot, "spy.period-ms", DEFAULT_PERIOD_MS),
        max_pending_ms: number(boot, "spy.max-pending-ms", DEFAULT_MAX_PENDING_MS),
        sweep_ms: number(boot, "spy.sweep-ms", DEFAULT_SWEEP_MS),
        plant_codes: boot
            .bootarg("spy.plant-codes")
            .and_then(|range| range.split_once(".."))
            .and_then(|(lo, hi)| Some(lo.parse().ok()?..hi.parse().ok()?))
            .unwrap_or(0..u32::MAX),
    }
}

fn main(boot: &BootInfo) {
    irq::mask();
    let opts = options(boot);
    match opts.role {
        Ok(Role::Plant) => plant(boot, &opts),
        Ok(Role::Watch) => watch(boot, &opts),
        Ok(Role::PlantAll) => all::plant(&opts),
        Ok(Role::WatchAll) => all::watch(boot, &opts),
        Err(other) => {
            let mut report = Report::new("SPY");
            report.fail(
                "options",
                format_args!("spy.role={other}: expected plant or watch"),
            );
            report.finish();
        }
    }
}

// --- what is planted and watched ---------------------------------------------------------------

/// A register one VM can write and no other VM may ever read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spot {
    /// ICC_AP<group>R<n>_EL1 (GICv3; ICV_* under a hypervisor: ICH_AP<group>R<n>_EL2).
    IccApr { group: u8, n: u8 },
    /// GICC_APR (GICv2; GICV_APR under a hypervisor: GICH_APR).
    GiccApr,
    /// DISR_EL1 (VDISR_EL2 under a hypervisor with HCR_EL2.AMO set).
    Disr,
}

const ICC_APR_NAMES: [[&str; 4]; 2] = [
    [
        "ICC_AP0R0_EL1",
        "ICC_AP0R1_EL1",
        "ICC_AP0R2_EL1",
        "ICC_AP0R3_EL1",
    ],
    [
        "ICC_AP1R0_EL1",
        "ICC_AP1R1_EL1",
        "ICC_AP1R2_EL1",
        "ICC_AP1R3_EL1",
    ],
];
const ICC_APR_CHECKS: [[&str; 4]; 2] = [
    [
        "clean-icc-ap0r0",
        "clean-icc-ap0r1",
        "clean-icc-ap0r2",
        "clean-icc-ap0r3",
    ],
    [
        "clean-icc-ap1r0",
        "clean-icc-ap1r1",
        "clean-icc-ap1r2",
        "clean-icc-ap1r3",
    ],
];

impl Spot {
    /// The register's architectural name.
    fn name(self) -> &'static str {
        match self {
            Self::IccApr { group, n } => ICC_APR_NAMES[usize::from(group)][usize::from(n)],
            Self::GiccApr => "GICC_APR",
            Self::Disr => "DISR_EL1",
        }
    }

    /// The watcher's check for it.
    fn check(self) -> &'static str {
        match self {
            Self::IccApr { group, n } => ICC_APR_CHECKS[usize::from(group)][usize::from(n)],
            Self::GiccApr => "clean-gicc-apr",
            Self::Disr => "clean-disr",
        }
    }

    /// What the planter writes. Each active-priorities marker sets a priority group above the
    /// watcher's timer (0xa0), so a leaked one also silences the watcher's interrupts.
    fn marker(self) -> u64 {
        match self {
            // Priority 0 active: the report's attack.
            Self::IccApr { group: 0, n: 0 } => 0x1,
            Self::IccApr { group: 0, n } => 1 << n,
            // Group 1 priority 0x20 (bit 4 with 5 priority bits) and neighbours.
            Self::IccApr { n, .. } => 0x10 << n,
            Self::GiccApr => 0x10,
            Self::Disr => DISR_MARKER,
        }
    }

    fn read(self, gic: &Gic) -> Result<u64, Fault> {
        match self {
            Self::IccApr { group, n } => icc::active_priorities(group, n),
            Self::GiccApr => Ok(gic
                .cpu_interface()
                .map_or(0, |gicc| gicc.read32(gicc::APR).into())),
            Self::Disr => probe::read_disr_el1(),
        }
    }

    fn write(self, gic: &Gic, value: u64) -> Result<(), Fault> {
        match self {
            Self::IccApr { group, n } => icc::set_active_priorities(group, n, value),
            Self::GiccApr => {
                if let Some(gicc) = gic.cpu_interface() {
                    gicc.write32(gicc::APR, value as u32);
                }
                Ok(())
            }
            Self::Disr => probe::write_disr_el1(value),
        }
    }
}

/// Four active-priorities registers per group at most, and DISR.
const MAX_SPOTS: usize = 2 * icc::ACTIVE_PRIORITY_REGISTERS as usize + 1;

/// The registers that exist on this CPU.
struct Spots {
    list: [Spot; MAX_SPOTS],
    len: usize,
}

impl Spots {
    fn iter(&self) -> impl Iterator<Item = Spot> + '_ {
        self.list[..self.len].iter().copied()
    }

    fn push(&mut self, spot: Spot) {
        self.list[self.len] = spot;
        self.len += 1;
    }
}

impl fmt::Display for Spots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, spot) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(spot.name())?;
        }
        Ok(())
    }
}

/// How many ICC_AP<g>R<n>_EL1 per group ICC_CTLR_EL1.PRIbits implies: one for up to 5 priority
/// bits, two for 6, four for 7 or 8 (IHI 0069, ICC_AP0R<n>_EL1 "Configurations"; Linux's
/// gic_cpu_sys_reg_init clears them by the same rule).
fn active_priority_registers(ctlr: u64) -> u8 {
    let priority_bits =
        ((ctlr >> icc_bits::CTLR_PRIBITS_SHIFT) & icc_bits::CTLR_PRIBITS_MASK) as u8 + 1;
    match priority_bits {
        0..=5 => 1,
        6 => 2,
        _ => icc::ACTIVE_PRIORITY_REGISTERS,
    }
}

/// The registers both roles use. One that should exist but raises an exception (a virtual
/// interface with fewer preemption bits than priority bits, or DISR_EL1 without FEAT_RAS) is
/// left out with a note: both VMs run the same image on the same CPU, so they leave out the same.
fn find_spots(gic: &Gic, report: &Report) -> Spots {
    let mut spots = Spots {
        list: [Spot::Disr; MAX_SPOTS],
        len: 0,
    };
    let mut candidates = Spots {
        list: [Spot::Disr; MAX_SPOTS],
        len: 0,
    };
    match gic.version() {
        Version::V3 => {
            let count = active_priority_registers(icc::ctlr());
            for group in 0..2 {
                for n in 0..count {
                    candidates.push(Spot::IccApr { group, n });
                }
            }
        }
        Version::V2 => candidates.push(Spot::GiccApr),
    }
    candidates.push(Spot::Disr);
    for spot in candidates.iter() {
        match spot.read(gic) {
            Ok(_) => spots.push(spot),
            Err(fault) => report.note(format_args!(
                "{}: skipped: {} is not implemented here ({fault})",
                spot.check(),
                spot.name()
            )),
        }
    }
    spots
}

/// The CPU-interface settings a vCPU writes besides its active priorities (under a hypervisor:
/// ICH_VMCR_EL2 / GICH_VMCR, plus ICC_CTLR_EL1's EOImode), in [`setting_names`] order.
type Settings = [u64; 6];

fn setting_names(version: Version) -> &'static [&'static str] {
    match version {
        Version::V3 => &[
            "ICC_PMR_EL1",
            "ICC_BPR0_EL1",
            "ICC_BPR1_EL1",
            "ICC_IGRPEN0_EL1",
            "ICC_IGRPEN1_EL1",
            "ICC_CTLR_EL1",
        ],
        Version::V2 => &["GICC_PMR", "GICC_BPR", "GICC_ABPR", "GICC_CTLR"],
    }
}

fn read_settings(gic: &Gic) -> Settings {
    match gic.cpu_interface() {
        None => [
            icc::pmr(),
            icc::bpr0(),
            icc::bpr1(),
            icc::igrpen0(),
            icc::igrpen1(),
            icc::ctlr(),
        ],
        Some(gicc) => [
            gicc.read32(gicc::PMR).into(),
            gicc.read32(gicc::BPR).into(),
            gicc.read32(gicc::ABPR).into(),
            gicc.read32(gicc::CTLR).into(),
            0,
            0,
        ],
    }
}

/// The planter's settings: none of them what [`Gic::init_cpu`] leaves (PMR 0xff, binary points
/// 0 or their minimum, group 0 off, EOImode 0), and a PMR that masks the watcher's timer.
fn plant_settings(gic: &Gic) {
    match gic.cpu_interface() {
        None => {
            icc::set_pmr(PLANT_PMR);
            icc::set_bpr0(4);
            icc::set_bpr1(5);
            icc::set_igrpen0(1);
            icc::set_ctlr(icc::ctlr() | icc_bits::CTLR_EOIMODE);
        }
        Some(gicc) => {
            gicc.write32(gicc::PMR, PLANT_PMR as u32);
            gicc.write32(gicc::BPR, 5);
            gicc.write32(gicc::ABPR, 6);
            gicc.write32(gicc::CTLR, gicc.read32(gicc::CTLR) | gicc::CTLR_EOIMODE);
        }
    }
}

/// Settings for messages: `NAME=0x.. NAME=0x..`.
struct Named<'a>(&'a [&'a str], &'a Settings);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().zip(self.1).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value:#x}")?;
        }
        Ok(())
    }
}

/// A register read for messages: the value in hex, or the exception it raised.
struct Reading(Result<u64, Fault>);

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(value) => write!(f, "{value:#x}"),
            Err(fault) => write!(f, "an exception ({fault})"),
        }
    }
}

fn ms_since(start: u64, now: u64) -> u64 {
    timer::us_from_ticks(now.wrapping_sub(start)) / 1000
}

// --- plant -------------------------------------------------------------------------------------

fn plant(boot: &BootInfo, opts: &Options) {
    let mut report = Report::new("PLANT");
    let gic = match Gic::discover(boot.fdt.as_ref()).and_then(|gic| {
        gic.wake_redistributor()?;
        gic.init_cpu()?;
        Ok(gic)
    }) {
        Ok(gic) => gic,
        Err(error) => {
            report.fail("planted", format_args!("GIC bring-up: {error}"));
            report.finish();
            return;
        }
    };
    let spots = find_spots(&gic, &report);
    report.note(format_args!(
        "planting for {} ms, then SYSTEM_OFF: {spots} and the CPU-interface settings",
        opts.plant_ms
    ));

    // First round: every marker must take, or the watcher's passes would prove nothing.
    plant_settings(&gic);
    let settings = read_settings(&gic);
    let names = setting_names(gic.version());
    report.note(format_args!("{}", Named(names, &settings)));
    let mut trouble = None;
    for spot in spots.iter() {
        let marker = spot.marker();
        let result = spot.write(&gic, marker).and_then(|()| spot.read(&gic));
        let ok = match (spot, result) {
            // Only the A bit is architecturally guaranteed to read back as written.
            (Spot::Disr, Ok(value)) => value & DISR_MARKER != 0,
            (_, Ok(value)) => value == marker,
            (_, Err(_)) => false,
        };
        report.note(format_args!(
            "{} = {marker:#x}, reads back {}",
            spot.name(),
            Reading(result)
        ));
        if !ok && trouble.is_none() {
            trouble = Some((spot, result));
        }
    }
    match trouble {
        // The PMR is the one setting written exactly (no binary-point minimum to clamp to).
        None if settings[0] != PLANT_PMR => report.fail(
            "planted",
            format_args!(
                "{} = {PLANT_PMR:#x} reads back {:#x}",
                names[0], settings[0]
            ),
        ),
        Some((spot, result)) => report.fail(
            "planted",
            format_args!(
                "{} = {:#x} reads back {}",
                spot.name(),
                spot.marker(),
                Reading(result)
            ),
        ),
        None => report.pass("planted"),
    }

    // Keep them live (the watcher runs in the other time slices), re-written as a guest that
    // insists would; IRQs stay masked, nothing here needs one.
    let start = Timer::Virtual.count();
    let duration = timer::ticks_from_us(opts.plant_ms * 1000);
    let poll = timer::ticks_from_us(POLL_US);
    let mut next = start;
    let mut rounds = 0u32;
    while Timer::Virtual.count().wrapping_sub(start) < duration {
        if Timer::Virtual.count().wrapping_sub(next) as i64 >= 0 {
            plant_settings(&gic);
            for spot in spots.iter() {
                // Failures were reported above; a retry changes nothing.
                let _ = spot.write(&gic, spot.marker());
            }
            rounds += 1;
            next = next.wrapping_add(poll);
        }
        core::hint::spin_loop();
    }
    report.note(format_args!(
        "{rounds} rounds in {} ms; powering off with the markers set",
        ms_since(start, Timer::Virtual.count())
    ));
    report.finish();
    // Returning calls PSCI SYSTEM_OFF with every marker still in place.
}

// --- watch -------------------------------------------------------------------------------------

fn watch(boot: &BootInfo, opts: &Options) {
    let mut report = Report::new("SPY");
    let timers = TimerInterrupts::discover(boot.fdt.as_ref());
    let gic = match bring_up(boot, &timers) {
        Ok(gic) => gic,
        Err(error) => {
            report.fail("vtimer-delivery", format_args!("GIC bring-up: {error}"));
            report.finish();
            return;
        }
    };
    let spots = find_spots(&gic, &report);
    let names = setting_names(gic.version());
    let settings = read_settings(&gic);
    report.note(format_args!(
        "watching for {} ms (timer every {} ms): {spots} and {}",
        opts.watch_ms,
        opts.period_ms,
        Named(names, &settings)
    ));

    let period = timer::ticks_from_us(opts.period_ms * 1000);
    let duration = timer::ticks_from_us(opts.watch_ms * 1000);
    let tail_from = duration - timer::ticks_from_us(opts.tail_ms * 1000).min(duration);
    let poll = timer::ticks_from_us(POLL_US);
    PERIOD_TICKS.store(period, Ordering::SeqCst);

    let mut leaked = [false; MAX_SPOTS];
    let mut settings_changed = false;
    let mut irqs_before_tail = None;

    let start = Timer::Virtual.count();
    let mut delivery = Delivery::new(opts, start);
    let mut next_poll = start;
    Timer::Virtual.arm_at(start.wrapping_add(period));
    // From here on a deliverable IRQ is taken as soon as it is signalled.
    irq::unmask();
    loop {
        let now = Timer::Virtual.count();
        let elapsed = now.wrapping_sub(start);
        if elapsed >= duration {
            break;
        }
        if irqs_before_tail.is_none() && elapsed >= tail_from {
            irqs_before_tail = Some(TIMER_IRQS.load(Ordering::SeqCst));
        }

        if now.wrapping_sub(next_poll) as i64 >= 0 {
            next_poll = now.wrapping_add(poll);
            // Masked while reading, so the handler's own active priority (set between its
            // acknowledge and its EOI) is never what is read.
            irq::mask();
            let mut values = [Ok(0); MAX_SPOTS];
            for (value, spot) in values.iter_mut().zip(spots.iter()) {
                *value = spot.read(&gic);
            }
            let current = read_settings(&gic);
            irq::unmask();
            for ((value, spot), seen) in values.iter().zip(spots.iter()).zip(&mut leaked) {
                if *seen || *value == Ok(0) {
                    continue;
                }
                *seen = true;
                report.fail(
                    spot.check(),
                    format_args!(
                        "{} reads {} after {} ms; this VM never writes it, so it is \
                         another VM's",
                        spot.name(),
                        Reading(*value),
                        ms_since(start, now)
                    ),
                );
            }
            if !settings_changed && current != settings {
                settings_changed = true;
                let index = (0..names.len())
                    .find(|&i| current[i] != settings[i])
                    .unwrap_or(0);
                report.fail(
                    "clean-settings",
                    format_args!(
                        "{} reads {:#x} after {} ms, this VM set {:#x}",
                        names[index],
                        current[index],
                        ms_since(start, now),
                        settings[index]
                    ),
                );
            }
        }

        delivery.look(&gic, &mut report, start);
        core::hint::spin_loop();
    }
    irq::mask();
    Timer::Virtual.stop();

    let total = TIMER_IRQS.load(Ordering::SeqCst);
    let in_tail = total - irqs_before_tail.unwrap_or(total);
    let other = OTHER_IRQS.load(Ordering::SeqCst);
    report.note(format_args!(
        "{total} timer IRQs in {} ms, {in_tail} in the last {} ms; {other} other IRQs",
        opts.watch_ms, opts.tail_ms
    ));
    for (spot, seen) in spots.iter().zip(leaked) {
        if !seen {
            report.pass(spot.check());
        }
    }
    if !settings_changed {
        report.pass("clean-settings");
    }
    if !delivery.blocked {
        report.pass("vtimer-delivery");
    }
    report.check(
        "irq-after-plant",
        in_tail > 0,
        format_args!(
            "no virtual timer interrupt in the last {} ms ({total} in {} ms)",
            opts.tail_ms, opts.watch_ms
        ),
    );
    report.finish();
}

/// Whether the virtual timer's interrupt keeps reaching this vCPU: a condition pending for
/// `spy.max-pending-ms` with IRQs unmasked is one that does not (a FAIL, once).
struct Delivery {
    max_pending: u64,
    gap: u64,
    pending_since: Option<u64>,
    last_look: u64,
    blocked: bool,
}

impl Delivery {
    fn new(opts: &Options, start: u64) -> Self {
        Self {
            max_pending: timer::ticks_from_us(opts.max_pending_ms * 1000),
            gap: timer::ticks_from_us(DESCHEDULED_GAP_US),
            pending_since: None,
            last_look: start,
            blocked: false,
        }
    }

    /// One look at the timer, with IRQs unmasked; `start` is when watching began.
    fn look(&mut self, gic: &Gic, report: &mut Report, start: u64) {
        // IRQs are unmasked here and `unmask` ends in an `isb`: an interrupt the CPU interface
        // signals has been taken by now, and its handler moved CVAL on. A condition that stays
        // pending is an interrupt that does not reach this vCPU.
        let control = Timer::Virtual.control();
        let fired = control & (CTL_ENABLE | CTL_IMASK | CTL_ISTATUS) == CTL_ENABLE | CTL_ISTATUS;
        let now = Timer::Virtual.count();
        if !fired || now.wrapping_sub(self.last_look) > self.gap {
            self.pending_since = None;
        }
        if fired {
            let since = *self.pending_since.get_or_insert(now);
            if !self.blocked && now.wrapping_sub(since) > self.max_pending {
                self.blocked = true;
                irq::mask();
                let running = gic.running_priority();
                let pending = gic.highest_pending();
                irq::unmask();
                report.fail(
                    "vtimer-delivery",
                    format_args!(
                        "virtual timer pending for {} ms without its interrupt ({} ms in, \
                             {} timer IRQs so far; running priority {running:#x}, highest \
                             pending {:#x})",
                        ms_since(since, now),
                        ms_since(start, now),
                        TIMER_IRQS.load(Ordering::SeqCst),
                        pending.raw()
                    ),
                );
            }
        }
        self.last_look = now;
    }
}

/// Distributor and CPU interface up, the virtual timer's PPI enabled, the handler installed
/// (the heartbeat guest's bring-up).
fn bring_up(boot: &BootInfo, timers: &TimerInterrupts) -> Result<Gic, gic::GicError> {
    Timer::Virtual.stop();
    Timer::Physical.stop();
    VIRTUAL_INTID.store(timers.virtual_, Ordering::SeqCst);
    gic_setup::bring_up(boot.fdt.as_ref(), &[timers.virtual_], on_irq)
}

/// Counts a virtual timer interrupt and re-arms the timer a period from now (moving CVAL past
/// the count drops the level before the EOI).
fn on_irq() {
    let Some(gic) = gic::installed() else {
        return;
    };
    let iar = gic.acknowledge();
    if iar.is_special() {
        return;
    }
    if iar.intid() == VIRTUAL_INTID.load(Ordering::SeqCst) {
        let now = Timer::Virtual.count();
        Timer::Virtual.arm_at(now.wrapping_add(PERIOD_TICKS.load(Ordering::SeqCst)));
        TIMER_IRQS.store(TIMER_IRQS.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    } else {
        OTHER_IRQS.store(OTHER_IRQS.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }
    gic.end_of_interrupt(iar);
}
