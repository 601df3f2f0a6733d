//! elvisor resetter guest: resets its own VM with PSCI SYSTEM_RESET until
//! `elvisor,reset-count` reaches `resetter.resets`, checking on every boot that the reset gave
//! it fresh RAM and a freshly loaded image. The small VM of the lifecycle soak.
//!
//! Bootargs (`/chosen/bootargs` of the VM):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `resetter.resets=N` | 10 | resets before the RESULT line |
//! | `resetter.every=K` | 100 | a progress note every K boots (0: none) |
//!
//! ```text
//!   boot k (reset-count k < N): .data marker still its initial value?   (image reloaded)
//!                               RAM markers all zero?                   (RAM zeroed)
//!                               dirty both -> SYSTEM_RESET
//!   boot N:                     the same checks, then
//!   RESETTER PASS: resets       (N resets, every boot fresh)
//!   RESETTER RESULT: passed=1 failed=0, then PSCI SYSTEM_OFF
//! ```
//!
//! A boot that finds a dirty word prints `RESETTER FAIL: fresh-boot: ...` and powers off, so
//! the run ends short of N. Each boot costs a few microseconds of guest time: the soak
//! measures the hypervisor's reset, not the guest.
//!
//! Without a hypervisor (bare QEMU) there is no reset count: it fails `resets` at once.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};

use elvisor_guest_rt::mem;
use elvisor_guest_rt::smccc::psci;
use elvisor_guest_rt::{BootInfo, Report};

elvisor_guest_rt::entry!(main);

const DEFAULT_RESETS: u32 = 10;
const DEFAULT_EVERY: u32 = 100;
/// RAM markers: one word in the middle of each eighth of guest RAM (those that fall on the
/// image or the DTB are skipped), so a reset that zeroes only part of RAM is caught.
const MARKERS: usize = 8;

/// The initial value of [`DATA_MARKER`], in `.data`: a reset must reload the image.
const DATA_MAGIC: u32 = 0x5eed_da7a;
/// A `.data` variable with a non-zero initialiser, to tell a reloaded image from a reused one.
static DATA_MARKER: AtomicU32 = AtomicU32::new(DATA_MAGIC);

fn main(boot: &BootInfo) {
    let mut report = Report::new("RESETTER");
    let resets = boot
        .bootarg_parse("resetter.resets")
        .unwrap_or(DEFAULT_RESETS);
    let every = boot
        .bootarg_parse("resetter.every")
        .unwrap_or(DEFAULT_EVERY);
    let Some(count) = boot.reset_count else {
        report.fail(
            "resets",
            format_args!("/chosen has no elvisor,reset-count (not under elvisor?)"),
        );
        report.finish();
        return;
    };
    if count == 0 || (every != 0 && count.is_multiple_of(every)) || count >= resets {
        report.note(format_args!("boot after reset {count} of {resets}"));
    }

    let markers = markers(boot);
    if markers.iter().all(Option::is_none) {
        report.fail("resets", format_args!("no free RAM word for a marker"));
        report.finish();
        return;
    }
    let data = DATA_MARKER.load(Ordering::SeqCst);
    if data != DATA_MAGIC {
        report.fail(
            "fresh-boot",
            format_args!(
                "after reset {count}: .data marker is {data:#x}, want {DATA_MAGIC:#x} \
                 (the image was not reloaded)"
            ),
        );
        report.finish();
        return;
    }
    for (addr, word) in markers.iter().flatten() {
        let value = word.load(Ordering::SeqCst);
        if value != 0 {
            report.fail(
                "fresh-boot",
                format_args!(
                    "after reset {count}: RAM word at {addr:#x} is {value:#x}, want 0 \
                     (RAM was not zeroed)"
                ),
            );
            report.finish();
            return;
        }
    }

    if count < resets {
        // Leave something behind for the next boot to find gone: the count in every marker
        // (never 0: the top bit set) and a changed .data marker.
        for (_, word) in markers.iter().flatten() {
            word.store(0x8000_0000 | count, Ordering::SeqCst);
        }
        DATA_MARKER.store(!DATA_MAGIC, Ordering::SeqCst);
        let ret = psci::system_reset();
        report.fail(
            "resets",
            format_args!("PSCI SYSTEM_RESET returned {ret} at reset-count {count}"),
        );
        report.finish();
        return;
    }
    report.check(
        "resets",
        count == resets,
        format_args!("reset-count is {count}, past the {resets} asked for"),
    );
    report.finish();
}

/// The marker words: (IPA, word) in the middle of each eighth of `/memory`, `None` where that
/// falls on the image or the DTB.
fn markers(boot: &BootInfo) -> [Option<(usize, &'static AtomicU32)>; MARKERS] {
    let mut out = [None; MARKERS];
    let Some(ram) = boot.ram.clone() else {
        return out;
    };
    let eighth = (ram.end - ram.start) / MARKERS;
    for (i, slot) in out.iter_mut().enumerate() {
        let addr = (ram.start + i * eighth + eighth / 2) & !3;
        *slot = mem::free_ram_word(addr).map(|w| (addr, w));
    }
    out
}
