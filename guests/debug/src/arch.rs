//! Everything in the debug guest that touches the CPU directly: its own EL1 vector table
//! (installed around the tests: it records every exception and resumes), the debug system
//! registers, a minimal EL0 trampoline, and the code the breakpoints, watchpoints and steps
//! aim at. The only module of the crate with `asm!`/`unsafe`.
//!
//! The vector table records each exception in this CPU's [`Record`] and resumes:
//! - software step (EC 0x32 lower EL, 0x33 current EL): MDSCR_EL1.SS cleared, ELR unchanged
//!   (the step completed; the next instruction runs unstepped);
//! - anything else (breakpoint 0x30/0x31, watchpoint 0x34/0x35, BRK 0x3c, UNDEFINED 0x00):
//!   ELR += 4, skipping the instruction that raised it;
//! - SVC from EL0 (EC 0x15, vector 0x400) is the EL0 trampoline's way back: [`el0_call`]
//!   returns to its caller with the EL0 code's x0.
//!
//! IRQs stay masked throughout (PSTATE.I at EL1; SPSR.I for EL0). The MMU is off, so EL0 may
//! fetch and load from anywhere in the image (no stage-1 permissions apply).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// One CPU's record of exceptions taken through the debug vectors (written by the vector
/// code with plain stores; MMU off, so every access is to Device memory, never cached).
#[repr(C)]
pub struct Record {
    /// Exceptions taken.
    pub count: AtomicU64,
    pub esr: AtomicU64,
    pub elr: AtomicU64,
    pub far: AtomicU64,
    /// Vector index (offset / 0x80).
    pub vector: AtomicU64,
    pad: [AtomicU64; 3],
}

const RECORD_BYTES: usize = 64;
const _: () = assert!(core::mem::size_of::<Record>() == RECORD_BYTES);

#[unsafe(no_mangle)]
static DEBUG_RECORDS: [Record; 8] = [const {
    Record {
        count: AtomicU64::new(0),
        esr: AtomicU64::new(0),
        elr: AtomicU64::new(0),
        far: AtomicU64::new(0),
        vector: AtomicU64::new(0),
        pad: [const { AtomicU64::new(0) }; 3],
    }
}; 8];

/// A snapshot of this CPU's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub count: u64,
    pub esr: u64,
    pub elr: u64,
    pub far: u64,
    pub vector: u64,
}

impl Taken {
    pub fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }
}

fn record() -> &'static Record {
    &DEBUG_RECORDS[elvisor_guest_rt::arch::cpu_index() % 8]
}

/// Clears this CPU's record.
pub fn reset_record() {
    let r = record();
    for a in [&r.count, &r.esr, &r.elr, &r.far, &r.vector] {
        a.store(0, Ordering::SeqCst);
    }
}

/// This CPU's record.
pub fn taken() -> Taken {
    let r = record();
    Taken {
        count: r.count.load(Ordering::SeqCst),
        esr: r.esr.load(Ordering::SeqCst),
        elr: r.elr.load(Ordering::SeqCst),
        far: r.far.load(Ordering::SeqCst),
        vector: r.vector.load(Ordering::SeqCst),
    }
}

