//! One test's verdict and its FAIL detail, built from several checks without an allocator.

use core::fmt::{self, Write};

use elvisor_guest_rt::Report;

/// Bytes of detail kept; more is cut with "...".
const DETAIL_BYTES: usize = 1024;

/// The checks of one test: failed expectations and context, in the order they were made.
pub struct Findings {
    buf: [u8; DETAIL_BYTES],
    len: usize,
    truncated: bool,
    failed: bool,
}

impl Findings {
    /// No checks yet (passes if none fails).
    pub fn new() -> Self {
        Self {
            buf: [0; DETAIL_BYTES],
            len: 0,
            truncated: false,
            failed: false,
        }
    }

    /// Records a failure with `detail` unless `ok`.
    pub fn expect(&mut self, ok: bool, detail: fmt::Arguments<'_>) {
        if !ok {
            self.failed = true;
            self.item(detail);
        }
    }

    /// Records a failure with `detail`.
    pub fn fail(&mut self, detail: fmt::Arguments<'_>) {
        self.expect(false, detail);
    }

    /// Adds context to the detail (shown only if the test fails).
    pub fn context(&mut self, detail: fmt::Arguments<'_>) {
        self.item(detail);
    }

    /// Whether any expectation failed so far.
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn item(&mut self, detail: fmt::Arguments<'_>) {
        if self.len > 0 {
            let _ = self.write_str("; ");
        }
        let _ = self.write_fmt(detail);
    }

    fn detail(&self) -> &str {
        // Only whole `&str`s are copied, cut at a char boundary, so this is UTF-8.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("(detail not UTF-8)")
    }

    /// Prints `PASS: name`, or `FAIL: name: detail`.
    pub fn finish(self, report: &mut Report, name: &str) {
        let more = if self.truncated { " ..." } else { "" };
        report.check(name, !self.failed, format_args!("{}{more}", self.detail()));
    }
}

impl Write for Findings {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = DETAIL_BYTES - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}
