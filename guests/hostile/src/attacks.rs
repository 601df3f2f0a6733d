//! The attack categories: how each one builds its instruction and registers, and what counts
//! as a failure besides a corrupted register.

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use elvisor_guest_rt::abi::layout;
use elvisor_guest_rt::arch::attack::{self, Access, Insn, Registers, SysReg};
use elvisor_guest_rt::arch::gicv3 as icc;
use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::exception::{Fault, ec, fsc};
use elvisor_guest_rt::gic::{Gic, Version, gicc, gicd, gicr, icc_bits};
use elvisor_guest_rt::smccc::{fid, psci_ret};
use elvisor_guest_rt::smp;
use elvisor_guest_rt::timer::{CTL_ENABLE, Timer, TimerInterrupts};
use smccc::psci;

use crate::rng::Rng;
use crate::{Stat, bump, fail};

/// How many categories there are.
pub const CATEGORIES: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Smccc,
    Mmio,
    Outside,
    Sysreg,
    Irq,
    Wfx,
    Race,
}

pub const ALL: [Category; CATEGORIES] = [
    Category::Smccc,
    Category::Mmio,
    Category::Outside,
    Category::Sysreg,
    Category::Irq,
    Category::Wfx,
    Category::Race,
];

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Smccc => "smccc",
            Category::Mmio => "mmio",
            Category::Outside => "outside",
            Category::Sysreg => "sysreg",
            Category::Irq => "irq",
            Category::Wfx => "wfx",
            Category::Race => "race",
        }
    }

    /// The bootarg that overrides the weight.
    pub fn weight_key(self) -> &'static str {
        match self {
            Category::Smccc => "hostile.w.smccc",
            Category::Mmio => "hostile.w.mmio",
            Category::Outside => "hostile.w.outside",
            Category::Sysreg => "hostile.w.sysreg",
            Category::Irq => "hostile.w.irq",
            Category::Wfx => "hostile.w.wfx",
            Category::Race => "hostile.w.race",
        }
    }

    /// Default weights: the exit paths (hypercalls, MMIO, system registers) most, storms less.
    pub fn default_weight(self) -> u64 {
        match self {
            Category::Smccc => 6,
            Category::Mmio => 6,
            Category::Outside => 3,
            Category::Sysreg => 6,
            Category::Irq => 3,
            Category::Wfx => 1,
            Category::Race => 1,
        }
    }
}

/// An emulated (or passed-through) register window of the VM.
#[derive(Debug, Clone, Copy)]
struct Window {
    base: u64,
    len: u64,
    /// The PL011: its data register prints, so stores avoid it, and the console's settings
    /// are put back after every store.
    uart: bool,
}

/// GICv3 redistributor frames attacked: the VM's own and those of vCPUs that do not exist.
const GICR_FRAMES: u64 = 8;
const GICR_FRAME_BYTES: u64 = 0x2_0000;
const UART_BYTES: u64 = 0x1000;
/// QEMU virt's virtio-mmio slots (32 of 0x200 bytes), which every VM has.
const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
const VIRTIO_MMIO_BYTES: u64 = 32 * 0x200;

/// What one vCPU knows about its VM.
pub struct Env {
    cpu: usize,
    gic: Gic,
    /// The first `nwindows` are the VM's.
    windows: [Window; 5],
    nwindows: usize,
    ram: Range<u64>,
    uart: u64,
    vtimer: u32,
    cpus: usize,
}

