//! Owned physical memory: guest RAM taken from the frame allocator, and the read-only
//! module images (guest kernels, ramdisks) the loader left in reserved host memory.
//!
//! The EL2 map is an identity map, so a physical range is directly addressable; these types
//! are the only way kernel code gets a slice of physical memory, and they only hand out
//! memory the kernel owns.

use crate::mm::frame::FrameAllocator;
use crate::mm::lazy::EnsureBacked;
use crate::mm::pieces::HostPieces;
use crate::mm::rewrite::{RewriteError, Segment, clip, rewrite};
use crate::mm::{BLOCK_2M, PhysAddr, PhysRange};

use super::cache;

/// RAM obtained from the frame allocator (or reserved for one VM at a fixed host address),
/// exclusively owned: one or more host pieces that the guest sees as one range.
pub struct RamRegion {
    map: HostPieces,
}

impl RamRegion {
    /// Allocates `size_bytes` (a multiple of 2 MiB) as naturally aligned pieces of at least
    /// 2 MiB. On failure, the largest size that would have fitted.
    pub fn alloc(frames: &mut FrameAllocator, size_bytes: u64) -> Result<Self, u64> {
        frames
            .alloc_pieces(size_bytes, BLOCK_2M)
            .map(|pieces| Self {
                map: HostPieces::new(pieces),
            })
    }

    /// The RAM at exactly `range`, which the platform reserved for this VM (so the frame
    /// allocator never hands it out): `None` unless it is 2 MiB aligned, a multiple of 2 MiB,
    /// inside host RAM and inside a reserved range, and not taken before.
    pub fn fixed(range: PhysRange, ram: &[PhysRange], reserved: &[PhysRange]) -> Option<Self> {
        let aligned = range.base.is_aligned(BLOCK_2M) && range.size_bytes.is_multiple_of(BLOCK_2M);
        let inside = |set: &[PhysRange]| {
            set.iter()
                .any(|r| r.contains(range.base) && range.end().0 <= r.end().0)
        };
        if !aligned || range.size_bytes == 0 || !inside(ram) || !inside(reserved) {
            return None;
        }
        let mut taken = TAKEN_FIXED.lock();
        if taken.iter().any(|t| t.overlaps(&range)) {
            return None;
        }
        taken.push(range);
        Some(Self {
            map: HostPieces::new(alloc::vec![range]),
        })
    }

    /// Where the RAM is on the host, in guest order.
    pub fn pieces(&self) -> &HostPieces {
        &self.map
    }

