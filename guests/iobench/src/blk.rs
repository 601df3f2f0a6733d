//! `blk`: sequential throughput of one virtio-blk disk (the first in the device tree).
//!
//! The whole disk is written front to back in [`CHUNK`]-byte requests, one at a time (header,
//! data and status descriptors; the completion interrupt wakes the guest), then read back the
//! same way. `blk-write` and `blk-read`: instructions per request and bytes per million
//! instructions. The guest does not touch the data buffer: what is measured is the driver's
//! request path and the device's copy between the disk and guest RAM.

use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::println;
use elvisor_guest_rt::virtio_mmio::reg;
use elvisor_guest_rt::virtq::{self, F_NEXT, F_WRITE, Queue, RINGS_BYTES};
use fdt::Fdt;

use crate::{Irqs, Stats, emit, now, virtio_devices};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const SECTOR: u64 = 512;
/// Bytes per request.
const CHUNK: u64 = 64 * 1024;
/// At most this much of the disk is used.
const MAX_BYTES: u64 = 16 << 20;

/// Rings, then the request header and status at +0x4000, the data buffer at +0x1_0000.
const AREA: usize = 0x4100_0000;
const HEADER: usize = 0x4000;
const STATUS: usize = 0x4010;
const DATA: usize = 0x1_0000;

pub fn run(fdt: Option<&Fdt<'static>>) -> bool {
    let mut found = [None];
    virtio_devices(fdt, 2, &mut found);
    let Some((dev, intid)) = found[0].take() else {
        println!("BENCH FAIL: blk: no virtio-blk device in the device tree");
        return false;
    };
    let (Some(mut q), Some(ram)) = (
        Queue::new(AREA, 16),
        Region::new(AREA + RINGS_BYTES, DATA + CHUNK as usize),
    ) else {
        return false;
    };
    let Some(irqs) = Irqs::up(fdt, true) else {
        println!("BENCH FAIL: blk: GIC bring-up failed");
        return false;
    };
    if !virtq::negotiate(&dev, 0) || !q.attach(&dev, 0, false) || !virtq::driver_ok(&dev) {
        println!("BENCH FAIL: blk: bring-up failed");
        return false;
    }
    irqs.take(intid);
    let capacity =
        u64::from(dev.read32(reg::CONFIG)) | u64::from(dev.read32(reg::CONFIG + 4)) << 32;
    let bytes = (capacity * SECTOR).min(MAX_BYTES) / CHUNK * CHUNK;
    println!("BENCH info blk capacity_sectors={capacity} bytes={bytes} chunk={CHUNK}");
    if bytes == 0 {
        println!("BENCH FAIL: blk: the disk is smaller than one request");
        return false;
    }
    let base = ram.base();
    let mut request = |kind: u32, sector: u64| -> bool {
        ram.write32(HEADER, kind);
        ram.write32(HEADER + 4, 0);
        ram.write64(HEADER + 8, sector);
        ram.write32(STATUS, 0xff);
        let data_flags = if kind == T_IN { F_WRITE } else { 0 };
        q.desc(0, base + HEADER, 16, F_NEXT, 1);
        q.desc(1, base + DATA, CHUNK as u32, data_flags | F_NEXT, 2);
        q.desc(2, base + STATUS, 1, F_WRITE, 0);
        q.offer(0);
        dev.write32(reg::QUEUE_NOTIFY, 0);
        loop {
            if q.next_used().is_some() {
                break;
            }
            let Some(iar) = irqs.wait(None) else {
                return false;
            };
            virtq::ack_interrupt(&dev);
            irqs.eoi(iar);
        }
        ram.read32(STATUS) & 0xff == 0
    };
    // One untimed request of each kind first.
    if !request(T_OUT, 0) || !request(T_IN, 0) {
        println!("BENCH FAIL: blk: the first requests failed");
        return false;
    }
    for (name, kind) in [("blk-write", T_OUT), ("blk-read", T_IN)] {
        let mut stats = Stats::new();
        let t0 = now();
        let mut at = 0;
        while at < bytes {
            let t = now();
            if !request(kind, at / SECTOR) {
                println!("BENCH FAIL: {name}: request at byte {at} failed or timed out");
                return false;
            }
            stats.add(now() - t);
            at += CHUNK;
        }
        let ticks = now() - t0;
        let median = stats.median().max(1);
        let per_request = Stats {
            total: ticks,
            ..stats
        };
        emit(
            name,
            &per_request,
            1,
            format_args!(
                "request={CHUNK} bytes={bytes} bytes_per_mi={} median_bytes_per_mi={}",
                bytes * 1_000_000 / ticks.max(1),
                CHUNK * 1_000_000 / median
            ),
        );
    }
    true
}
