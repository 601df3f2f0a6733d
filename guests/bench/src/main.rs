//! elvisor microbenchmark guest: measures, from inside a VM, what the hypervisor costs, and
//! prints one machine-readable `BENCH name=...` line per benchmark (format in [`results`]),
//! a table, `BENCH DONE`, then powers off with PSCI SYSTEM_OFF.
//!
//! ```text
//!   boot-to-guest       CNTPCT_EL0 read by the image's first instruction (arch's entry hook)
//!   hypercall           hvc #0, x0 = 0x8200ffff (unallocated SiP call -> NOT_SUPPORTED)
//!   psci-version        hvc #0, x0 = PSCI_VERSION
//!   io-kernel           32-bit read of the console PL011's UARTFR (emulated by the hypervisor)
//!   vgic-dist-read      32-bit read of GICD_TYPER (the hypervisor's distributor model)
//!   sysreg-trap         mrs cntp_ctl_el0 (trapped, emulated EL1 physical timer)
//!   virtual-eoi         acknowledge + EOI of a pending SGI (no exit expected)
//!   timer-irq-latency   virtual timer condition -> first instruction of the guest's IRQ vector
//!   vtimer-tick         a 100 Hz virtual timer tick: condition -> handled, back in the guest's loop
//!   virtual-ipi         SGI from one vCPU to another (needs 2 CPUs in the device tree)
//!   vm-switch           two VMs time-sliced on one CPU: a separate run (bootarg bench=vm-switch,
//!                       see [`switch`]); the normal run prints it as skipped
//!   first-touch         first write to a 2 MiB block of RAM untouched since boot
//!   guest-compute       ~30 M instructions of compute over a 64 MiB buffer, no exits
//!                       (every page touched once before the clock starts)
//! ```
//!
//! Loops run [`LOOP_ITERS`] times and have the same loop with a `nop` in place of the operation
//! subtracted; see [`arch`] for the timing method (CNTVCT_EL0 between `isb`s: under QEMU
//! `-icount shift=0 -cpu max` one tick is one instruction).
//!
//! The same image runs natively at EL1 (`qemu-system-aarch64 -M virt,gic-version=3 -cpu max
//! -m 1G -icount shift=0,sleep=off -kernel bench.img`): QEMU's own GIC, timers and PSCI then
//! answer, the exits cost nothing, and `guest-compute` / `virtual-eoi` give the reference
//! figures `scripts/bench` compares with. Nothing here needs the hypervisor except `vm-switch`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod arch;
mod compute;
mod ipi;
mod irqs;
mod results;
mod switch;

use elvisor_guest_rt::console::{self, pl011};
use elvisor_guest_rt::gic::{self, Gic, GicError, Version};
use elvisor_guest_rt::smccc::{self, Conduit, NOT_SUPPORTED, fid};
use elvisor_guest_rt::timer::{self, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, Report, dt, println};

use crate::arch::{Mmio, Op};
use crate::results::{Outcome, Results, text};

elvisor_guest_rt::entry!(main);

/// Iterations of every timed loop (a few hundred thousand to a few million instructions each).
const LOOP_ITERS: u64 = 4096;
/// Warm-up iterations before a timed loop (first-use paths stay out of the figure).
const WARMUP_ITERS: u64 = 16;
/// SGIs acknowledged in `virtual-eoi`.
const EOI_ITERS: u64 = 1024;
/// Timer interrupts in `timer-irq-latency`.
const TIMER_ROUNDS: u64 = 64;
/// Ticks in `vtimer-tick`.
const TICK_ROUNDS: u64 = 32;
/// IPIs in `virtual-ipi`.
const IPI_ROUNDS: u64 = 64;

/// An SMCCC function id no service implements: fast call, SMC32, owner 2 (SiP), function
/// 0xffff. A hypervisor must answer NOT_SUPPORTED (SMCCC 1.1+).
const UNALLOCATED_FID: u32 = elvisor_guest_rt::abi::hypercall::UNALLOCATED_SIP;

fn main(boot: &BootInfo) {
    // Sets the prefix of the runtime's panic and exception lines: `BENCH FAIL: ...`.
    let _report = Report::new("BENCH");
    if boot.bootarg("bench") == Some("vm-switch") {
        switch::trace(boot);
        smccc::psci::system_off();
    }
    let boot_count = arch::boot_count();
    let fdt = boot.fdt.as_ref();
    let gic = Gic::discover(fdt);
    let timers = TimerInterrupts::discover(fdt);
    println!(
        "BENCH info mode={} el={} cntfrq_hz={} cpus={} gic={} midr={:#x} dtb={:#x} uart={:#x}",
        if boot.reset_count.is_some() {
            "elvisor"
        } else {
            "native"
        },
        elvisor_guest_rt::arch::current_el(),
        timer::frequency_hz(),
        fdt.map_or(0, dt::cpu_count),
        match &gic {
            Ok(g) if g.version() == Version::V3 => "v3",
            Ok(_) => "v2",
            Err(_) => "none",
        },
        elvisor_guest_rt::arch::midr(),
        boot.dtb,
        boot.uart_base,
    );

    let mut results = Results::new();
    results.add("boot-to-guest", boot_to_guest(boot_count));
    results.add("hypercall", hypercall());
    results.add("psci-version", psci_version(boot));
    results.add("io-kernel", io_kernel());
    results.add("vgic-dist-read", vgic_dist_read(&gic));
    results.add("sysreg-trap", loop_bench(Op::ReadCntpCtl, text!("")));

    let gic_up = gic.and_then(|g| {
        g.init_distributor()?;
        g.wake_redistributor()?;
        g.init_cpu()?;
        Ok(g)
    });
    results.add(
        "virtual-eoi",
        with_gic(&gic_up, |g| irqs::virtual_eoi(g, EOI_ITERS)),
    );
    results.add(
        "timer-irq-latency",
        with_gic(&gic_up, |g| {
            irqs::timer_irq_latency(g, &timers, TIMER_ROUNDS)
        }),
    );
    results.add(
        "vtimer-tick",
        with_gic(&gic_up, |g| irqs::vtimer_tick(g, &timers, TICK_ROUNDS)),
    );
    results.add(
        "virtual-ipi",
        with_gic(&gic_up, |g| ipi::virtual_ipi(boot, g, IPI_ROUNDS)),
    );
    results.add("vm-switch", vm_switch(boot));
    results.add("first-touch", compute::first_touch());
    results.add("guest-compute", compute::guest_compute());

    results.print_table();
    println!("BENCH DONE");
    smccc::psci::system_off();
}

