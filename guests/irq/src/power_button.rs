//! The power button: the PL061 GPIO controller every elvisor VM has where QEMU virt has its
//! own, with a `gpio-keys` KEY_POWER on line 3 (ARM PrimeCell GPIO PL061 TRM, DDI 0190B).
//! Runs only with `power-button` in the guest's bootargs (boards/qemu-virt/vms/
//! irq-power-button.dtsi), where the hypervisor presses the button a while after boot
//! (`elvisor.test-power-button=irq-pb@<ms>`); otherwise silent.
//!
//! ```text
//!   gpio-id        the device tree's pl061 and gpio-keys nodes (line 3, KEY_POWER); the
//!                  PrimeCell IDs (GPIOPeriphID0-3 0x00041061 under the AMBA mask,
//!                  GPIOPCellID0-3 0xB105F00D); every line an input, line 3 low
//!   power-button   both edges of line 3 unmasked (GPIOIBE, GPIOIE): the press raises SPI 7
//!                  with the line reading high through GPIODATA's address mask, GPIOIC clears
//!                  it, the release raises it again with the line low (held 100 ms from the
//!                  press: at least 50 ms after the guest saw it, under a loaded host)
//! ```
//!
//! Run first, right after the GIC's bring-up, so the press finds the test waiting.

use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::timer::Timer;
use elvisor_guest_rt::{BootInfo, Report, dt, gic};

use crate::wait::{self, ms};
use crate::{Ctx, log};

const GPIODIR: usize = 0x400;
const GPIOIS: usize = 0x404;
const GPIOIBE: usize = 0x408;
const GPIOIE: usize = 0x410;
const GPIORIS: usize = 0x414;
const GPIOIC: usize = 0x41C;
const GPIOPERIPHID0: usize = 0xFE0;
const GPIOPCELLID0: usize = 0xFF0;

/// The button's line, and GPIODATA's offset that reads only it (address bits [9:2] = mask).
const LINE: u32 = 3;
const BIT: u32 = 1 << LINE;
const DATA_LINE: usize = (BIT as usize) << 2;
/// KEY_POWER (Linux include/uapi/linux/input-event-codes.h).
const KEY_POWER: u32 = 116;

/// Whether this run asked for the power-button tests.
pub fn wanted(boot: &BootInfo) -> bool {
    boot.bootarg("power-button").is_some()
}

