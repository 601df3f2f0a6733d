//! Host tests of `vm::fdt`.

use super::*;
use crate::mm::{PhysAddr, PhysRange};
use crate::platform::{self, EnableMethod, PsciConduit};

const MPIDRS: [u64; 2] = [0, 1];

fn spec_v3() -> GuestFdt<'static> {
    GuestFdt {
        ram_base: GuestPhysAddr(0x4000_0000),
        ram_bytes: 0x1000_0000,
        mpidrs: &MPIDRS,
        uart: Some(GuestUart {
            base: GuestPhysAddr(0x0900_0000),
            size_bytes: 0x1000,
            intid: Some(33),
        }),
        gic: Some(GuestGic {
            version: GicVersion::V3,
            gicd: (GuestPhysAddr(0x0800_0000), 0x1_0000),
            gicr_or_gicc: (GuestPhysAddr(0x080a_0000), 0x4_0000),
            maintenance_intid: Some(25),
            pmu_intid: Some(23),
        }),
        bootargs: "console=ttyAMA0 earlycon",
        initrd: Some((GuestPhysAddr(0x4800_0000), 0x10_0000)),
        reset_count: 3,
        passthrough: &[],
        shmem: &[],
        rng_seed: None,
        kaslr_seed: None,
    }
}

fn spec_v2() -> GuestFdt<'static> {
    GuestFdt {
        gic: Some(GuestGic {
            version: GicVersion::V2,
            gicd: (GuestPhysAddr(0x0800_0000), 0x1_0000),
            gicr_or_gicc: (GuestPhysAddr(0x0801_0000), 0x1_0000),
            maintenance_intid: Some(25),
            pmu_intid: None,
        }),
        ..spec_v3()
    }
}

fn node<'b, 'a>(fdt: &'b fdt::Fdt<'a>, path: &str) -> fdt::node::FdtNode<'b, 'a> {
    fdt.find_node(path)
        .unwrap_or_else(|| panic!("no node {path}"))
}

fn value<'a>(fdt: &fdt::Fdt<'a>, path: &str, name: &str) -> &'a [u8] {
    node(fdt, path)
        .property(name)
        .unwrap_or_else(|| panic!("no property {path} {name}"))
        .value
}

fn cells(fdt: &fdt::Fdt<'_>, path: &str, name: &str) -> Vec<u32> {
    value(fdt, path, name)
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn strs<'a>(fdt: &fdt::Fdt<'a>, path: &str, name: &str) -> Vec<&'a str> {
    let v = value(fdt, path, name);
    core::str::from_utf8(&v[..v.len() - 1])
        .unwrap()
        .split('\0')
        .collect()
}

fn has(fdt: &fdt::Fdt<'_>, path: &str, name: &str) -> bool {
    fdt.find_node(path).and_then(|n| n.property(name)).is_some()
}

