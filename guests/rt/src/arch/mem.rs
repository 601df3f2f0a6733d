//! Where Rust objects live in guest RAM, and safe access to the RAM around them.
//!
//! ```text
//!   ram.start (0x4000_0000)
//!   |   free
//!   image_range()   Image: text, rodata, data, bss, stack   <- all Rust objects but the DTB
//!   |   free        (free_ram_word hands out words here)
//!   dtb..dtb+size   the device tree, borrowed as &'static [u8]
//!   |   free
//!   ram.end
//! ```
//!
//! Every Rust object is in the image or the DTB. An access outside both cannot alias one, which
//! is the contract that lets the MMIO region type, the probes and [`free_ram_word`] be safe.
//! The layout is recorded once at boot (`init`); before that only the image is known.

use core::ops::Range;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::boot::BootInfo;

static RAM_START: AtomicUsize = AtomicUsize::new(0);
static RAM_END: AtomicUsize = AtomicUsize::new(0);
static DTB_START: AtomicUsize = AtomicUsize::new(0);
static DTB_END: AtomicUsize = AtomicUsize::new(0);

/// Records guest RAM and the DTB from the boot information. Called once by `rt_start`.
pub(crate) fn init(boot: &BootInfo) {
    if let Some(ram) = &boot.ram {
        RAM_START.store(ram.start, Ordering::SeqCst);
        RAM_END.store(ram.end, Ordering::SeqCst);
    }
    if let Some(dtb) = boot.dtb_range() {
        DTB_START.store(dtb.start, Ordering::SeqCst);
        DTB_END.store(dtb.end, Ordering::SeqCst);
    }
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

fn range_of(start: &AtomicUsize, end: &AtomicUsize) -> Range<usize> {
    start.load(Ordering::SeqCst)..end.load(Ordering::SeqCst)
}

/// The device tree's address as recorded at boot, if x0 pointed at a valid one.
pub(crate) fn dtb_address() -> Option<usize> {
    let dtb = range_of(&DTB_START, &DTB_END);
    (!dtb.is_empty()).then_some(dtb.start)
}

/// Guest RAM from `/memory`, if the device tree named it.
pub fn guest_ram() -> Option<Range<usize>> {
    let ram = range_of(&RAM_START, &RAM_END);
    (!ram.is_empty()).then_some(ram)
}

/// Whether `range` touches memory a Rust object may live in: the image or the DTB.
pub fn overlaps_rust_memory(range: &Range<usize>) -> bool {
    overlaps(range, &super::image_range()) || overlaps(range, &range_of(&DTB_START, &DTB_END))
}

/// Whether `addr` is guest RAM (if `/memory` was not found: the image or the DTB).
pub fn in_guest_ram(addr: usize) -> bool {
    let byte = addr..addr.saturating_add(1);
    match guest_ram() {
        Some(ram) => ram.contains(&addr) || overlaps_rust_memory(&byte),
        None => overlaps_rust_memory(&byte),
    }
}

/// A word of guest RAM outside the image and the DTB, for tests that need memory the hypervisor
/// must (re)initialise, such as "RAM is zero after SYSTEM_RESET".
///
/// `None` unless `addr` is 4-byte aligned, inside `/memory` and outside the image and the DTB.
pub fn free_ram_word(addr: usize) -> Option<&'static AtomicU32> {
    let ram = guest_ram()?;
    let word = addr..addr.checked_add(4)?;
    if !addr.is_multiple_of(4)
        || word.start < ram.start
        || word.end > ram.end
        || overlaps_rust_memory(&word)
    {
        return None;
    }
    // SAFETY: `addr` is aligned, guest RAM exists for as long as the guest runs, and no Rust
    // object lives there (it is outside the image and the DTB), so nothing accesses the word
    // except through `AtomicU32`s made here, which may alias each other.
    Some(unsafe { AtomicU32::from_ptr(addr as *mut u32) })
}
