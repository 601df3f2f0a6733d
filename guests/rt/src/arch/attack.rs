//! One instruction aimed at the hypervisor with every general register chosen by the caller:
//! the attack trampoline of guests/hostile, and how it checks that an exit corrupts nothing.
//!
//! The instruction is a 32-bit word (HVC, SMC, a load or store of any form, MRS/MSR of any
//! encoding, WFI, ...) written into a per-CPU copy of a small trampoline, between the code that
//! loads x0..x30 from a buffer and the code that stores them back:
//!
//! ```text
//!   per-CPU code page (4 KiB, its own page so that QEMU's self-modifying-code tracking only
//!   ever throws away this page's translations)
//!     start:  save x18..x30 and the buffer pointer on the stack
//!             x30 = buffer; x0..x29 = buffer[0..30]; x30 = buffer[30]
//!     slot:   <the instruction>               patched per call, I-cache maintained
//!             stash x0, x1 on the stack; x0 = buffer; buffer[1..31] = x1..x30; buffer[0] = x0
//!             restore x18..x30; ret
//! ```
//!
//! Every general register x0..x30 holds the caller's value at the instruction, x30 included.
//! Only SP is not the caller's: it is the stack, which the EL1 exception vectors need (an
//! injected abort or UNDEF is taken on SP_EL1 and must find a valid stack). An exception taken
//! at the slot, or at the address the slot branched to, resumes after the slot
//! ([`crate::exception::Recovery::ResumeAt`]); the vector code restores every general register
//! as the exception found it, so what the buffer holds afterwards is what the hypervisor left.
//!
//! The caller must not pick instructions that change SP, PSTATE.SP/DAIF, the vectors or the
//! translation regime, write memory the program uses, or load vector registers v0..v15 (the
//! trampoline keeps to the AAPCS64 for everything but x0..x17 and v16..v31).

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::exception::{self, Fault};
use crate::mem;

/// x0..x30.
pub type Registers = [u64; 31];

/// Words in one CPU's code page.
const PAGE_WORDS: usize = 1024;

/// A page of code per CPU: a copy of the trampoline whose slot that CPU alone patches.
#[repr(C, align(4096))]
struct CodePage(UnsafeCell<[u32; PAGE_WORDS]>);

// SAFETY: page `i` is written only by CPU `i` (indexed by `cpu_index`), which is also the only
// CPU executing it.
unsafe impl Sync for CodePage {}

static CODE: [CodePage; super::MAX_CPUS] =
    [const { CodePage(UnsafeCell::new([0; PAGE_WORDS])) }; super::MAX_CPUS];
static READY: [AtomicBool; super::MAX_CPUS] = [const { AtomicBool::new(false) }; super::MAX_CPUS];

