//! Per-CPU data (behind TPIDR_EL2), the per-CPU stacks, and CPU identification.

use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, MPIDR_EL1, TPIDR_EL2};
use tock_registers::interfaces::{Readable, Writeable};

use crate::mm::{PhysAddr, PhysRange};

/// CPUs the image has stacks for.
pub const MAX_CPUS: usize = 8;
/// Unmapped guard page below each stack.
pub const GUARD_BYTES: u64 = 0x1000;
/// Kernel (thread) stack per CPU: 64 KiB; 256 KiB in an unoptimised build, whose frames are
/// several times larger (its boot-time FDT walk overran 64 KiB, and with the MMU still off the
/// guard page below cannot catch that).
pub const STACK_BYTES: u64 = if cfg!(debug_assertions) {
    0x4_0000
} else {
    0x1_0000
};
/// Exception stack per CPU, used only for fatal exceptions taken at EL2 (a kernel stack
/// overflow lands in the guard page, so the fatal handler needs a stack of its own).
pub const EXC_STACK_BYTES: u64 = 0x4000;
/// Per CPU: [guard][stack][guard][exception stack]. linker.ld sizes .stacks with this (through
/// the absolute symbol boot.rs exports).
pub const PERCPU_STACKS_BYTES: u64 = GUARD_BYTES + STACK_BYTES + GUARD_BYTES + EXC_STACK_BYTES;

unsafe extern "C" {
    static __stacks_start: u8;
}

fn stacks_base() -> u64 {
    core::ptr::addr_of!(__stacks_start) as u64
}

/// One RNDR value (FEAT_RNG, ID_AA64ISAR0_EL1.RNDR [63:60]), or `None` where the CPU has no
/// RNDR or the read reported failure (NZCV = 0b0100, ARM ARM C5.2.16).
pub fn rndr() -> Option<u64> {
    if (super::idregs::read(6, 0) >> 60) & 0xf == 0 {
        return None;
    }
    let v: u64;
    let ok: u64;
    // SAFETY: reads RNDR (S3_3_C2_C4_0) and the Z flag; no memory, no other state.
    unsafe {
        core::arch::asm!("mrs {v}, s3_3_c2_c4_0", "cset {ok}, ne", v = out(reg) v, ok = out(reg) ok,
            options(nomem, nostack))
    };
    (ok != 0).then_some(v)
}

/// Top of CPU `cpu`'s kernel stack.
pub fn stack_top(cpu: usize) -> u64 {
    stacks_base() + cpu as u64 * PERCPU_STACKS_BYTES + GUARD_BYTES + STACK_BYTES
}

/// CPU `cpu`'s stack block: guard, kernel stack, guard, exception stack (`[start, end)`).
pub fn stack_block(cpu: usize) -> (u64, u64) {
    let start = stacks_base() + cpu as u64 * PERCPU_STACKS_BYTES;
    (start, start + PERCPU_STACKS_BYTES)
}

/// Top of CPU `cpu`'s exception stack.
pub fn exc_stack_top(cpu: usize) -> u64 {
    stacks_base() + (cpu as u64 + 1) * PERCPU_STACKS_BYTES
}

/// The guard pages (left unmapped in the EL2 map), two per CPU.
pub fn guard_pages() -> impl Iterator<Item = PhysRange> {
    let base = stacks_base();
    (0..MAX_CPUS as u64).flat_map(move |c| {
        let cpu = base + c * PERCPU_STACKS_BYTES;
        [
            PhysRange::new(PhysAddr(cpu), GUARD_BYTES),
            PhysRange::new(PhysAddr(cpu + GUARD_BYTES + STACK_BYTES), GUARD_BYTES),
        ]
    })
}

/// The guard page `addr` lies in, if any: whose stack it protects and which one.
pub fn guard_of(addr: u64) -> Option<super::fatal::GuardHit> {
    let off = addr.checked_sub(stacks_base())?;
    let cpu = (off / PERCPU_STACKS_BYTES) as usize;
    if cpu >= MAX_CPUS {
        return None;
    }
    let block = stacks_base() + cpu as u64 * PERCPU_STACKS_BYTES;
    let exc_guard = block + GUARD_BYTES + STACK_BYTES;
    let (page, exception_stack) = match off % PERCPU_STACKS_BYTES {
        o if o < GUARD_BYTES => (block, false),
        o if (GUARD_BYTES + STACK_BYTES..2 * GUARD_BYTES + STACK_BYTES).contains(&o) => {
            (exc_guard, true)
        }
        _ => return None,
    };
    Some(super::fatal::GuardHit {
        cpu,
        page,
        exception_stack,
    })
}

/// Per-CPU data. TPIDR_EL2 holds its address; the fatal-exception vector reads `exc_sp`
/// at offset 0.
#[repr(C)]
pub struct PerCpu {
    pub exc_sp: u64,
    /// Index of this CPU in the host /cpus list (and of its redistributor).
    pub index: usize,
}
const _: () = assert!(core::mem::offset_of!(PerCpu, exc_sp) == 0);

