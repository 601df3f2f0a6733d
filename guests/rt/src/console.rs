//! Polled PL011 console (ARM PrimeCell UART PL011 TRM, DDI 0183) and the print macros.
//!
//! Transmit only waits for FR.TXFF to clear and writes DR; no interrupts, no baud setup (the
//! emulated PL011 has no line, QEMU's ignores the divisors). Line feeds go out as CR LF so a
//! terminal in raw mode (QEMU `-nographic`) shows clean lines. Each `print!`/`println!` holds
//! a [`crate::smp::BakeryLock`], so lines from different CPUs do not interleave.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::mmio::Region;

/// PL011 register offsets and bits (DDI 0183 section 3.2), as the tests need them.
pub mod pl011 {
    /// Data register.
    pub const DR: usize = 0x000;
    /// Flag register.
    pub const FR: usize = 0x018;
    /// Integer baud rate divisor (16 bits).
    pub const IBRD: usize = 0x024;
    /// Fractional baud rate divisor (6 bits).
    pub const FBRD: usize = 0x028;
    /// Line control.
    pub const LCR_H: usize = 0x02c;
    /// Control register.
    pub const CR: usize = 0x030;
    /// Interrupt mask set/clear.
    pub const IMSC: usize = 0x038;
    /// UARTPeriphID0..3 at 0xFE0, 0xFE4, 0xFE8, 0xFEC (one byte each).
    pub const PERIPH_ID0: usize = 0xfe0;
    /// UARTPCellID0..3 at 0xFF0, 0xFF4, 0xFF8, 0xFFC (one byte each).
    pub const PCELL_ID0: usize = 0xff0;
    /// Size of the register block.
    pub const SIZE_BYTES: usize = 0x1000;

    /// FR.BUSY: transmitting.
    pub const FR_BUSY: u32 = 1 << 3;
    /// FR.RXFE: receive FIFO empty.
    pub const FR_RXFE: u32 = 1 << 4;
    /// FR.TXFF: transmit FIFO full.
    pub const FR_TXFF: u32 = 1 << 5;

    /// CR.UARTEN.
    pub const CR_UARTEN: u32 = 1 << 0;
    /// CR.TXE.
    pub const CR_TXE: u32 = 1 << 8;
    /// CR.RXE.
    pub const CR_RXE: u32 = 1 << 9;

    /// PrimeCell ID bytes, UARTPCellID0..3: the same for every PrimeCell.
    pub const PCELL_ID: [u8; 4] = [0x0d, 0xf0, 0x05, 0xb1];
}

/// A PL011 register block.
#[derive(Debug, Clone, Copy)]
pub struct Pl011 {
    regs: Region,
}

impl Pl011 {
    /// The PL011 at `base`; `None` if that block would overlap the image or the device tree.
    pub fn new(base: usize) -> Option<Self> {
        Region::new(base, pl011::SIZE_BYTES).map(|regs| Self { regs })
    }

    /// Base address of the register block.
    pub fn base(&self) -> usize {
        self.regs.base()
    }

    /// Reads the register at `offset` (see [`pl011`]).
    pub fn read(&self, offset: usize) -> u32 {
        self.regs.read32(offset)
    }

    /// Writes the register at `offset` (see [`pl011`]).
    pub fn write(&self, offset: usize, value: u32) {
        self.regs.write32(offset, value)
    }

    /// UARTPeriphID0..3, one byte each.
    pub fn periph_id(&self) -> [u8; 4] {
        core::array::from_fn(|i| self.read(pl011::PERIPH_ID0 + 4 * i) as u8)
    }

    /// UARTPCellID0..3, one byte each.
    pub fn pcell_id(&self) -> [u8; 4] {
        core::array::from_fn(|i| self.read(pl011::PCELL_ID0 + 4 * i) as u8)
    }

    /// Sends one byte, waiting while the transmit FIFO is full.
    pub fn put_byte(&self, byte: u8) {
        while self.read(pl011::FR) & pl011::FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        self.write(pl011::DR, byte.into());
    }
}

impl fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.put_byte(b'\r');
            }
            self.put_byte(byte);
        }
        Ok(())
    }
}

static CONSOLE_BASE: AtomicUsize = AtomicUsize::new(crate::boot::DEFAULT_UART_BASE);

/// Selects the console UART and enables it (CR.UARTEN | TXE | RXE; the rest of CR is kept).
pub(crate) fn init(base: usize) {
    CONSOLE_BASE.store(base, Ordering::SeqCst);
    if let Some(uart) = console() {
        let cr = uart.read(pl011::CR);
        let on = pl011::CR_UARTEN | pl011::CR_TXE | pl011::CR_RXE;
        if cr & on != on {
            uart.write(pl011::CR, cr | on);
        }
    }
}

/// The console UART, or `None` if its address is unusable (inside the image or DTB).
pub fn console() -> Option<Pl011> {
    Pl011::new(CONSOLE_BASE.load(Ordering::SeqCst))
}

/// Keeps the output of one `print!` together when several CPUs print.
static CONSOLE_LOCK: crate::smp::BakeryLock = crate::smp::BakeryLock::new();

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _guard = CONSOLE_LOCK.lock();
    if let Some(mut uart) = console() {
        // Pl011::write_str never fails.
        let _ = fmt::Write::write_fmt(&mut uart, args);
    }
}

/// Prints to the console UART.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console UART.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
