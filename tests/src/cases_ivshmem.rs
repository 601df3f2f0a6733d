//! System cases of shared memory as an ivshmem-like PCI device (boards/qemu-virt/vms/
//! linux-ivshmem-a.dtsi and linux-ivshmem-b.dtsi): two Debian Linux VMs with their stock
//! kernel find the device on the emulated `pci-host-ecam-generic` bus, bind Debian's
//! uio_pci_generic to it, and pass a counter back and forth 1000 times through the region
//! (busybox devmem on BAR2) with doorbells (BAR0) waited for on /dev/uio0. Both VMs must end
//! with the same count. GICv3 with VHE and GICv2 without. Hooked into [`crate::cases::CASES`].

use crate::cases::Case;
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

/// The hypervisor placing the functions, each VM's binding, then both final counts.
const LINUX_IVSHMEM_LINES: &[&str] = &[
    "linux-a: shmem \"ivshmem\" at 0x20000000 (2 MiB), member 0 of 2, PCI ivshmem, BAR0 at 0xb200000 (SPI 48)",
    "linux-b: shmem \"ivshmem\" at 0x100000000 (2 MiB), member 1 of 2, PCI ivshmem, BAR0 at 0xb200000 (SPI 48)",
    BOUND,
    BOUND,
    DONE,
    DONE,
    "all VMs stopped; powering off",
];

/// Each VM prints these once (the two VMs' lines come in either order, so each is expected
/// twice: once from each VM). The same final count on both sides is the check.
const BOUND: &str =
    "] INIT: ivshmem: 0000:00:00.0 driver uio_pci_generic BAR0 0x000000000b200000 BAR2 0x";
const DONE: &str = "] INIT: ivshmem: 1000 rounds, final counter 2000,";

pub const LINUX_IVSHMEM: Scenario = Scenario {
    name: "linux-ivshmem{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "two Debian Linux VMs share a region as an ivshmem-like PCI device (uio_pci_generic, devmem, /dev/uio0) and pass a counter back and forth 1000 times with doorbells; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the two Linux VMs sharing a region as a PCI device, vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["linux-ivshmem-a", "linux-ivshmem-b"],
        timeout_s: 600,
        expect: LINUX_IVSHMEM_LINES,
        reject: &[
            "Kernel panic",
            "Internal error:",
            "BUG:",
            "Oops",
            "INIT: ivshmem: FAIL",
            "can't claim",
            "not assigned",
        ],
        ..FROM_CONFIG
    },
    tweak: None,
};
