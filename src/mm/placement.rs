//! Where the loader put the hypervisor image, judged against the host's memory map.
//!
//! The image relocates itself (arch/aarch64/boot.rs), so any 4 KiB-aligned address works as
//! long as the whole image (file, bss, stacks and heap: the header's `image_size`) lies in RAM
//! that nothing else claims. A loader that breaks that (a DTB or a firmware reservation inside
//! the image's span, an address outside RAM, a misaligned address) gets one line saying so,
//! and the hypervisor stops instead of running over memory that is not its own.

use alloc::format;
use alloc::string::String;

use super::PhysRange;

/// Why the image cannot run where it is.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PlacementError {
    /// Loaded at an address that is not 4 KiB aligned (it was moved to `ran_at` only to say so).
    Misaligned { loaded_at: u64, ran_at: u64 },
    /// Part of the image's span is not RAM listed by the device tree.
    OutsideRam { image: PhysRange },
    /// The image's span overlaps something else in memory.
    Overlaps {
        image: PhysRange,
        other: PhysRange,
        what: &'static str,
    },
}

impl core::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let advice = "load it at a 2 MiB-aligned RAM address + text_offset (0x80000), with \
                      image_size bytes free (Linux arm64 Image header)";
        match self {
            PlacementError::Misaligned { loaded_at, ran_at } => write!(
                f,
                "the image was loaded at {loaded_at:#x}, which is not 4 KiB aligned (moved to \
                 {ran_at:#x} only to say so); {advice}"
            ),
            PlacementError::OutsideRam { image } => write!(
                f,
                "the image at {:#x}..{:#x} is not inside the RAM the device tree lists; {advice}",
                image.base.0,
                image.end().0
            ),
            PlacementError::Overlaps { image, other, what } => write!(
                f,
                "the image at {:#x}..{:#x} overlaps {what} at {:#x}..{:#x}; {advice}",
                image.base.0,
                image.end().0,
                other.base.0,
                other.end().0
            ),
        }
    }
}

/// Checks the image's span against RAM and everything else that occupies memory (`others`:
/// the host DTB, /memreserve/ entries such as a spin table, /reserved-memory, VM modules).
pub fn check(
    image: PhysRange,
    ram: &[PhysRange],
    others: &[(PhysRange, &'static str)],
) -> Result<(), PlacementError> {
    let inside = ram
        .iter()
        .any(|r| r.base <= image.base && image.end() <= r.end());
    if !inside {
        return Err(PlacementError::OutsideRam { image });
    }
    if let Some((other, what)) = others
        .iter()
        .find(|(r, _)| r.size_bytes > 0 && *r != image && r.overlaps(&image))
    {
        return Err(PlacementError::Overlaps {
            image,
            other: *other,
            what,
        });
    }
    Ok(())
}

/// The error line for a misaligned load, kept here so its wording is tested with the others.
pub fn misaligned(loaded_at: u64, ran_at: u64) -> String {
    format!("{}", PlacementError::Misaligned { loaded_at, ran_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::PhysAddr;

    const RAM: [PhysRange; 1] = [PhysRange::new(PhysAddr(0), 0x3c00_0000)];

    #[test]
    fn pi4_load_address_is_fine() {
        let image = PhysRange::new(PhysAddr(0x8_0000), 0x90_0000);
        let spin = PhysRange::new(PhysAddr(0), 0x1000);
        let dtb = PhysRange::new(PhysAddr(0x0800_0000), 0x1_0000);
        assert_eq!(
            check(
                image,
                &RAM,
                &[
                    (spin, "reserved memory"),
                    (dtb, "the DTB"),
                    (image, "image")
                ]
            ),
            Ok(())
        );
    }

    #[test]
    fn outside_ram_and_overlaps_are_reported() {
        let image = PhysRange::new(PhysAddr(0x3bf0_0000), 0x20_0000);
        let e = check(image, &RAM, &[]).unwrap_err();
        assert!(e.to_string().contains("not inside the RAM"), "{e}");

        let image = PhysRange::new(PhysAddr(0x8_0000), 0x90_0000);
        let dtb = PhysRange::new(PhysAddr(0x40_0000), 0x1_0000);
        let e = check(image, &RAM, &[(dtb, "the host device tree")]).unwrap_err();
        assert_eq!(
            e,
            PlacementError::Overlaps {
                image,
                other: dtb,
                what: "the host device tree"
            }
        );
        assert!(
            e.to_string().starts_with(
                "the image at 0x80000..0x980000 overlaps the host device tree at 0x400000..0x410000"
            ),
            "{e}"
        );
    }

    #[test]
    fn misaligned_names_both_addresses() {
        let m = misaligned(0x4008_0100, 0x4008_1000);
        assert!(m.contains("0x40080100") && m.contains("0x40081000"), "{m}");
    }
}
