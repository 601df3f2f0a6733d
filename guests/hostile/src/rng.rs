//! The hostile guest's pseudo-random numbers: SplitMix64 (Steele, Lea, Flood 2014), seeded from
//! `hostile.seed`, one independent stream per vCPU; the same seed gives the same operations.

/// A SplitMix64 generator.
#[derive(Debug, Clone, Copy)]
pub struct Rng(pub u64);

impl Rng {
    /// The stream of vCPU `cpu` for `seed` (vCPU 0's stream is the seed's own).
    pub fn for_cpu(seed: u64, cpu: usize) -> Self {
        let mut rng = Rng(seed ^ (cpu as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        rng.next();
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A register value: mostly uniform, sometimes one that code tends to special-case.
    pub fn value(&mut self) -> u64 {
        match self.below(8) {
            0 => self.pick(&[0, 1, u64::MAX, 0xffff_ffff, 0x8000_0000, 1 << 63, 0x7f]),
            1 => self.next() & 0xffff_ffff,
            2 => 1 << self.below(64),
            _ => self.next(),
        }
    }

    /// `n` distinct register numbers from 0..=30.
    pub fn distinct_regs<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            let r = self.below(31) as u8;
            if !out[..i].contains(&r) {
                out[i] = r;
                i += 1;
            }
        }
        out
    }
}
