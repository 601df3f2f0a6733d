//! The software state of one VM's virtual GIC: per-interrupt state (SPIs shared, SGIs and PPIs
//! banked per vCPU), the distributor's group enables, per-vCPU redistributor state, and the
//! device-facing inputs (interrupt lines, edges, hardware links, SGI generation).
//!
//! Ownership of an interrupt's pending/active state (the rule that makes delivery exactly-once):
//!
//! * While an interrupt is **not in a list register** (`owner == None`) the software fields are
//!   the truth: `latch` (edge latch or ISPENDR), `line` (level input), `sgi_sources` (GICv2
//!   per-source SGI pending bits) and `active`.
//! * While it **is in a list register** of vCPU `v` (`owner == Some(v)`) the list register is the
//!   truth for its pending and active state; `lr_state` and `active` mirror what the LR held at the
//!   last flush or sync. Changes made meanwhile by other agents (MMIO from any vCPU, device
//!   inputs, SGIs) are recorded as requests: `latch` (edge: a new edge to merge; level: the
//!   software pend latch), `sgi_sources` (a new SGI from a source), `unpend_req` (ICPENDR /
//!   CPENDSGIR) and `active_req` (ISACTIVER / ICACTIVER). The owner is kicked and merges them
//!   into its LR at its next [`Vgic::flush`](super::Vgic::flush).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::lr::LrState;
use super::regs::{AFFINITY_MASK, ICC_SGI1R, IROUTER};
use crate::vdev::VcpuId;

/// Number of SGIs (INTIDs 0-15).
pub const NR_SGIS: u32 = 16;
/// Number of private interrupts (SGIs and PPIs, INTIDs 0-31), banked per vCPU.
pub const NR_PRIVATE: u32 = 32;
/// Most vCPUs a GICv2 VM can have (ITARGETSR / SGIR target lists are 8 bits).
pub const MAX_VCPUS_V2: usize = 8;
/// Most vCPUs a GICv3 VM can have (a [`KickSet`] is a `u64`).
pub const MAX_VCPUS_V3: usize = 64;
/// Most SPIs: INTIDs 32..992, the largest multiple of 32 below the special INTIDs 1020-1023.
pub const MAX_SPIS: u32 = 960;
/// Implemented priority bits: the top five of the byte (32 levels), as QEMU's GIC and
/// ICH_VTR_EL2.PRIbits = 4 on QEMU and the GIC-600, and the width of GICH_LR.Priority. The low
/// three bits of every priority field are RAZ/WI.
pub const PRIORITY_MASK: u8 = 0xF8;

pub use crate::platform::GicVersion;

/// Shape of a VM's virtual GIC.
#[derive(Clone, Copy, Debug)]
pub struct VgicConfig<'a> {
    pub version: GicVersion,
    /// Number of SPIs (INTIDs 32..32+nr_spis): a multiple of 32, at most [`MAX_SPIS`].
    pub nr_spis: u32,
    /// One MPIDR affinity value (Aff3 39:32, Aff2..Aff0 23:0) per vCPU, vCPU 0 first; its length
    /// is the number of vCPUs. GICv3 routes SPIs and SGIs by these values.
    pub mpidrs: &'a [u64],
}

/// Why a virtual GIC could not be built, or a hypervisor-side request was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VgicError {
    /// `mpidrs` is empty.
    NoVcpus,
    /// More vCPUs than the GIC version can address.
    TooManyVcpus(usize),
    /// `nr_spis` is not a multiple of 32 or above [`MAX_SPIS`].
    BadSpiCount(u32),
    /// An MPIDR with bits outside the affinity fields.
    BadMpidr(u64),
    /// Two vCPUs with the same MPIDR.
    DuplicateMpidr(u64),
    /// An INTID this VM does not implement, or one the request does not apply to.
    BadIntid(u32),
    /// A vCPU index outside the VM.
    BadVcpu(VcpuId),
}

impl fmt::Display for VgicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVcpus => write!(f, "vgic: no vCPUs"),
            Self::TooManyVcpus(n) => write!(f, "vgic: {n} vCPUs are more than the GIC supports"),
            Self::BadSpiCount(n) => {
                write!(
                    f,
                    "vgic: {n} SPIs (must be a multiple of 32, at most {MAX_SPIS})"
                )
            }
            Self::BadMpidr(m) => write!(f, "vgic: {m:#x} is not an MPIDR affinity"),
            Self::DuplicateMpidr(m) => write!(f, "vgic: two vCPUs with MPIDR {m:#x}"),
            Self::BadIntid(i) => write!(f, "vgic: INTID {i} not valid here"),
            Self::BadVcpu(v) => write!(f, "vgic: no vCPU {}", v.0),
        }
    }
}

/// Reads the current level of the physical line behind a hardware-linked level-sensitive
/// interrupt: `pintid` is the physical INTID; `local` says the interrupt belongs to the vCPU
/// running on the calling CPU (always true for SPIs), so a per-CPU source such as the virtual
/// timer can be read. `None`: unknown here (another vCPU's timer), leave the state alone.
///
/// The vGIC calls it on a guest read of a pending register (GICD_ISPENDR/ICPENDR,
/// GICR_ISPENDR0/ICPENDR0) and in [`Vgic::sync`](super::Vgic::sync) for a hardware-linked entry
/// still pending in a list register. Only a fall is acted on: a rise is the physical GIC's to
/// signal.
pub type LineSampler = fn(pintid: u32, local: bool) -> Option<bool>;

