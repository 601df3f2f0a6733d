//! What happens after an exit: the fast path (resume, inject, emulate without the full frame)
//! and the full path (WFI, PSCI power, IRQ, kick, VM stop/reset).
//!
//! ```text
//!  exit ──> handle_exit ──fast path (resume, inject, emulate)──────────────────> same vCPU
//!              │ WFI, PSCI power, IRQ, kick, VM stop/reset
//!              └──> CPU scheduler (lock) ─ requests ─ pick (round-robin) ─ put? ─> next vCPU
//!                                          └─ nothing runnable: WFI at EL2, take IRQs ─┘
//!  entry <── enter: load if a different vCPU (EL1, vGIC, vtimer, traps, stage 2), flush LRs
//! ```

use core::sync::atomic::Ordering;

use log::warn;

use super::console_input::console_unthrottle;
use super::irq::{handle_irqs, sample_device_lines, update_ptimer};
use super::lifecycle::{kick_all, psci_call, stop_vm};
use super::lrs::{vgic_flush, vgic_sync};
use super::sched::{CPU_MPIDR, arm_timer, sched, schedule};
use super::{Vm, VmState};
use crate::arch::aarch64::cpu::MAX_CPUS;
use crate::arch::aarch64::esr::{self, Esr};
use crate::arch::aarch64::handlers::{ExitKind, Next};
use crate::arch::aarch64::{gic, guest, idregs, timer};
use crate::vdev::vgic::{self};
use crate::vm::exit::{Action, ExitCtx};
use crate::vm::psci::{self};
use crate::vm::sched::RunState;
use crate::vm::vcpu::Vcpu;

/// The exit fast path: exits that need nothing but the vCPU's own registers and state. Runs
/// before anything else, so these exits cost the world switch plus a few dozen instructions.
/// Returns false to take the full path.
///
/// `full_frame`: the exit glue saved x19..x28 in the frame too; without it, exits whose
/// transfer register is one of them are refused (see arch::aarch64::vectors).
#[inline(always)]
pub fn fast_sync(v: &mut Vcpu, esr: Esr, full_frame: bool) -> bool {
    let iss = esr.iss();
    match esr.ec() {
        esr::ec::HVC64 => match psci::fast_call(iss as u16, v.regs.x[0], v.regs.x[1]) {
            Some(r) => {
                v.regs.x[0] = r;
                true
            }
            None => false,
        },
        // Only with no list register in use: a distributor read must see the guest's EOIs,
        // which the full path folds in first (list-register sync).
        esr::ec::DABT_LOWER
            if iss & esr::DABT_FAST_READ_MASK == esr::DABT_FAST_READ_VALUE && v.lr_used == 0 =>
        {
            fast_mmio_read(v, esr, full_frame)
        }
        esr::ec::SYS64 => {
            let acc = esr::sysreg_access(iss);
            if !full_frame && callee_saved(acc.rt) {
                return false;
            }
            if !acc.read {
                return fast_sgi(v, &acc);
            }
            // Reads only: they change no state.
            let Some(value) = crate::vm::exit::local_sysreg_read(
                &acc,
                &mut v.ptimer,
                timer::now,
                idregs::read,
                v.sve.is_some(),
                v.pmu.pmuver,
            ) else {
                return false;
            };
            v.regs.set(acc.rt, value);
            v.regs.skip_instruction(4);
            true
        }
        _ => false,
    }
}

/// Whether guest register `r` is one the fast path may not touch: x19..x28 are not in the
/// frame on the fast path (see arch::aarch64::vectors; x29 is, so the chain can be zeroed).
#[inline(always)]
fn callee_saved(r: u8) -> bool {
    (19..=28).contains(&r)
}

