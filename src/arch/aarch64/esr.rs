//! ESR_EL2 syndrome decoding (ARM ARM D24.2.41, "ESR_EL2, Exception Syndrome Register (EL2)").
//!
//! Pure functions: the exit path reads ESR_EL2 once and hands the value here; the result is a
//! typed [`Exit`] that the VM layer dispatches on. Nothing here trusts the guest: every field
//! is extracted with a mask, so any 64-bit value decodes to *something* without panicking.

use crate::vdev::AccessWidth;

/// Exception classes (ESR_ELx.EC) that a guest can cause at EL2.
pub mod ec {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFX: u8 = 0x01;
    pub const FP_ASIMD: u8 = 0x07;
    /// A pointer-authentication instruction trapped by HCR_EL2.API = 0.
    pub const PAC: u8 = 0x09;
    /// LD64B/ST64B/ST64BV/ST64BV0 trapped by HCRX_EL2.EnALS/EnASR/EnAS0 = 0.
    pub const LS64: u8 = 0x0a;
    pub const ILLEGAL_STATE: u8 = 0x0e;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    pub const SYS64: u8 = 0x18;
    pub const SVE: u8 = 0x19;
    /// SME, SVE in Streaming mode and SME2 ZT0 accesses trapped by CPTR_EL2 (TSM / SMEN).
    pub const SME: u8 = 0x1d;
    pub const IABT_LOWER: u8 = 0x20;
    pub const IABT_CUR: u8 = 0x21;
    pub const PC_ALIGN: u8 = 0x22;
    pub const DABT_LOWER: u8 = 0x24;
    pub const DABT_CUR: u8 = 0x25;
    pub const SP_ALIGN: u8 = 0x26;
    pub const SERROR: u8 = 0x2f;
    pub const BRK64: u8 = 0x3c;
}

/// A raw syndrome value with field accessors.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Esr(pub u64);

impl Esr {
    /// Exception class, ESR[31:26].
    pub const fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }
    /// Instruction length: true for a 32-bit instruction, ESR[25].
    pub const fn il(self) -> bool {
        (self.0 >> 25) & 1 == 1
    }
    /// Instruction-specific syndrome, ESR[24:0].
    pub const fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }
    /// Bytes to step over the trapping instruction.
    pub const fn insn_len(self) -> u64 {
        if self.il() { 4 } else { 2 }
    }
}

/// A data abort's syndrome (ISS encoding for an exception from a Data Abort).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataAbort {
    /// ISV: the SAS/SSE/SRT/SF/AR fields are valid.
    pub isv: bool,
    /// SAS: access size.
    pub width: AccessWidth,
    /// SSE: the load sign-extends.
    pub sign_extend: bool,
    /// SRT: the transfer register (31 = XZR/WZR).
    pub srt: u8,
    /// SF: 64-bit register (else 32-bit W register).
    pub sixty_four: bool,
    /// AR: acquire/release semantics.
    pub acq_rel: bool,
    /// EA: external abort type (implementation defined).
    pub ea: bool,
    /// CM: cache maintenance or address translation instruction.
    pub cache_maintenance: bool,
    /// S1PTW: the fault happened on a stage-1 translation table walk.
    pub s1ptw: bool,
    /// WnR: write (true) or read.
    pub write: bool,
    /// DFSC: fault status code.
    pub fsc: u8,
}

/// An instruction abort's syndrome.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InstrAbort {
    pub s1ptw: bool,
    pub fsc: u8,
}

/// A trapped MSR/MRS/System instruction (EC 0x18), ISS layout D24.2.41.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SysRegAccess {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    /// Rt (31 = XZR).
    pub rt: u8,
    /// Direction: true for MRS (read), false for MSR (write).
    pub read: bool,
}

impl SysRegAccess {
    /// The register's encoding as a single key (op0, op1, CRn, CRm, op2), matching
    /// [`sysreg_key`].
    pub const fn key(&self) -> u32 {
        sysreg_key(self.op0, self.op1, self.crn, self.crm, self.op2)
    }
}

