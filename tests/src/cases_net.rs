//! System cases of virtio-net and the virtual switch (guests/net, boards/qemu-virt/vms/net-a.dtsi
//! and net-b.dtsi): two VMs with one NIC each on switch "lan0" find their devices, broadcast
//! until each hears the other, then exchange unicast frames of 60 to 1514 bytes whose every byte
//! is checked on arrival; a malformed and an oversize frame are dropped by the switch. GICv3
//! with VHE and GICv2 without. Hooked into [`crate::cases::CASES`] by name.

use crate::cases::{Case, Exit};
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

/// The NICs placed, then the checks in causal order: B hears A's broadcast before A can learn
/// that B did; B reports the unicast exchange before it sends the DONE that A waits for.
const NET_LINES: &[&str] = &[
    "net-a: virtio-net in slot 0 at 0xa000000 (SPI 16): 52:54:00:12:34:01, switch \"lan0\" port 0",
    "net-b: virtio-net in slot 0 at 0xa000000 (SPI 16): 52:54:00:12:34:02, switch \"lan0\" port 1",
    "[net-b] NET PASS: broadcast: A's HELLO arrived",
    "[net-a] NET PASS: broadcast: B's HELLO arrived, B heard A's",
    "[net-a] NET PASS: interrupt: InterruptStatus and the vGIC's pending bit",
    "[net-b] NET PASS: unicast: 8 frames from A, every byte checked, echoed",
    "[net-a] NET PASS: unicast: 8 frames of 60 to 1514 bytes to B and their echoes, every byte checked",
    "[net-a] NET RESULT: passed=7 failed=0",
    "all VMs stopped; powering off",
];

pub const NET: Scenario = Scenario {
    name: "net-switch{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "virtio-net on a virtual switch between two VMs: broadcast, unicast of 60..1514-byte frames checked byte by byte, malformed and oversize frames dropped; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the virtio-net pair on vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["net-a", "net-b"],
        timeout_s: 60,
        expect: NET_LINES,
        reject: &["NET FAIL", "device needs reset"],
        ..FROM_CONFIG
    },
    tweak: None,
};

/// Debian's unmodified Linux twice on one switch (linux-net-a.dtsi, linux-net-b.dtsi): its own
/// virtio_net makes each NIC eth0, each VM pings the other, then A sends B 64 MiB over TCP with
/// busybox nc and compares its MD5 with the one B sends back. B reports its ping only after the
/// stream, so the lines of the two VMs come in one order.
const LINUX_NET_LINES: &[&str] = &[
    "linux-a: virtio-net in slot 0 at 0xa000000 (SPI 16): 52:54:00:12:34:01, switch \"lan0\" port 0",
    "linux-b: virtio-net in slot 0 at 0xa000000 (SPI 16): 52:54:00:12:34:02, switch \"lan0\" port 1",
    "[linux-a] INIT: net: ping 10.0.0.2: 3 packets transmitted, 3 packets received",
    "[linux-b] INIT: net: ping 10.0.0.1: 3 packets transmitted, 3 packets received",
    "[linux-b] INIT: net: received from TCP port 5000: md5 ",
    "[linux-a] INIT: net: 64 MiB over TCP to 10.0.0.2: checksums match",
    "all VMs stopped; powering off",
];

pub const LINUX_NET: Scenario = Scenario {
    name: "linux-net{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "two Debian Linux VMs on one virtual switch with their own virtio_net: ping both ways, 64 MiB over TCP (busybox nc) with matching MD5 sums; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the two Linux VMs on one switch, vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["linux-net-a", "linux-net-b"],
        timeout_s: 300,
        expect: LINUX_NET_LINES,
        reject: &[
            "Kernel panic",
            "Internal error:",
            "BUG:",
            "Oops",
            "insmod",
            "INIT: net: FAIL",
            "device needs reset",
        ],
        ..FROM_CONFIG
    },
    tweak: None,
};

/// The hostile NIC is abusing its device before linux-a starts its steady ping, still at it
/// while the pings run (a round line between the two), and every ping comes back.
const HOSTILE_LINES: &[&str] = &[
    "net-h: virtio-net in slot 0 at 0xa000000 (SPI 16): 52:54:00:12:34:03, switch \"lan0\"",
    "[net-h] NET HOSTILE: round 1:",
    "[linux-a] INIT: net: pinging 10.0.0.2 30 times, one a second",
    "[net-h] NET HOSTILE: round ",
    "[linux-a] INIT: net: 30 pings to 10.0.0.2: 30 packets transmitted, 30 packets received",
];

pub const NET_HOSTILE_LINUX: Scenario = Scenario {
    name: "net-hostile-linux{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "a hostile virtio-net driver (descriptor loops, buffers outside RAM, zero and 4 GiB lengths, queue size 6, notify before DRIVER_OK, bad receive buffers, malformed, oversize and flooding frames), round after round, on the switch where two Debian Linux VMs ping each other: every ping comes back; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the hostile virtio-net driver next to the two pinging Linux VMs, vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["linux-ping-a", "linux-ping-b", "net-hostile"],
        timeout_s: 300,
        expect: HOSTILE_LINES,
        reject: &[
            "Kernel panic",
            "Internal error:",
            "BUG:",
            "Oops",
            "insmod",
            "INIT: net: FAIL",
            "NET FAIL",
            "linux-a virtio-net",
            "linux-b virtio-net",
        ],
        exit: Exit::KillAfter(
            "[linux-a] INIT: net: 30 pings to 10.0.0.2: 30 packets transmitted, 30 packets received",
        ),
        ..FROM_CONFIG
    },
    tweak: None,
};
