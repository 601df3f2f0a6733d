//! The EL2 kernel: the boot flow, VM construction, and what happens after an exit.
//!
//! ```text
//! primary_main: console -> heap -> log level -> VHE choice -> platform (DTB) -> frames
//!               -> EL2 map + MMU -> VMs -> enter vCPU 0 of the first VM
//! handle_exit:  syndrome -> vm::exit::handle_sync -> inject / PSCI / stop -> resume frame
//! ```

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use buddy_system_allocator::LockedHeap;
use log::{error, info, warn};
use spin::{Mutex, Once};

use crate::arch::aarch64::esr::{self, Esr};
use crate::arch::aarch64::exit::ExitKind;
use crate::arch::aarch64::ram::{Module, RamRegion};
use crate::arch::aarch64::{
    cpu, exit as arch_exit, firmware, gic, guest, mmio, mmu, ram, timer, vectors,
};
use crate::drivers::pl011::{Pl011, Pl011Regs};
use crate::mm::frame::FrameAllocator;
use crate::mm::pagetable::{El2Kind, El2Table, S2Kind, Stage2Table};
use crate::mm::{BLOCK_2M, GuestPhysAddr, PhysAddr, PhysRange};
use crate::platform::{self, Platform, PsciConduit};
use crate::vdev::MmioBus;
use crate::vdev::pl011::Pl011 as VPl011;
use crate::vdev::vgic::{self, GicdWindow, GicrWindow, Lr, Vgic, VgicConfig};
use crate::vm::config::VmConfig;
use crate::vm::exit::{Action, ExitCtx};
use crate::vm::fdt::{GuestFdt, GuestGic, GuestUart};
use crate::vm::psci::{self, Call, Ret};
use crate::vm::timer::{PTIMER_INTID, VTIMER_INTID};
use crate::vm::vcpu::{Vcpu, VcpuState};
use crate::vm::{VcpuId, VmId, layout, loader};
use alloc::sync::Arc;

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());
/// The vGIC maintenance interrupt when the DT names none (PPI 9).
const MAINT_INTID: u32 = 25;
/// SPIs each VM's virtual GIC has (INTIDs 32..96).
const VM_SPIS: u32 = 64;
static PLATFORM: Once<Platform> = Once::new();
static RUNNING_VMS: AtomicUsize = AtomicUsize::new(0);

/// A VM: its memory, stage 2, devices and images. Shared by its vCPUs; what changes after
/// construction is behind a lock or atomic.
pub struct Vm {
    pub id: VmId,
    pub name: String,
    pub config: VmConfig,
    pub ram: Mutex<RamRegion>,
    pub stage2: Stage2Table,
    pub mmio: Mutex<MmioBus>,
    /// The virtual GIC, shared with its MMIO windows on the bus.
    pub vgic: Arc<Mutex<Vgic>>,
    /// Physical SPIs passed through to this VM (forwarded with the HW bit).
    pub passthrough_irqs: Vec<u32>,
    pub hw: guest::VcpuHwConfig,
    pub reset_count: AtomicU32,
    kernel: Module,
    ramdisk: Option<Module>,
    /// Where things went in guest RAM (offsets from the RAM base), fixed at build time.
    entry_offset: u64,
    fdt_offset: u64,
    initrd_offset: Option<u64>,
}

/// Why a VM could not be built; always names the VM node and property at fault.
#[derive(Debug)]
pub struct VmError {
    pub node: String,
    pub property: &'static str,
    pub problem: String,
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "device tree node {} property \"{}\": {}",
            self.node, self.property, self.problem
        )
    }
}

