//! elvisor virtio guest: a minimal virtio-mmio driver (virtio 1.2 §4.2, version 2, split
//! queues) that checks the hypervisor's virtio devices from inside a VM.
//!
//! The VM has two disks (boards/qemu-virt/vms/virtio.dtsi, images from scripts/mkdisk):
//! `disk-rw` in slot 0 (2051 sectors and a 100-byte tail; byte `o` holds
//! `pattern(o, 0)`) and the read-only `disk-ro` in slot 1 (1000 sectors, `pattern(o, 0x55)`).
//! In order:
//! 1. the device tree lists exactly those two `virtio,mmio` nodes, with their SPIs (16 and
//!    17, level) and `dma-coherent`;
//! 2. every other slot of QEMU virt's window (0x0A00_0000 + 0x200·n) is an empty transport:
//!    magic, version 2, device ID 0, and writes change nothing;
//! 3. disk-rw: feature negotiation, capacity, GET_ID, reads (first sectors, last sector, one
//!    past the end: IOERR), the interrupt (InterruptStatus and the vGIC's pending bit, then
//!    InterruptACK), a write through an indirect table read back, FLUSH;
//! 4. disk-ro: VIRTIO_BLK_F_RO, reads, a write that fails with IOERR and changes nothing;
//! 5. a hostile driver on disk-rw: a descriptor loop, a buffer outside its RAM (where the
//!    host keeps module images), a queue size that is not a power of two, a notification
//!    before DRIVER_OK, a zero-length and a 4 GiB buffer. Each must put the device into
//!    DEVICE_NEEDS_RESET with a configuration-change interrupt and nothing used; after a
//!    reset the device works again;
//! 6. a marker written to sector 20, then PSCI SYSTEM_RESET; on the second boot the marker
//!    must still be there (disk writes survive a VM reset); it leaves a second marker in sector
//!    30 and powers off. A second boot that finds that one already there belongs to a run
//!    started again after such a run (the shell's `start`): disk writes survive a VM restart
//!    too.
//!
//! Rings and buffers live in free guest RAM at 0x4100_0000, reached with single 32/64-bit
//! loads and stores (the MMU is off: Device memory). Lines start with `VIRTIO`.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::smccc::psci;
use elvisor_guest_rt::virtio_mmio::{
    ACKNOWLEDGE, DRIVER, DRIVER_OK, F_VERSION_1, FEATURES_OK, NEEDS_RESET, reg,
};
use elvisor_guest_rt::{BootInfo, Report, dt};

elvisor_guest_rt::entry!(main);

const SLOTS_BASE: usize = 0x0A00_0000;
const SLOT_SIZE: usize = 0x200;
const GICD_BASE: usize = 0x0800_0000;

const F_EVENT_IDX: u64 = 1 << 29;
const F_INDIRECT: u64 = 1 << 28;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_FLUSH: u64 = 1 << 9;

const NEXT: u32 = 1;
const WRITE: u32 = 2;
const INDIRECT: u32 = 4;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u32 = 0;
const S_IOERR: u32 = 1;

const RW_SECTORS: u64 = 2051;
const RO_SECTORS: u64 = 1000;
const QSIZE: u32 = 8;
/// The persistence marker's sector.
const MARK_SECTOR: u64 = 20;

/// Byte `o` of a test disk image (scripts/mkdisk writes the same).
fn pattern(o: u64, seed: u8) -> u8 {
    (((o >> 9) * 13 + (o & 0x1ff)) as u8).wrapping_add(seed)
}

/// The sector of the marker the end of a run leaves (see [`persistence`]).
const RUN_SECTOR: u64 = 30;
/// Its pattern's seed.
const RUN_SEED: u8 = 0x5B;

/// The marker written before the reset: `pattern` with another seed.
const MARK_SEED: u8 = 0xA7;

/// Guest RAM for one device's queue and buffers.
///
/// ```text
///  +0x0000 descriptor table (8 x 16)     +0x3000 request header (16)
///  +0x1000 available ring                 +0x3100 status byte (in a word)
///  +0x2000 used ring                      +0x3800 indirect table
///                                         +0x4000 data (up to 32 KiB)
/// ```
struct Ram {
    r: Region,
    base: usize,
}

