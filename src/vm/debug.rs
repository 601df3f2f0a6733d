//! Guest self-hosted debug: the per-vCPU debug registers and their lazy switching.
//!
//! A vCPU starts with every debug register trapped (MDCR_EL2.TDA/TDOSA/TDRA, see
//! `arch::aarch64::guest::MDCR_EL2_GUEST`) and its values kept here. Its first trapped *write*
//! of a breakpoint, watchpoint, MDSCR_EL1 or MDCCINT_EL1 register makes it a *debug user*:
//! the kernel loads this shadow into the hardware (`arch::aarch64::debug`) and stops trapping
//! TDA for it, so breakpoints, watchpoints and software step are the CPU's own and reach the
//! guest's EL1 directly (MDCR_EL2.TDE = 0 and HCR_EL2.TGE = 0 make EL1 the debug target
//! Exception level, ARM ARM D2.3 "The debug target Exception level"). When it leaves its CPU
//! the registers are saved here and the hardware is disarmed; a vCPU whose MDSCR_EL1 then has
//! neither MDE nor SS set stops being a debug user (nothing of its state can fire), so a guest
//! that only cleared the registers at boot (Linux) does not pay on every switch.
//!
//! The OS lock registers (TDOSA) stay trapped for everyone, and the lock is emulated: while
//! a vCPU's OS lock (or OS double lock, OSDLR_EL1.DLK where FEAT_DoubleLock exists) is set,
//! its registers stay here, TDA traps its accesses and the hardware is disarmed, so nothing
//! but BRK can fire, which is what the architecture specifies for a locked OS lock (ARM ARM
//! D2.5 "The OS Lock", and the AArch64.GenerateDebugExceptionsFrom() pseudocode: no
//! breakpoint, watchpoint or software step exception while OSLK or DLK is set). The hardware
//! OS lock is not relied on (QEMU 10 does not honour it: docs/qemu-bugs.md) and is left
//! unlocked while a debug user's registers are loaded. The lock is set at reset.
//!
//! Hostile values: a breakpoint or watchpoint number the ID registers do not advertise is
//! UNDEFINED; control values are masked to the fields an EL1 without EL2/EL3 may set, HMC = 0
//! and SSC = 0b00 (ARM ARM D2.8/D2.9, the tables of the HMC, SSC and PMC encodings: with
//! HMC = 0 and SSC = 0b00 a breakpoint or watchpoint matches at EL1 and/or EL0 only, as PMC
//! says); a PMC (PAC, LSC) of 0, reserved with those, disables the comparator. A guest that
//! writes the untrapped hardware registers directly can set other values, but debug
//! exceptions are never taken from EL2 while the debug target is EL1 (ARM ARM D2.4,
//! "Enabling debug exceptions": they are disabled at every Exception level above the
//! target), and the saved values are masked again before they are next loaded.

#![forbid(unsafe_code)]

/// The most breakpoints and watchpoints handled (ID_AA64DFR0_EL1.BRPs/WRPs hold count - 1 in
/// four bits; more need FEAT_Debugv8p9's banked MDSELR_EL1, which is not offered).
pub const MAX_POINTS: usize = 16;

/// MDSCR_EL1 bits a guest may set: SS (0), TDCC (12), KDE (13), MDE (15). HDE (halting),
/// the DCC flags and the rest are the external debugger's or read-only.
pub const MDSCR_SS: u64 = 1 << 0;
pub const MDSCR_KDE: u64 = 1 << 13;
pub const MDSCR_MDE: u64 = 1 << 15;
pub const MDSCR_WRITABLE: u64 = MDSCR_SS | (1 << 12) | MDSCR_KDE | MDSCR_MDE;

/// MDCCINT_EL1: TX (29) and RX (30) interrupt enables.
pub const MDCCINT_WRITABLE: u64 = (1 << 29) | (1 << 30);

/// DBGBCR<n>_EL1 fields kept: E (0), PMC [2:1], BAS [8:5], LBN [19:16], BT [21:20] (address
/// or context-ID match, linked or not: the VMID and CONTEXTIDR_EL2 types need an EL2 the guest
/// has not). HMC (13) and SSC [15:14] are forced to zero.
const BCR_KEEP: u64 = 1 | (0b11 << 1) | (0xf << 5) | (0xf << 16) | (0b11 << 20);
/// DBGWCR<n>_EL1 fields kept: E (0), PAC [2:1], LSC [4:3], BAS [12:5], LBN [19:16], WT (20),
/// MASK [28:24]. HMC (13) and SSC [15:14] are forced to zero.
const WCR_KEEP: u64 =
    1 | (0b11 << 1) | (0b11 << 3) | (0xff << 5) | (0xf << 16) | (1 << 20) | (0x1f << 24);

/// A breakpoint control value as the hardware may hold it for a guest.
pub fn sanitize_bcr(v: u64) -> u64 {
    let v = v & BCR_KEEP;
    if (v >> 1) & 0b11 == 0 { v & !1 } else { v }
}

