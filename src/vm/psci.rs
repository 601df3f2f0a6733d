//! SMCCC (DEN0028) and PSCI (DEN0022) as seen by guests: function-id decoding and the
//! answers that need no VM state. The exit path calls [`dispatch`] for every HVC, and for
//! every SMC trapped by HCR_EL2.TSC.
//!
//! Unknown function ids return NOT_SUPPORTED (-1) and the guest goes on, per SMCCC 1.1 §5.

pub use smccc::psci::Error;

/// SMCCC / PSCI return codes as the x0 values a guest sees (DEN0022 §5.2.2), taken from the
/// `smccc` crate's constants.
pub mod ret {
    use smccc::psci::error as e;

    pub const SUCCESS: i64 = e::SUCCESS as i64;
    pub const NOT_SUPPORTED: i64 = e::NOT_SUPPORTED as i64;
    pub const INVALID_PARAMETERS: i64 = e::INVALID_PARAMETERS as i64;
    pub const DENIED: i64 = e::DENIED as i64;
    pub const ALREADY_ON: i64 = e::ALREADY_ON as i64;
    pub const ON_PENDING: i64 = e::ON_PENDING as i64;
    pub const INTERNAL_FAILURE: i64 = e::INTERNAL_FAILURE as i64;
    pub const NOT_PRESENT: i64 = e::NOT_PRESENT as i64;
    pub const DISABLED: i64 = e::DISABLED as i64;
    pub const INVALID_ADDRESS: i64 = e::INVALID_ADDRESS as i64;
}

/// Function ids (SMC32 / SMC64 fast calls): the architecture and PSCI ids are the `smccc`
/// crate's, our vendor hypervisor service's come from `elvisor_abi` (shared with the guests).
pub mod fid {
    pub use smccc::arch::{
        SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_2,
        SMCCC_ARCH_WORKAROUND_3, SMCCC_VERSION,
    };
    pub use smccc::psci::{
        PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64,
        PSCI_CPU_SUSPEND_32, PSCI_CPU_SUSPEND_64, PSCI_FEATURES, PSCI_MIGRATE_INFO_TYPE,
        PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
    };

    /// elvisor vendor hypervisor call: give up the rest of the time slice to the next
    /// runnable vCPU on this physical CPU (returns 0).
    pub use elvisor_abi::hypercall::YIELD as ELVISOR_YIELD;
    /// Vendor-specific hypervisor service (owner 6): standard queries.
    pub use elvisor_abi::hypercall::{
        CALL_COUNT_FID as VENDOR_HYP_CALL_COUNT, REVISION_FID as VENDOR_HYP_REVISION,
        UID_FID as VENDOR_HYP_CALL_UID,
    };
}

/// SMCCC version we implement: 1.1.
pub const SMCCC_VERSION: u64 = 0x1_0001;
/// PSCI version we implement: 1.1.
pub const PSCI_VERSION: u64 = 0x1_0001;
/// MIGRATE_INFO_TYPE: "Trusted OS not present or does not require migration".
pub const MIGRATE_INFO_TYPE_NONE: u64 = smccc::psci::MigrateType::MigrationNotRequired as u64;

/// Revision of our vendor hypervisor interface (major.minor in w0/w1).
pub use elvisor_abi::hypercall::REVISION as ELVISOR_REVISION;
/// elvisor's vendor hypervisor UID, returned as four 32-bit words in w0..w3 per SMCCC §6.
pub use elvisor_abi::hypercall::UID as ELVISOR_UID;

/// What the VM layer must do with a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Call {
    /// Return these values in x0..x3 (x1..x3 only where given).
    Return(Ret),
    /// PSCI SYSTEM_OFF: stop this VM.
    SystemOff,
    /// PSCI SYSTEM_RESET: restart this VM from fresh images and RAM.
    SystemReset,
    /// PSCI CPU_ON(target MPIDR, entry, context id).
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    /// PSCI CPU_OFF for the calling vCPU.
    CpuOff,
    /// PSCI AFFINITY_INFO(target, lowest level).
    AffinityInfo { target: u64, level: u64 },
    /// PSCI CPU_SUSPEND: standby/powerdown; treated like WFI.
    CpuSuspend { entry: u64, context: u64 },
    /// elvisor yield: run another vCPU of this physical CPU, if one is runnable.
    Yield,
}

/// Values for x0..x3; `None` leaves the register as it was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ret(pub [Option<u64>; 4]);

impl Ret {
    pub const fn x0(v: i64) -> Self {
        Ret([Some(v as u64), None, None, None])
    }
}

