//! What an exception was, and what the runtime does with it.
//!
//! Guests test the hypervisor's fault injection by *expecting* an exception: the runtime is
//! armed with a [`Recovery`], the probe runs one instruction that may fault, and the vector
//! handler records ESR/FAR, moves ELR_EL1 past the fault and returns. Any other exception is a
//! test failure: it is printed with ESR/ELR/FAR as `<PREFIX> FAIL: unexpected-exception: ...`
//! and the guest powers off (no RESULT line, so the run counts as failed).
//!
//! IRQs taken at EL1 go to the handler a guest installed with [`crate::arch::irq::set_handler`];
//! without one, an IRQ is unexpected like any other exception. FIQs are always unexpected.
//!
//! The state here is per CPU (indexed by [`crate::arch::cpu_index`], so a probe on one vCPU
//! never claims another vCPU's exception), a handful of atomics used only with plain loads and
//! stores (no exclusives, which need not work on the Device memory every access is while the
//! MMU is off): each CPU's slot is written by that CPU alone. IRQ handlers do not touch it.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::arch::vectors::TrapFrame;

/// Which of the 16 vector entries was taken (index = entry offset / 0x80).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExceptionKind {
    /// Synchronous, current EL, SP_EL0.
    CurrentSp0Sync = 0,
    /// IRQ, current EL, SP_EL0.
    CurrentSp0Irq = 1,
    /// FIQ, current EL, SP_EL0.
    CurrentSp0Fiq = 2,
    /// SError, current EL, SP_EL0.
    CurrentSp0SError = 3,
    /// Synchronous, current EL, SP_EL1: every fault a probe provokes.
    CurrentSpxSync = 4,
    /// IRQ, current EL, SP_EL1.
    CurrentSpxIrq = 5,
    /// FIQ, current EL, SP_EL1.
    CurrentSpxFiq = 6,
    /// SError, current EL, SP_EL1.
    CurrentSpxSError = 7,
    /// Synchronous from EL0, AArch64.
    Lower64Sync = 8,
    /// IRQ from EL0, AArch64.
    Lower64Irq = 9,
    /// FIQ from EL0, AArch64.
    Lower64Fiq = 10,
    /// SError from EL0, AArch64.
    Lower64SError = 11,
    /// Synchronous from EL0, AArch32.
    Lower32Sync = 12,
    /// IRQ from EL0, AArch32.
    Lower32Irq = 13,
    /// FIQ from EL0, AArch32.
    Lower32Fiq = 14,
    /// SError from EL0, AArch32.
    Lower32SError = 15,
}

impl ExceptionKind {
    const ALL: [Self; 16] = [
        Self::CurrentSp0Sync,
        Self::CurrentSp0Irq,
        Self::CurrentSp0Fiq,
        Self::CurrentSp0SError,
        Self::CurrentSpxSync,
        Self::CurrentSpxIrq,
        Self::CurrentSpxFiq,
        Self::CurrentSpxSError,
        Self::Lower64Sync,
        Self::Lower64Irq,
        Self::Lower64Fiq,
        Self::Lower64SError,
        Self::Lower32Sync,
        Self::Lower32Irq,
        Self::Lower32Fiq,
        Self::Lower32SError,
    ];

    /// The kind for a vector index 0..=15.
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }

    /// Whether this is one of the four synchronous entries.
    pub fn is_sync(self) -> bool {
        (self as u8).is_multiple_of(4)
    }
}

/// ESR_ELx exception classes the guests check (ARM ARM D19.2.37, table "ESR_ELx.EC").
pub mod ec {
    /// Unknown reason: UNDEFINED instructions, including trapped-but-unknown system registers.
    pub const UNKNOWN: u8 = 0x00;
    /// HVC executed in AArch64 state (only seen at EL2).
    pub const HVC64: u8 = 0x16;
    /// SMC executed in AArch64 state (only seen at EL2/EL3).
    pub const SMC64: u8 = 0x17;
    /// Trapped MSR/MRS/system instruction.
    pub const SYS64: u8 = 0x18;
    /// Instruction abort from a lower EL.
    pub const IABT_LOWER: u8 = 0x20;
    /// Instruction abort taken without a change in EL.
    pub const IABT_CURRENT: u8 = 0x21;
    /// Data abort from a lower EL.
    pub const DABT_LOWER: u8 = 0x24;
    /// Data abort taken without a change in EL.
    pub const DABT_CURRENT: u8 = 0x25;
}

