//! elvisor debug guest: self-hosted debug works in a VM, and one vCPU's debug state never
//! reaches another.
//!
//! Two vCPUs, meant to share one physical CPU (`elvisor,cpu-affinity = <0 0>`), each with its
//! own debug vectors (arch), run the same phases in lock step, each yielding (elvisor's YIELD
//! hypercall) after every probe so that the hypervisor switches between them many times:
//!
//! ```text
//!   phase      vCPU 0                                 vCPU 1
//!   nonuser    bp on A (EL1) and A0 (EL0), MDE/KDE    never touches a debug register;
//!              every call of A / A0 hits              calls A / A0: nothing may fire
//!   points     bp A / A0, wp VAR[0] (EL1, EL0)        first write masked (HMC, SSC cleared);
//!                                                     bp B / B0, wp VAR[1] (EL1, EL0)
//!              each vCPU calls all four targets and loads both words at EL1 and EL0:
//!              exactly its own fire (EC, ELR, FAR checked)
//!   step       MDSCR.SS + ERET with SPSR.SS at EL1 and at EL0: one step exception each,
//!              at the second instruction, also when the first is one the hypervisor
//!              emulates (an MMIO load, a trapped sysreg read); SS left set across yields
//!              never steps the other
//!   oslock     OSLAR = 1: OSLSR.OSLK reads 1; breakpoints (EL1, EL0) do not fire, BRK does,
//!              also after yields; OSLAR = 0: they fire again
//!   undef      DBGBCR/DBGBVR/DBGWCR one past ID_AA64DFR0_EL1's counts: UNDEFINED
//! ```
//!
//! Output: `DEBUG PASS/FAIL: cpuN <check>` lines, then (vCPU 0) `DEBUG PASS: cpu1 all` and
//! `DEBUG RESULT: passed=N failed=M`.

#![no_std]
#![no_main]

mod arch;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use arch::{Reg, Target};
use elvisor_guest_rt::arch::features::IdReg;
use elvisor_guest_rt::smp::{self, CpuBoot};
use elvisor_guest_rt::{BootInfo, Report};

elvisor_guest_rt::entry!(main);

/// Probes per phase (each followed by a yield).
const ROUNDS: u64 = 100;
/// Barrier and finish waits (TCG under load is slow).
const WAIT_MS: u64 = 20_000;

const MDSCR_SS: u64 = 1 << 0;
const MDSCR_KDE: u64 = 1 << 13;
const MDSCR_MDE: u64 = 1 << 15;
/// DBGBCR: E, PMC = EL1 (0b01) or EL0 (0b10), BAS = 0b1111.
const BCR_EL1: u64 = 1 | (0b01 << 1) | (0xf << 5);
const BCR_EL0: u64 = 1 | (0b10 << 1) | (0xf << 5);
/// DBGWCR: E, PAC = EL1 / EL0, LSC = load (0b01), BAS = all 8 bytes.
const WCR_EL1: u64 = 1 | (0b01 << 1) | (0b01 << 3) | (0xff << 5);
const WCR_EL0: u64 = 1 | (0b10 << 1) | (0b01 << 3) | (0xff << 5);

/// ESR_EL1.EC values.
const EC_UNKNOWN: u64 = 0x00;
const EC_BP_LOWER: u64 = 0x30;
const EC_BP_CUR: u64 = 0x31;
const EC_STEP_LOWER: u64 = 0x32;
const EC_STEP_CUR: u64 = 0x33;
const EC_WP_LOWER: u64 = 0x34;
const EC_WP_CUR: u64 = 0x35;
const EC_BRK: u64 = 0x3c;

/// Any address (BRK and UNDEFINED leave FAR_EL1 UNKNOWN).
const ANY: u64 = u64::MAX;

