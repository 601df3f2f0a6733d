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

use tock_registers::LocalRegisterCopy;

use super::{AccessWidth, MmioDevice, MmioError, VcpuId};
use crate::console::{PENDING_INPUT_BYTES, PendingInput};

mod fifo;
mod regs;

use fifo::{ENTRY_FROM_LINE, RxFifo};
use regs::*;

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
mod tests;
