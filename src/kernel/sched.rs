//! The per-CPU scheduler: run queues, picking the next vCPU, vCPU load/put and entry, the
//! EL2 timer for slices and emulated-timer deadlines.
//!
//! vCPUs are pinned: each lives in one physical CPU's run queue and only that CPU touches it.
//! Other CPUs change a vCPU's PSCI power state (atomics in its VM) and send a kick SGI.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::{error, warn};
use spin::Once;

use crate::arch::aarch64::sync::Mutex;

use super::irq::{handle_irqs, update_ptimer};
use super::lifecycle::stop_vm;
use super::lrs::{decode_lr, encode_lr, vgic_flush};
use super::{Vm, VmState};
use crate::arch::aarch64::cpu::{self, MAX_CPUS, VcpuPtr};
use crate::arch::aarch64::{debug, gic, guest, timer, vectors};
use crate::vdev::vgic::{self, Lr};
use crate::vm::VcpuId;
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
    pub(super) rq: RunQueue,
    /// The slot whose state is in the CPU (EL1 registers, vGIC interface, virtual timer).
    pub(super) loaded: Option<usize>,
    /// The slot whose FP/SIMD (or SVE) registers are in the CPU (`kernel::fpu`).
    pub(super) fp_owner: Option<usize>,
    /// CPTR_EL2 for `fp_owner` (FP or SVE mode), set with it.
    pub(super) fp_owner_cptr: u64,
    slice_end: u64,
    /// Set when the scheduler picks a vCPU: its time slice starts when it is entered, not at
    /// the pick (a put/load in between, or another CPU holding QEMU's single TCG thread under
    /// -icount, may take a while; a slice already spent there would preempt it at once).
    new_slice: bool,
    /// This CPU's idle clock (a pointer, so the wake-up path's one store needs no index).
    idle: &'static IdleClock,
}

