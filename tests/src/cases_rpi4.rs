//! System tests on QEMU `raspi4b` (boards/rpi4): BCM2711, RAM from 0, four Cortex-A72 (no VHE),
//! GIC-400 (GICv2 with 4 list registers), spin-table secondaries, no PSCI. The same
//! build/elvisor.img as on QEMU virt, loaded at 0x8_0000; the host DTB is Debian's
//! bcm2711-rpi-4-b.dtb as boards/rpi4/qemu-dtb prepares it, with the VMs added by scripts/mkdtb
//! (modules from 0x1000_0000). With no PSCI the machine cannot power off: every run ends with
//! the hypervisor's halted line, and the harness stops QEMU on it.

use crate::cases::{Boot, Case, Exit, Image};

/// The board: QEMU builds its 2 GiB, 4-core raspi4b (the memory node it writes says 960 MiB).
const RASPI4B: &[&str] = &["-M", "raspi4b"];

/// Printed when the last VM has stopped and there is no PSCI SYSTEM_OFF to call.
pub const MACHINE_HALTED: &str = "elvisor: halted: no PSCI SYSTEM_OFF to power off with";

/// What the hypervisor prints about the board before any VM runs: loaded at 0x8_0000, every
/// CPU, the GIC-400 with its virtualization interface, the PL011 found through the serial0
/// alias (stdout-path names the mini-UART), no PSCI.
macro_rules! rpi4_boot_lines {
    ($($tail:expr),* $(,)?) => {
        &[
            "running in non-VHE mode (E2H=0): the CPU has no VHE",
            "ram: 0x0..0x3c000000",
            "image: 0x80000..",
            "cpus: 4 (0x0 0x1 0x2 0x3)",
            "gic: GICv2, GICD 0xff841000, GICC 0xff842000, GICH 0xff844000, GICV 0xff846000",
            "uart /soc/serial@7e201000 at 0xfe201000; psci none",
            "GIC up: 4 list registers",
            $($tail,)*
        ]
    };
}

const fn rpi4(
    name: &'static str,
    about: &'static str,
    vms: &'static [&'static str],
    timeout_s: u64,
    expect: &'static [&'static str],
    reject: &'static [&'static str],
) -> Case {
    Case {
        name,
        about,
        machine: RASPI4B,
        boot: Boot::Direct,
        vms,
        bootargs: None,
        timeout_s,
        expect,
        reject,
        exit: Exit::KillAfter(MACHINE_HALTED),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        // Nothing may run after the machine said it halted.
        reject_after_exit: &["SMOKE", "IRQ", "SMP", "HB:", "INIT:"],
    }
}

