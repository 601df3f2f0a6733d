//! elvisor SMP guest: tests, from inside a VM with several vCPUs, PSCI CPU_ON / CPU_OFF /
//! AFFINITY_INFO and virtual IPIs between vCPUs, one `SMP PASS/FAIL` line per check.
//!
//! vCPU 0 runs the tests; the others run [`secondary::secondary`] and take commands from it.
//! With N vCPUs in `/cpus` (2..=8) and T = N - 1 the last one:
//!
//! ```text
//!   mpidr                vCPU 0 reads MPIDR_EL1 = 0x8000_0000 (Aff0 = 0)
//!   dt-cpus              /cpus has cpu nodes reg = 0..N-1, enable-method "psci"
//!   psci-features        PSCI_FEATURES(CPU_ON, CPU_OFF, AFFINITY_INFO) supported;
//!                        MIGRATE_INFO_TYPE = 2
//!   cpu-on-invalid-target   CPU_ON(MPIDR 0x7 / N / Aff1 = 1) -> INVALID_PARAMETERS (-2)
//!   cpu-on-invalid-address  CPU_ON(1, entry 0x1000 / RAM end) -> INVALID_ADDRESS (-9)
//!                        (under elvisor only: QEMU's own PSCI does not check the entry)
//!   cpu-on               CPU_ON(1..=N-2) -> SUCCESS; each reports in once  (N = 2: vCPU 1)
//!   secondary-mpidr      each reads MPIDR_EL1 = 0x8000_0000 | its index
//!   secondary-entry      each started at EL1 with DAIF masked, MMU off, x0 = context id
//!   cpu-on-already-on    CPU_ON(1) again -> ALREADY_ON (-4)
//!   affinity-info        AFFINITY_INFO: vCPU 0 and 1 ON (0), T OFF (1), N -> -2
//!   race                 vCPUs 1..=N-2 (and vCPU 0 too if that makes fewer than two) armed,
//!                        released together by one `sev`, all CPU_ON(T): exactly one SUCCESS,
//!                        the rest ALREADY_ON; T reports in once, its x0 names the winner
//!   affinity-info-on     AFFINITY_INFO(T) = ON
//!   sgi-ping-pong        10 rounds: SGI 5 vCPU 0 -> 1, its handler answers SGI 6 -> vCPU 0
//!   sgi-multicast        SGI 7 to the list {1..N-1}: each exactly once, vCPU 0 none
//!   sgi-broadcast        SGI 8 to "all but self": each other vCPU exactly once
//!   cpu-off              T calls CPU_OFF; AFFINITY_INFO(T) becomes OFF; CPU_OFF never returned
//!   cpu-on-after-off     CPU_ON(T) -> SUCCESS again, T reports in a second time, takes an SGI,
//!                        and goes off again
//!   all-off              every secondary calls CPU_OFF; all OFF, vCPU 0 still ON
//!   no-stray-irqs        no vCPU took an interrupt other than the SGIs sent to it
//!   SMP RESULT: passed=N failed=M, then SYSTEM_OFF (returning from main)
//! ```
//!
//! Shared memory: the MMU stays off on every vCPU, so all data accesses are Device-nGnRnE;
//! vCPUs share data through atomic loads and stores with a single writer per word and wait
//! with `wfe` / `sev` (see [`shared`] and `elvisor_guest_rt::smp`). Every wait is bounded.
//!
//! Without a hypervisor (`qemu-system-aarch64 -M virt -cpu max -smp 4 -kernel smp.img`) QEMU's
//! own PSCI (over HVC) and GIC do the same job and everything passes, with two allowances made
//! only when the device tree is not elvisor's: `cpu-on-invalid-address` is skipped (QEMU starts
//! a CPU at any address), and the race accepts several SUCCESS answers: QEMU's
//! `arm_set_cpu_on` queues the start on the target but never enters ON_PENDING, so two
//! CPU_ONs close together both succeed and the target starts twice (seen with `-smp 3` and
//! `-smp 8`). Under elvisor the race is strict.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod secondary;
mod shared;

