//! elvisor interrupt guest: tests, from inside a VM, the virtual GIC (GICv2 or GICv3, whichever
//! the device tree describes) and the EL1 timers, one `IRQ PASS/FAIL` line per test.
//!
//! ```text
//!   banner                    EL, MIDR, MPIDR, CPUs, CNTFRQ, GIC blocks, timer INTIDs
//!   gic-id                    PIDR2.ArchRev, TYPER.ITLinesNumber, (v3) SRE, GICR_TYPER, WAKER
//!   -- bring-up: distributor on, SGIs/PPIs reset, PMR 0xff, EOImode 0, IRQ handler in --
//!   spurious                  IAR with nothing pending is 1023
//!   self-ipi                  SGI 7 to self: pending while masked, IAR value, delivered once
//!   priority-order            six SGIs of distinct priorities arrive highest priority first
//!   pmr-masking               PMR 0x80 holds back a priority 0x80 SGI, PMR 0x90 lets it in
//!   lr-overflow               SGIs 0..15 at once (more than QEMU's 4 list registers)
//!   eoimode1                  EOImode 1: EOIR leaves the SGI active and blocks a re-pend,
//!                             DIR deactivates and lets it in
//!   vtimer, ptimer            CNTV / CNTP 1 ms ahead: one interrupt, not early, not late
//!   wfi-wakes                 WFI blocks until the timer fires; returns at once if an
//!                             interrupt is already pending
//!   vtimer-level              the virtual timer's pending state follows its line: dropped
//!                             with IRQs masked (ENABLE=0, IMASK=1, CVAL ahead) it reads 0
//!                             and is not delivered; kept high it reads 1, delivered once
//!   gpio-id, power-button     with `power-button` in the bootargs only (run first): the
//!                             PL061 and gpio-keys of the VM, a press of its power button
//!                             (see power_button.rs)
//!   (cross-vCPU tests)        skipped with a note: they are guests/smp's
//!   IRQ RESULT: passed=N failed=M, then PSCI SYSTEM_OFF (returning from main)
//! ```
//!
//! The tests that need nothing but SGIs and busy-polls run first; the timer tests, which sleep
//! in WFI, run last, so a hypervisor that never wakes a vCPU from WFI still leaves the other
//! results on the console. Every wait is bounded (see [`wait`]).
//!
//! Without a hypervisor (`qemu-system-aarch64 -M virt,gic-version=3 -cpu max -kernel irq.img`,
//! or `gic-version=2 -cpu cortex-a72`) QEMU's own GIC and timers are at the same addresses,
//! and every test passes.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod findings;
mod gic_tests;
mod level_tests;
mod log;
mod passthrough;
mod power_button;
mod timer_tests;
mod wait;

use elvisor_guest_rt::arch::{self, irq};
use elvisor_guest_rt::gic::{self, Gic, Version};
use elvisor_guest_rt::timer::{self, Timer, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, Report, dt};

elvisor_guest_rt::entry!(main);

/// Every test, in the order run (the names of the PASS/FAIL lines).
const TESTS: [&str; 11] = [
    "gic-id",
    "spurious",
    "self-ipi",
    "priority-order",
    "pmr-masking",
    "lr-overflow",
    "eoimode1",
    "vtimer",
    "ptimer",
    "wfi-wakes",
    "vtimer-level",
];

/// What every test works with.
pub struct Ctx {
    /// This CPU's view of the GIC.
    pub gic: Gic,
    /// The timer INTIDs.
    pub timers: TimerInterrupts,
    /// CPUs in `/cpus`.
    pub cpus: usize,
}

