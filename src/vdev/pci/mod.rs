//! An emulated PCI host bridge: a `pci-host-ecam-generic` ECAM window for bus 0 and, right
//! after it, the BAR0 register windows of its functions, as one device on a VM's MMIO bus.
//! Device k (function 0) is the ivshmem-like function of the VM's k-th shared-memory mapping
//! (`ivshmem`); every other device and function reads all ones and ignores writes, which is
//! how an OS sees an empty slot.
//!
//! ECAM (PCIe 5.0 §7.2.2): offset = bus << 20 | device << 15 | function << 12 | register.
//! Configuration accesses are 8, 16 or 32 bits, naturally aligned; anything else (64-bit,
//! misaligned) gets an external abort. BAR0 accesses go to the function (see `ivshmem`).
//! Nothing here touches hardware or panics on guest input.
#![forbid(unsafe_code)]

pub mod config;
pub mod ivshmem;

#[cfg(test)]
mod tests;

use alloc::vec::Vec;

use super::{AccessWidth, MmioDevice, MmioError, VcpuId};
pub use ivshmem::Ivshmem;

/// ECAM for bus 0 only: 32 devices x 8 functions x 4 KiB.
pub const ECAM_SIZE: u64 = 1 << 20;
/// A function's BAR0 window.
pub const BAR0_SIZE: u64 = 0x1000;
/// Most devices on the bus (one per shared-memory mapping).
pub const MAX_DEVICES: usize = 8;
/// The host's window: ECAM, then [`MAX_DEVICES`] BAR0 windows.
pub const WINDOW_SIZE: u64 = ECAM_SIZE + BAR0_SIZE * MAX_DEVICES as u64;

/// The host bridge and its bus 0.
pub struct PciHost {
    /// Device k's function 0, if present.
    devices: Vec<Option<Ivshmem>>,
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            devices: (0..MAX_DEVICES).map(|_| None).collect(),
        }
    }

    /// Puts `function` in slot `device` (< [`MAX_DEVICES`]). False if the slot is out of
    /// range or taken.
    pub fn insert(&mut self, device: usize, function: Ivshmem) -> bool {
        match self.devices.get_mut(device) {
            Some(slot @ None) => {
                *slot = Some(function);
                true
            }
            _ => false,
        }
    }

    /// Whether any device is present.
    pub fn is_empty(&self) -> bool {
        self.devices.iter().all(Option::is_none)
    }

    /// The function an ECAM offset addresses (bus 0, function 0 of a present device), with
    /// the register offset.
    fn function(&mut self, offset: u64) -> (Option<&mut Ivshmem>, u16) {
        let device = (offset >> 15) & 0x1f;
        let function = (offset >> 12) & 0x7;
        let reg = (offset & 0xfff) as u16;
        let f = if function == 0 {
            self.devices
                .get_mut(device as usize)
                .and_then(Option::as_mut)
        } else {
            None
        };
        (f, reg)
    }

    /// Whether a configuration access of `width` at `offset` is one ECAM allows.
    fn config_access_ok(offset: u64, width: AccessWidth) -> bool {
        width != AccessWidth::Double && offset.is_multiple_of(width.bytes())
    }
}

impl MmioDevice for PciHost {
    fn name(&self) -> &'static str {
        "pci-ecam"
    }

    fn size_bytes(&self) -> u64 {
        WINDOW_SIZE
    }

    fn read(&mut self, _vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        if offset >= ECAM_SIZE {
            let rel = offset - ECAM_SIZE;
            return match self.devices.get_mut((rel / BAR0_SIZE) as usize) {
                Some(Some(f)) => f.bar0_read(rel % BAR0_SIZE, width),
                _ if width == AccessWidth::Word && rel.is_multiple_of(4) => Ok(u64::from(u32::MAX)),
                _ => Err(MmioError::BadAccess),
            };
        }
        if !Self::config_access_ok(offset, width) {
            return Err(MmioError::BadAccess);
        }
        let (f, reg) = self.function(offset);
        let dword = match f {
            Some(f) => f.config_read(reg & !3),
            None => u32::MAX,
        };
        let shift = 8 * u64::from(reg & 3);
        Ok((u64::from(dword) >> shift) & width.mask())
    }

    fn write(
        &mut self,
        _vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        if offset >= ECAM_SIZE {
            let rel = offset - ECAM_SIZE;
            return match self.devices.get_mut((rel / BAR0_SIZE) as usize) {
                Some(Some(f)) => f.bar0_write(rel % BAR0_SIZE, width, value),
                _ if width == AccessWidth::Word && rel.is_multiple_of(4) => Ok(()),
                _ => Err(MmioError::BadAccess),
            };
        }
        if !Self::config_access_ok(offset, width) {
            return Err(MmioError::BadAccess);
        }
        let (f, reg) = self.function(offset);
        if let Some(f) = f {
            let shift = 8 * u32::from(reg & 3);
            let byte_mask = (width.mask() as u32) << shift;
            f.config_write(reg & !3, (value as u32) << shift, byte_mask);
        }
        Ok(())
    }

    fn reset(&mut self) {
        for f in self.devices.iter_mut().flatten() {
            f.reset();
        }
    }
}
