//! The PL011's register map: offsets, field layouts (DDI 0183G §3.3), the implemented bits
//! and reset values of each register, and the decoder from an access offset to a register.

use tock_registers::fields::Field;
use tock_registers::{RegisterLongName, register_bitfields};

/// Size of the register window.
pub(super) const WINDOW_SIZE_BYTES: u64 = 0x1000;

/// Register offsets (DDI 0183G §3.2, Table 3-1).
pub(super) mod offset {
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
pub(super) const ID_REGISTERS: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

register_bitfields! [u32,
    /// UARTDR, data register (§3.3.1). Reads return the error bits with the byte.
    pub(super) UARTDR [
        DATA OFFSET(0) NUMBITS(8) [],
        FE OFFSET(8) NUMBITS(1) [],
        PE OFFSET(9) NUMBITS(1) [],
        BE OFFSET(10) NUMBITS(1) [],
        OE OFFSET(11) NUMBITS(1) []
    ],
    /// UARTRSR/UARTECR, receive status / error clear (§3.3.2).
    pub(super) UARTRSR [
        FE OFFSET(0) NUMBITS(1) [],
        PE OFFSET(1) NUMBITS(1) [],
        BE OFFSET(2) NUMBITS(1) [],
        OE OFFSET(3) NUMBITS(1) []
    ],
    /// UARTFR, flag register (§3.3.3).
    pub(super) UARTFR [
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
    pub(super) UARTILPR [
        ILPDVSR OFFSET(0) NUMBITS(8) []
    ],
    /// UARTIBRD, integer baud rate divisor (§3.3.5).
    pub(super) UARTIBRD [
        BAUD_DIVINT OFFSET(0) NUMBITS(16) []
    ],
    /// UARTFBRD, fractional baud rate divisor (§3.3.6).
    pub(super) UARTFBRD [
        BAUD_DIVFRAC OFFSET(0) NUMBITS(6) []
    ],
    /// UARTLCR_H, line control (§3.3.7).
    pub(super) UARTLCR_H [
        BRK OFFSET(0) NUMBITS(1) [],
        PEN OFFSET(1) NUMBITS(1) [],
        EPS OFFSET(2) NUMBITS(1) [],
        STP2 OFFSET(3) NUMBITS(1) [],
        FEN OFFSET(4) NUMBITS(1) [],
        WLEN OFFSET(5) NUMBITS(2) [],
        SPS OFFSET(7) NUMBITS(1) []
    ],
    /// UARTCR, control register (§3.3.8). Bits 6:3 are reserved.
    pub(super) UARTCR [
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
    pub(super) UARTIFLS [
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
    pub(super) UARTINT [
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
    pub(super) UARTDMACR [
        RXDMAE OFFSET(0) NUMBITS(1) [],
        TXDMAE OFFSET(1) NUMBITS(1) [],
        DMAONERR OFFSET(2) NUMBITS(1) []
    ]
];

/// The bits of `field` in place.
pub(super) const fn bits<R: RegisterLongName>(field: Field<u32, R>) -> u32 {
    field.mask << field.shift
}

/// Implemented (read/write) bits of each storage register; the rest read as zero.
pub(super) const UARTILPR_BITS: u32 = bits(UARTILPR::ILPDVSR);
pub(super) const UARTIBRD_BITS: u32 = bits(UARTIBRD::BAUD_DIVINT);
pub(super) const UARTFBRD_BITS: u32 = bits(UARTFBRD::BAUD_DIVFRAC);
pub(super) const UARTLCR_H_BITS: u32 = bits(UARTLCR_H::BRK)
    | bits(UARTLCR_H::PEN)
    | bits(UARTLCR_H::EPS)
    | bits(UARTLCR_H::STP2)
    | bits(UARTLCR_H::FEN)
    | bits(UARTLCR_H::WLEN)
    | bits(UARTLCR_H::SPS);
pub(super) const UARTCR_BITS: u32 = bits(UARTCR::UARTEN)
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
pub(super) const UARTIFLS_BITS: u32 = bits(UARTIFLS::TXIFLSEL) | bits(UARTIFLS::RXIFLSEL);
pub(super) const UARTINT_BITS: u32 = bits(UARTINT::RIM)
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
pub(super) const UARTDMACR_BITS: u32 =
    bits(UARTDMACR::RXDMAE) | bits(UARTDMACR::TXDMAE) | bits(UARTDMACR::DMAONERR);
/// The error bits UARTDR carries with a received byte (the same order as UARTRSR's, 8 higher).
pub(super) const UARTDR_ERROR_BITS: u32 =
    bits(UARTDR::FE) | bits(UARTDR::PE) | bits(UARTDR::BE) | bits(UARTDR::OE);

/// Reset values (§3.3): UARTCR has TXE and RXE set, UARTIFLS selects 1/2 for both FIFOs.
pub(super) const UARTCR_RESET: u32 = bits(UARTCR::TXE) | bits(UARTCR::RXE);
pub(super) const UARTIFLS_RESET: u32 =
    UARTIFLS::TXIFLSEL::OneHalf.value | UARTIFLS::RXIFLSEL::OneHalf.value;

/// A decoded register, from the word-aligned offset of an access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Reg {
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
    pub(super) fn decode(word_offset: u64) -> Self {
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
