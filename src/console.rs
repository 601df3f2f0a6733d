//! The hypervisor console: the physical UART behind a lock, the `log` backend, and the
//! multiplexing of VM console output onto it.
//!
//! Log lines are prefixed `elvisor:`; VM output goes through unprefixed when one VM runs, and
//! with a `[name]` prefix per line when several do, so lines never interleave mid-way.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Metadata, Record};
use spin::{Mutex, Once};

/// A byte sink: the physical console UART.
pub trait ConsoleUart: Sync {
    fn put_byte(&self, b: u8);
}

static UART: Once<&'static dyn ConsoleUart> = Once::new();
static LOCK: Mutex<()> = Mutex::new(());
/// Set when more than one VM shares the console.
static PREFIX_VMS: AtomicBool = AtomicBool::new(false);

/// Installs the console UART. Later calls are ignored.
pub fn init(uart: &'static dyn ConsoleUart) {
    UART.call_once(|| uart);
}

struct Raw;
impl Write for Raw {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(u) = UART.get() {
            for b in s.bytes() {
                if b == b'\n' {
                    u.put_byte(b'\r');
                }
                u.put_byte(b);
            }
        }
        Ok(())
    }
}

/// Prints formatted text, holding the console lock for the whole message. Used by the panic
/// path too, so it gives up on the lock after a while rather than deadlock on a CPU that
/// panicked while holding it.
pub fn print(args: fmt::Arguments<'_>) {
    let mut spins = 0u32;
    let guard = loop {
        if let Some(g) = LOCK.try_lock() {
            break Some(g);
        }
        spins += 1;
        if spins > 10_000_000 {
            break None;
        }
        core::hint::spin_loop();
    };
    let _ = Raw.write_fmt(args);
    drop(guard);
}

#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Turns on per-line VM prefixes (several VMs on one console).
pub fn set_vm_prefixes(on: bool) {
    PREFIX_VMS.store(on, Ordering::Relaxed);
}

/// Line-buffered console output of one VM (the backend of its emulated PL011).
pub struct VmConsole {
    name: alloc::string::String,
    line: alloc::vec::Vec<u8>,
}

impl VmConsole {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            line: alloc::vec::Vec::new(),
        }
    }

    fn flush_line(&mut self) {
        let text = core::str::from_utf8(&self.line).unwrap_or("<non-UTF-8 output>");
        if PREFIX_VMS.load(Ordering::Relaxed) {
            print(format_args!("[{}] {}", self.name, text));
        } else {
            print(format_args!("{}", text));
        }
        self.line.clear();
    }
}

impl crate::vdev::pl011::Pl011Backend for VmConsole {
    fn tx(&mut self, byte: u8) {
        match byte {
            b'\r' => {}
            b'\n' => {
                self.line.push(b'\n');
                self.flush_line();
            }
            b => {
                self.line.push(b);
                // Bound the buffer: a guest that never sends a newline still gets printed.
                if self.line.len() >= 256 {
                    self.flush_line();
                }
            }
        }
    }
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        match r.level() {
            Level::Info => print(format_args!("elvisor: {}\n", r.args())),
            l => print(format_args!("elvisor: {}: {}\n", l, r.args())),
        }
    }
    fn flush(&self) {}
}

/// The log level requested by `elvisor.log=LEVEL` in the hypervisor's bootargs (default
/// info). Unknown values are reported by the caller and fall back to info.
pub fn level_from_bootargs(bootargs: &str) -> Result<LevelFilter, &str> {
    for arg in bootargs.split_ascii_whitespace() {
        if let Some(v) = arg.strip_prefix("elvisor.log=") {
            return match v {
                "off" => Ok(LevelFilter::Off),
                "error" => Ok(LevelFilter::Error),
                "warn" => Ok(LevelFilter::Warn),
                "info" => Ok(LevelFilter::Info),
                "debug" => Ok(LevelFilter::Debug),
                "trace" => Ok(LevelFilter::Trace),
                other => Err(other),
            };
        }
    }
    Ok(LevelFilter::Info)
}

/// Installs the logger at `level`.
pub fn init_logger(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// The value of `key=` in bootargs, if present.
pub fn bootarg<'a>(bootargs: &'a str, key: &str) -> Option<&'a str> {
    bootargs
        .split_ascii_whitespace()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_and_bootargs() {
        assert_eq!(level_from_bootargs(""), Ok(LevelFilter::Info));
        assert_eq!(level_from_bootargs("console=x elvisor.log=debug"), Ok(LevelFilter::Debug));
        assert_eq!(level_from_bootargs("elvisor.log=loud"), Err("loud"));
        assert_eq!(bootarg("a=1 elvisor.vhe=off", "elvisor.vhe"), Some("off"));
        assert_eq!(bootarg("elvisor.vhex=1", "elvisor.vhe"), None);
    }
}
