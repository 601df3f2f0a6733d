//! elvisor smoke-test guest: checks, from inside a VM, the hypervisor services every guest
//! relies on, and prints one `SMOKE PASS/FAIL` line per check.
//!
//! Order: banner; SMCCC/PSCI over HVC (`smccc-version`, `psci-version`, `psci-features`);
//! unknown calls and the SMC conduit (`hvc-unknown`, `smc-unknown`, `smc-psci-version`,
//! `vendor-uid`); the emulated PL011 (`uart-regs`); injected external aborts (`unbacked-read`,
//! `unbacked-write`, `unbacked-fetch`); an UNDEFINED trapped register (`undef-sysreg`); console
//! input when the bootargs ask for it (`uart-rx`: `smoke.expect-input=TEXT`, `console-line`:
//! `smoke.console-line=TEXT`, a prompt and an echoed line; `smoke.input-fifo=off` reads them
//! with the PL011's FIFO disabled); and PSCI SYSTEM_RESET (`system-reset`), which spans two
//! boots:
//!
//! ```text
//!   boot 0 (reset-count 0): checks -> mark .data and RAM -> SYSTEM_RESET (no RESULT line)
//!   boot 1 (reset-count 1): checks -> .data and RAM fresh? -> SMOKE RESULT -> SYSTEM_OFF
//! ```
//!
//! The RESULT line of the final boot counts that boot's checks, which include `system-reset`.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};

use elvisor_guest_rt::arch::{self, probe};
use elvisor_guest_rt::console::{self, pl011};
use elvisor_guest_rt::exception::{ExceptionKind, Fault, ec, fsc};
use elvisor_guest_rt::smccc::{self, NOT_SUPPORTED, VERSION_1_1, fid, psci};
use elvisor_guest_rt::{BootInfo, Report, mem};

elvisor_guest_rt::entry!(main);

/// An IPA backed by neither RAM nor a device in elvisor's guest memory map.
const UNBACKED_IPA: usize = 0x2000_0000;

/// A word of guest RAM above the image (inside the smoke VM's 64 MiB at 0x4000_0000) that
/// boot 0 dirties and boot 1 expects zeroed by the reset.
const RESET_RAM_MARKER_IPA: usize = 0x4100_0000;

/// The initial value of [`DATA_MARKER`], in `.data`: a reset must reload the image.
const DATA_MAGIC: u32 = 0x5eed_da7a;
/// What boot 0 writes into [`DATA_MARKER`] before the reset.
const DATA_DIRTY: u32 = 0xd1d_da7a;
/// What boot 0 writes into the RAM marker word before the reset.
const RAM_DIRTY: u32 = 0x5245_5345;

/// A `.data` variable (non-zero initialiser) to tell a reloaded image from a reused one.
static DATA_MARKER: AtomicU32 = AtomicU32::new(DATA_MAGIC);

/// SMCCC function ids no service implements: a SiP (SMC32) and an OEM (SMC64) call.
const UNKNOWN_SIP_FID: u32 = 0x8200_1234;
const UNKNOWN_OEM64_FID: u32 = 0xc300_0000;

/// A PSCI function id past the end of PSCI 1.1.
const UNKNOWN_PSCI_FID: u32 = 0x8400_00ff;

fn main(boot: &BootInfo) {
    let mut report = Report::new("SMOKE");
    banner(&report, boot);

    smccc_over_hvc(&mut report);
    unknown_calls_and_smc(&mut report);
    uart_regs(&mut report, boot);
    unbacked_accesses(&mut report);
    undef_sysreg(&mut report);
    uart_rx(&mut report, boot);
    console_line(&mut report, boot);
    system_reset(&mut report, boot);

    report.finish();
    psci::system_off();
}

