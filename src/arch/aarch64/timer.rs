//! Generic timer access at EL2: the physical counter and the kernel's own EL2 physical timer
//! (CNTHP_*, PPI 10), which backs the guests' emulated EL1 physical timers.

use core::arch::asm;

/// INTID of the EL2 physical timer (PPI 10).
pub const HYP_TIMER_INTID: u32 = 26;

/// The physical counter (CNTPCT_EL0), ordered after preceding instructions.
pub fn now() -> u64 {
    let v: u64;
    // SAFETY: ISB then a counter read: no side effects.
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Counter frequency in Hz.
pub fn frequency() -> u64 {
    let v: u64;
    // SAFETY: reads CNTFRQ_EL0; no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Arms the EL2 physical timer for counter value `cval` (interrupt unmasked).
pub fn arm(cval: u64) {
    // SAFETY: the EL2 physical timer belongs to the kernel.
    unsafe {
        asm!("msr cnthp_cval_el2, {}", "msr cnthp_ctl_el2, {}", "isb",
             in(reg) cval, in(reg) 1u64, options(nomem, nostack))
    };
}

/// Disarms the EL2 physical timer.
pub fn disarm() {
    // SAFETY: as above.
    unsafe { asm!("msr cnthp_ctl_el2, {}", "isb", in(reg) 0u64, options(nomem, nostack)) };
}

/// Waits for an interrupt with IRQs masked at EL2: WFI wakes on a pending physical interrupt
/// whatever PSTATE.I says (ARM ARM D1.16.2), and the caller then acknowledges it through the
/// GIC, so the kernel needs no EL2 IRQ vector. Not `nomem`: the DSB must complete the stores
/// made before the wait (another CPU may be polling them), and the compiler must neither sink
/// them below it nor hoist the loads that follow (what the interrupt's sender published).
/// First the GIC is made to re-evaluate what it signals ([`super::gic::before_wait`]: a QEMU
/// GICv2 workaround).
pub fn wait_for_interrupt() {
    super::gic::before_wait();
    // SAFETY: WFI only suspends execution.
    unsafe { asm!("dsb sy", "wfi", options(nostack)) };
}
