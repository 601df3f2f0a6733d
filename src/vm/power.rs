//! PSCI power state of each vCPU, shared between physical CPUs.
//!
//! Any vCPU may ask to start another (CPU_ON) from any physical CPU; the target's own physical
//! CPU then starts it. The state is a small lock-free machine, so that when several vCPUs race
//! to start the same target exactly one gets SUCCESS and the others ALREADY_ON.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use super::psci::{Error, ret};
use crate::arch::aarch64::mpidr;
use smccc::psci::AffinityState;

const OFF: u8 = 0;
const ON: u8 = 1;

/// One vCPU's power state and pending start request.
#[derive(Debug, Default)]
pub struct VcpuPower {
    state: AtomicU8,
    entry: AtomicU64,
    context: AtomicU64,
    start_pending: AtomicBool,
}

impl VcpuPower {
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(OFF),
            entry: AtomicU64::new(0),
            context: AtomicU64::new(0),
            start_pending: AtomicBool::new(false),
        }
    }

    pub fn is_on(&self) -> bool {
        self.state.load(Ordering::Acquire) == ON
    }

    /// PSCI CPU_ON for this vCPU: OFF -> ON with a start request, or ALREADY_ON.
    pub fn cpu_on(&self, entry: u64, context: u64) -> Result<(), Error> {
        self.state
            .compare_exchange(OFF, ON, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| Error::AlreadyOn)?;
        self.entry.store(entry, Ordering::Relaxed);
        self.context.store(context, Ordering::Relaxed);
        // Publishes entry and context to the CPU that takes the request.
        self.start_pending.store(true, Ordering::Release);
        Ok(())
    }

    /// The start request, if one is pending: (entry, context). Taken once.
    pub fn take_start(&self) -> Option<(u64, u64)> {
        self.start_pending.swap(false, Ordering::Acquire).then(|| {
            (
                self.entry.load(Ordering::Relaxed),
                self.context.load(Ordering::Relaxed),
            )
        })
    }

    /// True when a start request waits (without taking it).
    pub fn start_pending(&self) -> bool {
        self.start_pending.load(Ordering::Acquire)
    }

    /// CPU_OFF, VM stop or reset: the vCPU is off, any start request dropped.
    pub fn off(&self) {
        self.start_pending.store(false, Ordering::Release);
        self.state.store(OFF, Ordering::Release);
    }

    /// PSCI AFFINITY_INFO value for this vCPU: ON (0), OFF (1), or ON_PENDING (2) between a
    /// CPU_ON and the vCPU's first instruction (DEN0022D §5.1.5).
    pub fn affinity_info(&self) -> i64 {
        if !self.is_on() {
            AFF_OFF
        } else if self.start_pending() {
            AFF_ON_PENDING
        } else {
            AFF_ON
        }
    }
}

/// AFFINITY_INFO results (DEN0022D §5.1.5, Table 18).
pub const AFF_ON: i64 = AffinityState::On as i64;
pub const AFF_OFF: i64 = AffinityState::Off as i64;
pub const AFF_ON_PENDING: i64 = AffinityState::OnPending as i64;

/// Whether a PSCI `target_cpu` / `target_affinity` argument sets only affinity bits: every
/// other bit is RES0 in DEN0022D §5.1.4 and §5.1.5, and a call that sets one gets
/// INVALID_PARAMETERS rather than a silently masked target.
pub fn valid_affinity(target: u64) -> bool {
    mpidr::is_affinity(target)
}

/// PSCI AFFINITY_INFO(target_affinity, lowest_affinity_level) over a VM's vCPUs.
///
/// Affinity fields below `level` are ignored (DEN0022D §5.1.5): the answer is about the whole
/// affinity instance, ON if any vCPU in it is on (ON_PENDING if none is on yet but one is
/// starting), OFF if all are off. Levels above 3, reserved bits in the target, and an instance
/// that holds none of the VM's vCPUs are INVALID_PARAMETERS.
pub fn affinity_info(
    target: u64,
    level: u64,
    mpidrs: &[u64],
    state_of: impl Fn(usize) -> i64,
) -> i64 {
    if !valid_affinity(target) {
        return ret::INVALID_PARAMETERS;
    }
    let Some(mask) = mpidr::level_mask(level) else {
        return ret::INVALID_PARAMETERS;
    };
    let mut matched = false;
    let mut pending = false;
    for (i, &m) in mpidrs.iter().enumerate() {
        if m & mask != target & mask {
            continue;
        }
        matched = true;
        match state_of(i) {
            AFF_ON => return AFF_ON,
            AFF_ON_PENDING => pending = true,
            _ => {}
        }
    }
    match (matched, pending) {
        (false, _) => ret::INVALID_PARAMETERS,
        (true, true) => AFF_ON_PENDING,
        (true, false) => AFF_OFF,
    }
}

