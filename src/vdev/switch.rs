//! A virtual Ethernet switch between the VMs' virtio-net devices (`vdev::virtio::net`).
//!
//! Each NIC plugged into a switch is a *port*. The switch learns the source MAC address of
//! every frame a port sends (its forwarding database, FDB), forwards a unicast frame to the
//! port that address was learned on, and floods broadcast, multicast and unknown unicast to
//! every other port. The configured MAC of each NIC is a static FDB entry that learning cannot
//! move: a VM that sends with another VM's source address does not steal that VM's traffic.
//!
//! A frame is checked before anything else (at least 14 bytes for the Ethernet header, at most
//! 1514: no jumbo frames, no GSO) and dropped and counted against the sender otherwise. It is
//! then handed to each receiving port's [`PortSink`], which copies it straight from the
//! sender's transmit buffers into one of the receiver's posted receive buffers (one copy per
//! receiver, RAM to RAM: the switch itself reads only the 12 address bytes) or, with none posted, drops it and counts it against the
//! *receiver*: a VM that does not pick up its frames loses its own frames, never another VM's,
//! and the sender never waits.
//!
//! Locks, in the only order they are ever taken (see docs/ARCHITECTURE.md, "Virtual
//! switches"):
//!
//! ```text
//!  sender's bus ─┬─> switch FDB               (learn + look up, released before delivery)
//!                └─> receiver's port ──> RAM backing (both VMs', released) ──> receiver's vGIC
//! ```
//!
//! One port lock at a time: delivery to a flood set takes and releases each receiver's port
//! lock in turn, and the sender's own port lock is never held while it sends. No path takes
//! a bus lock with a port lock held, so two VMs sending to each other at once on two CPUs
//! cannot deadlock. The port table is filled at build time and read without a lock.
#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use spin::Once;

use crate::arch::aarch64::sync::Mutex;
use crate::vdev::virtio::Request;

/// A MAC address.
pub type Mac = [u8; 6];

/// Ethernet header: destination, source, EtherType.
pub const ETH_HEADER_BYTES: usize = 14;
/// The largest frame a port may send: 1500 bytes of payload and the header (no FCS, no VLAN
/// tag, no GSO).
pub const MAX_FRAME_BYTES: usize = 1514;
/// Most ports (NICs) on one switch.
pub const MAX_PORTS: usize = 16;
/// Most learned (dynamic) addresses one switch remembers; past that the oldest is replaced.
pub const MAX_LEARNED: usize = 64;

/// Whether `mac` is a group (broadcast or multicast) address: the I/G bit, the least
/// significant bit of the first octet (IEEE 802-2014, 8.2).
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// What happened to a frame handed to a receiving port.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Delivery {
    /// Copied into a receive buffer.
    Delivered,
    /// The receiver's driver is not up (no DRIVER_OK, receive queue not ready, or its device
    /// needs a reset).
    NotReady,
    /// No receive buffer posted.
    NoBuffer,
    /// The posted buffer was too small for the frame (it was returned empty).
    BufferTooSmall,
}