impl Ctx {
    /// The starting state of every test (and of each part of one): IRQs masked at the PE,
    /// PMR 0xff, EOImode 0, no SGI/PPI active or pending, the delivery log empty.
    ///
    /// A failed test may leave interrupts active (never EOIed: the running priority stays up
    /// and blocks everything of equal or lower priority) or pending (delivered later, into
    /// another test's log). They are completed or cleared here, and a note says so; the test
    /// that left them has already failed.
    pub fn prepare(&self, report: &Report, name: &str) {
        irq::mask();
        self.gic.set_priority_mask(gic::PRIORITY_MASK_NONE);
        log::set_split_eoi(None);
        if self.gic.split_eoi() {
            self.gic.set_split_eoi(false);
        }
        let rpr = self.gic.running_priority();
        let active = self.gic.banked_active();
        if rpr != gic::PRIORITY_MASK_NONE || active != 0 {
            self.complete_active(active);
            report.note(format_args!(
                "{name}: left over from earlier: running priority {rpr:#x}, ISACTIVER0 {active:#x}; \
                 completed them: now {:#x}, {:#x}",
                self.gic.running_priority(),
                self.gic.banked_active()
            ));
        }
        let pending = self.gic.banked_pending();
        if pending != 0 {
            for intid in (0..gic::FIRST_SPI).filter(|intid| pending & (1 << intid) != 0) {
                self.gic.clear_pending(intid);
            }
            report.note(format_args!(
                "{name}: left over from earlier: ISPENDR0 {pending:#x}; cleared: now {:#x}",
                self.gic.banked_pending()
            ));
        }
        log::reset();
    }

    /// EOIs the SGIs/PPIs in `active`, highest priority (lowest value) first as nesting requires,
    /// then clears any active state that remains.
    fn complete_active(&self, active: u32) {
        let mut remaining = active;
        while remaining != 0 {
            let Some(intid) = (0..gic::FIRST_SPI)
                .filter(|intid| remaining & (1 << intid) != 0)
                .min_by_key(|&intid| self.gic.priority(intid))
            else {
                break;
            };
            // Single CPU: a GICv2 SGI's source CPU (IAR bits [12:10]) is 0.
            self.gic
                .end_of_interrupt(gic::Iar::from_raw(intid, self.gic.version()));
            remaining &= !(1 << intid);
        }
        for intid in 0..gic::FIRST_SPI {
            if self.gic.is_active(intid) {
                self.gic.clear_active(intid);
            }
        }
        // A priority never dropped although its interrupt was deactivated (DIR without EOIR
        // under EOImode 1): an EOIR drops the highest active priority; with EOImode 0 it also
        // deactivates its INTID, which is not active. Best effort: the GIC specs leave an EOIR
        // that does not match the last acknowledge UNPREDICTABLE, QEMU's GICs drop the priority.
        for _ in 0..8 {
            if self.gic.running_priority() == gic::PRIORITY_MASK_NONE {
                break;
            }
            let Some(idle) = (0..gic::FIRST_SPI).find(|&intid| !self.gic.is_active(intid)) else {
                break;
            };
            self.gic
                .end_of_interrupt(gic::Iar::from_raw(idle, self.gic.version()));
        }
    }

    /// With IRQs masked: acknowledges and completes whatever is still pending, returning how
    /// many (a test that failed half-way must not leave its interrupts to the next one).
    pub fn drain(&self) -> usize {
        let split = self.gic.split_eoi();
        let mut drained = 0;
        for _ in 0..64 {
            let iar = self.gic.acknowledge();
            if iar.is_special() {
                break;
            }
            self.gic.end_of_interrupt(iar);
            if split {
                self.gic.deactivate(iar);
            }
            drained += 1;
        }
        drained
    }
}

