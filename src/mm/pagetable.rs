//! Page tables the EL2 kernel builds: its own stage-1 map (EL2 or, under VHE, EL2&0) and one
//! stage-2 table per VM. Both come from the aarch64-paging crate; this file chooses the
//! attributes and where table pages come from.
//!
//! Table pages come from the crate's [`IdTranslation`]: the global allocator, whose heap the
//! EL2 map identity-maps, so a table's address is its physical address (what this file relied
//! on a hand-written twin of the crate's type for before). On the host the same code runs on
//! the host allocator, which is just as good for walking the result in unit tests.

use aarch64_paging::MapError;
use aarch64_paging::descriptor::{
    El1Attributes, El23Attributes, PhysicalAddress, Stage2Attributes,
};
use aarch64_paging::paging::{
    Constraints, El2, El2And0, MemoryRegion, RootTable, Stage2 as Stage2Regime, VaRange,
};

use aarch64_paging::idmap::IdTranslation;

use super::{GuestPhysAddr, PAGE_SIZE, PhysAddr};

/// Why a mapping could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageTableError {
    /// The range is outside the table's input address size.
    OutOfRange,
    /// The crate refused the mapping (overlap needing break-before-make, bad flags).
    Map(MapError),
}

impl core::fmt::Display for PageTableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PageTableError::OutOfRange => {
                f.write_str("the range is outside the table's address space")
            }
            PageTableError::Map(e) => write!(f, "the mapping was refused ({e})"),
        }
    }
}

impl From<MapError> for PageTableError {
    fn from(e: MapError) -> Self {
        PageTableError::Map(e)
    }
}

/// Root level for a 4 KiB-granule table covering `bits` of input address.
pub const fn root_level(bits: u32) -> usize {
    if bits > 39 {
        0
    } else if bits > 30 {
        1
    } else {
        2
    }
}

/// What a stage-2 mapping is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum S2Kind {
    /// Guest RAM: normal write-back memory, read/write/execute.
    Ram,
    /// A passed-through device frame (e.g. GICV): Device-nGnRE, read/write, never executable.
    Device,
    /// Memory shared between VMs (`kernel::shmem`): normal write-back memory like RAM, never
    /// executable, and read-only (S2AP = RO: a guest write is a stage-2 permission fault) unless
    /// `writable`.
    Shared { writable: bool },
}

/// A VM's stage-2 translation table (IPA -> PA).
pub struct Stage2Table {
    root: RootTable<Stage2Regime, IdTranslation<Stage2Attributes>>,
    ipa_bits: u32,
    /// HCR_EL2.FWB is set for the VM (FEAT_S2FWB): RAM is mapped "forced Write-Back".
    forced_write_back: bool,
}

/// Stage-2 MemAttr (descriptor bits [5:2]) with HCR_EL2.FWB = 1: 0b0110 makes the access
/// Normal Write-Back whatever the guest's stage 1 says, its MMU being off included (ARM ARM
/// D8.6, "Stage 2 memory type and Cacheability attributes when FEAT_S2FWB is enabled"). Device
/// encodings (MemAttr[2] = 0) are the same with and without FWB.
const S2_FWB_NORMAL_WB: usize = 0b0110 << 2;

impl Stage2Table {
    /// An empty table for a guest with `ipa_bits` of IPA space (32..=48).
    pub fn new(ipa_bits: u32) -> Self {
        let ipa_bits = ipa_bits.clamp(32, 48);
        Self {
            root: RootTable::new(IdTranslation::new(), root_level(ipa_bits), Stage2Regime),
            ipa_bits,
            forced_write_back: false,
        }
    }

    /// The same table for a VM that runs with HCR_EL2.FWB set: RAM mappings use the FWB
    /// encoding, so every guest access to RAM is cacheable and coherent with the hypervisor's
    /// own (cacheable) writes to it. Call before mapping anything.
    pub fn with_forced_write_back(mut self, on: bool) -> Self {
        self.forced_write_back = on;
        self
    }

    /// Whether RAM is mapped forced Write-Back (see [`Self::with_forced_write_back`]).
    pub fn forced_write_back(&self) -> bool {
        self.forced_write_back
    }

