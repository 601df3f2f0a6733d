//! Fuzz target `psci`: the SMCCC/PSCI dispatcher and the power-state rules behind it.
//!
//! Properties: `psci::dispatch` never panics; the exit fast path (`psci::fast_call`) agrees
//! with it for every call it answers (same x0, nothing else written); `power::check_cpu_on`
//! accepts exactly a valid affinity that names one of the VM's vCPUs with an entry in its
//! RAM; `power::affinity_info` answers per DEN0022D §5.1.5 (checked against a direct
//! computation); and `VcpuPower`, driven through any sequence of CPU_ON / take / off,
//! behaves like its two-bit model.
#![no_main]

use arbitrary::Arbitrary;
use elvisor::vm::power::{self, AFF_OFF, AFF_ON, AFF_ON_PENDING, VcpuPower};
use elvisor::vm::psci::{self, Call, Error, Ret, ret};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum PowerOp {
    On { entry: u64, context: u64 },
    Take,
    Off,
}

#[derive(Arbitrary, Debug)]
struct Input {
    imm: u16,
    /// Which SMCCC function id family to aim at: the raw x0, or x0 with its low bits forced into
    /// the PSCI / SMCCC arch / vendor-hypervisor ranges so that the ids we implement are hit.
    family: u8,
    x: [u64; 4],
    mpidrs: Vec<u64>,
    ram: (u64, u64),
    level: u64,
    states: Vec<u8>,
    ops: Vec<PowerOp>,
}

fuzz_target!(|input: Input| {
    let mut x = input.x;
    x[0] = match input.family % 4 {
        0 => x[0],
        // PSCI (owner 4), SMC32 or SMC64.
        1 => (x[0] & 0xffff_ffff_4000_0000) | 0x8400_0000 | (x[0] & 0x1f),
        // SMCCC arch calls and workarounds (owner 0).
        2 => (x[0] & 0xffff_ffff_0000_0000) | 0x8000_0000 | (x[0] & 0xffff),
        // Vendor hypervisor service (owner 6).
        _ => (x[0] & 0xffff_ffff_4000_0000) | 0x8600_0000 | (x[0] & 0xff03),
    };
    let call = psci::dispatch(input.imm, x);
    if let Some(v) = psci::fast_call(input.imm, x[0], x[1]) {
        assert_eq!(
            call,
            Call::Return(Ret::x0(v as i64)),
            "fast path disagrees for imm {} x {x:#x?}",
            input.imm
        );
    }
    if input.imm != 0 {
        assert_eq!(call, Call::Return(Ret::x0(ret::NOT_SUPPORTED)));
    }

    // A VM's vCPUs: distinct MPIDRs (as the VM builder guarantees), at most 8.
    let mut mpidrs: Vec<u64> = Vec::new();
    for &m in input.mpidrs.iter().take(8) {
        let m = m & elvisor::arch::aarch64::mpidr::AFFINITY_MASK & 0x0300_0303; // small, colliding affinities
        if !mpidrs.contains(&m) {
            mpidrs.push(m);
        }
    }
    let ram = input.ram.0..input.ram.1;
    if let Call::CpuOn { target, entry, .. } = call {
        match power::check_cpu_on(target, entry, &mpidrs, ram.clone()) {
            Ok(i) => {
                assert!(
                    power::valid_affinity(target) && mpidrs[i] == target && ram.contains(&entry)
                )
            }
            Err(Error::InvalidParameters) => {
                assert!(!power::valid_affinity(target) || !mpidrs.contains(&target))
            }
            Err(Error::InvalidAddress) => {
                assert!(mpidrs.contains(&target) && !ram.contains(&entry))
            }
            Err(other) => panic!("CPU_ON returned {other:?}"),
        }
    }
    let state_of = |i: usize| match input.states.get(i).copied().unwrap_or(0) % 3 {
        0 => AFF_ON,
        1 => AFF_OFF,
        _ => AFF_ON_PENDING,
    };
    let target = if let Call::AffinityInfo { target, .. } = call {
        target
    } else {
        x[1]
    };
    let target = if input.family & 0x80 != 0 {
        target & 0x0300_0303
    } else {
        target
    };
    let got = power::affinity_info(target, input.level, &mpidrs, state_of);
    let expect = if !power::valid_affinity(target) || input.level > 3 {
        ret::INVALID_PARAMETERS
    } else {
        let ignore: u64 = [0, 0xff, 0xffff, 0xff_ffff][input.level as usize];
        let states: Vec<i64> = (0..mpidrs.len())
            .filter(|&i| mpidrs[i] & !ignore == target & !ignore)
            .map(state_of)
            .collect();
        if states.is_empty() {
            ret::INVALID_PARAMETERS
        } else if states.contains(&AFF_ON) {
            AFF_ON
        } else if states.contains(&AFF_ON_PENDING) {
            AFF_ON_PENDING
        } else {
            AFF_OFF
        }
    };
    assert_eq!(got, expect, "AFFINITY_INFO({target:#x}, {})", input.level);

    // VcpuPower against its model: (on, pending start).
    let p = VcpuPower::new();
    let (mut on, mut pending) = (false, None::<(u64, u64)>);
    for op in input.ops.iter().take(64) {
        match *op {
            PowerOp::On { entry, context } => {
                let r = p.cpu_on(entry, context);
                if on {
                    assert_eq!(r, Err(Error::AlreadyOn));
                } else {
                    assert_eq!(r, Ok(()));
                    (on, pending) = (true, Some((entry, context)));
                }
            }
            PowerOp::Take => assert_eq!(p.take_start(), pending.take()),
            PowerOp::Off => {
                p.off();
                (on, pending) = (false, None);
            }
        }
        assert_eq!(p.is_on(), on);
        assert_eq!(p.start_pending(), pending.is_some());
        let aff = match (on, pending.is_some()) {
            (false, _) => AFF_OFF,
            (true, true) => AFF_ON_PENDING,
            (true, false) => AFF_ON,
        };
        assert_eq!(p.affinity_info(), aff);
    }
});