const DESC: usize = 0x0000;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
const HDR: usize = 0x3000;
const STATUS_BYTE: usize = 0x3100;
const TABLE: usize = 0x3800;
const DATA: usize = 0x4000;
const AREA_BYTES: usize = 0xC000;

impl Ram {
    fn addr(&self, off: usize) -> u64 {
        (self.base + off) as u64
    }
    fn w32(&self, off: usize, v: u32) {
        self.r.write32(off, v);
    }
    fn r32(&self, off: usize) -> u32 {
        self.r.read32(off)
    }
    fn w16(&self, off: usize, v: u16) {
        let word = off & !3;
        let shift = 8 * (off & 3);
        let old = self.r32(word) & !(0xffff << shift);
        self.w32(word, old | (u32::from(v) << shift));
    }
    fn r16(&self, off: usize) -> u16 {
        (self.r32(off & !3) >> (8 * (off & 3))) as u16
    }
    fn desc_at(&self, table: usize, i: usize, addr: u64, len: u32, flags: u32, next: u32) {
        let d = table + 16 * i;
        self.r.write64(d, addr);
        self.w32(d + 8, len);
        self.w32(d + 12, flags | (next << 16));
    }
    fn clear(&self, off: usize, len: usize) {
        for o in (off..off + len).step_by(4) {
            self.w32(o, 0);
        }
    }
    fn fill(&self, off: usize, len: usize, sector: u64, seed: u8) {
        for k in (0..len).step_by(4) {
            let o = sector * 512 + k as u64;
            let v = u32::from_le_bytes([
                pattern(o, seed),
                pattern(o + 1, seed),
                pattern(o + 2, seed),
                pattern(o + 3, seed),
            ]);
            self.w32(off + k, v);
        }
    }
    /// The first byte offset in `len` bytes at `off` that differs from the image at `sector`.
    fn mismatch(&self, off: usize, len: usize, sector: u64, seed: u8) -> Option<u64> {
        (0..len as u64).step_by(4).find(|&k| {
            let o = sector * 512 + k;
            let want = u32::from_le_bytes([
                pattern(o, seed),
                pattern(o + 1, seed),
                pattern(o + 2, seed),
                pattern(o + 3, seed),
            ]);
            self.r32(off + k as usize) != want
        })
    }
}

/// A virtio-mmio device and the driver's view of its queue 0.
struct Dev {
    regs: Region,
    ram: Ram,
    slot: usize,
    avail_idx: u16,
}