// The trampoline template. Frame (128 bytes): x18..x29 at 0..96, x30 at 96, the buffer pointer
// at 104, scratch for the instruction's x0/x1 at 112. Position independent (only SP- and
// x-relative accesses), so it runs from any copy.
global_asm!(
    ".pushsection .text.attack, \"ax\"",
    ".balign 4",
    ".global elvisor_attack_start",
    "elvisor_attack_start:",
    "    sub     sp, sp, #128",
    "    stp     x18, x19, [sp, #0]",
    "    stp     x20, x21, [sp, #16]",
    "    stp     x22, x23, [sp, #32]",
    "    stp     x24, x25, [sp, #48]",
    "    stp     x26, x27, [sp, #64]",
    "    stp     x28, x29, [sp, #80]",
    "    stp     x30, x0, [sp, #96]",
    "    mov     x30, x0",
    "    ldp     x0, x1, [x30, #0]",
    "    ldp     x2, x3, [x30, #16]",
    "    ldp     x4, x5, [x30, #32]",
    "    ldp     x6, x7, [x30, #48]",
    "    ldp     x8, x9, [x30, #64]",
    "    ldp     x10, x11, [x30, #80]",
    "    ldp     x12, x13, [x30, #96]",
    "    ldp     x14, x15, [x30, #112]",
    "    ldp     x16, x17, [x30, #128]",
    "    ldp     x18, x19, [x30, #144]",
    "    ldp     x20, x21, [x30, #160]",
    "    ldp     x22, x23, [x30, #176]",
    "    ldp     x24, x25, [x30, #192]",
    "    ldp     x26, x27, [x30, #208]",
    "    ldp     x28, x29, [x30, #224]",
    "    ldr     x30, [x30, #240]",
    ".global elvisor_attack_slot",
    "elvisor_attack_slot:",
    "    nop",
    "    stp     x0, x1, [sp, #112]",
    "    ldr     x0, [sp, #104]",
    "    str     x1, [x0, #8]",
    "    stp     x2, x3, [x0, #16]",
    "    stp     x4, x5, [x0, #32]",
    "    stp     x6, x7, [x0, #48]",
    "    stp     x8, x9, [x0, #64]",
    "    stp     x10, x11, [x0, #80]",
    "    stp     x12, x13, [x0, #96]",
    "    stp     x14, x15, [x0, #112]",
    "    stp     x16, x17, [x0, #128]",
    "    stp     x18, x19, [x0, #144]",
    "    stp     x20, x21, [x0, #160]",
    "    stp     x22, x23, [x0, #176]",
    "    stp     x24, x25, [x0, #192]",
    "    stp     x26, x27, [x0, #208]",
    "    stp     x28, x29, [x0, #224]",
    "    str     x30, [x0, #240]",
    "    ldr     x1, [sp, #112]",
    "    str     x1, [x0, #0]",
    "    ldp     x18, x19, [sp, #0]",
    "    ldp     x20, x21, [sp, #16]",
    "    ldp     x22, x23, [sp, #32]",
    "    ldp     x24, x25, [sp, #48]",
    "    ldp     x26, x27, [sp, #64]",
    "    ldp     x28, x29, [sp, #80]",
    "    ldr     x30, [sp, #96]",
    "    add     sp, sp, #128",
    "    ret",
    ".global elvisor_attack_end",
    "elvisor_attack_end:",
    ".popsection",
);

unsafe extern "C" {
    static elvisor_attack_start: u32;
    static elvisor_attack_slot: u32;
    static elvisor_attack_end: u32;
}

/// Word offset of the slot in the trampoline, and the trampoline's length in words.
fn layout() -> (usize, usize) {
    let start = &raw const elvisor_attack_start as usize;
    let slot = &raw const elvisor_attack_slot as usize;
    let end = &raw const elvisor_attack_end as usize;
    ((slot - start) / 4, (end - start) / 4)
}

/// Makes the instruction word at `addr` visible to instruction fetches on this CPU
/// (ARM ARM B2.4.4, "Concurrent modification and execution of instructions": clean to the point
/// of unification, invalidate the instruction cache line, then a context synchronization).
fn sync_icache(addr: usize) {
    // SAFETY: cache maintenance by address on this CPU's own code page; it changes no data.
    unsafe {
        asm!(
            "dc cvau, {a}",
            "dsb ish",
            "ic ivau, {a}",
            "dsb ish",
            "isb",
            a = in(reg) addr,
            options(nostack, preserves_flags)
        )
    };
}

/// This CPU's code page with the trampoline in it; returns (page address, slot address).
fn page() -> (usize, usize) {
    let cpu = super::cpu_index();
    let page = CODE[cpu].0.get() as *mut u32;
    let (slot, len) = layout();
    if !READY[cpu].load(Ordering::SeqCst) {
        let template = &raw const elvisor_attack_start;
        for i in 0..len {
            // SAFETY: `i < len`, the template's length; it is code in .text, readable.
            let word = unsafe { template.wrapping_add(i).read_volatile() };
            // SAFETY: the page has room for `len` words (asserted below) and only this CPU
            // writes it.
            unsafe { page.wrapping_add(i).write_volatile(word) };
            sync_icache(page as usize + 4 * i);
        }
        READY[cpu].store(true, Ordering::SeqCst);
    }
    assert!(len < PAGE_WORDS);
    (page as usize, page as usize + 4 * slot)
}

