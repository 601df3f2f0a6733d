//! Rust side of the exception vectors: the guest-exit entry point and the fatal handler for
//! exceptions taken at EL2.

use aarch64_cpu::registers::{ELR_EL2, ESR_EL2, FAR_EL2, HPFAR_EL2, SPSR_EL2};
use tock_registers::interfaces::Readable;

use super::esr::Esr;
use super::fatal::{El2Fault, ImageMap, classify, vector_name};
use super::handlers::{self, Next, Role};
use super::vectors::{EXIT_FIQ, EXIT_IRQ, EXIT_SERROR, EXIT_SYNC};
use crate::vm::vcpu::{GuestRegs, Vcpu};

pub use super::handlers::ExitKind;

/// The synchronous-exit fast path, called by the lower-EL sync vector with only the
/// caller-saved registers in the frame (see vectors.rs): returns `regs` when the exit was
/// handled, `regs | 1` to take the full path. Must not touch the frame's x19..x28.
#[unsafe(no_mangle)]
extern "C" fn elvisor_sync_fast(regs: *mut GuestRegs) -> usize {
    let esr = Esr(ESR_EL2.get());
    // SAFETY: `regs` is what SP_EL2 pointed at while the guest ran, which `enter_guest`'s
    // contract makes the frame of a live vCPU; `GuestRegs` is the first field of the
    // `#[repr(C)]` `Vcpu` (asserted in vm::vcpu), so the cast recovers the vCPU. Only this CPU
    // runs it, and this reference ends here.
    let vcpu = unsafe { &mut *regs.cast::<Vcpu>() };
    let handled = handlers::fast_sync(vcpu, esr, false);
    regs as usize | usize::from(!handled)
}

/// The full exit path, called by the lower-EL vectors with the whole frame saved.
#[unsafe(no_mangle)]
extern "C" fn elvisor_exit(regs: *mut GuestRegs, kind: u64) -> *mut GuestRegs {
    if kind == EXIT_SYNC {
        let esr = Esr(ESR_EL2.get());
        {
            // SAFETY: as in `elvisor_sync_fast`; this reference ends in this block.
            let vcpu = unsafe { &mut *regs.cast::<Vcpu>() };
            // The whole frame is saved now: the fast handlers take exits whose register is
            // one of x19..x28, which the first attempt had to refuse.
            // (Only where the register can have been the reason: hypercalls never are.)
            if matches!(esr.ec(), super::esr::ec::SYS64 | super::esr::ec::DABT_LOWER)
                && handlers::fast_sync(vcpu, esr, true)
            {
                return regs;
            }
        }
        return slow_exit(regs, ExitKind::Sync(esr));
    }
    let kind = match kind {
        EXIT_IRQ => ExitKind::Irq,
        EXIT_FIQ => ExitKind::Fiq,
        EXIT_SERROR => ExitKind::SError(Esr(ESR_EL2.get())),
        _ => ExitKind::Irq,
    };
    slow_exit(regs, kind)
}

#[inline(never)]
fn slow_exit(regs: *mut GuestRegs, kind: ExitKind) -> *mut GuestRegs {
    // SAFETY: as in `elvisor_sync_fast`: the frame of the live vCPU that exited.
    let vcpu = unsafe { &mut *regs.cast::<Vcpu>() };
    match handlers::handle_exit(&mut *vcpu, kind) {
        Next::Resume => &mut vcpu.regs,
        Next::Switch(next) => {
            // SAFETY: `handle_exit` returns a vCPU of this CPU's run queue; the reference to
            // the exiting vCPU is not used again, so this is the only live one.
            let next = unsafe { next.get() };
            handlers::enter(next);
            &mut next.regs
        }
    }
}

/// Registers pushed by the fatal vector.
#[repr(C)]
pub struct FatalFrame {
    pub x: [u64; 31],
    pub pad: u64,
}