impl Dev {
    fn new(slot: usize, ram_base: usize) -> Option<Self> {
        Some(Self {
            regs: Region::new(SLOTS_BASE + slot * SLOT_SIZE, SLOT_SIZE)?,
            ram: Ram {
                r: Region::new(ram_base, AREA_BYTES)?,
                base: ram_base,
            },
            slot,
            avail_idx: 0,
        })
    }
    fn r(&self, off: usize) -> u32 {
        self.regs.read32(off)
    }
    fn w(&self, off: usize, v: u32) {
        self.regs.write32(off, v);
    }
    fn status(&self) -> u32 {
        self.r(reg::STATUS)
    }
    fn offered(&self) -> u64 {
        self.w(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.r(reg::DEVICE_FEATURES);
        self.w(reg::DEVICE_FEATURES_SEL, 1);
        u64::from(lo) | (u64::from(self.r(reg::DEVICE_FEATURES)) << 32)
    }
    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (§3.1.1 steps 1-6).
    fn negotiate(&self, features: u64) -> bool {
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, ACKNOWLEDGE);
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, features as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.status() & FEATURES_OK != 0
    }
    /// Fresh rings, queue 0 of `size` entries, QueueReady.
    fn setup_queue(&mut self, size: u32) -> bool {
        self.ram.clear(0, HDR);
        self.avail_idx = 0;
        self.w(reg::QUEUE_SEL, 0);
        self.w(reg::QUEUE_NUM, size);
        let (d, a, u) = (
            self.ram.addr(DESC),
            self.ram.addr(AVAIL),
            self.ram.addr(USED),
        );
        self.w(reg::QUEUE_DESC_LOW, d as u32);
        self.w(reg::QUEUE_DESC_HIGH, (d >> 32) as u32);
        self.w(reg::QUEUE_DRIVER_LOW, a as u32);
        self.w(reg::QUEUE_DRIVER_HIGH, (a >> 32) as u32);
        self.w(reg::QUEUE_DEVICE_LOW, u as u32);
        self.w(reg::QUEUE_DEVICE_HIGH, (u >> 32) as u32);
        self.w(reg::QUEUE_READY, 1);
        self.r(reg::QUEUE_READY) == 1
    }
    fn driver_ok(&self) {
        let s = self.status();
        self.w(reg::STATUS, s | DRIVER_OK);
    }
    /// The whole bring-up; false if any step was refused.
    fn up(&mut self, features: u64) -> bool {
        self.negotiate(features) && self.setup_queue(QSIZE) && {
            self.driver_ok();
            self.status() & NEEDS_RESET == 0
        }
    }
    fn used_idx(&self) -> u16 {
        self.ram.r16(USED + 2)
    }
    /// Makes the chain at descriptor 0 available and notifies; returns the used element
    /// (id, len) once it appears, or None if nothing was used.
    fn submit(&mut self) -> Option<(u32, u32)> {
        let before = self.used_idx();
        let slot = usize::from(self.avail_idx % QSIZE as u16);
        self.ram.w16(AVAIL + 4 + 2 * slot, 0);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram.w16(AVAIL + 2, self.avail_idx);
        self.w(reg::QUEUE_NOTIFY, 0);
        // The device serves the queue during the notification; poll a little anyway.
        for _ in 0..1000 {
            if self.used_idx() != before {
                let e = USED + 4 + 8 * usize::from(before % QSIZE as u16);
                return Some((self.ram.r32(e), self.ram.r32(e + 4)));
            }
        }
        None
    }
    /// A block request: header (type, sector) in one descriptor, `data` bytes at DATA in
    /// two (device-writable for IN and GET_ID), the status byte last. Returns (status, len).
    fn blk(&mut self, kind: u32, sector: u64, data: usize) -> Option<(u32, u32)> {
        self.ram.w32(HDR, kind);
        self.ram.w32(HDR + 4, 0);
        self.ram.r.write64(HDR + 8, sector);
        self.ram.w32(STATUS_BYTE, 0xffff_ffff);
        let w = if kind == T_OUT { 0 } else { WRITE };
        self.ram.desc_at(DESC, 0, self.ram.addr(HDR), 16, NEXT, 1);
        if data == 0 {
            self.ram
                .desc_at(DESC, 1, self.ram.addr(STATUS_BYTE), 1, WRITE, 0);
        } else {
            let first = data.min(512) as u32;
            let rest = data as u32 - first;
            let status_at = if rest > 0 { 3 } else { 2 };
            self.ram
                .desc_at(DESC, 1, self.ram.addr(DATA), first, NEXT | w, 2);
            if rest > 0 {
                let a = self.ram.addr(DATA) + u64::from(first);
                self.ram.desc_at(DESC, 2, a, rest, NEXT | w, 3);
            }
            let s = self.ram.addr(STATUS_BYTE);
            self.ram.desc_at(DESC, status_at, s, 1, WRITE, 0);
        }
        let (id, len) = self.submit()?;
        if id != 0 {
            return None;
        }
        Some((self.ram.r32(STATUS_BYTE) & 0xff, len))
    }
    fn config32(&self, off: usize) -> u32 {
        self.r(reg::CONFIG + off)
    }
}

/// GICD_ISPENDR: whether the vGIC has `intid` pending.
fn gic_pending(intid: u32) -> Option<bool> {
    let gicd = Region::new(GICD_BASE, 0x1000)?;
    let word = gicd.read32(0x200 + 4 * (intid as usize / 32));
    Some(word & (1 << (intid % 32)) != 0)
}

