//! virtio devices over the MMIO transport (virtio 1.2 §4.2, version 2 only), as pure state
//! machines: the transport ([`mmio::VirtioMmio`]), split virtqueues ([`queue`]), checked guest
//! memory ([`mem`]), the empty slot of QEMU virt's virtio-mmio window ([`empty::EmptySlot`])
//! the block device ([`blk`]) and the network device ([`net`]).
//!
//! The backends run in the EL2 kernel, in the exit handler: a QueueNotify write processes the
//! queue at once, so an I/O exit never leaves the hypervisor. A driver that breaks the rules
//! puts its device into DEVICE_NEEDS_RESET (§2.1.2) with a [`VirtioError`] diagnostic; the
//! device then does nothing until the driver resets it. Nothing a driver does panics or
//! reaches memory outside its VM's RAM.
//!
//! QEMU virt's virtio-mmio window, which guests see at the same place (issue 14):
//!
//! ```text
//!  0x0A00_0000  slot 0   0x200 bytes  SPI 16 (INTID 48)
//!  0x0A00_0200  slot 1   0x200 bytes  SPI 17 (INTID 49)
//!  ...
//!  0x0A00_3E00  slot 31  0x200 bytes  SPI 47 (INTID 79)
//! ```
#![forbid(unsafe_code)]

pub mod blk;
pub mod empty;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod queue;

use core::fmt;

use crate::mm::GuestPhysAddr;

pub use mem::{GuestMemory, VecMemory};
pub use mmio::VirtioMmio;
pub use queue::{Area, ChainFault, Request, ShortBuffer, SplitQueue};

/// Guest physical address of virtio-mmio slot 0 (QEMU virt's VIRT_MMIO).
pub const SLOTS_BASE: GuestPhysAddr = GuestPhysAddr(0x0A00_0000);
/// Size of one slot's register window.
pub const SLOT_SIZE: u64 = 0x200;
/// Number of slots.
pub const SLOT_COUNT: usize = 32;
/// The SPI number (not INTID) of slot 0; slot n uses SPI `SLOT0_SPI + n`.
pub const SLOT0_SPI: u32 = 16;

/// Base address of slot `n`.
pub const fn slot_base(n: usize) -> GuestPhysAddr {
    GuestPhysAddr(SLOTS_BASE.0 + SLOT_SIZE * n as u64)
}

/// INTID of slot `n`'s interrupt (SPI 16 + n, INTID 32 + SPI).
pub const fn slot_intid(n: usize) -> u32 {
    32 + SLOT0_SPI + n as u32
}

/// "virt" in little-endian ASCII (§4.2.2, MagicValue).
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version implemented: 2, no legacy (§4.2.2, Version).
pub const VERSION: u32 = 2;
/// VendorID: "ELVS" in little-endian ASCII (the spec leaves the value to the device).
pub const VENDOR_ID: u32 = 0x5356_4C45;

/// Device IDs (§5).
pub mod device_id {
    pub const NONE: u32 = 0;
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
}

/// Reserved (transport) feature bits (§6) the transport offers.
pub mod feature {
    /// VIRTIO_F_INDIRECT_DESC (bit 28, §2.7.5.3).
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_F_EVENT_IDX (bit 29, §2.7.7, §2.7.10).
    pub const EVENT_IDX: u64 = 1 << 29;
    /// VIRTIO_F_VERSION_1 (bit 32): mandatory for a version 2 transport.
    pub const VERSION_1: u64 = 1 << 32;
    /// Every transport feature offered.
    pub const TRANSPORT: u64 = INDIRECT_DESC | EVENT_IDX | VERSION_1;
    /// The bits that belong to the device type (§2.2: bits 0 to 23, and 50 to 127).
    pub const DEVICE_MASK: u64 = 0x00ff_ffff | !((1 << 50) - 1);
}

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bits (§4.2.2).
pub mod interrupt {
    /// Used Buffer Notification.
    pub const USED_BUFFER: u32 = 1;
    /// Configuration Change Notification.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Why a device stopped and needs a reset. Every variant names the rule the driver broke.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VirtioError {
    /// QueueNum zero, above QueueNumMax, or not a power of two, at QueueReady = 1.
    QueueSize { queue: u16, size: u16, max: u16 },
    /// A queue area not aligned as §2.7 requires.
    AreaMisaligned { queue: u16, area: Area, gpa: u64 },
    /// A queue area not entirely inside the VM's RAM.
    AreaOutsideRam {
        queue: u16,
        area: Area,
        gpa: u64,
        len: u64,
    },
    /// QueueNotify before DRIVER_OK (§2.1.2, §3.1.1).
    NotifyBeforeDriverOk { queue: u32 },
    /// QueueNotify naming a queue the device does not have.
    NotifyNoQueue { queue: u32 },
    /// DRIVER_OK set without FEATURES_OK (§3.1.1).
    DriverOkWithoutFeaturesOk,
    /// A status write that clears a bit other than by a reset (§2.1.1).
    StatusCleared { old: u32, new: u32 },
    /// `avail.idx` more than the queue size ahead of the device.
    AvailIndex {
        queue: u16,
        avail_idx: u16,
        last_avail: u16,
    },
    /// A descriptor index beyond its table.
    DescIndex { queue: u16, head: u16, index: u16 },
    /// A malformed chain.
    Chain {
        queue: u16,
        head: u16,
        reason: ChainFault,
    },
    /// A chain the device type cannot complete (e.g. a block request without a status byte).
    Request {
        queue: u16,
        head: u16,
        reason: &'static str,
    },
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VirtioError::QueueSize { queue, size, max } => write!(
                f,
                "queue {queue}: size {size} is not a power of two in 1..={max}"
            ),
            VirtioError::AreaMisaligned { queue, area, gpa } => {
                write!(f, "queue {queue}: {} at {gpa:#x} misaligned", area.name())
            }
            VirtioError::AreaOutsideRam {
                queue,
                area,
                gpa,
                len,
            } => write!(
                f,
                "queue {queue}: {} {gpa:#x}+{len:#x} outside the VM's RAM",
                area.name()
            ),
            VirtioError::NotifyBeforeDriverOk { queue } => {
                write!(f, "queue {queue}: notified before DRIVER_OK")
            }
            VirtioError::NotifyNoQueue { queue } => {
                write!(f, "notify of queue {queue}: no such queue")
            }
            VirtioError::DriverOkWithoutFeaturesOk => write!(f, "DRIVER_OK without FEATURES_OK"),
            VirtioError::StatusCleared { old, new } => {
                write!(f, "status {old:#x} -> {new:#x} clears bits without a reset")
            }
            VirtioError::AvailIndex {
                queue,
                avail_idx,
                last_avail,
            } => write!(
                f,
                "queue {queue}: avail.idx {avail_idx} is more than the queue size past {last_avail}"
            ),
            VirtioError::DescIndex { queue, head, index } => write!(
                f,
                "queue {queue}: chain {head}: descriptor index {index} out of range"
            ),
            VirtioError::Chain {
                queue,
                head,
                reason,
            } => write!(f, "queue {queue}: chain {head}: {reason}"),
            VirtioError::Request {
                queue,
                head,
                reason,
            } => write!(f, "queue {queue}: chain {head}: {reason}"),
        }
    }
}

