//! The shell's line editor: printable ASCII in, echo out; backspace, Ctrl-U, Ctrl-C, Enter.
//!
//! Everything a terminal can send is taken without a panic: cursor keys and other escape
//! sequences are swallowed whole, CR LF counts as one Enter, a line longer than
//! [`LINE_BYTES`] or one with bytes that are not printable ASCII (control bytes, UTF-8,
//! anything else) is refused as a whole when Enter comes, so a command never runs truncated
//! or with bytes its user did not see.

use alloc::string::String;

/// The longest line the shell takes (more is refused with one bell, and the line with it).
pub const LINE_BYTES: usize = 128;

const BELL: u8 = 0x07;
const BACKSPACE: u8 = 0x08;
const DELETE: u8 = 0x7f;
const CTRL_C: u8 = 0x03;
const CTRL_U: u8 = 0x15;
const ESC: u8 = 0x1b;

/// What Enter (or Ctrl-C) handed over.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Entered {
    /// A line of printable ASCII (possibly empty).
    Line(String),
    /// The line outgrew [`LINE_BYTES`]; nothing is run.
    TooLong,
    /// The line had bytes that are not printable ASCII; nothing is run.
    Foreign,
    /// Ctrl-C: the line is dropped.
    Cancelled,
}

/// Where the editor is in an escape sequence (ESC, ESC [ or ESC O, then parameters).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Escape {
    None,
    /// After ESC.
    Start,
    /// After ESC [ or ESC O: parameter and intermediate bytes until a final byte.
    Sequence,
}

