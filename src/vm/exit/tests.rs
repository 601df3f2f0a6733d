//! Host tests of `vm::exit`.

use super::*;
use crate::vdev::{AccessWidth, MmioDevice, MmioError, VcpuId};
use alloc::boxed::Box;

/// A 16-byte scratch device: word registers only at 0 and 4; byte access anywhere.
struct Scratch([u8; 16]);
impl MmioDevice for Scratch {
    fn name(&self) -> &'static str {
        "scratch"
    }
    fn size_bytes(&self) -> u64 {
        16
    }
    fn read(&mut self, _v: VcpuId, off: u64, w: AccessWidth) -> Result<u64, MmioError> {
        if w == AccessWidth::Double {
            return Err(MmioError::BadAccess);
        }
        let mut v = 0u64;
        for i in 0..w.bytes() {
            v |= (*self.0.get((off + i) as usize).ok_or(MmioError::BadAccess)? as u64) << (8 * i);
        }
        Ok(v)
    }
    fn write(&mut self, _v: VcpuId, off: u64, w: AccessWidth, v: u64) -> Result<(), MmioError> {
        for i in 0..w.bytes() {
            *self
                .0
                .get_mut((off + i) as usize)
                .ok_or(MmioError::BadAccess)? = (v >> (8 * i)) as u8;
        }
        Ok(())
    }
}

fn counter() -> u64 {
    1000
}

fn setup() -> (
    GuestRegs,
    crate::arch::aarch64::sync::Mutex<MmioBus>,
    DebugShadow,
) {
    let mut bus = MmioBus::new();
    bus.add(GuestPhysAddr(0x0900_0000), Box::new(Scratch([0; 16])))
        .unwrap();
    let regs = GuestRegs {
        elr: 0x4008_0000,
        ..Default::default()
    };
    (
        regs,
        crate::arch::aarch64::sync::Mutex::new(bus),
        DebugShadow::default(),
    )
}

fn dabt(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, write: bool, fsc: u64) -> Esr {
    Esr((0x24 << 26)
        | (1 << 25)
        | ((isv as u64) << 24)
        | (sas << 22)
        | ((sse as u64) << 21)
        | (srt << 16)
        | ((sf as u64) << 15)
        | ((write as u64) << 6)
        | fsc)
}

fn run(
    regs: &mut GuestRegs,
    bus: &crate::arch::aarch64::sync::Mutex<MmioBus>,
    dbg: &mut DebugShadow,
    esr: Esr,
    ipa: u64,
) -> Action {
    let mut pt = PhysTimer::default();
    let budget = AtomicU32::new(WARN_BUDGET);
    let mut ctx = ExitCtx {
        regs,
        mmio: bus,
        debug: dbg,
        ptimer: &mut pt,
        counter,
        id_read: |_, _| 0x1111,
        vcpu: VcpuId(0),
        vm_name: "t",
        warn_budget: &budget,
        ram_base: crate::vm::layout::RAM_BASE,
        ram_bytes: TEST_RAM_BYTES,
    };
    handle_sync(&mut ctx, esr, || Fault {
        far: ipa,
        ipa: GuestPhysAddr(ipa),
    })
}

#[test]
fn mmio_write_then_sign_extended_read() {
    let (mut regs, bus, mut dbg) = setup();
    regs.x[5] = 0xffff_ff80;
    assert_eq!(
        run(
            &mut regs,
            &bus,
            &mut dbg,
            dabt(true, 2, false, 5, false, true, 7),
            0x0900_0004
        ),
        Action::Resume
    );
    assert_eq!(regs.elr, 0x4008_0004);
    // ldrsb x3, [..#4] -> 0xffff_ffff_ffff_ff80
    run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 0, true, 3, true, false, 7),
        0x0900_0004,
    );
    assert_eq!(regs.x[3], 0xffff_ffff_ffff_ff80);
    // ldrsb w3 -> upper 32 bits clear
    run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 0, true, 3, false, false, 7),
        0x0900_0004,
    );
    assert_eq!(regs.x[3], 0xffff_ff80);
    // ldr wzr: discarded, x31 never written (no panic on index 31)
    run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 2, false, 31, false, false, 7),
        0x0900_0004,
    );
    assert_eq!(regs.elr, 0x4008_0010);
}

