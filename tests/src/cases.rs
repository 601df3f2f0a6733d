//! The system-test cases: each one is data — a board configuration (QEMU machine arguments),
//! a boot method, the VMs in the host device tree, and what the serial log must and must not show.

/// How the hypervisor image reaches the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// `qemu -kernel build/elvisor.img -dtb host.dtb`: QEMU's boot stub jumps to the Image.
    Direct,
    /// `qemu -bios u-boot.bin`, the image preloaded at 0x4020_0000, then `booti` typed at the
    /// U-Boot prompt with U-Boot's control DTB (which is our host DTB) in x0.
    UBoot,
}

/// How the run is expected to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// QEMU exits by itself (PSCI SYSTEM_OFF) with this status.
    Status(i32),
    /// The hypervisor parks once it has printed this line: the harness kills QEMU after it
    /// appears (and a short grace period to catch anything printed after it). QEMU exiting by
    /// itself with status 0 once the line is there is accepted too.
    KillAfter(&'static str),
}

/// One system test.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    /// What the case checks, for `--list`.
    pub about: &'static str,
    /// QEMU machine arguments (-M, -cpu, -m, -smp): the board configuration. scripts/mkdtb dumps
    /// QEMU's DTB with exactly these.
    pub machine: &'static [&'static str],
    pub boot: Boot,
    /// VM templates: names in boards/qemu-virt/vms/ or paths relative to the repo root.
    pub vms: &'static [&'static str],
    /// The hypervisor's command line (/chosen/bootargs); `None` leaves it unset.
    pub bootargs: Option<&'static str>,
    pub timeout_s: u64,
    /// Substrings the serial log must contain, in this order.
    pub expect: &'static [&'static str],
    /// Substrings the serial log must not contain (in addition to [`ALWAYS_REJECT`]).
    pub reject: &'static [&'static str],
    pub exit: Exit,
    /// Bytes typed on the serial console (QEMU's stdin) once the guest runs; after the
    /// U-Boot commands for U-Boot boots.
    pub console_input: Option<&'static str>,
}

/// Never acceptable in any log: a hypervisor panic or EL2 fault, or a failed guest check.
pub const ALWAYS_REJECT: &[&str] = &["panicked", "PANIC", "FATAL", "FAIL"];

const VIRT_V3_VHE: &[&str] = &[
    "-M",
    "virt,virtualization=on,gic-version=3",
    "-cpu",
    "max",
    "-m",
    "1G",
    "-smp",
    "2",
];
const VIRT_V2_NVHE: &[&str] = &[
    "-M",
    "virt,virtualization=on,gic-version=2",
    "-cpu",
    "cortex-a72",
    "-m",
    "1G",
    "-smp",
    "2",
];

/// What every smoke-VM run must print after the hypervisor's own banner lines.
macro_rules! smoke_lines {
    ($($head:expr),* $(,)?) => {
        &[
            $($head,)*
            "SMOKE RESULT: passed=",
            "failed=0",
            "all VMs stopped; powering off",
        ]
    };
}

