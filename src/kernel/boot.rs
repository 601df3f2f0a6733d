//! The boot flow of the primary and the secondary CPUs: console, heap, VHE choice, platform,
//! frames, the EL2 map and MMU, VMs, CPUs up.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use crate::arch::aarch64::heap::KernelHeap;
use log::{error, info, warn};

use super::build::build_vm;
use super::halt::{power_off, stop_machine};
use super::{CONSOLE_UART, EL2_ROOT, FRAMES, HEAP, PLATFORM, VMS, Vm};
use super::{lifecycle, sched};
use crate::arch::aarch64::{cpu, firmware, gic, guest, mmio, mmu, ram, timer};
use crate::drivers::pl011::{Pl011, Pl011Regs};
use crate::mm::pagetable::{El2Kind, El2Table};
use crate::mm::{PhysAddr, PhysRange};
use crate::platform::{self, GicVersion, Platform, PsciConduit};
use crate::vm::timer::VTIMER_INTID;
use crate::vm::vcpu::Vcpu;
use crate::vm::{VcpuId, VmId};

/// Boot CPU entry from `elvisor_primary_main`.
pub fn primary_main(dtb_pa: u64, el: u64, heap: &'static KernelHeap) -> ! {
    let dtb = ram::boot_dtb(dtb_pa);
    // Checked once, then shared by every lookup below.
    let host = dtb.and_then(platform::HostDtb::new);
    // The console first: everything after this can report what went wrong. A PL011 must
    // answer where the device tree says; if none does, the tree is another board's, and the
    // machine's own console (if it is one we know) carries the message that says so.
    let named = host.and_then(|h| h.console());
    let (console_at, wrong_board) = match named {
        Some(at) if mmio::primecell_answers(at) => (Some(at), None),
        Some(at) => {
            let found = platform::KNOWN_CONSOLES
                .iter()
                .find(|(_, known)| *known != at && mmio::primecell_answers(*known));
            (found.map(|(_, known)| *known), Some((at, found)))
        }
        None => (None, None),
    };
    let uart = console_at.and_then(mmio::claim_boot_console::<Pl011Regs>);
    let heap_range = ram::init_heap(heap);
    HEAP.call_once(|| heap);
    let console_uart: Option<&'static Pl011> =
        uart.map(|regs| &*Box::leak(Box::new(Pl011::new(regs))));
    if let Some(u) = console_uart {
        crate::console::init(u);
        CONSOLE_UART.call_once(|| u);
    }
    if let Some((named, found)) = wrong_board {
        another_boards_dtb(host.and_then(|h| h.console_path()), named, found);
    }
    if el != 2 {
        crate::println!(
            "elvisor: entered at EL{el}, but elvisor must be entered at EL2 \
             (QEMU: -M virt,virtualization=on; U-Boot: boot it with booti from EL2). Stopping."
        );
        // Stops like every other error: PSCI SYSTEM_OFF (the firmware answers it at EL1 too),
        // else the "halted" line.
        stop_machine(host.and_then(|h| h.psci()));
    }
    // Loaded at an address the image cannot run from (boot.rs moved it only to say so).
    if let Some(at) = crate::arch::aarch64::boot::misplaced_load_address() {
        let ran_at = crate::arch::aarch64::boot::load_address();
        crate::println!(
            "elvisor: {}. Stopping.",
            crate::mm::placement::misaligned(at, ran_at)
        );
        stop_machine(host.and_then(|h| h.psci()));
    }
    let bootargs: &str = host.and_then(|h| h.bootargs()).unwrap_or("");
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
            Ok(every) => lifecycle::set_lifecycle_stats(every),
            Err(_) => warn!(
                "elvisor.lifecycle-stats={v} is not a number of resets; no lifecycle statistics"
            ),
        }
    }
    let Some(dtb) = dtb else {
        error!("no valid device tree at x0 = {dtb_pa:#x}; stopping");
        // Without a device tree there is no PSCI conduit to power off with: the "halted" line.
        stop_machine(None);
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
    guest::set_s2fwb(cpu::has_s2fwb());
    if vhe {
        info!("running in VHE mode (E2H=1)");
    } else if force_nvhe && cpu::has_vhe() {
        info!("running in non-VHE mode (E2H=0), forced by elvisor.vhe=off");
    } else {
        info!("running in non-VHE mode (E2H=0): the CPU has no VHE");
    }

    let image = ram::image_layout();
    let parsed = match &host {
        Some(h) => platform::parse_host(h, PhysAddr(dtb_pa), image.image),
        // Not well-formed: parse the blob for the error that says why.
        None => platform::parse(dtb, PhysAddr(dtb_pa), image.image),
    };
    let plat = match parsed {
        Ok(p) => p,
        Err(e) => fatal_config(&e, dtb),
    };
    let plat = PLATFORM.call_once(|| plat);
    log_platform(plat, image.image, heap_range);
    check_image_placement(
        plat,
        image.image,
        PhysRange::new(PhysAddr(dtb_pa), dtb.len() as u64),
    );

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
        sched::CPU_MPIDR[i].store(c.mpidr, Ordering::Relaxed);
        sched::install_sched(i, sched::CpuSched::new(i));
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
                // Worded and ended like a parse error (fatal_config): one line, then stop.
                error!("bad configuration: {e}");
                power_off();
            }
        };
        let sve_len = super::fpu::vm_sve_len(vm);
        for (i, &pcpu) in vm.placement.iter().enumerate() {
            let mut v = Box::new(Vcpu::new(VcpuId(i as u16), vm.mpidrs[i]));
            v.vm = Some(vm);
            if let Some(c) = vm.exit_counters.get(i) {
                v.counters = c;
            }
            v.sve = sve_len.map(super::fpu::new_sve_state);
            v.pmu = super::pmu::vcpu_state(vm);
            v.regs.host_sp = cpu::stack_top(pcpu);
            let ptr = cpu::VcpuPtr::leak(v);
            if let Some(s) = sched::sched_of(pcpu) {
                let slot = s.lock().add(ptr, vm, VcpuId(i as u16));
                set_slot(ptr, slot);
            }
        }
        // Kernel memory this VM costs beyond its RAM: vCPUs, stage-2 tables, device and vGIC
        // state, configuration (all from the heap).
        // Measured first: inside `info!` the heap guard would be held while the line takes
        // the console lock (the opposite of the console's own order).
        let overhead = heap.lock().stats_alloc_actual().saturating_sub(heap_before);
        info!("{} ({}): overhead {overhead} bytes", vm.id, vm.name);
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
    VMS.call_once(|| built);
    // vCPU 0 of every VM that starts by itself starts at its image with x0 = its device tree.
    lifecycle::boot_vms();
    super::console_input::start(bootargs);
    // A test aid: press a VM's power button some milliseconds after boot.
    if let Some(v) = crate::console::bootarg(bootargs, "elvisor.test-power-button") {
        match super::lifecycle::test_power_button(v) {
            Ok(()) => info!("elvisor.test-power-button={v}: the button will be pressed"),
            Err(why) => warn!("elvisor.test-power-button={v} {why}: ignored"),
        }
    }

    // Secondary CPUs: PSCI CPU_ON through the firmware's conduit, entry with x0 = index.
    for (i, c) in plat.cpus.iter().enumerate().take(ncpus).skip(1) {
        match (c.enable_method, plat.psci) {
            (platform::EnableMethod::Psci, Some(conduit)) => {
                let entry = crate::arch::aarch64::boot::secondary_entry_pa();
                if let Err(e) = firmware::cpu_on(conduit, c.mpidr, entry, i as u64) {
                    warn!("cpu{i} (MPIDR {:#x}): PSCI CPU_ON failed: {e}", c.mpidr);
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
    sched::run_cpu()
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
        .unwrap_or(sched::MAINT_INTID);
    gic::enable(VTIMER_INTID, 0xa0, true, index);
    gic::enable(timer::HYP_TIMER_INTID, 0xa0, true, index);
    gic::enable(maint, 0xa0, true, index);
    super::pmu::init_cpu();
    gic::enable(crate::vm::pmu::PMU_INTID, 0xa0, true, index);
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
    sched::run_cpu()
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

/// The image relocates itself, but it must still lie in RAM that nothing else uses: a loader
/// that put the DTB, a firmware reservation (the Pi's spin table) or a module inside its span,
/// or placed it outside RAM, gets one line and a clean stop.
fn check_image_placement(plat: &Platform, image: PhysRange, dtb: PhysRange) {
    let mut others: Vec<(PhysRange, &'static str)> = alloc::vec![(dtb, "the host device tree")];
    others.extend(
        plat.reserved
            .iter()
            .filter(|r| **r != image && **r != dtb)
            .map(|r| (*r, "memory the device tree reserves (or a VM module)")),
    );
    if let Err(e) = crate::mm::placement::check(image, &plat.ram, &others) {
        error!("{e}. Stopping.");
        power_off();
    }
}

/// The device tree's console does not answer: the tree was made for another board. One line
/// on the console that does answer (if any), then the "halted" stop: the tree's PSCI conduit
/// is that other board's too, and an SMC or HVC nothing answers would not return.
fn another_boards_dtb(
    path: Option<alloc::string::String>,
    named: PhysAddr,
    found: Option<&(&str, PhysAddr)>,
) -> ! {
    let path = path.as_deref().unwrap_or("the /chosen stdout-path node");
    let here = match found {
        Some((board, at)) => {
            alloc::format!("; this machine has one at {:#x}, as {board} has", at.0)
        }
        None => alloc::string::String::new(),
    };
    crate::println!(
        "elvisor: bad configuration: {path} \"reg\": no PL011 answers at {:#x}, where the device \
         tree puts the console{here}. The device tree is another board's, not this machine's: \
         pass the one for this board. Stopping.",
        named.0
    );
    stop_machine(None)
}

/// A bad host device tree: one line naming the node and property, then the machine stops the
/// same way as every other stop (PSCI SYSTEM_OFF if the device tree names a conduit).
fn fatal_config(e: &platform::ConfigError, dtb: &[u8]) -> ! {
    error!("bad configuration: {e}");
    stop_machine(platform::early_psci(dtb))
}
