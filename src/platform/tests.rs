use super::*;
use crate::fdt::{FDT_END_NODE, FDT_PROP, be32, nop_node};
use vm_fdt::{FdtWriter, FdtWriterResult};

static GICV3: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-gicv3.dtb");
static GICV2: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-gicv2.dtb");
static GICV3_VM: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-gicv3-vm.dtb");
static RPI4B: &[u8] = include_bytes!("../../tests/fixtures/rpi4b.dtb");
static RPI4B_QEMU: &[u8] = include_bytes!("../../tests/fixtures/rpi4b-qemu.dtb");

const DTB_PA: PhysAddr = PhysAddr(0x4800_0000);
const IMAGE: PhysRange = PhysRange::new(PhysAddr(0x4008_0000), 0x20_0000);

fn range(base: u64, size: u64) -> PhysRange {
    PhysRange::new(PhysAddr(base), size)
}

fn parse_ok(dtb: &[u8]) -> Platform {
    parse(dtb, DTB_PA, IMAGE).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(dtb: &[u8]) -> ConfigError {
    parse(dtb, DTB_PA, IMAGE).expect_err("the device tree should be rejected")
}

#[test]
fn qemu_virt_gicv3() {
    let p = parse_ok(GICV3);
    assert_eq!(p.ram, [range(0x4000_0000, 0x4000_0000)]);
    assert_eq!(
        p.cpus,
        [
            Cpu {
                mpidr: 0,
                enable_method: EnableMethod::Psci
            },
            Cpu {
                mpidr: 1,
                enable_method: EnableMethod::Psci
            },
        ]
    );
    assert_eq!(p.gic.version, GicVersion::V3);
    assert_eq!(p.gic.gicd, range(0x0800_0000, 0x1_0000));
    assert_eq!(p.gic.gicr, [range(0x080a_0000, 0xf6_0000)]);
    assert_eq!((p.gic.gicc, p.gic.gich, p.gic.gicv), (None, None, None));
    assert_eq!(p.gic.maintenance_intid, Some(25));
    assert_eq!(
        p.timer,
        Timer {
            secure_phys_intid: 29,
            phys_intid: 30,
            virt_intid: 27,
            hyp_phys_intid: 26,
            hyp_virt_intid: Some(28),
        }
    );
    assert_eq!(p.uart.path, "/pl011@9000000");
    assert_eq!(p.uart.base, PhysAddr(0x0900_0000));
    assert_eq!(p.uart.size_bytes, 0x1000);
    assert_eq!(p.uart.intid, Some(33));
    assert_eq!(p.psci, Some(PsciConduit::Smc));
    assert_eq!(p.bootargs, "");
    assert!(p.vms.is_empty());
    // The dumped blob is QEMU's unpacked 1 MiB one.
    assert_eq!(p.reserved, [IMAGE, range(DTB_PA.0, 0x10_0000)]);
}

#[test]
fn qemu_virt_gicv2() {
    let p = parse_ok(GICV2);
    assert_eq!(p.ram, [range(0x4000_0000, 0x4000_0000)]);
    assert_eq!(p.cpus.len(), 2);
    assert!(p.cpus.iter().all(|c| c.enable_method == EnableMethod::Psci));
    assert_eq!(p.gic.version, GicVersion::V2);
    assert_eq!(p.gic.gicd, range(0x0800_0000, 0x1_0000));
    assert!(p.gic.gicr.is_empty());
    assert_eq!(p.gic.gicc, Some(range(0x0801_0000, 0x1_0000)));
    assert_eq!(p.gic.gich, Some(range(0x0803_0000, 0x1_0000)));
    assert_eq!(p.gic.gicv, Some(range(0x0804_0000, 0x1_0000)));
    assert_eq!(p.gic.maintenance_intid, Some(25));
    // -cpu cortex-a72 has no VHE, so QEMU lists no EL2 virtual timer.
    assert_eq!(
        p.timer,
        Timer {
            secure_phys_intid: 29,
            phys_intid: 30,
            virt_intid: 27,
            hyp_phys_intid: 26,
            hyp_virt_intid: None,
        }
    );
    assert_eq!(p.uart.base, PhysAddr(0x0900_0000));
    assert_eq!(p.uart.intid, Some(33));
    assert_eq!(p.psci, Some(PsciConduit::Smc));
}

fn rpi4b_cpus() -> Vec<Cpu> {
    [0xd8, 0xe0, 0xe8, 0xf0]
        .iter()
        .enumerate()
        .map(|(i, &addr)| Cpu {
            mpidr: i as u64,
            enable_method: EnableMethod::SpinTable {
                release_addr: PhysAddr(addr),
            },
        })
        .collect()
}

fn assert_rpi4b_devices(p: &Platform) {
    assert_eq!(p.cpus, rpi4b_cpus());
    assert_eq!(p.gic.version, GicVersion::V2);
    assert_eq!(p.gic.gicd, range(0xff84_1000, 0x1000));
    assert_eq!(p.gic.gicc, Some(range(0xff84_2000, 0x2000)));
    assert_eq!(p.gic.gich, Some(range(0xff84_4000, 0x2000)));
    assert_eq!(p.gic.gicv, Some(range(0xff84_6000, 0x2000)));
    assert_eq!(p.gic.maintenance_intid, Some(25));
    assert_eq!(
        p.timer,
        Timer {
            secure_phys_intid: 29,
            phys_intid: 30,
            virt_intid: 27,
            hyp_phys_intid: 26,
            hyp_virt_intid: None,
        }
    );
    // stdout-path is "serial1:115200n8", the mini-UART; serial0 is the PL011.
    assert_eq!(p.uart.path, "/soc/serial@7e201000");
    assert_eq!(p.uart.base, PhysAddr(0xfe20_1000));
    assert_eq!(p.uart.size_bytes, 0x200);
    assert_eq!(p.uart.intid, Some(32 + 0x79));
    assert_eq!(p.psci, None);
}

#[test]
fn rpi4b_as_qemu_passes_it() {
    let p = parse_ok(RPI4B_QEMU);
    // QEMU fills in /memory@0 with the 960 MiB below the VideoCore carve-out.
    assert_eq!(p.ram, [range(0, 0x3c00_0000)]);
    assert_rpi4b_devices(&p);
    // /memreserve/ keeps the spin table page; nvram@0 is disabled, linux,cma has no reg.
    assert_eq!(
        p.reserved,
        [range(0, 0x1000), IMAGE, range(DTB_PA.0, 74772)]
    );
}

#[test]
fn rpi4b_as_debian_ships_it() {
    // The firmware fills in memory@0; as shipped its reg is <0 0 0>.
    let e = parse_err(RPI4B);
    assert_eq!((e.node.as_str(), e.property.as_str()), ("/memory", "reg"));

    // Everything else parses; check the pieces one by one.
    let fdt = Dtb::new(RPI4B).unwrap();
    let blob = fdt.blob;
    let root = Lineage::root(&fdt).unwrap();
    let (gic, gic_node) = parse_gic(&root).unwrap();
    let p = Platform {
        ram: Vec::new(),
        reserved: memreserve(blob).unwrap(),
        cpus: parse_cpus(&fdt).unwrap(),
        timer: parse_timer(&root, &gic_node).unwrap(),
        uart: parse_uart(&fdt, &gic_node).unwrap(),
        gic,
        psci: parse_psci(&fdt).unwrap(),
        bootargs: String::new(),
        rng_seed: Vec::new(),
        vms: Vec::new(),
        shmem: Vec::new(),
    };
    assert_rpi4b_devices(&p);
    assert_eq!(p.reserved, [range(0, 0x1000)]);
    assert_eq!(early_console(RPI4B), Some(PhysAddr(0xfe20_1000)));
}

#[test]
fn vm_fixture() {
    let p = parse_ok(GICV3_VM);
    let kernel = range(0x6000_0000, 0x1_0000);
    assert_eq!(
        p.vms,
        [VmConfig {
            name: "vm-smoke".into(),
            node_path: "/chosen/vm-smoke".into(),
            vcpus: 1,
            cpu_affinity: Vec::new(),
            memory_bytes: 0x400_0000,
            host_address: None,
            direct_map: false,
            bootargs: "hello".into(),
            kernel,
            ramdisk: None,
            passthrough: Vec::new(),
            disks: Vec::new(),
            power_button: true,
            autostart: true,
            sve_vector_bits: None,
            pmu: true,
            shmem: Vec::new(),
            nics: Vec::new(),
        }]
    );
    assert!(p.reserved.contains(&kernel));
    assert!(p.reserved.windows(2).all(|w| w[0].base <= w[1].base));
}

#[test]
fn early_helpers() {
    assert_eq!(early_console(GICV3), Some(PhysAddr(0x0900_0000)));
    assert_eq!(early_console(GICV2), Some(PhysAddr(0x0900_0000)));
    assert_eq!(early_console(RPI4B_QEMU), Some(PhysAddr(0xfe20_1000)));
    assert_eq!(early_console(&[0u8; 64]), None);
    assert_eq!(early_console(&GICV3[..100]), None);
    assert_eq!(early_bootargs(GICV3), None);
    assert_eq!(early_psci(GICV3), parse_ok(GICV3).psci);
    assert!(early_psci(GICV3).is_some(), "QEMU virt's DTB has /psci");
    assert_eq!(early_psci(RPI4B), None, "the Pi 4 firmware has no PSCI");
    assert_eq!(early_psci(&[0u8; 64]), None);
    let dtb = host_dt(true, &|w| {
        w.property_string("bootargs", "console=hvc0 loglevel=8")?;
        w.property_string("stdout-path", "serial0:115200n8")
    });
    assert_eq!(early_bootargs(&dtb), Some("console=hvc0 loglevel=8"));
    assert_eq!(early_console(&dtb), Some(PhysAddr(0x0900_0000)));
    assert_eq!(parse_ok(&dtb).bootargs, "console=hvc0 loglevel=8");
}

// --- Small trees built in the test -------------------------------------------------------

type Build<'f> = &'f dyn Fn(&mut FdtWriter) -> FdtWriterResult<()>;

/// A QEMU-virt-like host tree; `chosen` writes the /chosen properties and subnodes.
fn host_dt(memory: bool, chosen: Build<'_>) -> Vec<u8> {
    host_dt_with(memory, &|_| Ok(()), chosen)
}

/// As [`host_dt`], with `extra` writing more nodes under the root.
fn host_dt_with(memory: bool, extra: Build<'_>, chosen: Build<'_>) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let build = |w: &mut FdtWriter| -> FdtWriterResult<()> {
        let root = w.begin_node("")?;
        w.property_u32("#address-cells", 2)?;
        w.property_u32("#size-cells", 2)?;
        w.property_u32("interrupt-parent", 1)?;
        if memory {
            let n = w.begin_node("memory@40000000")?;
            w.property_string("device_type", "memory")?;
            w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000])?;
            w.end_node(n)?;
        }
        let cpus = w.begin_node("cpus")?;
        w.property_u32("#address-cells", 1)?;
        w.property_u32("#size-cells", 0)?;
        for i in 0..2u32 {
            let n = w.begin_node(&format!("cpu@{i}"))?;
            w.property_string("device_type", "cpu")?;
            w.property_u32("reg", i)?;
            w.property_string("enable-method", "psci")?;
            w.end_node(n)?;
        }
        w.end_node(cpus)?;
        let n = w.begin_node("psci")?;
        w.property_string("method", "hvc")?;
        w.end_node(n)?;
        let n = w.begin_node("intc@8000000")?;
        w.property_string("compatible", "arm,gic-v3")?;
        w.property_null("interrupt-controller")?;
        w.property_u32("#interrupt-cells", 3)?;
        w.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000])?;
        w.property_u32("phandle", 1)?;
        w.end_node(n)?;
        let n = w.begin_node("timer")?;
        w.property_string("compatible", "arm,armv8-timer")?;
        w.property_array_u32("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])?;
        w.end_node(n)?;
        let n = w.begin_node("pl011@9000000")?;
        w.property_string("compatible", "arm,pl011")?;
        w.property_array_u64("reg", &[0x900_0000, 0x1000])?;
        w.property_array_u32("interrupts", &[0, 1, 4])?;
        w.end_node(n)?;
        extra(w)?;
        let n = w.begin_node("aliases")?;
        w.property_string("serial0", "/pl011@9000000")?;
        w.end_node(n)?;
        let n = w.begin_node("chosen")?;
        chosen(w)?;
        w.end_node(n)?;
        w.end_node(root)
    };
    build(&mut w).unwrap();
    w.finish().unwrap()
}