use elvisor_guest_rt::abi::layout;
use elvisor_guest_rt::arch::{self, MAX_CPUS, irq};
use elvisor_guest_rt::boot::find_node;
use elvisor_guest_rt::gic::{self, Gic, SgiTarget, Version};
use elvisor_guest_rt::smccc::{affinity, fid, psci, psci_ret};
use elvisor_guest_rt::smp;
use elvisor_guest_rt::{BootInfo, Report};

use secondary::{SGI_BROADCAST, SGI_MULTICAST, SGI_PING, SGI_PONG};
use shared::{CPUS, GO, OP_OFF, OP_RACE, RACE_ID, RACE_TARGET, load, load64, store};

elvisor_guest_rt::entry!(main);

/// MPIDR_EL1 bit 31, RES1.
const MPIDR_RES1: u64 = 1 << 31;

/// The context id vCPU 0 passes when it starts vCPU i: this tag | i.
const CONTEXT_TAG: u64 = 0xc0de_5eed_0000_0000;

/// DAIF with D, A, I and F set: how PSCI starts a CPU.
const DAIF_ALL_MASKED: u64 = 0xf << 6;

/// How long to wait for a vCPU to report in, go off, or take an SGI (TCG, shared pCPUs).
const WAIT_MS: u64 = 5_000;
/// How long to watch for a duplicate or stray event after the expected one.
const SETTLE_MS: u64 = 50;
/// Ping-pong rounds.
const PING_ROUNDS: u32 = 10;

/// What the tests share.
struct Ctx {
    /// vCPUs in `/cpus`.
    cpus: usize,
    /// Whether the device tree is elvisor's (it has `/chosen/elvisor,reset-count`).
    elvisor: bool,
    /// Guest RAM.
    ram_end: usize,
    /// vCPU 0's GIC.
    gic: Gic,
}

impl Ctx {
    /// The last vCPU: the race target and the one that goes off and comes back.
    fn last(&self) -> usize {
        self.cpus - 1
    }

    /// The vCPUs `cpu-on` starts: 1..=N-2, or just vCPU 1 when N = 2.
    fn early(&self) -> core::ops::RangeInclusive<usize> {
        1..=(self.cpus - 2).max(1)
    }

    fn secondaries(&self) -> core::ops::Range<usize> {
        1..self.cpus
    }
}

fn main(boot: &BootInfo) {
    let mut report = Report::new("SMP");
    irq::mask();
    let fdt = boot.fdt.as_ref();
    let cpus = fdt.map_or(0, elvisor_guest_rt::dt::cpu_count);
    report.note(format_args!(
        "elvisor SMP guest: EL{} MPIDR_EL1={:#x} cpus={cpus} reset-count={:?} ({})",
        arch::current_el(),
        arch::mpidr(),
        boot.reset_count,
        if boot.reset_count.is_some() {
            "under elvisor"
        } else {
            "no elvisor,reset-count: bare QEMU?"
        }
    ));

    check_mpidr(&mut report);
    check_dt_cpus(&mut report, boot, cpus);
    if !(2..=MAX_CPUS).contains(&cpus) {
        report.fail(
            "cpus",
            format_args!("need 2..={MAX_CPUS} CPUs in /cpus, found {cpus}"),
        );
        report.finish();
        return;
    }

    let gic = match secondary::bring_up_cpu(fdt).and_then(|gic| {
        gic.init_distributor()?;
        Ok(gic)
    }) {
        Ok(gic) => gic,
        Err(error) => {
            report.fail("gic", format_args!("GIC bring-up on vCPU 0: {error}"));
            report.finish();
            return;
        }
    };
    gic::install(&gic);
    irq::set_handler(Some(secondary::on_irq));
    report.note(format_args!(
        "{} GICD={:#x}",
        match gic.version() {
            Version::V3 => "GICv3",
            Version::V2 => "GICv2",
        },
        gic.distributor().base()
    ));

    let ctx = Ctx {
        cpus,
        elvisor: boot.reset_count.is_some(),
        ram_end: boot.ram.as_ref().map_or(0x4000_0000, |ram| ram.end),
        gic,
    };

    psci_features(&mut report);
    cpu_on_invalid_target(&mut report, &ctx);
    cpu_on_invalid_address(&mut report, &ctx);
    cpu_on(&mut report, &ctx);
    cpu_on_already_on(&mut report);
    affinity_info(&mut report, &ctx);
    race(&mut report, &ctx);
    affinity_info_on(&mut report, &ctx);
    sgi_ping_pong(&mut report, &ctx);
    sgi_fanout(&mut report, &ctx, "sgi-multicast", SGI_MULTICAST);
    sgi_fanout(&mut report, &ctx, "sgi-broadcast", SGI_BROADCAST);
    cpu_off(&mut report, &ctx);
    cpu_on_after_off(&mut report, &ctx);
    all_off(&mut report, &ctx);
    no_stray_irqs(&mut report, &ctx);

    irq::mask();
    report.finish();
}

