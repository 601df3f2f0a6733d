//! Fuzz target `guest_fdt`: guest device-tree generation (`vm::fdt::generate`) from any spec
//! (addresses, sizes, vCPU counts and MPIDRs, bootargs, initrd, reset count, GIC and UART
//! shape, passthrough devices), with the result parsed back.
//!
//! Properties: nothing panics; a spec is refused exactly when `generate`'s own rules say so
//! (no RAM, no vCPUs, a bad or repeated MPIDR, an empty or wrapping region, an INTID of the
//! wrong kind), or by the FDT writer; a blob it returns is a well-formed tree (the `fdt` crate
//! reads it; totalsize is its length) that says what was asked: bootargs, reset count, initrd,
//! memory, one cpu node per vCPU in order with its MPIDR, the GIC and UART; node names are
//! unique among siblings; and the hypervisor's own reader (`platform::parse`) agrees wherever it
//! accepts the tree.
#![no_main]

use arbitrary::Arbitrary;
use elvisor::mm::{GuestPhysAddr, PhysAddr, PhysRange};
use elvisor::platform::{self, GicVersion};
use elvisor::vm::config::Passthrough;
use elvisor::vm::fdt::{self, FdtGenError, GuestFdt, GuestGic, GuestUart};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Region {
    base: u64,
    size: u64,
}

#[derive(Arbitrary, Debug)]
struct PtIn {
    /// Index into NAMES (names that collide with the generator's own nodes included), or the
    /// string.
    name: u8,
    path: String,
    compatible: Vec<String>,
    regs: Vec<(u64, u64)>,
    irqs: Vec<(u16, bool)>,
}

#[derive(Arbitrary, Debug)]
struct Spec {
    ram: Region,
    mpidrs: Vec<u64>,
    /// Keep MPIDRs inside the affinity fields (most of the time, so generation goes on).
    affinity_only: bool,
    uart: Option<(Region, Option<u16>)>,
    gic: Option<(bool, Region, Region, Option<u8>)>,
    bootargs: String,
    initrd: Option<Region>,
    reset_count: u32,
    passthrough: Vec<PtIn>,
    rng_seed: Option<Vec<u8>>,
    kaslr_seed: Option<u64>,
}

const NAMES: [&str; 8] = [
    "/pl011@9040000",
    "/soc/ethernet@7d580000",
    "/timer",
    "/psci",
    "/chosen",
    "/cpus",
    "/pl061@9030000",
    "/soc/ethernet@7d580000",
];

