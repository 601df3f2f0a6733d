//! The per-physical-CPU run queue: which of the vCPUs placed on this CPU runs next.
//!
//! vCPUs are pinned to physical CPUs by configuration; when several share one, they are
//! time-sliced round-robin. Pure logic, host-tested; the kernel drives it from exits,
//! interrupts and kicks.

use alloc::vec::Vec;

/// A vCPU's scheduling state on its physical CPU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RunState {
    /// Powered off (not started, CPU_OFF, or its VM stopped).
    Off,
    /// Wants the CPU.
    Runnable,
    /// In WFI (or PSCI standby) with nothing to deliver.
    Blocked,
}

/// Round-robin run queue over the vCPUs placed on one physical CPU.
#[derive(Clone, Debug, Default)]
pub struct RunQueue {
    states: Vec<RunState>,
    /// The slot that ran last (or runs now).
    current: Option<usize>,
}

impl RunQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a vCPU (initially off); returns its slot.
    pub fn add(&mut self) -> usize {
        self.states.push(RunState::Off);
        self.states.len() - 1
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn state(&self, slot: usize) -> Option<RunState> {
        self.states.get(slot).copied()
    }

    pub fn set(&mut self, slot: usize, state: RunState) {
        if let Some(s) = self.states.get_mut(slot) {
            *s = state;
        }
    }

    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// Picks the next runnable slot after the current one (round-robin), falling back to the
    /// current one if it is the only runnable slot. `None`: nothing to run (idle).
    pub fn pick(&mut self) -> Option<usize> {
        let n = self.states.len();
        let start = self.current.map_or(0, |c| c + 1);
        let next = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.states[i] == RunState::Runnable);
        if next.is_some() {
            self.current = next;
        }
        next
    }

    /// True when a slot other than `slot` is runnable (time slicing is needed).
    pub fn others_runnable(&self, slot: usize) -> bool {
        self.states
            .iter()
            .enumerate()
            .any(|(i, s)| i != slot && *s == RunState::Runnable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_and_idle() {
        let mut q = RunQueue::new();
        let a = q.add();
        let b = q.add();
        let c = q.add();
        assert_eq!(q.pick(), None, "all off: idle");
        q.set(a, RunState::Runnable);
        q.set(c, RunState::Runnable);
        assert_eq!(q.pick(), Some(a));
        assert_eq!(q.pick(), Some(c));
        assert_eq!(q.pick(), Some(a));
        q.set(b, RunState::Runnable);
        assert_eq!(q.pick(), Some(b));
        assert_eq!(q.pick(), Some(c));
        assert!(q.others_runnable(c));
        q.set(a, RunState::Blocked);
        q.set(b, RunState::Off);
        assert!(!q.others_runnable(c));
        assert_eq!(q.pick(), Some(c), "only runnable slot keeps the CPU");
        q.set(c, RunState::Blocked);
        assert_eq!(q.pick(), None);
        assert_eq!(q.current(), Some(c));
        assert_eq!(q.state(9), None);
        q.set(9, RunState::Runnable); // out of range: ignored
    }
}