fn banner(report: &Report, boot: &BootInfo) {
    match boot.reset_count {
        Some(count) => report.note(format_args!("elvisor smoke guest, reset-count={count}")),
        None => report.note(format_args!(
            "elvisor smoke guest, reset-count=none (not under elvisor?)"
        )),
    }
    let ram = boot.ram.clone().unwrap_or(0..0);
    report.note(format_args!(
        "EL{} MIDR_EL1={:#x} dtb={:#x} uart={:#x}{} ram={:#x}..{:#x} psci={:?} image={:#x}..{:#x}",
        arch::current_el(),
        arch::midr(),
        boot.dtb,
        boot.uart_base,
        if boot.uart_from_dtb { "" } else { " (default)" },
        ram.start,
        ram.end,
        boot.psci_conduit,
        arch::image_range().start,
        arch::image_range().end,
    ));
}

/// Formats an SMCCC outcome for a FAIL detail.
struct Outcome(Result<[u64; 4], Fault>);

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.0 {
            Ok(r) => write!(f, "x0={:#x}", r[0]),
            Err(fault) => write!(f, "raised {fault}"),
        }
    }
}

/// x0 of a call that returned, as the signed SMCCC result.
fn x0(outcome: &Result<[u64; 4], Fault>) -> Option<i64> {
    outcome.as_ref().ok().map(|r| r[0] as i64)
}

fn hvc(fid: u32, a1: u64) -> Result<[u64; 4], Fault> {
    smccc::try_hvc_call(fid, a1, 0, 0)
}

fn smc(fid: u32, a1: u64) -> Result<[u64; 4], Fault> {
    smccc::try_smc_call(fid, a1, 0, 0)
}

fn smccc_over_hvc(report: &mut Report) {
    let version = hvc(fid::SMCCC_VERSION, 0);
    report.check(
        "smccc-version",
        x0(&version).is_some_and(|v| v >= VERSION_1_1 as i64),
        format_args!("SMCCC_VERSION {} (want >= 0x10001)", Outcome(version)),
    );

    let version = hvc(fid::PSCI_VERSION, 0);
    report.check(
        "psci-version",
        x0(&version) == Some(VERSION_1_1 as i64),
        format_args!("PSCI_VERSION {} (want 0x10001, PSCI 1.1)", Outcome(version)),
    );

    let off = hvc(fid::PSCI_FEATURES, fid::SYSTEM_OFF.into());
    let unknown = hvc(fid::PSCI_FEATURES, UNKNOWN_PSCI_FID.into());
    let smccc_version = hvc(fid::PSCI_FEATURES, fid::SMCCC_VERSION.into());
    report.check(
        "psci-features",
        x0(&off) == Some(0) && x0(&unknown) == Some(NOT_SUPPORTED) && x0(&smccc_version) == Some(0),
        format_args!(
            "FEATURES(SYSTEM_OFF) {} (want 0), FEATURES({UNKNOWN_PSCI_FID:#x}) {} (want -1), \
             FEATURES(SMCCC_VERSION) {} (want 0)",
            Outcome(off),
            Outcome(unknown),
            Outcome(smccc_version)
        ),
    );
}

