//! The `plant-all` and `watch-all` roles: the leak test over every system-register encoding a
//! guest can reach, not just the ones a person thought of.
//!
//! Both roles sweep op0 = 3 and op0 = 2 (op1 0..7, CRn 0..15, CRm 0..15, op2 0..7: 131,072
//! encodings) with the generated batches of `elvisor_guest_rt::arch::sysregs`, an UNDEF or any
//! other synchronous exception caught per encoding.
//!
//! The planter writes two markers to every encoding it may write and reads each back:
//!
//! ```text
//!   both halves   0x5a17c0de_5a17c0de                     survives where either 32-bit half is writable
//!   encoded       0x5a17c0de_<enc:16>a5a5                 says which encoding it was written to
//! ```
//!
//! A value "carries the tag" when one of its 32-bit halves is 0x5a17c0de. The registers whose
//! read-back carries it are the planted set; each keeps the encoded marker where that survived,
//! the other one otherwise. The planter checks the set still reads tagged after planting all of
//! it, re-writes it every millisecond for `spy.plant-ms` with IRQs masked and powers off. A
//! register with fewer writable bits than a tag (CSSELR_EL1, CNTKCTL_EL1, CNTV_CTL_EL0, ...)
//! cannot be planted this way; the planter lists how many it wrote without a tag surviving.
//!
//! The watcher (same physical CPU) finds what it can read, takes a first sweep as its snapshot,
//! then sweeps everything readable every `spy.sweep-ms` for `spy.watch-ms`, IRQs masked during
//! a sweep. It writes none of them, so a tagged value is another VM's: one FAIL per encoding,
//! named `S3_op1_Cn_Cm_op2` (and architecturally where [`name`] knows it). Registers whose value
//! changed since the snapshot are listed in a note (counters, timers and exception registers
//! change on their own; a narrow register that changes is worth a look). The virtual-timer
//! liveness checks of the `watch` role run alongside.
//!
//! Excluded: writes to `attack::MSR_EXCLUDED` (this guest's own MMU, translation, vectors,
//! stack, masks, FP modes; ICC_BPR0/1 because of a QEMU assertion) and [`NO_WRITE`]; reads of
//! [`NO_READ`] (acknowledging an interrupt is not a read without side effects).

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use elvisor_guest_rt::arch::attack::{MSR_EXCLUDED, SysReg};
use elvisor_guest_rt::arch::irq;
use elvisor_guest_rt::arch::sysregs::{self, BATCH, Op, Outcome};
use elvisor_guest_rt::exception::ec;
use elvisor_guest_rt::timer::{self, Timer, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, Report};

use super::{Delivery, Options, PERIOD_TICKS, TIMER_IRQS, bring_up, ms_since};

/// The planter's tag: one 32-bit half of a planted value.
const TAG: u32 = 0x5a17_c0de;
/// The marker with the tag in both halves.
const BOTH: u64 = (TAG as u64) << 32 | TAG as u64;
/// Low half of the encoded marker: `<enc:16> a5a5`.
const ENCODED_LOW: u64 = 0xa5a5;

/// Every encoding of op0 = 2 and op0 = 3, as a 16-bit code (op0 - 2, op1, CRn, CRm, op2).
const ENCODINGS: usize = 2 << 14;
/// Readable encodings kept (QEMU `-cpu max` has a few hundred).
const MAX_READABLE: usize = 2048;
/// Changed registers named in the closing note.
const MAX_CHANGED_NAMED: usize = 48;

/// Encodings never read: ICC_IAR0_EL1, ICC_IAR1_EL1 and ICC_NMIAR1_EL1 acknowledge the
/// highest-priority pending interrupt (the watcher's own timer would stay active for good).
const NO_READ: &[SysReg] = &[
    SysReg::new(3, 0, 12, 8, 0),
    SysReg::new(3, 0, 12, 12, 0),
    SysReg::new(3, 0, 12, 9, 5),
];

