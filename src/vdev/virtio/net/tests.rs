//! Host tests of virtio-net on a switch: two (or three) VMs, each a transport over its own RAM,
//! exchanging frames through a [`Switch`]; a small driver here plays each guest.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::mm::GuestPhysAddr;
use crate::vdev::virtio::mmio::reg;
use crate::vdev::virtio::queue::desc_flags::{NEXT, WRITE};
use crate::vdev::virtio::{VecMemory, VirtioMmio, feature as tfeature, status};
use crate::vdev::{AccessWidth, MmioDevice, VcpuId};

const V0: VcpuId = VcpuId(0);
const RAM: u64 = 0x4000_0000;
const RAM_BYTES: usize = 1 << 20;
/// Queue q's areas at RAM + 0x1_0000·(q + 1): descriptors, available ring (+0x1000), used
/// ring (+0x2000); buffers at RAM + 0x8_0000 + 0x800·(16·q + i).
const fn area(q: u16) -> u64 {
    RAM + 0x1_0000 * (q as u64 + 1)
}
const fn buf(q: u16, i: u16) -> u64 {
    RAM + 0x8_0000 + 0x800 * (16 * q as u64 + i as u64)
}
const QSIZE: u16 = 16;

/// One VM's RAM, shared by its transport and its NIC's receive port (as the kernel gives
/// both an accessor to the same RAM).
#[derive(Clone)]
struct Shared(Arc<Mutex<VecMemory>>);

impl GuestMemory for Shared {
    fn ram_base(&self) -> GuestPhysAddr {
        GuestPhysAddr(RAM)
    }
    fn ram_size_bytes(&self) -> u64 {
        RAM_BYTES as u64
    }
    fn read_raw(&self, offset: u64, buf: &mut [u8]) {
        self.0.lock().read_raw(offset, buf);
    }
    fn write_raw(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().write_raw(offset, data);
    }
}

#[derive(Default)]
struct Line {
    level: Mutex<bool>,
    edges: Mutex<u32>,
}

impl IrqLine for Line {
    fn set(&self, level: bool) {
        let mut l = self.level.lock();
        if level && !*l {
            *self.edges.lock() += 1;
        }
        *l = level;
    }
}

struct Vm {
    t: VirtioMmio<Shared, Net<Shared>>,
    mem: Shared,
    line: Arc<Line>,
    avail: [u16; 2],
}

fn mac(n: u8) -> Mac {
    [0x52, 0x54, 0, 0x12, 0x34, n]
}

impl Vm {
    fn new(sw: &Arc<Switch>, n: u8) -> Self {
        let mem = Shared(Arc::new(Mutex::new(VecMemory::new(
            GuestPhysAddr(RAM),
            RAM_BYTES,
        ))));
        let line = Arc::new(Line::default());
        let mut net = Net::new(mac(n), mem.clone(), line.clone());
        let port = sw.attach(mac(n), net.sink()).unwrap();
        net.plug(sw.clone(), port);
        Self {
            t: VirtioMmio::new(mem.clone(), net),
            mem,
            line,
            avail: [0; 2],
        }
    }

    fn r(&mut self, o: u64) -> u32 {
        self.t.read(V0, o, AccessWidth::Word).unwrap() as u32
    }
    fn w(&mut self, o: u64, v: u32) {
        self.t
            .write(V0, o, AccessWidth::Word, u64::from(v))
            .unwrap();
    }

