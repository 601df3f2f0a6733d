//! Where the vGIC's interrupts may go: the distributor's group enables, SPI targets
//! (GICv3 IROUTER, GICv2 ITARGETSR), which vCPU a change kicks, and which interrupts want a
//! list register.

use super::regs::{AFFINITY_MASK, IROUTER};
use super::state::GicVersion;
use super::state::{Irq, NR_PRIVATE, Vgic};

impl Vgic {
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

    /// The one vCPU to kick for SPI `irq`: the routed one, or the lowest-numbered candidate of
    /// a 1-of-N or multi-target SPI (kicking all would be an IPI storm for one interrupt).
    pub(super) fn spi_kick_target(&self, irq: &Irq) -> Option<usize> {
        match self.version {
            GicVersion::V3 if !IROUTER::IRM.is_set(irq.route) => {
                self.vcpu_by_mpidr(irq.route & AFFINITY_MASK)
            }
            _ => (0..self.vcpus.len()).find(|&v| self.spi_targets(irq, v)),
        }
    }
}
