//! The hypervisor console: the physical UART behind a lock, the `log` backend, the
//! multiplexing of VM console output onto it, and the pure parts of console input (the switch
//! key, the router, the per-VM queue of bytes waiting for the VM's UART).
//!
//! Output. Log lines are prefixed `elvisor:`. The VM with input focus is printed byte for byte
//! as it writes (prompts, echo, line editing, colours, any byte), untouched (with
//! `elvisor.console-tags=all`, a `[name] ` prefix starts each of its lines too when several
//! VMs share the console). The other VMs' output is
//! line-buffered and printed a whole line at a time with that prefix, so lines never interleave
//! mid-way. When a log line or another VM's line arrives while the focused VM is in the middle
//! of a line (a prompt), that line is ended, the other line printed, and the focused VM's
//! partial line printed again, so what the person was typing into stays in view.
//!
//! Input. The switch key (default Ctrl-], `elvisor.conswitch=`) pressed three times in a row
//! moves input focus to the next running VM, or from the last one to the management shell
//! (`crate::shell`); every other byte goes to the VM with focus, into its [`PendingInput`]
//! queue, from which its emulated UART takes bytes when it has room, or to the shell.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Metadata, Record};
use spin::Once;

use crate::arch::aarch64::sync::Mutex;

mod input;

pub use input::{
    DEFAULT_SWITCH_KEY, Input, InputRouter, PENDING_INPUT_BYTES, PendingInput, SWITCH_PRESSES,
    key_name, switch_key,
};

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

static UART: Once<&'static dyn ConsoleUart> = Once::new();
/// The console lock, with what the screen shows of the focused VM's current line.
static SCREEN: Mutex<Screen> = Mutex::new(Screen::new());
/// Set when more than one VM shares the console.
static PREFIX_VMS: AtomicBool = AtomicBool::new(false);
/// `elvisor.console-tags=all`: the focused VM's lines are tagged `[name] ` too. By default the
/// focused VM is printed untouched, byte for byte, so full-screen programs (vi, top) and line
/// editing see exactly what they wrote; every other VM's lines are tagged. Tagging all suits a
/// log kept to be read later, where every line must say whose it is.
static TAG_FOCUSED: AtomicBool = AtomicBool::new(false);

/// Installs the console UART. Later calls are ignored.
pub fn init(uart: &'static dyn ConsoleUart) {
    UART.call_once(|| uart);
}

/// Bytes of the focused VM's current line the console keeps to print it again.
const PARTIAL_LINE_BYTES: usize = 256;

/// The state of the physical console's current line.
struct Screen {
    /// The focused VM has printed part of a line (no line feed yet) and the cursor is after it.
    mid_line: bool,
    /// That part, as printed (its prefix included), to print again after a line that broke
    /// in; when it outgrows the buffer it starts again after the prefix.
    partial: [u8; PARTIAL_LINE_BYTES],
    partial_len: usize,
    /// The prefix of the focused VM's line (kept separately for the overflow case).
    prefix_len: usize,
}

impl Screen {
    const fn new() -> Self {
        Self {
            mid_line: false,
            partial: [0; PARTIAL_LINE_BYTES],
            partial_len: 0,
            prefix_len: 0,
        }
    }

    fn record(&mut self, byte: u8) {
        match self.partial.get_mut(self.partial_len) {
            Some(slot) => {
                *slot = byte;
                self.partial_len += 1;
            }
            // Too long to keep: start again after the prefix (a redisplay then shows the
            // prefix and the end of the line).
            None => self.partial_len = self.prefix_len.min(PARTIAL_LINE_BYTES),
        }
    }

    /// Before other output: end the focused VM's partial line.
    fn break_line(&mut self, sink: &mut impl FnMut(u8)) {
        if self.mid_line {
            sink(b'\r');
            sink(b'\n');
        }
    }

    /// After other output: print the focused VM's partial line again.
    fn redisplay(&self, sink: &mut impl FnMut(u8)) {
        if self.mid_line {
            for &b in self.partial.iter().take(self.partial_len) {
                sink(b);
            }
        }
    }

    /// One byte of the focused VM, printed as it is; `prefix` starts each of its lines.
    fn focused_byte(&mut self, prefix: Option<&str>, byte: u8, sink: &mut impl FnMut(u8)) {
        if !self.mid_line {
            self.mid_line = true;
            self.partial_len = 0;
            self.prefix_len = 0;
            if let Some(name) = prefix {
                for b in [b"[", name.as_bytes(), b"] "].into_iter().flatten() {
                    sink(*b);
                    self.record(*b);
                }
                self.prefix_len = self.partial_len;
            }
        }
        sink(byte);
        if byte == b'\n' {
            self.mid_line = false;
            self.partial_len = 0;
        } else {
            self.record(byte);
        }
    }

    /// The focused VM lost focus: its partial line ends here on the screen, and what of it
    /// was kept (without the prefix) goes to `rest`, to start the VM's buffered line.
    fn end_focus(&mut self, rest: &mut alloc::vec::Vec<u8>, sink: &mut impl FnMut(u8)) {
        if self.mid_line
            && let Some(kept) = self.partial.get(self.prefix_len..self.partial_len)
        {
            rest.extend_from_slice(kept);
        }
        self.break_line(sink);
        self.mid_line = false;
        self.partial_len = 0;
    }
}

