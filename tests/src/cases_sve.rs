//! System cases of SVE for guests (guests/sve, boards/qemu-virt/vms/sve-*.dtsi): four VMs
//! pinned to physical CPU 0 of `-cpu max`: sve-a (the CPU's vector length) and sve-b (capped at
//! 512 bits, ZCR_EL1 lowering it every other round) fill every Z, P and FFR bit with their own
//! patterns and check them after waits in which the others run; sve-c starts using SVE 300 ms
//! in and must find nothing of theirs; sve-none has SVE turned off and must get UNDEFINED.
//! VHE and forced non-VHE; the Cortex-A72 (no SVE) and a bad property value. Hooked into
//! [`crate::cases::CASES`] by name.
//!
//! The VMs' lines interleave in any order, so only sve-c's (the last to start) are expected in
//! sequence; the others are held to account by the rejections: any `SVE FAIL` (every check
//! prints PASS or FAIL, and the guest returns only after its RESULT line), and a VM stopped for
//! anything but its own SYSTEM_OFF. "all VMs stopped" then means each ran all its checks.

use crate::cases::{Boot, Case, Exit, Image, VIRT_V2_NVHE, VIRT_V3_VHE};
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V3_NVHE, V3_VHE};

const SVE_VMS: &[&str] = &["sve-a", "sve-b", "sve-c", "sve-none"];

const SVE_LINES: &[&str] = &[
    "vm0 (sve-a): SVE, vector length ",
    "vm1 (sve-b): SVE, vector length 512 bits",
    "vm2 (sve-c): SVE, vector length ",
    "[sve-c] SVE PASS: id",
    "[sve-c] SVE PASS: first-use",
    "[sve-c] SVE PASS: vector-length",
    "[sve-c] SVE PASS: switch",
    "[sve-c] SVE PASS: fpcr-fpsr",
    "[sve-c] SVE RESULT: passed=5 failed=0",
    "all VMs stopped; powering off",
];

/// A VM stopped by the hypervisor rather than by its own SYSTEM_OFF, or an SVE check failed.
const SVE_REJECT: &[&str] = &[
    "SVE FAIL",
    "stopped: unexpected exception class",
    "stopped: SVE state did not fit",
    "stopped: SError",
    "stopped: every vCPU is off",
    "(sve-none): SVE",
];

pub const SVE: Scenario = Scenario {
    name: "sve{cfg}",
    naming: Naming::GicVhe,
    on: &[
        (
            V3_VHE,
            "SVE for guests, -cpu max, VHE: two VMs' Z/P/FFR patterns survive switches on one pCPU (wfi, wfe yields, slice preemption; 512-bit cap, ZCR_EL1 changes), a third sees zeroes at its first use, a VM with SVE off gets UNDEFINED",
        ),
        (
            V3_NVHE,
            "the SVE switching test with the non-VHE path forced (elvisor.vhe=off: CPTR_EL2.TZ, ZCR_EL1 by its own name)",
        ),
    ],
    case: Case {
        vms: SVE_VMS,
        timeout_s: 120,
        expect: SVE_LINES,
        reject: SVE_REJECT,
        ..FROM_CONFIG
    },
    tweak: None,
};

pub const SVE_OFF_GICV2: Case = Case {
    name: "sve-off-gicv2",
    about: "the SVE guest on a Cortex-A72 (no SVE): hidden in the ID registers, `rdvl` UNDEFINED",
    machine: VIRT_V2_NVHE,
    boot: Boot::Direct,
    vms: &["sve-none"],
    bootargs: None,
    timeout_s: 60,
    expect: &[
        "SVE PASS: id",
        "SVE PASS: undef",
        "SVE RESULT: passed=2 failed=0",
        "all VMs stopped; powering off",
    ],
    reject: &["SVE FAIL", ": SVE, vector length"],
    exit: Exit::Status(0),
    console_input: None,
    image: Image::Normal,
    allow: &[],
    reject_after_exit: &[],
};

pub const BAD_CONFIG_SVE: Case = Case {
    name: "bad-config-sve",
    about: "elvisor,sve-vector-length = <100> (not a multiple of 128): one line names the node and property, and the machine powers off",
    machine: VIRT_V3_VHE,
    boot: Boot::Direct,
    vms: &["tests/fixtures/vm-bad-sve.dtsi"],
    bootargs: None,
    timeout_s: 30,
    expect: &[
        "bad configuration: ",
        "/chosen/vm-badsve property \"elvisor,sve-vector-length\": 100 is neither 0",
    ],
    reject: &["SMOKE", "halted"],
    exit: Exit::Status(0),
    console_input: None,
    image: Image::Normal,
    allow: &[],
    reject_after_exit: &[],
};