/// A watchpoint control value as the hardware may hold it for a guest.
pub fn sanitize_wcr(v: u64) -> u64 {
    let v = v & WCR_KEEP;
    if (v >> 1) & 0b11 == 0 || (v >> 3) & 0b11 == 0 {
        v & !1
    } else {
        v
    }
}

/// DBGBVR: bits [1:0] are RES0 (A64 instructions are word aligned).
pub fn sanitize_bvr(v: u64) -> u64 {
    v & !0b11
}

/// DBGWVR: bits [1:0] are RES0 (the BAS field selects bytes within a doubleword; bit 2 is
/// kept for word-aligned watchpoints).
pub fn sanitize_wvr(v: u64) -> u64 {
    v & !0b11
}

/// A vCPU's debug state (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugShadow {
    pub mdscr: u64,
    pub mdccint: u64,
    /// OSLSR_EL1.OSLK: set at reset (ARM ARM D2.5: the OS lock is locked by a cold reset).
    pub os_lock: bool,
    /// OSDLR_EL1.DLK (only where FEAT_DoubleLock is implemented).
    pub os_double_lock: bool,
    pub bvr: [u64; MAX_POINTS],
    pub bcr: [u64; MAX_POINTS],
    pub wvr: [u64; MAX_POINTS],
    pub wcr: [u64; MAX_POINTS],
    /// A debug user: its registers are loaded into the hardware when it takes a CPU, and
    /// MDCR_EL2.TDA is clear while it runs.
    pub user: bool,
    /// Its registers are in this CPU's hardware now (the hardware is authoritative).
    pub live: bool,
    /// Set by a trapped access that needs the hardware updated (first use, or an OS lock
    /// change while live); the kernel clears it when it has done so.
    pub sync_hw: bool,
}

impl Default for DebugShadow {
    fn default() -> Self {
        Self {
            mdscr: 0,
            mdccint: 0,
            os_lock: true,
            os_double_lock: false,
            bvr: [0; MAX_POINTS],
            bcr: [0; MAX_POINTS],
            wvr: [0; MAX_POINTS],
            wcr: [0; MAX_POINTS],
            user: false,
            live: false,
            sync_hw: false,
        }
    }
}

impl DebugShadow {
    /// Locked by the OS lock or the double lock (both mask every debug exception but BRK,
    /// ARM ARM D2.5).
    pub fn locked(&self) -> bool {
        self.os_lock || self.os_double_lock
    }

    /// Whether its registers belong in the hardware while it runs: a debug user whose OS lock
    /// is not set.
    pub fn wants_hw(&self) -> bool {
        self.user && !self.locked()
    }

    /// Whether anything of this state can generate a debug exception (other than BRK):
    /// breakpoints and watchpoints need MDSCR_EL1.MDE, software step MDSCR_EL1.SS.
    pub fn armed(&self) -> bool {
        self.mdscr & (MDSCR_MDE | MDSCR_SS) != 0
    }
}

/// Breakpoints and watchpoints the guest has, from the ID_AA64DFR0_EL1 value `dfr0`:
/// BRPs [15:12] and WRPs [23:20] hold the count minus one.
pub fn counts(dfr0: u64) -> (usize, usize) {
    let brps = ((dfr0 >> 12) & 0xf) as usize + 1;
    let wrps = ((dfr0 >> 20) & 0xf) as usize + 1;
    (brps.min(MAX_POINTS), wrps.min(MAX_POINTS))
}

/// FEAT_DoubleLock: ID_AA64DFR0_EL1.DoubleLock [39:36] is 0 when implemented, 0xf when not.
pub fn has_double_lock(dfr0: u64) -> bool {
    (dfr0 >> 36) & 0xf == 0
}

/// Which bank register a DBG{B,W}{V,C}R<n>_EL1 access names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bank {
    Bvr,
    Bcr,
    Wvr,
    Wcr,
}

/// A trapped access to breakpoint/watchpoint register `n` of `bank`: the value read (0 for
/// a write), or `None` for UNDEFINED (a number beyond what ID_AA64DFR0_EL1 advertises).
pub fn bank_access(
    d: &mut DebugShadow,
    dfr0: u64,
    bank: Bank,
    n: usize,
    write: Option<u64>,
) -> Option<u64> {
    let (brps, wrps) = counts(dfr0);
    let limit = match bank {
        Bank::Bvr | Bank::Bcr => brps,
        Bank::Wvr | Bank::Wcr => wrps,
    };
    if n >= limit {
        return None;
    }
    let (slot, clean): (&mut u64, fn(u64) -> u64) = match bank {
        Bank::Bvr => (&mut d.bvr[n], sanitize_bvr),
        Bank::Bcr => (&mut d.bcr[n], sanitize_bcr),
        Bank::Wvr => (&mut d.wvr[n], sanitize_wvr),
        Bank::Wcr => (&mut d.wcr[n], sanitize_wcr),
    };
    match write {
        Some(v) => {
            *slot = clean(v);
            d.user = true;
            d.sync_hw = true;
            Some(0)
        }
        None => Some(*slot),
    }
}

