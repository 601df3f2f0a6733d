//! Running vCPUs on physical CPUs: exits, the per-CPU scheduler, interrupts, PSCI power and
//! VM lifecycle.
//!
//! ```text
//!  exit ──> handle_exit ──fast path (resume, inject, emulate)──────────────────> same vCPU
//!              │ WFI, PSCI power, IRQ, kick, VM stop/reset
//!              └──> CPU scheduler (lock) ─ requests ─ pick (round-robin) ─ put? ─> next vCPU
//!                                          └─ nothing runnable: WFI at EL2, take IRQs ─┘
//!  entry <── enter: load if a different vCPU (EL1, vGIC, vtimer, traps, stage 2), flush LRs
//! ```
//!
//! vCPUs are pinned: each lives in one physical CPU's run queue and only that CPU touches it.
//! Other CPUs change a vCPU's PSCI power state (atomics in its VM) and send a kick SGI.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use log::{error, info, warn};
use spin::Once;

use crate::arch::aarch64::sync::Mutex;

use super::{PLATFORM, Vm, VmState, power_off};
use crate::arch::aarch64::cpu::{self, MAX_CPUS, VcpuPtr};
use crate::arch::aarch64::esr::{self, Esr};
use crate::arch::aarch64::exit::ExitKind;
use crate::arch::aarch64::{fp, gic, guest, idregs, timer, vectors};
use crate::console::Input;
use crate::vdev::vgic::{self, KickSet, Lr};
use crate::vm::VcpuId;
use crate::vm::exit::{Action, ExitCtx};
use crate::vm::power;
use crate::vm::psci::{self, Call, Ret};
use crate::vm::sched::{RunQueue, RunState};
use crate::vm::timer::{PTIMER_INTID, PhysTimer, VTIMER_INTID};
use crate::vm::vcpu::Vcpu;

/// Time slice when several vCPUs share a physical CPU: 10 ms.
const SLICE_PER_SEC: u64 = 100;
/// The vGIC maintenance interrupt when the DT names none (PPI 9).
pub const MAINT_INTID: u32 = 25;

/// A vCPU on this CPU's run queue, with what the scheduler needs while it is off the CPU.
pub struct Slot {
    pub ptr: VcpuPtr,
    pub vm: &'static Vm,
    pub id: VcpuId,
    /// Copy of the vCPU's emulated physical timer (kept current).
    pub ptimer: PhysTimer,
    /// Physical-counter deadline of its virtual timer while it is off the CPU.
    pub vtimer_deadline: Option<u64>,
}

/// One physical CPU's scheduler. Only that CPU locks it.
pub struct CpuSched {
    pub index: usize,
    pub slots: Vec<Slot>,
    rq: RunQueue,
    /// The slot whose state is in the CPU (EL1 registers, vGIC interface, virtual timer).
    loaded: Option<usize>,
    /// The slot whose FP/SIMD registers are in the CPU.
    fp_owner: Option<usize>,
    slice_end: u64,
    /// Set when the scheduler picks a vCPU: its time slice starts when it is entered, not at
    /// the pick (a put/load in between, or another CPU holding QEMU's single TCG thread under
    /// -icount, may take a while; a slice already spent there would preempt it at once).
    new_slice: bool,
}

impl CpuSched {
    pub fn new(index: usize) -> Self {
        Self {
            index,
            slots: Vec::new(),
            rq: RunQueue::new(),
            loaded: None,
            fp_owner: None,
            slice_end: 0,
            new_slice: false,
        }
    }

    /// Places a vCPU on this CPU; returns its slot.
    pub fn add(&mut self, ptr: VcpuPtr, vm: &'static Vm, id: VcpuId) -> usize {
        self.slots.push(Slot {
            ptr,
            vm,
            id,
            ptimer: PhysTimer::default(),
            vtimer_deadline: None,
        });
        self.rq.add()
    }
}

static SCHEDS: [Once<Mutex<CpuSched>>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
/// MPIDR of each physical CPU, for kicks.
pub static CPU_MPIDR: [core::sync::atomic::AtomicU64; MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; MAX_CPUS];
/// Physical CPUs that have started running vCPUs.
pub static CPU_UP: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Installs CPU `index`'s scheduler (boot CPU, before any CPU runs).
pub fn install_sched(index: usize, s: CpuSched) {
    if let Some(slot) = SCHEDS.get(index) {
        slot.call_once(|| Mutex::new(s));
    }
}

/// The scheduler of CPU `index`.
pub fn sched_of(index: usize) -> Option<&'static Mutex<CpuSched>> {
    SCHEDS.get(index).and_then(|o| o.get())
}

fn this_index() -> usize {
    cpu::this_cpu().map_or(0, |p| p.index)
}