fn check_mpidr(report: &mut Report) {
    let mpidr = arch::mpidr();
    report.check(
        "mpidr",
        mpidr == MPIDR_RES1,
        format_args!("vCPU 0 reads MPIDR_EL1 = {mpidr:#x}, expected {MPIDR_RES1:#x}"),
    );
}

/// `/cpus`: one node per vCPU, `reg` = 0..N-1 in order, `enable-method = "psci"`.
fn check_dt_cpus(report: &mut Report, boot: &BootInfo, cpus: usize) {
    const NAME: &str = "dt-cpus";
    let Some(node) = boot.fdt.as_ref().and_then(|fdt| find_node(fdt, "/cpus")) else {
        report.fail(NAME, format_args!("no /cpus node"));
        return;
    };
    let mut index = 0u64;
    for cpu in node.children() {
        let is_cpu = cpu.property("device_type").and_then(|p| p.as_str()) == Some("cpu")
            || cpu.name.split('@').next() == Some("cpu");
        if !is_cpu {
            continue;
        }
        let reg = cpu.property("reg").map(|p| {
            p.value
                .iter()
                .fold(0u64, |acc, byte| acc << 8 | u64::from(*byte))
        });
        let method = cpu.property("enable-method").and_then(|p| p.as_str());
        if reg != Some(index) || method != Some("psci") {
            report.fail(
                NAME,
                format_args!(
                    "{}: reg {reg:?} enable-method {method:?}, expected reg {index} and \"psci\"",
                    cpu.name
                ),
            );
            return;
        }
        index += 1;
    }
    report.check(
        NAME,
        index as usize == cpus && cpus > 0,
        format_args!("{index} cpu nodes"),
    );
}

fn psci_features(report: &mut Report) {
    let on = psci::features(fid::CPU_ON);
    let off = psci::features(fid::CPU_OFF);
    let info = psci::features(fid::AFFINITY_INFO);
    let migrate = psci::migrate_info_type();
    report.check(
        "psci-features",
        on >= 0 && off >= 0 && info >= 0 && migrate == 2,
        format_args!(
            "PSCI_FEATURES CPU_ON {on} CPU_OFF {off} AFFINITY_INFO {info}, MIGRATE_INFO_TYPE {migrate} (want >= 0, 2)"
        ),
    );
}

fn cpu_on_invalid_target(report: &mut Report, ctx: &Ctx) {
    let entry = smp::secondary_entry_address() as u64;
    let mut targets = [0x7u64, ctx.cpus as u64, 0x100];
    if ctx.cpus > 7 {
        targets[0] = 0x8;
    }
    for target in targets {
        let ret = psci::cpu_on(target, entry, 0);
        if ret != psci_ret::INVALID_PARAMETERS {
            report.fail(
                "cpu-on-invalid-target",
                format_args!(
                    "CPU_ON(MPIDR {target:#x}) returned {ret} ({}), expected INVALID_PARAMETERS (-2)",
                    psci_ret::name(ret)
                ),
            );
            return;
        }
    }
    report.pass("cpu-on-invalid-target");
}

