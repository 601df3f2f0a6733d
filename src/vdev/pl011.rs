//! Emulated PL011 UART (ARM PrimeCell UART r1p5, DDI 0183G) as a pure state machine.
//!
//! The model is complete enough for Linux's `amba-pl011` driver (AMBA probe through the
//! PeriphID/PCellID registers, startup/shutdown, termios, the polled console and earlycon) and
//! for bare-metal guests. Choices where an emulation has to depart from the silicon:
//!
//! * **Transmission is instantaneous.** A byte written to UARTDR goes straight to the
//!   [`Pl011Backend`], so the transmit FIFO is always empty: UARTFR reads TXFE=1, TXFF=0, BUSY=0.
//! * **Bytes are transmitted even with UARTCR.UARTEN or .TXE clear**, as QEMU does. The TRM says a
//!   disabled transmitter holds the data, but firmware and Linux's earlycon
//!   (`pl011_early_write`) write to the UART as the previous stage left it, and our reset value
//!   of UARTCR (0x300, TRM §3.3.8) has UARTEN clear. Dropping those bytes would silence the
//!   earliest (most useful) boot messages; a real UART set up by firmware would have sent them.
//! * **TXRIS follows the TRM's "transition through the trigger level" rule** (§3.4.3): it is not
//!   raised merely by enabling the UART, only after written data drains, which here is at once
//!   after every UARTDR write. Only UARTICR.TXIC clears it (the FIFO never refills above the
//!   trigger level). Linux writes the first bytes itself and then unmasks TXIM, which is exactly
//!   what this supports.
//! * **The receive FIFO is 32 entries deep** (r1p5), one entry with UARTLCR_H.FEN=0 (the
//!   1-byte holding register of character mode), each entry a byte plus the four error bits of
//!   UARTDR.
//! * **Console input waits in front of the UART, flow-controlled**, as if the line had RTS/CTS
//!   flow control: [`Pl011::input`] queues a byte in a [`PendingInput`] (the other end of the
//!   line), and a byte moves into the receive FIFO only while the receiver is on (UARTCR.UARTEN
//!   and RXE set, LBE clear, as QEMU 10 requires too) and the FIFO has room: when input
//!   arrives, after every UARTDR read, and after UARTCR or UARTLCR_H writes. So a byte is
//!   never lost to a small or disabled FIFO; a guest polling UARTFR.RXFE with the FIFO off
//!   sees one byte at a time. Bytes the guest has not read are never discarded by the model:
//!   a reset, or toggling FEN (which QEMU's model answers by emptying the FIFO), puts them back
//!   at the front of the queue, so input typed for a VM survives its reset. The queue and the
//!   FIFO together hold at most `console::PENDING_INPUT_BYTES` ([`Pl011::input_room`]).
//! * **RXRIS** (§3.4.2) is raised when a received byte makes the FIFO level reach the UARTIFLS
//!   trigger (any byte with FEN=0) and cleared when reads take the level below it, or by UARTICR.
//! * **RTIS, the receive timeout** (§3.4.4), needs a time base we do not have. The timeout is
//!   taken to expire as soon as a byte arrives; RTIS is then reported while the FIFO is non-empty
//!   and below the RX trigger (at or above it RXRIS already signals). UARTICR.RTIC acknowledges
//!   it until the next byte arrives; emptying the FIFO clears it.
//! * **Overrun**: a byte arriving at a full FIFO is lost and sets UARTRSR.OE and OERIS at once;
//!   the OE bit of UARTDR is reported with the next byte that enters the FIFO (the first one
//!   after the gap). Backend bytes never carry framing, parity or break errors.
//! * **Loopback** (UARTCR.LBE): transmitted bytes go into the receive FIFO instead of the
//!   backend, so the self-test that older Linux kernels ran in `pl011_startup` prints nothing.
//! * Not modelled: modem status lines (UARTFR.CTS/DSR/DCD/RI read 0, no modem interrupts), IrDA,
//!   DMA (UARTDMACR is storage only), baud rate and line format (storage only).
//!
//! Register window (DDI 0183G §3.2), all registers 32 bits wide with 8/16/32-bit accesses:
//!
//! ```text
//!   0x000 UARTDR        0x02C UARTLCR_H     0x044 UARTICR (WO)
//!   0x004 UARTRSR/ECR   0x030 UARTCR        0x048 UARTDMACR
//!   0x018 UARTFR (RO)   0x034 UARTIFLS      0xFE0-0xFEC UARTPeriphID0-3 (RO)
//!   0x020 UARTILPR      0x038 UARTIMSC      0xFF0-0xFFC UARTPCellID0-3 (RO)
//!   0x024 UARTIBRD      0x03C UARTRIS (RO)  anything else: reserved, RAZ/WI
//!   0x028 UARTFBRD      0x040 UARTMIS (RO)
//! ```

use alloc::boxed::Box;

use tock_registers::fields::Field;
use tock_registers::{LocalRegisterCopy, RegisterLongName, register_bitfields};

use super::{AccessWidth, MmioDevice, MmioError, VcpuId};
use crate::console::{PENDING_INPUT_BYTES, PendingInput};

/// Where transmitted bytes go. The hypervisor prints them on the physical console with a
/// per-VM prefix; tests collect them.
pub trait Pl011Backend: Send {
    /// Called once for every byte the guest transmits, in order.
    fn tx(&mut self, byte: u8);
    /// The VM gained (`true`) or lost console input focus.
    fn focus(&mut self, _on: bool) {}
}

/// Depth of the receive FIFO with UARTLCR_H.FEN set (32 in r1p5; 1 with FEN clear).
pub const RX_FIFO_DEPTH: usize = 32;

/// Size of the register window.
const WINDOW_SIZE_BYTES: u64 = 0x1000;

/// Register offsets (DDI 0183G §3.2, Table 3-1).
mod offset {
    pub const UARTDR: u64 = 0x000;
    pub const UARTRSR_ECR: u64 = 0x004;
    pub const UARTFR: u64 = 0x018;
    pub const UARTILPR: u64 = 0x020;
    pub const UARTIBRD: u64 = 0x024;
    pub const UARTFBRD: u64 = 0x028;
    pub const UARTLCR_H: u64 = 0x02C;
    pub const UARTCR: u64 = 0x030;
    pub const UARTIFLS: u64 = 0x034;
    pub const UARTIMSC: u64 = 0x038;
    pub const UARTRIS: u64 = 0x03C;
    pub const UARTMIS: u64 = 0x040;
    pub const UARTICR: u64 = 0x044;
    pub const UARTDMACR: u64 = 0x048;
    /// UARTPeriphID0; PeriphID1-3 and PCellID0-3 follow one word apart.
    pub const UARTPERIPHID0: u64 = 0xFE0;
    /// UARTPCellID3, the last register of the window.
    pub const UARTPCELLID3: u64 = 0xFFC;
}

/// UARTPeriphID0-3 then UARTPCellID0-3 (§3.3.15, §3.3.16): part number 0x011, designer 0x41
/// (ARM), revision 3 (r1p5, as QEMU reports; Linux then assumes 32-entry FIFOs), configuration 0.
const ID_REGISTERS: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