#[test]
fn unbacked_isv0_and_bad_width_inject_aborts() {
    let (mut regs, bus, mut dbg) = setup();
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 2, false, 1, false, false, 7),
        0x2000_0000,
    );
    assert_eq!(
        a,
        Action::InjectDataAbort {
            far: 0x2000_0000,
            write: false
        }
    );
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(false, 0, false, 0, false, true, 7),
        0x0900_0000,
    );
    assert_eq!(
        a,
        Action::InjectDataAbort {
            far: 0x0900_0000,
            write: true
        }
    );
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 3, false, 1, true, false, 7),
        0x0900_0000,
    );
    assert!(matches!(a, Action::InjectDataAbort { .. }));
    // Permission fault: never emulated.
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 2, false, 1, false, true, 0x0f),
        0x0900_0000,
    );
    assert!(matches!(a, Action::InjectDataAbort { .. }));
    assert_eq!(regs.elr, 0x4008_0000, "aborts do not step the PC");
}

/// Guest RAM in these tests: 64 MiB at RAM_BASE.
const TEST_RAM_BYTES: u64 = 64 << 20;

#[test]
fn ram_translation_faults_back_the_block() {
    let (mut regs, bus, mut dbg) = setup();
    let base = super::super::layout::RAM_BASE.0;
    // Loads, stores and stage-1 walks that miss at stage 2 inside RAM: back the block,
    // retry the access (the PC stays).
    for (write, s1ptw, fsc) in [
        (false, false, 0x06),
        (true, false, 0x07),
        (false, true, 0x05),
    ] {
        let ipa = base + TEST_RAM_BYTES - 8;
        let esr = Esr(dabt(true, 3, false, 1, false, write, fsc).0 | (u64::from(s1ptw) << 7));
        let a = run(&mut regs, &bus, &mut dbg, esr, ipa);
        assert_eq!(
            a,
            Action::BackRam {
                ipa: GuestPhysAddr(ipa)
            }
        );
    }
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        Esr((0x20 << 26) | (1 << 25) | 0x06),
        base,
    );
    assert_eq!(
        a,
        Action::BackRam {
            ipa: GuestPhysAddr(base)
        }
    );
    assert_eq!(regs.elr, 0x4008_0000);
    // A permission fault in RAM is the guest's own doing; the byte after RAM is unbacked.
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 3, false, 1, false, true, 0x0f),
        base,
    );
    assert!(matches!(a, Action::InjectDataAbort { .. }));
    let end = base + TEST_RAM_BYTES;
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        dabt(true, 3, false, 1, false, false, 0x06),
        end,
    );
    assert!(matches!(a, Action::InjectDataAbort { .. }));
    let a = run(
        &mut regs,
        &bus,
        &mut dbg,
        Esr((0x20 << 26) | (1 << 25) | 0x06),
        end,
    );
    assert!(matches!(a, Action::InjectInstrAbort { .. }));
}

#[test]
fn sve_trap_and_sve_id_fields() {
    let (mut regs, bus, mut dbg) = setup();
    // An SVE trap (EC 0x19): the kernel switches or injects UNDEF; PC unchanged.
    assert_eq!(
        run(&mut regs, &bus, &mut dbg, Esr((0x19 << 26) | (1 << 25)), 0),
        Action::SveAccess
    );
    assert_eq!(regs.elr, 0x4008_0000);
    // mrs x1, ID_AA64PFR0_EL1 (S3_0_C0_C4_0): SVE [35:32] only for a VM with SVE.
    let acc = esr::sysreg_access((3 << 20) | (4 << 1) | (1 << 5) | 1);
    let mut pt = PhysTimer::default();
    for sve in [false, true] {
        let v = local_sysreg_read(&acc, &mut pt, counter, |_, _| 1 << 32, sve, 0);
        assert_eq!(v, Some(u64::from(sve) << 32), "PFR0.SVE, sve {sve}");
    }
}

