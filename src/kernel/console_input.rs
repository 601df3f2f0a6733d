//! Console input: bytes from the physical UART routed to the VM with focus (the switch key
//! moves the focus), queued in front of its emulated PL011 with flow control, and the focus
//! moving on when the focused VM stops.
//!
//! ```text
//!  physical UART ──RX irq──> console_input ──> InputRouter ──byte──> focused VM's PL011:
//!    (masked while the                          │ switch key x3       PendingInput queue
//!     focused VM's queue                        └──> focus to the     ──(receiver on, room)──>
//!     is full: flow control)                         next running VM  receive FIFO ──> guest
//! ```
//!
//! The queue lives in the PL011 model (`vdev::pl011`), which takes a byte from it whenever its
//! receiver is on and has room, including on the guest's own UARTDR reads and UARTCR/UARTLCR_H
//! writes; so a guest with its FIFO disabled, polling UARTFR.RXFE, gets every byte. Bytes queued
//! for one VM stay with it when the focus moves, and survive its reset; they are dropped only
//! when it stops for good.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use log::{info, warn};

use crate::arch::aarch64::sync::Mutex;

use super::irq::sample_device_lines;
use super::lifecycle::kick_all;
use super::{Vm, VmState};
use crate::console::{Input, InputRouter, SWITCH_PRESSES, key_name};
use crate::vdev::vgic::KickSet;
use crate::vm::VcpuId;

static INPUT: Mutex<InputRouter> = Mutex::new(InputRouter::new());
/// Set while console input waits in the physical UART because the focused VM's queue is full.
static RX_THROTTLED: AtomicBool = AtomicBool::new(false);
/// Index of the VM console input goes to.
static FOCUS: AtomicUsize = AtomicUsize::new(0);

/// Bytes a VM's queue must have room for before another byte is read from the physical UART:
/// the most one byte can release (the held switch-key bytes and itself).
const ROOM_FOR_ONE_BYTE: usize = SWITCH_PRESSES as usize;

/// At boot, once the VMs exist: the switch key from `elvisor.conswitch=` and the focus on the
/// first VM.
pub(super) fn start(bootargs: &str) {
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
    let vms = super::vms();
    let Some(first) = vms.first() else {
        return;
    };
    FOCUS.store(0, Ordering::Relaxed);
    first.mmio.lock().console_focus(true);
    if vms.len() > 1 {
        info!(
            "console input goes to {} ({}); {} three times switches",
            first.id,
            first.name,
            key_name(router.key())
        );
    }
}

fn running(vm: &Vm) -> bool {
    vm.state.load(Ordering::Acquire) != VmState::Stopped as u8
}

/// Moves console input from the physical UART to the VM with focus (its PL011's input queue),
/// only as far as that queue has room: the rest stays in the physical UART, whose receive
/// interrupt is masked until the guest reads (flow control, so nothing typed is lost however
/// small the guest's FIFO is).
pub(super) fn console_input() {
    let vms = super::vms();
    if vms.is_empty() {
        return;
    }
    let mut router = INPUT.lock();
    while let Some(&vm) = vms.get(FOCUS.load(Ordering::Relaxed)) {
        // Room for the most this byte can release (a stopped VM's input is dropped).
        if running(vm) && vm.mmio.lock().console_room() < ROOM_FOR_ONE_BYTE {
            super::console_uart_rx(false);
            RX_THROTTLED.store(true, Ordering::Relaxed);
            break;
        }
        let Some(b) = crate::console::get_byte() else {
            break;
        };
        let key = router.key();
        router.feed(b, |ev| match ev {
            Input::Byte(byte) => {
                let Some(&vm) = vms.get(FOCUS.load(Ordering::Relaxed)) else {
                    return;
                };
                if !running(vm) {
                    return;
                }
                // (Room was checked above: the queue takes it.)
                let _ = vm.mmio.lock().console_input(byte);
                sample_device_lines(vm, VcpuId(0));
                kick_all(vm, KickSet::single(0));
            }
            Input::Switch => switch_focus(None, key),
            Input::Held => {}
        });
    }
}

/// Moves the focus to the next running VM after the focused one (`stopped`: the focused VM,
/// which just stopped) and says where on the console.
fn switch_focus(stopped: Option<&Vm>, key: u8) {
    let vms = super::vms();
    let old = FOCUS.load(Ordering::Relaxed);
    let next = (1..=vms.len())
        .map(|i| (old + i) % vms.len())
        .find(|&i| vms.get(i).is_some_and(|vm| running(vm)));
    let Some(new) = next else {
        return;
    };
    let (Some(&from), Some(&to)) = (vms.get(old), vms.get(new)) else {
        return;
    };
    if new == old {
        info!(
            "console input stays with {} ({}): no other VM is running",
            to.id, to.name
        );
        return;
    }
    from.mmio.lock().console_focus(false);
    FOCUS.store(new, Ordering::Relaxed);
    match stopped {
        Some(vm) => info!(
            "console input goes to {} ({}), as {} ({}) stopped; {} three times switches",
            to.id,
            to.name,
            vm.id,
            vm.name,
            key_name(key)
        ),
        None => info!("console input goes to {} ({})", to.id, to.name),
    }
    to.mmio.lock().console_focus(true);
    // Input held back for the old VM's full queue may go to the new one.
    if RX_THROTTLED.swap(false, Ordering::Relaxed) {
        super::console_uart_rx(true);
    }
}

/// A VM stopped for good: its queued input is dropped, and the focus moves on if it had it.
pub(super) fn vm_stopped(vm: &Vm) {
    vm.mmio.lock().console_clear_input();
    let router = INPUT.lock();
    if FOCUS.load(Ordering::Relaxed) == usize::from(vm.id.0) {
        switch_focus(Some(vm), router.key());
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
    if FOCUS.load(Ordering::Relaxed) == usize::from(vm.id.0)
        && vm.mmio.lock().console_room() >= ROOM_FOR_ONE_BYTE
    {
        RX_THROTTLED.store(false, Ordering::Relaxed);
        super::console_uart_rx(true);
    }
}