fn main(boot: &BootInfo) {
    let mut report = Report::new("VIRTIO");
    let first_boot = boot.reset_count.unwrap_or(0) == 0;
    let Some(mut rw) = Dev::new(0, 0x4100_0000) else {
        report.fail("setup", format_args!("no MMIO region for slot 0"));
        report.finish();
        return;
    };
    if !first_boot {
        persistence(&mut report, &mut rw);
        report.finish();
        return;
    }
    device_tree(&mut report, boot);
    empty_slots(&mut report);
    rw_disk(&mut report, &mut rw);
    if let Some(mut ro) = Dev::new(1, 0x4110_0000) {
        ro_disk(&mut report, &mut ro);
    }
    hostile(&mut report, &mut rw);
    // Leave the marker, then restart the VM: its disk is not part of what a reset reloads.
    let marked = rw.up(F_VERSION_1) && {
        rw.ram.fill(DATA, 512, MARK_SECTOR, MARK_SEED);
        rw.blk(T_OUT, MARK_SECTOR, 512) == Some((S_OK, 1))
    };
    report.check(
        "marker written",
        marked,
        format_args!("status {:#x}", rw.status()),
    );
    report.note(format_args!(
        "passed={} failed={} before the reset; PSCI SYSTEM_RESET",
        report.passed(),
        report.failed()
    ));
    let r = psci::system_reset();
    report.fail("system reset", format_args!("returned {r}"));
    report.finish();
}

fn device_tree(report: &mut Report, boot: &BootInfo) {
    let Some(fdt) = boot.fdt.as_ref() else {
        report.fail("device tree", format_args!("none"));
        return;
    };
    let mut found = [false; 2];
    let mut others = 0;
    for node in elvisor_guest_rt::boot::find_node(fdt, "/")
        .into_iter()
        .flat_map(|r| r.children())
    {
        if !dt::is_compatible(node, &["virtio,mmio"]) {
            continue;
        }
        let base = dt::reg_range(node, 0).map(|r| r.start);
        let irq = dt::gic_interrupt(node, 0);
        let coherent = node.property("dma-coherent").is_some();
        match base.map(|b| (b.wrapping_sub(SLOTS_BASE)) / SLOT_SIZE) {
            Some(n @ 0..=1) => {
                let ok = irq.is_some_and(|i| {
                    i.kind == 0 && i.number == 16 + n as u32 && i.flags & 0xf == 4
                }) && coherent;
                report.check(
                    if n == 0 {
                        "dt: slot 0 node"
                    } else {
                        "dt: slot 1 node"
                    },
                    ok,
                    format_args!("interrupts {irq:?}, dma-coherent {coherent}"),
                );
                found[n] = true;
            }
            _ => others += 1,
        }
    }
    report.check(
        "dt: exactly the two disks",
        found == [true, true] && others == 0,
        format_args!("found {found:?}, {others} other virtio,mmio nodes"),
    );
}

fn empty_slots(report: &mut Report) {
    let mut bad = None;
    for n in 2..32 {
        let Some(s) = Region::new(SLOTS_BASE + n * SLOT_SIZE, SLOT_SIZE) else {
            bad = Some((n, "no region", 0));
            break;
        };
        let ids = [
            s.read32(reg::MAGIC),
            s.read32(reg::VERSION),
            s.read32(reg::DEVICE_ID),
        ];
        if ids != [0x7472_6976, 2, 0] || s.read32(reg::VENDOR_ID) == 0 {
            bad = Some((n, "identity", ids[0]));
            break;
        }
        s.write32(reg::STATUS, ACKNOWLEDGE | DRIVER);
        s.write32(reg::QUEUE_NUM, 8);
        s.write32(reg::QUEUE_NOTIFY, 0);
        if s.read32(reg::STATUS) != 0 || s.read32(reg::QUEUE_NUM_MAX) != 0 {
            bad = Some((n, "writes stuck", s.read32(reg::STATUS)));
            break;
        }
    }
    match bad {
        None => report.pass("empty slots 2..31: magic, version 2, device ID 0, writes ignored"),
        Some((n, what, v)) => report.fail("empty slots", format_args!("slot {n}: {what} {v:#x}")),
    }
}

