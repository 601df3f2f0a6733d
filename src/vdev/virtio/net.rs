//! virtio-net (virtio 1.2 §5.1), modern only, plugged into a virtual switch
//! ([`crate::vdev::switch`]).
//!
//! Features offered: VIRTIO_NET_F_MAC (the configured address), VIRTIO_NET_F_STATUS (the link
//! is always up) and, from the transport, VERSION_1, EVENT_IDX and INDIRECT_DESC. No checksum
//! offload, no GSO, no mergeable receive buffers, no control queue, one queue pair: receive
//! queue 0, transmit queue 1. Every buffer starts with the 12-byte `virtio_net_hdr_v1`
//! (§5.1.6; with VERSION_1 it always has `num_buffers`):
//!
//! ```text
//!  flags u8 | gso_type u8 | hdr_len le16 | gso_size le16 | csum_start le16 | csum_offset le16
//!  | num_buffers le16 | Ethernet frame ...
//! ```
//!
//! Transmit runs in the sender's exit (QueueNotify of queue 1): each chain's frame goes to the
//! switch, which hands it to the receiving ports. Receive is the other way round: the
//! receive queue is *not* processed on the driver's notification; its buffers wait in the
//! ring until a frame arrives from another VM, on whatever CPU that VM runs. So the receive
//! queue's state, the device's InterruptStatus and its interrupt line live in an [`RxPort`]
//! behind its own lock, shared by this VM's exits (reset, acknowledge, queue setup) and the
//! senders (delivery). A receive chain that breaks the rules (a device-readable buffer, a
//! loop, an address outside RAM) is a driver error found on the sender's CPU: the port stops
//! taking frames and keeps the error for the transport, which puts the device into
//! DEVICE_NEEDS_RESET at the driver's next register access. The sender is never told.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::mem::GuestMemory;
use super::queue::{Request, Segment, SplitQueue};
use super::{VirtioDevice, VirtioError, device_id, interrupt};
use crate::arch::aarch64::sync::Mutex;
use crate::vdev::switch::{Delivery, Frame, MAX_FRAME_BYTES, Mac, PortSink, Switch};

/// Feature bits (§5.1.3).
pub mod feature {
    /// VIRTIO_NET_F_MAC: `mac` in the configuration space.
    pub const MAC: u64 = 1 << 5;
    /// VIRTIO_NET_F_STATUS: `status` in the configuration space.
    pub const STATUS: u64 = 1 << 16;
}

/// `status` bit (§5.1.4): the link is up.
pub const S_LINK_UP: u16 = 1;
/// Size of `virtio_net_hdr_v1` (§5.1.6).
pub const HDR_BYTES: usize = 12;
/// `gso_type` VIRTIO_NET_HDR_GSO_NONE.
const GSO_NONE: u8 = 0;
/// QueueNumMax of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue's index (§5.1.2).
pub const RX: u16 = 0;
/// The transmit queue's index.
pub const TX: u16 = 1;
/// `mac` (6 bytes) and `status` (le16) (§5.1.4); the fields after them belong to features
/// not offered.
const CONFIG_BYTES: usize = 8;

/// An interrupt line into a VM's vGIC (the kernel drives the VM's SPI; tests record).
pub trait IrqLine: Send + Sync {
    fn set(&self, level: bool);
}

/// What the port keeps under its lock.
struct RxState<M: GuestMemory> {
    /// This VM's RAM, for the receive buffers.
    mem: M,
    /// The receive queue as the driver made it ready (its counters advance here).
    queue: Option<SplitQueue>,
    features: u64,
    driver_ok: bool,
    /// A driver error was found in the receive queue: no more frames until a reset.
    broken: bool,
    /// That error, until the transport takes it.
    error: Option<VirtioError>,
    /// InterruptStatus (§4.2.2) of the whole device.
    isr: u32,
    /// Chain segments, reused.
    segs: Vec<Segment>,
}

/// A NIC's receiving side and interrupt status, shared by its VM's exits and the switch.
pub struct RxPort<M: GuestMemory> {
    state: Mutex<RxState<M>>,
    line: Arc<dyn IrqLine>,
}