#[test]
fn hvc_smc_and_sysreg() {
    let (mut regs, bus, mut dbg) = setup();
    regs.x[0] = 0x8400_0000;
    assert_eq!(
        run(&mut regs, &bus, &mut dbg, Esr(0x5a00_0000), 0),
        Action::Resume
    );
    assert_eq!((regs.x[0], regs.elr), (0x10001, 0x4008_0000));
    regs.x[0] = 0xc300_0000;
    assert_eq!(
        run(&mut regs, &bus, &mut dbg, Esr(0x5e00_0000), 0),
        Action::Resume
    );
    assert_eq!((regs.x[0] as i64, regs.elr), (-1, 0x4008_0004));
    regs.x[0] = 0x8400_0008;
    assert_eq!(
        run(&mut regs, &bus, &mut dbg, Esr(0x5a00_0000), 0),
        Action::Psci(Call::SystemOff)
    );
    // mrs x0, mdccsr_el0 -> undef, PC unchanged
    let iss = (2 << 20) | (3 << 14) | (1 << 1) | 1;
    assert_eq!(
        run(
            &mut regs,
            &bus,
            &mut dbg,
            Esr((0x18 << 26) | (1 << 25) | iss),
            0
        ),
        Action::InjectUndef
    );
    assert_eq!(regs.elr, 0x4008_0004);
    // smstart (SME trapped by CPTR_EL2, EC 0x1d, ISS SMTC 0), PAC and LS64: UNDEF, PC
    // unchanged (the guest's own undef handler decides).
    for ec in [0x1du64, 0x09, 0x0a] {
        assert_eq!(
            run(&mut regs, &bus, &mut dbg, Esr((ec << 26) | (1 << 25)), 0),
            Action::InjectUndef,
            "EC {ec:#x}"
        );
    }
    // WFIT x3 / WFET x4 (TI 0b1x, RV): FEAT_WFxT is hidden, so UNDEF, PC unchanged.
    for iss in [(3 << 5) | 0b110u64, (4 << 5) | 0b111] {
        assert_eq!(
            run(
                &mut regs,
                &bus,
                &mut dbg,
                Esr((0x01 << 26) | (1 << 25) | iss),
                0
            ),
            Action::InjectUndef,
            "WFxT ISS {iss:#x}"
        );
    }
    assert_eq!(regs.elr, 0x4008_0004);
    // mrs x2, oslsr_el1 -> emulated (OSLM = 0b10; OSLK = 1: locked at reset)
    let iss = (2 << 20) | (1 << 10) | (1 << 1) | (4 << 17) | (2 << 5) | 1;
    assert_eq!(
        run(
            &mut regs,
            &bus,
            &mut dbg,
            Esr((0x18 << 26) | (1 << 25) | iss),
            0
        ),
        Action::Resume
    );
    assert_eq!((regs.x[2], regs.elr), (0xa, 0x4008_0008));
    // msr icc_sgi1r_el1, x3 -> Sgi
    regs.x[3] = 0x0500_0001;
    let iss = (3 << 20) | (5 << 17) | (12 << 10) | (3 << 5) | (11 << 1);
    assert_eq!(
        run(
            &mut regs,
            &bus,
            &mut dbg,
            Esr((0x18 << 26) | (1 << 25) | iss),
            0
        ),
        Action::Sgi {
            value: 0x0500_0001,
            group1: true
        }
    );
    // msr cntp_tval_el0, x4 -> TimerChanged
    regs.x[4] = 10;
    let iss = (3 << 20) | (3 << 14) | (14 << 10) | (4 << 5) | (2 << 1);
    assert_eq!(
        run(
            &mut regs,
            &bus,
            &mut dbg,
            Esr((0x18 << 26) | (1 << 25) | iss),
            0
        ),
        Action::TimerChanged
    );
}

#[test]
fn emulated_instruction_completes_a_software_step() {
    use crate::vm::vcpu::SPSR_SS;
    let (mut regs, bus, mut dbg) = setup();
    // smc #0 (trapped, ELR at the SMC) with PSTATE.SS = 1: emulated, then ELR + 4 and SS = 0,
    // so the ERET takes the guest's step exception before the next instruction.
    regs.spsr |= SPSR_SS;
    regs.x[0] = 0xc300_0000;
    assert_eq!(
        run(&mut regs, &bus, &mut dbg, Esr(0x5e00_0000), 0),
        Action::Resume
    );
    assert_eq!((regs.elr, regs.spsr & SPSR_SS), (0x4008_0004, 0));
    // An HVC is not completed by the hypervisor (ELR is already past it, and the hardware set
    // SPSR.SS for a stepped exception-generating instruction itself): SPSR is left alone.
    regs.spsr |= SPSR_SS;
    regs.x[0] = 0x8400_0000;
    run(&mut regs, &bus, &mut dbg, Esr(0x5a00_0000), 0);
    assert_eq!((regs.elr, regs.spsr & SPSR_SS), (0x4008_0004, SPSR_SS));
}
