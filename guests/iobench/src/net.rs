//! `net`: two virtio-net NICs on one switch, A (MAC 52:54:00:12:34:01) and B (…:02).
//!
//! Under elvisor they belong to two VMs (boards/qemu-virt/vms/iobench-net-{a,b}.dtsi, on
//! physical CPUs 0 and 1); natively both are QEMU's own virtio-net devices on one hub and the
//! guest drives A from CPU 0 and B from CPU 1 (started with PSCI CPU_ON). The MAC in a NIC's
//! configuration space says which one it is.
//!
//! * `net-ping`: A sends a 60-byte PING, B answers each with a 60-byte PONG; A times from
//!   before its transmit notification until it has the PONG in hand (both drivers' paths, the
//!   switch and two interrupts).
//! * `net-stream`: A sends 1514-byte frames to B in windows of [`WINDOW`]; B answers each
//!   complete window with a 60-byte ACK, which A waits for before the next window (B posts 16
//!   receive buffers, so nothing is dropped). Figure: instructions per DATA frame and bytes
//!   per million instructions (frame bytes, Ethernet header included). Neither guest touches
//!   the payload: what is measured is the device and switch path, not the guests' copies.
//!
//! Receive interrupts wake the waiting side; transmit completions are polled
//! (VIRTQ_AVAIL_F_NO_INTERRUPT on the transmit queue).

use core::sync::atomic::{AtomicU64, Ordering};

use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::smp::{self, CpuBoot};
use elvisor_guest_rt::timer::{Timer, ticks_from_us};
use elvisor_guest_rt::virtio_mmio::reg;
use elvisor_guest_rt::virtio_net::{F_MAC, MAX_FRAME, Nic};
use elvisor_guest_rt::virtq;
use elvisor_guest_rt::{arch, println};
use fdt::Fdt;

use crate::{Irqs, Stats, emit, now, virtio_devices};

const SMALL: usize = 60;

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 2];
const ETHERTYPE: u16 = 0x88b5;
const PING: u8 = 1;
const PONG: u8 = 2;
const DATA: u8 = 3;
const ACK: u8 = 4;

const PINGS: u64 = 256;
const WARMUP: u64 = 8;
const WINDOW: u64 = 8;
const WINDOWS: u64 = 256;
const TIMEOUT_US: u64 = 2_000_000;
/// Handshake: A resends PING(0xffff) this often until B answers (B may still be booting).
const HELLO_US: u64 = 1000;
const HELLO_SEQ: u16 = 0xffff;

/// Guest RAM for NIC k (the driver's rings and buffers, rt::virtio_net).
fn area(k: usize) -> usize {
    0x4100_0000 + 0x10_0000 * k
}

/// Brings `nic` up: MAC only, transmit completions polled.
fn up(nic: &mut Nic) -> bool {
    nic.up(F_MAC, true)
}