/// Boot CPU entry from `elvisor_primary_main`.
pub fn primary_main(dtb_pa: u64, el: u64, heap: &'static LockedHeap<32>) -> ! {
    let dtb = ram::boot_dtb(dtb_pa);
    // The console first: everything after this can report what went wrong.
    let uart = dtb
        .and_then(platform::early_console)
        .and_then(mmio::claim_boot_console::<Pl011Regs>);
    let heap_range = ram::init_heap(heap);
    let console_uart: Option<&'static Pl011> =
        uart.map(|regs| &*Box::leak(Box::new(Pl011::new(regs))));
    if let Some(u) = console_uart {
        crate::console::init(u);
        CONSOLE_UART.call_once(|| u);
    }
    if el != 2 {
        crate::println!(
            "elvisor: entered at EL{el}, but elvisor must be entered at EL2 \
             (QEMU: -M virt,virtualization=on; U-Boot: boot it with booti from EL2). Stopping."
        );
        cpu::park();
    }
    let bootargs: &str = dtb.and_then(platform::early_bootargs).unwrap_or("");
    let level = match crate::console::level_from_bootargs(bootargs) {
        Ok(l) => l,
        Err(bad) => {
            crate::println!("elvisor: unknown elvisor.log={bad}; using info");
            log::LevelFilter::Info
        }
    };
    crate::console::init_logger(level);
    info!("elvisor {} booting at EL2", env!("CARGO_PKG_VERSION"));
    let Some(dtb) = dtb else {
        error!("no valid device tree at x0 = {dtb_pa:#x}; stopping");
        cpu::park();
    };

    // VHE is chosen before any table exists: E2H changes the table and register formats.
    let force_nvhe = crate::console::bootarg(bootargs, "elvisor.vhe") == Some("off");
    let vhe = cpu::has_vhe() && !force_nvhe;
    if vhe {
        mmu::enable_vhe();
    }
    guest::set_vhe(vhe);
    if vhe {
        info!("running in VHE mode (E2H=1)");
    } else if force_nvhe && cpu::has_vhe() {
        info!("running in non-VHE mode (E2H=0), forced by elvisor.vhe=off");
    } else {
        info!("running in non-VHE mode (E2H=0): the CPU has no VHE");
    }

    let image = ram::image_layout();
    let plat = match platform::parse(dtb, PhysAddr(dtb_pa), image.image) {
        Ok(p) => p,
        Err(e) => fatal_config(&e),
    };
    let plat = PLATFORM.call_once(|| plat);
    log_platform(plat, image.image, heap_range);

    // Frames: RAM minus the image, the DTB, modules and firmware reservations.
    let free = FRAMES.lock().add_ram(&plat.ram, &plat.reserved);
    info!("frames: {} MiB free", free >> 20);

    // The EL2 identity map, then the MMU.
    let pa_bits = cpu::pa_bits();
    match build_el2_map(plat, vhe, &image) {
        Ok(root) => {
            // Everything written so far went to memory with the MMU off; drop any stale
            // cache lines for it before caches are turned on (booting.rst: the loader only
            // cleaned the image to PoC).
            crate::arch::aarch64::cache::invalidate_to_poc(
                image.image.base.0,
                image.image.size_bytes,
            );
            // SAFETY-free call: `enable` is unsafe; see below.
            enable_mmu(root, vhe, pa_bits);
        }
        Err(e) => {
            error!("cannot build the EL2 map: {e:?}");
            power_off();
        }
    }
    info!("EL2 MMU on (pa {} bits)", pa_bits);

    let percpu: &'static cpu::PerCpu = Box::leak(Box::new(cpu::PerCpu {
        exc_sp: cpu::exc_stack_top(0),
        stack_top: cpu::stack_top(0),
        index: 0,
        mpidr: cpu::mpidr(),
    }));
    cpu::set_percpu(percpu);

    if let Err(e) = gic::init(&plat.gic, plat.cpus.len()) {
        error!("GIC: {e}");
        power_off();
    }
    // The kernel's own interrupts: the guest virtual timer (forwarded with the HW bit), the
    // EL2 timer (emulated guest physical timers) and the vGIC maintenance interrupt.
    gic::enable(VTIMER_INTID, 0xa0, true);
    gic::enable(timer::HYP_TIMER_INTID, 0xa0, true);
    gic::enable(
        plat.gic.maintenance_intid.unwrap_or(MAINT_INTID),
        0xa0,
        true,
    );
    info!("GIC up: {} list registers", gic::nr_lrs());
    // Console input: the UART's receive interrupt, forwarded to the VM with focus.
    if let (Some(intid), Some(u)) = (plat.uart.intid, console_uart) {
        gic::enable(intid, 0xc0, true);
        if intid >= 32 {
            gic::route_to_this_cpu(intid);
        }
        u.set_rx_interrupt(true);
    }

    if plat.vms.is_empty() {
        error!(
            "device tree node /chosen: no VM nodes (compatible = \"elvisor,vm\"); nothing to run"
        );
        power_off();
    }
    if plat.vms.len() > 1 {
        warn!(
            "{} VMs configured; this build runs one VM per machine until SMP scheduling lands: \
             running {} only",
            plat.vms.len(),
            plat.vms[0].name
        );
    }
    crate::console::set_vm_prefixes(false);
    let heap_before = heap.lock().stats_alloc_actual();
    let vm = match build_vm(VmId(0), &plat.vms[0], plat, pa_bits) {
        Ok(vm) => vm,
        Err(e) => {
            error!("{e}");
            power_off();
        }
    };
    RUNNING_VMS.store(1, Ordering::Relaxed);
    let vcpu = Box::leak(Box::new(Vcpu::new(VcpuId(0), 0)));
    vcpu.regs.host_sp = percpu.stack_top;
    vcpu.reset(vm.entry_ipa(), vm.fdt_ipa());
    VCPU_VM.call_once(|| vm);
    // Kernel memory this VM costs beyond its RAM: vCPU, stage-2 tables, device and vGIC
    // state, configuration (all from the heap).
    info!(
        "{} ({}): overhead {} bytes",
        vm.id,
        vm.name,
        heap.lock().stats_alloc_actual().saturating_sub(heap_before)
    );
    info!(
        "{} ({}): entering at {:#x}, dtb at {:#x}",
        vm.id, vm.name, vcpu.regs.elr, vcpu.regs.x[0]
    );
    vcpu_load(vm, vcpu);
    vgic_flush(vm, vcpu);
    // SAFETY: the vCPU is leaked ('static, never moved); its EL1 context, trap configuration
    // and stage 2 were just loaded on this CPU, and host_sp is this CPU's stack top.
    unsafe { vectors::enter_guest(&mut vcpu.regs) }
}