pub const CASES: &[Case] = &[
    Case {
        name: "virt-gicv3-vhe-direct",
        about: "QEMU virt, GICv3, -cpu max (VHE), -kernel; smoke VM passes, machine powers off",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["smoke"],
        bootargs: None,
        timeout_s: 60,
        expect: smoke_lines!["VHE mode (E2H=1)", "GICv3"],
        reject: &["SMOKE FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "virt-gicv2-nvhe-direct",
        about: "QEMU virt, GICv2, -cpu cortex-a72 (no VHE), -kernel; smoke VM passes",
        machine: VIRT_V2_NVHE,
        boot: Boot::Direct,
        vms: &["smoke"],
        bootargs: None,
        timeout_s: 60,
        expect: smoke_lines!["non-VHE mode (E2H=0)", "GICv2"],
        reject: &["SMOKE FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "virt-gicv3-vhe-uboot",
        about: "as virt-gicv3-vhe-direct, booted by U-Boot booti with its control DTB",
        machine: VIRT_V3_VHE,
        boot: Boot::UBoot,
        vms: &["smoke"],
        bootargs: None,
        timeout_s: 90,
        expect: smoke_lines![
            "compatible = \"elvisor,vm\"",
            "Starting kernel",
            "VHE mode (E2H=1)",
            "GICv3",
        ],
        reject: &["SMOKE FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "virt-gicv2-nvhe-uboot",
        about: "as virt-gicv2-nvhe-direct, booted by U-Boot booti with its control DTB",
        machine: VIRT_V2_NVHE,
        boot: Boot::UBoot,
        vms: &["smoke"],
        bootargs: None,
        timeout_s: 90,
        expect: smoke_lines![
            "compatible = \"elvisor,vm\"",
            "Starting kernel",
            "non-VHE mode (E2H=0)",
            "GICv2",
        ],
        reject: &["SMOKE FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "wrong-el",
        about: "virt without virtualization=on enters at EL1: the hypervisor says so and parks",
        machine: &[
            "-M",
            "virt,gic-version=3",
            "-cpu",
            "max",
            "-m",
            "1G",
            "-smp",
            "2",
        ],
        boot: Boot::Direct,
        vms: &["smoke"],
        bootargs: None,
        timeout_s: 30,
        expect: &["must be entered at EL2"],
        reject: &["SMOKE"],
        exit: Exit::KillAfter("must be entered at EL2"),
        console_input: None,
    },
    Case {
        name: "bad-config",
        about: "a VM node without `memory`: the error names the property, no panic",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["tests/fixtures/vm-no-memory.dtsi"],
        bootargs: None,
        timeout_s: 30,
        expect: &["property \"memory\""],
        reject: &["SMOKE"],
        exit: Exit::KillAfter("property \"memory\""),
        console_input: None,
    },
    Case {
        name: "irq-gicv3-vhe",
        about: "interrupt guest on vGICv3, VHE: timers, priorities, PMR, LR overflow, EOImode=1, WFI",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["irq"],
        bootargs: None,
        timeout_s: 90,
        expect: IRQ_LINES,
        reject: &["IRQ FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "irq-gicv3-nvhe",
        about: "interrupt guest on vGICv3 with the non-VHE path forced (elvisor.vhe=off)",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["irq"],
        bootargs: Some("elvisor.vhe=off"),
        timeout_s: 90,
        expect: &[
            "non-VHE mode (E2H=0), forced",
            "IRQ RESULT: passed=10 failed=0",
        ],
        reject: &["IRQ FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "irq-gicv2-nvhe",
        about: "interrupt guest on vGICv2 (GICH list registers, GICV passthrough), cortex-a72",
        machine: VIRT_V2_NVHE,
        boot: Boot::Direct,
        vms: &["irq"],
        bootargs: None,
        timeout_s: 90,
        expect: IRQ_LINES,
        reject: &["IRQ FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "passthrough-gicv3",
        about: "a host PL031 passed through: its SPI reaches the guest with the HW bit, twice",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["irq-passthrough"],
        bootargs: None,
        timeout_s: 90,
        expect: &[
            "passthrough /pl031@9010000",
            "IRQ PASS: passthrough-rtc",
            "IRQ RESULT: passed=11 failed=0",
        ],
        reject: &["IRQ FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "passthrough-gicv2",
        about: "the PL031 passthrough on GICv2, cortex-a72",
        machine: VIRT_V2_NVHE,
        boot: Boot::Direct,
        vms: &["irq-passthrough"],
        bootargs: None,
        timeout_s: 90,
        expect: &[
            "passthrough /pl031@9010000",
            "IRQ PASS: passthrough-rtc",
            "IRQ RESULT: passed=11 failed=0",
        ],
        reject: &["IRQ FAIL"],
        exit: Exit::Status(0),
        console_input: None,
    },
    Case {
        name: "console-input-gicv3",
        about: "bytes typed on the console reach the guest's PL011 through the RX interrupt",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["smoke-input"],
        bootargs: None,
        timeout_s: 60,
        expect: smoke_lines!["SMOKE PASS: uart-rx"],
        reject: &["SMOKE FAIL"],
        exit: Exit::Status(0),
        console_input: Some("hello-elvisor"),
    },
    Case {
        name: "console-input-gicv2-uboot",
        about: "console input on GICv2 after a U-Boot boot",
        machine: VIRT_V2_NVHE,
        boot: Boot::UBoot,
        vms: &["smoke-input"],
        bootargs: None,
        timeout_s: 90,
        expect: smoke_lines!["Starting kernel", "SMOKE PASS: uart-rx"],
        reject: &["SMOKE FAIL"],
        exit: Exit::Status(0),
        console_input: Some("hello-elvisor"),
    },
];

const IRQ_LINES: &[&str] = &[
    "IRQ PASS: gic-id",
    "IRQ PASS: lr-overflow",
    "IRQ PASS: eoimode1",
    "IRQ PASS: vtimer",
    "IRQ PASS: ptimer",
    "IRQ PASS: wfi-wakes",
    "IRQ RESULT: passed=10 failed=0",
    "all VMs stopped; powering off",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_file_safe() {
        for (i, a) in CASES.iter().enumerate() {
            assert!(
                a.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{}",
                a.name
            );
            assert!(
                CASES[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn every_case_names_a_machine_and_an_expectation() {
        for c in CASES {
            assert!(c.machine.contains(&"-M"), "{}", c.name);
            assert!(!c.expect.is_empty(), "{}", c.name);
            if let Exit::KillAfter(p) = c.exit {
                assert!(
                    c.expect.contains(&p),
                    "{}: kill pattern must be expected",
                    c.name
                );
            }
        }
    }
}
