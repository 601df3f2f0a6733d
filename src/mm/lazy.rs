//! Guest RAM backed on demand: which 2 MiB blocks of a VM's RAM are mapped at stage 2.
//!
//! A VM's RAM is not zeroed when it boots. Only the blocks the loader writes (kernel, initrd,
//! device tree: the *eager* blocks) are prepared before the first guest instruction; every
//! other block starts unmapped at stage 2, and is zeroed, cleaned to the Point of Coherency
//! and mapped on the guest's first access to it (a stage-2 translation fault) or the first
//! time a device model reaches into it. A guest can therefore never read a byte it or the
//! loader did not write in this boot: an unmapped block faults, and a block is only mapped
//! after it has been zeroed. At a VM reset every block that is not eager is unmapped again.
//!
//! This file is the pure half: the per-block "backed" bits, shared lock-free between the
//! fault path and device models, and the arithmetic of blocks. The kernel (kernel::ram)
//! does the zeroing, cleaning and mapping.

#![forbid(unsafe_code)]

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use super::BLOCK_2M;

/// The unit of on-demand backing: one level-2 stage-2 block.
pub const BLOCK_BYTES: u64 = BLOCK_2M;

/// Something that can make guest RAM `[offset, offset + len)` backed (zeroed and mapped)
/// before a device model reads or writes it.
pub trait EnsureBacked: Sync {
    /// Backs every block of the range that is not backed yet. Returns false if that was
    /// impossible (the range is outside RAM, or stage 2 refused the mapping); the caller must
    /// then not touch the range.
    fn ensure(&self, offset: u64, len: u64) -> bool;
}

/// One bit per block of a VM's RAM: set once the block is zeroed and mapped.
///
/// Bits are set with release ordering after the block's zeroes and its stage-2 descriptor
/// are written, and read with acquire ordering, so a device model that sees a bit set also
/// sees the zeroed block (the guest side is ordered by the DSB before the retried access).
pub struct Backing {
    bits: Vec<AtomicU64>,
    blocks: usize,
}

impl Backing {
    /// All blocks of `ram_bytes` of RAM, none backed. `ram_bytes` is rounded up to a block.
    pub fn new(ram_bytes: u64) -> Self {
        let blocks = ram_bytes.div_ceil(BLOCK_BYTES) as usize;
        Self {
            bits: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            blocks,
        }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Whether block `b` is backed (false for a block beyond RAM).
    #[inline]
    pub fn is_backed(&self, b: usize) -> bool {
        self.bits
            .get(b / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (b % 64)) != 0)
    }

    /// Records that block `b` is backed (after it was zeroed and mapped).
    pub fn set(&self, b: usize) {
        if let Some(w) = self.bits.get(b / 64) {
            w.fetch_or(1 << (b % 64), Ordering::Release);
        }
    }

    /// Records that block `b` is no longer backed (after it was unmapped).
    pub fn clear(&self, b: usize) {
        if let Some(w) = self.bits.get(b / 64) {
            w.fetch_and(!(1 << (b % 64)), Ordering::Release);
        }
    }

    /// How many blocks are backed.
    pub fn backed_count(&self) -> usize {
        self.bits
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }

    /// The blocks that `[offset, offset + len)` touches, or `None` if any byte of it is
    /// outside RAM. An empty range touches no block.
    pub fn blocks_of(&self, offset: u64, len: u64) -> Option<Range<usize>> {
        let end = offset.checked_add(len)?;
        if end > self.blocks as u64 * BLOCK_BYTES {
            return None;
        }
        if len == 0 {
            return Some(0..0);
        }
        Some((offset / BLOCK_BYTES) as usize..end.div_ceil(BLOCK_BYTES) as usize)
    }

    /// Whether every block of `[offset, offset + len)` is backed (false outside RAM).
    #[inline]
    pub fn all_backed(&self, offset: u64, len: u64) -> bool {
        self.blocks_of(offset, len)
            .is_some_and(|mut r| r.all(|b| self.is_backed(b)))
    }
}

/// The blocks that the images at `segments` (offset, length) touch: the eager blocks the
/// loader prepares before the guest runs. Segments outside `blocks` are clipped.
pub fn eager_blocks(segments: &[(u64, u64)], blocks: usize) -> Vec<bool> {
    let mut eager = alloc::vec![false; blocks];
    for &(offset, len) in segments {
        if len == 0 {
            continue;
        }
        let first = (offset / BLOCK_BYTES) as usize;
        let last = (offset.saturating_add(len - 1) / BLOCK_BYTES) as usize;
        for e in eager.iter_mut().take(last.saturating_add(1)).skip(first) {
            *e = true;
        }
    }
    eager
}

/// Maximal runs of consecutive `true` entries, as block ranges.
pub fn runs(eager: &[bool]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &e) in eager.iter().chain(core::iter::once(&false)).enumerate() {
        match (e, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn bits_set_clear_and_count() {
        let b = Backing::new(130 * MIB);
        assert_eq!(b.blocks(), 65);
        assert!(!b.is_backed(0) && !b.is_backed(64));
        b.set(64);
        b.set(3);
        assert!(b.is_backed(64) && b.is_backed(3) && !b.is_backed(4));
        assert_eq!(b.backed_count(), 2);
        b.clear(64);
        assert!(!b.is_backed(64));
        // Beyond RAM: never backed, and setting it changes nothing.
        b.set(1000);
        assert!(!b.is_backed(1000));
        assert_eq!(b.backed_count(), 1);
    }

    #[test]
    fn blocks_of_ranges() {
        let b = Backing::new(8 * MIB);
        assert_eq!(b.blocks_of(0, 1), Some(0..1));
        assert_eq!(b.blocks_of(2 * MIB - 1, 2), Some(0..2));
        assert_eq!(b.blocks_of(2 * MIB, 2 * MIB), Some(1..2));
        assert_eq!(b.blocks_of(6 * MIB, 2 * MIB), Some(3..4));
        assert_eq!(b.blocks_of(6 * MIB, 2 * MIB + 1), None);
        assert_eq!(b.blocks_of(u64::MAX, 2), None);
        assert_eq!(b.blocks_of(8 * MIB, 0), Some(0..0));
        assert_eq!(b.blocks_of(9 * MIB, 0), None);
        assert!(b.all_backed(0, 0));
        assert!(!b.all_backed(0, 1));
        b.set(0);
        assert!(b.all_backed(0, 2 * MIB));
        assert!(!b.all_backed(0, 2 * MIB + 1));
    }

    #[test]
    fn eager_blocks_and_runs() {
        // A kernel at 0x8_0000 of 5 MiB, an initrd ending just below the DT slot, the DT
        // slot in the last block of 32 MiB.
        let e = eager_blocks(
            &[
                (0x8_0000, 5 * MIB),
                (26 * MIB, 4 * MIB),
                (30 * MIB, 0x1000),
                (40 * MIB, 0),
            ],
            16,
        );
        let want: Vec<usize> = e
            .iter()
            .enumerate()
            .filter(|&(_, &x)| x)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(want, [0, 1, 2, 13, 14, 15]);
        assert_eq!(runs(&e), [0..3, 13..16]);
        assert_eq!(runs(&[false, true, false, true]), [1..2, 3..4]);
        assert!(runs(&[]).is_empty());
        // A segment beyond RAM is clipped, not a panic.
        assert_eq!(runs(&eager_blocks(&[(u64::MAX - 4, 4)], 2)), []);
    }
}