    /// Runs `f(host_address, len)` over each host-contiguous run of `[offset, offset + len)`
    /// clipped to the region.
    fn runs(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64)) {
        let size = self.map.size_bytes();
        let start = offset.min(size);
        let end = offset.saturating_add(len).min(size);
        self.map
            .for_each_run(start, end - start, |host, _, n| f(host, n));
    }

    /// Zeroes `[offset, offset + len)` of the region (clipped to it), with DC ZVA where the
    /// CPU allows it.
    pub fn zero_range(&mut self, offset: u64, len: u64) {
        self.runs(offset, len, |host, n| {
            // SAFETY: `[host, host + n)` is inside the region's pieces, which the frame
            // allocator (or the platform's reservation) gave to `self` alone; it is RAM mapped
            // read/write (Normal memory) in the EL2 map, and `&mut self` means no reference
            // into it is live. Device models reach guest RAM only through raw copies into
            // blocks that are already backed (mm::lazy), never into a block being zeroed.
            unsafe { cache::zero(host, n) };
        });
    }

    /// Cleans and invalidates `[offset, offset + len)` of the region (clipped to it) to the
    /// Point of Coherency.
    pub fn clean_range(&self, offset: u64, len: u64) {
        self.runs(offset, len, cache::clean_invalidate_to_poc);
    }

    /// Copies `data` to `offset`. Returns false (copying nothing) if it does not fit.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        self.map
            .for_each_run(offset, data.len() as u64, |host, at, n| {
                let src = &data[at as usize..(at + n) as usize];
                // SAFETY: `[host, host + n)` is inside the region (for_each_run checked the whole
                // range), RAM mapped read/write and owned by `self` (`&mut self`: no other
                // reference); `src` is hypervisor memory, so the two do not overlap.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), host as *mut u8, src.len()) };
            })
    }

    /// Makes `[offset, offset + len)` of the region all zeroes except `segments` (see
    /// [`rewrite`]; their offsets are relative to `offset`), storing only words that change.
    /// `offset` and `len` must be multiples of 8 inside the region.
    pub fn rewrite_range(
        &mut self,
        offset: u64,
        len: u64,
        segments: &[Segment<'_>],
    ) -> Result<usize, RewriteError> {
        if !offset.is_multiple_of(8) || !len.is_multiple_of(8) {
            return Err(RewriteError::BadSegment);
        }
        let mut result = Ok(0);
        let inside = self.map.for_each_run(offset, len, |host, at, n| {
            let part = clip(segments, at as usize, (at + n) as usize);
            // SAFETY: as in `write`, for the run `[host, host + n)`; pieces are page-aligned
            // and `offset` a multiple of 8, so this is a slice of aligned u64s, and any bit
            // pattern is a valid u64.
            let words =
                unsafe { core::slice::from_raw_parts_mut(host as *mut u64, (n / 8) as usize) };
            result = match (result, rewrite(words, &part)) {
                (Ok(a), Ok(b)) => Ok(a + b),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        });
        if inside {
            result
        } else {
            Err(RewriteError::TooBig)
        }
    }

    /// Checked access to this region for device models (virtio), which see it as guest RAM
    /// at `guest_base`. Frames taken by a `RamRegion` are never given back (a VM lives for
    /// the hypervisor's lifetime), so the accessor stays valid.
    /// Blocks not backed yet (mm::lazy) are backed through `backing` before a byte of them
    /// is read or written.
    pub fn guest_access(
        &self,
        guest_base: crate::mm::GuestPhysAddr,
        backing: &'static dyn EnsureBacked,
    ) -> GuestRamAccess {
        GuestRamAccess {
            map: self.map.clone(),
            guest_base,
            backing,
        }
    }
}

/// Fixed-address guest RAM already handed to a VM (each range may be taken once).
static TAKEN_FIXED: super::sync::Mutex<alloc::vec::Vec<PhysRange>> =
    super::sync::Mutex::new(alloc::vec::Vec::new());

/// A VM's RAM as a [`crate::vdev::virtio::GuestMemory`]: raw copies at offsets the
/// trait's checked methods computed, checked here once more, into blocks made backed first.
pub struct GuestRamAccess {
    map: HostPieces,
    guest_base: crate::mm::GuestPhysAddr,
    backing: &'static dyn EnsureBacked,
}

impl crate::vdev::virtio::GuestMemory for GuestRamAccess {
    fn ram_base(&self) -> crate::mm::GuestPhysAddr {
        self.guest_base
    }

    fn ram_size_bytes(&self) -> u64 {
        self.map.size_bytes()
    }

    fn read_raw(&self, offset: u64, buf: &mut [u8]) {
        // Backed first (zeroed for this boot if the guest never wrote it).
        let ok = self.backing.ensure(offset, buf.len() as u64)
            && self
                .map
                .for_each_run(offset, buf.len() as u64, |host, at, n| {
                    let dst = &mut buf[at as usize..(at + n) as usize];
                    // SAFETY: `[host, host + n)` is inside the VM's RAM (for_each_run checked the
                    // range), identity-mapped read/write and owned by the VM for the hypervisor's
                    // lifetime; `dst` is hypervisor memory, so the two do not overlap. The guest
                    // may write the same bytes meanwhile (it is the other side of a shared ring,
                    // as with DMA): the copy goes through raw pointers and no reference to guest
                    // RAM is ever formed.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            host as *const u8,
                            dst.as_mut_ptr(),
                            dst.len(),
                        )
                    };
                });
        if !ok {
            buf.fill(0);
        }
    }

    fn write_raw(&mut self, offset: u64, data: &[u8]) {
        if !self.backing.ensure(offset, data.len() as u64) {
            return;
        }
        self.map
            .for_each_run(offset, data.len() as u64, |host, at, n| {
                let src = &data[at as usize..(at + n) as usize];
                // SAFETY: as in `read_raw`, with the roles of the two buffers swapped.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), host as *mut u8, src.len()) };
            });
    }

    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }

    /// From another VM's (or this VM's) RAM: one copy, host run to host run, with no
    /// hypervisor buffer in between (a frame crossing a virtual switch). Anything else goes
    /// through the trait's bounce buffer.
    fn copy_from_raw(
        &mut self,
        offset: u64,
        src: &dyn crate::vdev::virtio::GuestMemory,
        src_offset: u64,
        len: u64,
    ) {
        let Some(from) = src
            .as_any()
            .and_then(|a| a.downcast_ref::<GuestRamAccess>())
        else {
            crate::vdev::virtio::mem::bounce_copy(self, offset, src, src_offset, len);
            return;
        };
        // Both sides backed first (a source block the guest never wrote reads as zeroes).
        if !from.backing.ensure(src_offset, len) || !self.backing.ensure(offset, len) {
            return;
        }
        let dst_map = &self.map;
        from.map.for_each_run(src_offset, len, |src_host, at, n| {
            dst_map.for_each_run(offset + at, n, |dst_host, at2, m| {
                // SAFETY: both runs are inside VMs' RAM (for_each_run checked each range
                // against its map), identity-mapped read/write and owned by those VMs for
                // the hypervisor's lifetime. The guests may write these bytes meanwhile (they
                // are the other sides of shared rings, as with DMA): the copy goes through raw
                // pointers and no reference to guest RAM is formed. `copy`, not
                // `copy_nonoverlapping`: two NICs of one VM may share a buffer.
                unsafe {
                    core::ptr::copy(
                        (src_host + at2) as *const u8,
                        dst_host as *mut u8,
                        m as usize,
                    )
                };
            });
        });
    }
}

