//! `vtimer-level`: the virtual timer is a level-sensitive interrupt, and its pending state must
//! follow the timer's output line, as on a GIC without virtualization (IHI 0069 §4.1.2).
//!
//! Under elvisor the guest owns CNTV_* directly: disabling the timer, masking it, or moving CVAL
//! ahead does not trap, yet the physical PPI was already taken at EL2 (IRQs are routed there
//! whatever the guest's PSTATE.I) and the interrupt sits pending in a list register. Each round
//! runs with IRQs masked at the PE:
//!
//! ```text
//!   arm the timer at "now"   (it fires: the hypervisor takes the PPI, the LR holds it)
//!   spin 1 ms, masked        (the physical interrupt has surely reached EL2)
//!   drop the line one way    ENABLE = 0 | IMASK = 1 | CVAL an hour ahead | (control: keep it)
//!   read ISPENDR and ICPENDR (trapped: want 0 after a drop, 1 for the control)
//!   unmask for 2 ms          (want nothing after a drop, exactly one for the control)
//!   arm at "now" again       (exactly one: the physical PPI was not left active)
//! ```
//!
//! The handler (log.rs) masks the timer (IMASK) before its EOI, so a delivered instance drops
//! its own line. The last step proves that a dropped instance handed the physical interrupt
//! back: otherwise the PPI would stay active and never fire again.

use elvisor_guest_rt::Report;
use elvisor_guest_rt::gic::{self, Version, gicd, gicr};
use elvisor_guest_rt::timer::{CTL_ENABLE, CTL_IMASK, CTL_ISTATUS, Timer};

use crate::Ctx;
use crate::findings::Findings;
use crate::log::{self, Snapshot};
use crate::wait::{self, ms};

/// How long the guest spins with IRQs masked after the timer fired.
const SETTLE_MS: u64 = 1;
/// How long IRQs are unmasked to see what arrives.
const WATCH_MS: u64 = 2;
/// How long a re-armed (expired) timer may take to interrupt.
const DELIVERY_MS: u64 = 100;

/// How a round lowers the timer's output after it fired.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drop {
    /// CNTV_CTL.ENABLE = 0.
    Disable,
    /// CNTV_CTL.IMASK = 1 (still enabled, ISTATUS still 1).
    Imask,
    /// CNTV_CVAL an hour ahead (enabled, unmasked, condition no longer met).
    CvalAhead,
    /// The control: the line stays high.
    None,
}

impl Drop {
    fn name(self) -> &'static str {
        match self {
            Self::Disable => "ENABLE=0",
            Self::Imask => "IMASK=1",
            Self::CvalAhead => "CVAL ahead",
            Self::None => "line kept high",
        }
    }

    fn apply(self) {
        let t = Timer::Virtual;
        match self {
            Self::Disable => t.set_control(0),
            Self::Imask => t.set_control(CTL_ENABLE | CTL_IMASK),
            Self::CvalAhead => t.set_compare(t.count().wrapping_add(ms(3_600_000))),
            Self::None => {}
        }
    }
}

/// The virtual timer's INTID in this CPU's ICPENDR0 (GICR_ICPENDR0 / banked GICD_ICPENDR0).
fn icpendr_bit(ctx: &Ctx, intid: u32) -> bool {
    let word = match ctx.gic.version() {
        Version::V3 => ctx
            .gic
            .redistributor()
            .map_or(0, |r| r.read32(gicr::SGI_BASE + gicd::ICPENDR)),
        Version::V2 => ctx.gic.distributor().read32(gicd::ICPENDR),
    };
    word & (1 << intid) != 0
}

/// `vtimer-level`: see the module documentation.
pub fn vtimer_level(report: &mut Report, ctx: &Ctx) {
    const NAME: &str = "vtimer-level";
    let gic = &ctx.gic;
    let intid = ctx.timers.virtual_;
    let t = Timer::Virtual;
    let mut f = Findings::new();
    for way in [Drop::Disable, Drop::Imask, Drop::CvalAhead, Drop::None] {
        ctx.prepare(report, NAME);
        Timer::Physical.stop();
        t.stop();
        gic.set_priority(intid, gic::DEFAULT_PRIORITY);
        gic.enable(intid);

        t.arm_at(t.count());
        wait::masked_spin_for(ms(SETTLE_MS));
        let fired = t.control();
        way.apply();
        let ispendr = gic.is_pending(intid);
        let icpendr = icpendr_bit(ctx, intid);
        let high = way == Drop::None;
        wait::spin_for(ms(WATCH_MS));
        let after = Snapshot::take();
        let ispendr_after = gic.is_pending(intid);

        f.expect(
            fired & (CTL_ENABLE | CTL_ISTATUS) == CTL_ENABLE | CTL_ISTATUS,
            format_args!(
                "{}: CNTV_CTL={fired:#x} after {SETTLE_MS} ms, want ENABLE and ISTATUS",
                way.name()
            ),
        );
        f.expect(
            ispendr == high && icpendr == high,
            format_args!(
                "{}: ISPENDR0/ICPENDR0 bit {intid} read {}/{} with IRQs masked (want {})",
                way.name(),
                u8::from(ispendr),
                u8::from(icpendr),
                u8::from(high)
            ),
        );
        let want = usize::from(high);
        f.expect(
            after.count_of(intid) == want && after.total == want,
            format_args!(
                "{}: after unmasking, delivered {} (want {})",
                way.name(),
                after.intids(),
                if high { "one [27]" } else { "nothing" }
            ),
        );
        f.expect(
            !ispendr_after,
            format_args!(
                "{}: ISPENDR0 bit {intid} still set after the unmasked wait",
                way.name()
            ),
        );

        // The next rise of the line is delivered once: the physical PPI is not stuck active.
        log::reset();
        t.arm_at(t.count());
        let again = wait::spin_until(ms(DELIVERY_MS), || log::count_of(intid) >= 1);
        wait::spin_for(ms(WATCH_MS));
        t.stop();
        let log = Snapshot::take();
        f.expect(
            again && log.count_of(intid) == 1 && log.total == 1,
            format_args!(
                "{}: timer re-armed at once: delivered {} within {DELIVERY_MS} ms (want [{intid}])",
                way.name(),
                log.intids()
            ),
        );
        let leftover = ctx.drain();
        f.expect(
            leftover == 0,
            format_args!("{}: {leftover} interrupt(s) still pending", way.name()),
        );
    }
    t.stop();
    f.finish(report, NAME);
}
