//! Claiming physical device registers.
//!
//! A driver gets a `&'static` register block only for an address the host device tree names
//! as a device (the kernel registers those regions at boot) and only once, so two drivers
//! never share a register block behind each other's back.

use spin::Mutex;

use crate::mm::{PhysAddr, PhysRange};

/// Why a register block cannot be claimed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClaimError {
    /// The address is not inside a registered device region.
    NotADevice,
    /// Already claimed by another driver.
    Busy,
    /// Misaligned for the register block.
    Misaligned,
}

/// A claimed register block. Register cells (tock-registers) only do volatile accesses, so
/// sharing the block between CPUs is as safe as the device protocol the driver follows;
/// drivers serialise where the device needs it (the console lock, for the UART).
pub struct DeviceRegs<T: 'static>(&'static T);

// SAFETY: see the type's documentation: every access is a volatile MMIO access, and the
// block is claimed once, by the one driver that owns it.
unsafe impl<T> Sync for DeviceRegs<T> {}
// SAFETY: as above.
unsafe impl<T> Send for DeviceRegs<T> {}

impl<T> core::ops::Deref for DeviceRegs<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0
    }
}

const MAX_REGIONS: usize = 32;

struct Registry {
    devices: [Option<PhysRange>; MAX_REGIONS],
    claimed: [Option<PhysRange>; MAX_REGIONS],
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    devices: [None; MAX_REGIONS],
    claimed: [None; MAX_REGIONS],
});

/// Records `range` as device memory described by the host device tree. Returns false when
/// the table is full.
pub fn register_device(range: PhysRange) -> bool {
    let mut r = REGISTRY.lock();
    match r.devices.iter_mut().find(|d| d.is_none()) {
        Some(slot) => {
            *slot = Some(range);
            true
        }
        None => false,
    }
}

/// Claims the register block `T` at `base` for the lifetime of the kernel.
pub fn claim<T>(base: PhysAddr) -> Result<DeviceRegs<T>, ClaimError> {
    let size = core::mem::size_of::<T>() as u64;
    let want = PhysRange::new(base, size);
    if !base.is_aligned(core::mem::align_of::<T>() as u64) {
        return Err(ClaimError::Misaligned);
    }
    let mut r = REGISTRY.lock();
    let inside = r
        .devices
        .iter()
        .flatten()
        .any(|d| d.contains(base) && want.end().0 <= d.end().0);
    if !inside {
        return Err(ClaimError::NotADevice);
    }
    if r.claimed.iter().flatten().any(|c| c.overlaps(&want)) {
        return Err(ClaimError::Busy);
    }
    let slot = r
        .claimed
        .iter_mut()
        .find(|c| c.is_none())
        .ok_or(ClaimError::Busy)?;
    *slot = Some(want);
    // SAFETY: `base..base+size` lies inside a region the host device tree describes as a
    // device, which the EL2 map maps as Device memory (or the MMU is off, when all accesses
    // are Device-nGnRnE). It is claimed exactly once, so this is the only reference to it.
    // Register blocks are made of tock-registers cells, which only do volatile accesses.
    Ok(DeviceRegs(unsafe { &*(base.0 as *const T) }))
}

/// Claims the boot console's register block before the device tree is fully parsed (the
/// address comes from the DTB's /chosen stdout-path). Succeeds once.
pub fn claim_boot_console<T>(base: PhysAddr) -> Option<DeviceRegs<T>> {
    use core::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::AcqRel) || !base.is_aligned(core::mem::align_of::<T>() as u64) {
        return None;
    }
    let mut r = REGISTRY.lock();
    if let Some(slot) = r.claimed.iter_mut().find(|c| c.is_none()) {
        *slot = Some(PhysRange::new(base, core::mem::size_of::<T>() as u64));
    }
    // SAFETY: the firmware's device tree names this address as the console UART; it is
    // claimed once (TAKEN), and the kernel maps it as Device memory (or runs with the MMU
    // off, where every access is Device-nGnRnE). Register cells only do volatile accesses.
    Some(DeviceRegs(unsafe { &*(base.0 as *const T) }))
}