/// The watched words, one per vCPU.
static VAR: [AtomicU64; 2] = [AtomicU64::new(0x1111), AtomicU64::new(0x2222)];
/// Barrier arrivals and probe counters, per vCPU.
static ARRIVED: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
static PROBES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// vCPU 1's result: 0 running, 1 + failures when done.
static CPU1_DONE: AtomicU32 = AtomicU32::new(0);

fn main(_boot: &BootInfo) {
    let mut report = Report::new("DEBUG");
    let dfr0 = IdReg::Dfr0.read();
    report.note(format_args!(
        "ID_AA64DFR0_EL1={dfr0:#x}: DebugVer={} BRPs={} WRPs={} CTX_CMPs={}",
        dfr0 & 0xf,
        ((dfr0 >> 12) & 0xf) + 1,
        ((dfr0 >> 20) & 0xf) + 1,
        ((dfr0 >> 28) & 0xf) + 1
    ));
    let ret = smp::start_cpu(smp::mpidr_of(1), secondary, 0);
    if ret != 0 {
        report.fail("cpu1-start", format_args!("CPU_ON returned {ret}"));
        report.finish();
        return;
    }
    run(0, &mut report);
    let done = smp::wait_until(smp::ms(WAIT_MS), || CPU1_DONE.load(Ordering::SeqCst) != 0);
    let failed = CPU1_DONE.load(Ordering::SeqCst).wrapping_sub(1);
    report.check(
        "cpu1 all",
        done && failed == 0,
        format_args!("done={done} failures={failed}"),
    );
    report.finish();
}

fn secondary(_boot: &CpuBoot) {
    let mut report = Report::new("DEBUG");
    run(1, &mut report);
    CPU1_DONE.store(1 + report.failed(), Ordering::SeqCst);
    smp::notify();
}

/// Waits until both vCPUs reached barrier `n`.
fn barrier(cpu: usize, n: u32) -> bool {
    ARRIVED[cpu].store(n, Ordering::SeqCst);
    smp::notify();
    smp::wait_until(smp::ms(WAIT_MS), || {
        ARRIVED[1 - cpu].load(Ordering::SeqCst) >= n
    })
}

/// Runs `probe` and returns what the vectors recorded during it: (exceptions, last record).
fn observe<R>(probe: impl FnOnce() -> R) -> (u64, arch::Taken) {
    let before = arch::taken().count;
    let _ = probe();
    let t = arch::taken();
    (t.count - before, t)
}

/// Yields to the other vCPU; counts it as a switch if the other one made progress meanwhile.
struct Switches {
    cpu: usize,
    seen: u64,
    count: u64,
}

impl Switches {
    /// Reports (as a check: no switch means nothing was tested) how often the other vCPU ran.
    fn report(&self, phase: &str, report: &mut Report) {
        report.note(format_args!(
            "cpu{} {phase}: the other vCPU ran between probes {} times",
            self.cpu, self.count
        ));
        let mut name = format_name(self.cpu, "switches-");
        name.push(phase);
        report.check(
            &name,
            self.count > 0,
            format_args!("the other vCPU never ran between probes"),
        );
    }

    fn new(cpu: usize) -> Self {
        Self {
            cpu,
            seen: PROBES[1 - cpu].load(Ordering::SeqCst),
            count: 0,
        }
    }

    fn yield_now(&mut self) {
        PROBES[self.cpu].fetch_add(1, Ordering::SeqCst);
        // elvisor's yield hypercall (a `wfe` need not trap: the event register may be set).
        let _ = elvisor_guest_rt::smccc::call(elvisor_guest_rt::abi::hypercall::YIELD, 0, 0, 0);
        let now = PROBES[1 - self.cpu].load(Ordering::SeqCst);
        if now != self.seen {
            self.count += 1;
            self.seen = now;
        }
    }
}

/// One expectation about a probe: how many exceptions, and (if one) its EC and address.
struct Expect {
    name: &'static str,
    bad: u64,
    detail: (u64, u64, u64),
}

