//! A VM's RAM: its host frames, its stage-2 table, and blocks backed on demand (mm::lazy).
//!
//! ```text
//!  build / reset ── eager blocks (images, DT): zeroed or rewritten, cleaned, mapped
//!                └─ every other block: unmapped (reset: + TLBI for the VMID)
//!  guest touches an unmapped block ── stage-2 translation fault ── back(): zero (DC ZVA),
//!                                     clean+invalidate to PoC, map, DSB ── retry the access
//!  virtio reaches an unmapped block ── GuestRamAccess ── ensure() ── back() (same lock)
//! ```
//!
//! Why a block is cleaned to the Point of Coherency before it is mapped, unless the CPU has
//! FEAT_S2FWB: the zeroes sit in this CPU's data cache, and the guest may read the block with
//! its MMU off or through a Non-cacheable mapping of its own (both Non-cacheable accesses that
//! bypass the caches: ARM ARM D8.6, combining stage 1 and stage 2 attributes, the less
//! cacheable type wins), which would see whatever was in memory before, another VM's or an
//! earlier boot's data. With the lines cleaned and invalidated, memory itself holds zeroes.
//! With FWB (HCR_EL2.FWB and the forced Write-Back stage-2 encoding, mm::pagetable), every
//! guest access to RAM is Write-Back cacheable whatever its stage 1 says, so it is coherent
//! with the zeroes in the cache and no data-cache maintenance is needed (KVM relies on the
//! same rule); only instruction fetches still need the Point of Unification (CTR_EL0.IDC) and
//! the instruction caches (CTR_EL0.DIC). A Cortex-A72 has no FWB and takes the clean.
//!
//! Why mapping needs no TLB maintenance: the block's descriptor was invalid, and a translation
//! that faults is never held in a TLB (ARM ARM D8.14, "TLB maintenance": only valid
//! translations are cached), so a DSB that makes the descriptor write visible to the table
//! walker is all the retried access needs. Unmapping at a reset does need one, for every CPU
//! (guest::invalidate_vmid_tlbs).

use alloc::vec::Vec;

use crate::arch::aarch64::ram::RamRegion;
use crate::arch::aarch64::sync::{Mutex, WaitForEvent};
use crate::arch::aarch64::{cache, guest};
use crate::mm::lazy::{BLOCK_BYTES, Backing, EnsureBacked};
use crate::mm::pagetable::{S2Kind, Stage2Table};
use crate::mm::pieces::HostPieces;
use crate::mm::{GuestPhysAddr, PhysAddr};

/// A VM's RAM and the stage-2 table that maps it.
pub struct VmRam {
    /// The host frames. Locked to write them (images, zeroing); device models copy through
    /// raw pointers into backed blocks only.
    pub region: Mutex<RamRegion>,
    /// Where each part of RAM is on the host (a copy, for lock-free address arithmetic).
    host: HostPieces,
    /// The VM's stage-2 table; its lock also serialises backing a block.
    stage2: Mutex<Stage2Table>,
    backing: Backing,
    /// VTTBR_EL2 of the VM (VMID and table root), for TLB maintenance.
    vttbr: u64,
    /// Where RAM starts in the guest's physical address space.
    base: GuestPhysAddr,
}

impl VmRam {
    /// RAM `region` mapped whole as guest RAM at `base` in `stage2` (the caller did that);
    /// blocks become on-demand at the first [`Self::prepare`].
    pub fn new(region: RamRegion, stage2: Stage2Table, vmid: u64, base: GuestPhysAddr) -> Self {
        let host = region.pieces().clone();
        let vttbr = (vmid << 48) | stage2.root_pa().0;
        Self {
            region: Mutex::new(region),
            backing: Backing::new(host.size_bytes()),
            host,
            stage2: Mutex::new(stage2),
            vttbr,
            base,
        }
    }

    /// Where RAM starts in the guest's physical address space (`vm::layout::RAM_BASE`, or
    /// the host address with `elvisor,direct-map`).
    pub fn base(&self) -> GuestPhysAddr {
        self.base
    }