register_bitfields! [u32,
    /// UARTDR, data register (§3.3.1). Reads return the error bits with the byte.
    UARTDR [
        DATA OFFSET(0) NUMBITS(8) [],
        FE OFFSET(8) NUMBITS(1) [],
        PE OFFSET(9) NUMBITS(1) [],
        BE OFFSET(10) NUMBITS(1) [],
        OE OFFSET(11) NUMBITS(1) []
    ],
    /// UARTRSR/UARTECR, receive status / error clear (§3.3.2).
    UARTRSR [
        FE OFFSET(0) NUMBITS(1) [],
        PE OFFSET(1) NUMBITS(1) [],
        BE OFFSET(2) NUMBITS(1) [],
        OE OFFSET(3) NUMBITS(1) []
    ],
    /// UARTFR, flag register (§3.3.3).
    UARTFR [
        CTS OFFSET(0) NUMBITS(1) [],
        DSR OFFSET(1) NUMBITS(1) [],
        DCD OFFSET(2) NUMBITS(1) [],
        BUSY OFFSET(3) NUMBITS(1) [],
        RXFE OFFSET(4) NUMBITS(1) [],
        TXFF OFFSET(5) NUMBITS(1) [],
        RXFF OFFSET(6) NUMBITS(1) [],
        TXFE OFFSET(7) NUMBITS(1) [],
        RI OFFSET(8) NUMBITS(1) []
    ],
    /// UARTILPR, IrDA low-power counter (§3.3.4).
    UARTILPR [
        ILPDVSR OFFSET(0) NUMBITS(8) []
    ],
    /// UARTIBRD, integer baud rate divisor (§3.3.5).
    UARTIBRD [
        BAUD_DIVINT OFFSET(0) NUMBITS(16) []
    ],
    /// UARTFBRD, fractional baud rate divisor (§3.3.6).
    UARTFBRD [
        BAUD_DIVFRAC OFFSET(0) NUMBITS(6) []
    ],
    /// UARTLCR_H, line control (§3.3.7).
    UARTLCR_H [
        BRK OFFSET(0) NUMBITS(1) [],
        PEN OFFSET(1) NUMBITS(1) [],
        EPS OFFSET(2) NUMBITS(1) [],
        STP2 OFFSET(3) NUMBITS(1) [],
        FEN OFFSET(4) NUMBITS(1) [],
        WLEN OFFSET(5) NUMBITS(2) [],
        SPS OFFSET(7) NUMBITS(1) []
    ],
    /// UARTCR, control register (§3.3.8). Bits 6:3 are reserved.
    UARTCR [
        UARTEN OFFSET(0) NUMBITS(1) [],
        SIREN OFFSET(1) NUMBITS(1) [],
        SIRLP OFFSET(2) NUMBITS(1) [],
        LBE OFFSET(7) NUMBITS(1) [],
        TXE OFFSET(8) NUMBITS(1) [],
        RXE OFFSET(9) NUMBITS(1) [],
        DTR OFFSET(10) NUMBITS(1) [],
        RTS OFFSET(11) NUMBITS(1) [],
        OUT1 OFFSET(12) NUMBITS(1) [],
        OUT2 OFFSET(13) NUMBITS(1) [],
        RTSEN OFFSET(14) NUMBITS(1) [],
        CTSEN OFFSET(15) NUMBITS(1) []
    ],
    /// UARTIFLS, interrupt FIFO level select (§3.3.9). Values 5-7 are reserved.
    UARTIFLS [
        TXIFLSEL OFFSET(0) NUMBITS(3) [
            OneEighth = 0,
            OneQuarter = 1,
            OneHalf = 2,
            ThreeQuarters = 3,
            SevenEighths = 4
        ],
        RXIFLSEL OFFSET(3) NUMBITS(3) [
            OneEighth = 0,
            OneQuarter = 1,
            OneHalf = 2,
            ThreeQuarters = 3,
            SevenEighths = 4
        ]
    ],
    /// The common layout of UARTIMSC, UARTRIS, UARTMIS and UARTICR (§3.3.10-§3.3.13), whose bits
    /// the TRM names RIMIM/RIRMIS/RIMMIS/RIMIC and so on; here just by the interrupt.
    UARTINT [
        RIM OFFSET(0) NUMBITS(1) [],
        CTSM OFFSET(1) NUMBITS(1) [],
        DCDM OFFSET(2) NUMBITS(1) [],
        DSRM OFFSET(3) NUMBITS(1) [],
        RX OFFSET(4) NUMBITS(1) [],
        TX OFFSET(5) NUMBITS(1) [],
        RT OFFSET(6) NUMBITS(1) [],
        FE OFFSET(7) NUMBITS(1) [],
        PE OFFSET(8) NUMBITS(1) [],
        BE OFFSET(9) NUMBITS(1) [],
        OE OFFSET(10) NUMBITS(1) []
    ],
    /// UARTDMACR, DMA control (§3.3.14).
    UARTDMACR [
        RXDMAE OFFSET(0) NUMBITS(1) [],
        TXDMAE OFFSET(1) NUMBITS(1) [],
        DMAONERR OFFSET(2) NUMBITS(1) []
    ]
];

/// The bits of `field` in place.
const fn bits<R: RegisterLongName>(field: Field<u32, R>) -> u32 {
    field.mask << field.shift
}

/// Implemented (read/write) bits of each storage register; the rest read as zero.
const UARTILPR_BITS: u32 = bits(UARTILPR::ILPDVSR);
const UARTIBRD_BITS: u32 = bits(UARTIBRD::BAUD_DIVINT);
const UARTFBRD_BITS: u32 = bits(UARTFBRD::BAUD_DIVFRAC);
const UARTLCR_H_BITS: u32 = bits(UARTLCR_H::BRK)
    | bits(UARTLCR_H::PEN)
    | bits(UARTLCR_H::EPS)
    | bits(UARTLCR_H::STP2)
    | bits(UARTLCR_H::FEN)
    | bits(UARTLCR_H::WLEN)
    | bits(UARTLCR_H::SPS);
const UARTCR_BITS: u32 = bits(UARTCR::UARTEN)
    | bits(UARTCR::SIREN)
    | bits(UARTCR::SIRLP)
    | bits(UARTCR::LBE)
    | bits(UARTCR::TXE)
    | bits(UARTCR::RXE)
    | bits(UARTCR::DTR)
    | bits(UARTCR::RTS)
    | bits(UARTCR::OUT1)
    | bits(UARTCR::OUT2)
    | bits(UARTCR::RTSEN)
    | bits(UARTCR::CTSEN);
const UARTIFLS_BITS: u32 = bits(UARTIFLS::TXIFLSEL) | bits(UARTIFLS::RXIFLSEL);
const UARTINT_BITS: u32 = bits(UARTINT::RIM)
    | bits(UARTINT::CTSM)
    | bits(UARTINT::DCDM)
    | bits(UARTINT::DSRM)
    | bits(UARTINT::RX)
    | bits(UARTINT::TX)
    | bits(UARTINT::RT)
    | bits(UARTINT::FE)
    | bits(UARTINT::PE)
    | bits(UARTINT::BE)
    | bits(UARTINT::OE);
const UARTDMACR_BITS: u32 =
    bits(UARTDMACR::RXDMAE) | bits(UARTDMACR::TXDMAE) | bits(UARTDMACR::DMAONERR);
/// The error bits UARTDR carries with a received byte (the same order as UARTRSR's, 8 higher).
const UARTDR_ERROR_BITS: u32 =
    bits(UARTDR::FE) | bits(UARTDR::PE) | bits(UARTDR::BE) | bits(UARTDR::OE);

/// Reset values (§3.3): UARTCR has TXE and RXE set, UARTIFLS selects 1/2 for both FIFOs.
const UARTCR_RESET: u32 = bits(UARTCR::TXE) | bits(UARTCR::RXE);
const UARTIFLS_RESET: u32 = UARTIFLS::TXIFLSEL::OneHalf.value | UARTIFLS::RXIFLSEL::OneHalf.value;

/// A decoded register, from the word-aligned offset of an access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reg {
    Dr,
    RsrEcr,
    Fr,
    Ilpr,
    Ibrd,
    Fbrd,
    LcrH,
    Cr,
    Ifls,
    Imsc,
    Ris,
    Mis,
    Icr,
    Dmacr,
    /// One of the identification registers, with its value.
    Id(u8),
    /// Reserved or test-register space: RAZ/WI.
    Reserved,
}