/// Encodings the planter does not write besides `MSR_EXCLUDED`, each because the write would
/// break the planter itself rather than test the hypervisor:
///
/// ```text
///   CNTFRQ_EL0   S3_3_C14_C0_0   the runtime's time base; writable at the highest EL (EL1 on bare QEMU)
///   RMR_EL1      S3_0_C12_C0_2   RR = 1 requests a warm reset (exists where EL1 is the highest EL)
///   GCSCR_EL1    S3_0_C2_C5_0    enables the guarded control stack at EL1 (bare QEMU -cpu max):
///                                every RET would fault
/// ```
///
/// The rest is written: timers (IRQs stay masked), the GIC CPU interface (PMR, group enables,
/// EOI/DIR, SGI registers: the planter takes no interrupt), ELR/SPSR/ESR/FAR_EL1, SP_EL0 (the
/// runtime runs on SP_EL1), NZCV and the PSTATE fields PAN/UAO/DIT/SSBS/TCO (nothing here
/// depends on them with the MMU off), debug registers (PSTATE.D stays masked), PMU, TPIDR*.
const NO_WRITE: &[SysReg] = &[
    SysReg::new(3, 3, 14, 0, 0),
    SysReg::new(3, 0, 12, 0, 2),
    SysReg::new(3, 0, 2, 5, 0),
];

/// Readable encodings (16-bit codes), their count, and the watcher's snapshot of each.
static READABLE: [AtomicU16; MAX_READABLE] = [const { AtomicU16::new(0) }; MAX_READABLE];
static SNAPSHOT: [AtomicU64; MAX_READABLE] = [const { AtomicU64::new(0) }; MAX_READABLE];
/// Per readable encoding: a leak was reported / the value changed since the snapshot.
static LEAKED: [AtomicBool; MAX_READABLE] = [const { AtomicBool::new(false) }; MAX_READABLE];
static CHANGED: [AtomicBool; MAX_READABLE] = [const { AtomicBool::new(false) }; MAX_READABLE];
/// The planter's final value per readable encoding (0: not planted).
static PLANTED: [AtomicU64; MAX_READABLE] = [const { AtomicU64::new(0) }; MAX_READABLE];

fn code(r: SysReg) -> u16 {
    u16::from(r.op0 - 2) << 14
        | u16::from(r.op1) << 11
        | u16::from(r.crn) << 7
        | u16::from(r.crm) << 3
        | u16::from(r.op2)
}

fn from_code(c: u16) -> SysReg {
    SysReg::new(
        2 + (c >> 14) as u8,
        (c >> 11 & 7) as u8,
        (c >> 7 & 15) as u8,
        (c >> 3 & 15) as u8,
        (c & 7) as u8,
    )
}

fn encoded_marker(r: SysReg) -> u64 {
    (TAG as u64) << 32 | u64::from(code(r)) << 16 | ENCODED_LOW
}

fn tagged(value: u64) -> bool {
    (value >> 32) as u32 == TAG || value as u32 == TAG
}

/// The encoding an encoded marker was written to, if `value` is one.
fn marked_encoding(value: u64) -> Option<SysReg> {
    ((value >> 32) as u32 == TAG && value & 0xffff == ENCODED_LOW)
        .then(|| from_code((value >> 16) as u16))
}