/// Sends a `len`-byte frame (Ethernet header included) of `kind`/`seq` to `dst`; only the
/// virtio-net header and the first 20 bytes are written.
fn send(nic: &mut Nic, dst: [u8; 6], len: usize, kind: u8, seq: u16) -> bool {
    let mut h = [0u8; 20];
    h[0..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&nic.mac);
    h[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    h[14] = kind;
    h[16..18].copy_from_slice(&seq.to_le_bytes());
    nic.send(&h, len)
}

/// The next received frame: (length without the virtio-net header, kind, seq); its buffer is
/// posted again at once. A used element that names no receive buffer reads as kind 0.
fn recv(nic: &mut Nic) -> Option<(usize, u8, u16)> {
    nic.recv(|f| {
        let Ok(f) = f else {
            return (0, 0, 0);
        };
        // Bytes 12..19 of the frame: EtherType, kind, flag, seq.
        let w0 = f.read32(12).to_le_bytes();
        let w1 = f.read32(16).to_le_bytes();
        (f.len(), w0[2], u16::from_le_bytes([w1[0], w1[1]]))
    })
}

/// Waits for a frame (until `deadline`, if any).
fn wait(nic: &mut Nic, irqs: &Irqs, deadline: Option<u64>) -> Option<(usize, u8, u16)> {
    loop {
        if let Some(f) = recv(nic) {
            return Some(f);
        }
        let iar = irqs.wait(deadline)?;
        virtq::ack_interrupt(&nic.dev);
        irqs.eoi(iar);
    }
}

pub fn run(fdt: Option<&Fdt<'static>>) -> bool {
    let mut nics = [None, None];
    virtio_devices(fdt, 1, &mut nics);
    // The one with A's MAC (last byte 01) first.
    let mac_of = |d: &Option<(Region, u32)>| {
        d.as_ref().map(|(r, _)| {
            let c1 = r.read32(reg::CONFIG + 4).to_le_bytes();
            c1[1]
        })
    };
    if mac_of(&nics[1]) == Some(MAC_A[5]) {
        nics.swap(0, 1);
    }
    let Some((regs, intid)) = nics[0].take() else {
        println!("BENCH FAIL: net: no virtio-net device in the device tree");
        return false;
    };
    let Some(mut nic) = Nic::new(regs, area(0)) else {
        return false;
    };
    let Some(irqs) = Irqs::up(fdt, true) else {
        println!("BENCH FAIL: net: GIC bring-up failed");
        return false;
    };
    if let Some((regs, intid)) = nics[1].take() {
        // Native: both NICs here; B runs on CPU 1.
        B_DEV.store(regs.base() as u64, Ordering::SeqCst);
        B_INTID.store(u64::from(intid), Ordering::SeqCst);
        let ret = smp::start_cpu(smp::mpidr_of(1), cpu_b, 0);
        if ret != 0 {
            println!("BENCH FAIL: net: CPU_ON returned {ret}");
            return false;
        }
    }
    if !up(&mut nic) {
        println!("BENCH FAIL: net: bring-up of {:x?} failed", nic.mac);
        return false;
    }
    irqs.take(intid);
    println!("BENCH info net-nic mac={:x?} intid={intid}", nic.mac);
    if nic.mac == MAC_B {
        return run_b(&mut nic, &irqs);
    }
    if nic.mac != MAC_A {
        println!("BENCH FAIL: net: unexpected MAC {:x?}", nic.mac);
        return false;
    }
    run_a(&mut nic, &irqs)
}

static B_DEV: AtomicU64 = AtomicU64::new(0);
static B_INTID: AtomicU64 = AtomicU64::new(0);

fn cpu_b(boot: &CpuBoot) {
    let regs = Region::new(B_DEV.load(Ordering::SeqCst) as usize, 0x200);
    let intid = B_INTID.load(Ordering::SeqCst) as u32;
    let Some(mut nic) = regs.and_then(|r| Nic::new(r, area(1))) else {
        return;
    };
    let Some(irqs) = Irqs::up(boot.fdt.as_ref(), false) else {
        println!("BENCH FAIL: net: CPU 1's GIC bring-up failed");
        return;
    };
    if up(&mut nic) {
        irqs.take(intid);
        run_b(&mut nic, &irqs);
    }
}

fn run_a(nic: &mut Nic, irqs: &Irqs) -> bool {
    // Handshake.
    let deadline = now() + ticks_from_us(TIMEOUT_US * 5);
    let mut up = false;
    while !up && now() < deadline {
        send(nic, MAC_B, SMALL, PING, HELLO_SEQ);
        let until = now() + ticks_from_us(HELLO_US);
        while let Some((_, kind, seq)) = wait(nic, irqs, Some(until)) {
            if kind == PONG && seq == HELLO_SEQ {
                up = true;
                break;
            }
        }
    }
    Timer::Virtual.stop();
    if !up {
        println!("BENCH FAIL: net: B never answered");
        return false;
    }
    let mut ping = Stats::new();
    for round in 0..WARMUP + PINGS {
        let seq = round as u16;
        let t0 = now();
        send(nic, MAC_B, SMALL, PING, seq);
        loop {
            match wait(nic, irqs, None) {
                Some((_, PONG, s)) if s == seq => break,
                Some(_) => {}
                None => {
                    println!("BENCH FAIL: net-ping: round {round}: no PONG");
                    return false;
                }
            }
        }
        if round >= WARMUP {
            ping.add(now() - t0);
        }
    }
    emit("net-ping", &ping, 1, format_args!("frame={SMALL}"));

    let mut stream = Stats::new();
    let t0 = now();
    for w in 0..WINDOWS {
        let tw = now();
        for _ in 0..WINDOW {
            if !send(nic, MAC_B, MAX_FRAME, DATA, w as u16) {
                println!("BENCH FAIL: net-stream: transmit queue stuck");
                return false;
            }
        }
        loop {
            match wait(nic, irqs, None) {
                Some((_, ACK, s)) if s == w as u16 => break,
                Some(_) => {}
                None => {
                    println!("BENCH FAIL: net-stream: window {w}: no ACK");
                    return false;
                }
            }
        }
        stream.add(now() - tw);
    }
    let ticks = now() - t0;
    let frames = WINDOWS * WINDOW;
    let bytes = frames * MAX_FRAME as u64;
    let median_window = stream.median().max(1);
    stream.n = frames;
    stream.total = ticks;
    emit(
        "net-stream",
        &stream,
        WINDOW,
        format_args!(
            "frame={MAX_FRAME} window={WINDOW} bytes={bytes} bytes_per_mi={} median_bytes_per_mi={}",
            bytes * 1_000_000 / ticks.max(1),
            WINDOW * MAX_FRAME as u64 * 1_000_000 / median_window
        ),
    );
    true
}

fn run_b(nic: &mut Nic, irqs: &Irqs) -> bool {
    let mut in_window = 0;
    let mut windows = 0;
    let mut frames = 0u64;
    let mut bad = 0u64;
    while windows < WINDOWS {
        let Some((n, kind, seq)) = wait(nic, irqs, None) else {
            println!("BENCH FAIL: net: B timed out after {windows} windows, {frames} frames");
            return false;
        };
        match kind {
            PING => {
                send(nic, MAC_A, SMALL, PONG, seq);
            }
            DATA => {
                frames += 1;
                bad += u64::from(n != MAX_FRAME);
                in_window += 1;
                if in_window == WINDOW {
                    send(nic, MAC_A, SMALL, ACK, seq);
                    in_window = 0;
                    windows += 1;
                }
            }
            _ => {}
        }
    }
    println!(
        "BENCH info net-peer cpu={} frames={frames} bad_length={bad}",
        arch::cpu_index()
    );
    false
}
