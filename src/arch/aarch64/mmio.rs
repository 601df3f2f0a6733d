//! Register blocks of physical devices the kernel drives through tock-registers structs.
//!
//! Today that is the console PL011, claimed once from the address the firmware's device tree
//! names (/chosen stdout-path). The GIC's blocks are owned by its driver (arch/aarch64/gic.rs).

use core::sync::atomic::{AtomicBool, Ordering};

use crate::mm::PhysAddr;

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

/// Whether an ARM PrimeCell answers at `base`: its component ID registers (CIDR0..3, the low
/// byte of the words at 0xff0..0xffc of the 4 KiB frame) read 0x0d 0xf0 0x05 0xb1, as every
/// PL011 has them (ARM DDI 0183G §3.3.14, PrimeCellCellID). False when nothing decodes the
/// address (an abort, caught) or something else is there (RAM, another device).
pub fn primecell_answers(base: PhysAddr) -> bool {
    const CID: [u8; 4] = [0x0d, 0xf0, 0x05, 0xb1];
    CID.iter().enumerate().all(|(i, want)| {
        let Some(at) = base.0.checked_add(0xff0 + 4 * i as u64) else {
            return false;
        };
        // SAFETY: PrimeCell ID registers are read-only and side-effect free; on RAM or at an
        // address nothing decodes, a read changes nothing (the abort is caught).
        unsafe { super::vectors::probe_read32(at) }.is_some_and(|v| v & 0xff == u32::from(*want))
    })
}

/// Claims the boot console's register block (the address comes from the DTB's /chosen
/// stdout-path, read before anything else so every later failure can be reported).
/// Succeeds once.
pub fn claim_boot_console<T>(base: PhysAddr) -> Option<DeviceRegs<T>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if !base.is_aligned(core::mem::align_of::<T>() as u64) || TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the firmware's device tree names this address as the console UART; it is
    // claimed once (TAKEN), and the kernel maps it as Device memory (or runs with the MMU
    // off, where every access is Device-nGnRnE). Register cells only do volatile accesses.
    Some(DeviceRegs(unsafe { &*(base.0 as *const T) }))
}
