//! Guest PSCI calls that change power state, and the VM lifecycle: stop, reset, statistics.

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
    super::console_input::vm_stopped(vm);
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
