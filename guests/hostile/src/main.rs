//! elvisor hostile guest: a seeded, reproducible storm of random operations aimed at the
//! hypervisor, each with every general register random and checked afterwards.
//!
//! Bootargs (`/chosen/bootargs` of the VM):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `hostile.seed=S` | 1 | PRNG seed (decimal or 0x-hex); vCPU k runs stream k of it |
//! | `hostile.ops=N` | 100000 | operations in all, shared out between the attacking vCPUs |
//! | `hostile.vcpus=V` | every vCPU | how many vCPUs attack at once (1 = vCPU 0 alone) |
//! | `hostile.progress=P` | 10000 | a progress line every P operations of a vCPU |
//! | `hostile.w.<cat>=W` | see [`attacks::DEFAULT_WEIGHTS`] | weight of a category (0 = off) |
//!
//! Categories (`<cat>`): `smccc` (HVC/SMC, random ids of every owner, PSCI with wild
//! arguments), `mmio` (every emulated window, every width and access form), `outside` (IPAs
//! outside the VM, other VMs' host RAM included: every access must abort), `sysreg` (MRS/MSR
//! of encodings generated at run time, and SYS operations), `irq` (GIC configuration garbage,
//! SGIs everywhere, list-register floods, IAR/EOI storms), `wfx` (WFI/WFE storms) and, with
//! several vCPUs, `race` (CPU_ON/CPU_OFF of the attacking vCPUs racing each other).
//!
//! Every operation is one instruction run by the runtime's attack trampoline
//! (`elvisor_guest_rt::arch::attack`) with x0..x30 random (but for the address or function id
//! the operation needs); the registers the instruction may not change are compared afterwards
//! (SMCCC 1.1: x0..x3 are results, x4..x30 preserved; a load: its destination registers; an
//! MRS: Rt; anything else: none), so an exit path that corrupts a guest register fails the run.
//!
//! ```text
//!   HOSTILE: seed=0x1 ops=100000 vcpus=1 weights=smccc:3,mmio:3,...
//!   HOSTILE: progress cpu=0 ops=10000/100000 failed=0 undef=... aborts=...
//!   HOSTILE FAIL: op=1234 cpu=0 mmio insn=0xb9400a61 x5 changed 0x... -> 0x...   (at most 20)
//!   HOSTILE: category smccc ops=... faults=...                                      (one each)
//!   HOSTILE RESULT: passed=100000 failed=0 ops=100000 undef=... aborts=... refused=... seed=0x1
//! ```
//!
//! A failure names the operation number and vCPU: rerun the seed with `hostile.ops` just past
//! it to reproduce. Without a hypervisor the guest runs too, but QEMU's own devices answer where
//! elvisor injects aborts, so `outside` fails there.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod attacks;
mod rng;

use core::sync::atomic::{AtomicU64, Ordering};

use elvisor_guest_rt::arch::irq;
use elvisor_guest_rt::gic::Gic;
use elvisor_guest_rt::smp::{self, CpuBoot};
use elvisor_guest_rt::timer::{self, Timer};
use elvisor_guest_rt::{BootInfo, println};

use attacks::{CATEGORIES, Category, Env};
use rng::Rng;

elvisor_guest_rt::entry!(main);

const DEFAULT_OPS: u64 = 100_000;
const DEFAULT_PROGRESS: u64 = 10_000;
/// FAIL lines printed at most (all failures are counted).
const MAX_FAIL_LINES: u64 = 20;
const MAX_CPUS: usize = elvisor_guest_rt::arch::MAX_CPUS;

/// Counters, one row per vCPU (each written by its vCPU only, read by vCPU 0 at the end).
#[derive(Clone, Copy)]
#[repr(usize)]
pub enum Stat {
    Ops,
    Failed,
    Undef,
    Aborts,
    OtherFaults,
    Refused,
    Starts,
    Done,
    /// First per-category counter: ops, then faults, for each category.
    Category,
}

