//! The EL2 kernel: its globals and the VM type; the boot flow, VM construction, exits,
//! lifecycle, scheduling, interrupt routing and console input live in the submodules.
//!
//! ```text
//! boot:      console -> heap -> log level -> VHE choice -> platform (DTB) -> frames
//!            -> EL2 map + MMU -> VMs (build, images) -> enter vCPU 0 of the first VM
//! exit:      syndrome -> fast path, or vm::exit::handle_sync -> inject / PSCI (lifecycle)
//!            -> resume, or the scheduler (sched) picks the next vCPU
//! irq:       timer, kicks, passthrough lines; lrs: list registers; console_input: focus
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};

use crate::arch::aarch64::heap::KernelHeap;
use log::{error, info, warn};
use spin::Once;

use crate::arch::aarch64::sync::Mutex;

use crate::arch::aarch64::ram::Module;
use crate::arch::aarch64::{cpu, guest, timer};
use crate::drivers::pl011::Pl011;
use crate::mm::frame::FrameAllocator;
use crate::platform::Platform;
use crate::vdev::MmioBus;
use crate::vdev::vgic::Vgic;
use crate::vm::config::VmConfig;
use crate::vm::vcpu::Vcpu;
use crate::vm::{VmId, layout};

use alloc::sync::Arc;

mod boot;
mod build;
mod console_input;
pub mod exit;
mod fpu;
pub mod halt;
mod images;
mod irq;
pub mod lifecycle;
mod lrs;
mod net;
mod pmu;
pub mod ram;
pub mod sched;
mod shell;
mod shmem;
mod virtio;

pub use boot::{primary_main, secondary_main};
pub use images::{Reload, load_images};

use halt::power_off;

/// The kernel's side of the architecture's handler interface, installed by src/main.rs.
pub struct Kernel;

impl crate::arch::aarch64::handlers::Handlers for Kernel {
    #[inline(always)]
    fn fast_sync(v: &mut Vcpu, esr: crate::arch::aarch64::esr::Esr, full_frame: bool) -> bool {
        exit::fast_sync(v, esr, full_frame)
    }
    #[inline(always)]
    fn handle_exit(
        v: &mut Vcpu,
        kind: crate::arch::aarch64::handlers::ExitKind,
    ) -> crate::arch::aarch64::handlers::Next {
        exit::handle_exit(v, kind)
    }
    #[inline(always)]
    fn enter(v: &mut Vcpu) {
        sched::enter(v)
    }
    fn halt_begin() -> crate::arch::aarch64::handlers::Role {
        halt::begin()
    }
    fn halt_follow(first: usize, also: Option<&dyn core::fmt::Display>) -> ! {
        halt::follow(first, also)
    }
    fn halt_nested() -> ! {
        halt::nested()
    }
    fn halt_finish() -> ! {
        halt::finish()
    }
    fn cpus_up(n: usize) -> bool {
        sched::CPU_UP
            .iter()
            .take(n)
            .all(|up| up.load(core::sync::atomic::Ordering::Acquire))
    }
}

pub(super) static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());
/// SPIs each VM's virtual GIC has (INTIDs 32..96).
pub(super) const VM_SPIS: u32 = 64;
pub(super) static PLATFORM: Once<Platform> = Once::new();
/// Entropy collected at boot, from which every guest boot's seeds are derived.
static ENTROPY: Once<crate::vm::entropy::EntropyPool> = Once::new();

/// The entropy pool: built from the host DT's `/chosen/rng-seed`, RNDR (FEAT_RNG) and counter
/// jitter the first time it is needed (after the platform is parsed).
pub(super) fn entropy_pool() -> &'static crate::vm::entropy::EntropyPool {
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
pub(super) static RUNNING_VMS: AtomicUsize = AtomicUsize::new(0);
/// Set when the machine must stay up after the last VM stops: a VM is configured not to
/// start by itself (`elvisor,autostart = <0>`), or someone has entered a command in the shell.
pub(super) static KEEP_UP: AtomicBool = AtomicBool::new(false);

/// Counters the shell shows for one VM beyond its vCPUs' exit counts (`Vm::exit_counters`).
pub struct VmStats {
    /// Times the VM was started: at boot, by `start` or `restart`.
    pub starts: AtomicU32,
}

impl VmStats {
    const fn new() -> Self {
        Self {
            starts: AtomicU32::new(0),
        }
    }
}

/// Each VM's counters, by VM index (there are at most 255 VMs): kept outside [`Vm`] so that
/// they need nothing from VM construction.
static VM_STATS: [VmStats; 256] = [const { VmStats::new() }; 256];

impl Vm {
    /// This VM's counters.
    #[inline(always)]
    pub fn stats(&self) -> &'static VmStats {
        &VM_STATS[usize::from(self.id.0) & 0xff]
    }
}
/// Every VM, in configuration order (index = VmId).
pub(super) static VMS: Once<Vec<&'static Vm>> = Once::new();
pub(super) static CONSOLE_UART: Once<&'static Pl011> = Once::new();
/// The kernel heap (`main.rs`'s global allocator), for the lifecycle accounting's
/// bytes-in-use figure.
pub(super) static HEAP: Once<&'static KernelHeap> = Once::new();
/// Root of the EL2 translation table, for the secondary CPUs.
pub(super) static EL2_ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

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
    /// RAM, its stage-2 table and on-demand backing.
    pub ram: &'static ram::VmRam,
    pub mmio: Mutex<MmioBus>,
    /// The virtual GIC, shared with its MMIO windows on the bus.
    pub vgic: Arc<Mutex<Vgic>>,
    /// Physical SPIs passed through to this VM (forwarded with the HW bit).
    pub passthrough_irqs: Vec<u32>,
    /// Device nodes of the guest DT: the passthrough devices, then the virtio-mmio devices.
    guest_nodes: Vec<crate::vm::config::Passthrough>,
    /// Shared-memory mappings and their doorbells, for the guest DT (`kernel::shmem`).
    shmem_nodes: Vec<crate::vm::fdt::GuestShmem>,
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
    /// Each vCPU's exit counts (`Vcpu::counters` points here), for the shell.
    pub exit_counters: Vec<crate::vm::vcpu::ExitCounters>,
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

/// Bytes the kernel heap has handed out and not taken back (with the buddy allocator's
/// rounding), if the heap is set up.
pub fn heap_in_use_bytes() -> Option<usize> {
    HEAP.get().map(|h| h.lock().stats_alloc_actual())
}

/// 4 KiB frames the frame allocator has free.
pub fn free_frames() -> u64 {
    FRAMES.lock().free_frames()
}