    pub fn ipa_bits(&self) -> u32 {
        self.ipa_bits
    }

    /// Starting level of the walk (for VTCR_EL2.SL0).
    pub fn root_level(&self) -> usize {
        root_level(self.ipa_bits)
    }

    /// Physical address of the root table (for VTTBR_EL2.BADDR).
    pub fn root_pa(&self) -> PhysAddr {
        PhysAddr(self.root.to_physical().0 as u64)
    }

    /// Maps `[ipa, ipa + size)` to `[pa, pa + size)`. Uses 1 GiB / 2 MiB blocks wherever both
    /// addresses are aligned (the crate picks the largest block that fits).
    pub fn map(
        &mut self,
        ipa: GuestPhysAddr,
        pa: PhysAddr,
        size_bytes: u64,
        kind: S2Kind,
    ) -> Result<(), PageTableError> {
        let end = ipa
            .0
            .checked_add(size_bytes)
            .ok_or(PageTableError::OutOfRange)?;
        if end > (1u64 << self.ipa_bits) {
            return Err(PageTableError::OutOfRange);
        }
        let normal = if self.forced_write_back {
            Stage2Attributes::from_bits_retain(S2_FWB_NORMAL_WB) | Stage2Attributes::SH_INNER
        } else {
            Stage2Attributes::MEMATTR_NORMAL_INNER_WB
                | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
                | Stage2Attributes::SH_INNER
        };
        let attrs = match kind {
            S2Kind::Ram => normal | Stage2Attributes::S2AP_ACCESS_RW,
            S2Kind::Device => {
                Stage2Attributes::MEMATTR_DEVICE_nGnRE
                    | Stage2Attributes::XN
                    | Stage2Attributes::S2AP_ACCESS_RW
            }
            S2Kind::Shared { writable: true } => {
                normal | Stage2Attributes::XN | Stage2Attributes::S2AP_ACCESS_RW
            }
            S2Kind::Shared { writable: false } => {
                normal | Stage2Attributes::XN | Stage2Attributes::S2AP_ACCESS_RO
            }
        } | Stage2Attributes::ACCESS_FLAG
            | Stage2Attributes::VALID;
        self.root.map_range(
            &MemoryRegion::new(ipa.0 as usize, end as usize),
            PhysicalAddress(pa.0 as usize),
            attrs,
            Constraints::empty(),
        )?;
        Ok(())
    }

    /// Makes `[ipa, ipa + size)` invalid. A range that covers whole blocks of a larger block
    /// mapping splits it first (allocating table pages); a range that is exactly a 2 MiB block
    /// already mapped as one is made invalid in place, and its level-2 table stays, so
    /// mapping it again later writes one descriptor and allocates nothing.
    ///
    /// No TLB maintenance: on a live table the caller invalidates the VMID's TLB entries.
    pub fn unmap(&mut self, ipa: GuestPhysAddr, size_bytes: u64) -> Result<(), PageTableError> {
        let end = ipa
            .0
            .checked_add(size_bytes)
            .ok_or(PageTableError::OutOfRange)?;
        if end > (1u64 << self.ipa_bits) {
            return Err(PageTableError::OutOfRange);
        }
        self.root.map_range(
            &MemoryRegion::new(ipa.0 as usize, end as usize),
            PhysicalAddress(0),
            Stage2Attributes::empty(),
            Constraints::empty(),
        )?;
        Ok(())
    }

    /// Translates an IPA through the table: `Some((pa, block_size))` when mapped.
    pub fn translate(&self, ipa: GuestPhysAddr) -> Option<(PhysAddr, u64)> {
        let mut out = None;
        let page = ipa.align_down(PAGE_SIZE).0 as usize;
        let _ = self.root.walk_range(
            &MemoryRegion::new(page, page + PAGE_SIZE as usize),
            &mut |mr, desc, level| {
                if desc.is_valid() && (level == 3 || !desc.is_table_or_page()) {
                    let off = ipa.0 - mr.start().0 as u64;
                    let size = 1u64 << (12 + 9 * (3 - level as u32));
                    let block_base = desc.output_address().0 as u64;
                    // `mr` is the clipped walk range; recover the offset inside the block.
                    let in_block = (mr.start().0 as u64 & (size - 1)) + off;
                    out = Some((PhysAddr(block_base + in_block), size));
                }
                Ok(())
            },
        );
        out
    }