    /// Negotiates and brings both queues up; `rx_bufs` receive buffers of `rx_len` bytes
    /// posted (each a two-descriptor chain: header, then the rest).
    fn up(&mut self, features: u64, rx_bufs: u16, rx_len: u32) {
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2 {
            self.w(reg::DRIVER_FEATURES_SEL, sel);
            self.w(reg::DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w(reg::STATUS, s);
        assert_ne!(self.r(reg::STATUS) & status::FEATURES_OK, 0);
        for q in 0..2u16 {
            self.w(reg::QUEUE_SEL, u32::from(q));
            assert_eq!(self.r(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
            self.w(reg::QUEUE_NUM, u32::from(QSIZE));
            self.w(reg::QUEUE_DESC_LOW, area(q) as u32);
            self.w(reg::QUEUE_DRIVER_LOW, (area(q) + 0x1000) as u32);
            self.w(reg::QUEUE_DEVICE_LOW, (area(q) + 0x2000) as u32);
            self.w(reg::QUEUE_READY, 1);
        }
        self.avail = [0; 2];
        for i in 0..rx_bufs {
            self.post_rx(i, rx_len);
        }
        self.w(reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(self.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    fn desc(&mut self, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(area(q) + 16 * u64::from(i), &raw).unwrap();
    }

    fn offer(&mut self, q: u16, head: u16) {
        let a = area(q) + 0x1000;
        let slot = u64::from(self.avail[q as usize] % QSIZE);
        self.mem.write_u16(a + 4 + 2 * slot, head).unwrap();
        self.avail[q as usize] = self.avail[q as usize].wrapping_add(1);
        let idx = self.avail[q as usize];
        self.mem.write_u16(a + 2, idx).unwrap();
    }

    /// Receive buffer `i` (descriptors 2i and 2i+1), made available.
    fn post_rx(&mut self, i: u16, len: u32) {
        let b = buf(RX, i);
        self.desc(RX, 2 * i, b, HDR_BYTES as u32, WRITE | NEXT, 2 * i + 1);
        self.desc(
            RX,
            2 * i + 1,
            b + HDR_BYTES as u64,
            len - HDR_BYTES as u32,
            WRITE,
            0,
        );
        self.offer(RX, 2 * i);
    }

    /// Sends `frame` from transmit buffer 0 (header and frame in one buffer) and notifies.
    fn send(&mut self, frame: &[u8]) {
        let b = buf(TX, 0);
        let mut data = vec![0u8; HDR_BYTES];
        data.extend_from_slice(frame);
        self.mem.write(b, &data).unwrap();
        self.desc(TX, 0, b, data.len() as u32, 0, 0);
        self.offer(TX, 0);
        self.w(reg::QUEUE_NOTIFY, u32::from(TX));
    }

    fn used_idx(&self, q: u16) -> u16 {
        self.mem.read_u16(area(q) + 0x2000 + 2).unwrap()
    }

    /// The `k`th used receive element: (head, len) and the bytes written (header + frame).
    fn received(&self, k: u16) -> (u32, Vec<u8>) {
        let e = area(RX) + 0x2000 + 4 + 8 * u64::from(k % QSIZE);
        let head = self.mem.read_u32(e).unwrap();
        let len = self.mem.read_u32(e + 4).unwrap();
        let mut data = vec![0u8; len as usize];
        let b = buf(RX, (head / 2) as u16);
        self.mem.read(b, &mut data).unwrap();
        (head, data)
    }
}

fn frame(dst: Mac, src: Mac, fill: u8, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|k| fill.wrapping_add(k as u8)).collect();
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

const F: u64 = tfeature::VERSION_1 | feature::MAC | feature::STATUS;
const BCAST: Mac = [0xff; 6];

fn pair() -> (Arc<Switch>, Vm, Vm) {
    let sw = Arc::new(Switch::new("lan0".into()));
    let mut a = Vm::new(&sw, 1);
    let mut b = Vm::new(&sw, 2);
    a.up(F, 4, 1526);
    b.up(F, 4, 1526);
    (sw, a, b)
}

#[test]
fn identity_features_and_config() {
    let sw = Arc::new(Switch::new("lan0".into()));
    let mut a = Vm::new(&sw, 7);
    assert_eq!(a.r(reg::DEVICE_ID), 1);
    a.w(reg::DEVICE_FEATURES_SEL, 0);
    let lo = a.r(reg::DEVICE_FEATURES);
    assert_eq!(
        u64::from(lo) & (feature::MAC | feature::STATUS),
        feature::MAC | feature::STATUS
    );
    let cfg: Vec<u8> = (0..8)
        .map(|k| a.t.read(V0, reg::CONFIG + k, AccessWidth::Byte).unwrap() as u8)
        .collect();
    assert_eq!(&cfg[..6], &mac(7));
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), S_LINK_UP);
    a.w(reg::QUEUE_SEL, 2);
    assert_eq!(a.r(reg::QUEUE_NUM_MAX), 0, "two queues only");
}

#[test]
fn broadcast_and_unicast_between_two_vms() {
    let (sw, mut a, mut b) = pair();
    let f = frame(BCAST, mac(1), 0x10, 60);
    a.send(&f);
    assert_eq!(a.used_idx(TX), 1, "the transmit buffer is used");
    assert_eq!(b.used_idx(RX), 1);
    let (head, data) = b.received(0);
    assert_eq!(head, 0);
    assert_eq!(data.len(), HDR_BYTES + 60);
    assert_eq!(&data[..HDR_BYTES], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(&data[HDR_BYTES..], &f[..]);
    // B's interrupt rose once; A's for its transmit.
    assert!(*b.line.level.lock());
    assert_eq!(b.r(reg::INTERRUPT_STATUS), 1);
    b.w(reg::INTERRUPT_ACK, 1);
    assert!(!*b.line.level.lock());
    assert_eq!(a.r(reg::INTERRUPT_STATUS), 1);
    // Unicast back, a full-size frame.
    let g = frame(mac(1), mac(2), 0x77, MAX_FRAME_BYTES);
    b.send(&g);
    assert_eq!(a.used_idx(RX), 1);
    assert_eq!(&a.received(0).1[HDR_BYTES..], &g[..]);
    assert_eq!(b.used_idx(RX), 1, "nothing came back to the sender");
    let c = sw.port(0).unwrap().stats.counts();
    assert_eq!((c.tx_frames, c.rx_frames), (1, 1));
}

#[test]
fn bad_frames_are_dropped_and_counted() {
    let (sw, mut a, b) = pair();
    a.send(&[0u8; 10]);
    a.send(&frame(BCAST, mac(1), 0, MAX_FRAME_BYTES + 1));
    // A header asking for GSO, which was not offered.
    let bb = buf(TX, 0);
    a.mem
        .write(bb, &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    a.mem.write(bb + 12, &frame(BCAST, mac(1), 0, 60)).unwrap();
    a.desc(TX, 0, bb, 72, 0, 0);
    a.offer(TX, 0);
    a.w(reg::QUEUE_NOTIFY, u32::from(TX));
    // A chain shorter than the header.
    a.desc(TX, 0, bb, 5, 0, 0);
    a.offer(TX, 0);
    a.w(reg::QUEUE_NOTIFY, u32::from(TX));
    assert_eq!(a.used_idx(TX), 4, "every transmit buffer is returned");
    assert_eq!(b.used_idx(RX), 0);
    let c = sw.port(0).unwrap().stats.counts();
    assert_eq!((c.tx_malformed, c.tx_oversize, c.tx_frames), (3, 1, 0));
    assert_eq!(a.t.device().stats().tx_bad_header, 2);
    assert!(!a.t.needs_reset());
}

#[test]
fn a_receiver_without_buffers_loses_its_own_frames_only() {
    let sw = Arc::new(Switch::new("lan0".into()));
    let mut a = Vm::new(&sw, 1);
    let mut b = Vm::new(&sw, 2);
    let mut c = Vm::new(&sw, 3);
    let mut d = Vm::new(&sw, 4);
    a.up(F, 4, 1526);
    b.up(F, 2, 1526);
    c.up(F, 8, 1526);
    // d never sets DRIVER_OK.
    d.w(reg::STATUS, status::ACKNOWLEDGE);
    for k in 0..6 {
        a.send(&frame(BCAST, mac(1), k, 64));
    }
    assert_eq!(b.used_idx(RX), 2);
    assert_eq!(c.used_idx(RX), 6);
    let cb = sw.port(1).unwrap().stats.counts();
    assert_eq!((cb.rx_frames, cb.rx_no_buffer), (2, 4));
    assert_eq!(sw.port(3).unwrap().stats.counts().rx_not_ready, 6);
    assert_eq!(sw.port(0).unwrap().stats.counts().tx_frames, 6);
    // B posts a buffer again and gets the next one.
    b.post_rx(0, 1526);
    a.send(&frame(mac(2), mac(1), 0x40, 64));
    assert_eq!(b.used_idx(RX), 3);
    assert_eq!(b.received(2).1[HDR_BYTES + 12], 0x40 + 12);
    assert_eq!(c.used_idx(RX), 6, "unicast to B went to B only");
}

#[test]
fn a_too_small_receive_buffer_is_returned_empty() {
    let sw = Arc::new(Switch::new("lan0".into()));
    let mut a = Vm::new(&sw, 1);
    let mut b = Vm::new(&sw, 2);
    a.up(F, 1, 1526);
    b.up(F, 1, 100);
    a.send(&frame(BCAST, mac(1), 0, 200));
    assert_eq!(b.used_idx(RX), 1);
    assert_eq!(b.received(0).1.len(), 0);
    assert_eq!(sw.port(1).unwrap().stats.counts().rx_too_small, 1);
    assert!(!b.t.needs_reset());
}

#[test]
fn a_hostile_receive_queue_needs_reset_and_stalls_nobody() {
    let (sw, mut a, mut b) = pair();
    let mut c = Vm::new(&sw, 3);
    c.up(F, 4, 1526);
    // B makes a receive chain that loops, and another that is device-readable.
    b.desc(RX, 0, buf(RX, 0), 64, WRITE | NEXT, 1);
    b.desc(RX, 1, buf(RX, 1), 64, WRITE | NEXT, 0);
    a.send(&frame(BCAST, mac(1), 0, 64));
    assert_eq!(c.used_idx(RX), 1, "C got its frame");
    assert_eq!(a.used_idx(TX), 1);
    assert!(!a.t.needs_reset(), "the sender knows nothing of it");
    assert!(*b.line.level.lock(), "configuration change raised");
    assert_eq!(
        b.r(reg::STATUS) & status::DEVICE_NEEDS_RESET,
        status::DEVICE_NEEDS_RESET
    );
    assert!(matches!(
        b.t.take_diagnostic(),
        Some(VirtioError::Chain { queue: 0, .. })
    ));
    // Further frames to B are dropped, counted against B (with the one that found the loop).
    a.send(&frame(BCAST, mac(1), 0, 64));
    assert_eq!(sw.port(1).unwrap().stats.counts().rx_not_ready, 2);
    assert_eq!(c.used_idx(RX), 2);
    // After a reset B works again, with a device-readable buffer refused this time.
    b.up(F, 0, 1526);
    assert!(!*b.line.level.lock(), "the reset lowered the line");
    b.desc(RX, 0, buf(RX, 0), 1526, 0, 0);
    b.offer(RX, 0);
    a.send(&frame(BCAST, mac(1), 0, 64));
    assert!(b.r(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0);
    b.up(F, 2, 1526);
    a.send(&frame(mac(2), mac(1), 0x21, 64));
    assert_eq!(b.used_idx(RX), 1);
    assert_eq!(b.received(0).1[HDR_BYTES + 20], 0x21 + 20);
}

#[test]
fn receive_with_event_idx_and_notify_of_the_receive_queue() {
    let sw = Arc::new(Switch::new("lan0".into()));
    let mut a = Vm::new(&sw, 1);
    let mut b = Vm::new(&sw, 2);
    let f = F | tfeature::EVENT_IDX;
    a.up(f, 2, 1526);
    b.up(f, 4, 1526);
    // Notifying the receive queue takes nothing.
    b.w(reg::QUEUE_NOTIFY, u32::from(RX));
    assert_eq!(b.used_idx(RX), 0);
    // used_event = 1: no interrupt for the first frame, one for the second.
    b.mem
        .write_u16(area(RX) + 0x1000 + 4 + 2 * u64::from(QSIZE), 1)
        .unwrap();
    a.send(&frame(BCAST, mac(1), 0, 64));
    assert_eq!(b.used_idx(RX), 1);
    assert!(!*b.line.level.lock());
    a.send(&frame(BCAST, mac(1), 0, 64));
    assert!(*b.line.level.lock());
    assert_eq!(*b.line.edges.lock(), 1);
}
