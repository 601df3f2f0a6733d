//! Host tests of the PCI host and its ivshmem-like functions.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::config::{CMD_INTX_DISABLE, CMD_MEMORY, STATUS_INTERRUPT};
use super::ivshmem::*;
use super::*;
use crate::arch::aarch64::sync::Mutex;
use crate::vdev::doorbell::{DoorbellGroup, DoorbellLines, SharedGroup};

/// Records every line change.
#[derive(Default)]
struct Log(Mutex<Vec<(usize, bool)>>);
impl DoorbellLines for Log {
    fn set_line(&self, member: usize, level: bool) {
        self.0.lock().push((member, level));
    }
}

const B: AccessWidth = AccessWidth::Byte;
const H: AccessWidth = AccessWidth::Half;
const W: AccessWidth = AccessWidth::Word;
const D: AccessWidth = AccessWidth::Double;
const V: VcpuId = VcpuId(0);
const BAR0: u32 = 0x0b20_0000;
const REGION: u64 = 0x1_2000_0000;

/// Two hosts (two VMs), member 0 at device 0 of `a`, member 1 at device 2 of `b`.
fn pair() -> (PciHost, PciHost, Arc<Log>, SharedGroup) {
    let group: SharedGroup = Arc::new(Mutex::new(DoorbellGroup::new(2)));
    let log = Arc::new(Log::default());
    let mut a = PciHost::new();
    let mut b = PciHost::new();
    assert!(a.insert(
        0,
        Ivshmem::new(group.clone(), log.clone(), 0, BAR0, REGION, 0x20_0000)
    ));
    assert!(b.insert(
        2,
        Ivshmem::new(
            group.clone(),
            log.clone(),
            1,
            BAR0 + 0x2000,
            0x3000_0000,
            0x60_0000
        )
    ));
    (a, b, log, group)
}

fn cfg(dev: u64, reg: u64) -> u64 {
    dev << 15 | reg
}

fn bar0(dev: u64, reg: u64) -> u64 {
    ECAM_SIZE + dev * BAR0_SIZE + reg
}

fn rd(h: &mut PciHost, off: u64, w: AccessWidth) -> u64 {
    h.read(V, off, w).unwrap()
}

fn wr(h: &mut PciHost, off: u64, w: AccessWidth, v: u64) {
    h.write(V, off, w, v).unwrap();
}

/// Memory Space on, INTx enabled, every member's bit in INTRMASK.
fn enable(h: &mut PciHost, dev: u64) {
    wr(h, cfg(dev, 4), H, u64::from(CMD_MEMORY));
    wr(h, bar0(dev, REG_INTRMASK), W, 0xffff_ffff);
}

#[test]
fn identification_and_header() {
    let (mut a, _, _, _) = pair();
    assert_eq!(rd(&mut a, cfg(0, 0), W), 0x1110_1af4);
    assert_eq!(rd(&mut a, cfg(0, 0), H), 0x1af4);
    assert_eq!(rd(&mut a, cfg(0, 2), H), 0x1110);
    assert_eq!(rd(&mut a, cfg(0, 1), B), 0x1a);
    // Revision 1, class 05 00 00.
    assert_eq!(rd(&mut a, cfg(0, 8), W), 0x0500_0001);
    assert_eq!(
        rd(&mut a, cfg(0, 0xe), B),
        0,
        "header type 0, single function"
    );
    assert_eq!(rd(&mut a, cfg(0, 0x2c), W), 0x1100_1af4);
    assert_eq!(rd(&mut a, cfg(0, 0x3d), B), 1, "INTA");
    assert_eq!(rd(&mut a, cfg(0, 0x34), B), 0, "no capabilities");
    assert_eq!(rd(&mut a, cfg(0, 0x100), W), 0, "no extended capabilities");
    // Interrupt Line is scratch; the pin is read-only.
    wr(&mut a, cfg(0, 0x3c), B, 42);
    wr(&mut a, cfg(0, 0x3d), B, 3);
    assert_eq!(rd(&mut a, cfg(0, 0x3c), H), 0x012a);
    // IDs are read-only.
    wr(&mut a, cfg(0, 0), W, 0);
    assert_eq!(rd(&mut a, cfg(0, 0), W), 0x1110_1af4);
    assert_eq!(a.name(), "pci-ecam");
    assert_eq!(a.size_bytes(), ECAM_SIZE + 8 * BAR0_SIZE);
}

