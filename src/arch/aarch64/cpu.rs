//! Per-CPU data (behind TPIDR_EL2), the per-CPU stacks, and CPU identification.

use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, MPIDR_EL1, TPIDR_EL2};
use tock_registers::interfaces::{Readable, Writeable};

use crate::mm::{PhysAddr, PhysRange};

/// CPUs the image has stacks for.
pub const MAX_CPUS: usize = 8;
/// Unmapped guard page below each stack.
pub const GUARD_BYTES: u64 = 0x1000;
/// Kernel (thread) stack per CPU.
pub const STACK_BYTES: u64 = 0x1_0000;
/// Exception stack per CPU, used only for fatal exceptions taken at EL2 (a kernel stack
/// overflow lands in the guard page, so the fatal handler needs a stack of its own).
pub const EXC_STACK_BYTES: u64 = 0x4000;
/// Per CPU: [guard][stack][guard][exception stack]. Must match PERCPU_STACKS_BYTES in linker.ld.
pub const PERCPU_STACKS_BYTES: u64 = GUARD_BYTES + STACK_BYTES + GUARD_BYTES + EXC_STACK_BYTES;
const _: () = assert!(PERCPU_STACKS_BYTES == 0x16000);

unsafe extern "C" {
    static __stacks_start: u8;
}

fn stacks_base() -> u64 {
    core::ptr::addr_of!(__stacks_start) as u64
}

/// Top of CPU `cpu`'s kernel stack.
pub fn stack_top(cpu: usize) -> u64 {
    stacks_base() + cpu as u64 * PERCPU_STACKS_BYTES + GUARD_BYTES + STACK_BYTES
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

/// Per-CPU data. TPIDR_EL2 holds its address; the fatal-exception vector reads `exc_sp`
/// at offset 0.
#[repr(C)]
pub struct PerCpu {
    pub exc_sp: u64,
    pub stack_top: u64,
    pub index: usize,
    pub mpidr: u64,
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
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// True when the CPU implements VHE (ID_AA64MMFR1_EL1.VH).
pub fn has_vhe() -> bool {
    ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::VH) != 0
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
