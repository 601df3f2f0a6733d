//! `virtual-ipi`: one CPU sends an SGI to another, which is running guest code; latency = the
//! receiver's CNTVCT_EL0 at its IRQ vector's first instruction minus the sender's just before
//! the SGI register write (ICC_SGI1R_EL1, trapped under a hypervisor, or GICD_SGIR).
//!
//! The second CPU is started with PSCI CPU_ON at `arch::secondary_entry_address` and runs
//! [`secondary_main`]: GIC CPU interface up, then a loop of `wfe` with IRQs unmasked until told
//! to stop, then PSCI CPU_OFF. The sender waits in `wfe` too. Under QEMU's TCG with `-icount`
//! the CPUs run one at a time (round robin) and `wfe` yields to the other, so both counters are
//! one clock: the latency is the sender's path from the SGI write to its `wfe` plus the
//! receiver's path to its vector. (On hardware the two overlap; here they add up.)

use core::sync::atomic::{AtomicU64, Ordering};

use elvisor_guest_rt::gic::{self, Gic, Iar, Version};
use elvisor_guest_rt::smccc::psci;
use elvisor_guest_rt::timer::{self, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, dt};

use crate::arch::{self, IrqRecord, Mmio, SgiWrite};
use crate::results::{Outcome, text};

/// The SGI sent.
const IPI_SGI: u32 = 3;

/// How long one IPI may take to arrive.
const ROUND_TIMEOUT_US: u64 = 10_000;
/// How long the secondary may take to come up, and to go down.
const BRINGUP_TIMEOUT_US: u64 = 100_000;
/// The receiver's loop ends by itself after this long.
const RECEIVER_LIFETIME_US: u64 = 2_000_000;

/// AFFINITY_INFO: the target is OFF.
const AFFINITY_OFF: i64 = 1;

/// Secondary CPU states in [`STATE`].
const STARTING: u64 = 1;
const READY: u64 = 2;
const FAILED: u64 = 3;
const DONE: u64 = 4;

static STATE: AtomicU64 = AtomicU64::new(0);
static FAILURE: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicU64 = AtomicU64::new(0);
static RECEIVER_DEADLINE: AtomicU64 = AtomicU64::new(0);
/// The receiving CPU's record of the SGIs it took.
static RX: IrqRecord = IrqRecord::new();

/// Why the secondary could not get ready ([`FAILURE`] codes).
fn failure_text(code: u64) -> &'static str {
    match code {
        1 => "the secondary found no device tree",
        2 => "the secondary found no usable GIC",
        3 => "the secondary's redistributor did not wake",
        4 => "the secondary's GIC CPU interface did not come up",
        _ => "unknown failure on the secondary",
    }
}

/// The secondary CPU, from `arch`'s CPU_ON entry (own stack, bench vectors installed).
pub extern "C" fn secondary_main(_context: u64) -> ! {
    match bring_up() {
        Ok(()) => {
            STATE.store(READY, Ordering::SeqCst);
            arch::ipi_receive(&RX, &STOP, RECEIVER_DEADLINE.load(Ordering::SeqCst));
        }
        Err(code) => {
            FAILURE.store(code, Ordering::SeqCst);
            STATE.store(FAILED, Ordering::SeqCst);
        }
    }
    STATE.store(DONE, Ordering::SeqCst);
    psci::cpu_off();
    elvisor_guest_rt::arch::halt()
}

fn bring_up() -> Result<(), u64> {
    let fdt = arch::shared_dtb().ok_or(1u64)?;
    let gic = Gic::discover(Some(&fdt)).map_err(|_| 2u64)?;
    gic.wake_redistributor().map_err(|_| 3u64)?;
    gic.init_cpu().map_err(|_| 4u64)?;
    gic.set_priority(IPI_SGI, gic::DEFAULT_PRIORITY);
    gic.enable(IPI_SGI);
    let gicc = gic
        .cpu_interface()
        .and_then(|block| Mmio::block(block.base(), block.len_bytes()));
    let timers = TimerInterrupts::discover(Some(&fdt));
    RX.configure(gicc, timers.virtual_, timers.physical);
    Ok(())
}

/// MPIDR affinity fields (Aff3 `[39:32]`, Aff2..Aff0 `[23:0]`).
fn affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}

/// The MPIDR of a CPU in `/cpus` other than this one.
fn other_cpu(boot: &BootInfo) -> Option<u64> {
    let fdt = boot.fdt.as_ref()?;
    let me = affinity(elvisor_guest_rt::arch::mpidr());
    let cpus = elvisor_guest_rt::boot::find_node(fdt, "/cpus")?;
    cpus.children()
        .filter(|cpu| cpu.property("device_type").and_then(|p| p.as_str()) == Some("cpu"))
        .filter_map(|cpu| cpu.reg()?.next().map(|reg| reg.starting_address as u64))
        .find(|&mpidr| affinity(mpidr) != me)
}

/// Waits (bounded by the virtual counter) until `done()`.
fn wait_until(us: u64, done: impl Fn() -> bool) -> bool {
    let deadline = arch::now().wrapping_add(timer::ticks_from_us(us));
    while !done() {
        if (arch::now().wrapping_sub(deadline) as i64) >= 0 {
            return done();
        }
        core::hint::spin_loop();
    }
    true
}