fn cpu_on_invalid_address(report: &mut Report, ctx: &Ctx) {
    const NAME: &str = "cpu-on-invalid-address";
    if !ctx.elvisor {
        report.note(format_args!(
            "{NAME} skipped: not under elvisor (QEMU's PSCI starts a CPU at any address)"
        ));
        return;
    }
    for entry in [0x1000u64, ctx.ram_end as u64, layout::UART_BASE] {
        let ret = psci::cpu_on(smp::mpidr_of(1), entry, 0);
        if ret != psci_ret::INVALID_ADDRESS {
            report.fail(
                NAME,
                format_args!(
                    "CPU_ON(1, entry {entry:#x}) returned {ret} ({}), expected INVALID_ADDRESS (-9)",
                    psci_ret::name(ret)
                ),
            );
            return;
        }
    }
    report.pass(NAME);
}

/// Waits until vCPU `cpu` has entered `life` times and is idle with its GIC up.
fn wait_ready(cpu: usize, life: u32) -> bool {
    let me = &CPUS[cpu];
    smp::wait_until(smp::ms(WAIT_MS), || {
        load(&me.arrivals) >= life && load(&me.ready) >= life
    })
}

fn cpu_on(report: &mut Report, ctx: &Ctx) {
    let mut ok = true;
    for cpu in ctx.early() {
        let ret = smp::start_cpu(
            smp::mpidr_of(cpu),
            secondary::secondary,
            CONTEXT_TAG | cpu as u64,
        );
        if ret != psci_ret::SUCCESS {
            report.fail(
                "cpu-on",
                format_args!(
                    "CPU_ON(vCPU {cpu}) returned {ret} ({})",
                    psci_ret::name(ret)
                ),
            );
            ok = false;
        }
    }
    for cpu in ctx.early() {
        if ok && !wait_ready(cpu, 1) {
            report.fail(
                "cpu-on",
                format_args!(
                    "vCPU {cpu} did not report in within {WAIT_MS} ms (arrivals {}, ready {})",
                    load(&CPUS[cpu].arrivals),
                    load(&CPUS[cpu].ready)
                ),
            );
            ok = false;
        }
    }
    if !ok {
        return;
    }
    // Once each, even after a pause.
    smp::wait_until(smp::ms(SETTLE_MS), || false);
    let twice = ctx.early().find(|&cpu| load(&CPUS[cpu].arrivals) != 1);
    match twice {
        Some(cpu) => report.fail(
            "cpu-on",
            format_args!("vCPU {cpu} entered {} times", load(&CPUS[cpu].arrivals)),
        ),
        None => report.pass("cpu-on"),
    }
    check_secondaries(report, ctx.early(), |cpu| CONTEXT_TAG | cpu as u64);
    let gic_failed = ctx.early().find(|&cpu| load(&CPUS[cpu].gic_failed) != 0);
    if let Some(cpu) = gic_failed {
        report.note(format_args!(
            "vCPU {cpu}: GIC bring-up failed (the SGI tests will say more)"
        ));
    }
}

