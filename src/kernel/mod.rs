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
use spin::Once;

use crate::arch::aarch64::sync::Mutex;

use crate::arch::aarch64::ram::{Module, RamRegion};
use crate::arch::aarch64::{cpu, firmware, gic, guest, mmio, mmu, ram, timer};
use crate::drivers::pl011::{Pl011, Pl011Regs};
use crate::mm::frame::FrameAllocator;
use crate::mm::pagetable::{El2Kind, El2Table, S2Kind, Stage2Table};
use crate::mm::rewrite::Segment;
use crate::mm::{BLOCK_2M, GuestPhysAddr, PhysAddr, PhysRange};
use crate::platform::{self, GicVersion, Platform, PsciConduit};
use crate::vdev::MmioBus;
use crate::vdev::pl011::Pl011 as VPl011;
use crate::vdev::vgic::{self, GicdWindow, GicrWindow, Vgic, VgicConfig};
use crate::vm::config::VmConfig;
use crate::vm::fdt::{GuestFdt, GuestGic, GuestUart};
use crate::vm::timer::VTIMER_INTID;
use crate::vm::vcpu::Vcpu;
use crate::vm::{VcpuId, VmId, layout, loader};

pub mod halt;
pub mod run;
use alloc::sync::Arc;

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());
/// SPIs each VM's virtual GIC has (INTIDs 32..96).
const VM_SPIS: u32 = 64;
static PLATFORM: Once<Platform> = Once::new();
/// Entropy collected at boot, from which every guest boot's seeds are derived.
static ENTROPY: Once<crate::vm::entropy::EntropyPool> = Once::new();

/// The entropy pool: built from the host DT's `/chosen/rng-seed`, RNDR (FEAT_RNG) and counter
/// jitter the first time it is needed (after the platform is parsed).
fn entropy_pool() -> &'static crate::vm::entropy::EntropyPool {
    ENTROPY.call_once(|| {
        let host_seed = PLATFORM.get().map_or(&[][..], |p| p.rng_seed.as_slice());
        let mut rndr = [0u64; 8];
        let mut n = 0;
        for slot in rndr.iter_mut() {
            if let Some(v) = cpu::rndr() {
                *slot = v;
                n += 1;
            }
        }
        // Counter samples around heap work: timing jitter, mixed in, never relied on alone.
        let mut counter = [0u64; 16];
        for c in counter.iter_mut() {
            let v: Vec<u8> = alloc::vec![0; 257];
            *c = timer::now() ^ (v.as_ptr() as u64);
        }
        let pool = crate::vm::entropy::EntropyPool::new(host_seed, &rndr[..n], &counter);
        match pool.quality() {
            crate::vm::entropy::Quality::Strong => info!(
                "entropy: host rng-seed {} bytes, {n} RNDR values: each guest boot gets /chosen/rng-seed",
                host_seed.len()
            ),
            crate::vm::entropy::Quality::JitterOnly => warn!(
                "entropy: no host /chosen/rng-seed and no RNDR; guest rng-seeds come from timer jitter only \
                 (give the firmware an RNG, e.g. U-Boot's rng driver, or pass /chosen/rng-seed)"
            ),
        }
        pool
    })
}
static RUNNING_VMS: AtomicUsize = AtomicUsize::new(0);
/// Every VM, in configuration order (index = VmId).
static VMS: Once<Vec<&'static Vm>> = Once::new();
static CONSOLE_UART: Once<&'static Pl011> = Once::new();
/// The kernel heap (`main.rs`'s global allocator), for the lifecycle accounting's
/// bytes-in-use figure.
static HEAP: Once<&'static LockedHeap<32>> = Once::new();
/// Root of the EL2 translation table, for the secondary CPUs.
static EL2_ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A VM's lifecycle state.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmState {
    Running = 0,
    Resetting = 1,
    Stopped = 2,
}

