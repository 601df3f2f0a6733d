//! elvisor cpufeat guest: is the CPU a VM sees honest? Every feature its ID registers
//! advertise has to work, and every instruction of a feature they do not advertise has to be
//! UNDEFINED (EC 0x00 at EL1), exactly as on a CPU built without it.
//!
//! A hypervisor hides features whose state it does not switch between vCPUs (or cannot make
//! work) by editing the ID registers it traps; unless it also traps what they hide, a guest
//! that executes the instructions anyway gets the real hardware (a leak), and a feature it
//! keeps advertising has to be enabled in its trap controls (or the guest that believes the ID
//! registers UNDEFs). Each check below reads the field that decides it and so adapts to the
//! CPU: the same image passes on bare QEMU (`-cpu max` or `-cpu cortex-a72`, EL1 without a
//! hypervisor, where the answers are the hardware's and honest by definition).
//!
//! ```text
//!   check      ID field                       advertised: must           not advertised: must
//!   sme        PFR1.SME [27:24]               smstart; smstop run        smstart UNDEF (CPACR.SMEN = 0b11)
//!   sve        PFR0.SVE [35:32]               rdvl gives VL 16..256      rdvl UNDEF (CPACR.ZEN = 0b11)
//!   wfxt       ISAR2.WFxT [3:0] = 2           wfit ends at its deadline  wfit(past) UNDEF or a NOP
//!   mops       ISAR2.MOPS [19:16]             setp/setm/sete fill a buf  setp UNDEF, buffer untouched
//!   ras        PFR0.RAS [31:28]               ERRIDR read; ERRSELR       ERRIDR/ERRSELR UNDEF
//!                                             write (or UNDEF: 0 records)
//!   csv2-scxtnum  PFR0.CSV2 >= 2, or 1 with PFR1.CSV2_frac >= 2: SCXTNUM_EL1 readable, else UNDEF
//!   pauth      ISAR1.APA/API, ISAR2.APA3      pacia/autia round-trip     pacia UNDEF (SCTLR.EnIA = 1)
//!   pauth-hint (all)                          pacia1716 with EnIA = 0 is a NOP
//!   nmi        PFR1.NMI [39:36]               msr ALLINT (#imm, reg) set and clear it   both UNDEF
//!   mte        PFR1.MTE [11:8]                irg inserts a tag only     irg UNDEF
//!   ls64       ISAR1.LS64 [63:60]             ld64b reads 64 bytes       ld64b UNDEF
//!   tcr2 / sctlr2 / s1pie / s1poe / aie   MMFR3 TCRX [3:0] / SCTLRX [7:4] / S1PIE [11:8] /
//!              S1POE [19:16] / AIE [27:24]: TCR2_EL1 / SCTLR2_EL1 / PIR_EL1 + PIRE0_EL1 /
//!              POR_EL1 / MAIR2_EL1 readable if advertised, UNDEF if not
//! ```
//!
//! The WFIT check sleeps with IRQs masked at PSTATE and no handler: `wfit` with a deadline
//! `cpufeat.wfit-ms` (10) ahead, re-issued if it returns early, and the virtual timer armed as
//! a backstop `cpufeat.backstop-ms` (500) after the deadline, its PPI enabled at the GIC. A
//! pending interrupt wakes WFI/WFIT whatever PSTATE.I says, so a WFIT whose timeout is ignored
//! (a hypervisor that traps it as a plain WFI) ends at the backstop and FAILs instead of
//! hanging; the wait must end between the deadline and `cpufeat.max-late-ms` (400) after it.
//!
//! Output: the ID registers as notes, one PASS/FAIL line per check (with a note saying what
//! the field says and so what was required), then `CPUFEAT RESULT: passed=N failed=M` and
//! SYSTEM_OFF.
//!
//! Bootargs: `cpufeat.wfit-ms=D`, `cpufeat.backstop-ms=B`, `cpufeat.max-late-ms=L` (above).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::fmt;