/// Architectural names of the encodings most worth naming: what a world switch keeps per
/// vCPU, and what a guest reaches beside it.
fn name(r: SysReg) -> Option<&'static str> {
    let SysReg {
        op0,
        op1,
        crn,
        crm,
        op2,
    } = r;
    Some(match (op0, op1, crn, crm, op2) {
        (3, 0, 1, 0, 5) => "RGSR_EL1",
        (3, 0, 1, 0, 6) => "GCR_EL1",
        (3, 0, 1, 2, 0) => "ZCR_EL1",
        (3, 0, 2, 5, 1) => "GCSPR_EL1",
        (3, 0, 2, 1, 0) => "APIAKeyLo_EL1",
        (3, 0, 2, 1, 1) => "APIAKeyHi_EL1",
        (3, 0, 2, 1, 2) => "APIBKeyLo_EL1",
        (3, 0, 2, 1, 3) => "APIBKeyHi_EL1",
        (3, 0, 2, 2, 0) => "APDAKeyLo_EL1",
        (3, 0, 2, 2, 1) => "APDAKeyHi_EL1",
        (3, 0, 2, 2, 2) => "APDBKeyLo_EL1",
        (3, 0, 2, 2, 3) => "APDBKeyHi_EL1",
        (3, 0, 2, 3, 0) => "APGAKeyLo_EL1",
        (3, 0, 2, 3, 1) => "APGAKeyHi_EL1",
        (3, 0, 4, 0, 0) => "SPSR_EL1",
        (3, 0, 4, 0, 1) => "ELR_EL1",
        (3, 0, 4, 1, 0) => "SP_EL0",
        (3, 0, 4, 2, 3) => "PAN",
        (3, 0, 4, 2, 4) => "UAO",
        (3, 0, 4, 6, 0) => "ICC_PMR_EL1",
        (3, 0, 5, 1, 0) => "AFSR0_EL1",
        (3, 0, 5, 1, 1) => "AFSR1_EL1",
        (3, 0, 5, 2, 0) => "ESR_EL1",
        (3, 0, 5, 6, 0) => "TFSR_EL1",
        (3, 0, 5, 6, 1) => "TFSRE0_EL1",
        (3, 0, 6, 0, 0) => "FAR_EL1",
        (3, 0, 7, 4, 0) => "PAR_EL1",
        (3, 0, 10, 2, 0) => "MAIR_EL1",
        (3, 0, 10, 2, 1) => "MAIR2_EL1",
        (3, 0, 10, 2, 2) => "PIRE0_EL1",
        (3, 0, 10, 2, 3) => "PIR_EL1",
        (3, 0, 10, 2, 4) => "POR_EL1",
        (3, 0, 10, 3, 0) => "AMAIR_EL1",
        (3, 0, 12, 1, 0) => "ISR_EL1",
        (3, 0, 12, 1, 1) => "DISR_EL1",
        (3, 0, 12, 8, 2) => "ICC_HPPIR0_EL1",
        (3, 0, 12, 11, 3) => "ICC_RPR_EL1",
        (3, 0, 12, 12, 2) => "ICC_HPPIR1_EL1",
        (3, 0, 12, 8, 4) => "ICC_AP0R0_EL1",
        (3, 0, 12, 8, 5) => "ICC_AP0R1_EL1",
        (3, 0, 12, 8, 6) => "ICC_AP0R2_EL1",
        (3, 0, 12, 8, 7) => "ICC_AP0R3_EL1",
        (3, 0, 12, 9, 0) => "ICC_AP1R0_EL1",
        (3, 0, 12, 9, 1) => "ICC_AP1R1_EL1",
        (3, 0, 12, 9, 2) => "ICC_AP1R2_EL1",
        (3, 0, 12, 9, 3) => "ICC_AP1R3_EL1",
        (3, 0, 12, 12, 4) => "ICC_CTLR_EL1",
        (3, 0, 12, 12, 5) => "ICC_SRE_EL1",
        (3, 0, 12, 12, 6) => "ICC_IGRPEN0_EL1",
        (3, 0, 12, 12, 7) => "ICC_IGRPEN1_EL1",
        (3, 0, 13, 0, 1) => "CONTEXTIDR_EL1",
        (3, 0, 13, 0, 4) => "TPIDR_EL1",
        (3, 0, 13, 0, 5) => "ACCDATA_EL1",
        (3, 0, 13, 0, 7) => "SCXTNUM_EL1",
        (3, 0, 14, 1, 0) => "CNTKCTL_EL1",
        (3, 2, 0, 0, 0) => "CSSELR_EL1",
        (3, 3, 2, 4, 0) => "RNDR",
        (3, 3, 2, 4, 1) => "RNDRRS",
        (3, 3, 4, 2, 0) => "NZCV",
        (3, 3, 4, 2, 5) => "DIT",
        (3, 3, 4, 2, 6) => "SSBS",
        (3, 3, 4, 2, 7) => "TCO",
        (3, 3, 4, 4, 1) => "FPSR",
        (3, 3, 4, 4, 2) => "FPMR",
        (3, 3, 13, 0, 2) => "TPIDR_EL0",
        (3, 3, 13, 0, 3) => "TPIDRRO_EL0",
        (3, 3, 13, 0, 5) => "TPIDR2_EL0",
        (3, 3, 13, 0, 7) => "SCXTNUM_EL0",
        (3, 3, 14, 0, 1) => "CNTPCT_EL0",
        (3, 3, 14, 0, 2) => "CNTVCT_EL0",
        (3, 3, 14, 0, 5) => "CNTPCTSS_EL0",
        (3, 3, 14, 0, 6) => "CNTVCTSS_EL0",
        (3, 3, 14, 2, 0) => "CNTP_TVAL_EL0",
        (3, 3, 14, 2, 1) => "CNTP_CTL_EL0",
        (3, 3, 14, 2, 2) => "CNTP_CVAL_EL0",
        (3, 3, 14, 3, 0) => "CNTV_TVAL_EL0",
        (3, 3, 14, 3, 1) => "CNTV_CTL_EL0",
        (3, 3, 14, 3, 2) => "CNTV_CVAL_EL0",
        (2, 0, 0, 2, 0) => "MDCCINT_EL1",
        (2, 0, 0, 2, 2) => "MDSCR_EL1",
        (2, 0, 0, 0, 2) => "OSDTRRX_EL1",
        (2, 0, 0, 3, 2) => "OSDTRTX_EL1",
        (2, 0, 0, 6, 2) => "OSECCR_EL1",
        (2, 0, 0, n, 4) if n < 16 => "DBGBVR<n>_EL1",
        (2, 0, 0, n, 5) if n < 16 => "DBGBCR<n>_EL1",
        (2, 0, 0, n, 6) if n < 16 => "DBGWVR<n>_EL1",
        (2, 0, 0, n, 7) if n < 16 => "DBGWCR<n>_EL1",
        (2, 0, 7, 8, 6) => "DBGCLAIMSET_EL1",
        (2, 0, 7, 9, 6) => "DBGCLAIMCLR_EL1",
        (2, 3, 0, 5, 0) => "DBGDTR_EL0",
        (3, 0, 9, _, _) | (3, 3, 9, _, _) | (3, 3, 14, 8..=15, _) => "a PMU register",
        _ => return None,
    })
}

