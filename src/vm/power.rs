//! PSCI power state of each vCPU, shared between physical CPUs.
//!
//! Any vCPU may ask to start another (CPU_ON) from any physical CPU; the target's own physical
//! CPU then starts it. The state is a small lock-free machine, so that when several vCPUs race
//! to start the same target exactly one gets SUCCESS and the others ALREADY_ON.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use super::psci::ret;

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
    pub fn cpu_on(&self, entry: u64, context: u64) -> Result<(), i64> {
        self.state
            .compare_exchange(OFF, ON, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| ret::ALREADY_ON)?;
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

    /// PSCI AFFINITY_INFO value: 0 ON, 1 OFF.
    pub fn affinity_info(&self) -> i64 {
        if self.is_on() { 0 } else { 1 }
    }
}

/// Validates a CPU_ON request against the VM: the target must be one of its vCPUs (by MPIDR
/// affinity) and the entry point inside its RAM. Returns the target's index.
pub fn check_cpu_on(
    target_mpidr: u64,
    entry: u64,
    mpidrs: &[u64],
    ram: core::ops::Range<u64>,
) -> Result<usize, i64> {
    let aff = target_mpidr & 0xff_00ff_ffff;
    let index = mpidrs
        .iter()
        .position(|&m| m == aff)
        .ok_or(ret::INVALID_PARAMETERS)?;
    if !ram.contains(&entry) {
        return Err(ret::INVALID_ADDRESS);
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
        assert_eq!(p.cpu_on(0x4008_0000, 8), Err(ret::ALREADY_ON));
        assert_eq!(p.affinity_info(), 0);
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
                            assert_eq!(e, ret::ALREADY_ON);
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
    fn cpu_on_validation() {
        let mpidrs = [0, 1, 2, 3];
        let ram = 0x4000_0000..0x4400_0000;
        assert_eq!(check_cpu_on(2, 0x4008_0000, &mpidrs, ram.clone()), Ok(2));
        // Upper MPIDR bits (U, MT, RES1 bit 31) are not affinity.
        assert_eq!(
            check_cpu_on(0x8000_0003, 0x4008_0000, &mpidrs, ram.clone()),
            Ok(3)
        );
        assert_eq!(
            check_cpu_on(7, 0x4008_0000, &mpidrs, ram.clone()),
            Err(ret::INVALID_PARAMETERS)
        );
        assert_eq!(
            check_cpu_on(1, 0x1000, &mpidrs, ram.clone()),
            Err(ret::INVALID_ADDRESS)
        );
        assert_eq!(
            check_cpu_on(1, 0x4400_0000, &mpidrs, ram),
            Err(ret::INVALID_ADDRESS)
        );
    }
}
