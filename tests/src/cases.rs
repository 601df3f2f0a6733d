//! The system-test cases: each one is data — a board configuration (QEMU machine arguments),
//! a boot method, the VMs in the host device tree, and what the serial log must and must not show.
//! A test that runs on several configurations (board × GIC × VHE) is declared once, as a
//! [`Scenario`] listing them; [`all`] expands the lists into the cases the harness runs.

use std::sync::LazyLock;

use crate::matrix::Entry::{self, Matrix, Single};
use crate::matrix::{FROM_CONFIG, Gic, Naming, Scenario, V2_NVHE, V3_NVHE, V3_VHE, Vhe};

/// How the hypervisor image reaches the CPU.
// `UBoot` is U-Boot, not "U" + the enum's name.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// `qemu -kernel build/elvisor.img -dtb host.dtb`: QEMU's boot stub jumps to the Image.
    Direct,
    /// `qemu -bios u-boot.bin`, the image preloaded at 0x4020_0000, then `booti` typed at the
    /// U-Boot prompt with U-Boot's control DTB (which is our host DTB) in x0.
    UBoot,
    /// `qemu -bios u-boot.bin` with a FAT disk (virtio-blk) that scripts/mkboot made from the
    /// case's VMs, and nothing typed or preloaded: U-Boot's distro boot finds boot.scr, which
    /// loads everything from the disk. `dt_from_firmware`: boot.scr starts from the tree
    /// U-Boot was handed (`mkboot --dt firmware`, the Pi's way) instead of a DTB on the disk.
    UBootDisk { dt_from_firmware: bool },
    /// The Raspberry Pi firmware's way with `armstub=bl31.bin` in config.txt: TF-A's BL31 at
    /// 0 in EL3 with the stub words filled in as the VideoCore firmware fills them (magic
    /// cleared, DTB address, kernel entry 0x8_0000), the image at 0x8_0000, the DTB at
    /// [`ARMSTUB_DTB_ADDR`], and every CPU starting at 0 in EL3. BL31 patches PSCI into the DT
    /// and drops to EL2 at the image; secondaries wait in BL31 for PSCI CPU_ON.
    Armstub,
    /// `-kernel` like [`Boot::Direct`], with the DTB scripts/mkdtb makes for this other QEMU
    /// machine (another board's DTB: the hypervisor must say so and stop).
    ForeignDtb(&'static [&'static str]),
}

/// Where the armstub boot puts the host DTB (the firmware's choice on a real Pi varies; BL31
/// maps the 4 MiB from its 2 MiB-aligned block and grows the tree to 1 MiB in place).
pub const ARMSTUB_DTB_ADDR: u64 = 0x0200_0000;

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

/// One system test: one scenario on one configuration. Most are generated from a
/// [`Scenario`] (crate::matrix), declared once with the configurations it runs on; see [`all`].
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
    /// Which hypervisor image QEMU boots.
    pub image: Image,
    /// Words of [`ALWAYS_REJECT`] this case expects instead (a panic on purpose, say): they
    /// are then rejected only through [`Case::reject`], and the case must expect them.
    pub allow: &'static [&'static str],
    /// Substrings that must not appear after the [`Exit::KillAfter`] line (a guest still
    /// running after the hypervisor said it halted); the grace period collects that output.
    pub reject_after_exit: &'static [&'static str],
}

/// The hypervisor image a case boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    /// build/elvisor.img: what users run.
    Normal,
    /// build/elvisor-selftest.img: built with the `selftest` feature, so that
    /// `elvisor.selftest=KIND` makes it fail on purpose.
    Selftest,
    /// build/elvisor.img with its Image header's text_offset set to 0x80800: QEMU's `-kernel`
    /// then loads it 2 KiB past a 4 KiB boundary, where it cannot run (the runner writes it).
    Misaligned,
}

impl Image {
    /// The image's path relative to the repository root.
    pub fn path(self) -> &'static str {
        match self {
            Image::Normal => "build/elvisor.img",
            Image::Selftest => "build/elvisor-selftest.img",
            Image::Misaligned => "build/test-images/elvisor-misaligned.img",
        }
    }
}

/// The hypervisor command line a case boots with: its own `bootargs`, plus
/// `elvisor.console-tags=all` so that every line of a multi-VM log names its VM (the
/// expectations are written that way), except in the cases that test what a person at the
/// console sees by default: the focused VM's output untouched.
pub fn boot_command_line(case: &Case) -> String {
    const DEFAULT_CONSOLE: &[&str] = &[
        "console-focus-gicv3",
        "console-focus-gicv2",
        "demo-gicv3",
        "demo-gicv2",
    ];
    let tags = (!DEFAULT_CONSOLE.contains(&case.name)).then_some("elvisor.console-tags=all");
    [case.bootargs, tags]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

/// text_offset of [`Image::Misaligned`]: QEMU loads an arm64 Image at RAM base + text_offset.
pub const MISALIGNED_TEXT_OFFSET: u64 = 0x8_0800;

impl Case {
    /// Everything the log must not contain: [`ALWAYS_REJECT`] less what the case allows, and
    /// the case's own rejections.
    pub fn rejects(&self) -> Vec<&'static str> {
        ALWAYS_REJECT
            .iter()
            .filter(|r| !self.allow.contains(r))
            .chain(self.reject)
            .copied()
            .collect()
    }
}

/// Every case, in the order the harness runs them and `--list` shows them: [`CASES`], then
/// the raspi4b, boot-disk, debug and PMU lists.
pub fn all() -> &'static [Case] {
    static ALL: LazyLock<Vec<Case>> = LazyLock::new(|| {
        let mut all = crate::matrix::expand(CASES);
        all.extend(crate::cases_rpi4::CASES);
        all.extend(crate::cases_rpi4::VIRT_CASES);
        all.extend(crate::cases_boot::CASES);
        all.extend(crate::matrix::expand(crate::cases_debug::CASES));
        all.extend(crate::matrix::expand(crate::cases_pmu::CASES));
        all
    });
    &ALL
}