fn stdout(w: &mut FdtWriter) -> FdtWriterResult<()> {
    w.property_string("stdout-path", "/pl011@9000000")
}

/// /chosen with the console and one VM node `vm-a`; `props` writes its properties and
/// `kernel` says whether it gets a kernel module at 0x6000_0000.
fn vm_dt(props: Build<'_>, kernel: bool) -> Vec<u8> {
    host_dt(true, &|w| {
        stdout(w)?;
        let vm = w.begin_node("vm-a")?;
        w.property_string("compatible", "elvisor,vm")?;
        props(w)?;
        if kernel {
            let k = w.begin_node("kernel")?;
            w.property_string_list(
                "compatible",
                vec!["multiboot,kernel".into(), "multiboot,module".into()],
            )?;
            w.property_array_u64("reg", &[0x6000_0000, 0x10_0000])?;
            w.end_node(k)?;
        }
        w.end_node(vm)
    })
}

fn good_vm(w: &mut FdtWriter) -> FdtWriterResult<()> {
    w.property_u32("cpus", 2)?;
    w.property_u64("memory", 0x800_0000)
}

fn assert_error(dtb: &[u8], node: &str, property: &str) {
    let e = parse_err(dtb);
    assert_eq!(
        (e.node.as_str(), e.property.as_str()),
        (node, property),
        "unexpected error: {e}"
    );
    assert!(!e.problem.is_empty());
}