impl Reg {
    #[inline]
    fn decode(word_offset: u64) -> Self {
        match word_offset {
            offset::UARTDR => Reg::Dr,
            offset::UARTRSR_ECR => Reg::RsrEcr,
            offset::UARTFR => Reg::Fr,
            offset::UARTILPR => Reg::Ilpr,
            offset::UARTIBRD => Reg::Ibrd,
            offset::UARTFBRD => Reg::Fbrd,
            offset::UARTLCR_H => Reg::LcrH,
            offset::UARTCR => Reg::Cr,
            offset::UARTIFLS => Reg::Ifls,
            offset::UARTIMSC => Reg::Imsc,
            offset::UARTRIS => Reg::Ris,
            offset::UARTMIS => Reg::Mis,
            offset::UARTICR => Reg::Icr,
            offset::UARTDMACR => Reg::Dmacr,
            offset::UARTPERIPHID0..=offset::UARTPCELLID3 => {
                let index = (word_offset - offset::UARTPERIPHID0) / 4;
                usize::try_from(index)
                    .ok()
                    .and_then(|i| ID_REGISTERS.get(i))
                    .map_or(Reg::Reserved, |&id| Reg::Id(id))
            }
            _ => Reg::Reserved,
        }
    }
}

/// Marks a receive-FIFO entry that came from the line (console input), not through loopback:
/// only those go back to the input queue on a reset. Above UARTDR's bits, so never read.
const ENTRY_FROM_LINE: u16 = 1 << 15;

/// The receive FIFO: a ring of UARTDR-format entries (byte plus error bits).
struct RxFifo {
    entries: [u16; RX_FIFO_DEPTH],
    /// Index of the oldest entry, always below `RX_FIFO_DEPTH`.
    head: usize,
    /// Number of entries, at most `RX_FIFO_DEPTH`.
    len: usize,
}

