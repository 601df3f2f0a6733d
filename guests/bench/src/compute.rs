//! `guest-compute`: a fixed CPU- and memory-bound workload, to show that a guest that never
//! exits runs as many instructions under the hypervisor as on the bare machine.
//!
//! Over a 64 MiB buffer of guest RAM (starting at the first 2 MiB boundary after the image):
//!
//! ```text
//!   1. fill      every 8th word (one per 64-byte line), 1 Mi stores
//!   2. stride    every 16th word: read, rotate, xor, write back, 512 Ki times
//!   3. random    2 Mi read-modify-writes at LCG-chosen words of the filled set
//!   4. checksum  every 8th word, rotated and xored together
//! ```
//!
//! About 30 million instructions. Only filled words are ever read, so the result does not
//! depend on what the RAM held before; the checksum is printed so that a run under the
//! hypervisor can be checked against the native one.

use elvisor_guest_rt::arch::image_range;

use crate::arch::{self, Buffer};
use crate::results::{Outcome, text};

/// Bytes of the buffer (the bench VM has 128 MiB of RAM).
pub const BUFFER_BYTES: usize = 64 << 20;

/// Where the buffer starts: the first boundary of this many bytes after the image.
const BUFFER_ALIGN: usize = 2 << 20;

/// Random read-modify-writes in phase 3.
const RANDOM_UPDATES: u32 = 2 << 20;

/// Words in a 4 KiB page.
const PAGE_WORDS: usize = 4096 / 8;

/// `first-touch`: blocks of RAM written for the first time, one word each.
const FIRST_TOUCH_BLOCKS: usize = 8;

/// Knuth's MMIX LCG (multiplier and increment).
const LCG_MUL: u64 = 6_364_136_223_846_793_005;
const LCG_INC: u64 = 1_442_695_040_888_963_407;

/// Runs the workload and reports its instruction (tick) count.
pub fn guest_compute() -> Outcome {
    let start = image_range().end.next_multiple_of(BUFFER_ALIGN);
    let Some(mut buffer) = Buffer::new(start..start + BUFFER_BYTES) else {
        return Outcome::Skipped(text!(
            "needs {} MiB of free guest RAM at {start:#x} (outside the image and the DTB)",
            BUFFER_BYTES >> 20
        ));
    };
    // Touch every 4 KiB page once before the clock starts: the figure is the workload in
    // steady state. (Under elvisor this is where each 2 MiB block of RAM is zeroed and mapped
    // on demand; what that first touch costs is `first-touch`. Natively it costs nothing.)
    let mut i = 0;
    while i < buffer.words() {
        buffer.write(i, 0);
        i += PAGE_WORDS;
    }
    let t0 = arch::now();
    let checksum = workload(&mut buffer);
    let t1 = arch::now();
    Outcome::Measured {
        iters: 1,
        total: t1.wrapping_sub(t0) as i64,
        range: None,
        extra: text!("bytes={BUFFER_BYTES} base={start:#x} checksum={checksum:#018x}"),
    }
}

fn workload(buffer: &mut Buffer) -> u64 {
    let words = buffer.words();
    debug_assert!(words.is_power_of_two());

    let mut i = 0;
    while i < words {
        buffer.write(i, (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        i += 8;
    }

    let mut i = 0;
    while i < words {
        let value = buffer.read(i);
        buffer.write(i, value.rotate_left(7) ^ 0x5bd1_e995);
        i += 16;
    }

    let mask = (words - 1) & !7;
    let mut x: u64 = 0x0123_4567_89ab_cdef;
    for _ in 0..RANDOM_UPDATES {
        x = x.wrapping_mul(LCG_MUL).wrapping_add(LCG_INC);
        let index = (x >> 17) as usize & mask;
        let value = buffer.read(index);
        buffer.write(index, value.wrapping_add(x));
    }

    let mut sum = x;
    let mut i = 0;
    while i < words {
        sum = sum.rotate_left(5) ^ buffer.read(i);
        i += 8;
    }
    sum
}

/// `first-touch`: the cost of the first write to a 2 MiB block of RAM that nothing has written
/// since the VM started. Under elvisor such a block is not mapped yet: the write exits, the
/// hypervisor zeroes the block (and cleans it to memory where the CPU lacks FEAT_S2FWB), maps
/// it and retries the write. Natively the write is just a store. Uses the blocks above the
/// guest-compute buffer (with a 2 MiB gap), so it must run before anything else touches them.
pub fn first_touch() -> Outcome {
    let start = image_range().end.next_multiple_of(BUFFER_ALIGN) + BUFFER_BYTES + BUFFER_ALIGN;
    let bytes = FIRST_TOUCH_BLOCKS * BUFFER_ALIGN;
    let Some(mut buffer) = Buffer::new(start..start + bytes) else {
        return Outcome::Skipped(text!(
            "needs {} MiB of free guest RAM at {start:#x}",
            bytes >> 20
        ));
    };
    let block_words = BUFFER_ALIGN / 8;
    let mut total = 0u64;
    for b in 0..FIRST_TOUCH_BLOCKS {
        let t0 = arch::now();
        buffer.write(b * block_words, 1);
        let t1 = arch::now();
        total += t1.wrapping_sub(t0);
    }
    // The same two counter reads around a store to a block written just above.
    let mut base = 0u64;
    for b in 0..FIRST_TOUCH_BLOCKS {
        let t0 = arch::now();
        buffer.write(b * block_words + 1, 2);
        let t1 = arch::now();
        base += t1.wrapping_sub(t0);
    }
    Outcome::Measured {
        iters: FIRST_TOUCH_BLOCKS as u64,
        total: total as i64 - base as i64,
        range: None,
        extra: text!("blocks={FIRST_TOUCH_BLOCKS} base={start:#x}"),
    }
}
