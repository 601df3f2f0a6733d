//! The glue between the vGIC model and the hardware list registers: flush before entry, sync
//! after exit.

use super::Vm;
use super::lifecycle::kick_all;
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
    let n = gic::nr_lrs().min(v.lrs.len());
    let r = vg.flush(v.id, &mut v.lrs[..n]);
    write_lrs(v, r.changed);
    v.lr_used = r.live;
    // More deliverable than fits: ask for the underflow maintenance interrupt to refill.
    let hcr = gic::HCR_EN | if r.overflow { gic::HCR_UIE } else { 0 };
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
