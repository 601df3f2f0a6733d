//! A PCI type-0 configuration header (PCI Local Bus 3.0 §6.1, PCIe 5.0 §7.5.1): the
//! identification registers, Command and Status, memory BARs at fixed addresses, and the
//! interrupt pin and line. The rest of the 4 KiB (capabilities, extended space) reads as zero.
//!
//! What sticks: Command's Memory Space Enable (bit 1), Bus Master Enable (bit 2) and
//! Interrupt Disable (bit 10), so Linux's check that INTx masking works
//! (`pci_intx_mask_broken`: toggle bit 10, read it back) passes; Interrupt Line (scratch for
//! the OS). Everything else is read-only or reads as zero. The BARs do not move: a write of
//! all ones to a BAR's address bits starts the sizing protocol (the next read returns the size
//! mask and the type bits), any other write returns the BAR to its fixed address, so an OS
//! that sizes and then restores (Linux `__pci_read_base`) sees what is there.
#![forbid(unsafe_code)]

/// Command register bits.
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Status register: Interrupt Status (the function's INTx is pending, whatever Interrupt
/// Disable says).
pub const STATUS_INTERRUPT: u16 = 1 << 3;

/// Register offsets used here.
const REG_ID: u16 = 0x00;
const REG_COMMAND: u16 = 0x04;
const REG_CLASS: u16 = 0x08;
const REG_HEADER: u16 = 0x0c;
const REG_BAR0: u16 = 0x10;
const REG_SUBSYSTEM: u16 = 0x2c;
const REG_INTERRUPT: u16 = 0x3c;

/// One base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Not implemented: reads as zero, writes ignored.
    None,
    /// A 32-bit memory BAR at `base`, `size` bytes (a power of two, at least 16).
    Mem32 { base: u32, size: u32 },
    /// The low half of a 64-bit memory BAR (the next BAR is [`Bar::Mem64High`]).
    Mem64 {
        base: u64,
        size: u64,
        prefetchable: bool,
    },
    /// The high half of the 64-bit BAR before it.
    Mem64High,
}

/// The identification of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass, programming interface (bits 23:16, 15:8, 7:0).
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A type-0 header: what a guest reads and writes through ECAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    ids: Ids,
    bars: [Bar; 6],
    /// The guest's Command register (only the bits that stick).
    command: u16,
    /// BAR i is being sized (the guest wrote all ones to it).
    sizing: [bool; 6],
    interrupt_line: u8,
    /// 1 = INTA.
    interrupt_pin: u8,
}

impl Header {
    /// A header with `ids`, `bars` and INTA as its interrupt pin.
    pub fn new(ids: Ids, bars: [Bar; 6]) -> Self {
        Self {
            ids,
            bars,
            command: 0,
            sizing: [false; 6],
            interrupt_line: 0,
            interrupt_pin: 1,
        }
    }

    /// The Command register.
    pub fn command(&self) -> u16 {
        self.command
    }

    /// Memory Space Enable.
    pub fn memory_enabled(&self) -> bool {
        self.command & CMD_MEMORY != 0
    }

    /// Interrupt Disable.
    pub fn intx_disabled(&self) -> bool {
        self.command & CMD_INTX_DISABLE != 0
    }

    /// Back to reset values (Command 0, no BAR being sized, Interrupt Line 0).
    pub fn reset(&mut self) {
        self.command = 0;
        self.sizing = [false; 6];
        self.interrupt_line = 0;
    }

    /// The dword at `reg` (a multiple of 4 below 0x1000); `intx_pending` is the function's
    /// interrupt state for Status bit 3.
    pub fn read_dword(&self, reg: u16, intx_pending: bool) -> u32 {
        match reg {
            REG_ID => u32::from(self.ids.vendor) | u32::from(self.ids.device) << 16,
            REG_COMMAND => {
                let status = if intx_pending { STATUS_INTERRUPT } else { 0 };
                u32::from(self.command) | u32::from(status) << 16
            }
            REG_CLASS => u32::from(self.ids.revision) | (self.ids.class & 0xff_ffff) << 8,
            // Cache line size, latency timer, header type 0 (single function), BIST: zero.
            REG_HEADER => 0,
            0x10..=0x24 => self.read_bar(usize::from((reg - REG_BAR0) / 4)),
            REG_SUBSYSTEM => {
                u32::from(self.ids.subsystem_vendor) | u32::from(self.ids.subsystem) << 16
            }
            REG_INTERRUPT => u32::from(self.interrupt_line) | u32::from(self.interrupt_pin) << 8,
            // CardBus CIS, expansion ROM, capabilities pointer, reserved, extended space.
            _ => 0,
        }
    }

    /// A write of the bytes of `value` selected by `byte_mask` (0xff per written byte lane)
    /// to the dword at `reg`. Returns the Command register as it was before, so the caller
    /// can act on a change of Interrupt Disable.
    pub fn write_dword(&mut self, reg: u16, value: u32, byte_mask: u32) -> u16 {
        let before = self.command;
        match reg {
            REG_COMMAND => {
                // Status (the upper half) has no bits a write changes: Interrupt Status is
                // read-only, the error bits (RW1C) are never set.
                let sticky = CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE;
                let new = (u32::from(self.command) & !byte_mask) | (value & byte_mask);
                self.command = (new as u16) & sticky;
            }
            0x10..=0x24 => {
                let i = usize::from((reg - REG_BAR0) / 4);
                let current = self.read_bar(i);
                let new = (current & !byte_mask) | (value & byte_mask);
                self.write_bar(i, new);
            }
            REG_INTERRUPT if byte_mask & 0xff != 0 => self.interrupt_line = value as u8,
            _ => {}
        }
        before
    }

    fn read_bar(&self, i: usize) -> u32 {
        let sizing = self.sizing.get(i).copied().unwrap_or(false);
        match self.bars.get(i).copied().unwrap_or(Bar::None) {
            Bar::None => 0,
            Bar::Mem32 { base, size } => {
                // Type 00b (32-bit), not prefetchable: the low four bits are zero.
                let addr = if sizing { !(size.max(16) - 1) } else { base };
                addr & !0xf
            }
            Bar::Mem64 {
                base,
                size,
                prefetchable,
            } => {
                // Type 10b (64-bit), bit 3 prefetchable.
                let flags = 0b100 | if prefetchable { 0b1000 } else { 0 };
                let addr = if sizing { !(size.max(16) - 1) } else { base };
                (addr as u32 & !0xf) | flags
            }
            Bar::Mem64High => match i.checked_sub(1).and_then(|j| self.bars.get(j)) {
                Some(&Bar::Mem64 { base, size, .. }) => {
                    if sizing {
                        (!(size.max(16) - 1) >> 32) as u32
                    } else {
                        (base >> 32) as u32
                    }
                }
                _ => 0,
            },
        }
    }

    fn write_bar(&mut self, i: usize, value: u32) {
        let address_bits = match self.bars.get(i) {
            Some(Bar::Mem32 { .. } | Bar::Mem64 { .. }) => 0xffff_fff0,
            Some(Bar::Mem64High) => 0xffff_ffff,
            _ => return,
        };
        if let Some(s) = self.sizing.get_mut(i) {
            *s = value & address_bits == address_bits;
        }
    }
}