/// An exception taken at EL2: a hypervisor bug. Report it in words where the syndrome says
/// what happened (stack overflow, W^X), then the registers and a backtrace; every CPU parks
/// (kernel::halt).
#[unsafe(no_mangle)]
extern "C" fn elvisor_el2_fatal(frame: *const FatalFrame, kind: u64) -> ! {
    // The syndrome first, before anything here can fault and overwrite it.
    let (esr, elr, far, hpfar, spsr) = (
        ESR_EL2.get(),
        ELR_EL2.get(),
        FAR_EL2.get(),
        HPFAR_EL2.get(),
        SPSR_EL2.get(),
    );
    let what = if kind == 0 {
        let image = super::ram::image_layout();
        let map = ImageMap {
            text: (image.text.base.0, image.text.end().0),
            data: (image.rodata.base.0, image.image.end().0),
        };
        classify(esr, far, &map, super::cpu::guard_of(far))
    } else {
        El2Fault::Other
    };
    let summary = Summary { what, kind };
    match handlers::halt_begin() {
        Role::Report => {}
        Role::Follow(first) => handlers::halt_follow(first, Some(&summary)),
        Role::Nested => handlers::halt_nested(),
    }
    let me = super::cpu::this_cpu().map_or(0, |p| p.index);
    crate::println!("elvisor: FATAL on cpu{me}: {summary}");
    crate::println!(
        "  {}: ESR_EL2={esr:#x} ELR_EL2={elr:#x} FAR_EL2={far:#x} HPFAR_EL2={hpfar:#x} SPSR_EL2={spsr:#x}",
        vector_name(kind)
    );
    // SAFETY: the fatal vector passes the frame it just pushed on the exception stack.
    let f = unsafe { &*frame };
    for (i, pair) in f.x.chunks(2).enumerate() {
        match pair {
            [a, b] => crate::println!("  x{:<2}={:#018x} x{:<2}={:#018x}", 2 * i, a, 2 * i + 1, b),
            [a] => crate::println!("  x{:<2}={:#018x}", 2 * i, a),
            _ => {}
        }
    }
    backtrace(&[("pc", elr), ("lr", f.x[30])], f.x[29]);
    handlers::halt_finish()
}

/// The first line of a fatal report: the fault in words, or the vector taken.
struct Summary {
    what: El2Fault,
    kind: u64,
}

impl core::fmt::Display for Summary {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.what {
            El2Fault::Other => write!(f, "{} at EL2", vector_name(self.kind)),
            what => write!(f, "{what}"),
        }
    }
}

/// Most frames [`backtrace`] walks, and most lines it prints.
const BACKTRACE_WALK: usize = 256;
const BACKTRACE_LINES: usize = 32;

/// Walks the AArch64 frame-pointer chain (each frame: [fp, lr]) from `fp`, printing return
/// addresses after the `first` ones given (the fatal handler's pc and lr). A run of frames with
/// the same return address (a recursion) prints as one line. Only follows frames inside the
/// image's stack area and outside its guard pages, so a corrupt chain ends the walk instead
/// of faulting. `llvm-addr2line -e <the ELF> ADDR` names the functions.
pub fn backtrace(first: &[(&str, u64)], mut fp: u64) {
    unsafe extern "C" {
        static __stacks_start: u8;
        static __stacks_end: u8;
    }
    let lo = core::ptr::addr_of!(__stacks_start) as u64;
    let hi = core::ptr::addr_of!(__stacks_end) as u64;
    let load = super::boot::load_address();
    if load == super::boot::LINK_BASE {
        crate::println!("backtrace:");
    } else {
        // addr2line wants link addresses: subtract the difference.
        crate::println!(
            "backtrace: (image at {load:#x}, linked at {:#x}: subtract {:#x} for addr2line)",
            super::boot::LINK_BASE,
            load.wrapping_sub(super::boot::LINK_BASE)
        );
    }
    for (name, addr) in first {
        crate::println!("  {name:<3} {addr:#x}");
    }
    let (mut last, mut repeats, mut lines) = (0u64, 0usize, 0usize);
    for depth in 0..BACKTRACE_WALK {
        if fp < lo
            || fp.saturating_add(16) > hi
            || fp & 7 != 0
            || super::cpu::guard_of(fp).is_some()
            || super::cpu::guard_of(fp + 8).is_some()
        {
            break;
        }
        // SAFETY: `fp` is 8-byte aligned, inside the stacks region and outside the guard
        // pages, so the word is mapped.
        let next = unsafe { (fp as *const u64).read_volatile() };
        // SAFETY: as above for the word after it (checked against the guard pages too).
        let lr = unsafe { ((fp + 8) as *const u64).read_volatile() };
        if lr == 0 {
            break;
        }
        if lr == last {
            repeats += 1;
        } else {
            repeated(repeats, last);
            repeats = 0;
            if lines == BACKTRACE_LINES {
                crate::println!("  (more frames)");
                return;
            }
            crate::println!("  #{depth:<2} {lr:#x}");
            lines += 1;
            last = lr;
        }
        if next <= fp {
            break;
        }
        fp = next;
    }
    repeated(repeats, last);
}

fn repeated(n: usize, lr: u64) {
    if n > 0 {
        crate::println!("  ... {n} more frame(s) returning to {lr:#x}");
    }
}

/// Current frame pointer, for a backtrace from Rust code (the panic handler).
pub fn frame_pointer() -> u64 {
    let fp: u64;
    // SAFETY: reads x29 only.
    unsafe {
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    fp
}

/// The syndrome registers, for the panic report.
pub fn fault_registers() -> [(&'static str, u64); 4] {
    [
        ("ESR_EL2", ESR_EL2.get()),
        ("ELR_EL2", ELR_EL2.get()),
        ("FAR_EL2", FAR_EL2.get()),
        ("HPFAR_EL2", HPFAR_EL2.get()),
    ]
}
