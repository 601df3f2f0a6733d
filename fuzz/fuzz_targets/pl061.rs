//! Fuzz target `pl061`: the emulated PL061 GPIO controller (`vdev::pl061`, the power button),
//! driven by any sequence of guest MMIO reads and writes (any offset, any width), input levels
//! the hypervisor drives and resets.
//!
//! Properties: nothing panics; an access is refused exactly when it is 64-bit, misaligned or
//! outside the 4 KiB window; a read returns no more than the register's byte, and nothing for
//! the upper bytes; GPIODATA read through address mask m is the full read masked by m;
//! GPIOMIS = GPIORIS & GPIOIE and the interrupt line is GPIOMIS != 0; a level-sensitive line's
//! GPIORIS bit is set exactly when its pin is at the GPIOIEV level; GPIOIC clears the edge
//! bits it names; a reset leaves every register zero with the inputs still driven; a line
//! beyond the eighth is refused.
#![no_main]

use arbitrary::Arbitrary;
use elvisor::vdev::pl061::{LINES, Pl061, WINDOW_SIZE_BYTES};
use elvisor::vdev::{AccessWidth, MmioDevice, VcpuId};
use libfuzzer_sys::fuzz_target;

const V0: VcpuId = VcpuId(0);
const DATA_ALL: u64 = 0x3fc;
const DIR: u64 = 0x400;
const IS: u64 = 0x404;
const IEV: u64 = 0x40c;
const IE: u64 = 0x410;
const RIS: u64 = 0x414;
const MIS: u64 = 0x418;
const IC: u64 = 0x41c;

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
    Input {
        line: u8,
        level: bool,
    },
    Reset,
}

fn byte(g: &mut Pl061, offset: u64) -> u64 {
    g.read(V0, offset, AccessWidth::Word)
        .expect("word read of a register")
}

fn accepts(offset: u64, width: AccessWidth) -> bool {
    width != AccessWidth::Double
        && offset.is_multiple_of(width.bytes())
        && offset < WINDOW_SIZE_BYTES
}

fuzz_target!(|ops: Vec<Op>| {
    let mut g = Pl061::new();
    for op in ops.iter().take(512) {
        match *op {
            Op::Read { offset, sas, far } => {
                let offset = far.unwrap_or(u64::from(offset) % (WINDOW_SIZE_BYTES + 0x10));
                let width = AccessWidth::from_sas(sas);
                let r = g.read(V0, offset, width);
                assert_eq!(
                    r.is_ok(),
                    accepts(offset, width),
                    "read {offset:#x} {width:?}"
                );
                if let Ok(v) = r {
                    assert!(v <= 0xff, "read {offset:#x} gave {v:#x}");
                    if offset & 3 != 0 {
                        assert_eq!(v, 0, "upper byte of {offset:#x}");
                    }
                }
            }
            Op::Write { offset, sas, value } => {
                let offset = u64::from(offset) % (WINDOW_SIZE_BYTES + 0x10);
                let width = AccessWidth::from_sas(sas);
                let r = g.write(V0, offset, width, value);
                assert_eq!(
                    r.is_ok(),
                    accepts(offset, width),
                    "write {offset:#x} {width:?}"
                );
                if r.is_ok() && offset == IC {
                    // GPIOIC moves no pin, so none of the edges it names can be raised again.
                    let edges = byte(&mut g, RIS) & !byte(&mut g, IS);
                    assert_eq!(edges & value & 0xff, 0, "GPIOIC left edges");
                }
            }
            Op::Input { line, level } => {
                assert_eq!(g.set_input(line, level), line < LINES);
            }
            Op::Reset => {
                g.reset();
                for reg in [DIR, IS, 0x408, IEV, IE, MIS, 0x420] {
                    assert_eq!(byte(&mut g, reg), 0, "register {reg:#x} after reset");
                }
            }
        }
        // Invariants after every step.
        let pins = byte(&mut g, DATA_ALL);
        for mask in [0x01u64, 0x08, 0x55, 0xaa, 0xff] {
            assert_eq!(
                byte(&mut g, mask << 2),
                pins & mask,
                "GPIODATA through mask {mask:#x}"
            );
        }
        let (ris, ie, mis) = (byte(&mut g, RIS), byte(&mut g, IE), byte(&mut g, MIS));
        assert_eq!(mis, ris & ie, "GPIOMIS");
        assert_eq!(g.irq_level(), mis != 0, "interrupt line");
        let (is, iev) = (byte(&mut g, IS), byte(&mut g, IEV));
        assert_eq!(
            ris & is,
            is & !(pins ^ iev) & 0xff,
            "level-sensitive GPIORIS"
        );
    }
});
