//! A host device passed through to the VM: the PL031 RTC of QEMU virt, when the VM's
//! configuration gives it one (boards/qemu-virt/vms/irq-passthrough.dtsi).
//!
//! Its alarm interrupt is a physical SPI the hypervisor forwards with the HW bit: the guest's
//! EOI deactivates the physical interrupt. Two alarms in a row prove it: if the first were
//! never deactivated at the physical GIC, the second could not fire.

use elvisor_guest_rt::arch::{irq, mmio::Region};
use elvisor_guest_rt::{Report, dt, gic};

use crate::wait::{self, ms};
use crate::{Ctx, log};

const RTCDR: usize = 0x00;
const RTCMR: usize = 0x04;
const RTCIMSC: usize = 0x10;
const RTCICR: usize = 0x1c;

/// Runs only when the device tree has a PL031 (a passthrough VM); otherwise silent.
pub fn rtc(report: &mut Report, ctx: &Ctx, fdt: Option<&fdt::Fdt<'static>>) {
    const NAME: &str = "passthrough-rtc";
    let Some(node) = fdt.and_then(|f| dt::find_compatible(f, &["arm,pl031"])) else {
        return;
    };
    let (Some(regs), Some(intid)) = (
        dt::reg_range(node, 0),
        dt::gic_interrupt(node, 0).and_then(|i| i.intid()),
    ) else {
        report.fail(
            NAME,
            format_args!("the PL031 node has no reg or interrupts"),
        );
        return;
    };
    let Some(rtc) = Region::new(regs.start, 0x1000) else {
        report.fail(
            NAME,
            format_args!("PL031 at {:#x} is not usable", regs.start),
        );
        return;
    };
    ctx.prepare(report, NAME);
    let g = &ctx.gic;
    g.set_priority(intid, gic::DEFAULT_PRIORITY);
    g.enable(intid);
    log::set_device_ack(intid, regs.start + RTCICR);
    let mut problems = 0;
    for round in 1..=2 {
        let before = log::count_of(intid);
        rtc.write32(RTCICR, 1);
        rtc.write32(RTCIMSC, 1);
        let now = rtc.read32(RTCDR);
        rtc.write32(RTCMR, now.wrapping_add(1));
        irq::unmask();
        // The RTC counts seconds of host time: the alarm comes within about one second.
        let arrived = wait::spin_until(ms(4000), || log::count_of(intid) > before);
        irq::mask();
        if !arrived {
            report.fail(
                NAME,
                format_args!(
                    "alarm {round}: no interrupt {intid} within 4 s (RTCDR {now}, MR {})",
                    now.wrapping_add(1)
                ),
            );
            problems += 1;
            break;
        }
    }
    rtc.write32(RTCIMSC, 0);
    rtc.write32(RTCICR, 1);
    if problems == 0 {
        report.check(
            NAME,
            log::count_of(intid) >= 2,
            format_args!("{} alarm interrupt(s), want 2", log::count_of(intid)),
        );
    }
    eoi_first(report, ctx, &rtc, intid);
}

/// `passthrough-eoi-first`: the handler EOIs (and so deactivates) the RTC's interrupt before
/// clearing the RTC, which is legal for a level-sensitive interrupt. The deactivation finds the
/// line still high, so the physical SPI is pending again at once; clearing the device then
/// lowers the line, and the interrupt must not be taken a second time (IHI 0069 §4.1.2: a
/// level-sensitive interrupt stops being pending when its line is deasserted). Each alarm must
/// be taken exactly once (a spurious acknowledge, INTID 1023, is what a GIC without
/// virtualization may also give in that window, and is not counted), and a third alarm after
/// the two still arrives.
fn eoi_first(report: &mut Report, ctx: &Ctx, rtc: &Region, intid: u32) {
    const NAME: &str = "passthrough-eoi-first";
    ctx.prepare(report, NAME);
    log::set_device_clear_after_eoi(true);
    let mut problem = None;
    for round in 1..=2 {
        let before = log::count_of(intid);
        rtc.write32(RTCICR, 1);
        rtc.write32(RTCIMSC, 1);
        let now = rtc.read32(RTCDR);
        rtc.write32(RTCMR, now.wrapping_add(1));
        let arrived = wait::spin_until(ms(4000), || log::count_of(intid) > before);
        // Watch for a second delivery of the same alarm.
        wait::spin_for(ms(50));
        let got = log::count_of(intid) - before;
        if !arrived || got != 1 {
            problem = Some((round, got));
            break;
        }
    }
    rtc.write32(RTCIMSC, 0);
    rtc.write32(RTCICR, 1);
    log::set_device_clear_after_eoi(false);
    let leftover = ctx.drain();
    match problem {
        Some((round, got)) => report.fail(
            NAME,
            format_args!(
                "alarm {round}: interrupt {intid} taken {got} time(s), want exactly once ({})",
                crate::log::Snapshot::take().intids()
            ),
        ),
        None => report.check(
            NAME,
            leftover == 0,
            format_args!("{leftover} interrupt(s) still pending after the alarms"),
        ),
    }
}