/// The VM of the vCPU(s) on this machine (one VM until SMP scheduling lands).
static VCPU_VM: Once<&'static Vm> = Once::new();

fn enable_mmu(root: PhysAddr, vhe: bool, pa_bits: u32) {
    // SAFETY: `root` is the map from `build_el2_map`, which covers the image (text, rodata,
    // data/bss/stacks minus guard pages, heap), all RAM and the console UART, in the
    // descriptor format of the E2H mode chosen above.
    unsafe { mmu::enable(root, vhe, pa_bits) }
}

fn build_el2_map(
    plat: &Platform,
    vhe: bool,
    image: &ram::ImageLayout,
) -> Result<PhysAddr, crate::mm::pagetable::PageTableError> {
    let mut t = El2Table::new(vhe);
    // All RAM read/write, never executable (frames, modules, guest RAM for loading)...
    for r in &plat.ram {
        t.identity_map(r.base, r.size_bytes, El2Kind::Data)?;
    }
    // ...then the image with its own permissions (splitting blocks as needed).
    t.identity_map(image.text.base, image.text.size_bytes, El2Kind::Text)?;
    t.identity_map(image.rodata.base, image.rodata.size_bytes, El2Kind::RoData)?;
    // Stack guard pages: unmapped, so an overflow faults instead of corrupting memory.
    for g in cpu::guard_pages() {
        t.unmap(g.base, g.size_bytes)?;
    }
    // Devices the kernel drives: the GIC (distributor, redistributors or CPU interface and
    // GICH) and the console UART.
    let g = &plat.gic;
    for r in core::iter::once(&g.gicd)
        .chain(g.gicr.iter())
        .chain(g.gicc.iter())
        .chain(g.gich.iter())
    {
        t.identity_map(
            r.base.align_down(0x1000),
            r.size_bytes.max(0x1000),
            El2Kind::Device,
        )?;
    }
    let u = &plat.uart;
    t.identity_map(
        u.base.align_down(0x1000),
        u.size_bytes.max(0x1000),
        El2Kind::Device,
    )?;
    mmio::register_device(PhysRange::new(u.base, u.size_bytes.max(0x1000)));
    let root = t.root_pa();
    // The table lives as long as the kernel.
    core::mem::forget(t);
    Ok(root)
}

