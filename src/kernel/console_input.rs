//! Console input: bytes from the physical UART routed to the VM with focus (the switch key
//! moves the focus, round the running VMs and the management shell), queued in front of its
//! emulated PL011 with flow control, or handed to the shell; the focus moving on when the
//! focused VM stops.
//!
//! ```text
//!  physical UART ──RX irq──> console_input ──> InputRouter ──byte──> focused VM's PL011:
//!    (masked while the                          │ switch key x3       PendingInput queue
//!     focused VM's queue                        └──> focus to the     ──(receiver on, room)──>
//!     is full: flow control)                         next running VM  receive FIFO ──> guest
//!                                                    or the shell     (kernel::shell)
//! ```
//!
//! The queue lives in the PL011 model (`vdev::pl011`), which takes a byte from it whenever its
//! receiver is on and has room, including on the guest's own UARTDR reads and UARTCR/UARTLCR_H
//! writes; so a guest with its FIFO disabled, polling UARTFR.RXFE, gets every byte. Bytes queued
//! for one VM stay with it when the focus moves, and survive its reset; they are dropped only
//! when it stops for good.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use log::{info, warn};

use crate::arch::aarch64::sync::Mutex;

use super::irq::sample_device_lines;
use super::lifecycle::kick_all;
use super::{Vm, VmState};
use crate::console::{DEFAULT_SWITCH_KEY, Input, InputRouter, SWITCH_PRESSES, key_name};
use crate::vdev::vgic::KickSet;
use crate::vm::VcpuId;

static INPUT: Mutex<InputRouter> = Mutex::new(InputRouter::new());
/// The switch key, for messages (the router has its own copy).
static KEY: AtomicU8 = AtomicU8::new(DEFAULT_SWITCH_KEY);
/// Set while console input waits in the physical UART because the focused VM's queue is full.
static RX_THROTTLED: AtomicBool = AtomicBool::new(false);
/// Where console input goes: a VM's index, or the number of VMs for the shell (the last stop
/// of the focus cycle).
static FOCUS: AtomicUsize = AtomicUsize::new(0);
/// Held while the focus moves and while a byte is handed to the focused VM, so that a byte
/// never goes to a VM that has lost the focus. (Not held while the shell runs a command:
/// its commands move the focus themselves.)
static FOCUS_LOCK: Mutex<()> = Mutex::new(());

/// Bytes a VM's queue must have room for before another byte is read from the physical UART:
/// the most one byte can release (the held switch-key bytes and itself).
const ROOM_FOR_ONE_BYTE: usize = SWITCH_PRESSES as usize;

/// The focus index of the shell.
fn shell_index() -> usize {
    super::vms().len()
}

/// The switch key.
pub(super) fn switch_key() -> u8 {
    KEY.load(Ordering::Relaxed)
}

/// At boot, once the VMs exist: the switch key from `elvisor.conswitch=` and the focus on the
/// first running VM (the shell when none runs).
pub(super) fn start(bootargs: &str) {
    {
        let mut router = INPUT.lock();
        if let Some(v) = crate::console::bootarg(bootargs, "elvisor.conswitch") {
            match crate::console::switch_key(v) {
                Ok(key) => router.set_key(key),
                Err(why) => warn!(
                    "elvisor.conswitch={v} {why}; the console switch key stays {}",
                    key_name(router.key())
                ),
            }
        }
        KEY.store(router.key(), Ordering::Relaxed);
    }
    if let Some(v) = crate::console::bootarg(bootargs, "elvisor.console-tags")
        && let Err(why) = crate::console::set_console_tags(v)
    {
        warn!("elvisor.console-tags={v} {why}; the focused VM's output stays untagged");
    }
    let vms = super::vms();
    let _g = FOCUS_LOCK.lock();
    match vms.iter().position(|vm| running(vm)) {
        Some(i) => {
            FOCUS.store(i, Ordering::Relaxed);
            let vm = vms[i];
            vm.mmio.lock().console_focus(true);
            info!(
                "console input goes to {} ({}); {} three times switches",
                vm.id,
                vm.name,
                key_name(switch_key())
            );
        }
        None => {
            FOCUS.store(shell_index(), Ordering::Relaxed);
            info!("console input goes to the shell: no VM is running");
            gain(shell_index());
        }
    }
}

