//! The virtual CPU interface, the vCPU's half of the GIC: GICv3's ICH_* system registers or
//! GICv2's GICH block. List registers, the hypervisor control and machine control registers,
//! the active priorities, and the guest's ICC_SRE_EL1, which move with the vCPU.

use core::arch::asm;
use core::sync::atomic::Ordering;

use aarch64_cpu::registers::{
    ICH_AP0R0_EL2, ICH_AP0R1_EL2, ICH_AP0R2_EL2, ICH_AP0R3_EL2, ICH_AP1R0_EL2, ICH_AP1R1_EL2,
    ICH_AP1R2_EL2, ICH_AP1R3_EL2,
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

macro_rules! ich_lr_access {
    ($n:expr, read) => {{
        let v: u64;
        match $n {
            0 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr0_el2", out(reg) v, options(nomem, nostack)) }
            }
            1 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr1_el2", out(reg) v, options(nomem, nostack)) }
            }
            2 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr2_el2", out(reg) v, options(nomem, nostack)) }
            }
            3 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr3_el2", out(reg) v, options(nomem, nostack)) }
            }
            4 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr4_el2", out(reg) v, options(nomem, nostack)) }
            }
            5 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr5_el2", out(reg) v, options(nomem, nostack)) }
            }
            6 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr6_el2", out(reg) v, options(nomem, nostack)) }
            }
            7 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr7_el2", out(reg) v, options(nomem, nostack)) }
            }
            8 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr8_el2", out(reg) v, options(nomem, nostack)) }
            }
            9 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr9_el2", out(reg) v, options(nomem, nostack)) }
            }
            10 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr10_el2", out(reg) v, options(nomem, nostack)) }
            }
            11 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr11_el2", out(reg) v, options(nomem, nostack)) }
            }
            12 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr12_el2", out(reg) v, options(nomem, nostack)) }
            }
            13 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr13_el2", out(reg) v, options(nomem, nostack)) }
            }
            14 => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr14_el2", out(reg) v, options(nomem, nostack)) }
            }
            _ => {
                // SAFETY: reading ICH_LR<n>_EL2 has no side effects.
                unsafe { asm!("mrs {}, ich_lr15_el2", out(reg) v, options(nomem, nostack)) }
            }
        }
        v
    }};
    ($n:expr, write, $v:expr) => {{
        let v: u64 = $v;
        match $n {
            0 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr0_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            1 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr1_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            2 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr2_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            3 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr3_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            4 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr4_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            5 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr5_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            6 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr6_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            7 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr7_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            8 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr8_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            9 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr9_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            10 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr10_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            11 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr11_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            12 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr12_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            13 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr13_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            14 => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr14_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
            _ => {
                // SAFETY: writing ICH_LR<n>_EL2 only changes the guest's virtual interface.
                unsafe { asm!("msr ich_lr15_el2, {}", in(reg) v, options(nomem, nostack)) }
            }
        }
    }};
}

/// Reads list register `n` in its native layout (ICH_LR<n>_EL2, or GICH_LR<n> zero-extended);
/// 0 for an index beyond the implemented list registers.
pub fn read_lr(n: usize) -> u64 {
    if n >= nr_lrs() {
        return 0;
    }
    if version() == 3 {
        ich_lr_access!(n, read)
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
        ich_lr_access!(n, write, v)
    } else if let Some(r) = gich().lr.get(n) {
        r.set(v as u32);
    }
}

/// Writes ICH_HCR_EL2 / GICH_HCR.
pub fn write_hcr(v: u32) {
    if version() == 3 {
        // SAFETY: controls only the guest's virtual CPU interface and maintenance interrupts.
        unsafe { asm!("msr ich_hcr_el2, {}", "isb", in(reg) v as u64, options(nomem, nostack)) };
    } else if GICH.load(Ordering::Relaxed) != 0 {
        gich().hcr.set(v);
    }
}

/// Reads the virtual machine control register (ICH_VMCR_EL2 / GICH_VMCR).
pub fn read_vmcr() -> u64 {
    if version() == 3 {
        let v: u64;
        // SAFETY: reading ICH_VMCR_EL2 has no side effects.
        unsafe { asm!("mrs {}, ich_vmcr_el2", out(reg) v, options(nomem, nostack)) };
        v
    } else {
        gich().vmcr.get() as u64
    }
}

/// Writes the virtual machine control register.
pub fn write_vmcr(v: u64) {
    if version() == 3 {
        // SAFETY: guest virtual CPU interface state only.
        unsafe { asm!("msr ich_vmcr_el2, {}", in(reg) v, options(nomem, nostack)) };
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