/// An emulated device register read (the guest's "I/O kernel" operation): no state changes
/// but the device's own (a UART's receive FIFO), whose interrupt line is re-sampled.
#[inline(always)]
fn fast_mmio_read(v: &mut Vcpu, esr: Esr, full_frame: bool) -> bool {
    // (The caller checked the syndrome against DABT_FAST_READ_MASK.)
    let da = esr::data_abort(esr.iss());
    if !full_frame && callee_saved(da.srt) {
        return false;
    }
    let f = guest::fault();
    let vm = super::vm_of(v);
    // The distributor (the interrupt-controller trap): straight to the vGIC, without the bus
    // (its lock, the window search, the dynamic dispatch; the window has no interrupt line).
    let gicd = f.ipa.0.wrapping_sub(super::layout::GICD_BASE.0);
    if gicd < vgic::GICD_SIZE_BYTES {
        let mut vg = vm.vgic.lock();
        let Ok(value) = vg.dist_read(v.id, gicd, da.width) else {
            return false;
        };
        // A pending-register read re-samples hardware-linked lines; one found low hands back
        // its physical interrupt, which must not stay active (vgic::LineSampler).
        while let Some(p) = vg.take_hw_deactivation() {
            gic::deactivate_raw(p);
        }
        drop(vg);
        crate::vm::exit::mmio_load_result(&mut v.regs, da, value);
        v.regs.skip_instruction(esr.insn_len());
        return true;
    }
    let mut bus = vm.mmio.lock();
    let Some((index, offset)) = bus.locate(f.ipa) else {
        return false;
    };
    let Ok(value) = bus.read_at(index, v.id, offset, da.width) else {
        return false;
    };
    crate::vm::exit::mmio_load_result(&mut v.regs, da, value);
    v.regs.skip_instruction(esr.insn_len());
    // Only the device just read can have changed its output, and only if the register
    // has read side effects (a UART's data register).
    let mut changed = false;
    if bus.read_changes_irq(index, offset) {
        bus.irq_change_of(index, |intid, level| {
            let _ = vm.vgic.lock().set_level(intid, v.id, level);
            changed = true;
        });
    }
    drop(bus);
    if changed {
        vgic_flush(vm, v);
    }
    console_unthrottle(vm);
    true
}

/// A trapped ICC_SGI1R_EL1 / ICC_ASGI1R_EL1 / ICC_SGI0R_EL1 write (the guest's IPI): the vGIC
/// makes the SGIs pending and the physical CPUs of their targets are kicked, this one
/// included when a target other than the sender lives here (the kick interrupt, taken right
/// after the return to the guest, brings this CPU to its scheduler). Other system-register
/// writes take the full path.
#[inline(always)]
fn fast_sgi(v: &mut Vcpu, acc: &esr::SysRegAccess) -> bool {
    if !(acc.op0 == 3 && acc.op1 == 0 && acc.crn == 12 && acc.crm == 11) {
        return false;
    }
    let group1 = match acc.op2 {
        5 | 6 => true,
        7 => false,
        _ => return false,
    };
    let value = v.regs.get(acc.rt);
    let vm = super::vm_of(v);
    let kicks = vm.vgic.lock().sgi(v.id, value, group1);
    v.regs.skip_instruction(4);
    // (Not `kick_all`: that one reports a target here to its caller instead of kicking this
    // CPU, and costs about 50 instructions more on this path, over the IPI budget.)
    let mut sent: u64 = 0;
    for t in kicks.iter() {
        if t == v.id {
            continue;
        }
        let Some(&pcpu) = vm.placement.get(t.0 as usize) else {
            continue;
        };
        if pcpu < MAX_CPUS && sent & (1 << pcpu) == 0 {
            sent |= 1 << pcpu;
            gic::kick(CPU_MPIDR[pcpu].load(Ordering::Relaxed), pcpu);
        }
    }
    if kicks.contains(v.id) {
        vgic_flush(vm, v);
    }
    true
}