/// Fault status codes (ISS.DFSC / ISS.IFSC, bits `[5:0]`).
pub mod fsc {
    /// Synchronous External abort, not on a translation table walk.
    pub const SYNC_EXTERNAL_ABORT: u8 = 0x10;
}

/// ESR_EL1 as raised, with the fields the tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    /// Exception class, `ESR[31:26]`.
    pub fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// Instruction length, `ESR[25]`: 1 = 32-bit instruction.
    pub fn il(self) -> bool {
        (self.0 >> 25) & 1 == 1
    }

    /// Instruction specific syndrome, `ESR[24:0]`.
    pub fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// DFSC/IFSC for aborts, `ISS[5:0]`.
    pub fn fsc(self) -> u8 {
        (self.0 & 0x3f) as u8
    }

    /// Data aborts: WnR, `ISS[6]` (1 = the access was a write).
    pub fn wnr(self) -> bool {
        (self.0 >> 6) & 1 == 1
    }
}

/// One exception, as the handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The vector entry taken.
    pub kind: ExceptionKind,
    /// ESR_EL1.
    pub esr: Esr,
    /// FAR_EL1 (meaningful for aborts and alignment faults only).
    pub far: u64,
    /// ELR_EL1 before the handler moved it: the faulting instruction.
    pub elr: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ESR_EL1={:#x} (EC {:#04x} ISS {:#x}) FAR_EL1={:#x} ELR_EL1={:#x}",
            self.kind,
            self.esr.0,
            self.esr.ec(),
            self.esr.iss(),
            self.far,
            self.elr
        )
    }
}

/// How to resume after an expected synchronous exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Recovery {
    /// ELR += 4: skip the faulting instruction (loads, stores, `mrs`, `hvc`, `smc`; every A64
    /// instruction is 4 bytes).
    SkipInstruction = 1,
    /// ELR = saved x30: the probe branched with `blr` and the fault happened at or after the
    /// target, so resume at the instruction after the `blr`.
    ReturnToLr = 2,
    /// ELR = an address given when arming ([`arm_resume_at`]): the attack trampoline resumes
    /// after its one instruction whatever that instruction did (a branch into nowhere included),
    /// with every general register as the exception left it.
    ResumeAt = 3,
    /// ELR += 4 and x3 = ESR_EL1 | 1 << 63 for *every* synchronous exception until [`disarm`]:
    /// the generated MRS/MSR batches of [`crate::arch::sysregs`], in which x3 flags the
    /// operation that faulted and nothing else lives in x3.
    SkipEach = 4,
}

const DISARMED: u8 = 0;

/// One CPU's expected-exception state, written only by that CPU.
struct CpuState {
    armed: AtomicU8,
    taken: AtomicBool,
    taken_kind: AtomicU8,
    taken_esr: AtomicU64,
    taken_far: AtomicU64,
    taken_elr: AtomicU64,
    resume_at: AtomicU64,
    in_handler: AtomicBool,
}

static CPU_STATE: [CpuState; crate::arch::MAX_CPUS] = [const {
    CpuState {
        armed: AtomicU8::new(DISARMED),
        taken: AtomicBool::new(false),
        taken_kind: AtomicU8::new(0),
        taken_esr: AtomicU64::new(0),
        taken_far: AtomicU64::new(0),
        taken_elr: AtomicU64::new(0),
        resume_at: AtomicU64::new(0),
        in_handler: AtomicBool::new(false),
    }
}; crate::arch::MAX_CPUS];

/// This CPU's state.
fn state() -> &'static CpuState {
    &CPU_STATE[crate::arch::cpu_index()]
}

/// Arms the handler for one synchronous exception. Used by `arch::probe` around a single
/// faulting instruction; pair with [`disarm`].
pub(crate) fn arm(recovery: Recovery) {
    let state = state();
    state.taken.store(false, Ordering::SeqCst);
    state.armed.store(recovery as u8, Ordering::SeqCst);
}