fn main(boot: &BootInfo) {
    let mut report = Report::new("IRQ");
    irq::mask();
    let fdt = boot.fdt.as_ref();
    let timers = TimerInterrupts::discover(fdt);
    let cpus = fdt.map_or(0, dt::cpu_count);

    let gic = match Gic::discover(fdt) {
        Ok(gic) => gic,
        Err(error) => {
            banner(&report, None, &timers, cpus);
            for name in TESTS {
                report.fail(name, format_args!("no usable GIC: {error}"));
            }
            report.finish();
            return;
        }
    };
    banner(&report, Some(&gic), &timers, cpus);
    let ctx = Ctx { gic, timers, cpus };

    gic_tests::gic_id(&mut report, &ctx);
    bring_up(&report, &ctx);
    if power_button::wanted(boot) {
        power_button::run(&mut report, &ctx, boot);
    }

    gic_tests::spurious(&mut report, &ctx);
    gic_tests::self_ipi(&mut report, &ctx);
    gic_tests::priority_order(&mut report, &ctx);
    gic_tests::pmr_masking(&mut report, &ctx);
    gic_tests::lr_overflow(&mut report, &ctx);
    gic_tests::eoimode1(&mut report, &ctx);
    timer_tests::timer(&mut report, &ctx, Timer::Virtual, "vtimer");
    timer_tests::timer(&mut report, &ctx, Timer::Physical, "ptimer");
    timer_tests::wfi_wakes(&mut report, &ctx);
    level_tests::vtimer_level(&mut report, &ctx);
    passthrough::rtc(&mut report, &ctx, fdt);
    cross_vcpu(&report, &ctx);

    irq::mask();
    report.finish();
}

fn banner(report: &Report, gic: Option<&Gic>, timers: &TimerInterrupts, cpus: usize) {
    report.note(format_args!(
        "elvisor interrupt guest: EL{} MIDR_EL1={:#x} MPIDR_EL1={:#x} cpus={cpus} CNTFRQ_EL0={} Hz",
        arch::current_el(),
        arch::midr(),
        arch::mpidr(),
        timer::frequency_hz(),
    ));
    let version = match gic.map(Gic::version) {
        Some(Version::V3) => "GICv3",
        Some(Version::V2) => "GICv2",
        None => "none",
    };
    let gicd = gic.map_or(0, |gic| gic.distributor().base());
    let (cpu_name, cpu_base) = match gic {
        Some(gic) if gic.version() == Version::V3 => (
            "GICR(this CPU)",
            gic.redistributor().map_or(0, |r| r.base()),
        ),
        Some(gic) => ("GICC", gic.cpu_interface().map_or(0, |r| r.base())),
        None => ("GICC/GICR", 0),
    };
    report.note(format_args!(
        "{version} GICD={gicd:#x} {cpu_name}={cpu_base:#x}; timer INTIDs virtual={} physical={} ({})",
        timers.virtual_,
        timers.physical,
        if timers.from_dtb {
            "from /timer"
        } else {
            "defaults: no usable /timer node"
        },
    ));
}

/// Distributor and CPU interface on, both timers stopped, the handler installed. Problems are
/// printed as notes: the tests that follow fail with the details.
fn bring_up(report: &Report, ctx: &Ctx) {
    Timer::Virtual.stop();
    Timer::Physical.stop();
    if let Err(error) = ctx.gic.init_distributor() {
        report.note(format_args!("bring-up: distributor: {error}"));
    }
    if let Err(error) = ctx.gic.init_cpu() {
        report.note(format_args!("bring-up: CPU interface: {error}"));
    }
    gic::install(&ctx.gic);
    log::init(&ctx.timers);
    let stale = ctx.drain();
    if stale > 0 {
        report.note(format_args!(
            "bring-up: {stale} interrupt(s) were pending after the reset of the SGIs/PPIs"
        ));
    }
}

/// Tests between vCPUs (virtual IPIs to another vCPU, multicast and broadcast SGIs, kicks of
/// a vCPU in WFI) live in the SMP guest (guests/smp), which starts its secondaries with PSCI
/// CPU_ON; this guest stays single-vCPU and says so.
fn cross_vcpu(report: &Report, ctx: &Ctx) {
    if ctx.cpus <= 1 {
        report.note(format_args!(
            "cross-vCPU tests skipped: /cpus has {} CPU",
            ctx.cpus
        ));
    } else {
        report.note(format_args!(
            "cross-vCPU tests skipped: /cpus has {} CPUs; guests/smp covers them",
            ctx.cpus
        ));
    }
}
