//! Many system-register reads and writes in one go: generated MRS/MSR sequences over arbitrary
//! encodings, each operation's exception caught and recorded, for sweeps of the whole
//! system-register space (guests/spy's `plant-all` and `watch-all` roles).
//!
//! [`super::attack`] runs one instruction per call, rewriting its slot and maintaining the
//! instruction cache every time; tens of thousands of encodings that way cost seconds under
//! QEMU, whose self-modifying-code tracking retranslates the page after each patch. Here a batch
//! of up to [`BATCH`] operations becomes one straight-line function in a per-CPU code area:
//!
//! ```text
//!   read:   mov x3, xzr ; mrs x2, <enc>            ; stp x2, x3, [x0], #16
//!   write:  ldr x1, [x4], #8 ; mov x3, xzr ; msr <enc>, x1 ; isb ; stp x1, x3, [x0], #16
//!   end:    ret
//! ```
//!
//! x0 walks a buffer of (value, flag) pairs, x4 the values to write. The runtime is armed with
//! [`crate::exception::Recovery::SkipEach`]: every synchronous exception (an UNDEF, or a trap the
//! hypervisor answers with one) skips its instruction and sets x3 = ESR_EL1 | 1 << 63, so the
//! pair says which operation faulted and how. The code area is only rewritten where a word
//! differs, so repeating the same batch (a watcher's sweep) costs no retranslation.

use core::arch::asm;
use core::cell::UnsafeCell;

use super::attack::{MSR_EXCLUDED, SysReg};
use crate::exception::{self, Esr};

/// Operations per generated function; [`run`] splits longer lists.
pub const BATCH: usize = 512;

/// Words per operation at most (a write), and the closing `ret`.
const WORDS_PER_OP: usize = 5;
const CODE_WORDS: usize = 3 * 1024;
const _: () = assert!(BATCH * WORDS_PER_OP < CODE_WORDS);

const MOV_X3_XZR: u32 = 0xaa1f_03e3;
const LDR_X1_X4_POST8: u32 = 0xf840_8481;
const STP_X2_X3_X0_POST16: u32 = 0xa881_0c02;
const STP_X1_X3_X0_POST16: u32 = 0xa881_0c01;
const ISB: u32 = 0xd503_3fdf;
const RET: u32 = 0xd65f_03c0;
/// Bit 63 of a flag: the operation raised an exception (ESR_EL1 in the low bits).
const FAULTED: u64 = 1 << 63;

/// One operation of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `mrs`: the outcome is the value read.
    Read(SysReg),
    /// `msr` of the value, then `isb`: the outcome is the value written. Encodings in
    /// [`MSR_EXCLUDED`] are never written (outcome `Err(Refused)`).
    Write(SysReg, u64),
}

/// What one operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It completed: the value read, or the value written.
    Done(u64),
    /// It raised a synchronous exception at EL1 (ESR_EL1; EC 0x00 for an UNDEF).
    Faulted(Esr),
    /// A write to an [`MSR_EXCLUDED`] encoding, not attempted.
    Refused,
}

/// A per-CPU code area (12 KiB): only its CPU writes and runs it.
#[repr(C, align(4096))]
struct CodeArea(UnsafeCell<[u32; CODE_WORDS]>);

// SAFETY: area `i` is written and executed only by CPU `i` (indexed by `cpu_index`).
unsafe impl Sync for CodeArea {}

static CODE: [CodeArea; super::MAX_CPUS] =
    [const { CodeArea(UnsafeCell::new([0; CODE_WORDS])) }; super::MAX_CPUS];

/// `mrs x2, <enc>` / `msr <enc>, x1` (bits `[20:5]` as in [`super::attack::Insn`]).
fn fields(r: SysReg) -> u32 {
    ((r.op0 as u32 & 1) << 19)
        | ((r.op1 as u32 & 7) << 16)
        | ((r.crn as u32 & 15) << 12)
        | ((r.crm as u32 & 15) << 8)
        | ((r.op2 as u32 & 7) << 5)
}