fn sched() -> &'static Mutex<CpuSched> {
    match sched_of(this_index()) {
        Some(s) => s,
        None => {
            error!("cpu{}: no scheduler", this_index());
            cpu::park()
        }
    }
}

/// Starts running vCPUs on this CPU: idles until one is runnable, then enters it.
pub fn run_cpu() -> ! {
    let i = this_index();
    if let Some(up) = CPU_UP.get(i) {
        up.store(true, Ordering::Release);
    }
    // A CPU that comes up after another one failed parks before it runs anything.
    super::halt::check();
    #[cfg(feature = "selftest")]
    crate::arch::aarch64::selftest::at_scheduler_entry(
        i,
        PLATFORM.get().map_or(1, |p| p.cpus.len().min(MAX_CPUS)),
    );
    let next = {
        let mut s = sched().lock();
        schedule(&mut s, None)
    };
    cpu::run(next)
}

// ------------------------------------------------------------------------------------------
// Exits
// ------------------------------------------------------------------------------------------

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
            let Some(value) =
                crate::vm::exit::local_sysreg_read(&acc, &mut v.ptimer, timer::now, idregs::read)
            else {
                return false;
            };
            v.regs.set(acc.rt, value);
            v.regs.elr = v.regs.elr.wrapping_add(4);
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
        let Ok(value) = vm.vgic.lock().dist_read(v.id, gicd, da.width) else {
            return false;
        };
        crate::vm::exit::mmio_load_result(&mut v.regs, da, value);
        v.regs.elr = v.regs.elr.wrapping_add(esr.insn_len());
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
    v.regs.elr = v.regs.elr.wrapping_add(esr.insn_len());
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
    v.regs.elr = v.regs.elr.wrapping_add(4);
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

/// What the CPU does after an exit.
pub enum Next {
    /// Return to the vCPU that exited (the fast path: no scheduler, no reload).
    Resume,
    /// Run this vCPU (possibly the same one, after a pass through the scheduler).
    Switch(VcpuPtr),
}

/// What to run after an exit of `v` (called by the arch exit glue, IRQs masked).
pub fn handle_exit(v: &mut Vcpu, kind: ExitKind) -> Next {
    let vm = super::vm_of(v);
    // List registers only move when they hold something (never on a plain hypercall).
    if v.lr_used != 0 {
        vgic_sync(vm, v);
    }
    let resched = match kind {
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
                };
                crate::vm::exit::handle_sync(&mut ctx, esr, guest::fault)
            };
            let r = apply(vm, v, esr, action);
            if esr.ec() == esr::ec::DABT_LOWER {
                sample_device_lines(vm, v.id);
                console_unthrottle(vm);
                kick_all(vm, vm.vgic.lock().take_kicks());
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
        Action::FpAccess => {
            fp_switch(v);
            false
        }
        Action::Psci(call) => psci_call(vm, v, call),
        Action::Stop(why) => {
            stop_vm(vm, why);
            true
        }
    }
}

