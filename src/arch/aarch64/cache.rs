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

/// `$op` on eight consecutive blocks of `$step` bytes from `$a`, repeated while `$a` is below
/// `$stop` (a whole number of eight-block groups ahead): one compare and branch per eight
/// operations instead of per operation. Leaves `$a` at `$stop`.
macro_rules! by_eight {
    ($op:literal, $a:ident, $step:expr, $stop:expr) => {
        asm!(
            "2:",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            concat!("dc ", $op, ", {a}"), "add {a}, {a}, {step}",
            "cmp {a}, {stop}",
            "b.lo 2b",
            a = inout(reg) $a,
            step = in(reg) $step,
            stop = in(reg) $stop,
            options(nostack),
        )
    };
}

macro_rules! dc_range {
    ($name:ident, $op:literal, $doc:literal) => {
        #[doc = $doc]
        pub fn $name(start: u64, len: u64) {
            let line = dcache_line();
            let mut a = start & !(line - 1);
            let end = start.saturating_add(len);
            let groups = (end.saturating_sub(a) / line) / 8;
            if groups > 0 {
                let stop = a + groups * 8 * line;
                // SAFETY: as below, for the lines of whole groups inside the range.
                unsafe { by_eight!($op, a, line, stop) };
            }
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
    clean_to_pou,
    "cvau",
    "Cleans `[start, start+len)` to the Point of Unification: instruction fetches that miss in the instruction cache then see what the kernel wrote (needed unless CTR_EL0.IDC)."
);
dc_range!(
    clean_to_poc,
    "cvac",
    "Cleans `[start, start+len)` to the Point of Coherency: what the kernel wrote through its caches reaches memory, for an observer that reads with its caches off (a secondary CPU before its MMU is on)."
);

/// Bytes one DC ZVA zeroes, or `None` when DC ZVA is prohibited (DCZID_EL0.DZP).
fn zva_block() -> Option<u64> {
    let dczid: u64;
    // SAFETY: reads DCZID_EL0, which has no side effects.
    unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags)) };
    // DCZID_EL0 (ARM ARM, the register's description): DZP, bit 4, prohibited; BS, bits
    // [3:0], log2 of the block size in 4-byte words.
    (dczid & (1 << 4) == 0).then(|| 4 << (dczid & 0xf))
}

/// Zeroes `[start, start + len)`: DC ZVA for every whole zeroing block inside it (one
/// instruction per block, typically 64 bytes, and no read of the old contents into the
/// cache), plain stores for the unaligned head and tail or where DC ZVA is prohibited.
///
/// The zeroes land in the data cache like any store (the ARM ARM's DC ZVA description: it
/// behaves as a set of stores of zero to Normal memory): an observer that reads with its
/// caches off sees them only after [`clean_invalidate_to_poc`].
///
/// # Safety
/// `[start, start + len)` must be Normal memory mapped writable in the current translation
/// regime that no one else reads or writes meanwhile (no reference to it is live).
pub unsafe fn zero(start: u64, len: u64) {
    let end = start.saturating_add(len);
    let zva = zva_block();
    let (head_end, body_end) = match zva {
        Some(b) if len >= b => {
            let first = start.next_multiple_of(b);
            let last = end & !(b - 1);
            (first.min(end), last.max(first.min(end)))
        }
        _ => (end, end),
    };
    // SAFETY: inside the caller's range, which it guarantees is ours to write.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, (head_end - start) as usize) };
    if let Some(b) = zva {
        let mut a = head_end;
        let groups = (body_end - a) / b / 8;
        if groups > 0 {
            let stop = a + groups * 8 * b;
            // SAFETY: as below, for whole groups of eight blocks inside the body.
            unsafe { by_eight!("zva", a, b, stop) };
        }
        while a < body_end {
            // SAFETY: `a` is a zeroing-block-aligned address whose whole block lies inside
            // the caller's range (between the aligned first and last block boundaries).
            unsafe { asm!("dc zva, {0}", in(reg) a, options(nostack, preserves_flags)) };
            a += b;
        }
    }
    // SAFETY: the tail, inside the caller's range.
    unsafe { core::ptr::write_bytes(body_end as *mut u8, 0, (end - body_end) as usize) };
}

/// CTR_EL0.IDC (bit 28): data-cache cleaning to the Point of Unification is not needed for
/// instruction-to-data coherence.
pub fn idc() -> bool {
    let ctr: u64;
    // SAFETY: reads CTR_EL0, which has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    ctr & (1 << 28) != 0
}

/// CTR_EL0.DIC (bit 29): instruction-cache invalidation is not needed for
/// instruction-to-data coherence.
pub fn dic() -> bool {
    let ctr: u64;
    // SAFETY: reads CTR_EL0, which has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    ctr & (1 << 29) != 0
}

/// Invalidates every instruction cache of the Inner Shareable domain to the Point of
/// Unification (IC IALLUIS) and waits for it, so no CPU fetches an instruction that was cached
/// from memory since rewritten.
pub fn invalidate_icache_all() {
    // SAFETY: cache maintenance and a barrier; no other effect on program state.
    unsafe { asm!("ic ialluis", "dsb ish", options(nostack, preserves_flags)) };
}