// SAFETY (of the assembly as a whole): the vectors run only while installed by
// `install_vectors` on this CPU; each entry saves the registers it uses on the EL1 stack and
// restores them before `eret`, and writes only this CPU's DEBUG_RECORDS slot. `el0_call`
// saves every callee-saved register and the link register on the stack; the SVC path pops
// exactly what the entry and `el0_call` pushed, in reverse, since SP_EL1 is not moved by EL0.
global_asm!(
    ".pushsection .text.debug_vectors, \"ax\"",
    ".balign 2048",
    ".global debug_vectors",
    "debug_vectors:",
    ".irp idx, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    ".balign 128",
    "    stp     x0, x1, [sp, #-16]!",
    "    mov     x0, #\\idx",
    "    b       debug_common",
    ".endr",
    "debug_common:",
    "    stp     x2, x3, [sp, #-16]!",
    "    stp     x4, x5, [sp, #-16]!",
    "    mrs     x1, esr_el1",
    "    lsr     x2, x1, #26",
    "    cmp     x0, #8",
    "    b.ne    1f",
    "    cmp     x2, #0x15",
    "    b.eq    debug_el0_return",
    "1:  mrs     x3, mpidr_el1",
    "    and     x3, x3, #7",
    "    adrp    x4, DEBUG_RECORDS",
    "    add     x4, x4, :lo12:DEBUG_RECORDS",
    "    add     x4, x4, x3, lsl #6",
    "    ldr     x5, [x4]",
    "    add     x5, x5, #1",
    "    str     x5, [x4]",
    "    str     x1, [x4, #8]",
    "    mrs     x5, elr_el1",
    "    str     x5, [x4, #16]",
    "    mrs     x3, far_el1",
    "    str     x3, [x4, #24]",
    "    str     x0, [x4, #32]",
    "    cmp     x2, #0x32",
    "    b.eq    2f",
    "    cmp     x2, #0x33",
    "    b.eq    2f",
    "    add     x5, x5, #4",
    "    msr     elr_el1, x5",
    "    b       3f",
    "2:  mrs     x3, mdscr_el1",
    "    bic     x3, x3, #1",
    "    msr     mdscr_el1, x3",
    "3:  ldp     x4, x5, [sp], #16",
    "    ldp     x2, x3, [sp], #16",
    "    ldp     x0, x1, [sp], #16",
    "    eret",
    // SVC from EL0: the trampoline is done. x0 = the EL0 code's x0 (saved by the entry).
    "debug_el0_return:",
    "    ldp     x4, x5, [sp], #16",
    "    ldp     x2, x3, [sp], #16",
    "    ldp     x0, x1, [sp], #16",
    "    ldp     x19, x20, [sp], #16",
    "    ldp     x21, x22, [sp], #16",
    "    ldp     x23, x24, [sp], #16",
    "    ldp     x25, x26, [sp], #16",
    "    ldp     x27, x28, [sp], #16",
    "    ldp     x29, x30, [sp], #16",
    "    ret",
    // el0_call(entry = x0, arg = x1, spsr_extra = x2): runs `entry` at EL0t with x0 = arg,
    // DAIF masked (debug exceptions from EL0 are not masked by PSTATE.D: EL0 is below the
    // debug target EL1) and SPSR bits `spsr_extra` (SS, bit 21). Returns the EL0 code's x0
    // once it executes `svc #0`.
    ".global debug_el0_call",
    "debug_el0_call:",
    "    stp     x29, x30, [sp, #-16]!",
    "    stp     x27, x28, [sp, #-16]!",
    "    stp     x25, x26, [sp, #-16]!",
    "    stp     x23, x24, [sp, #-16]!",
    "    stp     x21, x22, [sp, #-16]!",
    "    stp     x19, x20, [sp, #-16]!",
    "    msr     elr_el1, x0",
    "    mov     x3, #0x3c0",
    "    orr     x3, x3, x2",
    "    msr     spsr_el1, x3",
    "    mov     x0, x1",
    "    isb",
    "    eret",
    // el1_step(entry = x0, arg = x1): ERET to `entry` at EL1h with PSTATE.D clear and SS set
    // (MDSCR_EL1.SS and KDE must be set): one instruction runs, then the software step
    // exception. `entry` returns to this function's caller through x30.
    ".global debug_el1_step",
    "debug_el1_step:",
    "    stp     x29, x30, [sp, #-16]!",
    "    adr     x30, 4f",
    "    msr     elr_el1, x0",
    "    mov     x3, #0x1c5",
    "    orr     x3, x3, #(1 << 21)",
    "    msr     spsr_el1, x3",
    "    mov     x0, x1",
    "    isb",
    "    eret",
    "4:  msr     daifset, #8",
    "    ldp     x29, x30, [sp], #16",
    "    ret",
    // el1_unmasked(entry = x0, arg = x1): calls `entry(arg)` at EL1 with PSTATE.D clear.
    ".global debug_el1_unmasked",
    "debug_el1_unmasked:",
    "    stp     x29, x30, [sp, #-16]!",
    "    mov     x2, x0",
    "    mov     x0, x1",
    "    msr     daifclr, #8",
    "    blr     x2",
    "    msr     daifset, #8",
    "    ldp     x29, x30, [sp], #16",
    "    ret",
    // The targets (EL1 and EL0 alike): each starts with the instruction a breakpoint or a
    // step aims at. `target_*`: nop; add x0, x0, #1; ret. `load_*`: x0 = [x0].
    ".balign 16",
    ".global debug_target_a",
    "debug_target_a:",
    "    nop",
    "    add     x0, x0, #1",
    "    ret",
    ".balign 16",
    ".global debug_target_b",
    "debug_target_b:",
    "    nop",
    "    add     x0, x0, #1",
    "    ret",
    ".balign 16",
    ".global debug_load",
    "debug_load:",
    "    ldr     x0, [x0]",
    "    ret",
    // Instructions the hypervisor emulates (a trapped MMIO load, x0 = its address; a trapped
    // system register read), each followed by `add x0, x0, #1; ret`: a step from the first
    // must stop after it, not after the add.
    ".balign 16",
    ".global debug_emulated_load",
    "debug_emulated_load:",
    "    ldr     w1, [x0]",
    "    add     x0, x0, #1",
    "    ret",
    ".balign 16",
    ".global debug_emulated_sysreg",
    "debug_emulated_sysreg:",
    "    mrs     x1, cntp_ctl_el0",
    "    add     x0, x0, #1",
    "    ret",
    // EL0 versions end in `svc #0` instead of `ret`.
    ".balign 16",
    ".global debug_el0_target_a",
    "debug_el0_target_a:",
    "    nop",
    "    add     x0, x0, #1",
    "    add     x0, x0, #1",
    "    svc     #0",
    ".balign 16",
    ".global debug_el0_target_b",
    "debug_el0_target_b:",
    "    nop",
    "    add     x0, x0, #1",
    "    add     x0, x0, #1",
    "    svc     #0",
    ".balign 16",
    ".global debug_el0_load",
    "debug_el0_load:",
    "    ldr     x0, [x0]",
    "    svc     #0",
    ".popsection",
);

