//! Secondary CPUs: the entry code PSCI CPU_ON starts them in, a stack for each, the table of
//! the Rust functions they run, and the event instructions (`sev`, `wfe`) CPUs wait with.
//!
//! PSCI CPU_ON (DEN0022 5.6) starts the target at the entry address at EL1h with the MMU off,
//! DAIF masked and x0 = the caller's context id. The entry code, in order:
//! 1. keeps x0 (context id), CurrentEL, DAIF and SCTLR_EL1 as found (tests check them);
//! 2. sets CPACR_EL1.FPEN = 0b11 and `isb`s, as the boot CPU's entry does;
//! 3. takes the CPU index from MPIDR_EL1: Aff0 below [`MAX_CPUS`] with Aff1..Aff3 = 0, or
//!    it parks the CPU in a `wfi` loop (it has no stack it could use);
//! 4. points SP at the top of that CPU's stack in [`SECONDARY_STACKS`] (`.bss`, zeroed by the
//!    boot CPU before any secondary can start);
//! 5. installs the runtime's vectors in VBAR_EL1 and `isb`s;
//! 6. calls `secondary_start(index, context_id, current_el, daif, sctlr)`, which never returns.
//!
//! ```text
//!   SECONDARY_STACKS   [ CPU 0 | CPU 1 | ... | CPU 7 ]   32 KiB each, indexed by Aff0
//!                      (the boot CPU runs on the image's own stack; a CPU restarted after
//!                      CPU_OFF starts over at the top of its stack)
//! ```
//!
//! Memory is Device-nGnRnE while the MMU is off, so CPUs share data through plain single-copy
//! atomic loads and stores (`ldar`/`stlr` from `Ordering::SeqCst`), never exclusives: see
//! [`crate::smp`].

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicPtr, Ordering};

use super::MAX_CPUS;

/// Bytes of stack per secondary CPU.
pub const STACK_BYTES: usize = 1 << STACK_SHIFT;
const STACK_SHIFT: u32 = 15;

/// CPACR_EL1.FPEN = 0b11 (as in `arch::boot`).
const CPACR_EL1_FPEN_NONE: u64 = 0b11 << 20;

/// One stack per possible CPU index, in `.bss`.
#[repr(C, align(16))]
struct Stacks(UnsafeCell<[[u8; STACK_BYTES]; MAX_CPUS]>);

// SAFETY: no Rust code ever reads or writes the stacks through this static; only the entry code
// takes its address, once per CPU start, and each CPU uses the slot of its own index.
unsafe impl Sync for Stacks {}

static SECONDARY_STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK_BYTES]; MAX_CPUS]));

// SAFETY (of the assembly as a whole): entered only by PSCI CPU_ON on a CPU that is not running
// anything else; it touches the system registers of EL1 and the stack of its own CPU index (a
// CPU index is started at most once at a time: PSCI answers ALREADY_ON for a CPU that is on).
global_asm!(
    ".pushsection .text.elvisor_secondary, \"ax\"",
    ".balign 4",
    ".global elvisor_guest_secondary_entry",
    ".type elvisor_guest_secondary_entry, %function",
    "elvisor_guest_secondary_entry:",
    "    mov     x19, x0",               // 1. context id and the state as found
    "    mrs     x20, CurrentEL",
    "    mrs     x21, daif",
    "    mrs     x22, sctlr_el1",
    "    mov     x9, #{cpacr}",          // 2. FP/SIMD on
    "    msr     cpacr_el1, x9",
    "    isb",
    "    mrs     x9, mpidr_el1",         // 3. CPU index = Aff0, Aff1..Aff3 = 0
    "    and     x10, x9, #0xff",
    "    cmp     x10, #{max_cpus}",
    "    b.hs    9f",
    "    ubfx    x11, x9, #8, #16",
    "    cbnz    x11, 9f",
    "    ubfx    x11, x9, #32, #8",
    "    cbnz    x11, 9f",
    "    adrp    x9, {stacks}",          // 4. SP = stacks + (index + 1) * STACK_BYTES
    "    add     x9, x9, :lo12:{stacks}",
    "    add     x11, x10, #1",
    "    add     x9, x9, x11, lsl #{stack_shift}",
    "    mov     sp, x9",
    "    adrp    x9, elvisor_guest_vectors", // 5. vectors
    "    add     x9, x9, :lo12:elvisor_guest_vectors",
    "    msr     vbar_el1, x9",
    "    isb",
    "    mov     x0, x10",               // 6. Rust
    "    mov     x1, x19",
    "    mov     x2, x20",
    "    mov     x3, x21",
    "    mov     x4, x22",
    "    bl      {start}",
    "9:  wfi",
    "    b       9b",
    ".size elvisor_guest_secondary_entry, . - elvisor_guest_secondary_entry",
    ".popsection",
    cpacr = const CPACR_EL1_FPEN_NONE,
    max_cpus = const MAX_CPUS,
    stack_shift = const STACK_SHIFT,
    stacks = sym SECONDARY_STACKS,
    start = sym secondary_start,
);

