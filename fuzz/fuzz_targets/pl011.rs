//! Fuzz target `pl011`: the emulated PL011's register state machine (`vdev::pl011`), driven by
//! any sequence of guest MMIO reads and writes (any offset, any width), received bytes and
//! resets.
//!
//! Properties: nothing panics; an access is refused exactly when it is 64-bit, misaligned or
//! outside the 4 KiB window; a read returns no bits beyond its width; only UARTDR reads have
//! side effects (`Pl011::read_changes_irq`, which lets the exit fast path skip re-sampling the
//! interrupt line); UARTMIS = UARTRIS & UARTIMSC and the line is UARTMIS != 0; UARTFR's RXFE and
//! RXFF agree with `rx_free_slots`; `push_rx` accepts a byte exactly when the receiver is on and
//! there is room; `input` (console input, flow-controlled) takes a byte exactly when
//! `input_room` says so.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use elvisor::vdev::pl011::{Pl011, Pl011Backend, RX_FIFO_DEPTH};
use elvisor::vdev::{AccessWidth, MmioDevice, VcpuId};
use libfuzzer_sys::fuzz_target;

const V0: VcpuId = VcpuId(0);
const FR: u64 = 0x18;
const LCR_H: u64 = 0x2c;
const IMSC: u64 = 0x38;
const RIS: u64 = 0x3c;
const MIS: u64 = 0x40;
const RXFE: u64 = 1 << 4;
const RXFF: u64 = 1 << 6;
const FEN: u64 = 1 << 4;

#[derive(Arbitrary, Debug)]
enum Op {
    /// `offset` is taken modulo a little more than the window, so the edges are hit often;
    /// `far` sends it anywhere.
    Read {
        offset: u16,
        sas: u8,
        far: Option<u64>,
    },
    Write {
        offset: u16,
        sas: u8,
        value: u64,
    },
    Rx(Vec<u8>),
    Input(Vec<u8>),
    Reset,
}

struct Count(Arc<Mutex<usize>>);
impl Pl011Backend for Count {
    fn tx(&mut self, _byte: u8) {
        *self.0.lock().unwrap() += 1;
    }
}

fn word(u: &mut Pl011, offset: u64) -> u64 {
    u.read(V0, offset, AccessWidth::Word)
        .expect("word read of a register")
}

fn accepts(offset: u64, width: AccessWidth) -> bool {
    width != AccessWidth::Double && offset.is_multiple_of(width.bytes()) && offset < 0x1000
}

fuzz_target!(|ops: Vec<Op>| {
    let sent = Arc::new(Mutex::new(0));
    let mut u = Pl011::new(Box::new(Count(sent.clone())));
    for op in ops.iter().take(512) {
        match op {
            Op::Read { offset, sas, far } => {
                let offset = far.unwrap_or(u64::from(*offset) % 0x1010);
                let width = AccessWidth::from_sas(*sas);
                let level = u.irq_level();
                let r = u.read(V0, offset, width);
                assert_eq!(
                    r.is_ok(),
                    accepts(offset, width),
                    "read {offset:#x} {width:?}"
                );
                if let Ok(v) = r {
                    assert_eq!(v & !width.mask(), 0, "read wider than its access");
                    if !Pl011::read_changes_irq(offset) {
                        assert_eq!(u.irq_level(), level, "read of {offset:#x} moved the line");
                        assert_eq!(
                            u.read(V0, offset, width),
                            Ok(v),
                            "read of {offset:#x} not stable"
                        );
                    }
                }
            }
            Op::Write { offset, sas, value } => {
                let offset = u64::from(*offset) % 0x1010;
                let width = AccessWidth::from_sas(*sas);
                let r = u.write(V0, offset, width, *value);
                assert_eq!(
                    r.is_ok(),
                    accepts(offset, width),
                    "write {offset:#x} {width:?}"
                );
            }
            Op::Rx(bytes) => {
                for &b in bytes.iter().take(40) {
                    let room = u.rx_free_slots();
                    let on = u.receiver_on();
                    assert_eq!(u.push_rx(b), on && room > 0, "push_rx with {room} free");
                    if on {
                        assert_eq!(u.rx_free_slots(), room.saturating_sub(1));
                    }
                }
            }
            Op::Input(bytes) => {
                for &b in bytes.iter().take(40) {
                    let room = u.input_room();
                    assert_eq!(u.input(b), room > 0, "input with {room} room");
                }
            }
            Op::Reset => u.reset(),
        }
        let (ris, imsc, mis) = (word(&mut u, RIS), word(&mut u, IMSC), word(&mut u, MIS));
        assert_eq!(mis, ris & imsc, "UARTMIS");
        assert_eq!(u.irq_level(), mis != 0, "interrupt line vs UARTMIS");
        let fr = word(&mut u, FR);
        let capacity = if word(&mut u, LCR_H) & FEN != 0 {
            RX_FIFO_DEPTH
        } else {
            1
        };
        let free = u.rx_free_slots();
        assert!(free <= capacity);
        assert_eq!(
            fr & RXFE != 0,
            free == capacity,
            "RXFE with {free} free of {capacity}"
        );
        assert_eq!(
            fr & RXFF != 0,
            free == 0,
            "RXFF with {free} free of {capacity}"
        );
    }
});
