//! Checked access to a VM's RAM for virtio devices.
//!
//! A virtio device reads and writes guest memory at addresses the driver chooses (rings,
//! descriptor tables, buffers), so every access is validated against the VM's one RAM range
//! before a byte moves. [`GuestMemory`] has two kinds of methods: four small required ones
//! that an implementation provides (the range, and raw copies at an offset the caller has
//! already checked), and the provided, checked methods that the virtio code uses exclusively.
//! The host tests and the fuzz target use [`VecMemory`]; the kernel implements the trait over
//! the VM's RAM region.

use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;

use crate::mm::GuestPhysAddr;

/// A guest-physical range that is not entirely inside the VM's RAM (or wraps the address
/// space).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OutsideRam {
    pub gpa: u64,
    pub len: u64,
}

/// A VM's RAM as seen by a device model.
pub trait GuestMemory {
    /// First guest-physical address of RAM.
    fn ram_base(&self) -> GuestPhysAddr;
    /// Size of RAM in bytes.
    fn ram_size_bytes(&self) -> u64;
    /// Copies `buf.len()` bytes from RAM offset `offset` (not a guest-physical address).
    /// Called only with `offset + buf.len() <= ram_size_bytes()`; an implementation must
    /// still never touch memory outside the VM's RAM, whatever it is given.
    fn read_raw(&self, offset: u64, buf: &mut [u8]);
    /// Copies `data` to RAM offset `offset`, with the same contract as [`Self::read_raw`].
    fn write_raw(&mut self, offset: u64, data: &[u8]);

    /// This memory as [`Any`], for an implementation whose [`Self::copy_from_raw`] copies
    /// directly between two memories of its own kind. `None` (the default): copies from it go
    /// through a bounce buffer.
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }

    /// Copies `len` bytes from RAM offset `src_offset` of `src` to RAM offset `offset` of this
    /// memory, with [`Self::read_raw`]'s contract for both ranges. The default goes through a
    /// small bounce buffer on the stack; an implementation that reaches both RAMs (the
    /// hypervisor's, two VMs' RAM) copies in one step, so a frame crossing a virtual switch is
    /// copied once, from the sender's buffers into the receiver's.
    fn copy_from_raw(&mut self, offset: u64, src: &dyn GuestMemory, src_offset: u64, len: u64) {
        bounce_copy(self, offset, src, src_offset, len);
    }

    /// Checked copy of `len` bytes at `src_gpa` of `src` to `gpa` (see [`Self::copy_from_raw`]).
    fn copy_from(
        &mut self,
        gpa: u64,
        src: &dyn GuestMemory,
        src_gpa: u64,
        len: u64,
    ) -> Result<(), OutsideRam> {
        let to = self.check(gpa, len)?;
        let from = src.check(src_gpa, len)?;
        self.copy_from_raw(to, src, from, len);
        Ok(())
    }

    /// The RAM offset of `[gpa, gpa + len)`, or an error if any byte of it is outside RAM.
    /// A zero-length range is inside RAM when `gpa` is at most its end.
    fn check(&self, gpa: u64, len: u64) -> Result<u64, OutsideRam> {
        let bad = OutsideRam { gpa, len };
        let offset = gpa.checked_sub(self.ram_base().0).ok_or(bad)?;
        let end = offset.checked_add(len).ok_or(bad)?;
        if end > self.ram_size_bytes() {
            return Err(bad);
        }
        Ok(offset)
    }

    /// Checked read of `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideRam> {
        let offset = self.check(gpa, buf.len() as u64)?;
        self.read_raw(offset, buf);
        Ok(())
    }

    /// Checked write of `data` at `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutsideRam> {
        let offset = self.check(gpa, data.len() as u64)?;
        self.write_raw(offset, data);
        Ok(())
    }

    /// Little-endian u16 at `gpa` (virtio 1.2 §1.4: every ring field is little-endian).
    fn read_u16(&self, gpa: u64) -> Result<u16, OutsideRam> {
        let mut b = [0; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Little-endian u32 at `gpa`.
    fn read_u32(&self, gpa: u64) -> Result<u32, OutsideRam> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Little-endian u64 at `gpa`.
    fn read_u64(&self, gpa: u64) -> Result<u64, OutsideRam> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_u16(&mut self, gpa: u64, v: u16) -> Result<(), OutsideRam> {
        self.write(gpa, &v.to_le_bytes())
    }

    fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), OutsideRam> {
        self.write(gpa, &v.to_le_bytes())
    }
}

