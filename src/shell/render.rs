//! What the shell prints: `help`, `list`, `info` and `cpus` rendered from snapshots the kernel
//! takes, so that every line can be checked on the host.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::command::COMMANDS;

/// A VM's lifecycle as the shell shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmRun {
    Running,
    Resetting,
    Stopped,
    /// `elvisor,autostart = <0>` and not started yet.
    NotStarted,
}

impl VmRun {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Resetting => "resetting",
            Self::Stopped => "stopped",
            Self::NotStarted => "not started",
        }
    }
}

/// One vCPU: the physical CPU it is pinned to and whether it is powered on (PSCI).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VcpuSnap {
    pub pcpu: usize,
    pub on: bool,
}

/// One VM, for `list` (and the head of `info`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VmSnap {
    pub index: usize,
    pub name: String,
    pub state: VmRun,
    pub vcpus: Vec<VcpuSnap>,
    pub memory_bytes: u64,
    /// Guest RAM backed by host RAM right now (the rest is prepared on first touch).
    pub backed_bytes: u64,
    /// Exits of this VM's vCPUs since it was last started, every kind (the fast path's too).
    pub exits: u64,
    /// Physical interrupts for the VM (a kick, a timer, a passthrough SPI): taken while one
    /// of its vCPUs ran (an exit) or waking one that waited in WFI alone on its CPU.
    pub irqs: u64,
    pub focus: bool,
}

/// An emulated device window.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceSnap {
    pub base: u64,
    pub size_bytes: u64,
    pub name: &'static str,
}

/// A passed-through host device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PassthroughSnap {
    pub host_path: String,
    pub regs: Vec<(u64, u64)>,
    pub irqs: Vec<u32>,
}

/// A disk (virtio-blk).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DiskSnap {
    pub id: String,
    pub bytes: u64,
    pub read_only: bool,
}

/// A NIC (virtio-net) and its switch port's counters (`vdev::switch::PortCounts`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NicSnap {
    pub mac: String,
    pub switch: String,
    pub port: Option<usize>,
    pub tx_frames: u64,
    pub tx_malformed: u64,
    pub tx_oversize: u64,
    pub rx_frames: u64,
    pub rx_no_buffer: u64,
    pub rx_not_ready: u64,
    pub rx_too_small: u64,
}

/// One VM in detail, for `info`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VmDetail {
    pub vm: VmSnap,
    pub ram_base: u64,
    pub host_base: u64,
    pub entry: u64,
    pub dtb: u64,
    pub devices: Vec<DeviceSnap>,
    pub passthrough: Vec<PassthroughSnap>,
    pub disks: Vec<DiskSnap>,
    pub nics: Vec<NicSnap>,
    pub bootargs: String,
    /// Console input bytes waiting for the guest.
    pub input_waiting: usize,
    pub resets: u32,
    /// Times the VM was started (boot, `start`, `restart`).
    pub starts: u32,
    pub autostart: bool,
}

/// One physical CPU, for `cpus`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CpuSnap {
    pub index: usize,
    pub up: bool,
    /// The vCPUs pinned to it: VM name, vCPU index, powered on.
    pub vcpus: Vec<(String, usize, bool)>,
    /// Counter ticks spent in the scheduler's idle wait, and since the CPU came up.
    pub idle_ticks: u64,
    pub up_ticks: u64,
}