fn log_platform(p: &Platform, image: PhysRange, heap: PhysRange) {
    for r in &p.ram {
        info!(
            "ram: {:#x}..{:#x} ({} MiB)",
            r.base.0,
            r.end().0,
            r.size_bytes >> 20
        );
    }
    info!(
        "image: {:#x}..{:#x}, heap {} KiB",
        image.base.0,
        image.end().0,
        heap.size_bytes >> 10
    );
    info!(
        "cpus: {} ({})",
        p.cpus.len(),
        p.cpus
            .iter()
            .map(|c| alloc::format!("{:#x}", c.mpidr))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let g = &p.gic;
    match g.version {
        platform::GicVersion::V3 => info!(
            "gic: GICv3, GICD {:#x}, {} GICR region(s) at {:#x}",
            g.gicd.base.0,
            g.gicr.len(),
            g.gicr.first().map(|r| r.base.0).unwrap_or(0)
        ),
        platform::GicVersion::V2 => info!(
            "gic: GICv2, GICD {:#x}, GICC {:#x}, GICH {:#x}, GICV {:#x}",
            g.gicd.base.0,
            g.gicc.map(|r| r.base.0).unwrap_or(0),
            g.gich.map(|r| r.base.0).unwrap_or(0),
            g.gicv.map(|r| r.base.0).unwrap_or(0)
        ),
    }
    info!(
        "timer PPIs: phys {} virt {} hyp {}; uart {} at {:#x}; psci {}",
        p.timer.phys_intid,
        p.timer.virt_intid,
        p.timer.hyp_phys_intid,
        p.uart.path,
        p.uart.base.0,
        match p.psci {
            Some(PsciConduit::Smc) => "smc",
            Some(PsciConduit::Hvc) => "hvc",
            None => "none",
        }
    );
    for v in &p.vms {
        info!(
            "vm config {}: {} vCPU(s), {} MiB, kernel {:#x}+{:#x}",
            v.name,
            v.vcpus,
            v.memory_bytes >> 20,
            v.kernel.base.0,
            v.kernel.size_bytes
        );
    }
}

impl Vm {
    fn entry_ipa(&self) -> u64 {
        layout::RAM_BASE.0 + self.entry_offset
    }
    fn fdt_ipa(&self) -> u64 {
        layout::RAM_BASE.0 + self.fdt_offset
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
fn build_vm(
    id: VmId,
    cfg: &VmConfig,
    plat: &Platform,
    pa_bits: u32,
) -> Result<&'static Vm, VmError> {
    if cfg.vcpus != 1 {
        return Err(vm_err(
            cfg,
            "cpus",
            alloc::format!(
                "{} vCPUs requested; this build supports 1 until SMP lands",
                cfg.vcpus
            ),
        ));
    }
    let kernel = Module::new(cfg.kernel, &plat.ram, &plat.reserved)
        .ok_or_else(|| vm_err(cfg, "reg", "kernel module is not inside host RAM"))?;
    let ramdisk = match cfg.ramdisk {
        Some(r) => Some(
            Module::new(r, &plat.ram, &plat.reserved)
                .ok_or_else(|| vm_err(cfg, "reg", "ramdisk module is not inside host RAM"))?,
        ),
        None => None,
    };
    let ram_bytes = cfg.memory_bytes;
    let ipa_bits = pa_bits.min(48);
    if layout::RAM_BASE.0 + ram_bytes > (1u64 << ipa_bits) {
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
            alloc::format!("the kernel image does not fit: {e:?}"),
        )
    })?;
    let fdt_offset = ram_bytes - layout::FDT_SLOT;
    let initrd_offset = ramdisk.map(|_| fdt_offset - initrd_slot);

    let ram = RamRegion::alloc(&mut FRAMES.lock(), ram_bytes, BLOCK_2M).ok_or_else(|| {
        vm_err(
            cfg,
            "memory",
            alloc::format!("cannot allocate {} MiB of host RAM", ram_bytes >> 20),
        )
    })?;
    let mut stage2 = Stage2Table::new(ipa_bits);
    stage2
        .map(layout::RAM_BASE, ram.range().base, ram_bytes, S2Kind::Ram)
        .map_err(|e| vm_err(cfg, "memory", alloc::format!("stage-2 map failed: {e:?}")))?;

    let mpidrs = [0u64];
    let version = match plat.gic.version {
        platform::GicVersion::V3 => vgic::GicVersion::V3,
        platform::GicVersion::V2 => vgic::GicVersion::V2,
    };
    let mut vg = Vgic::new(&VgicConfig {
        version,
        nr_spis: VM_SPIS,
        mpidrs: &mpidrs,
    })
    .map_err(|e| vm_err(cfg, "cpus", alloc::format!("virtual GIC: {e}")))?;
    // The virtual timer is forwarded with the HW bit: the guest's deactivation deactivates
    // the physical PPI.
    let _ = vg.set_hw(VTIMER_INTID, VcpuId(0), Some(VTIMER_INTID));
    let vgic: vgic::SharedVgic = Arc::new(Mutex::new(vg));

    let overlap = |_| vm_err(cfg, "compatible", "device windows overlap");
    let mut bus = MmioBus::new();
    let console = crate::console::VmConsole::new(&cfg.name);
    bus.add_with_irq(
        layout::UART_BASE,
        Box::new(VPl011::new(Box::new(console))),
        Some(layout::UART_INTID),
    )
    .map_err(overlap)?;
    bus.add(layout::GICD_BASE, Box::new(GicdWindow::new(vgic.clone())))
        .map_err(overlap)?;
    match plat.gic.version {
        platform::GicVersion::V3 => {
            bus.add(layout::GICR_BASE, Box::new(GicrWindow::new(vgic.clone())))
                .map_err(overlap)?;
        }
        platform::GicVersion::V2 => {
            // The hardware virtual CPU interface (GICV) appears at the guest's GICC address.
            let gicv = plat
                .gic
                .gicv
                .ok_or_else(|| vm_err(cfg, "compatible", "GICv2 host without GICV"))?;
            stage2
                .map(
                    layout::GICC_BASE,
                    gicv.base,
                    layout::GICC_SIZE,
                    S2Kind::Device,
                )
                .map_err(|e| vm_err(cfg, "memory", alloc::format!("stage-2 GICV map: {e:?}")))?;
        }
    }

    let passthrough_irqs = setup_passthrough(cfg, plat, &bus, &mut stage2, &vgic, ram_bytes)?;

    let vmid = id.0 as u64 + 1;
    let hw = guest::VcpuHwConfig {
        hcr: guest::guest_hcr(),
        vttbr: (vmid << 48) | stage2.root_pa().0,
        vtcr: guest::vtcr(ipa_bits, stage2.root_level(), pa_bits),
        vmpidr: 1 << 31,
        vpidr: cpu::midr(),
        cnthctl: guest::guest_cnthctl(),
        // Each VM's virtual counter starts near zero at its creation.
        cntvoff: timer::now(),
        mdcr: guest::MDCR_EL2_GUEST,
        cptr: guest::guest_cptr(),
    };
    let vm: &'static Vm = Box::leak(Box::new(Vm {
        id,
        name: cfg.name.clone(),
        config: cfg.clone(),
        ram: Mutex::new(ram),
        stage2,
        mmio: Mutex::new(bus),
        vgic,
        passthrough_irqs,
        hw,
        reset_count: AtomicU32::new(0),
        kernel,
        ramdisk,
        entry_offset: placement.load_offset,
        fdt_offset,
        initrd_offset,
    }));
    load_images(vm).map_err(|p| vm_err(cfg, "bootargs", p))?;
    info!(
        "{} ({}): {} MiB at host {:#x}, IPA {} bits, VMID {}, {} image at +{:#x}",
        vm.id,
        vm.name,
        ram_bytes >> 20,
        vm.ram.lock().range().base.0,
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
    ram_bytes: u64,
) -> Result<Vec<u32>, VmError> {
    let mut irqs = Vec::new();
    let g = &plat.gic;
    let owned: Vec<PhysRange> = core::iter::once(g.gicd)
        .chain(g.gicr.iter().copied())
        .chain(g.gicc)
        .chain(g.gich)
        .chain(g.gicv)
        .chain(core::iter::once(PhysRange::new(plat.uart.base, plat.uart.size_bytes)))
        .collect();
    let guest_ram = PhysRange::new(PhysAddr(layout::RAM_BASE.0), ram_bytes);
    for dev in &cfg.passthrough {
        let bad = |problem: String| VmError {
            node: dev.node_path.clone(),
            property: "elvisor,host-path",
            problem,
        };
        for r in &dev.regs {
            let r = PhysRange::new(r.base.align_down(0x1000), r.end().align_up(0x1000).0 - r.base.align_down(0x1000).0);
            if owned.iter().any(|o| o.overlaps(&r)) {
                return Err(bad(alloc::format!("{} is used by the hypervisor", dev.host_path)));
            }
            let clash = r.overlaps(&guest_ram)
                || bus
                    .windows()
                    .any(|(b, sz, _)| PhysRange::new(PhysAddr(b.0), sz).overlaps(&r));
            if clash {
                return Err(bad(alloc::format!(
                    "{} at {:#x} collides with the guest's RAM or emulated devices",
                    dev.host_path, r.base.0
                )));
            }
            stage2
                .map(GuestPhysAddr(r.base.0), r.base, r.size_bytes, S2Kind::Device)
                .map_err(|e| bad(alloc::format!("stage-2 map: {e:?}")))?;
        }
        for &(intid, level) in &dev.irqs {
            if Some(intid) == plat.uart.intid || intid >= 32 + VM_SPIS {
                return Err(bad(alloc::format!(
                    "INTID {intid} is the hypervisor's or beyond the VM's {VM_SPIS} SPIs"
                )));
            }
            vgic.lock()
                .set_hw(intid, VcpuId(0), Some(intid))
                .map_err(|e| bad(alloc::format!("INTID {intid}: {e}")))?;
            gic::enable(intid, 0xa0, level);
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

/// (Re)writes a VM's RAM from scratch: zeroes it, copies the kernel and initrd modules, and
/// generates the device tree. Used at build and on SYSTEM_RESET, so nothing of a previous
/// run survives.
fn load_images(vm: &Vm) -> Result<(), String> {
    let mpidrs = [0u64];
    let initrd = vm.initrd_offset.zip(vm.ramdisk).map(|(off, m)| {
        (
            GuestPhysAddr(layout::RAM_BASE.0 + off),
            m.bytes().len() as u64,
        )
    });
    let blob = crate::vm::fdt::generate(&GuestFdt {
        ram_base: layout::RAM_BASE,
        ram_bytes: vm.config.memory_bytes,
        mpidrs: &mpidrs,
        uart: Some(GuestUart {
            base: layout::UART_BASE,
            size_bytes: layout::UART_SIZE,
            intid: Some(layout::UART_INTID),
        }),
        gic: Some(match vm.vgic.lock().version() {
            vgic::GicVersion::V3 => GuestGic {
                version: platform::GicVersion::V3,
                gicd: (layout::GICD_BASE, layout::GICD_SIZE),
                gicr_or_gicc: (layout::GICR_BASE, layout::GICR_STRIDE),
                maintenance_intid: None,
            },
            vgic::GicVersion::V2 => GuestGic {
                version: platform::GicVersion::V2,
                gicd: (layout::GICD_BASE, layout::GICD_V2_SIZE),
                gicr_or_gicc: (layout::GICC_BASE, layout::GICC_SIZE),
                maintenance_intid: None,
            },
        }),
        bootargs: &vm.config.bootargs,
        initrd,
        reset_count: vm.reset_count.load(Ordering::Relaxed),
        passthrough: &vm.config.passthrough,
    })
    .map_err(|e| alloc::format!("cannot generate the guest device tree: {e}"))?;
    if blob.len() as u64 > layout::FDT_SLOT {
        return Err(alloc::format!(
            "guest device tree is {} bytes, over 2 MiB",
            blob.len()
        ));
    }
    let mut ram = vm.ram.lock();
    ram.zero();
    let mut ok = ram.write(vm.entry_offset, vm.kernel.bytes()) && ram.write(vm.fdt_offset, &blob);
    if let (Some(off), Some(m)) = (vm.initrd_offset, vm.ramdisk) {
        ok &= ram.write(off, m.bytes());
    }
    // The guest starts with its MMU off: make RAM coherent with non-cacheable accesses.
    ram.clean_to_poc();
    if ok {
        Ok(())
    } else {
        Err("an image does not fit in guest RAM".into())
    }
}

/// What to run after an exit. Called by the arch exit glue with IRQs masked.
pub fn handle_exit(vcpu: &'static mut Vcpu, kind: ExitKind) -> &'static mut Vcpu {
    let Some(&vm) = VCPU_VM.get() else {
        error!("exit with no VM");
        power_off();
    };
    // List registers only move when they hold something (never on a plain hypercall).
    if vcpu.lr_used != 0 {
        vgic_sync(vm, vcpu);
    }
    let next = dispatch_exit(vm, vcpu, kind);
    vgic_flush(vm, next);
    next
}

fn dispatch_exit(vm: &'static Vm, vcpu: &'static mut Vcpu, kind: ExitKind) -> &'static mut Vcpu {
    match kind {
        ExitKind::Sync(esr) => {
            let action = {
                let mut ctx = ExitCtx {
                    regs: &mut vcpu.regs,
                    mmio: &vm.mmio,
                    debug: &mut vcpu.debug,
                    ptimer: &mut vcpu.ptimer,
                    counter: timer::now,
                    vcpu: vcpu.id,
                    vm_name: &vm.name,
                };
                crate::vm::exit::handle_sync(&mut ctx, esr, guest::fault)
            };
            if esr.ec() == esr::ec::DABT_LOWER {
                sample_device_lines(vm, vcpu);
                console_unthrottle(vm);
            }
            apply(vm, vcpu, esr, action)
        }
        ExitKind::Irq | ExitKind::Fiq => {
            handle_irqs(vm, vcpu);
            vcpu
        }
        ExitKind::SError(esr) => {
            warn!(
                "{} ({}): SError from the guest, ESR {:#x}",
                vm.id, vm.name, esr.0
            );
            stop_vm(vm, vcpu, "SError")
        }
    }
}

fn apply(vm: &'static Vm, vcpu: &'static mut Vcpu, esr: Esr, action: Action) -> &'static mut Vcpu {
    let el0 = guest::from_el0(&vcpu.regs);
    match action {
        Action::Resume | Action::Wait { wfe: true } => vcpu,
        Action::Wait { wfe: false } => {
            block(vm, vcpu);
            vcpu
        }
        Action::TimerChanged => {
            update_ptimer(vm, vcpu);
            vcpu
        }
        Action::Sgi { value, group1 } => {
            let mut vg = vm.vgic.lock();
            let _kicks = vg.sgi(vcpu.id, value, group1);
            vcpu
        }
        Action::InjectDataAbort { far, write } => {
            guest::inject_sync(
                &mut vcpu.regs,
                esr::inject::data_abort(el0, write),
                Some(far),
            );
            vcpu
        }
        Action::InjectInstrAbort { far } => {
            guest::inject_sync(&mut vcpu.regs, esr::inject::instr_abort(el0), Some(far));
            vcpu
        }
        Action::InjectUndef => {
            guest::inject_sync(&mut vcpu.regs, esr::inject::undefined(esr.il()), None);
            vcpu
        }
        Action::Psci(call) => psci_call(vm, vcpu, call),
        Action::Stop(why) => stop_vm(vm, vcpu, why),
    }
}

fn set_ret(vcpu: &mut Vcpu, v: i64) {
    let Ret(r) = Ret::x0(v);
    if let Some(x0) = r[0] {
        vcpu.regs.x[0] = x0;
    }
}

fn psci_call(vm: &'static Vm, vcpu: &'static mut Vcpu, call: Call) -> &'static mut Vcpu {
    match call {
        Call::SystemOff => stop_vm(vm, vcpu, "PSCI SYSTEM_OFF"),
        Call::SystemReset => {
            reset_vm(vm, vcpu);
            vcpu
        }
        Call::CpuOff => stop_vm(vm, vcpu, "PSCI CPU_OFF of its last vCPU"),
        Call::CpuOn { target, .. } => {
            let r = if target & 0xff_00ff_ffff == vcpu.mpidr {
                psci::ret::ALREADY_ON
            } else {
                psci::ret::INVALID_PARAMETERS
            };
            set_ret(vcpu, r);
            vcpu
        }
        Call::AffinityInfo { target, level } => {
            let r = if level != 0 {
                psci::ret::INVALID_PARAMETERS
            } else if target & 0xff_00ff_ffff == vcpu.mpidr {
                0 // ON
            } else {
                psci::ret::INVALID_PARAMETERS
            };
            set_ret(vcpu, r);
            vcpu
        }
        // Standby returns on any wake-up event; returning at once is a valid wake-up.
        Call::CpuSuspend { .. } => {
            set_ret(vcpu, psci::ret::SUCCESS);
            vcpu
        }
        Call::Return(_) => vcpu,
    }
}

/// SYSTEM_RESET: fresh RAM, fresh images, fresh device and vCPU state.
fn reset_vm(vm: &'static Vm, vcpu: &mut Vcpu) {
    let n = vm.reset_count.fetch_add(1, Ordering::Relaxed) + 1;
    info!("{} ({}): PSCI SYSTEM_RESET (reset #{n})", vm.id, vm.name);
    vm.mmio.lock().reset_all();
    {
        let mut vg = vm.vgic.lock();
        vg.reset();
        let _ = vg.set_hw(VTIMER_INTID, VcpuId(0), Some(VTIMER_INTID));
        while let Some(p) = vg.take_hw_deactivation() {
            gic::deactivate(p);
        }
    }
    if let Err(e) = load_images(vm) {
        error!("{} ({}): reset failed: {e}", vm.id, vm.name);
        vcpu.state = VcpuState::Off;
        return;
    }
    vcpu.reset(vm.entry_ipa(), vm.fdt_ipa());
    timer::disarm();
    vcpu_load(vm, vcpu);
}

/// Stops a VM; when it was the last one, powers the machine off.
fn stop_vm(vm: &'static Vm, vcpu: &mut Vcpu, why: &str) -> ! {
    vcpu.state = VcpuState::Off;
    info!("{} ({}) stopped: {}", vm.id, vm.name, why);
    let left = RUNNING_VMS
        .fetch_sub(1, Ordering::Relaxed)
        .saturating_sub(1);
    if left == 0 {
        info!("all VMs stopped; powering off");
    }
    power_off()
}

/// Powers the machine off through the firmware's PSCI; parks if there is none.
fn power_off() -> ! {
    firmware::system_off(PLATFORM.get().and_then(|p| p.psci));
    error!("PSCI SYSTEM_OFF failed or no PSCI; parking");
    cpu::park()
}

/// A bad host device tree: say which node and property, then stop.
fn fatal_config(e: &platform::PlatformError) -> ! {
    error!("bad configuration: {e}");
    // Without a parsed platform there is no known PSCI conduit to power off through.
    error!("stopping");
    cpu::park()
}

/// The panic handler: message, syndrome registers, backtrace, then park this CPU.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("elvisor: PANIC: {info}");
    for (name, v) in arch_exit::fault_registers() {
        crate::println!("  {name} = {v:#018x}");
    }
    arch_exit::backtrace(arch_exit::frame_pointer());
    cpu::park()
}