impl<M: GuestMemory + Send> RxPort<M> {
    /// Sets InterruptStatus bits; the line rises with the first (called with the lock held,
    /// so the line always equals "InterruptStatus nonzero", whichever CPUs race).
    fn raise(&self, s: &mut RxState<M>, bits: u32) {
        let was = s.isr;
        s.isr |= bits;
        if was == 0 && s.isr != 0 {
            self.line.set(true);
        }
    }

    /// A driver error in the receive queue.
    fn fail(&self, s: &mut RxState<M>, e: VirtioError) {
        s.broken = true;
        if s.error.is_none() {
            s.error = Some(e);
        }
        if s.driver_ok {
            self.raise(s, interrupt::CONFIG_CHANGE);
        }
    }

    fn deliver_locked(&self, s: &mut RxState<M>, frame: &dyn Frame) -> Delivery {
        if !s.driver_ok || s.broken {
            return Delivery::NotReady;
        }
        let event_idx = s.features & super::feature::EVENT_IDX != 0;
        let features = s.features;
        let RxState {
            mem, queue, segs, ..
        } = s;
        let Some(q) = queue.as_mut().filter(|q| q.ready) else {
            return Delivery::NotReady;
        };
        let old_used = q.counters().1;
        let head = match q.next_head(RX, &*mem) {
            Ok(Some(h)) => h,
            Ok(None) => return Delivery::NoBuffer,
            Err(e) => {
                self.fail(s, e);
                return Delivery::NotReady;
            }
        };
        if let Err(e) = q.walk(RX, head, features, &*mem, segs) {
            q.skip();
            self.fail(s, e);
            return Delivery::NotReady;
        }
        let mut req = Request::new(&mut *mem, segs);
        if req.readable_bytes() != 0 {
            let e = VirtioError::Request {
                queue: RX,
                head,
                reason: "receive buffer not device-writable",
            };
            self.fail(s, e);
            return Delivery::NotReady;
        }
        let need = HDR_BYTES + frame.len();
        let (outcome, written) = if (req.writable_bytes() as usize) < need {
            // Returned unused: the driver sees a length shorter than a header and drops it.
            (Delivery::BufferTooSmall, 0)
        } else {
            let mut hdr = [0u8; HDR_BYTES];
            // num_buffers: 1 (§5.1.6.4: always 1 without VIRTIO_NET_F_MRG_RXBUF).
            hdr[10] = 1;
            // The segments were checked to be inside RAM when the chain was walked. The frame
            // comes straight from the sender's buffers (the one copy it makes).
            if req.write(0, &hdr).is_err() || !frame.copy_to(&mut req, HDR_BYTES as u32) {
                (Delivery::BufferTooSmall, 0)
            } else {
                (Delivery::Delivered, need as u32)
            }
        };
        let pushed = q
            .push_used(RX, head, written, &mut *mem)
            .and_then(|()| q.wants_interrupt(RX, old_used, event_idx, &*mem));
        match pushed {
            Ok(true) => self.raise(s, interrupt::USED_BUFFER),
            Ok(false) => {}
            Err(e) => {
                self.fail(s, e);
                return Delivery::NotReady;
            }
        }
        outcome
    }
}

impl<M: GuestMemory + Send> PortSink for RxPort<M> {
    fn deliver(&self, frame: &dyn Frame) -> Delivery {
        let mut s = self.state.lock();
        self.deliver_locked(&mut s, frame)
    }
}

/// Counters of what the transmit side refused before the switch saw a frame.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct NetStats {
    /// Chains shorter than the virtio-net header, or asking for GSO (not offered).
    pub tx_bad_header: u64,
}

/// A virtio-net device on a switch port.
pub struct Net<M: GuestMemory> {
    config: [u8; CONFIG_BYTES],
    rx: Arc<RxPort<M>>,
    uplink: Option<(Arc<Switch>, usize)>,
    stats: NetStats,
}