/// Runs `f` with the GIC, or says why there is none.
fn with_gic(gic: &Result<Gic, GicError>, f: impl FnOnce(&Gic) -> Outcome) -> Outcome {
    match gic {
        Ok(g) => f(g),
        Err(GicError::NoGicNode | GicError::NoDeviceTree) => {
            Outcome::Skipped(text!("no GIC in the device tree"))
        }
        Err(e) => Outcome::Failed(text!("GIC bring-up: {e}")),
    }
}

/// A timed loop of `op` minus the same loop of `nop`s.
fn loop_bench(op: Op, extra: results::Text) -> Outcome {
    arch::time_loop(op, WARMUP_ITERS, true);
    let base = arch::time_loop(op, LOOP_ITERS, false);
    let real = arch::time_loop(op, LOOP_ITERS, true);
    Outcome::Measured {
        iters: LOOP_ITERS,
        total: real as i64 - base as i64,
        range: None,
        extra,
    }
}

fn boot_to_guest(count: Option<u64>) -> Outcome {
    match count {
        Some(count) => Outcome::Measured {
            iters: 1,
            total: count as i64,
            range: None,
            extra: text!("counter=cntpct_el0"),
        },
        None => Outcome::Failed(text!("the entry hook did not record CNTPCT_EL0")),
    }
}

fn hypercall() -> Outcome {
    match smccc::try_hvc_call(UNALLOCATED_FID, 0, 0, 0) {
        Err(fault) => Outcome::Skipped(text!("hvc #0 raised an exception: {fault}")),
        Ok(ret) if ret[0] as i64 != NOT_SUPPORTED => Outcome::Failed(text!(
            "hvc {UNALLOCATED_FID:#x} returned {:#x}, not NOT_SUPPORTED",
            ret[0]
        )),
        Ok(_) => loop_bench(Op::Hvc(UNALLOCATED_FID), text!("fid={UNALLOCATED_FID:#x}")),
    }
}

fn psci_version(boot: &BootInfo) -> Outcome {
    if boot.psci_conduit != Conduit::Hvc {
        return Outcome::Skipped(text!("the PSCI conduit is smc, not hvc"));
    }
    match smccc::try_hvc_call(fid::PSCI_VERSION, 0, 0, 0) {
        Err(fault) => Outcome::Skipped(text!("hvc #0 raised an exception: {fault}")),
        Ok(ret) if ret[0] as i64 == NOT_SUPPORTED => {
            Outcome::Skipped(text!("PSCI_VERSION returned NOT_SUPPORTED"))
        }
        Ok(ret) => loop_bench(
            Op::Hvc(fid::PSCI_VERSION),
            text!("version={}.{}", ret[0] >> 16, ret[0] & 0xffff),
        ),
    }
}

fn io_kernel() -> Outcome {
    let Some(uart) = console::console() else {
        return Outcome::Skipped(text!("no usable console UART"));
    };
    let addr = uart.base() + pl011::FR;
    match Mmio::new(addr) {
        Some(reg) => loop_bench(Op::Load32(reg), text!("addr={addr:#x}")),
        None => Outcome::Skipped(text!("UARTFR at {addr:#x} is not a device address")),
    }
}

fn vgic_dist_read(gic: &Result<Gic, GicError>) -> Outcome {
    with_gic(gic, |g| {
        let addr = g.distributor().base() + gic::gicd::TYPER;
        match Mmio::new(addr) {
            Some(reg) => loop_bench(Op::Load32(reg), text!("addr={addr:#x}")),
            None => Outcome::Skipped(text!("GICD_TYPER at {addr:#x} is not a device address")),
        }
    })
}

fn vm_switch(boot: &BootInfo) -> Outcome {
    if boot.reset_count.is_none() {
        Outcome::Skipped(text!("native run: no hypervisor, no second VM"))
    } else {
        Outcome::Skipped(text!(
            "needs two VMs on one CPU: scripts/bench measures it in a separate run (guest bootarg bench=vm-switch)"
        ))
    }
}