/// An encoding for messages: `S3_0_C13_C0_4 (TPIDR_EL1)`.
struct Named(SysReg);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name(self.0) {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// What a sweep of the whole space found.
#[derive(Default)]
struct Census {
    /// Encodings tried.
    tried: u32,
    /// Readable (kept in `READABLE`).
    readable: usize,
    /// UNDEFINED (EC 0x00).
    undef: u32,
    /// Any other exception (a trap the hypervisor answered otherwise), with the first one.
    other: u32,
    first_other: Option<(SysReg, u64)>,
    /// Readable encodings beyond `MAX_READABLE` (dropped).
    dropped: u32,
}

/// Reads every encoding but [`NO_READ`] once and records the readable ones in `READABLE`.
fn find_readable() -> Census {
    let mut census = Census::default();
    let mut ops = [Op::Read(SysReg::new(3, 0, 0, 0, 0)); BATCH];
    let mut out = [Outcome::Refused; BATCH];
    let mut next = 0u32;
    while next < ENCODINGS as u32 {
        let mut len = 0;
        let mut codes = [0u16; BATCH];
        while len < BATCH && next < ENCODINGS as u32 {
            let r = from_code(next as u16);
            next += 1;
            if NO_READ.contains(&r) {
                continue;
            }
            ops[len] = Op::Read(r);
            codes[len] = code(r);
            len += 1;
        }
        sysregs::run(&ops[..len], &mut out[..len]);
        for (&c, outcome) in codes[..len].iter().zip(&out[..len]) {
            census.tried += 1;
            match *outcome {
                Outcome::Done(_) if census.readable < MAX_READABLE => {
                    READABLE[census.readable].store(c, Ordering::Relaxed);
                    census.readable += 1;
                }
                Outcome::Done(_) => census.dropped += 1,
                Outcome::Faulted(esr) if esr.ec() == ec::UNKNOWN => census.undef += 1,
                Outcome::Faulted(esr) => {
                    census.other += 1;
                    census.first_other.get_or_insert((from_code(c), esr.0));
                }
                Outcome::Refused => {}
            }
        }
    }
    census
}

fn readable(i: usize) -> SysReg {
    from_code(READABLE[i].load(Ordering::Relaxed))
}

/// Runs `make(i)` for every readable index in batches; `each(i, op, outcome)` sees each result.
fn over_readable(
    count: usize,
    per: usize,
    mut make: impl FnMut(usize, &mut [Op]),
    mut each: impl FnMut(usize, &[Outcome]),
) {
    let per_batch = BATCH / per;
    let mut ops = [Op::Read(SysReg::new(3, 0, 0, 0, 0)); BATCH];
    let mut out = [Outcome::Refused; BATCH];
    let mut first = 0;
    while first < count {
        let n = per_batch.min(count - first);
        for k in 0..n {
            make(first + k, &mut ops[k * per..(k + 1) * per]);
        }
        sysregs::run(&ops[..n * per], &mut out[..n * per]);
        for k in 0..n {
            each(first + k, &out[k * per..(k + 1) * per]);
        }
        first += n;
    }
}

fn census_note(report: &Report, census: &Census) {
    report.note(format_args!(
        "{} encodings read (op0 2 and 3, all but ICC_IAR0/IAR1/NMIAR1): {} readable, {} UNDEF, \
         {} other exceptions{}",
        census.tried,
        census.readable,
        census.undef,
        census.other,
        match census.dropped {
            0 => "",
            _ => " (more readable than MAX_READABLE: some dropped)",
        }
    ));
    if let Some((r, esr)) = census.first_other {
        report.note(format_args!(
            "first other exception: {} ESR_EL1={esr:#x}",
            Named(r)
        ));
    }
}

// --- plant-all -----------------------------------------------------------------------------------

pub(crate) fn plant(opts: &Options) {
    let mut report = Report::new("PLANT");
    let census = find_readable();
    census_note(&report, &census);
    let count = census.readable;

    // Both markers into every readable encoding we may write, each read back at once.
    let writable = |r: SysReg| {
        !MSR_EXCLUDED.contains(&r)
            && !NO_WRITE.contains(&r)
            && opts.plant_codes.contains(&u32::from(code(r)))
    };
    let (mut excluded, mut refused_writes, mut written, mut tag_lost) = (0u32, 0u32, 0u32, 0u32);
    over_readable(
        count,
        4,
        |i, ops| {
            let r = readable(i);
            let write = |value| {
                if writable(r) {
                    Op::Write(r, value)
                } else {
                    Op::Read(r)
                }
            };
            ops.copy_from_slice(&[
                write(BOTH),
                Op::Read(r),
                write(encoded_marker(r)),
                Op::Read(r),
            ]);
        },
        |i, out| {
            let r = readable(i);
            if !writable(r) {
                excluded += 1;
                return;
            }
            let (both, encoded) = match (out[0], out[1], out[2], out[3]) {
                (Outcome::Done(_), Outcome::Done(a), Outcome::Done(_), Outcome::Done(b)) => (a, b),
                _ => {
                    refused_writes += 1;
                    return;
                }
            };
            written += 1;
            let keep = if (encoded >> 32) as u32 == TAG {
                encoded_marker(r)
            } else if tagged(both) {
                BOTH
            } else {
                tag_lost += 1;
                0
            };
            PLANTED[i].store(keep, Ordering::Relaxed);
        },
    );

    // Plant the keepers once more (the encoded marker overwrote BOTH) and check they all still
    // read tagged with the whole set in place: a later write may clear an earlier one.
    replant(count);
    let mut planted = 0u32;
    let mut lost_later = 0u32;
    over_readable(
        count,
        1,
        |i, ops| ops[0] = Op::Read(readable(i)),
        |i, out| {
            if PLANTED[i].load(Ordering::Relaxed) == 0 {
                return;
            }
            match out[0] {
                Outcome::Done(v) if tagged(v) => planted += 1,
                _ => {
                    lost_later += 1;
                    PLANTED[i].store(0, Ordering::Relaxed);
                }
            }
        },
    );
    report.note(format_args!(
        "{written} readable encodings written, {planted} planted (read back tagged), \
         {tag_lost} kept no tag (too few writable bits), {lost_later} lost it to a later write; \
         {excluded} not written (MSR_EXCLUDED, NO_WRITE, spy.plant-codes), {refused_writes} read-only \
         (the write raised an exception)"
    ));
    list_planted(&report, count);
    report.check(
        "planted-all",
        planted > 0,
        format_args!("no register kept a tagged value: the test would prove nothing"),
    );

    // Keep them live while the watcher runs in the other time slices.
    let start = Timer::Virtual.count();
    let duration = timer::ticks_from_us(opts.plant_ms * 1000);
    let poll = timer::ticks_from_us(super::POLL_US);
    let mut next = start;
    let mut rounds = 0u32;
    while Timer::Virtual.count().wrapping_sub(start) < duration {
        if Timer::Virtual.count().wrapping_sub(next) as i64 >= 0 {
            replant(count);
            rounds += 1;
            next = next.wrapping_add(poll);
        }
        core::hint::spin_loop();
    }
    report.note(format_args!(
        "{rounds} rounds in {} ms; powering off with the markers set",
        ms_since(start, Timer::Virtual.count())
    ));
    report.finish();
}

/// Writes every planted value again.
fn replant(count: usize) {
    let mut ops = [Op::Read(SysReg::new(3, 0, 0, 0, 0)); BATCH];
    let mut out = [Outcome::Refused; BATCH];
    let mut len = 0;
    for (i, planted) in PLANTED[..count].iter().enumerate() {
        let value = planted.load(Ordering::Relaxed);
        if value == 0 {
            continue;
        }
        ops[len] = Op::Write(readable(i), value);
        len += 1;
        if len == BATCH {
            sysregs::run(&ops, &mut out);
            len = 0;
        }
    }
    sysregs::run(&ops[..len], &mut out[..len]);
}

/// The planted set, a few names a line.
fn list_planted(report: &Report, count: usize) {
    let mut line = Line::new();
    for (i, planted) in PLANTED[..count].iter().enumerate() {
        if planted.load(Ordering::Relaxed) != 0 {
            line.push(report, "planted:", readable(i));
        }
    }
    line.flush(report, "planted:");
}

/// Groups encodings into note lines of [`Line::PER_LINE`].
struct Line {
    regs: [Option<SysReg>; Self::PER_LINE],
    len: usize,
}

impl Line {
    const PER_LINE: usize = 6;

