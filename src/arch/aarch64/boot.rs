//! Image header and primary-CPU entry.
//!
//! The image begins with a Linux arm64 Image header (Documentation/arch/arm64/booting.rst), so
//! QEMU `-kernel` and U-Boot `booti` load it at RAM base + text_offset and jump to it with the
//! DTB's physical address in x0, MMU off. The entry code:
//!   1. keeps x0 (DTB) and reads CurrentEL;
//!   2. at EL2: installs VBAR_EL2 before anything can fault, and puts HCR_EL2, SCTLR_EL2 and
//!      CPTR_EL2 in a known state (U-Boot leaves HCR_EL2.AMO set, for one);
//!   3. takes CPU 0's stack, zeroes .bss, and calls `elvisor_primary_main(dtb, el)` in Rust.
//!
//! The kernel is built for aarch64-unknown-none-softfloat: the compiler never emits FP/SIMD,
//! so the guest's FP registers stay live in the CPU across exits and need no save on the
//! fast path, and nothing has to enable FP before Rust runs.

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
    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0x80000                 // text_offset
    .quad   __image_size            // image_size: file + bss + stacks + heap
    .quad   0x2                     // flags: little-endian, 4K pages, 2M-aligned base
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

primary_entry:
    mov     x19, x0                 // DTB physical address
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2        // x20 = EL

    // CPU 0's kernel stack (above its guard page).
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    ldr     x2, ={stack_off}
    add     sp, x1, x2

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
    stack_off = const GUARD_BYTES + STACK_BYTES,
    hcr = const HCR_EL2_BOOT,
    sctlr = const SCTLR_EL2_BOOT,
    cptr = const CPTR_EL2_NVHE,
);

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