/// A set of vCPUs (bit n = vCPU n) that must look at their vGIC state: each must run
/// [`Vgic::flush`](super::Vgic::flush) before it next enters the guest, so one running on another
/// physical CPU needs a kick (a physical SGI) and one blocked in WFI a wake-up.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KickSet(pub u64);

impl KickSet {
    /// No vCPU.
    pub const EMPTY: Self = Self(0);

    /// The first `n` vCPUs.
    pub fn all(n: usize) -> Self {
        Self(low_bits(n))
    }
    /// Just `vcpu` (empty if it is out of range).
    pub fn single(vcpu: usize) -> Self {
        Self(
            1u64.checked_shl(u32::try_from(vcpu).unwrap_or(u32::MAX))
                .unwrap_or(0),
        )
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, vcpu: VcpuId) -> bool {
        !Self::single(usize::from(vcpu.0)).intersect(self).is_empty()
    }
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
    /// The vCPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = VcpuId> {
        BitIter(self.0).filter_map(|i| u16::try_from(i).ok().map(VcpuId))
    }
}

/// `n` low bits set (all 64 for `n >= 64`): also the mask of the first `n` list registers.
pub fn low_bits(n: usize) -> u64 {
    match u32::try_from(n) {
        Ok(n) if n < 64 => (1u64 << n) - 1,
        _ => u64::MAX,
    }
}

/// Iterates over the set bit positions of a `u64`, lowest first.
pub(super) struct BitIter(pub u64);

impl Iterator for BitIter {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        usize::try_from(bit).ok()
    }
}

/// State of one interrupt (for SGIs and PPIs: one vCPU's bank of it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Irq {
    /// GICD_ISENABLER / GICR_ISENABLER0.
    pub enabled: bool,
    /// GICD_IGROUPR: true = group 1.
    pub group1: bool,
    /// GICD_ICFGR `Int_config[1]`: true = edge-triggered, false = level-sensitive.
    pub edge: bool,
    /// GICD_IPRIORITYR, low three bits always zero.
    pub priority: u8,
    /// Software pending latch: an edge, an ISPENDR write or an injection. For a level-sensitive
    /// interrupt this is only the ISPENDR part; the line adds to it.
    pub latch: bool,
    /// Level of the input line of a level-sensitive interrupt. Without a hardware link: the
    /// device model's output ([`Vgic::set_level`](super::Vgic::set_level)). With one: high
    /// from the hypervisor's taking the physical interrupt ([`Vgic::inject_hw`]
    /// (super::Vgic::inject_hw)) until a re-sample finds the physical line low or the guest's
    /// deactivation deactivates the physical interrupt (from then the physical GIC tracks the
    /// line again and signals a new instance). Never high without `hw_active` when linked.
    pub line: bool,
    /// Active state (a mirror of the LR while the interrupt is in one).
    pub active: bool,
    /// GICv2 SGIs: pending source CPUs (GICD_SPENDSGIR), bit n = vCPU n.
    pub sgi_sources: u8,
    /// GICv3 SPIs: GICD_IROUTER (affinity and IRM, other bits zero).
    pub route: u64,
    /// GICv2 SPIs: GICD_ITARGETSR.
    pub targets: u8,
    /// Physical INTID this virtual interrupt is linked to (virtual timer, passthrough SPIs).
    pub hw: Option<u32>,
    /// The linked physical interrupt was taken and left active by the hypervisor; it is
    /// deactivated by the guest's EOI through an LR with the HW bit, or by
    /// [`Vgic::take_hw_deactivation`](super::Vgic::take_hw_deactivation).
    pub hw_active: bool,
    /// The vCPU whose list register holds this interrupt.
    pub owner: Option<u16>,
    /// The LR's state at the last flush/sync while `owner` is set, `Invalid` otherwise.
    pub lr_state: LrState,
    /// GICv2 SGIs: the source CPU of the instance in the LR.
    pub lr_source: u8,
    /// A request to clear the LR's pending state (ICPENDR / CPENDSGIR) not yet merged.
    pub unpend_req: bool,
    /// A request to set or clear the LR's active state not yet merged.
    pub active_req: Option<bool>,
    /// Hardware-linked level SPIs: the line was re-sampled high at a trapped acknowledge since
    /// the last injection (see [`FlushResult::check_lines`](super::FlushResult::check_lines)).
    pub checked: bool,
}

impl Irq {
    /// Power-on state of INTID `intid`. Everything is zero (group 0, priority 0, disabled,
    /// level-sensitive, not pending) except: SGIs are edge-triggered, and GICv2 SGIs are
    /// permanently enabled (`GICD_ISENABLER0[15:0]` RAO/WI, as on the GIC-400).
    fn reset(intid: u32, version: GicVersion, hw: Option<u32>) -> Self {
        let sgi = intid < NR_SGIS;
        Self {
            enabled: sgi && version == GicVersion::V2,
            group1: false,
            edge: sgi,
            priority: 0,
            latch: false,
            line: false,
            active: false,
            sgi_sources: 0,
            route: 0,
            targets: 0,
            hw,
            hw_active: false,
            owner: None,
            lr_state: LrState::Invalid,
            lr_source: 0,
            unpend_req: false,
            active_req: None,
            checked: false,
        }
    }

    /// Level-sensitive with the line sampled in software (re-pended on EOI while the line is
    /// high, through an EOI maintenance interrupt). Hardware-linked level interrupts are
    /// levels too ([`Irq::hw_level`]), but the physical GIC re-samples their line after the
    /// guest's EOI deactivates the physical interrupt.
    pub fn level_sw(&self) -> bool {
        !self.edge && self.hw.is_none()
    }