/// Disk modules already handed out as writable regions (each may be taken once).
static TAKEN_DISKS: super::sync::Mutex<alloc::vec::Vec<PhysRange>> =
    super::sync::Mutex::new(alloc::vec::Vec::new());

/// A disk image the loader left in reserved host memory, handed to exactly one virtio-blk
/// device as its writable backing store.
///
/// Returns `None` unless `range` is nonempty, inside host RAM and inside a reserved range,
/// and overlaps no disk taken before (so the slice is the only reference to those bytes).
pub fn take_disk(
    range: PhysRange,
    ram: &[PhysRange],
    reserved: &[PhysRange],
) -> Option<&'static mut [u8]> {
    Module::new(range, ram, reserved)?;
    let mut taken = TAKEN_DISKS.lock();
    if taken.iter().any(|t| t.overlaps(&range)) {
        return None;
    }
    taken.push(range);
    // SAFETY: the range is RAM (identity-mapped read/write) and reserved, so the frame
    // allocator never hands it out; the platform refuses a disk that overlaps any other
    // module (kernel, ramdisk or disk, of any VM), and `TAKEN_DISKS` makes sure it is taken
    // only once, so this is the only reference to these bytes for the hypervisor's lifetime.
    Some(unsafe {
        core::slice::from_raw_parts_mut(range.base.0 as *mut u8, range.size_bytes as usize)
    })
}

/// A module image in reserved host memory (read-only to the kernel).
#[derive(Clone, Copy)]
pub struct Module {
    range: PhysRange,
}

impl Module {
    /// Accepts `range` only if it lies inside host RAM and inside one of the reserved ranges
    /// (the platform reserves every module so the frame allocator never hands it out).
    pub fn new(range: PhysRange, ram: &[PhysRange], reserved: &[PhysRange]) -> Option<Self> {
        let inside = |set: &[PhysRange]| {
            set.iter()
                .any(|r| r.contains(range.base) && range.end().0 <= r.end().0)
        };
        (range.size_bytes > 0 && inside(ram) && inside(reserved)).then_some(Self { range })
    }

    pub fn bytes(&self) -> &'static [u8] {
        // SAFETY: `new` checked the range is RAM (identity-mapped, readable) and reserved:
        // the frame allocator never hands it out, so nothing writes it while we read.
        unsafe {
            core::slice::from_raw_parts(
                self.range.base.0 as *const u8,
                self.range.size_bytes as usize,
            )
        }
    }
}

impl Module {
    /// The image as whole native-endian words and the bytes after the last one, for
    /// [`RamRegion::rewrite`]; `None` if the module does not start on an 8-byte boundary.
    pub fn words(&self) -> Option<Segment<'static>> {
        let bytes = self.bytes();
        if !self.range.base.0.is_multiple_of(8) {
            return None;
        }
        let n = bytes.len() / 8;
        // SAFETY: the first `n * 8` bytes of `bytes` (see `bytes`: reserved RAM, never
        // written) start 8-byte aligned, and any bit pattern is a valid u64.
        let words = unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<u64>(), n) };
        Some(Segment {
            offset_bytes: 0,
            words,
            tail: &bytes[n * 8..],
        })
    }
}

