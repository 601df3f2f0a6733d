//! Benchmark outcomes and the lines they are printed as.
//!
//! ```text
//! BENCH name=<name> iters=<n> total=<ticks> per_iter=<ticks/iter, 2 decimals> unit=ticks [key=value ...]
//! BENCH name=<name> skipped reason=<text to the end of the line>
//! BENCH name=<name> failed reason=<text to the end of the line>
//! ```
//!
//! `total` is the measured count minus the empty-loop count (it can be slightly negative when
//! an operation costs nothing, as natively). The unit is counter ticks; `scripts/bench` knows
//! the run was under `-icount shift=0` with a 1 GHz counter (`BENCH info cntfrq_hz=...`), where a
//! tick is one instruction. A human-readable table of everything follows at the end.

use core::fmt::{self, Write};

use elvisor_guest_rt::{print, println};

/// A short text kept without a heap (reasons, extra fields). Longer text is cut.
#[derive(Clone, Copy)]
pub struct Text {
    bytes: [u8; Self::CAPACITY],
    len: usize,
}

impl Text {
    const CAPACITY: usize = 120;

    /// An empty text.
    pub const fn new() -> Self {
        Self {
            bytes: [0; Self::CAPACITY],
            len: 0,
        }
    }

    /// The text formatted from `args`.
    pub fn from_args(args: fmt::Arguments<'_>) -> Self {
        let mut text = Self::new();
        let _ = text.write_fmt(args);
        text
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        // Only whole characters are ever appended (see `write_str`).
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut buf = [0; 4];
            let encoded = c.encode_utf8(&mut buf).as_bytes();
            if self.len + encoded.len() > Self::CAPACITY {
                break;
            }
            self.bytes[self.len..self.len + encoded.len()].copy_from_slice(encoded);
            self.len += encoded.len();
        }
        Ok(())
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `format_args!` into a [`Text`].
macro_rules! text {
    ($($arg:tt)*) => { $crate::results::Text::from_args(format_args!($($arg)*)) };
}
pub(crate) use text;

/// What one benchmark gave.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// A figure: `total` ticks over `iters` iterations (already minus the empty loop).
    Measured {
        /// Iterations (or rounds).
        iters: u64,
        /// Ticks, all iterations together.
        total: i64,
        /// Smallest and largest single round, for round-based benchmarks.
        range: Option<(i64, i64)>,
        /// Extra `key=value` fields for the line.
        extra: Text,
    },
    /// The platform (or the hypervisor) lacks what the benchmark needs.
    Skipped(Text),
    /// The benchmark ran and something went wrong (an interrupt never came, a wrong value).
    Failed(Text),
}

impl Outcome {
    /// A figure without extras.
    pub fn measured(iters: u64, total: i64) -> Self {
        Self::Measured {
            iters,
            total,
            range: None,
            extra: Text::new(),
        }
    }
}

/// Hundredths of `total / iters`, rounded half away from zero.
fn per_iter_hundredths(total: i64, iters: u64) -> i128 {
    let iters = i128::from(iters.max(1));
    let scaled = i128::from(total) * 100;
    let half = iters / 2;
    if scaled >= 0 {
        (scaled + half) / iters
    } else {
        (scaled - half) / iters
    }
}

/// `x.yy` from hundredths.
struct Fixed2(i128);

impl fmt::Display for Fixed2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let text = text!("{sign}{}.{:02}", abs / 100, abs % 100);
        f.pad(text.as_str())
    }
}

/// Benchmarks run so far, in order, for the closing table.
pub struct Results {
    entries: [Option<(&'static str, Outcome)>; Self::MAX],
    len: usize,
}

impl Results {
    const MAX: usize = 16;

    /// No results yet.
    pub fn new() -> Self {
        Self {
            entries: [None; Self::MAX],
            len: 0,
        }
    }

    /// Prints the machine-readable line for `name` and keeps the outcome for the table.
    pub fn add(&mut self, name: &'static str, outcome: Outcome) {
        print_line(name, &outcome);
        if self.len < Self::MAX {
            self.entries[self.len] = Some((name, outcome));
            self.len += 1;
        }
    }

    /// The human-readable table (lines start with `BENCH:` so the parser skips them).
    pub fn print_table(&self) {
        println!("BENCH: {:-<78}", "");
        println!(
            "BENCH: {:<18} {:>6} {:>14} {:>12}  {}",
            "benchmark", "iters", "ticks/iter", "total", "notes"
        );
        println!("BENCH: {:-<78}", "");
        for (name, outcome) in self.entries[..self.len].iter().flatten() {
            match outcome {
                Outcome::Measured {
                    iters,
                    total,
                    range,
                    extra,
                } => {
                    let per = Fixed2(per_iter_hundredths(*total, *iters));
                    match range {
                        Some((min, max)) => println!(
                            "BENCH: {name:<18} {iters:>6} {per:>14} {total:>12}  min {min} max {max} {extra}"
                        ),
                        None => {
                            println!("BENCH: {name:<18} {iters:>6} {per:>14} {total:>12}  {extra}")
                        }
                    }
                }
                Outcome::Skipped(reason) => {
                    println!(
                        "BENCH: {name:<18} {:>6} {:>14} {:>12}  not yet supported: {reason}",
                        "-", "-", "-"
                    )
                }
                Outcome::Failed(reason) => {
                    println!(
                        "BENCH: {name:<18} {:>6} {:>14} {:>12}  FAILED: {reason}",
                        "-", "-", "-"
                    )
                }
            }
        }
        println!("BENCH: {:-<78}", "");
    }
}

fn print_line(name: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Measured {
            iters,
            total,
            range,
            extra,
        } => {
            let per = Fixed2(per_iter_hundredths(*total, *iters));
            print!("BENCH name={name} iters={iters} total={total} per_iter={per} unit=ticks");
            if let Some((min, max)) = range {
                print!(" min={min} max={max}");
            }
            if !extra.as_str().is_empty() {
                print!(" {extra}");
            }
            println!();
        }
        Outcome::Skipped(reason) => println!("BENCH name={name} skipped reason={reason}"),
        Outcome::Failed(reason) => println!("BENCH name={name} failed reason={reason}"),
    }
}