impl Env {
    pub fn new(cpu: usize, gic: Option<Gic>, fdt: Option<&fdt::Fdt<'static>>) -> Option<Self> {
        let gic = gic?;
        let ram = elvisor_guest_rt::mem::guest_ram()?;
        let fdt = fdt?;
        let uart = elvisor_guest_rt::console::console()?.base() as u64;
        let gd = gic.distributor();
        let (second, second_len) = match gic.version() {
            Version::V3 => {
                let node = elvisor_guest_rt::dt::find_compatible(
                    fdt,
                    elvisor_guest_rt::gic::V3_COMPATIBLE,
                )?;
                let r = elvisor_guest_rt::dt::reg_range(node, 1)?;
                (r.start as u64, GICR_FRAMES * GICR_FRAME_BYTES)
            }
            Version::V2 => {
                let c = gic.cpu_interface()?;
                (c.base() as u64, c.len_bytes() as u64)
            }
        };
        // The PL061 GPIO controller of the power button, which a VM has unless its
        // configuration turns it off (elvisor,power-button = <0>).
        let gpio = elvisor_guest_rt::dt::find_compatible(fdt, &["arm,pl061"])
            .and_then(|n| elvisor_guest_rt::dt::reg_range(n, 0))
            .map(|r| Window {
                base: r.start as u64,
                len: (r.end - r.start) as u64,
                uart: false,
            });
        Some(Self {
            cpu,
            nwindows: if gpio.is_some() { 5 } else { 4 },
            windows: [
                Window {
                    base: gd.base() as u64,
                    len: 0x1_0000,
                    uart: false,
                },
                Window {
                    base: second,
                    len: second_len,
                    uart: false,
                },
                Window {
                    base: uart,
                    len: UART_BYTES,
                    uart: true,
                },
                // QEMU virt's virtio-mmio window: 32 slots, empty ones included, all emulated.
                Window {
                    base: VIRTIO_MMIO_BASE,
                    len: VIRTIO_MMIO_BYTES,
                    uart: false,
                },
                gpio.unwrap_or(Window {
                    base: 0,
                    len: 0,
                    uart: false,
                }),
            ],
            gic,
            ram: ram.start as u64..ram.end as u64,
            uart,
            vtimer: TimerInterrupts::discover(Some(fdt)).virtual_,
            cpus: elvisor_guest_rt::dt::cpu_count(fdt).max(1),
        })
    }

    fn in_window(&self, addr: u64) -> bool {
        self.windows[..self.nwindows]
            .iter()
            .any(|w| addr >= w.base && addr < w.base + w.len)
    }

    fn in_ram(&self, addr: u64) -> bool {
        addr >= self.ram.start && addr < self.ram.end
    }

    /// An address outside RAM and every window (the console page included), for arguments
    /// that must not point at anything.
    fn nowhere(&self, rng: &mut Rng) -> u64 {
        loop {
            let a = rng.value();
            if !self.in_ram(a) && !self.in_window(a & !0xfff) {
                return a;
            }
        }
    }
}

/// Runs one operation of `category`; returns true when the race category wants this vCPU to
/// power off now.
pub fn run(env: &Env, rng: &mut Rng, category: Category, op: u64) -> bool {
    let idx = ALL.iter().position(|c| *c == category).unwrap_or(0);
    bump(env.cpu, Stat::Category as usize + 2 * idx, 1);
    let mut ctx = Ctx {
        env,
        op,
        category,
        idx,
    };
    match category {
        Category::Smccc => smccc(&mut ctx, rng),
        Category::Mmio => mmio(&mut ctx, rng),
        Category::Outside => outside(&mut ctx, rng),
        Category::Sysreg => sysreg(&mut ctx, rng),
        Category::Irq => irq_garbage(&mut ctx, rng),
        Category::Wfx => wfx(&mut ctx, rng),
        Category::Race => return race(&mut ctx, rng),
    }
    false
}

struct Ctx<'a> {
    env: &'a Env,
    op: u64,
    category: Category,
    idx: usize,
}

impl Ctx<'_> {
    /// Executes `insn` with `regs`, checks the registers it may not change, counts the fault.
    fn fire(&mut self, insn: Insn, regs: &Registers) -> Result<(Registers, Option<Fault>), ()> {
        let cpu = self.env.cpu;
        let mut after = *regs;
        let fault = match attack::execute(insn, &mut after) {
            Ok(f) => f,
            Err(why) => {
                bump(cpu, Stat::Refused as usize, 1);
                let _ = why;
                return Err(());
            }
        };
        if let Some(f) = fault {
            bump(cpu, Stat::Category as usize + 2 * self.idx + 1, 1);
            match f.esr.ec() {
                ec::UNKNOWN => bump(cpu, Stat::Undef as usize, 1),
                ec::DABT_CURRENT | ec::IABT_CURRENT => bump(cpu, Stat::Aborts as usize, 1),
                _ => bump(cpu, Stat::OtherFaults as usize, 1),
            }
        }
        for i in 0..31 {
            if insn.may_write & (1 << i) == 0 && after[i] != regs[i] {
                fail(
                    cpu,
                    self.op,
                    self.category,
                    format_args!(
                        "insn={:#010x} x{i} changed {:#x} -> {:#x} (fault: {})",
                        insn.word(),
                        regs[i],
                        after[i],
                        FaultText(fault)
                    ),
                );
                break;
            }
        }
        Ok((after, fault))
    }
}

