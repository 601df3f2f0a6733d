//! The guest's EL1 physical timer (CNTP_*), emulated.
//!
//! Guests own the EL1 virtual timer directly (with a per-VM CNTVOFF). The physical timer's
//! registers are trapped (CNTHCTL_EL2.EL1PCEN / EL1PTEN = 0) and emulated here against the
//! physical counter; the kernel arms its own EL2 timer for [`PhysTimer::deadline`] and
//! drives the guest's PPI 30 from [`PhysTimer::level`]. Semantics per ARM ARM D11.2.

use crate::arch::aarch64::esr::{SysRegAccess, sysreg_key as key};

/// INTID of the EL1 physical timer interrupt (PPI 14).
pub const PTIMER_INTID: u32 = 30;
/// INTID of the EL1 virtual timer interrupt (PPI 11).
pub const VTIMER_INTID: u32 = 27;

const CNTP_TVAL_EL0: u32 = key(3, 3, 14, 2, 0);
const CNTP_CTL_EL0: u32 = key(3, 3, 14, 2, 1);
const CNTP_CVAL_EL0: u32 = key(3, 3, 14, 2, 2);

/// CNTP_CTL bits.
const ENABLE: u64 = 1 << 0;
const IMASK: u64 = 1 << 1;
const ISTATUS: u64 = 1 << 2;

/// One vCPU's emulated EL1 physical timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysTimer {
    /// ENABLE and IMASK as written by the guest.
    pub ctl: u64,
    pub cval: u64,
}

impl PhysTimer {
    /// True when `acc` is one of the CNTP registers.
    pub fn handles(acc: &SysRegAccess) -> bool {
        matches!(acc.key(), CNTP_TVAL_EL0 | CNTP_CTL_EL0 | CNTP_CVAL_EL0)
    }

    fn fired(&self, now: u64) -> bool {
        self.ctl & ENABLE != 0 && now >= self.cval
    }

    /// The interrupt output: enabled, unmasked and expired.
    pub fn level(&self, now: u64) -> bool {
        self.fired(now) && self.ctl & IMASK == 0
    }

    /// When the kernel must look again (the deadline of an armed, unmasked timer that has
    /// not fired yet).
    pub fn deadline(&self, now: u64) -> Option<u64> {
        (self.ctl & ENABLE != 0 && self.ctl & IMASK == 0 && now < self.cval).then_some(self.cval)
    }

    /// Emulates a trapped access at counter value `now`. Returns the value for a read.
    pub fn access(&mut self, acc: &SysRegAccess, value: u64, now: u64) -> Option<u64> {
        match (acc.key(), acc.read) {
            (CNTP_CTL_EL0, true) => Some(self.ctl | if self.fired(now) { ISTATUS } else { 0 }),
            (CNTP_CTL_EL0, false) => {
                self.ctl = value & (ENABLE | IMASK);
                None
            }
            (CNTP_CVAL_EL0, true) => Some(self.cval),
            (CNTP_CVAL_EL0, false) => {
                self.cval = value;
                None
            }
            // TVAL is the signed 32-bit view of CVAL - now.
            (CNTP_TVAL_EL0, true) => Some(self.cval.wrapping_sub(now) & 0xffff_ffff),
            (CNTP_TVAL_EL0, false) => {
                self.cval = now.wrapping_add(value as u32 as i32 as i64 as u64);
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(op2: u8, read: bool) -> SysRegAccess {
        SysRegAccess {
            op0: 3,
            op1: 3,
            crn: 14,
            crm: 2,
            op2,
            rt: 0,
            read,
        }
    }

    #[test]
    fn tval_cval_ctl() {
        let mut t = PhysTimer::default();
        t.access(&acc(0, false), 1000, 5000); // TVAL = 1000 at now=5000
        assert_eq!(t.access(&acc(2, true), 0, 5000), Some(6000));
        assert_eq!(t.access(&acc(0, true), 0, 5500), Some(500));
        // Negative TVAL after expiry, as a 32-bit value.
        assert_eq!(t.access(&acc(0, true), 0, 6001), Some(0xffff_ffff));
        assert!(!t.level(7000), "disabled timer never fires");
        t.access(&acc(1, false), 1, 5000);
        assert_eq!(t.deadline(5000), Some(6000));
        assert!(!t.level(5999));
        assert!(t.level(6000));
        assert_eq!(t.access(&acc(1, true), 0, 6000), Some(ENABLE | ISTATUS));
        t.access(&acc(1, false), ENABLE | IMASK | 0xf0, 6000);
        assert_eq!(t.ctl, ENABLE | IMASK, "only ENABLE and IMASK are writable");
        assert!(!t.level(6000) && t.deadline(6000).is_none());
        // A negative TVAL write puts the deadline in the past.
        t.access(&acc(0, false), (-5i32) as u32 as u64, 100);
        assert_eq!(t.cval, 95);
    }
}
