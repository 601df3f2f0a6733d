//! Trapped system-register emulation (ESR EC 0x18).
//!
//! The hypervisor traps the PMU (MDCR_EL2.TPM/TPMCR) and, until a vCPU first uses them, the
//! debug registers (MDCR_EL2.TDA/TDOSA/TDRA): trapped debug accesses are kept in the vCPU's
//! [`DebugShadow`] and switch it to the hardware on first use (see `vm::debug`). The RAS
//! error-record registers (trapped by HCR_EL2.TERR: the records are the machine's, shared by
//! every VM) read as zero records and ignore writes, so a guest told about FEAT_RAS can probe
//! them. Every other trapped register is UNDEFINED in the guest.

use crate::arch::aarch64::esr::{SysRegAccess, sysreg_key as key};

pub use super::debug::DebugShadow;
use super::debug::{self, Bank};

/// Outcome of an emulated access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SysRegResult {
    /// A read: put this value in Rt.
    Read(u64),
    /// A write that was applied or ignored.
    Written,
    /// Not a register we emulate: inject UNDEFINED.
    Undefined,
}

const OSLAR_EL1: u32 = key(2, 0, 1, 0, 4);
const OSLSR_EL1: u32 = key(2, 0, 1, 1, 4);
const OSDLR_EL1: u32 = key(2, 0, 1, 3, 4);
const MDRAR_EL1: u32 = key(2, 0, 1, 0, 0);
const MDSCR_EL1: u32 = key(2, 0, 0, 2, 2);
const MDCCINT_EL1: u32 = key(2, 0, 0, 2, 0);
const DBGPRCR_EL1: u32 = key(2, 0, 1, 4, 4);
const DBGCLAIMSET_EL1: u32 = key(2, 0, 7, 8, 6);
const DBGCLAIMCLR_EL1: u32 = key(2, 0, 7, 9, 6);
const DBGAUTHSTATUS_EL1: u32 = key(2, 0, 7, 14, 6);

