//! The system-test matrix: a scenario is declared once, with the configurations (board × GIC ×
//! VHE, and the QEMU machine's CPU count and clock) it runs on; [`Scenario::cases`] makes one
//! [`Case`] per configuration, named after it. Differences between the configurations beyond
//! the name, the `about` text, the QEMU machine and the forced non-VHE command line (expected
//! lines, VMs, timeouts...) are the scenario's [`Scenario::tweak`].

use crate::cases::{Boot, Case, Exit, Image};

/// The board QEMU emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    /// QEMU `virt` with `virtualization=on`, 1 GiB.
    QemuVirt,
    /// QEMU `raspi4b`: BCM2711, four Cortex-A72, GIC-400 (boards/rpi4).
    Raspi4b,
}

/// The interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gic {
    V2,
    V3,
}

/// How the hypervisor runs at EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vhe {
    /// `-cpu max`: the CPU has VHE and the hypervisor uses it (E2H=1).
    On,
    /// `-cpu max` with `elvisor.vhe=off`: the non-VHE path forced on a CPU that has VHE.
    ForcedOff,
    /// A Cortex-A72 (ARMv8.0): no VHE.
    Absent,
}

/// One configuration a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub board: Board,
    pub gic: Gic,
    pub vhe: Vhe,
    /// QEMU's `-smp` (raspi4b always has 4).
    pub cpus: u8,
    /// `-icount shift=0,sleep=off`: one instruction per nanosecond of guest time, the idle
    /// CPU's clock jumping to its next deadline, so that guest time is what a loaded host
    /// cannot stretch (TCG becomes single-threaded: slower, but deterministic).
    pub icount: bool,
}

/// QEMU virt, GICv3, `-cpu max` (VHE), 2 CPUs: the configuration most cases boot.
pub const V3_VHE: Config = Config {
    board: Board::QemuVirt,
    gic: Gic::V3,
    vhe: Vhe::On,
    cpus: 2,
    icount: false,
};
/// QEMU virt, GICv3, `-cpu max` with the non-VHE path forced (`elvisor.vhe=off`).
pub const V3_NVHE: Config = Config {
    vhe: Vhe::ForcedOff,
    ..V3_VHE
};
/// QEMU virt, GICv2, Cortex-A72 (no VHE), 2 CPUs.
pub const V2_NVHE: Config = Config {
    board: Board::QemuVirt,
    gic: Gic::V2,
    vhe: Vhe::Absent,
    cpus: 2,
    icount: false,
};
/// QEMU raspi4b (GIC-400, Cortex-A72). No scenario runs on it as well as on virt yet: the
/// raspi4b cases are single (cases_rpi4.rs); a name there ends in `-rpi4`.
#[allow(dead_code)]
pub const RPI4: Config = Config {
    board: Board::Raspi4b,
    gic: Gic::V2,
    vhe: Vhe::Absent,
    cpus: 4,
    icount: false,
};

impl Config {
    /// This configuration with `n` CPUs (QEMU virt's `-smp`).
    pub const fn smp(self, n: u8) -> Self {
        Config { cpus: n, ..self }
    }

    /// This configuration under `-icount shift=0,sleep=off`.
    pub const fn icount(self) -> Self {
        Config {
            icount: true,
            ..self
        }
    }

    /// The QEMU machine arguments (-M, -cpu, -m, -smp, -icount); scripts/mkdtb dumps QEMU's
    /// DTB with exactly these.
    pub fn machine(self) -> &'static [&'static str] {
        let mut m: Vec<&'static str> = match self.board {
            Board::QemuVirt => vec![
                "-M",
                match self.gic {
                    Gic::V3 => "virt,virtualization=on,gic-version=3",
                    Gic::V2 => "virt,virtualization=on,gic-version=2",
                },
                "-cpu",
                match self.vhe {
                    Vhe::On | Vhe::ForcedOff => "max",
                    Vhe::Absent => "cortex-a72",
                },
                "-m",
                "1G",
                "-smp",
                leak(self.cpus.to_string()),
            ],
            Board::Raspi4b => {
                assert!(
                    self.cpus == 4 && self.gic == Gic::V2 && self.vhe == Vhe::Absent,
                    "raspi4b is fixed: 4 Cortex-A72, GICv2 ({self:?})"
                );
                vec!["-M", "raspi4b"]
            }
        };
        if self.icount {
            m.extend(["-icount", "shift=0,sleep=off"]);
        }
        m.leak()
    }

    /// The hypervisor command line this configuration adds to a case's own.
    pub fn bootargs(self) -> Option<&'static str> {
        (self.vhe == Vhe::ForcedOff).then_some("elvisor.vhe=off")
    }
}

