//! Tests of the GIC itself: identification, acknowledge, SGIs, priorities, the priority mask,
//! more pending interrupts than list registers, and split priority drop / deactivation.
//!
//! Each test starts from [`Ctx::prepare`] (IRQs masked at the PE, PMR 0xff, empty log), makes
//! its interrupts pending while masked, unmasks for a bounded wait, and masks again before it
//! looks at the log. Priorities are multiples of 0x20 so they survive any implemented priority
//! width down to 3 bits (a GICv3 virtual CPU interface has at least 5, GICv2 GICV 5).

use elvisor_guest_rt::arch;
use elvisor_guest_rt::gic::{self, SgiTarget, Version, gicr};
use elvisor_guest_rt::{Report, arch::gicv3};

use crate::Ctx;
use crate::findings::Findings;
use crate::log::{self, Snapshot};
use crate::wait::{self, ms};

/// How long a pending, unmasked SGI may take to arrive (it should be at once).
const DELIVERY_MS: u64 = 100;
/// How long to watch for something that must not arrive (a duplicate, a masked interrupt).
const QUIET_MS: u64 = 2;

fn arch_rev(pidr2: u32) -> u32 {
    (pidr2 >> 4) & 0xf
}

/// `gic-id`: the distributor (and redistributor) identify as the GIC version the device tree
/// names; GICv3 also: ICC_SRE_EL1.SRE sticks, this CPU's GICR_TYPER, GICR_WAKER wake-up.
pub fn gic_id(report: &mut Report, ctx: &Ctx) {
    let gic = &ctx.gic;
    let mut f = Findings::new();

    let pidr2 = gic.distributor_pidr2();
    let want_rev = match gic.version() {
        Version::V3 => 3,
        Version::V2 => 2,
    };
    f.expect(
        arch_rev(pidr2) == want_rev,
        format_args!(
            "GICD_PIDR2={pidr2:#x}: ArchRev {}, want {want_rev}",
            arch_rev(pidr2)
        ),
    );
    let typer = gic.distributor_typer();
    let it_lines = typer & gic::gicd::TYPER_ITLINES_MASK;
    f.expect(
        it_lines >= 1,
        format_args!("GICD_TYPER={typer:#x}: ITLinesNumber {it_lines}, want >= 1"),
    );

    match gic.version() {
        Version::V3 => gic_id_v3(&mut f, ctx),
        Version::V2 => {
            let iidr = gic.cpu_interface_iidr().unwrap_or(0);
            f.context(format_args!(
                "GICC_IIDR={iidr:#x}, GICD_TYPER.CPUNumber={}",
                (typer >> 5) & 7
            ));
        }
    }
    f.finish(report, "gic-id");
}

fn gic_id_v3(f: &mut Findings, ctx: &Ctx) {
    let gic = &ctx.gic;

    let sre_before = gicv3::sre();
    gicv3::set_sre(sre_before | gic::icc_bits::SRE_SRE);
    let sre = gicv3::sre();
    f.expect(
        sre & gic::icc_bits::SRE_SRE != 0,
        format_args!("ICC_SRE_EL1={sre:#x} after writing SRE=1 (was {sre_before:#x}), want SRE=1"),
    );

    let rd_pidr2 = gic.redistributor_pidr2().unwrap_or(0);
    f.expect(
        matches!(arch_rev(rd_pidr2), 3 | 4),
        format_args!(
            "GICR_PIDR2={rd_pidr2:#x}: ArchRev {}, want 3 (Linux stops its redistributor walk otherwise)",
            arch_rev(rd_pidr2)
        ),
    );

    let mpidr = arch::mpidr();
    let rd_typer = gic.redistributor_typer().unwrap_or(0);
    let affinity = (rd_typer >> gicr::TYPER_AFFINITY_SHIFT) as u32;
    f.expect(
        affinity == gic::affinity_of(mpidr),
        format_args!(
            "GICR_TYPER={rd_typer:#x}: affinity {affinity:#x}, want {:#x} (MPIDR_EL1={mpidr:#x})",
            gic::affinity_of(mpidr)
        ),
    );
    if ctx.cpus <= 1 {
        f.expect(
            rd_typer & gicr::TYPER_LAST != 0,
            format_args!("GICR_TYPER={rd_typer:#x}: Last clear for the only CPU"),
        );
        f.expect(
            affinity == 0,
            format_args!("GICR_TYPER affinity {affinity:#x} for the only CPU, want 0"),
        );
    }

    let waker_before = gic.redistributor_waker().unwrap_or(0);
    match gic.wake_redistributor() {
        Ok(waker) => f.expect(
            waker & (gicr::WAKER_PROCESSOR_SLEEP | gicr::WAKER_CHILDREN_ASLEEP) == 0,
            format_args!(
                "GICR_WAKER={waker:#x} after clearing ProcessorSleep (was {waker_before:#x}), \
                 want ProcessorSleep and ChildrenAsleep clear"
            ),
        ),
        Err(error) => f.fail(format_args!(
            "GICR_WAKER wake-up (was {waker_before:#x}): {error}"
        )),
    }
}

