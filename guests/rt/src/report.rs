//! Test results in the line format the QEMU system tests parse.
//!
//! ```text
//! <PREFIX> PASS: <name>
//! <PREFIX> FAIL: <name>: <detail>
//! <PREFIX> RESULT: passed=<N> failed=<M>
//! ```
//!
//! A run passes when the RESULT line is present and says `failed=0`; a panic or an unexpected
//! exception prints a FAIL line (with the same prefix) and powers off without one.

use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::println;

/// Longest prefix kept; longer ones are cut.
pub const PREFIX_MAX_BYTES: usize = 16;

/// The prefix until a [`Report`] sets one.
pub const DEFAULT_PREFIX: &str = "GUEST";

// The prefix lives in atomics (plain loads and stores) so the panic and exception handlers can
// read it without locks or `static mut`.
static PREFIX_BYTES: [AtomicU8; PREFIX_MAX_BYTES] = {
    let mut bytes = [const { AtomicU8::new(0) }; PREFIX_MAX_BYTES];
    let mut i = 0;
    while i < DEFAULT_PREFIX.len() {
        bytes[i] = AtomicU8::new(DEFAULT_PREFIX.as_bytes()[i]);
        i += 1;
    }
    bytes
};
static PREFIX_LEN: AtomicUsize = AtomicUsize::new(DEFAULT_PREFIX.len());

/// Sets the prefix of every report line, including those of the panic and exception handlers.
pub fn set_prefix(prefix: &str) {
    let mut len = prefix.len().min(PREFIX_MAX_BYTES);
    while !prefix.is_char_boundary(len) {
        len -= 1;
    }
    for (slot, byte) in PREFIX_BYTES.iter().zip(&prefix.as_bytes()[..len]) {
        slot.store(*byte, Ordering::SeqCst);
    }
    PREFIX_LEN.store(len, Ordering::SeqCst);
}

/// The current prefix, for formatting: `println!("{} FAIL: ...", report::prefix())`.
pub fn prefix() -> Prefix {
    Prefix
}

/// Displays the current prefix.
#[derive(Debug, Clone, Copy)]
pub struct Prefix;

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = PREFIX_LEN.load(Ordering::SeqCst).min(PREFIX_MAX_BYTES);
        let mut bytes = [0u8; PREFIX_MAX_BYTES];
        for (byte, slot) in bytes.iter_mut().zip(&PREFIX_BYTES[..len]) {
            *byte = slot.load(Ordering::SeqCst);
        }
        f.write_str(core::str::from_utf8(&bytes[..len]).unwrap_or(DEFAULT_PREFIX))
    }
}

/// Counts and prints test results.
#[derive(Debug)]
pub struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    /// Starts a report whose lines begin with `prefix` (also used by the panic and exception
    /// handlers from now on).
    pub fn new(prefix: &str) -> Self {
        set_prefix(prefix);
        Self {
            passed: 0,
            failed: 0,
        }
    }

    /// Records a pass: `<PREFIX> PASS: <name>`.
    pub fn pass(&mut self, name: &str) {
        self.passed += 1;
        println!("{} PASS: {name}", prefix());
    }

    /// Records a failure: `<PREFIX> FAIL: <name>: <detail>`.
    pub fn fail(&mut self, name: &str, detail: fmt::Arguments<'_>) {
        self.failed += 1;
        println!("{} FAIL: {name}: {detail}", prefix());
    }

    /// [`pass`](Self::pass) if `ok`, else [`fail`](Self::fail) with `detail`.
    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments<'_>) {
        if ok {
            self.pass(name);
        } else {
            self.fail(name, detail);
        }
    }

    /// Number of passes so far.
    pub fn passed(&self) -> u32 {
        self.passed
    }

    /// Number of failures so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// Prints a free-form line with the prefix: `<PREFIX>: <message>`.
    pub fn note(&self, message: fmt::Arguments<'_>) {
        println!("{}: {message}", prefix());
    }

    /// Prints the final `<PREFIX> RESULT: passed=N failed=M` line.
    pub fn finish(&self) {
        println!(
            "{} RESULT: passed={} failed={}",
            prefix(),
            self.passed,
            self.failed
        );
    }
}
