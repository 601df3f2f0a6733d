//! elvisor SVE guest: checks, from inside a VM, that the SVE register file is the vCPU's own.
//! One `SVE PASS/FAIL` line per check:
//!
//! ```text
//!   id             sve.expect=on (default): ID_AA64PFR0_EL1.SVE != 0;
//!                  sve.expect=none: PFR0.SVE = 0 and ID_AA64ZFR0_EL1 = 0
//!   undef          (none) `rdvl` with CPACR_EL1.ZEN = 0b11 is UNDEFINED; the guest ends here
//!   first-use      the first SVE instruction sees Z0-Z31 zero above their low 128 bits (the V
//!                  registers), P0-P15 and FFR zero, ZCR_EL1.LEN = 15: nothing of another vCPU
//!   vector-length  RDVL is sve.vl-bits (when given), else a multiple of 128 bits up to 2048
//!   zcr            (sve.zcr-test=1) ZCR_EL1.LEN lowers the length (LEN 0: 128 bits) and LEN 15
//!                  gives the VM's length back, never more
//!   switch         sve.rounds rounds (default 150): every Z, P and FFR bit loaded with a
//!                  pattern of this VM's sve.seed and the round, kept while time passes (wfi on
//!                  the virtual timer, wfe yields, or a spin longer than the hypervisor's time
//!                  slice), then stored and compared; with sve.zcr-test=1 every other round
//!                  runs at 256 bits (ZCR_EL1.LEN = 1)
//!   fpcr-fpsr      FPCR and FPSR loaded with each round's pattern read back the same
//!   SVE RESULT: passed=N failed=M, then SYSTEM_OFF (returning from main)
//! ```
//!
//! sve.delay-ms (default 0) waits before the first SVE instruction, so that other VMs on the
//! same physical CPU have filled the registers with their patterns by then. The system tests
//! (tests/src/cases_sve.rs) run several of these VMs pinned to one physical CPU.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod arch;

use core::sync::atomic::{AtomicU32, Ordering};

use arch::{File, Wait};
use elvisor_guest_rt::arch::features::{self as feat, IdReg};
use elvisor_guest_rt::arch::irq;
use elvisor_guest_rt::exception::ec;
use elvisor_guest_rt::gic::{self, Gic};
use elvisor_guest_rt::gic_setup;
use elvisor_guest_rt::timer::{self, Timer, TimerInterrupts};
use elvisor_guest_rt::{BootInfo, Report};

elvisor_guest_rt::entry!(main);

struct Options {
    expect_sve: bool,
    vl_bits: Option<usize>,
    rounds: u32,
    seed: u64,
    delay_ms: u64,
    zcr_test: bool,
}

fn options(boot: &BootInfo) -> Options {
    Options {
        expect_sve: boot.bootarg("sve.expect") != Some("none"),
        vl_bits: boot.bootarg_parse("sve.vl-bits"),
        rounds: boot.bootarg_parse("sve.rounds").unwrap_or(150),
        seed: boot.bootarg_parse("sve.seed").unwrap_or(1),
        delay_ms: boot.bootarg_parse("sve.delay-ms").unwrap_or(0),
        zcr_test: boot.bootarg_parse::<u32>("sve.zcr-test") == Some(1),
    }
}

/// Virtual-timer interrupts taken (the handler masks the timer).
static TIMER_IRQS: AtomicU32 = AtomicU32::new(0);
static VIRTUAL_INTID: AtomicU32 = AtomicU32::new(27);

fn main(boot: &BootInfo) {
    let mut report = Report::new("SVE");
    irq::mask();
    let opts = options(boot);
    let pfr0 = IdReg::Pfr0.read();
    let level = (pfr0 >> 32) & 0xf;
    let zfr0 = IdReg::Zfr0.read();
    report.note(format_args!(
        "elvisor SVE guest: PFR0.SVE={level} ZFR0={zfr0:#x} seed={} rounds={} delay={} ms",
        opts.seed, opts.rounds, opts.delay_ms
    ));

    if !opts.expect_sve {
        report.check(
            "id",
            level == 0 && zfr0 == 0,
            format_args!("PFR0.SVE={level} ZFR0={zfr0:#x}: SVE advertised"),
        );
        match feat::sve_vector_length() {
            Err(f) if f.esr.ec() == ec::UNKNOWN => report.pass("undef"),
            Err(f) => report.fail("undef", format_args!("rdvl: {f}")),
            Ok(vl) => report.fail("undef", format_args!("rdvl executed: {vl} bytes")),
        }
        report.finish();
        return;
    }
    report.check(
        "id",
        level != 0,
        format_args!("PFR0.SVE=0: SVE not advertised"),
    );
    if level == 0 {
        report.finish();
        return;
    }

    let timers = TimerInterrupts::discover(boot.fdt.as_ref());
    let gic = match bring_up(boot, &timers) {
        Ok(g) => g,
        Err(e) => {
            report.fail("switch", format_args!("GIC bring-up: {e}"));
            report.finish();
            return;
        }
    };
    if opts.delay_ms > 0 {
        let until = Timer::Virtual
            .count()
            .wrapping_add(timer::ticks_from_us(opts.delay_ms * 1000));
        sleep_until(until);
    }

    arch::enable_sve();
    let mut file = File::zeroed();
    arch::dump(&mut file);
    let vl = arch::vector_length();
    let zcr = arch::zcr_el1();
    first_use(&mut report, &file, vl, zcr);
    report.note(format_args!("vector length {} bits", vl * 8));
    let vl_ok = vl.is_multiple_of(16) && (16..=256).contains(&vl);
    match opts.vl_bits {
        Some(bits) => report.check(
            "vector-length",
            vl * 8 == bits,
            format_args!("RDVL gives {} bits, sve.vl-bits says {bits}", vl * 8),
        ),
        None => report.check(
            "vector-length",
            vl_ok,
            format_args!("RDVL gives {vl} bytes"),
        ),
    }
    if !vl_ok {
        report.finish();
        return;
    }
    if opts.zcr_test {
        zcr_checks(&mut report, vl);
    }
    switch_rounds(&mut report, &opts, vl);
    Timer::Virtual.stop();
    let _ = gic;
    report.finish();
}

