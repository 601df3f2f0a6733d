//! Host tests of the PL011 model: registers, FIFOs, interrupts, console input and flow control.

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