#[test]
fn built_tree_parses() {
    let p = parse_ok(&vm_dt(
        &|w| {
            good_vm(w)?;
            w.property_string("elvisor,name", "linux")?;
            w.property_array_u32("elvisor,cpu-affinity", &[1, 0])?;
            w.property_string("bootargs", "console=ttyAMA0")?;
            let r = w.begin_node("ramdisk")?;
            w.property_string("compatible", "multiboot,ramdisk")?;
            w.property_array_u64("reg", &[0x6100_0000, 0x20_0000])?;
            w.end_node(r)
        },
        true,
    ));
    assert_eq!(p.psci, Some(PsciConduit::Hvc));
    assert_eq!(p.timer.hyp_virt_intid, None);
    let vm = &p.vms[0];
    assert_eq!(vm.name, "linux");
    assert_eq!(vm.vcpus, 2);
    assert_eq!(vm.cpu_affinity, [1, 0]);
    assert_eq!(vm.memory_bytes, 0x800_0000);
    assert_eq!(vm.bootargs, "console=ttyAMA0");
    assert_eq!(vm.kernel, range(0x6000_0000, 0x10_0000));
    assert_eq!(vm.ramdisk, Some(range(0x6100_0000, 0x20_0000)));
}

#[test]
fn missing_memory_node() {
    assert_error(&host_dt(false, &stdout), "/memory", "reg");
}

#[test]
fn missing_stdout_path() {
    assert_error(&host_dt(true, &|_| Ok(())), "/chosen", "stdout-path");
    assert_eq!(early_console(&host_dt(true, &|_| Ok(()))), None);
    // linux,stdout-path is the fallback.
    let dtb = host_dt(true, &|w| w.property_string("linux,stdout-path", "serial0"));
    assert_eq!(parse_ok(&dtb).uart.base, PhysAddr(0x900_0000));
    // A name that resolves to nothing.
    let dtb = host_dt(true, &|w| w.property_string("stdout-path", "serial7:9600"));
    assert_error(&dtb, "/chosen", "stdout-path");
}

#[test]
fn vm_without_kernel() {
    assert_error(&vm_dt(&good_vm, false), "/chosen/vm-a", "");
}

#[test]
fn vm_bad_memory() {
    let bad_size = |bytes: u64| {
        vm_dt(
            &move |w| {
                w.property_u32("cpus", 1)?;
                w.property_u64("memory", bytes)
            },
            true,
        )
    };
    assert_error(&bad_size(0x30_0000), "/chosen/vm-a", "memory");
    assert_error(&bad_size(0), "/chosen/vm-a", "memory");
    let one_cell = vm_dt(
        &|w| {
            w.property_u32("cpus", 1)?;
            w.property_u32("memory", 0x400_0000)
        },
        true,
    );
    assert_error(&one_cell, "/chosen/vm-a", "memory");
    assert_error(
        &vm_dt(&|w| w.property_u32("cpus", 1), true),
        "/chosen/vm-a",
        "memory",
    );
}

#[test]
fn vm_host_address() {
    let at = |addr: u64| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                w.property_u64("elvisor,host-address", addr)
            },
            true,
        )
    };
    // 128 MiB at 0x7000_0000: inside RAM, clear of the kernel module at 0x6000_0000.
    let p = parse_ok(&at(0x7000_0000));
    let ram = range(0x7000_0000, 0x800_0000);
    assert_eq!(p.vms[0].fixed_host_ram(), Some(ram));
    assert!(p.reserved.contains(&ram), "kept from the frame allocator");
    // Not 2 MiB aligned; outside RAM; over the VM's own kernel module; one cell.
    for bad in [0x7010_0000, 0x7c00_0000, 0x5c00_0000] {
        assert_error(&at(bad), "/chosen/vm-a", "elvisor,host-address");
    }
    let one_cell = vm_dt(
        &|w| {
            good_vm(w)?;
            w.property_u32("elvisor,host-address", 0x7000_0000)
        },
        true,
    );
    assert_error(&one_cell, "/chosen/vm-a", "elvisor,host-address");
    // Direct-mapped: needs a host address.
    let direct = |with_address: bool| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                if with_address {
                    w.property_u64("elvisor,host-address", 0x7000_0000)?;
                }
                w.property_null("elvisor,direct-map")
            },
            true,
        )
    };
    assert!(parse_ok(&direct(true)).vms[0].direct_map);
    assert_error(&direct(false), "/chosen/vm-a", "elvisor,direct-map");
    // Messages name ranges the way a user reads them, never in Rust's debug form.
    let e = parse_err(&at(0x7c00_0000));
    assert!(e.problem.contains("0x7c000000..0x84000000"), "{e}");
}

