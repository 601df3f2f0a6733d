//! Fuzz target `virtio`: the virtio-mmio transport (`vdev::virtio::mmio`) with its split queues
//! and a virtio-blk device (read-write or read-only, any small capacity) behind it, over guest
//! RAM of random contents; driven by any sequence of register reads and writes (any offset,
//! any width), scribbles into guest RAM between them (a driver on another vCPU), whole
//! bring-up sequences with queue areas anywhere, chains of descriptors built from the input,
//! notifications and resets. The empty slot (`vdev::virtio::empty`) gets the same accesses.
//!
//! Properties: nothing panics; the device never asks its memory accessor for a byte outside
//! the VM's RAM (the accessor asserts its contract); it writes guest memory only while a
//! QueueNotify is handled and never once it needs a reset; an access is refused exactly when
//! it is not an aligned 32-bit control-register access or an aligned 8/16/32-bit
//! configuration access inside the window; reads fit their width; the interrupt line is
//! InterruptStatus != 0; DEVICE_NEEDS_RESET stays until Status = 0 or a reset, which clear
//! the status and the line; a read-only disk is never written; the empty slot reads its
//! magic, version 2 and device ID 0 whatever was written to it.
#![no_main]

use arbitrary::Arbitrary;
use elvisor::mm::GuestPhysAddr;
use elvisor::vdev::virtio::blk::Blk;
use elvisor::vdev::virtio::empty::EmptySlot;
use elvisor::vdev::virtio::feature::VERSION_1;
use elvisor::vdev::virtio::mmio::reg;
use elvisor::vdev::virtio::{GuestMemory, VecMemory, VirtioMmio, status};
use elvisor::vdev::{AccessWidth, MmioDevice, VcpuId};
use libfuzzer_sys::fuzz_target;

const V0: VcpuId = VcpuId(0);
const RAM: u64 = 0x4000_0000;
const RAM_BYTES: usize = 64 << 10;

/// Guest RAM that checks the accessor contract and counts writes.
struct Checked {
    mem: VecMemory,
    writes: usize,
}

impl GuestMemory for Checked {
    fn ram_base(&self) -> GuestPhysAddr {
        self.mem.ram_base()
    }
    fn ram_size_bytes(&self) -> u64 {
        self.mem.ram_size_bytes()
    }
    fn read_raw(&self, offset: u64, buf: &mut [u8]) {
        assert!(
            offset + buf.len() as u64 <= RAM_BYTES as u64,
            "read outside RAM: {offset:#x}+{:#x}",
            buf.len()
        );
        self.mem.read_raw(offset, buf)
    }
    fn write_raw(&mut self, offset: u64, data: &[u8]) {
        assert!(
            offset + data.len() as u64 <= RAM_BYTES as u64,
            "write outside RAM: {offset:#x}+{:#x}",
            data.len()
        );
        self.writes += 1;
        self.mem.write_raw(offset, data)
    }
}

#[derive(Arbitrary, Debug)]
struct Desc {
    /// Offset into RAM (mostly), or anywhere with `far`.
    at: u16,
    far: Option<u64>,
    len: u16,
    huge: bool,
    flags: u8,
    next: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        offset: u16,
        sas: u8,
    },
    Write {
        offset: u16,
        sas: u8,
        value: u32,
    },
    /// The driver's bring-up (§3.1.1) with queue 0 of `size` entries at these RAM offsets
    /// (or anywhere with `far`).
    /// Unless `raw`, the features are cut to what is offered plus VERSION_1, the size is a
    /// power of two and the areas are aligned, so most bring-ups succeed.
    BringUp {
        raw: bool,
        features: u64,
        size: u16,
        desc: u16,
        avail: u16,
        used: u16,
        far: Option<u64>,
    },
    /// Descriptors written into the descriptor table of queue 0 (whatever it is), then
    /// `heads` made available, then a notification.
    Submit {
        descs: Vec<Desc>,
        heads: Vec<u8>,
        /// A block request header written at `descs[0]`'s buffer.
        kind: u8,
        sector: u32,
    },
    /// A driver on another vCPU writes RAM.
    Scribble {
        at: u16,
        bytes: Vec<u8>,
    },
    Notify(u32),
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    sectors: u8,
    tail: u16,
    ops: Vec<Op>,
}