/// Writes to the physical UART, a line feed as CR LF; remembers whether it ended a line.
struct Raw {
    at_line_start: bool,
}

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
        if let Some(&last) = s.as_bytes().last() {
            self.at_line_start = last == b'\n';
        }
        Ok(())
    }
}

/// Writes one byte to the physical UART, as it is.
fn put(byte: u8) {
    if let Some(u) = UART.get() {
        u.put_byte(byte);
    }
}

/// Prints formatted text, holding the console lock for the whole message. Used by the panic
/// path too, so it gives up on the lock after a while rather than deadlock on a CPU that
/// panicked while holding it. Text is expected to end with a line feed; a focused VM's line
/// it interrupts is printed again after it.
pub fn print(args: fmt::Arguments<'_>) {
    let mut spins = 0u32;
    let mut guard = loop {
        if let Some(g) = SCREEN.try_lock() {
            break Some(g);
        }
        spins += 1;
        if spins > 10_000_000 {
            break None;
        }
        core::hint::spin_loop();
    };
    let mut raw = Raw {
        at_line_start: true,
    };
    if let Some(screen) = guard.as_deref_mut() {
        screen.break_line(&mut put);
    }
    let _ = raw.write_fmt(args);
    if let Some(screen) = guard.as_deref_mut()
        && screen.mid_line
    {
        if !raw.at_line_start {
            put(b'\r');
            put(b'\n');
        }
        screen.redisplay(&mut put);
    }
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

/// What `elvisor.console-tags=` asks for: `others` (the default: the focused VM untouched) or
/// `all` (the focused VM's lines tagged as well). Anything else is refused.
pub fn set_console_tags(value: &str) -> Result<(), &'static str> {
    let all = match value {
        "all" => true,
        "others" => false,
        _ => return Err("is neither `others` nor `all`"),
    };
    TAG_FOCUSED.store(all, Ordering::Relaxed);
    Ok(())
}

/// The management shell's own line (prompt, echo): printed as the focused VM's bytes are,
/// so that a line breaking in ends it and prints it again below.
pub fn shell_bytes(bytes: &[u8]) {
    let mut screen = SCREEN.lock();
    for &b in bytes {
        screen.focused_byte(None, b, &mut put);
    }
}

/// The shell lost the focus: its partial line (the prompt) ends on the screen.
pub fn shell_unfocus() {
    let mut rest = alloc::vec::Vec::new();
    SCREEN.lock().end_focus(&mut rest, &mut put);
}

/// Console output of one VM (the backend of its emulated PL011): byte for byte while the VM
/// has input focus, else line-buffered.
pub struct VmConsole {
    name: alloc::string::String,
    line: alloc::vec::Vec<u8>,
    focused: bool,
}

/// An unfocused VM's console line is printed when it reaches this many bytes, newline or not.
const VM_LINE_BYTES: usize = 256;

impl VmConsole {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            // Allocated once at its bound, not grown by the first long line: the heap in use
            // then stays the same from a VM's first line to its last (the lifecycle soak
            // compares it across resets, and a buffer growing late looks like a leak there).
            line: alloc::vec::Vec::with_capacity(VM_LINE_BYTES),
            focused: false,
        }
    }

    fn prefix(&self) -> Option<&str> {
        PREFIX_VMS
            .load(Ordering::Relaxed)
            .then_some(self.name.as_str())
    }

    /// The prefix of the focused VM's lines: none unless `elvisor.console-tags=all`.
    fn focused_prefix(&self) -> Option<&str> {
        self.prefix()
            .filter(|_| TAG_FOCUSED.load(Ordering::Relaxed))
    }

    fn flush_line(&mut self) {
        let line = Line(&self.line);
        match self.prefix() {
            Some(name) => print(format_args!("[{name}] {line}")),
            None => print(format_args!("{line}")),
        }
        self.line.clear();
    }
}

/// A buffered line's bytes as text: invalid UTF-8 shows as U+FFFD.
struct Line<'a>(&'a [u8]);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{FFFD}")?;
            }
        }
        Ok(())
    }
}

impl crate::vdev::pl011::Pl011Backend for VmConsole {
    fn tx(&mut self, byte: u8) {
        if self.focused {
            let prefix = self.focused_prefix();
            SCREEN.lock().focused_byte(prefix, byte, &mut put);
            return;
        }
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

    fn focus(&mut self, on: bool) {
        if on == self.focused {
            return;
        }
        self.focused = on;
        let mut screen = SCREEN.lock();
        if on {
            // What the VM printed of its current line while it had no focus (a prompt) is
            // shown now, as the start of the line it goes on writing.
            let prefix = self.focused_prefix();
            for &b in &self.line {
                screen.focused_byte(prefix, b, &mut put);
            }
            self.line.clear();
        } else {
            // The partial line (a prompt) stays with the VM: printed again, whole, when the
            // line is complete or when the VM gets the focus back.
            self.line.clear();
            screen.end_focus(&mut self.line, &mut put);
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
mod tests;