#[test]
fn vm_bad_cpus() {
    let cpus = |n: u32| {
        vm_dt(
            &move |w| {
                w.property_u32("cpus", n)?;
                w.property_u64("memory", 0x20_0000)
            },
            true,
        )
    };
    assert_error(&cpus(0), "/chosen/vm-a", "cpus");
    assert_error(&cpus(65), "/chosen/vm-a", "cpus");
    // Two host CPUs and no affinity list: the vCPUs share them (i mod 2).
    let p = parse_ok(&cpus(3));
    assert_eq!((p.vms[0].vcpus, p.vms[0].cpu_affinity.len()), (3, 0));
    let affinity = |list: &'static [u32]| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                w.property_array_u32("elvisor,cpu-affinity", list)
            },
            true,
        )
    };
    assert_error(&affinity(&[0]), "/chosen/vm-a", "elvisor,cpu-affinity");
    assert_error(&affinity(&[0, 2]), "/chosen/vm-a", "elvisor,cpu-affinity");
}

#[test]
fn vm_sve_vector_length() {
    let sve = |v: u32| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                w.property_u32("elvisor,sve-vector-length", v)
            },
            true,
        )
    };
    assert_eq!(parse_ok(&sve(0)).vms[0].sve_vector_bits, Some(0));
    assert_eq!(parse_ok(&sve(512)).vms[0].sve_vector_bits, Some(512));
    for bad in [64, 500, 4096] {
        assert_error(&sve(bad), "/chosen/vm-a", "elvisor,sve-vector-length");
    }
}

#[test]
fn vm_power_button() {
    let button = |v: u32| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                w.property_u32("elvisor,power-button", v)
            },
            true,
        )
    };
    assert!(!parse_ok(&button(0)).vms[0].power_button);
    assert!(parse_ok(&button(1)).vms[0].power_button);
    assert_error(&button(2), "/chosen/vm-a", "elvisor,power-button");
}

#[test]
fn vm_pmu() {
    let pmu = |v: u32| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                w.property_u32("elvisor,pmu", v)
            },
            true,
        )
    };
    assert!(!parse_ok(&pmu(0)).vms[0].pmu);
    assert!(parse_ok(&pmu(1)).vms[0].pmu);
    assert_error(&pmu(2), "/chosen/vm-a", "elvisor,pmu");
}

#[test]
fn vm_autostart() {
    let with = |v: Option<&'static [u32]>| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                match v {
                    Some(cells) => w.property_array_u32("elvisor,autostart", cells),
                    None => Ok(()),
                }
            },
            true,
        )
    };
    assert!(parse_ok(&with(None)).vms[0].autostart);
    assert!(parse_ok(&with(Some(&[1]))).vms[0].autostart);
    assert!(!parse_ok(&with(Some(&[0]))).vms[0].autostart);
    assert_error(&with(Some(&[2])), "/chosen/vm-a", "elvisor,autostart");
    assert_error(&with(Some(&[0, 0])), "/chosen/vm-a", "elvisor,autostart");
}

#[test]
fn vm_bad_modules() {
    let module = |reg: &'static [u64], second_kernel: bool| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                for name in ["kernel", "kernel2"]
                    .iter()
                    .take(1 + second_kernel as usize)
                {
                    let k = w.begin_node(name)?;
                    w.property_string("compatible", "multiboot,kernel")?;
                    w.property_array_u64("reg", reg)?;
                    w.end_node(k)?;
                }
                Ok(())
            },
            false,
        )
    };
    let path = "/chosen/vm-a/kernel";
    assert_error(&module(&[0x6000_0000, 0], false), path, "reg");
    assert_error(&module(&[0x6000_0000], false), path, "reg");
    // Outside RAM, over the host DTB, over the hypervisor image.
    assert_error(&module(&[0x1000_0000, 0x1000], false), path, "reg");
    assert_error(&module(&[DTB_PA.0, 0x1000], false), path, "reg");
    assert_error(
        &module(&[IMAGE.base.0 + 0x1000, 0x1000], false),
        path,
        "reg",
    );
    assert_error(
        &module(&[0x6000_0000, 0x1000], true),
        "/chosen/vm-a/kernel2",
        "compatible",
    );
    // 1-cell address and size through the VM node's own cells.
    let p = parse_ok(&vm_dt(
        &|w| {
            good_vm(w)?;
            w.property_u32("#address-cells", 1)?;
            w.property_u32("#size-cells", 1)?;
            let k = w.begin_node("kernel")?;
            w.property_string("compatible", "multiboot,kernel")?;
            w.property_array_u32("reg", &[0x6000_0000, 0x8000])?;
            w.end_node(k)
        },
        false,
    ));
    assert_eq!(p.vms[0].kernel, range(0x6000_0000, 0x8000));
}

#[test]
fn duplicate_vm_names() {
    let dtb = host_dt(true, &|w| {
        stdout(w)?;
        for name in ["vm@0", "vm@1"] {
            let vm = w.begin_node(name)?;
            w.property_string("compatible", "elvisor,vm")?;
            w.property_string("elvisor,name", "twin")?;
            good_vm(w)?;
            let k = w.begin_node("kernel")?;
            w.property_string("compatible", "multiboot,kernel")?;
            w.property_array_u64("reg", &[0x6000_0000, 0x1000])?;
            w.end_node(k)?;
            w.end_node(vm)?;
        }
        Ok(())
    });
    assert_error(&dtb, "/chosen/vm@1", "elvisor,name");
}