fn rw_disk(report: &mut Report, d: &mut Dev) {
    let ids = [d.r(reg::MAGIC), d.r(reg::VERSION), d.r(reg::DEVICE_ID)];
    report.check(
        "rw: identity",
        ids == [0x7472_6976, 2, 2],
        format_args!("{ids:x?}"),
    );
    let offered = d.offered();
    report.check(
        "rw: features",
        offered & (F_VERSION_1 | F_EVENT_IDX | F_INDIRECT | BLK_F_FLUSH)
            == (F_VERSION_1 | F_EVENT_IDX | F_INDIRECT | BLK_F_FLUSH)
            && offered & BLK_F_RO == 0,
        format_args!("{offered:#x}"),
    );
    report.check(
        "rw: FEATURES_OK refused without VERSION_1",
        !d.negotiate(BLK_F_FLUSH),
        format_args!("status {:#x}", d.status()),
    );
    report.check(
        "rw: queue size max",
        d.r(reg::QUEUE_NUM_MAX) == 256,
        format_args!("{}", d.r(reg::QUEUE_NUM_MAX)),
    );
    if !d.up(F_VERSION_1 | F_INDIRECT | BLK_F_FLUSH) {
        report.fail("rw: bring-up", format_args!("status {:#x}", d.status()));
        return;
    }
    let cap = u64::from(d.config32(0)) | (u64::from(d.config32(4)) << 32);
    report.check(
        "rw: capacity (3 sectors past 1 MiB, the tail not counted)",
        cap == RW_SECTORS && d.config32(20) == 512,
        format_args!("{cap} sectors, blk_size {}", d.config32(20)),
    );

    // GET_ID.
    d.ram.clear(DATA, 20);
    let r = d.blk(T_GET_ID, 0, 20);
    let id_ok = d.ram.r32(DATA) == u32::from_le_bytes(*b"disk")
        && d.ram.r32(DATA + 4) == u32::from_le_bytes(*b"-rw\0");
    report.check(
        "rw: GET_ID",
        r == Some((S_OK, 21)) && id_ok,
        format_args!("{r:?}"),
    );

    // Reads, with the interrupt: InterruptStatus, the vGIC's pending bit, acknowledge.
    let intid = 32 + 16 + d.slot as u32;
    d.ram.clear(DATA, 1536);
    let r = d.blk(T_IN, 0, 1536);
    let bad = d.ram.mismatch(DATA, 1536, 0, 0);
    report.check(
        "rw: read sectors 0-2",
        r == Some((S_OK, 1537)) && bad.is_none(),
        format_args!("{r:?}, first bad byte {bad:?}"),
    );
    let is = d.r(reg::INTERRUPT_STATUS);
    let pending = gic_pending(intid);
    d.w(reg::INTERRUPT_ACK, is);
    let after = (d.r(reg::INTERRUPT_STATUS), gic_pending(intid));
    report.check(
        "rw: used-buffer interrupt reaches the vGIC, acknowledge lowers it",
        is == 1 && pending == Some(true) && after == (0, Some(false)),
        format_args!("status {is}, pending {pending:?}, after ack {after:?}"),
    );
    let r = d.blk(T_IN, RW_SECTORS - 1, 512);
    let bad = d.ram.mismatch(DATA, 512, RW_SECTORS - 1, 0);
    report.check(
        "rw: read the last sector",
        r == Some((S_OK, 513)) && bad.is_none(),
        format_args!("{r:?}, first bad byte {bad:?}"),
    );
    let r = d.blk(T_IN, RW_SECTORS, 512);
    report.check(
        "rw: read past the end is IOERR",
        matches!(r, Some((S_IOERR, _))),
        format_args!("{r:?}"),
    );

    // A write of sectors 10-11 through an indirect table, read back.
    d.ram.fill(DATA, 1024, 10, 0x3C);
    d.ram.w32(HDR, T_OUT);
    d.ram.w32(HDR + 4, 0);
    d.ram.r.write64(HDR + 8, 10);
    d.ram.w32(STATUS_BYTE, 0xffff_ffff);
    d.ram.desc_at(TABLE, 0, d.ram.addr(HDR), 16, NEXT, 1);
    d.ram.desc_at(TABLE, 1, d.ram.addr(DATA), 1024, NEXT, 2);
    d.ram
        .desc_at(TABLE, 2, d.ram.addr(STATUS_BYTE), 1, WRITE, 0);
    d.ram.desc_at(DESC, 0, d.ram.addr(TABLE), 48, INDIRECT, 0);
    let used = d.submit();
    let status = d.ram.r32(STATUS_BYTE) & 0xff;
    d.ram.clear(DATA, 1024);
    let r = d.blk(T_IN, 10, 1024);
    let bad = d.ram.mismatch(DATA, 1024, 10, 0x3C);
    report.check(
        "rw: write through an indirect table, read back",
        used.is_some() && status == S_OK && r == Some((S_OK, 1025)) && bad.is_none(),
        format_args!("{used:?} status {status}, read {r:?}, first bad byte {bad:?}"),
    );
    let r = d.blk(T_FLUSH, 0, 0);
    report.check("rw: flush", r == Some((S_OK, 1)), format_args!("{r:?}"));
    let is = d.r(reg::INTERRUPT_STATUS);
    d.w(reg::INTERRUPT_ACK, is);
}

