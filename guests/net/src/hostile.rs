//! The hostile NIC (MAC 52:54:00:12:34:03, boards/qemu-virt/vms/net-hostile.dtsi): a driver
//! that breaks every rule of virtio 1.2 §2.7 and §4.2 on a switch where two Linux VMs ping
//! each other (the net-hostile-linux cases). It never stops: the harness ends the run once the
//! Linux VMs' pings are all answered.
//!
//! Each round, with 100 ms of quiet after it:
//! 1. frames the switch must drop and count, the device staying up: a chain shorter than the
//!    virtio-net header, a header asking for GSO, a 10-byte and a 2000-byte frame; then 16
//!    broadcast frames of 1514 bytes (an unknown EtherType, which the Linux VMs must drop
//!    without losing a ping);
//! 2. driver errors, each of which must put the device into DEVICE_NEEDS_RESET (checked in
//!    Status), after which a reset and a new bring-up must give a working device again (a
//!    broadcast frame is used): a transmit descriptor loop, a buffer outside the VM's RAM, a
//!    zero-length and a 4 GiB buffer, a queue size of 6, a notification before DRIVER_OK, and
//!    receive buffers outside RAM (an error only the next frame *to* this NIC finds: the
//!    Linux VMs' broadcasts, on their CPUs; checked at the start of the next round).
//!
//! A `NET HOSTILE: round N: ...` line every 10 rounds says how far it got; every failed
//! expectation is a `NET FAIL` line.

use elvisor_guest_rt::Report;
use elvisor_guest_rt::timer::ticks_from_us;
use elvisor_guest_rt::virtio_mmio::{NEEDS_RESET, reg};
use elvisor_guest_rt::virtio_net::{F_MAC, F_STATUS, HDR, MAX_FRAME, Nic, QSIZE, TX};
use elvisor_guest_rt::virtq::{self, F_NEXT, F_WRITE, Queue};

use super::{BCAST, now, send, up};

/// Far beyond the VM's 64 MiB of RAM.
const OUTSIDE: usize = 0x1_0000_0000;

/// The scratch transmit buffer (the driver's transmit buffer 0).
fn scratch(nic: &Nic) -> usize {
    nic.bufs.base() + Nic::tx_buf(0)
}

/// Offers transmit chain 0 and notifies.
fn kick(nic: &mut Nic) {
    nic.tx.offer(0);
    nic.notify(TX);
}

fn needs_reset(nic: &Nic) -> bool {
    nic.dev.read32(reg::STATUS) & NEEDS_RESET != 0
}

/// Resets the device and brings it up again; the driver's ring state starts over.
fn fresh(nic: &mut Nic) -> bool {
    up(nic)
}

/// A frame the switch takes (a broadcast nobody understands) goes out.
fn works(nic: &mut Nic) -> bool {
    send(nic, BCAST, 60, 9, 0, 0) && !needs_reset(nic)
}

/// Step 1: frames the switch drops and counts; the device must stay up.
fn bad_frames(nic: &mut Nic) -> Result<(), &'static str> {
    // A chain of 5 bytes: shorter than the virtio-net header.
    let tx_area = scratch(nic);
    nic.tx.desc(0, tx_area, 5, 0, 0);
    kick(nic);
    // A header asking for GSO (gso_type 1, TCPv4), which was not offered.
    nic.bufs.write32(Nic::tx_buf(0), 0x0000_0100);
    nic.tx.desc(0, tx_area, (HDR + 60) as u32, 0, 0);
    kick(nic);
    nic.bufs.write32(Nic::tx_buf(0), 0);
    // 10 bytes of frame, and 2000.
    for len in [10usize, 2000] {
        nic.tx.desc(0, tx_area, (HDR + len) as u32, 0, 0);
        kick(nic);
    }
    if needs_reset(nic) {
        return Err("a dropped frame put the device into DEVICE_NEEDS_RESET");
    }
    for seq in 0..16 {
        if !send(nic, BCAST, MAX_FRAME, 9, 0, seq) {
            return Err("a broadcast frame was not used");
        }
    }
    Ok(())
}

