//! An empty virtio-mmio slot: a transport with no device behind it, as QEMU virt presents
//! every slot of its virtio-mmio window that has nothing plugged in.
//!
//! MagicValue, Version (2) and VendorID answer as in [`super::mmio`]; DeviceID reads 0,
//! which §4.2.2.2 tells a driver to ignore without reporting an error ("a placeholder");
//! every other register reads as zero and every write is ignored. Unlike a real transport,
//! an empty slot takes accesses of any width at any offset (QEMU's does too): a probe of the
//! window must never fault.

use super::mmio::reg;
use super::{MAGIC, SLOT_SIZE, VENDOR_ID, VERSION};
use crate::vdev::{AccessWidth, MmioDevice, MmioError, VcpuId};

/// A virtio-mmio slot with no device.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptySlot;

impl EmptySlot {
    /// The 32-bit register at the word-aligned `offset`.
    fn word(offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::VENDOR_ID => VENDOR_ID,
            _ => 0,
        }
    }
}

impl MmioDevice for EmptySlot {
    fn name(&self) -> &'static str {
        "virtio-mmio (empty)"
    }

    fn size_bytes(&self) -> u64 {
        SLOT_SIZE
    }

    fn read(&mut self, _vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        // The registers as little-endian bytes: byte k of the window is byte k % 4 of the
        // word at k & !3, so a narrow or unaligned read sees the same bytes a word read does.
        let mut v = 0u64;
        for k in (0..width.bytes()).rev() {
            let at = offset.wrapping_add(k);
            let byte = if at < SLOT_SIZE {
                (Self::word(at & !3) >> (8 * (at & 3))) & 0xff
            } else {
                0
            };
            v = (v << 8) | u64::from(byte as u8);
        }
        Ok(v)
    }

    fn write(
        &mut self,
        _vcpu: VcpuId,
        _offset: u64,
        _width: AccessWidth,
        _value: u64,
    ) -> Result<(), MmioError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V0: VcpuId = VcpuId(0);

    #[test]
    fn answers_like_an_empty_qemu_transport() {
        let mut s = EmptySlot;
        let w = |s: &mut EmptySlot, o| s.read(V0, o, AccessWidth::Word).unwrap() as u32;
        assert_eq!(w(&mut s, 0x000), 0x7472_6976);
        assert_eq!(w(&mut s, 0x004), 2);
        assert_eq!(w(&mut s, 0x008), 0, "device ID 0: no device");
        assert_eq!(w(&mut s, 0x00c), VENDOR_ID);
        for o in (0x10..0x200).step_by(4) {
            assert_eq!(w(&mut s, o), 0, "offset {o:#x}");
        }
        // Writes change nothing, not even a status or a queue notify.
        for o in (0..0x200).step_by(4) {
            s.write(V0, o, AccessWidth::Word, 0xffff_ffff).unwrap();
        }
        assert_eq!(w(&mut s, 0x000), MAGIC);
        assert_eq!(w(&mut s, 0x070), 0);
        // Narrow, wide and unaligned reads see the same bytes.
        assert_eq!(s.read(V0, 0, AccessWidth::Byte).unwrap(), 0x76);
        assert_eq!(s.read(V0, 1, AccessWidth::Half).unwrap(), 0x7269);
        assert_eq!(s.read(V0, 0, AccessWidth::Double).unwrap(), 0x2_7472_6976);
        assert_eq!(
            s.read(V0, 0x1fe, AccessWidth::Word).unwrap(),
            0,
            "past the end reads 0"
        );
    }
}