    /// Level-sensitive and linked to a physical interrupt (the virtual timer, a passthrough
    /// level SPI): pending while its `line` is high, and the line can fall without the guest
    /// touching the vGIC (it disables its timer, clears its device).
    pub fn hw_level(&self) -> bool {
        !self.edge && self.hw.is_some()
    }

    /// Pending in software (not counting an instance held in a list register).
    pub fn pending_sw(&self) -> bool {
        self.latch || self.sgi_sources != 0 || (!self.edge && self.line)
    }

    /// What a guest reads in GICD_ISPENDR: software pending, or pending in an LR (unless a clear
    /// is on its way there). A level-sensitive interrupt's pending state never leaves software
    /// (the latch until acknowledged, the line as long as it is high), so an LR still marked
    /// pending whose line has fallen since the last flush reads as not pending: the state
    /// follows the line at the moment of the read (IHI 0069 §4.1.2: a level-sensitive
    /// interrupt is pending while asserted, or latched by GICD_ISPENDR).
    pub fn pending_view(&self) -> bool {
        if !self.edge {
            return self.latch || self.line;
        }
        self.pending_sw() || (self.owner.is_some() && self.lr_state.pending() && !self.unpend_req)
    }

    /// What a guest reads in GICD_ISACTIVER.
    pub fn active_view(&self) -> bool {
        self.active_req.unwrap_or(self.active)
    }
}

/// Redistributor-side state of one vCPU, and its list-register bookkeeping.
#[derive(Clone, Copy, Debug)]
pub(super) struct VcpuState {
    /// MPIDR affinity (Aff3 39:32, Aff2..Aff0 23:0).
    pub mpidr: u64,
    /// GICR_WAKER.ProcessorSleep (ChildrenAsleep mirrors it).
    pub asleep: bool,
    /// List registers that hold an interrupt of ours (bit n = LR n).
    pub lr_live: u64,
    /// Something changed that [`Vgic::flush`](super::Vgic::flush) must look at.
    pub dirty: bool,
    /// The hardware LRs' contents are unknown (never flushed, or the VM was reset): the next
    /// flush rewrites every LR.
    pub scrub: bool,
    /// The next flush must scan every indexed interrupt for candidates (a global change, a
    /// previous flush that could not place everything, too many hints).
    pub scan: bool,
    /// Otherwise, the interrupts that changed since the last flush: the only possible new
    /// candidates. More than `hints.len()` sets `scan`.
    pub hints: [u32; 4],
    pub nhints: u8,
    /// A hardware-linked level SPI was injected since this vCPU's last flush that found none
    /// unchecked in its LRs: only then does the flush look for
    /// [`FlushResult::check_lines`](super::FlushResult::check_lines).
    pub hw_spis: bool,
}

impl VcpuState {
    /// Marks `intid` as changed for the next flush.
    #[inline]
    pub(super) fn hint(&mut self, intid: u32) {
        self.dirty = true;
        if self.scan {
            return;
        }
        let n = usize::from(self.nhints);
        if self.hints.get(..n).is_some_and(|h| h.contains(&intid)) {
            return;
        }
        match self.hints.get_mut(n) {
            Some(slot) => {
                *slot = intid;
                self.nhints += 1;
            }
            None => self.scan = true,
        }
    }

    /// Marks everything as possibly changed for the next flush.
    pub(super) fn rescan(&mut self) {
        self.dirty = true;
        self.scan = true;
    }
}

/// One VM's virtual GIC. See the module documentation of [`super`].
pub struct Vgic {
    pub(super) version: GicVersion,
    pub(super) nr_spis: u32,
    pub(super) vcpus: Vec<VcpuState>,
    /// SGIs and PPIs, `NR_PRIVATE` per vCPU, vCPU 0 first.
    pub(super) private: Vec<Irq>,
    /// SPIs, INTID 32 first.
    pub(super) spis: Vec<Irq>,
    /// GICD_CTLR.EnableGrp0.
    pub(super) enable_grp0: bool,
    /// GICD_CTLR.EnableGrp1 (GICv3: EnableGrp1A / EnableGrp1 of the single security state).
    pub(super) enable_grp1: bool,
    /// vCPUs to kick because of guest MMIO accesses, drained by [`Vgic::take_kicks`].
    pub(super) mmio_kicks: KickSet,
    /// Physical INTIDs the hypervisor must deactivate, drained by
    /// [`Vgic::take_hw_deactivation`].
    pub(super) hw_deactivate: Vec<u32>,
    /// A conservative index for the list-register scans: bit n (private interrupts first,
    /// `private` order, then SPIs) is set by every mutable access ([`Vgic::irq_mut`]) and
    /// cleared by `flush` only for an interrupt with nothing pending, active or in an LR,
    /// which only another mutable access can change. Unset bits can be skipped.
    pub(super) maybe: Vec<u64>,
    /// GICD_TYPER, which depends only on the configuration.
    pub(super) typer: u32,
    /// Second level of the index: bit w set when word w of `maybe` may be non-zero.
    pub(super) maybe_words: Vec<u64>,
    /// Where hardware-linked level lines are re-sampled ([`Vgic::set_line_sampler`]).
    pub(super) sampler: Option<LineSampler>,
}