/// Every VM.
pub fn vms() -> &'static [&'static Vm] {
    VMS.get().map(|v| v.as_slice()).unwrap_or(&[])
}

/// The VM a vCPU belongs to.
#[inline(always)]
pub fn vm_of(v: &Vcpu) -> &'static Vm {
    match v.vm {
        Some(vm) => vm,
        None => no_vm(),
    }
}

#[cold]
fn no_vm() -> ! {
    error!("vCPU with no VM");
    power_off()
}

/// The VM a physical SPI is passed through to.
pub fn passthrough_owner(intid: u32) -> Option<&'static Vm> {
    if intid < 32 {
        return None;
    }
    vms()
        .iter()
        .copied()
        .find(|vm| vm.passthrough_irqs.contains(&intid))
}

/// Masks or unmasks the console UART's receive interrupt (console input flow control).
pub fn console_uart_rx(on: bool) {
    if let Some(u) = CONSOLE_UART.get() {
        u.set_rx_interrupt(on);
    }
}

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
    /// Guest-caused diagnostics left before they are suppressed.
    pub warn_budget: AtomicU32,
    /// Lifecycle ([`VmState`]).
    pub state: core::sync::atomic::AtomicU8,
    /// MPIDR affinity of each vCPU (Aff0 = index).
    pub mpidrs: Vec<u64>,
    /// The physical CPU each vCPU is pinned to.
    pub placement: Vec<usize>,
    /// PSCI power state of each vCPU, shared by all physical CPUs.
    pub power: Vec<crate::vm::power::VcpuPower>,
    /// Set by a vCPU's physical CPU once it has taken the vCPU off (VM stop/reset handshake).
    pub parked: Vec<core::sync::atomic::AtomicBool>,
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
    HEAP.call_once(|| heap);
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
    if let Some(v) = crate::console::bootarg(bootargs, "elvisor.lifecycle-stats") {
        match v.parse::<u32>() {
            Ok(every) => run::set_lifecycle_stats(every),
            Err(_) => warn!(
                "elvisor.lifecycle-stats={v} is not a number of resets; no lifecycle statistics"
            ),
        }
    }
    let Some(dtb) = dtb else {
        error!("no valid device tree at x0 = {dtb_pa:#x}; stopping");
        cpu::park();
    };

    // VHE is chosen before any table exists: E2H changes the table and register formats.
    let force_nvhe = crate::console::bootarg(bootargs, "elvisor.vhe") == Some("off");
    // Failures on purpose for the system tests; only a selftest build has them.
    if let Some(kind) = crate::console::bootarg(bootargs, "elvisor.selftest") {
        #[cfg(feature = "selftest")]
        crate::arch::aarch64::selftest::configure(kind);
        #[cfg(not(feature = "selftest"))]
        warn!("elvisor.selftest={kind} ignored: this image was built without selftests");
    }
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
        Err(e) => fatal_config(&e, dtb),
    };
    let plat = PLATFORM.call_once(|| plat);
    log_platform(plat, image.image, heap_range);

    // Frames: RAM minus the image, the DTB, modules and firmware reservations.
    let free = FRAMES.lock().add_ram(&plat.ram, &plat.reserved);
    info!("frames: {} MiB free", free >> 20);

    // The EL2 identity map, then the MMU.
    let pa_bits = cpu::pa_bits();
    let el2_root = match build_el2_map(plat, vhe, &image) {
        Ok(root) => {
            // Everything written so far went to memory with the MMU off; drop any stale
            // cache lines for it before caches are turned on (booting.rst: the loader only
            // cleaned the image to PoC).
            crate::arch::aarch64::cache::invalidate_to_poc(
                image.image.base.0,
                image.image.size_bytes,
            );
            enable_mmu(root, vhe, pa_bits);
            root
        }
        Err(e) => {
            error!("cannot build the EL2 map: {e}");
            power_off();
        }
    };
    info!("EL2 MMU on (pa {} bits)", pa_bits);

    set_percpu(0);
    guest::init_cpu_traps();
    EL2_ROOT.store(el2_root.0, Ordering::Relaxed);
    // Secondaries read EL2_ROOT with their MMU and caches off, straight from memory, while this
    // store may still sit in this CPU's cache: clean it to PoC (ARM ARM D7.5.9, data cache
    // maintenance for non-cacheable observers) before any secondary is started.
    crate::arch::aarch64::cache::clean_to_poc(core::ptr::addr_of!(EL2_ROOT) as u64, 8);

    if let Err(e) = gic::init(&plat.gic, plat.cpus.len()) {
        error!("GIC: {e}");
        power_off();
    }
    enable_kernel_interrupts(0);
    info!("GIC up: {} list registers", gic::nr_lrs());
    // Console input: the UART's receive interrupt, forwarded to the VM with focus.
    if let (Some(intid), Some(u)) = (plat.uart.intid, console_uart) {
        gic::enable(intid, 0xc0, true, 0);
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
    // VMIDs are 8 bits and VMID 0 is not used.
    if plat.vms.len() > 255 {
        error!(
            "device tree node {}: more than 255 VMs configured",
            plat.vms[255].node_path
        );
        power_off();
    }
    let ncpus = plat.cpus.len().min(cpu::MAX_CPUS);
    if plat.cpus.len() > cpu::MAX_CPUS {
        warn!(
            "{} CPUs in the device tree; using the first {}",
            plat.cpus.len(),
            cpu::MAX_CPUS
        );
    }
    for (i, c) in plat.cpus.iter().take(ncpus).enumerate() {
        run::CPU_MPIDR[i].store(c.mpidr, Ordering::Relaxed);
        run::install_sched(i, run::CpuSched::new(i));
    }
    crate::console::set_vm_prefixes(plat.vms.len() > 1);

    // Build every VM, then place its vCPUs on their physical CPUs.
    let mut built: Vec<&'static Vm> = Vec::new();
    // vCPUs placed on each physical CPU so far (default placement balances against it).
    let mut load: Vec<usize> = alloc::vec![0; ncpus];
    for (n, cfg) in plat.vms.iter().enumerate() {
        let heap_before = heap.lock().stats_alloc_actual();
        let vm = match build_vm(VmId(n as u16), cfg, plat, pa_bits, ncpus, &mut load) {
            Ok(vm) => vm,
            Err(e) => {
                error!("{e}");
                power_off();
            }
        };
        for (i, &pcpu) in vm.placement.iter().enumerate() {
            let mut v = Box::new(Vcpu::new(VcpuId(i as u16), vm.mpidrs[i]));
            v.vm = Some(vm);
            v.regs.host_sp = cpu::stack_top(pcpu);
            let ptr = cpu::VcpuPtr::leak(v);
            if let Some(s) = run::sched_of(pcpu) {
                let slot = s.lock().add(ptr, vm, VcpuId(i as u16));
                set_slot(ptr, slot);
            }
        }
        // Kernel memory this VM costs beyond its RAM: vCPUs, stage-2 tables, device and vGIC
        // state, configuration (all from the heap).
        info!(
            "{} ({}): overhead {} bytes",
            vm.id,
            vm.name,
            heap.lock().stats_alloc_actual().saturating_sub(heap_before)
        );
        info!(
            "{} ({}): {} vCPU(s) on pCPU {:?}, entry {:#x}, dtb {:#x}",
            vm.id,
            vm.name,
            vm.placement.len(),
            vm.placement,
            vm.entry_ipa(),
            vm.fdt_ipa()
        );
        built.push(vm);
    }
    RUNNING_VMS.store(built.len(), Ordering::Relaxed);
    VMS.call_once(|| built);
    // vCPU 0 of every VM starts at its image with x0 = its device tree.
    for vm in vms() {
        let _ = vm.power[0].cpu_on(vm.entry_ipa(), vm.fdt_ipa());
    }

    // Secondary CPUs: PSCI CPU_ON through the firmware's conduit, entry with x0 = index.
    for (i, c) in plat.cpus.iter().enumerate().take(ncpus).skip(1) {
        match (c.enable_method, plat.psci) {
            (platform::EnableMethod::Psci, Some(conduit)) => {
                let r = firmware::smccc_call(
                    conduit,
                    0xc400_0003,
                    c.mpidr,
                    crate::arch::aarch64::boot::secondary_entry_pa(),
                    i as u64,
                ) as i64;
                if r != 0 {
                    warn!("cpu{i} (MPIDR {:#x}): PSCI CPU_ON failed ({r})", c.mpidr);
                }
            }
            (platform::EnableMethod::SpinTable { release_addr }, _) => {
                if c.mpidr & 0xff != i as u64 {
                    warn!(
                        "cpu{i}: spin-table core with MPIDR {:#x} is not Aff0-numbered",
                        c.mpidr
                    );
                } else if !ram::release_spin_table(
                    release_addr,
                    crate::arch::aarch64::boot::spin_entry_pa(),
                    &plat.ram,
                ) {
                    warn!("cpu{i}: cpu-release-addr {release_addr} is not usable RAM");
                }
            }
            (platform::EnableMethod::Psci, None) => {
                warn!("cpu{i}: enable-method psci but no /psci node; its vCPUs won't run")
            }
        }
    }
    run::run_cpu()
}

