//! Host tests of the virtio-mmio transport, the split queues and virtio-blk, through a small
//! driver written here (it plays the guest: registers through `MmioDevice`, rings in a
//! `VecMemory`).

use alloc::vec;
use alloc::vec::Vec;

use super::blk::{self, Blk};
use super::mmio::reg;
use super::queue::desc_flags::{INDIRECT, NEXT, WRITE};
use super::*;
use crate::vdev::{AccessWidth, MmioDevice, MmioError, VcpuId};

const V0: VcpuId = VcpuId(0);
const RAM: u64 = 0x4000_0000;
const RAM_BYTES: usize = 1 << 20;
const DESC: u64 = RAM + 0x1000;
const AVAIL: u64 = RAM + 0x2000;
const USED: u64 = RAM + 0x3000;
/// Where tests put buffers and indirect tables.
const BUF: u64 = RAM + 0x1_0000;

/// A device for transport tests: one queue of up to 8 entries; it copies every readable
/// byte into `seen`, fills the writable bytes with 0xA5 and reports them all written. Its
/// 8-byte configuration space is writable.
struct Probe {
    seen: Vec<u8>,
    config: [u8; 8],
    handled: usize,
}

impl VirtioDevice for Probe {
    fn device_id(&self) -> u32 {
        42
    }
    fn device_features(&self) -> u64 {
        1 << 3
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn queue_max_size(&self, _queue: u16) -> u16 {
        8
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) -> bool {
        for (k, b) in data.iter().enumerate() {
            if let Some(c) = self.config.get_mut(offset as usize + k) {
                *c = *b;
            }
        }
        true
    }
    fn handle(&mut self, _queue: u16, req: &mut Request<'_>) -> Result<u32, &'static str> {
        let mut buf = vec![0u8; req.readable_bytes() as usize];
        req.read(0, &mut buf).map_err(|_| "read")?;
        self.seen.extend_from_slice(&buf);
        let out = vec![0xA5u8; req.writable_bytes() as usize];
        req.write(0, &out).map_err(|_| "write")?;
        self.handled += 1;
        Ok(req.writable_bytes())
    }
}

fn probe() -> Probe {
    Probe {
        seen: Vec::new(),
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        handled: 0,
    }
}

/// The guest side.
struct Driver<D: VirtioDevice> {
    t: VirtioMmio<VecMemory, D>,
    size: u16,
    avail_idx: u16,
}

impl<D: VirtioDevice> Driver<D> {
    fn new(dev: D) -> Self {
        Self {
            t: VirtioMmio::new(VecMemory::new(GuestPhysAddr(RAM), RAM_BYTES), dev),
            size: 0,
            avail_idx: 0,
        }
    }

    fn r(&mut self, offset: u64) -> u32 {
        self.t.read(V0, offset, AccessWidth::Word).unwrap() as u32
    }

    fn w(&mut self, offset: u64, value: u32) {
        self.t
            .write(V0, offset, AccessWidth::Word, u64::from(value))
            .unwrap();
    }

    fn offered(&mut self) -> u64 {
        self.w(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.r(reg::DEVICE_FEATURES);
        self.w(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.r(reg::DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// §3.1.1 steps 1-6; returns whether FEATURES_OK stuck.
    fn negotiate(&mut self, features: u64) -> bool {
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, status::ACKNOWLEDGE);
        self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, features as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w(reg::STATUS, s);
        self.r(reg::STATUS) & status::FEATURES_OK != 0
    }

    fn setup_queue(&mut self, size: u16) {
        self.size = size;
        self.avail_idx = 0;
        self.w(reg::QUEUE_SEL, 0);
        self.w(reg::QUEUE_NUM, u32::from(size));
        self.w(reg::QUEUE_DESC_LOW, DESC as u32);
        self.w(reg::QUEUE_DESC_HIGH, (DESC >> 32) as u32);
        self.w(reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        self.w(reg::QUEUE_DRIVER_HIGH, 0);
        self.w(reg::QUEUE_DEVICE_LOW, USED as u32);
        self.w(reg::QUEUE_DEVICE_HIGH, 0);
        self.w(reg::QUEUE_READY, 1);
    }

    fn driver_ok(&mut self) {
        let s = self.r(reg::STATUS);
        self.w(reg::STATUS, s | status::DRIVER_OK);
    }

    /// Negotiates `features` and brings queue 0 up with `size` entries.
    fn up(dev: D, features: u64, size: u16) -> Self {
        let mut d = Self::new(dev);
        assert!(d.negotiate(features), "FEATURES_OK refused");
        d.setup_queue(size);
        assert_eq!(d.r(reg::QUEUE_READY), 1);
        d.driver_ok();
        assert_eq!(d.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        d
    }

    fn mem(&mut self) -> &mut VecMemory {
        self.t.memory()
    }

    fn desc_at(&mut self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem().write(table + 16 * u64::from(i), &raw).unwrap();
    }

    fn desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(DESC, i, addr, len, flags, next);
    }

    /// Makes the chain at `head` available (without notifying).
    fn offer(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem().write_u16(AVAIL + 4 + 2 * slot, head).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let idx = self.avail_idx;
        self.mem().write_u16(AVAIL + 2, idx).unwrap();
    }

    fn notify(&mut self) {
        self.w(reg::QUEUE_NOTIFY, 0);
    }

    fn used_idx(&mut self) -> u16 {
        self.mem().read_u16(USED + 2).unwrap()
    }

    fn used(&mut self, i: u16) -> (u32, u32) {
        let e = USED + 4 + 8 * u64::from(i % self.size);
        (
            self.mem().read_u32(e).unwrap(),
            self.mem().read_u32(e + 4).unwrap(),
        )
    }

    fn needs_reset(&mut self) -> bool {
        self.r(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
    }

    fn ack_all(&mut self) {
        let s = self.r(reg::INTERRUPT_STATUS);
        self.w(reg::INTERRUPT_ACK, s);
    }
}

const ALL: u64 = feature::VERSION_1 | feature::EVENT_IDX | feature::INDIRECT_DESC;

// ---- registers and negotiation ---------------------------------------------------------------

#[test]
fn identity_registers() {
    let mut d = Driver::new(probe());
    assert_eq!(d.r(reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.r(reg::VERSION), 2);
    assert_eq!(d.r(reg::DEVICE_ID), 42);
    assert_eq!(d.r(reg::VENDOR_ID), VENDOR_ID);
    let f = d.offered();
    assert_eq!(f, (1 << 3) | ALL);
    d.w(reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(d.r(reg::DEVICE_FEATURES), 0);
    assert_eq!(d.r(reg::QUEUE_NUM_MAX), 8);
    d.w(reg::QUEUE_SEL, 1);
    assert_eq!(d.r(reg::QUEUE_NUM_MAX), 0, "no queue 1");
    // Write-only and reserved registers read as zero.
    for o in [
        reg::QUEUE_NOTIFY,
        reg::INTERRUPT_ACK,
        reg::QUEUE_DESC_LOW,
        0x0c0,
        0x0f8,
    ] {
        assert_eq!(d.r(o), 0, "offset {o:#x}");
    }
}

#[test]
fn control_registers_take_only_aligned_words() {
    let mut d = Driver::new(probe());
    for (o, w) in [
        (0, AccessWidth::Byte),
        (0, AccessWidth::Half),
        (0, AccessWidth::Double),
        (2, AccessWidth::Word),
        (0x70, AccessWidth::Byte),
    ] {
        assert_eq!(
            d.t.read(V0, o, w),
            Err(MmioError::BadAccess),
            "{o:#x} {w:?}"
        );
        assert_eq!(d.t.write(V0, o, w, 1), Err(MmioError::BadAccess));
    }
    // The configuration space takes bytes, halves and words, aligned.
    assert_eq!(d.t.read(V0, 0x100, AccessWidth::Byte), Ok(1));
    assert_eq!(d.t.read(V0, 0x102, AccessWidth::Half), Ok(0x0403));
    assert_eq!(d.t.read(V0, 0x104, AccessWidth::Word), Ok(0x0807_0605));
    assert_eq!(
        d.t.read(V0, 0x106, AccessWidth::Word),
        Err(MmioError::BadAccess)
    );
    assert_eq!(
        d.t.read(V0, 0x100, AccessWidth::Double),
        Err(MmioError::BadAccess)
    );
    assert_eq!(
        d.t.read(V0, 0x108, AccessWidth::Word),
        Ok(0),
        "past the config: zero"
    );
    assert_eq!(d.t.read(V0, 0x1fc, AccessWidth::Word), Ok(0));
    assert_eq!(
        d.t.read(V0, 0x200, AccessWidth::Word),
        Err(MmioError::BadAccess)
    );
}

#[test]
fn feature_negotiation() {
    let mut d = Driver::new(probe());
    assert!(
        !d.negotiate(1 << 3),
        "no VERSION_1: no legacy interface here"
    );
    assert!(
        !d.negotiate(feature::VERSION_1 | (1 << 4)),
        "a feature not offered"
    );
    assert!(!d.negotiate(feature::VERSION_1 | (1 << 40)));
    assert!(d.negotiate(feature::VERSION_1 | feature::EVENT_IDX));
    assert_eq!(d.t.features(), feature::VERSION_1 | feature::EVENT_IDX);
    // Fixed after FEATURES_OK.
    d.w(reg::DRIVER_FEATURES_SEL, 0);
    d.w(reg::DRIVER_FEATURES, 0);
    assert_eq!(d.t.features(), feature::VERSION_1 | feature::EVENT_IDX);
    // A reset forgets them.
    d.w(reg::STATUS, 0);
    assert_eq!(d.r(reg::STATUS), 0);
    assert_eq!(d.t.features(), 0);
}

#[test]
fn status_rules() {
    let mut d = Driver::new(probe());
    d.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert!(d.needs_reset(), "DRIVER_OK without FEATURES_OK");
    assert!(matches!(
        d.t.take_diagnostic(),
        Some(VirtioError::DriverOkWithoutFeaturesOk)
    ));
    d.w(reg::STATUS, 0);
    assert!(!d.needs_reset());
    d.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w(reg::STATUS, status::ACKNOWLEDGE);
    assert!(d.needs_reset(), "a status bit cleared without a reset");
    // The driver cannot set NEEDS_RESET itself, nor clear it except by a reset.
    d.w(reg::STATUS, 0);
    d.w(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DEVICE_NEEDS_RESET,
    );
    assert_eq!(d.r(reg::STATUS), status::ACKNOWLEDGE);
}

#[test]
fn config_generation_and_change_interrupt() {
    let mut d = Driver::up(probe(), ALL, 8);
    let g = d.r(reg::CONFIG_GENERATION);
    d.t.write(V0, 0x101, AccessWidth::Byte, 0x77).unwrap();
    assert_eq!(d.t.read(V0, 0x100, AccessWidth::Half), Ok(0x7701));
    assert_ne!(d.r(reg::CONFIG_GENERATION), g);
    assert_eq!(d.r(reg::INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
    assert!(d.t.irq_level());
    d.w(reg::INTERRUPT_ACK, interrupt::CONFIG_CHANGE);
    assert!(!d.t.irq_level());
}

// ---- queues ------------------------------------------------------------------------------------

#[test]
fn a_chain_round_trip() {
    let mut d = Driver::up(probe(), ALL & !feature::EVENT_IDX, 8);
    d.mem().write(BUF, b"hello ").unwrap();
    d.mem().write(BUF + 0x100, b"world").unwrap();
    d.desc(3, BUF, 6, NEXT, 5);
    d.desc(5, BUF + 0x100, 5, NEXT, 0);
    d.desc(0, BUF + 0x200, 4, WRITE, 0);
    d.offer(3);
    assert!(!d.t.irq_level());
    d.notify();
    assert_eq!(d.t.device().seen, b"hello world");
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used(0), (3, 4));
    let mut out = [0u8; 5];
    d.mem().read(BUF + 0x200, &mut out).unwrap();
    assert_eq!(
        out,
        [0xA5, 0xA5, 0xA5, 0xA5, 0],
        "nothing written past the buffer"
    );
    assert_eq!(d.r(reg::INTERRUPT_STATUS), interrupt::USED_BUFFER);
    assert!(d.t.irq_level());
    d.ack_all();
    assert!(!d.t.irq_level());
    // A notify with nothing new does nothing.
    d.notify();
    assert_eq!(d.used_idx(), 1);
    assert!(!d.t.irq_level());
}

#[test]
fn rings_wrap_and_counters_wrap() {
    let mut d = Driver::up(probe(), ALL & !feature::EVENT_IDX, 8);
    // 65,540 requests one by one: every ring slot many times, and both u16 indices wrap.
    for n in 0..65_540u32 {
        let head = (n % 8) as u16;
        d.desc(head, BUF, 1, WRITE, 0);
        d.offer(head);
        d.notify();
        assert_eq!(d.used_idx(), (n + 1) as u16);
        assert_eq!(d.used((n % 8) as u16), (u32::from(head), 1));
    }
    assert!(!d.needs_reset());
    assert_eq!(d.t.device().handled, 65_540);
}

#[test]
fn several_chains_per_notify() {
    let mut d = Driver::up(probe(), ALL & !feature::EVENT_IDX, 8);
    for i in 0..8 {
        d.desc(i, BUF + 0x10 * u64::from(i), 1, 0, 0);
        d.offer(i);
    }
    d.notify();
    assert_eq!(d.used_idx(), 8);
    assert_eq!(d.t.device().handled, 8);
}

#[test]
fn indirect_tables() {
    let mut d = Driver::up(probe(), ALL, 8);
    let table = BUF + 0x1000;
    d.mem().write(BUF, b"abc").unwrap();
    d.mem().write(BUF + 0x10, b"def").unwrap();
    // A direct descriptor, then one naming a table of three.
    d.desc(0, BUF, 3, NEXT, 1);
    d.desc(1, table, 48, INDIRECT | WRITE, 0);
    d.desc_at(table, 0, BUF + 0x10, 3, NEXT, 2);
    d.desc_at(table, 2, BUF + 0x20, 2, NEXT | WRITE, 1);
    d.desc_at(table, 1, BUF + 0x30, 2, WRITE, 0);
    d.offer(0);
    d.notify();
    assert!(!d.needs_reset(), "{:?}", d.t.take_diagnostic());
    assert_eq!(d.t.device().seen, b"abcdef");
    assert_eq!(d.used(0), (0, 4));
}

#[test]
fn event_idx_suppresses_and_asks() {
    let mut d = Driver::up(probe(), ALL, 8);
    let used_event = AVAIL + 4 + 2 * 8;
    let avail_event = USED + 4 + 8 * 8;
    // Interrupt me only after used entry 1 (the second completion).
    d.mem().write_u16(used_event, 1).unwrap();
    d.desc(0, BUF, 1, WRITE, 0);
    d.offer(0);
    d.notify();
    assert_eq!(d.used_idx(), 1);
    assert!(!d.t.irq_level(), "used_event 1 not yet passed");
    assert_eq!(d.mem().read_u16(avail_event), Ok(1), "notify me at entry 1");
    d.offer(0);
    d.notify();
    assert_eq!(d.used_idx(), 2);
    assert!(d.t.irq_level(), "used_event passed");
}

#[test]
fn no_interrupt_flag_without_event_idx() {
    let mut d = Driver::up(probe(), ALL & !feature::EVENT_IDX, 8);
    d.mem().write_u16(AVAIL, 1).unwrap();
    d.desc(0, BUF, 1, WRITE, 0);
    d.offer(0);
    d.notify();
    assert_eq!(d.used_idx(), 1);
    assert!(!d.t.irq_level());
}

#[test]
fn queue_registers_are_fixed_while_ready_and_ready_reads_back() {
    let mut d = Driver::up(probe(), ALL, 8);
    d.w(reg::QUEUE_NUM, 4);
    d.w(reg::QUEUE_DESC_LOW, 0x1234_0000);
    let q = d.t.queue(0).unwrap();
    assert_eq!((q.size, q.desc), (8, DESC));
    d.w(reg::QUEUE_READY, 0);
    assert_eq!(d.r(reg::QUEUE_READY), 0);
    // A queue that is not ready is not touched.
    d.desc(0, BUF, 1, WRITE, 0);
    d.offer(0);
    d.notify();
    assert_eq!(d.used_idx(), 0);
    assert!(!d.needs_reset());
}

#[test]
fn reset_clears_everything_and_the_device_works_again() {
    let mut d = Driver::up(probe(), ALL, 8);
    d.desc(0, BUF, 0, 0, 0);
    d.offer(0);
    d.notify();
    assert!(d.needs_reset());
    assert!(d.t.irq_level(), "configuration change notification");
    d.w(reg::STATUS, 0);
    assert_eq!(d.r(reg::STATUS), 0);
    assert_eq!(d.r(reg::INTERRUPT_STATUS), 0);
    assert_eq!(d.r(reg::QUEUE_READY), 0);
    assert!(!d.t.irq_level());
    // Fresh rings, as a driver would set them up again.
    d.mem().bytes_mut()[0x1000..0x4000].fill(0);
    assert!(d.negotiate(ALL));
    d.setup_queue(8);
    d.driver_ok();
    d.desc(0, BUF, 1, WRITE, 0);
    d.offer(0);
    d.notify();
    assert_eq!(d.used_idx(), 1);
    assert!(!d.needs_reset());
    // The VM reset path too.
    d.t.reset();
    assert_eq!(d.r(reg::STATUS), 0);
    assert_eq!(d.t.take_diagnostic(), None);
}

// ---- hostile drivers ---------------------------------------------------------------------------

/// Runs `build` against a fresh device (all features, queue of 8), notifies, and returns
/// the diagnostic; checks the device needs a reset, said so with a configuration
/// interrupt, used nothing, and ignores further notifications.
fn hostile(features: u64, build: impl FnOnce(&mut Driver<Probe>)) -> VirtioError {
    let mut d = Driver::up(probe(), features, 8);
    build(&mut d);
    d.notify();
    assert!(d.needs_reset(), "not refused");
    assert_eq!(d.r(reg::INTERRUPT_STATUS) & interrupt::CONFIG_CHANGE, 2);
    assert_eq!(d.used_idx(), 0);
    let e = d.t.take_diagnostic().expect("a diagnostic");
    // The diagnostic prints without panicking.
    let _ = alloc::format!("{e}");
    d.notify();
    assert_eq!(d.t.error_count(), 1, "notifications ignored until reset");
    e
}

fn chain_fault(e: VirtioError) -> ChainFault {
    match e {
        VirtioError::Chain { reason, .. } => reason,
        e => panic!("not a chain fault: {e:?}"),
    }
}

#[test]
fn hostile_descriptor_loop() {
    let e = hostile(ALL, |d| {
        d.desc(0, BUF, 1, NEXT, 1);
        d.desc(1, BUF, 1, NEXT, 0);
        d.offer(0);
    });
    assert!(matches!(
        chain_fault(e),
        ChainFault::TooLong | ChainFault::Loop
    ));
    // A self-loop, and a loop inside an indirect table.
    hostile(ALL, |d| {
        d.desc(2, BUF, 1, NEXT, 2);
        d.offer(2);
    });
    let e = hostile(ALL, |d| {
        d.desc(0, BUF + 0x1000, 32, INDIRECT, 0);
        d.desc_at(BUF + 0x1000, 0, BUF, 1, NEXT, 1);
        d.desc_at(BUF + 0x1000, 1, BUF, 1, NEXT, 0);
        d.offer(0);
    });
    assert_eq!(chain_fault(e), ChainFault::Loop);
}

#[test]
fn hostile_chain_longer_than_the_queue() {
    // Nine distinct buffers through an indirect table, no loop: the queue has 8 entries.
    let e = hostile(ALL, |d| {
        d.desc(0, BUF + 0x1000, 16 * 9, INDIRECT, 0);
        for i in 0..9 {
            d.desc_at(BUF + 0x1000, i, BUF, 1, if i < 8 { NEXT } else { 0 }, i + 1);
        }
        d.offer(0);
    });
    assert_eq!(chain_fault(e), ChainFault::TooLong);
}

#[test]
fn hostile_addresses_and_lengths() {
    let outside = |addr: u64, len: u32| {
        let e = hostile(ALL, |d| {
            d.desc(0, addr, len, WRITE, 0);
            d.offer(0);
        });
        assert!(
            matches!(chain_fault(e), ChainFault::OutsideRam { .. }),
            "{addr:#x}+{len:#x}"
        );
    };
    outside(0, 16);
    outside(RAM - 1, 2);
    outside(RAM + RAM_BYTES as u64 - 1, 2);
    outside(RAM + RAM_BYTES as u64, 1);
    outside(RAM, u32::MAX);
    outside(u64::MAX - 1, 16);
    outside(0x0900_0000, 4); // the UART, not RAM
    let e = hostile(ALL, |d| {
        d.desc(0, BUF, 0, WRITE, 0);
        d.offer(0);
    });
    assert_eq!(chain_fault(e), ChainFault::ZeroLength);
}

/// RAM of 16 GiB that stores only what is written (for chains of 4 GiB and more).
struct Sparse(std::collections::BTreeMap<u64, u8>);

impl GuestMemory for Sparse {
    fn ram_base(&self) -> GuestPhysAddr {
        GuestPhysAddr(RAM)
    }
    fn ram_size_bytes(&self) -> u64 {
        16 << 30
    }
    fn read_raw(&self, offset: u64, buf: &mut [u8]) {
        for (k, b) in buf.iter_mut().enumerate() {
            *b = self.0.get(&(offset + k as u64)).copied().unwrap_or(0);
        }
    }
    fn write_raw(&mut self, offset: u64, data: &[u8]) {
        for (k, b) in data.iter().enumerate() {
            self.0.insert(offset + k as u64, *b);
        }
    }
}

#[test]
fn hostile_chain_of_4_gib() {
    let mut m = Sparse(Default::default());
    let mut q = queue::SplitQueue::new(8);
    q.size = 8;
    q.desc = DESC;
    q.driver = AVAIL;
    q.device = USED;
    q.enable(0, &m).unwrap();
    let put = |m: &mut Sparse, i: u64, len: u32, flags: u16, next: u16| {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&(RAM + 0x1_0000).to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        m.write(DESC + 16 * i, &raw).unwrap();
    };
    put(&mut m, 0, u32::MAX, NEXT, 1);
    put(&mut m, 1, 1, 0, 0);
    let mut segs = Vec::new();
    assert_eq!(
        q.walk(0, 0, ALL, &m, &mut segs),
        Err(VirtioError::Chain {
            queue: 0,
            head: 0,
            reason: ChainFault::TooManyBytes
        })
    );
    // Just under 4 GiB is a valid chain.
    put(&mut m, 0, u32::MAX - 1, NEXT, 1);
    assert_eq!(q.walk(0, 0, ALL, &m, &mut segs), Ok(()));
    assert_eq!(segs.len(), 2);
}

#[test]
fn hostile_indices() {
    let e = hostile(ALL, |d| {
        d.mem().write_u16(AVAIL + 4, 8).unwrap();
        d.mem().write_u16(AVAIL + 2, 1).unwrap();
    });
    assert!(matches!(e, VirtioError::DescIndex { index: 8, .. }));
    let e = hostile(ALL, |d| {
        d.desc(0, BUF, 1, NEXT, 0xffff);
        d.offer(0);
    });
    assert!(matches!(e, VirtioError::DescIndex { index: 0xffff, .. }));
    let e = hostile(ALL, |d| {
        d.desc(0, BUF, 1, WRITE, 0);
        d.mem().write_u16(AVAIL + 2, 9).unwrap();
    });
    assert!(matches!(e, VirtioError::AvailIndex { avail_idx: 9, .. }));
    let e = hostile(ALL, |d| {
        d.mem().write_u16(AVAIL + 2, 0x8000).unwrap();
    });
    assert!(matches!(e, VirtioError::AvailIndex { .. }));
}

#[test]
fn hostile_ordering_and_indirect_rules() {
    let e = hostile(ALL, |d| {
        d.desc(0, BUF, 1, WRITE | NEXT, 1);
        d.desc(1, BUF, 1, 0, 0);
        d.offer(0);
    });
    assert_eq!(chain_fault(e), ChainFault::ReadableAfterWritable);
    let e = hostile(ALL & !feature::INDIRECT_DESC, |d| {
        d.desc(0, BUF + 0x1000, 16, INDIRECT, 0);
        d.desc_at(BUF + 0x1000, 0, BUF, 1, 0, 0);
        d.offer(0);
    });
    assert_eq!(chain_fault(e), ChainFault::IndirectNotNegotiated);
    let e = hostile(ALL, |d| {
        d.desc(0, BUF + 0x1000, 16, INDIRECT, 0);
        d.desc_at(BUF + 0x1000, 0, BUF + 0x2000, 16, INDIRECT, 0);
        d.offer(0);
    });
    assert_eq!(chain_fault(e), ChainFault::IndirectNested);
    let e = hostile(ALL, |d| {
        d.desc(0, BUF + 0x1000, 16, INDIRECT | NEXT, 1);
        d.desc(1, BUF, 1, 0, 0);
        d.offer(0);
    });
    assert_eq!(chain_fault(e), ChainFault::IndirectWithNext);
    for len in [0, 8, 24] {
        let e = hostile(ALL, |d| {
            d.desc(0, BUF + 0x1000, len, INDIRECT, 0);
            d.offer(0);
        });
        assert_eq!(chain_fault(e), ChainFault::IndirectLength { len });
    }
    let e = hostile(ALL, |d| {
        d.desc(0, RAM + RAM_BYTES as u64 - 16, 32, INDIRECT, 0);
        d.offer(0);
    });
    assert!(matches!(chain_fault(e), ChainFault::OutsideRam { .. }));
}

#[test]
fn hostile_notify_before_driver_ok_and_bad_queue() {
    let mut d = Driver::new(probe());
    assert!(d.negotiate(ALL));
    d.setup_queue(8);
    d.desc(0, BUF, 1, WRITE, 0);
    d.offer(0);
    d.notify();
    assert!(d.needs_reset());
    assert_eq!(d.used_idx(), 0, "nothing processed before DRIVER_OK");
    assert!(matches!(
        d.t.take_diagnostic(),
        Some(VirtioError::NotifyBeforeDriverOk { queue: 0 })
    ));
    assert!(!d.t.irq_level(), "no notification before DRIVER_OK");

    let mut d = Driver::up(probe(), ALL, 8);
    d.w(reg::QUEUE_NOTIFY, 7);
    assert!(d.needs_reset());
    assert!(matches!(
        d.t.take_diagnostic(),
        Some(VirtioError::NotifyNoQueue { queue: 7 })
    ));
}

#[test]
fn hostile_queue_configuration() {
    let bad_size = |size: u16| {
        let mut d = Driver::new(probe());
        assert!(d.negotiate(ALL));
        d.setup_queue(size);
        assert_eq!(d.r(reg::QUEUE_READY), 0, "size {size}");
        assert!(d.needs_reset());
        assert!(matches!(
            d.t.take_diagnostic(),
            Some(VirtioError::QueueSize { .. })
        ));
    };
    bad_size(0);
    bad_size(3);
    bad_size(6);
    bad_size(16);
    // Sizes above u16 are clamped, and still refused.
    let mut d = Driver::new(probe());
    assert!(d.negotiate(ALL));
    d.w(reg::QUEUE_NUM, 0x1_0004);
    d.w(reg::QUEUE_READY, 1);
    assert!(d.needs_reset());

    let bad_area = |desc: u64, avail: u64, used: u64| {
        let mut d = Driver::new(probe());
        assert!(d.negotiate(ALL));
        d.w(reg::QUEUE_NUM, 8);
        d.w(reg::QUEUE_DESC_LOW, desc as u32);
        d.w(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        d.w(reg::QUEUE_DRIVER_LOW, avail as u32);
        d.w(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        d.w(reg::QUEUE_DEVICE_LOW, used as u32);
        d.w(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        d.w(reg::QUEUE_READY, 1);
        assert_eq!(d.r(reg::QUEUE_READY), 0);
        assert!(d.needs_reset(), "{desc:#x} {avail:#x} {used:#x}");
        d.t.take_diagnostic().unwrap()
    };
    let end = RAM + RAM_BYTES as u64;
    assert!(matches!(
        bad_area(DESC + 8, AVAIL, USED),
        VirtioError::AreaMisaligned { .. }
    ));
    assert!(matches!(
        bad_area(DESC, AVAIL + 1, USED),
        VirtioError::AreaMisaligned { .. }
    ));
    assert!(matches!(
        bad_area(DESC, AVAIL, USED + 2),
        VirtioError::AreaMisaligned { .. }
    ));
    assert!(matches!(
        bad_area(end - 16, AVAIL, USED),
        VirtioError::AreaOutsideRam { .. }
    ));
    assert!(matches!(
        bad_area(DESC, end - 4, USED),
        VirtioError::AreaOutsideRam { .. }
    ));
    assert!(matches!(
        bad_area(DESC, AVAIL, end - 32),
        VirtioError::AreaOutsideRam { .. }
    ));
    assert!(matches!(
        bad_area(0x1_0000_0000_0000, AVAIL, USED),
        VirtioError::AreaOutsideRam { .. }
    ));
    assert!(matches!(
        bad_area(DESC, AVAIL, u64::MAX - 3),
        VirtioError::AreaOutsideRam { .. }
    ));
}

#[test]
fn completed_chains_are_announced_before_a_refused_one() {
    let mut d = Driver::up(probe(), ALL & !feature::EVENT_IDX, 8);
    d.desc(0, BUF, 1, WRITE, 0);
    d.desc(1, BUF, 0, WRITE, 0);
    d.offer(0);
    d.offer(1);
    d.notify();
    assert_eq!(d.used_idx(), 1);
    assert!(d.needs_reset());
    assert_eq!(
        d.r(reg::INTERRUPT_STATUS),
        interrupt::USED_BUFFER | interrupt::CONFIG_CHANGE
    );
}

// ---- virtio-blk ------------------------------------------------------------------------------

const DISK_SECTORS: u64 = 6144 + 7; // 3 MiB + 7 sectors: not a multiple of 2 MiB
const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x800;

fn disk() -> Vec<u8> {
    // Every byte says where it is, plus a 100-byte tail that is not a whole sector.
    (0..DISK_SECTORS * 512 + 100)
        .map(|i| (i / 512) as u8 ^ (i as u8).rotate_left(3))
        .collect()
}

fn blk_up(read_only: bool) -> Driver<Blk<Vec<u8>>> {
    let dev = Blk::new(disk(), read_only, b"elvisor-test-disk-0123456789");
    Driver::up(dev, ALL, 16)
}

/// Submits a request (header split over two descriptors, data in `data_segs` pieces) and
/// returns (status, used len).
fn blk_req(
    d: &mut Driver<Blk<Vec<u8>>>,
    kind: u32,
    sector: u64,
    data_len: u32,
    data_writable: bool,
) -> (u8, u32) {
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    d.mem().write(HDR, &hdr).unwrap();
    d.mem().write(STATUS, &[0xff]).unwrap();
    let w = if data_writable { WRITE } else { 0 };
    d.desc(4, HDR, 5, NEXT, 9);
    d.desc(9, HDR + 5, 11, NEXT, if data_len > 0 { 2 } else { 7 });
    if data_len > 0 {
        // Data in two pieces, the first not a whole sector.
        let first = data_len.min(700);
        if first < data_len {
            d.desc(2, DATA, first, NEXT | w, 3);
            d.desc(3, DATA + u64::from(first), data_len - first, NEXT | w, 7);
        } else {
            d.desc(2, DATA, first, NEXT | w, 7);
        }
    }
    d.desc(7, STATUS, 1, WRITE, 0);
    let before = d.used_idx();
    d.offer(4);
    d.notify();
    assert!(!d.needs_reset(), "{:?}", d.t.take_diagnostic());
    assert_eq!(d.used_idx(), before.wrapping_add(1));
    let (id, len) = d.used(before);
    assert_eq!(id, 4);
    let mut s = [0u8];
    d.mem().read(STATUS, &mut s).unwrap();
    (s[0], len)
}

#[test]
fn blk_configuration() {
    let mut d = blk_up(false);
    assert_eq!(d.r(reg::DEVICE_ID), 2);
    let f = d.offered();
    assert_eq!(f & blk::feature::RO, 0);
    assert_ne!(f & blk::feature::FLUSH, 0);
    let cap_lo = d.t.read(V0, 0x100, AccessWidth::Word).unwrap();
    let cap_hi = d.t.read(V0, 0x104, AccessWidth::Word).unwrap();
    assert_eq!(
        cap_lo | cap_hi << 32,
        DISK_SECTORS,
        "the 100-byte tail is not a sector"
    );
    assert_eq!(d.t.read(V0, 0x10c, AccessWidth::Word), Ok(254), "seg_max");
    assert_eq!(d.t.read(V0, 0x114, AccessWidth::Word), Ok(512), "blk_size");
    assert_eq!(d.r(reg::QUEUE_NUM_MAX), 256);
    let mut ro = blk_up(true);
    assert_ne!(ro.offered() & blk::feature::RO, 0);
}

#[test]
fn blk_read_write_flush_get_id() {
    let mut d = blk_up(false);
    let reference = disk();
    // Read 3 sectors at 5.
    let (s, len) = blk_req(&mut d, blk::req_type::IN, 5, 1536, true);
    assert_eq!((s, len), (blk::req_status::OK, 1537));
    let mut got = vec![0u8; 1536];
    d.mem().read(DATA, &mut got).unwrap();
    assert_eq!(got[..], reference[5 * 512..8 * 512]);
    // Write 2 sectors at the last two sectors of the disk.
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    d.mem().write(DATA, &data).unwrap();
    let (s, len) = blk_req(&mut d, blk::req_type::OUT, DISK_SECTORS - 2, 1024, false);
    assert_eq!((s, len), (blk::req_status::OK, 1));
    let disk = d.t.device().disk();
    let end = (DISK_SECTORS * 512) as usize;
    assert_eq!(disk[end - 1024..end], data[..]);
    assert_eq!(disk[end..], reference[end..], "the tail is untouched");
    assert_eq!(disk[..end - 1024], reference[..end - 1024]);
    // Read it back through the device.
    d.mem().bytes_mut()[0x1_1000..0x1_1400].fill(0);
    assert_eq!(
        blk_req(&mut d, blk::req_type::IN, DISK_SECTORS - 2, 1024, true).0,
        0
    );
    let mut back = vec![0u8; 1024];
    d.mem().read(DATA, &mut back).unwrap();
    assert_eq!(back, data);
    // Flush.
    assert_eq!(blk_req(&mut d, blk::req_type::FLUSH, 0, 0, false), (0, 1));
    // GET_ID: 20 bytes, the id cut to 20.
    let (s, len) = blk_req(&mut d, blk::req_type::GET_ID, 0, 20, true);
    assert_eq!((s, len), (0, 21));
    let mut id = [0u8; 20];
    d.mem().read(DATA, &mut id).unwrap();
    assert_eq!(&id, b"elvisor-test-disk-01");
    let st = d.t.device().stats();
    assert_eq!((st.reads, st.writes, st.flushes, st.get_ids), (2, 1, 1, 1));
}

#[test]
fn blk_errors_get_a_status() {
    let mut d = blk_up(false);
    let io = blk::req_status::IOERR;
    // Past the end, straddling the end, an overflowing sector.
    assert_eq!(blk_req(&mut d, 0, DISK_SECTORS, 512, true).0, io);
    assert_eq!(blk_req(&mut d, 0, DISK_SECTORS - 1, 1024, true).0, io);
    assert_eq!(blk_req(&mut d, 1, DISK_SECTORS - 1, 1024, false).0, io);
    assert_eq!(blk_req(&mut d, 0, u64::MAX / 256, 512, true).0, io);
    assert_eq!(blk_req(&mut d, 0, u64::MAX, 512, true).0, io);
    // Not a whole number of sectors.
    assert_eq!(blk_req(&mut d, 0, 0, 100, true).0, io);
    assert_eq!(blk_req(&mut d, 1, 0, 513, false).0, io);
    // Types not offered (discard, write zeroes, an unknown one).
    for t in [11, 13, 0xdead] {
        assert_eq!(blk_req(&mut d, t, 0, 0, false).0, blk::req_status::UNSUPP);
    }
    assert_eq!(d.t.device().disk()[..], disk()[..], "nothing written");
    assert!(d.t.device().stats().errors >= 7);
}

#[test]
fn blk_read_only() {
    let mut d = blk_up(true);
    let data = vec![0x5Au8; 512];
    d.mem().write(DATA, &data).unwrap();
    assert_eq!(blk_req(&mut d, 1, 0, 512, false).0, blk::req_status::IOERR);
    assert_eq!(
        d.t.device().disk()[..],
        disk()[..],
        "a read-only disk is not written"
    );
    assert_eq!(blk_req(&mut d, 0, 1, 512, true).0, blk::req_status::OK);
    assert_eq!(
        blk_req(&mut d, 4, 0, 0, false).0,
        blk::req_status::OK,
        "flush"
    );
}

#[test]
fn blk_malformed_requests_need_a_reset() {
    // No status byte.
    let mut d = blk_up(false);
    d.desc(0, HDR, 16, 0, 0);
    d.offer(0);
    d.notify();
    assert!(d.needs_reset());
    assert!(matches!(
        d.t.take_diagnostic(),
        Some(VirtioError::Request { .. })
    ));
    // A header shorter than 16 bytes.
    let mut d = blk_up(false);
    d.desc(0, HDR, 8, NEXT, 1);
    d.desc(1, STATUS, 1, WRITE, 0);
    d.offer(0);
    d.notify();
    assert!(d.needs_reset());
}

// ---- on the bus --------------------------------------------------------------------------------

/// A VM reset lowers every line on both sides (the vGIC is reset with the bus): a device
/// that raises its output again before anything sampled it must still be reported.
#[test]
fn bus_reports_the_line_again_after_a_vm_reset() {
    use crate::vdev::MmioBus;
    let mut d = Driver::up(probe(), feature::VERSION_1, 8);
    d.desc(0, BUF, 1, WRITE, 0);
    d.offer(0);
    // The transport, its queue ready and one chain available, moves onto a bus.
    let spare = VirtioMmio::new(VecMemory::new(GuestPhysAddr(RAM), 0), probe());
    let t = core::mem::replace(&mut d.t, spare);
    let mut bus = MmioBus::new();
    let intid = slot_intid(0);
    bus.add_with_irq(slot_base(0), alloc::boxed::Box::new(t), Some(intid))
        .unwrap();
    let mut edges = Vec::new();
    write_bus(&mut bus, reg::QUEUE_NOTIFY, 0);
    bus.irq_changes(|i, l| edges.push((i, l)));
    assert_eq!(edges, [(intid, true)]);
    // VM reset; the driver brings the device up again and the same chain completes before
    // anything samples the line: the rising edge must be reported again.
    bus.reset_all();
    edges.clear();
    for (o, v) in [
        (reg::STATUS, status::ACKNOWLEDGE | status::DRIVER),
        (reg::DRIVER_FEATURES_SEL, 1),
        (reg::DRIVER_FEATURES, 1),
        (
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        ),
        (reg::QUEUE_NUM, 8),
        (reg::QUEUE_DESC_LOW, DESC as u32),
        (reg::QUEUE_DRIVER_LOW, AVAIL as u32),
        (reg::QUEUE_DEVICE_LOW, USED as u32),
        (reg::QUEUE_READY, 1),
        (
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        ),
        (reg::QUEUE_NOTIFY, 0),
    ] {
        write_bus(&mut bus, o, v);
    }
    bus.irq_changes(|i, l| edges.push((i, l)));
    assert_eq!(edges, [(intid, true)], "the rise after the reset was lost");
}

fn write_bus(bus: &mut crate::vdev::MmioBus, offset: u64, value: u32) {
    let (dev, at) = bus.find(GuestPhysAddr(slot_base(0).0 + offset)).unwrap();
    dev.write(V0, at, AccessWidth::Word, u64::from(value))
        .unwrap();
}

/// A request's bytes copied into another's, RAM to RAM, across segment boundaries that do
/// not line up (as a frame from one VM's transmit buffers into another's receive buffers):
/// directly between two `VecMemory`s, through the bounce buffer from any other memory; a copy
/// past either request's buffers fails before a byte moves.
#[test]
fn request_copy_from_crosses_segments_once() {
    use queue::Segment;
    let seg = |gpa: u64, len: u32, writable: bool| Segment { gpa, len, writable };
    let pattern: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    // Source: a 10-byte header then 1000 bytes in pieces of 10 + 333 + 657 (readable).
    let src_segs = [seg(BUF, 343, false), seg(BUF + 0x8000, 667, false)];
    let fill_src = |m: &mut dyn GuestMemory| {
        let mut all = vec![0xEEu8; 10];
        all.extend_from_slice(&pattern);
        m.write(BUF, &all[..343]).unwrap();
        m.write(BUF + 0x8000, &all[343..]).unwrap();
    };
    // Destination: 12 bytes of header room, then the frame, in 500 + 600 bytes (writable).
    let dst_segs = [seg(BUF + 0x4000, 500, true), seg(BUF + 0xC000, 600, true)];
    let check_dst = |m: &VecMemory| {
        let mut got = vec![0u8; 1000];
        let b = m.bytes();
        let at = |gpa: u64| (gpa - RAM) as usize;
        got[..488].copy_from_slice(&b[at(BUF + 0x4000 + 12)..at(BUF + 0x4000 + 500)]);
        got[488..].copy_from_slice(&b[at(BUF + 0xC000)..at(BUF + 0xC000 + 512)]);
        assert_eq!(got, pattern);
    };

    // VecMemory to VecMemory: the direct path.
    let mut src_mem = VecMemory::new(GuestPhysAddr(RAM), RAM_BYTES);
    fill_src(&mut src_mem);
    let mut dst_mem = VecMemory::new(GuestPhysAddr(RAM), RAM_BYTES);
    {
        let src = Request::new(&mut src_mem, &src_segs);
        let mut dst = Request::new(&mut dst_mem, &dst_segs);
        assert_eq!(dst.copy_from(12, &src, 10, 1000), Ok(()));
        // One byte too many on either side: refused, nothing written.
        assert_eq!(dst.copy_from(101, &src, 10, 1000), Err(ShortBuffer));
        assert_eq!(dst.copy_from(0, &src, 11, 1000), Err(ShortBuffer));
    }
    check_dst(&dst_mem);

    // From a memory of another kind: the same bytes, through the bounce buffer.
    let mut sparse = Sparse(Default::default());
    fill_src(&mut sparse);
    let mut dst_mem = VecMemory::new(GuestPhysAddr(RAM), RAM_BYTES);
    {
        let src = Request::new(&mut sparse, &src_segs);
        let mut dst = Request::new(&mut dst_mem, &dst_segs);
        assert_eq!(dst.copy_from(12, &src, 10, 1000), Ok(()));
    }
    check_dst(&dst_mem);
}
