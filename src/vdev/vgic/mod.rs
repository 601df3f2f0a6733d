//! The virtual GIC: a software distributor (and GICv3 redistributors) per VM, and the
//! list-register management that injects its interrupts through the hardware's virtual CPU
//! interface. Pure logic; the arch code moves [`Lr`] values in and out of `ICH_LR<n>_EL2` /
//! `GICH_LR<n>` and sets the maintenance-interrupt controls.
//!
//! What the guest sees (guest physical addresses are the hypervisor's choice; these are ours):
//!
//! ```text
//!   GICv3                                        GICv2
//!   0x0800_0000  GICD, 64 KiB  (this module)     0x0800_0000  GICD, 64 KiB (this module)
//!   0x080A_0000  GICR, 128 KiB per vCPU          0x0801_0000  GICC = the hardware GICV,
//!                (this module)                                mapped by stage 2
//!   CPU interface: ICV_* system registers
//!   (ICC_SGI1R_EL1 etc. trap: Vgic::sgi)
//! ```
//!
//! Files: `state` (the `Vgic` type, per-interrupt and per-vCPU state, construction and reset),
//! `inputs` (device inputs: lines, edges, hardware links; SGI generation), `routing` (group
//! enables, SPI targets, kick targets), `index` (the scan index of interrupts that may want an
//! LR), `kick` (vCPU sets), `dist` (GICD), `redist` (GICR), `access` (width policy and the
//! per-INTID register arrays), `lr` (the list-register model and the contract with the arch
//! side), `flush` (filling LRs before entry), `sync` (folding them back after an exit, and
//! what is deliverable), `regs` (register layouts).
//!
//! Design choices:
//!
//! * **GICv3 runs with affinity routing and one security state**: GICD_CTLR.ARE and .DS are
//!   RAO/WI; IGRPMODR and NSACR are RAZ/WI; the SGI/PPI words of the GICD are RAZ/WI. No LPIs,
//!   no ITS, no MBIs, no extended ranges.
//! * **Priorities have five bits** (the top five of the byte; the low three are RAZ/WI), like
//!   QEMU's GIC and the virtual CPU interface of QEMU and the GIC-600 (ICH_VTR_EL2.PRIbits = 4),
//!   and exactly what GICH_LR.Priority holds.
//! * **IIDR**: 0x4500_043B on GICv3 (Arm's implementer code as KVM uses it, with our ProductID
//!   'E', matching none of Linux's erratum workarounds); 0x0200_043B on GICv2 (GIC-400 style).
//! * **1-of-N routing** (GICD_IROUTER.IRM = 1, GICD_TYPER.No1N = 0): any vCPU whose
//!   redistributor is awake may take the SPI, the first to flush wins, the lowest-numbered one
//!   is kicked. GICv2 SPIs with several ITARGETSR bits behave the same way.
//! * **Access widths**: see `access`; unsupported widths abort (`MmioError::BadAccess`),
//!   reserved offsets are RAZ/WI.
//! * **Kicks**: every operation that can make an interrupt deliverable (or must retract one from
//!   an LR) reports the vCPUs to look at, as a [`KickSet`]: returned by the device inputs and
//!   SGI functions, accumulated for [`Vgic::take_kicks`] by MMIO accesses, and in
//!   [`FlushResult::kick`] for retractions. Those vCPUs are also marked for
//!   [`Vgic::needs_flush`].
//! * **Hardware-linked interrupts** ([`Vgic::set_hw`]) are injected with
//!   [`Vgic::inject_hw`] after the hypervisor took (and left active) the physical one; the LR
//!   carries the HW bit, so the guest's deactivation deactivates the physical interrupt. When
//!   the guest instead makes the virtual one inactive and not pending by other means, the
//!   physical INTID is handed out by [`Vgic::take_hw_deactivation`].
//! * **Hardware-linked level interrupts follow their line** (the virtual timer, passthrough
//!   level SPIs): the injection raises the software line, and a [`LineSampler`] re-samples it
//!   where the line may have fallen without the guest touching the vGIC: on a guest read of
//!   the pending registers, and in [`Vgic::sync`] for an entry still pending in an LR. A
//!   fallen line takes the pending state with it (the LR entry is retired, the physical
//!   interrupt deactivated so its next rise is signalled), as on a GIC without
//!   virtualization. Between exits the LR is what the guest sees; nothing can follow a line
//!   the guest lowers and then acknowledges without an exit in between.
//!
//! Locking is the caller's: one `Vgic` per VM behind a lock ([`SharedVgic`]); [`GicdWindow`]
//! and [`GicrWindow`] put it on the [`MmioBus`](super::MmioBus).
#![forbid(unsafe_code)]

mod access;
mod dist;
mod flush;
mod index;
mod inputs;
mod kick;
mod lr;
mod redist;
mod regs;
mod routing;
mod state;
mod sync;

#[cfg(test)]
mod tests;

use alloc::sync::Arc;

use crate::arch::aarch64::sync::Mutex;

pub use dist::{GICD_IIDR_V2, GICD_IIDR_V3, GICD_SIZE_BYTES};
pub use lr::{FlushResult, Lr, LrState, MAX_LRS, decode_v2, decode_v3, encode_v2, encode_v3};
pub use redist::GICR_FRAME_BYTES;
pub use state::{
    GicVersion, KickSet, LineSampler, MAX_SPIS, MAX_VCPUS_V2, MAX_VCPUS_V3, NR_PRIVATE, NR_SGIS,
    PRIORITY_MASK, Vgic, VgicConfig, VgicError, low_bits,
};

use super::{AccessWidth, MmioDevice, MmioError, VcpuId};

/// A VM's vGIC, shared by its MMIO windows and the vCPUs' entry/exit paths.
pub type SharedVgic = Arc<Mutex<Vgic>>;

/// The distributor window of a [`SharedVgic`], for the [`MmioBus`](super::MmioBus).
pub struct GicdWindow {
    vgic: SharedVgic,
}

impl GicdWindow {
    pub fn new(vgic: SharedVgic) -> Self {
        Self { vgic }
    }
}

impl MmioDevice for GicdWindow {
    fn name(&self) -> &'static str {
        "gicd"
    }
    fn size_bytes(&self) -> u64 {
        GICD_SIZE_BYTES
    }
    fn read(&mut self, vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        self.vgic.lock().dist_read(vcpu, offset, width)
    }
    fn write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        self.vgic.lock().dist_write(vcpu, offset, width, value)
    }
    fn reset(&mut self) {
        self.vgic.lock().reset();
    }
}

/// The redistributor window (GICv3) of a [`SharedVgic`]: one frame pair per vCPU.
pub struct GicrWindow {
    vgic: SharedVgic,
    size_bytes: u64,
}

impl GicrWindow {
    pub fn new(vgic: SharedVgic) -> Self {
        let size_bytes = vgic.lock().redist_size_bytes();
        Self { vgic, size_bytes }
    }
}

impl MmioDevice for GicrWindow {
    fn name(&self) -> &'static str {
        "gicr"
    }
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn read(&mut self, vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        self.vgic.lock().redist_read(vcpu, offset, width)
    }
    fn write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        self.vgic.lock().redist_write(vcpu, offset, width, value)
    }
    fn reset(&mut self) {
        // The GICD window resets the shared state too; resetting twice is harmless.
        self.vgic.lock().reset();
    }
}