/// Never acceptable in any log: a hypervisor panic or EL2 fault, or a failed guest check.
pub const ALWAYS_REJECT: &[&str] = &["panicked", "PANIC", "FATAL", "FAIL"];

/// QEMU virt, GICv3, `-cpu max` (VHE), 1 GiB, 2 CPUs: the machine most cases boot.
pub const VIRT_V3_VHE: &[&str] = &[
    "-M",
    "virt,virtualization=on,gic-version=3",
    "-cpu",
    "max",
    "-m",
    "1G",
    "-smp",
    "2",
];
/// QEMU virt, GICv2, Cortex-A72 (no VHE), 1 GiB, 2 CPUs.
pub const VIRT_V2_NVHE: &[&str] = &[
    "-M",
    "virt,virtualization=on,gic-version=2",
    "-cpu",
    "cortex-a72",
    "-m",
    "1G",
    "-smp",
    "2",
];

/// The last line of a halted machine: every CPU acknowledged the halt.
const HALTED: &str = "elvisor: halted: all CPUs parked";
/// A panic on purpose prints these words of [`ALWAYS_REJECT`].
const PANIC_WORDS: &[&str] = &["PANIC", "panicked"];
/// A fatal exception on purpose prints this one.
const FATAL_WORDS: &[&str] = &["FATAL"];

/// A last-resort case (name, about and machine from its configuration): the selftest image,
/// `allow`ed report words, the heartbeat guest's beats rejected after the halted line, and no
/// clean power-off (a failed hypervisor parks). Expectations list the trigger's lines in order,
/// ending with [`HALTED`].
const fn lastresort(
    vms: &'static [&'static str],
    bootargs: Option<&'static str>,
    expect: &'static [&'static str],
    allow: &'static [&'static str],
) -> Case {
    Case {
        vms,
        bootargs,
        timeout_s: 30,
        expect,
        reject: &[
            "all VMs stopped",
            "did not stop",
            "failure inside the failure",
        ],
        exit: Exit::KillAfter(HALTED),
        image: Image::Selftest,
        allow,
        reject_after_exit: &["HB: beat"],
        ..FROM_CONFIG
    }
}

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