#[test]
fn empty_slots_read_all_ones() {
    let (mut a, mut b, _, _) = pair();
    for dev in [1, 2, 7, 8, 31] {
        assert_eq!(rd(&mut a, cfg(dev, 0), W), 0xffff_ffff, "device {dev}");
        assert_eq!(rd(&mut a, cfg(dev, 0), H), 0xffff);
        wr(&mut a, cfg(dev, 4), H, 0xffff);
    }
    // Functions 1..7 of a present device.
    for f in 1..8 {
        assert_eq!(rd(&mut a, f << 12, W), 0xffff_ffff);
        assert_eq!(rd(&mut a, f << 12 | 0x3d, B), 0xff);
    }
    assert_eq!(rd(&mut b, cfg(0, 0), W), 0xffff_ffff);
    assert_eq!(rd(&mut b, cfg(2, 0), W), 0x1110_1af4);
    // The BAR0 window of an absent device.
    assert_eq!(rd(&mut a, bar0(3, 0), W), 0xffff_ffff);
    wr(&mut a, bar0(3, REG_DOORBELL), W, 0);
}

#[test]
fn command_bits_stick_and_intx_disable_toggles() {
    let (mut a, _, _, _) = pair();
    assert_eq!(rd(&mut a, cfg(0, 4), H), 0);
    wr(&mut a, cfg(0, 4), H, 0xffff);
    assert_eq!(
        rd(&mut a, cfg(0, 4), H),
        u64::from(CMD_MEMORY | 1 << 2 | CMD_INTX_DISABLE),
        "only memory, bus master and INTx disable stick"
    );
    // Linux's pci_intx_mask_broken: flip bit 10 and read it back.
    let cmd = rd(&mut a, cfg(0, 4), H);
    wr(&mut a, cfg(0, 4), H, cmd ^ u64::from(CMD_INTX_DISABLE));
    assert_eq!(rd(&mut a, cfg(0, 4), H), cmd ^ u64::from(CMD_INTX_DISABLE));
    // A byte write to the upper byte of Command changes only that byte.
    wr(&mut a, cfg(0, 5), B, 0x04);
    assert_eq!(rd(&mut a, cfg(0, 4), H) & 0x400, 0x400);
    assert_eq!(rd(&mut a, cfg(0, 4), H) & 0x6, 0x6);
    // A dword write to Command/Status leaves Status alone.
    wr(&mut a, cfg(0, 4), W, 0xffff_0002);
    assert_eq!(rd(&mut a, cfg(0, 4), W), 0x0000_0002);
}

#[test]
fn bar_sizing_with_fixed_addresses() {
    let (mut a, mut b, _, _) = pair();
    assert_eq!(rd(&mut a, cfg(0, 0x10), W), u64::from(BAR0));
    assert_eq!(rd(&mut a, cfg(0, 0x14), W), 0, "BAR1 not implemented");
    assert_eq!(rd(&mut a, cfg(0, 0x18), W), (REGION & 0xffff_ffff) | 0xc);
    assert_eq!(rd(&mut a, cfg(0, 0x1c), W), REGION >> 32);
    // Size BAR0: all ones, read the mask, restore.
    wr(&mut a, cfg(0, 0x10), W, 0xffff_ffff);
    assert_eq!(rd(&mut a, cfg(0, 0x10), W), 0xffff_f000);
    wr(&mut a, cfg(0, 0x10), W, u64::from(BAR0));
    assert_eq!(rd(&mut a, cfg(0, 0x10), W), u64::from(BAR0));
    // Size the 64-bit BAR2 (both halves), as Linux does.
    wr(&mut a, cfg(0, 0x18), W, 0xffff_ffff);
    wr(&mut a, cfg(0, 0x1c), W, 0xffff_ffff);
    assert_eq!(rd(&mut a, cfg(0, 0x18), W), 0xffe0_000c);
    assert_eq!(rd(&mut a, cfg(0, 0x1c), W), 0xffff_ffff);
    wr(&mut a, cfg(0, 0x18), W, REGION & 0xffff_ffff);
    wr(&mut a, cfg(0, 0x1c), W, REGION >> 32);
    assert_eq!(rd(&mut a, cfg(0, 0x18), W), (REGION & 0xffff_ffff) | 0xc);
    assert_eq!(rd(&mut a, cfg(0, 0x1c), W), REGION >> 32);
    // Any other value does not move the BAR.
    wr(&mut a, cfg(0, 0x10), W, 0x1234_5000);
    assert_eq!(rd(&mut a, cfg(0, 0x10), W), u64::from(BAR0));
    // A 6 MiB region is reported as the next power of two.
    wr(&mut b, cfg(2, 0x18), W, 0xffff_ffff);
    assert_eq!(rd(&mut b, cfg(2, 0x18), W), 0xff80_000c);
    // Writes to unimplemented BARs are ignored.
    wr(&mut a, cfg(0, 0x14), W, 0xffff_ffff);
    assert_eq!(rd(&mut a, cfg(0, 0x14), W), 0);
    // Reset ends sizing.
    wr(&mut a, cfg(0, 0x10), W, 0xffff_ffff);
    a.reset();
    assert_eq!(rd(&mut a, cfg(0, 0x10), W), u64::from(BAR0));
}