impl RxFifo {
    const fn new() -> Self {
        Self {
            entries: [0; RX_FIFO_DEPTH],
            head: 0,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Appends `entry` unless the FIFO already holds `capacity` entries (or is physically full).
    fn push(&mut self, entry: u16, capacity: usize) -> bool {
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

    fn pop(&mut self) -> Option<u16> {
        if self.len == 0 {
            return None;
        }
        let entry = self.entries.get(self.head).copied()?;
        self.head = (self.head + 1) % RX_FIFO_DEPTH;
        self.len -= 1;
        Some(entry)
    }
}

/// Everything [`Pl011::reset`] restores: the registers and the receive FIFO.
struct State {
    rx: RxFifo,
    /// UARTRSR: FE/PE/BE of the last byte read from UARTDR; OE sticky until UARTECR is written.
    rsr: LocalRegisterCopy<u32, UARTRSR::Register>,
    ilpr: LocalRegisterCopy<u32, UARTILPR::Register>,
    ibrd: LocalRegisterCopy<u32, UARTIBRD::Register>,
    fbrd: LocalRegisterCopy<u32, UARTFBRD::Register>,
    lcr_h: LocalRegisterCopy<u32, UARTLCR_H::Register>,
    cr: LocalRegisterCopy<u32, UARTCR::Register>,
    ifls: LocalRegisterCopy<u32, UARTIFLS::Register>,
    imsc: LocalRegisterCopy<u32, UARTINT::Register>,
    /// Latched raw interrupt status, every bit except RT (which [`Pl011::ris`] derives).
    ris_latched: LocalRegisterCopy<u32, UARTINT::Register>,
    dmacr: LocalRegisterCopy<u32, UARTDMACR::Register>,
    /// A byte arrived and the receive timeout has not been acknowledged since (UARTICR.RTIC).
    rx_timeout_pending: bool,
    /// Bytes were lost; the next byte to enter the FIFO carries UARTDR.OE.
    overrun_pending: bool,
}

impl State {
    /// The state after PRESETn (§3.3): every register zero except UARTCR and UARTIFLS.
    const RESET: Self = Self {
        rx: RxFifo::new(),
        rsr: LocalRegisterCopy::new(0),
        ilpr: LocalRegisterCopy::new(0),
        ibrd: LocalRegisterCopy::new(0),
        fbrd: LocalRegisterCopy::new(0),
        lcr_h: LocalRegisterCopy::new(0),
        cr: LocalRegisterCopy::new(UARTCR_RESET),
        ifls: LocalRegisterCopy::new(UARTIFLS_RESET),
        imsc: LocalRegisterCopy::new(0),
        ris_latched: LocalRegisterCopy::new(0),
        dmacr: LocalRegisterCopy::new(0),
        rx_timeout_pending: false,
        overrun_pending: false,
    };
}

/// The emulated PL011. See the module documentation for what is and is not modelled.
pub struct Pl011 {
    backend: Box<dyn Pl011Backend>,
    state: State,
    /// Console input not yet in the receive FIFO (kept across resets).
    input: PendingInput,
}

impl Pl011 {
    /// A PL011 in its reset state, transmitting to `backend`.
    pub fn new(backend: Box<dyn Pl011Backend>) -> Self {
        Self {
            backend,
            state: State::RESET,
            input: PendingInput::new(),
        }
    }

    /// Returns every register and the receive FIFO to the reset state (PRESETn). The backend is
    /// kept, and so is console input: bytes the guest had not read go back to the front of
    /// the input queue.
    pub fn reset(&mut self) {
        self.return_unread_input();
        self.state = State::RESET;
    }

    /// A byte arriving on the (virtual) serial line now, without flow control. Returns false
    /// if it was not taken: the receiver is off (the byte is not seen), or the FIFO is full
    /// (the byte is lost and an overrun error recorded, as on the hardware). Console input
    /// goes through [`Pl011::input`] instead, which never loses a byte.
    pub fn push_rx(&mut self, byte: u8) -> bool {
        self.receiver_on() && self.receive(u16::from(byte) | ENTRY_FROM_LINE)
    }

    /// Queues a byte of console input; it enters the receive FIFO as soon as the receiver is
    /// on and has room. False if the queue is full ([`Pl011::input_room`] is 0): the caller
    /// keeps the byte.
    pub fn input(&mut self, byte: u8) -> bool {
        if self.input_room() == 0 || !self.input.push_back(byte) {
            return false;
        }
        self.pull_input();
        true
    }

    /// How many more bytes [`Pl011::input`] takes: the queue and the receive FIFO together hold
    /// at most `PENDING_INPUT_BYTES`, so the FIFO's bytes always fit back into the queue.
    pub fn input_room(&self) -> usize {
        PENDING_INPUT_BYTES.saturating_sub(self.input.len() + self.state.rx.len())
    }

    /// Console input bytes waiting in front of the receive FIFO.
    pub fn input_pending(&self) -> usize {
        self.input.len()
    }

    /// Drops the queued console input (the VM stopped for good).
    pub fn clear_input(&mut self) {
        self.input.clear();
    }

    /// Whether the receiver takes bytes from the line: UARTEN and RXE set, not in loopback
    /// (§3.3.8; in loopback the receiver hears the transmitter instead).
    pub fn receiver_on(&self) -> bool {
        let cr = self.state.cr;
        cr.is_set(UARTCR::UARTEN) && cr.is_set(UARTCR::RXE) && !cr.is_set(UARTCR::LBE)
    }

    /// Moves queued input into the receive FIFO while the receiver is on and has room.
    fn pull_input(&mut self) {
        while self.receiver_on() && self.rx_free_slots() > 0 {
            let Some(byte) = self.input.pop_front() else {
                break;
            };
            self.receive(u16::from(byte) | ENTRY_FROM_LINE);
        }
    }

    /// Empties the receive FIFO, giving the bytes that came from the line back to the front of
    /// the input queue in their order (loopback bytes are dropped).
    fn return_unread_input(&mut self) {
        let mut unread = [0u8; RX_FIFO_DEPTH];
        let mut n = 0;
        while let Some(entry) = self.state.rx.pop() {
            if entry & ENTRY_FROM_LINE != 0
                && let Some(slot) = unread.get_mut(n)
            {
                // The data byte is the low 8 bits of the entry.
                *slot = entry.to_le_bytes()[0];
                n += 1;
            }
        }
        for &b in unread.iter().take(n).rev() {
            // Always fits: the queue and the FIFO together never hold more than it can.
            let _ = self.input.push_front(b);
        }
    }

    /// Gives console focus to (or takes it from) the VM this UART belongs to.
    pub fn set_console_focus(&mut self, on: bool) {
        self.backend.focus(on);
    }

    /// How many more entries the receive FIFO has room for (0 or 1 while the guest has the FIFO
    /// disabled), whether or not the receiver is on.
    pub fn rx_free_slots(&self) -> usize {
        self.rx_capacity().saturating_sub(self.state.rx.len())
    }

    /// Whether a read at `offset` can change the interrupt output: only UARTDR's (it pops
    /// the receive FIFO); every other register reads without side effects.
    pub const fn read_changes_irq(offset: u64) -> bool {
        offset < 4
    }

    /// Level of the combined interrupt line UARTINTR (UARTMIS != 0), to be sampled after every
    /// access and every [`Pl011::push_rx`] and driven onto a level-triggered SPI.
    pub fn irq_level(&self) -> bool {
        self.mis() != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.state.lcr_h.is_set(UARTLCR_H::FEN)
    }

    /// Entries the receive FIFO holds in the current mode.
    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            RX_FIFO_DEPTH
        } else {
            1
        }
    }

    /// The FIFO level at which RXRIS asserts (§3.3.9); with the FIFO disabled, any byte.
    fn rx_trigger(&self) -> usize {
        use UARTIFLS::RXIFLSEL::Value;
        if !self.fifo_enabled() {
            return 1;
        }
        let eighths = match self.state.ifls.read_as_enum(UARTIFLS::RXIFLSEL) {
            Some(Value::OneEighth) => 1,
            Some(Value::OneQuarter) => 2,
            Some(Value::ThreeQuarters) => 6,
            Some(Value::SevenEighths) => 7,
            // Reserved encodings behave as the reset value, 1/2.
            Some(Value::OneHalf) | None => 4,
        };
        RX_FIFO_DEPTH / 8 * eighths
    }

    /// UARTRIS: the latched bits plus the derived receive timeout.
    fn ris(&self) -> u32 {
        let level = self.state.rx.len();
        let mut ris = self.state.ris_latched.get();
        if self.state.rx_timeout_pending && level > 0 && level < self.rx_trigger() {
            ris |= bits(UARTINT::RT);
        }
        ris
    }

    fn mis(&self) -> u32 {
        self.ris() & self.state.imsc.get()
    }

    fn fr(&self) -> u32 {
        let mut fr = UARTFR::TXFE::SET.value;
        if self.state.rx.len() == 0 {
            fr |= UARTFR::RXFE::SET.value;
        }
        if self.state.rx.len() >= self.rx_capacity() {
            fr |= UARTFR::RXFF::SET.value;
        }
        fr
    }

    /// An entry (a byte, perhaps marked [`ENTRY_FROM_LINE`]) arriving at the receiver, from
    /// the line or through loopback.
    fn receive(&mut self, mut entry: u16) -> bool {
        let before = self.state.rx.len();
        if self.state.overrun_pending {
            // UARTDR.OE is bit 11, so the conversion cannot fail.
            entry |= u16::try_from(bits(UARTDR::OE)).unwrap_or(0);
        }
        if !self.state.rx.push(entry, self.rx_capacity()) {
            // §3.3.2: the FIFO keeps its contents, the new byte is lost, OE is set at once.
            self.state.rsr.modify(UARTRSR::OE::SET);
            self.state.ris_latched.modify(UARTINT::OE::SET);
            self.state.overrun_pending = true;
            return false;
        }
        self.state.overrun_pending = false;
        let trigger = self.rx_trigger();
        if before < trigger && self.state.rx.len() >= trigger {
            self.state.ris_latched.modify(UARTINT::RX::SET);
        }
        self.state.rx_timeout_pending = true;
        true
    }

    fn flush_rx(&mut self) {
        self.state.rx.clear();
        self.state.ris_latched.modify(UARTINT::RX::CLEAR);
        self.state.rx_timeout_pending = false;
        self.state.overrun_pending = false;
    }

    fn read_dr(&mut self) -> u32 {
        let Some(entry) = self.state.rx.pop() else {
            // Reading an empty FIFO returns nothing useful on the hardware either.
            return 0;
        };
        let entry = u32::from(entry) & (bits(UARTDR::DATA) | UARTDR_ERROR_BITS);
        // §3.3.2: UARTRSR reports the errors of the byte just read; OE stays until UARTECR.
        let errors = (entry & UARTDR_ERROR_BITS) >> UARTDR::FE.shift;
        self.state
            .rsr
            .set((self.state.rsr.get() & bits(UARTRSR::OE)) | errors);
        if self.state.rx.len() < self.rx_trigger() {
            self.state.ris_latched.modify(UARTINT::RX::CLEAR);
        }
        if self.state.rx.len() == 0 {
            self.state.rx_timeout_pending = false;
        }
        // The read made room: the next queued byte comes in (with FEN=0 the holding register
        // fills again, which raises RXRIS again).
        if !self.input.is_empty() {
            self.pull_input();
        }
        entry
    }

    fn write_dr(&mut self, value: u32) {
        // Only the low 8 bits are written: the bit range is masked to fit.
        let byte = u8::try_from(UARTDR::DATA.read(value)).unwrap_or(0);
        if self.state.cr.is_set(UARTCR::LBE) {
            self.receive(u16::from(byte));
        } else {
            self.backend.tx(byte);
        }
        // The byte has left the (single-entry) transmit FIFO at once: the FIFO went through the
        // trigger level, which is what raises TXRIS (§3.4.3).
        self.state.ris_latched.modify(UARTINT::TX::SET);
    }

    fn write_lcr_h(&mut self, value: u32) {
        let new = value & UARTLCR_H_BITS;
        let toggled = (new ^ self.state.lcr_h.get()) & bits(UARTLCR_H::FEN) != 0;
        if toggled {
            // The FIFO changes depth and starts empty, but unread console input is not lost:
            // it goes back to the queue and comes in again at the new depth.
            self.return_unread_input();
            self.flush_rx();
        }
        self.state.lcr_h.set(new);
        if toggled {
            self.pull_input();
        }
    }

    fn write_icr(&mut self, value: u32) {
        self.state
            .ris_latched
            .set(self.state.ris_latched.get() & !value);
        if UARTINT::RT.is_set(value) {
            self.state.rx_timeout_pending = false;
        }
    }

    /// A read of any register but UARTFR (see `MmioDevice::read`).
    #[inline(never)]
    fn read_other(
        &mut self,
        word_offset: u64,
        shift: u32,
        width: AccessWidth,
    ) -> Result<u64, MmioError> {
        Ok(lanes_of(
            self.read_reg(Reg::decode(word_offset)),
            shift,
            width,
        ))
    }

    /// The whole 32-bit register at `reg`, with the side effects of reading it.
    #[inline]
    fn read_reg(&mut self, reg: Reg) -> u32 {
        match reg {
            Reg::Dr => self.read_dr(),
            Reg::RsrEcr => self.state.rsr.get(),
            Reg::Fr => self.fr(),
            Reg::Ilpr => self.state.ilpr.get(),
            Reg::Ibrd => self.state.ibrd.get(),
            Reg::Fbrd => self.state.fbrd.get(),
            Reg::LcrH => self.state.lcr_h.get(),
            Reg::Cr => self.state.cr.get(),
            Reg::Ifls => self.state.ifls.get(),
            Reg::Imsc => self.state.imsc.get(),
            Reg::Ris => self.ris(),
            Reg::Mis => self.mis(),
            Reg::Dmacr => self.state.dmacr.get(),
            Reg::Id(id) => u32::from(id),
            // UARTICR is write-only; reserved space is RAZ.
            Reg::Icr | Reg::Reserved => 0,
        }
    }

    /// Writes the byte lanes `lanes` of `reg` with the corresponding bits of `value` (which is
    /// zero outside `lanes`).
    fn write_reg(&mut self, reg: Reg, value: u32, lanes: u32) {
        let merge = |old: u32, valid: u32| ((old & !lanes) | (value & lanes)) & valid;
        match reg {
            Reg::Dr => {
                // The error bits are read-only; a write not covering the data byte sends nothing.
                if lanes & bits(UARTDR::DATA) != 0 {
                    self.write_dr(value);
                }
            }
            // Any write to UARTECR clears all four error flags (§3.3.2).
            Reg::RsrEcr => self.state.rsr.set(0),
            Reg::Ilpr => self
                .state
                .ilpr
                .set(merge(self.state.ilpr.get(), UARTILPR_BITS)),
            Reg::Ibrd => self
                .state
                .ibrd
                .set(merge(self.state.ibrd.get(), UARTIBRD_BITS)),
            Reg::Fbrd => self
                .state
                .fbrd
                .set(merge(self.state.fbrd.get(), UARTFBRD_BITS)),
            Reg::LcrH => {
                let new = merge(self.state.lcr_h.get(), UARTLCR_H_BITS);
                self.write_lcr_h(new);
            }
            Reg::Cr => {
                self.state.cr.set(merge(self.state.cr.get(), UARTCR_BITS));
                // The receiver may just have been turned on.
                self.pull_input();
            }
            Reg::Ifls => self
                .state
                .ifls
                .set(merge(self.state.ifls.get(), UARTIFLS_BITS)),
            Reg::Imsc => self
                .state
                .imsc
                .set(merge(self.state.imsc.get(), UARTINT_BITS)),
            Reg::Icr => self.write_icr(value & lanes & UARTINT_BITS),
            Reg::Dmacr => self
                .state
                .dmacr
                .set(merge(self.state.dmacr.get(), UARTDMACR_BITS)),
            // Read-only registers and reserved space ignore writes.
            Reg::Fr | Reg::Ris | Reg::Mis | Reg::Id(_) | Reg::Reserved => {}
        }
    }
}

/// Validates an access and splits its offset into the register's word offset and the bit
/// position of the access inside that register. The TRM allows 8-, 16- and 32-bit accesses;
/// 64-bit and unaligned ones are refused (the caller injects an external abort).
#[inline]
fn decode_access(offset: u64, width: AccessWidth) -> Result<(u64, u32), MmioError> {
    // (A mask, not `is_multiple_of`: the width is not a constant here, and a division is
    // the slowest instruction on the guest's I/O path.)
    if width == AccessWidth::Double
        || offset & (width.bytes() - 1) != 0
        || offset >= WINDOW_SIZE_BYTES
    {
        return Err(MmioError::BadAccess);
    }
    let byte_in_word = u32::try_from(offset % 4).map_err(|_| MmioError::BadAccess)?;
    Ok((offset & !3, byte_in_word * 8))
}

/// What an access of `width` at bit position `shift` reads of a 32-bit register's `value`.
#[inline(always)]
fn lanes_of(value: u32, shift: u32, width: AccessWidth) -> u64 {
    u64::from(value.checked_shr(shift).unwrap_or(0)) & width.mask()
}

/// The byte lanes of a 32-bit register an access of `width` at bit position `shift` covers.
fn lane_mask(width: AccessWidth, shift: u32) -> u32 {
    let mask = u32::try_from(width.mask()).unwrap_or(u32::MAX);
    mask.checked_shl(shift).unwrap_or(0)
}

impl MmioDevice for Pl011 {
    fn name(&self) -> &'static str {
        "pl011"
    }