/// Decodes an SMCCC call from x0..x3. `imm` is the HVC/SMC immediate: SMCCC calls use #0;
/// anything else is not an SMCCC call and gets NOT_SUPPORTED.
pub fn dispatch(imm: u16, x: [u64; 4]) -> Call {
    if imm != 0 {
        return Call::Return(Ret::x0(ret::NOT_SUPPORTED));
    }
    // Bit 31 = fast call. SMC32 ids ignore the upper 32 bits of x0 (SMCCC §2.6); for SMC64
    // ids the id is still the low 32 bits.
    let id = x[0] as u32;
    let is64 = id & (1 << 30) != 0;
    // SMC32 arguments are the low 32 bits of each register.
    let arg = |n: usize| if is64 { x[n] } else { x[n] & 0xffff_ffff };
    match id {
        fid::SMCCC_VERSION => Call::Return(Ret::x0(SMCCC_VERSION as i64)),
        fid::SMCCC_ARCH_FEATURES => Call::Return(Ret::x0(arch_features(arg(1) as u32))),
        fid::PSCI_VERSION => Call::Return(Ret::x0(PSCI_VERSION as i64)),
        fid::PSCI_FEATURES => Call::Return(Ret::x0(psci_features(arg(1) as u32))),
        fid::PSCI_MIGRATE_INFO_TYPE => Call::Return(Ret::x0(MIGRATE_INFO_TYPE_NONE as i64)),
        fid::PSCI_SYSTEM_OFF => Call::SystemOff,
        fid::PSCI_SYSTEM_RESET => Call::SystemReset,
        fid::PSCI_CPU_OFF => Call::CpuOff,
        fid::PSCI_CPU_ON_32 | fid::PSCI_CPU_ON_64 => Call::CpuOn {
            target: arg(1),
            entry: arg(2),
            context: arg(3),
        },
        fid::PSCI_AFFINITY_INFO_32 | fid::PSCI_AFFINITY_INFO_64 => Call::AffinityInfo {
            target: arg(1),
            level: arg(2),
        },
        fid::PSCI_CPU_SUSPEND_32 | fid::PSCI_CPU_SUSPEND_64 => Call::CpuSuspend {
            entry: arg(2),
            context: arg(3),
        },
        fid::VENDOR_HYP_CALL_UID => Call::Return(Ret([
            Some(ELVISOR_UID[0] as u64),
            Some(ELVISOR_UID[1] as u64),
            Some(ELVISOR_UID[2] as u64),
            Some(ELVISOR_UID[3] as u64),
        ])),
        fid::VENDOR_HYP_REVISION => Call::Return(Ret([
            Some(ELVISOR_REVISION.0 as u64),
            Some(ELVISOR_REVISION.1 as u64),
            None,
            None,
        ])),
        fid::VENDOR_HYP_CALL_COUNT => {
            Call::Return(Ret::x0(elvisor_abi::hypercall::CALL_COUNT as i64))
        }
        fid::ELVISOR_YIELD => Call::Yield,
        _ => Call::Return(Ret::x0(ret::NOT_SUPPORTED)),
    }
}

/// The calls answered on the exit fast path: a single return value in x0 and no VM state.
/// `None` means "take the full path" (power management, multi-register results, ...).
#[inline(always)]
pub fn fast_call(imm: u16, x0: u64, x1: u64) -> Option<u64> {
    if imm != 0 {
        return Some(ret::NOT_SUPPORTED as u64);
    }
    let id = x0 as u32;
    let is64 = id & (1 << 30) != 0;
    let arg = if is64 { x1 } else { x1 & 0xffff_ffff } as u32;
    Some(match id {
        fid::SMCCC_VERSION => SMCCC_VERSION,
        fid::PSCI_VERSION => PSCI_VERSION,
        fid::PSCI_FEATURES => psci_features(arg) as u64,
        fid::SMCCC_ARCH_FEATURES => arch_features(arg) as u64,
        fid::PSCI_MIGRATE_INFO_TYPE => MIGRATE_INFO_TYPE_NONE,
        // Everything with state or several results goes the full way.
        fid::PSCI_SYSTEM_OFF
        | fid::PSCI_SYSTEM_RESET
        | fid::PSCI_CPU_OFF
        | fid::PSCI_CPU_ON_32
        | fid::PSCI_CPU_ON_64
        | fid::PSCI_AFFINITY_INFO_32
        | fid::PSCI_AFFINITY_INFO_64
        | fid::PSCI_CPU_SUSPEND_32
        | fid::PSCI_CPU_SUSPEND_64
        | fid::VENDOR_HYP_CALL_UID
        | fid::VENDOR_HYP_REVISION
        | fid::VENDOR_HYP_CALL_COUNT
        | fid::ELVISOR_YIELD => return None,
        _ => ret::NOT_SUPPORTED as u64,
    })
}

