//! The real boot flow on QEMU virt: U-Boot (Debian's u-boot-qemu) loads everything from a FAT
//! disk. scripts/mkboot turns the case's VM set into the host DT overlay and boot.scr,
//! scripts/mkfatdisk puts them with the hypervisor, the base tree and every VM image into an MBR
//! disk with one FAT32 partition, and QEMU gets only `-bios u-boot.bin` and that disk as a
//! virtio-blk drive: no `-kernel`, no `-dtb`, no `-device loader`, nothing typed. U-Boot's
//! distro_bootcmd finds /boot.scr on virtio 0:1 by itself, as the Pi's U-Boot finds it on the
//! SD card (docs/boards/rpi4.md).
//!
//! Debian's u-boot-qemu is built without CONFIG_OF_LIBFDT_OVERLAY, so its `fdt apply` fails and
//! boot.scr takes its fallback (the same nodes from `fdt mknode`/`fdt set`); the log must say
//! so. That the overlay itself applies (libfdt, as U-Boot's `fdt apply` does) is checked on the
//! host by scripts/check-sdcard.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::cases::{Boot, Case, Exit, Image, VIRT_V2_NVHE, VIRT_V3_VHE};

/// What U-Boot and boot.scr print on the way to booti (before the hypervisor's lines).
macro_rules! disk_lines {
    ($dt:expr, $($tail:expr),* $(,)?) => {
        &[
            "Scanning virtio 0:1",
            "Found U-Boot script /boot.scr",
            "elvisor: boot.scr: loading from virtio 0:1",
            $dt,
            "no fdt apply in this U-Boot: VM nodes added with fdt set",
            "elvisor: boot.scr: booti 0x40480000 - 0x48000000",
            "Starting kernel",
            $($tail,)*
        ]
    };
}

/// Files a case deletes from the FAT partition before the disk is made: a module U-Boot
/// cannot load.
const REMOVE: &[(&str, &str)] = &[("boot-disk-missing-module", "elvisor/smoke.img")];

const fn disk(
    name: &'static str,
    about: &'static str,
    (machine, dt_from_firmware): (&'static [&'static str], bool),
    vms: &'static [&'static str],
    timeout_s: u64,
    expect: &'static [&'static str],
    reject: &'static [&'static str],
) -> Case {
    Case {
        name,
        about,
        machine,
        boot: Boot::UBootDisk { dt_from_firmware },
        vms,
        bootargs: None,
        timeout_s,
        expect,
        reject,
        exit: Exit::Status(0),
        console_input: None,
        image: Image::Normal,
        allow: &[],
        reject_after_exit: &[],
    }
}

