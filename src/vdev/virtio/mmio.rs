//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2), for one device.
//!
//! Register window (§4.2.2, Table "MMIO Device Register Layout"); control registers are 32
//! bits wide and take only aligned 32-bit accesses (§4.2.2.2), anything else is refused (the
//! guest gets an external abort); the configuration space at 0x100 takes aligned 8-, 16- and
//! 32-bit accesses:
//!
//! ```text
//!  0x000 MagicValue (RO)        0x044 QueueReady             0x090 QueueDriverLow
//!  0x004 Version (RO)           0x050 QueueNotify (WO)       0x094 QueueDriverHigh
//!  0x008 DeviceID (RO)          0x060 InterruptStatus (RO)   0x0a0 QueueDeviceLow
//!  0x00c VendorID (RO)          0x064 InterruptACK (WO)      0x0a4 QueueDeviceHigh
//!  0x010 DeviceFeatures (RO)    0x070 Status                 0x0fc ConfigGeneration (RO)
//!  0x014 DeviceFeaturesSel (WO) 0x080 QueueDescLow           0x100 Config
//!  0x020 DriverFeatures (WO)    0x084 QueueDescHigh          anything else: RAZ/WI
//!  0x024 DriverFeaturesSel (WO)
//!  0x030 QueueSel (WO)   0x034 QueueNumMax (RO)   0x038 QueueNum (WO)
//! ```
//!
//! Write-only registers read as zero and writes to read-only ones are ignored. Shared memory
//! regions (SHMSel...) and QueueReset are not offered (VIRTIO_F_RING_RESET is not), so they
//! are RAZ/WI as well.
//!
//! Interrupts: the device's output is the level `InterruptStatus != 0`, which the caller
//! wires to an SPI on the vGIC ([`crate::vdev::MmioBus`] reports its edges); the driver's
//! InterruptACK lowers it (§4.2.3.4).

use alloc::string::String;
use alloc::vec::Vec;

use super::mem::GuestMemory;
use super::queue::{Request, Segment, SplitQueue};
use super::{
    MAGIC, SLOT_SIZE, VENDOR_ID, VERSION, VirtioDevice, VirtioError, feature, interrupt, status,
};
use crate::vdev::{AccessWidth, MmioDevice, MmioError, VcpuId};

/// Register offsets (§4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// The status bits a driver may set (§2.1); DEVICE_NEEDS_RESET is the device's.
const DRIVER_STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

/// How many chains one QueueNotify may process, in queue sizes. A driver on another vCPU
/// that keeps refilling the queue cannot hold this exit longer; what is left waits for the
/// next notification.
const CHAINS_PER_NOTIFY_IN_SIZES: usize = 2;

/// How many driver errors a device logs (each one also sets DEVICE_NEEDS_RESET).
const LOGGED_ERRORS: u64 = 8;

/// A virtio-mmio transport in front of device `D`, reaching the VM's RAM through `M`.
pub struct VirtioMmio<M: GuestMemory, D: VirtioDevice> {
    mem: M,
    dev: D,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The features accepted at FEATURES_OK (0 before).
    features: u64,
    queue_sel: u32,
    queues: Vec<SplitQueue>,
    interrupt_status: u32,
    config_generation: u32,
    /// The first error since the last reset, until taken.
    diagnostic: Option<VirtioError>,
    errors: u64,
    /// Chain segments, reused from chain to chain.
    segs: Vec<Segment>,
    /// Names the device in log lines ("vm0 virtio-blk@0xa000000").
    label: String,
}

impl<M: GuestMemory, D: VirtioDevice> VirtioMmio<M, D> {
    pub fn new(mem: M, dev: D) -> Self {
        let queues = (0..dev.num_queues())
            .map(|q| SplitQueue::new(dev.queue_max_size(q)))
            .collect();
        Self {
            mem,
            dev,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            features: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            config_generation: 0,
            diagnostic: None,
            errors: 0,
            segs: Vec::new(),
            label: String::from("virtio-mmio"),
        }
    }

    /// Names the device in the warnings it logs.
    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    /// The guest memory accessor (tests build rings through it).
    pub fn memory(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device behind the transport, mutable.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The device status register as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features offered: the device type's and the transport's.
    pub fn offered_features(&self) -> u64 {
        (self.dev.device_features() & feature::DEVICE_MASK) | feature::TRANSPORT
    }

    /// The features negotiated at FEATURES_OK (0 before, or after a reset).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether the device is in DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.status & status::DEVICE_NEEDS_RESET != 0
    }

    /// The first error since the diagnostic was last taken (for the kernel's log).
    pub fn take_diagnostic(&mut self) -> Option<VirtioError> {
        self.diagnostic.take()
    }

    /// How many driver errors the device has seen in all.
    pub fn error_count(&self) -> u64 {
        self.errors
    }

    /// Queue `q`'s state (tests).
    pub fn queue(&self, q: u16) -> Option<&SplitQueue> {
        self.queues.get(usize::from(q))
    }

