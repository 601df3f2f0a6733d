//! System cases of shared memory between VMs (guests/shmem, boards/qemu-virt/vms/shmem-a.dtsi
//! and shmem-b.dtsi): two VMs find the regions and doorbells in their device trees, A writes a
//! message and rings B, B takes the doorbell interrupt, replies and rings A; B's write to its
//! read-only mapping aborts without disturbing A. GICv3 with VHE and GICv2 without. Hooked into
//! [`crate::cases::CASES`] by name.

use crate::cases::Case;
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

/// What both runs show: the hypervisor placing the regions and doorbells, then the VMs' checks
/// that follow one another causally (A's message before B reads it, B's refused write before it
/// rings A on `board`). The lines of the two VMs in between interleave in any order; A's
/// RESULT counts its own checks (the device tree, the reply) and any `SHMEM FAIL` fails the run.
const SHMEM_LINES: &[&str] = &[
    "shm-a: shmem \"ping\" at 0x20000000 (2 MiB), member 0 of 2, doorbell at 0xb000000 (SPI 48)",
    "shm-a: shmem \"board\" at 0x20200000 (2 MiB), member 0 of 2, doorbell at 0xb001000 (SPI 49)",
    "shm-b: shmem \"ping\" at 0x30000000 (2 MiB), member 1 of 2, doorbell at 0xb000000 (SPI 48)",
    "shm-b: shmem \"board\" at 0x30400000 (2 MiB, read-only), member 1 of 2, doorbell at 0xb001000 (SPI 49)",
    "[shm-b] SHMEM PASS: b: A's message arrived with the doorbell",
    "shm-b: stage-2 abort at IPA 0x30400000",
    "[shm-b] SHMEM PASS: b: a write to the read-only mapping aborts and changes nothing",
    "[shm-a] SHMEM PASS: a: B's refused write left the board intact",
    "[shm-a] SHMEM RESULT: passed=5 failed=0",
    "all VMs stopped; powering off",
];

pub const SHMEM: Scenario = Scenario {
    name: "shmem{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "shared memory and doorbells between two VMs: message and reply with doorbell interrupts, a read-only mapping refusing writes; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the shared-memory pair on vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["shmem-a", "shmem-b"],
        timeout_s: 60,
        expect: SHMEM_LINES,
        reject: &["SHMEM FAIL"],
        ..FROM_CONFIG
    },
    tweak: None,
};