/// `help`.
pub fn help(switch_key: &str) -> String {
    let mut s = String::new();
    let width = COMMANDS
        .iter()
        .map(|(n, a, _)| n.len() + a.len() + 1)
        .max()
        .unwrap_or(0);
    for (name, args, what) in COMMANDS {
        let mut cmd = String::from(*name);
        if !args.is_empty() {
            cmd.push(' ');
            cmd.push_str(args);
        }
        let _ = writeln!(s, "  {cmd:<width$}  {what}");
    }
    let _ = writeln!(
        s,
        "VM is a name or an index (0, vm0). {switch_key} three times switches the console."
    );
    s
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// "2: cpu0 cpu1" style: vCPU count and where they run (a vCPU powered off in brackets).
fn placement(vcpus: &[VcpuSnap]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{}:", vcpus.len());
    for v in vcpus {
        if v.on {
            let _ = write!(s, " cpu{}", v.pcpu);
        } else {
            let _ = write!(s, " (cpu{})", v.pcpu);
        }
    }
    s
}

/// `list`: one line per VM under a header.
pub fn list(vms: &[VmSnap]) -> String {
    let name_w = vms.iter().map(|v| v.name.len()).max().unwrap_or(0).max(4);
    let place: Vec<String> = vms.iter().map(|v| placement(&v.vcpus)).collect();
    let place_w = place.iter().map(String::len).max().unwrap_or(0).max(5);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  id {:<name_w$}  {:<11}  {:<place_w$}  {:>9}  {:>10}  {:>8}",
        "name", "state", "vcpus", "memory", "exits", "irqs"
    );
    for (v, p) in vms.iter().zip(&place) {
        let _ = writeln!(
            s,
            "{} {:>2} {:<name_w$}  {:<11}  {:<place_w$}  {:>5} MiB  {:>10}  {:>8}",
            if v.focus { '*' } else { ' ' },
            v.index,
            v.name,
            v.state.name(),
            p,
            mib(v.memory_bytes),
            v.exits,
            v.irqs
        );
    }
    let _ = writeln!(
        s,
        "(* has the console; (cpuN): vCPU off; exits since start, all kinds; irqs: physical \
         interrupts taken while the VM ran or that woke it)"
    );
    s
}

/// `info VM`.
pub fn info(d: &VmDetail) -> String {
    let v = &d.vm;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vm{} ({}): {}, started {} time(s), reset {} time(s){}",
        v.index,
        v.name,
        v.state.name(),
        d.starts,
        d.resets,
        if d.autostart {
            ""
        } else {
            ", elvisor,autostart = <0>"
        }
    );
    let _ = writeln!(s, "  vcpus: {}", placement(&v.vcpus));
    let _ = writeln!(
        s,
        "  memory: {} MiB at IPA {:#x}..{:#x} (host {:#x}), {} MiB backed now",
        mib(v.memory_bytes),
        d.ram_base,
        d.ram_base.saturating_add(v.memory_bytes),
        d.host_base,
        mib(v.backed_bytes)
    );
    let _ = writeln!(s, "  entry {:#x}, dtb {:#x}", d.entry, d.dtb);
    // Runs of windows of one kind, back to back (the empty virtio-mmio slots), on one line.
    let mut i = 0;
    while let Some(dev) = d.devices.get(i) {
        let mut end = dev.base.saturating_add(dev.size_bytes);
        let mut n = 1;
        while let Some(next) = d.devices.get(i + n)
            && next.name == dev.name
            && next.base == end
        {
            end = next.base.saturating_add(next.size_bytes);
            n += 1;
        }
        let _ = write!(s, "  device {} {:#x}..{:#x}", dev.name, dev.base, end);
        if n > 1 {
            let _ = write!(s, " ({n} windows)");
        }
        s.push('\n');
        i += n;
    }
    for p in &d.passthrough {
        let _ = write!(s, "  passthrough {}:", p.host_path);
        for (base, size) in &p.regs {
            let _ = write!(s, " {:#x}..{:#x}", base, base.saturating_add(*size));
        }
        if !p.irqs.is_empty() {
            let _ = write!(s, " SPI");
            for i in &p.irqs {
                let _ = write!(s, " {i}");
            }
        }
        s.push('\n');
    }
    for disk in &d.disks {
        let _ = writeln!(
            s,
            "  disk {}: {} KiB{}",
            disk.id,
            disk.bytes >> 10,
            if disk.read_only { ", read-only" } else { "" }
        );
    }
    for n in &d.nics {
        match n.port {
            Some(port) => {
                let _ = writeln!(
                    s,
                    "  nic {} on switch {} port {port}: sent {} frame(s) ({} malformed, {} \
                     oversize dropped), received {} ({} dropped: no buffer {}, not ready {}, \
                     buffer too small {})",
                    n.mac,
                    n.switch,
                    n.tx_frames,
                    n.tx_malformed,
                    n.tx_oversize,
                    n.rx_frames,
                    n.rx_no_buffer + n.rx_not_ready + n.rx_too_small,
                    n.rx_no_buffer,
                    n.rx_not_ready,
                    n.rx_too_small
                );
            }
            None => {
                let _ = writeln!(s, "  nic {} on switch {}: not plugged in", n.mac, n.switch);
            }
        }
    }
    let _ = writeln!(
        s,
        "  console: {}, {} byte(s) of input waiting",
        if v.focus {
            "has the input"
        } else {
            "no input focus"
        },
        d.input_waiting
    );
    let _ = writeln!(s, "  exits {}, irqs {} since start", v.exits, v.irqs);
    if !d.bootargs.is_empty() {
        let _ = writeln!(s, "  bootargs: {}", Printable(&d.bootargs));
    }
    s
}