unsafe extern "C" {
    static debug_vectors: u8;
    fn debug_el0_call(entry: usize, arg: u64, spsr_extra: u64) -> u64;
    fn debug_el1_step(entry: usize, arg: u64) -> u64;
    fn debug_el1_unmasked(entry: usize, arg: u64) -> u64;
    fn debug_target_a(x: u64) -> u64;
    fn debug_target_b(x: u64) -> u64;
    fn debug_load(addr: u64) -> u64;
    fn debug_emulated_load(addr: u64) -> u64;
    fn debug_emulated_sysreg(x: u64) -> u64;
    fn debug_el0_target_a();
    fn debug_el0_target_b();
    fn debug_el0_load();
}

/// Code addresses the tests aim at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// EL1: `nop; add x0, x0, #1; ret`.
    A,
    B,
    /// EL1: `ldr x0, [x0]; ret`.
    Load,
    /// EL1: `ldr w1, [x0]; add x0, x0, #1; ret`, x0 an emulated device register.
    EmulatedLoad,
    /// EL1: `mrs x1, cntp_ctl_el0; add x0, x0, #1; ret` (trapped and emulated).
    EmulatedSysreg,
    /// EL0: `nop; add; add; svc #0`.
    El0A,
    El0B,
    /// EL0: `ldr x0, [x0]; svc #0`.
    El0Load,
}

impl Target {
    pub fn addr(self) -> usize {
        match self {
            Target::A => debug_target_a as *const () as usize,
            Target::B => debug_target_b as *const () as usize,
            Target::Load => debug_load as *const () as usize,
            Target::EmulatedLoad => debug_emulated_load as *const () as usize,
            Target::EmulatedSysreg => debug_emulated_sysreg as *const () as usize,
            Target::El0A => debug_el0_target_a as *const () as usize,
            Target::El0B => debug_el0_target_b as *const () as usize,
            Target::El0Load => debug_el0_load as *const () as usize,
        }
    }
}

/// Masks debug exceptions at EL1 (PSTATE.D) and installs the debug vectors; returns the
/// VBAR_EL1 to put back.
pub fn install_vectors() -> u64 {
    let old: u64;
    let new = &raw const debug_vectors as u64;
    // SAFETY: the new table is 2 KiB aligned and handles all 16 entries (module docs).
    unsafe {
        asm!("msr daifset, #8", "mrs {old}, vbar_el1", "msr vbar_el1, {new}", "isb", old = out(reg) old,
             new = in(reg) new, options(nostack, preserves_flags))
    };
    old
}

/// Puts VBAR_EL1 back.
pub fn restore_vectors(old: u64) {
    // SAFETY: `old` is the runtime's table, read by `install_vectors`.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) old, options(nostack, preserves_flags)) };
}

/// Calls an EL1 target with PSTATE.D clear (debug exceptions enabled at EL1 when KDE is set).
pub fn call_el1(t: Target, arg: u64) -> u64 {
    // SAFETY: the targets follow the C calling convention and touch only x0 (and [x0] for
    // the load, which the caller points at a valid word).
    unsafe { debug_el1_unmasked(t.addr(), arg) }
}

