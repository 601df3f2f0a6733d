//! Register layouts of the GICv2 (IHI 0048B) and GICv3 (IHI 0069) distributor, redistributor,
//! SGI-generation system registers and list registers, named as in the specifications.

use tock_registers::fields::Field;
use tock_registers::{RegisterLongName, register_bitfields};

register_bitfields! [u32,
    /// GICD_CTLR of a GICv3 with a single security state (DS=1) (IHI 0069).
    pub GICD_CTLR [
        EnableGrp0 OFFSET(0) NUMBITS(1) [],
        EnableGrp1 OFFSET(1) NUMBITS(1) [],
        ARE OFFSET(4) NUMBITS(1) [],
        DS OFFSET(6) NUMBITS(1) [],
        E1NWF OFFSET(7) NUMBITS(1) [],
        RWP OFFSET(31) NUMBITS(1) []
    ],
    /// GICD_CTLR of a GICv2 without the Security Extensions (IHI 0048B).
    pub GICD_CTLR_V2 [
        EnableGrp0 OFFSET(0) NUMBITS(1) [],
        EnableGrp1 OFFSET(1) NUMBITS(1) []
    ],
    /// GICD_TYPER (IHI 0069); the GICv2 layout (IHI 0048B) is its low 16 bits.
    pub GICD_TYPER [
        ITLinesNumber OFFSET(0) NUMBITS(5) [],
        CPUNumber OFFSET(5) NUMBITS(3) [],
        ESPI OFFSET(8) NUMBITS(1) [],
        NMI OFFSET(9) NUMBITS(1) [],
        SecurityExtn OFFSET(10) NUMBITS(1) [],
        num_LPIs OFFSET(11) NUMBITS(5) [],
        MBIS OFFSET(16) NUMBITS(1) [],
        LPIS OFFSET(17) NUMBITS(1) [],
        DVIS OFFSET(18) NUMBITS(1) [],
        IDbits OFFSET(19) NUMBITS(5) [],
        A3V OFFSET(24) NUMBITS(1) [],
        No1N OFFSET(25) NUMBITS(1) [],
        RSS OFFSET(26) NUMBITS(1) [],
        ESPI_range OFFSET(27) NUMBITS(5) []
    ],
    /// GICD_IIDR / GICR_IIDR.
    pub IIDR [
        Implementer OFFSET(0) NUMBITS(12) [],
        Revision OFFSET(12) NUMBITS(4) [],
        Variant OFFSET(16) NUMBITS(4) [],
        ProductID OFFSET(24) NUMBITS(8) []
    ],
    /// GICD_SGIR (GICv2) (IHI 0048B).
    pub GICD_SGIR [
        SGIINTID OFFSET(0) NUMBITS(4) [],
        NSATT OFFSET(15) NUMBITS(1) [],
        CPUTargetList OFFSET(16) NUMBITS(8) [],
        TargetListFilter OFFSET(24) NUMBITS(2) [
            List = 0,
            AllButSelf = 1,
            SelfOnly = 2
        ]
    ],
    /// GICR_WAKER (IHI 0069).
    pub GICR_WAKER [
        ProcessorSleep OFFSET(1) NUMBITS(1) [],
        ChildrenAsleep OFFSET(2) NUMBITS(1) []
    ],
    /// `GICH_LR<n>` (GICv2 virtual interface control) (IHI 0048B).
    pub GICH_LR [
        VirtualID OFFSET(0) NUMBITS(10) [],
        PhysicalID OFFSET(10) NUMBITS(10) [],
        /// The low bits of PhysicalID when HW = 0: the source CPU of an SGI.
        CPUID OFFSET(10) NUMBITS(3) [],
        /// Bit 19 (the top of PhysicalID) when HW = 0: maintenance interrupt on EOI.
        EOI OFFSET(19) NUMBITS(1) [],
        Priority OFFSET(23) NUMBITS(5) [],
        State OFFSET(28) NUMBITS(2) [],
        Grp1 OFFSET(30) NUMBITS(1) [],
        HW OFFSET(31) NUMBITS(1) []
    ]
];

register_bitfields! [u64,
    /// GICR_TYPER (IHI 0069).
    pub GICR_TYPER [
        PLPIS OFFSET(0) NUMBITS(1) [],
        VLPIS OFFSET(1) NUMBITS(1) [],
        Dirty OFFSET(2) NUMBITS(1) [],
        DirectLPI OFFSET(3) NUMBITS(1) [],
        Last OFFSET(4) NUMBITS(1) [],
        DPGS OFFSET(5) NUMBITS(1) [],
        Processor_Number OFFSET(8) NUMBITS(16) [],
        PPInum OFFSET(27) NUMBITS(5) [],
        Affinity_Value OFFSET(32) NUMBITS(32) []
    ],
    /// `GICD_IROUTER<n>` (IHI 0069). The affinity fields sit where MPIDR_EL1 has them.
    pub IROUTER [
        Aff0 OFFSET(0) NUMBITS(8) [],
        Aff1 OFFSET(8) NUMBITS(8) [],
        Aff2 OFFSET(16) NUMBITS(8) [],
        IRM OFFSET(31) NUMBITS(1) [],
        Aff3 OFFSET(32) NUMBITS(8) []
    ],
    /// ICC_SGI1R_EL1 / ICC_SGI0R_EL1 / ICC_ASGI1R_EL1 (IHI 0069).
    pub ICC_SGI1R [
        TargetList OFFSET(0) NUMBITS(16) [],
        Aff1 OFFSET(16) NUMBITS(8) [],
        INTID OFFSET(24) NUMBITS(4) [],
        Aff2 OFFSET(32) NUMBITS(8) [],
        IRM OFFSET(40) NUMBITS(1) [],
        RS OFFSET(44) NUMBITS(4) [],
        Aff3 OFFSET(48) NUMBITS(8) []
    ],
    /// `ICH_LR<n>_EL2` (IHI 0069).
    pub ICH_LR [
        vINTID OFFSET(0) NUMBITS(32) [],
        pINTID OFFSET(32) NUMBITS(13) [],
        /// Bit 41 (inside pINTID) when HW = 0: maintenance interrupt on deactivation.
        EOI OFFSET(41) NUMBITS(1) [],
        Priority OFFSET(48) NUMBITS(8) [],
        Group OFFSET(60) NUMBITS(1) [],
        HW OFFSET(61) NUMBITS(1) [],
        State OFFSET(62) NUMBITS(2) []
    ]
];

/// The bits of `field` in place.
pub(super) const fn bits64<R: RegisterLongName>(field: Field<u64, R>) -> u64 {
    field.mask << field.shift
}

/// IROUTER / MPIDR affinity bits: Aff3 39:32, Aff2 23:16, Aff1 15:8, Aff0 7:0.
pub(super) const AFFINITY_MASK: u64 =
    bits64(IROUTER::Aff0) | bits64(IROUTER::Aff1) | bits64(IROUTER::Aff2) | bits64(IROUTER::Aff3);
/// Every implemented bit of `GICD_IROUTER<n>`: the affinity and IRM.
pub(super) const IROUTER_MASK: u64 = AFFINITY_MASK | bits64(IROUTER::IRM);
