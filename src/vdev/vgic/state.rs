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

pub use super::kick::{KickSet, low_bits};
use super::lr::LrState;
use super::regs::AFFINITY_MASK;
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
    /// vCPU i has MPIDR i, so SGI targets need no search ([`Vgic::sgi_targets_by_index`]).
    pub(super) mpidr_is_index: bool,
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
            mpidr_is_index: config
                .mpidrs
                .iter()
                .enumerate()
                .all(|(i, &m)| m == i as u64),
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
}
