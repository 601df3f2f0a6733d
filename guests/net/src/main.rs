//! elvisor net guest: a minimal virtio-net driver (virtio 1.2 §5.1 over virtio-mmio §4.2,
//! split queues) that checks the hypervisor's virtual switch from two VMs at once.
//!
//! Both VMs run this image (boards/qemu-virt/vms/net-a.dtsi and net-b.dtsi), each with one
//! NIC on switch `lan0`: A has MAC 52:54:00:12:34:01, B 52:54:00:12:34:02; the MAC read from
//! the device's configuration space says which one this is. In order:
//! 1. the device tree lists exactly one `virtio,mmio` node, slot 0 with SPI 16 (level);
//! 2. the device is virtio-net (ID 1), offers MAC, STATUS and VERSION_1, its configuration
//!    space holds one of the two MACs and says the link is up;
//! 3. bring-up: receive queue 0 with 16 posted buffers, transmit queue 1, DRIVER_OK;
//! 4. broadcast: each VM sends HELLO to ff:ff:ff:ff:ff:ff every millisecond until it hears
//!    the peer's; A waits until B's HELLO says B heard A too (so B's buffers are posted), and
//!    the used-buffer interrupt is seen in InterruptStatus and as pending in the vGIC;
//! 5. A sends a 10-byte and a 1515-byte frame (the switch must drop both: B fails if it ever
//!    receives a frame shorter than 14 or longer than 1514 bytes);
//! 6. unicast: A sends DATA frames of 60 to 1514 bytes to B's MAC; B checks every byte and
//!    answers each with an ECHO of its own pattern to A's MAC, which A checks in turn; B
//!    reports, then sends DONE, and A reports once DONE arrives.
//!
//! With MAC 52:54:00:12:34:03 it is the hostile NIC of the net-hostile-linux cases instead
//! (`hostile`).
//!
//! Rings and buffers live in free guest RAM at 0x4100_0000, reached with 32-bit loads and
//! stores (the MMU is off: Device memory). Lines start with `NET`.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::timer::{Timer, ticks_from_us};
use elvisor_guest_rt::virtio_mmio::{
    ACKNOWLEDGE, DRIVER, DRIVER_OK, F_VERSION_1, FEATURES_OK, NEEDS_RESET, reg,
};
use elvisor_guest_rt::{BootInfo, Report, dt};

mod hostile;

elvisor_guest_rt::entry!(main);

const SLOT0: usize = 0x0A00_0000;
const SLOT_SIZE: usize = 0x200;
const GICD_BASE: usize = 0x0800_0000;
const INTID: u32 = 48;

const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const WRITE: u32 = 2;

const QSIZE: u16 = 16;
const HDR: usize = 12;
const MAX_FRAME: usize = 1514;
const BUF_BYTES: usize = 0x800;

/// Queue q's rings at RAM_AREA + 0x4000·q (descriptors, +0x1000 available, +0x2000 used);
/// receive buffer i at RAM_AREA + 0x1_0000 + 0x800·i; the transmit buffer at +0x2_0000.
const RAM_AREA: usize = 0x4100_0000;
const AREA_BYTES: usize = 0x3_0000;
const RX: u16 = 0;
const TX: u16 = 1;

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 2];
/// The hostile NIC (`hostile`), next to two Linux VMs.
const MAC_H: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 3];
const BCAST: [u8; 6] = [0xff; 6];
/// IEEE 802 local experimental EtherType.
const ETHERTYPE: u16 = 0x88b5;
const HELLO: u8 = 1;
const DATA: u8 = 2;
const ECHO: u8 = 3;
/// B's last frame, sent after it reported its checks (so its lines come before A's last).
const DONE: u8 = 4;
/// The DATA sizes A sends (whole frames, header included).
const SIZES: [usize; 8] = [60, 64, 100, 511, 512, 1000, 1513, MAX_FRAME];

