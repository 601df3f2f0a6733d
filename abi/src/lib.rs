//! The interface between elvisor and the guests it runs, as both sides must agree on it: the
//! vendor hypervisor service's function ids, UID and revision; the guest physical memory map
//! the hypervisor lays out; the Image header fields the loader reads; the device-tree
//! properties of our own that a guest may read.
//!
//! One definition for the hypervisor (the root workspace) and the guest runtime and test
//! guests (the guests/ workspace), so the two cannot drift apart. Standard SMCCC/PSCI ids are
//! not here: both sides take those from the `smccc` crate.
#![no_std]
#![forbid(unsafe_code)]

/// elvisor's vendor-specific hypervisor service (SMCCC owner 6, DEN0028 §6), fast SMC32 calls
/// through `hvc #0` (or a trapped `smc #0`).
pub mod hypercall {
    /// Give up the rest of the time slice to the next runnable vCPU on this physical CPU
    /// (returns SUCCESS). Ours.
    pub const YIELD: u32 = 0x8600_0001;
    /// Vendor hypervisor service call count (DEN0028 §6.2): x0 = [`CALL_COUNT`].
    pub const CALL_COUNT_FID: u32 = 0x8600_ff00;
    /// Vendor hypervisor service UID: w0..w3 = [`UID`].
    pub const UID_FID: u32 = 0x8600_ff01;
    /// Vendor hypervisor service revision: w0 = major, w1 = minor ([`REVISION`]).
    pub const REVISION_FID: u32 = 0x8600_ff03;

    /// elvisor's vendor hypervisor UID (a random UUID, 61a9c2f4-3e4e-4b6f-9d0e-6c7576697361),
    /// as the four 32-bit words returned in w0..w3 (SMCCC §6).
    pub const UID: [u32; 4] = [0xf4c2_a961, 0x6f4b_4e3e, 0x7576_0e9d, 0x6173_6976];
    /// Revision of the vendor hypervisor interface: (major, minor).
    pub const REVISION: (u32, u32) = (0, 1);
    /// How many calls the service has: YIELD and the three queries.
    pub const CALL_COUNT: u64 = 4;

    /// An SMCCC id that elvisor never allocates (an unallocated SiP service call): the null
    /// hypercall the bench guest times, answered NOT_SUPPORTED on the exit fast path.
    pub const UNALLOCATED_SIP: u32 = 0x8200_ffff;
}

/// The guest physical memory map elvisor gives every VM (that of QEMU `virt`, so one guest
/// image runs under elvisor and on bare QEMU alike):
///
/// ```text
///   0x0800_0000  GIC distributor, 64 KiB (GICv2 guests see 4 KiB)
///   0x0801_0000  GICv2 CPU interface (the hardware GICV), 8 KiB
///   0x080a_0000  GICv3 redistributors, 128 KiB per vCPU
///   0x0900_0000  PL011 UART (emulated), 4 KiB, SPI 1
///   0x0903_0000  PL061 GPIO (emulated), 4 KiB, SPI 7: line 3 is the power button
///   0x0a00_0000  virtio-mmio slots, 0x200 each, SPI 16 + n
///   0x0b00_0000  shared-memory doorbells, 4 KiB each, SPI 48 + k (the VM's k-th mapping)
///   0x0b10_0000  PCI ECAM (bus 0), 1 MiB, for mappings with `elvisor,pci`
///   0x0b20_0000  their BAR0 register windows, 4 KiB each (device k: the k-th mapping)
///   0x4000_0000  RAM
///                  +0x8_0000 (TEXT_OFFSET): the image
///                  top - 2 MiB: the device tree
/// ```
pub mod layout {
    /// GIC distributor (GICv3: 64 KiB; GICv2: 4 KiB in the guest's device tree).
    pub const GICD_BASE: u64 = 0x0800_0000;
    pub const GICD_SIZE: u64 = 0x1_0000;
    pub const GICD_V2_SIZE: u64 = 0x1000;
    /// GICv2 CPU interface (8 KiB: GICC_DIR is at 0x1000).
    pub const GICC_BASE: u64 = 0x0801_0000;
    pub const GICC_SIZE: u64 = 0x2000;
    /// GICv3 redistributors, one 128 KiB frame pair (RD_base + SGI_base) per vCPU.
    pub const GICR_BASE: u64 = 0x080a_0000;
    pub const GICR_STRIDE: u64 = 0x2_0000;
    /// The console PL011.
    pub const UART_BASE: u64 = 0x0900_0000;
    pub const UART_SIZE: u64 = 0x1000;
    /// INTID of the UART's SPI (SPI 1).
    pub const UART_INTID: u32 = 33;
    /// The PL061 GPIO controller with the power button, where QEMU virt has its own.
    pub const GPIO_BASE: u64 = 0x0903_0000;
    pub const GPIO_SIZE: u64 = 0x1000;
    /// INTID of the GPIO controller's SPI (SPI 7).
    pub const GPIO_INTID: u32 = 39;
    /// The GPIO line of the power button (gpio-keys KEY_POWER, active high), as on QEMU virt.
    pub const POWER_BUTTON_LINE: u8 = 3;
    /// The doorbell page of a VM's k-th shared-memory mapping (k = 0..[`DOORBELL_COUNT`]) is
    /// at `DOORBELL_BASE + k * DOORBELL_SIZE`, its interrupt INTID `DOORBELL_INTID + k`
    /// (SPI 48 + k, level). See [`super::doorbell`] for its registers.
    pub const DOORBELL_BASE: u64 = 0x0b00_0000;
    pub const DOORBELL_SIZE: u64 = 0x1000;
    pub const DOORBELL_INTID: u32 = 80;
    /// Most shared-memory regions one VM maps.
    pub const DOORBELL_COUNT: u64 = 8;
    /// The emulated PCI host (`pci-host-ecam-generic`, bus 0 only) of VMs with an
    /// ivshmem-like function: its ECAM window, then the BAR0 register windows, device k's
    /// (the VM's k-th mapping) at `PCI_BAR0_BASE + k * PCI_BAR0_SIZE`.
    pub const PCI_ECAM_BASE: u64 = 0x0b10_0000;
    pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
    pub const PCI_BAR0_BASE: u64 = 0x0b20_0000;
    pub const PCI_BAR0_SIZE: u64 = 0x1000;
    /// Guest RAM base.
    pub const RAM_BASE: u64 = 0x4000_0000;
    /// Room reserved at the top of RAM for the device tree.
    pub const FDT_SLOT: u64 = 2 << 20;
}

