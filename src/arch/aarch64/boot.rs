//! Image header, self-relocation and primary-CPU entry.
//!
//! The image begins with a Linux arm64 Image header (Documentation/arch/arm64/booting.rst), so
//! QEMU `-kernel` and U-Boot `booti` load it at a 2 MiB-aligned base + text_offset and jump to
//! it with the DTB's physical address in x0, MMU off. The header's flags say "may be placed
//! anywhere in physical memory" (bit 3): the image is a position-independent executable
//! (linked at 0x4008_0000, QEMU virt's load address, so that addresses in a virt run match
//! the ELF for gdb and addr2line) that applies its own `R_AARCH64_RELATIVE` relocations before
//! any Rust code runs. The same file therefore runs on QEMU virt (0x4008_0000), on a Raspberry
//! Pi 4 (0x8_0000) and wherever U-Boot's `booti` puts it. The entry code:
//!   1. keeps x0 (DTB), reads CurrentEL, and finds where it runs with `adr` (PC-relative);
//!   2. if that address is not 4 KiB aligned, `adrp` (which the compiler uses for every
//!      static) would be wrong: the file is copied up to the next 4 KiB boundary, inside the
//!      `image_size` bytes the loader promised to leave free, and runs from there only to say
//!      on the console that it was loaded where it cannot run, then stops;
//!   3. at EL2: installs VBAR_EL2 before anything can fault, and puts HCR_EL2, SCTLR_EL2 and
//!      CPTR_EL2 in a known state (U-Boot leaves HCR_EL2.AMO set, for one);
//!   4. applies the relocations (`.rela.dyn`, all `R_AARCH64_RELATIVE`; scripts/build refuses
//!      an ELF with any other kind): each pointer word becomes addend + (load - link address);
//!   5. takes CPU 0's stack, zeroes .bss, and calls `elvisor_primary_main(dtb, el)` in Rust.
//!
//! Everything up to the MMU runs with SCTLR_EL2.M = C = I = 0, so the relocation stores go to
//! memory (Device-nGnRnE accesses, ARM ARM D8.2.10 "Behavior when stage 1 address translation
//! is disabled"); kernel::primary_main invalidates the image's lines before it turns the data
//! cache on, and the MMU code invalidates the instruction cache (`ic iallu`) before SCTLR.I.
//!
//! The kernel is built for aarch64-unknown-none-softfloat: the compiler never emits FP/SIMD,
//! so the guest's FP registers stay live in the CPU across exits and need no save on the
//! fast path, and nothing has to enable FP before Rust runs.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu::{GUARD_BYTES, STACK_BYTES};

/// SCTLR_EL2 while booting: MMU, caches and alignment checks off; SA (SP alignment check)
/// on; RES1 bits of the non-VHE layout (4, 5, 11, 16, 18, 22, 23, 28, 29) set.
pub const SCTLR_EL2_BOOT: u64 = 0x30c5_0838;
/// HCR_EL2 while booting: RW (lower ELs are AArch64); E2H is chosen later, before the MMU.
pub const HCR_EL2_BOOT: u64 = 1 << 31;
/// CPTR_EL2 in the non-VHE layout: trap nothing but SVE (TZ) and SME (TSM); TFP = 0.
pub const CPTR_EL2_NVHE: u64 = 0x33ff;