fn refused(offset: u64, width: AccessWidth) -> bool {
    if offset >= 0x200 {
        return true;
    }
    if offset >= reg::CONFIG {
        return width == AccessWidth::Double || !offset.is_multiple_of(width.bytes());
    }
    width != AccessWidth::Word || !offset.is_multiple_of(4)
}

type Dev = VirtioMmio<Checked, Blk<Vec<u8>>>;

fn w(t: &mut Dev, offset: u64, value: u32) {
    t.write(V0, offset, AccessWidth::Word, u64::from(value))
        .expect("aligned control write");
}

fn r(t: &mut Dev, offset: u64) -> u32 {
    t.read(V0, offset, AccessWidth::Word)
        .expect("aligned control read") as u32
}

fuzz_target!(|input: Input| {
    let disk_len = usize::from(input.sectors) * 512 + usize::from(input.tail % 512);
    let disk: Vec<u8> = (0..disk_len).map(|i| (i * 7 + 3) as u8).collect();
    let pristine = disk.clone();
    let mem = Checked {
        mem: VecMemory::new(GuestPhysAddr(RAM), RAM_BYTES),
        writes: 0,
    };
    let mut t: Dev = VirtioMmio::new(mem, Blk::new(disk, input.read_only, b"fuzz"));
    let mut empty = EmptySlot;
    let mut queue_at: (u64, u64, u16) = (RAM, RAM + 0x1000, 8);

    for op in input.ops.iter().take(256) {
        let writes_before = t.memory().writes;
        let needed_reset = t.needs_reset();
        let mut may_write = false;
        match op {
            Op::Read { offset, sas } => {
                let offset = u64::from(*offset) % 0x210;
                let width = AccessWidth::from_sas(*sas);
                let res = t.read(V0, offset, width);
                assert_eq!(
                    res.is_err(),
                    refused(offset, width),
                    "read {offset:#x} {width:?}"
                );
                if let Ok(v) = res {
                    assert_eq!(v & !width.mask(), 0, "read wider than its access");
                }
                let e = empty
                    .read(V0, offset, width)
                    .expect("an empty slot takes any read");
                assert_eq!(e & !width.mask(), 0);
            }
            Op::Write { offset, sas, value } => {
                let offset = u64::from(*offset) % 0x210;
                let width = AccessWidth::from_sas(*sas);
                may_write = offset == reg::QUEUE_NOTIFY;
                let v = u64::from(*value) & width.mask();
                let res = t.write(V0, offset, width, v);
                assert_eq!(
                    res.is_err(),
                    refused(offset, width),
                    "write {offset:#x} {width:?}"
                );
                assert!(empty.write(V0, offset, width, v).is_ok());
                if res.is_ok() && offset == reg::STATUS && width == AccessWidth::Word && v == 0 {
                    assert_eq!(r(&mut t, reg::STATUS), 0);
                    assert!(!t.irq_level());
                }
            }
            Op::BringUp {
                raw,
                features,
                size,
                desc,
                avail,
                used,
                far,
            } => {
                let (features, size, align) = if *raw {
                    (*features, *size, 1)
                } else {
                    let f = (*features & t.offered_features()) | VERSION_1;
                    (f, 1 << (*size % 10), 16)
                };
                let (features, size) = (&features, &size);
                let at = |o: u16| (RAM + u64::from(o) % RAM_BYTES as u64) & !(align - 1);
                let desc = far.unwrap_or(at(*desc));
                queue_at = (desc, at(*avail), *size);
                w(&mut t, reg::STATUS, 0);
                w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
                w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
                w(&mut t, reg::DRIVER_FEATURES, *features as u32);
                w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
                w(&mut t, reg::DRIVER_FEATURES, (*features >> 32) as u32);
                w(
                    &mut t,
                    reg::STATUS,
                    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
                );
                w(&mut t, reg::QUEUE_SEL, 0);
                w(&mut t, reg::QUEUE_NUM, u32::from(*size));
                w(&mut t, reg::QUEUE_DESC_LOW, desc as u32);
                w(&mut t, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
                w(&mut t, reg::QUEUE_DRIVER_LOW, at(*avail) as u32);
                w(&mut t, reg::QUEUE_DRIVER_HIGH, 0);
                w(&mut t, reg::QUEUE_DEVICE_LOW, at(*used) as u32);
                w(&mut t, reg::QUEUE_DEVICE_HIGH, 0);
                w(&mut t, reg::QUEUE_READY, 1);
                let s = r(&mut t, reg::STATUS);
                w(&mut t, reg::STATUS, s | status::DRIVER_OK);
            }
            Op::Submit {
                descs,
                heads,
                kind,
                sector,
            } => {
                let (table, avail, size) = queue_at;
                let size = u64::from(size.max(1));
                let m = &mut t.memory().mem;
                for (i, d) in descs.iter().take(32).enumerate() {
                    let addr = d.far.unwrap_or(RAM + u64::from(d.at) % RAM_BYTES as u64);
                    let len = if d.huge {
                        u32::MAX - u32::from(d.len)
                    } else {
                        u32::from(d.len)
                    };
                    let mut raw = [0u8; 16];
                    raw[0..8].copy_from_slice(&addr.to_le_bytes());
                    raw[8..12].copy_from_slice(&len.to_le_bytes());
                    raw[12..14].copy_from_slice(&u16::from(d.flags & 7).to_le_bytes());
                    raw[14..16].copy_from_slice(&u16::from(d.next).to_le_bytes());
                    let _ = m.write(table.wrapping_add(16 * i as u64), &raw);
                    if i == 0 {
                        let mut hdr = [0u8; 16];
                        hdr[0] = *kind % 10;
                        hdr[8..12].copy_from_slice(&sector.to_le_bytes());
                        let _ = m.write(addr, &hdr);
                    }
                }
                let mut idx = m.read_u16(avail + 2).unwrap_or(0);
                for h in heads.iter().take(16) {
                    let slot = u64::from(idx) % size;
                    let _ = m.write_u16(avail + 4 + 2 * slot, u16::from(*h));
                    idx = idx.wrapping_add(1);
                }
                let _ = m.write_u16(avail + 2, idx);
                may_write = true;
                w(&mut t, reg::QUEUE_NOTIFY, 0);
            }
            Op::Scribble { at, bytes } => {
                let at = RAM + u64::from(*at) % RAM_BYTES as u64;
                let _ = t.memory().mem.write(at, &bytes[..bytes.len().min(256)]);
            }
            Op::Notify(q) => {
                may_write = true;
                w(&mut t, reg::QUEUE_NOTIFY, *q);
            }
            Op::Reset => {
                t.reset();
                assert_eq!(r(&mut t, reg::STATUS), 0);
                assert!(!t.irq_level());
                assert!(t.take_diagnostic().is_none());
            }
        }
        let wrote = t.memory().writes != writes_before;
        assert!(
            !wrote || may_write,
            "guest memory written outside a notification: {op:?}"
        );
        assert!(
            !wrote || !needed_reset,
            "a device needing a reset wrote guest memory"
        );
        let status_now = r(&mut t, reg::STATUS);
        assert_eq!(
            status_now & status::DEVICE_NEEDS_RESET != 0,
            t.needs_reset()
        );
        let reset_op = matches!(op, Op::Reset | Op::BringUp { .. })
            || matches!(op, Op::Write { offset, value, sas } if u64::from(*offset) % 0x210 == reg::STATUS
                && AccessWidth::from_sas(*sas) == AccessWidth::Word && *value == 0);
        if needed_reset && !reset_op {
            assert!(
                t.needs_reset(),
                "DEVICE_NEEDS_RESET cleared without a reset: {op:?}"
            );
        }
        let is = r(&mut t, reg::INTERRUPT_STATUS);
        assert_eq!(t.irq_level(), is != 0);
        if input.read_only {
            assert!(
                t.device().disk()[..] == pristine[..],
                "a read-only disk was written"
            );
        }
        assert_eq!(empty.read(V0, 0, AccessWidth::Word), Ok(0x7472_6976));
        assert_eq!(empty.read(V0, 4, AccessWidth::Word), Ok(2));
        assert_eq!(empty.read(V0, 8, AccessWidth::Word), Ok(0));
    }
    // Whatever the diagnostic, it prints.
    if let Some(e) = t.take_diagnostic() {
        let _ = format!("{e}");
    }
});
