//! Failures on purpose, for the system tests of the last-resort paths: built only with the
//! `selftest` cargo feature (build/elvisor-selftest.img), armed by `elvisor.selftest=KIND` on
//! the hypervisor command line.
//!
//! | KIND              | CPU | what it does                                 | expected report        |
//! |-------------------|-----|----------------------------------------------|------------------------|
//! | `panic`           | 0   | `panic!`                                     | PANIC, backtrace       |
//! | `panic-secondary` | 1   | `panic!` on a secondary CPU                  | PANIC on cpu1          |
//! | `stack-overflow`  | 0   | unbounded recursion into the guard page      | stack overflow on cpu0 |
//! | `write-text`      | 0   | a store to a word of .text                   | write to text (W^X)    |
//! | `exec-data`       | 0   | a branch to an instruction in .data          | fetch from data (W^X)  |
//!
//! The CPU fires when it enters its scheduler, once every CPU is online and [`DELAY_MS`] later,
//! so that guests on the other CPUs are running (and must stop). Should a W^X trigger not
//! fault, it says so with a FAIL line and the hypervisor carries on.

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use super::timer;

/// How long after every CPU is online the failure happens.
pub const DELAY_MS: u64 = 500;
/// How long to wait for every CPU to come online before firing anyway.
const ONLINE_WAIT_MS: u64 = 5000;

/// The failure to cause.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    Panic = 1,
    PanicSecondary = 2,
    StackOverflow = 3,
    WriteText = 4,
    ExecData = 5,
}

const KINDS: [(&str, Kind); 5] = [
    ("panic", Kind::Panic),
    ("panic-secondary", Kind::PanicSecondary),
    ("stack-overflow", Kind::StackOverflow),
    ("write-text", Kind::WriteText),
    ("exec-data", Kind::ExecData),
];

/// The armed failure (a `Kind` as u8), 0 for none.
static ARMED: AtomicU8 = AtomicU8::new(0);

/// Arms the failure `elvisor.selftest=` names (boot CPU, before any other CPU runs).
pub fn configure(value: &str) {
    match KINDS.iter().find(|(name, _)| *name == value) {
        Some(&(_, kind)) => {
            ARMED.store(kind as u8, Ordering::Relaxed);
            log::warn!(
                "selftest: elvisor.selftest={value}: cpu{} fails on purpose {DELAY_MS} ms after every CPU is online",
                target_cpu(kind)
            );
        }
        None => log::warn!(
            "selftest: unknown elvisor.selftest={value}; expected panic, panic-secondary, \
             stack-overflow, write-text or exec-data"
        ),
    }
}

fn armed() -> Option<Kind> {
    let v = ARMED.load(Ordering::Relaxed);
    KINDS.iter().map(|&(_, k)| k).find(|&k| k as u8 == v)
}

fn target_cpu(kind: Kind) -> usize {
    if kind == Kind::PanicSecondary { 1 } else { 0 }
}

/// Called by each CPU as it enters its scheduler (`ncpus`: how many CPUs the platform has).
/// On the CPU the armed failure targets: waits until every CPU is online and then
/// [`DELAY_MS`], and fails.
pub fn at_scheduler_entry(index: usize, ncpus: usize) {
    let Some(kind) = armed() else {
        return;
    };
    if index != target_cpu(kind) {
        return;
    }
    let online_by = deadline_after(ONLINE_WAIT_MS);
    while !all_online(ncpus) && timer::now() < online_by {
        core::hint::spin_loop();
    }
    let fire_at = deadline_after(DELAY_MS);
    while timer::now() < fire_at {
        core::hint::spin_loop();
    }
    log::warn!(
        "selftest: cpu{index}: {} now",
        KINDS
            .iter()
            .find(|(_, k)| *k == kind)
            .map_or("?", |(n, _)| n)
    );
    match kind {
        Kind::Panic | Kind::PanicSecondary => {
            panic!("selftest: a hypervisor panic on purpose (elvisor.selftest)")
        }
        Kind::StackOverflow => {
            let depth = recurse(0);
            crate::println!("elvisor: selftest FAIL: {depth} nested calls did not overflow");
        }
        Kind::WriteText => {
            write_text();
            crate::println!(
                "elvisor: selftest FAIL: a write to hypervisor text did not fault (W^X not enforced)"
            );
        }
        Kind::ExecData => {
            exec_data();
            crate::println!(
                "elvisor: selftest FAIL: a branch into hypervisor data did not fault (W^X not enforced)"
            );
        }
    }
}

fn all_online(ncpus: usize) -> bool {
    super::handlers::cpus_up(ncpus)
}

fn deadline_after(ms: u64) -> u64 {
    timer::now().saturating_add(timer::frequency().saturating_mul(ms) / 1000)
}

/// Recursion the optimizer cannot flatten: each frame keeps a buffer it hands to `black_box`
/// and uses after the call, so every level needs its own frame. 512 bytes a frame stays well
/// under the 4 KiB guard page, so the first access past the stack lands in the guard page
/// rather than beyond it. The depth bound is far beyond what the stack holds.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut buf = [0u8; 512];
    buf[(depth % 512) as usize] = depth as u8;
    core::hint::black_box(&mut buf);
    if core::hint::black_box(depth) > 1 << 40 {
        return depth;
    }
    let below = recurse(depth + 1);
    below + u64::from(buf[((depth + 7) % 512) as usize])
}

/// Stores to a word of the hypervisor's own code, which the EL2 map keeps read-only.
#[inline(never)]
fn write_text() {
    let word = write_text as *const () as *mut u32;
    // SAFETY: `word` is the first instruction of this function: mapped (read-only) text, so
    // the read is sound.
    let v = unsafe { word.read_volatile() };
    // SAFETY: the store must take a permission fault, which is fatal and never returns. Were
    // text writable after all, it writes back the value just read and the code is unchanged
    // (the instruction cache never sees a different value).
    unsafe { word.write_volatile(v) };
}

/// A RET instruction (0xd65f03c0) in .data: an atomic has interior mutability, so it is
/// placed in .data rather than .rodata.
static RET_IN_DATA: AtomicU32 = AtomicU32::new(0xd65f_03c0);

/// Branches to [`RET_IN_DATA`], which the EL2 map makes execute-never.
#[inline(never)]
fn exec_data() {
    let target = RET_IN_DATA.as_ptr() as u64;
    // SAFETY: the fetch from execute-never memory must take a permission fault, which is
    // fatal and never returns. Were the page executable, the RET returns straight here
    // (BLR set x30) having changed nothing: the C ABI's caller-saved registers are declared
    // clobbered, x30 among them.
    unsafe {
        core::arch::asm!("blr {target}", target = in(reg) target, clobber_abi("C"));
    }
}