#[test]
fn reserved_memory() {
    let extra = |w: &mut FdtWriter| -> FdtWriterResult<()> {
        let rm = w.begin_node("reserved-memory")?;
        w.property_u32("#address-cells", 2)?;
        w.property_u32("#size-cells", 2)?;
        w.property_null("ranges")?;
        for (name, base, status) in [
            ("fw@60000000", 0x6000_0000u64, "okay"),
            ("off@70000000", 0x7000_0000, "disabled"),
        ] {
            let n = w.begin_node(name)?;
            w.property_array_u64("reg", &[base, 0x10_0000])?;
            w.property_string("status", status)?;
            w.end_node(n)?;
        }
        let n = w.begin_node("pool")?;
        w.property_string("compatible", "shared-dma-pool")?;
        w.property_u32("size", 0x40_0000)?;
        w.end_node(n)?;
        w.end_node(rm)
    };
    let p = parse_ok(&host_dt_with(true, &extra, &stdout));
    assert_eq!(
        p.reserved,
        [
            IMAGE,
            range(DTB_PA.0, p.reserved[1].size_bytes),
            range(0x6000_0000, 0x10_0000)
        ]
    );
    // A kernel module placed over the firmware's reservation.
    let dtb = host_dt_with(true, &extra, &|w| {
        stdout(w)?;
        let vm = w.begin_node("vm-a")?;
        w.property_string("compatible", "elvisor,vm")?;
        good_vm(w)?;
        let k = w.begin_node("kernel")?;
        w.property_string("compatible", "multiboot,kernel")?;
        w.property_array_u64("reg", &[0x6008_0000, 0x1000])?;
        w.end_node(k)?;
        w.end_node(vm)
    });
    assert_error(&dtb, "/chosen/vm-a/kernel", "reg");
}

/// A Raspberry-Pi-like /soc bus holding a second PL011 at bus address 0x7e20_1000.
fn soc(ranges: Option<&'static [u32]>) -> impl Fn(&mut FdtWriter) -> FdtWriterResult<()> {
    move |w| {
        let n = w.begin_node("soc")?;
        w.property_u32("#address-cells", 1)?;
        w.property_u32("#size-cells", 1)?;
        if let Some(ranges) = ranges {
            w.property_array_u32("ranges", ranges)?;
        }
        let s = w.begin_node("serial@7e201000")?;
        w.property_string_list(
            "compatible",
            vec!["arm,pl011".into(), "arm,primecell".into()],
        )?;
        w.property_array_u32("reg", &[0x7e20_1000, 0x200])?;
        w.property_array_u32("interrupts", &[0, 0x79, 4])?;
        w.end_node(s)?;
        w.end_node(n)
    }
}

fn soc_console(w: &mut FdtWriter) -> FdtWriterResult<()> {
    w.property_string("stdout-path", "/soc/serial@7e201000:115200n8")
}

#[test]
fn ranges_translation() {
    const PI_RANGES: &[u32] = &[
        0x7e00_0000,
        0,
        0xfe00_0000,
        0x180_0000, //
        0x4000_0000,
        0,
        0xff80_0000,
        0x80_0000,
    ];
    let dtb = host_dt_with(true, &soc(Some(PI_RANGES)), &soc_console);
    let p = parse_ok(&dtb);
    assert_eq!(p.uart.base, PhysAddr(0xfe20_1000));
    assert_eq!(p.uart.intid, Some(153));
    assert_eq!(early_console(&dtb), Some(PhysAddr(0xfe20_1000)));

    // Empty ranges: identity.
    let dtb = host_dt_with(true, &soc(Some(&[])), &soc_console);
    assert_eq!(parse_ok(&dtb).uart.base, PhysAddr(0x7e20_1000));

    // No ranges: not translatable, and the error names the bus.
    let dtb = host_dt_with(true, &soc(None), &soc_console);
    assert_error(&dtb, "/soc", "ranges");
    assert_eq!(early_console(&dtb), None);

    // A ranges entry that does not cover the device.
    let dtb = host_dt_with(
        true,
        &soc(Some(&[0x4000_0000, 0, 0xff80_0000, 0x80_0000])),
        &soc_console,
    );
    assert_error(&dtb, "/soc", "ranges");
}

#[test]
fn non_pl011_console() {
    // stdout-path names a UART we cannot drive and no serialN alias names a PL011.
    let extra = |w: &mut FdtWriter| -> FdtWriterResult<()> {
        let n = w.begin_node("serial@9100000")?;
        w.property_string("compatible", "ns16550a")?;
        w.property_array_u64("reg", &[0x910_0000, 0x100])?;
        w.end_node(n)
    };
    let dtb = host_dt_with(true, &extra, &|w| {
        w.property_string("stdout-path", "/serial@9100000")
    });
    // serial0 names the PL011, so it is used instead.
    assert_eq!(parse_ok(&dtb).uart.base, PhysAddr(0x900_0000));
}

#[test]
fn nop_tokens_are_skipped() {
    // QEMU's raspi4b blob (rpi4b_as_qemu_passes_it) is full of them; here, one node's worth
    // between properties and subnodes, between siblings and before FDT_END_NODE.
    let p = parse_ok(&nop_node(GICV3_VM, "psci"));
    assert_eq!(p.psci, None);
    assert_eq!(p.vms.len(), 1);
    let no_kernel = nop_node(GICV3_VM, "kernel");
    let e = parse_err(&no_kernel);
    assert_eq!(
        (e.node.as_str(), e.property.as_str()),
        ("/chosen/vm-smoke", "")
    );
    let p = parse_ok(&nop_node(GICV3_VM, "vm-smoke"));
    assert!(p.vms.is_empty());
    assert_eq!(
        early_console(&nop_node(GICV3_VM, "aliases")),
        Some(PhysAddr(0x900_0000))
    );
}

