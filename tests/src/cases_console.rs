//! System cases of the console (boards/qemu-virt/vms/smoke-input-nofifo.dtsi,
//! smoke-console-a.dtsi, smoke-console-b.dtsi): console input reaching a guest that reads its
//! PL011 with the FIFO disabled, and two VMs sharing the console, driven by a person-like
//! script that types only after it has seen what it waits for. Hooked into
//! [`crate::cases::CASES`] by name; the runner asks [`script`] for a case's typing.

use crate::cases::{Case, Exit};
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

/// The default console switch key, Ctrl-] (the hypervisor's `console::DEFAULT_SWITCH_KEY`).
const SWITCH: &str = "\x1d\x1d\x1d";

/// One step of typing: once `wait` has appeared in the log (after the previous step's match),
/// `send` is written to QEMU's stdin, the serial console.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub wait: &'static str,
    pub send: &'static str,
}

/// The typing of a case that types interactively (its stdin is then a pipe the runner writes
/// as the log shows each step's `wait`); `None` for every other case.
pub fn script(case: &str) -> Option<&'static [Step]> {
    match case {
        "console-focus-gicv3" | "console-focus-gicv2" => Some(FOCUS_SCRIPT),
        "demo-gicv3" | "demo-gicv2" => Some(DEMO_SCRIPT),
        "virtio-restart-gicv3" | "virtio-restart-gicv2" => Some(VIRTIO_RESTART_SCRIPT),
        _ => crate::cases_shell::script(case),
    }
}

/// The virtio VM stops by itself (its second boot powers off); the console input goes to
/// the shell, which starts it again; once that run has stopped too, the machine is powered off.
const VIRTIO_RESTART_SCRIPT: &[Step] = &[
    Step {
        wait: "vm0 (virtio) stopped: PSCI SYSTEM_OFF",
        send: "start virtio\r",
    },
    Step {
        wait: "vm0 (virtio) stopped: PSCI SYSTEM_OFF",
        send: "poweroff\r",
    },
];

/// con-a has the focus from boot: its prompt must show before anything is typed (it has no
/// line feed). Switch to con-b: its prompt, held while it had no focus, shows; type half its
/// line, see the echo before Enter, finish it. con-b stops; the focus goes back to con-a, whose
/// prompt is shown again; type its line. Each guest checks it read exactly its own line (the
/// switch key never reaches a guest).
const FOCUS_SCRIPT: &[Step] = &[
    Step {
        wait: "type alpha> ",
        send: SWITCH,
    },
    Step {
        wait: "type bravo> ",
        send: "bra",
    },
    // (Searched for after the prompt: the echo of what was just typed.)
    Step {
        wait: "bra",
        send: "vo\r",
    },
    Step {
        wait: "as vm1 (con-b) stopped",
        send: "",
    },
    Step {
        wait: "type alpha> ",
        send: "alpha\r",
    },
];

const FOCUS_LINES: &[&str] = &[
    "console input goes to vm0 (con-a); Ctrl-] three times switches",
    // The focused VM is printed untouched: no "[con-a] " before its prompt.
    "\ntype alpha> ",
    "console input goes to vm1 (con-b)",
    "\ntype bravo> bravo\r",
    "\nSMOKE PASS: console-line",
    "\nSMOKE RESULT: passed=",
    "vm1 (con-b) stopped: PSCI SYSTEM_OFF",
    "console input goes to vm0 (con-a), as vm1 (con-b) stopped; Ctrl-] three times switches",
    "\ntype alpha> alpha\r",
    "\nSMOKE PASS: console-line",
    "\nSMOKE RESULT: passed=",
    "all VMs stopped; powering off",
];

const NOFIFO_LINES: &[&str] = &[
    "SMOKE PASS: uart-rx",
    "SMOKE RESULT: passed=",
    "failed=0",
    "all VMs stopped; powering off",
];

pub const CONSOLE_INPUT_NOFIFO: Scenario = Scenario {
    name: "console-input-nofifo{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "console input reaches a guest polling UARTFR.RXFE with its PL011 FIFO disabled (one-byte holding register); bytes it had received before its reset come back after it; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "console input with the guest's PL011 FIFO disabled; GICv2, non-VHE",
        ),
    ],
    case: Case {
        vms: &["smoke-input-nofifo"],
        timeout_s: 60,
        expect: NOFIFO_LINES,
        reject: &["SMOKE FAIL"],
        console_input: Some("hello-elvisor"),
        ..FROM_CONFIG
    },
    tweak: None,
};

pub const CONSOLE_FOCUS: Scenario = Scenario {
    name: "console-focus{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "two VMs on the console: the focused VM's prompt shows before Enter, echo as typed; Ctrl-] x3 switches; each VM reads exactly its own line; the focus moves on when the focused VM stops; GICv3, VHE",
        ),
        (V2_NVHE, "the console-focus script on GICv2, non-VHE"),
    ],
    case: Case {
        vms: &["smoke-console-a", "smoke-console-b"],
        timeout_s: 90,
        expect: FOCUS_LINES,
        reject: &["SMOKE FAIL"],
        ..FROM_CONFIG
    },
    tweak: None,
};

/// scripts/run's default demo as a person uses it: Linux's shell has the console; a job is
/// interrupted with Ctrl-C and another stopped with Ctrl-Z (both need job control: a shell on
/// /dev/console without a controlling terminal ignores them and this script never sees its
/// prompt again), arithmetic shows the shell reads what is typed, and `poweroff -f` ends Linux
/// while the worker VM goes on.
const DEMO_SCRIPT: &[Step] = &[
    Step {
        wait: "job control on",
        send: "",
    },
    // The job says it runs (a word its echoed command line does not contain) only once it is
    // the terminal's foreground job: a Ctrl-C typed earlier would reach the shell instead.
    Step {
        wait: "# ",
        send: "sh -c 'echo run$((1+1)); exec sleep 100'\r",
    },
    Step {
        wait: "run2",
        send: "\x03",
    },
    Step {
        wait: "# ",
        send: "echo answer=$((6*7))\r",
    },
    Step {
        wait: "answer=42",
        send: "sh -c 'echo stop$((2+2)); exec sleep 300'\r",
    },
    Step {
        wait: "stop4",
        send: "\x1a",
    },
    Step {
        wait: "Stopped",
        send: "kill %1; echo killed=$?\r",
    },
    Step {
        wait: "killed=0",
        send: "poweroff -f\r",
    },
];

const DEMO_LINES: &[&str] = &[
    "console input goes to vm0 (linux); Ctrl-] three times switches",
    "INIT: a shell on the console (job control on",
    "answer=42",
    "Stopped",
    "killed=0",
    "vm0 (linux) stopped",
];

pub const DEMO: Scenario = Scenario {
    name: "demo{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "scripts/run's default demo (demo-linux + demo-worker): Linux's shell has the console with job control (Ctrl-C interrupts, Ctrl-Z stops a job), next to a bare-metal worker VM; GICv3, VHE",
        ),
        (V2_NVHE, "the default demo on GICv2, cortex-a72 (non-VHE)"),
    ],
    case: Case {
        vms: &["demo-linux", "demo-worker"],
        timeout_s: 150,
        expect: DEMO_LINES,
        reject: &[
            "can't access tty",
            "HB FAIL",
            "Kernel panic",
            "Internal error:",
            "BUG:",
            "Oops",
        ],
        exit: Exit::KillAfter("vm0 (linux) stopped"),
        ..FROM_CONFIG
    },
    tweak: None,
};
