//! Emulated devices: pure state machines driven by trapped guest MMIO accesses.
//!
//! Every model implements [`MmioDevice`]; [`MmioBus`] dispatches an access by guest physical
//! address to the device that owns it. Nothing here touches hardware, so it all runs in host
//! unit tests. Side effects (console output, interrupt lines) go through small traits.
#![forbid(unsafe_code)]

pub mod doorbell;
pub mod pci;
pub mod pl011;
pub mod pl061;
pub mod switch;
pub mod vgic;
pub mod virtio;

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::mm::GuestPhysAddr;
pub use crate::vm::VcpuId;

/// Width of a guest MMIO access, as decoded from the data-abort syndrome (ESR_EL2.ISS.SAS).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AccessWidth {
    Byte = 1,
    Half = 2,
    Word = 4,
    Double = 8,
}

impl AccessWidth {
    /// Size of the access in bytes.
    pub const fn bytes(self) -> u64 {
        self as u64
    }
    /// Mask covering the access's bits.
    pub const fn mask(self) -> u64 {
        match self {
            AccessWidth::Double => u64::MAX,
            w => (1u64 << (8 * w as u64)) - 1,
        }
    }
    /// From the SAS field (0 = byte ... 3 = doubleword).
    pub const fn from_sas(sas: u8) -> Self {
        match sas & 3 {
            0 => AccessWidth::Byte,
            1 => AccessWidth::Half,
            2 => AccessWidth::Word,
            _ => AccessWidth::Double,
        }
    }
}

/// Why an emulated access could not be completed. The caller turns this into an external abort
/// injected into the guest, never into a hypervisor panic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MmioError {
    /// The device does not accept accesses of this width (or alignment) at this offset.
    BadAccess,
}

/// A device model behind a range of guest physical addresses.
pub trait MmioDevice: Send {
    /// Short name for diagnostics ("pl011", "gicd", ...).
    fn name(&self) -> &'static str;
    /// Size of the device's register window in bytes.
    fn size_bytes(&self) -> u64;
    /// A guest read of `width` at `offset` bytes into the window by vCPU `vcpu` (banked
    /// registers depend on it). The value is zero-extended.
    fn read(&mut self, vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError>;
    /// A guest write of `value` (already masked to `width`) at `offset` by vCPU `vcpu`.
    fn write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError>;
    /// Returns the device to its reset state (VM reset).
    fn reset(&mut self) {}
    /// The level of the device's interrupt output (for devices wired to an SPI).
    fn irq_level(&self) -> bool {
        false
    }
    /// Console input for a device that is a VM's console; false if not taken (not a
    /// console, or its receive FIFO is full).
    fn console_input(&mut self, _byte: u8) -> bool {
        false
    }
    /// How many console input bytes the device can take now (0 if not a console).
    fn console_room(&self) -> usize {
        0
    }
    /// The VM gained or lost console input focus (a console shows its output as it comes).
    fn console_focus(&mut self, _on: bool) {}
    /// Drops console input not yet read (the VM stopped for good).
    fn console_clear_input(&mut self) {}
    /// The model itself, for the kernel to drive a device's other side (the PL061's input
    /// lines): see [`MmioBus::device_at`]. None for devices nothing drives from outside.
    fn as_any_mut(&mut self) -> Option<&mut dyn core::any::Any> {
        None
    }
}

/// A device on the bus. The emulated UART, read on every guest I/O-kernel operation, is
/// dispatched statically so its register reads inline into the exit fast path; every other
/// model goes through the trait object.
enum Device {
    Pl011(Box<pl011::Pl011>),
    Dyn(Box<dyn MmioDevice>),
}

impl Device {
    #[inline(always)]
    fn get(&mut self) -> &mut (dyn MmioDevice + 'static) {
        match self {
            Device::Pl011(d) => d.as_mut(),
            Device::Dyn(d) => d.as_mut(),
        }
    }

    #[inline(always)]
    fn get_ref(&self) -> &(dyn MmioDevice + 'static) {
        match self {
            Device::Pl011(d) => d.as_ref(),
            Device::Dyn(d) => d.as_ref(),
        }
    }

    #[inline(always)]
    fn read(&mut self, vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        match self {
            Device::Pl011(d) => d.read(vcpu, offset, width),
            Device::Dyn(d) => d.read(vcpu, offset, width),
        }
    }