#[test]
fn malformed_blobs_fail_cleanly() {
    assert!(parse(&[], DTB_PA, IMAGE).is_err());
    assert!(parse(&GICV3_VM[..GICV3_VM.len() - 1], DTB_PA, IMAGE).is_err());
    // A property token turned into FDT_END_NODE unbalances the tree.
    let mut bad = GICV3_VM.to_vec();
    let first = be32(&bad, 8).unwrap() as usize + 8;
    assert_eq!(be32(&bad, first), Some(FDT_PROP));
    bad[first..first + 4].copy_from_slice(&FDT_END_NODE.to_be_bytes());
    assert!(parse(&bad, DTB_PA, IMAGE).is_err());
    assert_eq!(early_console(&bad), None);
    assert_eq!(early_bootargs(&bad), None);
}

/// Flips bytes all over real blobs: every result must be a value, never a panic.
#[test]
fn mutated_blobs_never_panic() {
    let mut seed: u64 = 0x1234_5678_9abc_def0;
    let mut next = move || {
        // xorshift64*
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for (blob, rounds) in [(GICV3_VM, 3000), (RPI4B_QEMU, 300)] {
        let used = fdt_total_size(blob).unwrap().min(blob.len());
        for _ in 0..rounds {
            let mut copy = blob[..used].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % used as u64) as usize;
                copy[at] = match next() % 4 {
                    0 => 0,
                    1 => 0xff,
                    2 => copy[at] ^ (1 << (next() % 8)),
                    _ => next() as u8,
                };
            }
            let _ = parse(&copy, DTB_PA, IMAGE);
            let _ = early_console(&copy);
            let _ = early_bootargs(&copy);
            let cut = (next() % used as u64) as usize;
            let _ = parse(&copy[..cut], DTB_PA, IMAGE);
        }
    }
}

/// `disk` modules (vm::config::disk): parsed in node order with `read-only` and `elvisor,id`,
/// reserved, and refused when malformed, outside RAM, over another module (of this VM or
/// another), or more than there are virtio-mmio slots.
#[test]
fn vm_disks() {
    let disk = |w: &mut FdtWriter, name: &str, reg: &[u64], ro: bool| -> FdtWriterResult<()> {
        let d = w.begin_node(name)?;
        w.property_string_list(
            "compatible",
            vec!["elvisor,disk".into(), "multiboot,module".into()],
        )?;
        w.property_array_u64("reg", reg)?;
        if ro {
            w.property_null("read-only")?;
        }
        w.end_node(d)
    };
    let p = parse_ok(&vm_dt(
        &|w| {
            good_vm(w)?;
            disk(w, "disk-a", &[0x6200_0000, 0x10_0600], false)?;
            disk(w, "disk-b", &[0x6400_0000, 0x200], true)?;
            let d = w.begin_node("disk-c")?;
            w.property_string("compatible", "elvisor,disk")?;
            w.property_string("elvisor,id", "serial-42")?;
            w.property_array_u64("reg", &[0x6500_0000, 0x1000])?;
            w.end_node(d)
        },
        true,
    ));
    let d = &p.vms[0].disks;
    assert_eq!(d.len(), 3);
    assert_eq!(
        (
            d[0].node_path.as_str(),
            d[0].range,
            d[0].read_only,
            d[0].id.as_str()
        ),
        (
            "/chosen/vm-a/disk-a",
            range(0x6200_0000, 0x10_0600),
            false,
            "disk-a"
        )
    );
    assert!(d[1].read_only);
    assert_eq!(d[2].id, "serial-42");
    for x in d {
        assert!(p.reserved.contains(&x.range));
    }

    let one = |reg: &'static [u64]| {
        vm_dt(
            &move |w| {
                good_vm(w)?;
                disk(w, "disk", reg, false)
            },
            true,
        )
    };
    let path = "/chosen/vm-a/disk";
    assert_error(&one(&[0x6200_0000, 0x100]), path, "reg"); // under one sector
    assert_error(&one(&[0x6200_0000]), path, "reg");
    assert_error(&one(&[0x1000_0000, 0x1000]), path, "reg"); // not RAM
    assert_error(&one(&[DTB_PA.0, 0x1000]), path, "reg");
    assert_error(&one(&[0x6008_0000, 0x10_0000]), path, "reg"); // over the kernel
    assert_error(&one(&[u64::MAX - 0xfff, 0x1000]), path, "reg");
    let two_overlapping = vm_dt(
        &|w| {
            good_vm(w)?;
            disk(w, "disk-a", &[0x6200_0000, 0x2000], false)?;
            disk(w, "disk-b", &[0x6200_1000, 0x2000], false)
        },
        true,
    );
    assert_error(&two_overlapping, "/chosen/vm-a/disk-b", "reg");
    let too_many = vm_dt(
        &|w| {
            good_vm(w)?;
            for i in 0..33u64 {
                disk(
                    w,
                    &format!("disk{i}"),
                    &[0x6200_0000 + i * 0x1000, 0x1000],
                    false,
                )?;
            }
            Ok(())
        },
        true,
    );
    assert_error(&too_many, "/chosen/vm-a/disk32", "compatible");

    // Across VMs: a disk over another VM's kernel, or a kernel over an earlier VM's disk.
    let two_vms = |disk_first: bool| {
        host_dt(true, &move |w| {
            stdout(w)?;
            for (i, name) in ["vm@0", "vm@1"].iter().enumerate() {
                let vm = w.begin_node(name)?;
                w.property_string("compatible", "elvisor,vm")?;
                good_vm(w)?;
                let k = w.begin_node("kernel")?;
                w.property_string("compatible", "multiboot,kernel")?;
                w.property_array_u64("reg", &[0x6000_0000 + i as u64 * 0x100_0000, 0x1000])?;
                w.end_node(k)?;
                if (i == 0) == disk_first {
                    // Over the other VM's kernel.
                    let other = 0x6000_0000 + (1 - i as u64) * 0x100_0000;
                    disk(w, "disk", &[other, 0x1000], false)?;
                }
                w.end_node(vm)?;
            }
            Ok(())
        })
    };
    assert_error(&two_vms(false), "/chosen/vm@1/disk", "reg");
    assert_error(&two_vms(true), "/chosen/vm@1", "reg");
}

