//! What the vCPUs share: one record per CPU, written by that CPU (or its IRQ handler) alone,
//! and the command mailboxes vCPU 0 writes. Plain atomic loads and stores only: the MMU is off,
//! so every access is Device memory and exclusives are off the table (see
//! `elvisor_guest_rt::smp`). A record keeps its contents across a CPU_OFF and restart, so
//! counters count over every life of a vCPU.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use elvisor_guest_rt::arch::MAX_CPUS;
use elvisor_guest_rt::smp;

/// Command: wait for [`GO`], then CPU_ON the race target.
pub const OP_RACE: u32 = 1;
/// Command: CPU_OFF.
pub const OP_OFF: u32 = 2;

/// One vCPU's record.
pub struct PerCpu {
    /// Times this vCPU entered its main function (once per CPU_ON).
    pub arrivals: AtomicU32,
    /// MPIDR_EL1 as read at its last entry.
    pub mpidr: AtomicU64,
    /// x0 at its last entry.
    pub context: AtomicU64,
    /// CurrentEL.EL at its last entry.
    pub entry_el: AtomicU32,
    /// DAIF at its last entry.
    pub entry_daif: AtomicU64,
    /// SCTLR_EL1 at its last entry.
    pub entry_sctlr: AtomicU64,
    /// Set to `arrivals` once its GIC CPU interface is up and it idles with IRQs unmasked.
    pub ready: AtomicU32,
    /// Nonzero if its GIC bring-up failed.
    pub gic_failed: AtomicU32,
    /// The sequence number of the last command it took.
    pub handled: AtomicU32,
    /// The [`RACE_ID`] of the race it is armed for (waiting for [`GO`]).
    pub race_armed: AtomicU32,
    /// Its CPU_ON result in the race (an i64 PSCI code).
    pub race_ret: AtomicU64,
    /// 1 if CPU_OFF returned to it; then `off_ret` holds the code.
    pub off_returned: AtomicU32,
    /// What CPU_OFF returned.
    pub off_ret: AtomicU64,
    /// SGIs taken, per INTID (written by its IRQ handler).
    pub sgi: [AtomicU32; 16],
    /// GICv2: the source CPUs of the SGIs taken, a bit per source (written by its handler).
    pub sgi_sources: [AtomicU32; 16],
    /// Interrupts other than SGIs taken (none are enabled).
    pub other_irqs: AtomicU32,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            arrivals: AtomicU32::new(0),
            mpidr: AtomicU64::new(0),
            context: AtomicU64::new(0),
            entry_el: AtomicU32::new(0),
            entry_daif: AtomicU64::new(0),
            entry_sctlr: AtomicU64::new(0),
            ready: AtomicU32::new(0),
            gic_failed: AtomicU32::new(0),
            handled: AtomicU32::new(0),
            race_armed: AtomicU32::new(0),
            race_ret: AtomicU64::new(0),
            off_returned: AtomicU32::new(0),
            off_ret: AtomicU64::new(0),
            sgi: [const { AtomicU32::new(0) }; 16],
            sgi_sources: [const { AtomicU32::new(0) }; 16],
            other_irqs: AtomicU32::new(0),
        }
    }

    /// SGIs `intid` taken so far.
    pub fn sgis(&self, intid: u32) -> u32 {
        load(&self.sgi[intid as usize])
    }
}

/// Every vCPU's record, indexed by MPIDR_EL1.Aff0.
pub static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Per vCPU: `seq << 8 | op`, written by vCPU 0.
static COMMAND: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// The last command sequence number used (vCPU 0 only).
static SEQ: AtomicU32 = AtomicU32::new(0);

/// The number of the race the racers arm for (written by vCPU 0 before the race commands).
pub static RACE_ID: AtomicU32 = AtomicU32::new(0);

/// The race starts when this equals [`RACE_ID`] (written by vCPU 0).
pub static GO: AtomicU32 = AtomicU32::new(0);

/// The vCPU the racers start (written by vCPU 0 before the race command).
pub static RACE_TARGET: AtomicU32 = AtomicU32::new(0);

/// A SeqCst load (`ldar`).
pub fn load(word: &AtomicU32) -> u32 {
    word.load(Ordering::SeqCst)
}

/// A SeqCst load (`ldar`) of a 64-bit word.
pub fn load64(word: &AtomicU64) -> u64 {
    word.load(Ordering::SeqCst)
}

/// A SeqCst store (`stlr`).
pub fn store(word: &AtomicU32, value: u32) {
    word.store(value, Ordering::SeqCst);
}

/// A SeqCst store (`stlr`) of a 64-bit word.
pub fn store64(word: &AtomicU64, value: u64) {
    word.store(value, Ordering::SeqCst);
}

/// `word += 1` for a word with a single writer (this CPU, or its IRQ handler, never both).
pub fn bump(word: &AtomicU32) {
    store(word, load(word).wrapping_add(1));
}

/// vCPU 0: sends `op` to vCPU `cpu`; returns the command's sequence number.
pub fn command(cpu: usize, op: u32) -> u32 {
    let seq = load(&SEQ) + 1;
    store(&SEQ, seq);
    store(&COMMAND[cpu], seq << 8 | op);
    smp::notify();
    seq
}

/// The command waiting for vCPU `cpu`, if it has not taken it yet: `(seq, op)`.
pub fn pending_command(cpu: usize) -> Option<(u32, u32)> {
    let command = load(&COMMAND[cpu]);
    let seq = command >> 8;
    (seq != 0 && seq != load(&CPUS[cpu].handled)).then_some((seq, command & 0xff))
}