/// `spurious`: with nothing pending, acknowledging returns 1023 (twice in a row).
pub fn spurious(report: &mut Report, ctx: &Ctx) {
    ctx.prepare(report, "spurious");
    let mut f = Findings::new();
    for attempt in 1..=2 {
        let iar = ctx.gic.acknowledge();
        f.expect(
            iar.raw() == gic::SPURIOUS_INTID,
            format_args!(
                "IAR read {attempt} = {:#x} (INTID {}), want 1023 with nothing pending",
                iar.raw(),
                iar.intid()
            ),
        );
        if !iar.is_special() {
            ctx.gic.end_of_interrupt(iar);
        }
    }
    f.finish(report, "spurious");
}

/// `self-ipi`: SGI 7 sent to this CPU shows pending while IRQs are masked, then arrives once
/// with IAR = 7 (GICv2: source CPU 0 in bits `[12:10]`), and is neither pending nor active after.
pub fn self_ipi(report: &mut Report, ctx: &Ctx) {
    const SGI: u32 = 7;
    let gic = &ctx.gic;
    ctx.prepare(report, "self-ipi");
    let mut f = Findings::new();
    gic.set_priority(SGI, gic::DEFAULT_PRIORITY);
    gic.enable(SGI);

    gic.send_sgi(SGI, SgiTarget::Current);
    let pending = gic.is_pending(SGI);
    let hppir = gic.highest_pending();
    f.expect(
        pending,
        format_args!(
            "SGI {SGI} not pending in ISPENDR0 ({:#x}) while IRQs are masked",
            gic.banked_pending()
        ),
    );
    f.expect(
        hppir.intid() == SGI,
        format_args!(
            "HPPIR={:#x} while SGI {SGI} is pending, want INTID {SGI}",
            hppir.raw()
        ),
    );

    wait::spin_until(ms(DELIVERY_MS), || log::total() >= 1);
    wait::spin_for(ms(QUIET_MS));
    let log = Snapshot::take();
    f.expect(
        log.count_of(SGI) == 1 && log.total == 1,
        format_args!("delivered {} (want [{SGI}] once)", log.intids()),
    );
    if let Some(delivery) = log.first_of(SGI) {
        f.expect(
            delivery.iar == SGI,
            format_args!(
                "IAR={:#x}, want {SGI:#x} (INTID {SGI}{})",
                delivery.iar,
                if gic.version() == Version::V2 {
                    ", source CPU 0"
                } else {
                    ""
                }
            ),
        );
    }
    f.expect(
        !gic.is_pending(SGI) && !gic.is_active(SGI),
        format_args!(
            "after EOI: ISPENDR0={:#x} ISACTIVER0={:#x}, want bit {SGI} clear in both",
            gic.banked_pending(),
            gic.banked_active()
        ),
    );
    let leftover = ctx.drain();
    f.expect(
        leftover == 0,
        format_args!("{leftover} interrupt(s) still pending"),
    );
    f.finish(report, "self-ipi");
}

