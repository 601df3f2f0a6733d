//! Entropy for guests: every VM boot gets its own `/chosen/rng-seed` and `kaslr-seed`.
//!
//! A guest on a CPU without RNDR (every Cortex-A72, so every Raspberry Pi 4 guest) has no
//! entropy source of its own at boot: without a seed in its device tree, Linux's CRNG never
//! initialises and everything that waits for it crawls (issue 11 measured pipelines 9x slower).
//! The hypervisor collects what the platform offers once, at boot: the host device tree's
//! `/chosen/rng-seed` (QEMU re-randomises it at every reset; U-Boot and other firmware fill it
//! from a hardware RNG), the CPU's RNDR where FEAT_RNG exists, and counter samples taken
//! around slow boot work (jitter; never counted as a source on its own). SHA-512 condenses
//! them into a 64-byte pool key; each guest seed is SHA-512 of that key, a domain label, the
//! VM, its boot number and a fresh counter value, so no two boots (and no two VMs) share a
//! seed and no guest learns another's or the pool's.

#![forbid(unsafe_code)]

use sha2::{Digest, Sha512};

/// Bytes of `/chosen/rng-seed` given to each guest (what Linux's EFI stub and U-Boot pass).
pub const GUEST_SEED_BYTES: usize = 64;

/// How much the collected entropy can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quality {
    /// A host seed of at least 32 non-zero bytes, or RNDR values.
    Strong,
    /// Counter jitter only: better than nothing, not a cryptographic source.
    JitterOnly,
}

/// The hypervisor's entropy pool: a 64-byte key derived once at boot.
pub struct EntropyPool {
    key: [u8; 64],
    quality: Quality,
}

impl EntropyPool {
    /// Condenses `host_seed` (the host DT's `/chosen/rng-seed`, ignored if all zero: a
    /// placeholder nobody filled), `rndr` (RNDR results) and `counter` (counter samples).
    pub fn new(host_seed: &[u8], rndr: &[u64], counter: &[u64]) -> Self {
        let host_ok = host_seed.len() >= 32 && host_seed.iter().any(|&b| b != 0);
        let quality = if host_ok || !rndr.is_empty() {
            Quality::Strong
        } else {
            Quality::JitterOnly
        };
        let mut h = Sha512::new();
        h.update(b"elvisor entropy pool v1");
        h.update((host_seed.len() as u64).to_le_bytes());
        h.update(host_seed);
        for v in rndr.iter().chain(counter) {
            h.update(v.to_le_bytes());
        }
        let mut key = [0u8; 64];
        key.copy_from_slice(&h.finalize());
        Self { key, quality }
    }

    pub fn quality(&self) -> Quality {
        self.quality
    }

    fn derive(&self, label: &[u8], vm: u16, boot: u32, fresh: u64) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(self.key);
        h.update(label);
        h.update(vm.to_le_bytes());
        h.update(boot.to_le_bytes());
        h.update(fresh.to_le_bytes());
        let mut out = [0u8; 64];
        out.copy_from_slice(&h.finalize());
        out
    }

    /// The `/chosen/rng-seed` for boot number `boot` (the reset count) of VM `vm`; `fresh` is
    /// a counter value read just before.
    pub fn guest_seed(&self, vm: u16, boot: u32, fresh: u64) -> [u8; GUEST_SEED_BYTES] {
        self.derive(b"rng-seed", vm, boot, fresh)
    }

    /// The `/chosen/kaslr-seed` for the same boot (independent of the rng-seed).
    pub fn kaslr_seed(&self, vm: u16, boot: u32, fresh: u64) -> u64 {
        let d = self.derive(b"kaslr-seed", vm, boot, fresh);
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_follows_the_sources() {
        assert_eq!(
            EntropyPool::new(&[7; 32], &[], &[1]).quality(),
            Quality::Strong
        );
        assert_eq!(EntropyPool::new(&[], &[42], &[]).quality(), Quality::Strong);
        // A placeholder of zeros, or too short a seed, is not a source.
        assert_eq!(
            EntropyPool::new(&[0; 64], &[], &[1, 2]).quality(),
            Quality::JitterOnly
        );
        assert_eq!(
            EntropyPool::new(&[9; 8], &[], &[1]).quality(),
            Quality::JitterOnly
        );
    }

    #[test]
    fn seeds_differ_per_vm_boot_and_pool() {
        let p = EntropyPool::new(&[5; 32], &[], &[100]);
        let a = p.guest_seed(0, 0, 1);
        assert_ne!(a, p.guest_seed(1, 0, 1), "another VM");
        assert_ne!(a, p.guest_seed(0, 1, 1), "a reset");
        assert_ne!(a, p.guest_seed(0, 0, 2), "another moment");
        assert_eq!(a, p.guest_seed(0, 0, 1), "a pure function of its inputs");
        let q = EntropyPool::new(&[6; 32], &[], &[100]);
        assert_ne!(a, q.guest_seed(0, 0, 1), "another pool");
        assert_ne!(
            &a[..8],
            &p.kaslr_seed(0, 0, 1).to_le_bytes(),
            "kaslr-seed independent"
        );
        assert!(a.iter().any(|&b| b != 0));
    }
}