fn ro_disk(report: &mut Report, d: &mut Dev) {
    let offered = d.offered();
    report.check(
        "ro: VIRTIO_BLK_F_RO offered",
        offered & BLK_F_RO != 0,
        format_args!("{offered:#x}"),
    );
    if !d.up(F_VERSION_1 | F_EVENT_IDX | BLK_F_RO) {
        report.fail("ro: bring-up", format_args!("status {:#x}", d.status()));
        return;
    }
    let cap = u64::from(d.config32(0)) | (u64::from(d.config32(4)) << 32);
    report.check("ro: capacity", cap == RO_SECTORS, format_args!("{cap}"));
    d.ram.fill(DATA, 512, 3, 0x11);
    let w = d.blk(T_OUT, 3, 512);
    d.ram.clear(DATA, 512);
    let r = d.blk(T_IN, 3, 512);
    let bad = d.ram.mismatch(DATA, 512, 3, 0x55);
    report.check(
        "ro: a write fails with IOERR and writes nothing",
        w == Some((S_IOERR, 1)) && r == Some((S_OK, 513)) && bad.is_none(),
        format_args!("write {w:?}, read {r:?}, first bad byte {bad:?}"),
    );
    d.ram.clear(DATA, 20);
    let r = d.blk(T_GET_ID, 0, 20);
    let id_ok = d.ram.r32(DATA) == u32::from_le_bytes(*b"disk")
        && d.ram.r32(DATA + 4) == u32::from_le_bytes(*b"-ro\0");
    report.check(
        "ro: GET_ID",
        r == Some((S_OK, 21)) && id_ok,
        format_args!("{r:?}"),
    );
}

/// One hostile step: `attack` breaks a rule on a device that was just brought up (or not,
/// as `attack` does it); the device must report DEVICE_NEEDS_RESET, raise a configuration
/// change interrupt and use nothing; Status = 0 must clear it.
fn hostile_step(
    report: &mut Report,
    d: &mut Dev,
    name: &str,
    up: bool,
    attack: impl FnOnce(&mut Dev),
) {
    if up && !d.up(F_VERSION_1 | F_INDIRECT) {
        report.fail(
            name,
            format_args!("bring-up refused: status {:#x}", d.status()),
        );
        return;
    }
    let used_before = d.used_idx();
    attack(d);
    let status = d.status();
    let is = d.r(reg::INTERRUPT_STATUS);
    let used = d.used_idx();
    d.w(reg::STATUS, 0);
    let cleared = d.status() == 0 && d.r(reg::INTERRUPT_STATUS) == 0;
    let needs_interrupt = status & DRIVER_OK != 0;
    report.check(
        name,
        status & NEEDS_RESET != 0
            && (!needs_interrupt || is & 2 != 0)
            && used == used_before
            && cleared,
        format_args!("status {status:#x}, interrupt status {is}, used {used_before}->{used}, cleared {cleared}"),
    );
}

