//! Guest image placement: Linux arm64 Image headers (Documentation/arch/arm64/booting.rst)
//! and raw binaries.

/// Where an image goes inside guest RAM, as offsets from the RAM base.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Placement {
    /// Offset of the first byte of the image (and of the entry point).
    pub load_offset: u64,
    /// Bytes the image occupies once running (Image header `image_size`, incl. bss), at
    /// least the file size.
    pub footprint_bytes: u64,
    /// Whether the module carried an arm64 Image header.
    pub is_linux_image: bool,
}

/// Why an image cannot be placed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LoadError {
    /// The module is empty.
    Empty,
    /// The image (with its bss) and the device-tree slot do not fit in guest RAM.
    TooBig { need_bytes: u64, have_bytes: u64 },
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::Empty => f.write_str("the module is empty"),
            LoadError::TooBig {
                need_bytes,
                have_bytes,
            } => write!(
                f,
                "it needs {} KiB of guest RAM (with its bss and the device-tree slot) and the VM \
                 has {} KiB; give the VM at least {} MiB",
                need_bytes.div_ceil(1024),
                have_bytes / 1024,
                need_bytes.div_ceil(2 << 20) * 2
            ),
        }
    }
}

/// "ARM\x64": the Image header magic (shared with the guests through `elvisor_abi`).
const ARM64_MAGIC: u32 = elvisor_abi::image::MAGIC;

fn le64(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Decides where `image` goes in a RAM of `ram_bytes` whose top `reserved_top_bytes` hold
/// the device tree (and initrd). An arm64 Image goes at its `text_offset` (Linux 5.x+ and our
/// guests: 0 or 0x80000) from the 2 MiB-aligned RAM base; anything else is a raw binary
/// loaded and entered at the RAM base.
pub fn place(
    image: &[u8],
    ram_bytes: u64,
    reserved_top_bytes: u64,
) -> Result<Placement, LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    let magic = image
        .get(0x38..0x3c)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes);
    let file = image.len() as u64;
    let (load_offset, footprint, linux) = if magic == Some(ARM64_MAGIC) {
        let text_offset = le64(image, 8).unwrap_or(0);
        let image_size = le64(image, 16).unwrap_or(0);
        // Pre-3.17 kernels have image_size 0 and an implied text_offset of 0x80000.
        let (off, size) = if image_size == 0 {
            (elvisor_abi::image::TEXT_OFFSET, file)
        } else {
            (text_offset, image_size.max(file))
        };
        (off, size, true)
    } else {
        (0, file, false)
    };
    let need = load_offset
        .saturating_add(footprint)
        .saturating_add(reserved_top_bytes);
    if need > ram_bytes {
        return Err(LoadError::TooBig {
            need_bytes: need,
            have_bytes: ram_bytes,
        });
    }
    Ok(Placement {
        load_offset,
        footprint_bytes: footprint,
        is_linux_image: linux,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64) -> alloc::vec::Vec<u8> {
        let mut h = alloc::vec![0u8; 0x40];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[0x38..0x3c].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn linux_image_at_text_offset() {
        let p = place(&header(0x8_0000, 0x10_0000), 64 << 20, 2 << 20).unwrap();
        assert_eq!(
            p,
            Placement {
                load_offset: 0x8_0000,
                footprint_bytes: 0x10_0000,
                is_linux_image: true
            }
        );
        // Debian 6.1: text_offset 0.
        let p = place(&header(0, 0x230_0000), 256 << 20, 2 << 20).unwrap();
        assert_eq!(p.load_offset, 0);
    }

    #[test]
    fn raw_and_errors() {
        let p = place(&[1, 2, 3, 4], 64 << 20, 2 << 20).unwrap();
        assert_eq!((p.load_offset, p.is_linux_image), (0, false));
        assert_eq!(place(&[], 64 << 20, 0), Err(LoadError::Empty));
        assert!(matches!(
            place(&header(0x8_0000, 63 << 20), 64 << 20, 2 << 20),
            Err(LoadError::TooBig { .. })
        ));
        // What a user reads: plain words and the size that would fit, no debug formatting.
        let msg = alloc::format!(
            "{}",
            LoadError::TooBig {
                need_bytes: 2_097_248,
                have_bytes: 2_097_152
            }
        );
        assert!(msg.contains("give the VM at least 4 MiB"), "{msg}");
        assert!(!msg.contains('{'), "{msg}");
        // A hostile header cannot overflow the arithmetic.
        assert!(place(&header(u64::MAX, u64::MAX), 64 << 20, 2 << 20).is_err());
    }
}
