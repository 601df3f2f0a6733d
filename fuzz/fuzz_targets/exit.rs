//! Fuzz target `exit`: the synchronous-exit dispatcher (`vm::exit::handle_sync`) over a VM's
//! real device bus (the emulated PL011 and the vGIC's GICD and GICR windows, at the addresses
//! `vm::layout` gives them), for any sequence of syndromes, fault addresses and register values.
//!
//! Properties: nothing panics; an exit writes only the registers its instruction may write
//! (an emulated load its Rt, a system-register read its Rt, an SMCCC call x0..x3) and nothing
//! when it injects an exception; the PC moves past the instruction exactly when it is emulated
//! (HVC: ELR already past it; SMC: +4 even when refused); a 32-bit load leaves the upper half of
//! Rt clear; an injected data abort reports the faulting address; SMCCC answers agree with the
//! fast path (`psci::fast_call`).
#![no_main]

use core::sync::atomic::AtomicU32;

use arbitrary::Arbitrary;
use elvisor::arch::aarch64::esr::{self, Esr, Exit, ec};
use elvisor::mm::GuestPhysAddr;
use elvisor::vdev::pl011::{Pl011, Pl011Backend};
use elvisor::vdev::vgic::{GicVersion, GicdWindow, GicrWindow, SharedVgic, Vgic, VgicConfig};
use elvisor::vdev::{MmioBus, VcpuId};
use elvisor::vm::exit::{self, Action, ExitCtx, Fault};
use elvisor::vm::layout;
use elvisor::vm::psci;
use elvisor::vm::sysreg::DebugShadow;
use elvisor::vm::timer::PhysTimer;
use elvisor::vm::vcpu::GuestRegs;
use libfuzzer_sys::fuzz_target;

/// Exception classes a guest can cause, so most inputs reach a handler.
const CLASSES: [u8; 12] = [
    ec::HVC64,
    ec::SMC64,
    ec::DABT_LOWER,
    ec::DABT_LOWER,
    ec::SYS64,
    ec::SYS64,
    ec::IABT_LOWER,
    ec::WFX,
    ec::FP_ASIMD,
    ec::SVE,
    ec::SME,
    ec::UNKNOWN,
];

#[derive(Arbitrary, Debug)]
struct ExitIn {
    /// Index into CLASSES, or past it: the raw EC bits of `esr`.
    class: u8,
    esr: u64,
    /// Which window the fault address falls in (or none), and where in it.
    window: u8,
    offset: u32,
    far: u64,
    regs: [u64; 6],
    counter: u64,
    vcpu: u8,
}