    fn new() -> Self {
        Self {
            regs: [None; Self::PER_LINE],
            len: 0,
        }
    }

    fn push(&mut self, report: &Report, what: &str, r: SysReg) {
        self.regs[self.len] = Some(r);
        self.len += 1;
        if self.len == Self::PER_LINE {
            self.flush(report, what);
        }
    }

    fn flush(&mut self, report: &Report, what: &str) {
        if self.len > 0 {
            report.note(format_args!("{what}{}", Regs(&self.regs[..self.len])));
        }
        self.len = 0;
    }
}

struct Regs<'a>(&'a [Option<SysReg>]);

impl fmt::Display for Regs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.0.iter().flatten() {
            write!(f, " {}", Named(*r))?;
        }
        Ok(())
    }
}

// --- watch-all -----------------------------------------------------------------------------------

pub(crate) fn watch(boot: &BootInfo, opts: &Options) {
    let mut report = Report::new("SPY");
    let timers = TimerInterrupts::discover(boot.fdt.as_ref());
    let gic = match bring_up(boot, &timers) {
        Ok(gic) => gic,
        Err(error) => {
            report.fail("vtimer-delivery", format_args!("GIC bring-up: {error}"));
            report.finish();
            return;
        }
    };
    let census = find_readable();
    census_note(&report, &census);
    let count = census.readable;

    let period = timer::ticks_from_us(opts.period_ms * 1000);
    let duration = timer::ticks_from_us(opts.watch_ms * 1000);
    let tail_from = duration - timer::ticks_from_us(opts.tail_ms * 1000).min(duration);
    let sweep_every = timer::ticks_from_us(opts.sweep_ms * 1000);
    PERIOD_TICKS.store(period, Ordering::SeqCst);

    let start = Timer::Virtual.count();
    // The snapshot: the first sweep, checked like every other one.
    let mut sweeps = 0u32;
    let mut leaks = 0u32;
    let mut unreadable = 0u32;
    sweep(&mut report, count, start, true, &mut leaks, &mut unreadable);
    sweeps += 1;
    report.note(format_args!(
        "snapshot of {count} readable encodings taken; sweeping every {} ms for {} ms \
         (timer every {} ms)",
        opts.sweep_ms, opts.watch_ms, opts.period_ms
    ));

    let mut delivery = Delivery::new(opts, start);
    let mut irqs_before_tail = None;
    let mut next_sweep = start.wrapping_add(sweep_every);
    let mut sweep_ticks = 0u64;
    Timer::Virtual.arm_at(start.wrapping_add(period));
    irq::unmask();
    loop {
        let now = Timer::Virtual.count();
        let elapsed = now.wrapping_sub(start);
        if elapsed >= duration {
            break;
        }
        if irqs_before_tail.is_none() && elapsed >= tail_from {
            irqs_before_tail = Some(TIMER_IRQS.load(Ordering::SeqCst));
        }
        if now.wrapping_sub(next_sweep) as i64 >= 0 {
            // Masked while sweeping: the handler changes ELR/SPSR_EL1, CNTV_CVAL and the GIC's
            // active priorities, none of which a sweep should see half-way.
            irq::mask();
            sweep(
                &mut report,
                count,
                start,
                false,
                &mut leaks,
                &mut unreadable,
            );
            irq::unmask();
            let done = Timer::Virtual.count();
            sweep_ticks += done.wrapping_sub(now);
            sweeps += 1;
            next_sweep = done.wrapping_add(sweep_every);
        }
        delivery.look(&gic, &mut report, start);
        core::hint::spin_loop();
    }
    irq::mask();
    Timer::Virtual.stop();

    let total = TIMER_IRQS.load(Ordering::SeqCst);
    let in_tail = total - irqs_before_tail.unwrap_or(total);
    report.note(format_args!(
        "{sweeps} sweeps of {count} encodings ({} us each on average), {leaks} leaking, \
         {unreadable} reads of a readable encoding raised an exception; {total} timer IRQs in \
         {} ms, {in_tail} in the last {} ms",
        timer::us_from_ticks(sweep_ticks) / u64::from(sweeps.max(2) - 1),
        opts.watch_ms,
        opts.tail_ms
    ));
    let mut line = Line::new();
    let mut changed = 0;
    for (i, flag) in CHANGED[..count].iter().enumerate() {
        if flag.load(Ordering::Relaxed) {
            changed += 1;
            if changed <= MAX_CHANGED_NAMED {
                line.push(&report, "changed since the snapshot:", readable(i));
            }
        }
    }
    line.flush(&report, "changed since the snapshot:");
    report.note(format_args!(
        "{changed} encodings changed since the snapshot (not a failure: counters, timers, \
         exception registers)"
    ));
    if leaks == 0 {
        report.pass("clean-all");
    }
    if !delivery.blocked {
        report.pass("vtimer-delivery");
    }
    report.check(
        "irq-after-plant",
        in_tail > 0,
        format_args!(
            "no virtual timer interrupt in the last {} ms ({total} in {} ms)",
            opts.tail_ms, opts.watch_ms
        ),
    );
    report.finish();
}