struct FaultText(Option<Fault>);

impl core::fmt::Display for FaultText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            None => write!(f, "none"),
            Some(fault) => write!(f, "{fault}"),
        }
    }
}

fn random_regs(rng: &mut Rng) -> Registers {
    core::array::from_fn(|_| rng.value())
}

// --- SMCCC and PSCI ------------------------------------------------------------------------

const PSCI_CPU_SUSPEND: [u32; 2] = [psci::PSCI_CPU_SUSPEND_32, psci::PSCI_CPU_SUSPEND_64];
const PSCI_CPU_ON: [u32; 2] = [psci::PSCI_CPU_ON_32, psci::PSCI_CPU_ON_64];
const PSCI_AFFINITY_INFO: [u32; 2] = [psci::PSCI_AFFINITY_INFO_32, psci::PSCI_AFFINITY_INFO_64];
/// Calls that would end or reset this VM, or switch off the calling vCPU: never sent with a
/// zero immediate (SYSTEM_OFF, SYSTEM_RESET, CPU_OFF; the race category does CPU_OFF itself).
const FATAL: [u32; 3] = [
    psci::PSCI_SYSTEM_OFF,
    psci::PSCI_SYSTEM_RESET,
    psci::PSCI_CPU_OFF,
];

fn smccc(ctx: &mut Ctx<'_>, rng: &mut Rng) {
    let env = ctx.env;
    let mut regs = random_regs(rng);
    let imm: u16 = if rng.chance(1, 8) {
        1 + rng.below(0xffff) as u16
    } else {
        0
    };
    let low: u32 = match rng.below(4) {
        // A PSCI call with wild arguments.
        0 => {
            let f = rng.pick(&[
                PSCI_CPU_ON[0],
                PSCI_CPU_ON[1],
                PSCI_AFFINITY_INFO[0],
                PSCI_AFFINITY_INFO[1],
                PSCI_CPU_SUSPEND[0],
                PSCI_CPU_SUSPEND[1],
                psci::PSCI_SYSTEM_RESET2_32,
                psci::PSCI_SYSTEM_RESET2_64,
                psci::PSCI_MEM_PROTECT,
                psci::PSCI_MEM_PROTECT_CHECK_RANGE_32,
                psci::PSCI_MEM_PROTECT_CHECK_RANGE_64,
                psci::PSCI_FEATURES,
                smccc::arch::SMCCC_ARCH_FEATURES,
                psci::PSCI_MIGRATE_INFO_TYPE,
                psci::PSCI_VERSION,
                fid::ELVISOR_YIELD,
            ]);
            let target = match rng.below(3) {
                0 => smp::mpidr_of(rng.below(12) as usize),
                1 => smp::mpidr_of(rng.below(12) as usize) | (rng.next() & 0xff_ff00_ff00),
                _ => rng.value(),
            };
            regs[1] = target;
            if rng.chance(1, 2) {
                regs[2] = rng.below(300);
            }
            f
        }
        // Anything in any owner's range.
        _ => {
            let owner = rng.below(64) as u32;
            let fast = if rng.chance(7, 8) { 1u32 << 31 } else { 0 };
            let is64 = if rng.chance(1, 2) { 1u32 << 30 } else { 0 };
            let mbz = if rng.chance(1, 8) {
                (rng.below(256) as u32) << 16
            } else {
                0
            };
            let func = match rng.below(4) {
                0 => rng.below(0x20) as u32,
                1 => 0xff00 + rng.below(4) as u32,
                2 => rng.pick(&[0x8000u32, 0x7fff, 0x3fff, 0x3fff]),
                _ => rng.below(0x1_0000) as u32,
            };
            fast | is64 | (owner << 24) | mbz | func
        }
    };
    let high = if rng.chance(1, 2) {
        rng.next() << 32
    } else {
        0
    };
    regs[0] = high | low as u64;
    if imm == 0 && FATAL.contains(&low) {
        regs[0] ^= 0x100; // same owner, another function number
    }
    let low = regs[0] as u32;
    // CPU_ON may only ever name an entry point that is not RAM (or it would start a vCPU in
    // garbage): INVALID_ADDRESS is the expected answer, SUCCESS a finding.
    let cpu_on = imm == 0 && PSCI_CPU_ON.contains(&low);
    if cpu_on {
        regs[2] = env.nowhere(rng);
        if low & (1 << 30) == 0 && env.in_ram(regs[2] & 0xffff_ffff) {
            regs[2] = 0x1000;
        }
    }
    if imm == 0 && PSCI_CPU_SUSPEND.contains(&low) {
        regs[2] = env.nowhere(rng);
        prepare_wakeup(env);
    }
    let insn = if rng.chance(1, 2) {
        Insn::hvc(imm)
    } else {
        Insn::smc(imm)
    };
    if let Ok((after, fault)) = ctx.fire(insn, &regs) {
        if let Some(f) = fault {
            fail(
                env.cpu,
                ctx.op,
                ctx.category,
                format_args!("fid={:#x} imm={imm}: SMCCC call raised {f}", regs[0]),
            );
        } else if cpu_on && after[0] as i32 == psci_ret::SUCCESS as i32 {
            fail(
                env.cpu,
                ctx.op,
                ctx.category,
                format_args!(
                    "CPU_ON({:#x}, entry {:#x}) outside RAM answered SUCCESS",
                    regs[1], regs[2]
                ),
            );
        }
    }
}

