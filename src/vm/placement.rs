//! Default vCPU placement: where a VM's vCPUs run when its node has no `elvisor,cpu-affinity`.
//!
//! Greedy and deterministic: each vCPU goes to the physical CPU with the fewest vCPUs placed
//! so far (counting every VM built before, pinned or not), preferring a CPU this VM does not
//! use yet, then the lowest index. Two 2-vCPU VMs on a 4-CPU host thus land on CPUs 0-1 and
//! 2-3 instead of both on 0-1 (what "vCPU i on CPU i mod #CPUs" gave), and an SMP VM spreads
//! its vCPUs before it doubles any up.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

/// Places `nvcpus` vCPUs given `load[c]`, the number of vCPUs already on physical CPU `c`,
/// and adds them to `load`. An empty `load` (no CPUs) places everything on CPU 0.
pub fn place(nvcpus: usize, load: &mut [usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(nvcpus);
    if load.is_empty() {
        out.resize(nvcpus, 0);
        return out;
    }
    for _ in 0..nvcpus {
        let best = (0..load.len())
            .min_by_key(|&c| (out.contains(&c), load[c], c))
            .unwrap_or(0);
        load[best] += 1;
        out.push(best);
    }
    out
}

/// Adds an explicit placement (an `elvisor,cpu-affinity` list) to `load`; entries beyond
/// `load`'s length are ignored here (the caller rejects them with a configuration error).
pub fn account(pcpus: &[usize], load: &mut [usize]) {
    for &c in pcpus {
        if let Some(l) = load.get_mut(c) {
            *l += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_smp_vms_spread_over_four_cpus() {
        let mut load = [0; 4];
        assert_eq!(place(2, &mut load), [0, 1]);
        assert_eq!(place(2, &mut load), [2, 3]);
        assert_eq!(load, [1, 1, 1, 1]);
        // A third one doubles up from the lowest index.
        assert_eq!(place(2, &mut load), [0, 1]);
    }

    #[test]
    fn more_vcpus_than_cpus_and_pinned_neighbours() {
        let mut load = [0; 2];
        // An 8-vCPU VM on 2 CPUs alternates, as the old default did.
        assert_eq!(place(8, &mut load), [0, 1, 0, 1, 0, 1, 0, 1]);
        let mut load = [0; 4];
        // A VM pinned to CPU 0 pushes the next default VM away from it.
        account(&[0, 0], &mut load);
        account(&[9], &mut load);
        assert_eq!(place(1, &mut load), [1]);
        assert_eq!(place(3, &mut load), [2, 3, 1]);
        assert_eq!(load, [2, 2, 1, 1]);
        assert_eq!(place(2, &mut []), [0, 0]);
    }
}