const STATS: usize = Stat::Category as usize + 2 * CATEGORIES;
static COUNTERS: [[AtomicU64; STATS]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; STATS] }; MAX_CPUS];
/// Each vCPU's generator state, kept across CPU_OFF/CPU_ON (the race category).
static RNG_STATE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Configuration for the secondary vCPUs, published by vCPU 0 before it starts them.
static SEED: AtomicU64 = AtomicU64::new(0);
static OPS_PER_CPU: AtomicU64 = AtomicU64::new(0);
static PROGRESS: AtomicU64 = AtomicU64::new(DEFAULT_PROGRESS);
pub static VCPUS: AtomicU64 = AtomicU64::new(1);
static WEIGHTS: [AtomicU64; CATEGORIES] = [const { AtomicU64::new(0) }; CATEGORIES];
static FAIL_LINES: AtomicU64 = AtomicU64::new(0);

pub fn stat(cpu: usize, which: usize) -> u64 {
    COUNTERS[cpu][which].load(Ordering::SeqCst)
}

pub fn bump(cpu: usize, which: usize, by: u64) {
    let c = &COUNTERS[cpu][which];
    c.store(c.load(Ordering::SeqCst) + by, Ordering::SeqCst);
}

/// Prints one FAIL line (up to [`MAX_FAIL_LINES`] in the whole run) and counts it.
pub fn fail(cpu: usize, op: u64, category: Category, what: core::fmt::Arguments<'_>) {
    bump(cpu, Stat::Failed as usize, 1);
    let n = FAIL_LINES.load(Ordering::SeqCst);
    FAIL_LINES.store(n + 1, Ordering::SeqCst);
    if n < MAX_FAIL_LINES {
        println!("HOSTILE FAIL: op={op} cpu={cpu} {} {what}", category.name());
    }
}