    #[inline(always)]
    fn irq_level(&self) -> bool {
        match self {
            Device::Pl011(d) => d.irq_level(),
            Device::Dyn(d) => d.irq_level(),
        }
    }
}

/// One registered device window.
struct Region {
    base: GuestPhysAddr,
    size_bytes: u64,
    device: Device,
    /// The interrupt (INTID) the device's output is wired to, if any.
    irq: Option<u32>,
    /// The output level last reported by [`MmioBus::irq_changes`].
    last_level: bool,
}

/// Dispatches guest MMIO accesses by address. Regions never overlap (checked on insert).
#[derive(Default)]
pub struct MmioBus {
    regions: Vec<Region>,
}

/// Error from [`MmioBus::add`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OverlapError;

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` at `base`. Fails if the window overlaps one already registered or
    /// wraps the address space.
    pub fn add(
        &mut self,
        base: GuestPhysAddr,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), OverlapError> {
        self.add_with_irq(base, device, None)
    }

    /// Registers `device` at `base` with its interrupt output wired to `irq`.
    pub fn add_with_irq(
        &mut self,
        base: GuestPhysAddr,
        device: Box<dyn MmioDevice>,
        irq: Option<u32>,
    ) -> Result<(), OverlapError> {
        self.insert(base, Device::Dyn(device), irq)
    }

    /// Registers an emulated PL011 at `base`, its interrupt output wired to `irq` (statically
    /// dispatched: see [`MmioBus::read_at`]).
    pub fn add_pl011(
        &mut self,
        base: GuestPhysAddr,
        uart: Box<pl011::Pl011>,
        irq: Option<u32>,
    ) -> Result<(), OverlapError> {
        self.insert(base, Device::Pl011(uart), irq)
    }

    fn insert(
        &mut self,
        base: GuestPhysAddr,
        device: Device,
        irq: Option<u32>,
    ) -> Result<(), OverlapError> {
        let size_bytes = device.get_ref().size_bytes();
        let end = base.0.checked_add(size_bytes).ok_or(OverlapError)?;
        if self
            .regions
            .iter()
            .any(|r| base.0 < r.base.0 + r.size_bytes && r.base.0 < end)
        {
            return Err(OverlapError);
        }
        self.regions.push(Region {
            base,
            size_bytes,
            device,
            irq,
            last_level: false,
        });
        Ok(())
    }

    /// Finds the device covering `addr`, returning it with the offset into its window.
    pub fn find(&mut self, addr: GuestPhysAddr) -> Option<(&mut (dyn MmioDevice + 'static), u64)> {
        let (i, offset) = self.locate(addr)?;
        Some((self.regions.get_mut(i)?.device.get(), offset))
    }

    /// The index of the window covering `addr` (for [`MmioBus::read_at`] and
    /// [`MmioBus::irq_change_of`]) and the offset into it.
    #[inline]
    pub fn locate(&self, addr: GuestPhysAddr) -> Option<(usize, u64)> {
        self.regions.iter().enumerate().find_map(|(i, r)| {
            let offset = addr.0.wrapping_sub(r.base.0);
            (offset < r.size_bytes).then_some((i, offset))
        })
    }

    /// A read of window `index` (from [`MmioBus::locate`]) at `offset`, the PL011 without
    /// dynamic dispatch.
    #[inline(always)]
    pub fn read_at(
        &mut self,
        index: usize,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
    ) -> Result<u64, MmioError> {
        match self.regions.get_mut(index) {
            Some(r) => r.device.read(vcpu, offset, width),
            None => Err(MmioError::BadAccess),
        }
    }

    /// Whether a read of window `index` at `offset` can have changed the device's interrupt
    /// output (false only where the model knows the register has no read side effects).
    #[inline(always)]
    pub fn read_changes_irq(&self, index: usize, offset: u64) -> bool {
        match self.regions.get(index) {
            Some(Region {
                device: Device::Pl011(_),
                ..
            }) => pl011::Pl011::read_changes_irq(offset),
            Some(r) => r.irq.is_some(),
            None => false,
        }
    }

    /// [`MmioBus::irq_changes`] for the one device of window `index`: after an access to it,
    /// only its output can have changed.
    #[inline(always)]
    pub fn irq_change_of(&mut self, index: usize, f: impl FnOnce(u32, bool)) {
        if let Some(r) = self.regions.get_mut(index)
            && let Some(intid) = r.irq
        {
            let level = r.device.irq_level();
            if level != r.last_level {
                r.last_level = level;
                f(intid, level);
            }
        }
    }

    /// Calls `f(intid, level)` for every wired device output whose level changed since the
    /// last call (so the vGIC hears about edges only, not every access).
    pub fn irq_changes(&mut self, mut f: impl FnMut(u32, bool)) {
        for r in &mut self.regions {
            if let Some(intid) = r.irq {
                let level = r.device.irq_level();
                if level != r.last_level {
                    r.last_level = level;
                    f(intid, level);
                }
            }
        }
    }

    /// The device model of type `T` whose window covers `addr`, if that is what is there.
    pub fn device_at<T: 'static>(&mut self, addr: GuestPhysAddr) -> Option<&mut T> {
        let (dev, _) = self.find(addr)?;
        dev.as_any_mut()?.downcast_mut::<T>()
    }

    /// Room for console input in the VM's console device.
    pub fn console_room(&self) -> usize {
        self.regions
            .iter()
            .map(|r| r.device.get_ref().console_room())
            .max()
            .unwrap_or(0)
    }

    /// Gives a console input byte to the first device that takes it.
    pub fn console_input(&mut self, byte: u8) -> bool {
        self.regions
            .iter_mut()
            .any(|r| r.device.get().console_input(byte))
    }

    /// Tells the VM's console devices that the VM gained or lost console input focus.
    pub fn console_focus(&mut self, on: bool) {
        for r in &mut self.regions {
            r.device.get().console_focus(on);
        }
    }

    /// Drops the console input the VM's console devices hold (the VM stopped for good).
    pub fn console_clear_input(&mut self) {
        for r in &mut self.regions {
            r.device.get().console_clear_input();
        }
    }

    /// Resets every device (VM reset). The caller resets the vGIC too, so every line starts
    /// low on both sides: a device that raises its output again before anything samples it
    /// is then still reported as a rising edge.
    pub fn reset_all(&mut self) {
        for r in &mut self.regions {
            r.device.get().reset();
            r.last_level = false;
        }
    }

    /// Iterates over `(base, size, name)` of every window, e.g. for the guest device tree.
    pub fn windows(&self) -> impl Iterator<Item = (GuestPhysAddr, u64, &'static str)> + '_ {
        self.regions
            .iter()
            .map(|r| (r.base, r.size_bytes, r.device.get_ref().name()))
    }
}