/// Installs CPU `index`'s per-CPU data (TPIDR_EL2).
fn set_percpu(index: usize) {
    let percpu: &'static cpu::PerCpu = Box::leak(Box::new(cpu::PerCpu {
        exc_sp: cpu::exc_stack_top(index),
        index,
    }));
    cpu::set_percpu(percpu);
}

/// The kernel's own private interrupts on CPU `index`: the guest virtual timer (forwarded
/// with the HW bit), the EL2 timer (emulated physical timers, time slices), the vGIC
/// maintenance interrupt, the kick SGI and the halt SGI (kernel::halt).
fn enable_kernel_interrupts(index: usize) {
    let maint = PLATFORM
        .get()
        .and_then(|p| p.gic.maintenance_intid)
        .unwrap_or(run::MAINT_INTID);
    gic::enable(VTIMER_INTID, 0xa0, true, index);
    gic::enable(timer::HYP_TIMER_INTID, 0xa0, true, index);
    gic::enable(maint, 0xa0, true, index);
    gic::enable(gic::KICK_SGI, 0x90, false, index);
    gic::enable(gic::HALT_SGI, 0x80, false, index);
}

fn set_slot(ptr: cpu::VcpuPtr, slot: usize) {
    cpu::with_new_vcpu(ptr, |v| v.slot = slot);
}

