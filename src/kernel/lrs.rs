//! The glue between the vGIC model and the hardware list registers: flush before entry, sync
//! after exit.

use super::Vm;
use super::lifecycle::kick_all;
use crate::arch::aarch64::esr::{self, Esr};
use crate::arch::aarch64::gic;
use crate::vdev::vgic::{self, Lr};
use crate::vm::vcpu::Vcpu;

pub(super) fn encode_lr(lr: &Lr) -> u64 {
    if gic::version() == 3 {
        vgic::encode_v3(lr)
    } else {
        vgic::encode_v2(lr) as u64
    }
}

pub(super) fn decode_lr(v: u64) -> Lr {
    if gic::version() == 3 {
        vgic::decode_v3(v)
    } else {
        vgic::decode_v2(v as u32)
    }
}

/// Writes the list registers in `changed` (bit n = LR n) from the vCPU's shadow.
pub(super) fn write_lrs(v: &Vcpu, mut changed: u64) {
    while changed != 0 {
        let i = changed.trailing_zeros() as usize;
        changed &= changed - 1;
        if let Some(lr) = v.lrs.get(i) {
            gic::write_lr(i, encode_lr(lr));
        }
    }
}

/// Fills the list registers before entering the guest, if the vGIC has news for this vCPU.
pub(super) fn vgic_flush(vm: &Vm, v: &mut Vcpu) {
    let mut vg = vm.vgic.lock();
    // Physical interrupts to deactivate (a hardware-linked one the guest made inactive or
    // not pending through the distributor) are drained first, whether or not the vCPU has
    // anything to flush: such a write need not mark any vCPU, and a PPI left active (the
    // virtual timer) would never fire again.
    while let Some(p) = vg.take_hw_deactivation() {
        gic::deactivate_raw(p);
    }
    if !vg.needs_flush(v.id) {
        return;
    }
    flush_locked(vm, v, vg);
}

/// The flush proper, out of line: the common "nothing new" return above then needs no large
/// stack frame (it is on the path of every WFI wake-up and of the virtual timer).
#[inline(never)]
fn flush_locked(vm: &Vm, v: &mut Vcpu, mut vg: impl core::ops::DerefMut<Target = vgic::Vgic>) {
    let n = gic::nr_lrs().min(v.lrs.len());
    let r = vg.flush(v.id, &mut v.lrs[..n]);
    write_lrs(v, r.changed);
    v.lr_used = r.live;
    // More deliverable than fits: ask for the underflow maintenance interrupt to refill.
    // A passthrough level SPI waiting in an LR whose line nobody has checked since it was
    // injected: trap the guest's acknowledge (GICv3 only), see `ack_trap`.
    let mut hcr = gic::HCR_EN | if r.overflow { gic::HCR_UIE } else { 0 };
    if r.check_lines && gic::version() == 3 {
        hcr |= gic::HCR_TALL1;
    }
    if hcr != v.hcr {
        gic::write_hcr(hcr);
        v.hcr = hcr;
    }
    while let Some(p) = vg.take_hw_deactivation() {
        gic::deactivate_raw(p);
    }
    drop(vg);
    if !r.kick.is_empty() {
        kick_all(vm, r.kick);
    }
}

/// Folds the hardware list registers back into the vGIC after an exit.
pub(super) fn vgic_sync(vm: &Vm, v: &mut Vcpu) {
    let n = gic::nr_lrs().min(v.lrs.len());
    let mut used = v.lr_used & vgic::low_bits(n);
    while used != 0 {
        let i = used.trailing_zeros() as usize;
        used &= used - 1;
        if let Some(lr) = v.lrs.get_mut(i) {
            *lr = decode_lr(gic::read_lr(i));
        }
    }
    let mut vg = vm.vgic.lock();
    let mut freed = vg.sync(v.id, &mut v.lrs[..n]);
    // Empty the slots the guest finished with (an invalid LR with its EOI bit set would keep
    // the EOI maintenance interrupt asserted).
    while freed != 0 {
        let i = freed.trailing_zeros() as usize;
        freed &= freed - 1;
        gic::write_lr(i, 0);
    }
    v.lr_used = vg.live_lrs(v.id);
    while let Some(p) = vg.take_hw_deactivation() {
        gic::deactivate_raw(p);
    }
}

/// A trapped group-1 ICC register access while ICH_HCR_EL2.TALL1 is set (see `vgic_flush`).
///
/// A passthrough device's level line can fall without an exit: its guest clears the device by
/// a stage-2 mapped write. The usual case is a handler that EOIs before clearing the device:
/// the deactivation finds the line high, the physical SPI fires again at once and is injected,
/// then the guest lowers the line and would still take the stale instance from its list
/// register. So while such an entry waits in an LR unchecked, the guest's acknowledge traps.
/// Here the exit's sync has re-sampled it (an entry whose line fell is gone, and its physical
/// interrupt deactivated); the survivors are marked checked, the flush drops TALL1, and the
/// guest re-executes the same instruction (ELR is not advanced) on its own virtual CPU
/// interface: an acknowledge then finds the live interrupt, or none (1023), as a GIC without
/// virtualization gives when a level falls between signal and acknowledge.
///
/// Returns false (not ours: the usual handling) unless TALL1 is set and `esr` is such an
/// access.
pub(super) fn ack_trap(vm: &Vm, v: &mut Vcpu, esr: Esr) -> bool {
    if v.hcr & gic::HCR_TALL1 == 0 || esr.ec() != esr::ec::SYS64 {
        return false;
    }
    let a = esr::sysreg_access(esr.iss());
    // ICC_IAR1/EOIR1/HPPIR1/BPR1/IGRPEN1_EL1: op0 3, op1 0, CRn 12, CRm 12, op2 0/1/2/3/7;
    // ICC_AP1R<n>_EL1: CRm 9, op2 n (IHI 0069 §12.2).
    let grp1 = a.op0 == 3
        && a.op1 == 0
        && a.crn == 12
        && ((a.crm == 12 && matches!(a.op2, 0..=3 | 7)) || (a.crm == 9 && a.op2 <= 3));
    if !grp1 {
        return false;
    }
    let n = gic::nr_lrs().min(v.lrs.len());
    vm.vgic.lock().check_lines_done(v.id, &v.lrs[..n]);
    vgic_flush(vm, v);
    true
}
