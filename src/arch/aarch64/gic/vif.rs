//! The virtual CPU interface, the vCPU's half of the GIC: GICv3's ICH_* system registers or
//! GICv2's GICH block. List registers, the hypervisor control and machine control registers,
//! the active priorities, and the guest's ICC_SRE_EL1, which move with the vCPU.

use core::arch::asm;
use core::sync::atomic::Ordering;

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ICH_AP0R0_EL2, ICH_AP0R1_EL2, ICH_AP0R2_EL2, ICH_AP0R3_EL2, ICH_AP1R0_EL2, ICH_AP1R1_EL2,
    ICH_AP1R2_EL2, ICH_AP1R3_EL2, ICH_HCR_EL2, ICH_LR0_EL2, ICH_LR1_EL2, ICH_LR2_EL2, ICH_LR3_EL2,
    ICH_LR4_EL2, ICH_LR5_EL2, ICH_LR6_EL2, ICH_LR7_EL2, ICH_LR8_EL2, ICH_LR9_EL2, ICH_LR10_EL2,
    ICH_LR11_EL2, ICH_LR12_EL2, ICH_LR13_EL2, ICH_LR14_EL2, ICH_LR15_EL2, ICH_VMCR_EL2,
};
use tock_registers::interfaces::{Readable, Writeable};

use super::{GICH, GichRegs, NR_APRS, nr_lrs, version};

/// ICH_HCR_EL2 / GICH_HCR bits (same positions in both).
pub const HCR_EN: u32 = 1 << 0;
pub const HCR_UIE: u32 = 1 << 1;
/// ICH_HCR_EL2.TALL1 (GICv3 only; IHI 0069 §12.4.6): EL1 accesses to the group-1 ICC
/// registers (ICC_IAR1/EOIR1/HPPIR1/BPR1/AP1Rn/IGRPEN1_EL1) trap to EL2.
pub const HCR_TALL1: u32 = 1 << 12;

fn gich() -> &'static GichRegs {
    // SAFETY: set once in `init` to the GICH base from the device tree (mapped as Device);
    // GICH is banked per CPU at this address, so each CPU only sees its own interface.
    unsafe { &*(GICH.load(Ordering::Relaxed) as *const GichRegs) }
}

/// ICH_LR<n>_EL2 for `n` in 0..16 (the architecture's maximum, IHI 0069H §12.4.8), through
/// aarch64-cpu's typed registers: a system register's number is part of the instruction, so
/// the index becomes a jump to one of sixteen MRS instructions.
fn ich_lr_read(n: usize) -> u64 {
    match n {
        0 => ICH_LR0_EL2.get(),
        1 => ICH_LR1_EL2.get(),
        2 => ICH_LR2_EL2.get(),
        3 => ICH_LR3_EL2.get(),
        4 => ICH_LR4_EL2.get(),
        5 => ICH_LR5_EL2.get(),
        6 => ICH_LR6_EL2.get(),
        7 => ICH_LR7_EL2.get(),
        8 => ICH_LR8_EL2.get(),
        9 => ICH_LR9_EL2.get(),
        10 => ICH_LR10_EL2.get(),
        11 => ICH_LR11_EL2.get(),
        12 => ICH_LR12_EL2.get(),
        13 => ICH_LR13_EL2.get(),
        14 => ICH_LR14_EL2.get(),
        _ => ICH_LR15_EL2.get(),
    }
}

/// Writes ICH_LR<n>_EL2 (see [`ich_lr_read`]). A list register only changes the guest's
/// virtual interface; the write takes effect at the next exception return (IHI 0069H §12.4.8
/// needs no ISB before an ERET).
fn ich_lr_write(n: usize, v: u64) {
    match n {
        0 => ICH_LR0_EL2.set(v),
        1 => ICH_LR1_EL2.set(v),
        2 => ICH_LR2_EL2.set(v),
        3 => ICH_LR3_EL2.set(v),
        4 => ICH_LR4_EL2.set(v),
        5 => ICH_LR5_EL2.set(v),
        6 => ICH_LR6_EL2.set(v),
        7 => ICH_LR7_EL2.set(v),
        8 => ICH_LR8_EL2.set(v),
        9 => ICH_LR9_EL2.set(v),
        10 => ICH_LR10_EL2.set(v),
        11 => ICH_LR11_EL2.set(v),
        12 => ICH_LR12_EL2.set(v),
        13 => ICH_LR13_EL2.set(v),
        14 => ICH_LR14_EL2.set(v),
        _ => ICH_LR15_EL2.set(v),
    }
}

/// Reads list register `n` in its native layout (ICH_LR<n>_EL2, or GICH_LR<n> zero-extended);
/// 0 for an index beyond the implemented list registers.
pub fn read_lr(n: usize) -> u64 {
    if n >= nr_lrs() {
        return 0;
    }
    if version() == 3 {
        ich_lr_read(n)
    } else {
        gich().lr.get(n).map(|r| r.get() as u64).unwrap_or(0)
    }
}

/// Writes list register `n` in its native layout; ignored beyond the implemented ones.
pub fn write_lr(n: usize, v: u64) {
    if n >= nr_lrs() {
        return;
    }
    if version() == 3 {
        ich_lr_write(n, v)
    } else if let Some(r) = gich().lr.get(n) {
        r.set(v as u32);
    }
}