/// What to run after an exit of `v` (called by the arch exit glue, IRQs masked).
pub fn handle_exit(v: &mut Vcpu, kind: ExitKind) -> Next {
    let vm = super::vm_of(v);
    // List registers only move when they hold something (never on a plain hypercall).
    if v.lr_used != 0 {
        vgic_sync(vm, v);
    }
    let resched = match kind {
        // A guest acknowledge trapped to re-check passthrough lines: re-executed, no action.
        ExitKind::Sync(esr) if super::lrs::ack_trap(vm, v, esr) => return Next::Resume,
        ExitKind::Sync(esr) => {
            let action = {
                let mut ctx = ExitCtx {
                    regs: &mut v.regs,
                    mmio: &vm.mmio,
                    debug: &mut v.debug,
                    ptimer: &mut v.ptimer,
                    counter: timer::now,
                    id_read: idregs::read,
                    vcpu: v.id,
                    vm_name: &vm.name,
                    warn_budget: &vm.warn_budget,
                    ram_base: vm.ram.base(),
                    ram_bytes: vm.config.memory_bytes,
                };
                crate::vm::exit::handle_sync(&mut ctx, esr, guest::fault)
            };
            let r = apply(vm, v, esr, action);
            if esr.ec() == esr::ec::DABT_LOWER {
                sample_device_lines(vm, v.id);
                console_unthrottle(vm);
                // The guard is dropped before the kicks: a temporary in the call would hold the
                // vGIC lock across them (and, on GICv2, the GIC driver lock inside it).
                let kicks = vm.vgic.lock().take_kicks();
                kick_all(vm, kicks);
            }
            r
        }
        ExitKind::Irq | ExitKind::Fiq => {
            // The scheduler only runs when an interrupt can change what runs here (a kick,
            // the EL2 timer); the running vCPU's own virtual timer, passthrough SPIs and
            // maintenance interrupts just need a flush.
            let mut s = sched().lock();
            handle_irqs(&mut s, Some(v))
        }
        ExitKind::SError(esr) => {
            warn!(
                "{} ({}): SError from the guest, ESR {:#x}",
                vm.id, vm.name, esr.0
            );
            stop_vm(vm, "SError");
            true
        }
    };
    if !resched {
        // Only exits that can change the vGIC (MMIO, SGIs, timer writes, interrupts) need a
        // flush; a hypercall or an emulated system register does not even look.
        if touches_vgic(kind) {
            vgic_flush(vm, v);
        }
        return Next::Resume;
    }
    let mut s = sched().lock();
    let slot = v.slot;
    Next::Switch(schedule(&mut s, Some((slot, v))))
}

/// Whether an exit of this kind may have changed what the vGIC has for the vCPU.
fn touches_vgic(kind: ExitKind) -> bool {
    match kind {
        ExitKind::Sync(esr) => {
            // MMIO, SGIs/timer writes, and the waits (WFI, PSCI standby) that return because
            // an interrupt became deliverable.
            matches!(
                esr.ec(),
                esr::ec::DABT_LOWER
                    | esr::ec::SYS64
                    | esr::ec::WFX
                    | esr::ec::HVC64
                    | esr::ec::SMC64
            )
        }
        _ => true,
    }
}