core::arch::global_asm!(
    r#"
    // The stack area's layout, for linker.ld (which sizes .stacks with them): absolute symbols,
    // so arch/aarch64/cpu.rs is their only definition.
    .global ELVISOR_MAX_CPUS
    .set    ELVISOR_MAX_CPUS, {max_cpus}
    .global ELVISOR_PERCPU_STACKS_BYTES
    .set    ELVISOR_PERCPU_STACKS_BYTES, {percpu}

    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0x80000                 // text_offset
    .quad   __image_size            // image_size: file + bss + stacks + heap
    // flags: bit 0 = 0 little-endian; bits 2:1 = 0b01 4K pages; bit 3 = 1 the 2 MiB-aligned
    // base may be anywhere in physical memory (the image relocates itself).
    .quad   0xa
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

primary_entry:
    mov     x19, x0                 // DTB physical address
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2        // x20 = EL
    mov     x23, xzr                // where the loader put the image, if it had to move

    // Where are we? `adr` is exact at any alignment; `adrp` needs the 4 KiB page offset of the
    // link address, so nothing below may use it (or run compiled code) unless that holds.
    adr     x21, _start
    tst     x21, #0xfff
    b.eq    1f
    // Not 4 KiB aligned: copy the file (text, rodata, data) up to the next 4 KiB boundary,
    // backwards because the regions overlap, a word at a time (with the MMU off every access
    // is to Device memory, where unaligned accesses fault; instructions are word aligned).
    // The copy stays inside [x21, x21 + image_size), which the loader must leave free.
    mov     x23, x21
    add     x22, x21, #0xfff
    and     x22, x22, #~0xfff
    ldr     x2, =__file_size        // absolute: multiple of 16
7:  subs    x2, x2, #4
    ldr     w3, [x21, x2]
    str     w3, [x22, x2]
    b.ne    7b
    // Instructions were written by data stores: complete them, then invalidate the
    // instruction cache and resynchronise the fetch stream before executing the copy (ARM
    // ARM B2.2.5, "Concurrent modification and execution of instructions", and D7.5.9.7,
    // instruction cache maintenance; with the MMU off, as booting.rst requires at entry, the
    // stores are Device accesses and already in memory).
    dsb     sy
    ic      iallu
    dsb     sy
    isb
    adr     x4, 1f
    sub     x4, x4, x21
    add     x4, x4, x22
    br      x4
1:
    adr     x21, _start             // (again: in the copy this is the aligned address)

    cmp     x20, #2
    b.ne    2f
    adrp    x1, el2_vectors
    add     x1, x1, :lo12:el2_vectors
    msr     vbar_el2, x1
    msr     tpidr_el2, xzr          // no per-CPU data yet
    ldr     x1, ={hcr}
    msr     hcr_el2, x1
    ldr     x1, ={sctlr}
    msr     sctlr_el2, x1
    ldr     x1, ={cptr}
    msr     cptr_el2, x1
    isb
2:
    // Self-relocation: for each Elf64_Rela {{ r_offset, r_info, r_addend }} (24 bytes) in
    // .rela.dyn, the word at r_offset + delta becomes r_addend + delta, with delta = load
    // address - link address. Only R_AARCH64_RELATIVE (1027) can occur (scripts/build checks
    // the ELF); anything else stops here, before a wrong pointer could be followed.
    ldr     x22, =__link_base       // absolute symbol: not itself relocated
    sub     x22, x21, x22           // x22 = delta
    adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
8:  cmp     x1, x2
    b.hs    9f
    ldp     x3, x4, [x1], #16       // r_offset, r_info
    ldr     x5, [x1], #8            // r_addend
    cmp     x4, #1027               // ELF64_R_TYPE = R_AARCH64_RELATIVE, symbol 0
    b.ne    5f
    add     x5, x5, x22
    str     x5, [x3, x22]
    b       8b
9:
    // Relocations may patch read-only sections too (the precompiled core library has
    // absolute pointers in .rodata); none of them is code that already ran. Order the stores
    // before anything reads them back through another path.
    dsb     sy
    isb
    adrp    x1, {moved}
    add     x1, x1, :lo12:{moved}
    str     x23, [x1]

    // CPU 0's kernel stack (above its guard page).
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    ldr     x2, ={stack_off}
    add     sp, x1, x2

    // Zero .bss (16-byte aligned by the linker script).
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b
4:
    mov     x29, xzr                // end of the frame-pointer chain
    mov     x30, xzr
    mov     x0, x19
    mov     x1, x20
    bl      elvisor_primary_main
5:  wfe
    b       5b

    // Secondary CPUs released from a spin table (x0 = 0): the index is MPIDR Aff0, which is
    // how spin-table boards (Raspberry Pi 4: Aff0 = 0..3) number their cores.
    .global elvisor_spin_entry
elvisor_spin_entry:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    // Fall through.

    // Secondary CPUs, started by PSCI CPU_ON with x0 = the CPU's index.
    .global elvisor_secondary_entry
elvisor_secondary_entry:
    mov     x19, x0
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    ldr     x2, ={percpu}
    madd    x1, x19, x2, x1
    ldr     x2, ={stack_off}
    add     sp, x1, x2
    adrp    x1, el2_vectors
    add     x1, x1, :lo12:el2_vectors
    msr     vbar_el2, x1
    msr     tpidr_el2, xzr
    ldr     x1, ={hcr}
    msr     hcr_el2, x1
    ldr     x1, ={sctlr}
    msr     sctlr_el2, x1
    ldr     x1, ={cptr}
    msr     cptr_el2, x1
    isb
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    bl      elvisor_secondary_main
6:  wfe
    b       6b
"#,
    percpu = const super::cpu::PERCPU_STACKS_BYTES,
    max_cpus = const super::cpu::MAX_CPUS,
    moved = sym ELVISOR_MOVED_FROM,
    stack_off = const GUARD_BYTES + STACK_BYTES,
    hcr = const HCR_EL2_BOOT,
    sctlr = const SCTLR_EL2_BOOT,
    cptr = const CPTR_EL2_NVHE,
);

/// The address the loader put the image at when that was not 4 KiB aligned (the entry code
/// then moved it up to the next boundary, only to report it), else 0. Written once by the
/// entry code before any Rust code runs, read-only afterwards. In .data, not .bss, which the
/// entry code zeroes after its store.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
static ELVISOR_MOVED_FROM: AtomicU64 = AtomicU64::new(0);

/// Where the loader put the image, if it was not 4 KiB aligned (the image then runs from the
/// next 4 KiB boundary and must stop: the header's promise of a 2 MiB-aligned base +
/// text_offset was broken, so the memory it uses may not be its own).
pub fn misplaced_load_address() -> Option<u64> {
    let v = ELVISOR_MOVED_FROM.load(Ordering::Relaxed);
    (v != 0).then_some(v)
}

/// Link-time address of the image (linker.ld `__link_base`); the image runs at
/// [`load_address`], which differs on boards whose RAM is elsewhere.
pub const LINK_BASE: u64 = 0x4008_0000;

/// Where the image runs (its first byte, the Image header), after any move.
pub fn load_address() -> u64 {
    super::ram::image_layout().image.base.0
}

unsafe extern "C" {
    fn elvisor_secondary_entry();
    fn elvisor_spin_entry();
}

/// Physical address a spin-table secondary is released to.
pub fn spin_entry_pa() -> u64 {
    elvisor_spin_entry as *const () as u64
}

/// Physical address secondaries start at (PSCI CPU_ON entry point).
pub fn secondary_entry_pa() -> u64 {
    elvisor_secondary_entry as *const () as u64
}
