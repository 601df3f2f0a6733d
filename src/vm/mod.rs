//! Virtual machines: configuration, vCPUs, the exit dispatcher, SMCCC/PSCI, guest images and
//! guest device trees.

pub mod config;
pub mod debug;
pub mod entropy;
pub mod exit;
pub mod fdt;
pub mod idregs;
pub mod loader;
pub mod placement;
pub mod pmu;
pub mod power;
pub mod psci;
pub mod sched;
pub mod sve;
pub mod sysreg;
pub mod timer;
pub mod vcpu;

use core::fmt;

/// Index of a VM (its position in the configuration).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct VmId(pub u16);

/// Index of a vCPU inside its VM.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct VcpuId(pub u16);

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm{}", self.0)
    }
}

/// The guest physical memory map every VM sees (QEMU virt-like, so guests need no changes).
///
/// ```text
///   0x0800_0000  GIC distributor (emulated)
///   0x0801_0000  GICv2 CPU interface (hardware GICV via stage 2)
///   0x080A_0000  GICv3 redistributors (emulated), 128 KiB per vCPU
///   0x0900_0000  PL011 UART (emulated), 4 KiB, SPI 1
///   0x0903_0000  PL061 GPIO (emulated), 4 KiB, SPI 7: line 3 is the power button
///                  (absent with `elvisor,power-button = <0>`)
///   0x0A00_0000  virtio-mmio slots (kernel::virtio)
///   0x0B00_0000  doorbell pages of the shared-memory mappings, 4 KiB each, SPI 48 + k
///                  (kernel::shmem; the regions themselves are where the VM node says)
///   0x4000_0000  RAM, `memory` bytes from the VM node
///                  +0x8_0000 (or the Image header's text_offset): kernel image
///                  top - 2 MiB: device tree (2 MiB slot)
///                  below the DTB: initrd, if any
/// ```
///
/// The numbers are `elvisor_abi::layout`'s, which the guests build against too; here they get
/// their address type.
pub mod layout {
    use crate::mm::GuestPhysAddr;
    use elvisor_abi::layout as abi;

    /// GIC distributor (GICv3: 64 KiB; GICv2: 4 KiB in the guest's device tree).
    pub const GICD_BASE: GuestPhysAddr = GuestPhysAddr(abi::GICD_BASE);
    pub use abi::{GICD_SIZE, GICD_V2_SIZE};
    /// GICv2 CPU interface: the hardware GICV, mapped by stage 2 (8 KiB: GICC_DIR is at 0x1000).
    pub const GICC_BASE: GuestPhysAddr = GuestPhysAddr(abi::GICC_BASE);
    pub use abi::GICC_SIZE;
    /// GICv3 redistributors, one 128 KiB frame pair (RD_base + SGI_base) per vCPU.
    pub const GICR_BASE: GuestPhysAddr = GuestPhysAddr(abi::GICR_BASE);
    pub use abi::GICR_STRIDE;
    pub const UART_BASE: GuestPhysAddr = GuestPhysAddr(abi::UART_BASE);
    /// Size and INTID (SPI 1) of the UART.
    pub use abi::{UART_INTID, UART_SIZE};
    /// The PL061 GPIO controller (QEMU virt's address and SPI 7) and its power-button line.
    pub const GPIO_BASE: GuestPhysAddr = GuestPhysAddr(abi::GPIO_BASE);
    /// Doorbell pages of the VM's shared-memory mappings (`vdev::doorbell`): mapping k's at
    /// [`doorbell_base`]`(k)`, its level-sensitive interrupt INTID `DOORBELL_INTID + k`.
    pub use abi::{DOORBELL_COUNT, DOORBELL_INTID, DOORBELL_SIZE};
    pub use abi::{GPIO_INTID, GPIO_SIZE, POWER_BUTTON_LINE};
    /// The emulated PCI host of VMs with `elvisor,pci` mappings (`vdev::pci`).
    pub use abi::{PCI_BAR0_BASE, PCI_BAR0_SIZE, PCI_ECAM_BASE};
    /// The doorbell page of the VM's k-th shared-memory mapping.
    pub const fn doorbell_base(k: usize) -> GuestPhysAddr {
        GuestPhysAddr(abi::DOORBELL_BASE + abi::DOORBELL_SIZE * k as u64)
    }
    pub const RAM_BASE: GuestPhysAddr = GuestPhysAddr(abi::RAM_BASE);
    /// Room reserved at the top of RAM for the device tree.
    pub use abi::FDT_SLOT;
}