/// The registers at the first SVE instruction: above the V registers all zero.
fn first_use(report: &mut Report, file: &File, vl: usize, zcr: u64) {
    let mut bad = None;
    if vl <= 256 {
        for z in 0..32 {
            let reg = &file.0[z * vl..(z + 1) * vl];
            if let Some(i) = reg.iter().skip(16).position(|&b| b != 0) {
                bad = Some((z, "Z", i + 16, reg[i + 16]));
                break;
            }
        }
        let p = &file.0[32 * vl..32 * vl + 17 * vl / 8];
        if bad.is_none()
            && let Some(i) = p.iter().position(|&b| b != 0)
        {
            let name = if i >= 16 * vl / 8 { "FFR" } else { "P" };
            bad = Some((i / (vl / 8), name, i % (vl / 8), p[i]));
        }
    }
    match bad {
        Some((n, kind, byte, value)) => report.fail(
            "first-use",
            format_args!("{kind}{n} byte {byte} is {value:#x}: not this vCPU's"),
        ),
        None => report.check(
            "first-use",
            zcr & 0xf == 0xf,
            format_args!("ZCR_EL1 is {zcr:#x}, not LEN 15"),
        ),
    }
}

/// ZCR_EL1.LEN lowers the vector length; LEN 15 gives back the VM's, never more.
fn zcr_checks(report: &mut Report, vl: usize) {
    arch::set_zcr_el1(0);
    let at0 = arch::vector_length();
    arch::set_zcr_el1(1);
    let at1 = arch::vector_length();
    arch::set_zcr_el1(0xf);
    let back = arch::vector_length();
    report.check(
        "zcr",
        at0 == 16 && at1 == 32.min(vl) && back == vl,
        format_args!("LEN 0 -> {at0} bytes, LEN 1 -> {at1}, LEN 15 -> {back} (VM: {vl})"),
    );
}