/// The SGI write that targets `mpidr`.
fn sgi_to(gic: &Gic, mpidr: u64) -> Option<SgiWrite> {
    match gic.version() {
        Version::V3 => {
            // ICC_SGI1R_EL1: Aff3 [55:48], Aff2 [39:32], INTID [27:24], Aff1 [23:16],
            // TargetList [15:0] (RS = 0: Aff0 below 16).
            let (aff0, aff1, aff2, aff3) = (
                mpidr & 0xff,
                (mpidr >> 8) & 0xff,
                (mpidr >> 16) & 0xff,
                (mpidr >> 32) & 0xff,
            );
            if aff0 >= 16 {
                return None;
            }
            let value = aff3 << 48 | aff2 << 32 | u64::from(IPI_SGI) << 24 | aff1 << 16 | 1 << aff0;
            Some(SgiWrite::V3 { value })
        }
        Version::V2 => {
            // GICD_SGIR: TargetListFilter 0, CPUTargetList [23:16] (CPU interface = Aff0),
            // SGIINTID [3:0].
            let aff0 = mpidr & 0xff;
            if aff0 >= 8 {
                return None;
            }
            let sgir = Mmio::new(gic.distributor().base() + gic::gicd::SGIR)?;
            Some(SgiWrite::V2 {
                sgir,
                value: (1 << (16 + aff0)) as u32 | IPI_SGI,
            })
        }
    }
}

/// `virtual-ipi` over `rounds` SGIs to a second CPU.
pub fn virtual_ipi(boot: &BootInfo, gic: &Gic, rounds: u64) -> Outcome {
    let cpus = boot.fdt.as_ref().map_or(0, dt::cpu_count);
    if cpus < 2 {
        return Outcome::Skipped(text!(
            "the device tree lists {cpus} CPU (needs 2: a sender and a receiver)"
        ));
    }
    let Some(target) = other_cpu(boot) else {
        return Outcome::Skipped(text!("no second CPU with a reg (MPIDR) in /cpus"));
    };
    let Some(sgi) = sgi_to(gic, target) else {
        return Outcome::Skipped(text!("cannot target MPIDR {target:#x} with an SGI"));
    };

    arch::publish_dtb(boot);
    STATE.store(STARTING, Ordering::SeqCst);
    STOP.store(0, Ordering::SeqCst);
    RX.reset();
    RECEIVER_DEADLINE.store(
        arch::now().wrapping_add(timer::ticks_from_us(RECEIVER_LIFETIME_US)),
        Ordering::SeqCst,
    );
    let ret = psci::cpu_on(target, arch::secondary_entry_address(), 0);
    if ret != 0 {
        return Outcome::Skipped(text!("PSCI CPU_ON of MPIDR {target:#x} returned {ret}"));
    }
    let up = wait_until(BRINGUP_TIMEOUT_US, || {
        STATE.load(Ordering::SeqCst) != STARTING
    });
    match STATE.load(Ordering::SeqCst) {
        READY => {}
        FAILED => {
            return Outcome::Failed(text!("{}", failure_text(FAILURE.load(Ordering::SeqCst))));
        }
        _ => {
            return Outcome::Failed(text!(
                "the secondary CPU (MPIDR {target:#x}) did not report in within {BRINGUP_TIMEOUT_US} us (up={up})"
            ));
        }
    }

    let timeout = timer::ticks_from_us(ROUND_TIMEOUT_US);
    let mut result = Ok((0i64, i64::MAX, i64::MIN));
    for round in 0..rounds {
        RX.reset();
        let deadline = arch::now().wrapping_add(timeout);
        let sent = arch::ipi_send_and_wait(sgi, &RX, 1, deadline);
        if RX.count.load(Ordering::SeqCst) == 0 {
            result = Err(text!(
                "round {round}: SGI {IPI_SGI} to MPIDR {target:#x} not received within {ROUND_TIMEOUT_US} us"
            ));
            break;
        }
        let iar = Iar::from_raw(RX.iar.load(Ordering::SeqCst) as u32, gic.version());
        if iar.intid() != IPI_SGI {
            result = Err(text!(
                "round {round}: the receiver took interrupt {} instead of SGI {IPI_SGI}",
                iar.intid()
            ));
            break;
        }
        let latency = RX.time.load(Ordering::SeqCst).wrapping_sub(sent) as i64;
        if let Ok((sum, min, max)) = &mut result {
            *sum += latency;
            *min = (*min).min(latency);
            *max = (*max).max(latency);
        }
    }

    STOP.store(1, Ordering::SeqCst);
    let stopped = wait_until(BRINGUP_TIMEOUT_US, || STATE.load(Ordering::SeqCst) == DONE)
        && wait_until(BRINGUP_TIMEOUT_US, || {
            psci::affinity_info(target, 0) == AFFINITY_OFF
        });
    match result {
        Ok((sum, min, max)) => Outcome::Measured {
            iters: rounds,
            total: sum,
            range: Some((min, max)),
            extra: text!("target_mpidr={target:#x} secondary_off={stopped}"),
        },
        Err(reason) => Outcome::Failed(reason),
    }
}
