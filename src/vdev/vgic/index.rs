//! The vGIC's index of interrupts that may want a list register: a bit per interrupt
//! (`maybe`, set by every change through [`Vgic::irq_mut`]) and a summary bit per word of it
//! (`maybe_words`), so a flush scans only words that may hold one. A scan clears what it finds
//! idle.

use super::kick::low_bits;
use super::state::Vgic;

impl Vgic {
    /// Summary word `sw` of the index, limited to the `maybe` words `[wlo, whi]`.
    #[inline(always)]
    fn summary_in(&self, sw: usize, wlo: usize, whi: usize) -> u64 {
        let sbase = sw * 64;
        let mut words = self.maybe_words.get(sw).copied().unwrap_or(0);
        if sbase < wlo {
            words &= !low_bits(wlo - sbase);
        }
        if whi - sbase < 63 {
            words &= low_bits(whi - sbase + 1);
        }
        words
    }

    /// Word `w` of the index, limited to the flat positions `[lo, hi)`.
    #[inline(always)]
    fn maybe_in_word(&self, w: usize, lo: usize, hi: usize) -> u64 {
        let base = w * 64;
        let mut bits = self.maybe.get(w).copied().unwrap_or(0);
        if base < lo {
            bits &= !low_bits(lo - base);
        }
        if hi - base < 64 {
            bits &= low_bits(hi - base);
        }
        bits
    }

    /// Calls `f` on the indexed (possibly interesting) flat positions in `[lo, hi)`, lowest
    /// first, until it returns true; returns whether one did. See [`Vgic::maybe`]. (Plain
    /// word loops: this runs on every flush, and iterator adapters cost several times more.)
    #[inline(always)]
    pub(super) fn scan_maybe(
        &self,
        lo: usize,
        hi: usize,
        mut f: impl FnMut(usize) -> bool,
    ) -> bool {
        if lo >= hi {
            return false;
        }
        let (wlo, whi) = (lo / 64, (hi - 1) / 64);
        // Words of `maybe` with bits, from the summary, limited to [wlo, whi].
        let mut sw = wlo / 64;
        while sw <= whi / 64 {
            let sbase = sw * 64;
            let mut words = self.summary_in(sw, wlo, whi);
            while words != 0 {
                let w = sbase + words.trailing_zeros() as usize;
                words &= words - 1;
                let base = w * 64;
                let mut bits = self.maybe_in_word(w, lo, hi);
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if f(base + b) {
                        return true;
                    }
                }
            }
            sw += 1;
        }
        false
    }

    /// [`Vgic::scan_maybe`] for the flush: `f` sees every indexed position in `[lo, hi)` and
    /// returns true for an idle interrupt, which leaves the index.
    #[inline(always)]
    pub(super) fn scan_maybe_unindex(
        &mut self,
        lo: usize,
        hi: usize,
        mut f: impl FnMut(&Self, usize) -> bool,
    ) {
        if lo >= hi {
            return;
        }
        let (wlo, whi) = (lo / 64, (hi - 1) / 64);
        let mut sw = wlo / 64;
        while sw <= whi / 64 {
            let sbase = sw * 64;
            let mut words = self.summary_in(sw, wlo, whi);
            let mut empty_words = 0u64;
            while words != 0 {
                let wb = words.trailing_zeros() as usize;
                words &= words - 1;
                let w = sbase + wb;
                let base = w * 64;
                let mut bits = self.maybe_in_word(w, lo, hi);
                let mut idle = 0u64;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if f(self, base + b) {
                        idle |= 1 << b;
                    }
                }
                if let Some(word) = self.maybe.get_mut(w) {
                    *word &= !idle;
                    if *word == 0 {
                        empty_words |= 1 << wb;
                    }
                }
            }
            if let Some(s) = self.maybe_words.get_mut(sw) {
                *s &= !empty_words;
            }
            sw += 1;
        }
    }
}