// --- MMIO on the emulated windows ----------------------------------------------------------

/// An access form with its natural size in bytes (for alignment and the UART's data register).
fn random_access(rng: &mut Rng, plain_bias: bool) -> (Access, u64) {
    let size = rng.below(4) as u8;
    let big = 2 + rng.below(2) as u8;
    if plain_bias && rng.chance(2, 3) {
        return if rng.chance(1, 2) {
            (Access::Load { size }, 1 << size)
        } else {
            (Access::Store { size }, 1 << size)
        };
    }
    match rng.below(19) {
        0 => (Access::Load { size }, 1 << size),
        1 => (Access::Store { size }, 1 << size),
        2 => (Access::LoadSigned { size: size.min(2) }, 1 << size.min(2)),
        3 => (Access::LoadPair { size: big }, 2 << big),
        4 => (Access::StorePair { size: big }, 2 << big),
        5 => (Access::LoadExclusive { size: big }, 1 << big),
        6 => (Access::StoreExclusive { size: big }, 1 << big),
        7 => (Access::LoadAcquire { size: big }, 1 << big),
        8 => (Access::StoreRelease { size: big }, 1 << big),
        9 => (Access::LoadExclusivePair { size: big }, 2 << big),
        10 => (Access::AtomicAdd { size: big }, 1 << big),
        11 => (Access::Swap { size: big }, 1 << big),
        12 => (Access::CompareSwap { size: big }, 1 << big),
        13 => (Access::SimdLoad, 16),
        14 => (Access::SimdStore, 16),
        15 => (Access::DcZva, 64),
        16 => (Access::DcCivac, 64),
        17 => (Access::Prefetch, 8),
        _ => (Access::Fetch, 4),
    }
}

fn writes(access: Access) -> bool {
    matches!(
        access,
        Access::Store { .. }
            | Access::StorePair { .. }
            | Access::StoreExclusive { .. }
            | Access::StoreRelease { .. }
            | Access::AtomicAdd { .. }
            | Access::Swap { .. }
            | Access::CompareSwap { .. }
            | Access::SimdStore
            | Access::DcZva
    )
}

/// Fires one access of form `access` at `addr` with random registers; returns the result.
fn fire_access(
    ctx: &mut Ctx<'_>,
    rng: &mut Rng,
    access: Access,
    addr: u64,
) -> Option<(Registers, Option<Fault>, u8)> {
    let [rn, rt, rt2, rs] = rng.distinct_regs::<4>();
    // XZR as a data register now and then (stores of zero, discarded loads).
    let rt = if rng.chance(1, 16) { 31 } else { rt };
    let mut regs = random_regs(rng);
    regs[rn as usize] = addr;
    ctx.fire(Insn::access(access, rn, rt, rt2, rs), &regs)
        .ok()
        .map(|(after, fault)| (after, fault, rs))
}