/// How a scenario's case names spell the configuration (the `{cfg}` of [`Scenario::name`]).
/// Names are how people, docs/ and `KNOWN_BROKEN` call the cases, so each scenario keeps the
/// spelling it has always had. raspi4b is `-rpi4` in every style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// GIC and VHE always: `-gicv3-vhe`, `-gicv3-nvhe`, `-gicv2-nvhe`.
    GicVhe,
    /// VHE on GICv3 only, where `-cpu max` runs both ways: `-gicv3-vhe`, `-gicv3-nvhe`,
    /// `-gicv2`.
    GicVheOnV3,
    /// The GIC, and `-nvhe` only when forced: `-gicv3`, `-gicv3-nvhe`, `-gicv2`.
    Gic,
    /// As [`Naming::Gic`], then the CPU count: `-gicv3-smp2`, `-gicv2-smp4`.
    GicSmp,
    /// Nothing for GICv3 with VHE (the default), else as [`Naming::Gic`]: ``, `-gicv2`.
    Quiet,
}

impl Naming {
    /// The configuration's part of a case name, with its leading `-` (or empty).
    pub fn part(self, cfg: Config) -> String {
        if cfg.board == Board::Raspi4b {
            return "-rpi4".into();
        }
        let gic = match cfg.gic {
            Gic::V3 => "-gicv3",
            Gic::V2 => "-gicv2",
        };
        let vhe = match cfg.vhe {
            Vhe::On => "-vhe",
            Vhe::ForcedOff | Vhe::Absent => "-nvhe",
        };
        let forced = if cfg.vhe == Vhe::ForcedOff {
            "-nvhe"
        } else {
            ""
        };
        match self {
            Naming::GicVhe => format!("{gic}{vhe}"),
            Naming::GicVheOnV3 if cfg.gic == Gic::V3 => format!("{gic}{vhe}"),
            Naming::GicVheOnV3 | Naming::Gic => format!("{gic}{forced}"),
            Naming::GicSmp => format!("{gic}{forced}-smp{}", cfg.cpus),
            Naming::Quiet if cfg.gic == Gic::V3 && cfg.vhe == Vhe::On => String::new(),
            Naming::Quiet => format!("{gic}{forced}"),
        }
    }
}

/// One test declared once and run on several configurations.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// The cases' names: `{cfg}` stands for each configuration's part in [`Scenario::naming`].
    pub name: &'static str,
    pub naming: Naming,
    /// The configurations it runs on, in this order, each with what it checks there (for
    /// `--list`). Adding a configuration is one line here.
    pub on: &'static [(Config, &'static str)],
    /// What the cases share. Its `name`, `about` and `machine` are not used (write
    /// `..FROM_CONFIG`): they come from [`Scenario::on`]; `bootargs` gets `elvisor.vhe=off`
    /// added where the configuration forces the non-VHE path.
    pub case: Case,
    /// The per-configuration differences beyond those (expected lines, VMs, timeouts...):
    /// given each configuration and its case, returns the case to run. It must not change
    /// the name, `about` or machine.
    pub tweak: Option<fn(Config, Case) -> Case>,
}

/// The base of every [`Scenario::case`] (`..FROM_CONFIG`): the fields each configuration fills
/// in (name, `about`, machine), and the usual values of the rest (direct boot, no bootargs,
/// exit status 0, no console input, the normal image, nothing allowed or rejected after exit),
/// so a scenario spells out only what differs.
pub const FROM_CONFIG: Case = Case {
    name: "",
    about: "",
    machine: &[],
    boot: Boot::Direct,
    vms: &[],
    bootargs: None,
    timeout_s: 0,
    expect: &[],
    reject: &[],
    exit: Exit::Status(0),
    console_input: None,
    image: Image::Normal,
    allow: &[],
    reject_after_exit: &[],
};

impl Scenario {
    /// The case name on `cfg`.
    pub fn name_on(&self, cfg: Config) -> String {
        self.name.replacen("{cfg}", &self.naming.part(cfg), 1)
    }