    fn reset(&mut self) {
        Pl011::reset(self);
    }

    #[inline]
    fn irq_level(&self) -> bool {
        Pl011::irq_level(self)
    }

    fn console_input(&mut self, byte: u8) -> bool {
        self.input(byte)
    }

    fn console_room(&self) -> usize {
        self.input_room()
    }

    fn console_focus(&mut self, on: bool) {
        self.set_console_focus(on);
    }

    fn console_clear_input(&mut self) {
        self.clear_input();
    }

    fn size_bytes(&self) -> u64 {
        WINDOW_SIZE_BYTES
    }

    #[inline]
    fn read(&mut self, _vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        let (word_offset, shift) = decode_access(offset, width)?;
        // UARTFR is read before every byte a guest writes and in every polling loop, and its
        // value is a few loads: it is answered here, in a function that needs no stack frame.
        // Every other register goes to `read_other`, whose calls (UARTDR pops the FIFO,
        // RIS/MIS recompute) need one.
        if word_offset == offset::UARTFR {
            Ok(lanes_of(self.fr(), shift, width))
        } else {
            self.read_other(word_offset, shift, width)
        }
    }

    fn write(
        &mut self,
        _vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        let (word_offset, shift) = decode_access(offset, width)?;
        let lanes = lane_mask(width, shift);
        // Masked to the width, so it fits in 32 bits.
        let value = u32::try_from(value & width.mask()).unwrap_or(0);
        let value = value.checked_shl(shift).unwrap_or(0) & lanes;
        self.write_reg(Reg::decode(word_offset), value, lanes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V0: VcpuId = VcpuId(0);
    use std::sync::{Arc, Mutex};
    use std::vec::Vec;

    use AccessWidth::{Byte, Double, Half, Word};

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Pl011Backend for Capture {
        fn tx(&mut self, byte: u8) {
            self.0.lock().unwrap().push(byte);
        }
    }

    fn uart() -> (Pl011, Arc<Mutex<Vec<u8>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        (Pl011::new(Box::new(Capture(sent.clone()))), sent)
    }

    /// A PL011 with its receiver on (UARTEN, TXE, RXE), as a driver leaves it.
    fn rx_uart() -> (Pl011, Arc<Mutex<Vec<u8>>>) {
        let (mut u, sent) = uart();
        wr(&mut u, 0x030, 0x301);
        (u, sent)
    }

    fn rd(u: &mut Pl011, off: u64) -> u32 {
        u32::try_from(u.read(V0, off, Word).unwrap()).unwrap()
    }

    fn wr(u: &mut Pl011, off: u64, value: u32) {
        u.write(V0, off, Word, u64::from(value)).unwrap();
    }

    /// `Pl011::read_changes_irq` is what lets the exit fast path skip re-sampling the line:
    /// from many states, a read of any register but UARTDR leaves the state (so the line)
    /// unchanged.
    #[test]
    fn only_data_register_reads_have_side_effects() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let (mut u, _) = uart();
            // A random state: control, masks, FIFO mode, some input, some output.
            wr(&mut u, 0x30, (next() as u32) & 0xff87);
            wr(&mut u, 0x38, (next() as u32) & 0x7ff);
            wr(&mut u, 0x2c, (next() as u32) & 0xff);
            for _ in 0..(next() % 40) {
                let _ = u.push_rx(next() as u8);
            }
            for _ in 0..(next() % 3) {
                wr(&mut u, 0x00, next() as u32 & 0xff);
            }
            for off in (0..0x1000u64).step_by(4) {
                if Pl011::read_changes_irq(off) {
                    continue;
                }
                let (level, fr) = (u.irq_level(), rd(&mut u, 0x18));
                let _ = u.read(V0, off, Word);
                assert_eq!(u.irq_level(), level, "read of {off:#x} changed the line");
                assert_eq!(rd(&mut u, 0x18), fr, "read of {off:#x} changed UARTFR");
            }
        }
        assert!(Pl011::read_changes_irq(0));
    }

    const FEN: u32 = 1 << 4;
    const TXFE: u32 = 1 << 7;
    const RXFF: u32 = 1 << 6;
    const TXFF: u32 = 1 << 5;
    const RXFE: u32 = 1 << 4;
    const BUSY: u32 = 1 << 3;
    const RXI: u32 = 1 << 4;
    const TXI: u32 = 1 << 5;
    const RTI: u32 = 1 << 6;
    const OEI: u32 = 1 << 10;

    #[test]
    fn identification_registers() {
        let (mut u, _) = uart();
        assert_eq!(u.name(), "pl011");
        assert_eq!(u.size_bytes(), 0x1000);
        let expected = [0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1];
        for (i, &id) in expected.iter().enumerate() {
            let off = 0xFE0 + 4 * i as u64;
            assert_eq!(rd(&mut u, off), id, "offset {off:#x}");
            assert_eq!(u.read(V0, off, Byte).unwrap(), u64::from(id));
            assert_eq!(u.read(V0, off + 1, Byte).unwrap(), 0);
            // Read-only.
            wr(&mut u, off, 0xFFFF_FFFF);
            assert_eq!(rd(&mut u, off), id);
        }
        // Linux's amba_read_periphid: low byte of each word, little-endian.
        let periphid = (0..4).fold(0, |acc, i| acc | (rd(&mut u, 0xFE0 + 4 * i) << (8 * i)));
        let cellid = (0..4).fold(0, |acc, i| acc | (rd(&mut u, 0xFF0 + 4 * i) << (8 * i)));
        assert_eq!(periphid, 0x0034_1011);
        assert_eq!(cellid, 0xB105_F00D);
    }