/// Executes `insn` with x0..x30 = `regs`, stores what the registers hold afterwards back into
/// `regs` and returns the synchronous exception it raised (taken at EL1: an injected abort, an
/// UNDEF, an alignment fault), if any.
///
/// # Safety
/// `insn` must be one instruction that, with these register values, writes no memory a Rust
/// object lives in, does not change SP, SPSel, DAIF, VBAR_EL1, SCTLR_EL1, CPACR_EL1 or the
/// translation regime, loads no vector register below v16, and either falls through or
/// faults (a branch must go to an address that aborts on fetch).
unsafe fn execute_raw(insn: u32, regs: &mut Registers) -> Option<Fault> {
    let (entry, slot) = page();
    // SAFETY: the slot is inside this CPU's code page, written only by this CPU.
    unsafe { (slot as *mut u32).write_volatile(insn) };
    sync_icache(slot);
    exception::arm_resume_at(slot as u64 + 4);
    // SAFETY: the trampoline follows the AAPCS64 (x18..x30 and SP restored; x0..x17, the
    // flags and, by the caller's promise, only v16..v31 touched, all declared clobbered); it
    // reads and writes only `regs` and its own stack frame; the caller vouches for `insn`.
    unsafe {
        asm!(
            "blr {entry}",
            entry = in(reg) entry,
            inout("x0") regs.as_mut_ptr() => _,
            clobber_abi("C"),
        )
    };
    exception::disarm()
}

/// A system-register encoding: `S<op0>_<op1>_C<crn>_C<crm>_<op2>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysReg {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

impl SysReg {
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }

    /// Bits `[20:5]` of MRS/MSR (register form) / SYS: o0, op1, CRn, CRm, op2.
    fn fields(self) -> u32 {
        ((self.op0 as u32 & 1) << 19)
            | ((self.op1 as u32 & 7) << 16)
            | ((self.crn as u32 & 15) << 12)
            | ((self.crm as u32 & 15) << 8)
            | ((self.op2 as u32 & 7) << 5)
    }
}

impl core::fmt::Display for SysReg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "S{}_{}_C{}_C{}_{}",
            self.op0, self.op1, self.crn, self.crm, self.op2
        )
    }
}

/// Encodings whose writes would change the attacking guest's own execution environment
/// rather than attack the hypervisor: the MMU and cache controls, the translation tables'
/// registers, the vectors, FP/SIMD enables and rounding, the stack selector and the interrupt
/// masks. MSR to these is refused by [`Insn::msr`] (reads are always allowed).
///
/// ```text
///   SCTLR_EL1 ACTLR_EL1 CPACR_EL1 SCTLR2_EL1   S3_0_C1_C0_{0,1,2,3}   MMU/caches, FP enable
///   TTBR0/1_EL1 TCR_EL1 TCR2_EL1               S3_0_C2_C0_{0..3}      translation regime
///   VBAR_EL1                                   S3_0_C12_C0_0          the vectors
///   SPSel                                      S3_0_C4_C2_0           the stack (SP_EL0 unused)
///   DAIF                                       S3_3_C4_C2_1           interrupt masks
///   FPCR                                       S3_3_C4_C4_0           Rust code's FP modes
///   ICC_BPR0_EL1 ICC_BPR1_EL1                  S3_0_C12_C8_3, S3_0_C12_C12_3
///       QEMU 10.0.2 aborts (assertion `bpr > 0`, hw/intc/arm_gicv3_cpuif.c) after such a
///       write with reserved bits set and a pending group-1 interrupt while a priority is
///       active: a QEMU bug, not elvisor's (docs/qemu-bugs.md)
/// ```
/// Everything else is fair game: ELR/SPSR/ESR/FAR_EL1 (only meaningful inside a handler, and
/// the vectors save and restore them), SP_EL0, the timers, the GIC CPU interface (the hostile
/// guest re-establishes what its own wake-ups need), debug, PMU, ID and EL2 encodings.
pub const MSR_EXCLUDED: &[SysReg] = &[
    SysReg::new(3, 0, 1, 0, 0),
    SysReg::new(3, 0, 1, 0, 1),
    SysReg::new(3, 0, 1, 0, 2),
    SysReg::new(3, 0, 1, 0, 3),
    SysReg::new(3, 0, 2, 0, 0),
    SysReg::new(3, 0, 2, 0, 1),
    SysReg::new(3, 0, 2, 0, 2),
    SysReg::new(3, 0, 2, 0, 3),
    SysReg::new(3, 0, 12, 0, 0),
    SysReg::new(3, 0, 4, 2, 0),
    SysReg::new(3, 3, 4, 2, 1),
    SysReg::new(3, 3, 4, 4, 0),
    SysReg::new(3, 0, 12, 8, 3),
    SysReg::new(3, 0, 12, 12, 3),
];