/// Secondary CPU entry from `elvisor_secondary_main` (MMU off, at EL2, own stack).
pub fn secondary_main(index: usize) -> ! {
    // This CPU has run on its stack with caches off, so its frames are in memory only. A line
    // of that block prefetched earlier by a CPU with caches on would be stale yet visible to
    // this CPU's first cacheable reads: invalidate the block to PoC before the MMU goes on
    // (DC IVAC is broadcast to the inner-shareable domain; nothing wrote the block cacheably,
    // so nothing is lost).
    let (lo, hi) = cpu::stack_block(index);
    crate::arch::aarch64::cache::invalidate_to_poc(lo, hi - lo);
    if guest::vhe() {
        mmu::enable_vhe();
    }
    enable_mmu(
        PhysAddr(EL2_ROOT.load(Ordering::Relaxed)),
        guest::vhe(),
        cpu::pa_bits(),
    );
    set_percpu(index);
    guest::init_cpu_traps();
    gic::init_cpu(index);
    enable_kernel_interrupts(index);
    info!("cpu{index} up (MPIDR {:#x})", cpu::mpidr());
    run::run_cpu()
}

fn enable_mmu(root: PhysAddr, vhe: bool, pa_bits: u32) {
    mmu::enable_identity_map(root, vhe, pa_bits)
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
        GicVersion::V3 => info!(
            "gic: GICv3, GICD {:#x}, {} GICR region(s) at {:#x}",
            g.gicd.base.0,
            g.gicr.len(),
            g.gicr.first().map(|r| r.base.0).unwrap_or(0)
        ),
        GicVersion::V2 => info!(
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
    pub fn entry_ipa(&self) -> u64 {
        layout::RAM_BASE.0 + self.entry_offset
    }
    pub fn fdt_ipa(&self) -> u64 {
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
            alloc::format!("the kernel image does not fit: {e}"),
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
        .map_err(|e| vm_err(cfg, "memory", alloc::format!("stage-2 map failed: {e}")))?;

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
            stage2
                .map(
                    layout::GICC_BASE,
                    gicv.base,
                    layout::GICC_SIZE,
                    S2Kind::Device,
                )
                .map_err(|e| vm_err(cfg, "memory", alloc::format!("stage-2 GICV map: {e}")))?;
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
        warn_budget: AtomicU32::new(crate::vm::exit::WARN_BUDGET),
        state: core::sync::atomic::AtomicU8::new(VmState::Running as u8),
        power: (0..nvcpus)
            .map(|_| crate::vm::power::VcpuPower::new())
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
        .chain(core::iter::once(PhysRange::new(
            plat.uart.base,
            plat.uart.size_bytes,
        )))
        .collect();
    let guest_ram = PhysRange::new(PhysAddr(layout::RAM_BASE.0), ram_bytes);
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

/// Bytes the kernel heap has handed out and not taken back (with the buddy allocator's
/// rounding), if the heap is set up.
pub fn heap_in_use_bytes() -> Option<usize> {
    HEAP.get().map(|h| h.lock().stats_alloc_actual())
}

/// 4 KiB frames the frame allocator has free.
pub fn free_frames() -> u64 {
    FRAMES.lock().free_frames()
}

/// What a VM's RAM held before [`load_images`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reload {
    /// Just taken from the frame allocator (VM build): zeroed with plain stores, then the
    /// images copied, which costs the fewest instructions.
    FreshRam,
    /// The previous run (SYSTEM_RESET): rewritten storing only the words that change.
    Reset,
}

/// (Re)writes a VM's RAM from scratch: zeroes it, copies the kernel and initrd modules, and
/// generates the device tree. Used at build and on SYSTEM_RESET, so nothing of a previous
/// run survives.
pub fn load_images(vm: &Vm, how: Reload) -> Result<(), String> {
    let mpidrs = &vm.mpidrs;
    // A fresh seed for this boot of this VM (vm::entropy).
    let boot = vm.reset_count.load(Ordering::Relaxed);
    let pool = entropy_pool();
    let seed = pool.guest_seed(vm.id.0, boot, timer::now());
    let kaslr = pool.kaslr_seed(vm.id.0, boot, timer::now());
    let initrd = vm.initrd_offset.zip(vm.ramdisk).map(|(off, m)| {
        (
            GuestPhysAddr(layout::RAM_BASE.0 + off),
            m.bytes().len() as u64,
        )
    });
    let blob = crate::vm::fdt::generate(&GuestFdt {
        ram_base: layout::RAM_BASE,
        ram_bytes: vm.config.memory_bytes,
        mpidrs,
        uart: Some(GuestUart {
            base: layout::UART_BASE,
            size_bytes: layout::UART_SIZE,
            intid: Some(layout::UART_INTID),
        }),
        gic: Some(match vm.vgic.lock().version() {
            version @ GicVersion::V3 => GuestGic {
                version,
                gicd: (layout::GICD_BASE, layout::GICD_SIZE),
                gicr_or_gicc: (
                    layout::GICR_BASE,
                    layout::GICR_STRIDE * vm.mpidrs.len() as u64,
                ),
                maintenance_intid: None,
            },
            version @ GicVersion::V2 => GuestGic {
                version,
                gicd: (layout::GICD_BASE, layout::GICD_V2_SIZE),
                gicr_or_gicc: (layout::GICC_BASE, layout::GICC_SIZE),
                maintenance_intid: None,
            },
        }),
        bootargs: &vm.config.bootargs,
        initrd,
        reset_count: vm.reset_count.load(Ordering::Relaxed),
        passthrough: &vm.config.passthrough,
        rng_seed: Some(&seed),
        kaslr_seed: Some(kaslr),
    })
    .map_err(|e| alloc::format!("cannot generate the guest device tree: {e}"))?;
    if blob.len() as u64 > layout::FDT_SLOT {
        return Err(alloc::format!(
            "guest device tree is {} bytes, over 2 MiB",
            blob.len()
        ));
    }
    let mut ram = vm.ram.lock();
    // After a run, zero and copy in one pass that stores only words that change (mm::rewrite
    // says why): the same result as zeroing and then copying, which stays the way for fresh
    // RAM (nothing to spare there, and plain zeroing is fewer instructions: 61 M instead of
    // 95 M before the first guest instruction of the bench VM) and for a module that is not
    // 8-byte aligned.
    let (fdt_words, fdt_tail) = crate::mm::rewrite::to_words(&blob);
    let mut segments: Vec<Segment<'_>> = Vec::with_capacity(3);
    let mut aligned = true;
    let images = [
        (Some(vm.entry_offset), Some(vm.kernel)),
        (vm.initrd_offset, vm.ramdisk),
    ];
    for (offset, module) in images {
        if let (Some(offset), Some(module)) = (offset, module) {
            match module.words() {
                Some(seg) => segments.push(Segment {
                    offset_bytes: offset as usize,
                    ..seg
                }),
                None => aligned = false,
            }
        }
    }
    segments.push(Segment {
        offset_bytes: vm.fdt_offset as usize,
        words: &fdt_words,
        tail: fdt_tail,
    });
    segments.sort_by_key(|s| s.offset_bytes);
    let ok = if aligned && how == Reload::Reset {
        ram.rewrite(&segments).is_ok()
    } else {
        ram.zero();
        let mut ok =
            ram.write(vm.entry_offset, vm.kernel.bytes()) && ram.write(vm.fdt_offset, &blob);
        if let (Some(off), Some(m)) = (vm.initrd_offset, vm.ramdisk) {
            ok &= ram.write(off, m.bytes());
        }
        ok
    };
    // The guest starts with its MMU off: make RAM coherent with non-cacheable accesses.
    ram.clean_to_poc();
    if ok {
        Ok(())
    } else {
        Err("an image does not fit in guest RAM".into())
    }
}

/// Powers the machine off through the firmware's PSCI; where there is none (the Raspberry Pi
/// 4's firmware has no PSCI), says that the machine is halted and parks.
fn power_off() -> ! {
    stop_machine(PLATFORM.get().and_then(|p| p.psci))
}

/// Every way the hypervisor stops ends here: PSCI SYSTEM_OFF through `conduit`, else one
/// "halted" line and the CPU parked (scripts and the test harness end QEMU on that line).
fn stop_machine(conduit: Option<platform::PsciConduit>) -> ! {
    firmware::system_off(conduit);
    crate::println!(
        "elvisor: halted: no PSCI SYSTEM_OFF to power off with; the machine can be reset or switched off now"
    );
    cpu::park()
}

/// A bad host device tree: one line naming the node and property, then the machine stops the
/// same way as every other stop (PSCI SYSTEM_OFF if the device tree names a conduit).
fn fatal_config(e: &platform::ConfigError, dtb: &[u8]) -> ! {
    error!("bad configuration: {e}");
    stop_machine(platform::early_psci(dtb))
}