/// `secondary-mpidr` and `secondary-entry` for the vCPUs in `cpus`.
fn check_secondaries(
    report: &mut Report,
    cpus: impl Iterator<Item = usize> + Clone,
    context: impl Fn(usize) -> u64,
) {
    let bad_mpidr = cpus.clone().find_map(|cpu| {
        let mpidr = load64(&CPUS[cpu].mpidr);
        (mpidr != MPIDR_RES1 | cpu as u64).then_some((cpu, mpidr))
    });
    match bad_mpidr {
        Some((cpu, mpidr)) => report.fail(
            "secondary-mpidr",
            format_args!(
                "vCPU {cpu} reads MPIDR_EL1 = {mpidr:#x}, expected {:#x}",
                MPIDR_RES1 | cpu as u64
            ),
        ),
        None => report.pass("secondary-mpidr"),
    }
    let bad_entry = cpus.clone().find_map(|cpu| {
        let me = &CPUS[cpu];
        let el = load(&me.entry_el);
        let daif = load64(&me.entry_daif);
        let sctlr = load64(&me.entry_sctlr);
        let x0 = load64(&me.context);
        let ok = el == 1 && daif == DAIF_ALL_MASKED && sctlr & 1 == 0 && x0 == context(cpu);
        (!ok).then_some((cpu, el, daif, sctlr, x0))
    });
    match bad_entry {
        Some((cpu, el, daif, sctlr, x0)) => report.fail(
            "secondary-entry",
            format_args!(
                "vCPU {cpu} entered at EL{el} DAIF={daif:#x} SCTLR_EL1={sctlr:#x} x0={x0:#x}; \
                 expected EL1, DAIF={DAIF_ALL_MASKED:#x}, SCTLR_EL1.M=0, x0={:#x}",
                context(cpu)
            ),
        ),
        None => report.pass("secondary-entry"),
    }
}

fn cpu_on_already_on(report: &mut Report) {
    let ret = smp::start_cpu(smp::mpidr_of(1), secondary::secondary, 0);
    report.check(
        "cpu-on-already-on",
        ret == psci_ret::ALREADY_ON,
        format_args!(
            "CPU_ON(vCPU 1) while it runs returned {ret} ({}), expected ALREADY_ON (-4)",
            psci_ret::name(ret)
        ),
    );
}

fn affinity_info(report: &mut Report, ctx: &Ctx) {
    let last = ctx.last();
    let want_last = if last == 1 {
        affinity::ON
    } else {
        affinity::OFF
    };
    let cases = [
        (0u64, affinity::ON),
        (1, affinity::ON),
        (last as u64, want_last),
        (ctx.cpus as u64, psci_ret::INVALID_PARAMETERS),
    ];
    for (target, want) in cases {
        let got = psci::affinity_info(target, 0);
        if got != want {
            report.fail(
                "affinity-info",
                format_args!("AFFINITY_INFO({target:#x}, 0) = {got}, expected {want}"),
            );
            return;
        }
    }
    report.pass("affinity-info");
}

