//! System cases of PMUv3 for guests (guests/pmu, boards/qemu-virt/vms/pmu*.dtsi): the VM "pmu"
//! counts cycles and instructions at EL1 only (never the hypervisor's handling of its
//! hypercalls), takes its overflow interrupt (INTID 23) exactly once, and keeps its counters
//! across yields to "pmu-disturb", which shares physical CPU 0 and resets and reprograms its
//! own PMU every round; "pmu-none" (elvisor,pmu = <0>, physical CPU 1) sees no PMU. Under
//! `-icount shift=0`: QEMU counts INST_RETIRED only with precise icount. GICv3 with VHE,
//! GICv3 with the non-VHE path forced, and GICv2 on a Cortex-A72 (PMUv3, ARMv8.0). Listed
//! in [`crate::cases::all`].

use crate::cases::Case;
use crate::matrix::{Entry, FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_NVHE, V3_VHE};

/// The main VM's checks in order (the other VMs' lines interleave anywhere).
const PMU_LINES: &[&str] = &[
    "[pmu] PMU PASS: id",
    "[pmu] PMU PASS: count",
    "[pmu] PMU PASS: filter",
    "[pmu] PMU PASS: no-el2",
    "[pmu] PMU PASS: overflow",
    "[pmu] PMU PASS: undef",
    "[pmu] PMU PASS: switch",
    "[pmu] PMU RESULT: passed=7 failed=0",
    "all VMs stopped; powering off",
];

const REJECT: &[&str] = &[
    "PMU FAIL",
    "stopped: unexpected exception class",
    "stopped: SError",
    "unexpected physical interrupt",
];

pub const CASES: &[Entry] = &[Entry::Matrix(Scenario {
    name: "pmu{cfg}",
    naming: Naming::GicVheOnV3,
    on: &[
        (
            V3_VHE.icount(),
            "PMUv3 for guests, -cpu max, VHE, -icount: cycles and instructions counted at EL1 only (not the hypervisor), overflow interrupt on PPI 23, counters kept across switches with another PMU user, a VM without a PMU gets UNDEFINED",
        ),
        (
            V3_NVHE.icount(),
            "the PMU guests on -cpu max with the non-VHE path forced (elvisor.vhe=off)",
        ),
        (
            V2_NVHE.icount(),
            "the PMU guests on a Cortex-A72 (PMUv3, ARMv8.0: no MDCR_EL2.HPMD, EL2 excluded by the filters), vGICv2",
        ),
    ],
    case: Case {
        vms: &["pmu", "pmu-disturb", "pmu-none"],
        timeout_s: 120,
        expect: PMU_LINES,
        reject: REJECT,
        ..FROM_CONFIG
    },
    tweak: None,
})];
