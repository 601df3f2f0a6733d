//! System cases of the management shell (boards/qemu-virt/vms/shell-hb.dtsi, shell-idle.dtsi):
//! the switch key reaches the shell, which is driven like a person would, typing only after it
//! has seen the answer it waits for: help, list, info, a stop and a start, a reset, mistakes
//! and hostile lines, starting a VM configured not to start by itself, cpus, poweroff. Hooked
//! into [`crate::cases::CASES`] by name; the runner asks [`script`] (through
//! `cases_console::script`) for the typing.

use crate::cases::Case;
use crate::cases_console::Step;
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

/// The default console switch key, Ctrl-], three times.
const SWITCH: &str = "\x1d\x1d\x1d";

/// The typing of a shell case; `None` for every other case.
pub fn script(case: &str) -> Option<&'static [Step]> {
    match case {
        "shell-gicv3" | "shell-gicv2" => Some(SHELL_SCRIPT),
        _ => None,
    }
}

/// A line far longer than the shell takes (128 characters), then Enter.
const LONG_LINE: &str = concat!(
    "stop hbxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r"
);

/// hb runs, idle is not started. Switch: the focus skips idle and reaches the shell. Every
/// command's answer is waited for before the next is typed.
const SHELL_SCRIPT: &[Step] = &[
    Step {
        wait: "[hb] HB: beat 1",
        send: SWITCH,
    },
    Step {
        wait: "elvisor> ",
        send: "help\r",
    },
    Step {
        wait: "three times switches the console.",
        send: "list\r",
    },
    Step {
        wait: "(* has the console",
        send: "info hb\r",
    },
    Step {
        wait: "since start",
        send: "cpus\r",
    },
    Step {
        wait: "(idle: time waiting",
        send: "stop hb\r",
    },
    Step {
        wait: "the machine stays up for the shell",
        send: "list\r",
    },
    Step {
        wait: "(* has the console",
        send: "start hb\r",
    },
    Step {
        wait: "[hb] HB: heartbeat:",
        send: "reset 0\r",
    },
    Step {
        wait: "reset-count=Some(1)",
        send: "lsit\r",
    },
    Step {
        wait: "`help` lists them",
        send: "stop\r",
    },
    Step {
        wait: "stop which VM?",
        send: "stop nosuch\r",
    },
    Step {
        wait: "no VM named or numbered",
        send: "start hb now\r",
    },
    Step {
        wait: "start: unexpected",
        send: LONG_LINE,
    },
    Step {
        wait: "line too long",
        send: "li\x01st\u{e4}\r",
    },
    Step {
        wait: "nothing done (commands are plain ASCII)",
        send: "\x1b[Alog\r",
    },
    Step {
        wait: "log level: info",
        send: "start idle\r",
    },
    // idle powered off with its virtual timer firing (hb.exit-armed): `cpus` now and again
    // two of hb's beats later (1 to 2 s), for `stopped_vm_cpu_idles`.
    Step {
        wait: "vm1 (idle) stopped: PSCI SYSTEM_OFF",
        send: "cpus\r",
    },
    Step {
        wait: "(idle: time waiting",
        send: "",
    },
    Step {
        wait: "] HB: beat ",
        send: "",
    },
    Step {
        wait: "] HB: beat ",
        send: "cpus\r",
    },
    Step {
        wait: "(idle: time waiting",
        send: "poweroff\r",
    },
];

