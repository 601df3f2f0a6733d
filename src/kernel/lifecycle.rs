//! Guest PSCI calls that change power state, and the VM lifecycle: boot-time start, stop,
//! reset, start and restart (the shell's), shutdown requests, statistics.

use core::sync::atomic::Ordering;

use log::{error, info};

use super::exit::block;
use super::halt::power_off;
use super::sched::{CPU_MPIDR, sched, this_index};
use super::{Vm, VmState};
use crate::arch::aarch64::{gic, timer};
use crate::vdev::vgic::KickSet;
use crate::vm::VcpuId;
use crate::vm::power;
use crate::vm::psci::{self, Call, Ret};
use crate::vm::sched::RunState;
use crate::vm::timer::VTIMER_INTID;
use crate::vm::vcpu::Vcpu;

fn set_ret(v: &mut Vcpu, value: i64) {
    let Ret(r) = Ret::x0(value);
    if let Some(x0) = r[0] {
        v.regs.x[0] = x0;
    }
}

pub(super) fn psci_call(vm: &'static Vm, v: &mut Vcpu, call: Call) -> bool {
    match call {
        Call::SystemOff => {
            stop_vm(vm, "PSCI SYSTEM_OFF");
            true
        }
        Call::SystemReset => {
            let _ = reset_vm(vm, "PSCI SYSTEM_RESET");
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
            let base = vm.ram.base().0;
            let ram = base..base + vm.config.memory_bytes;
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
                    set_ret(v, e.into());
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
/// was the last VM, powers the machine off (unless it must stay up for the shell).
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
        if !super::KEEP_UP.load(Ordering::Acquire) {
            info!("all VMs stopped; powering off");
            power_off();
        }
        info!("all VMs stopped; the machine stays up for the shell (`start VM`, `poweroff`)");
    }
    super::console_input::vm_stopped(vm);
}

/// At boot, once every VM is built: vCPU 0 of each VM that starts by itself is started at its
/// image with x0 = its device tree; a VM with `elvisor,autostart = <0>` stays stopped (and
/// the machine stays up when the last running VM stops, for the shell's `start`).
pub(super) fn boot_vms() {
    let mut running = 0;
    for vm in super::vms() {
        if vm.config.autostart {
            vm.stats().starts.store(1, Ordering::Relaxed);
            let _ = vm.power[0].cpu_on(vm.entry_ipa(), vm.fdt_ipa());
            running += 1;
        } else {
            vm.state.store(VmState::Stopped as u8, Ordering::Release);
            super::KEEP_UP.store(true, Ordering::Release);
            info!(
                "{} ({}) is not started (elvisor,autostart = <0>); the shell's `start` starts it",
                vm.id, vm.name
            );
        }
    }
    super::RUNNING_VMS.store(running, Ordering::Release);
}

/// Waits until every vCPU of `vm` (all powered off, and kicked) is off its physical CPU.
/// This CPU's own vCPUs are marked off here: the caller is the kernel on this CPU (a vCPU's
/// exit or the shell, in this CPU's interrupt handling), so none of them runs until the
/// scheduler's next pass, which takes them off (their power is off).
fn wait_parked(vm: &'static Vm) -> bool {
    let me = this_index();
    // The guest's own SYSTEM_RESET: this CPU's scheduler is free, and its other vCPUs of the
    // VM are taken off the run queue at once. The shell runs inside this CPU's interrupt
    // handling, which holds it: there the scheduler's next pass does it.
    if let Some(mut s) = sched().try_lock() {
        for i in 0..s.slots.len() {
            if core::ptr::eq(s.slots[i].vm, vm) {
                s.rq.set(i, RunState::Off);
            }
        }
    }
    for (i, parked) in vm.parked.iter().enumerate() {
        if vm.placement[i] == me {
            parked.store(true, Ordering::Release);
        }
    }
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
    all_parked
}

/// Gives a VM whose vCPUs are all parked a fresh start: devices and the vGIC reset, RAM and
/// images rewritten from the modules, a new device tree. The caller then starts vCPU 0.
fn renew(vm: &'static Vm) -> Result<(), alloc::string::String> {
    vm.mmio.lock().reset_all();
    {
        let mut vg = vm.vgic.lock();
        vg.reset();
        let _ = vg.set_hw(VTIMER_INTID, VcpuId(0), Some(VTIMER_INTID));
        while let Some(p) = vg.take_hw_deactivation() {
            gic::deactivate_raw(p);
        }
    }
    super::load_images(vm, super::Reload::Reset)
}

/// Starts a stopped VM afresh from its images (the shell's `start`): as a reset, and the VM
/// counts as running again.
pub(super) fn start_vm(vm: &'static Vm) -> Result<(), alloc::string::String> {
    if vm
        .state
        .compare_exchange(
            VmState::Stopped as u8,
            VmState::Resetting as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        return Err(alloc::format!("{} ({}) is not stopped", vm.id, vm.name));
    }
    for p in &vm.power {
        p.off();
    }
    kick_all(vm, KickSet::all(vm.power.len()));
    if !wait_parked(vm) {
        vm.state.store(VmState::Stopped as u8, Ordering::Release);
        return Err(alloc::format!(
            "{} ({}): a vCPU has not stopped yet; try again",
            vm.id,
            vm.name
        ));
    }
    if let Err(e) = renew(vm) {
        vm.state.store(VmState::Stopped as u8, Ordering::Release);
        return Err(alloc::format!("{} ({}): cannot start: {e}", vm.id, vm.name));
    }
    let stats = vm.stats();
    // (Its vCPUs are not running: nothing increments these meanwhile.)
    for c in &vm.exit_counters {
        c.clear();
    }
    let n = stats.starts.fetch_add(1, Ordering::Relaxed) + 1;
    super::RUNNING_VMS.fetch_add(1, Ordering::AcqRel);
    vm.state.store(VmState::Running as u8, Ordering::Release);
    let _ = vm.power[0].cpu_on(vm.entry_ipa(), vm.fdt_ipa());
    info!("{} ({}) started (start #{n})", vm.id, vm.name);
    kick_all(vm, KickSet::single(0));
    Ok(())
}

/// Resets a running VM from the shell, as its own SYSTEM_RESET would.
pub(super) fn shell_reset(vm: &'static Vm) -> Result<(), alloc::string::String> {
    if reset_vm(vm, "reset from the shell") {
        Ok(())
    } else {
        Err(alloc::format!("{} ({}) is not running", vm.id, vm.name))
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

/// SYSTEM_RESET of one VM (or the shell's `reset`): every vCPU stops (on every CPU), RAM and
/// images are reloaded, devices and the vGIC reset, then vCPU 0 starts again. Other VMs keep
/// running. False if the VM was not running.
fn reset_vm(vm: &'static Vm, why: &str) -> bool {
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
        return false;
    }
    let n = vm.reset_count.fetch_add(1, Ordering::Relaxed) + 1;
    info!("{} ({}): {why} (reset #{n})", vm.id, vm.name);
    for p in &vm.power {
        p.off();
    }
    for parked in &vm.parked {
        parked.store(false, Ordering::Release);
    }
    kick_all(vm, KickSet::all(vm.power.len()));
    if !wait_parked(vm) {
        // A vCPU that may still be running must not see its RAM, devices and vGIC rewritten
        // under it: the VM is stopped instead of reset (its vCPUs are all powered off, so the
        // stuck one parks whenever its CPU next looks), and says why.
        vm.state.store(VmState::Running as u8, Ordering::Release);
        stop_vm(vm, "reset abandoned: a vCPU did not stop");
        return true;
    }
    if let Err(e) = renew(vm) {
        error!("{} ({}): reset failed: {e}", vm.id, vm.name);
        vm.state.store(VmState::Running as u8, Ordering::Release);
        stop_vm(vm, "reset failed");
        return true;
    }
    vm.state.store(VmState::Running as u8, Ordering::Release);
    let _ = vm.power[0].cpu_on(vm.entry_ipa(), vm.fdt_ipa());
    let ticks = timer::now().wrapping_sub(started);
    kick_all(vm, KickSet::single(0));
    log_reset_stats(vm, n, ticks);
    true
}

/// Makes the vCPUs in `kicks` look at their state: a kick SGI for those on other CPUs.
/// Returns true when one of them lives on this CPU (the caller should reschedule).
pub(super) fn kick_all(vm: &Vm, kicks: KickSet) -> bool {
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

// ─── The power button ───────────────────────────────────────────────────────────────────
// Line 3 of each VM's emulated PL061 (`vdev::pl061`), described to the guest as QEMU virt's
// `gpio-keys` KEY_POWER (`vm::fdt::power_button_nodes`). Linux's gpio-keys takes the
// interrupt of either edge, waits its debounce interval (5 ms) and then reads the line, so a
// press must stay high until the guest has read it: the line is lowered no sooner than
// `BUTTON_HOLD_MS` after the press, and only once the guest has read it high from GPIODATA,
// re-checked every `BUTTON_RECHECK_MS`, but never later than `BUTTON_HOLD_MAX_MS` (a guest
// that ignores the button does not hold it down forever). The timed events run from the EL2
// timer of any CPU: `arm_timer` looks at `next_button_deadline`, and the timer interrupt calls
// `button_timers`.

use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;

use crate::arch::aarch64::sync::Mutex;
use crate::vdev::pl061::Pl061;
use crate::vm::layout;

/// The shortest press, in milliseconds of counter time.
const BUTTON_HOLD_MS: u64 = 100;
/// How often a press the guest has not read yet is looked at again.
const BUTTON_RECHECK_MS: u64 = 50;
/// The longest press.
const BUTTON_HOLD_MAX_MS: u64 = 2_000;

#[derive(Clone, Copy, Debug)]
enum ButtonEvent {
    /// Press the button (`elvisor.test-power-button`), and again every `every` ticks (0:
    /// once) while the VM runs.
    Press { every: u64 },
    /// Release it if the guest has read the press, or the longest press is over.
    Release { pressed_at: u64 },
}

#[derive(Clone, Copy, Debug)]
struct TimedButton {
    /// Counter value it is due at.
    at: u64,
    /// The VM's id.
    vm: u16,
    what: ButtonEvent,
}

static BUTTON_EVENTS: Mutex<Vec<TimedButton>> = Mutex::new(Vec::new());
/// The earliest `at` in `BUTTON_EVENTS` (u64::MAX: none), read by every `arm_timer`.
static BUTTON_NEXT: AtomicU64 = AtomicU64::new(u64::MAX);

fn ms_to_ticks(ms: u64) -> u64 {
    let t = u128::from(ms) * u128::from(timer::frequency()) / 1000;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// Queues `what` for VM `vm` at counter value `at`. With `poke`, makes this CPU's EL2 timer
/// fire at once, so that its scheduler re-arms it for the new deadline (not needed where the
/// scheduler runs next anyway: at boot, from the timer interrupt).
fn schedule_button(at: u64, vm: u16, what: ButtonEvent, poke: bool) {
    let mut ev = BUTTON_EVENTS.lock();
    ev.push(TimedButton { at, vm, what });
    BUTTON_NEXT.fetch_min(at, Ordering::AcqRel);
    drop(ev);
    if poke {
        timer::arm(timer::now());
    }
}

/// The counter value the next power-button event is due at, if any (for `arm_timer`).
#[inline(always)]
pub(super) fn next_button_deadline() -> Option<u64> {
    let d = BUTTON_NEXT.load(Ordering::Acquire);
    (d != u64::MAX).then_some(d)
}

/// Drives the VM's power-button line to `level` and tells the vGIC about the controller's
/// output. False if the VM has no power button.
fn drive_button(vm: &Vm, level: bool) -> bool {
    let mut kicks = KickSet::EMPTY;
    let mut bus = vm.mmio.lock();
    let Some(gpio) = bus.device_at::<Pl061>(layout::GPIO_BASE) else {
        return false;
    };
    gpio.set_input(layout::POWER_BUTTON_LINE, level);
    bus.irq_changes(|intid, l| {
        let mut vg = vm.vgic.lock();
        if let Ok(k) = vg.set_level(intid, VcpuId(0), l) {
            kicks = kicks.union(k);
        }
        kicks = kicks.union(vg.take_kicks());
    });
    drop(bus);
    // The SPI is routed to some vCPU: the one the vGIC names, or vCPU 0 to be sure a waiting
    // vCPU looks at it.
    if kicks.is_empty() {
        kicks = KickSet::single(0);
    }
    kick_all(vm, kicks);
    true
}

/// Presses the VM's power button (line 3 of its PL061 goes high) and schedules its release.
/// Returns false if the VM has no power button (`elvisor,power-button = <0>`). A press while
/// the button is still down changes nothing.
pub fn press_power_button(vm: &Vm) -> bool {
    press(vm, true)
}

fn press(vm: &Vm, poke: bool) -> bool {
    {
        let mut bus = vm.mmio.lock();
        match bus.device_at::<Pl061>(layout::GPIO_BASE) {
            None => return false,
            Some(g) if g.input(layout::POWER_BUTTON_LINE) => return true,
            Some(_) => {}
        }
    }
    let now = timer::now();
    if !drive_button(vm, true) {
        return false;
    }
    info!("{} ({}): power button pressed", vm.id, vm.name);
    schedule_button(
        now.saturating_add(ms_to_ticks(BUTTON_HOLD_MS)),
        vm.id.0,
        ButtonEvent::Release { pressed_at: now },
        poke,
    );
    true
}

/// Asks the VM to shut down cleanly: presses its power button (the guest's gpio-keys sees
/// KEY_POWER; what it does then is the guest's business). The management shell's `shutdown`.
pub fn request_shutdown(vm: &Vm) -> Result<(), &'static str> {
    if vm.state.load(Ordering::Acquire) == VmState::Stopped as u8 {
        return Err("the VM is not running");
    }
    if press_power_button(vm) {
        Ok(())
    } else {
        Err("this VM has no power button")
    }
}

/// `elvisor.test-power-button=<vm-name>@<ms>[:<every-ms>]` (a test aid): presses that VM's
/// button `ms` milliseconds of counter time after this call (boot), and with `every-ms` again
/// that often while the VM runs (a guest that was not listening yet hears a later press).
/// Returns why not, if it cannot.
pub(super) fn test_power_button(arg: &str) -> Result<(), &'static str> {
    let (name, when) = arg
        .rsplit_once('@')
        .ok_or("is not <vm-name>@<milliseconds>[:<every-milliseconds>]")?;
    let (ms, every) = match when.split_once(':') {
        Some((ms, every)) => (ms, Some(every)),
        None => (when, None),
    };
    let ms: u64 = ms.parse().map_err(|_| "has no milliseconds after '@'")?;
    let every = match every {
        Some(e) => match e.parse::<u64>() {
            Ok(e) if e > 0 => ms_to_ticks(e),
            _ => return Err("has no nonzero milliseconds after ':'"),
        },
        None => 0,
    };
    let vm = super::vms()
        .iter()
        .find(|vm| vm.name == name)
        .ok_or("names no VM")?;
    if !vm.config.power_button {
        return Err("names a VM without a power button");
    }
    schedule_button(
        timer::now().saturating_add(ms_to_ticks(ms)),
        vm.id.0,
        ButtonEvent::Press { every },
        false,
    );
    Ok(())
}

/// From the EL2 timer interrupt: carries out the power-button events that are due.
pub(super) fn button_timers() {
    let now = timer::now();
    if BUTTON_NEXT.load(Ordering::Acquire) > now {
        return;
    }
    let due: Vec<TimedButton> = {
        let mut ev = BUTTON_EVENTS.lock();
        let due = ev.iter().filter(|e| e.at <= now).copied().collect();
        ev.retain(|e| e.at > now);
        BUTTON_NEXT.store(
            ev.iter().map(|e| e.at).min().unwrap_or(u64::MAX),
            Ordering::Release,
        );
        due
    };
    for e in due {
        let Some(&vm) = super::vms().iter().find(|vm| vm.id.0 == e.vm) else {
            continue;
        };
        match e.what {
            ButtonEvent::Press { every } => {
                if vm.state.load(Ordering::Acquire) == VmState::Stopped as u8 {
                    continue;
                }
                let _ = press(vm, false);
                if every > 0 {
                    schedule_button(now.saturating_add(every), e.vm, e.what, false);
                }
            }
            ButtonEvent::Release { pressed_at } => {
                let seen = vm
                    .mmio
                    .lock()
                    .device_at::<Pl061>(layout::GPIO_BASE)
                    .is_some_and(|g| g.sampled_high(layout::POWER_BUTTON_LINE));
                let held = now.saturating_sub(pressed_at);
                if seen || held >= ms_to_ticks(BUTTON_HOLD_MAX_MS) {
                    drive_button(vm, false);
                    log::debug!("{} ({}): power button released", vm.id, vm.name);
                } else {
                    schedule_button(
                        now.saturating_add(ms_to_ticks(BUTTON_RECHECK_MS)),
                        e.vm,
                        e.what,
                        false,
                    );
                }
            }
        }
    }
}

/// The shell's `restart`: pulls the plug if the VM runs, then starts it afresh.
pub(super) fn restart_vm(vm: &'static Vm) -> Result<(), alloc::string::String> {
    if vm.state.load(Ordering::Acquire) == VmState::Running as u8 {
        stop_vm(vm, "restart from the shell");
    }
    start_vm(vm)
}