/// Shared memory (vm::config::shmem): regions under /chosen, mappings in the VM nodes, linked
/// by name with member indices in configuration order; refused when a region is unknown,
/// mapped twice by one VM, badly sized, or the mapping lands on the VM's RAM or devices.
#[test]
fn shmem_regions_and_maps() {
    type Map<'a> = (&'a str, &'a str, u64, bool);
    let region = |w: &mut FdtWriter, node: &str, name: &str, size: u64| -> FdtWriterResult<()> {
        let n = w.begin_node(node)?;
        w.property_string("compatible", "elvisor,shmem")?;
        w.property_string("elvisor,name", name)?;
        w.property_u64("size", size)?;
        w.end_node(n)
    };
    let vm = |w: &mut FdtWriter, node: &str, maps: &[Map<'_>]| -> FdtWriterResult<()> {
        let v = w.begin_node(node)?;
        w.property_string("compatible", "elvisor,vm")?;
        good_vm(w)?;
        let k = w.begin_node("kernel")?;
        w.property_string("compatible", "multiboot,kernel")?;
        w.property_array_u64("reg", &[0x6000_0000, 0x10_0000])?;
        w.end_node(k)?;
        for &(sub, name, ipa, ro) in maps {
            let m = w.begin_node(sub)?;
            w.property_string("compatible", "elvisor,shmem-map")?;
            w.property_string("elvisor,shmem", name)?;
            w.property_u64("elvisor,guest-address", ipa)?;
            if ro {
                w.property_null("read-only")?;
            }
            w.end_node(m)?;
        }
        w.end_node(v)
    };
    let tree = |size: u64, a: &[Map<'_>], b: &[Map<'_>]| {
        host_dt(true, &|w| {
            stdout(w)?;
            region(w, "shm-ping", "ping", size)?;
            region(w, "shm-board", "board", 0x20_0000)?;
            vm(w, "vm-a", a)?;
            vm(w, "vm-b", b)
        })
    };
    let p = parse_ok(&tree(
        0x40_0000,
        &[
            ("ping", "ping", 0x2000_0000, false),
            ("board", "board", 0x2100_0000, false),
        ],
        &[
            ("board", "board", 0x3000_0000, true),
            ("ping", "ping", 0x3100_0000, false),
        ],
    ));
    assert_eq!(p.shmem.len(), 2);
    assert_eq!(
        (p.shmem[0].name.as_str(), p.shmem[0].size_bytes),
        ("ping", 0x40_0000)
    );
    assert_eq!(p.shmem[0].members, [(0, 0), (1, 1)]);
    assert_eq!(p.shmem[1].members, [(0, 1), (1, 0)]);
    let b = &p.vms[1].shmem;
    assert_eq!(
        (
            b[0].node_path.as_str(),
            b[0].region,
            b[0].index,
            b[0].peers,
            b[0].read_only,
            b[0].size_bytes
        ),
        ("/chosen/vm-b/board", 1, 1, 2, true, 0x20_0000)
    );
    assert_eq!(
        (b[1].guest_address, b[1].index, b[1].read_only),
        (0x3100_0000, 1, false)
    );
    assert_eq!((p.vms[0].shmem[0].index, p.vms[0].shmem[0].peers), (0, 2));

    let ok: &[Map<'_>] = &[("ping", "ping", 0x2000_0000, false)];
    // Region size: a nonzero multiple of 2 MiB.
    assert_error(&tree(0x1000, ok, ok), "/chosen/shm-ping", "size");
    assert_error(&tree(0, ok, ok), "/chosen/shm-ping", "size");
    // An unknown region.
    assert_error(
        &tree(0x20_0000, ok, &[("m", "nope", 0x2000_0000, false)]),
        "/chosen/vm-b/m",
        "elvisor,shmem",
    );
    // One VM maps a region twice.
    assert_error(
        &tree(
            0x20_0000,
            ok,
            &[
                ("m1", "ping", 0x2000_0000, false),
                ("m2", "ping", 0x2100_0000, true),
            ],
        ),
        "/chosen/vm-b/m2",
        "elvisor,shmem",
    );
    // Over the VM's RAM (0x4000_0000 + 128 MiB), its devices, its other mapping; misaligned.
    for ipa in [0x4000_0000, 0x47f0_0000, 0x3fff_f000] {
        assert_error(
            &tree(0x20_0000, ok, &[("m", "ping", ipa, false)]),
            "/chosen/vm-b/m",
            "elvisor,guest-address",
        );
    }
    for ipa in [
        0x0800_0000,
        0x0900_0000,
        0x0a00_0000,
        0x0b00_0000,
        0x0903_0000,
    ] {
        assert_error(
            &tree(0x20_0000, ok, &[("m", "ping", ipa, false)]),
            "/chosen/vm-b/m",
            "elvisor,guest-address",
        );
    }
    assert_error(
        &tree(
            0x20_0000,
            ok,
            &[
                ("m1", "ping", 0x2000_0000, false),
                ("m2", "board", 0x2010_0000, false),
            ],
        ),
        "/chosen/vm-b/m2",
        "elvisor,guest-address",
    );
    assert_error(
        &tree(0x20_0000, ok, &[("m", "ping", 0x2000_0800, false)]),
        "/chosen/vm-b/m",
        "elvisor,guest-address",
    );
    assert_error(
        &tree(0x20_0000, ok, &[("m", "ping", 1 << 40, false)]),
        "/chosen/vm-b/m",
        "elvisor,guest-address",
    );
    // Two regions with one name.
    let dup = host_dt(true, &|w| {
        stdout(w)?;
        region(w, "r1", "same", 0x20_0000)?;
        region(w, "r2", "same", 0x20_0000)
    });
    assert_error(&dup, "/chosen/r2", "elvisor,name");
    // The error is one plain line naming node and property.
    let e = parse_err(&tree(0x20_0000, ok, &[("m", "nope", 0x2000_0000, false)]));
    assert_eq!(
        e.to_string(),
        "device tree node /chosen/vm-b/m property \"elvisor,shmem\": no shared-memory region \
         \"nope\" (a /chosen node compatible with \"elvisor,shmem\")"
    );
}

/// `elvisor,pci` on a mapping (vm::config::shmem, vdev::pci): parsed; the region must be a
/// power of two and the guest address aligned to it (a BAR); the PCI host's window is kept
/// clear of every mapping.
#[test]
fn shmem_pci_maps() {
    let tree = |size: u64, ipa: u64| {
        host_dt(true, &move |w| {
            stdout(w)?;
            let r = w.begin_node("shm-iv")?;
            w.property_string("compatible", "elvisor,shmem")?;
            w.property_u64("size", size)?;
            w.end_node(r)?;
            let v = w.begin_node("vm-a")?;
            w.property_string("compatible", "elvisor,vm")?;
            good_vm(w)?;
            let k = w.begin_node("kernel")?;
            w.property_string("compatible", "multiboot,kernel")?;
            w.property_array_u64("reg", &[0x6000_0000, 0x10_0000])?;
            w.end_node(k)?;
            let m = w.begin_node("iv")?;
            w.property_string("compatible", "elvisor,shmem-map")?;
            w.property_string("elvisor,shmem", "shm-iv")?;
            w.property_u64("elvisor,guest-address", ipa)?;
            w.property_null("elvisor,pci")?;
            w.end_node(m)?;
            w.end_node(v)
        })
    };
    let p = parse_ok(&tree(0x40_0000, 0x1_0040_0000));
    assert!(p.vms[0].shmem[0].pci);
    // Not a power of two; not aligned to the size.
    assert_error(
        &tree(0x60_0000, 0x2000_0000),
        "/chosen/vm-a/iv",
        "elvisor,pci",
    );
    assert_error(
        &tree(0x40_0000, 0x2020_0000),
        "/chosen/vm-a/iv",
        "elvisor,pci",
    );
    // Over the BAR0 windows (0x0b20_0000..0x0b20_8000).
    assert_error(
        &tree(0x20_0000, 0x0b20_0000),
        "/chosen/vm-a/iv",
        "elvisor,guest-address",
    );
}

/// NICs (vm::config::nic): parsed in node order; refused with a malformed, multicast or
/// all-zero MAC, without a switch name, or with a MAC already on the same switch (in the same
/// VM or an earlier one). The same MAC on two different switches is fine.
#[test]
fn vm_nics() {
    type NicSpec<'a> = (&'a str, Option<&'a [u8]>, Option<&'a str>);
    let nic = |w: &mut FdtWriter, (name, mac, sw): NicSpec<'_>| -> FdtWriterResult<()> {
        let n = w.begin_node(name)?;
        w.property_string("compatible", "elvisor,virtio-net")?;
        if let Some(m) = mac {
            w.property("mac-address", m)?;
        }
        if let Some(s) = sw {
            w.property_string("elvisor,switch", s)?;
        }
        w.end_node(n)
    };
    let tree = |a: &[NicSpec<'_>], b: &[NicSpec<'_>]| {
        host_dt(true, &|w| {
            stdout(w)?;
            for (i, (name, nics)) in [("vm-a", a), ("vm-b", b)].into_iter().enumerate() {
                let vm = w.begin_node(name)?;
                w.property_string("compatible", "elvisor,vm")?;
                good_vm(w)?;
                let k = w.begin_node("kernel")?;
                w.property_string("compatible", "multiboot,kernel")?;
                w.property_array_u64("reg", &[0x6000_0000 + i as u64 * 0x100_0000, 0x1000])?;
                w.end_node(k)?;
                for &spec in nics {
                    nic(w, spec)?;
                }
                w.end_node(vm)?;
            }
            Ok(())
        })
    };
    const M1: &[u8] = &[0x52, 0x54, 0, 0x12, 0x34, 1];
    const M2: &[u8] = &[0x52, 0x54, 0, 0x12, 0x34, 2];
    let p = parse_ok(&tree(
        &[
            ("nic0", Some(M1), Some("lan0")),
            ("nic1", Some(M1), Some("lan1")),
        ],
        &[("nic0", Some(M2), Some("lan0"))],
    ));
    let n = &p.vms[0].nics;
    assert_eq!(n.len(), 2);
    assert_eq!(n[0].node_path, "/chosen/vm-a/nic0");
    assert_eq!(n[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 1]);
    assert_eq!(
        (n[0].switch.as_str(), n[1].switch.as_str()),
        ("lan0", "lan1")
    );
    assert_eq!(p.vms[1].nics[0].mac[5], 2);

    let one = |spec: NicSpec<'static>| tree(&[spec], &[]);
    let path = "/chosen/vm-a/nic";
    assert_error(&one(("nic", None, Some("lan0"))), path, "mac-address");
    assert_error(
        &one(("nic", Some(&[1, 2, 3]), Some("lan0"))),
        path,
        "mac-address",
    );
    assert_error(
        &one(("nic", Some(&[0x53, 0, 0, 0, 0, 1]), Some("l"))),
        path,
        "mac-address",
    );
    assert_error(
        &one(("nic", Some(&[0; 6]), Some("lan0"))),
        path,
        "mac-address",
    );
    assert_error(&one(("nic", Some(M1), None)), path, "elvisor,switch");
    assert_error(&one(("nic", Some(M1), Some(""))), path, "elvisor,switch");
    // A duplicate MAC on one switch: within a VM, and across VMs.
    assert_error(
        &tree(
            &[
                ("nic0", Some(M1), Some("lan0")),
                ("nic1", Some(M1), Some("lan0")),
            ],
            &[],
        ),
        "/chosen/vm-a/nic1",
        "mac-address",
    );
    let e = parse_err(&tree(
        &[("nic0", Some(M1), Some("lan0"))],
        &[("nic0", Some(M1), Some("lan0"))],
    ));
    assert_eq!(
        (e.node.as_str(), e.property.as_str()),
        ("/chosen/vm-b/nic0", "mac-address")
    );
    assert_eq!(
        e.to_string(),
        "device tree node /chosen/vm-b/nic0 property \"mac-address\": \
         52:54:00:12:34:01 is already on switch \"lan0\" (/chosen/vm-a/nic0)"
    );
}