/// `priority-order`: six SGIs made pending together with distinct priorities arrive in
/// ascending priority value (highest priority first), each running at its own priority.
pub fn priority_order(report: &mut Report, ctx: &Ctx) {
    /// (SGI, priority): INTID order differs from priority order, and six exceed 4 LRs.
    const SGIS: [(u32, u8); 6] = [
        (1, 0xc0),
        (2, 0x40),
        (3, 0xa0),
        (4, 0x20),
        (5, 0x80),
        (6, 0x60),
    ];
    let gic = &ctx.gic;
    ctx.prepare(report, "priority-order");
    let mut f = Findings::new();

    for (sgi, priority) in SGIS {
        gic.set_priority(sgi, priority);
        gic.enable(sgi);
        let read = gic.priority(sgi);
        f.expect(
            read == priority,
            format_args!("SGI {sgi} priority reads {read:#x} after writing {priority:#x}"),
        );
    }
    let mut expected = SGIS;
    expected.sort_unstable_by_key(|&(_, priority)| priority);

    for (sgi, _) in SGIS {
        gic.send_sgi(sgi, SgiTarget::Current);
    }
    let pending = gic.banked_pending();
    wait::spin_until(ms(DELIVERY_MS), || log::total() >= SGIS.len());
    wait::spin_for(ms(QUIET_MS));
    let log = Snapshot::take();

    let in_order = log.total == SGIS.len()
        && log
            .deliveries()
            .iter()
            .zip(expected)
            .all(|(delivery, (sgi, _))| delivery.intid == sgi);
    f.expect(
        in_order,
        format_args!(
            "delivered {}, want [4, 2, 6, 5, 3, 1] (priorities 0x20, 0x40 .. 0xc0; ISPENDR0 was {pending:#x})",
            log.intids()
        ),
    );
    for delivery in log.deliveries() {
        if let Some(&(_, priority)) = SGIS.iter().find(|(sgi, _)| *sgi == delivery.intid) {
            f.expect(
                delivery.running_priority == priority,
                format_args!(
                    "SGI {} handled at running priority {:#x}, want {priority:#x}",
                    delivery.intid, delivery.running_priority
                ),
            );
        }
    }

    let leftover = ctx.drain();
    f.expect(
        leftover == 0,
        format_args!("{leftover} interrupt(s) still pending"),
    );
    for (sgi, _) in SGIS {
        gic.set_priority(sgi, gic::DEFAULT_PRIORITY);
    }
    f.finish(report, "priority-order");
}

/// `pmr-masking`: an SGI of priority 0x80 stays pending (not taken, IRQs unmasked) while
/// PMR = 0x80, and arrives once PMR is raised to 0x90.
pub fn pmr_masking(report: &mut Report, ctx: &Ctx) {
    const SGI: u32 = 9;
    const PRIORITY: u8 = 0x80;
    let gic = &ctx.gic;
    ctx.prepare(report, "pmr-masking");
    let mut f = Findings::new();
    gic.set_priority(SGI, PRIORITY);
    gic.enable(SGI);
    let read = gic.priority(SGI);
    f.expect(
        read == PRIORITY,
        format_args!("SGI {SGI} priority reads {read:#x} after writing {PRIORITY:#x}"),
    );

    gic.set_priority_mask(PRIORITY);
    let pmr = gic.priority_mask();
    f.expect(
        pmr == PRIORITY,
        format_args!("PMR reads {pmr:#x} after writing {PRIORITY:#x}"),
    );
    gic.send_sgi(SGI, SgiTarget::Current);
    wait::spin_for(ms(QUIET_MS));
    let masked = Snapshot::take();
    f.expect(
        masked.total == 0,
        format_args!(
            "with PMR {PRIORITY:#x}, priority {PRIORITY:#x} SGI {SGI} was taken: {}",
            masked.intids()
        ),
    );
    f.expect(
        gic.is_pending(SGI),
        format_args!(
            "SGI {SGI} not pending while held back by PMR (ISPENDR0={:#x})",
            gic.banked_pending()
        ),
    );

    gic.set_priority_mask(PRIORITY + 0x10);
    wait::spin_until(ms(DELIVERY_MS), || log::total() >= 1);
    wait::spin_for(ms(QUIET_MS));
    let log = Snapshot::take();
    f.expect(
        log.count_of(SGI) == 1 && log.total == 1,
        format_args!(
            "after raising PMR to {:#x}: delivered {} (want [{SGI}] once)",
            PRIORITY + 0x10,
            log.intids()
        ),
    );

    gic.set_priority_mask(gic::PRIORITY_MASK_NONE);
    let leftover = ctx.drain();
    f.expect(
        leftover == 0,
        format_args!("{leftover} interrupt(s) still pending"),
    );
    gic.set_priority(SGI, gic::DEFAULT_PRIORITY);
    f.finish(report, "pmr-masking");
}