/// PSCI_FEATURES: 0 for every function we implement, NOT_SUPPORTED otherwise. CPU_SUSPEND
/// reports the original (not extended) StateID format, no OS-initiated mode.
pub fn psci_features(id: u32) -> i64 {
    match id {
        fid::PSCI_VERSION
        | fid::PSCI_CPU_SUSPEND_32
        | fid::PSCI_CPU_SUSPEND_64
        | fid::PSCI_CPU_OFF
        | fid::PSCI_CPU_ON_32
        | fid::PSCI_CPU_ON_64
        | fid::PSCI_AFFINITY_INFO_32
        | fid::PSCI_AFFINITY_INFO_64
        | fid::PSCI_MIGRATE_INFO_TYPE
        | fid::PSCI_SYSTEM_OFF
        | fid::PSCI_SYSTEM_RESET
        | fid::PSCI_FEATURES
        | fid::SMCCC_VERSION => ret::SUCCESS,
        _ => ret::NOT_SUPPORTED,
    }
}

/// SMCCC_ARCH_FEATURES. The Spectre workarounds are firmware services we do not provide to
/// guests: NOT_SUPPORTED tells Linux not to call them.
pub fn arch_features(id: u32) -> i64 {
    match id {
        fid::SMCCC_VERSION | fid::SMCCC_ARCH_FEATURES => ret::SUCCESS,
        // Everything else, the ARCH_WORKAROUND_1/2/3 ids included.
        _ => ret::NOT_SUPPORTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x0(c: Call) -> i64 {
        match c {
            Call::Return(Ret([Some(v), ..])) => v as i64,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_and_features() {
        assert_eq!(x0(dispatch(0, [0x8000_0000, 0, 0, 0])), 0x10001);
        assert_eq!(x0(dispatch(0, [0x8400_0000, 0, 0, 0])), 0x10001);
        assert_eq!(x0(dispatch(0, [0x8400_000a, 0x8400_0008, 0, 0])), 0);
        assert_eq!(x0(dispatch(0, [0x8400_000a, 0x8400_00ff, 0, 0])), -1);
        assert_eq!(x0(dispatch(0, [0x8400_000a, 0x8000_0000, 0, 0])), 0);
        assert_eq!(x0(dispatch(0, [0x8000_0001, 0x8000_8000, 0, 0])), -1);
        assert_eq!(x0(dispatch(0, [0x8400_0006, 0, 0, 0])), 2);
    }

    #[test]
    fn smc32_ignores_upper_bits() {
        // Upper half of x0 is ignored for the function id; args truncated to 32 bits.
        assert_eq!(x0(dispatch(0, [0xffff_ffff_8400_0000, 0, 0, 0])), 0x10001);
        assert_eq!(
            dispatch(0, [0x8400_0003, 0xdead_0000_0000_0001, 0x1_4008_0000, 7]),
            Call::CpuOn {
                target: 1,
                entry: 0x4008_0000,
                context: 7
            }
        );
        assert_eq!(
            dispatch(0, [0xc400_0003, 0x1_0000_0001, 0x1_4008_0000, 7]),
            Call::CpuOn {
                target: 0x1_0000_0001,
                entry: 0x1_4008_0000,
                context: 7
            }
        );
    }

    #[test]
    fn power_and_unknown() {
        assert_eq!(dispatch(0, [0x8400_0008, 0, 0, 0]), Call::SystemOff);
        assert_eq!(dispatch(0, [0x8400_0009, 0, 0, 0]), Call::SystemReset);
        for id in [0x8200_1234u64, 0xc300_0000, 0, 0xffff_ffff, 0x8400_00ff] {
            assert_eq!(x0(dispatch(0, [id, 1, 2, 3])), -1, "{id:#x}");
        }
        // A non-zero immediate is not an SMCCC call.
        assert_eq!(x0(dispatch(1, [0x8400_0000, 0, 0, 0])), -1);
    }

    #[test]
    fn fast_path_agrees_with_dispatch() {
        for id in [
            0x8000_0000u64,
            0x8000_0001,
            0x8400_0000,
            0x8400_000a,
            0x8400_0006,
            0x8200_1234,
            0xc300_0000,
            0xffff_ffff_8400_0000,
            0x8400_00ff,
        ] {
            for arg in [0u64, 0x8400_0008, 0x8000_8000, 0xdead_8400_0000] {
                let fast = fast_call(0, id, arg).expect("fast");
                let Call::Return(Ret([Some(slow), ..])) = dispatch(0, [id, arg, 0, 0]) else {
                    panic!("{id:#x}")
                };
                assert_eq!(fast, slow, "{id:#x} {arg:#x}");
            }
        }
        for id in [
            0x8400_0008u64,
            0x8400_0009,
            0xc400_0003,
            0x8600_ff01,
            0x8600_0001,
        ] {
            assert_eq!(fast_call(0, id, 0), None, "{id:#x}");
        }
        assert_eq!(fast_call(5, 0x8400_0000, 0), Some(u64::MAX));
    }

    #[test]
    fn vendor_uid() {
        let Call::Return(Ret(r)) = dispatch(0, [0x8600_ff01, 0, 0, 0]) else {
            panic!()
        };
        assert_eq!(r[0], Some(ELVISOR_UID[0] as u64));
        assert!(r.iter().all(|v| v.is_some()));
    }
}