/// Runs an EL0 target with x0 = `arg`, single-stepped from its first instruction if `step`.
pub fn call_el0(t: Target, arg: u64, step: bool) -> u64 {
    let extra = if step { 1 << 21 } else { 0 };
    // SAFETY: the EL0 targets end with `svc #0`, which the installed vectors turn into this
    // call's return; they use x0 only.
    unsafe { debug_el0_call(t.addr(), arg, extra) }
}

/// Steps the first instruction of an EL1 target (MDSCR_EL1.SS and KDE set by the caller);
/// the target then returns here, and PSTATE.D is masked again.
pub fn step_el1(t: Target, arg: u64) -> u64 {
    // SAFETY: as `call_el1`; the step exception is recorded and resumed by the vectors,
    // which clear MDSCR_EL1.SS.
    unsafe { debug_el1_step(t.addr(), arg) }
}

/// `brk #0x42`; the vectors skip it.
pub fn brk() {
    // SAFETY: the installed vectors resume after the BRK.
    unsafe { asm!("brk #0x42", options(nostack)) };
}

macro_rules! sysreg_fns {
    ($($get:ident, $set:ident, $name:literal;)*) => {$(
        pub fn $get() -> u64 {
            let v: u64;
            // SAFETY: a debug register read; traps (if any) are the hypervisor's business,
            // and an UNDEFINED one is recorded and skipped by the installed vectors.
            unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nostack, preserves_flags)) };
            v
        }
        pub fn $set(v: u64) {
            // SAFETY: as above, for a write; the test owns this CPU's debug state.
            unsafe { asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) v, options(nostack, preserves_flags)) };
        }
    )*};
}
sysreg_fns! {
    mdscr, set_mdscr, "mdscr_el1";
}

/// OSLSR_EL1 (read-only).
pub fn oslsr() -> u64 {
    let v: u64;
    // SAFETY: reading the OS lock status has no side effects.
    unsafe { asm!("mrs {}, oslsr_el1", out(reg) v, options(nostack, preserves_flags)) };
    v
}

/// OSLAR_EL1 (write-only).
pub fn set_oslar(v: u64) {
    // SAFETY: the OS lock only affects this CPU's debug exceptions.
    unsafe { asm!("msr oslar_el1, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

/// Which numbered register: DBGBVR, DBGBCR, DBGWVR, DBGWCR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Bvr,
    Bcr,
    Wvr,
    Wcr,
}

macro_rules! points {
    ($($n:literal),*) => {
        /// Reads register `n` of `r` (0 for n > 15).
        pub fn read_point(r: Reg, n: usize) -> u64 {
            let v: u64;
            match (r, n) {
                $(
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Bvr, $n) => unsafe { asm!(concat!("mrs {}, dbgbvr", $n, "_el1"), out(reg) v, options(nostack)) },
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Bcr, $n) => unsafe { asm!(concat!("mrs {}, dbgbcr", $n, "_el1"), out(reg) v, options(nostack)) },
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Wvr, $n) => unsafe { asm!(concat!("mrs {}, dbgwvr", $n, "_el1"), out(reg) v, options(nostack)) },
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Wcr, $n) => unsafe { asm!(concat!("mrs {}, dbgwcr", $n, "_el1"), out(reg) v, options(nostack)) },
                )*
                _ => v = 0,
            }
            v
        }

        /// Writes register `n` of `r` (nothing for n > 15).
        pub fn write_point(r: Reg, n: usize, v: u64) {
            match (r, n) {
                $(
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Bvr, $n) => unsafe { asm!(concat!("msr dbgbvr", $n, "_el1, {}"), "isb", in(reg) v, options(nostack)) },
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Bcr, $n) => unsafe { asm!(concat!("msr dbgbcr", $n, "_el1, {}"), "isb", in(reg) v, options(nostack)) },
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Wvr, $n) => unsafe { asm!(concat!("msr dbgwvr", $n, "_el1, {}"), "isb", in(reg) v, options(nostack)) },
                    // SAFETY: see `sysreg_fns`.
                    (Reg::Wcr, $n) => unsafe { asm!(concat!("msr dbgwcr", $n, "_el1, {}"), "isb", in(reg) v, options(nostack)) },
                )*
                _ => {}
            }
        }
    };
}
points!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