/// Packs a system-register encoding into a key: op0:op1:CRn:CRm:op2.
pub const fn sysreg_key(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> u32 {
    ((op0 as u32) << 14)
        | ((op1 as u32) << 11)
        | ((crn as u32) << 7)
        | ((crm as u32) << 3)
        | op2 as u32
}

/// Why the guest left EL1/EL0 synchronously, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exit {
    /// HVC #imm from AArch64 EL1.
    Hvc { imm: u16 },
    /// SMC #imm trapped by HCR_EL2.TSC. ELR points at the SMC itself.
    Smc { imm: u16 },
    /// A stage-2 data abort.
    DataAbort(DataAbort),
    /// A stage-2 instruction abort.
    InstrAbort(InstrAbort),
    /// A trapped system register access.
    SysReg(SysRegAccess),
    /// WFI (`wfe == false`) or WFE trapped; WFIT/WFET (FEAT_WFxT) carry the register that
    /// holds their timeout, a virtual-counter value (ISS TI = 0b1x, RV = 1, RN).
    Wfx { wfe: bool, timeout_reg: Option<u8> },
    /// Anything else: the exception class, for the diagnostic.
    Other { ec: u8 },
}

/// The MSR/MRS fields of an EC 0x18 syndrome's ISS.
#[inline(always)]
pub const fn sysreg_access(iss: u32) -> SysRegAccess {
    SysRegAccess {
        op0: ((iss >> 20) & 3) as u8,
        op2: ((iss >> 17) & 7) as u8,
        op1: ((iss >> 14) & 7) as u8,
        crn: ((iss >> 10) & 0xf) as u8,
        rt: ((iss >> 5) & 0x1f) as u8,
        crm: ((iss >> 1) & 0xf) as u8,
        read: iss & 1 != 0,
    }
}

/// The fields of a data-abort syndrome's ISS.
#[inline(always)]
pub const fn data_abort(iss: u32) -> DataAbort {
    DataAbort {
        isv: iss & (1 << 24) != 0,
        width: AccessWidth::from_sas(((iss >> 22) & 3) as u8),
        sign_extend: iss & (1 << 21) != 0,
        srt: ((iss >> 16) & 0x1f) as u8,
        sixty_four: iss & (1 << 15) != 0,
        acq_rel: iss & (1 << 14) != 0,
        ea: iss & (1 << 9) != 0,
        cache_maintenance: iss & (1 << 8) != 0,
        s1ptw: iss & (1 << 7) != 0,
        write: iss & (1 << 6) != 0,
        fsc: (iss & 0x3f) as u8,
    }
}

/// Decodes a syndrome taken from a lower exception level.
#[inline]
pub const fn decode(esr: Esr) -> Exit {
    let iss = esr.iss();
    match esr.ec() {
        ec::HVC64 => Exit::Hvc { imm: iss as u16 },
        ec::SMC64 => Exit::Smc { imm: iss as u16 },
        ec::DABT_LOWER => Exit::DataAbort(data_abort(iss)),
        ec::IABT_LOWER => Exit::InstrAbort(InstrAbort {
            s1ptw: iss & (1 << 7) != 0,
            fsc: (iss & 0x3f) as u8,
        }),
        ec::SYS64 => Exit::SysReg(sysreg_access(iss)),
        ec::WFX => Exit::Wfx {
            wfe: iss & 1 != 0,
            // TI [1:0]: 0b10 WFIT, 0b11 WFET; RV [2]: RN [9:5] is valid (ARM ARM D24.2.41,
            // ISS encoding for an exception from a WF* instruction).
            timeout_reg: if iss & 0b110 == 0b110 {
                Some(((iss >> 5) & 0x1f) as u8)
            } else {
                None
            },
        },
        other => Exit::Other { ec: other },
    }
}

/// Fault status codes (DFSC/IFSC) we care about.
/// The data-abort syndromes the MMIO fast path takes, as one mask test: ISV set; a read (WnR
/// clear); not on a stage-1 walk (S1PTW), not a cache maintenance or AT instruction (CM), no
/// external abort (EA) and FAR valid (FnV clear); a translation fault at any level (DFSC
/// 0b0001LL). Everything else takes the full path.
pub const DABT_FAST_READ_MASK: u32 =
    (1 << 24) | (1 << 10) | (1 << 9) | (1 << 8) | (1 << 7) | (1 << 6) | 0x3c;
/// The value the masked ISS must have; see [`DABT_FAST_READ_MASK`].
pub const DABT_FAST_READ_VALUE: u32 = (1 << 24) | 0x04;

