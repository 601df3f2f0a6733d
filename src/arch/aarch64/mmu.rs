//! Turning on the EL2 MMU, and the VHE switch.
//!
//! Order matters (ARM ARM D8.2, "the translation regime"): HCR_EL2.E2H changes the format of
//! TCR_EL2, SCTLR_EL2 and CPTR_EL2 and the meaning of the table descriptors, so it is chosen
//! once, with the MMU off, before any table is built; then MAIR/TCR/TTBR0 are written, the EL2
//! TLBs invalidated, and SCTLR_EL2.M/C/I set, with ISBs between.

use core::arch::asm;

use crate::mm::PhysAddr;
use crate::mm::pagetable::mair;

/// CPTR_EL2 in the VHE (CPACR_EL1) layout: FPEN = 0b11 (no FP/SIMD traps), ZEN = SMEN = 0
/// (SVE and SME trap), TTA = 0.
pub const CPTR_EL2_VHE: u64 = 3 << 20;
/// SCTLR_EL2 in the E2H=1 (SCTLR_EL1) layout with M, C, I, SA; RES1 bits 11, 20, 22, 23, 28, 29.
const SCTLR_EL2_VHE_ON: u64 = 0x30d0_0800 | (1 << 12) | (1 << 3) | (1 << 2) | 1;
/// SCTLR_EL2 in the non-VHE layout with M, C, I, SA.
const SCTLR_EL2_NVHE_ON: u64 = super::boot::SCTLR_EL2_BOOT | (1 << 12) | (1 << 2) | 1;

/// Sets HCR_EL2.E2H (with RW) and rewrites CPTR_EL2 in its VHE layout, in one asm block so no
/// compiled code runs with a half-switched trap configuration. MMU must be off.
pub fn enable_vhe() {
    let hcr: u64 = (1 << 34) | (1 << 31);
    // SAFETY: changes only EL2 control state; the MMU is off, so the TCR/SCTLR format change
    // does not affect the running code; the kernel never uses FP/SIMD (softfloat target).
    unsafe {
        asm!(
            "msr hcr_el2, {hcr}",
            "isb",
            "msr cptr_el2, {cptr}",
            "isb",
            hcr = in(reg) hcr,
            cptr = in(reg) CPTR_EL2_VHE,
            options(nostack, preserves_flags),
        )
    };
}

/// Encodes a PA size for TCR_EL2.PS / TCR_EL2.IPS / VTCR_EL2.PS, capped at 48 bits (the
/// tables never map more).
pub fn ps_field(pa_bits: u32) -> u64 {
    match pa_bits {
        0..=32 => 0,
        33..=36 => 1,
        37..=40 => 2,
        41..=42 => 3,
        43..=44 => 4,
        _ => 5,
    }
}

/// Loads the EL2 translation table and turns on the MMU and caches.
///
/// # Safety
/// `root` must be a complete identity map of everything the kernel touches from here on
/// (text, data, stacks, heap, devices), in the descriptor format of the current E2H mode.
pub unsafe fn enable(root: PhysAddr, vhe: bool, pa_bits: u32) {
    let ps = ps_field(pa_bits);
    // Inner shareable, write-back read/write-allocate walks, 4K granule, 48-bit VA.
    let walk =
        (0b11 << 12) | (0b01 << 10) | (0b01 << 8) | (64 - crate::mm::pagetable::EL2_VA_BITS as u64);
    let (tcr, sctlr) = if vhe {
        // TCR_EL1 layout: EPD1 (bit 23) disables TTBR1 walks; TG1 = 4K (0b10); IPS at 34:32.
        (
            walk | (1 << 23) | (0b10 << 30) | (ps << 32),
            SCTLR_EL2_VHE_ON,
        )
    } else {
        // TCR_EL2 layout: RES1 bits 31 and 23; PS at 18:16.
        (walk | (1 << 31) | (1 << 23) | (ps << 16), SCTLR_EL2_NVHE_ON)
    };
    // SAFETY: the caller guarantees the table maps everything; the sequence follows ARM ARM
    // D8.2.6: configure, synchronise, invalidate stale TLB entries, then enable.
    unsafe {
        asm!(
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr}",
            "isb",
            "tlbi alle2",
            "dsb nsh",
            "isb",
            "ic iallu",
            "dsb nsh",
            "isb",
            "msr sctlr_el2, {sctlr}",
            "isb",
            mair = in(reg) mair::MAIR_EL2,
            tcr = in(reg) tcr,
            ttbr = in(reg) root.0,
            sctlr = in(reg) sctlr,
            options(nostack, preserves_flags),
        )
    };
}

/// Turns on the EL2 MMU with the kernel's identity map at `root`.
///
/// The kernel builds that map (kernel::build_el2_map) before this runs on the boot CPU, and
/// secondaries reuse it: it maps the image with its permissions (minus the stack guard pages),
/// every RAM region and the devices the kernel drives, in the descriptor format of the E2H
/// mode chosen at boot. That is the contract of [`enable`]; this is its one caller.
pub fn enable_identity_map(root: PhysAddr, vhe: bool, pa_bits: u32) {
    // SAFETY: see above: `root` is the kernel's complete identity map in the current E2H
    // mode's format, and running code, data and stacks are all identity-mapped in it.
    unsafe { enable(root, vhe, pa_bits) }
}