/// Runs `ops` in order and writes what each did to `out` (`out.len() >= ops.len()`; extra
/// entries are left alone). Reads and writes of op0 2 and 3 only (panics otherwise).
///
/// Safe for the same reason [`super::attack::execute`] is: a read changes no memory, and the
/// encodings whose writes would change this guest's stack, masks, vectors, FP modes or
/// translation regime ([`MSR_EXCLUDED`]) are refused. Anything else a write changes (a timer,
/// the GIC CPU interface, a debug register) is the caller's business.
pub fn run(ops: &[Op], out: &mut [Outcome]) {
    assert!(out.len() >= ops.len());
    for (ops, out) in ops.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
        run_batch(ops, out);
    }
}

fn run_batch(ops: &[Op], out: &mut [Outcome]) {
    let mut values = [0u64; BATCH];
    let mut raw = [0u64; 2 * BATCH];
    let area = CODE[super::cpu_index()].0.get() as *mut u32;
    let mut at = 0usize;
    let mut changed = false;
    let mut emit = |word: u32| {
        let slot = area.wrapping_add(at);
        // SAFETY: `at` stays below BATCH * WORDS_PER_OP + 1 <= CODE_WORDS (asserted at compile
        // time), so `slot` is inside this CPU's area.
        if unsafe { slot.read_volatile() } != word {
            // SAFETY: as above; this CPU alone writes its area, and it is not executing it now.
            unsafe { slot.write_volatile(word) };
            changed = true;
        }
        at += 1;
    };
    let mut writes = 0;
    for op in ops {
        match *op {
            Op::Read(r) => {
                assert!(r.op0 >= 2);
                emit(MOV_X3_XZR);
                emit(0xd530_0000 | fields(r) | 2);
                emit(STP_X2_X3_X0_POST16);
            }
            Op::Write(r, _) if MSR_EXCLUDED.contains(&r) => {
                // Only keeps x0 in step; the outcome is `Refused` whatever is stored.
                emit(STP_X2_X3_X0_POST16);
            }
            Op::Write(r, value) => {
                assert!(r.op0 >= 2);
                values[writes] = value;
                writes += 1;
                emit(LDR_X1_X4_POST8);
                emit(MOV_X3_XZR);
                emit(0xd510_0000 | fields(r) | 1);
                emit(ISB);
                emit(STP_X1_X3_X0_POST16);
            }
        }
    }
    emit(RET);
    let len = at;
    if changed {
        sync_icache(area as usize, len * 4);
    }
    exception::arm_skip_each();
    // SAFETY: the generated function uses x0..x4 and the flags only (all caller-saved, declared
    // clobbered), stores 16 bytes per operation through x0 into `raw` (2 words per operation,
    // `ops.len() <= BATCH`), loads through x4 only from `values` (one per write) and returns.
    // Its MRS change nothing but x2; its MSR avoid `MSR_EXCLUDED`, so no write moves the stack,
    // the vectors, DAIF/SPSel or the translation regime. An exception skips one instruction
    // (`arm_skip_each`), with every register restored by the vector code but x3.
    unsafe {
        asm!(
            "blr {entry}",
            entry = in(reg) area,
            inout("x0") raw.as_mut_ptr() => _,
            inout("x4") values.as_ptr() => _,
            clobber_abi("C"),
        )
    };
    exception::disarm();
    for (i, (op, slot)) in ops.iter().zip(out.iter_mut()).enumerate() {
        let (value, flag) = (raw[2 * i], raw[2 * i + 1]);
        *slot = match op {
            Op::Write(r, _) if MSR_EXCLUDED.contains(r) => Outcome::Refused,
            _ if flag & FAULTED != 0 => Outcome::Faulted(Esr(flag & !FAULTED)),
            _ => Outcome::Done(value),
        };
    }
}

/// Makes `bytes` of freshly written code at `addr` visible to instruction fetches: clean every
/// data-cache line to the point of unification, invalidate the instruction-cache lines, then a
/// context synchronization (ARM ARM B2.4.4). 16 bytes is the smallest line CTR_EL0 can give.
fn sync_icache(addr: usize, bytes: usize) {
    let start = addr & !15;
    let end = addr + bytes;
    for line in (start..end).step_by(16) {
        // SAFETY: cache maintenance by address on this CPU's own code area; no data changes.
        unsafe { asm!("dc cvau, {a}", a = in(reg) line, options(nostack, preserves_flags)) };
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    for line in (start..end).step_by(16) {
        // SAFETY: as above.
        unsafe { asm!("ic ivau, {a}", a = in(reg) line, options(nostack, preserves_flags)) };
    }
    // SAFETY: barriers.
    unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
}