/// Puts a vCPU on this CPU: trap configuration, stage 2, EL1 context, virtual CPU interface
/// state and an empty set of list registers. The slow path: only on first entry, reset, or
/// (with SMP scheduling) when a different vCPU takes the CPU.
fn vcpu_load(vm: &Vm, vcpu: &mut Vcpu) {
    guest::load_config(&vm.hw);
    guest::load_el1(&vcpu.el1);
    gic::load_guest_sre();
    gic::restore_vif(&vcpu.vif);
    for i in 0..gic::nr_lrs() {
        gic::write_lr(i, 0);
    }
    vcpu.lrs = [Lr::INVALID; 16];
    vcpu.lr_used = 0;
    gic::write_hcr(gic::HCR_EN);
    vcpu.hcr = gic::HCR_EN;
}

fn encode_lr(lr: &Lr) -> u64 {
    if gic::version() == 3 {
        vgic::encode_v3(lr)
    } else {
        vgic::encode_v2(lr) as u64
    }
}

fn decode_lr(v: u64) -> Lr {
    if gic::version() == 3 {
        vgic::decode_v3(v)
    } else {
        vgic::decode_v2(v as u32)
    }
}

/// Fills the list registers before entering the guest, if the vGIC has news for this vCPU.
fn vgic_flush(vm: &Vm, vcpu: &mut Vcpu) {
    let mut vg = vm.vgic.lock();
    if !vg.needs_flush(vcpu.id) {
        return;
    }
    let n = gic::nr_lrs().min(vcpu.lrs.len());
    let r = vg.flush(vcpu.id, &mut vcpu.lrs[..n]);
    for i in 0..n {
        if r.changed & (1 << i) != 0 {
            gic::write_lr(i, encode_lr(&vcpu.lrs[i]));
        }
    }
    vcpu.lr_used = r.live;
    // More deliverable than fits: ask for the underflow maintenance interrupt to refill.
    let hcr = gic::HCR_EN | if r.overflow { gic::HCR_UIE } else { 0 };
    if hcr != vcpu.hcr {
        gic::write_hcr(hcr);
        vcpu.hcr = hcr;
    }
    while let Some(p) = vg.take_hw_deactivation() {
        gic::deactivate(p);
    }
}