/// Arms the handler for one synchronous exception after which execution resumes at `addr`
/// (see [`Recovery::ResumeAt`]).
pub(crate) fn arm_resume_at(addr: u64) {
    let state = state();
    state.resume_at.store(addr, Ordering::SeqCst);
    state.taken.store(false, Ordering::SeqCst);
    state
        .armed
        .store(Recovery::ResumeAt as u8, Ordering::SeqCst);
}

/// Arms the handler for any number of synchronous exceptions, each skipped with x3 set (see
/// [`Recovery::SkipEach`]), until [`disarm`].
pub(crate) fn arm_skip_each() {
    let state = state();
    state.taken.store(false, Ordering::SeqCst);
    state
        .armed
        .store(Recovery::SkipEach as u8, Ordering::SeqCst);
}

/// Disarms and returns the exception taken since [`arm`], if any.
pub(crate) fn disarm() -> Option<Fault> {
    let state = state();
    state.armed.store(DISARMED, Ordering::SeqCst);
    if !state.taken.load(Ordering::SeqCst) {
        return None;
    }
    Some(Fault {
        kind: ExceptionKind::from_index(state.taken_kind.load(Ordering::SeqCst).into())?,
        esr: Esr(state.taken_esr.load(Ordering::SeqCst)),
        far: state.taken_far.load(Ordering::SeqCst),
        elr: state.taken_elr.load(Ordering::SeqCst),
    })
}

/// The Rust side of every vector entry.
pub(crate) fn dispatch(kind: usize, esr: u64, far: u64, elr: u64, frame: &mut TrapFrame) {
    let Some(kind) = ExceptionKind::from_index(kind) else {
        unexpected(None, esr, far, elr);
    };
    let fault = Fault {
        kind,
        esr: Esr(esr),
        far,
        elr,
    };

    if matches!(
        kind,
        ExceptionKind::CurrentSpxIrq | ExceptionKind::CurrentSp0Irq
    ) && let Some(handler) = crate::arch::irq::handler()
    {
        crate::arch::irq::set_interrupted_at(elr);
        // The vector code restores the whole interrupted context, ELR included.
        handler();
        return;
    }

    let state = state();
    let armed = state.armed.load(Ordering::SeqCst);
    let in_current_el = matches!(
        kind,
        ExceptionKind::CurrentSp0Sync | ExceptionKind::CurrentSpxSync
    );
    if armed == Recovery::SkipEach as u8 && in_current_el {
        // Stays armed: the batch goes on with its next operation.
        state.taken_esr.store(esr, Ordering::SeqCst);
        state.taken.store(true, Ordering::SeqCst);
        frame.x[3] = esr | 1 << 63;
        frame.elr = elr.wrapping_add(4);
        return;
    }
    if armed != DISARMED && in_current_el {
        state.armed.store(DISARMED, Ordering::SeqCst);
        state.taken_kind.store(kind as u8, Ordering::SeqCst);
        state.taken_esr.store(esr, Ordering::SeqCst);
        state.taken_far.store(far, Ordering::SeqCst);
        state.taken_elr.store(elr, Ordering::SeqCst);
        state.taken.store(true, Ordering::SeqCst);
        frame.elr = if armed == Recovery::ReturnToLr as u8 {
            frame.x[30]
        } else if armed == Recovery::ResumeAt as u8 {
            state.resume_at.load(Ordering::SeqCst)
        } else {
            elr.wrapping_add(4)
        };
        return;
    }
    unexpected(Some(fault), esr, far, elr);
}

/// Reports an exception nobody expected and powers off.
fn unexpected(fault: Option<Fault>, esr: u64, far: u64, elr: u64) -> ! {
    // Per CPU, interrupts masked: a load and a store suffice (no exclusives with the MMU off).
    let state = state();
    if state.in_handler.load(Ordering::SeqCst) {
        // A fault while reporting a fault (a broken UART, say): stop without printing.
        crate::smccc::psci::system_off();
    }
    state.in_handler.store(true, Ordering::SeqCst);
    let prefix = crate::report::prefix();
    match fault {
        Some(fault) => crate::println!("{prefix} FAIL: unexpected-exception: {fault}"),
        None => crate::println!(
            "{prefix} FAIL: unexpected-exception: bad vector ESR_EL1={esr:#x} FAR_EL1={far:#x} ELR_EL1={elr:#x}"
        ),
    }
    crate::smccc::psci::system_off()
}
