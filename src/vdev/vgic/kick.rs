//! Sets of vCPUs to kick, and bit iteration (shared by the vGIC's state, index and flush).

use crate::vdev::VcpuId;

/// A set of vCPUs (bit n = vCPU n) that must look at their vGIC state: each must run
/// [`Vgic::flush`](super::Vgic::flush) before it next enters the guest, so one running on another
/// physical CPU needs a kick (a physical SGI) and one blocked in WFI a wake-up.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KickSet(pub u64);

impl KickSet {
    /// No vCPU.
    pub const EMPTY: Self = Self(0);

    /// The first `n` vCPUs.
    pub fn all(n: usize) -> Self {
        Self(low_bits(n))
    }
    /// Just `vcpu` (empty if it is out of range).
    pub fn single(vcpu: usize) -> Self {
        Self(
            1u64.checked_shl(u32::try_from(vcpu).unwrap_or(u32::MAX))
                .unwrap_or(0),
        )
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, vcpu: VcpuId) -> bool {
        !Self::single(usize::from(vcpu.0)).intersect(self).is_empty()
    }
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
    /// The vCPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = VcpuId> {
        BitIter(self.0).filter_map(|i| u16::try_from(i).ok().map(VcpuId))
    }
}

/// `n` low bits set (all 64 for `n >= 64`): also the mask of the first `n` list registers.
pub fn low_bits(n: usize) -> u64 {
    match u32::try_from(n) {
        Ok(n) if n < 64 => (1u64 << n) - 1,
        _ => u64::MAX,
    }
}

/// Iterates over the set bit positions of a `u64`, lowest first.
pub(super) struct BitIter(pub u64);

impl Iterator for BitIter {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        usize::try_from(bit).ok()
    }
}
