//! Running one case: prepare the host DTB with scripts/mkdtb, start QEMU in its own process
//! group with a hard timeout, capture the serial console to build/test-logs/<case>.log while
//! watching it, stop QEMU when the case calls for it, and judge the result.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cases::{ARMSTUB_DTB_ADDR, Boot, Case, Exit};
use crate::check::{first_after, first_rejected, missing_in_order, shell_quote};
use crate::sys;

pub const UBOOT_BIN: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
/// Where U-Boot finds the hypervisor image. Not 0x4008_0000: QEMU's DTB ROM for the firmware
/// sits at the bottom of RAM. booti moves the image to the 2 MiB-aligned base at or below
/// this address + text_offset (0x4028_0000: the header allows any base), where it relocates itself.
pub const UBOOT_IMAGE_ADDR: &str = "0x40200000";
/// How long the log is still collected after a kill trigger (pattern seen, forbidden line seen).
const GRACE: Duration = Duration::from_millis(1000);
const POLL: Duration = Duration::from_millis(50);
/// Re-scanned bytes before the new output: longer than any pattern.
const OVERLAP: usize = 512;
/// A run that prints more than this is stuck in a loop (an exception storm, say); a soak
/// made longer from the environment may print proportionally more.
const MAX_LOG_BYTES: usize = 16 << 20;

pub struct Outcome {
    pub pass: bool,
    /// Why it failed (empty on success).
    pub reason: String,
    pub secs: f64,
    /// The serial log (lossy UTF-8), empty if QEMU never ran.
    pub log: String,
    pub log_path: PathBuf,
    /// The QEMU command line, shell-quoted, if it got that far.
    pub command: Option<String>,
    /// Figures a passing case reports (the soaks' summary), empty for most.
    pub note: String,
}

/// How the QEMU process ended.
enum End {
    Exited(ExitStatus),
    /// Killed by the harness after this trigger.
    Killed(Trigger),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Pattern,
    Rejected,
    Timeout,
    Interrupted,
    TooMuchOutput,
}

pub fn run(root: &Path, case: &Case) -> Outcome {
    let start = Instant::now();
    let log_dir = root.join("build/test-logs");
    let log_path = log_dir.join(format!("{}.log", case.name));
    let mut out = Outcome {
        pass: false,
        reason: String::new(),
        secs: 0.0,
        log: String::new(),
        log_path: log_path.clone(),
        command: None,
        note: String::new(),
    };
    match run_inner(root, case, &log_dir, &log_path, &mut out) {
        Ok(()) => {}
        Err(e) => out.reason = e,
    }
    out.pass = out.reason.is_empty();
    out.secs = start.elapsed().as_secs_f64();
    out
}