#[test]
fn gicv3_tree() {
    let blob = generate(&spec_v3()).unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();

    assert_eq!(cells(&fdt, "/", "#address-cells"), [2]);
    assert_eq!(cells(&fdt, "/", "#size-cells"), [2]);
    assert_eq!(strs(&fdt, "/", "compatible"), ["elvisor,vm"]);
    assert_eq!(strs(&fdt, "/", "model"), ["elvisor virtual machine"]);
    assert_eq!(cells(&fdt, "/", "interrupt-parent"), [GIC_PHANDLE]);

    assert_eq!(
        strs(&fdt, "/chosen", "bootargs"),
        ["console=ttyAMA0 earlycon"]
    );
    assert_eq!(strs(&fdt, "/chosen", "stdout-path"), ["/pl011@9000000"]);
    assert_eq!(
        cells(&fdt, "/chosen", "linux,initrd-start"),
        [0, 0x4800_0000]
    );
    assert_eq!(cells(&fdt, "/chosen", "linux,initrd-end"), [0, 0x4810_0000]);
    assert_eq!(cells(&fdt, "/chosen", "elvisor,reset-count"), [3]);

    assert_eq!(strs(&fdt, "/memory@40000000", "device_type"), ["memory"]);
    assert_eq!(
        cells(&fdt, "/memory@40000000", "reg"),
        [0, 0x4000_0000, 0, 0x1000_0000]
    );

    assert_eq!(cells(&fdt, "/cpus", "#address-cells"), [2]);
    assert_eq!(cells(&fdt, "/cpus", "#size-cells"), [0]);
    for (i, path) in ["/cpus/cpu@0", "/cpus/cpu@1"].iter().enumerate() {
        assert_eq!(strs(&fdt, path, "device_type"), ["cpu"]);
        assert_eq!(strs(&fdt, path, "compatible"), ["arm,armv8"]);
        assert_eq!(cells(&fdt, path, "reg"), [0, i as u32]);
        assert_eq!(strs(&fdt, path, "enable-method"), ["psci"]);
    }

    assert_eq!(
        strs(&fdt, "/psci", "compatible"),
        ["arm,psci-1.0", "arm,psci-0.2"]
    );
    assert_eq!(strs(&fdt, "/psci", "method"), ["hvc"]);

    let gic = "/intc@8000000";
    assert_eq!(strs(&fdt, gic, "compatible"), ["arm,gic-v3"]);
    assert_eq!(
        cells(&fdt, gic, "reg"),
        [0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0x4_0000]
    );
    assert_eq!(cells(&fdt, gic, "#redistributor-regions"), [1]);
    assert_eq!(cells(&fdt, gic, "#interrupt-cells"), [3]);
    assert!(value(&fdt, gic, "interrupt-controller").is_empty());
    assert_eq!(cells(&fdt, gic, "#address-cells"), [2]);
    assert_eq!(cells(&fdt, gic, "#size-cells"), [2]);
    assert!(value(&fdt, gic, "ranges").is_empty());
    assert_eq!(cells(&fdt, gic, "phandle"), [GIC_PHANDLE]);
    assert_eq!(cells(&fdt, gic, "interrupts"), [1, 9, 4]);

    assert_eq!(strs(&fdt, "/timer", "compatible"), ["arm,armv8-timer"]);
    assert_eq!(
        cells(&fdt, "/timer", "interrupts"),
        [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
    );
    assert!(has(&fdt, "/timer", "always-on"));
    assert_eq!(strs(&fdt, "/pmu", "compatible"), ["arm,armv8-pmuv3"]);
    assert_eq!(cells(&fdt, "/pmu", "interrupts"), [1, 7, 4]);

    assert_eq!(strs(&fdt, "/apb-pclk", "compatible"), ["fixed-clock"]);
    assert_eq!(cells(&fdt, "/apb-pclk", "#clock-cells"), [0]);
    assert_eq!(cells(&fdt, "/apb-pclk", "clock-frequency"), [24_000_000]);
    assert_eq!(cells(&fdt, "/apb-pclk", "phandle"), [CLOCK_PHANDLE]);

    let uart = "/pl011@9000000";
    assert_eq!(
        strs(&fdt, uart, "compatible"),
        ["arm,pl011", "arm,primecell"]
    );
    assert_eq!(cells(&fdt, uart, "reg"), [0, 0x0900_0000, 0, 0x1000]);
    assert_eq!(cells(&fdt, uart, "clocks"), [CLOCK_PHANDLE, CLOCK_PHANDLE]);
    assert_eq!(strs(&fdt, uart, "clock-names"), ["uartclk", "apb_pclk"]);
    assert_eq!(cells(&fdt, uart, "interrupts"), [0, 1, 4]);
}

/// Our own host-side parser reads a generated GICv3 tree back to the same facts.
#[test]
fn gicv3_tree_round_trips_through_platform_parser() {
    let blob = generate(&spec_v3()).unwrap();
    let image = PhysRange::new(PhysAddr(0x4008_0000), 0x10_0000);
    let p = platform::parse(&blob, PhysAddr(0x4400_0000), image).unwrap();
    assert_eq!(p.ram, [PhysRange::new(PhysAddr(0x4000_0000), 0x1000_0000)]);
    assert_eq!(p.cpus.len(), 2);
    assert_eq!(p.cpus[1].mpidr, 1);
    assert!(p.cpus.iter().all(|c| c.enable_method == EnableMethod::Psci));
    assert_eq!(p.gic.version, GicVersion::V3);
    assert_eq!(
        p.gic.gicr,
        [PhysRange::new(PhysAddr(0x080a_0000), 0x4_0000)]
    );
    assert_eq!(p.gic.maintenance_intid, Some(25));
    assert_eq!(
        (
            p.timer.phys_intid,
            p.timer.virt_intid,
            p.timer.hyp_virt_intid
        ),
        (30, 27, None)
    );
    assert_eq!(p.uart.base, PhysAddr(0x0900_0000));
    assert_eq!(p.uart.intid, Some(33));
    assert_eq!(p.psci, Some(PsciConduit::Hvc));
    assert_eq!(p.bootargs, "console=ttyAMA0 earlycon");
    assert_eq!(platform::early_console(&blob), Some(PhysAddr(0x0900_0000)));
}

#[test]
fn gicv2_tree() {
    let blob = generate(&spec_v2()).unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    let gic = "/intc@8000000";
    assert_eq!(strs(&fdt, gic, "compatible"), ["arm,cortex-a15-gic"]);
    assert_eq!(
        cells(&fdt, gic, "reg"),
        [0, 0x0800_0000, 0, 0x1_0000, 0, 0x0801_0000, 0, 0x1_0000]
    );
    assert!(!has(&fdt, gic, "#redistributor-regions"));
    assert_eq!(cells(&fdt, gic, "interrupts"), [1, 9, 0xf04]);
    assert_eq!(
        cells(&fdt, "/timer", "interrupts"),
        [1, 13, 0xf04, 1, 14, 0xf04, 1, 11, 0xf04, 1, 10, 0xf04]
    );
    // SPIs carry no CPU mask.
    assert_eq!(cells(&fdt, "/pl011@9000000", "interrupts"), [0, 1, 4]);
}

#[test]
fn optional_parts_left_out() {
    let spec = GuestFdt {
        gic: None,
        initrd: None,
        bootargs: "",
        ..spec_v3()
    };
    let blob = generate(&spec).unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert!(!has(&fdt, "/", "interrupt-parent"));
    assert!(fdt.find_node("/timer").is_none());
    assert!(fdt.find_node("/intc").is_none());
    assert!(!has(&fdt, "/pl011@9000000", "interrupts"));
    assert!(!has(&fdt, "/chosen", "linux,initrd-start"));
    assert_eq!(value(&fdt, "/chosen", "bootargs"), b"\0");

    let spec = GuestFdt {
        uart: None,
        ..spec_v3()
    };
    let blob = generate(&spec).unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert!(!has(&fdt, "/chosen", "stdout-path"));
    assert!(fdt.find_node("/pl011").is_none());
    assert!(fdt.find_node("/apb-pclk").is_none());
    assert!(fdt.find_node("/timer").is_some());
}

#[test]
fn bad_inputs_are_errors() {
    let check = |spec: GuestFdt<'_>, expected: FdtGenError| {
        let e = generate(&spec).unwrap_err();
        assert!(!e.to_string().is_empty());
        assert_eq!(e, expected);
    };
    check(
        GuestFdt {
            ram_bytes: 0,
            ..spec_v3()
        },
        FdtGenError::NoRam,
    );
    check(
        GuestFdt {
            ram_base: GuestPhysAddr(u64::MAX - 0xfff),
            ..spec_v3()
        },
        FdtGenError::BadRegion("RAM"),
    );
    check(
        GuestFdt {
            mpidrs: &[],
            ..spec_v3()
        },
        FdtGenError::NoCpus,
    );
    check(
        GuestFdt {
            mpidrs: &[0, 0x8000_0000],
            ..spec_v3()
        },
        FdtGenError::BadMpidr(0x8000_0000),
    );
    check(
        GuestFdt {
            mpidrs: &[0x100, 0x100],
            ..spec_v3()
        },
        FdtGenError::DuplicateMpidr(0x100),
    );
    check(
        GuestFdt {
            uart: Some(GuestUart {
                base: GuestPhysAddr(0x0900_0000),
                size_bytes: 0x1000,
                intid: Some(27),
            }),
            ..spec_v3()
        },
        FdtGenError::BadIntid {
            what: "UART (an SPI)",
            intid: 27,
        },
    );
    check(
        GuestFdt {
            gic: Some(GuestGic {
                maintenance_intid: Some(33),
                pmu_intid: None,
                ..spec_v3().gic.unwrap()
            }),
            ..spec_v3()
        },
        FdtGenError::BadIntid {
            what: "GIC maintenance interrupt (a PPI)",
            intid: 33,
        },
    );
    check(
        GuestFdt {
            gic: Some(GuestGic {
                pmu_intid: Some(7),
                ..spec_v3().gic.unwrap()
            }),
            ..spec_v3()
        },
        FdtGenError::BadIntid {
            what: "PMU overflow interrupt (a PPI)",
            intid: 7,
        },
    );
    check(
        GuestFdt {
            initrd: Some((GuestPhysAddr(0x4800_0000), 0)),
            ..spec_v3()
        },
        FdtGenError::BadRegion("initrd"),
    );
    check(
        GuestFdt {
            bootargs: "nul\0inside",
            ..spec_v3()
        },
        FdtGenError::Writer(vm_fdt::Error::InvalidString),
    );
}

