//! The vGIC's MMIO windows on a VM's bus: the distributor and (GICv3) the redistributor
//! frames, both views of one shared [`Vgic`].

use alloc::sync::Arc;

use spin::Mutex;

use super::vgic::Vgic;
use super::{AccessWidth, MmioDevice, MmioError, VcpuId};

/// GICD: 64 KiB.
pub struct GicdWindow {
    vgic: Arc<Mutex<Vgic>>,
}

impl GicdWindow {
    pub fn new(vgic: Arc<Mutex<Vgic>>) -> Self {
        Self { vgic }
    }
}

impl MmioDevice for GicdWindow {
    fn name(&self) -> &'static str {
        "gicd"
    }
    fn size_bytes(&self) -> u64 {
        super::vgic::GICD_SIZE_BYTES
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
    // The shared vGIC is reset by its owner, not through each window.
}

/// GICR: one 128 KiB frame pair (RD_base, SGI_base) per vCPU.
pub struct GicrWindow {
    vgic: Arc<Mutex<Vgic>>,
    vcpus: u64,
}

impl GicrWindow {
    pub fn new(vgic: Arc<Mutex<Vgic>>, vcpus: u64) -> Self {
        Self { vgic, vcpus }
    }
}

impl MmioDevice for GicrWindow {
    fn name(&self) -> &'static str {
        "gicr"
    }
    fn size_bytes(&self) -> u64 {
        super::vgic::GICR_FRAME_BYTES * self.vcpus
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
}