fn mmio(ctx: &mut Ctx<'_>, rng: &mut Rng) {
    let env = ctx.env;
    let w = rng.pick(&env.windows[..env.nwindows]);
    let (mut access, bytes) = random_access(rng, true);
    let mut offset = rng.below(w.len);
    if rng.chance(15, 16) {
        offset &= !(bytes - 1);
    }
    if w.uart && writes(access) && offset < 0x10 {
        // UARTDR prints: read it instead.
        access = Access::Load { size: 2 };
        offset = 0;
    }
    if access == Access::Fetch {
        // Executing device registers would run whatever they read as: a fetch from an
        // emulated window must abort, but only a window that aborts loads too is safe to try,
        // which the runtime checks (`Refused` otherwise).
    }
    let _ = fire_access(ctx, rng, access, w.base + offset);
    if w.uart && writes(access) {
        restore_console(env);
    }
}

/// The console's PL011 settings back as the runtime set them (enabled, 8N1, FIFOs, no IRQs).
fn restore_console(env: &Env) {
    use elvisor_guest_rt::console::pl011;
    if let Some(uart) = Region::new(env.uart as usize, UART_BYTES as usize) {
        uart.write32(pl011::IMSC, 0);
        uart.write32(pl011::LCR_H, 0x70);
        uart.write32(pl011::CR, pl011::CR_UARTEN | pl011::CR_TXE | pl011::CR_RXE);
    }
}

// --- outside the VM ------------------------------------------------------------------------

/// Host RAM on QEMU virt with 1 GiB: other VMs, the module images and the hypervisor itself
/// live in 0x4000_0000..0x8000_0000 host-physical; outside this VM's RAM those are IPAs that
/// must abort.
const HOST_RAM: Range<u64> = 0x4000_0000..0x8000_0000;

fn outside(ctx: &mut Ctx<'_>, rng: &mut Rng) {
    let env = ctx.env;
    let addr = loop {
        let a = match rng.below(6) {
            0 => rng.below(layout::GICD_BASE),
            1 => layout::GICD_BASE + rng.below(0x0200_0000),
            2 => 0x0a00_0000 + rng.below(0x3600_0000),
            3 | 4 => HOST_RAM.start + rng.below(HOST_RAM.end - HOST_RAM.start),
            _ => rng.next() >> rng.below(24),
        } & !0xf;
        if !env.in_ram(a) && !env.in_ram(a + 0x800) && !env.in_window(a & !0xfff) {
            break a;
        }
    };
    let (access, _) = random_access(rng, false);
    let Some((after, fault, rs)) = fire_access(ctx, rng, access, addr) else {
        if access == Access::Fetch {
            fail(
                env.cpu,
                ctx.op,
                ctx.category,
                format_args!("{addr:#x}: a load did not abort (fetch refused)"),
            );
        }
        return;
    };
    // Cache maintenance by address and prefetches may complete without touching memory.
    if matches!(access, Access::DcCivac | Access::DcIvac | Access::Prefetch) {
        return;
    }
    // A store-exclusive without a load-exclusive before it fails (status 1) without an
    // access (ARM ARM B2.9.5): fine, but status 0 means it wrote outside the VM.
    if let (Access::StoreExclusive { .. }, None) = (access, fault)
        && after[rs as usize] & 0xffff_ffff == 1
    {
        return;
    }
    let ok = match fault {
        None => false,
        // No FEAT_LSE (a Cortex-A72): the atomics are UNDEFINED before any access.
        Some(f) if f.esr.ec() == ec::UNKNOWN => matches!(
            access,
            Access::AtomicAdd { .. } | Access::Swap { .. } | Access::CompareSwap { .. }
        ),
        Some(f) => {
            let want = if access == Access::Fetch {
                ec::IABT_CURRENT
            } else {
                ec::DABT_CURRENT
            };
            // Below 4 GiB every IPA is within the VM's address space: stage 2 must answer
            // with an external abort. Beyond it an address-size fault of stage 1 is fine too.
            f.esr.ec() == want && (addr >= 1 << 32 || f.esr.fsc() == fsc::SYNC_EXTERNAL_ABORT)
        }
    };
    if !ok {
        let _ = after;
        fail(
            env.cpu,
            ctx.op,
            ctx.category,
            format_args!(
                "{access:?} at {addr:#x} outside the VM: {}",
                match fault {
                    None => "completed (data from outside the VM)",
                    Some(_) => "wrong exception",
                }
            ),
        );
        if let Some(f) = fault {
            elvisor_guest_rt::println!("HOSTILE:   {f}");
        }
    }
}

// --- system registers ----------------------------------------------------------------------

