//! The IRQ handler and the log of what it delivered.
//!
//! The handler acknowledges at the GIC, records the delivery (raw IAR, the counter of the
//! timer concerned, the timer's CTL, the running priority), masks a timer interrupt at its
//! source (timer interrupts are level-sensitive), and completes the interrupt: EOIR, plus DIR
//! when EOImode = 1, except for the one INTID a test wants left active.
//!
//! Sharing with the tests: the handler is the only writer of the log while IRQs are unmasked;
//! tests reset and read it with IRQs masked at the PE. One CPU, so plain atomic loads and stores
//! suffice (no read-modify-write atomics: exclusives need not work with the MMU off).
//!
//! A storm guard: after [`STORM_LIMIT`] deliveries since the last reset (a hypervisor that
//! re-delivers an interrupt forever) the handler sets the priority mask to 0, which stops all
//! further interrupts, so the test in progress ends with a FAIL instead of never returning.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use elvisor_guest_rt::arch::irq;
use elvisor_guest_rt::gic::{self, Iar};
use elvisor_guest_rt::timer::{Timer, TimerInterrupts};

/// Deliveries recorded in detail per test; later ones are only counted.
pub const LOG_LEN: usize = 64;

/// Deliveries since the last reset after which the handler masks everything (PMR = 0).
pub const STORM_LIMIT: usize = 512;

/// "No INTID" in the atomics below.
const NONE: u32 = u32::MAX;

/// One delivery, as the handler saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The raw IAR value (GICv2: with the source CPU in bits `[12:10]` for SGIs).
    pub iar: u32,
    /// Its INTID.
    pub intid: u32,
    /// On entry to the handler: CNTPCT_EL0 for the physical timer's INTID, else CNTVCT_EL0.
    pub count: u64,
    /// For the two timer INTIDs: the timer's CTL before the handler masked it (else 0).
    pub timer_ctl: u64,
    /// The running priority while handling it.
    pub running_priority: u8,
}

struct Slot {
    iar: AtomicU32,
    intid: AtomicU32,
    count: AtomicU64,
    timer_ctl: AtomicU64,
    running_priority: AtomicU8,
}

static SLOTS: [Slot; LOG_LEN] = [const {
    Slot {
        iar: AtomicU32::new(0),
        intid: AtomicU32::new(0),
        count: AtomicU64::new(0),
        timer_ctl: AtomicU64::new(0),
        running_priority: AtomicU8::new(0),
    }
}; LOG_LEN];

/// Deliveries since the last reset (may exceed LOG_LEN).
static TOTAL: AtomicUsize = AtomicUsize::new(0);
/// Acknowledges that returned a special INTID (1020..1023) since the last reset.
static SPURIOUS: AtomicUsize = AtomicUsize::new(0);
/// Whether the storm guard tripped since the last reset.
static STORM: AtomicBool = AtomicBool::new(false);
/// Where the first delivery since the last reset interrupted the program (ELR_EL1).
static FIRST_INTERRUPTED_AT: AtomicU64 = AtomicU64::new(0);
/// EOImode = 1 is on: the handler deactivates (DIR) everything except HOLD_ACTIVE.
static SPLIT_EOI: AtomicBool = AtomicBool::new(false);
/// With SPLIT_EOI: the INTID left active for the test to deactivate.
static HOLD_ACTIVE: AtomicU32 = AtomicU32::new(NONE);
/// Deliveries of the virtual timer the handler still re-arms at "now" instead of masking it
/// (see [`set_rearm_virtual`]).
static REARM_VIRTUAL: AtomicU32 = AtomicU32::new(0);
/// The timer INTIDs, so the handler knows which timer to mask.
static VIRTUAL_INTID: AtomicU32 = AtomicU32::new(NONE);
static PHYSICAL_INTID: AtomicU32 = AtomicU32::new(NONE);

/// Installs the handler. Call with IRQs masked, after `gic::install`.
pub fn init(timers: &TimerInterrupts) {
    VIRTUAL_INTID.store(timers.virtual_, Ordering::SeqCst);
    PHYSICAL_INTID.store(timers.physical, Ordering::SeqCst);
    reset();
    irq::set_handler(Some(handle));
}

/// Forgets every delivery. Call with IRQs masked.
pub fn reset() {
    TOTAL.store(0, Ordering::SeqCst);
    SPURIOUS.store(0, Ordering::SeqCst);
    STORM.store(false, Ordering::SeqCst);
}

/// The return address of the first delivery since the last reset (valid if [`total`] > 0):
/// see [`irq::unmask_wfi_mask`].
pub fn first_interrupted_at() -> u64 {
    FIRST_INTERRUPTED_AT.load(Ordering::SeqCst)
}

