//! System cases of the power button (issue 14 item 7): the PL061 GPIO controller every VM has
//! at QEMU virt's address, with a gpio-keys KEY_POWER on line 3, pressed by the hypervisor
//! (`elvisor.test-power-button=<vm>@<ms>[:<every-ms>]`, the test aid standing in for the
//! management shell's `shutdown`). guests/irq checks the registers and the interrupts of a press
//! and release; Debian's Linux registers the gpio-keys input device and powers off when its
//! /init sees KEY_POWER. Hooked into [`crate::cases::CASES`] by name.

use crate::cases::Case;
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

const IRQ_BUTTON_LINES: &[&str] = &[
    "the button will be pressed",
    "IRQ PASS: gpio-id",
    "irq-pb): power button pressed",
    "IRQ PASS: power-button",
    "IRQ PASS: vtimer-level",
    "IRQ RESULT: passed=13 failed=0",
];

pub const IRQ_BUTTON: Scenario = Scenario {
    name: "power-button{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "the VM's PL061 and gpio-keys nodes, PrimeCell IDs, a press of the power button: both edges of line 3 as SPI 7, the line read through GPIODATA's address mask; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the power-button press of power-button-gicv3 on GICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["irq-power-button"],
        bootargs: Some("elvisor.test-power-button=irq-pb@1500"),
        timeout_s: 90,
        expect: IRQ_BUTTON_LINES,
        reject: &["IRQ FAIL", ": ignored"],
        ..FROM_CONFIG
    },
    tweak: None,
};

/// Linux: the PL061 probes, gpio-keys registers its input device, /init's watcher sees
/// KEY_POWER from one of the repeated presses (an early one may come before gpio-keys is
/// loaded, and /init's other lines may come before or after the press that counts) and
/// powers off.
const LINUX_BUTTON_LINES: &[&str] = &[
    "Booting Linux on physical CPU 0x0000000000",
    "pl061_gpio 9030000.pl061: PL061 GPIO chip registered",
    "input: gpio-keys as /devices/platform/gpio-keys/input/input0",
    "INIT: power button: gpio-keys on /dev/input/event0",
    "linux): power button pressed",
    "INIT: power button: KEY_POWER pressed: poweroff -f",
    "reboot: Power down",
    "vm0 (linux) stopped: PSCI SYSTEM_OFF",
    "all VMs stopped; powering off",
];

const LINUX_REJECT: &[&str] = &[
    "Kernel panic",
    "Internal error:",
    "Unable to handle kernel",
    "BUG:",
    "Oops",
    "INIT: insmod",
    "FAIL",
    ": ignored",
];

pub const LINUX_BUTTON: Scenario = Scenario {
    name: "linux-power-button{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "Debian's Linux shut down cleanly through the power button: gpio-keys on the VM's PL061 (gpio_keys and evdev insmod'ed), KEY_POWER seen by /init, PSCI SYSTEM_OFF; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "linux-power-button-gicv3 on GICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["linux-power-button"],
        bootargs: Some("elvisor.test-power-button=linux@4000:2000"),
        timeout_s: 150,
        expect: LINUX_BUTTON_LINES,
        reject: LINUX_REJECT,
        ..FROM_CONFIG
    },
    tweak: None,
};