impl Expect {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            bad: 0,
            detail: (0, 0, 0),
        }
    }

    /// `want`: None = no exception; Some((ec, addr, by_far)) = exactly one, of class `ec`, at
    /// ELR (or FAR if `by_far`) `addr`.
    fn check(&mut self, got: (u64, arch::Taken), want: Option<(u64, u64, bool)>) {
        let (n, t) = got;
        let ok = match want {
            None => n == 0,
            Some((ec, addr, by_far)) => {
                let at = if by_far { t.far } else { t.elr };
                n == 1 && t.ec() == ec && (addr == ANY || at == addr)
            }
        };
        if !ok && self.bad == 0 {
            self.detail = (
                n,
                t.esr,
                if want.is_some_and(|w| w.2) {
                    t.far
                } else {
                    t.elr
                },
            );
        }
        self.bad += u64::from(!ok);
    }

    fn report(&self, cpu: usize, report: &mut Report) {
        let (n, esr, addr) = self.detail;
        report.check(
            &format_name(cpu, self.name),
            self.bad == 0,
            format_args!("{} of {ROUNDS} rounds wrong; first: {n} exceptions, ESR {esr:#x}, address {addr:#x}", self.bad),
        );
    }
}

/// "cpuN name" in a stack buffer.
fn format_name(cpu: usize, name: &str) -> NameBuf {
    let mut b = NameBuf {
        buf: [0; 48],
        len: 0,
    };
    for &c in b"cpu"
        .iter()
        .chain(&[b'0' + cpu as u8, b' '])
        .chain(name.as_bytes())
    {
        if b.len < b.buf.len() {
            b.buf[b.len] = c;
            b.len += 1;
        }
    }
    b
}

struct NameBuf {
    buf: [u8; 48],
    len: usize,
}

impl NameBuf {
    fn push(&mut self, s: &str) {
        for &c in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = c;
                self.len += 1;
            }
        }
    }
}