pub mod fsc {
    /// Translation fault at level 0..3 is 0b0001LL.
    pub const fn is_translation(fsc: u8) -> bool {
        fsc & 0x3c == 0x04
    }
    /// Permission fault at level 0..3 is 0b0011LL.
    pub const fn is_permission(fsc: u8) -> bool {
        fsc & 0x3c == 0x0c
    }
    /// Access flag fault 0b0010LL.
    pub const fn is_access_flag(fsc: u8) -> bool {
        fsc & 0x3c == 0x08
    }
    /// Synchronous External abort, not on a translation table walk.
    pub const SYNC_EXTERNAL: u8 = 0x10;
}

/// Builds the syndrome of an exception we inject into a guest's EL1 (ESR_EL1).
pub mod inject {
    use super::ec;
    const IL: u64 = 1 << 25;

    /// A synchronous external data abort: EC 0x25 (from EL1) or 0x24 (from EL0).
    pub const fn data_abort(from_el0: bool, write: bool) -> u64 {
        let class = if from_el0 {
            ec::DABT_LOWER
        } else {
            ec::DABT_CUR
        };
        ((class as u64) << 26)
            | IL
            | if write { 1 << 6 } else { 0 }
            | super::fsc::SYNC_EXTERNAL as u64
    }
    /// A synchronous external instruction abort: EC 0x21 (from EL1) or 0x20 (from EL0).
    pub const fn instr_abort(from_el0: bool) -> u64 {
        let class = if from_el0 {
            ec::IABT_LOWER
        } else {
            ec::IABT_CUR
        };
        ((class as u64) << 26) | IL | super::fsc::SYNC_EXTERNAL as u64
    }
    /// UNDEFINED instruction: EC 0x00, IL set for a 32-bit instruction.
    pub const fn undefined(il32: bool) -> u64 {
        if il32 { IL } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hvc_and_smc() {
        // hvc #0 from AArch64: EC 0x16, IL=1.
        assert_eq!(decode(Esr(0x5a00_0000)), Exit::Hvc { imm: 0 });
        assert_eq!(decode(Esr(0x5a00_1234)), Exit::Hvc { imm: 0x1234 });
        assert_eq!(decode(Esr(0x5e00_0000)), Exit::Smc { imm: 0 });
        assert_eq!(Esr(0x5a00_0000).insn_len(), 4);
    }

    #[test]
    fn fast_read_mask_matches_the_decoded_fields() {
        // Every combination of the bits the mask looks at, over a few DFSC values.
        for bits in 0u32..(1 << 6) {
            for fsc in [0x04u32, 0x05, 0x07, 0x0c, 0x0f, 0x10, 0x2b, 0x09] {
                let iss =
                    ((bits & 1) << 24) | ((bits >> 1 & 0x1f) << 6) | fsc | (2 << 22) | (3 << 16);
                let da = data_abort(iss);
                let fnv = iss & (1 << 10) != 0;
                let expected = da.isv
                    && !da.write
                    && !da.s1ptw
                    && !da.cache_maintenance
                    && !da.ea
                    && !fnv
                    && fsc::is_translation(da.fsc);
                assert_eq!(
                    iss & DABT_FAST_READ_MASK == DABT_FAST_READ_VALUE,
                    expected,
                    "iss {iss:#x}"
                );
            }
        }
    }

    #[test]
    fn data_abort_fields() {
        // ldr w1, [x0] to an unmapped IPA: ISV=1 SAS=2 SRT=1 SF=0 WnR=0, DFSC=level-3 translation.
        let esr = (0x24u64 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (1 << 16) | 0x07;
        let Exit::DataAbort(d) = decode(Esr(esr)) else {
            panic!()
        };
        assert!(d.isv && !d.write && !d.sign_extend && !d.sixty_four);
        assert_eq!((d.width, d.srt, d.fsc), (AccessWidth::Word, 1, 0x07));
        assert!(fsc::is_translation(d.fsc));
        // strb wzr, [x2]: SAS=0 SRT=31 WnR=1; ldrsh x3: SSE=1 SF=1; stlr: AR=1.
        let esr = (0x24u64 << 26) | (1 << 25) | (1 << 24) | (31 << 16) | (1 << 6) | 0x06;
        let Exit::DataAbort(d) = decode(Esr(esr)) else {
            panic!()
        };
        assert_eq!((d.width, d.srt, d.write), (AccessWidth::Byte, 31, true));
        let esr =
            (0x24u64 << 26) | (1 << 24) | (1 << 22) | (1 << 21) | (3 << 16) | (1 << 15) | (1 << 14);
        let Exit::DataAbort(d) = decode(Esr(esr)) else {
            panic!()
        };
        assert!(d.sign_extend && d.sixty_four && d.acq_rel);
        assert_eq!((d.width, d.srt), (AccessWidth::Half, 3));
        assert_eq!(Esr(esr).insn_len(), 2);
        // ISV=0 (e.g. ldp): the rest is not valid but still decodes without panicking.
        let esr = (0x24u64 << 26) | (1 << 25) | (1 << 7) | 0x05;
        let Exit::DataAbort(d) = decode(Esr(esr)) else {
            panic!()
        };
        assert!(!d.isv && d.s1ptw);
    }

    #[test]
    fn sysreg_fields() {
        // mrs x0, mdccsr_el0: op0=2 op1=3 CRn=0 CRm=1 op2=0, Rt=0, read.
        let iss = (2 << 20) | (3 << 14) | (1 << 1) | 1;
        let Exit::SysReg(s) = decode(Esr((0x18u64 << 26) | (1 << 25) | iss)) else {
            panic!()
        };
        assert_eq!(
            (s.op0, s.op1, s.crn, s.crm, s.op2, s.rt, s.read),
            (2, 3, 0, 1, 0, 0, true)
        );
        assert_eq!(s.key(), sysreg_key(2, 3, 0, 1, 0));
        // msr cntp_ctl_el0, x5: op0=3 op1=3 CRn=14 CRm=2 op2=1 Rt=5, write.
        let iss = (3 << 20) | (1 << 17) | (3 << 14) | (14 << 10) | (5 << 5) | (2 << 1);
        let Exit::SysReg(s) = decode(Esr((0x18u64 << 26) | iss)) else {
            panic!()
        };
        assert_eq!(
            (s.op0, s.op1, s.crn, s.crm, s.op2, s.rt, s.read),
            (3, 3, 14, 2, 1, 5, false)
        );
    }

    #[test]
    fn other_classes_and_wfx() {
        assert_eq!(
            decode(Esr(0x0400_0000)),
            Exit::Wfx {
                wfe: false,
                timeout_reg: None
            }
        );
        assert_eq!(
            decode(Esr(0x0400_0001)),
            Exit::Wfx {
                wfe: true,
                timeout_reg: None
            }
        );
        // WFIT x3 (TI 0b10, RV, RN 3) and WFET x30; TI 0b10 without RV has no register.
        assert_eq!(
            decode(Esr(0x0400_0000 | (3 << 5) | 0b110)),
            Exit::Wfx {
                wfe: false,
                timeout_reg: Some(3)
            }
        );
        assert_eq!(
            decode(Esr(0x0400_0000 | (30 << 5) | 0b111)),
            Exit::Wfx {
                wfe: true,
                timeout_reg: Some(30)
            }
        );
        assert_eq!(
            decode(Esr(0x0400_0000 | (3 << 5) | 0b010)),
            Exit::Wfx {
                wfe: false,
                timeout_reg: None
            }
        );
        assert_eq!(
            decode(Esr(0x8200_0000)),
            Exit::InstrAbort(InstrAbort {
                s1ptw: false,
                fsc: 0
            })
        );
        assert_eq!(decode(Esr(0x1c00_0000)), Exit::Other { ec: 0x07 });
        // Any value decodes.
        for v in [0u64, u64::MAX, 0xdead_beef_dead_beef] {
            let _ = decode(Esr(v));
        }
    }

    #[test]
    fn injected_syndromes() {
        assert_eq!(inject::data_abort(false, false), 0x9600_0010);
        assert_eq!(inject::data_abort(false, true), 0x9600_0050);
        assert_eq!(inject::data_abort(true, false), 0x9200_0010);
        assert_eq!(inject::instr_abort(false), 0x8600_0010);
        assert_eq!(inject::undefined(true), 0x0200_0000);
    }
}
