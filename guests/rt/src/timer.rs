//! The EL1 generic timers as test guests use them: the virtual and physical timer, their
//! interrupt IDs from the device tree's `/timer` node, and tick/time conversions.
//!
//! ```text
//!   /timer  compatible = "arm,armv8-timer"
//!           interrupts = <1 13 f>  secure physical      PPI 13 = INTID 29
//!                        <1 14 f>  non-secure physical  PPI 14 = INTID 30  (CNTP_*, Timer::Physical)
//!                        <1 11 f>  virtual              PPI 11 = INTID 27  (CNTV_*, Timer::Virtual)
//!                        <1 10 f>  hypervisor           PPI 10 = INTID 26
//! ```
//!
//! Timer interrupts are level-sensitive: the line stays asserted while CTL.ENABLE = 1,
//! CTL.IMASK = 0 and the count is at or past CVAL, so a handler must mask or disable the timer
//! (or move CVAL) before it completes the interrupt.

use fdt::Fdt;

use crate::arch::timer as regs;
pub use crate::arch::timer::{CTL_ENABLE, CTL_IMASK, CTL_ISTATUS, frequency_hz};

/// One of the two EL1 timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// CNTV_*: compares CVAL against CNTVCT_EL0.
    Virtual,
    /// CNTP_*: compares CVAL against CNTPCT_EL0.
    Physical,
}

impl Timer {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Virtual => "virtual",
            Self::Physical => "physical",
        }
    }

    /// The other timer (a watchdog for a test of this one).
    pub fn other(self) -> Self {
        match self {
            Self::Virtual => Self::Physical,
            Self::Physical => Self::Virtual,
        }
    }

    /// The counter this timer compares with: CNTVCT_EL0 or CNTPCT_EL0.
    pub fn count(self) -> u64 {
        match self {
            Self::Virtual => regs::virtual_count(),
            Self::Physical => regs::physical_count(),
        }
    }

    /// CNTx_CTL_EL0.
    pub fn control(self) -> u64 {
        match self {
            Self::Virtual => regs::virtual_control(),
            Self::Physical => regs::physical_control(),
        }
    }

    /// Writes CNTx_CTL_EL0.
    pub fn set_control(self, value: u64) {
        match self {
            Self::Virtual => regs::set_virtual_control(value),
            Self::Physical => regs::set_physical_control(value),
        }
    }

    /// CNTx_CVAL_EL0.
    pub fn compare(self) -> u64 {
        match self {
            Self::Virtual => regs::virtual_compare(),
            Self::Physical => regs::physical_compare(),
        }
    }

    /// Writes CNTx_CVAL_EL0.
    pub fn set_compare(self, value: u64) {
        match self {
            Self::Virtual => regs::set_virtual_compare(value),
            Self::Physical => regs::set_physical_compare(value),
        }
    }

    /// Fires at count `cval`: CVAL first, then ENABLE with IMASK clear.
    pub fn arm_at(self, cval: u64) {
        self.set_compare(cval);
        self.set_control(CTL_ENABLE);
    }

    /// Fires `ticks` from now; returns the CVAL programmed.
    pub fn arm_after(self, ticks: u64) -> u64 {
        let cval = self.count().wrapping_add(ticks);
        self.arm_at(cval);
        cval
    }

    /// Sets IMASK, keeping ENABLE: what an interrupt handler does to drop the level.
    pub fn mask(self) {
        self.set_control(self.control() | CTL_IMASK);
    }

    /// Disables the timer (ENABLE = 0, IMASK = 1): no interrupt until armed again.
    pub fn stop(self) {
        self.set_control(CTL_IMASK);
    }

    /// Whether the timer is enabled with its interrupt unmasked (armed, fired or not).
    pub fn is_armed(self) -> bool {
        self.control() & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE
    }
}

/// Counter ticks in `us` microseconds (at least 1).
pub fn ticks_from_us(us: u64) -> u64 {
    (frequency_hz().saturating_mul(us) / 1_000_000).max(1)
}

/// Microseconds in `ticks` counter ticks (0 if CNTFRQ_EL0 reads 0).
pub fn us_from_ticks(ticks: u64) -> u64 {
    match frequency_hz() {
        0 => 0,
        hz => ((u128::from(ticks) * 1_000_000) / u128::from(hz)) as u64,
    }
}

/// The timer INTIDs, from `/timer` (`arm,armv8-timer`) or the architectural defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerInterrupts {
    /// Secure EL1 physical timer (PPI 13 = INTID 29 by default).
    pub secure_physical: u32,
    /// Non-secure EL1 physical timer (PPI 14 = INTID 30): [`Timer::Physical`].
    pub physical: u32,
    /// EL1 virtual timer (PPI 11 = INTID 27): [`Timer::Virtual`].
    pub virtual_: u32,
    /// EL2 physical timer (PPI 10 = INTID 26).
    pub hypervisor: u32,
    /// Whether the values came from the device tree.
    pub from_dtb: bool,
}

impl TimerInterrupts {
    /// The Server Base System Architecture's PPI assignment, which QEMU `virt` follows.
    pub const DEFAULT: Self = Self {
        secure_physical: 29,
        physical: 30,
        virtual_: 27,
        hypervisor: 26,
        from_dtb: false,
    };

    /// Reads `/timer` (or the first `arm,armv8-timer` / `arm,armv7-timer` node); anything
    /// missing or malformed gives [`Self::DEFAULT`].
    pub fn discover(fdt: Option<&Fdt<'static>>) -> Self {
        let Some(fdt) = fdt else {
            return Self::DEFAULT;
        };
        let compatible = ["arm,armv8-timer", "arm,armv7-timer"];
        let node = crate::boot::find_node(fdt, "/timer")
            .filter(|node| crate::dt::is_compatible(*node, &compatible))
            .or_else(|| crate::dt::find_compatible(fdt, &compatible));
        let Some(node) = node else {
            return Self::DEFAULT;
        };
        let intid = |i| crate::dt::gic_interrupt(node, i).and_then(|irq| irq.intid());
        match (intid(0), intid(1), intid(2), intid(3)) {
            (Some(secure_physical), Some(physical), Some(virtual_), Some(hypervisor)) => Self {
                secure_physical,
                physical,
                virtual_,
                hypervisor,
                from_dtb: true,
            },
            _ => Self::DEFAULT,
        }
    }

    /// The INTID of `timer`.
    pub fn intid(&self, timer: Timer) -> u32 {
        match timer {
            Timer::Virtual => self.virtual_,
            Timer::Physical => self.physical,
        }
    }
}