/// Folds the hardware list registers back into the vGIC after an exit.
fn vgic_sync(vm: &Vm, vcpu: &mut Vcpu) {
    let n = gic::nr_lrs().min(vcpu.lrs.len());
    let used = vcpu.lr_used;
    for i in 0..n {
        if used & (1 << i) != 0 {
            vcpu.lrs[i] = decode_lr(gic::read_lr(i));
        }
    }
    let mut vg = vm.vgic.lock();
    let freed = vg.sync(vcpu.id, &mut vcpu.lrs[..n]);
    // Empty the slots the guest finished with (an invalid LR with its EOI bit set would keep
    // the EOI maintenance interrupt asserted).
    for i in 0..n {
        if freed & (1 << i) != 0 {
            gic::write_lr(i, 0);
        }
    }
    vcpu.lr_used = vg.live_lrs(vcpu.id);
    while let Some(p) = vg.take_hw_deactivation() {
        gic::deactivate(p);
    }
}

/// After an MMIO access: propagate device interrupt outputs (the PL011's SPI) to the vGIC.
fn sample_device_lines(vm: &Vm, vcpu: &Vcpu) {
    let bus = vm.mmio.lock();
    let mut vg = vm.vgic.lock();
    for (intid, level) in bus.irq_lines() {
        let _ = vg.set_level(intid, vcpu.id, level);
    }
    let _ = vg.take_kicks();
}