fn race(report: &mut Report, ctx: &Ctx) {
    const NAME: &str = "race";
    if ctx.cpus < 3 {
        report.note(format_args!(
            "{NAME} skipped: needs 3 vCPUs (two racers and a target), have {}",
            ctx.cpus
        ));
        return;
    }
    let target = ctx.last();
    let racers = 1..target;
    // Fewer than two secondaries to race: vCPU 0 races too.
    let vcpu0_races = racers.len() < 2;
    let id = load(&RACE_ID) + 1;
    store(&RACE_ID, id);
    store(&RACE_TARGET, target as u32);
    let mut seqs = [0u32; MAX_CPUS];
    for cpu in racers.clone() {
        seqs[cpu] = shared::command(cpu, OP_RACE);
    }
    for cpu in racers.clone() {
        if !smp::wait_until(smp::ms(WAIT_MS), || load(&CPUS[cpu].race_armed) == id) {
            report.fail(NAME, format_args!("racer vCPU {cpu} never armed"));
            return;
        }
    }
    // Go: one store and one `sev` release every racer at once.
    store(&GO, id);
    smp::notify();
    let vcpu0_ret = vcpu0_races.then(|| secondary::start_race_target(0));
    for cpu in racers.clone() {
        if !smp::wait_until(smp::ms(WAIT_MS), || load(&CPUS[cpu].handled) == seqs[cpu]) {
            report.fail(NAME, format_args!("racer vCPU {cpu} never finished"));
            return;
        }
    }

    // (racer, CPU_ON result) for everyone who raced.
    let mut results = [(0usize, 0i64); MAX_CPUS];
    let mut n = 0;
    if let Some(ret) = vcpu0_ret {
        results[n] = (0, ret);
        n += 1;
    }
    for cpu in racers {
        results[n] = (cpu, load64(&CPUS[cpu].race_ret) as i64);
        n += 1;
    }
    let results = &results[..n];
    for (cpu, ret) in results {
        report.note(format_args!(
            "race: vCPU {cpu}: CPU_ON(vCPU {target}) = {ret} ({})",
            psci_ret::name(*ret)
        ));
    }
    // QEMU's own PSCI (target/arm/arm-powerctl.c, arm_set_cpu_on) queues the start on the
    // target and never enters ON_PENDING, so without elvisor racing CPU_ONs may all succeed
    // (the last one wins) or lose with ON_PENDING: only the guest's side is checked there.
    let strict = ctx.elvisor;
    let loser_ok =
        |ret: i64| ret == psci_ret::ALREADY_ON || (!strict && ret == psci_ret::ON_PENDING);
    let winners = results
        .iter()
        .filter(|(_, ret)| *ret == psci_ret::SUCCESS)
        .count();
    let bad = results
        .iter()
        .find(|(_, ret)| *ret != psci_ret::SUCCESS && !loser_ok(*ret));
    let target_up = wait_ready(target, 1);
    smp::wait_until(smp::ms(SETTLE_MS), || false);
    let arrivals = load(&CPUS[target].arrivals);
    let x0 = load64(&CPUS[target].context);
    report.note(format_args!(
        "race: vCPU {target} entered {arrivals} time(s), x0 = {x0:#x}"
    ));
    if let Some((cpu, ret)) = bad {
        report.fail(
            NAME,
            format_args!(
                "vCPU {cpu} got {ret} ({}); want exactly one SUCCESS, the rest ALREADY_ON",
                psci_ret::name(*ret)
            ),
        );
        return;
    }
    if winners == 0 || (strict && winners != 1) {
        report.fail(
            NAME,
            format_args!("{winners} SUCCESS among {n} racers; want exactly one"),
        );
        return;
    }
    if !strict && winners > 1 {
        report.note(format_args!(
            "race: {winners} racers got SUCCESS: QEMU's own PSCI has no ON_PENDING state \
             (accepted without elvisor only)"
        ));
    }
    let from_winner = results.iter().any(|(cpu, ret)| {
        *ret == psci_ret::SUCCESS && x0 == secondary::RACE_CONTEXT_TAG | *cpu as u64
    });
    report.check(
        NAME,
        target_up && (arrivals == 1 || !strict) && from_winner,
        format_args!(
            "vCPU {target} reported in: {target_up}, {arrivals} time(s), x0 = {x0:#x}; expected \
             once, with the context id of the racer that got SUCCESS ({:#x} | racer)",
            secondary::RACE_CONTEXT_TAG
        ),
    );
}

fn affinity_info_on(report: &mut Report, ctx: &Ctx) {
    let last = ctx.last();
    let got = psci::affinity_info(smp::mpidr_of(last), 0);
    report.check(
        "affinity-info-on",
        got == affinity::ON,
        format_args!("AFFINITY_INFO(vCPU {last}) = {got}, expected ON (0)"),
    );
}

/// Snapshot of SGI `intid` counts of every vCPU.
fn sgi_counts(intid: u32) -> [u32; MAX_CPUS] {
    core::array::from_fn(|cpu| CPUS[cpu].sgis(intid))
}

/// Waits with IRQs unmasked (vCPU 0 takes its own SGIs meanwhile).
fn wait_with_irqs(ms: u64, done: impl Fn() -> bool) -> bool {
    irq::unmask();
    let ok = smp::wait_until(smp::ms(ms), done);
    irq::mask();
    ok
}

