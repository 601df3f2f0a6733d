//! Split virtqueues (virtio 1.2 §2.7), device side, with every guest-supplied index, address
//! and length validated.
//!
//! ```text
//!  descriptor table (§2.7.5), 16-byte aligned, 16 bytes x size
//!    [addr u64 | len u32 | flags u16 | next u16] ...      flags: NEXT 1, WRITE 2, INDIRECT 4
//!  available ring (§2.7.6), 2-byte aligned, 6 + 2 x size bytes
//!    [flags u16 | idx u16 | ring[size] u16 | used_event u16]
//!  used ring (§2.7.8), 4-byte aligned, 6 + 8 x size bytes
//!    [flags u16 | idx u16 | ring[size] {id u32, len u32} | avail_event u16]
//! ```
//!
//! The device keeps two free-running 16-bit counters: `last_avail` (the next available-ring
//! entry it will take) and `next_used` (the next used-ring entry it will fill, also the value
//! it publishes in `used.idx`). A descriptor chain is walked into a list of [`Segment`]s, each
//! checked to lie inside the VM's RAM, before the device model sees any of it; the model then
//! reads and writes through a [`Request`], which can only touch those segments.

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use super::mem::GuestMemory;
use super::{VirtioError, feature};

/// Descriptor flags (§2.7.5).
pub mod desc_flags {
    pub const NEXT: u16 = 1;
    pub const WRITE: u16 = 2;
    pub const INDIRECT: u16 = 4;
}

/// `avail.flags` bit (§2.7.7): the driver asks for no used-buffer notifications.
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Size of one descriptor in bytes (§2.7.5).
const DESC_SIZE: u64 = 16;

/// The largest queue size virtio allows (§2.7: "The maximum Queue Size value is 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Which of a queue's three areas.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Area {
    Descriptors,
    Driver,
    Device,
}

impl Area {
    pub const fn name(self) -> &'static str {
        match self {
            Area::Descriptors => "descriptor table",
            Area::Driver => "available ring",
            Area::Device => "used ring",
        }
    }
}

/// One buffer of a descriptor chain, inside guest RAM (checked when the chain was walked).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Segment {
    pub gpa: u64,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// Device-side state of one split virtqueue.
#[derive(Clone, Debug)]
pub struct SplitQueue {
    /// QueueNumMax: the largest size the device accepts (a power of two).
    pub max_size: u16,
    /// QueueNum as last written by the driver (validated only when the queue is made ready).
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    last_avail: u16,
    next_used: u16,
}