/// WFI: blocks the vCPU unless an interrupt is deliverable (or its timers expired).
fn block(vm: &Vm, v: &mut Vcpu) -> bool {
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
            timer::wait_for_interrupt();
            let _ = handle_irqs(&mut s, Some(v));
            let running = vm.state.load(Ordering::Acquire) == VmState::Running as u8;
            if !running || !vm.power[idx].is_on() || vm.power[idx].start_pending() {
                s.rq.set(v.slot, RunState::Blocked);
                return true;
            }
            now = update_ptimer(vm, v);
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

/// Lazy FP/SIMD switch: the trapping vCPU takes the FP registers from their owner.
fn fp_switch(v: &mut Vcpu) {
    let mut s = sched().lock();
    let owner = s.fp_owner.and_then(|o| s.slots.get(o)).map(|sl| sl.ptr);
    guest::write_cptr(guest::guest_cptr());
    if let Some(o) = owner
        && o != VcpuPtr::of(v)
    {
        cpu::save_fp_of(o);
    }
    fp::restore(&v.fp);
    s.fp_owner = Some(v.slot);
}

// ------------------------------------------------------------------------------------------
// PSCI and VM lifecycle
// ------------------------------------------------------------------------------------------

fn set_ret(v: &mut Vcpu, value: i64) {
    let Ret(r) = Ret::x0(value);
    if let Some(x0) = r[0] {
        v.regs.x[0] = x0;
    }
}

fn psci_call(vm: &'static Vm, v: &mut Vcpu, call: Call) -> bool {
    match call {
        Call::SystemOff => {
            stop_vm(vm, "PSCI SYSTEM_OFF");
            true
        }
        Call::SystemReset => {
            reset_vm(vm);
            true
        }
        Call::CpuOff => {
            vm.power[v.id.0 as usize].off();
            // A VM whose vCPUs are all off can never run again (no vCPU is left to CPU_ON
            // another): it has stopped, and says so, so the machine powers off with the rest.
            if vm.power.iter().all(|p| !p.is_on()) {
                stop_vm(vm, "every vCPU is off (PSCI CPU_OFF)");
            }
            true
        }
        Call::CpuOn {
            target,
            entry,
            context,
        } => {
            let ram = super::layout::RAM_BASE.0..super::layout::RAM_BASE.0 + vm.config.memory_bytes;
            if vm.state.load(Ordering::Acquire) != VmState::Running as u8 {
                // The VM is being reset or stopped: nothing may start now.
                set_ret(v, psci::ret::DENIED);
                return false;
            }
            let r = power::check_cpu_on(target, entry, &vm.mpidrs, ram).and_then(|t| {
                vm.power[t].cpu_on(entry, context)?;
                Ok(t)
            });
            match r {
                Ok(t) => {
                    set_ret(v, psci::ret::SUCCESS);
                    kick_all(vm, KickSet::single(t))
                }
                Err(e) => {
                    set_ret(v, e);
                    false
                }
            }
        }
        Call::AffinityInfo { target, level } => {
            let r = power::affinity_info(target, level, &vm.mpidrs, |i| {
                vm.power
                    .get(i)
                    .map_or(power::AFF_OFF, |p| p.affinity_info())
            });
            set_ret(v, r);
            false
        }
        // Standby: like WFI. (Power-down states are entered as standby, which PSCI allows.)
        Call::CpuSuspend { .. } => {
            set_ret(v, psci::ret::SUCCESS);
            block(vm, v)
        }
        Call::Yield => {
            set_ret(v, psci::ret::SUCCESS);
            // Stays runnable; the round-robin pick moves on to the next runnable vCPU.
            true
        }
        Call::Return(_) => false,
    }
}

/// Stops a VM (SYSTEM_OFF, or a fatal guest error): all its vCPUs, on every CPU. When it
/// was the last VM, powers the machine off.
pub fn stop_vm(vm: &'static Vm, why: &str) {
    if vm
        .state
        .compare_exchange(
            VmState::Running as u8,
            VmState::Stopped as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        return;
    }
    info!("{} ({}) stopped: {}", vm.id, vm.name, why);
    for p in &vm.power {
        p.off();
    }
    kick_all(vm, KickSet::all(vm.power.len()));
    if super::RUNNING_VMS.fetch_sub(1, Ordering::AcqRel) == 1 {
        info!("all VMs stopped; powering off");
        power_off();
    }
}

/// Every how many resets of a VM the lifecycle accounting is logged (0: never; the first
/// reset is always logged when it is on). `elvisor.lifecycle-stats=N` on the command line.
static LIFECYCLE_STATS_EVERY: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Turns the lifecycle accounting on: one info line every `every` resets (0 turns it off).
pub fn set_lifecycle_stats(every: u32) {
    LIFECYCLE_STATS_EVERY.store(every, Ordering::Relaxed);
}

/// The lifecycle accounting of reset `n` of `vm`, which took `ticks` of the counter from the
/// SYSTEM_RESET call to vCPU 0 being started again: how long, and what the frame allocator and
/// heap hold afterwards. A soak test compares the first and the last of these lines: a reset
/// that leaks, or gets slower with every run, shows here (the hypervisor does not judge it).
fn log_reset_stats(vm: &Vm, n: u32, ticks: u64) {
    let every = LIFECYCLE_STATS_EVERY.load(Ordering::Relaxed);
    if every == 0 || (n != 1 && !n.is_multiple_of(every)) {
        return;
    }
    let us = u128::from(ticks) * 1_000_000 / u128::from(timer::frequency().max(1));
    info!(
        "{} ({}) reset #{n}: {us} us, frames free {}, heap in use {} bytes",
        vm.id,
        vm.name,
        super::free_frames(),
        super::heap_in_use_bytes().unwrap_or(0)
    );
}

/// SYSTEM_RESET of one VM: every vCPU stops (on every CPU), RAM and images are reloaded,
/// devices and the vGIC reset, then vCPU 0 starts again. Other VMs keep running.
fn reset_vm(vm: &'static Vm) {
    let started = timer::now();
    if vm
        .state
        .compare_exchange(
            VmState::Running as u8,
            VmState::Resetting as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        return;
    }
    let n = vm.reset_count.fetch_add(1, Ordering::Relaxed) + 1;
    info!("{} ({}): PSCI SYSTEM_RESET (reset #{n})", vm.id, vm.name);
    for p in &vm.power {
        p.off();
    }
    for parked in &vm.parked {
        parked.store(false, Ordering::Release);
    }
    let me = this_index();
    {
        // This CPU's other vCPUs of the VM are off the CPU already (only one runs).
        let mut s = sched().lock();
        for i in 0..s.slots.len() {
            if core::ptr::eq(s.slots[i].vm, vm) {
                s.rq.set(i, RunState::Off);
                vm.parked[s.slots[i].id.0 as usize].store(true, Ordering::Release);
            }
        }
    }
    kick_all(vm, KickSet::all(vm.power.len()));
    // Wait for the other CPUs to take the VM's vCPUs off (a kick makes them exit).
    let mut all_parked = true;
    for (i, parked) in vm.parked.iter().enumerate() {
        if vm.placement[i] == me {
            continue;
        }
        let mut spins = 0u64;
        while !parked.load(Ordering::Acquire) {
            spins += 1;
            if spins > 200_000_000 {
                error!(
                    "{} ({}): vCPU {i} did not stop for the reset",
                    vm.id, vm.name
                );
                all_parked = false;
                break;
            }
            core::hint::spin_loop();
        }
    }
    if !all_parked {
        // A vCPU that may still be running must not see its RAM, devices and vGIC rewritten
        // under it: the VM is stopped instead of reset (its vCPUs are all powered off, so the
        // stuck one parks whenever its CPU next looks), and says why.
        vm.state.store(VmState::Running as u8, Ordering::Release);
        stop_vm(vm, "reset abandoned: a vCPU did not stop");
        return;
    }
    vm.mmio.lock().reset_all();
    {
        let mut vg = vm.vgic.lock();
        vg.reset();
        let _ = vg.set_hw(VTIMER_INTID, VcpuId(0), Some(VTIMER_INTID));
        while let Some(p) = vg.take_hw_deactivation() {
            gic::deactivate_raw(p);
        }
    }
    if let Err(e) = super::load_images(vm, super::Reload::Reset) {
        error!("{} ({}): reset failed: {e}", vm.id, vm.name);
        vm.state.store(VmState::Running as u8, Ordering::Release);
        stop_vm(vm, "reset failed");
        return;
    }
    vm.state.store(VmState::Running as u8, Ordering::Release);
    let _ = vm.power[0].cpu_on(vm.entry_ipa(), vm.fdt_ipa());
    let ticks = timer::now().wrapping_sub(started);
    kick_all(vm, KickSet::single(0));
    log_reset_stats(vm, n, ticks);
}

/// Makes the vCPUs in `kicks` look at their state: a kick SGI for those on other CPUs.
/// Returns true when one of them lives on this CPU (the caller should reschedule).
fn kick_all(vm: &Vm, kicks: KickSet) -> bool {
    let me = this_index();
    let mut local = false;
    let mut sent: u64 = 0;
    for t in kicks.iter() {
        let Some(&pcpu) = vm.placement.get(t.0 as usize) else {
            continue;
        };
        if pcpu == me {
            local = true;
        } else if sent & (1 << pcpu) == 0 {
            sent |= 1 << pcpu;
            log::trace!("cpu{me}: kick cpu{pcpu}");
            gic::kick(CPU_MPIDR[pcpu].load(Ordering::Relaxed), pcpu);
        }
    }
    local
}

// ------------------------------------------------------------------------------------------
// Scheduling
// ------------------------------------------------------------------------------------------

/// Brings the run queue up to date with the shared state: VM stops and resets, PSCI
/// CPU_ON/OFF, interrupts and timers that wake blocked vCPUs.
/// Returns the counter value the timers were evaluated at.
fn process_requests(s: &mut CpuSched) -> u64 {
    let now = timer::now();
    for i in 0..s.slots.len() {
        let (vm, id) = (s.slots[i].vm, s.slots[i].id);
        let idx = id.0 as usize;
        let running = vm.state.load(Ordering::Acquire) == VmState::Running as u8;
        let on = vm.power[idx].is_on();
        if !running || !on {
            if s.rq.state(i) != Some(RunState::Off) {
                s.rq.set(i, RunState::Off);
            }
            vm.parked[idx].store(true, Ordering::Release);
            continue;
        }
        if vm.power[idx].start_pending() {
            s.rq.set(i, RunState::Runnable);
            continue;
        }
        if s.rq.state(i) == Some(RunState::Blocked) {
            let sl = &s.slots[i];
            let mut vg = vm.vgic.lock();
            let _ = vg.set_level(PTIMER_INTID, id, sl.ptimer.level(now));
            let vtimer_due = s.loaded != Some(i) && sl.vtimer_deadline.is_some_and(|d| now >= d);
            if vtimer_due || vg.has_deliverable(id) {
                drop(vg);
                s.rq.set(i, RunState::Runnable);
            }
        }
    }
    now
}

/// Picks what runs next on this CPU; idles (WFI at EL2) while nothing is runnable. `current`
/// is the vCPU that just exited, if any: it is put (its state saved) when another vCPU runs.
fn schedule(s: &mut CpuSched, mut current: Option<(usize, &mut Vcpu)>) -> VcpuPtr {
    loop {
        let now = process_requests(s);
        if let Some(n) = s.rq.pick() {
            if let Some((cs, v)) = current.as_mut()
                && n != *cs
                && s.loaded == Some(*cs)
            {
                put(s, *cs, v);
            }
            s.new_slice = true;
            return s.slots[n].ptr;
        }
        // Nothing runnable: idle until an interrupt. A blocked vCPU that is still loaded
        // keeps its virtual timer live, so its expiry wakes us.
        arm_timer(s, None, now);
        timer::wait_for_interrupt();
        let cur = current.as_mut().map(|(_, v)| &mut **v);
        let _ = handle_irqs(s, cur);
    }
}

/// Takes the loaded vCPU `slot` off the CPU: saves its EL1 context, virtual CPU interface,
/// list registers and virtual timer.
fn put(s: &mut CpuSched, slot: usize, v: &mut Vcpu) {
    // An SError the guest caused but that was still pending at its exit is taken now, while
    // it can still be blamed on this vCPU's VM (after the next `eret` it would hit whichever
    // vCPU runs here next).
    if let Some(esr) = vectors::take_pending_serror() {
        let vm = super::vm_of(v);
        warn!(
            "{} ({}): SError pending at exit (ESR {esr:#x})",
            vm.id, vm.name
        );
        stop_vm(vm, "SError");
    }
    guest::save_el1(&mut v.el1);
    gic::save_vif(&mut v.vif);
    let n = gic::nr_lrs().min(v.lrs.len());
    for i in 0..n {
        if v.lr_used & (1 << i) != 0 {
            v.lrs[i] = decode_lr(gic::read_lr(i));
            // The virtual timer's physical PPI is per CPU and about to serve another vCPU:
            // this vCPU's pending/active timer interrupt continues as a purely virtual one.
            if v.lrs[i].hw == Some(VTIMER_INTID) {
                v.lrs[i].hw = None;
            }
            gic::write_lr(i, 0);
        }
    }
    v.vtimer = guest::save_vtimer();
    // Its timer is disabled now, so the line is low: deactivate the physical PPI so the next
    // vCPU's timer can fire.
    gic::deactivate_raw(VTIMER_INTID);
    let vm = super::vm_of(v);
    if let Some(sl) = s.slots.get_mut(slot) {
        sl.ptimer = v.ptimer;
        let (ctl, cval) = v.vtimer;
        // Enabled and unmasked: it fires when CNTPCT - CNTVOFF >= CVAL.
        sl.vtimer_deadline = (ctl == 1).then(|| cval.wrapping_add(vm.hw.cntvoff));
    }
    s.loaded = None;
}

/// Puts a vCPU on this CPU: trap configuration, stage 2, EL1 context, virtual CPU interface
/// and list registers, virtual timer, FP trap unless it owns the FP registers.
fn load(s: &mut CpuSched, slot: usize, v: &mut Vcpu) {
    let vm = super::vm_of(v);
    // The vCPU loaded before may not have been put (its VM stopped): an SError it left pending
    // is taken here, before this vCPU can run into it, and stops that VM (if it has not
    // stopped already). After a `put`, which took any pending SError itself, no guest ran here.
    if let Some(old) = s.loaded
        && let Some(esr) = vectors::take_pending_serror()
        && let Some(prev) = s.slots.get(old).map(|sl| sl.vm)
    {
        warn!(
            "{} ({}): SError pending at exit (ESR {esr:#x})",
            prev.id, prev.name
        );
        stop_vm(prev, "SError");
    }
    // Whatever was loaded before (possibly a vCPU of a VM that stopped without being put)
    // must not leave the per-CPU virtual-timer PPI active: the new vCPU's timer needs it.
    gic::deactivate_raw(VTIMER_INTID);
    let mut hw = vm.hw.clone();
    hw.vmpidr = (1 << 31) | v.mpidr;
    // WFE yields to another vCPU where there is one to yield to (a guest spinning on a lock
    // held by a descheduled vCPU); with the CPU to itself, WFE runs natively.
    if s.slots.len() > 1 {
        hw.hcr |= guest::hcr::TWE;
    }
    hw.cptr = if s.fp_owner == Some(slot) {
        guest::guest_cptr()
    } else {
        guest::guest_cptr_fp_trapped()
    };
    guest::load_config(&hw);
    guest::load_el1(&v.el1);
    gic::load_guest_sre();
    gic::restore_vif(&v.vif);
    let n = gic::nr_lrs().min(v.lrs.len());
    for i in 0..n {
        let val = if v.lr_used & (1 << i) != 0 {
            relink_vtimer(&mut v.lrs[i]);
            encode_lr(&v.lrs[i])
        } else {
            0
        };
        gic::write_lr(i, val);
    }
    gic::write_hcr(v.hcr | gic::HCR_EN);
    guest::restore_vtimer(v.vtimer);
    if let Some(sl) = s.slots.get_mut(slot) {
        sl.vtimer_deadline = None;
    }
    s.loaded = Some(slot);
}

/// On load, the inverse of `put`'s unlinking: a virtual-timer interrupt that waited in a list
/// register while its vCPU was off the CPU is linked to the physical PPI again (HW bit).
///
/// Left virtual-only, it deadlocked the timer: when the vCPU's timer, restored with its
/// condition still met, fired again, EL2 acknowledged the PPI and found the interrupt already
/// in a list register, so nothing linked the new physical instance to the guest's
/// deactivation; PPI 27 stayed active on that CPU and the vCPU never got another timer
/// interrupt (seen as guests/spy's watcher losing its timer once its neighbour powered off, so
/// that no later `load` deactivated the PPI). Linked, the guest's deactivation deactivates the
/// PPI (a no-op if it is not active: `load` deactivated it, IHI 0069H §4.1.2), and a line still
/// high fires again. The HW form has no pending-and-active state: the pending half of a level
/// interrupt comes back from the line itself, so it is dropped (and no EOI maintenance request,
/// which a HW entry cannot carry).
fn relink_vtimer(lr: &mut Lr) {
    if lr.intid == VTIMER_INTID && lr.hw.is_none() && lr.state != vgic::LrState::Invalid {
        lr.hw = Some(VTIMER_INTID);
        lr.eoi_maint = false;
        if lr.state == vgic::LrState::PendingActive {
            lr.state = vgic::LrState::Active;
        }
    }
}

/// Prepares `v` to run on this CPU (called on every entry): starts it if a CPU_ON or reset
/// asked for it, loads it if it is not the loaded vCPU, fills its list registers.
pub fn enter(v: &mut Vcpu) {
    let vm = super::vm_of(v);
    let mut s = sched().lock();
    let slot = v.slot;
    let mut force = false;
    if let Some((entry, context)) = vm.power[v.id.0 as usize].take_start() {
        v.regs.host_sp = cpu::stack_top(s.index);
        v.reset(entry, context);
        if s.fp_owner == Some(slot) {
            s.fp_owner = None;
        }
        vm.parked[v.id.0 as usize].store(false, Ordering::Release);
        force = true;
    }
    if force || s.loaded != Some(slot) {
        load(&mut s, slot, v);
    }
    if let Some(sl) = s.slots.get_mut(slot) {
        sl.ptimer = v.ptimer;
    }
    drop(s);
    let now = update_ptimer(vm, v);
    vgic_flush(vm, v);
    let mut s = sched().lock();
    if s.new_slice {
        s.new_slice = false;
        s.slice_end = now + timer::frequency() / SLICE_PER_SEC;
    }
    arm_timer(&s, Some(slot), now);
}

/// Arms the EL2 timer for this CPU's next deadline: the running vCPU's time slice (when
/// others wait) and emulated physical timer, and the timers of the blocked vCPUs here.
///
/// `now` is the counter value the emulated timers' lines were last evaluated at: a timer that
/// expires after it gets its deadline armed (already past, so CNTHP fires at once) instead of
/// being missed between the evaluation and this call.
fn arm_timer(s: &CpuSched, running: Option<usize>, now: u64) {
    let mut next: Option<u64> = None;
    let mut consider = |d: u64| next = Some(next.map_or(d, |n: u64| n.min(d)));
    if let Some(r) = running
        && s.rq.others_runnable(r)
    {
        consider(s.slice_end);
    }
    for (i, sl) in s.slots.iter().enumerate() {
        // Only a blocked vCPU needs its timers to wake it, and the running one its emulated
        // physical timer. A runnable vCPU's timers are looked at when it runs; arming for
        // them would fire at once for an expired timer the guest has not handled yet, and
        // again after every switch, leaving the guests no time to run (a livelock).
        let blocked = s.rq.state(i) == Some(RunState::Blocked);
        if (blocked || running == Some(i))
            && let Some(d) = sl.ptimer.deadline(now)
        {
            consider(d);
        }
        if blocked
            && s.loaded != Some(i)
            && let Some(d) = sl.vtimer_deadline
        {
            consider(d);
        }
    }
    match next {
        Some(d) => timer::arm(d),
        None => timer::disarm(),
    }
}

// ------------------------------------------------------------------------------------------
// Interrupts
// ------------------------------------------------------------------------------------------

/// Acknowledges and routes every pending physical interrupt. `cur` is the running vCPU, if
/// the CPU was running one. Returns true when the scheduler must look (a kick, a timer tick,
/// an interrupt for another vCPU of this CPU).
fn handle_irqs(s: &mut CpuSched, mut cur: Option<&mut Vcpu>) -> bool {
    let mut resched = false;
    let plat = PLATFORM.get();
    let maint = plat
        .and_then(|p| p.gic.maintenance_intid)
        .unwrap_or(MAINT_INTID);
    let uart = plat.and_then(|p| p.uart.intid);
    while let Some(a) = gic::ack() {
        let intid = a.intid;
        gic::eoi(a);
        if intid == VTIMER_INTID {
            // The loaded vCPU's virtual timer: forwarded with the HW bit; stays active until
            // the guest deactivates it.
            if let Some(l) = s.loaded
                && let Some(sl) = s.slots.get(l)
            {
                match cur.as_mut() {
                    // The vCPU that exited (or waits in place) is the loaded one: straight
                    // into a free list register if nothing else waits for its flush.
                    Some(v) if v.slot == l => inject_vtimer(sl.vm, v),
                    _ => {
                        let _ = sl.vm.vgic.lock().inject_edge(VTIMER_INTID, sl.id);
                    }
                }
            }
            continue;
        }
        if let Some(vm) = super::passthrough_owner(intid) {
            let kicks = vm
                .vgic
                .lock()
                .inject_edge(intid, VcpuId(0))
                .unwrap_or(KickSet(0));
            // The vGIC says which vCPU the SPI is routed to; kick that one only (and look at
            // the scheduler if it lives here: it may be blocked).
            resched |= kick_all(vm, kicks);
            continue;
        }
        gic::deactivate(a);
        if intid == gic::KICK_SGI {
            // Requests are read by the scheduler, unless the kick can only be news for the
            // running vCPU's vGIC state (which the flush on entry picks up).
            log::trace!("cpu{}: kick", s.index);
            resched |= kick_needs_scheduler(s, cur.as_deref());
        } else if intid == timer::HYP_TIMER_INTID {
            timer::disarm();
            resched = true;
            if let Some(v) = cur.as_mut() {
                let vm = super::vm_of(v);
                update_ptimer(vm, v);
            }
        } else if intid == maint {
            // Underflow (UIE): the exit synced the list registers and marked a refill; UIE is
            // level-sensitive, so turn it off now. The flush on entry re-arms it if needed.
            gic::write_hcr(gic::HCR_EN);
            if let Some(v) = cur.as_mut() {
                v.hcr = gic::HCR_EN;
            }
        } else if Some(intid) == uart {
            console_input();
            resched = true;
        } else if intid == gic::HALT_SGI {
            // Another CPU failed: park here (kernel::halt).
            super::halt::check();
        } else {
            log::debug!("unexpected physical interrupt {intid}");
        }
    }
    resched
}

/// Whether a kick must go through the scheduler: unless `cur` is alone on this CPU, loaded,
/// and still meant to run (its VM running, its power on, no CPU_ON start pending), the kick
/// may be a request only the scheduler acts on (a stop, a reset, a CPU_ON, a wake-up).
fn kick_needs_scheduler(s: &CpuSched, cur: Option<&Vcpu>) -> bool {
    let Some(v) = cur else {
        return true;
    };
    if s.slots.len() != 1 || s.loaded != Some(v.slot) {
        return true;
    }
    let vm = super::vm_of(v);
    let p = &vm.power[v.id.0 as usize];
    vm.state.load(Ordering::Acquire) != VmState::Running as u8 || !p.is_on() || p.start_pending()
}

/// The running vCPU's own virtual timer fired: inject it, straight into a list register
/// when the vGIC allows ([`vgic::Vgic::inject_edge_into`]).
fn inject_vtimer(vm: &Vm, v: &mut Vcpu) {
    // The timer is level-sensitive and has one physical instance at a time. If its interrupt
    // is already in a list register (the shadow is current: the exit synced it), this
    // acknowledge is that same instance, re-signalled because `load` deactivated the PPI:
    // link it to that entry rather than latch a second one, which the guest would take after
    // the first as a spurious early timer interrupt.
    let mut used = v.lr_used;
    while used != 0 {
        let i = used.trailing_zeros() as usize;
        used &= used - 1;
        if let Some(lr) = v.lrs.get_mut(i)
            && lr.intid == VTIMER_INTID
            && lr.state != vgic::LrState::Invalid
        {
            if lr.hw.is_none() {
                relink_vtimer(lr);
                write_lrs(v, 1 << i);
            }
            return;
        }
    }
    let n = gic::nr_lrs().min(v.lrs.len());
    let r = vm
        .vgic
        .lock()
        .inject_edge_into(VTIMER_INTID, v.id, &mut v.lrs[..n]);
    if let Ok((_, changed)) = r
        && changed != 0
    {
        write_lrs(v, changed);
        v.lr_used |= changed;
    }
}

/// Re-evaluates a vCPU's emulated EL1 physical timer line; returns the counter value used.
fn update_ptimer(vm: &Vm, v: &mut Vcpu) -> u64 {
    let now = timer::now();
    let level = v.ptimer.level(now);
    let _ = vm.vgic.lock().set_level(PTIMER_INTID, v.id, level);
    now
}

/// After an MMIO access or console input: propagate changed device interrupt outputs (the
/// PL011's SPI) to the vGIC.
fn sample_device_lines(vm: &Vm, id: VcpuId) {
    let mut bus = vm.mmio.lock();
    bus.irq_changes(|intid, level| {
        let _ = vm.vgic.lock().set_level(intid, id, level);
    });
}

// ------------------------------------------------------------------------------------------
// List registers
// ------------------------------------------------------------------------------------------

fn encode_lr(lr: &Lr) -> u64 {
    if gic::version() == 3 {
        vgic::encode_v3(lr)
    } else {
        vgic::encode_v2(lr) as u64
    }
}

fn decode_lr(v: u64) -> Lr {
    if gic::version() == 3 {
        vgic::decode_v3(v)
    } else {
        vgic::decode_v2(v as u32)
    }
}

/// Writes the list registers in `changed` (bit n = LR n) from the vCPU's shadow.
fn write_lrs(v: &Vcpu, mut changed: u64) {
    while changed != 0 {
        let i = changed.trailing_zeros() as usize;
        changed &= changed - 1;
        if let Some(lr) = v.lrs.get(i) {
            gic::write_lr(i, encode_lr(lr));
        }
    }
}

/// Fills the list registers before entering the guest, if the vGIC has news for this vCPU.
fn vgic_flush(vm: &Vm, v: &mut Vcpu) {
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
fn vgic_sync(vm: &Vm, v: &mut Vcpu) {
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

// ------------------------------------------------------------------------------------------
// Console input
// ------------------------------------------------------------------------------------------

static INPUT: Mutex<crate::console::InputRouter> = Mutex::new(crate::console::InputRouter::new());
/// Set while console input waits in the physical UART because the VM's FIFO is full.
static RX_THROTTLED: AtomicBool = AtomicBool::new(false);
/// Index of the VM console input goes to.
static FOCUS: AtomicU8 = AtomicU8::new(0);

/// Moves console input from the physical UART into the VM with focus (its emulated PL011's
/// receive FIFO), only as far as that FIFO has room: the rest stays in the physical UART,
/// whose receive interrupt is masked until the guest reads (flow control, so nothing typed
/// is lost however small the guest's FIFO is).
fn console_input() {
    let vms = super::vms();
    if vms.is_empty() {
        return;
    }
    let mut router = INPUT.lock();
    loop {
        let vm = vms[(FOCUS.load(Ordering::Relaxed) as usize) % vms.len()];
        // Room for a pending escape sequence's held bytes plus this one.
        if vm.mmio.lock().console_room() < 3 {
            super::console_uart_rx(false);
            RX_THROTTLED.store(true, Ordering::Relaxed);
            break;
        }
        let Some(b) = crate::console::get_byte() else {
            break;
        };
        router.feed(b, vms.len(), |ev| match ev {
            Input::ToVm { vm: i, byte } => {
                if let Some(vm) = vms.get(i) {
                    let _ = vm.mmio.lock().console_input(byte);
                    sample_device_lines(vm, VcpuId(0));
                    kick_all(vm, KickSet::single(0));
                }
            }
            Input::Focus { vm: i } => {
                FOCUS.store(i as u8, Ordering::Relaxed);
                if let Some(vm) = vms.get(i) {
                    info!("console input goes to {} ({})", vm.id, vm.name);
                }
            }
            Input::Held => {}
        });
    }
}

/// After a guest MMIO access: if input was held back, let the UART interrupt again once
/// the VM's FIFO has room. (Inline: on the I/O fast path it is one load and a branch.)
#[inline(always)]
fn console_unthrottle(vm: &Vm) {
    if RX_THROTTLED.load(Ordering::Relaxed) {
        console_unthrottle_slow(vm);
    }
}

#[cold]
fn console_unthrottle_slow(vm: &Vm) {
    if vm.mmio.lock().console_room() >= 3 {
        RX_THROTTLED.store(false, Ordering::Relaxed);
        super::console_uart_rx(true);
    }
}
