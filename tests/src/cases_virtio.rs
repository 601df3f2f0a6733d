//! System cases of the virtio devices (guests/virtio, boards/qemu-virt/vms/virtio.dtsi, disk
//! images from scripts/mkdisk): empty virtio-mmio slots, virtio-blk read/write/flush/GET_ID
//! and read-only, a hostile driver that must end in DEVICE_NEEDS_RESET while the hypervisor
//! (and, on GICv2, a heartbeat VM next to it) keeps going, and disk writes that survive a VM
//! reset. Hooked into [`crate::cases::CASES`] by name.

use crate::cases::{Boot, Case, Exit, Image, VIRT_V2_NVHE, VIRT_V3_VHE};
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

/// What every virtio run shows, in order: the devices placed, the guest's checks of the first
/// boot, the hypervisor's diagnostics of the hostile driver, the reset and the second boot.
const VIRTIO_LINES: &[&str] = &[
    "virtio: virtio-blk in slot 0 at 0xa000000 (SPI 16): 2051 sectors",
    "virtio: virtio-blk in slot 1 at 0xa000200 (SPI 17): 1000 sectors, read-only",
    "VIRTIO PASS: dt: exactly the two disks",
    "VIRTIO PASS: empty slots 2..31: magic, version 2, device ID 0, writes ignored",
    "VIRTIO PASS: rw: GET_ID",
    "VIRTIO PASS: rw: used-buffer interrupt reaches the vGIC, acknowledge lowers it",
    "VIRTIO PASS: rw: write through an indirect table, read back",
    "VIRTIO PASS: rw: flush",
    "VIRTIO PASS: ro: a write fails with IOERR and writes nothing",
    "virtio virtio-blk@0xa000000: device needs reset: queue 0: chain 0: descriptor loop",
    "VIRTIO PASS: hostile: descriptor loop",
    "device needs reset: queue 0: chain 0: buffer 0x60000000+0x200 outside the VM's RAM",
    "VIRTIO PASS: hostile: buffer outside the VM's RAM",
    "VIRTIO PASS: hostile: queue size 6",
    "VIRTIO PASS: hostile: notify before DRIVER_OK",
    "VIRTIO PASS: hostile: the device works again after a reset",
    "VIRTIO PASS: marker written",
    "VIRTIO PASS: a disk write survives a VM reset",
    "VIRTIO RESULT: passed=2 failed=0",
];

pub const VIRTIO_GICV3: Case = Case {
    name: "virtio-blk-gicv3",
    about: "virtio-mmio on QEMU virt's window: empty slots, virtio-blk (rw and read-only), a hostile driver, writes surviving a VM reset; GICv3, VHE",
    machine: VIRT_V3_VHE,
    boot: Boot::Direct,
    vms: &["virtio"],
    bootargs: None,
    timeout_s: 60,
    expect: VIRTIO_LINES,
    reject: &["VIRTIO FAIL"],
    exit: Exit::Status(0),
    console_input: None,
    image: Image::Normal,
    allow: &[],
    reject_after_exit: &[],
};

pub const VIRTIO_GICV2: Case = Case {
    name: "virtio-blk-gicv2-heartbeat",
    about: "the virtio guest on vGICv2, cortex-a72 (non-VHE), next to a heartbeat VM that must beat on through the hostile driver",
    machine: VIRT_V2_NVHE,
    boot: Boot::Direct,
    vms: &["virtio", "heartbeat"],
    bootargs: None,
    timeout_s: 60,
    expect: &[
        "[virtio] VIRTIO PASS: hostile: descriptor loop",
        "[virtio] VIRTIO PASS: hostile: the device works again after a reset",
        "[virtio] VIRTIO PASS: a disk write survives a VM reset",
        "[virtio] VIRTIO RESULT: passed=2 failed=0",
        "[hb] HB RESULT: passed=1 failed=0",
        "all VMs stopped; powering off",
    ],
    reject: &["VIRTIO FAIL", "HB FAIL"],
    exit: Exit::Status(0),
    console_input: None,
    image: Image::Normal,
    allow: &[],
    reject_after_exit: &[],
};

/// The virtio guest run to its end (SYSTEM_OFF), then started again from the shell: its first
/// boot finds the marker the first run left on the disk (the disk lives in host RAM across a
/// VM's stop and start; only the machine's power-off loses it). The idle VM, never started,
/// keeps the machine up for the shell.
pub const VIRTIO_RESTART: Scenario = Scenario {
    name: "virtio-restart{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "the virtio guest runs to its SYSTEM_OFF, is started again from the shell and finds its disk write from the first run (writes survive a VM restart); GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the virtio restart on vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["virtio", "shell-idle"],
        timeout_s: 120,
        expect: &[
            "VIRTIO: no marker of an earlier run on the disk: the first run since the machine booted",
            "VIRTIO RESULT: passed=2 failed=0",
            "vm0 (virtio) stopped: PSCI SYSTEM_OFF",
            "console input goes to the shell, as vm0 (virtio) stopped",
            "elvisor> start virtio\r\n",
            "vm0 (virtio) started (start #2)",
            "VIRTIO PASS: a disk write survives a VM reset",
            "VIRTIO PASS: a disk write survives a VM restart",
            "VIRTIO RESULT: passed=3 failed=0",
            "elvisor> poweroff\r\n",
            "powering off (`poweroff` in the shell)",
        ],
        reject: &["VIRTIO FAIL", "PANIC"],
        ..FROM_CONFIG
    },
    tweak: None,
};

/// Debian's unmodified Linux on the same two disks: its own virtio_mmio and virtio_blk
/// drivers (modules in the initramfs) find them in the guest DT, read the sectors the disk
/// images hold, write one and read it back after dropping the page cache, and are refused a
/// write to the read-only disk.
const LINUX_VIRTIO_LINES: &[&str] = &[
    "linux: virtio-blk in slot 0 at 0xa000000 (SPI 16): 2051 sectors",
    "linux: virtio-blk in slot 1 at 0xa000200 (SPI 17): 1000 sectors, read-only",
    "Booting Linux on physical CPU 0x0000000000",
    "[vda] 2051 512-byte logical blocks",
    "[vdb] 1000 512-byte logical blocks",
    "INIT: disk: vda 2051 sectors, ro=0",
    "INIT: disk: vdb 1000 sectors, ro=1",
    // Byte o of the images is ((o >> 9) * 13 + (o & 511) + seed) & 0xff (scripts/mkdisk).
    "INIT: disk: vda sector 1:",
    " 13 14 15 16 17 18 19 20",
    "INIT: disk: vdb sector 0:",
    " 85 86 87 88 89 90 91 92",
    "INIT: disk: vda sector 7 now: elvisor-disk-write-check",
    "INIT: disk: vdb write refused",
    "INIT: done",
    "reboot: Power down",
];

pub const LINUX_VIRTIO: Scenario = Scenario {
    name: "linux-virtio{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "Debian's Linux with its own virtio_mmio and virtio_blk modules on elvisor's virtio-blk: reads the disk images, writes and reads back, refused on the read-only disk; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "Debian's Linux on elvisor's virtio-blk, vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["linux-virtio"],
        timeout_s: 120,
        expect: LINUX_VIRTIO_LINES,
        reject: &[
            "Kernel panic",
            "Internal error:",
            "BUG:",
            "Oops",
            "insmod",
            "VIRTIO FAIL",
        ],
        ..FROM_CONFIG
    },
    tweak: None,
};