/// Text from a device tree, shown with anything that is not printable ASCII as '?'.
struct Printable<'a>(&'a str);

impl core::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in self.0.chars() {
            f.write_char(if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            })?;
        }
        Ok(())
    }
}

/// Seconds with one decimal from counter ticks at `freq` Hz.
fn seconds(ticks: u64, freq: u64) -> impl core::fmt::Display {
    let tenths = u128::from(ticks) * 10 / u128::from(freq.max(1));
    struct S(u128);
    impl core::fmt::Display for S {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{}.{} s", self.0 / 10, self.0 % 10)
        }
    }
    S(tenths)
}

/// `cpus`: one line per physical CPU; `freq` is the counter frequency.
pub fn cpus(cpus: &[CpuSnap], freq: u64) -> String {
    let mut s = String::new();
    for c in cpus {
        let _ = write!(s, "  cpu{}: ", c.index);
        if !c.up {
            let _ = writeln!(s, "not running");
            continue;
        }
        if c.vcpus.is_empty() {
            s.push_str("no vCPUs");
        }
        for (i, (vm, vcpu, on)) in c.vcpus.iter().enumerate() {
            let _ = write!(
                s,
                "{}{vm}/vcpu{vcpu}{}",
                if i > 0 { ", " } else { "" },
                if *on { "" } else { " (off)" }
            );
        }
        let percent = u128::from(c.idle_ticks) * 100 / u128::from(c.up_ticks.max(1));
        let _ = writeln!(
            s,
            "; idle {} of {} ({percent}%)",
            seconds(c.idle_ticks, freq),
            seconds(c.up_ticks, freq)
        );
    }
    let _ = writeln!(
        s,
        "(idle: time waiting for an interrupt, in the scheduler or in a lone vCPU's WFI)"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn snap(index: usize, name: &str, state: VmRun) -> VmSnap {
        VmSnap {
            index,
            name: name.into(),
            state,
            vcpus: alloc::vec![
                VcpuSnap { pcpu: 0, on: true },
                VcpuSnap { pcpu: 1, on: false }
            ],
            memory_bytes: 64 << 20,
            backed_bytes: 4 << 20,
            exits: 1234,
            irqs: 5,
            focus: index == 0,
        }
    }

    #[test]
    fn help_lists_every_command() {
        let h = help("Ctrl-]");
        for (name, _, _) in COMMANDS {
            assert!(
                h.lines().any(|l| l.trim_start().starts_with(name)),
                "{name}"
            );
        }
        assert!(h.contains("Ctrl-] three times"));
    }

    #[test]
    fn list_lines() {
        let out = list(&[
            snap(0, "hb", VmRun::Running),
            snap(1, "a-long-name", VmRun::NotStarted),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("name") && lines[0].contains("exits"));
        assert!(lines[1].starts_with("*  0 hb "), "{}", lines[1]);
        assert!(lines[1].contains("running") && lines[1].contains("2: cpu0 (cpu1)"));
        assert!(lines[1].contains("64 MiB") && lines[1].contains("1234"));
        assert!(
            lines[2].starts_with("   1 a-long-name  not started"),
            "{}",
            lines[2]
        );
        // Columns line up.
        assert_eq!(lines[1].find("running"), lines[2].find("not started"));
        // No debug formatting anywhere.
        assert!(!out.contains("VmRun") && !out.contains('{'));
    }

    #[test]
    fn info_lines() {
        let d = VmDetail {
            vm: snap(0, "hb", VmRun::Stopped),
            ram_base: 0x4000_0000,
            host_base: 0x4800_0000,
            entry: 0x4008_0000,
            dtb: 0x43e0_0000,
            devices: alloc::vec![
                DeviceSnap {
                    base: 0x900_0000,
                    size_bytes: 0x1000,
                    name: "pl011"
                },
                DeviceSnap {
                    base: 0xa00_0000,
                    size_bytes: 0x200,
                    name: "virtio-mmio (empty)"
                },
                DeviceSnap {
                    base: 0xa00_0200,
                    size_bytes: 0x200,
                    name: "virtio-mmio (empty)"
                },
                DeviceSnap {
                    base: 0xa00_0400,
                    size_bytes: 0x200,
                    name: "virtio-blk"
                },
            ],
            passthrough: alloc::vec![PassthroughSnap {
                host_path: "/pl031@9010000".into(),
                regs: alloc::vec![(0x901_0000, 0x1000)],
                irqs: alloc::vec![34],
            }],
            disks: alloc::vec![DiskSnap {
                id: "root".into(),
                bytes: 1 << 20,
                read_only: true
            }],
            nics: alloc::vec![
                NicSnap {
                    mac: "52:54:00:00:00:01".into(),
                    switch: "lan0".into(),
                    port: Some(1),
                    tx_frames: 10,
                    tx_malformed: 2,
                    tx_oversize: 1,
                    rx_frames: 7,
                    rx_no_buffer: 3,
                    rx_not_ready: 4,
                    rx_too_small: 5,
                },
                NicSnap {
                    mac: "52:54:00:00:00:02".into(),
                    switch: "lan1".into(),
                    port: None,
                    tx_frames: 0,
                    tx_malformed: 0,
                    tx_oversize: 0,
                    rx_frames: 0,
                    rx_no_buffer: 0,
                    rx_not_ready: 0,
                    rx_too_small: 0,
                },
            ],
            bootargs: "hb.beats=3\u{1}".into(),
            input_waiting: 3,
            resets: 2,
            starts: 1,
            autostart: false,
        };
        let out = info(&d);
        assert!(out.starts_with(
            "vm0 (hb): stopped, started 1 time(s), reset 2 time(s), elvisor,autostart = <0>\n"
        ));
        for want in [
            "memory: 64 MiB at IPA 0x40000000..0x44000000 (host 0x48000000), 4 MiB backed now",
            "device pl011 0x9000000..0x9001000\n",
            "device virtio-mmio (empty) 0xa000000..0xa000400 (2 windows)\n",
            "device virtio-blk 0xa000400..0xa000600\n",
            "passthrough /pl031@9010000: 0x9010000..0x9011000 SPI 34",
            "disk root: 1024 KiB, read-only",
            "  nic 52:54:00:00:00:01 on switch lan0 port 1: sent 10 frame(s) (2 malformed, 1 \
             oversize dropped), received 7 (12 dropped: no buffer 3, not ready 4, buffer too \
             small 5)\n",
            "  nic 52:54:00:00:00:02 on switch lan1: not plugged in\n",
            "console: has the input, 3 byte(s) of input waiting",
            "bootargs: hb.beats=3?",
        ] {
            assert!(out.contains(want), "{want}\n{out}");
        }
    }

    #[test]
    fn cpus_lines() {
        let out = cpus(
            &[
                CpuSnap {
                    index: 0,
                    up: true,
                    vcpus: alloc::vec![("hb".to_string(), 0, true), ("b".to_string(), 1, false)],
                    idle_ticks: 750,
                    up_ticks: 1000,
                },
                CpuSnap {
                    index: 1,
                    up: false,
                    vcpus: Vec::new(),
                    idle_ticks: 0,
                    up_ticks: 0,
                },
                CpuSnap {
                    index: 2,
                    up: true,
                    vcpus: Vec::new(),
                    idle_ticks: 0,
                    up_ticks: 0,
                },
            ],
            100,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "  cpu0: hb/vcpu0, b/vcpu1 (off); idle 7.5 s of 10.0 s (75%)"
        );
        assert_eq!(lines[1], "  cpu1: not running");
        assert_eq!(lines[2], "  cpu2: no vCPUs; idle 0.0 s of 0.0 s (0%)");
    }
}
