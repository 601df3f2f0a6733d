//! Fuzz target `esr`: ESR_EL2 syndrome decoding (`esr::decode`) on every 64-bit value.
//!
//! Property: no value panics, and the decoded fields say what the syndrome's bits say (DDI 0487
//! D24.2.41 for EC 0x18, D24.2.40 for data aborts). The MMIO fast path's one-mask test
//! (`DABT_FAST_READ_MASK`) must never accept a syndrome the full path would not emulate as a
//! plain read: ISV set, a read, no stage-1 walk, no cache maintenance, a translation fault.
#![no_main]

use elvisor::arch::aarch64::esr::{
    self, DABT_FAST_READ_MASK, DABT_FAST_READ_VALUE, Esr, Exit, ec, fsc, sysreg_key,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: u64| {
    let e = Esr(raw);
    let iss = e.iss();
    assert!(u64::from(iss) == raw & 0x1ff_ffff && e.ec() < 64);
    assert_eq!(e.insn_len(), if raw & (1 << 25) != 0 { 4 } else { 2 });
    match esr::decode(e) {
        Exit::Hvc { imm } => assert!(e.ec() == ec::HVC64 && u32::from(imm) == iss & 0xffff),
        Exit::Smc { imm } => assert!(e.ec() == ec::SMC64 && u32::from(imm) == iss & 0xffff),
        Exit::DataAbort(da) => {
            assert_eq!(e.ec(), ec::DABT_LOWER);
            // Put the fields back together: every decoded bit came from its place in the ISS.
            let sas = da.width.bytes().trailing_zeros();
            let back = (u32::from(da.isv) << 24)
                | (sas << 22)
                | (u32::from(da.sign_extend) << 21)
                | (u32::from(da.srt) << 16)
                | (u32::from(da.sixty_four) << 15)
                | (u32::from(da.acq_rel) << 14)
                | (u32::from(da.ea) << 9)
                | (u32::from(da.cache_maintenance) << 8)
                | (u32::from(da.s1ptw) << 7)
                | (u32::from(da.write) << 6)
                | u32::from(da.fsc);
            assert_eq!(back, iss & 0x01ff_c3ff, "data abort fields");
            assert!(da.srt <= 31);
            if iss & DABT_FAST_READ_MASK == DABT_FAST_READ_VALUE {
                assert!(
                    da.isv
                        && !da.write
                        && !da.s1ptw
                        && !da.cache_maintenance
                        && !da.ea
                        && fsc::is_translation(da.fsc),
                    "fast-path mask accepts {iss:#x}"
                );
            }
        }
        Exit::InstrAbort(ia) => {
            assert_eq!(e.ec(), ec::IABT_LOWER);
            assert!(ia.s1ptw == (iss & (1 << 7) != 0) && u32::from(ia.fsc) == iss & 0x3f);
        }
        Exit::SysReg(acc) => {
            assert_eq!(e.ec(), ec::SYS64);
            assert!(acc.op0 < 4 && acc.op1 < 8 && acc.crn < 16 && acc.crm < 16 && acc.op2 < 8);
            assert!(acc.rt <= 31 && acc.read == (iss & 1 != 0));
            let key = sysreg_key(acc.op0, acc.op1, acc.crn, acc.crm, acc.op2);
            assert_eq!(key, acc.key());
            assert!(key < 1 << 16, "sysreg key {key:#x} wider than its fields");
        }
        Exit::Wfx { wfe, timeout_reg } => {
            assert!(e.ec() == ec::WFX && wfe == (iss & 1 != 0));
            // WFIT/WFET (TI = 0b1x) with RV: the timeout register is RN, a valid Xn.
            let want = (iss & 0b110 == 0b110).then_some(((iss >> 5) & 0x1f) as u8);
            assert_eq!(timeout_reg, want);
        }
        Exit::Other { ec } => {
            assert_eq!(ec, e.ec());
            assert!(
                ![
                    ec::HVC64,
                    ec::SMC64,
                    ec::DABT_LOWER,
                    ec::IABT_LOWER,
                    ec::SYS64,
                    ec::WFX
                ]
                .contains(&ec)
            );
        }
    }
});
