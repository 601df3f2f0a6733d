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
//! The driver is the runtime's (`elvisor_guest_rt::virtio_net`, shared with guests/iobench);
//! its rings and buffers live in free guest RAM at 0x4100_0000, reached with 32-bit loads and
//! stores (the MMU is off: Device memory). Lines start with `NET`.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::timer::{Timer, ticks_from_us};
use elvisor_guest_rt::virtio_mmio::{F_VERSION_1, reg};
use elvisor_guest_rt::virtio_net::{F_MAC, F_STATUS, MAX_FRAME, Nic};
use elvisor_guest_rt::{BootInfo, Report, dt};

mod hostile;

elvisor_guest_rt::entry!(main);

const SLOT0: usize = 0x0A00_0000;
const SLOT_SIZE: usize = 0x200;
const GICD_BASE: usize = 0x0800_0000;
const INTID: u32 = 48;

/// The driver's rings and buffers (rt::virtio_net's layout).
const RAM_AREA: usize = 0x4100_0000;

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

/// Negotiation (MAC, STATUS, VERSION_1), both queues, 16 receive buffers, DRIVER_OK; the
/// transmit queue interrupts too. From a reset: the driver's ring state starts over.
fn up(nic: &mut Nic) -> bool {
    nic.up(F_MAC | F_STATUS, false)
}

/// Sends a frame of `len` bytes (header included) to `dst`: kind, flag and sequence number
/// after the EtherType, then the kind's pattern. False if the device did not use the buffer
/// during the notification.
fn send(nic: &mut Nic, dst: [u8; 6], len: usize, kind: u8, flag: u8, seq: u16) -> bool {
    let mut f = [0u8; MAX_FRAME + 4];
    let body = &mut f[..len];
    for (k, b) in body.iter_mut().enumerate() {
        *b = pattern(kind, seq, k);
    }
    if len >= 19 {
        body[0..6].copy_from_slice(&dst);
        body[6..12].copy_from_slice(&nic.mac);
        body[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        body[14] = kind;
        body[15] = flag;
        body[16..18].copy_from_slice(&seq.to_le_bytes());
    }
    nic.send(body, len) && nic.tx.in_flight() == 0
}

/// The next received frame into `out`; its length, or the device's used length if the frame
/// is malformed (shorter than an Ethernet header, longer than 1514 bytes) or the used element
/// names no receive buffer. The buffer is posted again at once.
fn recv(nic: &mut Nic, out: &mut [u8; MAX_FRAME + 4]) -> Option<Result<usize, usize>> {
    nic.recv(|f| match f {
        Ok(f) if (14..=MAX_FRAME).contains(&f.len()) => Ok(f.copy_to(out)),
        Ok(f) => Err(f.used_len as usize),
        Err(used_len) => Err(used_len as usize),
    })
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
    let Some(mut nic) = Region::new(SLOT0, SLOT_SIZE).and_then(|r| Nic::new(r, RAM_AREA)) else {
        report.fail("setup", format_args!("no MMIO regions"));
        report.finish();
        return;
    };
    let dev = nic.dev;
    dev.write32(reg::DEVICE_FEATURES_SEL, 0);
    let lo = dev.read32(reg::DEVICE_FEATURES);
    dev.write32(reg::DEVICE_FEATURES_SEL, 1);
    let hi = dev.read32(reg::DEVICE_FEATURES);
    let offered = u64::from(lo) | (u64::from(hi) << 32);
    let link = nic.link_status();
    let is_a = nic.mac == MAC_A;
    if nic.mac == MAC_H {
        hostile::run(&mut report, &mut nic);
    }
    report.check(
        "device: virtio-net with MAC, STATUS, VERSION_1; configured MAC; link up",
        dev.read32(reg::DEVICE_ID) == 1
            && offered & (F_MAC | F_STATUS | F_VERSION_1) == F_MAC | F_STATUS | F_VERSION_1
            && (is_a || nic.mac == MAC_B)
            && link & 1 == 1,
        format_args!(
            "id {}, features {offered:#x}, mac {:x?}, status {link:#x}",
            dev.read32(reg::DEVICE_ID),
            nic.mac
        ),
    );
    let up = up(&mut nic);
    report.check(
        "bring-up: two queues, 16 receive buffers, DRIVER_OK",
        up,
        format_args!("status {:#x}", dev.read32(reg::STATUS)),
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
            send(nic, BCAST, 60, HELLO, u8::from(heard), 0);
            next_hello = now() + ticks_from_us(1000);
        }
        while let Some(r) = recv(nic, &mut buf) {
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
    let isr = nic.dev.read32(reg::INTERRUPT_STATUS);
    let pending = gic_pending(INTID);
    report.check(
        "interrupt: InterruptStatus and the vGIC's pending bit",
        isr & 1 == 1 && pending == Some(true),
        format_args!("isr {isr:#x}, pending {pending:?}"),
    );
    nic.dev.write32(reg::INTERRUPT_ACK, isr);
    if !done {
        return;
    }
    send(nic, BCAST, 60, HELLO, 1, 0);
    // Frames the switch must drop (B fails if one arrives).
    send(nic, MAC_B, 10, DATA, 0, 0xffff);
    let sent = send(nic, MAC_B, MAX_FRAME + 1, DATA, 0, 0xfffe);
    report.check(
        "a 10-byte and a 1515-byte frame are taken (and dropped)",
        sent,
        format_args!(""),
    );
    let mut good = 0;
    let mut done = false;
    for (seq, &len) in SIZES.iter().enumerate() {
        let seq = seq as u16;
        send(nic, MAC_B, len, DATA, 0, seq);
        let mut echoed = false;
        while !echoed && now() < deadline {
            while let Some(r) = recv(nic, &mut buf) {
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
        while let Some(r) = recv(nic, &mut buf) {
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
            send(nic, BCAST, 60, HELLO, u8::from(heard), 0);
            next_hello = now() + ticks_from_us(1000);
        }
        while let Some(r) = recv(nic, &mut buf) {
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
                    send(nic, MAC_A, len, ECHO, 0, f.seq);
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
    send(nic, MAC_A, 60, DONE, 0, 0);
}