    /// Whether the guest may write through the mapping of `ipa` (S2AP write bit), if mapped.
    pub fn writable(&self, ipa: GuestPhysAddr) -> Option<bool> {
        let mut out = None;
        let page = ipa.align_down(PAGE_SIZE).0 as usize;
        let _ = self.root.walk_range(
            &MemoryRegion::new(page, page + PAGE_SIZE as usize),
            &mut |_, desc, level| {
                if desc.is_valid() && (level == 3 || !desc.is_table_or_page()) {
                    let ap = desc.flags() & Stage2Attributes::S2AP_ACCESS_RW;
                    out = Some(ap.contains(Stage2Attributes::S2AP_ACCESS_WO));
                }
                Ok(())
            },
        );
        out
    }
}

/// What an EL2 stage-1 mapping holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum El2Kind {
    /// Kernel text: read-only, executable.
    Text,
    /// Read-only data: read-only, never executable.
    RoData,
    /// Data, bss, stacks, heap, free RAM: read/write, never executable.
    Data,
    /// MMIO: Device-nGnRE, read/write, never executable.
    Device,
}

/// MAIR_EL2 attribute indices used by [`El2Table`].
pub mod mair {
    /// Device-nGnRE.
    pub const DEVICE_INDEX: usize = 0;
    /// Normal, inner/outer write-back read/write-allocate.
    pub const NORMAL_INDEX: usize = 1;
    /// MAIR_EL2 value matching the indices above.
    pub const MAIR_EL2: u64 = 0x04 | (0xff << 8);
}

/// The EL2 kernel's own identity map. Under VHE (E2H=1) the regime is EL2&0, whose
/// descriptors have the EL1 layout (PXN/UXN, AP[1] = EL0 access); without VHE it is EL2,
/// with XN at bit 54 and AP[1] RES1.
pub enum El2Table {
    Nvhe(RootTable<El2, IdTranslation<El23Attributes>>),
    Vhe(RootTable<El2And0, IdTranslation<El1Attributes>>),
}

/// Input address size of the EL2 map (T0SZ = 64 - this).
pub const EL2_VA_BITS: u32 = 48;

impl El2Table {
    pub fn new(vhe: bool) -> Self {
        let level = root_level(EL2_VA_BITS);
        if vhe {
            El2Table::Vhe(RootTable::with_va_range(
                IdTranslation::new(),
                level,
                El2And0,
                VaRange::Lower,
            ))
        } else {
            El2Table::Nvhe(RootTable::new(IdTranslation::new(), level, El2))
        }
    }

    /// Identity-maps `[pa, pa + size)` (page-rounded outwards) with the attributes of `kind`.
    pub fn identity_map(
        &mut self,
        pa: PhysAddr,
        size_bytes: u64,
        kind: El2Kind,
    ) -> Result<(), PageTableError> {
        let end =
            pa.0.checked_add(size_bytes)
                .ok_or(PageTableError::OutOfRange)?;
        if end > (1u64 << EL2_VA_BITS) {
            return Err(PageTableError::OutOfRange);
        }
        let region = MemoryRegion::new(pa.0 as usize, end as usize);
        let start = PhysicalAddress(region.start().0);
        match self {
            El2Table::Nvhe(t) => {
                let mut a =
                    El23Attributes::VALID | El23Attributes::ACCESSED | El23Attributes::USER_RES1;
                a |= match kind {
                    El2Kind::Device => El23Attributes::ATTRIBUTE_INDEX_0,
                    _ => El23Attributes::ATTRIBUTE_INDEX_1 | El23Attributes::INNER_SHAREABLE,
                };
                a |= match kind {
                    El2Kind::Text => El23Attributes::READ_ONLY,
                    El2Kind::RoData => El23Attributes::READ_ONLY | El23Attributes::XN,
                    El2Kind::Data | El2Kind::Device => El23Attributes::XN,
                };
                t.map_range(&region, start, a, Constraints::empty())?;
            }
            El2Table::Vhe(t) => {
                // AP[1] (USER) stays 0: no EL0 access. UXN everywhere; PXN on all but text.
                let mut a = El1Attributes::VALID | El1Attributes::ACCESSED | El1Attributes::UXN;
                a |= match kind {
                    El2Kind::Device => El1Attributes::ATTRIBUTE_INDEX_0,
                    _ => El1Attributes::ATTRIBUTE_INDEX_1 | El1Attributes::INNER_SHAREABLE,
                };
                a |= match kind {
                    El2Kind::Text => El1Attributes::READ_ONLY,
                    El2Kind::RoData => El1Attributes::READ_ONLY | El1Attributes::PXN,
                    El2Kind::Data | El2Kind::Device => El1Attributes::PXN,
                };
                t.map_range(&region, start, a, Constraints::empty())?;
            }
        }
        Ok(())
    }