impl CpuSched {
    pub fn new(index: usize) -> Self {
        Self {
            idle: IDLE.get(index).unwrap_or(&IDLE[0]),
            index,
            slots: Vec::new(),
            rq: RunQueue::new(),
            loaded: None,
            fp_owner: None,
            fp_owner_cptr: 0,
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
/// Counter value when each CPU entered its scheduler (the shell's `cpus`).
pub static UP_SINCE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Time each CPU has spent waiting for an interrupt (the shell's `cpus`): in the scheduler's
/// idle wait, and in `exit::block`'s in-place wait of a vCPU alone on its CPU.
pub struct IdleClock {
    /// Counter ticks of settled waits; [`idle_ticks`] adds the last one.
    ticks: AtomicU64,
    /// When the last wait began (0: none since the last settlement).
    since: AtomicU64,
    /// When that wait ended (0: still waiting). The wake-up path only stores this, through
    /// the pointer its scheduler already holds: adding the interval up is left to the next
    /// wait's start ([`idle_begin`]) or a reader, because every instruction after a wake-up is
    /// part of the timer-interrupt latency.
    woke: AtomicU64,
}

static IDLE: [IdleClock; MAX_CPUS] = [const {
    IdleClock {
        ticks: AtomicU64::new(0),
        since: AtomicU64::new(0),
        woke: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// This CPU starts waiting for an interrupt at counter value `at` (settles the last wait).
pub(super) fn idle_begin(s: &CpuSched, at: u64) {
    let c = s.idle;
    let (from, to) = (
        c.since.load(Ordering::Relaxed),
        c.woke.swap(0, Ordering::Relaxed),
    );
    if from != 0 && to != 0 {
        c.ticks.fetch_add(to.wrapping_sub(from), Ordering::Relaxed);
    }
    c.since.store(at, Ordering::Relaxed);
}

/// This CPU's wait ended at counter value `at` (one store: see [`IdleClock::woke`]).
#[inline(always)]
pub(super) fn idle_end(s: &CpuSched, at: u64) {
    s.idle.woke.store(at, Ordering::Relaxed);
}

/// Counter ticks CPU `i` has spent waiting, up to `now`, the wait in progress included.
/// Racy by design (relaxed loads of three counters): a display figure.
pub fn idle_ticks(i: usize, now: u64) -> u64 {
    let Some(c) = IDLE.get(i) else {
        return 0;
    };
    let settled = c.ticks.load(Ordering::Relaxed);
    let last = match (
        c.since.load(Ordering::Relaxed),
        c.woke.load(Ordering::Relaxed),
    ) {
        (0, _) => 0,
        (from, 0) => now.saturating_sub(from),
        (from, to) => to.saturating_sub(from),
    };
    settled.wrapping_add(last)
}

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

pub(super) fn this_index() -> usize {
    cpu::this_cpu().map_or(0, |p| p.index)
}

pub(super) fn sched() -> &'static Mutex<CpuSched> {
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
    if let Some(since) = UP_SINCE.get(i) {
        since.store(timer::now(), Ordering::Relaxed);
    }
    if let Some(up) = CPU_UP.get(i) {
        up.store(true, Ordering::Release);
    }
    // A CPU that comes up after another one failed parks before it runs anything.
    super::halt::check();
    #[cfg(feature = "selftest")]
    crate::arch::aarch64::selftest::at_scheduler_entry(
        i,
        super::PLATFORM
            .get()
            .map_or(1, |p| p.cpus.len().min(MAX_CPUS)),
    );
    let next = {
        let mut s = sched().lock();
        schedule(&mut s, None)
    };
    cpu::run(next)
}

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
pub(super) fn schedule(s: &mut CpuSched, mut current: Option<(usize, &mut Vcpu)>) -> VcpuPtr {
    loop {
        let now = process_requests(s);
        let next = s.rq.pick();
        // The vCPU that exited is put (its state saved) when another one runs here, and also
        // when nothing runs and it is off (its VM stopped or resets, PSCI CPU_OFF): left
        // loaded, its timer would go on firing into a VM that no longer runs, and a pending
        // entry in its list registers keeps the virtual IRQ asserted, which ends every WFI
        // here at once on QEMU (its WFI wakes on a virtual interrupt even at EL2), so this CPU
        // would spin instead of idling. A blocked vCPU left loaded keeps its virtual timer
        // live, so its expiry wakes the wait below. (One call site: a second one, inlined or
        // not, made vm-switch in scripts/bench 10 to 25 instructions longer.)
        if let Some((cs, v)) = current.as_mut()
            && s.loaded == Some(*cs)
            && match next {
                Some(n) => n != *cs,
                None => s.rq.state(*cs) == Some(RunState::Off),
            }
        {
            put(s, *cs, v);
        }
        if let Some(n) = next {
            s.new_slice = true;
            return s.slots[n].ptr;
        }
        // Nothing runnable: idle until an interrupt.
        arm_timer(s, None, now);
        idle_begin(s, timer::now());
        timer::wait_for_interrupt();
        idle_end(s, timer::now());
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
    if v.debug.live {
        debug::save(&mut v.debug, s.index);
    }
    if v.pmu.live {
        crate::arch::aarch64::pmu::save(&mut v.pmu);
    }
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
pub(super) fn load(s: &mut CpuSched, slot: usize, v: &mut Vcpu) {
    let vm = super::vm_of(v);
    // A vCPU loaded before and not put (its VM stopped, or this vCPU was reset) may have left
    // its debug registers armed (a put disarms): disarm before anything else runs here.
    if s.loaded.is_some() && debug::owned(s.index) {
        debug::disarm(s.index);
    }
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
        s.fp_owner_cptr
    } else {
        guest::guest_cptr_fp_trapped()
    };
    // Guest self-hosted debug (vm::debug): a debug user's registers go into the hardware and
    // TDA stops trapping for it.
    if v.debug.wants_hw() {
        hw.mdcr &= !guest::MDCR_EL2_TDA;
        debug::load(&mut v.debug, s.index);
    }
    // A PMU user's counters (vm::pmu); the others' accesses trap and load them on first use.
    if v.pmu.user {
        crate::arch::aarch64::pmu::load(&mut v.pmu);
    }
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

/// A trapped debug-register write asked for the hardware (`Action::DebugSync`): a debug user
/// whose OS lock is clear gets its registers loaded and TDA stops trapping (its first use, or
/// an unlock); one that locked has them saved and TDA traps again (vm::debug).
pub(super) fn debug_sync(v: &mut Vcpu) {
    let s = sched().lock();
    let mdcr = super::vm_of(v).hw.mdcr;
    v.debug.sync_hw = false;
    if v.debug.wants_hw() && !v.debug.live {
        debug::load(&mut v.debug, s.index);
        guest::write_mdcr(mdcr & !guest::MDCR_EL2_TDA);
    } else if !v.debug.wants_hw() && v.debug.live {
        debug::save(&mut v.debug, s.index);
        guest::write_mdcr(mdcr);
    }
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
pub(super) fn relink_vtimer(lr: &mut Lr) {
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
pub(super) fn arm_timer(s: &CpuSched, running: Option<usize>, now: u64) {
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
    // A power-button press or release (kernel::lifecycle): whichever CPU's timer fires first
    // carries it out.
    if let Some(d) = super::lifecycle::next_button_deadline() {
        consider(d);
    }
    match next {
        Some(d) => timer::arm(d),
        None => timer::disarm(),
    }
}
