//! The physical frame allocator: a buddy allocator (buddy_system_allocator) over host RAM
//! minus every reserved range.
//!
//! Blocks are naturally aligned to their power-of-two size, so a 64 MiB guest RAM request
//! comes back 64 MiB-aligned and stage 2 can map it with 2 MiB / 1 GiB blocks. Guest RAM of
//! any multiple of 2 MiB comes as a few such blocks ([`FrameAllocator::alloc_pieces`]).

use alloc::vec::Vec;
use core::alloc::Layout;

use buddy_system_allocator::FrameAllocator as Buddy;

use super::{PAGE_SIZE, PhysAddr, PhysRange};

/// Frames of host physical memory, in 4 KiB units.
pub struct FrameAllocator {
    buddy: Buddy<32>,
    free_bytes: u64,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// `ram` minus `reserved`, with reservations widened to whole pages. Pure; used to seed the
/// allocator and by tests.
pub fn subtract(ram: &[PhysRange], reserved: &[PhysRange]) -> Vec<PhysRange> {
    let mut out = Vec::new();
    for r in ram {
        let mut pieces = alloc::vec![(
            r.base.align_up(PAGE_SIZE).0,
            r.end().align_down(PAGE_SIZE).0
        )];
        for res in reserved {
            let (rs, re) = (
                res.base.align_down(PAGE_SIZE).0,
                res.end().align_up(PAGE_SIZE).0,
            );
            let mut next = Vec::new();
            for (s, e) in pieces {
                if re <= s || rs >= e {
                    next.push((s, e));
                    continue;
                }
                if rs > s {
                    next.push((s, rs));
                }
                if re < e {
                    next.push((re, e));
                }
            }
            pieces = next;
        }
        out.extend(
            pieces
                .into_iter()
                .filter(|(s, e)| e > s)
                .map(|(s, e)| PhysRange::new(PhysAddr(s), e - s)),
        );
    }
    out.sort_by_key(|r| r.base);
    out
}

impl FrameAllocator {
    pub const fn new() -> Self {
        Self {
            buddy: Buddy::new(),
            free_bytes: 0,
        }
    }

    /// Adds `ram` minus `reserved` to the pool. Returns the number of bytes added.
    pub fn add_ram(&mut self, ram: &[PhysRange], reserved: &[PhysRange]) -> u64 {
        let mut added = 0;
        for piece in subtract(ram, reserved) {
            let start = (piece.base.0 / PAGE_SIZE) as usize;
            let end = (piece.end().0 / PAGE_SIZE) as usize;
            self.buddy.add_frame(start, end);
            added += piece.size_bytes;
        }
        self.free_bytes += added;
        added
    }

    /// Allocates `size_bytes` (rounded up to a power of two of pages) aligned to at least
    /// `align` bytes. The memory is not zeroed.
    pub fn alloc(&mut self, size_bytes: u64, align: u64) -> Option<PhysRange> {
        let pages = size_bytes.div_ceil(PAGE_SIZE).max(1) as usize;
        let align_pages = (align / PAGE_SIZE).max(1) as usize;
        let layout = Layout::from_size_align(pages, align_pages.next_power_of_two()).ok()?;
        let frame = self.buddy.alloc_aligned(layout)?;
        let got = (pages
            .next_power_of_two()
            .max(align_pages.next_power_of_two())) as u64;
        self.free_bytes -= got * PAGE_SIZE;
        Some(PhysRange::new(
            PhysAddr(frame as u64 * PAGE_SIZE),
            size_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        ))
    }

    /// Returns a range obtained from [`alloc`](Self::alloc) with the same `align`.
    pub fn free(&mut self, range: PhysRange, align: u64) {
        let pages = range.size_bytes.div_ceil(PAGE_SIZE).max(1) as usize;
        let align_pages = (align / PAGE_SIZE).max(1) as usize;
        if let Ok(layout) = Layout::from_size_align(pages, align_pages.next_power_of_two()) {
            self.buddy
                .dealloc_aligned((range.base.0 / PAGE_SIZE) as usize, layout);
            let got = (pages
                .next_power_of_two()
                .max(align_pages.next_power_of_two())) as u64;
            self.free_bytes += got * PAGE_SIZE;
        }
    }

