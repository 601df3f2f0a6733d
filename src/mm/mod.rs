//! Memory management: typed addresses, the frame allocator and the page tables we build.

pub mod addr;
pub mod frame;
pub mod lazy;
pub mod pagetable;
pub mod pieces;
pub mod placement;
pub mod rewrite;

pub use addr::{GuestPhysAddr, PhysAddr, PhysRange, VirtAddr};

/// Translation granule used everywhere (stage 1 and stage 2).
pub const PAGE_SIZE: u64 = 4096;
/// Level-2 block size with a 4K granule.
pub const BLOCK_2M: u64 = 2 << 20;