/// Payload byte `k` of frame `seq` of kind `kind`.
fn pattern(kind: u8, seq: u16, k: usize) -> u8 {
    (k as u8)
        .wrapping_mul(7)
        .wrapping_add(seq as u8 * 31)
        .wrapping_add(kind)
}

struct Nic {
    regs: Region,
    ram: Region,
    avail: [u16; 2],
    /// The next used receive element to look at.
    rx_seen: u16,
    tx_used: u16,
    mac: [u8; 6],
}

fn area(q: u16) -> usize {
    0x4000 * q as usize
}

impl Nic {
    fn r(&self, o: usize) -> u32 {
        self.regs.read32(o)
    }
    fn w(&self, o: usize, v: u32) {
        self.regs.write32(o, v);
    }
    fn w16(&self, off: usize, v: u16) {
        let word = off & !3;
        let shift = 8 * (off & 3);
        let old = self.ram.read32(word) & !(0xffff << shift);
        self.ram.write32(word, old | (u32::from(v) << shift));
    }
    fn r16(&self, off: usize) -> u16 {
        (self.ram.read32(off & !3) >> (8 * (off & 3))) as u16
    }
    fn desc(&self, q: u16, i: u16, addr: usize, len: u32, flags: u32) {
        let d = area(q) + 16 * i as usize;
        self.ram.write64(d, addr as u64);
        self.ram.write32(d + 8, len);
        self.ram.write32(d + 12, flags);
    }
    fn offer(&mut self, q: u16, head: u16) {
        let a = area(q) + 0x1000;
        let n = self.avail[q as usize];
        self.w16(a + 4 + 2 * usize::from(n % QSIZE), head);
        let idx = n.wrapping_add(1);
        self.avail[q as usize] = idx;
        self.w16(a + 2, idx);
    }
    fn used_idx(&self, q: u16) -> u16 {
        self.r16(area(q) + 0x2000 + 2)
    }
    fn rx_buf(i: u16) -> usize {
        0x1_0000 + BUF_BYTES * i as usize
    }

