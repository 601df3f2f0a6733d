//! Console input's pure parts: the switch key (`elvisor.conswitch=`), the router that counts
//! its presses and sends every other byte on, and the per-VM queue of bytes waiting for the VM's
//! UART (flow control: bytes wait here rather than being dropped).

use core::fmt;

/// The default switch key: Ctrl-] (0x1d). Not Ctrl-A, which QEMU's `-nographic` terminal,
/// screen, minicom and picocom all take as their own escape key.
pub const DEFAULT_SWITCH_KEY: u8 = 0x1d;

/// How many presses of the switch key in a row move the focus (as Xen's Ctrl-A three times).
pub const SWITCH_PRESSES: u8 = 3;

/// The switch key `elvisor.conswitch=C` asks for: Ctrl-C, for C a letter or one of
/// `\ ] ^ _`. Keys a terminal or a guest needs in a row are refused: Ctrl-C, -D, -Z, -S, -Q
/// (interrupt, end of file, suspend, flow control), Ctrl-H, -I, -J, -M (backspace, tab, line
/// feed, return) and Ctrl-[ (escape, which starts every cursor-key sequence).
pub fn switch_key(value: &str) -> Result<u8, &'static str> {
    let mut chars = value.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return Err("is not one character");
    };
    let c = c.to_ascii_lowercase();
    if !(c.is_ascii_lowercase() || matches!(c, '\\' | ']' | '^' | '_' | '[')) {
        return Err("is not a letter or one of \\ ] ^ _");
    }
    if matches!(c, 'c' | 'd' | 'z' | 's' | 'q' | 'h' | 'i' | 'j' | 'm' | '[') {
        return Err("is a key terminals and guests need");
    }
    // Ctrl-X is X with bits 6 and 5 cleared (ASCII).
    Ok(c as u8 & 0x1f)
}

/// How to write `key` for a person: "Ctrl-]" or "Ctrl-A".
pub fn key_name(key: u8) -> impl fmt::Display {
    struct Name(u8);
    impl fmt::Display for Name {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let c = char::from((self.0 & 0x1f) | 0x40);
            write!(f, "Ctrl-{c}")
        }
    }
    Name(key)
}

/// What a received byte does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input {
    /// Deliver to the VM with focus.
    Byte(u8),
    /// The switch key was pressed [`SWITCH_PRESSES`] times: focus moves on.
    Switch,
    /// Held back (part of a possible switch sequence).
    Held,
}

/// Recognises the switch sequence in console input. Switch-key bytes that turn out not to be
/// a switch are delivered, before the byte that broke the sequence.
#[derive(Clone, Debug)]
pub struct InputRouter {
    key: u8,
    held: u8,
}

impl Default for InputRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl InputRouter {
    pub const fn new() -> Self {
        Self {
            key: DEFAULT_SWITCH_KEY,
            held: 0,
        }
    }

    /// Uses `key` as the switch key from now on.
    pub fn set_key(&mut self, key: u8) {
        self.key = key;
        self.held = 0;
    }

    pub fn key(&self) -> u8 {
        self.key
    }

    /// How many bytes [`InputRouter::feed`] would deliver for `byte` at most: none for the
    /// switch key, else the held switch-key bytes and the byte itself.
    pub fn room_needed(&self, byte: u8) -> usize {
        if byte == self.key {
            0
        } else {
            usize::from(self.held) + 1
        }
    }

    /// Feeds one byte; calls `out` for each event (a broken switch sequence releases the held
    /// bytes first).
    pub fn feed(&mut self, byte: u8, mut out: impl FnMut(Input)) {
        if byte == self.key {
            self.held += 1;
            if self.held >= SWITCH_PRESSES {
                self.held = 0;
                out(Input::Switch);
            } else {
                out(Input::Held);
            }
            return;
        }
        for _ in 0..core::mem::take(&mut self.held) {
            out(Input::Byte(self.key));
        }
        out(Input::Byte(byte));
    }
}

/// Bytes of console input one VM can have waiting for its UART (queue and receive FIFO
/// together; see `vdev::pl011`). Past that the physical UART holds the rest (flow control).
pub const PENDING_INPUT_BYTES: usize = 1024;

/// A VM's console input waiting for room in its UART: a byte ring with room at both ends (a
/// reset gives the bytes the guest had not read back to the front).
#[derive(Clone)]
pub struct PendingInput {
    buf: [u8; PENDING_INPUT_BYTES],
    /// Index of the oldest byte, always below `PENDING_INPUT_BYTES`.
    head: usize,
    /// Number of bytes, at most `PENDING_INPUT_BYTES`.
    len: usize,
}

impl Default for PendingInput {
    fn default() -> Self {
        Self::new()
    }
}

impl PendingInput {
    pub const fn new() -> Self {
        Self {
            buf: [0; PENDING_INPUT_BYTES],
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many more bytes fit.
    pub fn room(&self) -> usize {
        PENDING_INPUT_BYTES - self.len
    }

    /// Appends `byte` (newest); false if full.
    pub fn push_back(&mut self, byte: u8) -> bool {
        if self.len >= PENDING_INPUT_BYTES {
            return false;
        }
        let tail = (self.head + self.len) % PENDING_INPUT_BYTES;
        match self.buf.get_mut(tail) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Puts `byte` in front of every other (the next to be taken); false if full.
    pub fn push_front(&mut self, byte: u8) -> bool {
        if self.len >= PENDING_INPUT_BYTES {
            return false;
        }
        let head = (self.head + PENDING_INPUT_BYTES - 1) % PENDING_INPUT_BYTES;
        match self.buf.get_mut(head) {
            Some(slot) => {
                *slot = byte;
                self.head = head;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Takes the oldest byte.
    pub fn pop_front(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.buf.get(self.head).copied()?;
        self.head = (self.head + 1) % PENDING_INPUT_BYTES;
        self.len -= 1;
        Some(byte)
    }

    /// Drops everything (the VM stopped for good).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}
