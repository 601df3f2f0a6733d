//! A minimal virtio-net driver (virtio 1.2 §5.1) over virtio-mmio (§4.2), split queues: the
//! one both guests/net (the virtual switch's test guest) and guests/iobench (its benchmark)
//! use. Receive queue 0 keeps [`QSIZE`] buffers posted; transmit queue 1 cycles through
//! [`QSIZE`] buffers of its own. No offloads: every virtio-net header is 12 zero bytes.
//!
//! A NIC's guest RAM, from the area given to [`Nic::new`] ([`AREA_BYTES`]): the receive
//! queue's rings at +0, the transmit queue's at +[`RINGS_BYTES`], then at +0x1_0000 the
//! receive buffers and the transmit buffers, [`BUF`] bytes each. The MMU is off: everything
//! is reached with single 32-bit and 64-bit loads and stores through [`Region`].

use crate::arch::mmio::Region;
use crate::timer::{Timer, ticks_from_us};
use crate::virtio_mmio::reg;
use crate::virtq::{self, F_WRITE, Queue, RINGS_BYTES};

/// VIRTIO_NET_F_MAC (§5.1.3): the configuration space holds the MAC.
pub const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_STATUS: the configuration space holds the link status.
pub const F_STATUS: u64 = 1 << 16;
/// Entries of each queue, and buffers of each direction.
pub const QSIZE: u16 = 16;
/// The virtio-net header (§5.1.6) with VERSION_1 and no mergeable buffers.
pub const HDR: usize = 12;
/// The largest frame (Ethernet header included, no FCS).
pub const MAX_FRAME: usize = 1514;
/// Bytes of one buffer.
pub const BUF: usize = 0x800;
/// The receive and the transmit queue.
pub const RX: u16 = 0;
pub const TX: u16 = 1;
/// Where the buffers start in a NIC's area.
const BUFS: usize = 0x1_0000;
/// Bytes of guest RAM one NIC uses.
pub const AREA_BYTES: usize = BUFS + 2 * BUF * QSIZE as usize;
/// How long [`Nic::send`] waits for a free transmit buffer.
const TX_TIMEOUT_US: u64 = 2_000_000;

/// One virtio-net device and the driver's state.
pub struct Nic {
    pub dev: Region,
    pub rx: Queue,
    pub tx: Queue,
    /// The receive buffers, then the transmit buffers.
    pub bufs: Region,
    tx_next: u16,
    /// Read from the configuration space by [`Nic::new`].
    pub mac: [u8; 6],
}

/// A received frame, still in its receive buffer (posted again once the reader is done).
pub struct Frame<'a> {
    bufs: &'a Region,
    at: usize,
    /// What the device wrote, virtio-net header included.
    pub used_len: u32,
}

