//! Emulated PL061 GPIO controller (ARM PrimeCell General Purpose Input/Output, DDI 0190B) as a
//! pure state machine: eight lines whose inputs the hypervisor drives ([`Pl061::set_input`]),
//! with the PL061's edge, both-edge and level interrupt detection. elvisor puts one on every
//! VM's bus where QEMU virt has its own, with a `gpio-keys` power button on line 3.
//!
//! Choices where an emulation has to depart from the silicon, or the TRM leaves room:
//!
//! * **The pins.** A line's pin is the output register's bit when GPIODIR makes it an output,
//!   else the level the hypervisor drives ([`Pl061::set_input`]; nothing else drives a pin).
//!   GPIOAFSEL is storage only: a line under "hardware control" has no hardware behind it and
//!   behaves as under software control. Inputs are the outside world: a reset of the
//!   controller (VM reset) leaves them as they are.
//! * **Interrupt detection runs on the pins**, so an output line the guest toggles raises its
//!   own edge interrupts, and a change of GPIODIR that changes a pin is an edge too. Edges are
//!   latched in the raw status (GPIORIS) whatever GPIOIE says; level-sensitive lines' GPIORIS
//!   bits follow the pin and cannot be cleared through GPIOIC (TRM §3.3.9). Changing GPIOIS,
//!   GPIOIBE or GPIOIEV detects nothing by itself and keeps latched edges.
//! * **The interrupt output** (GPIOINTR) is high while any GPIOMIS bit is set; it goes to a
//!   level-sensitive SPI.
//! * **Accesses.** The registers are 8 bits wide in 32-bit words. Byte, halfword and word
//!   accesses aligned to their size are taken: the bits above the register read as zero and
//!   are ignored on writes, so a byte at offset 1, 2 or 3 of a word is a reserved byte (zero,
//!   writes ignored). A doubleword or a misaligned access is refused (the caller injects an
//!   external abort). Reserved words read as zero and ignore writes.
//!
//! Register window (DDI 0190B §3.2):
//!
//! ```text
//!   0x000-0x3FC GPIODATA   address bits [9:2] mask the lines a read sees or a write changes
//!   0x400 GPIODIR          0x414 GPIORIS (RO)     0x420 GPIOAFSEL
//!   0x404 GPIOIS           0x418 GPIOMIS (RO)     0xFE0-0xFEC GPIOPeriphID0-3 (RO)
//!   0x408 GPIOIBE          0x41C GPIOIC (WO)      0xFF0-0xFFC GPIOPCellID0-3 (RO)
//!   0x40C GPIOIEV          anything else: reserved, RAZ/WI
//!   0x410 GPIOIE
//! ```
#![forbid(unsafe_code)]

use super::{AccessWidth, MmioDevice, MmioError, VcpuId};

/// Size of the register window.
pub const WINDOW_SIZE_BYTES: u64 = 0x1000;
/// Number of GPIO lines.
pub const LINES: u8 = 8;

/// Register offsets (DDI 0190B §3.2).
pub mod offset {
    /// Last word of the GPIODATA window (0x000-0x3FC).
    pub const GPIODATA_END: u64 = 0x3FC;
    pub const GPIODIR: u64 = 0x400;
    pub const GPIOIS: u64 = 0x404;
    pub const GPIOIBE: u64 = 0x408;
    pub const GPIOIEV: u64 = 0x40C;
    pub const GPIOIE: u64 = 0x410;
    pub const GPIORIS: u64 = 0x414;
    pub const GPIOMIS: u64 = 0x418;
    pub const GPIOIC: u64 = 0x41C;
    pub const GPIOAFSEL: u64 = 0x420;
    pub const GPIOPERIPHID0: u64 = 0xFE0;
    pub const GPIOPCELLID3: u64 = 0xFFC;
}

