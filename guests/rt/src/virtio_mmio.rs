//! What a virtio-mmio driver needs (virtio 1.2, section 4.2.2): the transport's register
//! offsets, the device status bits (section 2.1) and the transport-level feature bits. Shared by
//! the guests that drive elvisor's virtio devices (guests/virtio, [`crate::virtq`],
//! [`crate::virtio_net`]).

/// virtio-mmio registers (§4.2.2).
pub mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const VENDOR_ID: usize = 0x00c;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG: usize = 0x100;
}

/// Device status (section 2.1): the driver has noticed the device.
pub const ACKNOWLEDGE: u32 = 1;
/// Device status: the driver knows how to drive the device.
pub const DRIVER: u32 = 2;
/// Device status: the driver is ready.
pub const DRIVER_OK: u32 = 4;
/// Device status: feature negotiation is complete.
pub const FEATURES_OK: u32 = 8;
/// Device status: the device hit an error it cannot recover from without a reset.
pub const NEEDS_RESET: u32 = 64;

/// VIRTIO_F_VERSION_1 (section 6): the modern interface.
pub const F_VERSION_1: u64 = 1 << 32;