/// `lr-overflow`: all 16 SGIs pending at once (QEMU's GIC has 4 list registers): each is
/// delivered exactly once. Spurious acknowledges are allowed but reported.
pub fn lr_overflow(report: &mut Report, ctx: &Ctx) {
    let gic = &ctx.gic;
    ctx.prepare(report, "lr-overflow");
    let mut f = Findings::new();
    for sgi in 0..gic::SGI_COUNT {
        gic.set_priority(sgi, gic::DEFAULT_PRIORITY);
        gic.enable(sgi);
    }
    for sgi in 0..gic::SGI_COUNT {
        gic.send_sgi(sgi, SgiTarget::Current);
    }
    let pending = gic.banked_pending() & 0xffff;
    let want = gic::SGI_COUNT as usize;
    wait::spin_until(ms(2 * DELIVERY_MS), || log::total() >= want);
    wait::spin_for(ms(QUIET_MS));
    let log = Snapshot::take();

    let mut wrong = Findings::new();
    for sgi in 0..gic::SGI_COUNT {
        let count = log.count_of(sgi);
        if count != 1 {
            wrong.fail(format_args!("SGI {sgi} x{count}"));
        }
    }
    let others = log.count_other_than(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    f.expect(
        !wrong.failed() && others == 0 && !log.storm,
        format_args!(
            "delivered {} (ISPENDR0 was {pending:#06x}); want each of SGI 0..15 once",
            log.intids()
        ),
    );
    f.context(format_args!("{} spurious acknowledge(s)", log.spurious));

    let leftover = ctx.drain();
    f.expect(
        leftover == 0,
        format_args!("{leftover} interrupt(s) still pending"),
    );
    f.finish(report, "lr-overflow");
}

/// `eoimode1`: with EOImode = 1 an EOIR only drops the priority: the SGI stays active, a second
/// SGI of the same INTID is not delivered while it is; DIR deactivates it and lets the second in.
pub fn eoimode1(report: &mut Report, ctx: &Ctx) {
    const SGI: u32 = 11;
    let gic = &ctx.gic;
    ctx.prepare(report, "eoimode1");
    let mut f = Findings::new();
    gic.set_priority(SGI, gic::DEFAULT_PRIORITY);
    gic.enable(SGI);

    let split = gic.set_split_eoi(true);
    f.expect(split, format_args!("EOImode does not read back as 1"));
    log::set_split_eoi(Some(SGI));

    gic.send_sgi(SGI, SgiTarget::Current);
    wait::spin_until(ms(DELIVERY_MS), || log::total() >= 1);
    let first = Snapshot::take();
    match first.first_of(SGI) {
        Some(delivery) if first.total == 1 => {
            let iar = delivery.iar;
            f.expect(
                gic.is_active(SGI),
                format_args!(
                    "after EOIR: SGI {SGI} not active (ISACTIVER0={:#x})",
                    gic.banked_active()
                ),
            );
            let rpr = gic.running_priority();
            f.expect(
                rpr == 0xff,
                format_args!("after EOIR: running priority {rpr:#x}, want 0xff (priority dropped)"),
            );

            gic.send_sgi(SGI, SgiTarget::Current);
            wait::spin_for(ms(QUIET_MS));
            let while_active = Snapshot::take();
            f.expect(
                while_active.total == 1,
                format_args!(
                    "second SGI {SGI} delivered while the first was active: {}",
                    while_active.intids()
                ),
            );
            f.context(format_args!(
                "while active: ISPENDR0={:#x} ISACTIVER0={:#x}",
                gic.banked_pending(),
                gic.banked_active()
            ));

            ctx.gic.deactivate(acked(ctx, iar));
            let active_after_dir = gic.is_active(SGI);
            f.expect(
                !active_after_dir,
                format_args!(
                    "after DIR: SGI {SGI} still active (ISACTIVER0={:#x})",
                    gic.banked_active()
                ),
            );
            wait::spin_until(ms(DELIVERY_MS), || log::total() >= 2);
            let second = Snapshot::take();
            f.expect(
                second.count_of(SGI) == 2 && second.total == 2,
                format_args!(
                    "after DIR: delivered {} (want [{SGI}, {SGI}])",
                    second.intids()
                ),
            );
            if let Some(delivery) = second.deliveries().get(1) {
                ctx.gic.deactivate(acked(ctx, delivery.iar));
            }
        }
        _ => f.fail(format_args!(
            "delivered {} (want [{SGI}] once)",
            first.intids()
        )),
    }
    f.expect(
        !gic.is_active(SGI),
        format_args!(
            "SGI {SGI} active at the end (ISACTIVER0={:#x})",
            gic.banked_active()
        ),
    );

    log::set_split_eoi(None);
    let leftover = ctx.drain();
    if gic.is_active(SGI) {
        gic.clear_active(SGI);
    }
    let restored = gic.set_split_eoi(false);
    f.expect(restored, format_args!("EOImode does not read back as 0"));
    f.expect(
        leftover == 0,
        format_args!("{leftover} interrupt(s) still pending"),
    );
    f.finish(report, "eoimode1");
}

/// Rebuilds the [`gic::Iar`] for a raw value the handler recorded.
fn acked(ctx: &Ctx, raw: u32) -> gic::Iar {
    gic::Iar::from_raw(raw, ctx.gic.version())
}