/// The arm64 Image header fields the loader reads and the guests write (Linux
/// Documentation/arch/arm64/booting.rst).
pub mod image {
    /// Header magic "ARM\x64", the little-endian u32 at offset 0x38.
    pub const MAGIC: u32 = 0x644d_5241;
    /// `text_offset` the guests are linked for, and the one a header with `image_size` 0
    /// (pre-3.17 Linux) implies: the image is loaded at RAM base + 0x8_0000.
    pub const TEXT_OFFSET: u64 = 0x8_0000;
    /// Where a guest image linked for elvisor starts: [`super::layout::RAM_BASE`] +
    /// [`TEXT_OFFSET`].
    pub const LOAD_ADDRESS: u64 = super::layout::RAM_BASE + TEXT_OFFSET;
}

/// Device-tree properties of our own in the tree elvisor generates for a guest.
pub mod dt {
    /// `/chosen` property: how many times this VM has been reset with PSCI SYSTEM_RESET.
    pub const RESET_COUNT_PROPERTY: &str = "elvisor,reset-count";
}

/// The doorbell page elvisor gives a VM for each shared-memory region it maps (layout
/// [`layout::DOORBELL_BASE`]): 32-bit registers, anything else reads as zero and ignores writes.
///
/// ```text
///   0x00 MAGIC   RO  0x4c42_4445 ("EDBL" in memory)
///   0x04 INDEX   RO  this VM's index in the region's map list (its doorbell number)
///   0x08 PEERS   RO  how many VMs map the region (indices 0..PEERS)
///   0x0c FLAGS   RO  bit 0: this VM's mapping is read-only
///   0x10 RING    WO  value n < PEERS: sets bit INDEX in VM n's STATUS and raises its interrupt;
///                    other values are ignored
///   0x14 STATUS  RO  bit i set: VM i rang this doorbell since the bit was last acknowledged;
///                    the interrupt (level) is high while STATUS is nonzero
///   0x18 ACK     WO  clears the STATUS bits written as 1
/// ```
pub mod doorbell {
    pub const MAGIC: u32 = 0x4c42_4445;
    pub const REG_MAGIC: u64 = 0x00;
    pub const REG_INDEX: u64 = 0x04;
    pub const REG_PEERS: u64 = 0x08;
    pub const REG_FLAGS: u64 = 0x0c;
    pub const REG_RING: u64 = 0x10;
    pub const REG_STATUS: u64 = 0x14;
    pub const REG_ACK: u64 = 0x18;
    /// FLAGS bit 0.
    pub const FLAG_READ_ONLY: u32 = 1;
    /// Most VMs that map one region (STATUS has a bit each).
    pub const MAX_PEERS: usize = 32;
    /// Device-tree `compatible` of the node that describes a mapping to a guest.
    pub const COMPATIBLE: &str = "elvisor,shmem";
}