/// [`GuestMemory::copy_from_raw`] through a 256-byte buffer on the stack: the default, and the
/// fallback of implementations that copy directly only between memories of their own kind.
pub fn bounce_copy<M: GuestMemory + ?Sized>(
    dst: &mut M,
    offset: u64,
    src: &dyn GuestMemory,
    src_offset: u64,
    len: u64,
) {
    let mut bounce = [0u8; 256];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(bounce.len() as u64);
        let buf = &mut bounce[..n as usize];
        src.read_raw(src_offset + done, buf);
        dst.write_raw(offset + done, buf);
        done += n;
    }
}

/// Guest RAM in a `Vec`: for host tests and fuzzing.
#[derive(Clone, Debug)]
pub struct VecMemory {
    base: GuestPhysAddr,
    bytes: Vec<u8>,
}

impl VecMemory {
    /// `size_bytes` of zeroed RAM at `base`.
    pub fn new(base: GuestPhysAddr, size_bytes: usize) -> Self {
        Self {
            base,
            bytes: vec![0; size_bytes],
        }
    }

    /// The whole of RAM.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole of RAM, writable (tests build rings and buffers through it).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl GuestMemory for VecMemory {
    fn ram_base(&self) -> GuestPhysAddr {
        self.base
    }

    fn ram_size_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_raw(&self, offset: u64, buf: &mut [u8]) {
        // Out-of-range requests (a broken contract) read zeroes rather than panic.
        let src = usize::try_from(offset).ok().and_then(|o| {
            let end = o.checked_add(buf.len())?;
            self.bytes.get(o..end)
        });
        match src {
            Some(src) => buf.copy_from_slice(src),
            None => buf.fill(0),
        }
    }

    fn write_raw(&mut self, offset: u64, data: &[u8]) {
        let dst = usize::try_from(offset).ok().and_then(|o| {
            let end = o.checked_add(data.len())?;
            self.bytes.get_mut(o..end)
        });
        if let Some(dst) = dst {
            dst.copy_from_slice(data);
        }
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }

    /// From another `VecMemory`: one slice copy, as the hypervisor's RAM-to-RAM copy.
    fn copy_from_raw(&mut self, offset: u64, src: &dyn GuestMemory, src_offset: u64, len: u64) {
        let range = |o: u64| -> Option<core::ops::Range<usize>> {
            let o = usize::try_from(o).ok()?;
            Some(o..o.checked_add(usize::try_from(len).ok()?)?)
        };
        let from = src.as_any().and_then(|a| a.downcast_ref::<VecMemory>());
        match (from, range(src_offset), range(offset)) {
            (Some(from), Some(s), Some(d)) => {
                if let (Some(s), Some(d)) = (from.bytes.get(s), self.bytes.get_mut(d)) {
                    d.copy_from_slice(s);
                }
            }
            _ => bounce_copy(self, offset, src, src_offset, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_every_edge() {
        let mut m = VecMemory::new(GuestPhysAddr(0x4000_0000), 0x1000);
        assert_eq!(m.check(0x4000_0000, 0x1000), Ok(0));
        assert_eq!(m.check(0x4000_0fff, 1), Ok(0xfff));
        assert_eq!(m.check(0x4000_1000, 0), Ok(0x1000));
        assert!(m.check(0x4000_1000, 1).is_err());
        assert!(m.check(0x3fff_ffff, 1).is_err());
        assert!(m.check(0x4000_0fff, 2).is_err());
        assert!(m.check(u64::MAX, 2).is_err());
        assert!(m.check(0x4000_0000, u64::MAX).is_err());
        m.write_u32(0x4000_0ffc, 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(0x4000_0ffc), Ok(0xdead_beef));
        assert_eq!(m.read_u16(0x4000_0ffe), Ok(0xdead));
        assert!(m.write_u32(0x4000_0ffe, 1).is_err());
        assert_eq!(
            m.read_u16(0x4000_0ffe),
            Ok(0xdead),
            "a refused write writes nothing"
        );
    }
}
