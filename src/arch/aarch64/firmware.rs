//! PSCI client: the hypervisor's own calls into the firmware (EL3, or QEMU's built-in PSCI)
//! through the conduit the host device tree names.
//!
//! The calls are the `smccc` crate's: its PSCI wrappers carry the DEN0022 function ids and turn
//! the return value into its typed `psci::Error`, and its `smc64`/`hvc64` declare every register
//! SMCCC lets the callee change (x0..x17) without `nomem`, which is what our own asm did.

use smccc::psci::{self, Error};
use smccc::{Hvc, Smc};

use crate::platform::PsciConduit;

/// PSCI CPU_ON (SMC64): starts the physical CPU `target_mpidr` at `entry_pa` (MMU off) with
/// x0 = `context`.
pub fn cpu_on(
    conduit: PsciConduit,
    target_mpidr: u64,
    entry_pa: u64,
    context: u64,
) -> Result<(), Error> {
    match conduit {
        PsciConduit::Smc => psci::cpu_on::<Smc>(target_mpidr, entry_pa, context),
        PsciConduit::Hvc => psci::cpu_on::<Hvc>(target_mpidr, entry_pa, context),
    }
}

/// PSCI SYSTEM_OFF. Returns only if the firmware refused (or there is no PSCI).
pub fn system_off(conduit: Option<PsciConduit>) {
    // A refusal leaves nothing to do here: the caller says the machine is halted and parks.
    let _ = match conduit {
        Some(PsciConduit::Smc) => psci::system_off::<Smc>(),
        Some(PsciConduit::Hvc) => psci::system_off::<Hvc>(),
        None => Ok(()),
    };
}