/// Reads every readable encoding once: the first sweep fills the snapshot; every sweep fails
/// each encoding the first time it carries the tag.
fn sweep(
    report: &mut Report,
    count: usize,
    start: u64,
    first: bool,
    leaks: &mut u32,
    unreadable: &mut u32,
) {
    over_readable(
        count,
        1,
        |i, ops| ops[0] = Op::Read(readable(i)),
        |i, out| {
            let value = match out[0] {
                Outcome::Done(value) => value,
                _ => {
                    *unreadable += 1;
                    return;
                }
            };
            if first {
                SNAPSHOT[i].store(value, Ordering::Relaxed);
            } else if value != SNAPSHOT[i].load(Ordering::Relaxed) {
                CHANGED[i].store(true, Ordering::Relaxed);
            }
            if tagged(value) && !LEAKED[i].swap(true, Ordering::Relaxed) {
                *leaks += 1;
                let r = readable(i);
                let source = marked_encoding(value);
                report.fail(
                    "clean-all",
                    format_args!(
                        "{} reads {value:#x} after {} ms: the planter's tag{}; this VM never \
                         writes it, so it is another VM's",
                        Named(r),
                        ms_since(start, Timer::Virtual.count()),
                        match source {
                            Some(s) if s != r => Source(Some(s)),
                            _ => Source(None),
                        }
                    ),
                );
            }
        },
    );
}

/// " (the value written to <enc>)" for a marker found in another encoding than its own.
struct Source(Option<SysReg>);

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, " (the marker written to {})", Named(r)),
            None => Ok(()),
        }
    }
}