fn sysreg(ctx: &mut Ctx<'_>, rng: &mut Rng) {
    let env = ctx.env;
    let mut regs = random_regs(rng);
    let rt = if rng.chance(1, 16) {
        31
    } else {
        rng.below(31) as u8
    };
    let insn = if rng.chance(1, 10) {
        // SYS/SYSL (op0 = 1): cache, TLB, AT, prediction operations on an address that is
        // nowhere.
        let crn = if rng.chance(3, 4) {
            rng.pick(&[7u8, 8, 7, 9])
        } else {
            rng.below(16) as u8
        };
        if rt < 31 {
            regs[rt as usize] = env.nowhere(rng);
        }
        Insn::sys(
            rng.below(8) as u8,
            crn,
            rng.below(16) as u8,
            rng.below(8) as u8,
            rt,
            rng.chance(1, 4),
        )
    } else {
        let (op0, op1, crn) = if rng.chance(1, 2) {
            rng.pick(POPULATED)
        } else {
            (
                if rng.chance(3, 4) { 3 } else { 2 },
                rng.below(8) as u8,
                rng.below(16) as u8,
            )
        };
        let enc = SysReg::new(op0, op1, crn, rng.below(16) as u8, rng.below(8) as u8);
        let write = rng.chance(2, 5);
        match write.then(|| Insn::msr(enc, rt)).flatten() {
            Some(msr) => msr,
            None => Insn::mrs(enc, rt),
        }
    };
    let _ = ctx.fire(insn, &regs);
}

/// The populated corners of the system-register space (op0, op1, CRn): ID, control,
/// translation, exception, fault, PMU, memory attribute, GIC, thread and timer registers, the
/// EL2/EL12/EL3 ranges (UNDEFINED at EL1), debug and trace. Uniform encodings are nearly all
/// unallocated, so half of the operations draw CRm and op2 inside one of these.
const POPULATED: &[(u8, u8, u8)] = &[
    (3, 0, 0),
    (3, 0, 1),
    (3, 0, 2),
    (3, 0, 4),
    (3, 0, 5),
    (3, 0, 6),
    (3, 0, 7),
    (3, 0, 9),
    (3, 0, 10),
    (3, 0, 12),
    (3, 0, 12),
    (3, 0, 12),
    (3, 0, 13),
    (3, 0, 14),
    (3, 1, 0),
    (3, 2, 0),
    (3, 3, 0),
    (3, 3, 4),
    (3, 3, 9),
    (3, 3, 13),
    (3, 3, 14),
    (3, 3, 14),
    (3, 4, 1),
    (3, 4, 12),
    (3, 5, 14),
    (3, 6, 1),
    (2, 0, 0),
    (2, 0, 1),
    (2, 0, 7),
    (2, 3, 0),
    (2, 1, 0),
];

// --- interrupt configuration garbage -------------------------------------------------------

/// GICD registers indexed by INTID (offset ranges of the GICv3/GICv2 distributor).
const GICD_RANGES: [(u64, u64); 4] = [
    (gicd::IGROUPR as u64, gicd::IPRIORITYR as u64),
    (gicd::IPRIORITYR as u64, gicd::ITARGETSR as u64),
    (gicd::ITARGETSR as u64, gicd::SGIR as u64),
    (gicd::SGIR as u64, 0x0f30),
];
/// GICv3 IROUTER<n>.
const GICD_IROUTER: Range<u64> = 0x6100..0x7fe0;

