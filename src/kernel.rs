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
use crate::arch::aarch64::{cpu, exit as arch_exit, firmware, guest, mmio, mmu, ram, vectors};
use crate::drivers::pl011::{Pl011, Pl011Regs};
use crate::mm::frame::FrameAllocator;
use crate::mm::pagetable::{El2Kind, El2Table, S2Kind, Stage2Table};
use crate::mm::{BLOCK_2M, GuestPhysAddr, PhysAddr, PhysRange};
use crate::platform::{self, Platform, PsciConduit};
use crate::vdev::MmioBus;
use crate::vdev::pl011::Pl011 as VPl011;
use crate::vm::config::VmConfig;
use crate::vm::exit::{Action, ExitCtx};
use crate::vm::fdt::{GuestFdt, GuestUart};
use crate::vm::psci::{self, Call, Ret};
use crate::vm::vcpu::{Vcpu, VcpuState};
use crate::vm::{VcpuId, VmId, layout, loader};

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());
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
    if let Some(regs) = uart {
        crate::console::init(Box::leak(Box::new(Pl011::new(regs))));
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
            crate::arch::aarch64::cache::invalidate_to_poc(image.image.base.0, image.image.size_bytes);
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
    info!(
        "{} ({}): entering at {:#x}, dtb at {:#x}",
        vm.id, vm.name, vcpu.regs.elr, vcpu.regs.x[0]
    );
    guest::load_config(&vm.hw);
    guest::load_el1(&vcpu.el1);
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
    // Devices the kernel drives.
    let u = &plat.uart;
    t.identity_map(u.base.align_down(0x1000), u.size_bytes.max(0x1000), El2Kind::Device)?;
    mmio::register_device(PhysRange::new(u.base, u.size_bytes.max(0x1000)));
    let root = t.root_pa();
    // The table lives as long as the kernel.
    core::mem::forget(t);
    Ok(root)
}

fn log_platform(p: &Platform, image: PhysRange, heap: PhysRange) {
    for r in &p.ram {
        info!("ram: {:#x}..{:#x} ({} MiB)", r.base.0, r.end().0, r.size_bytes >> 20);
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
            alloc::format!("{} vCPUs requested; this build supports 1 until SMP lands", cfg.vcpus),
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
        vm_err(cfg, "memory", alloc::format!("the kernel image does not fit: {e:?}"))
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

    let mut bus = MmioBus::new();
    let console = crate::console::VmConsole::new(&cfg.name);
    bus.add(layout::UART_BASE, Box::new(VPl011::new(Box::new(console))))
        .map_err(|_| vm_err(cfg, "compatible", "device windows overlap"))?;

    let vmid = id.0 as u64 + 1;
    let hw = guest::VcpuHwConfig {
        hcr: guest::guest_hcr(),
        vttbr: (vmid << 48) | stage2.root_pa().0,
        vtcr: guest::vtcr(ipa_bits, stage2.root_level(), pa_bits),
        vmpidr: 1 << 31,
        vpidr: cpu::midr(),
        cnthctl: guest::guest_cnthctl(),
        cntvoff: 0,
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
        if placement.is_linux_image { "arm64 Image" } else { "raw" },
        placement.load_offset
    );
    Ok(vm)
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
            intid: None,
        }),
        gic: None,
        bootargs: &vm.config.bootargs,
        initrd,
        reset_count: vm.reset_count.load(Ordering::Relaxed),
    })
    .map_err(|e| alloc::format!("cannot generate the guest device tree: {e}"))?;
    if blob.len() as u64 > layout::FDT_SLOT {
        return Err(alloc::format!("guest device tree is {} bytes, over 2 MiB", blob.len()));
    }
    let mut ram = vm.ram.lock();
    ram.zero();
    let mut ok = ram.write(vm.entry_offset, vm.kernel.bytes()) && ram.write(vm.fdt_offset, &blob);
    if let (Some(off), Some(m)) = (vm.initrd_offset, vm.ramdisk) {
        ok &= ram.write(off, m.bytes());
    }
    // The guest starts with its MMU off: make RAM coherent with non-cacheable accesses.
    ram.clean_to_poc();
    if ok { Ok(()) } else { Err("an image does not fit in guest RAM".into()) }
}

/// What to run after an exit. Called by the arch exit glue with IRQs masked.
pub fn handle_exit(vcpu: &'static mut Vcpu, kind: ExitKind) -> &'static mut Vcpu {
    let Some(&vm) = VCPU_VM.get() else {
        error!("exit with no VM");
        power_off();
    };
    match kind {
        ExitKind::Sync(esr) => {
            let action = {
                let mut ctx = ExitCtx {
                    regs: &mut vcpu.regs,
                    mmio: &vm.mmio,
                    debug: &mut vcpu.debug,
                    vcpu: vcpu.id,
                    vm_name: &vm.name,
                };
                crate::vm::exit::handle_sync(&mut ctx, esr, guest::fault)
            };
            apply(vm, vcpu, esr, action)
        }
        ExitKind::Irq | ExitKind::Fiq => {
            // No physical interrupt is enabled yet (the GIC arrives with interrupt
            // virtualization); an IRQ here is spurious.
            log::debug!("spurious physical interrupt exit");
            vcpu
        }
        ExitKind::SError(esr) => {
            warn!("{} ({}): SError from the guest, ESR {:#x}", vm.id, vm.name, esr.0);
            stop_vm(vm, vcpu, "SError")
        }
    }
}

fn apply(vm: &'static Vm, vcpu: &'static mut Vcpu, esr: Esr, action: Action) -> &'static mut Vcpu {
    let el0 = guest::from_el0(&vcpu.regs);
    match action {
        Action::Resume | Action::Wait { .. } => vcpu,
        Action::InjectDataAbort { far, write } => {
            guest::inject_sync(&mut vcpu.regs, esr::inject::data_abort(el0, write), Some(far));
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
    if let Err(e) = load_images(vm) {
        error!("{} ({}): reset failed: {e}", vm.id, vm.name);
        vcpu.state = VcpuState::Off;
        return;
    }
    vcpu.reset(vm.entry_ipa(), vm.fdt_ipa());
    guest::load_config(&vm.hw);
    guest::load_el1(&vcpu.el1);
}

/// Stops a VM; when it was the last one, powers the machine off.
fn stop_vm(vm: &'static Vm, vcpu: &mut Vcpu, why: &str) -> ! {
    vcpu.state = VcpuState::Off;
    info!("{} ({}) stopped: {}", vm.id, vm.name, why);
    let left = RUNNING_VMS.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
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
