//! Console input: bytes from the physical UART routed to the focused VM's PL011, with flow
//! control.

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use log::info;

use crate::arch::aarch64::sync::Mutex;

use super::Vm;
use super::irq::sample_device_lines;
use super::lifecycle::kick_all;
use crate::console::Input;
use crate::vdev::vgic::KickSet;
use crate::vm::VcpuId;

static INPUT: Mutex<crate::console::InputRouter> = Mutex::new(crate::console::InputRouter::new());
/// Set while console input waits in the physical UART because the VM's FIFO is full.
static RX_THROTTLED: AtomicBool = AtomicBool::new(false);
/// Index of the VM console input goes to.
static FOCUS: AtomicU8 = AtomicU8::new(0);

/// Moves console input from the physical UART into the VM with focus (its emulated PL011's
/// receive FIFO), only as far as that FIFO has room: the rest stays in the physical UART,
/// whose receive interrupt is masked until the guest reads (flow control, so nothing typed
/// is lost however small the guest's FIFO is).
pub(super) fn console_input() {
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
pub(super) fn console_unthrottle(vm: &Vm) {
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
