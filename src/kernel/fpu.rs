//! Lazy FP/SIMD and SVE switching between the vCPUs of one physical CPU.
//!
//! The soft-float kernel never touches the FP/SIMD or SVE registers, so they hold the state of
//! one vCPU, the CPU's *FP owner* (`CpuSched::fp_owner`), across exits and switches. The owner
//! runs with FP/SIMD untrapped; every other vCPU with FP/SIMD and SVE trapped (CPTR_EL2), and
//! its first use traps here, which saves the owner's registers and loads its own.
//!
//! The owner holds them in one of two modes (`vm::sve`):
//! - *FP mode*: q0-q31, FPSR, FPCR (its `FpState`); SVE stays trapped. Every vCPU starts so,
//!   and a vCPU of a VM without SVE never leaves it: its SVE traps are UNDEFINED.
//! - *SVE mode*: the whole SVE register file at the vCPU's vector length (Z0-Z31, P0-P15, FFR,
//!   FPSR, FPCR, ZCR_EL1), with SVE untrapped and ZCR_EL2.LEN the VM's limit. A vCPU of a VM
//!   with SVE enters it at its first SVE trap (EC 0x19) and stays in it until it is reset, so
//!   saving its state always covers the FP registers (the V registers are the low 128 bits of
//!   the Z registers) and its FP traps load the SVE state too.
//!
//! Nothing of an earlier owner can be seen: a vCPU in FP mode cannot execute SVE, so the Z
//! bits above 128, the P registers and FFR it leaves in the CPU are unreachable to it; the
//! moment it could reach them (its first SVE trap) they are loaded whole from its own state,
//! which starts as its FP registers zero-extended with P and FFR zero.
//!
//! A vCPU that never uses SVE costs nothing extra: no exit or switch looks at SVE state but
//! these traps (`sched::load` gives the owner the CPTR_EL2 value recorded here).

use alloc::boxed::Box;

use log::{error, info};

use super::Vm;
use super::lifecycle::stop_vm;
use super::sched::sched;
use crate::arch::aarch64::cpu::{self, VcpuPtr};
use crate::arch::aarch64::{fp, guest, sve};
use crate::vm::sve::SveState;
use crate::vm::vcpu::Vcpu;

/// The ZCR_EL2.LEN of `vm`'s vCPUs, `None` without SVE; says what the VM gets (boot).
pub(super) fn vm_sve_len(vm: &Vm) -> Option<u8> {
    let requested = vm.config.sve_vector_bits;
    let len = crate::vm::sve::vm_len(requested, sve::max_vl());
    match len {
        Some(len) => info!(
            "{} ({}): SVE, vector length {} bits",
            vm.id,
            vm.name,
            sve::vl_for_len(len) * 8
        ),
        None if requested.is_some_and(|b| b != 0) => info!(
            "{} ({}): no SVE: the CPU has none (elvisor,sve-vector-length ignored)",
            vm.id, vm.name
        ),
        None => {}
    }
    len
}

/// A vCPU's SVE state for a VM whose vCPUs run with ZCR_EL2.LEN `len`.
pub(super) fn new_sve_state(len: u8) -> Box<SveState> {
    Box::new(SveState::new(len))
}

/// The trapping vCPU `v` takes the register file from its owner: in SVE mode for an SVE trap
/// (`sve_trap`) or a vCPU already in SVE mode, else in FP mode. Returns false when its state
/// could not be loaded (a vector length that does not fit its buffer, which LEN rules out):
/// the caller stops its VM, and until then every FP/SVE use traps.
pub(super) fn switch(v: &mut Vcpu, sve_trap: bool) -> bool {
    let mut s = sched().lock();
    let me = VcpuPtr::of(v);
    let owner = s
        .fp_owner
        .and_then(|o| s.slots.get(o).map(|sl| (sl.ptr, sl.vm)));
    let want_sve = v.sve.is_some() && (sve_trap || v.sve_active());
    // EL2 saves and loads with FP/SIMD, and SVE where the CPU has it, untrapped.
    let host_sve = sve::max_vl().is_some();
    guest::write_cptr(if host_sve {
        guest::guest_cptr_sve()
    } else {
        guest::guest_cptr()
    });
    if owner.is_some_and(|(o, _)| o == me) {
        if !want_sve || v.sve_active() {
            // Already the owner in the mode it needs (a trap raced with a load).
            guest::write_cptr(cptr_for(want_sve));
            return true;
        }
        // FP mode to SVE mode: its own FP registers are the live ones.
        fp::save(&mut v.fp);
    } else if let Some((o, vm)) = owner
        && !cpu::save_fp_of(o)
    {
        error!("{} ({}): SVE state did not fit; stopping", vm.id, vm.name);
        stop_vm(vm, "SVE state did not fit");
    }
    s.fp_owner = None;
    let loaded = match v.sve.as_deref_mut() {
        Some(st) if want_sve => {
            (st.active || st.activate_from(&v.fp, sve::vl_for_len(st.len))) && sve::restore(st)
        }
        _ => {
            fp::restore(&v.fp);
            true
        }
    };
    if loaded {
        s.fp_owner = Some(v.slot);
        s.fp_owner_cptr = cptr_for(want_sve);
        guest::write_cptr(s.fp_owner_cptr);
    } else {
        // Whatever is in the registers is not this vCPU's: it must not run with them.
        guest::write_cptr(guest::guest_cptr_fp_trapped());
    }
    loaded
}

/// CPTR_EL2 for the owner of the register file, in SVE mode or FP mode.
fn cptr_for(sve_mode: bool) -> u64 {
    if sve_mode {
        guest::guest_cptr_sve()
    } else {
        guest::guest_cptr()
    }
}