fn run_inner(
    root: &Path,
    case: &Case,
    log_dir: &Path,
    log_path: &Path,
    out: &mut Outcome,
) -> Result<(), String> {
    fs::create_dir_all(log_dir).map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    let _ = fs::remove_file(log_path);
    if case.image == crate::cases::Image::Misaligned {
        write_misaligned_image(root)?;
    }
    let image = root.join(case.image.path());
    if !image.is_file() {
        return Err(format!(
            "{} is missing (run scripts/build)",
            image.display()
        ));
    }

    let (templates, scale) = soak_templates(root, case)?;
    let mut dtb_args = match case.boot {
        Boot::UBootDisk { dt_from_firmware } => {
            crate::cases_boot::mkboot(root, case, &templates, dt_from_firmware)?
        }
        _ => mkdtb(root, case, &templates)?,
    };

    // The QEMU command line.
    let mut args: Vec<String> = case.machine.iter().map(|s| s.to_string()).collect();
    args.extend(["-nographic", "-no-reboot"].map(String::from));
    let mut stdin_text = case.console_input.map(String::from);
    match case.boot {
        Boot::Direct | Boot::ForeignDtb(_) => {
            args.push("-kernel".into());
            args.push(image.display().to_string());
        }
        Boot::UBoot => {
            args.push("-bios".into());
            args.push(UBOOT_BIN.into());
            args.push("-device".into());
            args.push(format!(
                "loader,file={},addr={UBOOT_IMAGE_ADDR},force-raw=on",
                image.display()
            ));
            stdin_text = Some(uboot_commands() + case.console_input.unwrap_or(""));
        }
        Boot::UBootDisk { .. } => {
            args.push("-bios".into());
            args.push(UBOOT_BIN.into());
        }
        Boot::Armstub => {
            let stub = armstub(root, case)?;
            args.push("-device".into());
            args.push(format!(
                "loader,file={},addr=0x0,force-raw=on",
                stub.display()
            ));
            args.push("-device".into());
            args.push(format!(
                "loader,file={},addr={ARMSTUB_KERNEL_ENTRY:#x},force-raw=on",
                image.display()
            ));
            // The firmware, not QEMU's -dtb, places the tree: a raw load at the address the
            // stub words name.
            for a in dtb_args.iter_mut() {
                if a == "-dtb" {
                    *a = "-device".into();
                } else if a.ends_with(".dtb") && !a.starts_with("loader,") {
                    *a = format!("loader,file={a},addr={ARMSTUB_DTB_ADDR:#x},force-raw=on");
                }
            }
        }
    }
    args.extend(dtb_args);
    let mut shown = String::from("qemu-system-aarch64");
    for a in &args {
        shown.push(' ');
        shown.push_str(&shell_quote(a));
    }

    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(&args).current_dir(root);
    let script = crate::cases_console::script(case.name);
    match stdin_text {
        _ if script.is_some() => {
            cmd.stdin(Stdio::piped());
            shown.push_str(" # typed as the log shows each step: tests/src/cases_console.rs");
        }
        Some(text) => {
            let path = log_dir.join(format!("{}.stdin", case.name));
            fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            cmd.stdin(f);
            shown.push_str(&format!(" < {}", shell_quote(&path.display().to_string())));
        }
        None => {
            cmd.stdin(Stdio::null());
            shown.push_str(" < /dev/null");
        }
    }
    let cmd_path = log_dir.join(format!("{}.cmd", case.name));
    let _ = fs::write(
        &cmd_path,
        format!("cd {}\n{shown}\n", shell_quote(&root.display().to_string())),
    );
    out.command = Some(shown);

    // Serial console and QEMU's own messages go into one pipe, in the order they are written.
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let writer2 = writer.try_clone().map_err(|e| format!("pipe: {e}"))?;
    cmd.stdout(writer).stderr(writer2);
    sys::own_group_die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-aarch64: {e}"))?;
    drop(cmd); // closes our copies of the pipe's write end, so the reader sees EOF at exit
    let pgid = child.id();
    // An interactive case: the next step to type, and where in the log its wait starts.
    let mut typing = script.map(|steps| (child.stdin.take(), steps, 0usize, 0usize));

    let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut log_file =
        File::create(log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let collector = {
        let buf = Arc::clone(&buf);
        let mut reader = reader;
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let _ = log_file.write_all(&chunk[..n]);
                        buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                    }
                }
            }
        })
    };

    let rejects = case.rejects();
    let started = Instant::now();
    let timeout = Duration::from_secs_f64(case.timeout_s as f64 * scale);
    let mut trigger: Option<(Trigger, Instant)> = None;
    let mut scanned = 0usize;
    let end = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break End::Exited(status);
        }
        let now = Instant::now();
        if let Some((t, deadline)) = trigger
            && now >= deadline
        {
            break kill(&mut child, pgid, t);
        }
        if sys::interrupted() {
            break kill(&mut child, pgid, Trigger::Interrupted);
        }
        if now.duration_since(started) >= timeout {
            break kill(&mut child, pgid, Trigger::Timeout);
        }
        if let Some((Some(stdin), steps, next, from)) = typing.as_mut()
            && let Some(step) = steps.get(*next)
        {
            let b = buf.lock().unwrap();
            let seen = b
                .get(*from..)
                .and_then(|tail| find_bytes(tail, step.wait.as_bytes()));
            if let Some(at) = seen {
                *from += at + step.wait.len();
                *next += 1;
                drop(b);
                let _ = stdin.write_all(step.send.as_bytes());
                let _ = stdin.flush();
            }
        }
        if trigger.is_none() {
            // Scan only what arrived since the last poll (plus an overlap for a line split
            // between reads), so a chatty run costs no more than a quiet one.
            let (text, len) = {
                let b = buf.lock().unwrap();
                let from = scanned.saturating_sub(OVERLAP);
                (String::from_utf8_lossy(&b[from..]).into_owned(), b.len())
            };
            scanned = len;
            if len as f64 > MAX_LOG_BYTES as f64 * scale {
                break kill(&mut child, pgid, Trigger::TooMuchOutput);
            }
            if first_rejected(&text, &rejects).is_some() {
                trigger = Some((Trigger::Rejected, now + GRACE));
            } else if let Exit::KillAfter(p) = case.exit
                && text.contains(p)
            {
                trigger = Some((Trigger::Pattern, now + GRACE));
            }
        }
        thread::sleep(POLL);
    };
    let _ = collector.join();
    let log = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    out.log = log;
    judge(case, &out.log, &rejects, end, timeout)?;
    if let Some(check) = crate::cases::log_check(case.name)
        .or_else(|| crate::cases_rpi4::log_check(case.name))
        .or_else(|| crate::cases_ext4::log_check(case.name))
    {
        out.note = check(&out.log)?;
    }
    Ok(())
}