fn sgi_ping_pong(report: &mut Report, ctx: &Ctx) {
    const NAME: &str = "sgi-ping-pong";
    let pings0 = sgi_counts(SGI_PING);
    let pongs0 = sgi_counts(SGI_PONG);
    for round in 1..=PING_ROUNDS {
        ctx.gic
            .send_sgi(SGI_PING, SgiTarget::Mpidr(smp::mpidr_of(1)));
        let answered = wait_with_irqs(WAIT_MS, || CPUS[0].sgis(SGI_PONG) - pongs0[0] >= round);
        if !answered {
            report.fail(
                NAME,
                format_args!(
                    "round {round}: no pong within {WAIT_MS} ms (vCPU 1 took {} ping(s) so far)",
                    CPUS[1].sgis(SGI_PING) - pings0[1]
                ),
            );
            return;
        }
    }
    wait_with_irqs(SETTLE_MS, || false);
    let pings = sgi_counts(SGI_PING);
    let pongs = sgi_counts(SGI_PONG);
    let mut stray = (0..ctx.cpus).filter(|&cpu| {
        let want_pings = if cpu == 1 { PING_ROUNDS } else { 0 };
        let want_pongs = if cpu == 0 { PING_ROUNDS } else { 0 };
        pings[cpu] - pings0[cpu] != want_pings || pongs[cpu] - pongs0[cpu] != want_pongs
    });
    if let Some(cpu) = stray.next() {
        report.fail(
            NAME,
            format_args!(
                "vCPU {cpu} took {} ping(s) and {} pong(s) in {PING_ROUNDS} rounds",
                pings[cpu] - pings0[cpu],
                pongs[cpu] - pongs0[cpu]
            ),
        );
        return;
    }
    if ctx.gic.version() == Version::V2 {
        // GICC_IAR names the source CPU of an SGI.
        let from0 = load(&CPUS[1].sgi_sources[SGI_PING as usize]);
        let from1 = load(&CPUS[0].sgi_sources[SGI_PONG as usize]);
        if from0 != 1 << 0 || from1 != 1 << 1 {
            report.fail(
                NAME,
                format_args!(
                    "GICC_IAR source CPUs: pings from {from0:#b}, pongs from {from1:#b} \
                     (want 0b1 and 0b10)"
                ),
            );
            return;
        }
    }
    report.pass(NAME);
}

/// SGI `intid` from vCPU 0 to every other vCPU: as a target list (multicast) or with IRM /
/// the "all but self" filter (broadcast). Each must take it exactly once, vCPU 0 never.
fn sgi_fanout(report: &mut Report, ctx: &Ctx, name: &str, intid: u32) {
    let before = sgi_counts(intid);
    let target = if intid == SGI_BROADCAST {
        SgiTarget::Others
    } else {
        SgiTarget::List(ctx.secondaries().fold(0u16, |mask, cpu| mask | 1 << cpu))
    };
    ctx.gic.send_sgi(intid, target);
    let all = wait_with_irqs(WAIT_MS, || {
        ctx.secondaries()
            .all(|cpu| CPUS[cpu].sgis(intid) > before[cpu])
    });
    wait_with_irqs(SETTLE_MS, || false);
    let after = sgi_counts(intid);
    let wrong = (0..ctx.cpus).find(|&cpu| {
        let want = u32::from(cpu != 0);
        after[cpu] - before[cpu] != want
    });
    match wrong {
        Some(cpu) => report.fail(
            name,
            format_args!(
                "vCPU {cpu} took SGI {intid} {} time(s){}",
                after[cpu] - before[cpu],
                if all {
                    ""
                } else {
                    " (not every target took it in time)"
                }
            ),
        ),
        None => report.pass(name),
    }
}

/// Tells vCPU `cpu` to call CPU_OFF and waits until AFFINITY_INFO says OFF. `Err` says why not.
fn turn_off(cpu: usize) -> Result<(), &'static str> {
    let seq = shared::command(cpu, OP_OFF);
    if !smp::wait_until(smp::ms(WAIT_MS), || load(&CPUS[cpu].handled) == seq) {
        return Err("did not take the CPU_OFF command");
    }
    let off = smp::wait_until(smp::ms(WAIT_MS), || {
        psci::affinity_info(smp::mpidr_of(cpu), 0) == affinity::OFF
    });
    if load(&CPUS[cpu].off_returned) != 0 {
        return Err("CPU_OFF returned");
    }
    if !off {
        return Err("AFFINITY_INFO never said OFF");
    }
    Ok(())
}