/// `gpio-id` then `power-button`.
pub fn run(report: &mut Report, ctx: &Ctx, boot: &BootInfo) {
    let fdt = boot.fdt.as_ref();
    let gpio = fdt.and_then(|f| dt::find_compatible(f, &["arm,pl061"]));
    let keys = fdt.and_then(|f| dt::find_compatible(f, &["gpio-keys"]));
    let (Some(node), Some(keys)) = (gpio, keys) else {
        report.fail("gpio-id", format_args!("no arm,pl061 or gpio-keys node"));
        report.fail(
            "power-button",
            format_args!("no arm,pl061 or gpio-keys node"),
        );
        return;
    };
    let (Some(regs), Some(intid)) = (
        dt::reg_range(node, 0),
        dt::gic_interrupt(node, 0).and_then(|i| i.intid()),
    ) else {
        report.fail(
            "gpio-id",
            format_args!("the PL061 node has no reg or interrupts"),
        );
        report.fail("power-button", format_args!("no PL061 registers"));
        return;
    };
    let Some(g) = Region::new(regs.start, 0x1000) else {
        report.fail(
            "gpio-id",
            format_args!("PL061 at {:#x} not usable", regs.start),
        );
        report.fail("power-button", format_args!("no PL061 registers"));
        return;
    };
    let key = keys.children().find(|c| c.name == "poweroff");
    let gpios: [u32; 3] = key
        .and_then(|k| k.property("gpios"))
        .map(|p| {
            let mut cells = p
                .value
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            [
                cells.next().unwrap_or(0),
                cells.next().unwrap_or(u32::MAX),
                cells.next().unwrap_or(u32::MAX),
            ]
        })
        .unwrap_or([0, u32::MAX, u32::MAX]);
    let code = key.and_then(|k| dt::u32_property(k, "linux,code"));
    let phandle = dt::u32_property(node, "phandle");
    let id = |base: usize| {
        (0..4).fold(0u32, |acc, i| {
            acc | ((g.read32(base + 4 * i) & 0xff) << (8 * i))
        })
    };
    let (periph, cell) = (id(GPIOPERIPHID0), id(GPIOPCELLID0));
    let (dir, line) = (g.read32(GPIODIR), g.read32(DATA_LINE));
    report.note(format_args!(
        "PL061 at {:#x} INTID {intid}: PeriphID {periph:#010x} PCellID {cell:#010x}; \
         gpio-keys poweroff gpios <{:#x} {} {}> linux,code {code:?}",
        regs.start, gpios[0], gpios[1], gpios[2]
    ));
    report.check(
        "gpio-id",
        periph & 0x000f_ffff == 0x0004_1061
            && cell == 0xB105_F00D
            && phandle == Some(gpios[0])
            && gpios[1..] == [LINE, 0]
            && code == Some(KEY_POWER)
            && dir == 0
            && line == 0,
        format_args!(
            "PeriphID {periph:#x}, PCellID {cell:#x}, gpios <{:#x} {} {}> (PL061 phandle \
             {phandle:?}), linux,code {code:?}, GPIODIR {dir:#x}, line 3 {line:#x}",
            gpios[0], gpios[1], gpios[2]
        ),
    );
    press(report, ctx, &g, intid, regs.start);
}

fn press(report: &mut Report, ctx: &Ctx, g: &Region, intid: u32, base: usize) {
    const NAME: &str = "power-button";
    ctx.prepare(report, NAME);
    // Both edges of line 3, edge-sensitive, unmasked; nothing latched from before.
    g.write32(GPIOIS, 0);
    g.write32(GPIOIBE, BIT);
    g.write32(GPIOIC, 0xff);
    g.write32(GPIOIE, BIT);
    let gic = &ctx.gic;
    gic.set_priority(intid, gic::DEFAULT_PRIORITY);
    gic.enable(intid);
    log::set_device_ack_value(intid, base + GPIOIC, BIT);
    // The press: the hypervisor's `elvisor.test-power-button` is seconds away at most.
    let pressed = wait::spin_until(ms(20_000), || log::count_of(intid) >= 1);
    let at_press = Timer::Virtual.count();
    let high = g.read32(DATA_LINE);
    let released = pressed && wait::spin_until(ms(5_000), || log::count_of(intid) >= 2);
    let held_ms = Timer::Virtual.count().wrapping_sub(at_press) / ms(1).max(1);
    let low = g.read32(DATA_LINE);
    // Nothing more: the line stays low.
    wait::spin_for(ms(50));
    let total = log::count_of(intid);
    let ris = g.read32(GPIORIS);
    g.write32(GPIOIE, 0);
    gic.disable(intid);
    log::set_device_ack(u32::MAX, 0);
    let leftover = ctx.drain();
    report.note(format_args!(
        "power button: line 3 high at the press ({high:#x}), low {held_ms} ms later ({low:#x})"
    ));
    report.check(
        NAME,
        pressed
            && released
            && high == BIT
            && low == 0
            && total == 2
            && ris == 0
            && held_ms >= 50
            && leftover == 0,
        format_args!(
            "press {} (line {high:#x}), release {} after {held_ms} ms (line {low:#x}); {total} \
             interrupt(s) {intid}, want 2; GPIORIS {ris:#x}; {leftover} left pending ({})",
            if pressed { "seen" } else { "not seen in 20 s" },
            if released { "seen" } else { "not seen in 5 s" },
            log::Snapshot::take().intids()
        ),
    );
}