/// The memory access forms [`Insn::access`] builds, each with the base address in `Rn` and
/// no offset. Many give the hypervisor a data abort without a valid syndrome (ISV = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `ldr`/`str` of 1, 2, 4 or 8 bytes (`size` = log2 bytes): ISV = 1.
    Load {
        size: u8,
    },
    Store {
        size: u8,
    },
    /// `ldrsb/ldrsh/ldrsw` to a 64-bit register: ISV = 1 with SSE.
    LoadSigned {
        size: u8,
    },
    /// `ldp`/`stp` of two 4- or 8-byte registers (`size` 2 or 3).
    LoadPair {
        size: u8,
    },
    StorePair {
        size: u8,
    },
    /// `ldxr`/`stxr Ws` (exclusives), `ldaxr`, `stlxr`, `ldar`, `stlr`, `ldapr` (size 2 or 3).
    LoadExclusive {
        size: u8,
    },
    StoreExclusive {
        size: u8,
    },
    LoadAcquire {
        size: u8,
    },
    StoreRelease {
        size: u8,
    },
    LoadExclusivePair {
        size: u8,
    },
    /// LSE atomics: `ldadd Rs, Rt`, `swp Rs, Rt`, `cas Rs, Rt` (size 2 or 3).
    AtomicAdd {
        size: u8,
    },
    Swap {
        size: u8,
    },
    CompareSwap {
        size: u8,
    },
    /// `ld1 {v16.16b}` / `st1 {v16.16b}`: 16 bytes into or from a vector register.
    SimdLoad,
    SimdStore,
    /// `dc zva`, `dc civac`, `dc ivac` on the address.
    DcZva,
    DcCivac,
    DcIvac,
    /// `prfm pldl1keep`: may touch the address, never faults.
    Prefetch,
    /// `br Rn`: an instruction fetch from the address.
    Fetch,
}

/// One instruction to aim at the hypervisor, built so that executing it is memory safe (see
/// [`execute`]); with which registers it may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    word: u32,
    /// Registers the instruction may legitimately write, a bit per x-register.
    pub may_write: u32,
    /// The register holding an address that must lie outside guest RAM, and how many bytes
    /// around it (aligned down to that size) the instruction may touch.
    addr: Option<(u8, u64)>,
    /// Fetches from the address: a load from it must abort first.
    fetch: bool,
}

fn reg(r: u8) -> u32 {
    assert!(r < 32);
    r as u32
}

/// Bit for x-register `r` in [`Insn::may_write`] (XZR, 31, is not a register).
fn bit(r: u8) -> u32 {
    if r < 31 { 1 << r } else { 0 }
}

impl Insn {
    /// The raw instruction word.
    pub fn word(&self) -> u32 {
        self.word
    }

    /// `hvc #imm`: an SMCCC 1.1 call may write x0..x3 only (SMCCC 1.1 §2.6: x4..x17 are
    /// preserved, x18..x30 always are).
    pub fn hvc(imm: u16) -> Self {
        Self {
            word: 0xd400_0002 | (imm as u32) << 5,
            may_write: 0xf,
            addr: None,
            fetch: false,
        }
    }