impl SplitQueue {
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: 0,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
            last_avail: 0,
            next_used: 0,
        }
    }

    /// Back to the reset state (§4.2.2.1: QueueReady 0 on reset).
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// The queue's `(last_avail, next_used)` counters.
    pub fn counters(&self) -> (u16, u16) {
        (self.last_avail, self.next_used)
    }

    /// Checks the driver's configuration when it writes QueueReady = 1 (§4.2.3.2), and
    /// starts both counters at zero. The size must be a nonzero power of two no larger
    /// than QueueNumMax (§2.7: split queue sizes are powers of two), each area aligned as
    /// §2.7 (table "Virtqueue Part Alignment") requires and entirely inside RAM.
    pub fn enable(&mut self, index: u16, mem: &dyn GuestMemory) -> Result<(), VirtioError> {
        let size = self.size;
        if size == 0 || size > self.max_size || !size.is_power_of_two() {
            return Err(VirtioError::QueueSize {
                queue: index,
                size,
                max: self.max_size,
            });
        }
        let n = u64::from(size);
        for (area, gpa, len, align) in [
            (Area::Descriptors, self.desc, DESC_SIZE * n, 16),
            (Area::Driver, self.driver, 6 + 2 * n, 2),
            (Area::Device, self.device, 6 + 8 * n, 4),
        ] {
            if gpa % align != 0 {
                return Err(VirtioError::AreaMisaligned {
                    queue: index,
                    area,
                    gpa,
                });
            }
            if mem.check(gpa, len).is_err() {
                return Err(VirtioError::AreaOutsideRam {
                    queue: index,
                    area,
                    gpa,
                    len,
                });
            }
        }
        self.last_avail = 0;
        self.next_used = 0;
        self.ready = true;
        Ok(())
    }

    fn mem_err(&self, index: u16, gpa: u64, len: u64) -> VirtioError {
        VirtioError::AreaOutsideRam {
            queue: index,
            area: Area::Driver,
            gpa,
            len,
        }
    }

    /// The head of the next available chain, if the driver has made one available (§2.7.13).
    /// A driver that moves `avail.idx` more than the queue size ahead of the device is
    /// broken (it cannot have that many chains outstanding).
    pub fn next_head(&self, index: u16, mem: &dyn GuestMemory) -> Result<Option<u16>, VirtioError> {
        let avail_idx = mem
            .read_u16(self.driver + 2)
            .map_err(|_| self.mem_err(index, self.driver + 2, 2))?;
        // The ring entries and the descriptors they name were written before avail.idx
        // (§2.7.13.3.1 has the driver order them with a write barrier); pair with it.
        fence(Ordering::Acquire);
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(VirtioError::AvailIndex {
                queue: index,
                avail_idx,
                last_avail: self.last_avail,
            });
        }
        let slot = u64::from(self.last_avail % self.size);
        let gpa = self.driver + 4 + 2 * slot;
        let head = mem.read_u16(gpa).map_err(|_| self.mem_err(index, gpa, 2))?;
        if head >= self.size {
            return Err(VirtioError::DescIndex {
                queue: index,
                head,
                index: head,
            });
        }
        Ok(Some(head))
    }

    /// Walks the chain starting at `head` into `segs` (§2.7.5, §2.7.5.3), then consumes
    /// the available-ring entry. Refused, with the device left to be reset:
    /// an index beyond its table, a chain of more buffers than the queue has entries
    /// (§2.7.5.3.1; this also catches every loop), a zero-length buffer, a buffer or
    /// indirect table not entirely inside RAM, a device-readable buffer after a
    /// device-writable one (§2.7.4.2), an indirect descriptor without
    /// VIRTIO_F_INDIRECT_DESC, inside an indirect table, with NEXT set, or with a length
    /// that is zero or not a multiple of 16 (§2.7.5.3.1), and a chain of 4 GiB or more
    /// (§2.7.13.1).
    pub fn walk(
        &mut self,
        index: u16,
        head: u16,
        features: u64,
        mem: &dyn GuestMemory,
        segs: &mut Vec<Segment>,
    ) -> Result<(), VirtioError> {
        segs.clear();
        let size = u32::from(self.size);
        let err = |reason| VirtioError::Chain {
            queue: index,
            head,
            reason,
        };
        // The table being walked: the queue's own, or one indirect table.
        let mut table = self.desc;
        let mut entries = size;
        let mut indirect = false;
        let mut i = u32::from(head);
        let mut steps = 0u32;
        let mut seen_writable = false;
        let mut total: u64 = 0;
        loop {
            if i >= entries {
                return Err(VirtioError::DescIndex {
                    queue: index,
                    head,
                    index: i as u16,
                });
            }
            steps += 1;
            if steps > entries {
                return Err(err(ChainFault::Loop));
            }
            let gpa = table + DESC_SIZE * u64::from(i);
            let mut raw = [0u8; 16];
            mem.read(gpa, &mut raw)
                .map_err(|_| err(ChainFault::TableOutsideRam { gpa }))?;
            let addr = u64::from_le_bytes([
                raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
            ]);
            let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            let next = u16::from_le_bytes([raw[14], raw[15]]);

            if flags & desc_flags::INDIRECT != 0 {
                if features & feature::INDIRECT_DESC == 0 {
                    return Err(err(ChainFault::IndirectNotNegotiated));
                }
                if indirect {
                    return Err(err(ChainFault::IndirectNested));
                }
                if flags & desc_flags::NEXT != 0 {
                    return Err(err(ChainFault::IndirectWithNext));
                }
                if len == 0 || u64::from(len) % DESC_SIZE != 0 {
                    return Err(err(ChainFault::IndirectLength { len }));
                }
                if mem.check(addr, u64::from(len)).is_err() {
                    return Err(err(ChainFault::OutsideRam {
                        gpa: addr,
                        len: u64::from(len),
                    }));
                }
                // The WRITE flag of the descriptor naming the table is ignored (§2.7.5.3.2).
                table = addr;
                entries = len / DESC_SIZE as u32;
                indirect = true;
                i = 0;
                steps = 0;
                continue;
            }
            if len == 0 {
                return Err(err(ChainFault::ZeroLength));
            }
            if mem.check(addr, u64::from(len)).is_err() {
                return Err(err(ChainFault::OutsideRam {
                    gpa: addr,
                    len: u64::from(len),
                }));
            }
            let writable = flags & desc_flags::WRITE != 0;
            if seen_writable && !writable {
                return Err(err(ChainFault::ReadableAfterWritable));
            }
            seen_writable |= writable;
            total += u64::from(len);
            if total > u64::from(u32::MAX) {
                return Err(err(ChainFault::TooManyBytes));
            }
            if segs.len() >= size as usize {
                return Err(err(ChainFault::TooLong));
            }
            segs.push(Segment {
                gpa: addr,
                len,
                writable,
            });
            if flags & desc_flags::NEXT == 0 {
                break;
            }
            i = u32::from(next);
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(())
    }

    /// Skips the next available entry without using it (after a refused chain the device
    /// needs a reset anyway; this keeps the counters honest).
    pub fn skip(&mut self) {
        self.last_avail = self.last_avail.wrapping_add(1);
    }

    /// Puts `(head, written)` in the used ring and publishes it in `used.idx` (§2.7.8,
    /// §2.7.14): the element is written before the index, with a release barrier between.
    pub fn push_used(
        &mut self,
        index: u16,
        head: u16,
        written: u32,
        mem: &mut dyn GuestMemory,
    ) -> Result<(), VirtioError> {
        let slot = u64::from(self.next_used % self.size);
        let elem = self.device + 4 + 8 * slot;
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        raw[4..].copy_from_slice(&written.to_le_bytes());
        let bad = |gpa, len| VirtioError::AreaOutsideRam {
            queue: index,
            area: Area::Device,
            gpa,
            len,
        };
        mem.write(elem, &raw).map_err(|_| bad(elem, 8))?;
        self.next_used = self.next_used.wrapping_add(1);
        fence(Ordering::Release);
        mem.write_u16(self.device + 2, self.next_used)
            .map_err(|_| bad(self.device + 2, 2))
    }

    /// With VIRTIO_F_EVENT_IDX, tells the driver to notify again once it makes entry
    /// `last_avail` available (§2.7.10: `avail_event` in the used ring).
    pub fn publish_avail_event(
        &mut self,
        index: u16,
        mem: &mut dyn GuestMemory,
    ) -> Result<(), VirtioError> {
        let gpa = self.device + 4 + 8 * u64::from(self.size);
        mem.write_u16(gpa, self.last_avail)
            .map_err(|_| VirtioError::AreaOutsideRam {
                queue: index,
                area: Area::Device,
                gpa,
                len: 2,
            })?;
        // The driver must see avail_event before the device looks at avail.idx again.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Whether the driver wants a used-buffer notification now that `used.idx` went from
    /// `old_used` to the current value (§2.7.7.2): with VIRTIO_F_EVENT_IDX, when the new
    /// entries pass `used_event`; without it, unless `avail.flags` has NO_INTERRUPT.
    pub fn wants_interrupt(
        &self,
        index: u16,
        old_used: u16,
        event_idx: bool,
        mem: &dyn GuestMemory,
    ) -> Result<bool, VirtioError> {
        if old_used == self.next_used {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        if event_idx {
            let gpa = self.driver + 4 + 2 * u64::from(self.size);
            let used_event = mem.read_u16(gpa).map_err(|_| self.mem_err(index, gpa, 2))?;
            let new = self.next_used;
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old_used))
        } else {
            let flags = mem
                .read_u16(self.driver)
                .map_err(|_| self.mem_err(index, self.driver, 2))?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

/// What is wrong with a descriptor chain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChainFault {
    /// The walk came back to a descriptor it had visited.
    Loop,
    /// More buffers than the queue has entries.
    TooLong,
    ZeroLength,
    OutsideRam {
        gpa: u64,
        len: u64,
    },
    /// A descriptor of an indirect table lies outside RAM.
    TableOutsideRam {
        gpa: u64,
    },
    ReadableAfterWritable,
    IndirectNotNegotiated,
    IndirectNested,
    IndirectWithNext,
    IndirectLength {
        len: u32,
    },
    TooManyBytes,
}

impl core::fmt::Display for ChainFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ChainFault::Loop => write!(f, "descriptor loop"),
            ChainFault::TooLong => write!(f, "chain longer than the queue"),
            ChainFault::ZeroLength => write!(f, "zero-length buffer"),
            ChainFault::OutsideRam { gpa, len } => {
                write!(f, "buffer {gpa:#x}+{len:#x} outside the VM's RAM")
            }
            ChainFault::TableOutsideRam { gpa } => {
                write!(f, "descriptor at {gpa:#x} outside the VM's RAM")
            }
            ChainFault::ReadableAfterWritable => {
                write!(f, "device-readable buffer after a device-writable one")
            }
            ChainFault::IndirectNotNegotiated => {
                write!(f, "indirect descriptor without VIRTIO_F_INDIRECT_DESC")
            }
            ChainFault::IndirectNested => write!(f, "indirect descriptor in an indirect table"),
            ChainFault::IndirectWithNext => write!(f, "indirect descriptor with NEXT set"),
            ChainFault::IndirectLength { len } => {
                write!(
                    f,
                    "indirect table of {len} bytes (not a nonzero multiple of 16)"
                )
            }
            ChainFault::TooManyBytes => write!(f, "chain of 4 GiB or more"),
        }
    }
}

