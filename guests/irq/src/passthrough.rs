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
}