/// The flattened device tree the firmware passed in x0, as a slice. Checks the FDT magic
/// and caps the size, so a bad x0 gives `None` instead of a wild slice.
pub fn boot_dtb(pa: u64) -> Option<&'static [u8]> {
    const MAX_DTB_BYTES: u32 = 2 << 20;
    if pa == 0 || pa & 7 != 0 {
        return None;
    }
    // SAFETY: the boot protocol puts a DTB at x0 in RAM, 8-byte aligned; the header's first
    // two words are read with the MMU off (all memory readable) before anything else
    // depends on them.
    let magic = unsafe { (pa as *const u32).read_volatile() };
    // SAFETY: as above: the header's second word.
    let size = unsafe { ((pa + 4) as *const u32).read_volatile() };
    let (magic, size) = (u32::from_be(magic), u32::from_be(size));
    if magic != 0xd00d_feed || !(40..=MAX_DTB_BYTES).contains(&size) {
        return None;
    }
    // SAFETY: as above; the blob's totalsize bytes belong to the DTB, which the platform
    // reserves so nothing overwrites it.
    Some(unsafe { core::slice::from_raw_parts(pa as *const u8, size as usize) })
}

/// Hands the image's heap area to the global allocator.
pub fn init_heap(heap: &super::heap::KernelHeap) -> PhysRange {
    unsafe extern "C" {
        static __heap_start: u8;
        static __heap_end: u8;
    }
    let start = core::ptr::addr_of!(__heap_start) as usize;
    let end = core::ptr::addr_of!(__heap_end) as usize;
    // SAFETY: [__heap_start, __heap_end) is a NOLOAD section of the image reserved for the
    // heap by linker.ld and used by nothing else; this runs once, on the boot CPU.
    unsafe { heap.lock().init(start, end - start) };
    PhysRange::new(PhysAddr(start as u64), (end - start) as u64)
}

/// The image's sections, for the EL2 map and the reserved list.
pub struct ImageLayout {
    pub image: PhysRange,
    pub text: PhysRange,
    pub rodata: PhysRange,
    /// .data, .bss, stacks and heap.
    pub rw: PhysRange,
}

pub fn image_layout() -> ImageLayout {
    unsafe extern "C" {
        static __image_start: u8;
        static __text_end: u8;
        static __rodata_end: u8;
        static __image_end: u8;
    }
    let s = core::ptr::addr_of!(__image_start) as u64;
    let t = core::ptr::addr_of!(__text_end) as u64;
    let r = core::ptr::addr_of!(__rodata_end) as u64;
    let e = core::ptr::addr_of!(__image_end) as u64;
    ImageLayout {
        image: PhysRange::new(PhysAddr(s), e - s),
        text: PhysRange::new(PhysAddr(s), t - s),
        rodata: PhysRange::new(PhysAddr(t), r - t),
        rw: PhysRange::new(PhysAddr(r), e - r),
    }
}

/// Releases a spin-table secondary: writes `entry` to its `cpu-release-addr` (which must be
/// in host RAM, reserved by /memreserve/ as the spin-table binding requires), cleans it to
/// the point of coherency (the waiting core runs with its MMU and caches off) and sends an
/// event.
pub fn release_spin_table(release_addr: PhysAddr, entry: u64, ram: &[PhysRange]) -> bool {
    let inside = ram
        .iter()
        .any(|r| r.contains(release_addr) && release_addr.0 + 8 <= r.end().0);
    if !inside || !release_addr.is_aligned(8) {
        return false;
    }
    // SAFETY: an 8-byte aligned word inside host RAM (identity-mapped read/write), which the
    // firmware reserved for exactly this handshake.
    unsafe { (release_addr.0 as *mut u64).write_volatile(entry) };
    // The waiting core reads the word with its MMU off, i.e. as Device/Non-cacheable memory
    // that bypasses this core's cache: the store must reach the Point of Coherency first
    // (ARM ARM D7.5.9, data cache maintenance for observers that do not use the caches), and
    // the DSB in clean_invalidate_to_poc completes it before the SEV below wakes the core
    // (SEV is not a memory access and orders nothing by itself; the DSB SY does).
    cache::clean_invalidate_to_poc(release_addr.0, 8);
    // SAFETY: barrier and event only.
    unsafe { core::arch::asm!("dsb sy", "sev", options(nostack, preserves_flags)) };
    true
}