/// A frame crossing the switch, still where the sender put it (its transmit buffers, in its
/// VM's RAM): the switch reads the 12 address bytes of its header, and each receiver copies
/// the frame from there into its own receive buffer in one step.
pub trait Frame {
    /// Length in bytes, Ethernet header included.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `buf.len()` bytes at `offset` of the frame into `buf`; false if out of range.
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool;
    /// Copies the whole frame to `offset` of `dst`'s writable part (RAM to RAM for a frame
    /// in guest memory); false if it does not fit.
    fn copy_to(&self, dst: &mut Request<'_>, offset: u32) -> bool;
}

/// A frame in hypervisor memory (tests, and any sender that builds frames itself).
impl<T: AsRef<[u8]>> Frame for T {
    fn len(&self) -> usize {
        self.as_ref().len()
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        let bytes = self.as_ref();
        match offset
            .checked_add(buf.len())
            .and_then(|end| bytes.get(offset..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    fn copy_to(&self, dst: &mut Request<'_>, offset: u32) -> bool {
        dst.write(offset, self.as_ref()).is_ok()
    }
}

/// The receiving side of a port: the NIC's receive queue, in another VM.
pub trait PortSink: Send + Sync {
    /// Copies `frame` (Ethernet header included, no virtio-net header) into a receive buffer.
    fn deliver(&self, frame: &dyn Frame) -> Delivery;
}

/// Counters of one port, from the switch's point of view.
#[derive(Default, Debug)]
pub struct PortStats {
    /// Frames this port sent that the switch accepted.
    pub tx_frames: AtomicU64,
    /// Frames this port sent shorter than an Ethernet header (dropped).
    pub tx_malformed: AtomicU64,
    /// Frames this port sent longer than [`MAX_FRAME_BYTES`] (dropped).
    pub tx_oversize: AtomicU64,
    /// Frames copied into this port's receive buffers.
    pub rx_frames: AtomicU64,
    /// Frames for this port dropped because its driver was not up.
    pub rx_not_ready: AtomicU64,
    /// Frames for this port dropped because it had no receive buffer posted.
    pub rx_no_buffer: AtomicU64,
    /// Frames for this port dropped because its receive buffer was too small.
    pub rx_too_small: AtomicU64,
}

/// A plain copy of [`PortStats`].
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PortCounts {
    pub tx_frames: u64,
    pub tx_malformed: u64,
    pub tx_oversize: u64,
    pub rx_frames: u64,
    pub rx_not_ready: u64,
    pub rx_no_buffer: u64,
    pub rx_too_small: u64,
}

impl PortStats {
    pub fn counts(&self) -> PortCounts {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PortCounts {
            tx_frames: r(&self.tx_frames),
            tx_malformed: r(&self.tx_malformed),
            tx_oversize: r(&self.tx_oversize),
            rx_frames: r(&self.rx_frames),
            rx_not_ready: r(&self.rx_not_ready),
            rx_no_buffer: r(&self.rx_no_buffer),
            rx_too_small: r(&self.rx_too_small),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One port: its NIC's configured MAC, its receiving side, its counters.
pub struct Port {
    pub mac: Mac,
    sink: Arc<dyn PortSink>,
    pub stats: PortStats,
}

/// The forwarding database: static entries (each port's configured MAC) and learned ones.
struct Fdb {
    learned: Vec<(Mac, usize)>,
    /// Where the next learned entry goes once the table is full (oldest first).
    next_victim: usize,
}

/// What to do with a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    To(usize),
    Flood,
    /// Addressed to the sender itself: nothing to do.
    Nowhere,
}

/// A virtual switch.
pub struct Switch {
    name: String,
    ports: [Once<Port>; MAX_PORTS],
    port_count: AtomicUsize,
    fdb: Mutex<Fdb>,
}

impl Switch {
    pub fn new(name: String) -> Self {
        Self {
            name,
            ports: [const { Once::new() }; MAX_PORTS],
            port_count: AtomicUsize::new(0),
            fdb: Mutex::new(Fdb {
                learned: Vec::new(),
                next_victim: 0,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Plugs a NIC in (at build time). Returns its port number, or `None` when the switch is
    /// full. Not to be called concurrently with itself (VMs are built one at a time).
    pub fn attach(&self, mac: Mac, sink: Arc<dyn PortSink>) -> Option<usize> {
        let n = self.port_count.load(Ordering::Acquire);
        if n == MAX_PORTS {
            return None;
        }
        self.ports[n].call_once(|| Port {
            mac,
            sink,
            stats: PortStats::default(),
        });
        // The port is complete before senders can see it counted.
        self.port_count.store(n + 1, Ordering::Release);
        Some(n)
    }

    /// The ports plugged in so far.
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        let n = self.port_count.load(Ordering::Acquire);
        self.ports[..n].iter().filter_map(|p| p.get())
    }

    pub fn port(&self, n: usize) -> Option<&Port> {
        if n >= self.port_count.load(Ordering::Acquire) {
            return None;
        }
        self.ports[n].get()
    }

    /// Learns the source of a frame from port `from` and decides where it goes.
    fn route(&self, from: usize, dst: &Mac, src: &Mac) -> Route {
        let static_port = |mac: &Mac| self.ports().position(|p| p.mac == *mac);
        let mut fdb = self.fdb.lock();
        // Learn: a unicast source that is not some port's configured MAC.
        if !is_group(src) && static_port(src).is_none() {
            if let Some(e) = fdb.learned.iter_mut().find(|(m, _)| m == src) {
                e.1 = from;
            } else if fdb.learned.len() < MAX_LEARNED {
                fdb.learned.push((*src, from));
            } else {
                let v = fdb.next_victim;
                fdb.learned[v] = (*src, from);
                fdb.next_victim = (v + 1) % MAX_LEARNED;
            }
        }
        if is_group(dst) {
            return Route::Flood;
        }
        let to = static_port(dst)
            .or_else(|| fdb.learned.iter().find(|(m, _)| m == dst).map(|&(_, p)| p));
        match to {
            Some(p) if p == from => Route::Nowhere,
            Some(p) => Route::To(p),
            None => Route::Flood,
        }
    }

    /// Port `from` sends `frame` (Ethernet header first, no virtio-net header). Never blocks
    /// on a receiver: each receiver takes the frame into a posted buffer or drops it.
    pub fn send(&self, from: usize, frame: &dyn Frame) {
        let Some(sender) = self.port(from) else {
            return;
        };
        if frame.len() < ETH_HEADER_BYTES {
            bump(&sender.stats.tx_malformed);
            return;
        }
        if frame.len() > MAX_FRAME_BYTES {
            bump(&sender.stats.tx_oversize);
            return;
        }
        // The addresses: the only bytes of the frame the switch itself reads.
        let mut addrs = [0u8; 12];
        if !frame.read(0, &mut addrs) {
            bump(&sender.stats.tx_malformed);
            return;
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&addrs[0..6]);
        src.copy_from_slice(&addrs[6..12]);
        bump(&sender.stats.tx_frames);
        // The FDB lock is released here, before any receiver's lock is taken.
        match self.route(from, &dst, &src) {
            Route::To(p) => {
                if let Some(port) = self.port(p) {
                    Self::deliver(port, frame);
                }
            }
            Route::Flood => {
                for (p, port) in self.ports().enumerate() {
                    if p != from {
                        Self::deliver(port, frame);
                    }
                }
            }
            Route::Nowhere => {}
        }
    }

    /// Port `from` sent something that is not a frame (shorter than a header, or a transmit
    /// buffer its NIC could not parse): dropped, counted against it.
    pub fn count_tx_malformed(&self, from: usize) {
        if let Some(p) = self.port(from) {
            bump(&p.stats.tx_malformed);
        }
    }

    /// Port `from` sent a frame longer than [`MAX_FRAME_BYTES`]: dropped, counted against it.
    pub fn count_tx_oversize(&self, from: usize) {
        if let Some(p) = self.port(from) {
            bump(&p.stats.tx_oversize);
        }
    }

    fn deliver(port: &Port, frame: &dyn Frame) {
        let s = &port.stats;
        match port.sink.deliver(frame) {
            Delivery::Delivered => bump(&s.rx_frames),
            Delivery::NotReady => bump(&s.rx_not_ready),
            Delivery::NoBuffer => bump(&s.rx_no_buffer),
            Delivery::BufferTooSmall => bump(&s.rx_too_small),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A receiver that takes `room` frames, then has no buffer; or is not up at all.
    struct Sink {
        got: Mutex<Vec<Vec<u8>>>,
        room: usize,
        up: bool,
    }

    impl PortSink for Sink {
        fn deliver(&self, frame: &dyn Frame) -> Delivery {
            if !self.up {
                return Delivery::NotReady;
            }
            let mut got = self.got.lock();
            if got.len() == self.room {
                return Delivery::NoBuffer;
            }
            let mut bytes = vec![0u8; frame.len()];
            assert!(frame.read(0, &mut bytes));
            got.push(bytes);
            Delivery::Delivered
        }
    }

    fn sink(room: usize) -> Arc<Sink> {
        Arc::new(Sink {
            got: Mutex::new(Vec::new()),
            room,
            up: true,
        })
    }

    fn mac(n: u8) -> Mac {
        [0x52, 0x54, 0, 0, 0, n]
    }

    const BCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac, fill: u8, len: usize) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    fn three() -> (Switch, [Arc<Sink>; 3]) {
        let sw = Switch::new("lan0".into());
        let s = [sink(100), sink(100), sink(100)];
        for (k, x) in s.iter().enumerate() {
            assert_eq!(sw.attach(mac(k as u8), x.clone()), Some(k));
        }
        (sw, s)
    }

    fn got(s: &Sink) -> Vec<Vec<u8>> {
        s.got.lock().clone()
    }

    #[test]
    fn broadcast_floods_to_everyone_but_the_sender() {
        let (sw, s) = three();
        let f = frame(BCAST, mac(0), 0x11, 60);
        sw.send(0, &f);
        assert!(got(&s[0]).is_empty());
        assert_eq!(got(&s[1]), core::slice::from_ref(&f));
        assert_eq!(got(&s[2]), [f]);
        // Multicast too.
        let m = frame([0x01, 0, 0x5e, 0, 0, 1], mac(1), 0x22, 80);
        sw.send(1, &m);
        assert_eq!(got(&s[0]), core::slice::from_ref(&m));
        assert_eq!(got(&s[2]).len(), 2);
        assert_eq!(sw.port(0).unwrap().stats.counts().tx_frames, 1);
        assert_eq!(sw.port(2).unwrap().stats.counts().rx_frames, 2);
    }

    #[test]
    fn unicast_goes_to_the_configured_port_only() {
        let (sw, s) = three();
        let f = frame(mac(2), mac(0), 0x33, 100);
        sw.send(0, &f);
        assert!(got(&s[1]).is_empty());
        assert_eq!(got(&s[2]), [f]);
        // To itself: nowhere.
        sw.send(0, &frame(mac(0), mac(0), 0, 64));
        assert!(got(&s[0]).is_empty());
    }

    #[test]
    fn learns_other_sources_and_floods_unknown_unicast() {
        let (sw, s) = three();
        // A VM bridging another address behind port 1 (say a container's).
        let behind: Mac = [0x02, 0xaa, 0, 0, 0, 9];
        let unknown = frame(behind, mac(0), 0x44, 64);
        sw.send(0, &unknown);
        assert_eq!(got(&s[1]).len(), 1, "unknown unicast is flooded");
        assert_eq!(got(&s[2]).len(), 1);
        sw.send(1, &frame(mac(0), behind, 0x55, 64));
        assert_eq!(got(&s[0]).len(), 1);
        // Learned: now only port 1 gets it.
        sw.send(2, &frame(behind, mac(2), 0x66, 64));
        assert_eq!(got(&s[1]).len(), 2);
        assert_eq!(got(&s[0]).len(), 1);
        // The address moves to port 2.
        sw.send(2, &frame(BCAST, behind, 0x77, 64));
        sw.send(0, &frame(behind, mac(0), 0x88, 64));
        assert_eq!(got(&s[2]).last().unwrap()[20], 0x88);
        assert_eq!(got(&s[1]).len(), 3, "only the broadcast reached port 1");
    }

    #[test]
    fn a_spoofed_source_does_not_steal_a_configured_address() {
        let (sw, s) = three();
        // Port 2 sends with port 1's address as its source.
        sw.send(2, &frame(BCAST, mac(1), 0, 64));
        sw.send(0, &frame(mac(1), mac(0), 0x99, 64));
        assert_eq!(got(&s[1]).last().unwrap()[20], 0x99);
        assert_eq!(got(&s[2]).len(), 0);
    }

    #[test]
    fn malformed_and_oversize_are_dropped_and_counted_against_the_sender() {
        let (sw, s) = three();
        sw.send(0, &[0xff; 13]);
        sw.send(0, &[]);
        sw.send(0, &frame(BCAST, mac(0), 0, MAX_FRAME_BYTES + 1));
        sw.send(0, &frame(BCAST, mac(0), 0, 65536));
        // The limits themselves pass.
        sw.send(0, &frame(BCAST, mac(0), 0, ETH_HEADER_BYTES));
        sw.send(0, &frame(BCAST, mac(0), 0, MAX_FRAME_BYTES));
        let c = sw.port(0).unwrap().stats.counts();
        assert_eq!((c.tx_malformed, c.tx_oversize, c.tx_frames), (2, 2, 2));
        assert_eq!(got(&s[1]).len(), 2);
        // A port that does not exist sends nothing.
        sw.send(7, &frame(BCAST, mac(7), 0, 64));
        assert_eq!(got(&s[1]).len(), 2);
    }

    #[test]
    fn a_receiver_that_does_not_pick_up_loses_only_its_own_frames() {
        let sw = Switch::new("lan0".into());
        let slow = sink(2);
        let fine = sink(100);
        let down = Arc::new(Sink {
            got: Mutex::new(Vec::new()),
            room: 0,
            up: false,
        });
        sw.attach(mac(0), sink(100)).unwrap();
        sw.attach(mac(1), slow.clone()).unwrap();
        sw.attach(mac(2), fine.clone()).unwrap();
        sw.attach(mac(3), down.clone()).unwrap();
        for k in 0..10u8 {
            sw.send(0, &frame(BCAST, mac(0), k, 64));
        }
        assert_eq!(got(&slow).len(), 2);
        assert_eq!(
            got(&fine).len(),
            10,
            "a full receiver costs the others nothing"
        );
        let c1 = sw.port(1).unwrap().stats.counts();
        assert_eq!((c1.rx_frames, c1.rx_no_buffer), (2, 8));
        let c3 = sw.port(3).unwrap().stats.counts();
        assert_eq!((c3.rx_frames, c3.rx_not_ready), (0, 10));
        let c0 = sw.port(0).unwrap().stats.counts();
        assert_eq!(c0.tx_frames, 10, "the sender lost nothing");
        assert_eq!(c0.rx_no_buffer + c0.rx_not_ready, 0);
    }

    #[test]
    fn learning_table_is_bounded() {
        let (sw, s) = three();
        for k in 0..(MAX_LEARNED as u16 + 10) {
            let src: Mac = [0x02, 0, 0, 0, (k >> 8) as u8, k as u8];
            sw.send(1, &frame(mac(0), src, 0, 64));
        }
        assert!(sw.fdb.lock().learned.len() <= MAX_LEARNED);
        assert_eq!(got(&s[0]).len(), MAX_LEARNED + 10);
    }

    #[test]
    fn the_switch_fills_up() {
        let sw = Switch::new("full".into());
        for k in 0..MAX_PORTS {
            assert_eq!(sw.attach(mac(k as u8), sink(1)), Some(k));
        }
        assert_eq!(sw.attach(mac(99), sink(1)), None);
        assert_eq!(sw.ports().count(), MAX_PORTS);
        assert_eq!(sw.name(), "full");
    }
}
