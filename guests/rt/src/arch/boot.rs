//! The Image header and entry code: from the loader's jump to the first Rust function.
//!
//! Boot contract (Linux `Documentation/arch/arm64/booting.rst`, as elvisor, QEMU `-kernel` and
//! U-Boot `booti` implement it): the Image is loaded at RAM base + `text_offset` and entered at
//! its first byte at EL1h (or EL2 on bare hardware, which the runtime does not support), MMU and
//! D-cache off, DAIF masked, x0 = IPA of the device tree, x1..x3 = 0.
//!
//! The entry code, in order:
//! 1. keeps x0 (the DTB) in a callee-saved register;
//! 2. sets CPACR_EL1.FPEN = 0b11 and `isb`s: the aarch64-unknown-none target uses NEON in
//!    ordinary code (memcpy, struct moves), so FP/SIMD must not trap before any Rust runs;
//! 3. points SP at `__stack_top` (a 64 KiB stack after `.bss`, inside `image_size`);
//! 4. zeroes `__bss_start..__bss_end` (both 16-byte aligned);
//! 5. installs the vector table in VBAR_EL1 and `isb`s so a fault in Rust is reported;
//! 6. calls `rt_start(dtb)`, which never returns.
//!
//! Linker-script symbols used: `__image_size`, `__bss_start`, `__bss_end`, `__stack_top`,
//! `__image_start` and `__image_end` (see `arch::image_range`), and the `.text.head` section
//! placed first. The image is linked at its load address (0x4008_0000 for elvisor's guest RAM
//! at 0x4000_0000) and is not relocatable.

use core::arch::global_asm;

/// Image header `text_offset`: where the loader places the Image above the RAM base.
pub const TEXT_OFFSET: u64 = elvisor_abi::image::TEXT_OFFSET;

/// Image header `flags`: bit 0 = 0 little-endian, bits 1-2 = 0b01 4 KiB pages,
/// bit 3 = 0 "placed 2 MiB aligned from the base of DRAM".
pub const IMAGE_FLAGS: u64 = 0x2;

/// Image header magic "ARM\x64" read as a little-endian u32 at offset 0x38.
pub const IMAGE_MAGIC: u32 = elvisor_abi::image::MAGIC;

/// CPACR_EL1.FPEN = 0b11: no FP/SIMD traps at EL1 or EL0 (ARM ARM D19.2.30).
const CPACR_EL1_FPEN_NONE: u64 = 0b11 << 20;

// SAFETY (of the assembly as a whole): it runs exactly once, first, on the only CPU; it touches
// only its own stack and `.bss` (both inside the image the loader sized by `image_size`) and
// system registers that belong to EL1.
global_asm!(
    ".pushsection .text.head, \"ax\"",
    ".global _start",
    ".type _start, %function",
    "_start:",
    // --- arm64 Image header (64 bytes) -------------------------------------------------------
    "    b       2f",                    // 0x00 code0: branch over the header
    "    .long   0",                     // 0x04 code1
    "    .quad   {text_offset}",         // 0x08 text_offset
    "    .quad   __image_size",          // 0x10 image_size (file + .bss + stack)
    "    .quad   {flags}",               // 0x18 flags
    "    .quad   0",                     // 0x20 res2
    "    .quad   0",                     // 0x28 res3
    "    .quad   0",                     // 0x30 res4
    "    .long   {magic}",               // 0x38 magic "ARM\x64"
    "    .long   0",                     // 0x3c res5 (PE/COFF offset; none)
    // --- entry ---------------------------------------------------------------------------------
    "2:  mov     x19, x0",               // 1. DTB
    "    mov     x9, #{cpacr}",          // 2. FP/SIMD on
    "    msr     cpacr_el1, x9",
    "    isb",
    "    adrp    x9, __stack_top",       // 3. stack
    "    add     x9, x9, :lo12:__stack_top",
    "    mov     sp, x9",
    "    adrp    x9, __bss_start",       // 4. .bss
    "    add     x9, x9, :lo12:__bss_start",
    "    adrp    x10, __bss_end",
    "    add     x10, x10, :lo12:__bss_end",
    "3:  cmp     x9, x10",
    "    b.hs    4f",
    "    stp     xzr, xzr, [x9], #16",
    "    b       3b",
    "4:  adrp    x9, elvisor_guest_vectors", // 5. vectors
    "    add     x9, x9, :lo12:elvisor_guest_vectors",
    "    msr     vbar_el1, x9",
    "    isb",
    "    mov     x0, x19",               // 6. Rust
    "    bl      {rt_start}",
    "5:  wfi",
    "    b       5b",
    ".size _start, . - _start",
    ".popsection",
    text_offset = const TEXT_OFFSET,
    flags = const IMAGE_FLAGS,
    magic = const IMAGE_MAGIC,
    cpacr = const CPACR_EL1_FPEN_NONE,
    rt_start = sym crate::rt_start,
);

unsafe extern "Rust" {
    /// Defined by [`crate::entry!`] in the guest binary.
    fn __elvisor_guest_main(boot: &crate::BootInfo);
}

/// Calls the guest's main function, named by [`crate::entry!`].
pub(crate) fn call_guest_main(boot: &crate::BootInfo) {
    // SAFETY: `entry!` defines `__elvisor_guest_main` with exactly this Rust signature (its
    // type annotation makes a mismatching main a compile error in the guest), and a guest
    // without `entry!` fails to link.
    unsafe { __elvisor_guest_main(boot) }
}

/// FDT header magic (big-endian 0xd00dfeed, DTSpec 5.2).
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Largest device tree accepted (QEMU's own is 1 MiB unpacked).
const FDT_MAX_BYTES: usize = 16 << 20;

/// The device tree the loader passed in x0, as bytes, if x0 points at one.
///
/// The header is read with an armed load, so a bad x0 (zero, unbacked, misaligned) gives
/// `None` instead of an abort.
pub(crate) fn dtb_bytes(dtb: usize) -> Option<&'static [u8]> {
    if dtb == 0 || !dtb.is_multiple_of(8) || super::image_range().contains(&dtb) {
        return None;
    }
    let magic = guarded_read_be32(dtb)?;
    let total_bytes = usize::try_from(guarded_read_be32(dtb.checked_add(4)?)?).ok()?;
    if magic != FDT_MAGIC || !(40..=FDT_MAX_BYTES).contains(&total_bytes) {
        return None;
    }
    let range = dtb..dtb.checked_add(total_bytes)?;
    if range.start < super::image_range().end && super::image_range().start < range.end {
        return None;
    }
    // SAFETY: per the boot protocol x0 is the IPA of a device tree blob in guest RAM; its header
    // just read back with the right magic and a plausible size, it does not overlap the image,
    // and the runtime never writes it: `mem` keeps it out of every writable region it hands out.
    Some(unsafe { core::slice::from_raw_parts(dtb as *const u8, total_bytes) })
}

/// A big-endian 32-bit load that returns `None` if it raised an exception.
fn guarded_read_be32(addr: usize) -> Option<u32> {
    crate::exception::arm(crate::exception::Recovery::SkipInstruction);
    let value: u32;
    // SAFETY: a read of an aligned address the loader told us about; if it faults, the `ldr` is
    // skipped and the (stale) value discarded.
    unsafe {
        core::arch::asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, preserves_flags))
    };
    match crate::exception::disarm() {
        None => Some(u32::from_be(value)),
        Some(_) => None,
    }
}
