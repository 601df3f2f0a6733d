//! MPIDR_EL1 affinity values (ARM ARM D23.2.x, "MPIDR_EL1"): the one definition of which bits
//! name a CPU, shared by the host DT parser, the guest DT generator, PSCI's target checks and
//! the CPU's own identification. Pure: also built on the host.

/// Aff3 [39:32], Aff2 [23:16], Aff1 [15:8], Aff0 [7:0]; every other bit of MPIDR_EL1 (U, MT,
/// RES1 bit 31) describes the CPU rather than naming it.
pub const AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Whether `value` sets only affinity bits (a DT `reg` of a CPU node, a PSCI target).
pub const fn is_affinity(value: u64) -> bool {
    value & !AFFINITY_MASK == 0
}

/// The affinity bits of an MPIDR_EL1 value.
pub const fn affinity(mpidr: u64) -> u64 {
    mpidr & AFFINITY_MASK
}

/// The affinity bits at `level` and above (0 = all of them, 3 = Aff3 only), as PSCI
/// AFFINITY_INFO compares them; `None` above level 3.
pub const fn level_mask(level: u64) -> Option<u64> {
    match level {
        0 => Some(AFFINITY_MASK),
        1 => Some(AFFINITY_MASK & !0xff),
        2 => Some(AFFINITY_MASK & !0xffff),
        3 => Some(AFFINITY_MASK & !0xff_ffff),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_bits() {
        // RES1 bit 31, U (30) and MT (24) are not affinity.
        assert_eq!(affinity(0x8100_0102), 0x0102);
        assert_eq!(affinity(0xff_ffff_ffff), 0xff_00ff_ffff);
        assert!(is_affinity(0x12_0003_0201));
        assert!(!is_affinity(1 << 31) && !is_affinity(1 << 24) && !is_affinity(1 << 40));
        assert_eq!(level_mask(1), Some(0xff_00ff_ff00));
        assert_eq!(level_mask(3), Some(0xff_0000_0000));
        assert_eq!(level_mask(4), None);
    }
}