    /// The device changed its configuration space: a new ConfigGeneration and a
    /// configuration change notification once the driver is up (§2.5, §4.2.3.4).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise(interrupt::CONFIG_CHANGE);
        }
    }

    /// The driver broke a rule: DEVICE_NEEDS_RESET, and a configuration change
    /// notification if DRIVER_OK is set (§2.1.2). Further notifications are ignored until
    /// the driver resets the device.
    fn fail(&mut self, e: VirtioError) {
        self.errors += 1;
        // A driver that fails, resets and fails again must not flood the console.
        if self.errors <= LOGGED_ERRORS {
            log::warn!("{}: device needs reset: {}", self.label, e);
            if self.errors == LOGGED_ERRORS {
                log::warn!("{}: further driver errors are not logged", self.label);
            }
        }
        if self.diagnostic.is_none() {
            self.diagnostic = Some(e);
        }
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.status |= status::DEVICE_NEEDS_RESET;
            if self.status & status::DRIVER_OK != 0 {
                self.raise(interrupt::CONFIG_CHANGE);
            }
        }
    }

    /// Sets InterruptStatus bits, in the device if it keeps them ([`VirtioDevice::owns_interrupts`]).
    fn raise(&mut self, bits: u32) {
        if self.dev.owns_interrupts() {
            self.dev.raise_interrupt(bits);
        } else {
            self.interrupt_status |= bits;
        }
    }

    /// An error the device found outside this VM's exits becomes DEVICE_NEEDS_RESET now.
    fn poll_device_error(&mut self) {
        if let Some(e) = self.dev.take_error() {
            self.fail(e);
        }
    }

    /// Device reset (§2.4, §4.2.2.1: Status 0, InterruptStatus 0, every QueueReady 0).
    fn device_reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.dev.set_features(0);
        self.dev.reset();
    }

    fn selected_queue(&mut self) -> Option<&mut SplitQueue> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.device_reset();
            return;
        }
        let old = self.status & DRIVER_STATUS_BITS;
        let mut new = value & DRIVER_STATUS_BITS;
        if old & !new != 0 {
            self.fail(VirtioError::StatusCleared { old, new });
            return;
        }
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // §2.2.2 / §3.1.1: accept only a subset of what was offered, with VERSION_1
            // (this transport has no legacy interface); otherwise FEATURES_OK stays clear
            // and the driver, reading it back, gives up.
            let offered = self.offered_features();
            if self.driver_features & !offered == 0
                && self.driver_features & feature::VERSION_1 != 0
            {
                self.features = self.driver_features;
                self.dev.set_features(self.features);
            } else {
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && new & status::FEATURES_OK == 0 {
            self.status = (self.status & status::DEVICE_NEEDS_RESET) | new;
            self.fail(VirtioError::DriverOkWithoutFeaturesOk);
            return;
        }
        self.status = (self.status & status::DEVICE_NEEDS_RESET) | new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            self.dev.driver_ok();
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let index = self.queue_sel as u16;
        let Some(i) = usize::try_from(self.queue_sel)
            .ok()
            .filter(|&i| i < self.queues.len())
        else {
            return;
        };
        if value & 1 == 0 {
            // Linux writes 0 when it tears a queue down and reads it back.
            self.queues[i].ready = false;
            self.dev.queue_ready(index, None);
            return;
        }
        if self.queues[i].ready {
            return;
        }
        match self.queues[i].enable(index, &self.mem) {
            Ok(()) => self.dev.queue_ready(index, Some(&self.queues[i])),
            Err(e) => self.fail(e),
        }
    }

    /// QueueNotify: processes queue `value` now (§4.2.3.3).
    fn notify(&mut self, value: u32) {
        if self.needs_reset() {
            return;
        }
        if self.status & status::DRIVER_OK == 0 {
            self.fail(VirtioError::NotifyBeforeDriverOk { queue: value });
            return;
        }
        let Some(i) = usize::try_from(value)
            .ok()
            .filter(|&i| i < self.queues.len())
        else {
            self.fail(VirtioError::NotifyNoQueue { queue: value });
            return;
        };
        // §4.2.2.1: the device must not touch a queue that is not ready.
        if !self.queues[i].ready || self.dev.takes_notify(i as u16) {
            return;
        }
        if let Err(e) = self.process(i) {
            self.fail(e);
        }
    }

    fn process(&mut self, i: usize) -> Result<(), VirtioError> {
        let index = i as u16;
        let event_idx = self.features & feature::EVENT_IDX != 0;
        let features = self.features;
        let Self {
            mem,
            dev,
            queues,
            segs,
            ..
        } = self;
        let q = &mut queues[i];
        let old_used = q.counters().1;
        let budget = usize::from(q.size) * CHAINS_PER_NOTIFY_IN_SIZES;
        let mut done = 0;
        let result = loop {
            if done == budget {
                break Ok(());
            }
            let head = match q.next_head(index, &*mem) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    if !event_idx {
                        break Ok(());
                    }
                    // §2.7.10: ask for a notification at the next entry, then look once
                    // more, in case the driver added one before it could see the request.
                    if let Err(e) = q.publish_avail_event(index, &mut *mem) {
                        break Err(e);
                    }
                    match q.next_head(index, &*mem) {
                        Ok(Some(h)) => h,
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
                Err(e) => break Err(e),
            };
            if let Err(e) = q.walk(index, head, features, &*mem, segs) {
                q.skip();
                break Err(e);
            }
            let mut req = Request::new(&mut *mem, segs);
            let written = match dev.handle(index, &mut req) {
                Ok(n) => n,
                Err(reason) => {
                    break Err(VirtioError::Request {
                        queue: index,
                        head,
                        reason,
                    });
                }
            };
            if let Err(e) = q.push_used(index, head, written, &mut *mem) {
                break Err(e);
            }
            done += 1;
        };
        // Completed chains are announced even if a later one was refused.
        match q.wants_interrupt(index, old_used, event_idx, &*mem) {
            Ok(true) => self.raise(interrupt::USED_BUFFER),
            Ok(false) => {}
            Err(e) => return Err(e),
        }
        result
    }

    fn read_control(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.dev.device_id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt_status | self.dev.interrupt_status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            // §4.2.2: QueueNum, the queue addresses and the feature selectors are
            // write-only; reserved offsets read as zero.
            _ => 0,
        }
    }

    fn write_control(&mut self, offset: u64, value: u32) {
        // Queue registers may change only while the queue is not ready (§4.2.2.2); writes
        // that break that rule are ignored, so a ready queue keeps what was validated.
        let set_queue = |q: &mut SplitQueue, f: &dyn Fn(&mut SplitQueue)| {
            if !q.ready {
                f(q);
            }
        };
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            // After FEATURES_OK the set is fixed (§2.2.1).
            reg::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => self.driver_features = low(self.driver_features),
                    1 => self.driver_features = high(self.driver_features),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    set_queue(q, &|q| q.size = value.min(u32::from(u16::MAX)) as u16);
                }
            }
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => {
                self.interrupt_status &= !value;
                if self.dev.owns_interrupts() {
                    self.dev.ack_interrupt(value);
                }
            }
            reg::STATUS => self.write_status(value),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue() {
                    set_queue(q, &|q| match offset {
                        reg::QUEUE_DESC_LOW => q.desc = low(q.desc),
                        reg::QUEUE_DESC_HIGH => q.desc = high(q.desc),
                        reg::QUEUE_DRIVER_LOW => q.driver = low(q.driver),
                        reg::QUEUE_DRIVER_HIGH => q.driver = high(q.driver),
                        reg::QUEUE_DEVICE_LOW => q.device = low(q.device),
                        _ => q.device = high(q.device),
                    });
                }
            }
            _ => {}
        }
    }
}

