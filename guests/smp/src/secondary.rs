//! What every vCPU but 0 runs, and the IRQ handler all vCPUs share.
//!
//! ```text
//!   entry (PSCI CPU_ON -> runtime entry code -> secondary())
//!     record MPIDR, x0, entry state; arrivals += 1
//!     GIC CPU interface up (own redistributor / banked GICD), SGIs 5..8 enabled
//!     ready = arrivals; IRQs unmasked
//!     loop: a command from vCPU 0?  RACE: armed -> wait for GO -> CPU_ON(target) -> result
//!                                   OFF:  PSCI CPU_OFF (never returns if it works)
//!           else wfe
//! ```
//!
//! The IRQ handler counts SGIs per vCPU (and, on GICv2, their source CPUs), and answers the
//! ping SGI from vCPU 0 with the pong SGI to vCPU 0.

use elvisor_guest_rt::arch::{self, irq};
use elvisor_guest_rt::gic::{self, Gic, SgiTarget};
use elvisor_guest_rt::smccc::psci;
use elvisor_guest_rt::smp::{self, CpuBoot};

use crate::shared::{
    self, CPUS, GO, OP_OFF, OP_RACE, RACE_ID, RACE_TARGET, bump, load, store, store64,
};

/// vCPU 0 -> vCPU 1: "ping".
pub const SGI_PING: u32 = 5;
/// vCPU 1 -> vCPU 0: "pong", sent by the handler that took the ping.
pub const SGI_PONG: u32 = 6;
/// vCPU 0 -> a list of vCPUs (ICC_SGI1R_EL1 TargetList / GICD_SGIR CPUTargetList).
pub const SGI_MULTICAST: u32 = 7;
/// vCPU 0 -> every other vCPU (IRM = 1 / TargetListFilter = 0b01).
pub const SGI_BROADCAST: u32 = 8;
/// The SGIs every vCPU enables.
pub const SGIS: [u32; 4] = [SGI_PING, SGI_PONG, SGI_MULTICAST, SGI_BROADCAST];

/// The context id a racer passes to CPU_ON: this tag | the racer's index. The target records
/// its x0, so it names the winner.
pub const RACE_CONTEXT_TAG: u64 = 0x5241_4345_0000_0000;

/// How long a racer waits for the start signal.
const GO_TIMEOUT_MS: u64 = 20_000;

/// Brings up this vCPU's GIC CPU interface (the distributor is vCPU 0's job) and enables the
/// test SGIs. Returns the GIC as this vCPU sees it.
pub fn bring_up_cpu(fdt: Option<&fdt::Fdt<'static>>) -> Result<Gic, gic::GicError> {
    let gic = Gic::discover(fdt)?;
    gic.wake_redistributor()?;
    gic.init_cpu()?;
    for sgi in SGIS {
        gic.enable(sgi);
    }
    Ok(gic)
}

/// The main function of every secondary vCPU (started with `smp::start_cpu`).
pub fn secondary(cpu: &CpuBoot) {
    let index = cpu.index;
    let me = &CPUS[index];
    store64(&me.mpidr, cpu.mpidr);
    store64(&me.context, cpu.context_id);
    store(&me.entry_el, cpu.entry_el.into());
    store64(&me.entry_daif, cpu.entry_daif);
    store64(&me.entry_sctlr, cpu.entry_sctlr);
    let life = load(&me.arrivals) + 1;
    store(&me.arrivals, life);
    smp::notify();

    if bring_up_cpu(cpu.fdt.as_ref()).is_err() {
        store(&me.gic_failed, 1);
    }
    store(&me.ready, life);
    smp::notify();
    irq::unmask();

    loop {
        match shared::pending_command(index) {
            Some((seq, OP_RACE)) => {
                race(index);
                store(&me.handled, seq);
                smp::notify();
            }
            Some((seq, OP_OFF)) => {
                store(&me.handled, seq);
                smp::notify();
                irq::mask();
                let ret = psci::cpu_off();
                // Only if CPU_OFF failed.
                store64(&me.off_ret, ret as u64);
                store(&me.off_returned, 1);
                smp::notify();
                irq::unmask();
            }
            Some((seq, _)) => {
                store(&me.handled, seq);
                smp::notify();
            }
            None => arch::smp::wait_for_event(),
        }
    }
}

/// One racer: armed, waits for [`GO`] (with `wfe`, woken by vCPU 0's `sev`, so all racers
/// leave the wait together), then CPU_ON of the race target.
fn race(index: usize) {
    let me = &CPUS[index];
    let id = load(&RACE_ID);
    store(&me.race_armed, id);
    smp::notify();
    let go = smp::wait_until(smp::ms(GO_TIMEOUT_MS), || load(&GO) == id);
    let ret = if go {
        start_race_target(index)
    } else {
        i64::MIN
    };
    store64(&me.race_ret, ret as u64);
}

/// CPU_ON of the race target, with this racer's context id.
pub fn start_race_target(racer: usize) -> i64 {
    let target = load(&RACE_TARGET) as usize;
    smp::start_cpu(
        smp::mpidr_of(target),
        secondary,
        RACE_CONTEXT_TAG | racer as u64,
    )
}

/// The IRQ handler of every vCPU.
pub fn on_irq() {
    let Some(gic) = gic::installed() else {
        return;
    };
    let iar = gic.acknowledge();
    if iar.is_special() {
        return;
    }
    let index = arch::cpu_index();
    let me = &CPUS[index];
    let intid = iar.intid();
    if intid < gic::SGI_COUNT {
        bump(&me.sgi[intid as usize]);
        if let Some(source) = iar.source_cpu() {
            let sources = &me.sgi_sources[intid as usize];
            store(sources, load(sources) | 1 << source);
        }
        if intid == SGI_PING && index != 0 {
            gic.send_sgi(SGI_PONG, SgiTarget::Mpidr(smp::mpidr_of(0)));
        }
    } else {
        bump(&me.other_irqs);
    }
    gic.end_of_interrupt(iar);
}