    /// The stage-2 table, for mappings other than RAM (devices) at build time.
    pub fn stage2(&self) -> spin::mutex::MutexGuard<'_, Stage2Table, WaitForEvent> {
        self.stage2.lock()
    }

    /// Checked access for a device model (virtio), backing blocks before it touches them.
    pub fn guest_access(&'static self) -> crate::arch::aarch64::ram::GuestRamAccess {
        self.region.lock().guest_access(self.base, self)
    }

    pub fn vttbr(&self) -> u64 {
        self.vttbr
    }

    /// Where RAM is on the host, in guest order.
    pub fn host_pieces(&self) -> &HostPieces {
        &self.host
    }

    /// How many bytes of RAM are backed right now.
    pub fn backed_bytes(&self) -> u64 {
        self.backing.backed_count() as u64 * BLOCK_BYTES
    }

    pub fn blocks(&self) -> usize {
        self.backing.blocks()
    }

    /// Before a boot: every block not in `eager` is unmapped and forgotten (its contents are
    /// zeroed again when the guest next touches it); every eager block is mapped and counted
    /// as backed (the caller writes and cleans it). `after_run`: the VM ran before (a reset),
    /// so the VMID's TLB entries are removed on every CPU.
    pub fn prepare(&self, eager: &[bool], after_run: bool) -> Result<(), &'static str> {
        let mut s2 = self.stage2.lock();
        for b in 0..self.backing.blocks() {
            let ipa = self.block_ipa(b);
            let want = eager.get(b).copied().unwrap_or(false);
            // At build every block is mapped and none counted: unmap all non-eager ones.
            if want {
                if !self.backing.is_backed(b) {
                    s2.map(ipa, self.block_pa(b), BLOCK_BYTES, S2Kind::Ram)
                        .map_err(|_| "stage 2 refused an image block")?;
                    self.backing.set(b);
                }
            } else if self.backing.is_backed(b) || !after_run {
                s2.unmap(ipa, BLOCK_BYTES)
                    .map_err(|_| "stage 2 refused to unmap a block")?;
                self.backing.clear(b);
            }
        }
        if after_run {
            guest::invalidate_vmid_tlbs(self.vttbr);
        }
        Ok(())
    }

    /// Guest-physical address of block `b`.
    fn block_ipa(&self, b: usize) -> GuestPhysAddr {
        GuestPhysAddr(self.base.0 + b as u64 * BLOCK_BYTES)
    }

    /// Host address of block `b` (every piece is a whole number of blocks, block-aligned).
    fn block_pa(&self, b: usize) -> PhysAddr {
        PhysAddr(self.host.host(b as u64 * BLOCK_BYTES).unwrap_or(0))
    }

    /// Backs block `b` if it is not: zeroes it, cleans it to the Point of Coherency, maps it.
    fn back(&self, b: usize) -> bool {
        if self.backing.is_backed(b) {
            return true;
        }
        if b >= self.backing.blocks() {
            return false;
        }
        let mut s2 = self.stage2.lock();
        // Another CPU may have backed it while this one waited for the lock.
        if self.backing.is_backed(b) {
            return true;
        }
        {
            let mut region = self.region.lock();
            let offset = b as u64 * BLOCK_BYTES;
            region.zero_range(offset, BLOCK_BYTES);
            // Each range operation ends with the DSB that completes the zeroing and the
            // maintenance before the descriptor below can be used.
            if !s2.forced_write_back() {
                // The guest may read Non-cacheable: memory itself must hold the zeroes.
                region.clean_range(offset, BLOCK_BYTES);
            } else if !cache::idc() {
                // Every guest data access is cacheable (FWB), but instruction fetches that
                // miss in the instruction cache read from the Point of Unification.
                cache::clean_to_pou(self.block_pa(b).0, BLOCK_BYTES);
            }
        }
        // Instructions of an earlier owner of these frames must not be fetched from an
        // instruction cache once the block is the guest's (unless CTR_EL0.DIC says the
        // hardware keeps the instruction caches coherent).
        if !cache::dic() {
            cache::invalidate_icache_all();
        }
        let ipa = self.block_ipa(b);
        if s2
            .map(ipa, self.block_pa(b), BLOCK_BYTES, S2Kind::Ram)
            .is_err()
        {
            return false;
        }
        // The descriptor write must be visible to every CPU's table walker before the guest
        // retries (a vCPU of this VM on another CPU may take the same fault meanwhile and
        // find the bit set): DSB ISHST, in the arch barrier below.
        guest::publish_stage2_write();
        self.backing.set(b);
        true
    }

    /// The stage-2 translation fault of a guest access at `ipa`: backs its block. `None` when
    /// `ipa` is not RAM (the caller treats it as any unbacked address); `Some(false)` when
    /// backing failed.
    pub fn fault(&self, ipa: GuestPhysAddr) -> Option<bool> {
        let offset = ipa.0.checked_sub(self.base.0)?;
        if offset >= self.host.size_bytes() {
            return None;
        }
        Some(self.back((offset / BLOCK_BYTES) as usize))
    }

    /// The eager blocks for images at `segments` (offset, length).
    pub fn eager(&self, segments: &[(u64, u64)]) -> Vec<bool> {
        crate::mm::lazy::eager_blocks(segments, self.backing.blocks())
    }
}

impl EnsureBacked for VmRam {
    fn ensure(&self, offset: u64, len: u64) -> bool {
        if self.backing.all_backed(offset, len) {
            return true;
        }
        match self.backing.blocks_of(offset, len) {
            Some(mut blocks) => blocks.all(|b| self.back(b)),
            None => false,
        }
    }
}
