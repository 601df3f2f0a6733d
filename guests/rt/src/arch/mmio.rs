//! MMIO register blocks, accessed with exactly one `ldr`/`str` per register.
//!
//! `ptr::read_volatile` does not promise the instruction form, and a post-indexed or pair access
//! would give the hypervisor a data abort without a valid syndrome (ESR_EL2.ISV = 0), which it
//! cannot emulate. So MMIO goes through `asm!`, as Linux's `readl`/`writel` do.
//!
//! [`Region`] is safe to create for any range outside the memory Rust objects live in
//! ([`super::mem`]): a device access there cannot break Rust's memory model, whatever it does to
//! the device.

use core::arch::asm;
use core::ops::Range;

/// A block of 32-bit device registers at `base..base + len_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    base: usize,
    len_bytes: usize,
}

impl Region {
    /// The block at `base`, or `None` if it is misaligned, wraps, or overlaps the image or DTB.
    pub fn new(base: usize, len_bytes: usize) -> Option<Self> {
        let range: Range<usize> = base..base.checked_add(len_bytes)?;
        if !base.is_multiple_of(4) || super::mem::overlaps_rust_memory(&range) {
            return None;
        }
        Some(Self { base, len_bytes })
    }

    /// The block's first address.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The block's size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    fn addr(&self, offset: usize) -> usize {
        self.addr_sized(offset, 4)
    }

    /// The address of the `width_bytes` register at `offset`, which must be naturally aligned
    /// and inside the block.
    fn addr_sized(&self, offset: usize, width_bytes: usize) -> usize {
        assert!(
            offset.is_multiple_of(width_bytes)
                && offset
                    .checked_add(width_bytes)
                    .is_some_and(|end| end <= self.len_bytes),
            "MMIO offset {offset:#x} (width {width_bytes}) outside a {:#x}-byte block",
            self.len_bytes
        );
        self.base + offset
    }

    /// Reads the 32-bit register at `offset`. Panics if `offset` is misaligned or out of range.
    pub fn read32(&self, offset: usize) -> u32 {
        let addr = self.addr(offset);
        let value: u32;
        // SAFETY: `addr` is aligned and inside a block that `new` checked lies outside all Rust
        // objects, so the load touches a device (or nothing) and no Rust memory.
        unsafe {
            asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Writes the 32-bit register at `offset`. Panics if `offset` is misaligned or out of range.
    pub fn write32(&self, offset: usize, value: u32) {
        let addr = self.addr(offset);
        // SAFETY: as in `read32`: the store reaches a device register, never Rust memory.
        unsafe {
            asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
        };
    }

    /// Reads the 64-bit register at `offset` with one `ldr x` (GICv3 GICR_TYPER, GICD_IROUTER:
    /// registers Linux reads 64 bits wide). Panics if `offset` is misaligned or out of range.
    pub fn read64(&self, offset: usize) -> u64 {
        let addr = self.addr_sized(offset, 8);
        let value: u64;
        // SAFETY: as in `read32`: an aligned load from a device block outside all Rust objects.
        unsafe {
            asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Writes the 64-bit register at `offset` with one `str x`. Panics if `offset` is
    /// misaligned or out of range.
    pub fn write64(&self, offset: usize, value: u64) {
        let addr = self.addr_sized(offset, 8);
        // SAFETY: as in `read32`: the store reaches a device register, never Rust memory.
        unsafe {
            asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
        };
    }
}