impl Frame<'_> {
    /// Bytes of frame (without the virtio-net header).
    #[inline]
    pub fn len(&self) -> usize {
        (self.used_len as usize).saturating_sub(HDR)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The little-endian word at byte `off` of the frame (a multiple of 4, below [`BUF`] -
    /// [`HDR`]).
    #[inline]
    pub fn read32(&self, off: usize) -> u32 {
        self.bufs.read32(self.at + off)
    }

    /// Copies the frame's first bytes into `out` (at most one buffer's worth); how many.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let n = self.len().min(out.len()).min(BUF - HDR);
        for (k, chunk) in out[..n].chunks_mut(4).enumerate() {
            let word = self.read32(4 * k).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        n
    }
}

impl Nic {
    /// The device at `dev`, its rings and buffers in the [`AREA_BYTES`] of guest RAM at
    /// `area`; reads its MAC. The device is left untouched otherwise (see [`Nic::up`]).
    pub fn new(dev: Region, area: usize) -> Option<Self> {
        let c0 = dev.read32(reg::CONFIG).to_le_bytes();
        let c1 = dev.read32(reg::CONFIG + 4).to_le_bytes();
        Some(Self {
            dev,
            rx: Queue::new(area, QSIZE)?,
            tx: Queue::new(area + RINGS_BYTES, QSIZE)?,
            bufs: Region::new(area + BUFS, 2 * BUF * usize::from(QSIZE))?,
            tx_next: 0,
            mac: [c0[0], c0[1], c0[2], c0[3], c1[0], c1[1]],
        })
    }

    /// The configuration space's `status` (bit 0: link up; with [`F_STATUS`]).
    pub fn link_status(&self) -> u16 {
        let c1 = self.dev.read32(reg::CONFIG + 4).to_le_bytes();
        u16::from_le_bytes([c1[2], c1[3]])
    }

    /// Receive buffer `i`, as an offset into [`Nic::bufs`].
    #[inline]
    pub fn rx_buf(i: u16) -> usize {
        BUF * usize::from(i)
    }

    /// Transmit buffer `i`, as an offset into [`Nic::bufs`].
    #[inline]
    pub fn tx_buf(i: u16) -> usize {
        BUF * usize::from(QSIZE + i)
    }

    /// Resets the device and brings it up with `features` (VERSION_1 always): both queues
    /// (`poll_tx`: no used-buffer interrupts for the transmit queue), every receive buffer
    /// posted, DRIVER_OK. Also how the driver starts over after a reset: its ring state and
    /// transmit buffer start from zero.
    pub fn up(&mut self, features: u64, poll_tx: bool) -> bool {
        self.tx_next = 0;
        if !virtq::negotiate(&self.dev, features)
            || !self.rx.attach(&self.dev, RX.into(), false)
            || !self.tx.attach(&self.dev, TX.into(), poll_tx)
        {
            return false;
        }
        for i in 0..QSIZE {
            let addr = self.bufs.base() + Self::rx_buf(i);
            self.rx.desc(i, addr, (HDR + MAX_FRAME) as u32, F_WRITE, 0);
            self.rx.offer(i);
        }
        virtq::driver_ok(&self.dev)
    }

    /// Notifies queue `q`.
    #[inline]
    pub fn notify(&self, q: u16) {
        self.dev.write32(reg::QUEUE_NOTIFY, q.into());
    }

    /// Sends a frame of `len` bytes (Ethernet header included) whose first bytes are `frame`
    /// (the rest is whatever the transmit buffer held: callers that do not care about the
    /// payload write only its start). False if no transmit buffer came free in time.
    #[inline]
    pub fn send(&mut self, frame: &[u8], len: usize) -> bool {
        let deadline = Timer::Virtual.count() + ticks_from_us(TX_TIMEOUT_US);
        while self.tx.in_flight() >= QSIZE {
            if Timer::Virtual.count() > deadline {
                return false;
            }
            core::hint::spin_loop();
        }
        while self.tx.next_used().is_some() {}
        let i = self.tx_next;
        self.tx_next = (i + 1) % QSIZE;
        let b = Self::tx_buf(i);
        for k in (0..HDR).step_by(4) {
            self.bufs.write32(b + k, 0);
        }
        let mut words = frame.chunks_exact(4);
        let mut at = b + HDR;
        for w in &mut words {
            self.bufs
                .write32(at, u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            at += 4;
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 4];
            w[..rest.len()].copy_from_slice(rest);
            self.bufs.write32(at, u32::from_le_bytes(w));
        }
        self.tx
            .desc(i, self.bufs.base() + b, (HDR + len) as u32, 0, 0);
        self.tx.offer(i);
        self.notify(TX);
        true
    }

    /// The next received frame, given to `read` in its buffer (`Err(used length)` if the
    /// device named a descriptor that is no receive buffer); the buffer is posted again once
    /// `read` returns. `None` if nothing arrived.
    pub fn recv<R>(&mut self, read: impl FnOnce(Result<Frame<'_>, u32>) -> R) -> Option<R> {
        let (head, used_len) = self.rx.next_used()?;
        if head >= QSIZE {
            return Some(read(Err(used_len)));
        }
        let r = read(Ok(Frame {
            bufs: &self.bufs,
            at: Self::rx_buf(head) + HDR,
            used_len,
        }));
        self.rx.offer(head);
        if self.rx.needs_notify() {
            self.notify(RX);
        }
        Some(r)
    }
}