/// The soak counts a long run can raise from the environment: variable, the bootarg in the
/// VM templates it replaces, and its value in the templates.
const SOAK_OVERRIDES: &[(&str, &str)] = &[
    ("ELVISOR_SOAK_RESETS", "resetter.resets="),
    ("ELVISOR_SOAK_REBOOTS", "soak.reboots="),
];

/// The case's VM templates, with a soak count replaced where the environment asks for a
/// longer run (`ELVISOR_SOAK_RESETS=100000`): such a template is copied to build/test-dtb/
/// with the new count. Also returns how much longer the run may take (new count / old).
fn soak_templates(root: &Path, case: &Case) -> Result<(Vec<String>, f64), String> {
    let mut out = Vec::new();
    let mut scale: f64 = 1.0;
    for vm in case.vms {
        let path = if vm.contains('/') {
            root.join(vm)
        } else {
            root.join(format!("boards/{}/vms/{vm}.dtsi", board(case)))
        };
        let mut text = None;
        for (var, key) in SOAK_OVERRIDES {
            let Some(want) = std::env::var(var).ok().filter(|v| !v.is_empty()) else {
                continue;
            };
            let want: u64 = want
                .parse()
                .map_err(|_| format!("{var}={want} is not a number"))?;
            let t = match text.take() {
                Some(t) => t,
                None => fs::read_to_string(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?,
            };
            text = Some(match replace_count(&t, key, want) {
                Some((new, old)) => {
                    scale = scale.max(want as f64 / old.max(1) as f64);
                    new
                }
                None => t,
            });
        }
        match text {
            Some(t) => {
                let name = Path::new(vm)
                    .file_stem()
                    .map_or_else(|| "vm".to_string(), |s| s.to_string_lossy().into_owned());
                let copy = root.join(format!("build/test-dtb/{}-{name}.dtsi", case.name));
                fs::create_dir_all(root.join("build/test-dtb"))
                    .map_err(|e| format!("creating build/test-dtb: {e}"))?;
                fs::write(&copy, t).map_err(|e| format!("writing {}: {e}", copy.display()))?;
                out.push(copy.display().to_string());
            }
            None => out.push(vm.to_string()),
        }
    }
    Ok((out, scale))
}

/// `text` with the number after every `key` replaced by `want`, and the first old number;
/// `None` if `key` is not followed by a number anywhere.
fn replace_count(text: &str, key: &str, want: u64) -> Option<(String, u64)> {
    let mut out = String::new();
    let mut old = None;
    let mut rest = text;
    while let Some(at) = rest.find(key) {
        let after = &rest[at + key.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..at + key.len()]);
        if digits > 0 {
            old.get_or_insert(after[..digits].parse().ok()?);
            out.push_str(&want.to_string());
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    old.map(|o| (out, o))
}

fn kill(child: &mut std::process::Child, pgid: u32, why: Trigger) -> End {
    sys::kill_group(pgid);
    let _ = child.wait();
    End::Killed(why)
}

/// Typed at the U-Boot prompt. The key that stops autoboot and the character after it are
/// swallowed, hence two empty lines first. `fdt print /chosen` shows that U-Boot's control DTB
/// is ours (the log must show the VM node), then booti hands that DTB to the hypervisor.
fn uboot_commands() -> String {
    format!(
        "\n\nfdt addr ${{fdtcontroladdr}}\nfdt print /chosen\nbooti {UBOOT_IMAGE_ADDR} - ${{fdtcontroladdr}}\n"
    )
}

/// Where the Pi firmware enters the kernel named in config.txt (arm_64bit, no kernel_address).
const ARMSTUB_KERNEL_ENTRY: u32 = 0x8_0000;

/// Offsets of the words at the start of a Raspberry Pi armstub (TF-A's rpi4 BL31 keeps the
/// same layout as the firmware's own armstub8): a magic the firmware checks and then clears,
/// a version, the DTB address and the kernel entry, all 32-bit little-endian.
const STUB_MAGIC_AT: usize = 0xf0;
const STUB_MAGIC: u32 = 0x5afe_570b;
const STUB_DTB_AT: usize = 0xf8;
const STUB_KERNEL_AT: usize = 0xfc;

/// Makes build/test-dtb/CASE.armstub.bin: Debian's TF-A `rpi4/bl31.bin` with the stub words
/// filled in as the VideoCore firmware does before it releases the ARM cores (magic cleared to
/// say "the addresses below are valid").
fn armstub(root: &Path, case: &Case) -> Result<PathBuf, String> {
    let src = root.join("build/rpi-material/bl31.bin");
    let mut stub =
        fs::read(&src).map_err(|e| format!("{}: {e} (run scripts/setup)", src.display()))?;
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
    };
    if word(&stub, STUB_MAGIC_AT) != Some(STUB_MAGIC) {
        return Err(format!(
            "{}: no armstub magic {STUB_MAGIC:#x} at {STUB_MAGIC_AT:#x}; not an rpi4 BL31?",
            src.display()
        ));
    }
    let dtb = u32::try_from(ARMSTUB_DTB_ADDR).map_err(|_| "DTB address above 4 GiB".to_string())?;
    for (at, v) in [
        (STUB_MAGIC_AT, 0),
        (STUB_DTB_AT, dtb),
        (STUB_KERNEL_AT, ARMSTUB_KERNEL_ENTRY),
    ] {
        stub[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    let out = root.join(format!("build/test-dtb/{}.armstub.bin", case.name));
    fs::write(&out, &stub).map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(out)
}

/// The board directory (boards/NAME) of a case, from its QEMU machine: raspi4b is the
/// Raspberry Pi 4 (boards/rpi4), everything else QEMU virt.
pub fn board(case: &Case) -> &'static str {
    board_of(case.machine)
}

/// [`board`] of a QEMU machine's arguments.
fn board_of(machine: &[&str]) -> &'static str {
    let raspi = machine
        .iter()
        .any(|a| *a == "raspi4b" || a.starts_with("raspi4b,"));
    if raspi { "rpi4" } else { "qemu-virt" }
}

/// scripts/mkdtb for this case; returns the QEMU arguments it prints (-dtb, -device loader...).
fn mkdtb(root: &Path, case: &Case, templates: &[String]) -> Result<Vec<String>, String> {
    let dtb = format!("build/test-dtb/{}.dtb", case.name);
    let mut cmd = Command::new(root.join("scripts/mkdtb"));
    cmd.current_dir(root).arg("-o").arg(&dtb);
    if case.boot == Boot::UBoot {
        cmd.arg("--uboot");
    }
    // The machine the DTB is made for: the case's own, or another board's on purpose.
    let dt_machine = match case.boot {
        Boot::ForeignDtb(m) => m,
        _ => case.machine,
    };
    cmd.arg("--board").arg(board_of(dt_machine));
    for vm in templates {
        cmd.arg("--vm").arg(vm);
    }
    let command_line = crate::cases::boot_command_line(case);
    if !command_line.is_empty() {
        cmd.arg("--bootargs").arg(command_line);
    }
    cmd.arg("--").args(dt_machine).stdin(Stdio::null());
    let res = cmd
        .output()
        .map_err(|e| format!("cannot run scripts/mkdtb: {e}"))?;
    if !res.status.success() {
        return Err(format!(
            "scripts/mkdtb failed ({}): {}",
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&res.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn judge(
    case: &Case,
    log: &str,
    rejects: &[&str],
    end: End,
    timeout: Duration,
) -> Result<(), String> {
    if let Some((what, line)) = first_rejected(log, rejects) {
        return Err(format!("log contains {what:?}: {}", line.trim()));
    }
    if let Exit::KillAfter(p) = case.exit
        && let Some((what, line)) = first_after(log, p, case.reject_after_exit)
    {
        return Err(format!(
            "log contains {what:?} after {p:?}: {}",
            line.trim()
        ));
    }
    let missing = missing_in_order(log, case.expect);
    match end {
        End::Killed(Trigger::Interrupted) => Err("interrupted".into()),
        End::Killed(Trigger::Timeout) => Err(format!(
            "timed out after {}s{}",
            timeout.as_secs(),
            missing.map(|m| format!("; {m}")).unwrap_or_default()
        )),
        End::Killed(Trigger::Rejected) => Err("forbidden output".into()),
        End::Killed(Trigger::TooMuchOutput) => Err(format!(
            "more than {} MiB of output: stuck in a loop?",
            MAX_LOG_BYTES >> 20
        )),
        End::Killed(Trigger::Pattern) => missing.map_or(Ok(()), Err),
        End::Exited(status) => {
            if let Some(m) = missing {
                return Err(format!("QEMU exited ({}); {m}", describe(status)));
            }
            let want = match case.exit {
                Exit::Status(s) => s,
                Exit::KillAfter(_) => 0,
            };
            if status.code() == Some(want) {
                Ok(())
            } else {
                Err(format!(
                    "QEMU exited with {}, expected status {want}",
                    describe(status)
                ))
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Where `needle` first occurs in `hay`.
fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes [`crate::cases::Image::Misaligned`]: build/elvisor.img with the arm64 Image header's
/// text_offset (bytes 8..16, little-endian; Linux's Documentation/arch/arm64/booting.rst) set to
/// [`crate::cases::MISALIGNED_TEXT_OFFSET`].
fn write_misaligned_image(root: &Path) -> Result<(), String> {
    let src = root.join(crate::cases::Image::Normal.path());
    let dst = root.join(crate::cases::Image::Misaligned.path());
    let mut bytes = fs::read(&src).map_err(|e| format!("reading {}: {e}", src.display()))?;
    if bytes.len() < 64 || &bytes[56..60] != b"ARM\x64" {
        return Err(format!("{} has no arm64 Image header", src.display()));
    }
    bytes[8..16].copy_from_slice(&crate::cases::MISALIGNED_TEXT_OFFSET.to_le_bytes());
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    fs::write(&dst, bytes).map_err(|e| format!("writing {}: {e}", dst.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soak_counts_are_replaced() {
        let t = "bootargs = \"resetter.resets=1000 resetter.every=100\";";
        let (new, old) = replace_count(t, "resetter.resets=", 100_000).unwrap();
        assert_eq!(old, 1000);
        assert_eq!(
            new,
            "bootargs = \"resetter.resets=100000 resetter.every=100\";"
        );
        assert!(replace_count(t, "soak.reboots=", 5).is_none());
        assert!(replace_count("soak.reboots=x", "soak.reboots=", 5).is_none());
    }
}