pub const CASES: &[Case] = &[
    disk(
        "boot-disk-gicv3-vhe",
        "U-Boot distro boot from a FAT virtio disk: boot.scr loads the DTB, overlay, smoke VM and hypervisor; GICv3, VHE",
        (VIRT_V3_VHE, false),
        &["smoke"],
        90,
        disk_lines![
            "Working FDT set to 48000000",
            "VHE mode (E2H=1)",
            "elvisor: image: 0x40480000..",
            "GICv3",
            "vm config smoke: 1 vCPU(s), 64 MiB, kernel 0x60000000+",
            "SMOKE RESULT: passed=",
            "failed=0",
            "all VMs stopped; powering off",
        ],
        &["SMOKE FAIL", "could not load"],
    ),
    disk(
        "boot-disk-gicv2-nvhe-fwdt",
        "as boot-disk-gicv3-vhe, GICv2, cortex-a72 (non-VHE), the tree U-Boot was handed moved and extended (the Pi's way)",
        (VIRT_V2_NVHE, true),
        &["smoke"],
        90,
        disk_lines![
            "elvisor: boot.scr: device tree from the firmware at",
            "non-VHE mode (E2H=0)",
            "elvisor: image: 0x40480000..",
            "GICv2",
            "vm config smoke: 1 vCPU(s), 64 MiB, kernel 0x60000000+",
            "SMOKE RESULT: passed=",
            "failed=0",
            "all VMs stopped; powering off",
        ],
        &["SMOKE FAIL", "could not load"],
    ),
    disk(
        "boot-disk-linux",
        "U-Boot loads Debian's Linux (33 MB), its initramfs and a heartbeat VM from the FAT disk; Linux runs to /init next to it",
        (VIRT_V3_VHE, false),
        &["linux", "heartbeat-cpu1"],
        150,
        disk_lines![
            "Working FDT set to 48000000",
            "elvisor: image: 0x40480000..",
            "vm config linux: 2 vCPU(s), 256 MiB, kernel 0x60000000+",
            "vm config hb1:",
            "Booting Linux on physical CPU 0x0000000000",
            "INIT: nproc=2",
            "INIT: done",
            "all VMs stopped; powering off",
        ],
        &[
            "could not load",
            "Kernel panic",
            "Internal error:",
            "Unable to handle kernel",
            "Oops",
        ],
    ),
    Case {
        name: "boot-disk-missing-module",
        about: "a VM image missing from the FAT disk: boot.scr names it and does not booti",
        machine: VIRT_V3_VHE,
        boot: Boot::UBootDisk {
            dt_from_firmware: false,
        },
        vms: &["smoke"],
        bootargs: None,
        timeout_s: 60,
        expect: &[
            "Found U-Boot script /boot.scr",
            "Failed to load 'elvisor/smoke.img'",
            "elvisor: boot.scr: could not load: elvisor/smoke.img; not booting",
            // distro_bootcmd's own word for a script that did not boot
            "SCRIPT FAILED: continuing",
        ],
        reject: &["Starting kernel", "elvisor: elvisor", "PANIC", "panicked"],
        exit: Exit::KillAfter("SCRIPT FAILED: continuing"),
        console_input: None,
        image: Image::Normal,
        allow: &["FAIL"],
        reject_after_exit: &[],
    },
];

/// scripts/mkboot for a disk case: the FAT contents in build/test-dtb/<case>/, the disk in
/// build/test-dtb/<case>.img (after [`REMOVE`]). Returns the QEMU arguments for the disk.
pub fn mkboot(
    root: &Path,
    case: &Case,
    templates: &[String],
    dt_from_firmware: bool,
) -> Result<Vec<String>, String> {
    let dir = format!("build/test-dtb/{}", case.name);
    let img = format!("build/test-dtb/{}.img", case.name);
    let mut cmd = Command::new(root.join("scripts/mkboot"));
    cmd.current_dir(root)
        .arg("-o")
        .arg(&dir)
        .arg("--board")
        .arg(crate::runner::board(case))
        .arg("--dt")
        .arg(if dt_from_firmware { "firmware" } else { "file" });
    for vm in templates {
        cmd.arg("--vm").arg(vm);
    }
    let command_line = crate::cases::boot_command_line(case);
    if !command_line.is_empty() {
        cmd.arg("--bootargs").arg(command_line);
    }
    cmd.arg("--").args(case.machine);
    run(cmd, "scripts/mkboot")?;
    for (_, file) in REMOVE.iter().filter(|(n, _)| *n == case.name) {
        let path = root.join(&dir).join("fat").join(file);
        std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    let mut cmd = Command::new(root.join("scripts/mkfatdisk"));
    cmd.current_dir(root).arg(&img).arg(format!("{dir}/fat"));
    run(cmd, "scripts/mkfatdisk")?;
    let img = root.join(img);
    Ok(vec![
        "-drive".into(),
        format!("if=none,file={},format=raw,id=bootdisk", img.display()),
        "-device".into(),
        "virtio-blk-device,drive=bootdisk".into(),
        // No network: U-Boot's distro boot would otherwise go on to DHCP/TFTP after a failure.
        "-nic".into(),
        "none".into(),
    ])
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let res = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if res.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_name_cases() {
        for (name, _) in REMOVE {
            assert!(CASES.iter().any(|c| c.name == *name), "{name}");
        }
    }
}
