//! A VM's RAM as host pieces: guest RAM is contiguous from the guest's side, but on the host
//! it may be several naturally aligned blocks ([`super::frame::FrameAllocator::alloc_pieces`]),
//! one after the other in guest order.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use super::PhysRange;

/// Guest RAM offsets to host physical addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPieces {
    pieces: Vec<PhysRange>,
    size: u64,
}

impl HostPieces {
    /// RAM made of `pieces` in guest order.
    pub fn new(pieces: Vec<PhysRange>) -> Self {
        let size = pieces.iter().map(|p| p.size_bytes).sum();
        Self { pieces, size }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    pub fn pieces(&self) -> &[PhysRange] {
        &self.pieces
    }

    /// The host address of RAM offset `offset`, if it is inside RAM.
    pub fn host(&self, offset: u64) -> Option<u64> {
        let mut base = 0;
        for p in &self.pieces {
            if offset < base + p.size_bytes {
                return Some(p.base.0 + (offset - base));
            }
            base += p.size_bytes;
        }
        None
    }

    /// Calls `f(host, at, len)` for each host-contiguous run of `[offset, offset + len)`, in
    /// order, where `at` is the run's offset from `offset`. Returns false (calling nothing)
    /// if any byte of the range is outside RAM.
    pub fn for_each_run(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64, u64)) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if end > self.size {
            return false;
        }
        let mut base = 0;
        for p in &self.pieces {
            let (lo, hi) = (base, base + p.size_bytes);
            base = hi;
            let (s, e) = (offset.max(lo), end.min(hi));
            if s < e {
                f(p.base.0 + (s - lo), s - offset, e - s);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::PhysAddr;

    const MIB: u64 = 1 << 20;

    fn ram() -> HostPieces {
        HostPieces::new(alloc::vec![
            PhysRange::new(PhysAddr(0x8000_0000), 256 * MIB),
            PhysRange::new(PhysAddr(0x5000_0000), 64 * MIB),
        ])
    }

    #[test]
    fn offsets_map_across_pieces() {
        let r = ram();
        assert_eq!(r.size_bytes(), 320 * MIB);
        assert_eq!(r.host(0), Some(0x8000_0000));
        assert_eq!(r.host(256 * MIB - 1), Some(0x8fff_ffff));
        assert_eq!(r.host(256 * MIB), Some(0x5000_0000));
        assert_eq!(r.host(320 * MIB), None);
    }

    #[test]
    fn runs_split_at_piece_boundaries() {
        let r = ram();
        let mut got = Vec::new();
        assert!(r.for_each_run(256 * MIB - 8, 24, |h, at, n| got.push((h, at, n))));
        assert_eq!(got, [(0x8fff_fff8, 0, 8), (0x5000_0000, 8, 16)]);
        got.clear();
        assert!(r.for_each_run(4096, 8, |h, at, n| got.push((h, at, n))));
        assert_eq!(got, [(0x8000_1000, 0, 8)]);
        // Outside RAM, or wrapping: nothing is called.
        assert!(!r.for_each_run(320 * MIB - 4, 8, |_, _, _| panic!()));
        assert!(!r.for_each_run(u64::MAX, 2, |_, _, _| panic!()));
        assert!(r.for_each_run(320 * MIB, 0, |_, _, _| panic!()));
    }
}