impl Vgic {
    /// Builds a virtual GIC in its power-on state.
    pub fn new(config: &VgicConfig<'_>) -> Result<Self, VgicError> {
        let nr_vcpus = config.mpidrs.len();
        let max_vcpus = match config.version {
            GicVersion::V2 => MAX_VCPUS_V2,
            GicVersion::V3 => MAX_VCPUS_V3,
        };
        if nr_vcpus == 0 {
            return Err(VgicError::NoVcpus);
        }
        if nr_vcpus > max_vcpus {
            return Err(VgicError::TooManyVcpus(nr_vcpus));
        }
        if !config.nr_spis.is_multiple_of(32) || config.nr_spis > MAX_SPIS {
            return Err(VgicError::BadSpiCount(config.nr_spis));
        }
        for (i, &mpidr) in config.mpidrs.iter().enumerate() {
            if mpidr & !AFFINITY_MASK != 0 {
                return Err(VgicError::BadMpidr(mpidr));
            }
            if config.mpidrs.iter().take(i).any(|&m| m == mpidr) {
                return Err(VgicError::DuplicateMpidr(mpidr));
            }
        }
        let vcpus = config
            .mpidrs
            .iter()
            .map(|&mpidr| VcpuState {
                mpidr,
                asleep: true,
                lr_live: 0,
                dirty: true,
                scrub: true,
                scan: true,
                hints: [0; 4],
                nhints: 0,
                hw_spis: false,
            })
            .collect();
        let nr_private = nr_vcpus * NR_PRIVATE as usize;
        let mut vgic = Self {
            version: config.version,
            nr_spis: config.nr_spis,
            vcpus,
            private: vec![Irq::reset(0, config.version, None); nr_private],
            spis: vec![Irq::reset(NR_PRIVATE, config.version, None); config.nr_spis as usize],
            enable_grp0: false,
            enable_grp1: false,
            mmio_kicks: KickSet::EMPTY,
            // Room for every interrupt at once (each is queued at most once until drained),
            // so the queue never grows on a guest's timing: the heap in use stays the same
            // from one VM reset to the next (the lifecycle soak checks it to the byte).
            hw_deactivate: Vec::with_capacity(nr_private + config.nr_spis as usize),
            maybe: vec![u64::MAX; (nr_private + config.nr_spis as usize).div_ceil(64)],
            maybe_words: vec![u64::MAX; (nr_private + config.nr_spis as usize).div_ceil(64 * 64)],
            typer: 0,
            sampler: None,
        };
        vgic.typer = vgic.gicd_typer();
        vgic.reset();
        // Nothing was ever taken: no physical interrupt to deactivate.
        vgic.hw_deactivate.clear();
        Ok(vgic)
    }

    /// Returns the whole vGIC to its power-on state (VM reset). Hardware links set with
    /// [`Vgic::set_hw`] are wiring, not guest state, and are kept; physical interrupts taken for
    /// the guest and not yet deactivated are queued for [`Vgic::take_hw_deactivation`]. Every
    /// vCPU's next [`Vgic::flush`] rewrites all its list registers.
    pub fn reset(&mut self) {
        let version = self.version;
        let mut deactivate = core::mem::take(&mut self.hw_deactivate);
        for (i, irq) in self.private.iter_mut().enumerate() {
            if irq.hw_active {
                deactivate.extend(irq.hw);
            }
            let intid = u32::try_from(i % NR_PRIVATE as usize).unwrap_or(0);
            *irq = Irq::reset(intid, version, irq.hw);
        }
        for irq in &mut self.spis {
            if irq.hw_active {
                deactivate.extend(irq.hw);
            }
            *irq = Irq::reset(NR_PRIVATE, version, irq.hw);
        }
        self.hw_deactivate = deactivate;
        // Everything is idle now (nothing pending, active or in an LR): nothing to index.
        self.maybe.fill(0);
        self.maybe_words.fill(0);
        for v in &mut self.vcpus {
            v.asleep = true;
            v.lr_live = 0;
            v.scrub = true;
            v.rescan();
        }
        self.enable_grp0 = false;
        self.enable_grp1 = false;
        // Every vCPU is dirty; the caller restarts them all anyway, so no kicks.
        self.mmio_kicks = KickSet::EMPTY;
    }

