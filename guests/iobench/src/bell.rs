//! Round trips between two CPUs, each waiting in `wfi` for the other's interrupt.
//!
//! * `doorbell`: two VMs on different physical CPUs (boards/qemu-virt/vms/iobench-bell-{a,b}.dtsi)
//!   map the shared region `bell`. Member 0 (A) reads the counter, writes RING = 1; B takes the
//!   doorbell interrupt (acknowledge, read STATUS, write ACK, EOI) and writes RING = 0; A takes
//!   its own doorbell the same way and reads the counter again.
//! * `ipi`: the same exchange between two CPUs of one VM (or natively) with SGIs: CPU 0 sends
//!   SGI 1 to CPU 1, which acknowledges it, EOIs and sends SGI 2 back.
//!
//! `doorbell-status-read` then times one read of the doorbell's STATUS register alone (a
//! trapped MMIO access), to split the round trip into its parts.
//!
//! The figure is A's counter difference: both CPUs' paths plus the hypervisor's, since under
//! `-icount` QEMU runs the CPUs one at a time and the counter counts every instruction.

use core::sync::atomic::{AtomicU64, Ordering};

use elvisor_guest_rt::abi::doorbell as db;
use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::boot::find_node;
use elvisor_guest_rt::gic::SgiTarget;
use elvisor_guest_rt::smp::{self, CpuBoot};
use elvisor_guest_rt::{dt, println};
use fdt::Fdt;

use crate::{Irqs, Stats, emit, now};

/// Round trips timed, after [`WARMUP`] untimed ones (first-use paths stay out).
const ROUNDS: u64 = 256;
const WARMUP: u64 = 8;

const SGI_PING: u32 = 1;
const SGI_PONG: u32 = 2;

pub fn doorbell(fdt: Option<&Fdt<'static>>) -> bool {
    let Some((bell, intid, index)) = find_bell(fdt) else {
        println!("BENCH FAIL: doorbell: no elvisor,shmem node named `bell` with a doorbell");
        return false;
    };
    let Some(irqs) = Irqs::up(fdt, true) else {
        println!("BENCH FAIL: doorbell: GIC bring-up failed");
        return false;
    };
    irqs.take(intid);
    let ring = |member: u32| bell.write32(db::REG_RING as usize, member);
    let take = |what: &str| -> bool {
        let Some(iar) = irqs.wait(None) else {
            println!("BENCH FAIL: doorbell: {what}: no interrupt");
            return false;
        };
        let status = bell.read32(db::REG_STATUS as usize);
        bell.write32(db::REG_ACK as usize, status);
        irqs.eoi(iar);
        true
    };
    if index != 0 {
        for _ in 0..WARMUP + ROUNDS {
            if !take("member 1") {
                return false;
            }
            ring(0);
        }
        println!("BENCH info doorbell-peer rounds={}", WARMUP + ROUNDS);
        return false;
    }
    let mut stats = Stats::new();
    for round in 0..WARMUP + ROUNDS {
        let t0 = now();
        ring(1);
        if !take("member 0") {
            return false;
        }
        let t = now() - t0;
        if round >= WARMUP {
            stats.add(t);
        }
    }
    emit(
        "doorbell-rtt",
        &stats,
        1,
        format_args!("intid={intid} method=shmem-doorbell"),
    );
    // One doorbell register access alone (STATUS, a trapped MMIO read), for the breakdown.
    let mut reads = Stats::new();
    for _ in 0..ROUNDS {
        let t0 = now();
        let _ = bell.read32(db::REG_STATUS as usize);
        reads.add(now() - t0);
    }
    emit("doorbell-status-read", &reads, 1, format_args!(""));
    true
}

/// The `bell` mapping: (doorbell registers, INTID, member index).
fn find_bell(fdt: Option<&Fdt<'static>>) -> Option<(Region, u32, u32)> {
    let root = find_node(fdt?, "/")?;
    let node = root.children().find(|n| {
        dt::is_compatible(*n, &[db::COMPATIBLE])
            && n.property("elvisor,name").and_then(|p| p.as_str()) == Some("bell")
    })?;
    let regs = dt::reg_range(node, 1)?;
    Some((
        Region::new(regs.start, regs.end - regs.start)?,
        dt::gic_interrupt(node, 0)?.intid()?,
        dt::u32_property(node, "elvisor,index")?,
    ))
}

/// The responder's state: 1 ready, 2 done, 3 failed.
static PEER: AtomicU64 = AtomicU64::new(0);

fn responder(boot: &CpuBoot) {
    let Some(irqs) = Irqs::up(boot.fdt.as_ref(), false) else {
        PEER.store(3, Ordering::SeqCst);
        return;
    };
    irqs.take(SGI_PING);
    PEER.store(1, Ordering::SeqCst);
    smp::notify();
    for _ in 0..WARMUP + ROUNDS {
        let Some(iar) = irqs.wait(None) else {
            PEER.store(3, Ordering::SeqCst);
            return;
        };
        irqs.eoi(iar);
        irqs.gic
            .send_sgi(SGI_PONG, SgiTarget::Mpidr(boot.context_id));
    }
    PEER.store(2, Ordering::SeqCst);
}

pub fn ipi(fdt: Option<&Fdt<'static>>) -> bool {
    let Some(irqs) = Irqs::up(fdt, true) else {
        println!("BENCH FAIL: ipi: GIC bring-up failed");
        return false;
    };
    irqs.take(SGI_PONG);
    let me = elvisor_guest_rt::arch::mpidr() & 0xff_00ff_ffff;
    let target = smp::mpidr_of(1);
    let ret = smp::start_cpu(target, responder, me);
    if ret != 0 || !smp::wait_until(smp::ms(100), || PEER.load(Ordering::SeqCst) != 0) {
        println!("BENCH FAIL: ipi: CPU_ON of {target:#x} returned {ret}, the CPU did not report");
        return false;
    }
    if PEER.load(Ordering::SeqCst) != 1 {
        println!("BENCH FAIL: ipi: the responder's GIC did not come up");
        return false;
    }
    let mut stats = Stats::new();
    for round in 0..WARMUP + ROUNDS {
        let t0 = now();
        irqs.gic.send_sgi(SGI_PING, SgiTarget::Mpidr(target));
        let Some(iar) = irqs.wait(None) else {
            println!("BENCH FAIL: ipi: round {round}: no answer");
            return false;
        };
        irqs.eoi(iar);
        let t = now() - t0;
        if round >= WARMUP {
            stats.add(t);
        }
    }
    smp::wait_until(smp::ms(10), || PEER.load(Ordering::SeqCst) == 2);
    emit("ipi-rtt", &stats, 1, format_args!("method=sgi"));
    true
}