fn unknown_calls_and_smc(report: &mut Report) {
    let sip = hvc(UNKNOWN_SIP_FID, 0);
    let oem = hvc(UNKNOWN_OEM64_FID, 0);
    report.check(
        "hvc-unknown",
        x0(&sip) == Some(NOT_SUPPORTED) && x0(&oem) == Some(NOT_SUPPORTED),
        format_args!(
            "hvc {UNKNOWN_SIP_FID:#x} {}, hvc {UNKNOWN_OEM64_FID:#x} {} (want -1 for both)",
            Outcome(sip),
            Outcome(oem)
        ),
    );

    let sip = smc(UNKNOWN_SIP_FID, 0);
    let oem = smc(UNKNOWN_OEM64_FID, 0);
    report.check(
        "smc-unknown",
        x0(&sip) == Some(NOT_SUPPORTED) && x0(&oem) == Some(NOT_SUPPORTED),
        format_args!(
            "smc {UNKNOWN_SIP_FID:#x} {}, smc {UNKNOWN_OEM64_FID:#x} {} (want -1 for both)",
            Outcome(sip),
            Outcome(oem)
        ),
    );

    let version = smc(fid::PSCI_VERSION, 0);
    report.check(
        "smc-psci-version",
        x0(&version) == Some(VERSION_1_1 as i64),
        format_args!("smc PSCI_VERSION {} (want 0x10001)", Outcome(version)),
    );

    let uid = hvc(fid::VENDOR_HYP_CALL_UID, 0);
    let revision = hvc(fid::VENDOR_HYP_REVISION, 0);
    if let (Ok(uid), Ok(revision)) = (&uid, &revision) {
        // SMC32 calls: results are in w0..w3.
        report.note(format_args!(
            "vendor hypervisor UID {:08x} {:08x} {:08x} {:08x}, revision {}.{}",
            uid[0] as u32,
            uid[1] as u32,
            uid[2] as u32,
            uid[3] as u32,
            revision[0] as u32,
            revision[1] as u32
        ));
    }
    report.check(
        "vendor-uid",
        uid.as_ref().is_ok_and(|r| r[0] as u32 != u32::MAX),
        format_args!(
            "VENDOR_HYP_CALL_UID {} (want w0 != 0xffffffff)",
            Outcome(uid)
        ),
    );
}

fn uart_regs(report: &mut Report, boot: &BootInfo) {
    // A VM given console input may have its first byte in the receiver already.
    let input_expected = smoke_arg(boot, "smoke.expect-input").is_some()
        || smoke_arg(boot, "smoke.console-line").is_some();
    let Some(uart) = console::console() else {
        report.fail("uart-regs", format_args!("no usable console PL011"));
        return;
    };

    let fr = uart.read(pl011::FR);
    let periph_id = uart.periph_id();
    let pcell_id = uart.pcell_id();

    // IBRD is a 16-bit register: bit 16 of the value written must not read back.
    let ibrd_saved = uart.read(pl011::IBRD);
    let ibrd_written: u32 = 0x1_2345;
    uart.write(pl011::IBRD, ibrd_written);
    let ibrd_read = uart.read(pl011::IBRD);
    uart.write(pl011::IBRD, ibrd_saved);

    let fr_ok = fr & pl011::FR_TXFF == 0 && (input_expected || fr & pl011::FR_RXFE != 0);
    let periph_ok = periph_id[0] == 0x11
        && periph_id[1] == 0x10
        && periph_id[2] & 0x0f == 0x4
        && periph_id[3] == 0;
    let pcell_ok = pcell_id == pl011::PCELL_ID;
    let ibrd_ok = ibrd_read == ibrd_written & 0xffff;
    report.check(
        "uart-regs",
        fr_ok && periph_ok && pcell_ok && ibrd_ok,
        format_args!(
            "FR={fr:#x} (want TXFF clear, RXFE set unless input is expected), PeriphID={periph_id:02x?} (want [11, 10, ?4, 00]), \
             PCellID={pcell_id:02x?}, IBRD wrote {ibrd_written:#x} read {ibrd_read:#x} (want {:#x})",
            ibrd_written & 0xffff
        ),
    );
}

/// Checks that `outcome` is the synchronous external abort elvisor injects for an unbacked IPA.
fn check_abort<T: core::fmt::Debug>(
    report: &mut Report,
    name: &str,
    outcome: Result<T, Fault>,
    want_ec: u8,
    want_far: usize,
) {
    match outcome {
        Err(fault) => report.check(
            name,
            fault.kind == ExceptionKind::CurrentSpxSync
                && fault.esr.ec() == want_ec
                && fault.esr.fsc() == fsc::SYNC_EXTERNAL_ABORT
                && fault.far == want_far as u64,
            format_args!(
                "{fault} (want CurrentSpxSync, EC {want_ec:#04x}, FSC {:#04x}, FAR {want_far:#x})",
                fsc::SYNC_EXTERNAL_ABORT
            ),
        ),
        Ok(value) => report.fail(
            name,
            format_args!("no exception (got {value:x?}), want EC {want_ec:#04x}"),
        ),
    }
}