const SHELL_LINES: &[&str] = &[
    "vm1 (idle) is not started (elvisor,autostart = <0>)",
    "console input goes to vm0 (hb); Ctrl-] three times switches",
    "[hb] HB: beat 1",
    "console input goes to the shell",
    "elvisor> help\r\n",
    "  list ",
    "  poweroff ",
    "elvisor> list\r\n",
    "   0 hb    running",
    "   1 idle  not started",
    "elvisor> info hb\r\n",
    "vm0 (hb): running, started 1 time(s), reset 0 time(s)",
    "device pl011",
    "bootargs: hb.beats=100000 hb.period-ms=1000",
    "elvisor> cpus\r\n",
    "cpu0: hb/vcpu0",
    "cpu1: idle/vcpu0 (off); idle ",
    "elvisor> stop hb\r\n",
    "vm0 (hb) stopped: `stop` in the shell",
    "all VMs stopped; the machine stays up for the shell",
    "elvisor> list\r\n",
    "   0 hb    stopped",
    "elvisor> start hb\r\n",
    "vm0 (hb) started (start #2)",
    "[hb] HB: heartbeat: beats=100000",
    "reset-count=Some(0)",
    "elvisor> reset 0\r\n",
    "vm0 (hb): reset from the shell (reset #1)",
    "[hb] HB: heartbeat: beats=100000",
    "reset-count=Some(1)",
    "unknown command \"lsit\"; `help` lists them",
    "stop which VM? (`stop NAME` or `stop INDEX`)",
    "no VM named or numbered \"nosuch\" (`list` shows the 2 VMs)",
    "start: unexpected \"now\"; `help` shows what start takes",
    "line too long (the shell takes 128 characters); nothing done",
    "the line had control or non-ASCII bytes; nothing done (commands are plain ASCII)",
    "elvisor> log\r\n",
    "log level: info",
    "vm1 (idle) started (start #1)",
    "[idle] HB: heartbeat: beats=3",
    "[idle] HB: virtual timer left firing for the power-off",
    "[idle] HB RESULT: passed=1 failed=0",
    "vm1 (idle) stopped: PSCI SYSTEM_OFF",
    "elvisor> poweroff\r\n",
    "powering off (`poweroff` in the shell)",
];

pub const SHELL: Scenario = Scenario {
    name: "shell{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "the management shell through the serial console: Ctrl-] x3 reaches it; help, list, info, cpus, stop (the machine stays up), start (boots afresh), reset, mistakes and hostile lines answered in one line, a VM with elvisor,autostart = <0> started, poweroff; GICv3, VHE",
        ),
        (V2_NVHE, "the shell script on GICv2, non-VHE"),
    ],
    case: Case {
        vms: &["shell-hb", "shell-idle"],
        timeout_s: 120,
        expect: SHELL_LINES,
        reject: &["HB FAIL", "PANIC", "did not stop"],
        ..FROM_CONFIG
    },
    tweak: None,
};

/// `cpus` counts the in-place WFI of a vCPU alone on its CPU as idle: cpu0, where hb beats
/// once a second, must be idle most of the time.
pub fn lone_vcpu_idles(log: &str) -> Result<String, String> {
    let line = log
        .lines()
        .find(|l| l.trim_start().starts_with("cpu0: hb/vcpu0; idle "))
        .ok_or("`cpus` printed no line for cpu0")?;
    let percent = line
        .rsplit_once('(')
        .and_then(|(_, p)| p.strip_suffix("%)"))
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| format!("no idle percentage in {line:?}"))?;
    if percent >= 50 {
        Ok(format!(
            "cpu0 idle {percent}% (hb alone, in WFI between beats)"
        ))
    } else {
        Err(format!(
            "cpu0 idle only {percent}% while hb waits in WFI between beats: {line:?}"
        ))
    }
}

/// `list` counts every exit and interrupt: hb, running for a few beats by the first `list`,
/// has exits (its UART writes, WFIs, timer reads) and interrupts (its timer waking it from
/// WFI), exits at least as many as interrupts taken in the guest.
pub fn list_counts(log: &str) -> Result<String, String> {
    let line = log
        .lines()
        .find(|l| l.starts_with("   0 hb    running"))
        .ok_or("`list` printed no running line for hb")?;
    let mut words = line.split_whitespace().rev();
    let irqs = words.next().and_then(|w| w.parse::<u64>().ok());
    let exits = words.next().and_then(|w| w.parse::<u64>().ok());
    match (exits, irqs) {
        (Some(e), Some(i)) if e > 0 && i > 0 => Ok(format!("hb: {e} exits, {i} interrupts")),
        _ => Err(format!(
            "`list` shows no exits or no interrupts for hb: {line:?}"
        )),
    }
}