impl<M: GuestMemory + Send + 'static> Net<M> {
    /// A NIC with address `mac`, reaching its VM's RAM for receive buffers through `rx_mem`
    /// and raising its interrupt through `line`. It sends nothing until [`Self::plug`].
    pub fn new(mac: Mac, rx_mem: M, line: Arc<dyn IrqLine>) -> Self {
        let mut config = [0u8; CONFIG_BYTES];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        Self {
            config,
            rx: Arc::new(RxPort {
                state: Mutex::new(RxState {
                    mem: rx_mem,
                    queue: None,
                    features: 0,
                    driver_ok: false,
                    broken: false,
                    error: None,
                    isr: 0,
                    segs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
                }),
                line,
            }),
            uplink: None,
            stats: NetStats::default(),
        }
    }

    /// The receiving side, for [`Switch::attach`].
    pub fn sink(&self) -> Arc<dyn PortSink> {
        self.rx.clone()
    }

    /// Connects the transmit side to port `port` of `switch`.
    pub fn plug(&mut self, switch: Arc<Switch>, port: usize) {
        self.uplink = Some((switch, port));
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// One transmit chain: header, then the frame, in the readable buffers.
    fn transmit(&mut self, req: &mut Request<'_>) {
        let Some((sw, port)) = &self.uplink else {
            return;
        };
        let total = req.readable_bytes() as usize;
        let mut hdr = [0u8; HDR_BYTES];
        if total < HDR_BYTES || req.read(0, &mut hdr).is_err() || hdr[1] != GSO_NONE {
            self.stats.tx_bad_header += 1;
            sw.count_tx_malformed(*port);
            return;
        }
        let len = total - HDR_BYTES;
        if len > MAX_FRAME_BYTES {
            sw.count_tx_oversize(*port);
            return;
        }
        // The frame stays in the sender's buffers; each receiver copies it from there.
        sw.send(*port, &TxFrame { req, len });
    }
}

/// A frame in a transmit chain: the readable part after the virtio-net header.
struct TxFrame<'r, 'a> {
    req: &'r Request<'a>,
    len: usize,
}

impl Frame for TxFrame<'_, '_> {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        offset + buf.len() <= self.len && self.req.read((HDR_BYTES + offset) as u32, buf).is_ok()
    }

    fn copy_to(&self, dst: &mut Request<'_>, offset: u32) -> bool {
        dst.copy_from(offset, self.req, HDR_BYTES as u32, self.len as u32)
            .is_ok()
    }
}

impl<M: GuestMemory + Send + 'static> VirtioDevice for Net<M> {
    fn device_id(&self) -> u32 {
        device_id::NET
    }

    fn device_features(&self) -> u64 {
        feature::MAC | feature::STATUS
    }

    fn num_queues(&self) -> u16 {
        2
    }

    fn queue_max_size(&self, _queue: u16) -> u16 {
        QUEUE_SIZE
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn set_features(&mut self, features: u64) {
        self.rx.state.lock().features = features;
    }

    fn reset(&mut self) {
        let mut s = self.rx.state.lock();
        s.queue = None;
        s.features = 0;
        s.driver_ok = false;
        s.broken = false;
        s.error = None;
        if s.isr != 0 {
            s.isr = 0;
            self.rx.line.set(false);
        }
    }

    fn handle(&mut self, queue: u16, req: &mut Request<'_>) -> Result<u32, &'static str> {
        if queue != TX {
            return Err("receive queue processed as a transmit queue");
        }
        self.transmit(req);
        // Nothing written into a transmit buffer.
        Ok(0)
    }

    fn takes_notify(&mut self, queue: u16) -> bool {
        // Receive buffers wait for frames; the notification needs no action.
        queue == RX
    }

    fn queue_ready(&mut self, queue: u16, q: Option<&SplitQueue>) {
        if queue == RX {
            self.rx.state.lock().queue = q.cloned();
        }
    }

    fn driver_ok(&mut self) {
        self.rx.state.lock().driver_ok = true;
    }

    fn owns_interrupts(&self) -> bool {
        true
    }

    fn raise_interrupt(&mut self, bits: u32) {
        let mut s = self.rx.state.lock();
        self.rx.raise(&mut s, bits);
    }

    fn interrupt_status(&self) -> u32 {
        self.rx.state.lock().isr
    }

    fn ack_interrupt(&mut self, bits: u32) {
        let mut s = self.rx.state.lock();
        if s.isr != 0 {
            s.isr &= !bits;
            if s.isr == 0 {
                self.rx.line.set(false);
            }
        }
    }

    fn take_error(&mut self) -> Option<VirtioError> {
        self.rx.state.lock().error.take()
    }
}

#[cfg(test)]
mod tests;
