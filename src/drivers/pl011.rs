//! Physical PL011 UART (ARM DDI 0183), polled. The firmware (QEMU, U-Boot) has set the baud
//! rate and enabled it; the kernel only transmits.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

use crate::arch::aarch64::mmio::DeviceRegs;
use crate::console::ConsoleUart;

register_structs! {
    /// PL011 registers used by the driver.
    pub Pl011Regs {
        (0x000 => dr: ReadWrite<u32>),
        (0x004 => _reserved0),
        (0x018 => fr: ReadOnly<u32>),
        (0x01c => _reserved1),
        (0x038 => imsc: ReadWrite<u32>),
        (0x03c => _reserved2),
        (0x1000 => @END),
    }
}

/// UARTFR.TXFF: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;
/// UARTFR.RXFE: receive FIFO empty.
const FR_RXFE: u32 = 1 << 4;
/// UARTIMSC.RXIM and RTIM: receive and receive-timeout interrupts.
const IMSC_RX: u32 = (1 << 4) | (1 << 6);

/// The console UART.
pub struct Pl011 {
    regs: DeviceRegs<Pl011Regs>,
}

impl Pl011 {
    pub fn new(regs: DeviceRegs<Pl011Regs>) -> Self {
        Self { regs }
    }
}

impl Pl011 {
    /// Unmasks (or masks) the receive interrupts. The kernel forwards console input to VMs
    /// and masks them while the VM's receive FIFO is full, leaving the bytes in this UART.
    pub fn set_rx_interrupt(&self, on: bool) {
        let v = self.regs.imsc.get();
        self.regs
            .imsc
            .set(if on { v | IMSC_RX } else { v & !IMSC_RX });
    }
}

impl ConsoleUart for Pl011 {
    fn get_byte(&self) -> Option<u8> {
        (self.regs.fr.get() & FR_RXFE == 0).then(|| self.regs.dr.get() as u8)
    }

    fn put_byte(&self, b: u8) {
        // Bounded wait: a wedged UART must not hang the hypervisor forever.
        for _ in 0..1_000_000 {
            if self.regs.fr.get() & FR_TXFF == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.regs.dr.set(b as u32);
    }
}