/// Installs `percpu` as this CPU's per-CPU data.
pub fn set_percpu(percpu: &'static PerCpu) {
    TPIDR_EL2.set(percpu as *const PerCpu as u64);
}

/// This CPU's per-CPU data, if installed.
pub fn this_cpu() -> Option<&'static PerCpu> {
    let p = TPIDR_EL2.get() as *const PerCpu;
    // SAFETY: TPIDR_EL2 is zero until `set_percpu` stores a `&'static PerCpu` in it; nothing
    // else writes TPIDR_EL2.
    unsafe { p.as_ref() }
}

/// MPIDR_EL1 affinity bits of this CPU.
pub fn mpidr() -> u64 {
    super::mpidr::affinity(MPIDR_EL1.get())
}

/// True when the CPU implements VHE (ID_AA64MMFR1_EL1.VH).
pub fn has_vhe() -> bool {
    ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::VH) != 0
}

/// True when the CPU implements FEAT_S2FWB (ID_AA64MMFR2_EL1.FWB, bits [43:40]).
pub fn has_s2fwb() -> bool {
    let mmfr2: u64;
    // SAFETY: reads an ID register, which has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64mmfr2_el1", out(reg) mmfr2, options(nomem, nostack, preserves_flags))
    };
    (mmfr2 >> 40) & 0xf != 0
}

/// Physical address size in bits (ID_AA64MMFR0_EL1.PARange).
pub fn pa_bits() -> u32 {
    match ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange) {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// MIDR_EL1, for VPIDR_EL2.
pub fn midr() -> u64 {
    aarch64_cpu::registers::MIDR_EL1.get()
}

/// Stops this CPU for good.
pub fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// A vCPU placed on a physical CPU's run queue. Only that physical CPU ever dereferences it
/// (vCPUs are pinned), and only one reference to a vCPU is live at a time: the exit path's,
/// for the vCPU that was running, or the entry path's, for the vCPU about to run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VcpuPtr(core::ptr::NonNull<crate::vm::vcpu::Vcpu>);

// SAFETY: a VcpuPtr is handed from the boot CPU (which builds vCPUs) to the physical CPU that
// owns the vCPU; see the type's documentation for the single-owner discipline.
unsafe impl Send for VcpuPtr {}
// SAFETY: as above: sharing the pointer value is harmless, dereferencing is owner-only.
unsafe impl Sync for VcpuPtr {}

impl VcpuPtr {
    /// Gives a vCPU a fixed address for the rest of the kernel's life.
    pub fn leak(v: alloc::boxed::Box<crate::vm::vcpu::Vcpu>) -> Self {
        Self(core::ptr::NonNull::from(alloc::boxed::Box::leak(v)))
    }

    /// The pointer of a vCPU the caller holds.
    pub fn of(v: &mut crate::vm::vcpu::Vcpu) -> Self {
        Self(core::ptr::NonNull::from(v))
    }

    /// # Safety
    /// Only on the vCPU's owning physical CPU, with no other reference to it live.
    pub(super) unsafe fn get(self) -> &'static mut crate::vm::vcpu::Vcpu {
        // SAFETY: the pointer came from `leak` (never freed) or `of` on such a vCPU; the
        // caller guarantees exclusivity.
        unsafe { &mut *self.0.as_ptr() }
    }
}

/// Runs `next` on this CPU: the kernel loads it (`Handlers::enter`), then the world switch
/// enters the guest. Used when a CPU starts running vCPUs.
pub fn run(next: VcpuPtr) -> ! {
    // SAFETY: called by the owning CPU with no vCPU reference live (boot or idle).
    let v = unsafe { next.get() };
    super::handlers::enter(v);
    // SAFETY: `enter` loaded the vCPU's EL1 context, traps and stage 2 on this CPU and set
    // host_sp; the vCPU is leaked and never moves.
    unsafe { super::vectors::enter_guest(&mut v.regs) }
}

/// Saves a vCPU's FP/SIMD registers, or its whole SVE register file if it is in SVE mode,
/// into its state while the vCPU is off the CPU (lazy switch, `kernel::fpu`: the trapping
/// vCPU takes the registers from `owner`). FP, and SVE for an SVE-mode owner, must be
/// enabled at EL2. Returns false if the SVE state did not fit its buffer (nothing saved).
pub fn save_fp_of(owner: VcpuPtr) -> bool {
    // SAFETY: the owner is pinned to this CPU and is not the running vCPU (the FP trap came
    // from another one), so no other reference to it is live.
    let o = unsafe { owner.get() };
    match o.sve.as_deref_mut() {
        Some(s) if s.active => super::sve::save(s),
        _ => {
            super::fp::save(&mut o.fp);
            true
        }
    }
}

/// Runs `f` on a vCPU that no CPU runs yet (boot: the boot CPU sets it up before any CPU
/// starts running vCPUs).
pub fn with_new_vcpu(ptr: VcpuPtr, f: impl FnOnce(&mut crate::vm::vcpu::Vcpu)) {
    // SAFETY: called by the boot CPU while building vCPUs, before any CPU runs them; no
    // other reference exists.
    f(unsafe { ptr.get() })
}
