//! Typed addresses: host physical, guest physical (IPA) and hypervisor virtual.
//!
//! The EL2 kernel identity-maps RAM and devices, so `VirtAddr` and `PhysAddr` carry the same
//! number today; the types still keep the address spaces apart. `GuestPhysAddr` is a guest's
//! intermediate physical address (IPA), translated to `PhysAddr` only by stage 2.

use core::fmt;
use core::ops::{Add, Sub};

macro_rules! address_type {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// True when the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
            /// Rounds up to a multiple of `align` (a power of two); saturates at the top.
            pub const fn align_up(self, align: u64) -> Self {
                Self(self.0.saturating_add(align - 1) & !(align - 1))
            }
            /// `self + bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl Add<u64> for $name {
            type Output = Self;
            fn add(self, rhs: u64) -> Self {
                Self(self.0 + rhs)
            }
        }

        impl Sub<$name> for $name {
            type Output = u64;
            fn sub(self, rhs: $name) -> u64 {
                self.0 - rhs.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// A host physical address.
    PhysAddr,
    "PA:"
);
address_type!(
    /// A guest physical address (an IPA: the input to stage 2).
    GuestPhysAddr,
    "IPA:"
);
address_type!(
    /// A virtual address in the EL2 kernel's own translation regime.
    VirtAddr,
    "VA:"
);

/// A half-open range of host physical memory, `[base, base + size)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PhysRange {
    pub base: PhysAddr,
    pub size_bytes: u64,
}

impl PhysRange {
    pub const fn new(base: PhysAddr, size_bytes: u64) -> Self {
        Self { base, size_bytes }
    }
    /// One past the last byte (saturating).
    pub const fn end(&self) -> PhysAddr {
        PhysAddr(self.base.0.saturating_add(self.size_bytes))
    }
    pub const fn contains(&self, pa: PhysAddr) -> bool {
        pa.0 >= self.base.0 && pa.0 < self.end().0
    }
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.base.0 < other.end().0 && other.base.0 < self.end().0
    }
}

/// What a user reads: `0x40080000..0x40090000` (half-open, host physical).
impl core::fmt::Display for PhysRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}..{:#x}", self.base.0, self.end().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        let a = PhysAddr(0x4008_1234);
        assert_eq!(a.align_down(0x1000), PhysAddr(0x4008_1000));
        assert_eq!(a.align_up(0x1000), PhysAddr(0x4008_2000));
        assert!(PhysAddr(0x4020_0000).is_aligned(0x20_0000));
        assert_eq!(PhysAddr(u64::MAX).align_up(0x1000), PhysAddr(!0xfff));
        assert_eq!(PhysAddr(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn ranges() {
        let r = PhysRange::new(PhysAddr(0x1000), 0x2000);
        assert!(r.contains(PhysAddr(0x1000)));
        assert!(r.contains(PhysAddr(0x2fff)));
        assert!(!r.contains(PhysAddr(0x3000)));
        assert!(r.overlaps(&PhysRange::new(PhysAddr(0x2fff), 1)));
        assert!(!r.overlaps(&PhysRange::new(PhysAddr(0x3000), 1)));
        assert_eq!(alloc::format!("{r}"), "0x1000..0x3000");
    }
}