/// A request as the device model sees it: the validated buffers of one chain, the
/// device-readable ones first (§2.7.4.2), each addressed by a byte offset into the readable
/// or the writable part. Accesses outside those parts fail; nothing else in RAM is reachable.
pub struct Request<'a> {
    mem: &'a mut dyn GuestMemory,
    segs: &'a [Segment],
    readable_bytes: u32,
    writable_bytes: u32,
}

/// A request's access beyond its buffers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShortBuffer;

impl<'a> Request<'a> {
    pub fn new(mem: &'a mut dyn GuestMemory, segs: &'a [Segment]) -> Self {
        // The walk bounds the total to u32::MAX.
        let sum = |w: bool| {
            segs.iter()
                .filter(|s| s.writable == w)
                .fold(0u32, |a, s| a.saturating_add(s.len))
        };
        Self {
            mem,
            readable_bytes: sum(false),
            writable_bytes: sum(true),
            segs,
        }
    }

    /// Bytes the driver gave the device to read.
    pub fn readable_bytes(&self) -> u32 {
        self.readable_bytes
    }

    /// Bytes the driver gave the device to write.
    pub fn writable_bytes(&self) -> u32 {
        self.writable_bytes
    }

    /// Reads `buf.len()` bytes at `offset` of the readable part.
    pub fn read(&self, offset: u32, buf: &mut [u8]) -> Result<(), ShortBuffer> {
        let mut failed = false;
        let mem = &*self.mem;
        pieces(
            self.segs,
            false,
            self.readable_bytes,
            offset,
            buf.len(),
            |gpa, at, n| {
                // Every segment was checked to be inside RAM when the chain was walked.
                failed |= mem.read(gpa, &mut buf[at..at + n]).is_err();
            },
        )?;
        if failed { Err(ShortBuffer) } else { Ok(()) }
    }

