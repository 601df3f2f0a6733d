//! SMCCC and PSCI from the guest side (Arm DEN0028 SMCCC v1.4, DEN0022 PSCI v1.1).
//!
//! The conduits themselves are in [`crate::arch::conduit`] and re-exported here. PSCI helpers
//! use the conduit the device tree's `/psci` node names (HVC under elvisor and under QEMU
//! without EL2/EL3).

use core::sync::atomic::{AtomicU8, Ordering};

pub use crate::arch::conduit::{hvc_call, smc_call, try_hvc_call, try_smc_call};

/// SMCCC function ids the guests use.
pub mod fid {
    /// SMCCC_VERSION (SMCCC 7.2): returns the version as major << 16 | minor.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// PSCI_VERSION.
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES (x1 = function id).
    pub const PSCI_FEATURES: u32 = 0x8400_000a;
    /// Vendor-specific hypervisor service: call count.
    pub const VENDOR_HYP_CALL_COUNT: u32 = 0x8600_ff00;
    /// Vendor-specific hypervisor service: UID (128 bits in w0..w3).
    pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_ff01;
    /// Vendor-specific hypervisor service: revision (major in w0, minor in w1).
    pub const VENDOR_HYP_REVISION: u32 = 0x8600_ff03;
}

/// SMCCC/PSCI return value NOT_SUPPORTED (-1), as it comes back in x0.
pub const NOT_SUPPORTED: i64 = -1;

/// SMCCC/PSCI version 1.1 as returned by the VERSION calls.
pub const VERSION_1_1: u64 = 0x1_0001;

/// Which instruction carries an SMCCC call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Conduit {
    /// `hvc #0`.
    Hvc = 0,
    /// `smc #0`.
    Smc = 1,
}

static CONDUIT: AtomicU8 = AtomicU8::new(Conduit::Hvc as u8);

/// Sets the conduit PSCI helpers use.
pub fn set_conduit(conduit: Conduit) {
    CONDUIT.store(conduit as u8, Ordering::SeqCst);
}

/// The conduit PSCI helpers use.
pub fn conduit() -> Conduit {
    if CONDUIT.load(Ordering::SeqCst) == Conduit::Smc as u8 {
        Conduit::Smc
    } else {
        Conduit::Hvc
    }
}

/// An SMCCC call through the configured conduit.
pub fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    match conduit() {
        Conduit::Hvc => hvc_call(fid, a1, a2, a3),
        Conduit::Smc => smc_call(fid, a1, a2, a3),
    }
}

/// PSCI calls through the configured conduit.
pub mod psci {
    use super::{call, fid};

    /// PSCI_VERSION: major << 16 | minor.
    pub fn version() -> u64 {
        call(fid::PSCI_VERSION, 0, 0, 0)[0]
    }

    /// PSCI_FEATURES(`function`): 0 (or feature flags) if implemented, NOT_SUPPORTED if not.
    pub fn features(function: u32) -> i64 {
        call(fid::PSCI_FEATURES, function.into(), 0, 0)[0] as i64
    }

    /// SYSTEM_OFF. Does not return; if the call does, the CPU sleeps forever.
    pub fn system_off() -> ! {
        call(fid::SYSTEM_OFF, 0, 0, 0);
        crate::arch::halt()
    }

    /// SYSTEM_RESET. Returns only if the reset did not happen, with the call's x0.
    pub fn system_reset() -> i64 {
        call(fid::SYSTEM_RESET, 0, 0, 0)[0] as i64
    }
}