use elvisor_guest_rt::arch::features::{self as feat, Block64, IdReg};
use elvisor_guest_rt::arch::{self, irq};
use elvisor_guest_rt::exception::{Fault, ec};
use elvisor_guest_rt::gic::Gic;
use elvisor_guest_rt::timer::{self, CTL_ISTATUS, Timer, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, Report};

elvisor_guest_rt::entry!(main);

const DEFAULT_WFIT_MS: u64 = 10;
const DEFAULT_BACKSTOP_MS: u64 = 500;
const DEFAULT_MAX_LATE_MS: u64 = 400;
/// The WFIT wait gives up after this long (counter time), whatever happened.
const WFIT_GIVE_UP_MS: u64 = 2_000;

/// An arbitrary pointer-like value for the PAC and IRG probes: a guest RAM address, tag 0.
const POINTER: u64 = 0x4008_1230;
/// The PAC modifier (any value: the same one signs and authenticates).
const MODIFIER: u64 = 0x5a5a;

/// The ID registers, read once.
struct Ids {
    pfr0: u64,
    pfr1: u64,
    isar1: u64,
    isar2: u64,
    mmfr3: u64,
}

/// The 4-bit field at `lsb`.
fn field(value: u64, lsb: u32) -> u64 {
    (value >> lsb) & 0xf
}

struct Options {
    wfit_ms: u64,
    backstop_ms: u64,
    max_late_ms: u64,
}

fn options(boot: &BootInfo) -> Options {
    let number = |key: &str, default: u64| {
        boot.bootarg_parse(key)
            .filter(|&ms| ms > 0)
            .unwrap_or(default)
    };
    let backstop_ms = number("cpufeat.backstop-ms", DEFAULT_BACKSTOP_MS);
    Options {
        wfit_ms: number("cpufeat.wfit-ms", DEFAULT_WFIT_MS),
        backstop_ms,
        // Late by the backstop or more can only mean the backstop ended the wait.
        max_late_ms: number("cpufeat.max-late-ms", DEFAULT_MAX_LATE_MS).min(backstop_ms),
    }
}

fn main(boot: &BootInfo) {
    let mut report = Report::new("CPUFEAT");
    irq::mask();
    let opts = options(boot);
    report.note(format_args!(
        "EL{} MIDR_EL1={:#x} CNTFRQ_EL0={} Hz",
        arch::current_el(),
        arch::midr(),
        timer::frequency_hz()
    ));
    for reg in IdReg::ALL {
        report.note(format_args!("{}={:#018x}", reg.name(), reg.read()));
    }
    let ids = Ids {
        pfr0: IdReg::Pfr0.read(),
        pfr1: IdReg::Pfr1.read(),
        isar1: IdReg::Isar1.read(),
        isar2: IdReg::Isar2.read(),
        mmfr3: IdReg::Mmfr3.read(),
    };

    sme(&mut report, &ids);
    sve(&mut report, &ids);
    wfxt(&mut report, &ids, boot, &opts);
    mops(&mut report, &ids);
    ras(&mut report, &ids);
    csv2(&mut report, &ids);
    pauth(&mut report, &ids);
    nmi(&mut report, &ids);
    mte(&mut report, &ids);
    ls64(&mut report, &ids);
    mmfr3(&mut report, &ids);
    report.finish();
}

/// Says which way a check goes: `<name>: <field> = <value>: <what is required>`.
fn decide(report: &Report, name: &str, what: fmt::Arguments<'_>, advertised: bool) -> bool {
    report.note(format_args!(
        "{name}: {what}: {}",
        if advertised {
            "advertised, must work"
        } else {
            "not advertised, must be UNDEFINED"
        }
    ));
    advertised
}

/// For a feature that is not advertised: the probe must have raised UNDEFINED at EL1 (EC 0x00),
/// as on a CPU without it. `Err` names what went wrong.
fn undefined<T: Into<Words>>(probe: &'static str, result: Result<T, Fault>) -> Result<(), Problem> {
    match result {
        Err(fault) if fault.esr.ec() == ec::UNKNOWN => Ok(()),
        Err(fault) => Err(Problem::WrongException(probe, fault)),
        Ok(value) => Err(Problem::Executed(probe, value.into())),
    }
}

