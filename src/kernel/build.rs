//! VM construction: RAM, stage 2, vGIC, devices, passthrough validation, vCPUs.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU32;

use log::info;

use crate::arch::aarch64::sync::Mutex;

use super::images::{Reload, load_images};
use super::ram::VmRam;
use super::{FRAMES, VM_SPIS, Vm, VmError, VmState};
use crate::arch::aarch64::ram::{Module, RamRegion};
use crate::arch::aarch64::{cpu, gic, guest, timer};
use crate::mm::pagetable::{S2Kind, Stage2Table};
use crate::mm::{BLOCK_2M, GuestPhysAddr, PhysAddr, PhysRange};
use crate::platform::{GicVersion, Platform};
use crate::vdev::MmioBus;
use crate::vdev::pl011::Pl011 as VPl011;
use crate::vdev::pl061::Pl061;
use crate::vdev::vgic::{self, GicdWindow, GicrWindow, Vgic, VgicConfig};
use crate::vm::config::VmConfig;
use crate::vm::timer::VTIMER_INTID;
use crate::vm::{VcpuId, VmId, layout, loader};

impl Vm {
    pub fn entry_ipa(&self) -> u64 {
        self.ram.base().0 + self.entry_offset
    }
    pub fn fdt_ipa(&self) -> u64 {
        self.ram.base().0 + self.fdt_offset
    }
}

fn vm_err(cfg: &VmConfig, property: &'static str, problem: impl Into<String>) -> VmError {
    VmError {
        node: cfg.node_path.clone(),
        property,
        problem: problem.into(),
    }
}