/// A device type behind the transport (virtio-blk, ...): its identity, features,
/// configuration space and queues, and the handling of one request.
pub trait VirtioDevice: Send {
    /// Device ID (§5).
    fn device_id(&self) -> u32;
    /// The device-type feature bits offered (only [`feature::DEVICE_MASK`] bits count; the
    /// transport adds its own).
    fn device_features(&self) -> u64;
    /// Number of virtqueues.
    fn num_queues(&self) -> u16;
    /// QueueNumMax of queue `queue` (a power of two).
    fn queue_max_size(&self, queue: u16) -> u16;
    /// The device-specific configuration space (§2.5), little-endian.
    fn config(&self) -> &[u8];
    /// A driver write to the configuration space; returns true if the configuration
    /// changed in a way the driver must be told of (the transport bumps ConfigGeneration).
    fn config_write(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }
    /// Called when the driver sets FEATURES_OK with an acceptable feature set, and with 0 on
    /// reset.
    fn set_features(&mut self, _features: u64) {}
    /// Returns the device to its reset state (§2.4).
    fn reset(&mut self) {}
    /// Handles one available chain of queue `queue`: returns the number of bytes written
    /// into the writable buffers (the used element's `len`, §2.7.8), or a reason the chain
    /// cannot be completed at all (the device then needs a reset).
    fn handle(&mut self, queue: u16, req: &mut Request<'_>) -> Result<u32, &'static str>;

    // The hooks below are for a device one of whose queues is filled from outside this VM's
    // exits (virtio-net's receive queue, filled by a switch on another CPU). Every default
    // leaves the transport as it is for a device served only in its own exits (virtio-blk).

    /// QueueNotify of `queue`: true if the device takes it, so the transport does not
    /// process the queue itself (a receive queue's buffers wait for frames).
    fn takes_notify(&mut self, _queue: u16) -> bool {
        false
    }
    /// Queue `queue` became ready (with its validated state) or not ready (`None`).
    fn queue_ready(&mut self, _queue: u16, _q: Option<&SplitQueue>) {}
    /// The driver set DRIVER_OK (§3.1.1 step 8): the device may use its queues.
    fn driver_ok(&mut self) {}
    /// True if the device keeps InterruptStatus itself (and drives its interrupt line
    /// directly), because it is raised from outside this VM's exits too; the transport then
    /// hands every bit it would set to [`Self::raise_interrupt`].
    fn owns_interrupts(&self) -> bool {
        false
    }
    /// Sets InterruptStatus bits (only if [`Self::owns_interrupts`]).
    fn raise_interrupt(&mut self, _bits: u32) {}
    /// InterruptStatus bits the device keeps (only if [`Self::owns_interrupts`]).
    fn interrupt_status(&self) -> u32 {
        0
    }
    /// InterruptACK (only if [`Self::owns_interrupts`]).
    fn ack_interrupt(&mut self, _bits: u32) {}
    /// A driver error the device found outside this VM's exits (in a receive queue filled
    /// from another VM); the transport takes it at the next register access.
    fn take_error(&mut self) -> Option<VirtioError> {
        None
    }
}

#[cfg(test)]
mod tests;
