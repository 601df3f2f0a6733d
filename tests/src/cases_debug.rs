//! System cases of guest self-hosted debug (guests/debug, boards/qemu-virt/vms/debug.dtsi): two
//! vCPUs of one VM share physical CPU 0 with different debug settings and check, across many
//! switches, that their own hardware breakpoints, watchpoints and software steps fire at EL1
//! and EL0 and the other's never do; BRK, the OS lock, masking of a hostile breakpoint control
//! value and UNDEFINED breakpoint numbers beyond the ID registers' counts. GICv3 with VHE,
//! GICv3 with the non-VHE path forced, and GICv2 on a Cortex-A72 (ARMv8.0 debug). Listed in
//! [`crate::cases::all`].

use crate::cases::Case;
use crate::matrix::{Entry, FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_NVHE, V3_VHE};

/// vCPU 0's checks in order, then vCPU 1's verdict (its own lines interleave anywhere) and the
/// result.
const DEBUG_LINES: &[&str] = &[
    "DEBUG: ID_AA64DFR0_EL1=",
    "DEBUG PASS: cpu0 nonuser-isolation",
    "DEBUG PASS: cpu0 switches-nonuser",
    "DEBUG PASS: cpu0 mdscr",
    "DEBUG PASS: cpu0 bp-el1",
    "DEBUG PASS: cpu0 bp-el0",
    "DEBUG PASS: cpu0 wp-el1",
    "DEBUG PASS: cpu0 wp-el0",
    "DEBUG PASS: cpu0 switches-points",
    "DEBUG PASS: cpu0 step-el1",
    "DEBUG PASS: cpu0 step-el0",
    "DEBUG PASS: cpu0 step-emulated",
    "DEBUG PASS: cpu0 switches-step",
    "DEBUG PASS: cpu0 brk",
    "DEBUG PASS: cpu0 oslock",
    "DEBUG PASS: cpu0 switches-oslock",
    "DEBUG PASS: cpu0 undef",
    "DEBUG PASS: cpu1 all",
    "DEBUG RESULT: passed=",
    "failed=0",
    "all VMs stopped; powering off",
];

/// vCPU 1's lines interleave with vCPU 0's in any order: `cpu1 all` carries its verdict, and
/// any FAIL line of either fails the run.
const REJECT: &[&str] = &["DEBUG FAIL", "unexpected exit"];

pub const CASES: &[Entry] = &[Entry::Matrix(Scenario {
    name: "debug{cfg}",
    naming: Naming::GicVheOnV3,
    on: &[
        (
            V3_VHE,
            "guest self-hosted debug, -cpu max, VHE: breakpoints, watchpoints, single step (EL1, EL0), BRK, OS lock; two vCPUs on one CPU never see each other's",
        ),
        (
            V3_NVHE,
            "the debug guest on -cpu max with the non-VHE path forced (elvisor.vhe=off)",
        ),
        (
            V2_NVHE,
            "the debug guest on a Cortex-A72 (ARMv8.0 debug, 6 breakpoints, 4 watchpoints), vGICv2",
        ),
    ],
    case: Case {
        vms: &["debug"],
        timeout_s: 120,
        expect: DEBUG_LINES,
        reject: REJECT,
        ..FROM_CONFIG
    },
    tweak: None,
})];