    /// `smc #imm` (trapped by HCR_EL2.TSC): as [`Insn::hvc`].
    pub fn smc(imm: u16) -> Self {
        Self {
            word: 0xd400_0003 | (imm as u32) << 5,
            ..Self::hvc(0)
        }
    }

    /// `wfi`: changes no register.
    pub fn wfi() -> Self {
        Self {
            word: 0xd503_207f,
            may_write: 0,
            addr: None,
            fetch: false,
        }
    }

    /// `wfe`.
    pub fn wfe() -> Self {
        Self {
            word: 0xd503_205f,
            ..Self::wfi()
        }
    }

    /// `mrs Xt, <reg>`: writes Xt only. Any encoding (op0 2 or 3); reads change no memory.
    pub fn mrs(sysreg: SysReg, rt: u8) -> Self {
        assert!(sysreg.op0 >= 2);
        Self {
            word: 0xd530_0000 | sysreg.fields() | reg(rt),
            may_write: bit(rt),
            addr: None,
            fetch: false,
        }
    }

    /// `msr <reg>, Xt`: writes no general register. `None` for [`MSR_EXCLUDED`] encodings.
    pub fn msr(sysreg: SysReg, rt: u8) -> Option<Self> {
        assert!(sysreg.op0 >= 2);
        if MSR_EXCLUDED.contains(&sysreg) {
            return None;
        }
        Some(Self {
            word: 0xd510_0000 | sysreg.fields() | reg(rt),
            may_write: 0,
            addr: None,
            fetch: false,
        })
    }

    /// `sys #op1, Cn, Cm, #op2, Xt` (op0 = 1: cache, TLB, address-translation and prediction
    /// operations) or `sysl` (`read`): Xt must hold an address outside guest RAM (2 KiB around
    /// it, the largest DC ZVA block), since some of these write or discard memory.
    pub fn sys(op1: u8, crn: u8, crm: u8, op2: u8, rt: u8, read: bool) -> Self {
        let enc = SysReg::new(1, op1, crn, crm, op2);
        let l = if read { 1 << 21 } else { 0 };
        Self {
            word: 0xd508_0000 | l | (enc.fields() & !(1 << 19)) | reg(rt),
            may_write: if read { bit(rt) } else { 0 },
            addr: Some((rt, 2048)),
            fetch: false,
        }
    }

    /// A memory access of form `access` with the address in `rn` (0..=30) and data registers
    /// `rt`, `rt2` (pairs) and `rs` (exclusive status, LSE operand): the address must lie
    /// outside guest RAM when executed.
    pub fn access(access: Access, rn: u8, rt: u8, rt2: u8, rs: u8) -> Self {
        assert!(rn < 31, "the base register must not be SP");
        let (n, t, t2, s) = (reg(rn) << 5, reg(rt), reg(rt2) << 10, reg(rs) << 16);
        let sz = |size: u8| (size as u32 & 3) << 30;
        let pair_opc = |size: u8| if size == 3 { 0b10 << 30 } else { 0 };
        let (word, may_write, bytes) = match access {
            Access::Load { size } => (0x3940_0000 | sz(size) | n | t, bit(rt), 8),
            Access::Store { size } => (0x3900_0000 | sz(size) | n | t, 0, 8),
            Access::LoadSigned { size } => (0x3980_0000 | sz(size.min(2)) | n | t, bit(rt), 8),
            Access::LoadPair { size } => (
                0x2940_0000 | pair_opc(size) | t2 | n | t,
                bit(rt) | bit(rt2),
                16,
            ),
            Access::StorePair { size } => (0x2900_0000 | pair_opc(size) | t2 | n | t, 0, 16),
            Access::LoadExclusive { size } => (0x085f_7c00 | sz(size) | n | t, bit(rt), 8),
            Access::StoreExclusive { size } => (0x0800_7c00 | sz(size) | s | n | t, bit(rs), 8),
            Access::LoadAcquire { size } => (0x08df_fc00 | sz(size) | n | t, bit(rt), 8),
            Access::StoreRelease { size } => (0x089f_fc00 | sz(size) | n | t, 0, 8),
            Access::LoadExclusivePair { size } => (
                0x887f_0000 | ((size as u32 & 1) << 30) | t2 | n | t,
                bit(rt) | bit(rt2),
                16,
            ),
            Access::AtomicAdd { size } => (0x3820_0000 | sz(size) | s | n | t, bit(rt), 8),
            Access::Swap { size } => (0x3820_8000 | sz(size) | s | n | t, bit(rt), 8),
            Access::CompareSwap { size } => (0x88a0_7c00 | sz(size) | s | n | t, bit(rs), 8),
            // Vector register v16 + (rt % 16): v0..v15 are not declared clobbered.
            Access::SimdLoad => (0x4c40_7000 | n | (16 + (t & 15)), 0, 16),
            Access::SimdStore => (0x4c00_7000 | n | (16 + (t & 15)), 0, 16),
            Access::DcZva => (0xd50b_7420 | (n >> 5), 0, 2048),
            Access::DcCivac => (0xd50b_7e20 | (n >> 5), 0, 2048),
            Access::DcIvac => (0xd508_7620 | (n >> 5), 0, 2048),
            Access::Prefetch => (0xf980_0000 | n, 0, 8),
            Access::Fetch => (0xd61f_0000 | n, 0, 8),
        };
        Self {
            word,
            may_write,
            addr: Some((rn, bytes)),
            fetch: access == Access::Fetch,
        }
    }
}