/// Deliveries since the last reset.
pub fn total() -> usize {
    TOTAL.load(Ordering::SeqCst)
}

/// Deliveries of `intid` since the last reset (among the first [`LOG_LEN`]).
pub fn count_of(intid: u32) -> usize {
    let recorded = total().min(LOG_LEN);
    SLOTS[..recorded]
        .iter()
        .filter(|slot| slot.intid.load(Ordering::SeqCst) == intid)
        .count()
}

/// EOImode = 1 handling: with `Some(intid)` the handler only drops the priority of `intid`
/// (leaving it active for the test's DIR) and deactivates everything else itself; `None`
/// returns to EOImode = 0 handling. Call with IRQs masked.
pub fn set_split_eoi(hold_active: Option<u32>) {
    HOLD_ACTIVE.store(hold_active.unwrap_or(NONE), Ordering::SeqCst);
    SPLIT_EOI.store(hold_active.is_some(), Ordering::SeqCst);
}

/// For the next `n` deliveries of the virtual timer, the handler re-arms the timer with CVAL
/// at the current count instead of masking it: its line stays high across the EOI, as a
/// periodic tick's does when its next deadline has already passed by the time the handler
/// programs it. Call with IRQs masked.
pub fn set_rearm_virtual(n: u32) {
    REARM_VIRTUAL.store(n, Ordering::SeqCst);
}

/// The deliveries since the last reset.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    entries: [Delivery; LOG_LEN],
    recorded: usize,
    /// All deliveries, including those past [`LOG_LEN`].
    pub total: usize,
    /// Acknowledges that returned a special INTID.
    pub spurious: usize,
    /// Whether the storm guard tripped.
    pub storm: bool,
}

impl Snapshot {
    /// Copies the log. Call with IRQs masked.
    pub fn take() -> Self {
        let total = total();
        let recorded = total.min(LOG_LEN);
        let mut entries = [Delivery::default(); LOG_LEN];
        for (entry, slot) in entries.iter_mut().zip(&SLOTS[..recorded]) {
            *entry = Delivery {
                iar: slot.iar.load(Ordering::SeqCst),
                intid: slot.intid.load(Ordering::SeqCst),
                count: slot.count.load(Ordering::SeqCst),
                timer_ctl: slot.timer_ctl.load(Ordering::SeqCst),
                running_priority: slot.running_priority.load(Ordering::SeqCst),
            };
        }
        Self {
            entries,
            recorded,
            total,
            spurious: SPURIOUS.load(Ordering::SeqCst),
            storm: STORM.load(Ordering::SeqCst),
        }
    }

    /// The recorded deliveries, in order.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.entries[..self.recorded]
    }

    /// How many recorded deliveries had `intid`.
    pub fn count_of(&self, intid: u32) -> usize {
        self.deliveries()
            .iter()
            .filter(|d| d.intid == intid)
            .count()
    }

    /// The first recorded delivery of `intid`.
    pub fn first_of(&self, intid: u32) -> Option<Delivery> {
        self.deliveries().iter().copied().find(|d| d.intid == intid)
    }

    /// How many recorded deliveries had an INTID not in `expected`.
    pub fn count_other_than(&self, expected: &[u32]) -> usize {
        self.deliveries()
            .iter()
            .filter(|d| !expected.contains(&d.intid))
            .count()
    }

    /// The delivered INTIDs in order, for messages.
    pub fn intids(&self) -> Intids<'_> {
        Intids(self)
    }
}

/// Displays the delivered INTIDs as `[a, b, c xN, ...]` (runs of one INTID collapsed), plus
/// the deliveries past [`LOG_LEN`], the spurious count and the storm flag.
pub struct Intids<'a>(&'a Snapshot);

impl core::fmt::Display for Intids<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("[")?;
        let mut rest = self.0.deliveries();
        let mut first = true;
        while let Some(head) = rest.first() {
            let run = rest.iter().take_while(|d| d.intid == head.intid).count();
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}", head.intid)?;
            if run > 1 {
                write!(f, " x{run}")?;
            }
            rest = &rest[run..];
        }
        if self.0.total > self.0.recorded {
            write!(f, ", +{} more", self.0.total - self.0.recorded)?;
        }
        f.write_str("]")?;
        if self.0.spurious > 0 {
            write!(f, " +{} spurious", self.0.spurious)?;
        }
        if self.0.storm {
            write!(f, " (interrupt storm: masked with PMR 0)")?;
        }
        Ok(())
    }
}

/// A device interrupt the handler acknowledges at the device before its EOI: the INTID and
/// the MMIO address of the device's interrupt-clear register (written with 1).
static DEVICE_INTID: AtomicU32 = AtomicU32::new(u32::MAX);
static DEVICE_CLEAR_ADDR: AtomicUsize = AtomicUsize::new(0);
/// Clear the device after the EOI instead of before it.
static DEVICE_CLEAR_AFTER_EOI: AtomicBool = AtomicBool::new(false);