    /// Allocates `size_bytes` (a multiple of `piece`, itself a power of two of at least a
    /// page) as a few naturally aligned power-of-two pieces, largest first: the binary
    /// decomposition of the size, a piece that cannot be had split in two halves, down to
    /// `piece`. A size that is not a power of two (384 MiB) or that no single free block holds
    /// (most of a fragmented machine) is then still satisfied. On failure nothing stays
    /// allocated and the error is the largest multiple of `piece` that would have worked.
    pub fn alloc_pieces(&mut self, size_bytes: u64, piece: u64) -> Result<Vec<PhysRange>, u64> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(piece) || !piece.is_power_of_two() {
            return Err(self.largest_in_pieces(piece));
        }
        // Pieces still to get, as a stack whose top is the next (largest first).
        let mut want: Vec<u64> = (0..64)
            .map(|bit| 1u64 << bit)
            .filter(|&p| size_bytes & p != 0)
            .collect();
        let mut got = Vec::new();
        while let Some(p) = want.pop() {
            if let Some(r) = self.alloc(p, p) {
                got.push(r);
            } else if p > piece {
                want.push(p / 2);
                want.push(p / 2);
            } else {
                for r in got {
                    self.free(r, r.size_bytes);
                }
                return Err(self.largest_in_pieces(piece));
            }
        }
        Ok(got)
    }

    /// The most memory [`Self::alloc_pieces`] could give right now, in multiples of `piece`:
    /// found by taking `piece`-sized blocks until none is left, then giving them all back.
    pub fn largest_in_pieces(&mut self, piece: u64) -> u64 {
        let mut taken = Vec::new();
        while let Some(r) = self.alloc(piece, piece) {
            taken.push(r);
        }
        let total = taken.len() as u64 * piece;
        for r in taken {
            self.free(r, piece);
        }
        total
    }