pub const CASES: &[Case] = &[
    rpi4(
        "rpi4-smoke",
        "raspi4b: the virt image boots at 0x8_0000, finds the board, starts all 4 CPUs (spin table); smoke VM passes; halted line",
        &["smoke"],
        60,
        rpi4_boot_lines![
            // (cpu1..cpu3 up, in any order: see log_check)
            "SMOKE RESULT: passed=",
            "failed=0",
            "all VMs stopped; powering off",
            MACHINE_HALTED,
        ],
        &["SMOKE FAIL", "did not start"],
    ),
    rpi4(
        "rpi4-irq",
        "raspi4b: the interrupt guest (vGIC on GICv2, timers at 62.5 MHz): all ten IRQ tests pass",
        &["irq"],
        90,
        rpi4_boot_lines![
            "IRQ PASS: gic-id",
            "IRQ PASS: lr-overflow",
            "IRQ PASS: eoimode1",
            "IRQ PASS: vtimer",
            "IRQ PASS: ptimer",
            "IRQ PASS: wfi-wakes",
            "IRQ RESULT: passed=11 failed=0",
            "all VMs stopped; powering off",
            MACHINE_HALTED,
        ],
        &["panicked", "PANIC", "FATAL", "IRQ FAIL"],
    ),
    rpi4(
        "rpi4-smp4",
        "raspi4b: a 4-vCPU SMP guest, one vCPU per core (PSCI CPU_ON/OFF, races, SGIs across cores)",
        &["smp"],
        90,
        rpi4_boot_lines![
            "SMP PASS: mpidr",
            "SMP PASS: cpu-on",
            "SMP PASS: race",
            "SMP PASS: sgi-ping-pong",
            "SMP PASS: sgi-broadcast",
            "SMP RESULT: passed=19 failed=0",
            "all VMs stopped; powering off",
            MACHINE_HALTED,
        ],
        &["SMP FAIL"],
    ),
    rpi4(
        "rpi4-two-vms",
        "raspi4b: two 2-vCPU SMP VMs at once, on cores 0-1 and 2-3",
        &["smp2", "smp2b"],
        90,
        rpi4_boot_lines![
            "] SMP RESULT: passed=18 failed=0",
            "] SMP RESULT: passed=18 failed=0",
            "all VMs stopped; powering off",
            MACHINE_HALTED,
        ],
        &["SMP FAIL"],
    ),
    rpi4(
        "rpi4-linux",
        "raspi4b: Debian's Linux as a 2-vCPU guest on cores 0-1 next to a bare-metal heartbeat VM on core 2",
        &["linux", "heartbeat-cpu23"],
        180,
        rpi4_boot_lines![
            "Booting Linux on physical CPU 0x0000000000",
            "INIT: nproc=2",
            "INIT: uname=6.1",
            "INIT: done",
            "reboot: Power down",
            // (the heartbeat's result may come before or after Linux's: see log_check)
            "all VMs stopped; powering off",
            MACHINE_HALTED,
        ],
        &[
            "Kernel panic",
            "Internal error:",
            "Unable to handle kernel",
            "BUG:",
            "Oops",
            "HB FAIL",
        ],
    ),
    rpi4(
        "rpi4-bad-vm-memory",
        "raspi4b: a VM asking for more RAM than the board has: one line names the node and `memory`, then the halted line",
        &["tests/fixtures/rpi4-vm-too-big.dtsi"],
        30,
        &["/chosen/vm-big", "\"memory\"", MACHINE_HALTED],
        &["SMOKE", "panicked"],
    ),
    rpi4(
        "rpi4-bad-module",
        "raspi4b: a VM whose kernel module was never loaded (all zeros): one line names the node and `reg`, then the halted line",
        &["tests/fixtures/rpi4-vm-not-loaded.dtsi"],
        30,
        &[
            "/chosen/vm-ghost",
            "\"reg\"",
            "is all zeros: nothing was loaded there",
            MACHINE_HALTED,
        ],
        &["SMOKE"],
    ),
    Case {
        name: "rpi4-tfa-smp4",
        about: "raspi4b with TF-A's bl31.bin as the armstub at EL3 (the SD card's boot path): PSCI found in the DT BL31 patched, all 4 CPUs started by PSCI CPU_ON, a 4-vCPU SMP guest passes, the machine powers off through PSCI SYSTEM_OFF",
        machine: RASPI4B,
        boot: Boot::Armstub,
        vms: &["smp"],
        bootargs: None,
        timeout_s: 90,
        expect: &[
            "BL31: Preparing for EL3 exit to normal world",
            "elvisor: elvisor ",
            "running in non-VHE mode (E2H=0): the CPU has no VHE",
            "cpus: 4 (0x0 0x1 0x2 0x3)",
            "uart /soc/serial@7e201000 at 0xfe201000; psci smc",
            "GIC up: 4 list registers",
            "SMP PASS: cpu-on",
            "SMP PASS: sgi-broadcast",
            "SMP RESULT: passed=19 failed=0",
            "all VMs stopped; powering off",
            "PSCI_SYSTEM_OFF",
        ],
        reject: &["SMP FAIL", "psci none", MACHINE_HALTED, "did not start"],
        exit: Exit::Status(0),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    },
    Case {
        boot: Boot::ForeignDtb(crate::cases::VIRT_V3_VHE),
        ..rpi4(
            "rpi4-wrong-board-dtb",
            "raspi4b booted with QEMU virt's DTB: no PL011 answers where it puts the console; one line on the Pi's real console names the node and says the DTB is another board's, then the halted line (its PSCI is not trusted)",
            &["smoke"],
            30,
            &[
                "elvisor: bad configuration: /pl011@9000000 \"reg\": no PL011 answers at 0x9000000",
                "this machine has one at 0xfe201000, as a Raspberry Pi 4 (BCM2711) has",
                "The device tree is another board's, not this machine's",
                MACHINE_HALTED,
            ],
            &["SMOKE", "FATAL"],
        )
    },
];