/// Builds a VM from its configuration: RAM, stage 2, devices, images and device tree.
pub(super) fn build_vm(
    id: VmId,
    cfg: &VmConfig,
    plat: &Platform,
    pa_bits: u32,
    ncpus: usize,
    load: &mut [usize],
) -> Result<&'static Vm, VmError> {
    let nvcpus = cfg.vcpus as usize;
    if nvcpus == 0 || nvcpus > vgic::MAX_VCPUS_V2 {
        return Err(vm_err(
            cfg,
            "cpus",
            alloc::format!("{nvcpus} vCPUs: 1 to 8 supported"),
        ));
    }
    // Pinning: `elvisor,cpu-affinity`, else the least-loaded CPUs (vm::placement), counting
    // the vCPUs of every VM built before this one.
    let pcpus: Vec<usize> = if cfg.cpu_affinity.is_empty() {
        crate::vm::placement::place(nvcpus, load)
    } else {
        let p: Vec<usize> = cfg.cpu_affinity.iter().map(|&c| c as usize).collect();
        crate::vm::placement::account(&p, load);
        p
    };
    if let Some(bad) = pcpus.iter().find(|&&c| c >= ncpus) {
        return Err(vm_err(
            cfg,
            "elvisor,cpu-affinity",
            alloc::format!("physical CPU {bad} does not exist (or is beyond {ncpus})"),
        ));
    }
    let mpidrs: Vec<u64> = (0..nvcpus as u64).collect();
    let kernel = Module::new(cfg.kernel, &plat.ram, &plat.reserved)
        .ok_or_else(|| vm_err(cfg, "reg", "kernel module is not inside host RAM"))?;
    let ramdisk = match cfg.ramdisk {
        Some(r) => Some(
            Module::new(r, &plat.ram, &plat.reserved)
                .ok_or_else(|| vm_err(cfg, "reg", "ramdisk module is not inside host RAM"))?,
        ),
        None => None,
    };
    // A module the loader never wrote (U-Boot's load failed, a wrong address in the overlay)
    // reads as zeros: say so instead of starting a guest at a page of zeros.
    for (what, m) in [("kernel", Some(&kernel)), ("ramdisk", ramdisk.as_ref())] {
        if let Some(m) = m
            && m.bytes().iter().all(|&b| b == 0)
        {
            return Err(vm_err(
                cfg,
                "reg",
                alloc::format!(
                    "the {what} module at {:#x} ({} bytes) is all zeros: nothing was loaded there",
                    m.bytes().as_ptr() as u64,
                    m.bytes().len()
                ),
            ));
        }
    }
    let ram_bytes = cfg.memory_bytes;
    let ipa_bits = pa_bits.min(48);
    // Guest RAM at QEMU virt's RAM base, or where it is on the host (elvisor,direct-map).
    let ram_base = match (cfg.direct_map, cfg.host_address) {
        (true, Some(host)) => GuestPhysAddr(host.0),
        _ => layout::RAM_BASE,
    };
    if ram_base.0 + ram_bytes > (1u64 << ipa_bits) {
        return Err(vm_err(cfg, "memory", "larger than the IPA space"));
    }
    // Placement: image at its text_offset, DTB in the top 2 MiB, initrd just below it.
    let initrd_bytes = ramdisk.map(|m| m.bytes().len() as u64).unwrap_or(0);
    let initrd_slot = initrd_bytes.div_ceil(BLOCK_2M) * BLOCK_2M;
    let top_reserved = layout::FDT_SLOT + initrd_slot;
    let placement = loader::place(kernel.bytes(), ram_bytes, top_reserved).map_err(|e| {
        vm_err(
            cfg,
            "memory",
            alloc::format!("the kernel image does not fit: {e}"),
        )
    })?;
    let fdt_offset = ram_bytes - layout::FDT_SLOT;
    let initrd_offset = ramdisk.map(|_| fdt_offset - initrd_slot);

    let ram = match cfg.host_address {
        Some(base) => RamRegion::fixed(PhysRange::new(base, ram_bytes), &plat.ram, &plat.reserved)
            .ok_or_else(|| {
                vm_err(
                    cfg,
                    "elvisor,host-address",
                    alloc::format!(
                        "{:#x}..{:#x} is not 2 MiB-aligned free host RAM reserved for this VM",
                        base.0,
                        base.0 + ram_bytes
                    ),
                )
            })?,
        None => RamRegion::alloc(&mut FRAMES.lock(), ram_bytes).map_err(|largest| {
            vm_err(
                cfg,
                "memory",
                alloc::format!(
                    "{} MiB do not fit in the host RAM still free; the largest VM that fits now has {} MiB",
                    ram_bytes >> 20,
                    largest >> 20
                ),
            )
        })?,
    };
    let mut stage2 = Stage2Table::new(ipa_bits).with_forced_write_back(guest::s2fwb());
    // The pieces one after the other from the guest's RAM base.
    let mut ipa = ram_base;
    for piece in ram.pieces().pieces() {
        stage2
            .map(ipa, piece.base, piece.size_bytes, S2Kind::Ram)
            .map_err(|e| vm_err(cfg, "memory", alloc::format!("stage-2 map failed: {e}")))?;
        ipa = GuestPhysAddr(ipa.0 + piece.size_bytes);
    }
    let vmid = id.0 as u64 + 1;
    // Lives as long as the hypervisor: device models hold on to it (mm::lazy).
    let vm_ram: &'static VmRam = Box::leak(Box::new(VmRam::new(ram, stage2, vmid, ram_base)));

    let mut vg = Vgic::new(&VgicConfig {
        version: plat.gic.version,
        nr_spis: VM_SPIS,
        mpidrs: &mpidrs,
    })
    .map_err(|e| vm_err(cfg, "cpus", alloc::format!("virtual GIC: {e}")))?;
    // The virtual timer is forwarded with the HW bit: the guest's deactivation deactivates
    // the physical PPI.
    for i in 0..nvcpus {
        let _ = vg.set_hw(VTIMER_INTID, VcpuId(i as u16), Some(VTIMER_INTID));
    }
    // Its line and those of passthrough level SPIs are re-sampled where they may have fallen.
    vg.set_line_sampler(super::irq::sample_hw_line);
    let vgic: vgic::SharedVgic = Arc::new(Mutex::new(vg));

    let overlap = |_| vm_err(cfg, "compatible", "device windows overlap");
    let mut bus = MmioBus::new();
    let console = crate::console::VmConsole::new(&cfg.name);
    bus.add_pl011(
        layout::UART_BASE,
        Box::new(VPl011::new(Box::new(console))),
        Some(layout::UART_INTID),
    )
    .map_err(overlap)?;
    bus.add(layout::GICD_BASE, Box::new(GicdWindow::new(vgic.clone())))
        .map_err(overlap)?;
    match plat.gic.version {
        GicVersion::V3 => {
            bus.add(layout::GICR_BASE, Box::new(GicrWindow::new(vgic.clone())))
                .map_err(overlap)?;
        }
        GicVersion::V2 => {
            // The hardware virtual CPU interface (GICV) appears at the guest's GICC address.
            let gicv = plat
                .gic
                .gicv
                .ok_or_else(|| vm_err(cfg, "compatible", "GICv2 host without GICV"))?;
            vm_ram
                .stage2()
                .map(
                    layout::GICC_BASE,
                    gicv.base,
                    layout::GICC_SIZE,
                    S2Kind::Device,
                )
                .map_err(|e| vm_err(cfg, "memory", alloc::format!("stage-2 GICV map: {e}")))?;
        }
    }

    let virtio_nodes = super::virtio::add_devices(id, cfg, plat, vm_ram, &mut bus)?;
    // Shared memory with other VMs: the regions in stage 2, a doorbell page each on the bus.
    let shmem_nodes = super::shmem::attach(cfg, plat, vm_ram, &mut bus)?;
    // The power button (kernel::lifecycle::press_power_button): a PL061 where QEMU virt has
    // its own, SPI 7 as a level, gpio-keys on line 3 in the guest's tree.
    let button_nodes = if cfg.power_button {
        if let Some(pt) = cfg
            .passthrough
            .iter()
            .find(|p| p.irqs.iter().any(|&(i, _)| i == layout::GPIO_INTID))
        {
            return Err(VmError {
                node: pt.node_path.clone(),
                property: "elvisor,host-path",
                problem: alloc::format!(
                    "INTID {} belongs to the emulated PL061 (the power button; \
                     elvisor,power-button = <0> turns it off)",
                    layout::GPIO_INTID
                ),
            });
        }
        bus.add_with_irq(
            layout::GPIO_BASE,
            Box::new(Pl061::new()),
            Some(layout::GPIO_INTID),
        )
        .map_err(overlap)?;
        crate::vm::fdt::power_button_nodes(&cfg.node_path).to_vec()
    } else {
        Vec::new()
    };
    // Direct-mapped RAM lands wherever the host has it: it must not cover an emulated device.
    let ram_ipa = PhysRange::new(PhysAddr(ram_base.0), ram_bytes);
    let gicv = (plat.gic.version == GicVersion::V2).then_some((
        layout::GICC_BASE,
        layout::GICC_SIZE,
        "GIC CPU interface",
    ));
    if let Some((b, _, name)) = bus
        .windows()
        .chain(gicv)
        .find(|(b, sz, _)| PhysRange::new(PhysAddr(b.0), *sz).overlaps(&ram_ipa))
    {
        return Err(vm_err(
            cfg,
            "elvisor,direct-map",
            alloc::format!(
                "guest RAM at {ram_ipa} would cover the emulated {name} at {:#x}",
                b.0
            ),
        ));
    }
    let passthrough_irqs = setup_passthrough(
        cfg,
        plat,
        &bus,
        &mut vm_ram.stage2(),
        &vgic,
        ram_base,
        ram_bytes,
    )?;

    let root_level = vm_ram.stage2().root_level();
    let hw = guest::VcpuHwConfig {
        hcr: guest::guest_hcr(),
        vttbr: vm_ram.vttbr(),
        vtcr: guest::vtcr(ipa_bits, root_level, pa_bits),
        vmpidr: 1 << 31,
        vpidr: cpu::midr(),
        cnthctl: guest::guest_cnthctl(),
        // Each VM's virtual counter starts near zero at its creation.
        cntvoff: timer::now(),
        mdcr: guest::MDCR_EL2_GUEST | super::pmu::mdcr_hpmn(),
        cptr: guest::guest_cptr(),
    };
    let vm: &'static Vm = Box::leak(Box::new(Vm {
        id,
        name: cfg.name.clone(),
        config: cfg.clone(),
        ram: vm_ram,
        mmio: Mutex::new(bus),
        vgic,
        passthrough_irqs,
        guest_nodes: cfg
            .passthrough
            .iter()
            .cloned()
            .chain(virtio_nodes)
            .chain(button_nodes)
            .collect(),
        shmem_nodes,
        hw,
        reset_count: AtomicU32::new(0),
        warn_budget: AtomicU32::new(crate::vm::exit::WARN_BUDGET),
        state: core::sync::atomic::AtomicU8::new(VmState::Running as u8),
        power: (0..nvcpus)
            .map(|_| crate::vm::power::VcpuPower::new())
            .collect(),
        exit_counters: (0..nvcpus)
            .map(|_| crate::vm::vcpu::ExitCounters::new())
            .collect(),
        parked: (0..nvcpus)
            .map(|_| core::sync::atomic::AtomicBool::new(true))
            .collect(),
        mpidrs,
        placement: pcpus,
        kernel,
        ramdisk,
        entry_offset: placement.load_offset,
        fdt_offset,
        initrd_offset,
    }));
    load_images(vm, Reload::FreshRam).map_err(|p| vm_err(cfg, "bootargs", p))?;
    info!(
        "{} ({}): {} MiB at host {} ({} MiB backed at boot), IPA {} bits, VMID {}, {} image at +{:#x}",
        vm.id,
        vm.name,
        ram_bytes >> 20,
        host_pieces_text(vm.ram.host_pieces()),
        vm.ram.backed_bytes() >> 20,
        ipa_bits,
        vmid,
        if placement.is_linux_image {
            "arm64 Image"
        } else {
            "raw"
        },
        placement.load_offset
    );
    Ok(vm)
}