/// Re-evaluates the emulated EL1 physical timer: its interrupt line and the EL2 timer.
fn update_ptimer(vm: &Vm, vcpu: &mut Vcpu) {
    let now = timer::now();
    let level = vcpu.ptimer.level(now);
    let _ = vm.vgic.lock().set_level(PTIMER_INTID, vcpu.id, level);
    match vcpu.ptimer.deadline(now) {
        Some(d) => timer::arm(d),
        None => timer::disarm(),
    }
}

/// Acknowledges and routes every pending physical interrupt.
fn handle_irqs(vm: &Vm, vcpu: &mut Vcpu) {
    let maint = PLATFORM
        .get()
        .and_then(|p| p.gic.maintenance_intid)
        .unwrap_or(MAINT_INTID);
    while let Some(intid) = gic::ack() {
        gic::eoi(intid);
        if intid == VTIMER_INTID || vm.passthrough_irqs.contains(&intid) {
            // HW-linked: stays active until the guest deactivates its virtual interrupt,
            // which deactivates this one.
            let _ = vm.vgic.lock().inject_edge(intid, vcpu.id);
            continue;
        }
        gic::deactivate(intid);
        if Some(intid) == PLATFORM.get().and_then(|p| p.uart.intid) {
            console_input(vm, vcpu);
        } else if intid == timer::HYP_TIMER_INTID {
            update_ptimer(vm, vcpu);
        } else if intid == maint {
            // Underflow (UIE): the list registers ran low. The exit already synced them,
            // which marks the vCPU for a refill; the condition is level-sensitive, so turn
            // UIE off now or it fires again at once. The flush on the way back in refills
            // the registers and sets UIE again only if interrupts are still waiting.
            gic::write_hcr(gic::HCR_EN);
            vcpu.hcr = gic::HCR_EN;
        } else {
            log::debug!("unexpected physical interrupt {intid}");
        }
    }
}