    /// Bytes currently free.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// 4 KiB frames currently free: what the lifecycle accounting reports, so a test can see
    /// that VM resets give back everything they take.
    pub fn free_frames(&self) -> u64 {
        self.free_bytes / PAGE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn subtract_reservations() {
        let ram = [PhysRange::new(PhysAddr(0x4000_0000), 1024 * MIB)];
        let reserved = [
            PhysRange::new(PhysAddr(0x4008_0000), 0x90_0000), // image
            PhysRange::new(PhysAddr(0x4800_0000), 0x1_0000),  // dtb
            PhysRange::new(PhysAddr(0x6000_0123), 0x10),      // module, unaligned
        ];
        let free = subtract(&ram, &reserved);
        assert_eq!(free[0], PhysRange::new(PhysAddr(0x4000_0000), 0x8_0000));
        assert_eq!(free[1].base, PhysAddr(0x4098_0000));
        assert_eq!(free[1].end(), PhysAddr(0x4800_0000));
        assert_eq!(free[2].base, PhysAddr(0x4801_0000));
        assert_eq!(free[2].end(), PhysAddr(0x6000_0000));
        assert_eq!(free[3].base, PhysAddr(0x6000_1000));
        assert_eq!(free[3].end(), PhysAddr(0x8000_0000));
    }

    #[test]
    fn allocations_are_aligned_and_disjoint() {
        let mut fa = FrameAllocator::new();
        let ram = [PhysRange::new(PhysAddr(0x4000_0000), 1024 * MIB)];
        let reserved = [PhysRange::new(PhysAddr(0x4008_0000), 0x90_0000)];
        let added = fa.add_ram(&ram, &reserved);
        assert_eq!(added, 1024 * MIB - 0x90_0000);
        let a = fa.alloc(64 * MIB, 2 * MIB).unwrap();
        let b = fa.alloc(64 * MIB, 2 * MIB).unwrap();
        assert!(a.base.is_aligned(64 * MIB) && b.base.is_aligned(64 * MIB));
        assert!(!a.overlaps(&b));
        for r in [a, b] {
            assert!(!r.overlaps(&reserved[0]));
        }
        let p = fa.alloc(1, PAGE_SIZE).unwrap();
        assert_eq!(p.size_bytes, PAGE_SIZE);
        let before = fa.free_bytes();
        fa.free(a, 2 * MIB);
        assert_eq!(fa.free_bytes(), before + 64 * MIB);
        // Exhaustion is an error value, not a panic.
        assert!(fa.alloc(4096 * MIB, PAGE_SIZE).is_none());
    }

    #[test]
    fn pieces_for_any_multiple_of_2m() {
        // The default QEMU machine: 1 GiB with the image near the bottom, the DTB at 128 MiB
        // and modules at 512 MiB, so no 512 MiB block is free.
        let mut fa = FrameAllocator::new();
        let ram = [PhysRange::new(PhysAddr(0x4000_0000), 1024 * MIB)];
        let reserved = [
            PhysRange::new(PhysAddr(0x4008_0000), 0x90_0000),
            PhysRange::new(PhysAddr(0x4800_0000), 0x1_0000),
            PhysRange::new(PhysAddr(0x6000_0000), 0x4_0000),
        ];
        fa.add_ram(&ram, &reserved);
        let start = fa.free_bytes();
        for mib in [2, 320, 384, 512, 600] {
            let pieces = fa.alloc_pieces(mib * MIB, 2 * MIB).unwrap();
            assert_eq!(pieces.iter().map(|p| p.size_bytes).sum::<u64>(), mib * MIB);
            for (i, p) in pieces.iter().enumerate() {
                assert!(p.size_bytes.is_power_of_two() && p.base.is_aligned(p.size_bytes));
                assert!(reserved.iter().all(|r| !r.overlaps(p)), "{mib} MiB: {p:?}");
                assert!(pieces[i + 1..].iter().all(|q| !q.overlaps(p)));
            }
            for p in pieces {
                fa.free(p, p.size_bytes);
            }
            assert_eq!(fa.free_bytes(), start, "{mib} MiB given back");
        }
        // Too much: nothing kept, and the answer is what would fit (2 MiB pieces).
        let largest = fa.alloc_pieces(1024 * MIB, 2 * MIB).unwrap_err();
        assert_eq!(fa.free_bytes(), start);
        assert!(largest > 1000 * MIB && largest < 1024 * MIB && largest.is_multiple_of(2 * MIB));
        let all = fa.alloc_pieces(largest, 2 * MIB).unwrap();
        assert_eq!(fa.alloc_pieces(2 * MIB, 2 * MIB), Err(0));
        for p in all {
            fa.free(p, p.size_bytes);
        }
        // A size that is not a multiple of the piece is refused the same way.
        assert_eq!(fa.alloc_pieces(3 * MIB, 2 * MIB), Err(largest));
        assert_eq!(fa.free_bytes(), start);
    }

    #[test]
    fn alloc_free_cycles_return_to_the_starting_count() {
        // What a VM lifecycle soak relies on: any sequence of allocations given back leaves
        // the free count exactly where it started, odd sizes and alignments included.
        let mut fa = FrameAllocator::new();
        let ram = [PhysRange::new(PhysAddr(0x4000_0000), 1024 * MIB)];
        fa.add_ram(&ram, &[PhysRange::new(PhysAddr(0x4008_0000), 0x90_0000)]);
        let start = fa.free_frames();
        assert_eq!(start, fa.free_bytes() / PAGE_SIZE);
        for round in 0..1000u64 {
            let sizes = [16 * MIB, 3 * PAGE_SIZE + 1, PAGE_SIZE, 5 * MIB];
            let aligns = [2 * MIB, PAGE_SIZE, PAGE_SIZE, 2 * MIB];
            let got: Vec<PhysRange> = sizes
                .iter()
                .zip(aligns)
                .map(|(&s, a)| fa.alloc(s + round % 3, a).unwrap())
                .collect();
            assert!(fa.free_frames() < start);
            for (r, a) in got.into_iter().zip(aligns).rev() {
                fa.free(r, a);
            }
            assert_eq!(fa.free_frames(), start, "round {round}");
        }
    }
}