fn irq_garbage(ctx: &mut Ctx<'_>, rng: &mut Rng) {
    let env = ctx.env;
    let v3 = env.gic.version() == Version::V3;
    let gicd_base = env.windows[0].base;
    match rng.below(6) {
        // A list-register flood: every interrupt pending and enabled, at once.
        0 => {
            let frame = env.windows[1].base + rng.below(env.cpus as u64) * GICR_FRAME_BYTES;
            for reg in [gicd::ISENABLER, gicd::ISPENDR] {
                for word in 0..4u64 {
                    let (a, _) = if v3 && word == 0 {
                        (frame + gicr::SGI_BASE as u64 + reg as u64, ())
                    } else {
                        (gicd_base + reg as u64 + 4 * word, ())
                    };
                    let mut regs = random_regs(rng);
                    let [rn, rt] = rng.distinct_regs::<2>();
                    regs[rn as usize] = a;
                    regs[rt as usize] = u64::MAX;
                    let _ = ctx.fire(Insn::access(Access::Store { size: 2 }, rn, rt, 0, 0), &regs);
                }
            }
        }
        // SGIs to every target, existing or not.
        1 => {
            let mut regs = random_regs(rng);
            let rt = rng.below(31) as u8;
            if v3 {
                let enc = rng.pick(&[
                    SysReg::new(3, 0, 12, 11, 5), // ICC_SGI1R_EL1
                    SysReg::new(3, 0, 12, 11, 6), // ICC_ASGI1R_EL1
                    SysReg::new(3, 0, 12, 11, 7), // ICC_SGI0R_EL1
                ]);
                if let Some(insn) = Insn::msr(enc, rt) {
                    let _ = ctx.fire(insn, &regs);
                }
            } else {
                let [rn, rt] = rng.distinct_regs::<2>();
                regs[rn as usize] = gicd_base + gicd::SGIR as u64;
                let _ = ctx.fire(Insn::access(Access::Store { size: 2 }, rn, rt, 0, 0), &regs);
            }
        }
        // Acknowledge and end whatever is there, or random INTIDs.
        2 if v3 => {
            let rt = rng.below(31) as u8;
            let regs = random_regs(rng);
            let iar = SysReg::new(3, 0, 12, 12, rng.pick(&[0u8, 0, 2])); // IAR1, IAR1, HPPIR1
            let eoi = rng.pick(&[
                SysReg::new(3, 0, 12, 12, 1), // ICC_EOIR1_EL1
                SysReg::new(3, 0, 12, 11, 1), // ICC_DIR_EL1
                SysReg::new(3, 0, 12, 8, 1),  // ICC_EOIR0_EL1
            ]);
            if let Ok((after, _)) = ctx.fire(Insn::mrs(iar, rt), &regs)
                && let Some(insn) = Insn::msr(eoi, rt)
            {
                let _ = ctx.fire(insn, &after);
            }
        }
        // Redistributor SGI/PPI registers of any frame, existing vCPU or not.
        3 if v3 => {
            let frame = env.windows[1].base + rng.below(GICR_FRAMES) * GICR_FRAME_BYTES;
            let off = if rng.chance(1, 4) {
                rng.below(0x100) & !3
            } else {
                (gicr::SGI_BASE as u64 + 0x80 + rng.below(0xc08 - 0x80)) & !3
            };
            let _ = fire_access(ctx, rng, Access::Store { size: 2 }, frame + off);
        }
        // Routing of every SPI (GICv3 IROUTER, 64-bit).
        4 if v3 => {
            let off = GICD_IROUTER.start + (rng.below(GICD_IROUTER.end - GICD_IROUTER.start) & !7);
            let _ = fire_access(ctx, rng, Access::Store { size: 3 }, gicd_base + off);
        }
        // Enable, pend, activate, priority, group, config, targets of any INTID.
        _ => {
            let r = rng.pick(&GICD_RANGES);
            let off = (r.0 + rng.below(r.1 - r.0)) & !3;
            let size = if r.0 == gicd::IPRIORITYR as u64 && rng.chance(1, 2) {
                0
            } else {
                2
            };
            let _ = fire_access(ctx, rng, Access::Store { size }, gicd_base + off);
        }
    }
}

// --- WFI/WFE ---------------------------------------------------------------------------------

/// Makes sure a WFI (or CPU_SUSPEND) of this vCPU ends: the virtual timer's condition met
/// (CVAL 0, enabled, not masked) and its PPI deliverable whatever the other categories did to
/// the distributor, redistributor and CPU interface (enabled, priority 0, group, nothing
/// active, PMR open). IRQs stay masked in PSTATE: WFI wakes on a pending interrupt anyway.
pub fn prepare_wakeup(env: &Env) {
    let gic = &env.gic;
    let intid = env.vtimer;
    let d = gic.distributor();
    match gic.version() {
        Version::V3 => {
            d.write32(
                gicd::CTLR,
                gicd::CTLR_ARE | gicd::CTLR_ENABLE_GRP1 | gicd::CTLR_ENABLE_GRP0,
            );
            let _ = gic.wake_redistributor();
            if let Some(rd) = gic.redistributor() {
                rd.write32(gicr::SGI_BASE + gicd::IGROUPR, u32::MAX);
            }
            icc::set_sre(icc::sre() | icc_bits::SRE_SRE);
            for n in 0..icc::ACTIVE_PRIORITY_REGISTERS {
                let _ = icc::set_active_priorities(0, n, 0);
                let _ = icc::set_active_priorities(1, n, 0);
            }
            icc::set_igrpen0(1);
            icc::set_igrpen1(icc_bits::IGRPEN1_ENABLE);
        }
        Version::V2 => {
            d.write32(gicd::CTLR, gicd::CTLR_ENABLE_GRP0 | gicd::CTLR_ENABLE_GRP1);
            d.write32(gicd::IGROUPR, 0);
            if let Some(c) = gic.cpu_interface() {
                c.write32(gicc::APR, 0);
                c.write32(gicc::CTLR, gicc::CTLR_ENABLE_GRP0 | 2);
            }
        }
    }
    gic.set_priority_mask(0xff);
    gic.clear_active(intid);
    gic.set_priority(intid, 0);
    gic.enable(intid);
    Timer::Virtual.set_compare(0);
    Timer::Virtual.set_control(CTL_ENABLE);
}