/// Whether `width` at `offset` is an access the configuration space takes.
fn config_access_ok(offset: u64, width: AccessWidth) -> bool {
    width != AccessWidth::Double && offset.is_multiple_of(width.bytes())
}

impl<M: GuestMemory + Send, D: VirtioDevice> MmioDevice for VirtioMmio<M, D> {
    fn name(&self) -> &'static str {
        "virtio-mmio"
    }

    fn size_bytes(&self) -> u64 {
        SLOT_SIZE
    }

    fn read(&mut self, _vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        self.poll_device_error();
        if offset >= reg::CONFIG {
            if !config_access_ok(offset, width) || offset >= SLOT_SIZE {
                return Err(MmioError::BadAccess);
            }
            let at = (offset - reg::CONFIG) as usize;
            let mut b = [0u8; 4];
            let n = width.bytes() as usize;
            // Bytes beyond the device's configuration space read as zero.
            for (k, byte) in b.iter_mut().take(n).enumerate() {
                *byte = self.dev.config().get(at + k).copied().unwrap_or(0);
            }
            return Ok(u64::from(u32::from_le_bytes(b)));
        }
        if width != AccessWidth::Word || !offset.is_multiple_of(4) {
            return Err(MmioError::BadAccess);
        }
        Ok(u64::from(self.read_control(offset)))
    }

    fn write(
        &mut self,
        _vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        self.poll_device_error();
        if offset >= reg::CONFIG {
            if !config_access_ok(offset, width) || offset >= SLOT_SIZE {
                return Err(MmioError::BadAccess);
            }
            let n = width.bytes() as usize;
            let bytes = (value as u32).to_le_bytes();
            if self.dev.config_write(offset - reg::CONFIG, &bytes[..n]) {
                self.config_changed();
            }
            return Ok(());
        }
        if width != AccessWidth::Word || !offset.is_multiple_of(4) {
            return Err(MmioError::BadAccess);
        }
        self.write_control(offset, value as u32);
        Ok(())
    }

    fn reset(&mut self) {
        self.device_reset();
        self.diagnostic = None;
    }

    fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }
}