    /// One case per configuration, in the order of [`Scenario::on`].
    pub fn cases(&self) -> impl Iterator<Item = Case> + '_ {
        self.on.iter().map(|&(cfg, about)| {
            let bootargs = match (self.case.bootargs, cfg.bootargs()) {
                (own, None) => own,
                (None, added) => added,
                (Some(own), Some(added)) => Some(leak(format!("{own} {added}"))),
            };
            let case = Case {
                name: leak(self.name_on(cfg)),
                about,
                machine: cfg.machine(),
                bootargs,
                ..self.case
            };
            match self.tweak {
                Some(tweak) => tweak(cfg, case),
                None => case,
            }
        })
    }
}

/// An entry of a case list: a case of its own, or a scenario's cases on each configuration.
#[derive(Clone, Copy, Debug)]
pub enum Entry {
    Single(Case),
    Matrix(Scenario),
}

/// The cases of `entries`, in order.
pub fn expand(entries: &[Entry]) -> Vec<Case> {
    let mut cases = Vec::new();
    for e in entries {
        match e {
            Entry::Single(c) => cases.push(*c),
            Entry::Matrix(s) => cases.extend(s.cases()),
        }
    }
    cases
}

/// Generated names and machines live as long as the harness: they are made once.
fn leak(s: String) -> &'static str {
    s.leak()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_the_ones_cases_rs_names() {
        use crate::cases::{VIRT_V2_NVHE, VIRT_V3_VHE};
        assert_eq!(V3_VHE.machine(), VIRT_V3_VHE);
        assert_eq!(V3_NVHE.machine(), VIRT_V3_VHE);
        assert_eq!(V2_NVHE.machine(), VIRT_V2_NVHE);
        assert_eq!(RPI4.machine(), ["-M", "raspi4b"]);
        let m = V2_NVHE.smp(4).icount().machine();
        assert_eq!(&m[..6], &VIRT_V2_NVHE[..6]);
        assert_eq!(&m[6..], ["-smp", "4", "-icount", "shift=0,sleep=off"]);
        assert_eq!(V3_NVHE.bootargs(), Some("elvisor.vhe=off"));
        assert_eq!(V3_VHE.bootargs(), None);
        assert_eq!(V2_NVHE.bootargs(), None);
    }

    #[test]
    fn naming_styles() {
        let parts = |n: Naming| {
            [V3_VHE, V3_NVHE, V2_NVHE, V2_NVHE.smp(4), RPI4]
                .map(|c| n.part(c))
                .join(" ")
        };
        assert_eq!(
            parts(Naming::GicVhe),
            "-gicv3-vhe -gicv3-nvhe -gicv2-nvhe -gicv2-nvhe -rpi4"
        );
        assert_eq!(
            parts(Naming::GicVheOnV3),
            "-gicv3-vhe -gicv3-nvhe -gicv2 -gicv2 -rpi4"
        );
        assert_eq!(parts(Naming::Gic), "-gicv3 -gicv3-nvhe -gicv2 -gicv2 -rpi4");
        assert_eq!(
            parts(Naming::GicSmp),
            "-gicv3-smp2 -gicv3-nvhe-smp2 -gicv2-smp2 -gicv2-smp4 -rpi4"
        );
        assert_eq!(parts(Naming::Quiet), " -gicv3-nvhe -gicv2 -gicv2 -rpi4");
    }

    /// Every scenario of every case list.
    fn scenarios() -> impl Iterator<Item = &'static Scenario> {
        [
            crate::cases::CASES,
            crate::cases_debug::CASES,
            crate::cases_pmu::CASES,
        ]
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            Entry::Matrix(s) => Some(s),
            Entry::Single(_) => None,
        })
    }

    #[test]
    fn every_scenario_runs_once_on_each_of_its_configurations() {
        let all = crate::cases::all();
        let mut generated = 0;
        for s in scenarios() {
            assert_eq!(s.name.matches("{cfg}").count(), 1, "{}", s.name);
            assert!(
                s.case.name.is_empty() && s.case.about.is_empty() && s.case.machine.is_empty(),
                "{}: name, about and machine come from the configurations",
                s.name
            );
            assert!(
                s.on.len() >= 2,
                "{}: a test on one configuration is a single case",
                s.name
            );
            for (i, (cfg, _)) in s.on.iter().enumerate() {
                assert!(
                    s.on[i + 1..].iter().all(|(other, _)| other != cfg),
                    "{}: {cfg:?} twice",
                    s.name
                );
            }
            let cases: Vec<Case> = s.cases().collect();
            assert_eq!(cases.len(), s.on.len(), "{}", s.name);
            for (c, &(cfg, about)) in cases.iter().zip(s.on) {
                // The tweak changes neither what the configuration decides nor the name.
                assert_eq!(c.name, s.name_on(cfg));
                assert_eq!(c.about, about, "{}", c.name);
                assert_eq!(c.machine, cfg.machine(), "{}", c.name);
                if let Some(added) = cfg.bootargs() {
                    assert!(c.bootargs.is_some_and(|b| b.contains(added)), "{}", c.name);
                }
                assert_eq!(
                    all.iter().filter(|a| a.name == c.name).count(),
                    1,
                    "{} is not run exactly once",
                    c.name
                );
            }
            generated += cases.len();
        }
        let singles = [
            crate::cases::CASES,
            crate::cases_debug::CASES,
            crate::cases_pmu::CASES,
        ]
        .into_iter()
        .flatten()
        .filter(|e| matches!(e, Entry::Single(_)))
        .count();
        let other = crate::cases_rpi4::CASES.len()
            + crate::cases_rpi4::VIRT_CASES.len()
            + crate::cases_boot::CASES.len();
        assert_eq!(all.len(), generated + singles + other);
    }

    /// What a case name's words claim about its machine must hold: `gicv2`/`gicv3` the GIC,
    /// `vhe`/`nvhe` whether the hypervisor uses VHE, `smpN` the CPU count, `rpi4`/`virt` the
    /// board. For generated and single cases alike.
    #[test]
    fn every_name_says_its_configuration_truly() {
        for c in crate::cases::all() {
            let m = c.machine;
            let arg = |flag: &str| {
                m.iter()
                    .position(|a| *a == flag)
                    .and_then(|i| m.get(i + 1))
                    .copied()
            };
            let raspi = m.contains(&"raspi4b");
            let gic = if raspi {
                Some("2")
            } else {
                arg("-M").and_then(|v| v.split(',').find_map(|p| p.strip_prefix("gic-version=")))
            };
            let forced = c
                .bootargs
                .is_some_and(|b| b.split(' ').any(|w| w == "elvisor.vhe=off"));
            let vhe = !raspi && arg("-cpu") == Some("max") && !forced;
            let cpus = if raspi { Some("4") } else { arg("-smp") };
            for word in c.name.split('-') {
                let holds = match word {
                    "gicv2" => gic == Some("2"),
                    "gicv3" => gic == Some("3"),
                    "vhe" => vhe,
                    "nvhe" => !vhe,
                    "rpi4" => raspi,
                    "virt" => !raspi,
                    w => match w.strip_prefix("smp") {
                        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                            cpus == Some(n)
                        }
                        _ => true,
                    },
                };
                assert!(
                    holds,
                    "{}: `{word}` does not match {m:?} {:?}",
                    c.name, c.bootargs
                );
            }
        }
    }

    #[test]
    fn a_scenario_makes_one_case_per_configuration() {
        const S: Scenario = Scenario {
            name: "x{cfg}-y",
            naming: Naming::GicVhe,
            on: &[(V3_VHE, "a"), (V3_NVHE, "b"), (V2_NVHE.smp(4), "c")],
            case: Case {
                bootargs: Some("k=v"),
                timeout_s: 7,
                ..FROM_CONFIG
            },
            tweak: Some(|cfg, c| match cfg.gic {
                Gic::V2 => Case { timeout_s: 9, ..c },
                Gic::V3 => c,
            }),
        };
        let cases: Vec<Case> = S.cases().collect();
        let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        assert_eq!(names, ["x-gicv3-vhe-y", "x-gicv3-nvhe-y", "x-gicv2-nvhe-y"]);
        assert_eq!(cases[0].bootargs, Some("k=v"));
        assert_eq!(cases[1].bootargs, Some("k=v elvisor.vhe=off"));
        assert_eq!(cases[1].about, "b");
        assert_eq!(
            cases.iter().map(|c| c.timeout_s).collect::<Vec<_>>(),
            [7, 7, 9]
        );
        assert_eq!(cases[2].machine, V2_NVHE.smp(4).machine());
    }
}