/// Found by the `guest_fdt` fuzz target: a passthrough host path ending in '/' (or "/")
/// gave the guest a node with an empty name, and two devices with the same last path
/// component, or one named like a node of ours ("psci", "timer"), gave it two siblings of
/// one name. Each is now an error that names the node, not a malformed guest tree.
#[test]
fn passthrough_node_names_are_checked() {
    let dev = |host_path: &str| crate::vm::config::Passthrough {
        node_path: "/chosen/vm/pt".into(),
        host_path: host_path.into(),
        compatible: vec!["arm,pl061".into()],
        regs: vec![PhysRange::new(PhysAddr(0x0903_0000), 0x1000)],
        irqs: vec![],
    };
    for (devs, bad) in [
        (vec![dev("/")], ""),
        (vec![dev("/pl061@9030000/")], ""),
        (vec![dev("/psci")], "psci"),
        (vec![dev("/pl011@9000000")], "pl011@9000000"),
        (vec![dev("/a/gpio@1"), dev("/b/gpio@1")], "gpio@1"),
    ] {
        let spec = GuestFdt {
            passthrough: &devs,
            ..spec_v3()
        };
        assert_eq!(
            generate(&spec),
            Err(FdtGenError::BadNodeName(bad.into())),
            "{devs:?}"
        );
    }
    let devs = [dev("/pl061@9030000"), dev("/soc/gpio@1")];
    let blob = generate(&GuestFdt {
        passthrough: &devs,
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert!(fdt.find_node("/pl061@9030000").is_some() && fdt.find_node("/gpio@1").is_some());
}

#[test]
fn power_button_as_in_qemu_virt() {
    let nodes = power_button_nodes("/chosen/vm");
    let blob = generate(&GuestFdt {
        passthrough: &nodes,
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    let gpio = "/pl061@9030000";
    assert_eq!(
        strs(&fdt, gpio, "compatible"),
        ["arm,pl061", "arm,primecell"]
    );
    assert_eq!(cells(&fdt, gpio, "reg"), [0, 0x0903_0000, 0, 0x1000]);
    assert_eq!(
        cells(&fdt, gpio, "interrupts"),
        [GIC_SPI, 7, IRQ_TYPE_LEVEL_HIGH]
    );
    assert_eq!(cells(&fdt, gpio, "clocks"), [CLOCK_PHANDLE]);
    assert_eq!(strs(&fdt, gpio, "clock-names"), ["apb_pclk"]);
    assert!(has(&fdt, gpio, "gpio-controller"));
    assert_eq!(cells(&fdt, gpio, "#gpio-cells"), [2]);
    assert_eq!(cells(&fdt, gpio, "phandle"), [GPIO_PHANDLE]);
    assert!(!has(&fdt, gpio, "dma-coherent"));
    assert_eq!(strs(&fdt, "/gpio-keys", "compatible"), ["gpio-keys"]);
    assert!(!has(&fdt, "/gpio-keys", "reg"));
    let key = "/gpio-keys/poweroff";
    assert_eq!(cells(&fdt, key, "gpios"), [GPIO_PHANDLE, 3, 0]);
    assert_eq!(cells(&fdt, key, "linux,code"), [116]);
    assert_eq!(strs(&fdt, key, "label"), ["GPIO Key Poweroff"]);

    // gpio-keys without a PL061 to point at is left out.
    let keys_only = [nodes[1].clone()];
    let blob = generate(&GuestFdt {
        passthrough: &keys_only,
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert!(fdt.find_node("/gpio-keys").is_none());
}

#[test]
fn entropy_seeds_in_chosen() {
    let seed: Vec<u8> = (1..=64).collect();
    let blob = generate(&GuestFdt {
        rng_seed: Some(&seed),
        kaslr_seed: Some(0x0123_4567_89ab_cdef),
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    let chosen = fdt.find_node("/chosen").unwrap();
    assert_eq!(chosen.property("rng-seed").unwrap().value, &seed[..]);
    assert_eq!(
        chosen.property("kaslr-seed").unwrap().value,
        0x0123_4567_89ab_cdefu64.to_be_bytes()
    );
    // Without them, no empty properties.
    let blob = generate(&spec_v3()).unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert!(
        fdt.find_node("/chosen")
            .unwrap()
            .property("rng-seed")
            .is_none()
    );
}

#[test]
fn multi_cluster_mpidrs() {
    let mpidrs = [0x0, 0x1, 0x100, 0x1_0000_0000];
    let blob = generate(&GuestFdt {
        mpidrs: &mpidrs,
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert_eq!(cells(&fdt, "/cpus/cpu@100", "reg"), [0, 0x100]);
    assert_eq!(cells(&fdt, "/cpus/cpu@100000000", "reg"), [1, 0]);
}
#[test]
fn shared_memory_nodes() {
    let shm = [
        GuestShmem {
            name: "ping".into(),
            base: 0x2000_0000,
            size_bytes: 0x20_0000,
            doorbell: 0x0b00_0000,
            intid: 80,
            index: 1,
            peers: 2,
            read_only: false,
            pci_device: None,
        },
        GuestShmem {
            name: "board".into(),
            base: 0x3000_0000,
            size_bytes: 0x40_0000,
            doorbell: 0x0b00_1000,
            intid: 81,
            index: 0,
            peers: 3,
            read_only: true,
            pci_device: None,
        },
    ];
    let blob = generate(&GuestFdt {
        shmem: &shm,
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    let p = "/shmem@20000000";
    assert_eq!(
        strs(&fdt, p, "compatible"),
        ["elvisor,shmem", "generic-uio"]
    );
    assert_eq!(
        cells(&fdt, p, "reg"),
        [0, 0x2000_0000, 0, 0x20_0000, 0, 0x0b00_0000, 0, 0x1000]
    );
    assert_eq!(cells(&fdt, p, "interrupts"), [0, 48, 4]);
    assert_eq!(strs(&fdt, p, "elvisor,name"), ["ping"]);
    assert_eq!(cells(&fdt, p, "elvisor,index"), [1]);
    assert_eq!(cells(&fdt, p, "elvisor,peers"), [2]);
    assert!(!has(&fdt, p, "read-only"));
    let q = "/shmem@30000000";
    assert_eq!(cells(&fdt, q, "interrupts"), [0, 49, 4]);
    assert_eq!(cells(&fdt, q, "elvisor,peers"), [3]);
    assert!(has(&fdt, q, "read-only"));
    // An empty region is refused, not written.
    let bad = [GuestShmem {
        size_bytes: 0,
        ..shm[0].clone()
    }];
    assert!(
        generate(&GuestFdt {
            shmem: &bad,
            ..spec_v3()
        })
        .is_err()
    );
}
mod pci;