fn be32s(v: &[u8]) -> Vec<u32> {
    v.chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap_or([0; 4])))
        .collect()
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fuzz_target!(|spec: Spec| {
    let mpidrs: Vec<u64> = spec
        .mpidrs
        .iter()
        .take(16)
        .map(|&m| {
            if spec.affinity_only {
                m & 0xff_00ff_ffff & 0x0101_0307
            } else {
                m
            }
        })
        .collect();
    let uart = spec.uart.as_ref().map(|(r, intid)| GuestUart {
        base: GuestPhysAddr(r.base),
        size_bytes: r.size,
        intid: intid.map(u32::from),
    });
    let gic = spec.gic.as_ref().map(|(v3, d, c, m)| GuestGic {
        version: if *v3 { GicVersion::V3 } else { GicVersion::V2 },
        gicd: (GuestPhysAddr(d.base), d.size),
        gicr_or_gicc: (GuestPhysAddr(c.base), c.size),
        maintenance_intid: m.map(u32::from),
        // Any value, as the maintenance interrupt's: one outside the PPIs must be refused.
        pmu_intid: m.map(|m| u32::from(m) ^ 0x0c),
    });
    let passthrough: Vec<Passthrough> = spec
        .passthrough
        .iter()
        .take(4)
        .map(|p| Passthrough {
            node_path: "/chosen/vm/pt".into(),
            host_path: NAMES
                .get(usize::from(p.name))
                .map_or(p.path.clone(), |s| (*s).into()),
            compatible: p.compatible.iter().take(4).cloned().collect(),
            regs: p
                .regs
                .iter()
                .take(4)
                .map(|&(b, s)| PhysRange::new(PhysAddr(b), s))
                .collect(),
            // The platform parser hands over SPIs only (32..1020).
            irqs: p
                .irqs
                .iter()
                .take(4)
                .map(|&(i, l)| (32 + u32::from(i) % 988, l))
                .collect(),
        })
        .collect();
    let g = GuestFdt {
        ram_base: GuestPhysAddr(spec.ram.base),
        ram_bytes: spec.ram.size,
        mpidrs: &mpidrs,
        uart,
        gic,
        bootargs: &spec.bootargs,
        initrd: spec
            .initrd
            .as_ref()
            .map(|r| (GuestPhysAddr(r.base), r.size)),
        reset_count: spec.reset_count,
        passthrough: &passthrough,
        shmem: &[],
        rng_seed: spec.rng_seed.as_deref(),
        kaslr_seed: spec.kaslr_seed,
    };
    let blob = match fdt::generate(&g) {
        Ok(blob) => blob,
        Err(e) => {
            let _ = e.to_string();
            // Refusals the generator's rules explain must have a cause in the spec.
            match e {
                FdtGenError::NoRam => assert_eq!(g.ram_bytes, 0),
                FdtGenError::NoCpus => assert!(mpidrs.is_empty()),
                FdtGenError::BadMpidr(m) => assert_ne!(m & !0xff_00ff_ffff, 0),
                FdtGenError::DuplicateMpidr(m) => {
                    assert!(mpidrs.iter().filter(|&&x| x == m).count() > 1)
                }
                _ => {}
            }
            return;
        }
    };

    // Well-formed, as an independent reader sees it.
    let tree = ::fdt::Fdt::new(&blob).expect("generated blob does not parse");
    assert_eq!(tree.total_size(), blob.len());
    let prop = |path: &str, name: &str| -> Option<&[u8]> {
        Some(tree.find_node(path)?.property(name)?.value)
    };
    let mut bootargs = spec.bootargs.clone().into_bytes();
    bootargs.push(0);
    assert_eq!(prop("/chosen", "bootargs"), Some(&bootargs[..]), "bootargs");
    assert_eq!(
        prop("/chosen", "elvisor,reset-count").map(be32s),
        Some(vec![spec.reset_count])
    );
    assert_eq!(
        prop("/chosen", "rng-seed"),
        spec.rng_seed.as_deref(),
        "rng-seed"
    );
    assert_eq!(
        prop("/chosen", "kaslr-seed").and_then(be64),
        spec.kaslr_seed,
        "kaslr-seed"
    );
    if let Some((base, size)) = g.initrd {
        assert_eq!(
            prop("/chosen", "linux,initrd-start").and_then(be64),
            Some(base.0)
        );
        assert_eq!(
            prop("/chosen", "linux,initrd-end").and_then(be64),
            Some(base.0 + size)
        );
    }
    let memory = format!("/memory@{:x}", g.ram_base.0);
    let reg = prop(&memory, "reg").map(be32s).expect("memory reg");
    let (b, s) = (g.ram_base.0, g.ram_bytes);
    assert_eq!(
        reg,
        [(b >> 32) as u32, b as u32, (s >> 32) as u32, s as u32],
        "memory reg"
    );
    let cpus: Vec<u64> = tree
        .find_node("/cpus")
        .expect("/cpus")
        .children()
        .filter_map(|c| c.property("reg").and_then(|p| be64(p.value)))
        .collect();
    assert_eq!(cpus, mpidrs, "cpu nodes");
    if let Some(gic) = &g.gic {
        let path = format!("/intc@{:x}", gic.gicd.0.0);
        let reg = prop(&path, "reg").map(be32s).expect("GIC reg");
        assert_eq!(reg.len(), 8);
        assert_eq!(u64::from(reg[0]) << 32 | u64::from(reg[1]), gic.gicd.0.0);
    }
    if let Some(uart) = &g.uart {
        let path = format!("/pl011@{:x}", uart.base.0);
        let reg = prop(&path, "reg").map(be32s).expect("UART reg");
        assert_eq!(u64::from(reg[0]) << 32 | u64::from(reg[1]), uart.base.0);
        let stdout = prop("/chosen", "stdout-path").expect("stdout-path");
        assert_eq!(&stdout[..stdout.len() - 1], path.as_bytes());
    }
    // Node names are unique among siblings (Devicetree Specification v0.4, 2.2.1).
    let mut names: Vec<&str> = tree
        .find_node("/")
        .expect("root")
        .children()
        .map(|n| n.name)
        .collect();
    names.sort_unstable();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "duplicate node names: {names:?}"
    );

    // The hypervisor's own reader: no panic, and the same facts where it takes the tree.
    let image = PhysRange::new(PhysAddr(0x4008_0000), 0x10_0000);
    if let Ok(p) = platform::parse(&blob, PhysAddr(0x4400_0000), image) {
        assert_eq!(p.ram, [PhysRange::new(PhysAddr(b), s)]);
        assert_eq!(p.cpus.iter().map(|c| c.mpidr).collect::<Vec<_>>(), mpidrs);
        assert_eq!(p.bootargs, spec.bootargs);
        if let Some(uart) = &g.uart {
            assert_eq!(p.uart.base, PhysAddr(uart.base.0));
        }
    }
});