pub const CASES: &[Entry] = &[
    Matrix(Scenario {
        name: "virt{cfg}-direct",
        naming: Naming::GicVhe,
        on: &[
            (
                V3_VHE,
                "QEMU virt, GICv3, -cpu max (VHE), -kernel; smoke VM passes, machine powers off",
            ),
            (
                V2_NVHE,
                "QEMU virt, GICv2, -cpu cortex-a72 (no VHE), -kernel; smoke VM passes",
            ),
        ],
        case: Case {
            vms: &["smoke"],
            timeout_s: 60,
            expect: smoke_lines!["VHE mode (E2H=1)", "GICv3"],
            reject: &["SMOKE FAIL"],
            ..FROM_CONFIG
        },
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                expect: smoke_lines!["non-VHE mode (E2H=0)", "GICv2"],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Matrix(Scenario {
        name: "virt{cfg}-uboot",
        naming: Naming::GicVhe,
        on: &[
            (
                V3_VHE,
                "as virt-gicv3-vhe-direct, booted by U-Boot booti with its control DTB",
            ),
            (
                V2_NVHE,
                "as virt-gicv2-nvhe-direct, booted by U-Boot booti with its control DTB",
            ),
        ],
        case: Case {
            boot: Boot::UBoot,
            vms: &["smoke"],
            timeout_s: 90,
            expect: smoke_lines![
                "compatible = \"elvisor,vm\"",
                "Starting kernel",
                "VHE mode (E2H=1)",
                "GICv3",
            ],
            reject: &["SMOKE FAIL"],
            ..FROM_CONFIG
        },
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                expect: smoke_lines![
                    "compatible = \"elvisor,vm\"",
                    "Starting kernel",
                    "non-VHE mode (E2H=0)",
                    "GICv2",
                ],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Single(Case {
        name: "wrong-el",
        about: "virt without virtualization=on enters at EL1: the hypervisor says so and stops the machine (PSCI SYSTEM_OFF) like every other error",
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
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(Case {
        name: "misaligned-load",
        about: "the image loaded 2 KiB past a 4 KiB boundary (its header's text_offset patched to 0x80800): it says where it was loaded and why it cannot run there, then powers off",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["smoke"],
        bootargs: None,
        timeout_s: 30,
        expect: &[
            "the image was loaded at 0x40080800, which is not 4 KiB aligned",
            "Stopping.",
        ],
        reject: &["SMOKE", "booting at EL2"],
        exit: Exit::Status(0),
        console_input: None,
        image: Image::Misaligned,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(Case {
        name: "bad-config",
        about: "a VM node without `memory`: one line names the node and property, no panic, and the machine powers off (PSCI) like every other stop",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["tests/fixtures/vm-no-memory.dtsi"],
        bootargs: None,
        timeout_s: 30,
        expect: &["bad configuration: ", "property \"memory\""],
        reject: &["SMOKE", "halted"],
        exit: Exit::Status(0),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(Case {
        name: "bad-config-too-big",
        about: "a VM asking for more RAM than is free: the one error line says how large a VM would fit, and the machine powers off",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["tests/fixtures/vm-too-big.dtsi"],
        bootargs: None,
        timeout_s: 30,
        expect: &[
            "bad configuration: ",
            "property \"memory\": 1020 MiB do not fit",
            "the largest VM that fits now has ",
        ],
        reject: &["SMOKE", "halted", "{ ", " }"],
        exit: Exit::Status(0),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Matrix(Scenario {
        name: "irq{cfg}",
        naming: Naming::GicVhe,
        on: &[
            (
                V3_VHE,
                "interrupt guest on vGICv3, VHE: timers, priorities, PMR, LR overflow, EOImode=1, WFI, the virtual timer's pending state following its line",
            ),
            (
                V3_NVHE,
                "interrupt guest on vGICv3 with the non-VHE path forced (elvisor.vhe=off)",
            ),
            (
                V2_NVHE,
                "interrupt guest on vGICv2 (GICH list registers, GICV passthrough), cortex-a72",
            ),
        ],
        case: Case {
            vms: &["irq"],
            timeout_s: 90,
            expect: IRQ_LINES,
            reject: &["IRQ FAIL"],
            ..FROM_CONFIG
        },
        tweak: Some(|cfg, c| match cfg.vhe {
            Vhe::ForcedOff => Case {
                expect: &[
                    "non-VHE mode (E2H=0), forced",
                    "IRQ PASS: vtimer-level",
                    "IRQ RESULT: passed=11 failed=0",
                ],
                ..c
            },
            Vhe::On | Vhe::Absent => c,
        }),
    }),
    Matrix(Scenario {
        name: "passthrough{cfg}",
        naming: Naming::Gic,
        on: &[
            (
                V3_VHE,
                "a host PL031 passed through: its SPI reaches the guest with the HW bit, twice; EOIed before the RTC is cleared, each alarm is taken once",
            ),
            (V2_NVHE, "the PL031 passthrough on GICv2, cortex-a72"),
        ],
        case: Case {
            vms: &["irq-passthrough"],
            timeout_s: 90,
            expect: &[
                "passthrough /pl031@9010000",
                "IRQ PASS: passthrough-rtc",
                "IRQ PASS: passthrough-eoi-first",
                "IRQ RESULT: passed=13 failed=0",
            ],
            reject: &["IRQ FAIL"],
            ..FROM_CONFIG
        },
        tweak: None,
    }),
    Single(Case {
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
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(Case {
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
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Matrix(crate::cases_console::CONSOLE_INPUT_NOFIFO),
    Matrix(crate::cases_console::CONSOLE_FOCUS),
    Matrix(crate::cases_console::DEMO),
    Matrix(crate::cases_shell::SHELL),
    Matrix(Scenario {
        name: "smp{cfg}",
        naming: Naming::GicSmp,
        on: &[
            (
                V3_VHE,
                "a 4-vCPU VM on 2 pCPUs (shared): PSCI CPU_ON/OFF/AFFINITY_INFO, CPU_ON race, cross-vCPU SGIs",
            ),
            (
                V2_NVHE,
                "the 4-vCPU SMP VM on vGICv2 (GICD_SGIR IPIs), cortex-a72, 2 pCPUs",
            ),
        ],
        case: Case {
            vms: &["smp"],
            timeout_s: 60,
            expect: SMP4_LINES,
            reject: &["SMP FAIL"],
            ..FROM_CONFIG
        },
        tweak: None,
    }),
    Matrix(Scenario {
        name: "two-vms{cfg}",
        naming: Naming::GicSmp,
        on: &[
            (
                V3_VHE,
                "two 2-vCPU SMP VMs sharing 2 pCPUs: both pass, lines prefixed per VM",
            ),
            (
                V3_VHE.smp(4),
                "two 2-vCPU SMP VMs on 4 pCPUs, the second pinned to pCPUs 2 and 3",
            ),
            (
                V2_NVHE,
                "two 2-vCPU SMP VMs sharing 2 pCPUs on vGICv2, cortex-a72",
            ),
            (
                V2_NVHE.smp(4),
                "two 2-vCPU SMP VMs on 4 pCPUs (second pinned to 2, 3), vGICv2, cortex-a72",
            ),
        ],
        case: Case {
            vms: &["smp2", "smp2b"],
            timeout_s: 60,
            expect: TWO_SMP2_LINES,
            reject: &["SMP FAIL"],
            ..FROM_CONFIG
        },
        // With 4 pCPUs the second VM is pinned to the two the first does not use.
        tweak: Some(|cfg, c| match cfg.cpus {
            4 => Case {
                vms: &["smp2", "smp2b-cpu23"],
                ..c
            },
            _ => c,
        }),
    }),
    Matrix(Scenario {
        name: "isolation{cfg}",
        naming: Naming::Gic,
        on: &[
            (
                V3_VHE,
                "a VM probing IPAs outside its RAM (other VMs' host RAM too) gets aborts; a heartbeat VM beats on",
            ),
            (
                V2_NVHE,
                "the isolation probe next to a heartbeat VM on vGICv2, cortex-a72",
            ),
        ],
        case: Case {
            vms: &["probe", "heartbeat"],
            timeout_s: 60,
            expect: ISOLATION_LINES,
            reject: &["PROBE FAIL", "HB FAIL"],
            ..FROM_CONFIG
        },
        tweak: None,
    }),
    Matrix(Scenario {
        name: "vm-reset{cfg}",
        naming: Naming::Gic,
        on: &[
            (
                V3_VHE,
                "one VM resets itself (PSCI SYSTEM_RESET) and finishes while another keeps beating",
            ),
            (V2_NVHE, "as vm-reset-gicv3 on GICv2, cortex-a72 (non-VHE)"),
        ],
        case: Case {
            vms: &["heartbeat-reset", "heartbeat"],
            timeout_s: 60,
            expect: &[
                "[hb-reset] HB: SYSTEM_RESET after beat 5",
                "[hb-reset] HB: heartbeat: beats=10 period=100 ms reset-at=Some(5) reset-count=Some(1)",
                "[hb-reset] HB PASS: system-reset",
                "[hb-reset] HB RESULT: passed=2 failed=0",
                "[hb] HB: beat 30",
                "[hb] HB PASS: beats",
                "[hb] HB RESULT: passed=1 failed=0",
                "all VMs stopped; powering off",
            ],
            reject: &["HB FAIL"],
            ..FROM_CONFIG
        },
        tweak: None,
    }),
    Matrix(Scenario {
        name: "leak{cfg}",
        naming: Naming::Gic,
        on: &[
            (
                V3_VHE,
                "a VM plants GIC active priorities (ICC_AP0R0_EL1 = 1), settings and DISR_EL1, then powers off; another on the same pCPU never sees them and keeps its interrupts",
            ),
            (
                V3_NVHE,
                "the cross-VM leak test on vGICv3 with the non-VHE path forced (elvisor.vhe=off)",
            ),
            (
                V2_NVHE,
                "the cross-VM leak test on vGICv2 (GICC_APR, GICV settings), cortex-a72: no DISR_EL1",
            ),
        ],
        case: Case {
            vms: &["spy-plant", "spy-watch"],
            timeout_s: 60,
            expect: LEAK_V3_LINES,
            reject: &["SPY FAIL", "PLANT FAIL"],
            ..FROM_CONFIG
        },
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                expect: &[
                    "[plant] PLANT PASS: planted",
                    "[plant] PLANT RESULT: passed=1 failed=0",
                    "[spy] SPY PASS: clean-gicc-apr",
                    "[spy] SPY PASS: clean-settings",
                    "[spy] SPY PASS: vtimer-delivery",
                    "[spy] SPY PASS: irq-after-plant",
                    "[spy] SPY RESULT: passed=4 failed=0",
                    "all VMs stopped; powering off",
                ],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Matrix(Scenario {
        name: "leak-all{cfg}",
        naming: Naming::Gic,
        on: &[
            (
                V3_VHE,
                "a VM writes a tagged marker into every system register it can write (op0 2 and 3) and powers off; another on the same pCPU reads every readable one every 5 ms and never sees the tag",
            ),
            (
                V3_NVHE,
                "the every-register leak test with the non-VHE path forced (elvisor.vhe=off)",
            ),
            (
                V2_NVHE,
                "the every-register leak test on vGICv2, cortex-a72 (no ICC_* system registers, no DISR_EL1)",
            ),
        ],
        case: Case {
            vms: &["spy-plant-all", "spy-watch-all"],
            timeout_s: 60,
            expect: LEAK_ALL_LINES,
            reject: &["SPY FAIL", "PLANT FAIL"],
            ..FROM_CONFIG
        },
        tweak: None,
    }),
    Matrix(Scenario {
        name: "cpufeat{cfg}",
        naming: Naming::GicVheOnV3,
        on: &[
            (
                V3_VHE,
                "CPU honesty, -cpu max, VHE: each feature the ID registers advertise works (SVE, MOPS, RAS, MTE insns), each one hidden UNDEFs (SME, PAuth, NMI, SCXTNUM, WFxT, MMFR3 registers)",
            ),
            (
                V3_NVHE,
                "the CPU honesty guest on -cpu max with the non-VHE path forced (elvisor.vhe=off)",
            ),
            (
                V2_NVHE,
                "the CPU honesty guest on a Cortex-A72 (ARMv8.0: every optional feature absent, each must UNDEF), vGICv2",
            ),
        ],
        case: Case {
            vms: &["cpufeat"],
            timeout_s: 60,
            expect: CPUFEAT_MAX_LINES,
            reject: &["CPUFEAT FAIL"],
            ..FROM_CONFIG
        },
        // The Cortex-A72 has none of -cpu max's optional features.
        tweak: Some(|cfg, c| match cfg.vhe {
            Vhe::Absent => Case {
                expect: CPUFEAT_A72_LINES,
                ..c
            },
            Vhe::On | Vhe::ForcedOff => c,
        }),
    }),
    // The last-resort paths, on build/elvisor-selftest.img: CPU 0 (or 1) fails on purpose
    // 500 ms after every CPU is online, while a heartbeat VM beats on another CPU; the report
    // must say what happened, every CPU must park, and no beat may follow the halted line.
    Matrix(Scenario {
        name: "lastresort-panic{cfg}",
        naming: Naming::Quiet,
        on: &[
            (
                V3_VHE.smp(4),
                "a hypervisor panic on cpu0 (4 CPUs, two idle): report, backtrace, every CPU parked, the guest on cpu1 stops",
            ),
            (
                V2_NVHE.smp(4),
                "lastresort-panic on GICv2, cortex-a72 (non-VHE): the kicks that park the others go through GICD_SGIR",
            ),
        ],
        case: lastresort(
            &["heartbeat-cpu1"],
            Some("elvisor.selftest=panic"),
            &[
                "HB: beat 2",
                "selftest: cpu0: panic now",
                "elvisor: PANIC on cpu0: panicked at",
                "selftest: a hypervisor panic on purpose",
                "backtrace:",
                "  #0  0x",
                "halted (cpu0 failed)",
                "halted (cpu0 failed)",
                "halted (cpu0 failed)",
                HALTED,
            ],
            PANIC_WORDS,
        ),
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                expect: &[
                    "HB: beat 2",
                    "selftest: cpu0: panic now",
                    "elvisor: PANIC on cpu0: panicked at",
                    "backtrace:",
                    "  #0  0x",
                    "halted (cpu0 failed)",
                    "halted (cpu0 failed)",
                    "halted (cpu0 failed)",
                    HALTED,
                ],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Single(Case {
        name: "lastresort-panic-secondary",
        about: "a panic on cpu1 parks the boot CPU, whose guest stops beating",
        machine: VIRT_V3_VHE,
        ..lastresort(
            &["heartbeat"],
            Some("elvisor.selftest=panic-secondary"),
            &[
                "HB: beat 2",
                "selftest: cpu1: panic-secondary now",
                "elvisor: PANIC on cpu1: panicked at",
                "backtrace:",
                "  #0  0x",
                "elvisor: cpu0 halted (cpu1 failed)",
                HALTED,
            ],
            PANIC_WORDS,
        )
    }),
    Matrix(Scenario {
        name: "lastresort-stack-overflow{cfg}",
        naming: Naming::Quiet,
        on: &[
            (
                V3_VHE,
                "unbounded recursion on cpu0 hits the guard page below its stack and is reported as a stack overflow",
            ),
            (
                V2_NVHE,
                "lastresort-stack-overflow on GICv2, cortex-a72 (non-VHE EL2 map)",
            ),
        ],
        case: lastresort(
            &["heartbeat-cpu1"],
            Some("elvisor.selftest=stack-overflow"),
            &[
                "HB: beat 2",
                "selftest: cpu0: stack-overflow now",
                "elvisor: FATAL on cpu0: stack overflow on cpu0 (guard page at 0x",
                "  synchronous exception: ESR_EL2=0x96",
                "backtrace:",
                "  #0  0x",
                "elvisor: cpu1 halted (cpu0 failed)",
                HALTED,
            ],
            FATAL_WORDS,
        ),
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                expect: &[
                    "HB: beat 2",
                    "selftest: cpu0: stack-overflow now",
                    "elvisor: FATAL on cpu0: stack overflow on cpu0 (guard page at 0x",
                    "elvisor: cpu1 halted (cpu0 failed)",
                    HALTED,
                ],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Matrix(Scenario {
        name: "lastresort-write-text{cfg}",
        naming: Naming::Quiet,
        on: &[
            (
                V3_VHE,
                "a store to hypervisor text takes a permission fault, reported as a W^X violation",
            ),
            (
                V2_NVHE,
                "lastresort-write-text on GICv2, cortex-a72 (non-VHE EL2 map)",
            ),
        ],
        case: lastresort(
            &["heartbeat-cpu1"],
            Some("elvisor.selftest=write-text"),
            &[
                "HB: beat 2",
                "selftest: cpu0: write-text now",
                "elvisor: FATAL on cpu0: write to hypervisor text at 0x",
                " (W^X)",
                "  synchronous exception: ESR_EL2=0x96",
                "backtrace:",
                "elvisor: cpu1 halted (cpu0 failed)",
                HALTED,
            ],
            FATAL_WORDS,
        ),
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                expect: &[
                    "HB: beat 2",
                    "elvisor: FATAL on cpu0: write to hypervisor text at 0x",
                    " (W^X)",
                    "elvisor: cpu1 halted (cpu0 failed)",
                    HALTED,
                ],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Matrix(Scenario {
        name: "lastresort-exec-data{cfg}",
        naming: Naming::Quiet,
        on: &[
            (
                V3_VHE,
                "a branch into hypervisor data takes an instruction abort, reported as a W^X violation",
            ),
            (
                V2_NVHE,
                "lastresort-exec-data on GICv2, cortex-a72 (non-VHE EL2 map)",
            ),
        ],
        case: lastresort(
            &["heartbeat-cpu1"],
            Some("elvisor.selftest=exec-data"),
            &[
                "HB: beat 2",
                "selftest: cpu0: exec-data now",
                "elvisor: FATAL on cpu0: instruction fetch from hypervisor data at 0x",
                " (W^X)",
                "  synchronous exception: ESR_EL2=0x86",
                "backtrace:",
                "elvisor: cpu1 halted (cpu0 failed)",
                HALTED,
            ],
            FATAL_WORDS,
        ),
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                expect: &[
                    "HB: beat 2",
                    "elvisor: FATAL on cpu0: instruction fetch from hypervisor data at 0x",
                    " (W^X)",
                    "elvisor: cpu1 halted (cpu0 failed)",
                    HALTED,
                ],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Matrix(Scenario {
        name: "hostile{cfg}",
        naming: Naming::GicVhe,
        on: &[
            (
                V3_VHE.icount(),
                "guests/hostile, 1 vCPU, seed 0x5eed0001, 100k random ops with every register checked, under -icount; victims on pCPU 0 and 1 beat every 10 ms (<= 20 ms late in guest time) with their RAM checksummed",
            ),
            (
                V3_NVHE.icount(),
                "the hostile run (seed 0x5eed0004) on GICv3 with the non-VHE path forced, -icount, victim on pCPU 0 and 1",
            ),
            (
                V2_NVHE.icount(),
                "the hostile run (seed 0x5eed0002) on GICv2, cortex-a72 (non-VHE), -icount, victims on pCPU 0 and 1",
            ),
        ],
        case: Case {
            vms: &["hostile", "victim", "victim-cpu1"],
            timeout_s: 120,
            expect: HOSTILE_LINES,
            reject: HOSTILE_REJECT,
            ..FROM_CONFIG
        },
        // Each configuration attacks with its own seed.
        tweak: Some(|cfg, c| match cfg.vhe {
            Vhe::On => c,
            Vhe::ForcedOff => Case {
                vms: &["hostile-c", "victim", "victim-cpu1"],
                ..c
            },
            Vhe::Absent => Case {
                vms: &["hostile-b", "victim", "victim-cpu1"],
                ..c
            },
        }),
    }),
    Matrix(Scenario {
        name: "hostile-smp{cfg}",
        naming: Naming::Gic,
        on: &[
            (
                V3_VHE,
                "4 hostile vCPUs on 2 pCPUs attacking at once (seed 0x5eed0003, 100k ops, CPU_ON/CPU_OFF races), victim on pCPU 0 (wall time: <= 2 s late)",
            ),
            (
                V2_NVHE,
                "4 hostile vCPUs at once on GICv2, cortex-a72 (seed 0x5eed0005), victim on pCPU 0",
            ),
        ],
        case: Case {
            vms: &["hostile-smp", "victim-smp"],
            timeout_s: 120,
            expect: HOSTILE_SMP_LINES,
            reject: HOSTILE_REJECT,
            ..FROM_CONFIG
        },
        // Each configuration attacks with its own seed.
        tweak: Some(|cfg, c| match cfg.gic {
            Gic::V2 => Case {
                vms: &["hostile-smp-b", "victim-smp"],
                ..c
            },
            Gic::V3 => c,
        }),
    }),
    Single(Case {
        name: "soak-reset-1000",
        about: "lifecycle soak: a 16 MiB VM resets itself 1000 times (fresh RAM and image each boot) next to heartbeats on both CPUs; no frame or heap leak, resets not slower at the end (check::check_soak)",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["resetter", "soak-heartbeat", "soak-heartbeat-cpu0"],
        bootargs: Some("elvisor.lifecycle-stats=1"),
        timeout_s: 240,
        expect: SOAK_RESET_LINES,
        reject: &["RESETTER FAIL", "HB FAIL"],
        exit: Exit::KillAfter(SOAK_RESET_DONE),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(Case {
        name: "soak-reset-200-gicv2",
        about: "the lifecycle soak with 200 resets on GICv2, cortex-a72 (non-VHE)",
        machine: VIRT_V2_NVHE,
        boot: Boot::Direct,
        vms: &["soak-resetter-200", "soak-heartbeat", "soak-heartbeat-cpu0"],
        bootargs: Some("elvisor.lifecycle-stats=1"),
        timeout_s: 120,
        expect: SOAK_RESET_LINES,
        reject: &["RESETTER FAIL", "HB FAIL"],
        exit: Exit::KillAfter(SOAK_RESET_DONE),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(Case {
        name: "soak-linux-reboot",
        about: "lifecycle soak: Debian's Linux (1 vCPU, 64 MiB) reboots itself 100 times (reboot -f: PSCI SYSTEM_RESET) next to a heartbeat on the other CPU; no leak, reboots not slower",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["linux-soak", "soak-heartbeat"],
        bootargs: Some("elvisor.lifecycle-stats=1"),
        // 230-360 s on an idle 2-core machine; each boot now unpacks a larger initramfs (the
        // ext4 modules), and a loaded machine has taken longer than 420 s.
        timeout_s: 600,
        expect: &[
            "[linux] INIT: soak: boot after reset 0 of ",
            "[linux] INIT: soak: done after ",
            SOAK_LINUX_DONE,
            "[hb1] HB: beat",
        ],
        reject: SOAK_LINUX_REJECT,
        exit: Exit::KillAfter(SOAK_LINUX_DONE),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Matrix(Scenario {
        name: "linux{cfg}",
        naming: Naming::Gic,
        on: &[
            (
                V3_VHE,
                "Debian's arm64 Linux 6.1 with a busybox initramfs, 2 vCPUs, vGICv3, -cpu max",
            ),
            (
                V2_NVHE,
                "Debian's arm64 Linux 6.1 with a busybox initramfs, 2 vCPUs, vGICv2, cortex-a72",
            ),
        ],
        case: Case {
            vms: &["linux"],
            timeout_s: 120,
            expect: LINUX_LINES,
            reject: LINUX_REJECT,
            ..FROM_CONFIG
        },
        tweak: None,
    }),
    Single(Case {
        name: "memory-pieces-gicv3",
        about: "Linux with 600 MiB on the 1 GiB machine (RAM in several host pieces) next to a heartbeat VM whose RAM is at a fixed host address",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["linux-600m"],
        bootargs: None,
        timeout_s: 120,
        expect: &[
            "vm0 (linux): 600 MiB at host 0x",
            "vm1 (hb1): 32 MiB at host 0x7c000000 ",
            "Booting Linux on physical CPU 0x0000000000",
            "/614400K available",
            "INIT: uname=6.1",
            "INIT: done",
            "reboot: Power down",
            "all VMs stopped; powering off",
        ],
        reject: LINUX_REJECT,
        exit: Exit::Status(0),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(Case {
        name: "linux-direct-map-gicv3",
        about: "Linux whose RAM is direct-mapped (guest-physical = host-physical 0x70000000, elvisor,host-address + elvisor,direct-map); GICv3, VHE",
        machine: VIRT_V3_VHE,
        boot: Boot::Direct,
        vms: &["linux-direct"],
        bootargs: None,
        timeout_s: 120,
        expect: &[
            "vm0 (linux): 256 MiB at host 0x70000000 ",
            "dtb 0x7fe00000",
            "Booting Linux on physical CPU 0x0000000000",
            "[mem 0x0000000070000000-0x000000007fffffff]",
            "INIT: nproc=2",
            "INIT: done",
            "reboot: Power down",
            "all VMs stopped; powering off",
        ],
        reject: LINUX_REJECT,
        exit: Exit::Status(0),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }),
    Single(crate::cases_virtio::VIRTIO_GICV3),
    Single(crate::cases_virtio::VIRTIO_GICV2),
    Matrix(crate::cases_virtio::VIRTIO_RESTART),
    Matrix(crate::cases_virtio::LINUX_VIRTIO),
    Matrix(crate::cases_ext4::LINUX_EXT4),
    Matrix(crate::cases_shmem::SHMEM),
    Matrix(crate::cases_ivshmem::LINUX_IVSHMEM),
    Matrix(crate::cases_net::NET),
    Matrix(crate::cases_net::LINUX_NET),
    Matrix(crate::cases_net::NET_HOSTILE_LINUX),
    Matrix(crate::cases_power::IRQ_BUTTON),
    Matrix(crate::cases_power::LINUX_BUTTON),
    Matrix(crate::cases_sve::SVE),
    Single(crate::cases_sve::SVE_OFF_GICV2),
    Single(crate::cases_sve::BAD_CONFIG_SVE),
];

const IRQ_LINES: &[&str] = &[
    "IRQ PASS: gic-id",
    "IRQ PASS: lr-overflow",
    "IRQ PASS: eoimode1",
    "IRQ PASS: vtimer",
    "IRQ PASS: ptimer",
    "IRQ PASS: wfi-wakes",
    "IRQ PASS: vtimer-level",
    "IRQ RESULT: passed=11 failed=0",
    "all VMs stopped; powering off",
];

/// The 4-vCPU SMP VM alone (no per-VM prefix): every check, the race included, passes.
const SMP4_LINES: &[&str] = &[
    "SMP PASS: mpidr",
    "SMP PASS: cpu-on-invalid-address",
    "SMP PASS: cpu-on",
    "SMP PASS: race",
    "SMP PASS: sgi-ping-pong",
    "SMP PASS: sgi-broadcast",
    "SMP PASS: cpu-on-after-off",
    "SMP RESULT: passed=19 failed=0",
    "all VMs stopped; powering off",
];

/// Two 2-vCPU SMP VMs: their lines interleave in any order, so the RESULT line is expected
/// twice (each VM prints one, and any FAIL line is rejected), both with a "[name] " prefix.
const TWO_SMP2_LINES: &[&str] = &[
    "] SMP RESULT: passed=18 failed=0",
    "] SMP RESULT: passed=18 failed=0",
    "all VMs stopped; powering off",
];

/// The probe VM finishes within a second; the heartbeat VM beats for three.
const ISOLATION_LINES: &[&str] = &[
    "[probe] PROBE PASS: read 0x50000000",
    "[probe] PROBE PASS: write 0x70000000",
    "[probe] PROBE RESULT: passed=16 failed=0",
    "[hb] HB: beat 30",
    "[hb] HB RESULT: passed=1 failed=0",
    "all VMs stopped; powering off",
];

/// The leak test on GICv3 (`-cpu max`, 5 priority bits: one active-priorities register per
/// group; FEAT_RAS: DISR_EL1). The planter is done after 300 ms, the watcher after 1.5 s.
const LEAK_V3_LINES: &[&str] = &[
    "[plant] PLANT PASS: planted",
    "[plant] PLANT RESULT: passed=1 failed=0",
    "[spy] SPY PASS: clean-icc-ap0r0",
    "[spy] SPY PASS: clean-icc-ap1r0",
    "[spy] SPY PASS: clean-disr",
    "[spy] SPY PASS: clean-settings",
    "[spy] SPY PASS: vtimer-delivery",
    "[spy] SPY PASS: irq-after-plant",
    "[spy] SPY RESULT: passed=6 failed=0",
    "all VMs stopped; powering off",
];

/// The every-register leak test: the planter's markers must take somewhere (`planted-all`),
/// and the watcher must see none of them while keeping its timer interrupts.
const LEAK_ALL_LINES: &[&str] = &[
    "[plant-all] PLANT PASS: planted-all",
    "[plant-all] PLANT RESULT: passed=1 failed=0",
    "[spy-all] SPY PASS: clean-all",
    "[spy-all] SPY PASS: vtimer-delivery",
    "[spy-all] SPY PASS: irq-after-plant",
    "[spy-all] SPY RESULT: passed=3 failed=0",
    "all VMs stopped; powering off",
];

/// The cpufeat guest on `-cpu max` under elvisor: SVE, MOPS, RAS and MTE (instructions only)
/// advertised and working; SME, PAuth, NMI, SCXTNUM (CSV2 capped at 1), WFxT and every
/// ID_AA64MMFR3_EL1 feature hidden and UNDEFINED (WFIT where it traps at all).
const CPUFEAT_MAX_LINES: &[&str] = &[
    "CPUFEAT: sme: ID_AA64PFR1_EL1.SME=0: not advertised",
    "CPUFEAT PASS: sme",
    "CPUFEAT PASS: sve",
    "CPUFEAT: wfxt: ID_AA64ISAR2_EL1.WFxT=0: not advertised",
    "CPUFEAT PASS: wfxt",
    "CPUFEAT: mops: ID_AA64ISAR2_EL1.MOPS=1: advertised",
    "CPUFEAT PASS: mops",
    "CPUFEAT PASS: ras",
    "CPUFEAT: csv2-scxtnum: ID_AA64PFR0_EL1.CSV2=1 ID_AA64PFR1_EL1.CSV2_frac=0",
    "CPUFEAT PASS: csv2-scxtnum",
    "CPUFEAT PASS: pauth",
    "CPUFEAT PASS: pauth-hint",
    "CPUFEAT PASS: nmi",
    "CPUFEAT: mte: ID_AA64PFR1_EL1.MTE=1",
    "CPUFEAT PASS: mte",
    "CPUFEAT PASS: ls64",
    "CPUFEAT PASS: aie",
    "CPUFEAT RESULT: passed=16 failed=0",
    "all VMs stopped; powering off",
];

/// The cpufeat guest on a Cortex-A72 under elvisor: nothing optional to advertise, every probe
/// UNDEFINED (the hardware's own answer).
const CPUFEAT_A72_LINES: &[&str] = &[
    "CPUFEAT PASS: sme",
    "CPUFEAT: wfxt: ID_AA64ISAR2_EL1.WFxT=0: not advertised",
    "CPUFEAT PASS: wfxt",
    "CPUFEAT PASS: ras",
    "CPUFEAT PASS: pauth",
    "CPUFEAT PASS: aie",
    "CPUFEAT RESULT: passed=16 failed=0",
    "all VMs stopped; powering off",
];

/// A hostile run next to two victims: the attack ends first (about 3.6 s of guest time), the
/// victims beat for 4 s; any FAIL line (a corrupted register, a read from outside the VM, a
/// late beat, changed memory) is rejected.
const HOSTILE_LINES: &[&str] = &[
    "[hostile] HOSTILE: seed=",
    "[hostile] HOSTILE RESULT: passed=100000 failed=0 ops=100000",
    "HB PASS: beats",
    "HB PASS: memory",
    "HB PASS: beats",
    "HB PASS: memory",
    "all VMs stopped; powering off",
];

/// The 4-vCPU attack and its victim: the victim may end before or after the attack.
const HOSTILE_SMP_LINES: &[&str] = &[
    "[hostile] HOSTILE: seed=",
    "[hostile] HOSTILE: race: ",
    "[hostile] HOSTILE RESULT: passed=100000 failed=0 ops=100000",
    "all VMs stopped; powering off",
];

/// What a hostile run must never print besides [`ALWAYS_REJECT`]: QEMU's own assertion
/// failures (its GIC emulation has aborted on guest-reachable states; QEMU's exit status fails
/// the case too), a VM stopped by an SError, an unknown exception or a CPU_OFF of its last
/// vCPU, a failed reset. (QEMU's "icount sleep disabled and no active timers" warning, printed
/// when every CPU idles at the end of a GICv2 run, is harmless.)
const HOSTILE_REJECT: &[&str] = &[
    "Assertion",
    "stopped: SError",
    "stopped: every vCPU is off",
    "stopped: unexpected exception class",
    "reset failed",
];

/// The Linux VM's /init output (scripts/mkinitramfs), after the kernel's own boot log.
const LINUX_LINES: &[&str] = &[
    "Booting Linux on physical CPU 0x0000000000",
    // Seeded from the /chosen/rng-seed elvisor puts in every guest DT: the CRNG is ready at
    // once, even on a Cortex-A72 without RNDR (before, it never initialised there).
    "random: crng init done",
    // The guest PMU (elvisor,pmu defaults to on): Linux's armv8-pmu driver probes the
    // "arm,armv8-pmuv3" node and reads PMCR_EL0.N through the trapped emulation.
    "hw perfevents: enabled with armv8_pmuv3",
    "INIT: nproc=2",
    "arch_timer",
    "IPI",
    "INIT: uname=6.1",
    "INIT: done",
    "reboot: Power down",
    "all VMs stopped; powering off",
];

/// The resetter VM has powered off: the heartbeats are still beating, and the harness stops
/// QEMU a moment later (they would beat for hours).
const SOAK_RESET_DONE: &str = "vm0 (reset) stopped: PSCI SYSTEM_OFF";
const SOAK_RESET_LINES: &[&str] = &[
    "[reset] RESETTER: boot after reset 0 of ",
    "[reset] RESETTER PASS: resets",
    "[reset] RESETTER RESULT: passed=1 failed=0",
    SOAK_RESET_DONE,
    // Still beating after the soak, on both CPUs.
    "[hb1] HB: beat",
    "[hb0] HB: beat",
];
const SOAK_LINUX_DONE: &str = "vm0 (linux) stopped: PSCI SYSTEM_OFF";
const SOAK_LINUX_REJECT: &[&str] = &[
    "Kernel panic",
    "Internal error:",
    "Unable to handle kernel",
    "BUG:",
    "Oops",
    "HB FAIL",
];

/// A check of the whole log after the expected lines, for the cases that need more than
/// substrings: the lifecycle soaks (their figures are judged here, not by the hypervisor).
/// On success it returns a summary of the figures, which the harness prints.
pub type LogCheck = fn(&str) -> Result<String, String>;

pub fn log_check(case: &str) -> Option<LogCheck> {
    match case {
        "soak-reset-1000" | "soak-reset-200-gicv2" => Some(|log| {
            let n = crate::check::number_after(log, "[reset] RESETTER: boot after reset 0 of ")
                .ok_or("the resetter never said how many resets it makes")?;
            crate::check::check_soak(log, "reset", n, SOAK_RESET_LIMITS)
        }),
        // The fixed-address VM ran to its end, whenever that fell in Linux's boot.
        "memory-pieces-gicv3" => Some(|log| {
            if log.contains("[hb1] HB RESULT: passed=1 failed=0") {
                Ok("hb1 (RAM at 0x7c000000) beat to the end".into())
            } else {
                Err("the heartbeat VM with its RAM at a fixed host address did not pass".into())
            }
        }),
        // hb waits in WFI, alone on cpu0, between beats a second apart: that wait is idle time.
        "shell-gicv3" | "shell-gicv2" => Some(crate::cases_shell::shell_checks),
        "soak-linux-reboot" => Some(|log| {
            let n = crate::check::number_after(log, "[linux] INIT: soak: boot after reset 0 of ")
                .ok_or("/init never said how many reboots it makes")?;
            crate::check::check_soak(log, "linux", n, SOAK_LINUX_LIMITS)
        }),
        _ => None,
    }
}

/// 100 resets at each end of the run (a fifth of a shorter run), and the fastest of them at
/// the end at most 2.5x the fastest at the start: see check::check_soak for why so loose.
const SOAK_RESET_LIMITS: crate::check::SoakLimits = crate::check::SoakLimits {
    window: 100,
    max_slowdown: 2.5,
};
/// Linux reboots: 20 at each end (of 100).
const SOAK_LINUX_LIMITS: crate::check::SoakLimits = crate::check::SoakLimits {
    window: 20,
    max_slowdown: 2.5,
};

/// What a Linux boot must not print.
const LINUX_REJECT: &[&str] = &[
    "Kernel panic",
    "Internal error:",
    "Unable to handle kernel",
    "BUG:",
    "Oops",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_file_safe() {
        let all = all();
        for (i, a) in all.iter().enumerate() {
            assert!(
                a.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{}",
                a.name
            );
            assert!(all[i + 1..].iter().all(|b| b.name != a.name), "{}", a.name);
        }
    }

    #[test]
    fn allowed_words_come_from_always_reject_and_are_expected() {
        for c in all() {
            for a in c.allow {
                assert!(
                    ALWAYS_REJECT.contains(a),
                    "{}: {a} is not rejected anyway",
                    c.name
                );
                assert!(
                    c.expect.iter().any(|e| e.contains(a)),
                    "{}: allows {a} but does not expect it",
                    c.name
                );
            }
            if !c.reject_after_exit.is_empty() {
                assert!(
                    matches!(c.exit, Exit::KillAfter(_)),
                    "{}: reject_after_exit needs a KillAfter line",
                    c.name
                );
            }
        }
    }

    #[test]
    fn rejects_drop_only_what_the_case_allows() {
        let c = all().iter().find(|c| c.name == "lastresort-panic").unwrap();
        let r = c.rejects();
        assert!(!r.contains(&"PANIC") && !r.contains(&"panicked"));
        assert!(r.contains(&"FATAL") && r.contains(&"FAIL"));
        assert!(r.contains(&"all VMs stopped"));
        assert_eq!(c.image, Image::Selftest);
        let smoke = all().iter().find(|c| c.name.starts_with("virt-")).unwrap();
        assert_eq!(
            smoke.rejects()[..ALWAYS_REJECT.len()],
            ALWAYS_REJECT[..],
            "a case without `allow` rejects everything"
        );
        assert_eq!(smoke.image.path(), "build/elvisor.img");
    }

    #[test]
    fn every_case_names_a_machine_and_an_expectation() {
        for c in all() {
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