/// Validates a CPU_ON request against the VM: the target must be one of its vCPUs (by MPIDR
/// affinity) and the entry point inside its RAM. Returns the target's index.
pub fn check_cpu_on(
    target_mpidr: u64,
    entry: u64,
    mpidrs: &[u64],
    ram: core::ops::Range<u64>,
) -> Result<usize, Error> {
    if !valid_affinity(target_mpidr) {
        return Err(Error::InvalidParameters);
    }
    let index = mpidrs
        .iter()
        .position(|&m| m == target_mpidr)
        .ok_or(Error::InvalidParameters)?;
    if !ram.contains(&entry) {
        return Err(Error::InvalidAddress);
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn on_off_and_requests() {
        let p = VcpuPower::new();
        assert_eq!(p.affinity_info(), 1);
        assert_eq!(p.take_start(), None);
        assert_eq!(p.cpu_on(0x4008_0000, 7), Ok(()));
        assert_eq!(p.cpu_on(0x4008_0000, 8), Err(Error::AlreadyOn));
        assert_eq!(p.affinity_info(), AFF_ON_PENDING);
        assert!(p.start_pending());
        assert_eq!(p.take_start(), Some((0x4008_0000, 7)));
        assert_eq!(p.take_start(), None);
        p.off();
        assert_eq!(p.affinity_info(), 1);
        assert_eq!(p.cpu_on(0x4010_0000, 9), Ok(()));
    }

    #[test]
    fn racing_cpu_on_has_one_winner() {
        for _ in 0..200 {
            let p = Arc::new(VcpuPower::new());
            let wins = Arc::new(AtomicUsize::new(0));
            let already = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let (p, wins, already) = (p.clone(), wins.clone(), already.clone());
                    std::thread::spawn(move || match p.cpu_on(0x4000_0000 + t, t) {
                        Ok(()) => wins.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            assert_eq!(e, Error::AlreadyOn);
                            already.fetch_add(1, Ordering::SeqCst)
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1);
            assert_eq!(already.load(Ordering::SeqCst), 3);
            // The winner's entry and context are what the target starts with.
            let (entry, ctx) = p.take_start().unwrap();
            assert_eq!(entry - 0x4000_0000, ctx);
        }
    }

    #[test]
    fn affinity_info_levels() {
        // Two clusters of two: Aff1 = cluster, Aff0 = core; one VM in cluster 0x1_00 of Aff2 1.
        let mpidrs = [0x0, 0x1, 0x100, 0x101, 0x1_0000];
        let on = [false, true, false, false, false];
        let state = |i: usize| if on[i] { AFF_ON } else { AFF_OFF };
        assert_eq!(affinity_info(0x1, 0, &mpidrs, state), AFF_ON);
        assert_eq!(affinity_info(0x0, 0, &mpidrs, state), AFF_OFF);
        // Level 1: Aff0 ignored; cluster 0 has an ON core, cluster 1 none.
        assert_eq!(affinity_info(0x0, 1, &mpidrs, state), AFF_ON);
        assert_eq!(affinity_info(0xff, 1, &mpidrs, state), AFF_ON);
        assert_eq!(affinity_info(0x1ff, 1, &mpidrs, state), AFF_OFF);
        // Level 2 and 3: all of Aff2 0 / the whole machine.
        assert_eq!(affinity_info(0x0, 2, &mpidrs, state), AFF_ON);
        assert_eq!(affinity_info(0x1_0000, 2, &mpidrs, state), AFF_OFF);
        assert_eq!(affinity_info(0x1_0000, 3, &mpidrs, state), AFF_ON);
        // No vCPU in that instance, a level above 3, reserved bits: INVALID_PARAMETERS.
        assert_eq!(
            affinity_info(0x2, 0, &mpidrs, state),
            ret::INVALID_PARAMETERS
        );
        assert_eq!(
            affinity_info(0x200, 1, &mpidrs, state),
            ret::INVALID_PARAMETERS
        );
        assert_eq!(
            affinity_info(0x1, 4, &mpidrs, state),
            ret::INVALID_PARAMETERS
        );
        assert_eq!(
            affinity_info(0x1, u64::MAX, &mpidrs, state),
            ret::INVALID_PARAMETERS
        );
        assert_eq!(
            affinity_info(0x8000_0001, 0, &mpidrs, state),
            ret::INVALID_PARAMETERS
        );
        assert_eq!(
            affinity_info(1 << 40 | 1, 0, &mpidrs, state),
            ret::INVALID_PARAMETERS
        );
        // ON_PENDING: started but not yet running; ON wins within an instance.
        let pending = |i: usize| match i {
            2 => AFF_ON_PENDING,
            1 => AFF_ON,
            _ => AFF_OFF,
        };
        assert_eq!(affinity_info(0x100, 0, &mpidrs, pending), AFF_ON_PENDING);
        assert_eq!(affinity_info(0x100, 1, &mpidrs, pending), AFF_ON_PENDING);
        assert_eq!(affinity_info(0x0, 3, &mpidrs, pending), AFF_ON);
    }

    #[test]
    fn pending_start_reads_as_on_pending() {
        let p = VcpuPower::new();
        p.cpu_on(0x4008_0000, 0).unwrap();
        assert_eq!(p.affinity_info(), AFF_ON_PENDING);
        p.take_start();
        assert_eq!(p.affinity_info(), AFF_ON);
    }

    #[test]
    fn cpu_on_validation() {
        let mpidrs = [0, 1, 2, 3];
        let ram = 0x4000_0000..0x4400_0000;
        assert_eq!(check_cpu_on(2, 0x4008_0000, &mpidrs, ram.clone()), Ok(2));
        // Bits outside the affinity fields (U, MT, bit 31, [63:40]) are RES0 in target_cpu:
        // INVALID_PARAMETERS, not a masked target (DEN0022D §5.1.4).
        for bad in [
            0x8000_0003u64,
            0x4000_0003,
            0x100_0000_0003,
            1 << 63,
            0x0100_0003,
        ] {
            assert_eq!(
                check_cpu_on(bad, 0x4008_0000, &mpidrs, ram.clone()),
                Err(Error::InvalidParameters),
                "{bad:#x}"
            );
        }
        assert_eq!(
            check_cpu_on(7, 0x4008_0000, &mpidrs, ram.clone()),
            Err(Error::InvalidParameters)
        );
        assert_eq!(
            check_cpu_on(1, 0x1000, &mpidrs, ram.clone()),
            Err(Error::InvalidAddress)
        );
        assert_eq!(
            check_cpu_on(1, 0x4400_0000, &mpidrs, ram),
            Err(Error::InvalidAddress)
        );
    }
}