/// Step 2: one broken rule; the device must need a reset, then work again after one.
fn broken_rule(nic: &mut Nic, which: usize) -> Result<(), &'static str> {
    let tx_area = scratch(nic);
    match which {
        0 => {
            nic.tx.desc(0, tx_area, HDR as u32, F_NEXT, 1);
            nic.tx.desc(1, tx_area, 60, F_NEXT, 0);
            kick(nic);
        }
        1 => {
            nic.tx.desc(0, OUTSIDE, (HDR + 60) as u32, 0, 0);
            kick(nic);
        }
        2 => {
            nic.tx.desc(0, tx_area, 0, 0, 0);
            kick(nic);
        }
        3 => {
            nic.tx.desc(0, tx_area, 0xffff_f000, 0, 0);
            kick(nic);
        }
        4 => {
            // Queue size 6: not a power of two.
            negotiate_with_tx_queue(nic, 6);
        }
        5 => {
            // A notification before DRIVER_OK, with a valid chain waiting.
            negotiate_with_tx_queue(nic, QSIZE);
            nic.tx.desc(0, tx_area, (HDR + 60) as u32, 0, 0);
            kick(nic);
        }
        _ => {
            // Receive buffers outside RAM: found by the next frame delivered to this NIC.
            for i in 0..QSIZE {
                nic.rx
                    .desc(i, OUTSIDE + 0x800 * i as usize, 0x800, F_WRITE, 0);
            }
            return Ok(());
        }
    }
    if !needs_reset(nic) {
        return Err("a broken rule did not put the device into DEVICE_NEEDS_RESET");
    }
    if !fresh(nic) || !works(nic) {
        return Err("the device did not work again after a reset");
    }
    Ok(())
}

/// From a reset to FEATURES_OK, then the transmit queue with `size` entries made ready (its
/// rings zeroed, the driver's indices from zero); no DRIVER_OK.
fn negotiate_with_tx_queue(nic: &mut Nic, size: u16) {
    virtq::negotiate(&nic.dev, F_MAC | F_STATUS);
    if size == nic.tx.size {
        nic.tx.attach(&nic.dev, TX.into(), false);
    } else if let Some(mut q) = Queue::new(nic.tx.base(), size) {
        q.attach(&nic.dev, TX.into(), false);
    }
}

/// Number of broken rules per round (the last, bad receive buffers, is checked a round later).
const RULES: usize = 7;

pub fn run(report: &mut Report, nic: &mut Nic) -> ! {
    let mut round: u64 = 0;
    let mut rx_found: u64 = 0;
    loop {
        round += 1;
        // Last round's receive buffers were outside RAM: the Linux VMs' broadcasts (ARP) may
        // have found them meanwhile. Either way the device must come back after a reset.
        if needs_reset(nic) {
            rx_found += 1;
        }
        if !fresh(nic) || !works(nic) {
            report.fail("hostile: bring-up", format_args!("round {round}: refused"));
        }
        if let Err(why) = bad_frames(nic) {
            report.fail(
                "hostile: dropped frames",
                format_args!("round {round}: {why}"),
            );
            let _ = fresh(nic);
        }
        for rule in 0..RULES {
            if let Err(why) = broken_rule(nic, rule) {
                report.fail(
                    "hostile: broken rule",
                    format_args!("round {round}, rule {rule}: {why}"),
                );
                let _ = fresh(nic);
            }
        }
        if round % 10 == 1 {
            elvisor_guest_rt::println!(
                "NET HOSTILE: round {round}: {} broken rules a round, each answered by \
                 DEVICE_NEEDS_RESET; bad receive buffers found by other VMs' frames {rx_found} \
                 time(s)",
                RULES - 1
            );
        }
        let until = now() + ticks_from_us(100_000);
        while now() < until {
            core::hint::spin_loop();
        }
    }
}