/// Writes ICH_HCR_EL2 / GICH_HCR.
pub fn write_hcr(v: u32) {
    if version() == 3 {
        // Controls only the guest's virtual CPU interface and maintenance interrupts. The ISB
        // makes the new enables (UIE, TALL1) take effect before the next instruction rather
        // than at the next context synchronization (ARM ARM D19.2.2, "Synchronization of
        // changes to system registers").
        ICH_HCR_EL2.set(u64::from(v));
        barrier::isb(barrier::SY);
    } else if GICH.load(Ordering::Relaxed) != 0 {
        gich().hcr.set(v);
    }
}

/// Reads the virtual machine control register (ICH_VMCR_EL2 / GICH_VMCR).
pub fn read_vmcr() -> u64 {
    if version() == 3 {
        ICH_VMCR_EL2.get()
    } else {
        gich().vmcr.get() as u64
    }
}

/// Writes the virtual machine control register.
pub fn write_vmcr(v: u64) {
    if version() == 3 {
        // Guest virtual CPU interface state only.
        ICH_VMCR_EL2.set(v);
    } else {
        gich().vmcr.set(v as u32);
    }
}

/// The number of ICH_AP{0,1}Rn_EL2 registers for `pre_bits` preemption bits: one 32-bit
/// register per 32 group priorities (IHI 0069H §12.4.1). PREbits is architecturally 5..=7;
/// anything else is clamped to that range rather than trusted.
pub(super) fn aprs_for_pre_bits(pre_bits: u64) -> usize {
    1 << (pre_bits.clamp(5, 7) - 5)
}

/// Saves VMCR and every active-priority register the virtual interface has.
///
/// All of them are the vCPU's: an active priority left behind in ICH_AP0Rn (a guest can write
/// ICC_AP0R0_EL1 directly) masks every interrupt of equal or lower priority for whichever vCPU
/// runs here next, and can be read back by it. Linux's `__vgic_v3_save_aprs` does the same walk.
/// Straight-line for the common 5-bit case (QEMU, Cortex-A cores): this is on the VM-switch path.
pub fn save_vif(s: &mut crate::vm::vcpu::VifState) {
    s.vmcr = read_vmcr();
    if version() == 3 {
        // Only the low 32 bits of each ICH_AP<g>R<n>_EL2 are defined.
        s.ap0r[0] = ICH_AP0R0_EL2.get() as u32;
        s.ap1r[0] = ICH_AP1R0_EL2.get() as u32;
        let n = NR_APRS.load(Ordering::Relaxed);
        if n > 1 {
            s.ap0r[1] = ICH_AP0R1_EL2.get() as u32;
            s.ap1r[1] = ICH_AP1R1_EL2.get() as u32;
            if n > 2 {
                s.ap0r[2] = ICH_AP0R2_EL2.get() as u32;
                s.ap1r[2] = ICH_AP1R2_EL2.get() as u32;
                s.ap0r[3] = ICH_AP0R3_EL2.get() as u32;
                s.ap1r[3] = ICH_AP1R3_EL2.get() as u32;
            }
        }
    } else {
        // GICv2 has one GICH_APR (IHI 0048B §5.3.4) covering the guest's active priorities.
        s.ap1r[0] = gich().apr.get();
    }
}

/// Restores VMCR and the active-priority registers (the inverse of [`save_vif`]). Every
/// implemented register is written, so nothing of the previous vCPU survives here.
pub fn restore_vif(s: &crate::vm::vcpu::VifState) {
    write_vmcr(s.vmcr);
    if version() == 3 {
        ICH_AP0R0_EL2.set(u64::from(s.ap0r[0]));
        ICH_AP1R0_EL2.set(u64::from(s.ap1r[0]));
        let n = NR_APRS.load(Ordering::Relaxed);
        if n > 1 {
            ICH_AP0R1_EL2.set(u64::from(s.ap0r[1]));
            ICH_AP1R1_EL2.set(u64::from(s.ap1r[1]));
            if n > 2 {
                ICH_AP0R2_EL2.set(u64::from(s.ap0r[2]));
                ICH_AP1R2_EL2.set(u64::from(s.ap1r[2]));
                ICH_AP0R3_EL2.set(u64::from(s.ap0r[3]));
                ICH_AP1R3_EL2.set(u64::from(s.ap1r[3]));
            }
        }
    } else {
        gich().apr.set(s.ap1r[0]);
    }
}

/// GICv3 guests: make the guest's ICC_SRE_EL1 report the system-register interface (SRE),
/// with IRQ/FIQ bypass disabled (DIB, DFB), as the vCPU is loaded.
pub fn load_guest_sre() {
    if version() == 3 {
        // SAFETY: ICC_SRE_EL1 as seen from EL2 is the guest's register (there is no EL12
        // alias); setting SRE/DFB/DIB only affects how the guest's interface is presented.
        unsafe { asm!("msr icc_sre_el1, {}", "isb", in(reg) 0x7u64, options(nomem, nostack)) };
    }
}
