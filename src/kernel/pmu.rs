//! Guest PMUs (`vm::pmu`, hardware in `arch::aarch64::pmu`): which VMs get one, trapped
//! accesses, the overflow interrupt. Save and restore are hooked into `sched::put`/`load`
//! for PMU users only.

use super::Vm;
use super::lifecycle::kick_all;
use crate::arch::aarch64::esr::{self, Esr};
use crate::arch::aarch64::{guest, idregs, pmu};
use crate::vdev::vgic::KickSet;
use crate::vm::pmu::{self as vpmu, Outcome, PMU_INTID, PmuState};
use crate::vm::vcpu::Vcpu;

/// What a vCPU of a VM with the PMU `enabled` in its configuration gets: the CPU's PMUv3 with
/// all its counters (MDCR_EL2.HPMN = N, see [`mdcr_hpmn`]), or none where the CPU has no
/// PMUv3.
pub(super) fn vcpu_state(vm: &Vm) -> PmuState {
    let pmuver = vpmu::guest_pmuver(idregs::read(5, 0));
    if vm.config.pmu && pmuver != 0 {
        PmuState::new(true, pmu::host_counters(), pmuver as u8)
    } else {
        PmuState::default()
    }
}

/// Whether `vm` has a PMU: its configuration allows one and the CPU has PMUv3.
pub(super) fn vm_has_pmu(vm: &Vm) -> bool {
    vm.config.pmu && vpmu::guest_pmuver(idregs::read(5, 0)) != 0
}

/// At CPU bring-up: whatever firmware left in the PMU (running counters, overflow interrupts,
/// EL0 access) is stopped before any guest runs; nothing on a CPU without PMUv3.
pub(super) fn init_cpu() {
    if vpmu::guest_pmuver(idregs::read(5, 0)) != 0 {
        pmu::quiesce();
    }
}

/// MDCR_EL2.HPMN [4:0] for guests: every event counter is the guest's (PMCR_EL0.E, not
/// MDCR_EL2.HPME, enables them; ARM ARM D13.4). 0 where the CPU has no PMUv3 (HPMN is then
/// unused).
pub(super) fn mdcr_hpmn() -> u64 {
    if vpmu::guest_pmuver(idregs::read(5, 0)) != 0 {
        u64::from(pmu::host_counters())
    } else {
        0
    }
}

/// A trapped PMU register access (`Action::Pmu`). Returns true when the scheduler must run.
///
/// Out of line, like [`irq`]: kept out of the exit and interrupt paths' frames.
#[inline(never)]
pub(super) fn access(vm: &Vm, v: &mut Vcpu, esr: Esr) -> bool {
    let acc = esr::sysreg_access(esr.iss());
    let reg = vpmu::decode(&acc);
    let el0 = guest::from_el0(&v.regs);
    let (true, Some(reg)) = (v.pmu.present, reg) else {
        guest::inject_sync(&mut v.regs, esr::inject::undefined(esr.il()), None);
        return false;
    };
    if el0 && !vpmu::el0_allowed(reg, acc.read, v.pmu.userenr) {
        guest::inject_sync(&mut v.regs, esr::inject::undefined(esr.il()), None);
        return false;
    }
    // First use: the vCPU becomes a PMU user and its (reset) state goes into the CPU.
    if !v.pmu.live {
        v.pmu.user = true;
        pmu::load(&mut v.pmu);
    }
    let write = (!acc.read).then(|| v.regs.get(acc.rt));
    let mut hw = pmu::Hw;
    match vpmu::access(&mut v.pmu, &mut hw, reg, write) {
        Outcome::Read(x) => v.regs.set(acc.rt, x),
        Outcome::Written => {}
        Outcome::Undefined => {
            guest::inject_sync(&mut v.regs, esr::inject::undefined(esr.il()), None);
            return false;
        }
    }
    v.regs.elr = v.regs.elr.wrapping_add(4);
    let level = vpmu::sync_irq(&v.pmu, &mut hw);
    let kicks = vm
        .vgic
        .lock()
        .set_level(PMU_INTID, v.id, level)
        .unwrap_or(KickSet(0));
    kick_all(vm, kicks)
}

/// The physical PMU overflow interrupt (PPI 23, the hypervisor's) on this CPU. For the
/// running vCPU, a live PMU user, it raises the virtual PPI 23; the hardware enables are
/// cleared in every case, so the level-sensitive physical line falls and cannot storm (a
/// user's are restored when its virtual line falls, `vm::pmu::sync_irq`).
#[inline(never)]
pub(super) fn irq(cur: Option<&mut Vcpu>) -> bool {
    pmu::mask_irq();
    match cur {
        Some(v) if v.pmu.live => {
            let vm = super::vm_of(v);
            let kicks = vm
                .vgic
                .lock()
                .set_level(PMU_INTID, v.id, true)
                .unwrap_or(KickSet(0));
            kick_all(vm, kicks)
        }
        // Nobody's counters are running here (a put stops them): a stray overflow.
        _ => {
            pmu::quiesce();
            false
        }
    }
}
