//! The kernel heap: buddy_system_allocator's `Heap` behind the kernel's own [`Mutex`], so a CPU
//! waiting for it waits with WFE like every other lock (sync.rs says why), instead of the
//! crate's `LockedHeap`, whose spin 0.10 lock spins. The heap is taken under nearly every other
//! lock through allocation, so it is the lock most often waited for.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};

use buddy_system_allocator::Heap;

use super::sync::Mutex;

/// Buddy orders: blocks up to 2^31 bytes.
const ORDER: usize = 32;

/// The global allocator's type (main.rs owns the one instance).
pub struct KernelHeap(Mutex<Heap<ORDER>>);

impl KernelHeap {
    /// An empty heap; [`super::ram::init_heap`] gives it the image's heap area.
    pub const fn empty() -> Self {
        Self(Mutex::new(Heap::<ORDER>::new()))
    }

    /// The heap itself, for initialisation and statistics.
    pub fn lock(&self) -> spin::mutex::MutexGuard<'_, Heap<ORDER>, super::sync::WaitForEvent> {
        self.0.lock()
    }
}

// SAFETY: allocation and deallocation go through the buddy allocator under the lock, which
// hands out each block once and takes it back once (GlobalAlloc's contract on the caller
// guarantees `ptr`/`layout` of `dealloc` came from `alloc`).
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .alloc(layout)
            .map_or(null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's caller contract: `ptr` came from `alloc` on this heap
            // with this `layout` and is not used again.
            unsafe { self.0.lock().dealloc(p, layout) };
        }
    }
}