fn number(boot: &BootInfo, key: &str) -> Option<u64> {
    let v = boot.bootarg(key)?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn main(boot: &BootInfo) {
    irq::mask();
    elvisor_guest_rt::report::set_prefix("HOSTILE");
    let seed = number(boot, "hostile.seed").unwrap_or(1);
    let ops = number(boot, "hostile.ops").unwrap_or(DEFAULT_OPS).max(1);
    let cpus = boot
        .fdt
        .as_ref()
        .map_or(1, |fdt| fdt.cpus().count().clamp(1, MAX_CPUS));
    let vcpus = number(boot, "hostile.vcpus")
        .map_or(cpus, |v| v as usize)
        .clamp(1, cpus);
    let progress = number(boot, "hostile.progress")
        .unwrap_or(DEFAULT_PROGRESS)
        .max(1);
    SEED.store(seed, Ordering::SeqCst);
    OPS_PER_CPU.store(ops.div_ceil(vcpus as u64), Ordering::SeqCst);
    PROGRESS.store(progress, Ordering::SeqCst);
    VCPUS.store(vcpus as u64, Ordering::SeqCst);
    for (i, c) in CATEGORIES_LIST.iter().enumerate() {
        let w = number(boot, c.weight_key()).unwrap_or(c.default_weight());
        // `race` needs somebody to race with.
        let w = if *c == Category::Race && vcpus < 2 {
            0
        } else {
            w
        };
        WEIGHTS[i].store(w, Ordering::SeqCst);
    }
    print_banner(seed, ops, vcpus);

    for (cpu, state) in RNG_STATE.iter().enumerate().take(vcpus) {
        state.store(Rng::for_cpu(seed, cpu).0, Ordering::SeqCst);
    }
    for cpu in 1..vcpus {
        // vCPUs already started may race us to it (ALREADY_ON, ON_PENDING): the race
        // accounting counts every SUCCESS, whoever got it.
        let ret = attacks::start_racer(0, cpu);
        if ret != 0 && ret != -4 && ret != -5 {
            println!("HOSTILE FAIL: start vCPU {cpu}: PSCI CPU_ON returned {ret}");
        }
    }
    attack_loop(0, boot.fdt.as_ref());

    // Wait for the others; restart those the race left off before they were done.
    let deadline = Timer::Virtual.count() + timer::ticks_from_us(600_000_000);
    loop {
        let pending: u32 = (1..vcpus)
            .filter(|&c| stat(c, Stat::Done as usize) == 0)
            .count() as u32;
        if pending == 0 || Timer::Virtual.count() > deadline {
            break;
        }
        for cpu in 1..vcpus {
            if stat(cpu, Stat::Done as usize) == 0
                && elvisor_guest_rt::smccc::psci::affinity_info(smp::mpidr_of(cpu), 0)
                    == elvisor_guest_rt::smccc::affinity::OFF
            {
                attacks::start_racer(0, cpu);
            }
        }
        smp::wait_until(timer::ticks_from_us(1000), || false);
    }
    attacks::check_race_accounting(vcpus);
    finish(seed, vcpus);
}

/// The names of every category, in [`Category`] order.
const CATEGORIES_LIST: [Category; CATEGORIES] = attacks::ALL;

fn print_banner(seed: u64, ops: u64, vcpus: usize) {
    elvisor_guest_rt::print!("HOSTILE: seed={seed:#x} ops={ops} vcpus={vcpus} weights=");
    for (i, c) in CATEGORIES_LIST.iter().enumerate() {
        let sep = if i + 1 == CATEGORIES { "\n" } else { "," };
        elvisor_guest_rt::print!("{}:{}{sep}", c.name(), WEIGHTS[i].load(Ordering::SeqCst));
    }
}

pub fn secondary_main(cpu: &CpuBoot) {
    irq::mask();
    attack_loop(cpu.index, cpu.fdt.as_ref());
}

/// Runs this vCPU's share of the operations (or until the race category sends it off).
fn attack_loop(cpu: usize, fdt: Option<&fdt::Fdt<'static>>) {
    bump(cpu, Stat::Starts as usize, 1);
    let gic = Gic::discover(fdt).ok();
    let Some(env) = Env::new(cpu, gic, fdt) else {
        println!("HOSTILE FAIL: cpu={cpu} set-up: no GIC or no guest RAM in the device tree");
        bump(cpu, Stat::Done as usize, 1);
        return;
    };
    let mut rng = Rng(RNG_STATE[cpu].load(Ordering::SeqCst));
    let weights: [u64; CATEGORIES] = core::array::from_fn(|i| WEIGHTS[i].load(Ordering::SeqCst));
    let total_weight: u64 = weights.iter().sum();
    let target = OPS_PER_CPU.load(Ordering::SeqCst);
    let progress = PROGRESS.load(Ordering::SeqCst);
    while stat(cpu, Stat::Ops as usize) < target {
        let op = stat(cpu, Stat::Ops as usize);
        let mut pick = rng.below(total_weight.max(1));
        let mut category = Category::Smccc;
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                category = CATEGORIES_LIST[i];
                break;
            }
            pick -= w;
        }
        let go_off = attacks::run(&env, &mut rng, category, op);
        bump(cpu, Stat::Ops as usize, 1);
        let done = op + 1;
        if done.is_multiple_of(progress) {
            println!(
                "HOSTILE: progress cpu={cpu} ops={done}/{target} failed={} undef={} aborts={}",
                stat(cpu, Stat::Failed as usize),
                stat(cpu, Stat::Undef as usize),
                stat(cpu, Stat::Aborts as usize)
            );
        }
        if go_off && done < target {
            // The race category decided this vCPU powers off here; somebody's CPU_ON (or vCPU
            // 0 at the end) brings it back to carry on with the same generator.
            RNG_STATE[cpu].store(rng.0, Ordering::SeqCst);
            attacks::going_off(cpu);
            return;
        }
    }
    RNG_STATE[cpu].store(rng.0, Ordering::SeqCst);
    bump(cpu, Stat::Done as usize, 1);
    smp::notify();
}

fn finish(seed: u64, vcpus: usize) {
    let sum = |which: usize| (0..vcpus).map(|c| stat(c, which)).sum::<u64>();
    for (i, c) in CATEGORIES_LIST.iter().enumerate() {
        println!(
            "HOSTILE: category {} ops={} faults={}",
            c.name(),
            sum(Stat::Category as usize + 2 * i),
            sum(Stat::Category as usize + 2 * i + 1)
        );
    }
    let ops = sum(Stat::Ops as usize);
    let failed = sum(Stat::Failed as usize);
    let not_done = (0..vcpus)
        .filter(|&c| stat(c, Stat::Done as usize) == 0)
        .count();
    if not_done != 0 {
        println!("HOSTILE FAIL: {not_done} vCPU(s) never finished their operations");
    }
    println!(
        "HOSTILE RESULT: passed={} failed={} ops={ops} undef={} aborts={} other-faults={} refused={} seed={seed:#x} vcpus={vcpus}",
        ops.saturating_sub(failed),
        failed + not_done as u64,
        sum(Stat::Undef as usize),
        sum(Stat::Aborts as usize),
        sum(Stat::OtherFaults as usize),
        sum(Stat::Refused as usize),
    );
}