#[test]
fn registers_and_memory_space_enable() {
    let (mut a, mut b, _, _) = pair();
    // Memory Space off: a master abort.
    assert_eq!(rd(&mut a, bar0(0, REG_IVPOSITION), W), 0xffff_ffff);
    wr(&mut a, bar0(0, REG_INTRMASK), W, 5);
    wr(&mut a, cfg(0, 4), H, u64::from(CMD_MEMORY));
    assert_eq!(rd(&mut a, bar0(0, REG_INTRMASK), W), 0, "ignored while off");
    assert_eq!(rd(&mut a, bar0(0, REG_IVPOSITION), W), 0);
    assert_eq!(rd(&mut a, bar0(0, REG_PEERS), W), 2);
    assert_eq!(rd(&mut a, bar0(0, 0x800), W), 0, "reserved");
    wr(&mut b, cfg(2, 4), H, u64::from(CMD_MEMORY));
    assert_eq!(rd(&mut b, bar0(2, REG_IVPOSITION), W), 1);
    wr(&mut a, bar0(0, REG_INTRMASK), W, 5);
    assert_eq!(rd(&mut a, bar0(0, REG_INTRMASK), W), 5);
}

#[test]
fn doorbell_raises_intx_and_uio_masking_works() {
    let (mut a, mut b, log, _) = pair();
    enable(&mut a, 0);
    enable(&mut b, 2);
    // A rings B (peer 1).
    wr(&mut a, bar0(0, REG_DOORBELL), W, 1 << 16);
    assert_eq!(*log.0.lock(), [(1, true)]);
    assert_eq!(
        rd(&mut b, cfg(2, 6), H) & u64::from(STATUS_INTERRUPT),
        u64::from(STATUS_INTERRUPT)
    );
    // uio_pci_generic's handler: Interrupt Status set, so it sets INTx Disable: line falls,
    // Interrupt Status stays.
    wr(
        &mut b,
        cfg(2, 4),
        H,
        u64::from(CMD_MEMORY | CMD_INTX_DISABLE),
    );
    assert_eq!(*log.0.lock(), [(1, true), (1, false)]);
    assert_ne!(rd(&mut b, cfg(2, 6), H) & u64::from(STATUS_INTERRUPT), 0);
    // User space clears INTx Disable with the status still pending: the line comes back.
    wr(&mut b, cfg(2, 4), H, u64::from(CMD_MEMORY));
    assert_eq!(log.0.lock().last(), Some(&(1, true)));
    // Reading INTRSTATUS returns who rang and clears it: the line falls.
    assert_eq!(rd(&mut b, bar0(2, REG_INTRSTATUS), W), 0b01);
    assert_eq!(log.0.lock().last(), Some(&(1, false)));
    assert_eq!(rd(&mut b, bar0(2, REG_INTRSTATUS), W), 0);
    assert_eq!(rd(&mut b, cfg(2, 6), H) & u64::from(STATUS_INTERRUPT), 0);
    // B rings A back; the vector bits are ignored.
    wr(&mut b, bar0(2, REG_DOORBELL), W, 0x0000_0007);
    assert_eq!(log.0.lock().last(), Some(&(0, true)));
    let n = log.0.lock().len();
    // A masked ring (INTRMASK 0) sets the status, not the line, and not Interrupt Status.
    wr(&mut a, bar0(0, REG_INTRMASK), W, 0);
    assert_eq!(log.0.lock().last(), Some(&(0, false)));
    wr(&mut b, bar0(2, REG_DOORBELL), W, 0);
    assert_eq!(log.0.lock().len(), n + 1);
    assert_eq!(rd(&mut a, cfg(0, 6), H) & u64::from(STATUS_INTERRUPT), 0);
    // Unmasking it raises the line.
    wr(&mut a, bar0(0, REG_INTRMASK), W, 0b10);
    assert_eq!(log.0.lock().last(), Some(&(0, true)));
}