/// GPIOPeriphID0-3 and GPIOPCellID0-3 (DDI 0190B §3.3.11-3.3.12): part number 0x061,
/// designer 0x41 (ARM), revision 0, and the PrimeCell identification 0xB105F00D, which
/// Linux's AMBA bus reads to bind the `pl061` driver.
const ID: [u32; 8] = [0x61, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

/// The PL061 model.
#[derive(Clone, Debug, Default)]
pub struct Pl061 {
    /// Levels the hypervisor drives on the lines (their pins while they are inputs).
    input: u8,
    /// The output register: GPIODATA writes, driven on the lines GPIODIR makes outputs.
    data_out: u8,
    dir: u8,
    is: u8,
    ibe: u8,
    iev: u8,
    ie: u8,
    afsel: u8,
    /// Latched edge interrupts (GPIORIS bits of edge-sensitive lines).
    edges: u8,
    /// Lines the guest has read high from GPIODATA since their input last rose.
    sampled: u8,
}

impl Pl061 {
    /// A controller in its reset state (every register zero: all lines inputs, interrupts
    /// masked) with every input low.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reset (VM reset): the registers return to zero; the inputs stay as driven.
    pub fn reset(&mut self) {
        *self = Self {
            input: self.input,
            ..Self::default()
        };
    }

    /// The level on every line's pin.
    fn pins(&self) -> u8 {
        (self.data_out & self.dir) | (self.input & !self.dir)
    }

    /// Runs interrupt detection for the pins going from `old` to their current levels.
    fn detect(&mut self, old: u8) {
        let new = self.pins();
        let changed = old ^ new;
        let rising = changed & new;
        let falling = changed & old;
        // GPIOIBE overrides GPIOIEV for edge-sensitive lines (GPIOIS = 0).
        let single = (self.iev & rising) | (!self.iev & falling);
        let hit = (self.ibe & changed) | (!self.ibe & single);
        self.edges |= hit & !self.is;
    }

    /// Drives input `line` to `level` (the outside world: a button, a signal). Returns false
    /// for a line the controller does not have.
    pub fn set_input(&mut self, line: u8, level: bool) -> bool {
        if line >= LINES {
            return false;
        }
        let bit = 1u8 << line;
        let old = self.pins();
        if level {
            if self.input & bit == 0 {
                self.sampled &= !bit;
            }
            self.input |= bit;
        } else {
            self.input &= !bit;
        }
        self.detect(old);
        true
    }

    /// The level the hypervisor drives on `line` (false for a line that does not exist).
    pub fn input(&self, line: u8) -> bool {
        line < LINES && self.input & (1 << line) != 0
    }

    /// Whether the guest has read `line` high from GPIODATA since its input last rose (a
    /// press that was seen).
    pub fn sampled_high(&self, line: u8) -> bool {
        line < LINES && self.sampled & (1 << line) != 0
    }

    /// GPIORIS: latched edges of edge-sensitive lines, the level condition of level-sensitive
    /// ones (high when GPIOIEV is 1, low when it is 0).
    fn ris(&self) -> u8 {
        (self.edges & !self.is) | (self.is & !(self.pins() ^ self.iev))
    }

    /// GPIOMIS.
    fn mis(&self) -> u8 {
        self.ris() & self.ie
    }

    /// GPIOINTR: the controller's interrupt output.
    pub fn irq_level(&self) -> bool {
        self.mis() != 0
    }

    fn read_reg(&mut self, word: u64) -> u8 {
        match word {
            0..=offset::GPIODATA_END => {
                let mask = data_mask(word);
                let v = self.pins() & mask;
                self.sampled |= v & self.input & !self.dir;
                v
            }
            offset::GPIODIR => self.dir,
            offset::GPIOIS => self.is,
            offset::GPIOIBE => self.ibe,
            offset::GPIOIEV => self.iev,
            offset::GPIOIE => self.ie,
            offset::GPIORIS => self.ris(),
            offset::GPIOMIS => self.mis(),
            offset::GPIOAFSEL => self.afsel,
            offset::GPIOPERIPHID0..=offset::GPIOPCELLID3 => {
                let i = usize::try_from((word - offset::GPIOPERIPHID0) / 4).unwrap_or(0);
                ID.get(i).map_or(0, |&v| v as u8)
            }
            // GPIOIC is write-only; the rest is reserved.
            _ => 0,
        }
    }

    fn write_reg(&mut self, word: u64, value: u8) {
        let old = self.pins();
        match word {
            0..=offset::GPIODATA_END => {
                let mask = data_mask(word);
                self.data_out = (self.data_out & !mask) | (value & mask);
            }
            offset::GPIODIR => self.dir = value,
            offset::GPIOIS => self.is = value,
            offset::GPIOIBE => self.ibe = value,
            offset::GPIOIEV => self.iev = value,
            offset::GPIOIE => self.ie = value,
            offset::GPIOIC => self.edges &= !value,
            offset::GPIOAFSEL => self.afsel = value,
            // Read-only (GPIORIS, GPIOMIS, the IDs) or reserved.
            _ => {}
        }
        self.detect(old);
    }
}

/// The lines a GPIODATA access at `word` covers: address bits [9:2] (DDI 0190B §3.3.1).
fn data_mask(word: u64) -> u8 {
    ((word >> 2) & 0xff) as u8
}

/// Validates an access: byte, halfword or word, aligned to its size, inside the window.
/// Returns the register's word offset and whether the access covers the register's byte
/// (bits 7:0), the only one that is not reserved.
fn decode(offset: u64, width: AccessWidth) -> Result<(u64, bool), MmioError> {
    if width == AccessWidth::Double
        || offset & (width.bytes() - 1) != 0
        || offset >= WINDOW_SIZE_BYTES
    {
        return Err(MmioError::BadAccess);
    }
    Ok((offset & !3, offset & 3 == 0))
}

impl MmioDevice for Pl061 {
    fn name(&self) -> &'static str {
        "pl061"
    }

    fn size_bytes(&self) -> u64 {
        WINDOW_SIZE_BYTES
    }

    fn read(&mut self, _vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        let (word, low_byte) = decode(offset, width)?;
        Ok(if low_byte {
            u64::from(self.read_reg(word))
        } else {
            0
        })
    }

    fn write(
        &mut self,
        _vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        let (word, low_byte) = decode(offset, width)?;
        if low_byte {
            self.write_reg(word, (value & 0xff) as u8);
        }
        Ok(())
    }

    fn reset(&mut self) {
        Pl061::reset(self);
    }

    fn irq_level(&self) -> bool {
        Pl061::irq_level(self)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn core::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessWidth::{Byte, Double, Half, Word};

    const V0: VcpuId = VcpuId(0);
    const L3: u8 = 1 << 3;

    fn rd(g: &mut Pl061, off: u64) -> u64 {
        g.read(V0, off, Word).unwrap()
    }

    fn wr(g: &mut Pl061, off: u64, v: u64) {
        g.write(V0, off, Word, v).unwrap();
    }

    #[test]
    fn identification_registers() {
        let mut g = Pl061::new();
        assert_eq!(g.name(), "pl061");
        assert_eq!(g.size_bytes(), 0x1000);
        let periphid = (0..4).fold(0, |acc, i| acc | (rd(&mut g, 0xFE0 + 4 * i) << (8 * i)));
        let cellid = (0..4).fold(0, |acc, i| acc | (rd(&mut g, 0xFF0 + 4 * i) << (8 * i)));
        // Linux's AMBA id table entry for the pl061 driver: 0x00041061 under mask 0x000fffff.
        assert_eq!(periphid & 0x000f_ffff, 0x0004_1061);
        assert_eq!(cellid, 0xB105_F00D);
        // Read-only; byte reads see the same value.
        wr(&mut g, 0xFE0, 0xff);
        assert_eq!(g.read(V0, 0xFE0, Byte).unwrap(), 0x61);
        assert_eq!(g.read(V0, 0xFE1, Byte).unwrap(), 0);
    }

    #[test]
    fn reset_values() {
        let mut g = Pl061::new();
        for off in (0x400..=0x420).step_by(4) {
            assert_eq!(rd(&mut g, off), 0, "offset {off:#x}");
        }
        assert_eq!(rd(&mut g, 0x3FC), 0);
        assert!(!g.irq_level());
    }

    #[test]
    fn data_is_address_masked() {
        let mut g = Pl061::new();
        wr(&mut g, 0x400, 0xF0); // lines 7:4 outputs
        // Write through mask 0x30 (address bits [9:2] = 0x30): only lines 5:4 change.
        wr(&mut g, 0x30 << 2, 0xFF);
        assert_eq!(rd(&mut g, 0x3FC), 0x30);
        // A read through mask 0x10 sees only line 4.
        assert_eq!(rd(&mut g, 0x10 << 2), 0x10);
        assert_eq!(rd(&mut g, 0x20 << 2), 0x20);
        assert_eq!(rd(&mut g, 0x0F << 2), 0);
        // Mask 0 (offset 0) reads and writes nothing.
        wr(&mut g, 0, 0xFF);
        assert_eq!(rd(&mut g, 0), 0);
        assert_eq!(rd(&mut g, 0x3FC), 0x30);
        // Inputs read their pin, not the output register.
        wr(&mut g, 0x3FC, 0x0F);
        assert_eq!(rd(&mut g, 0x3FC), 0x00);
        g.set_input(1, true);
        assert_eq!(rd(&mut g, 0x3FC), 0x02);
        // Linux's pl061_get_value: readb at BIT(offset + 2).
        assert_eq!(g.read(V0, 1 << (1 + 2), Byte).unwrap(), 0x02);
        assert_eq!(g.read(V0, 1 << (3 + 2), Byte).unwrap(), 0);
    }

    #[test]
    fn rising_edge_latches_until_cleared() {
        let mut g = Pl061::new();
        wr(&mut g, 0x40C, u64::from(L3)); // GPIOIEV: rising
        wr(&mut g, 0x410, u64::from(L3)); // GPIOIE
        assert!(!g.irq_level());
        g.set_input(3, true);
        assert_eq!(rd(&mut g, 0x414), u64::from(L3));
        assert_eq!(rd(&mut g, 0x418), u64::from(L3));
        assert!(g.irq_level());
        // Falling is not detected; the latch stays until GPIOIC.
        g.set_input(3, false);
        assert!(g.irq_level());
        wr(&mut g, 0x41C, u64::from(L3));
        assert!(!g.irq_level());
        assert_eq!(rd(&mut g, 0x414), 0);
        g.set_input(3, true);
        assert!(g.irq_level());
    }

    #[test]
    fn falling_edge_and_masking() {
        let mut g = Pl061::new();
        g.set_input(3, true);
        // IEV = 0: falling edge. Detected while masked (GPIORIS), signalled once unmasked.
        g.set_input(3, false);
        assert_eq!(rd(&mut g, 0x414), u64::from(L3));
        assert_eq!(rd(&mut g, 0x418), 0);
        assert!(!g.irq_level());
        wr(&mut g, 0x410, u64::from(L3));
        assert!(g.irq_level());
        wr(&mut g, 0x41C, 0xFF);
        assert!(!g.irq_level());
        g.set_input(3, true);
        assert!(!g.irq_level());
    }

    #[test]
    fn both_edges_override_iev() {
        let mut g = Pl061::new();
        wr(&mut g, 0x408, u64::from(L3)); // GPIOIBE
        wr(&mut g, 0x410, u64::from(L3));
        g.set_input(3, true);
        assert!(g.irq_level());
        wr(&mut g, 0x41C, u64::from(L3));
        g.set_input(3, false);
        assert!(g.irq_level());
        wr(&mut g, 0x41C, u64::from(L3));
        assert!(!g.irq_level());
        // Driving the same level again is no edge.
        g.set_input(3, false);
        assert!(!g.irq_level());
    }

    #[test]
    fn level_interrupts_follow_the_pin() {
        let mut g = Pl061::new();
        wr(&mut g, 0x404, u64::from(L3)); // GPIOIS: level
        wr(&mut g, 0x40C, u64::from(L3)); // high level
        wr(&mut g, 0x410, u64::from(L3));
        assert!(!g.irq_level());
        g.set_input(3, true);
        assert!(g.irq_level());
        // GPIOIC does not clear a level interrupt.
        wr(&mut g, 0x41C, u64::from(L3));
        assert!(g.irq_level());
        g.set_input(3, false);
        assert!(!g.irq_level());
        // Low level: asserted while low.
        wr(&mut g, 0x40C, 0);
        assert!(g.irq_level());
        assert_eq!(rd(&mut g, 0x414), u64::from(L3));
    }

    #[test]
    fn output_lines_raise_their_own_edges() {
        let mut g = Pl061::new();
        wr(&mut g, 0x40C, 0x01);
        wr(&mut g, 0x410, 0x01);
        wr(&mut g, 0x400, 0x01);
        assert!(!g.irq_level());
        wr(&mut g, 0x01 << 2, 0x01);
        assert!(g.irq_level());
        // The hypervisor's input does not drive an output line.
        wr(&mut g, 0x41C, 0x01);
        g.set_input(0, false);
        assert_eq!(rd(&mut g, 0x3FC), 0x01);
        assert!(!g.irq_level());
    }

    #[test]
    fn sampled_tracks_reads_of_a_high_input() {
        let mut g = Pl061::new();
        g.set_input(3, true);
        assert!(!g.sampled_high(3));
        // A read whose mask leaves line 3 out does not count.
        assert_eq!(rd(&mut g, 0x04 << 2), 0);
        assert!(!g.sampled_high(3));
        assert_eq!(rd(&mut g, u64::from(L3) << 2), u64::from(L3));
        assert!(g.sampled_high(3));
        // Still sampled while held; forgotten at the next rise.
        g.set_input(3, false);
        g.set_input(3, true);
        assert!(!g.sampled_high(3));
        assert!(g.input(3));
        assert!(!g.input(4));
    }

    #[test]
    fn reset_keeps_inputs() {
        let mut g = Pl061::new();
        wr(&mut g, 0x410, 0xFF);
        wr(&mut g, 0x40C, 0xFF);
        g.set_input(3, true);
        assert!(g.irq_level());
        MmioDevice::reset(&mut g);
        assert!(!g.irq_level());
        assert_eq!(rd(&mut g, 0x410), 0);
        assert_eq!(rd(&mut g, 0x3FC), u64::from(L3));
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let mut g = Pl061::new();
        assert!(!g.set_input(8, true));
        assert!(!g.set_input(u8::MAX, true));
        assert!(!g.input(200));
        assert!(!g.sampled_high(200));
        for off in (0..0x1010u64).step_by(1) {
            for w in [Byte, Half, Word, Double] {
                let aligned = off % w.bytes() == 0;
                let ok = w != Double && aligned && off < 0x1000;
                assert_eq!(g.read(V0, off, w).is_ok(), ok, "read {off:#x} {w:?}");
                assert_eq!(
                    g.write(V0, off, w, w.mask()).is_ok(),
                    ok,
                    "write {off:#x} {w:?}"
                );
            }
        }
        // Reserved bytes of a register read as zero and ignore writes.
        let mut g = Pl061::new();
        g.write(V0, 0x401, Byte, 0xFF).unwrap();
        assert_eq!(rd(&mut g, 0x400), 0);
        g.write(V0, 0x400, Half, 0xFFFF).unwrap();
        assert_eq!(rd(&mut g, 0x400), 0xFF);
        assert_eq!(g.read(V0, 0x402, Half).unwrap(), 0);
    }

    #[test]
    fn on_the_bus_its_line_reaches_the_spi() {
        use crate::mm::GuestPhysAddr;
        use crate::vdev::MmioBus;
        use alloc::boxed::Box;
        use alloc::vec::Vec;
        const BASE: GuestPhysAddr = GuestPhysAddr(0x0903_0000);
        let mut bus = MmioBus::new();
        bus.add_with_irq(BASE, Box::new(Pl061::new()), Some(39))
            .unwrap();
        // Linux's gpio-keys setup: both edges on line 3, unmasked.
        let (dev, _) = bus.find(GuestPhysAddr(0x0903_0408)).unwrap();
        dev.write(V0, 0x408, Byte, u64::from(L3)).unwrap();
        dev.write(V0, 0x410, Byte, u64::from(L3)).unwrap();
        let mut seen = Vec::new();
        bus.irq_changes(|i, l| seen.push((i, l)));
        assert!(seen.is_empty());
        assert!(bus.device_at::<Pl061>(BASE).unwrap().set_input(3, true));
        bus.irq_changes(|i, l| seen.push((i, l)));
        assert_eq!(seen, [(39, true)]);
        // Not a PL061 there, or nothing there: None.
        assert!(bus.device_at::<Pl061>(GuestPhysAddr(0x0900_0000)).is_none());
        assert!(
            bus.device_at::<crate::vdev::virtio::empty::EmptySlot>(BASE)
                .is_none()
        );
    }

    #[test]
    fn as_any_reaches_the_model() {
        let mut g = Pl061::new();
        let dev: &mut dyn MmioDevice = &mut g;
        let any = dev.as_any_mut().unwrap();
        assert!(any.downcast_mut::<Pl061>().unwrap().set_input(3, true));
        assert!(g.input(3));
    }
}