/// For an advertised feature: the probe must have run without an exception.
fn works<T>(probe: &'static str, result: Result<T, Fault>) -> Result<T, Problem> {
    result.map_err(|fault| Problem::Faulted(probe, fault))
}

/// Up to eight register values a probe returned, for FAIL details.
#[derive(Debug, Clone, Copy)]
struct Words {
    words: [u64; 8],
    len: usize,
}

impl Words {
    fn new(values: &[u64]) -> Self {
        let mut words = [0; 8];
        let len = values.len().min(8);
        words[..len].copy_from_slice(&values[..len]);
        Self { words, len }
    }
}

impl From<()> for Words {
    fn from((): ()) -> Self {
        Self::new(&[])
    }
}

impl From<u64> for Words {
    fn from(value: u64) -> Self {
        Self::new(&[value])
    }
}

impl From<(u64, u64)> for Words {
    fn from((a, b): (u64, u64)) -> Self {
        Self::new(&[a, b])
    }
}

impl From<[u64; 8]> for Words {
    fn from(values: [u64; 8]) -> Self {
        Self::new(&values)
    }
}

impl fmt::Display for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str("no value");
        }
        for (i, word) in self.words[..self.len].iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{word:#x}")?;
        }
        Ok(())
    }
}

/// Why a check failed.
enum Problem {
    /// The instruction of a feature that is not advertised executed (with this result).
    Executed(&'static str, Words),
    /// It raised an exception other than UNDEFINED.
    WrongException(&'static str, Fault),
    /// The instruction of an advertised feature raised an exception.
    Faulted(&'static str, Fault),
    /// It ran but did the wrong thing.
    Wrong(&'static str, &'static str, Words),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Executed(probe, value) => write!(
                f,
                "{probe} executed (result: {value}) though the feature is not advertised"
            ),
            Self::WrongException(probe, fault) => {
                write!(f, "{probe} raised {fault}, not UNDEFINED (EC 0x00)")
            }
            Self::Faulted(probe, fault) => {
                write!(f, "{probe} raised {fault} though the feature is advertised")
            }
            Self::Wrong(probe, what, value) => write!(f, "{probe}: {what} (got {value})"),
        }
    }
}

/// Records a check's outcome.
fn record(report: &mut Report, name: &str, outcome: Result<(), Problem>) {
    match outcome {
        Ok(()) => report.pass(name),
        Err(problem) => report.fail(name, format_args!("{problem}")),
    }
}

fn sme(report: &mut Report, ids: &Ids) {
    let level = field(ids.pfr1, 24);
    let advertised = decide(
        report,
        "sme",
        format_args!("ID_AA64PFR1_EL1.SME={level}"),
        level != 0,
    );
    let result = feat::sme_start_stop();
    let outcome = if advertised {
        works("smstart; smstop", result)
    } else {
        undefined("smstart", result)
    };
    record(report, "sme", outcome);
}

fn sve(report: &mut Report, ids: &Ids) {
    let level = field(ids.pfr0, 32);
    let advertised = decide(
        report,
        "sve",
        format_args!("ID_AA64PFR0_EL1.SVE={level}"),
        level != 0,
    );
    let result = feat::sve_vector_length();
    let outcome = if advertised {
        // The vector length is a multiple of 128 bits, at most 2048.
        works("rdvl", result).and_then(|bytes| {
            if (16..=256).contains(&bytes) && bytes.is_multiple_of(16) {
                Ok(())
            } else {
                Err(Problem::Wrong(
                    "rdvl",
                    "not a vector length in bytes",
                    bytes.into(),
                ))
            }
        })
    } else {
        undefined("rdvl", result)
    };
    record(report, "sve", outcome);
}

fn wfxt(report: &mut Report, ids: &Ids, boot: &BootInfo, opts: &Options) {
    let level = field(ids.isar2, 0);
    let advertised = decide(
        report,
        "wfxt",
        format_args!("ID_AA64ISAR2_EL1.WFxT={level}"),
        level >= 2,
    );
    if !advertised {
        // A deadline in the past. On a CPU without FEAT_WFxT this is UNDEFINED. A hypervisor
        // that hides WFxT cannot make it so: HCR_EL2.TWI traps a WFI/WFIT only when it would
        // otherwise wait (ARM ARM, HCR_EL2.TWI), and a past deadline never waits, so the
        // instruction completes at once, as a NOP. (A WFIT that would wait does trap, and
        // elvisor answers it with UNDEFINED: its host tests check that, since QEMU 10.0.2
        // reports such a trap as a plain WFI, docs/qemu-bugs.md.) Anything else fails.
        let outcome = match feat::wfit(0) {
            Ok(_) => {
                report.note(format_args!(
                    "wfxt: wfit with a past deadline completed at once (not trappable when hidden)"
                ));
                Ok(())
            }
            result => undefined("wfit", result),
        };
        record(report, "wfxt", outcome);
        return;
    }
    match wfit_wait(report, boot, opts) {
        Ok(()) => report.pass("wfxt"),
        Err(WfitProblem::Gic(error)) => {
            report.fail("wfxt", format_args!("GIC bring-up for the backstop: {error:?}"))
        }
        Err(WfitProblem::Fault(fault)) => report.fail(
            "wfxt",
            format_args!("wfit raised {fault} though WFxT is advertised"),
        ),
        Err(WfitProblem::Late {
            late_us,
            by_backstop,
        }) => report.fail(
            "wfxt",
            format_args!(
                "the wait ended {} ms after the WFIT deadline{}",
                late_us / 1000,
                if by_backstop {
                    ", at the backstop timer: WFIT ignored its deadline"
                } else {
                    ""
                }
            ),
        ),
        Err(WfitProblem::GaveUp) => report.fail(
            "wfxt",
            format_args!(
                "still before the deadline after {WFIT_GIVE_UP_MS} ms of WFIT (returning early every time?)"
            ),
        ),
    }
}

/// Why the WFIT wait failed.
enum WfitProblem {
    /// The GIC (needed for the backstop to wake the CPU) did not come up.
    Gic(elvisor_guest_rt::gic::GicError),
    /// WFIT raised an exception.
    Fault(Fault),
    /// The wait ended this long after the deadline (at the backstop, or near it).
    Late { late_us: u64, by_backstop: bool },
    /// Still before the deadline after [`WFIT_GIVE_UP_MS`].
    GaveUp,
}

/// WFIT until its deadline, with the virtual timer as a backstop (see the module docs).
fn wfit_wait(report: &Report, boot: &BootInfo, opts: &Options) -> Result<(), WfitProblem> {
    Timer::Virtual.stop();
    let timers = TimerInterrupts::discover(boot.fdt.as_ref());
    let gic = Gic::discover(boot.fdt.as_ref()).map_err(WfitProblem::Gic)?;
    gic.init_distributor().map_err(WfitProblem::Gic)?;
    gic.wake_redistributor().map_err(WfitProblem::Gic)?;
    gic.init_cpu().map_err(WfitProblem::Gic)?;
    // Enabled at the GIC so the timer can wake the CPU; never taken (PSTATE.I stays set).
    gic.enable(timers.virtual_);

    let start = Timer::Virtual.count();
    let deadline = start.wrapping_add(timer::ticks_from_us(opts.wfit_ms * 1000));
    let backstop = deadline.wrapping_add(timer::ticks_from_us(opts.backstop_ms * 1000));
    let give_up = timer::ticks_from_us(WFIT_GIVE_UP_MS * 1000);
    Timer::Virtual.arm_at(backstop);
    let mut returns = 0u64;
    let result = loop {
        if let Err(fault) = feat::wfit(deadline) {
            break Err(WfitProblem::Fault(fault));
        }
        returns += 1;
        let now = Timer::Virtual.count();
        if now >= deadline {
            break Ok(now);
        }
        if now.wrapping_sub(start) > give_up {
            break Err(WfitProblem::GaveUp);
        }
    };
    let fired = Timer::Virtual.control() & CTL_ISTATUS != 0;
    Timer::Virtual.stop();
    gic.disable(timers.virtual_);
    let now = result?;
    let late_us = timer::us_from_ticks(now - deadline);
    report.note(format_args!(
        "wfxt: woke {late_us} us after a {} ms deadline ({returns} WFIT{}, backstop {})",
        opts.wfit_ms,
        if returns == 1 { "" } else { "s" },
        if fired { "fired" } else { "not reached" },
    ));
    if late_us >= opts.max_late_ms * 1000 {
        return Err(WfitProblem::Late {
            late_us,
            by_backstop: now >= backstop,
        });
    }
    Ok(())
}

fn mops(report: &mut Report, ids: &Ids) {
    let level = field(ids.isar2, 16);
    let advertised = decide(
        report,
        "mops",
        format_args!("ID_AA64ISAR2_EL1.MOPS={level}"),
        level != 0,
    );
    /// 64 bytes to set between two 16-byte guards that must stay zero.
    #[repr(C, align(16))]
    struct Buffer([u8; 96]);
    const SET: core::ops::Range<usize> = 16..80;
    let mut buf = Buffer([0; 96]);
    let result = feat::mops_memset(&mut buf.0[SET], 0xa5);
    let set_ok = buf.0[SET].iter().all(|&b| b == 0xa5);
    let guards_ok = buf.0[..SET.start]
        .iter()
        .chain(&buf.0[SET.end..])
        .all(|&b| b == 0);
    let untouched = buf.0.iter().all(|&b| b == 0);
    let outcome = if advertised {
        works("setp/setm/sete", result).and_then(|()| match (set_ok, guards_ok) {
            (true, true) => Ok(()),
            (false, _) => Err(Problem::Wrong(
                "setp/setm/sete",
                "the 64 bytes were not all set to 0xa5",
                ().into(),
            )),
            (true, false) => Err(Problem::Wrong(
                "setp/setm/sete",
                "wrote outside the 64 bytes",
                ().into(),
            )),
        })
    } else {
        undefined("setp", result).and_then(|()| {
            if untouched {
                Ok(())
            } else {
                Err(Problem::Wrong(
                    "setp",
                    "UNDEFINED but the buffer changed",
                    ().into(),
                ))
            }
        })
    };
    record(report, "mops", outcome);
}

fn ras(report: &mut Report, ids: &Ids) {
    let level = field(ids.pfr0, 28);
    let advertised = decide(
        report,
        "ras",
        format_args!("ID_AA64PFR0_EL1.RAS={level}"),
        level != 0,
    );
    let read = feat::read_erridr_el1();
    let write = feat::write_errselr_el1(0);
    let outcome = if advertised {
        works("mrs ERRIDR_EL1", read).and_then(|erridr| {
            // With no error records (ERRIDR_EL1.NUM = 0) ERRSELR_EL1 and the ERX* registers
            // may be UNDEFINED or RAZ/WI (ARM ARM, ERRSELR_EL1; QEMU leaves them UNDEFINED,
            // elvisor and KVM make them RAZ/WI): either is honest then.
            let records = erridr & 0xffff;
            report.note(format_args!(
                "ras: ERRIDR_EL1={erridr:#x} ({records} records); ERRSELR_EL1 write: {}",
                match &write {
                    Ok(()) => "accepted",
                    Err(fault) if fault.esr.ec() == ec::UNKNOWN => "UNDEFINED",
                    Err(_) => "raised an exception",
                }
            ));
            match write {
                Err(fault) if records == 0 && fault.esr.ec() == ec::UNKNOWN => Ok(()),
                write => works("msr ERRSELR_EL1", write),
            }
        })
    } else {
        undefined("mrs ERRIDR_EL1", read).and_then(|()| undefined("msr ERRSELR_EL1", write))
    };
    record(report, "ras", outcome);
}

fn csv2(report: &mut Report, ids: &Ids) {
    let csv2 = field(ids.pfr0, 56);
    let frac = field(ids.pfr1, 32);
    // SCXTNUM_ELx come with FEAT_CSV2_2 (CSV2 = 2; 3 includes it) or FEAT_CSV2_1p2 (CSV2 = 1,
    // CSV2_frac = 2).
    let advertised = decide(
        report,
        "csv2-scxtnum",
        format_args!("ID_AA64PFR0_EL1.CSV2={csv2} ID_AA64PFR1_EL1.CSV2_frac={frac}: SCXTNUM_EL1"),
        csv2 >= 2 || (csv2 == 1 && frac >= 2),
    );
    let result = feat::read_scxtnum_el1();
    let outcome = if advertised {
        works("mrs SCXTNUM_EL1", result).map(|_| ())
    } else {
        undefined("mrs SCXTNUM_EL1", result)
    };
    record(report, "csv2-scxtnum", outcome);
}

fn pauth(report: &mut Report, ids: &Ids) {
    let apa = field(ids.isar1, 4);
    let api = field(ids.isar1, 8);
    let apa3 = field(ids.isar2, 12);
    let advertised = decide(
        report,
        "pauth",
        format_args!("ID_AA64ISAR1_EL1.APA={apa} API={api} ID_AA64ISAR2_EL1.APA3={apa3}"),
        apa != 0 || api != 0 || apa3 != 0,
    );
    let result = feat::pac_round_trip(POINTER, MODIFIER);
    let outcome = if advertised {
        works("pacia; autia (SCTLR_EL1.EnIA=1)", result).and_then(|(signed, authenticated)| {
            report.note(format_args!(
                "pauth: pacia {POINTER:#x} -> {signed:#x}, autia -> {authenticated:#x}"
            ));
            if authenticated == POINTER {
                Ok(())
            } else {
                Err(Problem::Wrong(
                    "autia",
                    "did not give back the pointer pacia signed",
                    (signed, authenticated).into(),
                ))
            }
        })
    } else {
        undefined("pacia (SCTLR_EL1.EnIA=1)", result)
    };
    record(report, "pauth", outcome);

    // In the hint space and with the key disabled, PACIA1716 is a NOP with or without the
    // feature: a hypervisor that traps pointer authentication must not trap this.
    let outcome = works(
        "pacia1716 (SCTLR_EL1.EnIA=0)",
        feat::pacia1716(POINTER, MODIFIER, false),
    )
    .and_then(|x17| {
        if x17 == POINTER {
            Ok(())
        } else {
            Err(Problem::Wrong(
                "pacia1716 (SCTLR_EL1.EnIA=0)",
                "changed x17: not a NOP",
                x17.into(),
            ))
        }
    });
    record(report, "pauth-hint", outcome);
}

fn nmi(report: &mut Report, ids: &Ids) {
    let level = field(ids.pfr1, 36);
    let advertised = decide(
        report,
        "nmi",
        format_args!("ID_AA64PFR1_EL1.NMI={level}: msr ALLINT"),
        level != 0,
    );
    const ALLINT: u64 = 1 << 13;
    let immediate = feat::allint_immediate();
    let register = feat::allint_register(ALLINT);
    let outcome = if advertised {
        works("msr ALLINT, #1/#0", immediate)
            .and_then(|(set, clear)| {
                if set & ALLINT != 0 && clear & ALLINT == 0 {
                    Ok(())
                } else {
                    Err(Problem::Wrong(
                        "msr ALLINT, #1/#0",
                        "ALLINT did not read back set, then clear",
                        (set, clear).into(),
                    ))
                }
            })
            .and_then(|()| {
                let read = works("msr ALLINT, x", register)?;
                if read & ALLINT != 0 {
                    Ok(())
                } else {
                    Err(Problem::Wrong(
                        "msr ALLINT, x",
                        "ALLINT did not read back set",
                        read.into(),
                    ))
                }
            })
    } else {
        undefined("msr ALLINT, #1", immediate).and_then(|()| undefined("msr ALLINT, x", register))
    };
    record(report, "nmi", outcome);
}

fn mte(report: &mut Report, ids: &Ids) {
    let level = field(ids.pfr1, 8);
    let advertised = decide(
        report,
        "mte",
        format_args!("ID_AA64PFR1_EL1.MTE={level}: irg"),
        level != 0,
    );
    let result = feat::irg(POINTER);
    let outcome = if advertised {
        // IRG replaces the allocation tag, bits [59:56], and nothing else.
        works("irg", result).and_then(|tagged| {
            if tagged & !(0xf << 56) == POINTER {
                Ok(())
            } else {
                Err(Problem::Wrong(
                    "irg",
                    "changed more than the tag",
                    tagged.into(),
                ))
            }
        })
    } else {
        undefined("irg", result)
    };
    record(report, "mte", outcome);
}

fn ls64(report: &mut Report, ids: &Ids) {
    let level = field(ids.isar1, 60);
    let advertised = decide(
        report,
        "ls64",
        format_args!("ID_AA64ISAR1_EL1.LS64={level}: ld64b"),
        level != 0,
    );
    let block = Block64(core::array::from_fn(|i| {
        0x1111_1111_1111_1111 * (i as u64 + 1)
    }));
    let result = feat::ld64b(&block);
    let outcome = if advertised {
        works("ld64b", result).and_then(|words| {
            if words == block.0 {
                Ok(())
            } else {
                Err(Problem::Wrong(
                    "ld64b",
                    "did not load the 64 bytes",
                    words.into(),
                ))
            }
        })
    } else {
        undefined("ld64b", result)
    };
    record(report, "ls64", outcome);
}

/// A register read probe: what it reads, and the read.
type ReadProbe = (&'static str, fn() -> Result<u64, Fault>);

/// One ID_AA64MMFR3_EL1 field and the registers it brings.
struct RegisterFeature {
    /// The check's name.
    name: &'static str,
    /// The field's name and its lsb.
    field: &'static str,
    lsb: u32,
    /// The registers it brings.
    reads: &'static [ReadProbe],
}

/// TCR2_EL1, SCTLR2_EL1, PIR_EL1/PIRE0_EL1, POR_EL1 and MAIR2_EL1, by their MMFR3 fields.
const MMFR3_FEATURES: [RegisterFeature; 5] = [
    RegisterFeature {
        name: "tcr2",
        field: "TCRX",
        lsb: 0,
        reads: &[("mrs TCR2_EL1", feat::read_tcr2_el1)],
    },
    RegisterFeature {
        name: "sctlr2",
        field: "SCTLRX",
        lsb: 4,
        reads: &[("mrs SCTLR2_EL1", feat::read_sctlr2_el1)],
    },
    RegisterFeature {
        name: "s1pie",
        field: "S1PIE",
        lsb: 8,
        reads: &[
            ("mrs PIR_EL1", feat::read_pir_el1),
            ("mrs PIRE0_EL1", feat::read_pire0_el1),
        ],
    },
    RegisterFeature {
        name: "s1poe",
        field: "S1POE",
        lsb: 16,
        reads: &[("mrs POR_EL1", feat::read_por_el1)],
    },
    RegisterFeature {
        name: "aie",
        field: "AIE",
        lsb: 24,
        reads: &[("mrs MAIR2_EL1", feat::read_mair2_el1)],
    },
];

fn mmfr3(report: &mut Report, ids: &Ids) {
    for feature in &MMFR3_FEATURES {
        let level = field(ids.mmfr3, feature.lsb);
        let advertised = decide(
            report,
            feature.name,
            format_args!("ID_AA64MMFR3_EL1.{}={level}", feature.field),
            level != 0,
        );
        let outcome = feature.reads.iter().try_for_each(|&(probe, read)| {
            if advertised {
                works(probe, read()).map(|_| ())
            } else {
                undefined(probe, read())
            }
        });
        record(report, feature.name, outcome);
    }
}