/// The line being typed.
#[derive(Clone, Debug)]
pub struct LineEditor {
    buf: [u8; LINE_BYTES],
    len: usize,
    /// A printable byte was refused because the line was full.
    too_long: bool,
    /// A byte that is not printable ASCII arrived (and was not shown).
    foreign: bool,
    escape: Escape,
    /// The last byte was a carriage return (a line feed right after it is the same Enter).
    after_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_BYTES],
            len: 0,
            too_long: false,
            foreign: false,
            escape: Escape::None,
            after_cr: false,
        }
    }

    /// What has been typed of the current line (shown again after the prompt when the shell
    /// gets the focus back).
    pub fn text(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    fn clear(&mut self) {
        self.len = 0;
        self.too_long = false;
        self.foreign = false;
        self.escape = Escape::None;
    }

    /// Feeds one byte; `echo` gets what the terminal should show. Returns what Enter or
    /// Ctrl-C completed.
    pub fn feed(&mut self, byte: u8, echo: &mut impl FnMut(u8)) -> Option<Entered> {
        let after_cr = core::mem::take(&mut self.after_cr);
        // A control byte ends an escape sequence and counts on its own (an Enter typed
        // after a lone ESC is still an Enter).
        match self.escape {
            Escape::Start if byte >= 0x20 => {
                self.escape = if byte == b'[' || byte == b'O' {
                    Escape::Sequence
                } else {
                    Escape::None
                };
                return None;
            }
            Escape::Sequence if byte >= 0x20 => {
                // ECMA-48: parameter bytes 0x30..=0x3f, intermediates 0x20..=0x2f, then one
                // final byte 0x40..=0x7e. Anything else ends the sequence too.
                if !(0x20..=0x3f).contains(&byte) {
                    self.escape = Escape::None;
                }
                return None;
            }
            _ => self.escape = Escape::None,
        }
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\n' && after_cr {
                    return None;
                }
                self.after_cr = byte == b'\r';
                echo(b'\r');
                echo(b'\n');
                let entered = if self.too_long {
                    Entered::TooLong
                } else if self.foreign {
                    Entered::Foreign
                } else {
                    Entered::Line(self.text().iter().map(|&b| char::from(b)).collect())
                };
                self.clear();
                Some(entered)
            }
            BACKSPACE | DELETE => {
                if self.len > 0 {
                    self.len -= 1;
                    for b in [BACKSPACE, b' ', BACKSPACE] {
                        echo(b);
                    }
                }
                None
            }
            CTRL_U => {
                for _ in 0..self.len {
                    for b in [BACKSPACE, b' ', BACKSPACE] {
                        echo(b);
                    }
                }
                self.clear();
                None
            }
            CTRL_C => {
                for b in *b"^C\r\n" {
                    echo(b);
                }
                self.clear();
                Some(Entered::Cancelled)
            }
            ESC => {
                self.escape = Escape::Start;
                None
            }
            b'\t' | 0x20..=0x7e => {
                let b = if byte == b'\t' { b' ' } else { byte };
                match self.buf.get_mut(self.len) {
                    Some(slot) => {
                        *slot = b;
                        self.len += 1;
                        echo(b);
                    }
                    None => {
                        if !self.too_long {
                            echo(BELL);
                        }
                        self.too_long = true;
                    }
                }
                None
            }
            _ => {
                if !self.foreign {
                    echo(BELL);
                }
                self.foreign = true;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn feed_all(ed: &mut LineEditor, bytes: &[u8]) -> (Vec<u8>, Vec<Entered>) {
        let mut echo = Vec::new();
        let mut out = Vec::new();
        for &b in bytes {
            if let Some(e) = ed.feed(b, &mut |x| echo.push(x)) {
                out.push(e);
            }
        }
        (echo, out)
    }

    fn line(s: &str) -> Entered {
        Entered::Line(s.into())
    }

    #[test]
    fn typing_editing_enter() {
        let mut ed = LineEditor::new();
        let (echo, out) = feed_all(&mut ed, b"lisx\x7ft\r\n");
        assert_eq!(echo, b"lisx\x08 \x08t\r\n");
        assert_eq!(out, [line("list")]);
        // CR LF is one Enter; a lone LF is one too; an empty line is handed over.
        let (_, out) = feed_all(&mut ed, b"a\nb\r\r\n");
        assert_eq!(out, [line("a"), line("b"), line("")]);
        // Backspace at the start of a line shows nothing.
        let (echo, _) = feed_all(&mut ed, b"\x08\x7f");
        assert!(echo.is_empty());
        // Ctrl-U erases what was typed, on screen too; tab is a space.
        let (echo, out) = feed_all(&mut ed, b"ab\x15c\td\r");
        assert_eq!(echo, b"ab\x08 \x08\x08 \x08c d\r\n");
        assert_eq!(out, [line("c d")]);
        // Ctrl-C drops the line.
        let (echo, out) = feed_all(&mut ed, b"stop 0\x03");
        assert_eq!(echo, b"stop 0^C\r\n");
        assert_eq!(out, [Entered::Cancelled]);
        assert!(ed.text().is_empty());
    }

    #[test]
    fn escape_sequences_are_swallowed() {
        let mut ed = LineEditor::new();
        // Cursor up, F5 (ESC [ 1 5 ~), SS3 F1 (ESC O P), Alt-x.
        let (echo, out) = feed_all(&mut ed, b"l\x1b[A\x1b[15~i\x1bOPs\x1bxt\r");
        assert_eq!(echo, b"list\r\n");
        assert_eq!(out, [line("list")]);
        // Enter right after ESC or inside a sequence is still Enter.
        let (_, out) = feed_all(&mut ed, b"a\x1b\rb\x1b[1\r");
        assert_eq!(out, [line("a"), line("b")]);
    }

    #[test]
    fn long_lines_are_refused_whole() {
        let mut ed = LineEditor::new();
        let mut bytes = alloc::vec![b'x'; LINE_BYTES + 1000];
        bytes.push(b'\r');
        let (echo, out) = feed_all(&mut ed, &bytes);
        // The line as far as it fits, one bell, then Enter.
        assert_eq!(echo.len(), LINE_BYTES + 1 + 2);
        assert_eq!(echo.iter().filter(|&&b| b == BELL).count(), 1);
        assert_eq!(out, [Entered::TooLong]);
        // The next line is fresh.
        let (_, out) = feed_all(&mut ed, b"help\r");
        assert_eq!(out, [line("help")]);
        // Exactly LINE_BYTES is fine.
        let mut bytes = alloc::vec![b'y'; LINE_BYTES];
        bytes.push(b'\r');
        let (_, out) = feed_all(&mut ed, &bytes);
        assert!(matches!(&out[..], [Entered::Line(l)] if l.len() == LINE_BYTES));
    }

    #[test]
    fn foreign_bytes_refuse_the_line() {
        let mut ed = LineEditor::new();
        let (echo, out) = feed_all(&mut ed, b"st\xc3\xa9op\x01\xff\r");
        assert_eq!(echo, b"st\x07op\r\n");
        assert_eq!(out, [Entered::Foreign]);
        // Every byte value, in any order, never panics and never echoes a byte >= 0x80.
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let (echo, _) = feed_all(&mut ed, &all);
        assert!(echo.iter().all(|&b| b < 0x80));
    }
}