/// A byte of the pattern for `seed`, `round`, position `i`.
fn pattern(seed: u64, round: u32, i: usize) -> u8 {
    let x = (seed << 40 ^ u64::from(round) << 20 ^ i as u64 ^ 0x5555)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// Fills `file` for vector length `vl`: Z and P from the pattern, FFR with its first k
/// elements true (a valid FFR value).
fn fill(file: &mut File, vl: usize, seed: u64, round: u32) {
    let pbytes = vl / 8;
    let zp = 32 * vl + 16 * pbytes;
    for (i, b) in file.0[..zp].iter_mut().enumerate() {
        *b = pattern(seed, round, i);
    }
    let k = (seed as usize * 7 + round as usize) % (vl + 1);
    for (i, b) in file.0[zp..zp + pbytes].iter_mut().enumerate() {
        let bits = k.saturating_sub(i * 8).min(8);
        *b = ((1u16 << bits) - 1) as u8;
    }
}

/// The first difference between the expected and the stored register file.
fn compare(want: &File, got: &File, vl: usize) -> Option<(&'static str, usize, usize, u8, u8)> {
    let end = 32 * vl + 17 * vl / 8;
    let i = (0..end).find(|&i| want.0[i] != got.0[i])?;
    let (kind, n, byte) = if i < 32 * vl {
        ("Z", i / vl, i % vl)
    } else if i < 32 * vl + 2 * vl {
        ("P", (i - 32 * vl) / (vl / 8), (i - 32 * vl) % (vl / 8))
    } else {
        ("FFR", 0, i - 32 * vl - 2 * vl)
    };
    Some((kind, n, byte, want.0[i], got.0[i]))
}

fn switch_rounds(report: &mut Report, opts: &Options, vl: usize) {
    let mut want = File::zeroed();
    let mut got = File::zeroed();
    let short = timer::ticks_from_us(1_000);
    // Longer than the hypervisor's 10 ms slice: another vCPU runs in the middle.
    let long = timer::ticks_from_us(12_000);
    let mut failure = None;
    let mut fp_failure = None;
    let mut waits = [0u32; 3];
    for round in 0..opts.rounds {
        let cur_vl = if opts.zcr_test && round % 2 == 1 && vl > 32 {
            arch::set_zcr_el1(1);
            32
        } else {
            arch::set_zcr_el1(0xf);
            vl
        };
        if arch::vector_length() != cur_vl {
            failure = Some(RoundFailure {
                round,
                kind: "RDVL changed: Z",
                n: 0,
                byte: arch::vector_length(),
                want: 0,
                got: 0,
            });
            break;
        }
        fill(&mut want, cur_vl, opts.seed, round);
        got.0.fill(0);
        let wait = match round % 10 {
            9 => Wait::Spin,
            r if r % 2 == 0 => Wait::Wfi,
            _ => Wait::Wfe,
        };
        let ticks = if wait == Wait::Spin { long } else { short };
        let deadline = Timer::Virtual.count().wrapping_add(ticks);
        if wait == Wait::Wfi {
            Timer::Virtual.arm_at(deadline);
        }
        // FPCR: RMode [23:22] and FZ [24] from the round; FPSR: the cumulative flags [4:0].
        let fpcr = (u64::from(round) & 7) << 22;
        let fpsr = (opts.seed + u64::from(round)) & 0x1f;
        let (fpcr_got, fpsr_got) = arch::round_trip(&want, &mut got, fpcr, fpsr, wait, deadline);
        waits[wait as usize] += 1;
        if (fpcr_got, fpsr_got) != (fpcr, fpsr) && fp_failure.is_none() {
            fp_failure = Some((round, fpcr, fpcr_got, fpsr, fpsr_got));
        }
        if let Some((kind, n, byte, w, g)) = compare(&want, &got, cur_vl) {
            failure = Some(RoundFailure {
                round,
                kind,
                n,
                byte,
                want: w,
                got: g,
            });
            break;
        }
        // Let the timer's handler run now that nothing lives in the SVE registers.
        if wait == Wait::Wfi {
            irq::unmask();
            irq::mask();
            Timer::Virtual.stop();
        }
    }
    arch::set_zcr_el1(0xf);
    report.note(format_args!(
        "{} rounds: {} wfi, {} wfe, {} spin; {} timer interrupts",
        opts.rounds,
        waits[0],
        waits[1],
        waits[2],
        TIMER_IRQS.load(Ordering::SeqCst)
    ));
    match failure {
        Some(f) => report.fail(
            "switch",
            format_args!(
                "round {}: {}{} byte {} is {:#04x}, was loaded as {:#04x}",
                f.round, f.kind, f.n, f.byte, f.got, f.want
            ),
        ),
        None => report.pass("switch"),
    }
    match fp_failure {
        Some((round, fpcr, fpcr_got, fpsr, fpsr_got)) => report.fail(
            "fpcr-fpsr",
            format_args!(
                "round {round}: FPCR {fpcr_got:#x} (loaded {fpcr:#x}), FPSR {fpsr_got:#x} (loaded {fpsr:#x})"
            ),
        ),
        None => report.pass("fpcr-fpsr"),
    }
}

/// A failed round, for the FAIL line.
struct RoundFailure {
    round: u32,
    kind: &'static str,
    n: usize,
    byte: usize,
    want: u8,
    got: u8,
}

/// Distributor and CPU interface up, the virtual timer's PPI enabled, the handler installed.
fn bring_up(boot: &BootInfo, timers: &TimerInterrupts) -> Result<Gic, gic::GicError> {
    Timer::Virtual.stop();
    VIRTUAL_INTID.store(timers.virtual_, Ordering::SeqCst);
    gic_setup::bring_up(boot.fdt.as_ref(), &[timers.virtual_], on_irq)
}

/// Sleeps until the virtual counter reaches `deadline` (IRQs masked on entry and return).
fn sleep_until(deadline: u64) {
    Timer::Virtual.arm_at(deadline);
    while (Timer::Virtual.count().wrapping_sub(deadline) as i64) < 0 {
        irq::wfi();
        irq::unmask();
        irq::mask();
    }
    Timer::Virtual.stop();
}

/// Masks the virtual timer when it fired (its level drops) and counts it.
fn on_irq() {
    let Some(gic) = gic::installed() else {
        return;
    };
    let iar = gic.acknowledge();
    if iar.is_special() {
        return;
    }
    if iar.intid() == VIRTUAL_INTID.load(Ordering::SeqCst) {
        Timer::Virtual.mask();
        TIMER_IRQS.store(TIMER_IRQS.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }
    gic.end_of_interrupt(iar);
}