fn running(vm: &Vm) -> bool {
    vm.state.load(Ordering::Acquire) != VmState::Stopped as u8
}

/// Moves console input from the physical UART to where the focus is: the VM with focus (its
/// PL011's input queue), only as far as that queue has room, the rest staying in the physical
/// UART, whose receive interrupt is masked until the guest reads (flow control, so nothing
/// typed is lost however small the guest's FIFO is); or the shell, which takes every byte.
/// (Cold and out of line: it must not change the code of the interrupt paths around it.)
#[cold]
#[inline(never)]
pub(super) fn console_input() {
    let vms = super::vms();
    if vms.is_empty() {
        return;
    }
    loop {
        // Room for the most this byte can release (a stopped VM's input is dropped). Checked,
        // and the UART's receive interrupt masked when there is none, under the focus lock and
        // the VM's bus lock (the documented order): a guest read that makes room is either
        // seen by this check or comes after it, when its exit finds RX_THROTTLED set and
        // unthrottles (console_unthrottle, under the same bus lock); a focus switch is either
        // seen here or comes after, and unthrottles. Without the locks, a read between the
        // check and the store left the UART masked with room in the queue: a lost wake-up.
        {
            let _focus = FOCUS_LOCK.lock();
            if let Some(&vm) = vms.get(FOCUS.load(Ordering::Relaxed))
                && running(vm)
            {
                let bus = vm.mmio.lock();
                if bus.console_room() < ROOM_FOR_ONE_BYTE {
                    RX_THROTTLED.store(true, Ordering::Relaxed);
                    super::console_uart_rx(false);
                    break;
                }
            }
        }
        let Some(b) = crate::console::get_byte() else {
            break;
        };
        // The router's events are carried out after its lock is let go: a byte for the shell
        // may run a command that stops a VM, and that moves the focus.
        let mut events = [Input::Held; SWITCH_PRESSES as usize + 1];
        let mut n = 0;
        INPUT.lock().feed(b, |ev| {
            if let Some(slot) = events.get_mut(n) {
                *slot = ev;
                n += 1;
            }
        });
        for ev in events.iter().take(n) {
            match *ev {
                Input::Byte(byte) => deliver(byte),
                Input::Switch => switch_focus(None),
                Input::Held => {}
            }
        }
    }
}

/// One byte of input to where the focus is.
fn deliver(byte: u8) {
    let vms = super::vms();
    let guard = FOCUS_LOCK.lock();
    match vms.get(FOCUS.load(Ordering::Relaxed)) {
        Some(&vm) => {
            if !running(vm) {
                return;
            }
            // (Room was checked before the byte was read: the queue takes it.)
            let _ = vm.mmio.lock().console_input(byte);
            drop(guard);
            sample_device_lines(vm, VcpuId(0));
            kick_all(vm, KickSet::single(0));
        }
        None => {
            drop(guard);
            super::shell::input(byte);
        }
    }
}

/// The focus arrives at `index` (a VM or the shell).
fn gain(index: usize) {
    match super::vms().get(index) {
        Some(vm) => vm.mmio.lock().console_focus(true),
        None => {
            // Every VM's lines are marked with its name while the shell has the console.
            crate::console::set_vm_prefixes(true);
            super::shell::focus(true);
        }
    }
}

/// The focus leaves `index`.
fn lose(index: usize) {
    let vms = super::vms();
    match vms.get(index) {
        Some(vm) => vm.mmio.lock().console_focus(false),
        None => {
            super::shell::focus(false);
            crate::console::set_vm_prefixes(vms.len() > 1);
        }
    }
}