    #[test]
    fn reset_values() {
        let (mut u, _) = uart();
        assert_eq!(rd(&mut u, 0x030), 0x300);
        assert_eq!(rd(&mut u, 0x034), 0x12);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        for off in [
            0x000, 0x004, 0x020, 0x024, 0x028, 0x02C, 0x038, 0x03C, 0x040, 0x048,
        ] {
            assert_eq!(rd(&mut u, off), 0, "offset {off:#x}");
        }
        assert!(!u.irq_level());
        assert_eq!(u.rx_free_slots(), 1);
    }

    #[test]
    fn flag_register_states() {
        let (mut u, _) = rx_uart();
        // FIFO disabled: one byte fills the holding register.
        assert!(u.push_rx(b'a'));
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFF);
        assert_eq!(rd(&mut u, 0x000), u32::from(b'a'));
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        // FIFO enabled: partially filled, then full.
        wr(&mut u, 0x02C, FEN);
        assert!(u.push_rx(b'b'));
        assert_eq!(rd(&mut u, 0x018), TXFE);
        for _ in 1..RX_FIFO_DEPTH {
            assert!(u.push_rx(b'c'));
        }
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFF);
        // Transmitting never makes the TX side busy or full.
        wr(&mut u, 0x000, u32::from(b'x'));
        assert_eq!(rd(&mut u, 0x018) & (TXFF | BUSY), 0);
        assert_eq!(rd(&mut u, 0x018) & TXFE, TXFE);
        // UARTFR is read-only.
        wr(&mut u, 0x018, 0);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFF);
    }

    #[test]
    fn transmit_goes_to_backend() {
        let (mut u, sent) = uart();
        wr(&mut u, 0x030, 0x301);
        wr(&mut u, 0x000, u32::from(b'h'));
        u.write(V0, 0x000, Byte, u64::from(b'i')).unwrap();
        u.write(V0, 0x000, Half, 0x0F00 | u64::from(b'!')).unwrap();
        // Bits above the data byte are ignored.
        wr(&mut u, 0x000, 0xFFFF_FF00 | u32::from(b'\n'));
        // A write that does not cover the data byte transmits nothing.
        u.write(V0, 0x001, Byte, 0x41).unwrap();
        u.write(V0, 0x002, Half, 0x41).unwrap();
        assert_eq!(sent.lock().unwrap().as_slice(), b"hi!\n");
    }

    #[test]
    fn transmit_regardless_of_uarten_and_txe() {
        // QEMU semantics: earlycon writes with UARTCR as left by the previous stage.
        let (mut u, sent) = uart();
        wr(&mut u, 0x000, u32::from(b'a'));
        wr(&mut u, 0x030, 0);
        wr(&mut u, 0x000, u32::from(b'b'));
        wr(&mut u, 0x030, 0x001);
        wr(&mut u, 0x000, u32::from(b'c'));
        assert_eq!(sent.lock().unwrap().as_slice(), b"abc");
    }

    #[test]
    fn earlycon_polling_sequence() {
        // pl011_putc: wait while TXFF, write, wait while BUSY. Must not spin.
        let (mut u, sent) = uart();
        for &c in b"[    0.000000] Booting" {
            assert_eq!(rd(&mut u, 0x018) & TXFF, 0);
            u.write(V0, 0x000, Byte, u64::from(c)).unwrap();
            assert_eq!(rd(&mut u, 0x018) & BUSY, 0);
        }
        assert_eq!(sent.lock().unwrap().as_slice(), b"[    0.000000] Booting");
    }

    #[test]
    fn receive_fifo_order() {
        let (mut u, _) = rx_uart();
        wr(&mut u, 0x02C, FEN);
        for &c in b"hello" {
            assert!(u.push_rx(c));
        }
        let mut got = Vec::new();
        while rd(&mut u, 0x018) & RXFE == 0 {
            got.push(u8::try_from(rd(&mut u, 0x000)).unwrap());
        }
        assert_eq!(got, b"hello");
        // Empty FIFO reads as 0 and stays empty.
        assert_eq!(rd(&mut u, 0x000), 0);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        // The ring wraps around correctly.
        for round in 0..3u8 {
            for i in 0..20u8 {
                assert!(u.push_rx(round * 20 + i));
            }
            for i in 0..20u8 {
                assert_eq!(rd(&mut u, 0x000), u32::from(round * 20 + i));
            }
        }
    }

    #[test]
    fn receive_overflow() {
        let (mut u, _) = rx_uart();
        wr(&mut u, 0x02C, FEN);
        for i in 0..RX_FIFO_DEPTH {
            assert!(u.push_rx(u8::try_from(i).unwrap()));
        }
        assert_eq!(u.rx_free_slots(), 0);
        assert!(!u.push_rx(0xEE));
        assert_eq!(rd(&mut u, 0x004), 1 << 3, "UARTRSR.OE set at once");
        assert_eq!(rd(&mut u, 0x03C) & OEI, OEI);
        // The FIFO keeps its contents; the lost byte is not there.
        assert_eq!(rd(&mut u, 0x000), 0);
        assert_eq!(u.rx_free_slots(), 1);
        assert!(u.push_rx(b'n'));
        for i in 1..RX_FIFO_DEPTH {
            assert_eq!(rd(&mut u, 0x000), u32::try_from(i).unwrap());
        }
        // The first byte after the gap carries UARTDR.OE.
        assert_eq!(rd(&mut u, 0x000), (1 << 11) | u32::from(b'n'));
        assert_eq!(rd(&mut u, 0x004), 1 << 3);
        // UARTECR clears the status; UARTICR clears the interrupt.
        wr(&mut u, 0x004, 0);
        assert_eq!(rd(&mut u, 0x004), 0);
        wr(&mut u, 0x038, OEI);
        assert!(u.irq_level());
        wr(&mut u, 0x044, OEI);
        assert!(!u.irq_level());
        // Later bytes are clean.
        assert!(u.push_rx(b'z'));
        assert_eq!(rd(&mut u, 0x000), u32::from(b'z'));
    }

    #[test]
    fn fifo_disabled_is_one_deep() {
        let (mut u, _) = rx_uart();
        assert!(u.push_rx(b'1'));
        assert!(!u.push_rx(b'2'));
        assert_eq!(rd(&mut u, 0x000), u32::from(b'1'));
        assert!(u.push_rx(b'3'));
        // Enabling the FIFO starts it empty, but the unread byte comes in again.
        wr(&mut u, 0x02C, FEN);
        assert_eq!(rd(&mut u, 0x018), TXFE);
        assert_eq!(u.rx_free_slots(), RX_FIFO_DEPTH - 1);
        assert!(u.push_rx(b'4'));
        assert!(u.push_rx(b'5'));
        // Rewriting LCR_H with FEN unchanged changes nothing.
        wr(&mut u, 0x02C, FEN | 0x60);
        assert_eq!(u.rx_free_slots(), RX_FIFO_DEPTH - 3);
        // Disabling it: one byte in the holding register, the others wait in the queue.
        wr(&mut u, 0x02C, 0x60);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFF);
        assert_eq!(u.input_pending(), 2);
        let mut got = Vec::new();
        while rd(&mut u, 0x018) & RXFE == 0 {
            got.push(u8::try_from(rd(&mut u, 0x000)).unwrap());
        }
        assert_eq!(got, b"345");
        // With the receiver off, a byte on the line is not seen at all (no overrun).
        wr(&mut u, 0x004, 0);
        wr(&mut u, 0x030, 0x101);
        assert!(!u.push_rx(b'6'));
        assert_eq!(rd(&mut u, 0x004), 0);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
    }

    #[test]
    fn input_waits_for_the_receiver_and_room() {
        let (mut u, _) = uart();
        wr(&mut u, 0x038, RXI | RTI);
        // Reset state: UARTEN clear. Input waits in the queue; nothing shows.
        for &c in b"hi!" {
            assert!(u.input(c));
        }
        assert_eq!(u.input_pending(), 3);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        assert!(!u.irq_level());
        // UARTEN without RXE, or in loopback: still nothing.
        wr(&mut u, 0x030, 0x101);
        wr(&mut u, 0x030, 0x381);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        // The receiver on, FIFO disabled: the holding register fills (RXRIS at once).
        wr(&mut u, 0x030, 0x301);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFF);
        assert_eq!(rd(&mut u, 0x03C), RXI);
        assert!(u.irq_level());
        assert_eq!(u.input_pending(), 2);
        // Polling RXFE and reading gets every byte, one at a time, in order; each read
        // fills the holding register again, which raises RXRIS again.
        let mut got = Vec::new();
        while rd(&mut u, 0x018) & RXFE == 0 {
            assert_eq!(rd(&mut u, 0x03C), RXI);
            got.push(u8::try_from(rd(&mut u, 0x000)).unwrap());
        }
        assert_eq!(got, b"hi!");
        assert!(!u.irq_level());
        assert_eq!(u.input_room(), PENDING_INPUT_BYTES);
        // The queue and the FIFO together hold PENDING_INPUT_BYTES.
        wr(&mut u, 0x02C, FEN);
        let mut n = 0;
        while u.input(b'x') {
            n += 1;
        }
        assert_eq!(n, PENDING_INPUT_BYTES);
        assert_eq!(u.input_room(), 0);
        assert_eq!(u.rx_free_slots(), 0);
        assert_eq!(u.input_pending(), PENDING_INPUT_BYTES - RX_FIFO_DEPTH);
        // Never an overrun: flow control held the rest back.
        assert_eq!(rd(&mut u, 0x004), 0);
        for _ in 0..PENDING_INPUT_BYTES {
            assert_eq!(rd(&mut u, 0x000), u32::from(b'x'));
        }
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        assert_eq!(u.input_room(), PENDING_INPUT_BYTES);
        u.clear_input();
    }

    #[test]
    fn reset_gives_unread_input_back() {
        let (mut u, _) = rx_uart();
        wr(&mut u, 0x02C, FEN);
        for &c in b"hello" {
            assert!(u.input(c));
        }
        // A loopback byte is not console input: it does not come back.
        wr(&mut u, 0x030, 0x381);
        wr(&mut u, 0x000, u32::from(b'L'));
        wr(&mut u, 0x030, 0x301);
        assert_eq!(rd(&mut u, 0x000), u32::from(b'h'));
        u.reset();
        assert_eq!(u.input_pending(), 4);
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        // More typed after the reset goes behind it.
        assert!(u.input(b'!'));
        // The guest's next boot turns its receiver on and reads, FIFO disabled.
        wr(&mut u, 0x030, 0x301);
        let mut got = Vec::new();
        while rd(&mut u, 0x018) & RXFE == 0 {
            got.push(u8::try_from(rd(&mut u, 0x000)).unwrap());
        }
        assert_eq!(got, b"ello!");
        // Dropped only on purpose (the VM stopped).
        assert!(u.input(b'z'));
        wr(&mut u, 0x030, 0);
        assert!(u.input(b'y'));
        u.clear_input();
        assert_eq!(u.input_pending(), 0);
    }

    #[test]
    fn transmit_interrupt_raise_mask_clear() {
        let (mut u, _) = uart();
        wr(&mut u, 0x030, 0x301);
        // Enabling the UART does not raise TXRIS by itself (§3.4.3).
        wr(&mut u, 0x038, TXI);
        assert_eq!(rd(&mut u, 0x03C), 0);
        assert!(!u.irq_level());
        wr(&mut u, 0x038, 0);
        wr(&mut u, 0x000, u32::from(b'x'));
        assert_eq!(rd(&mut u, 0x03C), TXI);
        assert_eq!(rd(&mut u, 0x040), 0, "masked");
        assert!(!u.irq_level());
        wr(&mut u, 0x038, TXI);
        assert_eq!(rd(&mut u, 0x040), TXI);
        assert!(u.irq_level());
        // UARTRIS/UARTMIS are read-only.
        wr(&mut u, 0x03C, 0);
        wr(&mut u, 0x040, 0);
        assert!(u.irq_level());
        // UARTICR clears; it reads as zero.
        wr(&mut u, 0x044, TXI);
        assert_eq!(rd(&mut u, 0x044), 0);
        assert_eq!(rd(&mut u, 0x03C), 0);
        assert!(!u.irq_level());
        // Clearing other bits leaves TX alone.
        wr(&mut u, 0x000, u32::from(b'y'));
        wr(&mut u, 0x044, RXI | RTI);
        assert!(u.irq_level());
    }

    #[test]
    fn receive_interrupt_fifo_disabled() {
        let (mut u, _) = rx_uart();
        wr(&mut u, 0x038, RXI | RTI);
        assert!(u.push_rx(b'a'));
        assert_eq!(rd(&mut u, 0x040), RXI, "any byte reaches the trigger");
        assert!(u.irq_level());
        rd(&mut u, 0x000);
        assert_eq!(rd(&mut u, 0x03C), 0);
        assert!(!u.irq_level());
    }

    #[test]
    fn receive_trigger_level_and_timeout() {
        let (mut u, _) = rx_uart();
        wr(&mut u, 0x02C, FEN);
        wr(&mut u, 0x038, RXI | RTI);
        // Reset IFLS selects 1/2: 16 of 32 entries.
        for _ in 0..15 {
            assert!(u.push_rx(b'.'));
        }
        assert_eq!(rd(&mut u, 0x03C), RTI, "below the trigger: timeout only");
        assert!(u.irq_level());
        assert!(u.push_rx(b'.'));
        assert_eq!(rd(&mut u, 0x03C), RXI, "trigger reached");
        // Reading below the trigger clears RXRIS; the timeout shows again.
        rd(&mut u, 0x000);
        assert_eq!(rd(&mut u, 0x03C), RTI);
        // UARTICR.RTIC acknowledges the timeout until the next byte.
        wr(&mut u, 0x044, RTI);
        assert_eq!(rd(&mut u, 0x03C), 0);
        assert!(!u.irq_level());
        rd(&mut u, 0x000);
        assert_eq!(rd(&mut u, 0x03C), 0);
        assert!(u.push_rx(b'.'));
        assert_eq!(rd(&mut u, 0x03C), RTI);
        // Draining clears everything.
        while rd(&mut u, 0x018) & RXFE == 0 {
            rd(&mut u, 0x000);
        }
        assert_eq!(rd(&mut u, 0x03C), 0);
        assert!(!u.irq_level());

        // 1/8: 4 entries.
        wr(&mut u, 0x034, 0);
        for _ in 0..3 {
            u.push_rx(b'.');
        }
        assert_eq!(rd(&mut u, 0x03C), RTI);
        u.push_rx(b'.');
        assert_eq!(rd(&mut u, 0x03C), RXI);
        // UARTICR clears RXRIS without reading.
        wr(&mut u, 0x044, RXI);
        assert_eq!(rd(&mut u, 0x03C), 0);
        while rd(&mut u, 0x018) & RXFE == 0 {
            rd(&mut u, 0x000);
        }
        // 7/8: 28 entries; reserved encodings behave as 1/2.
        for (ifls, trigger) in [(4 << 3, 28), (3 << 3, 24), (1 << 3, 8), (7 << 3, 16)] {
            wr(&mut u, 0x034, ifls);
            for i in 1..=trigger {
                u.push_rx(b'.');
                let rx = rd(&mut u, 0x03C) & RXI;
                assert_eq!(rx != 0, i == trigger, "IFLS {ifls:#x} level {i}");
            }
            while rd(&mut u, 0x018) & RXFE == 0 {
                rd(&mut u, 0x000);
            }
        }
        // Masking.
        wr(&mut u, 0x038, 0);
        u.push_rx(b'.');
        assert_eq!(rd(&mut u, 0x03C), RTI);
        assert!(!u.irq_level());
    }

    #[test]
    fn loopback_feeds_receiver() {
        let (mut u, sent) = uart();
        wr(&mut u, 0x02C, FEN);
        wr(&mut u, 0x030, 0x381);
        wr(&mut u, 0x000, u32::from(b'L'));
        assert!(sent.lock().unwrap().is_empty());
        assert_eq!(rd(&mut u, 0x000), u32::from(b'L'));
        wr(&mut u, 0x030, 0x301);
        wr(&mut u, 0x000, u32::from(b'M'));
        assert_eq!(sent.lock().unwrap().as_slice(), b"M");
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
    }

    #[test]
    fn bad_widths_and_alignment() {
        let (mut u, sent) = uart();
        assert_eq!(u.read(V0, 0x000, Double), Err(MmioError::BadAccess));
        assert_eq!(u.write(V0, 0x000, Double, 0x41), Err(MmioError::BadAccess));
        assert_eq!(u.read(V0, 0x031, Half), Err(MmioError::BadAccess));
        assert_eq!(u.read(V0, 0x032, Word), Err(MmioError::BadAccess));
        assert_eq!(u.write(V0, 0x001, Word, 0x41), Err(MmioError::BadAccess));
        assert_eq!(u.read(V0, 0x1000, Byte), Err(MmioError::BadAccess));
        assert_eq!(u.write(V0, u64::MAX, Byte, 0), Err(MmioError::BadAccess));
        assert!(sent.lock().unwrap().is_empty());
        assert_eq!(rd(&mut u, 0x030), 0x300);
    }

    #[test]
    fn sub_word_accesses() {
        let (mut u, _) = uart();
        assert_eq!(u.read(V0, 0x030, Half).unwrap(), 0x300);
        assert_eq!(u.read(V0, 0x030, Byte).unwrap(), 0x00);
        assert_eq!(u.read(V0, 0x031, Byte).unwrap(), 0x03);
        assert_eq!(u.read(V0, 0x032, Half).unwrap(), 0);
        // A byte write only changes its lane.
        u.write(V0, 0x030, Byte, 0x01).unwrap();
        assert_eq!(rd(&mut u, 0x030), 0x301);
        u.write(V0, 0x031, Byte, 0x00).unwrap();
        assert_eq!(rd(&mut u, 0x030), 0x001);
        // Register widths: IBRD 16 bits, FBRD 6 bits, CR reserved bits 6:3.
        wr(&mut u, 0x024, 0xFFFF_FFFF);
        assert_eq!(rd(&mut u, 0x024), 0xFFFF);
        u.write(V0, 0x025, Byte, 0x12).unwrap();
        assert_eq!(rd(&mut u, 0x024), 0x12FF);
        wr(&mut u, 0x028, 0xFFFF_FFFF);
        assert_eq!(rd(&mut u, 0x028), 0x3F);
        wr(&mut u, 0x030, 0xFFFF_FFFF);
        assert_eq!(rd(&mut u, 0x030), 0xFF87);
        wr(&mut u, 0x030, 0x301);
        wr(&mut u, 0x038, 0xFFFF_FFFF);
        assert_eq!(rd(&mut u, 0x038), 0x7FF);
        wr(&mut u, 0x034, 0xFFFF_FFFF);
        assert_eq!(rd(&mut u, 0x034), 0x3F);
        wr(&mut u, 0x048, 0xFFFF_FFFF);
        assert_eq!(rd(&mut u, 0x048), 0x7);
        wr(&mut u, 0x020, 0xFFFF_FFFF);
        assert_eq!(rd(&mut u, 0x020), 0xFF);
        // Linux writes LCR_H with 16-bit accesses.
        u.write(V0, 0x02C, Half, 0x70).unwrap();
        assert_eq!(u.read(V0, 0x02C, Half).unwrap(), 0x70);
        // A byte of UARTICR clears only the bits in its lane.
        wr(&mut u, 0x000, 0);
        assert_eq!(rd(&mut u, 0x03C), TXI);
        u.write(V0, 0x045, Byte, 0xFF).unwrap();
        assert_eq!(rd(&mut u, 0x03C), TXI);
        u.write(V0, 0x044, Byte, u64::from(TXI)).unwrap();
        assert_eq!(rd(&mut u, 0x03C), 0);
        // The error bits of a received byte at UARTDR+1 (the whole word is popped).
        u.push_rx(b'q');
        assert_eq!(u.read(V0, 0x001, Byte).unwrap(), 0);
        assert_eq!(rd(&mut u, 0x018) & RXFE, RXFE);
    }

    #[test]
    fn reserved_offsets_raz_wi() {
        let (mut u, sent) = uart();
        let reserved = [
            0x008, 0x00C, 0x010, 0x014, 0x01C, 0x04C, 0x080, 0x08C, 0x100, 0xFD0,
        ];
        for off in reserved {
            wr(&mut u, off, 0xFFFF_FFFF);
            u.write(V0, off + 2, Half, 0xFFFF).unwrap();
            u.write(V0, off + 3, Byte, 0xFF).unwrap();
            assert_eq!(rd(&mut u, off), 0, "offset {off:#x}");
            assert_eq!(u.read(V0, off + 1, Byte).unwrap(), 0);
        }
        assert!(sent.lock().unwrap().is_empty());
        assert_eq!(rd(&mut u, 0x030), 0x300);
        assert_eq!(rd(&mut u, 0x038), 0);
    }

    #[test]
    fn reset_restores_everything() {
        let (mut u, sent) = uart();
        wr(&mut u, 0x02C, FEN | 0x60);
        wr(&mut u, 0x024, 1);
        wr(&mut u, 0x028, 2);
        wr(&mut u, 0x020, 3);
        wr(&mut u, 0x030, 0xC301);
        wr(&mut u, 0x034, 0);
        wr(&mut u, 0x038, 0x7FF);
        wr(&mut u, 0x048, 1);
        wr(&mut u, 0x000, u32::from(b'x'));
        for _ in 0..=RX_FIFO_DEPTH {
            u.push_rx(b'y');
        }
        assert!(u.irq_level());
        u.reset();
        // (The bytes it had received wait in the input queue; see reset_gives_unread_input_back.)
        assert_eq!(u.input_pending(), RX_FIFO_DEPTH);
        u.clear_input();
        assert!(!u.irq_level());
        assert_eq!(rd(&mut u, 0x018), TXFE | RXFE);
        assert_eq!(rd(&mut u, 0x030), 0x300);
        assert_eq!(rd(&mut u, 0x034), 0x12);
        for off in [
            0x000, 0x004, 0x020, 0x024, 0x028, 0x02C, 0x038, 0x03C, 0x040, 0x048,
        ] {
            assert_eq!(rd(&mut u, off), 0, "offset {off:#x}");
        }
        // No stale overrun marker on the next byte; the backend is kept.
        wr(&mut u, 0x030, 0x301);
        assert!(u.push_rx(b'z'));
        assert_eq!(rd(&mut u, 0x000), u32::from(b'z'));
        wr(&mut u, 0x000, u32::from(b'w'));
        assert_eq!(sent.lock().unwrap().as_slice(), b"xw");
    }

    #[test]
    fn hostile_access_sequence_never_panics() {
        // A deterministic pseudo-random storm over the whole window and beyond.
        let (mut u, _) = uart();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let widths = [Byte, Half, Word, Double];
        for _ in 0..200_000 {
            let r = next();
            let width = widths[usize::try_from(r & 3).unwrap()];
            let off = if r & 0x10 != 0 {
                (r >> 8) & 0x4F
            } else {
                (r >> 8) & 0x1FFF
            };
            match (r >> 4) & 3 {
                0 => {
                    let _ = u.read(V0, off, width);
                }
                1 | 2 => {
                    let _ = u.write(V0, off, width, next());
                }
                _ => {
                    u.push_rx(u8::try_from(r >> 56).unwrap());
                }
            }
            let _ = u.irq_level();
            assert!(u.rx_free_slots() <= RX_FIFO_DEPTH);
        }
    }
}
