//! A split virtqueue (virtio 1.2 §2.7) and virtio-mmio bring-up (§4.2.3.1), the driver side
//! of guests/iobench's blk benchmark and of the virtio-net driver in [`crate::virtio_net`]
//! (guests/net, guests/iobench). guests/virtio keeps its own strict test driver: it
//! negotiates without VERSION_1 on purpose and checks raw 32-bit used ids. The MMU is off, so
//! rings and buffers are reached with single 32-bit (and 64-bit) loads and stores through
//! [`Region`]; 16-bit ring fields are written as read-modify-write of their word (the driver
//! is the only writer of the available ring).
//!
//! The per-request functions here and in [`crate::virtio_net`] are `#[inline]`: they are
//! compiled into the calling guest, as they were when guests/iobench had its own copy, so
//! its instruction counts (scripts/bench) do not move with how this crate happens to be
//! split into codegen units (which decides whether `Region`'s accessors are inlined).

use crate::arch::mmio::Region;
use crate::virtio_mmio::{
    ACKNOWLEDGE, DRIVER, DRIVER_OK, F_VERSION_1, FEATURES_OK, NEEDS_RESET, reg,
};

/// Descriptor flags (§2.7.5).
pub const F_NEXT: u32 = 1;
pub const F_WRITE: u32 = 2;

/// Bytes of one queue's rings: descriptors at +0, available ring at +0x1000, used ring at
/// +0x2000 (room for 256 entries each).
pub const RINGS_BYTES: usize = 0x3000;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;

/// One split virtqueue whose rings start at guest-physical `base`.
pub struct Queue {
    ram: Region,
    pub size: u16,
    avail: u16,
    used_seen: u16,
}

impl Queue {
    pub fn new(base: usize, size: u16) -> Option<Self> {
        Some(Self {
            ram: Region::new(base, RINGS_BYTES)?,
            size,
            avail: 0,
            used_seen: 0,
        })
    }

    /// The guest-physical address of the rings (the descriptor table).
    pub fn base(&self) -> usize {
        self.ram.base()
    }

    /// Zeroes the rings, starts the driver's indices over and hands the rings to queue `q` of
    /// `dev`; `no_interrupt` sets VIRTQ_AVAIL_F_NO_INTERRUPT (the driver polls this queue's
    /// used ring instead). Also how a driver takes the queue up again after a device reset.
    pub fn attach(&mut self, dev: &Region, q: u32, no_interrupt: bool) -> bool {
        for o in (0..RINGS_BYTES).step_by(4) {
            self.ram.write32(o, 0);
        }
        self.avail = 0;
        self.used_seen = 0;
        if no_interrupt {
            self.ram.write32(AVAIL, 1);
        }
        let base = self.ram.base();
        dev.write32(reg::QUEUE_SEL, q);
        if dev.read32(reg::QUEUE_NUM_MAX) < u32::from(self.size) {
            return false;
        }
        dev.write32(reg::QUEUE_NUM, u32::from(self.size));
        dev.write32(reg::QUEUE_DESC_LOW, base as u32);
        dev.write32(reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
        dev.write32(reg::QUEUE_DRIVER_LOW, (base + AVAIL) as u32);
        dev.write32(reg::QUEUE_DRIVER_HIGH, ((base + AVAIL) >> 32) as u32);
        dev.write32(reg::QUEUE_DEVICE_LOW, (base + USED) as u32);
        dev.write32(reg::QUEUE_DEVICE_HIGH, ((base + USED) >> 32) as u32);
        dev.write32(reg::QUEUE_READY, 1);
        dev.read32(reg::QUEUE_READY) == 1
    }

    #[inline]
    pub fn desc(&self, i: u16, addr: usize, len: u32, flags: u32, next: u16) {
        let d = 16 * usize::from(i);
        self.ram.write64(d, addr as u64);
        self.ram.write32(d + 8, len);
        self.ram.write32(d + 12, flags | u32::from(next) << 16);
    }

    #[inline]
    fn w16(&self, off: usize, v: u16) {
        let word = off & !3;
        let shift = 8 * (off & 3);
        let old = self.ram.read32(word) & !(0xffff << shift);
        self.ram.write32(word, old | (u32::from(v) << shift));
    }

    /// Puts the chain starting at `head` in the available ring.
    #[inline]
    pub fn offer(&mut self, head: u16) {
        let n = self.avail;
        self.w16(AVAIL + 4 + 2 * usize::from(n % self.size), head);
        self.avail = n.wrapping_add(1);
        self.w16(AVAIL + 2, self.avail);
    }

    #[inline]
    fn used_idx(&self) -> u16 {
        (self.ram.read32(USED) >> 16) as u16
    }

    /// Whether the device wants notifications (VIRTQ_USED_F_NO_NOTIFY clear, §2.7.7).
    #[inline]
    pub fn needs_notify(&self) -> bool {
        self.ram.read32(USED) & 1 == 0
    }

    /// Chains offered and not yet used.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        self.avail.wrapping_sub(self.used_idx())
    }

    /// The next used element: (head, bytes written).
    #[inline]
    pub fn next_used(&mut self) -> Option<(u16, u32)> {
        if self.used_idx() == self.used_seen {
            return None;
        }
        let e = USED + 4 + 8 * usize::from(self.used_seen % self.size);
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((self.ram.read32(e) as u16, self.ram.read32(e + 4)))
    }
}

/// Resets `dev` and negotiates `features` (VERSION_1 always): true if FEATURES_OK stuck.
pub fn negotiate(dev: &Region, features: u64) -> bool {
    dev.write32(reg::STATUS, 0);
    dev.write32(reg::STATUS, ACKNOWLEDGE | DRIVER);
    let f = features | F_VERSION_1;
    for sel in 0..2 {
        dev.write32(reg::DRIVER_FEATURES_SEL, sel);
        dev.write32(reg::DRIVER_FEATURES, (f >> (32 * sel)) as u32);
    }
    dev.write32(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    dev.read32(reg::STATUS) & FEATURES_OK != 0
}

/// DRIVER_OK; true unless the device asks for a reset.
pub fn driver_ok(dev: &Region) -> bool {
    dev.write32(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.read32(reg::STATUS) & NEEDS_RESET == 0
}

/// Acknowledges everything in InterruptStatus (the device's line falls).
#[inline]
pub fn ack_interrupt(dev: &Region) {
    let isr = dev.read32(reg::INTERRUPT_STATUS);
    dev.write32(reg::INTERRUPT_ACK, isr);
}
