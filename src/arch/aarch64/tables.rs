//! Where page-table pages come from: the kernel heap, identity-mapped (VA == PA).
//!
//! This is the one place that turns a heap pointer into a "physical address" for the
//! aarch64-paging crate; it is only true because the EL2 map is an identity map.

use alloc::alloc::{alloc_zeroed, dealloc};
use core::alloc::Layout;
use core::ptr::NonNull;

use aarch64_paging::descriptor::{PagingAttributes, PhysicalAddress};
use aarch64_paging::paging::{PageTable, Translation};

use crate::mm::PAGE_SIZE;

/// Allocates table pages from the (identity-mapped) heap.
#[derive(Debug, Default)]
pub struct HeapTranslation;

const TABLE_LAYOUT: Layout = match Layout::from_size_align(PAGE_SIZE as usize, PAGE_SIZE as usize) {
    Ok(l) => l,
    Err(_) => panic!("bad table layout"),
};

impl<A: PagingAttributes> Translation<A> for HeapTranslation {
    fn allocate_table(&mut self) -> (NonNull<PageTable<A>>, PhysicalAddress) {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(TABLE_LAYOUT) };
        let Some(nn) = NonNull::new(ptr) else {
            // Table pages come from the kernel heap; running out of it is a kernel bug or a
            // configuration far beyond what the heap was sized for.
            alloc::alloc::handle_alloc_error(TABLE_LAYOUT)
        };
        (nn.cast(), PhysicalAddress(ptr as usize))
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<PageTable<A>>) {
        // SAFETY: the caller guarantees the page came from `allocate_table` above, which used
        // the same layout, and is no longer referenced.
        unsafe { dealloc(page_table.as_ptr().cast(), TABLE_LAYOUT) }
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<A>> {
        // Identity map: the physical address of a table is its address in the heap.
        NonNull::new(pa.0 as *mut PageTable<A>).expect("page table at physical address 0")
    }
}
