//! Data-cache maintenance by address, to the Point of Coherency (ARM ARM D7.5).

use core::arch::asm;

/// Smallest data-cache line size in bytes (CTR_EL0.DminLine).
fn dcache_line() -> u64 {
    let ctr: u64;
    // SAFETY: reads CTR_EL0, which has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    // DminLine, bits [19:16]: log2 of the line size in words.
    4 << ((ctr >> 16) & 0xf)
}

macro_rules! dc_range {
    ($name:ident, $op:literal, $doc:literal) => {
        #[doc = $doc]
        pub fn $name(start: u64, len: u64) {
            let line = dcache_line();
            let mut a = start & !(line - 1);
            let end = start.saturating_add(len);
            while a < end {
                // SAFETY: data-cache maintenance by VA to PoC on memory the kernel has
                // mapped (or, with the MMU off, any RAM) has no effect on program state other
                // than moving lines between cache and memory, which is the point.
                unsafe { asm!(concat!("dc ", $op, ", {0}"), in(reg) a, options(nostack, preserves_flags)) };
                a += line;
            }
            // SAFETY: barrier only.
            unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
        }
    };
}

dc_range!(
    clean_invalidate_to_poc,
    "civac",
    "Cleans and invalidates `[start, start+len)` to the Point of Coherency, so a non-cacheable observer (a guest with its MMU off) sees what the kernel wrote."
);
dc_range!(
    invalidate_to_poc,
    "ivac",
    "Invalidates `[start, start+len)`; memory written with the MMU off is then what a cacheable read returns. Dirty lines are discarded."
);
dc_range!(
    clean_to_poc,
    "cvac",
    "Cleans `[start, start+len)` to the Point of Coherency: what the kernel wrote through its caches reaches memory, for an observer that reads with its caches off (a secondary CPU before its MMU is on)."
);