fn cpu_off(report: &mut Report, ctx: &Ctx) {
    let last = ctx.last();
    match turn_off(last) {
        Ok(()) => report.pass("cpu-off"),
        Err(why) => report.fail(
            "cpu-off",
            format_args!(
                "vCPU {last}: {why} (AFFINITY_INFO {}, CPU_OFF returned {})",
                psci::affinity_info(smp::mpidr_of(last), 0),
                load64(&CPUS[last].off_ret) as i64
            ),
        ),
    }
}

fn cpu_on_after_off(report: &mut Report, ctx: &Ctx) {
    const NAME: &str = "cpu-on-after-off";
    let last = ctx.last();
    if psci::affinity_info(smp::mpidr_of(last), 0) != affinity::OFF {
        report.fail(NAME, format_args!("vCPU {last} is not off to begin with"));
        return;
    }
    let life = load(&CPUS[last].arrivals) + 1;
    let ret = smp::start_cpu(
        smp::mpidr_of(last),
        secondary::secondary,
        CONTEXT_TAG | last as u64,
    );
    if ret != psci_ret::SUCCESS {
        report.fail(
            NAME,
            format_args!(
                "CPU_ON(vCPU {last}) after CPU_OFF returned {ret} ({})",
                psci_ret::name(ret)
            ),
        );
        return;
    }
    if !wait_ready(last, life) {
        report.fail(NAME, format_args!("vCPU {last} did not report in again"));
        return;
    }
    let x0 = load64(&CPUS[last].context);
    let mpidr = load64(&CPUS[last].mpidr);
    let before = CPUS[last].sgis(SGI_MULTICAST);
    ctx.gic.send_sgi(SGI_MULTICAST, SgiTarget::List(1 << last));
    let took = wait_with_irqs(WAIT_MS, || CPUS[last].sgis(SGI_MULTICAST) > before);
    let ok = x0 == CONTEXT_TAG | last as u64 && mpidr == MPIDR_RES1 | last as u64 && took;
    if !ok {
        report.fail(
            NAME,
            format_args!(
                "vCPU {last} back with x0 = {x0:#x}, MPIDR_EL1 = {mpidr:#x}, took the SGI: {took}"
            ),
        );
        return;
    }
    match turn_off(last) {
        Ok(()) => report.pass(NAME),
        Err(why) => report.fail(NAME, format_args!("vCPU {last} the second time: {why}")),
    }
}

fn all_off(report: &mut Report, ctx: &Ctx) {
    const NAME: &str = "all-off";
    for cpu in ctx.secondaries() {
        if psci::affinity_info(smp::mpidr_of(cpu), 0) == affinity::OFF {
            continue;
        }
        if let Err(why) = turn_off(cpu) {
            report.fail(NAME, format_args!("vCPU {cpu}: {why}"));
            return;
        }
    }
    let states: [i64; MAX_CPUS] = core::array::from_fn(|cpu| {
        if cpu < ctx.cpus {
            psci::affinity_info(smp::mpidr_of(cpu), 0)
        } else {
            affinity::OFF
        }
    });
    let ok = states[0] == affinity::ON && states[1..].iter().all(|&s| s == affinity::OFF);
    report.check(
        NAME,
        ok,
        format_args!("AFFINITY_INFO of vCPUs 0..: {:?}", &states[..ctx.cpus]),
    );
}

fn no_stray_irqs(report: &mut Report, ctx: &Ctx) {
    let stray = (0..ctx.cpus).find(|&cpu| load(&CPUS[cpu].other_irqs) != 0);
    match stray {
        Some(cpu) => report.fail(
            "no-stray-irqs",
            format_args!(
                "vCPU {cpu} took {} interrupt(s) that are not SGIs",
                load(&CPUS[cpu].other_irqs)
            ),
        ),
        None => report.pass("no-stray-irqs"),
    }
}