    /// Negotiation, both queues, 16 receive buffers, DRIVER_OK.
    fn up(&mut self) -> bool {
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER);
        let f = F_VERSION_1 | F_MAC | F_STATUS;
        for sel in 0..2 {
            self.w(reg::DRIVER_FEATURES_SEL, sel);
            self.w(reg::DRIVER_FEATURES, (f >> (32 * sel)) as u32);
        }
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.r(reg::STATUS) & FEATURES_OK == 0 {
            return false;
        }
        for o in (0..0x8000).step_by(4) {
            self.ram.write32(o, 0);
        }
        for q in [RX, TX] {
            self.w(reg::QUEUE_SEL, u32::from(q));
            self.w(reg::QUEUE_NUM, u32::from(QSIZE));
            self.w(reg::QUEUE_DESC_LOW, (RAM_AREA + area(q)) as u32);
            self.w(reg::QUEUE_DRIVER_LOW, (RAM_AREA + area(q) + 0x1000) as u32);
            self.w(reg::QUEUE_DEVICE_LOW, (RAM_AREA + area(q) + 0x2000) as u32);
            self.w(reg::QUEUE_READY, 1);
            if self.r(reg::QUEUE_READY) != 1 {
                return false;
            }
        }
        for i in 0..QSIZE {
            self.desc(
                RX,
                i,
                RAM_AREA + Self::rx_buf(i),
                (HDR + MAX_FRAME) as u32,
                WRITE,
            );
            self.offer(RX, i);
        }
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.r(reg::STATUS) & NEEDS_RESET == 0
    }

    /// Sends a frame of `len` bytes (header included) to `dst`: kind, flag and sequence
    /// number after the EtherType, then the kind's pattern. False if the device did not use
    /// the buffer during the notification.
    fn send(&mut self, dst: [u8; 6], len: usize, kind: u8, flag: u8, seq: u16) -> bool {
        let mut f = [0u8; HDR + MAX_FRAME + 4];
        let body = &mut f[HDR..HDR + len];
        for (k, b) in body.iter_mut().enumerate() {
            *b = pattern(kind, seq, k);
        }
        if len >= 19 {
            body[0..6].copy_from_slice(&dst);
            body[6..12].copy_from_slice(&self.mac);
            body[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
            body[14] = kind;
            body[15] = flag;
            body[16..18].copy_from_slice(&seq.to_le_bytes());
        }
        let tx = 0x2_0000;
        for (k, w) in f[..(HDR + len + 3) & !3].chunks(4).enumerate() {
            self.ram
                .write32(tx + 4 * k, u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
        self.desc(TX, 0, RAM_AREA + tx, (HDR + len) as u32, 0);
        self.offer(TX, 0);
        self.w(reg::QUEUE_NOTIFY, u32::from(TX));
        let used = self.used_idx(TX) != self.tx_used;
        self.tx_used = self.used_idx(TX);
        used
    }

    /// The next received frame (without the virtio-net header) into `out`; its length. The
    /// buffer is posted again at once.
    fn recv(&mut self, out: &mut [u8; MAX_FRAME + 4]) -> Option<Result<usize, usize>> {
        if self.used_idx(RX) == self.rx_seen {
            return None;
        }
        let e = area(RX) + 0x2000 + 4 + 8 * usize::from(self.rx_seen % QSIZE);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let head = self.ram.read32(e) as u16;
        let len = self.ram.read32(e + 4) as usize;
        let result = if head >= QSIZE || !(HDR + 14..=HDR + MAX_FRAME).contains(&len) {
            Err(len)
        } else {
            let b = Self::rx_buf(head);
            let n = len - HDR;
            let mut at = 0;
            while at < n {
                let word = self.ram.read32(b + ((HDR + at) & !3)).to_le_bytes();
                let take = (4 - ((HDR + at) & 3)).min(n - at);
                let from = (HDR + at) & 3;
                out[at..at + take].copy_from_slice(&word[from..from + take]);
                at += take;
            }
            Ok(n)
        };
        if head < QSIZE {
            self.offer(RX, head);
        }
        Some(result)
    }
}

/// GICD_ISPENDR: whether the vGIC has `intid` pending.
fn gic_pending(intid: u32) -> Option<bool> {
    let gicd = Region::new(GICD_BASE, 0x1000)?;
    let word = gicd.read32(0x200 + 4 * (intid as usize / 32));
    Some(word & (1 << (intid % 32)) != 0)
}

fn now() -> u64 {
    Timer::Virtual.count()
}

/// What one frame is, if it is one of ours from `peer`.
struct Frame {
    dst: [u8; 6],
    kind: u8,
    flag: u8,
    seq: u16,
}

fn parse(f: &[u8], peer: &[u8; 6]) -> Option<Frame> {
    if f.len() < 18 || &f[6..12] != peer || f[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&f[0..6]);
    Some(Frame {
        dst,
        kind: f[14],
        flag: f[15],
        seq: u16::from_le_bytes([f[16], f[17]]),
    })
}

/// Whether bytes 18.. of `f` are the pattern of (kind, seq).
fn pattern_ok(f: &[u8], kind: u8, seq: u16) -> bool {
    f.iter()
        .enumerate()
        .skip(18)
        .all(|(k, &b)| b == pattern(kind, seq, k))
}

fn main(boot: &BootInfo) {
    let mut report = Report::new("NET");
    device_tree(&mut report, boot);
    let (Some(regs), Some(ram)) = (
        Region::new(SLOT0, SLOT_SIZE),
        Region::new(RAM_AREA, AREA_BYTES),
    ) else {
        report.fail("setup", format_args!("no MMIO regions"));
        report.finish();
        return;
    };
    let mut nic = Nic {
        regs,
        ram,
        avail: [0; 2],
        rx_seen: 0,
        tx_used: 0,
        mac: [0; 6],
    };
    nic.w(reg::DEVICE_FEATURES_SEL, 0);
    let lo = nic.r(reg::DEVICE_FEATURES);
    nic.w(reg::DEVICE_FEATURES_SEL, 1);
    let hi = nic.r(reg::DEVICE_FEATURES);
    let offered = u64::from(lo) | (u64::from(hi) << 32);
    let c0 = nic.r(reg::CONFIG).to_le_bytes();
    let c1 = nic.r(reg::CONFIG + 4).to_le_bytes();
    nic.mac = [c0[0], c0[1], c0[2], c0[3], c1[0], c1[1]];
    let link = u16::from_le_bytes([c1[2], c1[3]]);
    let is_a = nic.mac == MAC_A;
    if nic.mac == MAC_H {
        hostile::run(&mut report, &mut nic);
    }
    report.check(
        "device: virtio-net with MAC, STATUS, VERSION_1; configured MAC; link up",
        nic.r(reg::DEVICE_ID) == 1
            && offered & (F_MAC | F_STATUS | F_VERSION_1) == F_MAC | F_STATUS | F_VERSION_1
            && (is_a || nic.mac == MAC_B)
            && link & 1 == 1,
        format_args!(
            "id {}, features {offered:#x}, mac {:x?}, status {link:#x}",
            nic.r(reg::DEVICE_ID),
            nic.mac
        ),
    );
    let up = nic.up();
    report.check(
        "bring-up: two queues, 16 receive buffers, DRIVER_OK",
        up,
        format_args!("status {:#x}", nic.r(reg::STATUS)),
    );
    if up {
        if is_a {
            run_a(&mut report, &mut nic);
        } else {
            run_b(&mut report, &mut nic);
        }
    }
    report.finish();
}

fn device_tree(report: &mut Report, boot: &BootInfo) {
    let Some(fdt) = boot.fdt.as_ref() else {
        report.fail("device tree", format_args!("none"));
        return;
    };
    let mut found = 0;
    let mut ok = true;
    for node in elvisor_guest_rt::boot::find_node(fdt, "/")
        .into_iter()
        .flat_map(|r| r.children())
    {
        if dt::is_compatible(node, &["virtio,mmio"]) {
            found += 1;
            let irq = dt::gic_interrupt(node, 0);
            ok &= dt::reg_range(node, 0).map(|r| r.start) == Some(SLOT0)
                && irq.is_some_and(|i| i.kind == 0 && i.number == 16 && i.flags & 0xf == 4);
        }
    }
    report.check(
        "dt: one virtio,mmio node, slot 0, SPI 16",
        found == 1 && ok,
        format_args!("{found} nodes"),
    );
}

const TIMEOUT_US: u64 = 20_000_000;

/// A frame the switch should have dropped, or one that is not ours.
fn check_size(report: &mut Report, r: Result<usize, usize>) -> Option<usize> {
    match r {
        Ok(n) => Some(n),
        Err(len) => {
            report.fail(
                "received a malformed or oversize frame",
                format_args!("used len {len}"),
            );
            None
        }
    }
}

fn run_a(report: &mut Report, nic: &mut Nic) {
    let mut buf = [0u8; MAX_FRAME + 4];
    let deadline = now() + ticks_from_us(TIMEOUT_US);
    let mut heard = false;
    let mut next_hello = 0;
    // Broadcast until B says it heard A.
    let mut done = false;
    while !done && now() < deadline {
        if now() >= next_hello {
            nic.send(BCAST, 60, HELLO, u8::from(heard), 0);
            next_hello = now() + ticks_from_us(1000);
        }
        while let Some(r) = nic.recv(&mut buf) {
            let Some(n) = check_size(report, r) else {
                continue;
            };
            if let Some(f) = parse(&buf[..n], &MAC_B)
                && f.kind == HELLO
                && f.dst == BCAST
                && pattern_ok(&buf[..n], HELLO, 0)
            {
                heard = true;
                done |= f.flag == 1;
            }
        }
    }
    report.check(
        "broadcast: B's HELLO arrived, B heard A's",
        done,
        format_args!("heard {heard}"),
    );
    let isr = nic.r(reg::INTERRUPT_STATUS);
    let pending = gic_pending(INTID);
    report.check(
        "interrupt: InterruptStatus and the vGIC's pending bit",
        isr & 1 == 1 && pending == Some(true),
        format_args!("isr {isr:#x}, pending {pending:?}"),
    );
    nic.w(reg::INTERRUPT_ACK, isr);
    if !done {
        return;
    }
    nic.send(BCAST, 60, HELLO, 1, 0);
    // Frames the switch must drop (B fails if one arrives).
    nic.send(MAC_B, 10, DATA, 0, 0xffff);
    let sent = nic.send(MAC_B, MAX_FRAME + 1, DATA, 0, 0xfffe);
    report.check(
        "a 10-byte and a 1515-byte frame are taken (and dropped)",
        sent,
        format_args!(""),
    );
    let mut good = 0;
    let mut done = false;
    for (seq, &len) in SIZES.iter().enumerate() {
        let seq = seq as u16;
        nic.send(MAC_B, len, DATA, 0, seq);
        let mut echoed = false;
        while !echoed && now() < deadline {
            while let Some(r) = nic.recv(&mut buf) {
                let Some(n) = check_size(report, r) else {
                    continue;
                };
                let Some(f) = parse(&buf[..n], &MAC_B) else {
                    continue;
                };
                done |= f.kind == DONE;
                if f.kind == ECHO && f.seq == seq {
                    echoed = true;
                    if f.dst == MAC_A && n == len && pattern_ok(&buf[..n], ECHO, seq) {
                        good += 1;
                    } else {
                        report.fail(
                            "unicast: echo contents",
                            format_args!("seq {seq}, {n} bytes, want {len}"),
                        );
                    }
                }
            }
        }
    }
    while !done && now() < deadline {
        while let Some(r) = nic.recv(&mut buf) {
            if let Some(n) = check_size(report, r) {
                done |= parse(&buf[..n], &MAC_B).is_some_and(|f| f.kind == DONE);
            }
        }
    }
    report.check(
        "unicast: 8 frames of 60 to 1514 bytes to B and their echoes, every byte checked",
        good == SIZES.len() && done,
        format_args!("{good} good echoes, B done {done}"),
    );
}

fn run_b(report: &mut Report, nic: &mut Nic) {
    let mut buf = [0u8; MAX_FRAME + 4];
    let deadline = now() + ticks_from_us(TIMEOUT_US);
    let mut heard = false;
    let mut next_hello = 0;
    let mut next_seq = 0u16;
    let mut good = 0;
    while usize::from(next_seq) < SIZES.len() && now() < deadline {
        if next_seq == 0 && now() >= next_hello {
            nic.send(BCAST, 60, HELLO, u8::from(heard), 0);
            next_hello = now() + ticks_from_us(1000);
        }
        while let Some(r) = nic.recv(&mut buf) {
            let Some(n) = check_size(report, r) else {
                continue;
            };
            let Some(f) = parse(&buf[..n], &MAC_A) else {
                continue;
            };
            match f.kind {
                HELLO if f.dst == BCAST && pattern_ok(&buf[..n], HELLO, 0) => {
                    if !heard {
                        report.pass("broadcast: A's HELLO arrived");
                    }
                    heard = true;
                }
                DATA if f.seq == next_seq => {
                    let len = SIZES[usize::from(f.seq)];
                    if f.dst == MAC_B && n == len && pattern_ok(&buf[..n], DATA, f.seq) {
                        good += 1;
                    } else {
                        report.fail(
                            "unicast: data contents",
                            format_args!("seq {}, {n} bytes, want {len}", f.seq),
                        );
                    }
                    nic.send(MAC_A, len, ECHO, 0, f.seq);
                    next_seq += 1;
                }
                DATA => report.fail("unicast: unexpected frame", format_args!("seq {}", f.seq)),
                _ => {}
            }
        }
    }
    report.check(
        "unicast: 8 frames from A, every byte checked, echoed",
        good == SIZES.len(),
        format_args!("{good} good frames"),
    );
    nic.send(MAC_A, 60, DONE, 0, 0);
}
