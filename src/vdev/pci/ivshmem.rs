//! An ivshmem-like PCI function: one VM's view of a shared-memory region and its doorbell
//! (`vdev::doorbell`) as a PCI device that Linux's stock `uio_pci_generic` binds, modelled on
//! the register interface of QEMU's ivshmem (docs/specs/ivshmem-spec.rst there).
//!
//! Vendor 0x1af4, device 0x1110, class 0x0500 (RAM memory controller). BAR0 is the register
//! window (4 KiB, 32-bit), BAR2 the region itself (64-bit, prefetchable), both at fixed guest
//! addresses; the region is mapped in stage 2 where BAR2 says, so accesses to it never trap.
//! INTx is INTA, wired by the host to the mapping's doorbell SPI.
//!
//! BAR0 registers, 32 bits wide (other widths and misaligned accesses get an external
//! abort; reserved offsets read as zero and ignore writes; with Memory Space Enable clear the
//! window reads all ones and ignores writes, as a PCI master abort does):
//!
//! ```text
//!   0x00 INTRMASK   RW  which INTRSTATUS bits raise INTx (reset 0: none)
//!   0x04 INTRSTATUS RO  bit i: member i rang this member; reading clears what it returns
//!   0x08 IVPOSITION RO  this member's index (its peer ID)
//!   0x0c DOORBELL   WO  bits 31:16 = peer ID to ring (>= PEERS: ignored); bits 15:0 ignored
//!   0x10 PEERS      RO  number of members (elvisor's addition)
//! ```
//!
//! The INTx line is high while INTRSTATUS & INTRMASK is nonzero and Command's Interrupt
//! Disable is clear; Status bit 3 (Interrupt Status) shows INTRSTATUS & INTRMASK whatever
//! Interrupt Disable says, which is what `uio_pci_generic`'s handler
//! (`pci_check_and_mask_intx`) reads before it sets Interrupt Disable; the line comes back
//! when user space clears Interrupt Disable again (through the sysfs `config` file:
//! uio_pci_generic has no `irqcontrol`, so a write to /dev/uioN does not do it).
#![forbid(unsafe_code)]

use alloc::sync::Arc;

use super::config::{Bar, Header, Ids};
use crate::vdev::doorbell::{DoorbellLines, SharedGroup};
use crate::vdev::{AccessWidth, MmioError};

/// QEMU's ivshmem identification (Red Hat / virtio vendor ID).
pub const VENDOR_ID: u16 = 0x1af4;
pub const DEVICE_ID: u16 = 0x1110;
/// Base class 05h (memory controller), subclass 00h (RAM).
pub const CLASS: u32 = 0x05_00_00;

/// BAR0 register offsets.
pub const REG_INTRMASK: u64 = 0x00;
pub const REG_INTRSTATUS: u64 = 0x04;
pub const REG_IVPOSITION: u64 = 0x08;
pub const REG_DOORBELL: u64 = 0x0c;
pub const REG_PEERS: u64 = 0x10;

/// One member's ivshmem function.
pub struct Ivshmem {
    header: Header,
    group: SharedGroup,
    lines: Arc<dyn DoorbellLines>,
    index: usize,
    intrmask: u32,
}

impl Ivshmem {
    /// Member `index` of `group`, its registers at `bar0` (4 KiB) and the region at
    /// `region_base` (`region_size` bytes, a power of two for a well-formed BAR; the host
    /// configuration makes it a multiple of 2 MiB, and a BAR reports the next power of two).
    pub fn new(
        group: SharedGroup,
        lines: Arc<dyn DoorbellLines>,
        index: usize,
        bar0: u32,
        region_base: u64,
        region_size: u64,
    ) -> Self {
        let ids = Ids {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            revision: 1,
            class: CLASS,
            subsystem_vendor: VENDOR_ID,
            subsystem: 0x1100,
        };
        let bars = [
            Bar::Mem32 {
                base: bar0,
                size: super::BAR0_SIZE as u32,
            },
            Bar::None,
            Bar::Mem64 {
                base: region_base,
                size: region_size.max(1).next_power_of_two(),
                prefetchable: true,
            },
            Bar::Mem64High,
            Bar::None,
            Bar::None,
        ];
        let me = Self {
            header: Header::new(ids, bars),
            group,
            lines,
            index,
            intrmask: 0,
        };
        me.update_line();
        me
    }

    /// Which STATUS bits drive the line now.
    fn enabled(&self) -> u32 {
        if self.header.intx_disabled() {
            0
        } else {
            self.intrmask
        }
    }

    /// Tells the group what drives this member's line and moves the line if that changed.
    fn update_line(&self) {
        let mut g = self.group.lock();
        let was = g.level(self.index);
        let now = g.set_enabled(self.index, self.enabled());
        if was != now {
            self.lines.set_line(self.index, now);
        }
    }

    /// Interrupt Status: INTRSTATUS & INTRMASK, Interrupt Disable aside.
    fn intx_pending(&self) -> bool {
        self.group.lock().status(self.index) & self.intrmask != 0
    }

    /// A configuration read of the dword at `reg`.
    pub fn config_read(&self, reg: u16) -> u32 {
        self.header.read_dword(reg, self.intx_pending())
    }

    /// A configuration write (see [`Header::write_dword`]).
    pub fn config_write(&mut self, reg: u16, value: u32, byte_mask: u32) {
        let before = self.header.write_dword(reg, value, byte_mask);
        if (before ^ self.header.command()) & super::config::CMD_INTX_DISABLE != 0 {
            self.update_line();
        }
    }

    /// A read of BAR0 at `offset`.
    pub fn bar0_read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        if width != AccessWidth::Word || !offset.is_multiple_of(4) {
            return Err(MmioError::BadAccess);
        }
        if !self.header.memory_enabled() {
            return Ok(u64::from(u32::MAX));
        }
        let value = match offset {
            REG_INTRMASK => self.intrmask,
            REG_INTRSTATUS => {
                let mut g = self.group.lock();
                let status = g.status(self.index);
                let was = g.level(self.index);
                let now = g.ack(self.index, status);
                if was && !now {
                    self.lines.set_line(self.index, false);
                }
                status
            }
            REG_IVPOSITION => self.index as u32,
            REG_PEERS => self.group.lock().peers() as u32,
            _ => 0,
        };
        Ok(u64::from(value))
    }

    /// A write of BAR0 at `offset`.
    pub fn bar0_write(
        &mut self,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        if width != AccessWidth::Word || !offset.is_multiple_of(4) {
            return Err(MmioError::BadAccess);
        }
        if !self.header.memory_enabled() {
            return Ok(());
        }
        match offset {
            REG_INTRMASK => {
                self.intrmask = value as u32;
                self.update_line();
            }
            REG_DOORBELL => {
                let to = (value as u32 >> 16) as usize;
                let mut g = self.group.lock();
                let was = g.level(to);
                if g.ring(self.index, to) && !was && g.level(to) {
                    self.lines.set_line(to, true);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// VM reset: registers to their reset values, what was pending for this member dropped,
    /// its line low (the vGIC is reset too).
    pub fn reset(&mut self) {
        self.header.reset();
        self.intrmask = 0;
        let mut g = self.group.lock();
        let all = g.status(self.index);
        g.ack(self.index, all);
        g.set_enabled(self.index, 0);
    }
}