fn hostile(report: &mut Report, d: &mut Dev) {
    hostile_step(report, d, "hostile: descriptor loop", true, |d| {
        d.ram.desc_at(DESC, 0, d.ram.addr(HDR), 16, NEXT, 1);
        d.ram.desc_at(DESC, 1, d.ram.addr(DATA), 16, NEXT, 0);
        d.submit();
    });
    hostile_step(
        report,
        d,
        "hostile: buffer outside the VM's RAM",
        true,
        |d| {
            d.ram.w32(HDR, T_IN);
            d.ram.r.write64(HDR + 8, 0);
            d.ram.desc_at(DESC, 0, d.ram.addr(HDR), 16, NEXT, 1);
            // Where scripts/mkdtb puts the host's module images.
            d.ram.desc_at(DESC, 1, 0x6000_0000, 512, NEXT | WRITE, 2);
            d.ram.desc_at(DESC, 2, d.ram.addr(STATUS_BYTE), 1, WRITE, 0);
            d.submit();
        },
    );
    hostile_step(report, d, "hostile: zero-length buffer", true, |d| {
        d.ram.desc_at(DESC, 0, d.ram.addr(HDR), 0, 0, 0);
        d.submit();
    });
    hostile_step(report, d, "hostile: 4 GiB buffer", true, |d| {
        d.ram.desc_at(DESC, 0, 0x4000_0000, 0xffff_f000, WRITE, 0);
        d.submit();
    });
    hostile_step(report, d, "hostile: indirect table with NEXT", true, |d| {
        d.ram
            .desc_at(DESC, 0, d.ram.addr(TABLE), 16, INDIRECT | NEXT, 1);
        d.submit();
    });
    hostile_step(report, d, "hostile: queue size 6", false, |d| {
        if d.negotiate(F_VERSION_1) {
            d.setup_queue(6);
        }
    });
    hostile_step(report, d, "hostile: notify before DRIVER_OK", false, |d| {
        if d.negotiate(F_VERSION_1) && d.setup_queue(QSIZE) {
            d.ram.desc_at(DESC, 0, d.ram.addr(STATUS_BYTE), 1, WRITE, 0);
            d.submit();
        }
    });
    // And the device works again.
    let ok = d.up(F_VERSION_1) && {
        let r = d.blk(T_IN, 7, 512);
        r == Some((S_OK, 513)) && d.ram.mismatch(DATA, 512, 7, 0).is_none()
    };
    report.check(
        "hostile: the device works again after a reset",
        ok,
        format_args!("status {:#x}", d.status()),
    );
}

fn persistence(report: &mut Report, d: &mut Dev) {
    report.note(format_args!("second boot after SYSTEM_RESET"));
    let ok = d.up(F_VERSION_1) && {
        d.ram.clear(DATA, 512);
        d.blk(T_IN, MARK_SECTOR, 512) == Some((S_OK, 513))
    };
    let bad = d.ram.mismatch(DATA, 512, MARK_SECTOR, MARK_SEED);
    report.check(
        "a disk write survives a VM reset",
        ok && bad.is_none(),
        format_args!("read {ok}, first bad byte {bad:?}"),
    );
    let r = d.blk(T_IN, 10, 1024);
    let bad = d.ram.mismatch(DATA, 1024, 10, 0x3C);
    report.check(
        "the earlier write too",
        r == Some((S_OK, 1025)) && bad.is_none(),
        format_args!("{r:?}, first bad byte {bad:?}"),
    );
    // The end of a run leaves a marker of its own: found here, it was left by an earlier run
    // of this VM (stopped, then started again from the shell), so the disk outlived the VM's
    // stop and start as well as its reset.
    d.ram.clear(DATA, 512);
    let read = d.blk(T_IN, RUN_SECTOR, 512) == Some((S_OK, 513));
    if read && d.ram.mismatch(DATA, 512, RUN_SECTOR, RUN_SEED).is_none() {
        report.check(
            "a disk write survives a VM restart",
            true,
            format_args!("the marker of an earlier run"),
        );
    } else {
        report.note(format_args!(
            "no marker of an earlier run on the disk: the first run since the machine booted"
        ));
    }
    d.ram.fill(DATA, 512, RUN_SECTOR, RUN_SEED);
    let r = d.blk(T_OUT, RUN_SECTOR, 512);
    if r != Some((S_OK, 1)) {
        report.fail("run marker", format_args!("write returned {r:?}"));
    }
}