/// Whether `[addr & !(bytes - 1), + bytes)` and the 8 bytes after `addr` stay clear of guest RAM.
fn outside_ram(addr: u64, bytes: u64) -> bool {
    let lo = addr & !(bytes.next_power_of_two() - 1);
    let hi = addr.saturating_add(bytes);
    let Some(ram) = mem::guest_ram() else {
        return false;
    };
    let (start, end) = (ram.start as u64, ram.end as u64);
    let overlaps_ram = lo < end && start < hi;
    !(overlaps_ram || mem::in_guest_ram(lo as usize) || mem::in_guest_ram(addr as usize))
}

/// Why [`execute`] refused an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address register points into guest RAM.
    AddressInRam,
    /// A fetch from an address that did not abort on a load first.
    FetchNotProvenUnbacked,
}

/// Executes `insn` with x0..x30 = `regs` (SP is the stack) and leaves in `regs` what the
/// registers hold afterwards. `Ok(None)`: it completed; `Ok(Some(fault))`: it raised a
/// synchronous exception at EL1 (an injected abort or UNDEF, an alignment fault), after which
/// execution resumed behind it. Refuses an instruction whose address is in guest RAM, and a
/// fetch from an address a load did not prove unbacked.
pub fn execute(insn: Insn, regs: &mut Registers) -> Result<Option<Fault>, Refused> {
    if let Some((r, bytes)) = insn.addr {
        let addr = if r < 31 { regs[r as usize] } else { 0 };
        if !outside_ram(addr, bytes) {
            return Err(Refused::AddressInRam);
        }
        if insn.fetch {
            let aborted = super::probe::read_u32((addr & !3) as usize)
                .err()
                .is_some_and(|f| f.esr.ec() == crate::exception::ec::DABT_CURRENT);
            if !aborted || addr & 3 != 0 {
                return Err(Refused::FetchNotProvenUnbacked);
            }
        }
    }
    // SAFETY: the constructors of `Insn` produce only: SMCCC calls and WFx (no memory), MRS
    // (writes Rt), MSR outside `MSR_EXCLUDED` (which lists every register that changes this
    // guest's stack, masks, vectors or translation), and accesses, SYS operations and branches
    // whose address was just checked to lie outside guest RAM (a branch target also aborted on
    // a load, so its fetch aborts too); vector loads use v16..v31 only.
    Ok(unsafe { execute_raw(insn.word, regs) })
}
