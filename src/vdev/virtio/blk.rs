//! virtio-blk (virtio 1.2 §5.2): one request queue over a disk image in memory.
//!
//! The disk is a byte region ([`Disk`]): a `Vec` in tests, the `disk` module the loader
//! placed in host RAM in the kernel. Its capacity is its size in whole 512-byte sectors
//! (a tail shorter than a sector is not reachable), so any size works, not only multiples
//! of 2 MiB. Requests are served synchronously, straight between the guest's buffers and
//! the region, so FLUSH has nothing left to do (and says so with OK).
//!
//! Request layout (§5.2.6), split across descriptors any way the driver likes (§2.7.3):
//!
//! ```text
//!  device-readable:  type u32 | reserved u32 | sector u64 | data (OUT)
//!  device-writable:  data (IN, GET_ID) ... | status u8 (the last writable byte)
//! ```
//!
//! A request without a full header or without a status byte cannot be completed at all: it
//! is a driver error, and the transport puts the device into DEVICE_NEEDS_RESET. Anything
//! else gets a status: OK, IOERR (outside the disk, data not a whole number of sectors, a
//! write to a read-only disk, §5.2.6.2) or UNSUPP (a type not offered).

use alloc::vec::Vec;

use super::queue::Request;
use super::{VirtioDevice, device_id};

/// Feature bits (§5.2.3).
pub mod feature {
    /// VIRTIO_BLK_F_SEG_MAX: `seg_max` in the configuration space.
    pub const SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_RO: the device is read-only.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_BLK_SIZE: `blk_size` in the configuration space.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// VIRTIO_BLK_F_FLUSH: the FLUSH command.
    pub const FLUSH: u64 = 1 << 9;
}

/// Request types (§5.2.6).
pub mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Status values (§5.2.6).
pub mod req_status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// The sector size virtio-blk addresses in (§5.2.6: `sector` counts 512-byte units).
pub const SECTOR_BYTES: u64 = 512;
/// Size of the request header (type, reserved, sector).
const HEADER_BYTES: u32 = 16;
/// Length of the GET_ID string (§5.2.6: VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
/// QueueNumMax of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The configuration space as laid out in §5.2.4, up to and including `blk_size`
/// (the fields after it belong to features not offered and read as zero).
const CONFIG_BYTES: usize = 24;

/// A disk image: a byte region the device reads and writes.
pub trait Disk: Send {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl Disk for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Disk for &'static mut [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// Counters, for diagnostics and tests.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct BlkStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub get_ids: u64,
    pub errors: u64,
    pub unsupported: u64,
}

/// A virtio block device.
pub struct Blk<S: Disk> {
    disk: S,
    read_only: bool,
    id: [u8; ID_BYTES],
    config: [u8; CONFIG_BYTES],
    stats: BlkStats,
}

impl<S: Disk> Blk<S> {
    /// A block device over `disk`; `id` (at most 20 bytes are kept) is what GET_ID returns.
    pub fn new(disk: S, read_only: bool, id: &[u8]) -> Self {
        let mut ident = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        ident[..n].copy_from_slice(&id[..n]);
        let sectors = disk.bytes().len() as u64 / SECTOR_BYTES;
        let mut config = [0u8; CONFIG_BYTES];
        // capacity (le64, 512-byte sectors) at 0, seg_max (le32) at 12, blk_size (le32) at 20.
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_BYTES as u32).to_le_bytes());
        Self {
            disk,
            read_only,
            id: ident,
            config,
            stats: BlkStats::default(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.bytes().len() as u64 / SECTOR_BYTES
    }

    pub fn disk(&self) -> &S {
        &self.disk
    }

    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    /// The byte range of `len` bytes at `sector`, if it is all on the disk.
    fn range(&self, sector: u64, len: u32) -> Option<core::ops::Range<usize>> {
        let start = sector.checked_mul(SECTOR_BYTES)?;
        let end = start.checked_add(u64::from(len))?;
        if end > self.capacity_sectors() * SECTOR_BYTES {
            return None;
        }
        Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }

    /// Carries out a request whose header has been read; returns the status and the bytes
    /// of data written into the driver's buffers.
    fn execute(&mut self, req: &mut Request<'_>, kind: u32, sector: u64) -> (u8, u32) {
        let data_in = req.writable_bytes() - 1;
        match kind {
            req_type::IN => {
                let Some(r) = self
                    .range(sector, data_in)
                    .filter(|_| u64::from(data_in) % SECTOR_BYTES == 0)
                else {
                    return (req_status::IOERR, 0);
                };
                if req.write(0, &self.disk.bytes()[r]).is_err() {
                    return (req_status::IOERR, 0);
                }
                self.stats.reads += 1;
                (req_status::OK, data_in)
            }
            req_type::OUT => {
                // §5.2.6.2: a read-only device fails every write and writes no data.
                if self.read_only {
                    return (req_status::IOERR, 0);
                }
                let data_out = req.readable_bytes() - HEADER_BYTES;
                let Some(r) = self
                    .range(sector, data_out)
                    .filter(|_| u64::from(data_out) % SECTOR_BYTES == 0)
                else {
                    return (req_status::IOERR, 0);
                };
                if req
                    .read(HEADER_BYTES, &mut self.disk.bytes_mut()[r])
                    .is_err()
                {
                    return (req_status::IOERR, 0);
                }
                self.stats.writes += 1;
                (req_status::OK, 0)
            }
            req_type::FLUSH => {
                // Every write already reached the disk region.
                self.stats.flushes += 1;
                (req_status::OK, 0)
            }
            req_type::GET_ID => {
                let n = (data_in as usize).min(ID_BYTES);
                if req.write(0, &self.id[..n]).is_err() {
                    return (req_status::IOERR, 0);
                }
                self.stats.get_ids += 1;
                (req_status::OK, n as u32)
            }
            _ => (req_status::UNSUPP, 0),
        }
    }
}

impl<S: Disk> VirtioDevice for Blk<S> {
    fn device_id(&self) -> u32 {
        device_id::BLOCK
    }

    fn device_features(&self) -> u64 {
        let ro = if self.read_only { feature::RO } else { 0 };
        feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH | ro
    }

    fn num_queues(&self) -> u16 {
        1
    }

    fn queue_max_size(&self, _queue: u16) -> u16 {
        QUEUE_SIZE
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn handle(&mut self, _queue: u16, req: &mut Request<'_>) -> Result<u32, &'static str> {
        if req.readable_bytes() < HEADER_BYTES {
            return Err("block request without a 16-byte header");
        }
        if req.writable_bytes() == 0 {
            return Err("block request without a status byte");
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        req.read(0, &mut header)
            .map_err(|_| "block request header unreadable")?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(s);
        let (status, data) = self.execute(req, kind, sector);
        match status {
            req_status::IOERR => self.stats.errors += 1,
            req_status::UNSUPP => self.stats.unsupported += 1,
            _ => {}
        }
        let last = req.writable_bytes() - 1;
        req.write(last, &[status])
            .map_err(|_| "block request status byte unwritable")?;
        Ok(data + 1)
    }
}