    pub fn version(&self) -> GicVersion {
        self.version
    }
    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }
    pub fn nr_spis(&self) -> u32 {
        self.nr_spis
    }
    /// One past the highest implemented INTID.
    pub fn nr_intids(&self) -> u32 {
        NR_PRIVATE + self.nr_spis
    }

    /// vCPUs that must be looked at because of the guest MMIO accesses since the last call
    /// (the [`MmioDevice`](crate::vdev::MmioDevice) interface has no room to return them).
    pub fn take_kicks(&mut self) -> KickSet {
        core::mem::take(&mut self.mmio_kicks)
    }

    /// A physical INTID to deactivate (ICC_DIR_EL1 / GICC_DIR): a hardware-linked interrupt the
    /// hypervisor took for the guest stopped being pending or active in the guest's view without
    /// the guest's EOI deactivating it (ICPENDR, ICACTIVER, VM reset). Left active, the physical
    /// interrupt would never fire again.
    pub fn take_hw_deactivation(&mut self) -> Option<u32> {
        self.hw_deactivate.pop()
    }

    /// Whether `vcpu` must run [`Vgic::flush`] before entering the guest.
    pub fn needs_flush(&self, vcpu: VcpuId) -> bool {
        self.vcpus.get(usize::from(vcpu.0)).is_some_and(|v| v.dirty)
    }

    /// The list registers of `vcpu` that hold interrupts (bit n = LR n): the ones to save after
    /// an exit and pass back to [`Vgic::sync`].
    pub fn live_lrs(&self, vcpu: VcpuId) -> u64 {
        self.vcpus.get(usize::from(vcpu.0)).map_or(0, |v| v.lr_live)
    }

    // ----- lookup -------------------------------------------------------------------------

    /// Index of `vcpu` if it exists.
    pub(super) fn vcpu_index(&self, vcpu: VcpuId) -> Option<usize> {
        let v = usize::from(vcpu.0);
        (v < self.vcpus.len()).then_some(v)
    }

    /// Position of a private interrupt in `private`.
    fn private_index(&self, intid: u32, bank: usize) -> Option<usize> {
        if intid >= NR_PRIVATE || bank >= self.vcpus.len() {
            return None;
        }
        Some(bank * NR_PRIVATE as usize + intid as usize)
    }

    /// The state of `intid`; for SGIs and PPIs, vCPU `bank`'s copy.
    pub(super) fn irq(&self, intid: u32, bank: usize) -> Option<&Irq> {
        if intid < NR_PRIVATE {
            self.private.get(self.private_index(intid, bank)?)
        } else {
            self.spis.get(usize::try_from(intid - NR_PRIVATE).ok()?)
        }
    }

    pub(super) fn irq_mut(&mut self, intid: u32, bank: usize) -> Option<&mut Irq> {
        let flat = if intid < NR_PRIVATE {
            self.private_index(intid, bank)?
        } else {
            self.private.len() + usize::try_from(intid - NR_PRIVATE).ok()?
        };
        // Any change may make the interrupt want a list register: index it for the scans.
        if let Some(w) = self.maybe.get_mut(flat / 64) {
            *w |= 1 << (flat % 64);
        }
        if let Some(s) = self.maybe_words.get_mut(flat / (64 * 64)) {
            *s |= 1 << ((flat / 64) % 64);
        }
        if intid < NR_PRIVATE {
            self.private.get_mut(flat)
        } else {
            self.spis.get_mut(flat - self.private.len())
        }
    }

    /// Summary word `sw` of the index, limited to the `maybe` words `[wlo, whi]`.
    #[inline(always)]
    fn summary_in(&self, sw: usize, wlo: usize, whi: usize) -> u64 {
        let sbase = sw * 64;
        let mut words = self.maybe_words.get(sw).copied().unwrap_or(0);
        if sbase < wlo {
            words &= !low_bits(wlo - sbase);
        }
        if whi - sbase < 63 {
            words &= low_bits(whi - sbase + 1);
        }
        words
    }

    /// Word `w` of the index, limited to the flat positions `[lo, hi)`.
    #[inline(always)]
    fn maybe_in_word(&self, w: usize, lo: usize, hi: usize) -> u64 {
        let base = w * 64;
        let mut bits = self.maybe.get(w).copied().unwrap_or(0);
        if base < lo {
            bits &= !low_bits(lo - base);
        }
        if hi - base < 64 {
            bits &= low_bits(hi - base);
        }
        bits
    }

    /// Calls `f` on the indexed (possibly interesting) flat positions in `[lo, hi)`, lowest
    /// first, until it returns true; returns whether one did. See [`Vgic::maybe`]. (Plain
    /// word loops: this runs on every flush, and iterator adapters cost several times more.)
    #[inline(always)]
    pub(super) fn scan_maybe(
        &self,
        lo: usize,
        hi: usize,
        mut f: impl FnMut(usize) -> bool,
    ) -> bool {
        if lo >= hi {
            return false;
        }
        let (wlo, whi) = (lo / 64, (hi - 1) / 64);
        // Words of `maybe` with bits, from the summary, limited to [wlo, whi].
        let mut sw = wlo / 64;
        while sw <= whi / 64 {
            let sbase = sw * 64;
            let mut words = self.summary_in(sw, wlo, whi);
            while words != 0 {
                let w = sbase + words.trailing_zeros() as usize;
                words &= words - 1;
                let base = w * 64;
                let mut bits = self.maybe_in_word(w, lo, hi);
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if f(base + b) {
                        return true;
                    }
                }
            }
            sw += 1;
        }
        false
    }

    /// [`Vgic::scan_maybe`] for the flush: `f` sees every indexed position in `[lo, hi)` and
    /// returns true for an idle interrupt, which leaves the index.
    #[inline(always)]
    pub(super) fn scan_maybe_unindex(
        &mut self,
        lo: usize,
        hi: usize,
        mut f: impl FnMut(&Self, usize) -> bool,
    ) {
        if lo >= hi {
            return;
        }
        let (wlo, whi) = (lo / 64, (hi - 1) / 64);
        let mut sw = wlo / 64;
        while sw <= whi / 64 {
            let sbase = sw * 64;
            let mut words = self.summary_in(sw, wlo, whi);
            let mut empty_words = 0u64;
            while words != 0 {
                let wb = words.trailing_zeros() as usize;
                words &= words - 1;
                let w = sbase + wb;
                let base = w * 64;
                let mut bits = self.maybe_in_word(w, lo, hi);
                let mut idle = 0u64;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if f(self, base + b) {
                        idle |= 1 << b;
                    }
                }
                if let Some(word) = self.maybe.get_mut(w) {
                    *word &= !idle;
                    if *word == 0 {
                        empty_words |= 1 << wb;
                    }
                }
            }
            if let Some(s) = self.maybe_words.get_mut(sw) {
                *s &= !empty_words;
            }
            sw += 1;
        }
    }

    /// The distributor forwards interrupts of `irq`'s group.
    pub(super) fn group_enabled(&self, irq: &Irq) -> bool {
        if irq.group1 {
            self.enable_grp1
        } else {
            self.enable_grp0
        }
    }

    /// The vCPU with MPIDR affinity `mpidr`.
    pub(super) fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize> {
        self.vcpus.iter().position(|v| v.mpidr == mpidr)
    }

    /// Whether SPI `irq` may be taken by vCPU `v` (private interrupts: always, by their bank).
    ///
    /// * GICv3, IROUTER.IRM = 0: the vCPU whose MPIDR equals the routing affinity (none if no
    ///   vCPU has it: the interrupt stays pending, as on hardware).
    /// * GICv3, IRM = 1 (1 of N): any vCPU whose redistributor is awake
    ///   (GICR_WAKER.ProcessorSleep = 0); the first to flush takes it.
    /// * GICv2: any vCPU in ITARGETSR (every SPI targets the only CPU of a uniprocessor VM,
    ///   whose ITARGETSR are RAZ/WI).
    pub(super) fn spi_targets(&self, irq: &Irq, v: usize) -> bool {
        match self.version {
            GicVersion::V3 => {
                if IROUTER::IRM.is_set(irq.route) {
                    self.vcpus.get(v).is_some_and(|s| !s.asleep)
                } else {
                    self.vcpus
                        .get(v)
                        .is_some_and(|s| s.mpidr == irq.route & AFFINITY_MASK)
                }
            }
            GicVersion::V2 => {
                if self.vcpus.len() == 1 {
                    v == 0
                } else {
                    v < 8 && irq.targets & (1 << v) != 0
                }
            }
        }
    }

    /// The one vCPU to kick for SPI `irq`: the routed one, or the lowest-numbered candidate of
    /// a 1-of-N or multi-target SPI (kicking all would be an IPI storm for one interrupt).
    fn spi_kick_target(&self, irq: &Irq) -> Option<usize> {
        match self.version {
            GicVersion::V3 if !IROUTER::IRM.is_set(irq.route) => {
                self.vcpu_by_mpidr(irq.route & AFFINITY_MASK)
            }
            _ => (0..self.vcpus.len()).find(|&v| self.spi_targets(irq, v)),
        }
    }

    /// Whether `intid` (bank `bank`) may be taken by vCPU `v`.
    pub(super) fn targets(&self, intid: u32, bank: usize, irq: &Irq, v: usize) -> bool {
        if intid < NR_PRIVATE {
            bank == v
        } else {
            self.spi_targets(irq, v)
        }
    }

    /// `irq` wants a list register of a vCPU it targets: it is active (the guest's deactivation
    /// must reach an LR), or pending, enabled and of an enabled group.
    pub(super) fn wants_lr(&self, irq: &Irq) -> bool {
        irq.owner.is_none()
            && (irq.active || (irq.pending_sw() && irq.enabled && self.group_enabled(irq)))
    }

    /// After a change to `intid` (bank `bank`): the vCPU that must look at it, marked dirty.
    /// That is the LR owner if it is in a list register (to merge or retract), else the vCPU it
    /// would now be delivered to, if any.
    pub(super) fn touch(&mut self, intid: u32, bank: usize) -> KickSet {
        let Some(irq) = self.irq(intid, bank) else {
            return KickSet::EMPTY;
        };
        let target = if let Some(owner) = irq.owner {
            Some(usize::from(owner))
        } else if !self.wants_lr(irq) {
            None
        } else if intid < NR_PRIVATE {
            Some(bank)
        } else {
            self.spi_kick_target(irq)
        };
        match target.and_then(|t| self.vcpus.get_mut(t).map(|s| (t, s))) {
            Some((t, state)) => {
                state.hint(intid);
                KickSet::single(t)
            }
            None => KickSet::EMPTY,
        }
    }

    /// Every vCPU is dirty and kicked (a global change such as GICD_CTLR's group enables).
    pub(super) fn touch_all(&mut self) -> KickSet {
        for v in &mut self.vcpus {
            v.rescan();
        }
        KickSet::all(self.vcpus.len())
    }

    /// If hardware-linked `irq` just stopped being pending and active in software without being
    /// in an LR, the physical interrupt must be deactivated by the hypervisor.
    pub(super) fn settle_hw(&mut self, intid: u32, bank: usize) {
        let Some(irq) = self.irq_mut(intid, bank) else {
            return;
        };
        if irq.hw_active && irq.owner.is_none() && !irq.latch && !irq.line && !irq.active {
            irq.hw_active = false;
            if let Some(p) = irq.hw {
                self.hw_deactivate.push(p);
            }
        }
    }

    // ----- device inputs -------------------------------------------------------------------

    /// Validates a hypervisor-side (INTID, vCPU) pair for a PPI or SPI: SGIs are generated by
    /// [`Vgic::sgi`] only; `vcpu` selects the bank of a PPI and is ignored for SPIs.
    fn device_irq(&self, intid: u32, vcpu: VcpuId) -> Result<usize, VgicError> {
        if intid < NR_SGIS || intid >= self.nr_intids() {
            return Err(VgicError::BadIntid(intid));
        }
        let bank = usize::from(vcpu.0);
        if intid < NR_PRIVATE && bank >= self.vcpus.len() {
            return Err(VgicError::BadVcpu(vcpu));
        }
        Ok(if intid < NR_PRIVATE { bank } else { 0 })
    }

    /// Drives the input line of PPI or SPI `intid` (for a PPI, `vcpu`'s). For a level-sensitive
    /// interrupt the line is the pending state (plus any ISPENDR latch); for an edge-triggered
    /// one a rising edge latches it pending. On a hardware-linked interrupt a high level is an
    /// injection ([`Vgic::inject_hw`]) and a low level lowers the line ([`Vgic::lower_hw_line`]).
    pub fn set_level(
        &mut self,
        intid: u32,
        vcpu: VcpuId,
        level: bool,
    ) -> Result<KickSet, VgicError> {
        let bank = self.device_irq(intid, vcpu)?;
        // No change (the common case: a timer line re-sampled on every wait) leaves the
        // index alone.
        if let Some(irq) = self.irq(intid, bank)
            && irq.hw.is_none()
            && irq.line == level
        {
            return Ok(KickSet::EMPTY);
        }
        self.change_level(intid, vcpu, bank, level)
    }

    /// [`Vgic::set_level`] past its no-change test (out of line: that test runs on every wait).
    #[inline(never)]
    fn change_level(
        &mut self,
        intid: u32,
        vcpu: VcpuId,
        bank: usize,
        level: bool,
    ) -> Result<KickSet, VgicError> {
        let irq = self
            .irq_mut(intid, bank)
            .ok_or(VgicError::BadIntid(intid))?;
        if irq.hw.is_some() {
            return if level {
                self.inject_hw(intid, vcpu)
            } else {
                Ok(self.lower_line(intid, bank))
            };
        }
        let rising = level && !irq.line;
        if irq.line == level {
            return Ok(KickSet::EMPTY);
        }
        irq.line = level;
        if irq.edge && rising {
            irq.latch = true;
        } else if irq.edge {
            return Ok(KickSet::EMPTY);
        }
        Ok(self.touch(intid, bank))
    }

    /// The physical interrupt linked to PPI or SPI `intid` (for a PPI, `vcpu`'s) was taken by
    /// the hypervisor and left active: its line is high (level-sensitive) or it had an edge.
    /// The list register will carry the HW bit, so the guest's deactivation deactivates the
    /// physical interrupt, and the physical GIC, which tracks the line from then on, signals
    /// the next instance. Unlinked interrupts get an edge ([`Vgic::inject_edge`]).
    pub fn inject_hw(&mut self, intid: u32, vcpu: VcpuId) -> Result<KickSet, VgicError> {
        let bank = self.take_hw(intid, vcpu)?;
        Ok(self.touch(intid, bank))
    }

    /// The state change of [`Vgic::inject_hw`] without the [`Vgic::touch`]; returns the bank.
    #[inline]
    pub(super) fn take_hw(&mut self, intid: u32, vcpu: VcpuId) -> Result<usize, VgicError> {
        let bank = self.device_irq(intid, vcpu)?;
        let irq = self
            .irq_mut(intid, bank)
            .ok_or(VgicError::BadIntid(intid))?;
        if irq.hw_level() {
            irq.line = true;
            irq.checked = false;
        } else {
            irq.latch = true;
        }
        if irq.hw.is_some() {
            irq.hw_active = true;
        }
        if intid >= NR_PRIVATE && irq.hw_level() {
            // Whichever vCPU places it must check for FlushResult::check_lines.
            for s in &mut self.vcpus {
                s.hw_spis = true;
            }
        }
        Ok(bank)
    }

    /// The line of hardware-linked level-sensitive PPI or SPI `intid` (for a PPI, `vcpu`'s) is
    /// low now (the guest disabled or masked its timer, moved CVAL ahead, cleared its device):
    /// the pending state falls with it. An instance only pending in a list register is taken
    /// back at the owner's next flush; the physical interrupt, left active by the hypervisor,
    /// is handed to [`Vgic::take_hw_deactivation`] (at once, or by that flush) so that the
    /// next rise of the line is signalled. An instance the guest has acknowledged is left to
    /// its deactivation. Nothing happens to an interrupt without a hardware link or whose
    /// line is not high.
    pub fn lower_hw_line(&mut self, intid: u32, vcpu: VcpuId) -> Result<KickSet, VgicError> {
        let bank = self.device_irq(intid, vcpu)?;
        Ok(self.lower_line(intid, bank))
    }

    pub(super) fn lower_line(&mut self, intid: u32, bank: usize) -> KickSet {
        match self.irq(intid, bank) {
            Some(irq) if irq.hw_level() && irq.line => {}
            _ => return KickSet::EMPTY,
        }
        if let Some(irq) = self.irq_mut(intid, bank) {
            irq.line = false;
        }
        self.settle_hw(intid, bank);
        self.touch(intid, bank)
    }

    /// Installs the function that reads hardware-linked level lines (see [`LineSampler`]).
    /// Wiring, like [`Vgic::set_hw`]: kept across [`Vgic::reset`].
    pub fn set_line_sampler(&mut self, sampler: LineSampler) {
        self.sampler = Some(sampler);
    }

    /// Re-samples the hardware-linked level lines of INTIDs `first..first + 32` (bank `bank`)
    /// that are high in software, for a read of their pending state by vCPU `accessor`, and
    /// lowers those found low. Kicks go to [`Vgic::take_kicks`].
    pub(super) fn resample_word(&mut self, first: u32, bank: usize, accessor: usize) {
        let Some(sample) = self.sampler else {
            return;
        };
        for intid in first..first.saturating_add(32) {
            let Some(irq) = self.irq(intid, bank) else {
                break;
            };
            let Some(p) = irq.hw.filter(|_| irq.hw_level() && irq.line) else {
                continue;
            };
            let local = intid >= NR_PRIVATE || bank == accessor;
            if sample(p, local) == Some(false) {
                let kicks = self.lower_line(intid, bank);
                self.mmio_kicks = self.mmio_kicks.union(kicks);
            }
        }
    }

    /// Makes PPI or SPI `intid` pending once (for a PPI, `vcpu`'s), whatever its configuration:
    /// an emulated timer's expiry, or a physical interrupt the hypervisor took and left active
    /// for a hardware-linked virtual one (then the guest's EOI deactivates it).
    pub fn inject_edge(&mut self, intid: u32, vcpu: VcpuId) -> Result<KickSet, VgicError> {
        let bank = self.latch_edge(intid, vcpu)?;
        Ok(self.touch(intid, bank))
    }

    /// The state change of [`Vgic::inject_edge`] without the [`Vgic::touch`]; returns the
    /// bank.
    pub(super) fn latch_edge(&mut self, intid: u32, vcpu: VcpuId) -> Result<usize, VgicError> {
        let bank = self.device_irq(intid, vcpu)?;
        let irq = self
            .irq_mut(intid, bank)
            .ok_or(VgicError::BadIntid(intid))?;
        irq.latch = true;
        if irq.hw.is_some() {
            irq.hw_active = true;
        }
        if intid >= NR_PRIVATE && irq.hw_level() {
            // Whichever vCPU places it must check for FlushResult::check_lines.
            for s in &mut self.vcpus {
                s.hw_spis = true;
            }
        }
        Ok(bank)
    }

    /// Links PPI or SPI `intid` (for a PPI, `vcpu`'s) to physical INTID `pintid`, or unlinks it.
    /// Its list registers then carry the HW bit, so the guest's EOI deactivates the physical
    /// interrupt. Meant for VM construction, while the interrupt is idle; changing the link of
    /// an interrupt whose physical side was taken and is not in an LR hands the old physical
    /// INTID to [`Vgic::take_hw_deactivation`].
    pub fn set_hw(
        &mut self,
        intid: u32,
        vcpu: VcpuId,
        pintid: Option<u32>,
    ) -> Result<(), VgicError> {
        if let Some(p) = pintid
            && !(NR_SGIS..1020).contains(&p)
        {
            return Err(VgicError::BadIntid(p));
        }
        let bank = self.device_irq(intid, vcpu)?;
        let irq = self
            .irq_mut(intid, bank)
            .ok_or(VgicError::BadIntid(intid))?;
        if irq.hw == pintid {
            return Ok(());
        }
        let old = irq.hw.filter(|_| irq.hw_active && irq.owner.is_none());
        if irq.owner.is_none() || pintid.is_none() {
            irq.hw_active = false;
            irq.line = false;
        }
        irq.hw = pintid;
        self.hw_deactivate.extend(old);
        Ok(())
    }

    // ----- SGIs ----------------------------------------------------------------------------

    /// A trapped GICv3 SGI register write by `sender`: ICC_SGI1R_EL1 (`group1` = true) or
    /// ICC_SGI0R_EL1 (`group1` = false). Layout (IHI 0069, ICC_SGI1R_EL1): TargetList
    /// 15:0, Aff1 23:16, INTID 27:24, Aff2 39:32, IRM 40 (all PEs but the sender), RS 47:44
    /// (TargetList bit n addresses Aff0 = RS * 16 + n), Aff3 55:48. Targets that match no vCPU
    /// are ignored.
    ///
    /// Group rule with a single security state (DS=1), as KVM: a Group 1 request may set SGIs
    /// of either group pending; a Group 0 request only Group 0 ones. ICC_ASGI1R_EL1 targets the
    /// other security state, which does not exist here; callers may treat it as either.
    ///
    /// Ignored on a GICv2 VM (its SGIs are GICD_SGIR writes).
    pub fn sgi(&mut self, sender: VcpuId, value: u64, group1: bool) -> KickSet {
        let Some(sender) = self.vcpu_index(sender) else {
            return KickSet::EMPTY;
        };
        if self.version != GicVersion::V3 {
            return KickSet::EMPTY;
        }
        let intid = u32::try_from(ICC_SGI1R::INTID.read(value)).unwrap_or(0);
        let targets: u64 = if ICC_SGI1R::IRM.is_set(value) {
            KickSet::all(self.vcpus.len()).0 & !KickSet::single(sender).0
        } else {
            let aff321 = (ICC_SGI1R::Aff3.read(value) << 32)
                | (ICC_SGI1R::Aff2.read(value) << 16)
                | (ICC_SGI1R::Aff1.read(value) << 8);
            let rs = ICC_SGI1R::RS.read(value);
            let list = ICC_SGI1R::TargetList.read(value);
            self.vcpus
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    let aff0 = s.mpidr & 0xFF;
                    s.mpidr & !0xFF == aff321 && aff0 >> 4 == rs && list & (1 << (aff0 & 0xF)) != 0
                })
                .fold(0, |acc, (i, _)| acc | KickSet::single(i).0)
        };
        let mut kicks = KickSet::EMPTY;
        for t in BitIter(targets) {
            let Some(irq) = self.irq_mut(intid, t) else {
                continue;
            };
            if irq.group1 && !group1 {
                continue;
            }
            irq.latch = true;
            kicks = kicks.union(self.touch(intid, t));
        }
        kicks
    }

    /// [`Vgic::sgi`] for ICC_SGI1R_EL1.
    pub fn sgi1r(&mut self, sender: VcpuId, value: u64) -> KickSet {
        self.sgi(sender, value, true)
    }

    /// SGI `intid` from `sender` to every vCPU in `targets` (GICv2, GICD_SGIR / SPENDSGIR).
    pub(super) fn sgi_v2(&mut self, sender: usize, intid: u32, targets: u64) -> KickSet {
        let Some(source_bit) = u8::try_from(sender)
            .ok()
            .and_then(|s| 1u8.checked_shl(s.into()))
        else {
            return KickSet::EMPTY;
        };
        let mut kicks = KickSet::EMPTY;
        for t in BitIter(targets & KickSet::all(self.vcpus.len()).0) {
            if let Some(irq) = self.irq_mut(intid, t) {
                irq.sgi_sources |= source_bit;
                kicks = kicks.union(self.touch(intid, t));
            }
        }
        kicks
    }
}