/// After idle powered off with its virtual timer firing (hb.exit-armed), its CPU idles:
/// between the last two `cpus` (two of hb's beats apart) cpu1 waited for interrupts most of
/// the time. A stopped VM's vCPU left loaded kept its timer and list registers acting on the
/// CPU, and on QEMU, whose WFI a pending virtual IRQ ends at once even at EL2, the CPU spun
/// through its idle loop instead (0% idle).
pub fn stopped_vm_cpu_idles(log: &str) -> Result<String, String> {
    let samples: Vec<(f64, f64)> = log
        .lines()
        .filter_map(|l| {
            let rest = l
                .trim_start()
                .strip_prefix("cpu1: idle/vcpu0 (off); idle ")?;
            let (idle, rest) = rest.split_once(" s of ")?;
            let (up, _) = rest.split_once(" s")?;
            Some((idle.parse().ok()?, up.parse().ok()?))
        })
        .collect();
    let [.., (idle1, up1), (idle2, up2)] = samples[..] else {
        return Err(format!(
            "want two `cpus` lines for cpu1 after idle stopped, found {}",
            samples.len()
        ));
    };
    let span = up2 - up1;
    if span < 0.5 {
        return Err(format!(
            "the last two `cpus` are only {span:.1} s apart: too close to judge cpu1's idling"
        ));
    }
    let share = (idle2 - idle1) / span;
    if share >= 0.6 {
        Ok(format!(
            "cpu1 idle {:.0}% of the {span:.1} s after its VM stopped with its timer firing",
            share * 100.0
        ))
    } else {
        Err(format!(
            "cpu1 idle only {:.0}% of the {span:.1} s after its VM stopped with its timer \
             firing (a stopped vCPU still acting on its CPU?)",
            share * 100.0
        ))
    }
}

/// The shell cases' checks on the log: [`lone_vcpu_idles`], [`list_counts`] and
/// [`stopped_vm_cpu_idles`].
pub fn shell_checks(log: &str) -> Result<String, String> {
    Ok(format!(
        "{}; {}; {}",
        lone_vcpu_idles(log)?,
        list_counts(log)?,
        stopped_vm_cpu_idles(log)?
    ))
}

#[cfg(test)]
mod idle_tests {
    use super::{list_counts, lone_vcpu_idles, stopped_vm_cpu_idles};

    #[test]
    fn stopped_vm_idle_check_can_fail() {
        let two = |a: &str, b: &str| {
            format!(
                "  cpu1: idle/vcpu0 (off); idle 9.0 s of 9.5 s (94%)\n  \
                 cpu1: idle/vcpu0 (off); idle {a} s of 10.0 s (90%)\n  \
                 cpu1: idle/vcpu0 (off); idle {b} s of 11.5 s (90%)\n"
            )
        };
        assert!(stopped_vm_cpu_idles(&two("9.5", "10.9")).is_ok());
        assert!(stopped_vm_cpu_idles(&two("9.5", "9.6")).is_err());
        let close = "  cpu1: idle/vcpu0 (off); idle 1.0 s of 1.0 s (100%)\n  \
                     cpu1: idle/vcpu0 (off); idle 1.1 s of 1.1 s (100%)\n";
        assert!(stopped_vm_cpu_idles(close).is_err());
        assert!(stopped_vm_cpu_idles("nothing\n").is_err());
    }

    #[test]
    fn list_count_check_can_fail() {
        let row = |e: u64, i: u64| {
            format!("   0 hb    running      1: cpu0       64 MiB  {e:>10}  {i:>8}\n")
        };
        assert!(list_counts(&row(256, 5)).is_ok());
        assert!(list_counts(&row(256, 0)).is_err());
        assert!(list_counts(&row(0, 0)).is_err());
        assert!(list_counts("nothing\n").is_err());
    }

    #[test]
    fn lone_vcpu_idle_check_can_fail() {
        assert!(lone_vcpu_idles("  cpu0: hb/vcpu0; idle 1.2 s of 1.2 s (97%)\n").is_ok());
        assert!(lone_vcpu_idles("  cpu0: hb/vcpu0; idle 0.0 s of 1.2 s (0%)\n").is_err());
        assert!(lone_vcpu_idles("nothing\n").is_err());
    }
}