fn wfx(ctx: &mut Ctx<'_>, rng: &mut Rng) {
    prepare_wakeup(ctx.env);
    for _ in 0..1 + rng.below(8) {
        let insn = if rng.chance(2, 3) {
            Insn::wfi()
        } else {
            Insn::wfe()
        };
        let regs = random_regs(rng);
        if let Ok((_, Some(f))) = ctx.fire(insn, &regs) {
            fail(
                ctx.env.cpu,
                ctx.op,
                ctx.category,
                format_args!("WFx raised {f}"),
            );
        }
    }
}

// --- racing CPU_ON / CPU_OFF -----------------------------------------------------------------

/// Per target vCPU: CPU_ON calls that answered SUCCESS, by any caller (one writer per word:
/// row = caller, column = target).
static ON_SUCCESS: [[AtomicU64; 8]; 8] = [const { [const { AtomicU64::new(0) }; 8] }; 8];
/// Times each vCPU powered itself off in the race.
static OFFS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Counts CPU_ON(target) from `caller` through the runtime's entry (so a started vCPU carries
/// on with its operations).
pub fn start_racer(caller: usize, target: usize) -> i64 {
    let ret = smp::start_cpu(smp::mpidr_of(target), crate::secondary_main, target as u64);
    if ret == psci_ret::SUCCESS {
        let c = &ON_SUCCESS[caller][target];
        c.store(c.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }
    ret
}

/// Called by a racing vCPU just before it returns from its main function (and so calls
/// PSCI CPU_OFF).
pub fn going_off(cpu: usize) {
    OFFS[cpu].store(OFFS[cpu].load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    smp::notify();
}

fn race(ctx: &mut Ctx<'_>, rng: &mut Rng) -> bool {
    let vcpus = crate::VCPUS.load(Ordering::SeqCst) as usize;
    let cpu = ctx.env.cpu;
    if cpu != 0 && rng.chance(1, 4) {
        return true;
    }
    let target = 1 + rng.below(vcpus.max(2) as u64 - 1) as usize;
    let ret = start_racer(cpu, target);
    if ![
        psci_ret::SUCCESS,
        psci_ret::ALREADY_ON,
        psci_ret::ON_PENDING,
    ]
    .contains(&ret)
    {
        fail(
            cpu,
            ctx.op,
            ctx.category,
            format_args!("CPU_ON(vCPU {target}) answered {ret}"),
        );
    }
    false
}

/// At the end: every SUCCESS of CPU_ON started the target exactly once, and every start
/// came from a SUCCESS.
pub fn check_race_accounting(vcpus: usize) {
    #[allow(clippy::needless_range_loop)] // `target` indexes a column, not `ON_SUCCESS`
    for target in 1..vcpus {
        let successes: u64 = ON_SUCCESS
            .iter()
            .take(vcpus)
            .map(|row| row[target].load(Ordering::SeqCst))
            .sum();
        let starts = crate::stat(target, Stat::Starts as usize);
        if successes != starts {
            elvisor_guest_rt::println!(
                "HOSTILE FAIL: race: vCPU {target} started {starts} times, CPU_ON answered SUCCESS {successes} times"
            );
            crate::bump(0, Stat::Failed as usize, 1);
        }
    }
    let offs: u64 = OFFS.iter().map(|o| o.load(Ordering::SeqCst)).sum();
    elvisor_guest_rt::println!("HOSTILE: race: {offs} CPU_OFF(s) of racing vCPUs");
}