/// Emulates `acc` with write value `value` (ignored for reads). `id_read` reads the hardware
/// ID registers (ID_AA64DFR0_EL1 gives the breakpoint and watchpoint counts).
pub fn emulate(
    acc: &SysRegAccess,
    value: u64,
    dbg: &mut DebugShadow,
    id_read: fn(u8, u8) -> u64,
) -> SysRegResult {
    use SysRegResult::*;
    let k = acc.key();
    // DBGB{V,C}R<n>_EL1 and DBGW{V,C}R<n>_EL1: op0=2 op1=0 CRn=0 CRm=n op2=4..7.
    if acc.op0 == 2 && acc.op1 == 0 && acc.crn == 0 && acc.op2 >= 4 {
        let bank = match acc.op2 {
            4 => Bank::Bvr,
            5 => Bank::Bcr,
            6 => Bank::Wvr,
            _ => Bank::Wcr,
        };
        let write = (!acc.read).then_some(value);
        return match debug::bank_access(dbg, id_read(5, 0), bank, acc.crm.into(), write) {
            Some(v) if acc.read => Read(v),
            Some(_) => Written,
            None => Undefined,
        };
    }
    // ERRIDR/ERRSELR/ERXGSR (CRm 3), ERXFR/CTLR/STATUS/ADDR/PFG* (CRm 4), ERXMISC0..3
    // (CRm 5): op0=3 op1=0 CRn=5. ERRIDR_EL1.NUM = 0 says there are no records, and with
    // none the ERX* registers are RAZ/WI (ARM ARM D24.2, ERRIDR_EL1); KVM answers the same.
    let is_ras_record = acc.op0 == 3 && acc.op1 == 0 && acc.crn == 5 && (3..=5).contains(&acc.crm);
    match (k, acc.read) {
        (OSLAR_EL1, false) => {
            debug::write_lock(dbg, false, id_read(5, 0), value);
            Written
        }
        (OSDLR_EL1, false) => {
            debug::write_lock(dbg, true, id_read(5, 0), value);
            Written
        }
        (OSDLR_EL1, true) => Read(dbg.os_double_lock as u64),
        // OSLM = 0b10 (OS lock implemented, bit 3), OSLK in bit 1.
        (OSLSR_EL1, true) => Read((1 << 3) | ((dbg.os_lock as u64) << 1)),
        (MDSCR_EL1, true) => Read(dbg.mdscr),
        (MDCCINT_EL1, true) => Read(dbg.mdccint),
        (MDSCR_EL1 | MDCCINT_EL1, false) => {
            debug::write_control(dbg, k == MDCCINT_EL1, value);
            Written
        }
        (DBGPRCR_EL1 | DBGCLAIMSET_EL1 | DBGCLAIMCLR_EL1, true) => Read(0),
        (DBGPRCR_EL1 | DBGCLAIMSET_EL1 | DBGCLAIMCLR_EL1, false) => Written,
        (MDRAR_EL1 | DBGAUTHSTATUS_EL1, true) => Read(0),
        _ if is_ras_record => {
            if acc.read {
                Read(0)
            } else {
                Written
            }
        }
        _ => Undefined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cortex-A72's ID_AA64DFR0_EL1: 6 breakpoints, 4 watchpoints.
    fn dfr0(crm: u8, op2: u8) -> u64 {
        if (crm, op2) == (5, 0) { 0x1030_5106 } else { 0 }
    }

    fn emulate_t(a: &SysRegAccess, v: u64, d: &mut DebugShadow) -> SysRegResult {
        emulate(a, v, d, dfr0)
    }

    fn acc(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8, read: bool) -> SysRegAccess {
        SysRegAccess {
            op0,
            op1,
            crn,
            crm,
            op2,
            rt: 0,
            read,
        }
    }

    #[test]
    fn os_lock_round_trip() {
        let mut d = DebugShadow::default();
        assert_eq!(
            emulate_t(&acc(2, 0, 1, 1, 4, true), 0, &mut d),
            SysRegResult::Read(0xa),
            "locked at reset"
        );
        emulate_t(&acc(2, 0, 1, 0, 4, false), 0, &mut d);
        assert_eq!(
            emulate_t(&acc(2, 0, 1, 1, 4, true), 0, &mut d),
            SysRegResult::Read(8)
        );
        assert_eq!(
            emulate_t(&acc(2, 0, 1, 0, 4, false), 1, &mut d),
            SysRegResult::Written
        );
        assert_eq!(
            emulate_t(&acc(2, 0, 1, 1, 4, true), 0, &mut d),
            SysRegResult::Read(0xa)
        );
    }

    #[test]
    fn breakpoints_stored_masked_and_mdscr_stored() {
        let mut d = DebugShadow::default();
        // DBGBCR5_EL1 with HMC and SSC set: stored without them.
        assert_eq!(
            emulate_t(&acc(2, 0, 0, 5, 5, false), 0xe1e7, &mut d),
            SysRegResult::Written
        );
        assert_eq!(
            emulate_t(&acc(2, 0, 0, 5, 5, true), 0, &mut d),
            SysRegResult::Read(0x1e7)
        );
        assert!(d.user && d.sync_hw, "first write makes a debug user");
        // DBGBCR6_EL1 / DBGWCR4_EL1 do not exist on a Cortex-A72.
        assert_eq!(
            emulate_t(&acc(2, 0, 0, 6, 5, false), 1, &mut d),
            SysRegResult::Undefined
        );
        assert_eq!(
            emulate_t(&acc(2, 0, 0, 4, 7, true), 0, &mut d),
            SysRegResult::Undefined
        );
        emulate_t(&acc(2, 0, 0, 2, 2, false), 0x8000, &mut d);
        assert_eq!(
            emulate_t(&acc(2, 0, 0, 2, 2, true), 0, &mut d),
            SysRegResult::Read(0x8000)
        );
    }

    #[test]
    fn ras_error_records_raz_wi() {
        let mut d = DebugShadow::default();
        // ERRIDR_EL1 (3,0,5,3,0): no records; ERXSTATUS_EL1 (3,0,5,4,2); ERXMISC3_EL1 (3,0,5,5,5).
        for (crm, op2) in [(3, 0), (3, 1), (4, 2), (5, 5)] {
            assert_eq!(
                emulate_t(&acc(3, 0, 5, crm, op2, true), 0, &mut d),
                SysRegResult::Read(0)
            );
            assert_eq!(
                emulate_t(&acc(3, 0, 5, crm, op2, false), u64::MAX, &mut d),
                SysRegResult::Written
            );
        }
        // ESR_EL1's neighbours in CRn 5 are not error records (AFSR0_EL1 is 3,0,5,1,0).
        assert_eq!(
            emulate_t(&acc(3, 0, 5, 1, 0, true), 0, &mut d),
            SysRegResult::Undefined
        );
    }

    #[test]
    fn unknown_is_undefined() {
        let mut d = DebugShadow::default();
        // MDCCSR_EL0 (DCC status) and PMCR_EL0.
        assert_eq!(
            emulate_t(&acc(2, 3, 0, 1, 0, true), 0, &mut d),
            SysRegResult::Undefined
        );
        assert_eq!(
            emulate_t(&acc(3, 3, 9, 12, 0, true), 0, &mut d),
            SysRegResult::Undefined
        );
    }
}