    /// Writes `data` at `offset` of the writable part.
    pub fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), ShortBuffer> {
        let mut failed = false;
        let mem = &mut *self.mem;
        pieces(
            self.segs,
            true,
            self.writable_bytes,
            offset,
            data.len(),
            |gpa, at, n| {
                failed |= mem.write(gpa, &data[at..at + n]).is_err();
            },
        )?;
        if failed { Err(ShortBuffer) } else { Ok(()) }
    }
}

impl Request<'_> {
    /// Copies `len` bytes at `src_offset` of `src`'s readable part to `offset` of this
    /// request's writable part, RAM to RAM ([`GuestMemory::copy_from`]: one copy where the
    /// two memories allow it, as between two VMs' RAM in the hypervisor). Both requests'
    /// segments were checked to be inside their RAM when their chains were walked; a range
    /// beyond either request's buffers fails before a byte moves.
    pub fn copy_from(
        &mut self,
        offset: u32,
        src: &Request<'_>,
        src_offset: u32,
        len: u32,
    ) -> Result<(), ShortBuffer> {
        let n = len as usize;
        if u64::from(src_offset) + u64::from(len) > u64::from(src.readable_bytes) {
            return Err(ShortBuffer);
        }
        let mut failed = false;
        let mem = &mut *self.mem;
        let from = &*src.mem;
        pieces(
            self.segs,
            true,
            self.writable_bytes,
            offset,
            n,
            |gpa, at, m| {
                // The source pieces of these `m` bytes (in range: checked above).
                let _ = pieces(
                    src.segs,
                    false,
                    src.readable_bytes,
                    src_offset + at as u32,
                    m,
                    |src_gpa, at2, k| {
                        failed |= mem
                            .copy_from(gpa + at2 as u64, from, src_gpa, k as u64)
                            .is_err();
                    },
                );
            },
        )?;
        if failed { Err(ShortBuffer) } else { Ok(()) }
    }
}

/// Visits the pieces `(gpa, start in the caller's buffer, len)` covering `len` bytes at
/// `offset` of the readable (`writable` false) or writable part of `segs`, whose size is
/// `total`.
fn pieces(
    segs: &[Segment],
    writable: bool,
    total: u32,
    offset: u32,
    len: usize,
    mut f: impl FnMut(u64, usize, usize),
) -> Result<(), ShortBuffer> {
    let end = u64::from(offset) + len as u64;
    if end > u64::from(total) {
        return Err(ShortBuffer);
    }
    let mut skip = u64::from(offset);
    let mut done = 0usize;
    for s in segs.iter().filter(|s| s.writable == writable) {
        if done == len {
            break;
        }
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = core::cmp::min(seg_len - skip, (len - done) as u64) as usize;
        f(s.gpa + skip, done, n);
        done += n;
        skip = 0;
    }
    Ok(())
}