struct Sink;
impl Pl011Backend for Sink {
    fn tx(&mut self, _byte: u8) {}
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
fn counter() -> u64 {
    u64::from(COUNTER.load(core::sync::atomic::Ordering::Relaxed))
}

fuzz_target!(|input: (bool, Vec<ExitIn>)| {
    let (v3, exits) = input;
    let version = if v3 { GicVersion::V3 } else { GicVersion::V2 };
    let vgic: SharedVgic = std::sync::Arc::new(elvisor::arch::aarch64::sync::Mutex::new(
        Vgic::new(&VgicConfig {
            version,
            nr_spis: 64,
            mpidrs: &[0, 1],
        })
        .expect("vGIC"),
    ));
    let mut bus = MmioBus::new();
    bus.add_pl011(
        layout::UART_BASE,
        Box::new(Pl011::new(Box::new(Sink))),
        Some(layout::UART_INTID),
    )
    .expect("bus");
    bus.add(layout::GICD_BASE, Box::new(GicdWindow::new(vgic.clone())))
        .expect("bus");
    if v3 {
        bus.add(layout::GICR_BASE, Box::new(GicrWindow::new(vgic.clone())))
            .expect("bus");
    }
    let bus = elvisor::arch::aarch64::sync::Mutex::new(bus);
    let mut regs = GuestRegs {
        elr: 0x4008_0000,
        ..Default::default()
    };
    let mut debug = DebugShadow::default();
    let mut ptimer = PhysTimer::default();
    let budget = AtomicU32::new(exit::WARN_BUDGET);

    for e in exits.iter().take(128) {
        let class = CLASSES
            .get(usize::from(e.class))
            .copied()
            .unwrap_or(Esr(e.esr).ec());
        let raw = (e.esr & !(0x3f << 26)) | (u64::from(class) << 26);
        let base = match e.window % 5 {
            0 => layout::UART_BASE.0,
            1 => layout::GICD_BASE.0,
            2 => layout::GICR_BASE.0,
            3 => layout::RAM_BASE.0,
            _ => e.far,
        };
        let ipa = base.wrapping_add(u64::from(e.offset % 0x4_1000));
        for (i, &v) in e.regs.iter().enumerate() {
            // Spread the values over x0..x3 (SMCCC), a load/store register and x30.
            regs.x[[0, 1, 2, 3, (e.offset >> 16) as usize % 31, 30][i]] = v;
        }
        COUNTER.store(e.counter as u32, core::sync::atomic::Ordering::Relaxed);
        let before = regs.clone();
        let action = {
            let mut ctx = ExitCtx {
                regs: &mut regs,
                mmio: &bus,
                debug: &mut debug,
                ptimer: &mut ptimer,
                counter,
                id_read: |crm, op2| 0x1111_0000_0000_0000 | u64::from(crm) << 8 | u64::from(op2),
                vcpu: VcpuId(u16::from(e.vcpu % 3)),
                vm_name: "fuzz",
                warn_budget: &budget,
                ram_base: layout::RAM_BASE,
                ram_bytes: 64 << 20,
            };
            exit::handle_sync(&mut ctx, Esr(raw), || Fault {
                far: e.far,
                ipa: GuestPhysAddr(ipa),
            })
        };
        let esr = Esr(raw);
        // Registers this exit may have written.
        let writable: Vec<usize> = match (esr::decode(esr), action) {
            (Exit::Hvc { .. } | Exit::Smc { .. }, Action::Resume) => vec![0, 1, 2, 3],
            (Exit::DataAbort(da), Action::Resume) if !da.write => vec![usize::from(da.srt)],
            (Exit::SysReg(acc), Action::Resume | Action::TimerChanged) if acc.read => {
                vec![usize::from(acc.rt)]
            }
            _ => vec![],
        };
        for i in 0..31 {
            if !writable.contains(&i) {
                assert_eq!(
                    regs.x[i], before.x[i],
                    "x{i} changed by {action:?} for ESR {raw:#x}"
                );
            }
        }
        let pc = regs.elr.wrapping_sub(before.elr);
        match (esr::decode(esr), action) {
            (Exit::Hvc { imm }, a) => {
                assert_eq!(pc, 0, "HVC moved the PC");
                if let (Action::Resume, Some(v)) =
                    (a, psci::fast_call(imm, before.x[0], before.x[1]))
                {
                    assert_eq!(regs.x[0], v, "HVC answer differs from the fast path");
                }
            }
            (Exit::Smc { .. }, _) => assert_eq!(pc, 4, "SMC not stepped over"),
            (Exit::DataAbort(da), Action::Resume) => {
                assert_eq!(pc, esr.insn_len());
                assert!(da.isv, "emulated an access without a syndrome");
                if !da.write && !da.sixty_four && da.srt < 31 {
                    assert_eq!(
                        regs.x[usize::from(da.srt)] >> 32,
                        0,
                        "32-bit load wrote the top half"
                    );
                }
            }
            (Exit::DataAbort(da), Action::InjectDataAbort { far, write }) => {
                assert!(pc == 0 && far == e.far && write == da.write);
            }
            (
                Exit::DataAbort(esr::DataAbort { fsc, .. })
                | Exit::InstrAbort(esr::InstrAbort { fsc, .. }),
                Action::BackRam { ipa: at },
            ) => {
                assert_eq!(pc, 0, "backing RAM moved the PC");
                assert!(esr::fsc::is_translation(fsc), "backed RAM on a {fsc:#x}");
                let off = at.0.wrapping_sub(layout::RAM_BASE.0);
                assert!(
                    at.0 == ipa && off < 64 << 20,
                    "backed RAM outside RAM: {:#x}",
                    at.0
                );
            }
            (Exit::DataAbort(_), a) => panic!("data abort gave {a:?}"),
            (_, Action::InjectUndef | Action::InjectInstrAbort { .. } | Action::Stop(_)) => {
                assert_eq!(pc, 0, "{action:?} moved the PC");
            }
            _ => {}
        }
        // The exit path's bus work leaves the devices' interrupt lines to re-sample.
        bus.lock().irq_changes(|_, _| {});
    }
});