/// "0x48000000" for RAM in one piece, "0x80000000+256M 0x50000000+64M" for several.
fn host_pieces_text(p: &crate::mm::pieces::HostPieces) -> String {
    match p.pieces() {
        [one] => alloc::format!("{:#x}", one.base.0),
        many if many.len() > 4 => alloc::format!(
            "{:#x}+{}M and {} more pieces",
            many[0].base.0,
            many[0].size_bytes >> 20,
            many.len() - 1
        ),
        many => many
            .iter()
            .map(|r| alloc::format!("{:#x}+{}M", r.base.0, r.size_bytes >> 20))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Passthrough devices: register windows mapped at the same IPA as Device memory, SPIs
/// linked to the guest's with the HW bit and routed to this CPU. Refuses anything the
/// kernel owns (GIC, console UART and its interrupt) or that collides with the guest's
/// RAM or emulated devices.
fn setup_passthrough(
    cfg: &VmConfig,
    plat: &Platform,
    bus: &MmioBus,
    stage2: &mut Stage2Table,
    vgic: &vgic::SharedVgic,
    ram_base: GuestPhysAddr,
    ram_bytes: u64,
) -> Result<Vec<u32>, VmError> {
    let mut irqs = Vec::new();
    let g = &plat.gic;
    let owned: Vec<PhysRange> = core::iter::once(g.gicd)
        .chain(g.gicr.iter().copied())
        .chain(g.gicc)
        .chain(g.gich)
        .chain(g.gicv)
        .chain(core::iter::once(PhysRange::new(
            plat.uart.base,
            plat.uart.size_bytes,
        )))
        .collect();
    let guest_ram = PhysRange::new(PhysAddr(ram_base.0), ram_bytes);
    // A device belongs to one VM: VMs earlier in the configuration keep their claims.
    let earlier = plat
        .vms
        .iter()
        .take_while(|other| other.node_path != cfg.node_path)
        .flat_map(|other| other.passthrough.iter());
    let (claimed_regs, claimed_irqs): (Vec<PhysRange>, Vec<u32>) =
        earlier.fold((Vec::new(), Vec::new()), |(mut r, mut i), d| {
            r.extend(d.regs.iter().copied());
            i.extend(d.irqs.iter().map(|x| x.0));
            (r, i)
        });
    for dev in &cfg.passthrough {
        let bad = |problem: String| VmError {
            node: dev.node_path.clone(),
            property: "elvisor,host-path",
            problem,
        };
        for r in &dev.regs {
            let r = PhysRange::new(
                r.base.align_down(0x1000),
                r.end().align_up(0x1000).0 - r.base.align_down(0x1000).0,
            );
            if owned.iter().any(|o| o.overlaps(&r)) {
                return Err(bad(alloc::format!(
                    "{} is used by the hypervisor",
                    dev.host_path
                )));
            }
            if claimed_regs.iter().any(|o| o.overlaps(&r)) {
                return Err(bad(alloc::format!(
                    "{} is already given to another VM",
                    dev.host_path
                )));
            }
            let clash = r.overlaps(&guest_ram)
                || bus
                    .windows()
                    .any(|(b, sz, _)| PhysRange::new(PhysAddr(b.0), sz).overlaps(&r));
            if clash {
                return Err(bad(alloc::format!(
                    "{} at {:#x} collides with the guest's RAM or emulated devices",
                    dev.host_path,
                    r.base.0
                )));
            }
            stage2
                .map(
                    GuestPhysAddr(r.base.0),
                    r.base,
                    r.size_bytes,
                    S2Kind::Device,
                )
                .map_err(|e| bad(alloc::format!("stage-2 map: {e}")))?;
        }
        for &(intid, level) in &dev.irqs {
            if claimed_irqs.contains(&intid) {
                return Err(bad(alloc::format!(
                    "INTID {intid} is already given to another VM"
                )));
            }
            if Some(intid) == plat.uart.intid || intid >= 32 + VM_SPIS {
                return Err(bad(alloc::format!(
                    "INTID {intid} is the hypervisor's or beyond the VM's {VM_SPIS} SPIs"
                )));
            }
            vgic.lock()
                .set_hw(intid, VcpuId(0), Some(intid))
                .map_err(|e| bad(alloc::format!("INTID {intid}: {e}")))?;
            gic::enable(intid, 0xa0, level, 0);
            gic::route_to_this_cpu(intid);
            irqs.push(intid);
        }
        info!(
            "{}: passthrough {} ({} window(s), SPIs {:?})",
            cfg.name,
            dev.host_path,
            dev.regs.len(),
            dev.irqs.iter().map(|i| i.0).collect::<Vec<_>>()
        );
    }
    Ok(irqs)
}
