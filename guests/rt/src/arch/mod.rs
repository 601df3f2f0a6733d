//! Everything that touches the CPU directly: entry code, exception vectors, SMCCC conduits,
//! MMIO accessors, fault probes, IRQ masking, the generic timers, the GICv3 CPU interface,
//! secondary-CPU entry and inter-CPU events, and the few other system registers the runtime
//! reads.
//!
//! The rest of the runtime and every guest binary stay free of `asm!`; each `unsafe` block in
//! here says why it is sound.

pub mod attack;
pub mod boot;
pub mod conduit;
pub mod features;
pub mod gicv3;
pub mod irq;
pub mod mem;
pub mod mmio;
pub mod pmu;
pub mod probe;
pub mod smp;
pub mod sysregs;
pub mod timer;
pub mod vectors;

use core::arch::asm;
use core::ops::Range;

/// The exception level this code runs at (CurrentEL.EL), 1 under elvisor.
pub fn current_el() -> u8 {
    let current_el: u64;
    // SAFETY: reading CurrentEL has no side effects and is permitted at EL1 and above.
    unsafe {
        asm!("mrs {}, CurrentEL", out(reg) current_el, options(nomem, nostack, preserves_flags))
    };
    ((current_el >> 2) & 0b11) as u8
}

/// MIDR_EL1, for banners.
pub fn midr() -> u64 {
    let midr: u64;
    // SAFETY: reading MIDR_EL1 has no side effects and is permitted at EL1.
    unsafe { asm!("mrs {}, midr_el1", out(reg) midr, options(nomem, nostack, preserves_flags)) };
    midr
}

/// MPIDR_EL1 (VMPIDR_EL2 under a hypervisor): this CPU's affinity, Aff3 in bits `[39:32]`,
/// Aff2..Aff0 in bits `[23:0]`.
pub fn mpidr() -> u64 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects and is permitted at EL1.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack, preserves_flags)) };
    mpidr
}

/// How many CPUs the runtime supports: per-CPU state (stacks, exception records, the console
/// lock) is indexed by MPIDR_EL1.Aff0, which elvisor sets to the vCPU index (0..=7).
pub const MAX_CPUS: usize = 8;

/// This CPU's index for per-CPU state: MPIDR_EL1.Aff0 (the vCPU number under elvisor, the CPU
/// number on QEMU `virt` with up to 8 CPUs), reduced modulo [`MAX_CPUS`].
pub fn cpu_index() -> usize {
    (mpidr() & 0xff) as usize % MAX_CPUS
}

/// Sleeps forever (after SYSTEM_OFF failed, or in a panic that cannot power off).
pub fn halt() -> ! {
    loop {
        // SAFETY: `wfi` only waits for an interrupt; with DAIF masked it may return spuriously,
        // which the loop absorbs.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}

/// The IPA range of the loaded image including `.bss` and the stack
/// (`__image_start..__image_end` from the linker script).
pub fn image_range() -> Range<usize> {
    unsafe extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }
    // Only the addresses are taken; the bytes are never read through these symbols.
    let start = &raw const __image_start as usize;
    let end = &raw const __image_end as usize;
    start..end
}