fn unbacked_accesses(report: &mut Report) {
    check_abort(
        report,
        "unbacked-read",
        probe::read_u32(UNBACKED_IPA),
        ec::DABT_CURRENT,
        UNBACKED_IPA,
    );
    check_abort(
        report,
        "unbacked-write",
        probe::write_u32(UNBACKED_IPA, 0x5a5a_5a5a),
        ec::DABT_CURRENT,
        UNBACKED_IPA,
    );
    match probe::branch_unbacked(UNBACKED_IPA) {
        Some(outcome) => check_abort(
            report,
            "unbacked-fetch",
            outcome,
            ec::IABT_CURRENT,
            UNBACKED_IPA,
        ),
        None => report.fail(
            "unbacked-fetch",
            format_args!("not branching to {UNBACKED_IPA:#x}: a data read there did not abort"),
        ),
    }
}

/// Console input, when the VM's bootargs ask for it with `smoke.expect-input=TEXT`: the
/// bytes typed on the host console (the test harness pipes them into QEMU) must arrive in
/// order through the emulated PL011, polled with a bounded wait. Checked on the last boot
/// only, so a SYSTEM_RESET test run does not consume the input early.
/// The value of `smoke.KEY=` in the guest's bootargs.
fn smoke_arg<'a>(boot: &'a BootInfo, key: &str) -> Option<&'a str> {
    boot.fdt
        .as_ref()
        .and_then(|f| elvisor_guest_rt::boot::find_node(f, "/chosen"))
        .and_then(|n| n.property("bootargs"))
        .and_then(|p| p.as_str())
        .and_then(|a| {
            a.split_ascii_whitespace()
                .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        })
}

/// Sets up the console PL011 for reading: the 32-entry FIFO (UARTLCR_H.FEN), unless
/// `smoke.input-fifo=off` keeps it disabled (the reset state: a one-byte holding register).
fn uart_for_input(boot: &BootInfo) -> Option<console::Pl011> {
    let uart = console::console()?;
    const FEN: u32 = 1 << 4;
    let lcr_h = uart.read(pl011::LCR_H);
    if smoke_arg(boot, "smoke.input-fifo") == Some("off") {
        uart.write(pl011::LCR_H, lcr_h & !FEN);
    } else {
        uart.write(pl011::LCR_H, lcr_h | FEN);
    }
    Some(uart)
}

/// One received byte, polling UARTFR.RXFE until the counter passes `deadline`.
fn poll_byte(uart: &console::Pl011, deadline: u64) -> Option<u8> {
    while arch::timer::physical_count() < deadline {
        if uart.read(pl011::FR) & pl011::FR_RXFE == 0 {
            return Some(uart.read(pl011::DR) as u8);
        }
    }
    None
}

/// `smoke.expect-input=TEXT`: the bytes typed on the console (in the final boot) are TEXT.
/// They may have been typed before the first boot's reset: the hypervisor keeps them.
fn uart_rx(report: &mut Report, boot: &BootInfo) {
    const NAME: &str = "uart-rx";
    let Some(want) = smoke_arg(boot, "smoke.expect-input") else {
        return;
    };
    if boot.reset_count == Some(0) {
        return;
    }
    let Some(uart) = uart_for_input(boot) else {
        report.fail(NAME, format_args!("no usable console PL011"));
        return;
    };
    let freq = arch::timer::frequency_hz().max(1);
    let deadline = arch::timer::physical_count() + freq * 20;
    let mut got = [0u8; 64];
    let mut n = 0;
    while n < want.len().min(got.len()) {
        let Some(b) = poll_byte(&uart, deadline) else {
            break;
        };
        got[n] = b;
        n += 1;
    }
    let text = core::str::from_utf8(&got[..n]).unwrap_or("<non-UTF-8>");
    report.check(
        NAME,
        text == want,
        format_args!("read {text:?} from the console, want {want:?}"),
    );
}

