//! System cases of a Linux VM on an ext4 disk (boards/qemu-virt/vms/linux-ext4.dtsi): Debian's
//! kernel with its own virtio_blk and ext4 modules mounts scripts/mkdisk's image (made without
//! root by `mke2fs -d`), checks a file's MD5 against the one mkdisk stored, writes a new file,
//! reboots itself (PSCI SYSTEM_RESET) and must find that file again, intact, on the next boot.
//! Hooked into [`crate::cases::CASES`] by name; [`log_check`] compares the MD5s across the two
//! boots.

use crate::cases::Case;
use crate::matrix::{FROM_CONFIG, Naming, Scenario, V2_NVHE, V3_VHE};

/// In order: the disk placed, the first boot (mounted, the image's file checked, nothing
/// written yet, the new file written and the reboot), the hypervisor's reset, the second boot
/// (the image's file again, the new file found) and the power-off.
const LINUX_EXT4_LINES: &[&str] = &[
    // 6000 KiB: 12000 sectors, not a multiple of 2 MiB.
    "linux: virtio-blk in slot 0 at 0xa000000 (SPI 16): 12000 sectors",
    "[vda] 12000 512-byte logical blocks",
    "INIT: ext4: boot 0: mounted /dev/vda /mnt ext4 rw",
    "INIT: ext4: boot 0: elvisor.bin: md5 ",
    "INIT: ext4: boot 0: wrote written.bin (256 KiB, md5 ",
    "(linux): PSCI SYSTEM_RESET (reset #1)",
    "INIT: ext4: boot 1: mounted /dev/vda /mnt ext4 rw",
    "INIT: ext4: boot 1: elvisor.bin: md5 ",
    "INIT: ext4: PASS: boot 1: written.bin is there after the reset (md5 ",
    "INIT: done",
    "reboot: Power down",
];

pub const LINUX_EXT4: Scenario = Scenario {
    name: "linux-ext4{cfg}",
    naming: Naming::Gic,
    on: &[
        (
            V3_VHE,
            "Debian's Linux mounts an ext4 image made by `mke2fs -d` (virtio-blk, 6000 KiB), checks a file's MD5, writes a file, reboots (PSCI SYSTEM_RESET) and finds it again; GICv3, VHE",
        ),
        (
            V2_NVHE,
            "the ext4 write-reboot-read Linux VM on vGICv2, cortex-a72 (non-VHE)",
        ),
    ],
    case: Case {
        vms: &["linux-ext4"],
        // Two Linux boots.
        timeout_s: 240,
        expect: LINUX_EXT4_LINES,
        reject: &[
            "Kernel panic",
            "Internal error:",
            "Unable to handle kernel",
            "BUG:",
            "Oops",
            "insmod",
            "INIT: ext4: FAIL",
            "EXT4-fs error",
            "device needs reset",
            "(reset #2)",
        ],
        ..FROM_CONFIG
    },
    tweak: None,
};

/// The whole log after the expected lines: both boots read elvisor.bin with the same MD5 (the
/// one scripts/mkdisk stored, which /init compared), and the second boot read written.bin with
/// the MD5 the first boot wrote it with.
pub fn log_check(case: &str) -> Option<crate::cases::LogCheck> {
    match case {
        "linux-ext4-gicv3" | "linux-ext4-gicv2" => Some(check_md5s),
        _ => None,
    }
}

/// The first 32-character word after `key` in `log`.
fn md5_after<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    let rest = &log[log.find(key)? + key.len()..];
    let word = rest.get(..32)?;
    word.bytes().all(|b| b.is_ascii_hexdigit()).then_some(word)
}

fn check_md5s(log: &str) -> Result<String, String> {
    let get = |key: &str| md5_after(log, key).ok_or(format!("no MD5 after {key:?}"));
    let image0 = get("INIT: ext4: boot 0: elvisor.bin: md5 ")?;
    let image1 = get("INIT: ext4: boot 1: elvisor.bin: md5 ")?;
    let wrote = get("INIT: ext4: boot 0: wrote written.bin (256 KiB, md5 ")?;
    let found = get("written.bin is there after the reset (md5 ")?;
    if image0 != image1 {
        return Err(format!(
            "elvisor.bin read {image0} on the first boot, {image1} on the second"
        ));
    }
    if wrote != found {
        return Err(format!(
            "written.bin was written with MD5 {wrote}, read back after the reset as {found}"
        ));
    }
    Ok(format!(
        "elvisor.bin {image0} on both boots; written.bin {wrote} written, found after the reset"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "INIT: ext4: boot 0: elvisor.bin: md5 908cf6dda4e9cf228bc425a3da0677c9 OK\n\
        INIT: ext4: boot 0: wrote written.bin (256 KiB, md5 0123456789abcdef0123456789abcdef), synced\n\
        INIT: ext4: boot 1: elvisor.bin: md5 908cf6dda4e9cf228bc425a3da0677c9 OK\n\
        INIT: ext4: PASS: boot 1: written.bin is there after the reset (md5 0123456789abcdef0123456789abcdef)\n";

    #[test]
    fn matching_md5s_pass() {
        assert!(check_md5s(GOOD).is_ok());
        assert!(log_check("linux-ext4-gicv2").is_some());
        assert!(log_check("linux-virtio-gicv3").is_none());
    }

    #[test]
    fn a_changed_or_missing_md5_fails() {
        let changed = GOOD.replace(
            "reset (md5 0123456789abcdef0123456789abcdef",
            "reset (md5 ffffffffffffffffffffffffffffffff",
        );
        let err = check_md5s(&changed).unwrap_err();
        assert!(err.contains("read back after the reset"), "{err}");
        let image = GOOD.replacen(
            "908cf6dda4e9cf228bc425a3da0677c9",
            "908cf6dda4e9cf228bc425a3da0677c8",
            1,
        );
        let err = check_md5s(&image).unwrap_err();
        assert!(err.contains("on the first boot"), "{err}");
        let missing = GOOD.replace("PASS: boot 1: written.bin is there", "FAIL");
        assert!(check_md5s(&missing).unwrap_err().contains("no MD5"));
    }
}