unsafe extern "C" {
    /// The entry code above; only its address is used.
    fn elvisor_guest_secondary_entry();
}

/// The IPA to give PSCI CPU_ON as the entry point: the runtime's secondary entry code.
pub fn secondary_entry_address() -> usize {
    elvisor_guest_secondary_entry as *const () as usize
}

/// Called by the entry code on the new CPU's own stack.
extern "C" fn secondary_start(
    index: u64,
    context_id: u64,
    current_el: u64,
    daif: u64,
    sctlr: u64,
) -> ! {
    crate::smp::secondary_start(crate::smp::EntryState {
        index: index as usize,
        context_id,
        current_el: ((current_el >> 2) & 0b11) as u8,
        daif,
        sctlr,
    })
}

/// The function each CPU index runs when started, as a data pointer (null: none).
static ENTRY: [AtomicPtr<()>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// Sets the function CPU `index` runs when it is next started.
pub(crate) fn set_entry(index: usize, main: fn(&crate::smp::CpuBoot)) {
    ENTRY[index].store(main as *mut (), Ordering::SeqCst);
}

/// The function CPU `index` runs, if one was set.
pub(crate) fn entry(index: usize) -> Option<fn(&crate::smp::CpuBoot)> {
    let raw = ENTRY.get(index)?.load(Ordering::SeqCst);
    if raw.is_null() {
        return None;
    }
    // SAFETY: `set_entry` is the only writer and stores either nothing (null, excluded above)
    // or a `fn(&CpuBoot)` cast to a data pointer, which round-trips unchanged (both 64 bits).
    Some(unsafe { core::mem::transmute::<*mut (), fn(&crate::smp::CpuBoot)>(raw) })
}

/// `dsb sy; sev`: completes this CPU's earlier memory accesses, then wakes every CPU waiting in
/// `wfe` (ARM ARM D1.6.1 "Wait for Event"). Call after publishing data other CPUs wait for.
pub fn send_event() {
    // SAFETY: a barrier and an event; not `nomem`, so earlier stores stay before it.
    unsafe { asm!("dsb sy", "sev", options(nostack, preserves_flags)) };
}

/// `wfe`: waits for an event (`sev` on any CPU, an unmasked interrupt, ...), or returns at once
/// if the event register is already set. Under a hypervisor that traps WFE it is a yield.
pub fn wait_for_event() {
    // SAFETY: `wfe` only suspends execution; not `nomem`, so loads after it are not hoisted.
    unsafe { asm!("wfe", options(nostack, preserves_flags)) };
}

/// SCTLR_EL1 as it is now.
pub fn sctlr() -> u64 {
    let sctlr: u64;
    // SAFETY: reading SCTLR_EL1 has no side effects and is permitted at EL1.
    unsafe { asm!("mrs {}, sctlr_el1", out(reg) sctlr, options(nomem, nostack, preserves_flags)) };
    sctlr
}

/// DAIF as it is now (D bit 9, A bit 8, I bit 7, F bit 6).
pub fn daif() -> u64 {
    let daif: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif
}