/// Moves the focus from where it is to `new`, and says so (`stopped`: the VM that had it and
/// stopped). The caller holds [`FOCUS_LOCK`].
fn move_focus(new: usize, stopped: Option<&Vm>) {
    let vms = super::vms();
    let old = FOCUS.load(Ordering::Relaxed);
    lose(old);
    FOCUS.store(new, Ordering::Relaxed);
    let key = key_name(switch_key());
    match (vms.get(new), stopped) {
        (Some(to), Some(vm)) => info!(
            "console input goes to {} ({}), as {} ({}) stopped; {key} three times switches",
            to.id, to.name, vm.id, vm.name
        ),
        (Some(to), None) => info!("console input goes to {} ({})", to.id, to.name),
        (None, Some(vm)) => info!(
            "console input goes to the shell, as {} ({}) stopped; {key} three times switches",
            vm.id, vm.name
        ),
        (None, None) => info!("console input goes to the shell"),
    }
    gain(new);
    // Input held back for the old VM's full queue may go to the new one.
    if RX_THROTTLED.swap(false, Ordering::Relaxed) {
        super::console_uart_rx(true);
    }
}

/// Moves the focus on: the switch key goes round the running VMs and the shell; when the
/// focused VM stops (`stopped`), the focus goes to the next running VM, else to the shell.
fn switch_focus(stopped: Option<&Vm>) {
    let vms = super::vms();
    let _g = FOCUS_LOCK.lock();
    let old = FOCUS.load(Ordering::Relaxed);
    let stops = vms.len() + 1;
    let next_vm = (1..stops)
        .map(|i| (old + i) % stops)
        .find(|&i| vms.get(i).is_some_and(|vm| running(vm)));
    let new = match (stopped, next_vm) {
        (Some(_), next) => next.unwrap_or(shell_index()),
        // The shell is the stop after the last VM.
        (None, Some(next)) if old < vms.len() && next <= old => shell_index(),
        (None, Some(next)) => next,
        (None, None) => shell_index(),
    };
    if new == old {
        info!("console input stays with the shell: no VM is running");
        return;
    }
    move_focus(new, stopped);
}

/// The shell's `focus VM`.
pub(super) fn focus_vm(vm: &Vm) -> Result<(), alloc::string::String> {
    let _g = FOCUS_LOCK.lock();
    if !running(vm) {
        return Err(alloc::format!("{} ({}) is not running", vm.id, vm.name));
    }
    let index = usize::from(vm.id.0);
    if FOCUS.load(Ordering::Relaxed) != index {
        move_focus(index, None);
    }
    Ok(())
}

/// Whether `vm` has the console input.
pub(super) fn has_focus(vm: &Vm) -> bool {
    FOCUS.load(Ordering::Relaxed) == usize::from(vm.id.0)
}

/// A VM stopped for good: its queued input is dropped, and the focus moves on if it had it.
pub(super) fn vm_stopped(vm: &Vm) {
    vm.mmio.lock().console_clear_input();
    if FOCUS.load(Ordering::Relaxed) == usize::from(vm.id.0) {
        switch_focus(Some(vm));
    }
}

/// After a guest MMIO access: if input was held back, let the UART interrupt again once
/// the focused VM's queue has room. (Inline: on the I/O fast path it is one load and a
/// branch.)
#[inline(always)]
pub(super) fn console_unthrottle(vm: &Vm) {
    if RX_THROTTLED.load(Ordering::Relaxed) {
        console_unthrottle_slow(vm);
    }
}

#[cold]
fn console_unthrottle_slow(vm: &Vm) {
    if FOCUS.load(Ordering::Relaxed) == usize::from(vm.id.0) {
        // Under the bus lock, as the throttling in `console_input` (see there).
        let bus = vm.mmio.lock();
        if bus.console_room() >= ROOM_FOR_ONE_BYTE {
            RX_THROTTLED.store(false, Ordering::Relaxed);
            super::console_uart_rx(true);
        }
    }
}
