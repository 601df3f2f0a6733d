//! The hypervisor console: the physical UART behind a lock, the `log` backend, and the
//! multiplexing of VM console output onto it.
//!
//! Log lines are prefixed `elvisor:`; VM output goes through unprefixed when one VM runs, and
//! with a `[name]` prefix per line when several do, so lines never interleave mid-way.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Metadata, Record};
use spin::Once;

use crate::arch::aarch64::sync::Mutex;

/// A byte sink: the physical console UART.
pub trait ConsoleUart: Sync {
    fn put_byte(&self, b: u8);
    /// A received byte, if one is waiting.
    fn get_byte(&self) -> Option<u8>;
}

/// Reads one received byte from the console UART.
pub fn get_byte() -> Option<u8> {
    UART.get().and_then(|u| u.get_byte())
}

/// Ctrl-A: pressed three times in a row, it moves console input to the next VM (as Xen).
pub const ESCAPE: u8 = 0x01;

/// Where a received byte goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input {
    /// Deliver to VM number `vm` (index into the running VMs).
    ToVm { vm: usize, byte: u8 },
    /// Focus moved to VM `vm`.
    Focus { vm: usize },
    /// Held back (part of a possible escape sequence).
    Held,
}

/// Routes console input to the VM with focus; three Ctrl-A in a row switch focus. Ctrl-A
/// bytes that turn out not to be an escape are delivered.
#[derive(Clone, Debug, Default)]
pub struct InputRouter {
    focus: usize,
    escapes: u8,
}

impl InputRouter {
    pub const fn new() -> Self {
        Self {
            focus: 0,
            escapes: 0,
        }
    }

    pub fn focus(&self) -> usize {
        self.focus
    }

    /// Feeds one byte; `vms` is how many VMs can take input. Calls `out` for each event
    /// (a broken escape sequence releases the held Ctrl-A bytes first).
    pub fn feed(&mut self, byte: u8, vms: usize, mut out: impl FnMut(Input)) {
        let vms = vms.max(1);
        self.focus %= vms;
        if byte == ESCAPE {
            self.escapes += 1;
            if self.escapes == 3 {
                self.escapes = 0;
                self.focus = (self.focus + 1) % vms;
                out(Input::Focus { vm: self.focus });
            } else {
                out(Input::Held);
            }
            return;
        }
        for _ in 0..core::mem::take(&mut self.escapes) {
            out(Input::ToVm {
                vm: self.focus,
                byte: ESCAPE,
            });
        }
        out(Input::ToVm {
            vm: self.focus,
            byte,
        });
    }
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

/// A VM's console line is printed when it reaches this many bytes, newline or not.
const VM_LINE_BYTES: usize = 256;

impl VmConsole {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            // Allocated once at its bound, not grown by the first long line: the heap in use
            // then stays the same from a VM's first line to its last (the lifecycle soak
            // compares it across resets, and a buffer growing late looks like a leak there).
            line: alloc::vec::Vec::with_capacity(VM_LINE_BYTES),
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
                if self.line.len() >= VM_LINE_BYTES {
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
    fn input_router_escape() {
        let mut r = InputRouter::default();
        let mut ev = alloc::vec::Vec::new();
        for b in [b'a', ESCAPE, ESCAPE, b'b', ESCAPE, ESCAPE, ESCAPE, b'c'] {
            r.feed(b, 2, |e| ev.push(e));
        }
        assert_eq!(
            ev,
            [
                Input::ToVm { vm: 0, byte: b'a' },
                Input::Held,
                Input::Held,
                Input::ToVm {
                    vm: 0,
                    byte: ESCAPE
                },
                Input::ToVm {
                    vm: 0,
                    byte: ESCAPE
                },
                Input::ToVm { vm: 0, byte: b'b' },
                Input::Held,
                Input::Held,
                Input::Focus { vm: 1 },
                Input::ToVm { vm: 1, byte: b'c' },
            ]
        );
        // One VM: focus stays.
        let mut r = InputRouter::default();
        for _ in 0..3 {
            r.feed(ESCAPE, 1, |_| {});
        }
        assert_eq!(r.focus(), 0);
    }

    #[test]
    fn log_level_and_bootargs() {
        assert_eq!(level_from_bootargs(""), Ok(LevelFilter::Info));
        assert_eq!(
            level_from_bootargs("console=x elvisor.log=debug"),
            Ok(LevelFilter::Debug)
        );
        assert_eq!(level_from_bootargs("elvisor.log=loud"), Err("loud"));
        assert_eq!(bootarg("a=1 elvisor.vhe=off", "elvisor.vhe"), Some("off"));
        assert_eq!(bootarg("elvisor.vhex=1", "elvisor.vhe"), None);
    }
}