    /// Removes the mapping of `[pa, pa + size)` (splitting blocks), e.g. for guard pages.
    pub fn unmap(&mut self, pa: PhysAddr, size_bytes: u64) -> Result<(), PageTableError> {
        let end =
            pa.0.checked_add(size_bytes)
                .ok_or(PageTableError::OutOfRange)?;
        let region = MemoryRegion::new(pa.0 as usize, end as usize);
        match self {
            El2Table::Nvhe(t) => t.map_range(
                &region,
                PhysicalAddress(0),
                El23Attributes::empty(),
                Constraints::empty(),
            )?,
            El2Table::Vhe(t) => t.map_range(
                &region,
                PhysicalAddress(0),
                El1Attributes::empty(),
                Constraints::empty(),
            )?,
        }
        Ok(())
    }

    /// Physical address of the root table (TTBR0_EL2).
    pub fn root_pa(&self) -> PhysAddr {
        PhysAddr(match self {
            El2Table::Nvhe(t) => t.to_physical().0 as u64,
            El2Table::Vhe(t) => t.to_physical().0 as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn stage2_ram_uses_blocks_and_translates() {
        let mut s2 = Stage2Table::new(44);
        assert_eq!(s2.root_level(), 0);
        s2.map(
            GuestPhysAddr(0x4000_0000),
            PhysAddr(0x5000_0000),
            64 * MIB,
            S2Kind::Ram,
        )
        .unwrap();
        let (pa, block) = s2.translate(GuestPhysAddr(0x4012_3456)).unwrap();
        assert_eq!(pa, PhysAddr(0x5012_3456));
        assert_eq!(block, 2 * MIB, "2M-aligned RAM must use 2M blocks");
        assert_eq!(s2.translate(GuestPhysAddr(0x3fff_f000)), None);
        assert_eq!(s2.translate(GuestPhysAddr(0x4400_0000)), None);
        assert_eq!(
            s2.translate(GuestPhysAddr(0x43ff_fff8)).unwrap().0,
            PhysAddr(0x53ff_fff8)
        );
    }

    #[test]
    fn stage2_gigabyte_block_and_pages() {
        let mut s2 = Stage2Table::new(40);
        s2.map(
            GuestPhysAddr(0x4000_0000),
            PhysAddr(0x8000_0000),
            1024 * MIB,
            S2Kind::Ram,
        )
        .unwrap();
        assert_eq!(
            s2.translate(GuestPhysAddr(0x7fff_0000)).unwrap().1,
            1024 * MIB
        );
        // A 4K device frame at an unaligned spot gets a page.
        s2.map(
            GuestPhysAddr(0x0801_0000),
            PhysAddr(0x0804_0000),
            0x2000,
            S2Kind::Device,
        )
        .unwrap();
        let (pa, size) = s2.translate(GuestPhysAddr(0x0801_1004)).unwrap();
        assert_eq!((pa, size), (PhysAddr(0x0804_1004), PAGE_SIZE));
    }

    #[test]
    fn stage2_shared_read_only_and_read_write() {
        let mut s2 = Stage2Table::new(40);
        s2.map(
            GuestPhysAddr(0x1000_0000),
            PhysAddr(0x8000_0000),
            2 * MIB,
            S2Kind::Shared { writable: false },
        )
        .unwrap();
        s2.map(
            GuestPhysAddr(0x1020_1000),
            PhysAddr(0x8000_0000),
            2 * MIB,
            S2Kind::Shared { writable: true },
        )
        .unwrap();
        s2.map(
            GuestPhysAddr(0x4000_0000),
            PhysAddr(0x9000_0000),
            2 * MIB,
            S2Kind::Ram,
        )
        .unwrap();
        assert_eq!(s2.writable(GuestPhysAddr(0x1000_0010)), Some(false));
        assert_eq!(s2.writable(GuestPhysAddr(0x1020_2000)), Some(true));
        assert_eq!(s2.writable(GuestPhysAddr(0x4000_0000)), Some(true));
        assert_eq!(s2.writable(GuestPhysAddr(0x2000_0000)), None);
        // The same frames behind both mappings.
        assert_eq!(
            s2.translate(GuestPhysAddr(0x1000_3000)).unwrap().0,
            s2.translate(GuestPhysAddr(0x1020_4000)).unwrap().0
        );
    }

    #[test]
    fn stage2_unmap_and_remap_blocks() {
        // 1 GiB-aligned RAM starts as a 1 GiB block; taking 2 MiB blocks out splits it once,
        // and putting them back maps exactly that block again.
        let mut s2 = Stage2Table::new(40);
        s2.map(
            GuestPhysAddr(0x4000_0000),
            PhysAddr(0x8000_0000),
            1024 * MIB,
            S2Kind::Ram,
        )
        .unwrap();
        for b in 1..512u64 {
            s2.unmap(GuestPhysAddr(0x4000_0000 + b * 2 * MIB), 2 * MIB)
                .unwrap();
        }
        assert_eq!(
            s2.translate(GuestPhysAddr(0x4000_1000)),
            Some((PhysAddr(0x8000_1000), 2 * MIB))
        );
        assert_eq!(s2.translate(GuestPhysAddr(0x4020_0000)), None);
        assert_eq!(s2.translate(GuestPhysAddr(0x7fff_f000)), None);
        s2.map(
            GuestPhysAddr(0x4060_0000),
            PhysAddr(0x8060_0000),
            2 * MIB,
            S2Kind::Ram,
        )
        .unwrap();
        assert_eq!(
            s2.translate(GuestPhysAddr(0x4070_0008)),
            Some((PhysAddr(0x8070_0008), 2 * MIB))
        );
        assert_eq!(s2.translate(GuestPhysAddr(0x4080_0000)), None);
        assert_eq!(
            s2.unmap(GuestPhysAddr(u64::MAX - 0xfff), 0x2000),
            Err(PageTableError::OutOfRange)
        );
    }

    #[test]
    fn stage2_rejects_out_of_range() {
        let mut s2 = Stage2Table::new(36);
        assert_eq!(
            s2.map(
                GuestPhysAddr(0xf_ffff_f000),
                PhysAddr(0),
                0x2000,
                S2Kind::Ram
            ),
            Err(PageTableError::OutOfRange)
        );
        assert_eq!(
            s2.map(
                GuestPhysAddr(u64::MAX - 0xfff),
                PhysAddr(0),
                0x2000,
                S2Kind::Ram
            ),
            Err(PageTableError::OutOfRange)
        );
    }

    #[test]
    fn el2_identity_map_both_regimes() {
        for vhe in [false, true] {
            let mut t = El2Table::new(vhe);
            t.identity_map(PhysAddr(0x4008_0000), 0x1_0000, El2Kind::Text)
                .unwrap();
            t.identity_map(PhysAddr(0x4009_0000), 0x1_0000, El2Kind::RoData)
                .unwrap();
            t.identity_map(PhysAddr(0x4020_0000), 512 * MIB, El2Kind::Data)
                .unwrap();
            t.identity_map(PhysAddr(0x0900_0000), 0x1000, El2Kind::Device)
                .unwrap();
            assert_ne!(t.root_pa(), PhysAddr(0));
        }
    }
}