static INPUT: Mutex<crate::console::InputRouter> = Mutex::new(crate::console::InputRouter::new());
static CONSOLE_UART: Once<&'static Pl011> = Once::new();
/// Set while console input waits in the physical UART because the VM's FIFO is full.
static RX_THROTTLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Moves console input from the physical UART into the VM with focus (its emulated PL011's
/// receive FIFO), only as far as that FIFO has room: the rest stays in the physical UART,
/// whose receive interrupt is masked until the guest reads (flow control, so nothing typed
/// is lost however small the guest's FIFO is).
fn console_input(vm: &Vm, vcpu: &Vcpu) {
    use crate::console::Input;
    let mut router = INPUT.lock();
    loop {
        // Room for a pending escape sequence's held bytes plus this one.
        if vm.mmio.lock().console_room() < 3 {
            if let Some(u) = CONSOLE_UART.get() {
                u.set_rx_interrupt(false);
            }
            RX_THROTTLED.store(true, Ordering::Relaxed);
            break;
        }
        let Some(b) = crate::console::get_byte() else {
            break;
        };
        router.feed(b, 1, |ev| match ev {
            Input::ToVm { byte, .. } => {
                let _ = vm.mmio.lock().console_input(byte);
            }
            Input::Focus { .. } => info!("console input goes to {} ({})", vm.id, vm.name),
            Input::Held => {}
        });
    }
    drop(router);
    sample_device_lines(vm, vcpu);
}

/// After a guest MMIO access: if input was held back, let the UART interrupt again once
/// the VM's FIFO has room.
fn console_unthrottle(vm: &Vm) {
    if RX_THROTTLED.load(Ordering::Relaxed) && vm.mmio.lock().console_room() >= 3 {
        RX_THROTTLED.store(false, Ordering::Relaxed);
        if let Some(u) = CONSOLE_UART.get() {
            u.set_rx_interrupt(true);
        }
    }
}

/// WFI with nothing to deliver: idle this physical CPU until an interrupt for the vCPU
/// arrives (its virtual timer's PPI, the EL2 timer for its physical timer, ...).
fn block(vm: &Vm, vcpu: &mut Vcpu) {
    loop {
        update_ptimer(vm, vcpu);
        if vm.vgic.lock().has_deliverable(vcpu.id) {
            return;
        }
        timer::wait_for_interrupt();
        handle_irqs(vm, vcpu);
    }
}