/// Carries out an exit's action. Returns true when the scheduler must run.
fn apply(vm: &'static Vm, v: &mut Vcpu, esr: Esr, action: Action) -> bool {
    let el0 = guest::from_el0(&v.regs);
    match action {
        Action::Resume => false,
        // Trapped only where several vCPUs share this CPU (see `load`): yield.
        Action::Wait { wfe: true } => true,
        Action::InjectDataAbort { far, write } => {
            guest::inject_sync(&mut v.regs, esr::inject::data_abort(el0, write), Some(far));
            false
        }
        Action::InjectInstrAbort { far } => {
            guest::inject_sync(&mut v.regs, esr::inject::instr_abort(el0), Some(far));
            false
        }
        Action::InjectUndef => {
            guest::inject_sync(&mut v.regs, esr::inject::undefined(esr.il()), None);
            false
        }
        Action::Wait { wfe: false } => block(vm, v),
        Action::TimerChanged => {
            let now = update_ptimer(vm, v);
            let mut s = sched().lock();
            if let Some(sl) = s.slots.get_mut(v.slot) {
                sl.ptimer = v.ptimer;
            }
            arm_timer(&s, Some(v.slot), now);
            false
        }
        Action::Sgi { value, group1 } => {
            let kicks = vm.vgic.lock().sgi(v.id, value, group1);
            kick_all(vm, kicks)
        }
        // SVE of a VM without it (no SVE state): hidden, so UNDEFINED as on a CPU without SVE.
        Action::SveAccess if v.sve.is_none() => {
            guest::inject_sync(&mut v.regs, esr::inject::undefined(esr.il()), None);
            false
        }
        Action::DebugSync => {
            super::sched::debug_sync(v);
            false
        }
        Action::Pmu => super::pmu::access(vm, v, esr),
        Action::FpAccess | Action::SveAccess => {
            if super::fpu::switch(v, action == Action::SveAccess) {
                false
            } else {
                stop_vm(vm, "SVE state did not fit");
                true
            }
        }
        Action::Psci(call) => psci_call(vm, v, call),
        Action::Stop(why) => {
            stop_vm(vm, why);
            true
        }
        // The access is retried when the guest resumes (its PC was not moved).
        Action::BackRam { ipa } => match vm.ram.fault(ipa) {
            Some(true) => false,
            _ => {
                warn!(
                    "{} ({}): cannot back guest RAM at IPA {:#x}",
                    vm.id, vm.name, ipa.0
                );
                stop_vm(vm, "guest RAM could not be backed");
                true
            }
        },
    }
}

/// WFI: blocks the vCPU unless an interrupt is deliverable (or its timers expired).
pub(super) fn block(vm: &Vm, v: &mut Vcpu) -> bool {
    let mut now = update_ptimer(vm, v);
    if vm.vgic.lock().has_deliverable(v.id) {
        return false;
    }
    let mut s = sched().lock();
    if let Some(sl) = s.slots.get_mut(v.slot) {
        sl.ptimer = v.ptimer;
    }
    if s.slots.len() == 1 {
        // Alone on this CPU (the pinned case): wait right here, WFI at EL2, and resume
        // without the scheduler's idle loop and a full re-entry. Anything that needs the
        // scheduler (its VM stopping or resetting, CPU_OFF) ends the wait and goes there.
        let idx = v.id.0 as usize;
        loop {
            // Armed from the counter value the line was last evaluated at: a timer that
            // expired since then is due at once, not forgotten until the next interrupt.
            arm_timer(&s, Some(v.slot), now);
            // Idle time for the shell's `cpus`: begun here (before the WFI, off every timed
            // path), ended with the counter value the wake-up reads anyway.
            super::sched::idle_begin(&s, timer::now());
            timer::wait_for_interrupt();
            let _ = handle_irqs(&mut s, Some(v));
            // The shell's interrupt count: a wake-up here is an interrupt for this vCPU, as
            // one taken while it ran (counted by the exit vector).
            let c = &v.counters.irq;
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            let running = vm.state.load(Ordering::Acquire) == VmState::Running as u8;
            if !running || !vm.power[idx].is_on() || vm.power[idx].start_pending() {
                super::sched::idle_end(&s, timer::now());
                s.rq.set(v.slot, RunState::Blocked);
                return true;
            }
            now = update_ptimer(vm, v);
            super::sched::idle_end(&s, now);
            // An interrupt just placed in a list register (the virtual timer) is pending
            // there: no need to ask the vGIC.
            if lr_pending(v) || vm.vgic.lock().has_deliverable(v.id) {
                return false;
            }
        }
    }
    s.rq.set(v.slot, RunState::Blocked);
    true
}

/// Whether a list register of `v` holds a pending interrupt, by its shadow (current from the
/// exit's sync and every write since, while the guest has not run).
fn lr_pending(v: &Vcpu) -> bool {
    let mut used = v.lr_used;
    while used != 0 {
        let i = used.trailing_zeros() as usize;
        used &= used - 1;
        if v.lrs.get(i).is_some_and(|lr| lr.state.pending()) {
            return true;
        }
    }
    false
}