/// `smoke.console-line=TEXT` (final boot): prints the prompt `type TEXT> ` with no line feed,
/// echoes what is typed and reads up to Enter; the line must be TEXT. The console test types
/// only once the prompt has appeared, so it shows that a prompt is printed before Enter.
fn console_line(report: &mut Report, boot: &BootInfo) {
    const NAME: &str = "console-line";
    let Some(want) = smoke_arg(boot, "smoke.console-line") else {
        return;
    };
    if boot.reset_count == Some(0) {
        return;
    }
    let Some(uart) = uart_for_input(boot) else {
        report.fail(NAME, format_args!("no usable console PL011"));
        return;
    };
    elvisor_guest_rt::print!("type {want}> ");
    let freq = arch::timer::frequency_hz().max(1);
    let deadline = arch::timer::physical_count() + freq * 120;
    let mut got = [0u8; 64];
    let mut n = 0;
    let mut ended = false;
    while let Some(b) = poll_byte(&uart, deadline) {
        if b == b'\r' || b == b'\n' {
            ended = true;
            break;
        }
        if let Some(slot) = got.get_mut(n) {
            *slot = b;
            n += 1;
        }
        // The echo, as a shell's line editor gives it.
        uart.put_byte(b);
    }
    elvisor_guest_rt::println!();
    let text = core::str::from_utf8(&got[..n]).unwrap_or("<non-UTF-8>");
    report.check(
        NAME,
        ended && text == want,
        format_args!("read the line {text:?} (Enter: {ended}), want {want:?}"),
    );
}

fn undef_sysreg(report: &mut Report) {
    match probe::read_mdccsr_el0() {
        Err(fault) => report.check(
            "undef-sysreg",
            fault.kind == ExceptionKind::CurrentSpxSync && fault.esr.ec() == ec::UNKNOWN,
            format_args!("mrs mdccsr_el0 raised {fault} (want EC 0x00, UNDEFINED)"),
        ),
        Ok(value) => report.fail(
            "undef-sysreg",
            format_args!("mrs mdccsr_el0 returned {value:#x}, want an UNDEFINED exception"),
        ),
    }
}

fn system_reset(report: &mut Report, boot: &BootInfo) {
    const NAME: &str = "system-reset";
    let Some(ram_marker) = mem::free_ram_word(RESET_RAM_MARKER_IPA) else {
        report.fail(
            NAME,
            format_args!("{RESET_RAM_MARKER_IPA:#x} is not free guest RAM"),
        );
        return;
    };
    match boot.reset_count {
        None => report.fail(NAME, format_args!("/chosen has no elvisor,reset-count")),
        Some(0) => {
            let data = DATA_MARKER.load(Ordering::SeqCst);
            if data != DATA_MAGIC {
                report.fail(
                    NAME,
                    format_args!(
                        ".data marker is {data:#x} before the reset, want {DATA_MAGIC:#x}"
                    ),
                );
                return;
            }
            DATA_MARKER.store(DATA_DIRTY, Ordering::SeqCst);
            ram_marker.store(RAM_DIRTY, Ordering::SeqCst);
            report.note(format_args!("requesting SYSTEM_RESET"));
            let ret = psci::system_reset();
            report.fail(NAME, format_args!("SYSTEM_RESET returned {ret:#x}"));
        }
        Some(1) => {
            let data = DATA_MARKER.load(Ordering::SeqCst);
            let ram = ram_marker.load(Ordering::SeqCst);
            report.check(
                NAME,
                data == DATA_MAGIC && ram == 0,
                format_args!(
                    "after the reset: .data marker {data:#x} (want {DATA_MAGIC:#x}, a fresh image), \
                     RAM word at {RESET_RAM_MARKER_IPA:#x} = {ram:#x} (want 0, fresh RAM)"
                ),
            );
        }
        Some(count) => report.fail(NAME, format_args!("reset-count is {count}, want 0 or 1")),
    }
}