/// A trapped write of MDSCR_EL1 (or MDCCINT_EL1 with `mdccint`): stored, and the vCPU becomes
/// a debug user.
pub fn write_control(d: &mut DebugShadow, mdccint: bool, v: u64) {
    if mdccint {
        d.mdccint = v & MDCCINT_WRITABLE;
    } else {
        d.mdscr = v & MDSCR_WRITABLE;
    }
    d.user = true;
    d.sync_hw = true;
}

/// A trapped OSLAR_EL1 (`double` false) or OSDLR_EL1 write. A debug user's registers leave
/// the hardware when it locks, and return when it unlocks.
pub fn write_lock(d: &mut DebugShadow, double: bool, dfr0: u64, v: u64) {
    if double {
        d.os_double_lock = has_double_lock(dfr0) && v & 1 != 0;
    } else {
        d.os_lock = v & 1 != 0;
    }
    if d.wants_hw() != d.live {
        d.sync_hw = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cortex-A72: 6 breakpoints, 4 watchpoints, DoubleLock implemented.
    const A72_DFR0: u64 = 0x1030_5106;

    #[test]
    fn control_values_cannot_reach_el2() {
        // HMC = 1, SSC = 0b11, PMC = 0b11, BT = 0b1000 (VMID match), E = 1.
        let v = sanitize_bcr((1 << 13) | (0b11 << 14) | (0b11 << 1) | (0b1000 << 20) | 1);
        assert_eq!(v & (1 << 13), 0, "HMC");
        assert_eq!((v >> 14) & 0b11, 0, "SSC");
        assert_eq!((v >> 20) & 0xf, 0, "BT: no EL2 types");
        assert_eq!(v & 0b111, 0b111, "enabled for EL1 and EL0");
        // PMC = 0 is reserved with HMC = 0 / SSC = 0: disabled.
        assert_eq!(sanitize_bcr(1) & 1, 0);
        let w = sanitize_wcr((1 << 13) | (0b10 << 14) | (0b01 << 1) | (0b10 << 3) | 1);
        assert_eq!(w, (0b01 << 1) | (0b10 << 3) | 1);
        assert_eq!(sanitize_wcr((0b01 << 1) | 1) & 1, 0, "LSC = 0 disables");
    }

    #[test]
    fn bank_numbers_beyond_the_id_registers_undef() {
        let mut d = DebugShadow::default();
        assert_eq!(counts(A72_DFR0), (6, 4));
        assert!(bank_access(&mut d, A72_DFR0, Bank::Bcr, 6, Some(1)).is_none());
        assert!(bank_access(&mut d, A72_DFR0, Bank::Wvr, 4, None).is_none());
        assert!(!d.user, "an UNDEFINED access makes no debug user");
        assert_eq!(
            bank_access(&mut d, A72_DFR0, Bank::Bvr, 5, Some(0x4000_1003)),
            Some(0)
        );
        assert_eq!(
            bank_access(&mut d, A72_DFR0, Bank::Bvr, 5, None),
            Some(0x4000_1000)
        );
        assert!(d.user && d.sync_hw);
        assert_eq!(counts(0xf0f000), (16, 16));
    }

    #[test]
    fn os_lock_and_double_lock() {
        let mut d = DebugShadow::default();
        assert!(d.os_lock, "locked at reset");
        write_lock(&mut d, false, A72_DFR0, 0);
        assert!(!d.locked());
        assert!(!d.sync_hw, "no debug user: nothing to load");
        // A debug user that unlocks wants its registers in the hardware...
        d.os_lock = true;
        d.user = true;
        write_lock(&mut d, false, A72_DFR0, 0);
        assert!(d.wants_hw() && d.sync_hw);
        // ...and out of it when it double-locks.
        d.live = true;
        d.sync_hw = false;
        write_lock(&mut d, true, A72_DFR0, 1);
        assert!(d.locked() && !d.wants_hw() && d.sync_hw);
        // Without FEAT_DoubleLock (DFR0.DoubleLock = 0xf) OSDLR_EL1 is RAZ/WI.
        let mut e = DebugShadow::default();
        write_lock(&mut e, true, A72_DFR0 | (0xf << 36), 1);
        assert!(!e.os_double_lock);
    }

    #[test]
    fn mdscr_keeps_guest_bits_only() {
        let mut d = DebugShadow::default();
        write_control(&mut d, false, u64::MAX);
        assert_eq!(d.mdscr, MDSCR_WRITABLE);
        assert!(d.armed() && d.user);
        write_control(&mut d, false, MDSCR_KDE);
        assert!(!d.armed());
    }
}
