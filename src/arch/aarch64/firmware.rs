//! PSCI client: calls into the firmware (EL3, or QEMU's built-in PSCI) through the conduit the
//! host device tree names.

use core::arch::asm;

use crate::platform::PsciConduit;

const SYSTEM_OFF: u64 = 0x8400_0008;

/// Makes an SMCCC call with up to three arguments; returns x0.
pub fn smccc_call(conduit: PsciConduit, fid: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let mut x0 = fid;
    match conduit {
        // SAFETY: SMCCC 1.1 calls clobber at most x0..x17; all are declared.
        PsciConduit::Smc => unsafe {
            asm!("smc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                 inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                 out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                 out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                 options(nostack))
        },
        // SAFETY: as above.
        PsciConduit::Hvc => unsafe {
            asm!("hvc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                 inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                 out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                 out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                 options(nostack))
        },
    }
    x0
}

/// PSCI SYSTEM_OFF. Returns only if the firmware refused (or there is no PSCI).
pub fn system_off(conduit: Option<PsciConduit>) {
    if let Some(c) = conduit {
        smccc_call(c, SYSTEM_OFF, 0, 0, 0);
    }
}