/// QEMU virt (GICv3, VHE) booted with the Raspberry Pi 4's DTB: the other way round. A virt
/// case, listed apart from the raspi4b ones (the harness chains both lists).
pub const VIRT_CASES: &[Case] = &[Case {
    name: "virt-wrong-board-dtb",
    about: "QEMU virt booted with the Raspberry Pi 4's DTB: its console at 0xfe201000 does not decode (the probe's abort is caught); one line on virt's PL011 names the node and says the DTB is another board's, then the halted line",
    machine: crate::cases::VIRT_V3_VHE,
    boot: Boot::ForeignDtb(RASPI4B),
    vms: &[],
    bootargs: None,
    timeout_s: 30,
    expect: &[
        "elvisor: bad configuration: /soc/serial@7e201000 \"reg\": no PL011 answers at 0xfe201000",
        "this machine has one at 0x9000000, as QEMU virt has",
        "The device tree is another board's, not this machine's",
        MACHINE_HALTED,
    ],
    reject: &["FATAL", "booting at EL2"],
    exit: Exit::KillAfter(MACHINE_HALTED),
    console_input: None,
    image: Image::Normal,
    allow: &[],
    reject_after_exit: &["elvisor:"],
}];

/// Checks no ordered expectation can make: every secondary core came up (spin-table release),
/// in whatever order they report. Applies to every raspi4b case that runs a VM.
pub fn log_check(case: &str) -> Option<crate::cases::LogCheck> {
    let runs_vms = CASES.iter().any(|c| {
        c.name == case && !c.name.starts_with("rpi4-bad-") && !c.name.ends_with("-wrong-board-dtb")
    });
    if case == "rpi4-linux" {
        return Some(linux_next_to_heartbeat);
    }
    runs_vms.then_some(all_cpus_up as crate::cases::LogCheck)
}

fn linux_next_to_heartbeat(log: &str) -> Result<String, String> {
    all_cpus_up(log)?;
    if log.contains("[hb] HB RESULT: passed=1 failed=0") {
        Ok(String::new())
    } else {
        Err("the heartbeat VM next to Linux did not finish with passed=1 failed=0".into())
    }
}

fn all_cpus_up(log: &str) -> Result<String, String> {
    let missing: Vec<String> = (1..4)
        .map(|i| format!("elvisor: cpu{i} up (MPIDR {i:#x})"))
        .filter(|l| !log.contains(l.as_str()))
        .collect();
    if missing.is_empty() {
        Ok(String::new())
    } else {
        Err(format!(
            "secondary cores did not come up: missing {missing:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpi4_cases_are_raspi4b_and_end_on_the_halted_line() {
        // (with TF-A in front, PSCI SYSTEM_OFF ends the run instead)
        for c in CASES.iter().filter(|c| c.boot != Boot::Armstub) {
            assert!(c.name.starts_with("rpi4-"), "{}", c.name);
            assert_eq!(c.machine, RASPI4B, "{}", c.name);
            assert_eq!(c.exit, Exit::KillAfter(MACHINE_HALTED), "{}", c.name);
            assert!(c.expect.contains(&MACHINE_HALTED), "{}", c.name);
            assert!(
                crate::cases::all()
                    .iter()
                    .filter(|v| v.name == c.name)
                    .count()
                    == 1,
                "{} is also a virt case",
                c.name
            );
        }
    }

    #[test]
    fn armstub_cases_power_off_through_psci() {
        let tfa: Vec<_> = CASES.iter().filter(|c| c.boot == Boot::Armstub).collect();
        assert!(!tfa.is_empty());
        for c in tfa {
            assert_eq!(c.exit, Exit::Status(0), "{}", c.name);
            assert!(c.reject.contains(&MACHINE_HALTED), "{}", c.name);
            assert!(
                c.expect.iter().any(|e| e.ends_with("psci smc")),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn all_cpus_up_can_fail() {
        let log = "elvisor: cpu3 up (MPIDR 0x3)\nelvisor: cpu1 up (MPIDR 0x1)\n";
        assert!(all_cpus_up(log).unwrap_err().contains("cpu2"));
        let log = format!("{log}elvisor: cpu2 up (MPIDR 0x2)\n");
        assert!(all_cpus_up(&log).is_ok());
        assert!(log_check("rpi4-smoke").is_some());
        assert!(log_check("rpi4-bad-module").is_none());
        assert!(log_check("virt-gicv3-vhe-direct").is_none());
    }
}
