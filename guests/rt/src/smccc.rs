//! SMCCC and PSCI from the guest side (Arm DEN0028 SMCCC v1.4, DEN0022 PSCI v1.1).
//!
//! The conduits themselves are in [`crate::arch::conduit`] and re-exported here. PSCI helpers
//! use the conduit the device tree's `/psci` node names (HVC under elvisor and under QEMU
//! without EL2/EL3).

use core::sync::atomic::{AtomicU8, Ordering};

pub use crate::arch::conduit::{hvc_call, smc_call, try_hvc_call, try_smc_call};

/// SMCCC function ids the guests use: the `smccc` crate's and elvisor's vendor service's
/// (`elvisor_abi`, shared with the hypervisor), under the names the guests call them by.
pub mod fid {
    /// Vendor-specific hypervisor service: call count.
    pub use elvisor_abi::hypercall::CALL_COUNT_FID as VENDOR_HYP_CALL_COUNT;
    /// Vendor-specific hypervisor service: revision (major in w0, minor in w1).
    pub use elvisor_abi::hypercall::REVISION_FID as VENDOR_HYP_REVISION;
    /// Vendor-specific hypervisor service: UID (128 bits in w0..w3).
    pub use elvisor_abi::hypercall::UID_FID as VENDOR_HYP_CALL_UID;
    /// elvisor's yield: give the rest of the time slice to the next runnable vCPU.
    pub use elvisor_abi::hypercall::YIELD as ELVISOR_YIELD;
    /// SMCCC_VERSION (SMCCC 7.2): returns the version as major << 16 | minor.
    pub use smccc::arch::SMCCC_VERSION;
    /// AFFINITY_INFO (SMC64): x1 target affinity, x2 lowest affinity level.
    pub use smccc::psci::PSCI_AFFINITY_INFO_64 as AFFINITY_INFO;
    /// CPU_OFF: powers down the calling CPU; does not return on success.
    pub use smccc::psci::PSCI_CPU_OFF as CPU_OFF;
    /// CPU_ON (SMC64): x1 target MPIDR, x2 entry point address, x3 context id.
    pub use smccc::psci::PSCI_CPU_ON_64 as CPU_ON;
    /// PSCI_FEATURES (x1 = function id).
    pub use smccc::psci::PSCI_FEATURES;
    /// MIGRATE_INFO_TYPE: 2 = no Trusted OS that needs migrating.
    pub use smccc::psci::PSCI_MIGRATE_INFO_TYPE as MIGRATE_INFO_TYPE;
    /// SYSTEM_OFF.
    pub use smccc::psci::PSCI_SYSTEM_OFF as SYSTEM_OFF;
    /// SYSTEM_RESET.
    pub use smccc::psci::PSCI_SYSTEM_RESET as SYSTEM_RESET;
    /// PSCI_VERSION.
    pub use smccc::psci::PSCI_VERSION;
}

/// SMCCC/PSCI return value NOT_SUPPORTED (-1), as it comes back in x0.
pub const NOT_SUPPORTED: i64 = psci_ret::NOT_SUPPORTED;

/// PSCI return codes (DEN0022 5.2.2), as they come back in x0: the `smccc` crate's values.
pub mod psci_ret {
    use smccc::psci::error as e;

    /// SUCCESS.
    pub const SUCCESS: i64 = e::SUCCESS as i64;
    /// NOT_SUPPORTED.
    pub const NOT_SUPPORTED: i64 = e::NOT_SUPPORTED as i64;
    /// INVALID_PARAMETERS: for CPU_ON / AFFINITY_INFO, no CPU with that MPIDR.
    pub const INVALID_PARAMETERS: i64 = e::INVALID_PARAMETERS as i64;
    /// DENIED.
    pub const DENIED: i64 = e::DENIED as i64;
    /// ALREADY_ON: CPU_ON of a CPU that is on.
    pub const ALREADY_ON: i64 = e::ALREADY_ON as i64;
    /// ON_PENDING: CPU_ON of a CPU whose earlier CPU_ON has not completed.
    pub const ON_PENDING: i64 = e::ON_PENDING as i64;
    /// INTERNAL_FAILURE.
    pub const INTERNAL_FAILURE: i64 = e::INTERNAL_FAILURE as i64;
    /// NOT_PRESENT.
    pub const NOT_PRESENT: i64 = e::NOT_PRESENT as i64;
    /// DISABLED.
    pub const DISABLED: i64 = e::DISABLED as i64;
    /// INVALID_ADDRESS: CPU_ON with an entry point the caller may not use.
    pub const INVALID_ADDRESS: i64 = e::INVALID_ADDRESS as i64;

    /// The name of a PSCI return code, for messages.
    pub fn name(code: i64) -> &'static str {
        match code {
            SUCCESS => "SUCCESS",
            NOT_SUPPORTED => "NOT_SUPPORTED",
            INVALID_PARAMETERS => "INVALID_PARAMETERS",
            DENIED => "DENIED",
            ALREADY_ON => "ALREADY_ON",
            ON_PENDING => "ON_PENDING",
            INTERNAL_FAILURE => "INTERNAL_FAILURE",
            NOT_PRESENT => "NOT_PRESENT",
            DISABLED => "DISABLED",
            INVALID_ADDRESS => "INVALID_ADDRESS",
            _ => "?",
        }
    }
}

/// AFFINITY_INFO results (DEN0022 5.7.2): the `smccc` crate's `AffinityState` values.
pub mod affinity {
    use smccc::psci::AffinityState;

    /// At least one CPU of the affinity instance is on.
    pub const ON: i64 = AffinityState::On as i64;
    /// Every CPU of the affinity instance is off.
    pub const OFF: i64 = AffinityState::Off as i64;
    /// A CPU_ON for it is pending.
    pub const ON_PENDING: i64 = AffinityState::OnPending as i64;
}

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

    /// CPU_ON: starts the CPU with MPIDR `target_mpidr` at `entry` (an IPA, MMU off, EL1h)
    /// with x0 = `context_id`. Returns the PSCI code (see [`super::psci_ret`]).
    ///
    /// Raw: `entry` is not checked. [`crate::smp::start_cpu`] starts a CPU in the runtime's
    /// secondary entry code with its own stack.
    pub fn cpu_on(target_mpidr: u64, entry: u64, context_id: u64) -> i64 {
        call(fid::CPU_ON, target_mpidr, entry, context_id)[0] as i64
    }

    /// CPU_OFF: powers this CPU down. Returns only on failure, with the PSCI code.
    pub fn cpu_off() -> i64 {
        call(fid::CPU_OFF, 0, 0, 0)[0] as i64
    }

    /// AFFINITY_INFO(`target_mpidr`, `lowest_level`): 0 ON, 1 OFF, 2 ON_PENDING, or a
    /// negative PSCI error (INVALID_PARAMETERS: no such CPU).
    pub fn affinity_info(target_mpidr: u64, lowest_level: u64) -> i64 {
        call(fid::AFFINITY_INFO, target_mpidr, lowest_level, 0)[0] as i64
    }

    /// MIGRATE_INFO_TYPE: 2 when there is no Trusted OS to migrate (what a hypervisor says).
    pub fn migrate_info_type() -> i64 {
        call(fid::MIGRATE_INFO_TYPE, 0, 0, 0)[0] as i64
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