/// The value the handler writes to the device's interrupt-clear register.
static DEVICE_CLEAR_VALUE: AtomicU32 = AtomicU32::new(1);

/// Registers a level-sensitive device interrupt (e.g. a passed-through RTC) whose line the
/// handler must lower by writing 1 to `clear_addr` before the EOI.
pub fn set_device_ack(intid: u32, clear_addr: usize) {
    set_device_ack_value(intid, clear_addr, 1);
}

/// [`set_device_ack`] with another value to write (the PL061's GPIOIC takes a line mask).
pub fn set_device_ack_value(intid: u32, clear_addr: usize, value: u32) {
    DEVICE_CLEAR_VALUE.store(value, Ordering::SeqCst);
    DEVICE_CLEAR_ADDR.store(clear_addr, Ordering::SeqCst);
    DEVICE_INTID.store(intid, Ordering::SeqCst);
}

/// Whether the handler lowers the device's line after its EOI (`true`) instead of before.
/// Legal for a level-sensitive interrupt: the line, still high at the deactivation, makes it
/// pending again at once, and it must stop being pending when the line falls.
pub fn set_device_clear_after_eoi(after: bool) {
    DEVICE_CLEAR_AFTER_EOI.store(after, Ordering::SeqCst);
}

/// Writes the clear value to the registered device's interrupt-clear register.
fn clear_device() {
    let addr = DEVICE_CLEAR_ADDR.load(Ordering::SeqCst);
    if let Some(reg) = elvisor_guest_rt::arch::mmio::Region::new(addr, 4) {
        reg.write32(0, DEVICE_CLEAR_VALUE.load(Ordering::SeqCst));
    }
}

/// The IRQ handler.
fn handle() {
    let Some(gic) = gic::installed() else {
        // `init` runs after `gic::install` and IRQs are unmasked only after `init`.
        return;
    };
    let iar = gic.acknowledge();
    if iar.is_special() {
        SPURIOUS.store(SPURIOUS.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
        return;
    }
    let intid = iar.intid();
    let rearm = REARM_VIRTUAL.load(Ordering::SeqCst);
    let (count, timer_ctl) = if intid == VIRTUAL_INTID.load(Ordering::SeqCst) && rearm > 0 {
        REARM_VIRTUAL.store(rearm - 1, Ordering::SeqCst);
        let t = Timer::Virtual;
        let (count, ctl) = (t.count(), t.control());
        t.arm_at(count);
        (count, ctl)
    } else if intid == VIRTUAL_INTID.load(Ordering::SeqCst) {
        mask_timer(Timer::Virtual)
    } else if intid == PHYSICAL_INTID.load(Ordering::SeqCst) {
        mask_timer(Timer::Physical)
    } else {
        (Timer::Virtual.count(), 0)
    };
    record(iar, count, timer_ctl, gic.running_priority());
    let device = intid == DEVICE_INTID.load(Ordering::SeqCst);
    let clear_after = DEVICE_CLEAR_AFTER_EOI.load(Ordering::SeqCst);
    if device && !clear_after {
        clear_device();
    }

    gic.end_of_interrupt(iar);
    if SPLIT_EOI.load(Ordering::SeqCst) && intid != HOLD_ACTIVE.load(Ordering::SeqCst) {
        gic.deactivate(iar);
    }
    if device && clear_after {
        clear_device();
    }
}

/// Reads the timer's counter and CTL, then masks it so its level drops before the EOI.
fn mask_timer(timer: Timer) -> (u64, u64) {
    let count = timer.count();
    let ctl = timer.control();
    timer.mask();
    (count, ctl)
}

fn record(iar: Iar, count: u64, timer_ctl: u64, running_priority: u8) {
    let n = TOTAL.load(Ordering::SeqCst);
    if n == 0 {
        FIRST_INTERRUPTED_AT.store(irq::interrupted_at(), Ordering::SeqCst);
    }
    if let Some(slot) = SLOTS.get(n) {
        slot.iar.store(iar.raw(), Ordering::SeqCst);
        slot.intid.store(iar.intid(), Ordering::SeqCst);
        slot.count.store(count, Ordering::SeqCst);
        slot.timer_ctl.store(timer_ctl, Ordering::SeqCst);
        slot.running_priority
            .store(running_priority, Ordering::SeqCst);
    }
    TOTAL.store(n + 1, Ordering::SeqCst);
    if n + 1 >= STORM_LIMIT && !STORM.load(Ordering::SeqCst) {
        STORM.store(true, Ordering::SeqCst);
        if let Some(gic) = gic::installed() {
            gic.set_priority_mask(0);
        }
    }
}
