//! The PL011's receive FIFO (DDI 0183G §2.4.3): a ring of UARTDR-format entries.

use super::RX_FIFO_DEPTH;

/// Marks a receive-FIFO entry that came from the line (console input), not through loopback:
/// only those go back to the input queue on a reset. Above UARTDR's bits, so never read.
pub(super) const ENTRY_FROM_LINE: u16 = 1 << 15;

/// The receive FIFO: a ring of UARTDR-format entries (byte plus error bits).
pub(super) struct RxFifo {
    entries: [u16; RX_FIFO_DEPTH],
    /// Index of the oldest entry, always below `RX_FIFO_DEPTH`.
    head: usize,
    /// Number of entries, at most `RX_FIFO_DEPTH`.
    len: usize,
}

impl RxFifo {
    pub(super) const fn new() -> Self {
        Self {
            entries: [0; RX_FIFO_DEPTH],
            head: 0,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Appends `entry` unless the FIFO already holds `capacity` entries (or is physically full).
    pub(super) fn push(&mut self, entry: u16, capacity: usize) -> bool {
        if self.len >= capacity.min(RX_FIFO_DEPTH) {
            return false;
        }
        // head < DEPTH and len < DEPTH: no overflow, and the index is in range.
        let tail = (self.head + self.len) % RX_FIFO_DEPTH;
        match self.entries.get_mut(tail) {
            Some(slot) => {
                *slot = entry;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    pub(super) fn pop(&mut self) -> Option<u16> {
        if self.len == 0 {
            return None;
        }
        let entry = self.entries.get(self.head).copied()?;
        self.head = (self.head + 1) % RX_FIFO_DEPTH;
        self.len -= 1;
        Some(entry)
    }
}