impl core::ops::Deref for NameBuf {
    type Target = str;
    fn deref(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

fn var_addr(i: usize) -> u64 {
    VAR[i].as_ptr() as u64
}

fn run(cpu: usize, report: &mut Report) {
    let old_vbar = arch::install_vectors();
    arch::reset_record();
    let other = 1 - cpu;
    let (mine_el1, mine_el0, theirs_el1, theirs_el0) = if cpu == 0 {
        (Target::A, Target::El0A, Target::B, Target::El0B)
    } else {
        (Target::B, Target::El0B, Target::A, Target::El0A)
    };

    // --- nonuser: vCPU 0 arms A / A0; vCPU 1 does not touch its debug registers.
    if cpu == 0 {
        arch::set_oslar(0);
        arch::write_point(Reg::Bvr, 0, Target::A.addr() as u64);
        arch::write_point(Reg::Bcr, 0, BCR_EL1);
        arch::write_point(Reg::Bvr, 1, Target::El0A.addr() as u64);
        arch::write_point(Reg::Bcr, 1, BCR_EL0);
        arch::set_mdscr(MDSCR_KDE | MDSCR_MDE);
    }
    barrier(cpu, 1);
    let mut e = Expect::new("nonuser-isolation");
    let mut sw = Switches::new(cpu);
    for _ in 0..ROUNDS {
        let el1 = (cpu == 0).then_some((EC_BP_CUR, Target::A.addr() as u64, false));
        e.check(observe(|| arch::call_el1(Target::A, 0)), el1);
        let el0 = (cpu == 0).then_some((EC_BP_LOWER, Target::El0A.addr() as u64, false));
        e.check(observe(|| arch::call_el0(Target::El0A, 0, false)), el0);
        sw.yield_now();
    }
    e.report(cpu, report);
    sw.report("nonuser", report);
    barrier(cpu, 2);

    // --- points: both debug users, different settings.
    arch::set_oslar(0);
    if cpu == 1 {
        // The first write of a debug register is trapped and masked: HMC (13) and SSC [15:14]
        // would let a breakpoint match at EL2.
        let hostile = BCR_EL1 | (1 << 13) | (0b11 << 14);
        arch::write_point(Reg::Bcr, 2, hostile);
        let back = arch::read_point(Reg::Bcr, 2);
        report.check(
            &format_name(cpu, "bcr-masked"),
            back & ((1 << 13) | (0b11 << 14)) == 0,
            format_args!("DBGBCR2_EL1 wrote {hostile:#x}, read {back:#x}"),
        );
        arch::write_point(Reg::Bcr, 2, 0);
    }
    arch::write_point(Reg::Bvr, 0, mine_el1.addr() as u64);
    arch::write_point(Reg::Bcr, 0, BCR_EL1);
    arch::write_point(Reg::Bvr, 1, mine_el0.addr() as u64);
    arch::write_point(Reg::Bcr, 1, BCR_EL0);
    arch::write_point(Reg::Wvr, 0, var_addr(cpu));
    arch::write_point(Reg::Wcr, 0, WCR_EL1);
    arch::write_point(Reg::Wvr, 1, var_addr(cpu));
    arch::write_point(Reg::Wcr, 1, WCR_EL0);
    arch::set_mdscr(MDSCR_KDE | MDSCR_MDE);
    let m = arch::mdscr();
    report.check(
        &format_name(cpu, "mdscr"),
        m & (MDSCR_KDE | MDSCR_MDE | MDSCR_SS) == MDSCR_KDE | MDSCR_MDE,
        format_args!("MDSCR_EL1 read {m:#x}"),
    );
    barrier(cpu, 3);
    let mut bp1 = Expect::new("bp-el1");
    let mut bp0 = Expect::new("bp-el0");
    let mut wp1 = Expect::new("wp-el1");
    let mut wp0 = Expect::new("wp-el0");
    let mut sw = Switches::new(cpu);
    for _ in 0..ROUNDS {
        let m = mine_el1.addr() as u64;
        bp1.check(
            observe(|| arch::call_el1(mine_el1, 0)),
            Some((EC_BP_CUR, m, false)),
        );
        bp1.check(observe(|| arch::call_el1(theirs_el1, 0)), None);
        let m = mine_el0.addr() as u64;
        bp0.check(
            observe(|| arch::call_el0(mine_el0, 0, false)),
            Some((EC_BP_LOWER, m, false)),
        );
        bp0.check(observe(|| arch::call_el0(theirs_el0, 0, false)), None);
        sw.yield_now();
        let (mv, ov) = (var_addr(cpu), var_addr(other));
        wp1.check(
            observe(|| arch::call_el1(Target::Load, mv)),
            Some((EC_WP_CUR, mv, true)),
        );
        wp1.check(observe(|| arch::call_el1(Target::Load, ov)), None);
        wp0.check(
            observe(|| arch::call_el0(Target::El0Load, mv, false)),
            Some((EC_WP_LOWER, mv, true)),
        );
        wp0.check(observe(|| arch::call_el0(Target::El0Load, ov, false)), None);
        sw.yield_now();
    }
    for e in [&bp1, &bp0, &wp1, &wp0] {
        e.report(cpu, report);
    }
    sw.report("points", report);
    barrier(cpu, 4);

    // --- step: breakpoints off (MDE clear), KDE for EL1 steps.
    arch::set_mdscr(MDSCR_KDE);
    let mut st1 = Expect::new("step-el1");
    let mut st0 = Expect::new("step-el0");
    let mut stx = Expect::new("step-emulated");
    let uartfr = elvisor_guest_rt::console::console()
        .map_or(elvisor_guest_rt::boot::DEFAULT_UART_BASE, |c| c.base()) as u64
        + 0x18;
    let mut sw = Switches::new(cpu);
    for round in 0..ROUNDS {
        let t = mine_el1;
        arch::set_mdscr(MDSCR_KDE | MDSCR_SS);
        let mut r = 0;
        let got = observe(|| r = arch::step_el1(t, round));
        st1.check(got, Some((EC_STEP_CUR, t.addr() as u64 + 4, false)));
        st1.bad += u64::from(r != round + 1);
        // A step over an instruction the hypervisor emulates stops right after it too.
        for (t, arg) in [
            (Target::EmulatedLoad, uartfr),
            (Target::EmulatedSysreg, round),
        ] {
            arch::set_mdscr(MDSCR_KDE | MDSCR_SS);
            let got = observe(|| r = arch::step_el1(t, arg));
            stx.check(got, Some((EC_STEP_CUR, t.addr() as u64 + 4, false)));
            stx.bad += u64::from(r != arg + 1);
        }
        arch::set_mdscr(MDSCR_KDE | MDSCR_SS);
        let got = observe(|| r = arch::call_el0(mine_el0, round, true));
        st0.check(
            got,
            Some((EC_STEP_LOWER, mine_el0.addr() as u64 + 4, false)),
        );
        st0.bad += u64::from(r != round + 2);
        // Yield with SS still set (the vectors cleared it after the EL0 step: set it again);
        // PSTATE.D is set here, so it steps nothing of this vCPU; it must not step the other.
        arch::set_mdscr(MDSCR_KDE | MDSCR_SS);
        sw.yield_now();
        arch::set_mdscr(MDSCR_KDE);
        // No stray step arrived for this vCPU while the other one had SS set.
        st1.check(observe(|| arch::call_el1(Target::A, 0)), None);
    }
    st1.report(cpu, report);
    st0.report(cpu, report);
    stx.report(cpu, report);
    sw.report("step", report);
    barrier(cpu, 5);

    // --- OS lock and BRK.
    arch::set_mdscr(MDSCR_KDE | MDSCR_MDE);
    let mut brk = Expect::new("brk");
    let mut lock = Expect::new("oslock");
    let mut sw = Switches::new(cpu);
    for _ in 0..ROUNDS {
        brk.check(observe(arch::brk), Some((EC_BRK, ANY, true)));
        arch::set_oslar(1);
        lock.bad += u64::from(arch::oslsr() & 0b10 == 0);
        sw.yield_now();
        lock.check(observe(|| arch::call_el1(mine_el1, 0)), None);
        lock.check(observe(|| arch::call_el0(mine_el0, 0, false)), None);
        brk.check(observe(arch::brk), Some((EC_BRK, ANY, true)));
        arch::set_oslar(0);
        lock.bad += u64::from(arch::oslsr() & 0b10 != 0);
        let m = mine_el1.addr() as u64;
        lock.check(
            observe(|| arch::call_el1(mine_el1, 0)),
            Some((EC_BP_CUR, m, false)),
        );
    }
    brk.report(cpu, report);
    lock.report(cpu, report);
    sw.report("oslock", report);
    barrier(cpu, 6);

    // --- registers beyond the advertised counts are UNDEFINED.
    let dfr0 = IdReg::Dfr0.read();
    let brps = ((dfr0 >> 12) & 0xf) as usize + 1;
    let wrps = ((dfr0 >> 20) & 0xf) as usize + 1;
    let mut undef = Expect::new("undef");
    for (reg, n) in [(Reg::Bcr, brps), (Reg::Bvr, brps), (Reg::Wcr, wrps)] {
        if n < 16 {
            undef.check(
                observe(|| arch::write_point(reg, n, 1)),
                Some((EC_UNKNOWN, ANY, true)),
            );
            undef.check(
                observe(|| arch::read_point(reg, n)),
                Some((EC_UNKNOWN, ANY, true)),
            );
        }
    }
    undef.report(cpu, report);

    // Clean up: nothing armed.
    arch::set_mdscr(0);
    for n in 0..2 {
        arch::write_point(Reg::Bcr, n, 0);
        arch::write_point(Reg::Wcr, n, 0);
    }
    arch::restore_vectors(old_vbar);
}