#[test]
fn disabled_intx_never_raises_the_line() {
    let (mut a, mut b, log, _) = pair();
    enable(&mut a, 0);
    enable(&mut b, 2);
    wr(
        &mut b,
        cfg(2, 4),
        H,
        u64::from(CMD_MEMORY | CMD_INTX_DISABLE),
    );
    wr(&mut a, bar0(0, REG_DOORBELL), W, 1 << 16);
    assert!(log.0.lock().is_empty());
    assert_ne!(rd(&mut b, cfg(2, 6), H) & u64::from(STATUS_INTERRUPT), 0);
}

#[test]
fn hostile_accesses() {
    let (mut a, _, log, _) = pair();
    enable(&mut a, 0);
    // ECAM: 64-bit and misaligned accesses abort.
    assert_eq!(a.read(V, cfg(0, 0), D), Err(MmioError::BadAccess));
    assert_eq!(a.write(V, cfg(0, 4), D, 0), Err(MmioError::BadAccess));
    assert_eq!(a.read(V, cfg(0, 1), H), Err(MmioError::BadAccess));
    assert_eq!(a.read(V, cfg(0, 2), W), Err(MmioError::BadAccess));
    assert_eq!(a.write(V, cfg(0, 3), H, 0), Err(MmioError::BadAccess));
    assert_eq!(a.read(V, cfg(5, 1), H), Err(MmioError::BadAccess));
    // BAR0: only aligned words, present device or not.
    for w in [B, H, D] {
        assert_eq!(a.read(V, bar0(0, 0), w), Err(MmioError::BadAccess));
        assert_eq!(
            a.write(V, bar0(0, REG_DOORBELL), w, 0),
            Err(MmioError::BadAccess)
        );
        assert_eq!(a.read(V, bar0(5, 0), w), Err(MmioError::BadAccess));
    }
    assert_eq!(a.read(V, bar0(0, 2), W), Err(MmioError::BadAccess));
    // Ringing peers that do not exist: ignored.
    for v in [2u64 << 16, 0xffff << 16, u64::from(u32::MAX)] {
        wr(&mut a, bar0(0, REG_DOORBELL), W, v);
    }
    assert!(log.0.lock().is_empty());
    // Read-only registers ignore writes.
    wr(&mut a, bar0(0, REG_IVPOSITION), W, 9);
    wr(&mut a, bar0(0, REG_PEERS), W, 9);
    wr(&mut a, bar0(0, REG_INTRSTATUS), W, 9);
    assert_eq!(rd(&mut a, bar0(0, REG_IVPOSITION), W), 0);
    assert_eq!(rd(&mut a, bar0(0, REG_PEERS), W), 2);
    assert_eq!(rd(&mut a, bar0(0, REG_INTRSTATUS), W), 0);
    // Every offset of the whole window answers without a panic.
    let mut off = 0;
    while off < WINDOW_SIZE {
        let _ = a.read(V, off, W);
        let _ = a.write(V, off, W, 0xffff_ffff);
        off += 0x7c4;
    }
    // Slot bounds.
    let group: SharedGroup = Arc::new(Mutex::new(DoorbellGroup::new(1)));
    let f = || Ivshmem::new(group.clone(), log.clone(), 0, BAR0, REGION, 0x20_0000);
    assert!(!a.insert(0, f()), "taken");
    assert!(!a.insert(MAX_DEVICES, f()), "out of range");
    assert!(PciHost::new().is_empty());
    assert!(!a.is_empty());
}

#[test]
fn reset_returns_to_power_on() {
    let (mut a, mut b, log, group) = pair();
    enable(&mut a, 0);
    enable(&mut b, 2);
    wr(&mut b, bar0(2, REG_DOORBELL), W, 0);
    assert_eq!(log.0.lock().last(), Some(&(0, true)));
    a.reset();
    assert_eq!(group.lock().status(0), 0);
    assert!(!group.lock().level(0));
    assert_eq!(rd(&mut a, cfg(0, 4), W), 0);
    // Registers are back to reset values once Memory Space is on again.
    wr(&mut a, cfg(0, 4), H, u64::from(CMD_MEMORY));
    assert_eq!(rd(&mut a, bar0(0, REG_INTRMASK), W), 0);
    // A ring after reset, masked by the reset INTRMASK, does not move the line.
    let n = log.0.lock().len();
    wr(&mut b, bar0(2, REG_DOORBELL), W, 0);
    assert_eq!(log.0.lock().len(), n);
}
