//! Guest-facing CPU state: the per-vCPU trap configuration and stage 2 (written on vCPU load,
//! never per exit), the guest's EL1 system registers, exception injection, and fault
//! addresses.
//!
//! Under VHE (E2H=1) an `_EL1` register name used at EL2 means the EL2 register, so the
//! guest's EL1 registers are reached through the `_EL12` aliases; without VHE the `_EL1`
//! names are the guest's. The aliases are written as raw encodings (S3_5_...) so the
//! assembler needs no ARMv8.1 flag.

use core::arch::asm;

use aarch64_cpu::registers::{FAR_EL2, HPFAR_EL2};
use tock_registers::interfaces::Readable;

use crate::mm::GuestPhysAddr;
use crate::vm::exit::Fault;
use crate::vm::vcpu::{El1Context, GuestRegs};

/// HCR_EL2 bits, from aarch64-cpu's typed register description (ARM ARM D24.2, HCR_EL2).
pub mod hcr {
    use aarch64_cpu::registers::HCR_EL2;

    pub const VM: u64 = HCR_EL2::VM::Enable.value;
    pub const SWIO: u64 = HCR_EL2::SWIO::SET.value;
    pub const FMO: u64 = HCR_EL2::FMO::EnableVirtualFIQ.value;
    pub const IMO: u64 = HCR_EL2::IMO::EnableVirtualIRQ.value;
    pub const AMO: u64 = HCR_EL2::AMO::SET.value;
    pub const FB: u64 = HCR_EL2::FB::SET.value;
    pub const BSU_IS: u64 = HCR_EL2::BSU::InnerShareable.value;
    pub const TWI: u64 = HCR_EL2::TWI::SET.value;
    pub const TWE: u64 = HCR_EL2::TWE::SET.value;
    pub const TID3: u64 = HCR_EL2::TID3::SET.value;
    pub const TSC: u64 = HCR_EL2::TSC::EnableTrapEl1SmcToEl2.value;
    pub const TIDCP: u64 = HCR_EL2::TIDCP::SET.value;
    pub const RW: u64 = HCR_EL2::RW::EL1IsAarch64.value;
    pub const E2H: u64 = HCR_EL2::E2H::EnableOsAtEl2.value;
    pub const TERR: u64 = HCR_EL2::TERR::SET.value;
    pub const APK: u64 = HCR_EL2::APK::SET.value;
    pub const API: u64 = HCR_EL2::API::SET.value;
    /// Forced Write-Back of stage 2 (FEAT_S2FWB): only set where the CPU has it.
    pub const FWB: u64 = HCR_EL2::FWB::SET.value;

    // The bit positions the rest of the kernel was written against (ARM ARM D24.2).
    const _: () = assert!(VM == 1 && SWIO == 1 << 1 && FMO == 1 << 3 && IMO == 1 << 4);
    const _: () = assert!(AMO == 1 << 5 && FB == 1 << 9 && BSU_IS == 1 << 10);
    const _: () = assert!(TWI == 1 << 13 && TWE == 1 << 14 && TID3 == 1 << 18);
    const _: () = assert!(TSC == 1 << 19 && TIDCP == 1 << 20 && RW == 1 << 31);
    const _: () = assert!(E2H == 1 << 34 && TERR == 1 << 36 && APK == 1 << 40);
    const _: () = assert!(API == 1 << 41 && FWB == 1 << 46);
}

/// MDCR_EL2 for guests: trap the PMU (TPM, TPMCR) and debug registers (TDA, TDOSA, TDRA).
/// TDE stays 0 (debug exceptions go to the guest's EL1, never to EL2). A debug user runs
/// with TDA clear ([`MDCR_EL2_TDA`], `vm::debug`); TDOSA (the OS lock, emulated) and TDRA
/// (MDRAR_EL1: the host's debug ROM address is not the guest's business) stay set.
pub const MDCR_EL2_GUEST: u64 = {
    use aarch64_cpu::registers::MDCR_EL2;
    MDCR_EL2::TPMCR::SET.value
        | MDCR_EL2::TPM::SET.value
        | MDCR_EL2::TDA::SET.value
        | MDCR_EL2::TDOSA::SET.value
        | MDCR_EL2::TDRA::SET.value
};
const _: () = assert!(MDCR_EL2_GUEST == (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11));

/// MDCR_EL2.TDA: traps the breakpoint, watchpoint, MDSCR_EL1, MDCCINT_EL1, claim-tag and DCC
/// registers (ARM ARM D24.2, MDCR_EL2). Cleared for a vCPU that is a debug user.
pub const MDCR_EL2_TDA: u64 = 1 << 9;

/// Writes MDCR_EL2 now (a vCPU became a debug user while running).
pub fn write_mdcr(v: u64) {
    // SAFETY: changes only which EL1/EL0 debug and PMU accesses trap to EL2.
    unsafe { asm!("msr mdcr_el2, {}", "isb", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// The hypervisor-owned configuration of a vCPU, loaded when it takes a physical CPU.
#[derive(Clone, Debug)]
pub struct VcpuHwConfig {
    pub hcr: u64,
    pub vttbr: u64,
    pub vtcr: u64,
    pub vmpidr: u64,
    pub vpidr: u64,
    pub cnthctl: u64,
    pub cntvoff: u64,
    pub mdcr: u64,
    pub cptr: u64,
}

/// Whether the kernel runs with E2H=1. Set once at boot, before any vCPU exists.
static VHE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub fn set_vhe(on: bool) {
    VHE.store(on, core::sync::atomic::Ordering::Relaxed);
}

pub fn vhe() -> bool {
    VHE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Whether guests run with HCR_EL2.FWB (stage 2 forced Write-Back). Set once at boot from
/// the CPU's FEAT_S2FWB, before any VM is built.
static S2FWB: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub fn set_s2fwb(on: bool) {
    S2FWB.store(on, core::sync::atomic::Ordering::Relaxed);
}

pub fn s2fwb() -> bool {
    S2FWB.load(core::sync::atomic::Ordering::Relaxed)
}

/// HCR_EL2 for guests: stage 2 on, physical IRQ/FIQ/SError routed to EL2, WFI and SMC trapped,
/// ID registers and implementation-defined registers trapped, RAS error records trapped
/// (TERR: they are shared by all VMs), AArch64 EL1. Pointer authentication is hidden from
/// guests (ID registers): its key registers trap (APK = 0) and so do its instructions
/// (API = 0), both answered with UNDEFINED, because the keys are not switched between vCPUs.
/// A guest that never sets SCTLR_EL1.EnIA/EnIB/EnDA/EnDB (none does without the feature)
/// never traps: with the enable clear, the hint-space PAC instructions in its code are NOPs
/// before the HCR_EL2.API check is reached (ARM ARM, the AddPAC*/Auth* pseudocode).
/// ATA = 0 traps the MTE tag registers; EnSCXT = 0 traps SCXTNUM_ELx.
pub fn guest_hcr() -> u64 {
    let base = hcr::VM
        | hcr::SWIO
        | hcr::FMO
        | hcr::IMO
        | hcr::AMO
        | hcr::FB
        | hcr::BSU_IS
        | hcr::TWI
        | hcr::TID3
        | hcr::TSC
        | hcr::TIDCP
        | hcr::RW
        | hcr::TERR;
    let base = if s2fwb() { base | hcr::FWB } else { base };
    if vhe() { base | hcr::E2H } else { base }
}

/// CNTHCTL_EL2 for guests: EL1 may read the physical counter (EL1PCTEN) but its physical
/// timer registers trap (EL1PCEN / EL1PTEN = 0) and are emulated. The bit positions differ
/// (ARM ARM D24.10.3): with E2H=1, EL1PCTEN is bit 10 and EL1PTEN bit 11 (bits 0/1 then mean
/// EL0 access in the EL2&0 regime); with E2H=0, EL1PCTEN is bit 0 and EL1PCEN bit 1.
pub fn guest_cnthctl() -> u64 {
    (if vhe() { 1 << 10 } else { 1 << 0 }) | CNTHCTL_EVENT_STREAM
}

/// CNTHCTL_EL2.EVNTEN (bit 2) with EVNTI (bits [7:4]) = 7: an event every 2^8 counter ticks
/// (4.1 us at 62.5 MHz, 4.7 us at the Raspberry Pi 4's 54 MHz), on a 0-to-1 transition
/// (EVNTDIR = 0). Same bits in both E2H layouts (ARM ARM D24.10.3). It bounds every WFE wait of
/// the kernel's locks (`sync::Mutex`); guests see extra WFE wake-ups, which the architecture
/// allows (a WFE may end for any reason) and which Linux itself enables at 10 kHz.
pub const CNTHCTL_EVENT_STREAM: u64 = (1 << 2) | (7 << 4);

/// CPTR_EL2 for guests: FP/SIMD not trapped; SVE/SME trapped (SVE until a vCPU of a VM with
/// SVE uses it, see [`guest_cptr_sve`]; otherwise turned into UNDEFINED); the
/// activity monitors trapped (TAM) where they exist, since they count for the whole CPU.
pub fn guest_cptr() -> u64 {
    CPTR_GUEST.load(core::sync::atomic::Ordering::Relaxed)
}

/// [`guest_cptr`] as computed once per CPU by [`init_cpu_traps`].
fn compute_guest_cptr() -> u64 {
    let base = if vhe() {
        super::mmu::CPTR_EL2_VHE
    } else {
        super::boot::CPTR_EL2_NVHE
    };
    base | CPTR_EXTRA.load(core::sync::atomic::Ordering::Relaxed)
}

/// CPTR_EL2 for a guest in SVE mode that owns the register file (`kernel::fpu`), and for EL2
/// while it saves or loads SVE state: as [`guest_cptr`], with SVE not trapped either (E2H=1:
/// ZEN, bits [17:16], = 0b11; E2H=0: TZ, bit 8, = 0). Only where the CPU has SVE (TZ is RES1
/// without it).
pub fn guest_cptr_sve() -> u64 {
    CPTR_GUEST_SVE.load(core::sync::atomic::Ordering::Relaxed)
}

/// The three guest CPTR_EL2 values ([`guest_cptr`], [`guest_cptr_sve`],
/// [`guest_cptr_fp_trapped`]), computed once per CPU by [`init_cpu_traps`] (the same on every
/// CPU): a vCPU switch reads one of them instead of working it out.
static CPTR_GUEST: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static CPTR_GUEST_SVE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static CPTR_FP_TRAPPED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// CPTR_EL2 bits that depend on the CPU's features (TAM, bit 30 in both layouts: RES0 without
/// FEAT_AMUv1, so set only where it exists). Written by [`init_cpu_traps`].
static CPTR_EXTRA: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// HCRX_EL2 bits (FEAT_HCX).
mod hcrx {
    /// MSCEn: the memory copy and set instructions (FEAT_MOPS) execute at EL1/EL0.
    pub const MSCEN: u64 = 1 << 11;
    /// TALLINT: EL1 writes of PSTATE.ALLINT (FEAT_NMI) trap to EL2.
    pub const TALLINT: u64 = 1 << 6;
}

/// VTCR_EL2 for a stage-2 table: 4K granule, inner-shareable write-back walks, 8-bit VMID.
pub fn vtcr(ipa_bits: u32, root_level: usize, pa_bits: u32) -> u64 {
    use aarch64_cpu::registers::VTCR_EL2;
    let sl0 = match root_level {
        0 => VTCR_EL2::SL0::Granule4KBLevel0,
        1 => VTCR_EL2::SL0::Granule4KBLevel1,
        _ => VTCR_EL2::SL0::Granule4KBLevel2,
    };
    (VTCR_EL2::RES1::SET
        + VTCR_EL2::PS.val(super::mmu::ps_field(pa_bits))
        + VTCR_EL2::TG0::Granule4KB
        + VTCR_EL2::SH0::Inner
        + VTCR_EL2::ORGN0::NormalWBRAWA
        + VTCR_EL2::IRGN0::NormalWBRAWA
        + sl0
        + VTCR_EL2::T0SZ.val(64 - u64::from(ipa_bits)))
    .value
}

/// Writes a vCPU's trap configuration and stage 2 to this CPU, and invalidates stage-1/2 TLB
/// entries for its VMID (a VMID may have been used by a VM that was reset).
pub fn load_config(c: &VcpuHwConfig) {
    // SAFETY: only EL2 control registers for the lower ELs change; the kernel's own
    // translation (TTBR0_EL2) is untouched. Ordering per ARM ARM D8.13: VTTBR written and
    // synchronised before the TLBI that uses its VMID.
    unsafe {
        asm!(
            "msr hcr_el2, {hcr}",
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "msr vmpidr_el2, {vmpidr}",
            "msr vpidr_el2, {vpidr}",
            "msr cnthctl_el2, {cnthctl}",
            "msr cntvoff_el2, {cntvoff}",
            "msr mdcr_el2, {mdcr}",
            "msr cptr_el2, {cptr}",
            "isb",
            "tlbi vmalls12e1",
            "dsb nsh",
            "ic iallu",
            "dsb nsh",
            "isb",
            hcr = in(reg) c.hcr,
            vtcr = in(reg) c.vtcr,
            vttbr = in(reg) c.vttbr,
            vmpidr = in(reg) c.vmpidr,
            vpidr = in(reg) c.vpidr,
            cnthctl = in(reg) c.cnthctl,
            cntvoff = in(reg) c.cntvoff,
            mdcr = in(reg) c.mdcr,
            cptr = in(reg) c.cptr,
            options(nostack, preserves_flags),
        )
    };
}

/// Completes stage-2 descriptor writes that turned invalid entries valid, for every CPU's
/// table walker (ARM ARM D8.13: a DSB orders a translation table write before any later walk
/// that uses it). No TLB maintenance: invalid entries are not cached.
pub fn publish_stage2_write() {
    // SAFETY: a barrier only.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// Removes every stage-1 and stage-2 TLB entry of the VMID in `vttbr`, on every CPU of the
/// Inner Shareable domain, after stage-2 descriptors of that VM were made invalid (its RAM
/// blocks taken back at a reset). Runs in the hypervisor with IRQs masked; restores the
/// VTTBR_EL2 it found.
///
/// ARM ARM D8.13 ("TLB maintenance"): the descriptor writes must be complete before the TLBI
/// (DSB ISHST), TLBI VMALLS12E1IS acts on the VMID in VTTBR_EL2 (so VTTBR is switched and
/// synchronised first), and a DSB ISH waits for the invalidation on every CPU. HCR_EL2.TGE
/// is never set by this hypervisor, so the EL1&0 regime the TLBI names is the guest's under
/// VHE too.
pub fn invalidate_vmid_tlbs(vttbr: u64) {
    // SAFETY: only VTTBR_EL2 (the lower ELs' stage 2, unused while EL2 runs) changes, and is
    // restored; TLB maintenance and barriers have no other effect on the program.
    unsafe {
        asm!(
            "dsb ishst",
            "mrs {old}, vttbr_el2",
            "msr vttbr_el2, {new}",
            "isb",
            "tlbi vmalls12e1is",
            "dsb ish",
            "msr vttbr_el2, {old}",
            "isb",
            old = out(reg) _,
            new = in(reg) vttbr,
            options(nostack, preserves_flags),
        )
    };
}

/// Reads (`$read`) or writes the EL1 register whose non-VHE name is `$nvhe` and VHE alias
/// encoding is `$vhe`.
macro_rules! el1_rw {
    (read $nvhe:literal, $vhe:literal) => {{
        let v: u64;
        if vhe() {
            // SAFETY: reading a guest EL1 register through its EL12 alias has no side effects.
            unsafe { asm!(concat!("mrs {}, ", $vhe), out(reg) v, options(nomem, nostack, preserves_flags)) };
        } else {
            // SAFETY: with E2H=0 the EL1 name is the guest's register; no side effects.
            unsafe { asm!(concat!("mrs {}, ", $nvhe), out(reg) v, options(nomem, nostack, preserves_flags)) };
        }
        v
    }};
    (write $nvhe:literal, $vhe:literal, $v:expr) => {{
        let v: u64 = $v;
        if vhe() {
            // SAFETY: writes guest EL1 state only; it takes effect when the guest runs.
            unsafe { asm!(concat!("msr ", $vhe, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
        } else {
            // SAFETY: as above, through the EL1 name (E2H=0).
            unsafe { asm!(concat!("msr ", $nvhe, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
        }
    }};
}

macro_rules! plain_rw {
    (read $name:literal) => {{
        let v: u64;
        // SAFETY: reading a register that is the guest's in both E2H modes; no side effects.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
    (write $name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: writes guest state only; it takes effect when the guest runs.
        unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
    }};
}

/// Loads a guest's EL1/EL0 context into the CPU (slow path: vCPU load).
pub fn load_el1(c: &El1Context) {
    el1_rw!(write "sctlr_el1", "s3_5_c1_c0_0", c.sctlr);
    el1_rw!(write "cpacr_el1", "s3_5_c1_c0_2", c.cpacr);
    el1_rw!(write "ttbr0_el1", "s3_5_c2_c0_0", c.ttbr0);
    el1_rw!(write "ttbr1_el1", "s3_5_c2_c0_1", c.ttbr1);
    el1_rw!(write "tcr_el1", "s3_5_c2_c0_2", c.tcr);
    el1_rw!(write "esr_el1", "s3_5_c5_c2_0", c.esr);
    el1_rw!(write "afsr0_el1", "s3_5_c5_c1_0", c.afsr0);
    el1_rw!(write "afsr1_el1", "s3_5_c5_c1_1", c.afsr1);
    el1_rw!(write "far_el1", "s3_5_c6_c0_0", c.far);
    el1_rw!(write "mair_el1", "s3_5_c10_c2_0", c.mair);
    el1_rw!(write "amair_el1", "s3_5_c10_c3_0", c.amair);
    el1_rw!(write "vbar_el1", "s3_5_c12_c0_0", c.vbar);
    el1_rw!(write "contextidr_el1", "s3_5_c13_c0_1", c.contextidr);
    el1_rw!(write "cntkctl_el1", "s3_5_c14_c1_0", c.cntkctl);
    el1_rw!(write "elr_el1", "s3_5_c4_c0_1", c.elr_el1);
    el1_rw!(write "spsr_el1", "s3_5_c4_c0_0", c.spsr_el1);
    plain_rw!(write "actlr_el1", c.actlr);
    plain_rw!(write "tpidr_el1", c.tpidr_el1);
    plain_rw!(write "tpidr_el0", c.tpidr_el0);
    plain_rw!(write "tpidrro_el0", c.tpidrro_el0);
    plain_rw!(write "sp_el0", c.sp_el0);
    plain_rw!(write "sp_el1", c.sp_el1);
    plain_rw!(write "par_el1", c.par);
    plain_rw!(write "csselr_el1", c.csselr);
    if has_ras() {
        // VDISR_EL2 (S3_4_C12_C1_1): the guest's DISR_EL1 while HCR_EL2.AMO is set (ARM ARM
        // D24.2.181). A guest writes it directly, so it is the vCPU's state like any EL1
        // register: left in place it would hand one VM's deferred-SError record to the next.
        plain_rw!(write "s3_4_c12_c1_1", c.vdisr);
    }
    // SAFETY: barrier only.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Saves the guest's EL1/EL0 context from the CPU (slow path: vCPU put).
pub fn save_el1(c: &mut El1Context) {
    c.sctlr = el1_rw!(read "sctlr_el1", "s3_5_c1_c0_0");
    c.cpacr = el1_rw!(read "cpacr_el1", "s3_5_c1_c0_2");
    c.ttbr0 = el1_rw!(read "ttbr0_el1", "s3_5_c2_c0_0");
    c.ttbr1 = el1_rw!(read "ttbr1_el1", "s3_5_c2_c0_1");
    c.tcr = el1_rw!(read "tcr_el1", "s3_5_c2_c0_2");
    c.esr = el1_rw!(read "esr_el1", "s3_5_c5_c2_0");
    c.afsr0 = el1_rw!(read "afsr0_el1", "s3_5_c5_c1_0");
    c.afsr1 = el1_rw!(read "afsr1_el1", "s3_5_c5_c1_1");
    c.far = el1_rw!(read "far_el1", "s3_5_c6_c0_0");
    c.mair = el1_rw!(read "mair_el1", "s3_5_c10_c2_0");
    c.amair = el1_rw!(read "amair_el1", "s3_5_c10_c3_0");
    c.vbar = el1_rw!(read "vbar_el1", "s3_5_c12_c0_0");
    c.contextidr = el1_rw!(read "contextidr_el1", "s3_5_c13_c0_1");
    c.cntkctl = el1_rw!(read "cntkctl_el1", "s3_5_c14_c1_0");
    c.elr_el1 = el1_rw!(read "elr_el1", "s3_5_c4_c0_1");
    c.spsr_el1 = el1_rw!(read "spsr_el1", "s3_5_c4_c0_0");
    c.actlr = plain_rw!(read "actlr_el1");
    c.tpidr_el1 = plain_rw!(read "tpidr_el1");
    c.tpidr_el0 = plain_rw!(read "tpidr_el0");
    c.tpidrro_el0 = plain_rw!(read "tpidrro_el0");
    c.sp_el0 = plain_rw!(read "sp_el0");
    c.sp_el1 = plain_rw!(read "sp_el1");
    c.par = plain_rw!(read "par_el1");
    c.csselr = plain_rw!(read "csselr_el1");
    if has_ras() {
        c.vdisr = plain_rw!(read "s3_4_c12_c1_1");
    }
}

/// The faulting addresses of the current stage-2 abort.
pub fn fault() -> Fault {
    let far = FAR_EL2.get();
    // HPFAR_EL2.FIPA holds IPA[51:12] in bits [43:4] (ARM ARM D24.2.60).
    let fipa = (HPFAR_EL2.get() >> 4) & ((1 << 40) - 1);
    Fault {
        far,
        ipa: GuestPhysAddr((fipa << 12) | (far & 0xfff)),
    }
}

/// FEAT_RAS (ID_AA64PFR0_EL1.RAS != 0): VDISR_EL2 exists and is part of a vCPU's state.
/// The Cortex-A72 has no RAS; QEMU's `max` CPU has it. Read once per CPU by
/// [`init_cpu_traps`], not on every vCPU switch.
fn has_ras() -> bool {
    HAS_RAS.load(core::sync::atomic::Ordering::Relaxed)
}

/// See [`has_ras`].
static HAS_RAS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// FEAT_PAN (ID_AA64MMFR1_EL1.PAN).
fn has_pan() -> bool {
    use aarch64_cpu::registers::ID_AA64MMFR1_EL1;
    ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::PAN) != 0
}

/// True if the guest was in EL0 when it exited (SPSR_EL2.M[3:2] == 0, or AArch32).
pub fn from_el0(regs: &GuestRegs) -> bool {
    regs.spsr & 0b1100 == 0 || regs.spsr & (1 << 4) != 0
}

/// Injects a synchronous exception with syndrome `esr` (and `far`, if any) into the guest's
/// EL1, as the hardware would take it (ARM ARM D1.3.1): ESR/FAR/ELR/SPSR_EL1 are written,
/// and the guest resumes at VBAR_EL1 + the vector offset for where it was, in EL1h with DAIF
/// masked.
pub fn inject_sync(regs: &mut GuestRegs, esr: u64, far: Option<u64>) {
    let offset = if regs.spsr & (1 << 4) != 0 {
        0x600 // lower EL, AArch32
    } else {
        match regs.spsr & 0b1111 {
            0b0101 => 0x200, // EL1h: current EL with SP_ELx
            0b0100 => 0x000, // EL1t: current EL with SP_EL0
            _ => 0x400,      // EL0t: lower EL, AArch64
        }
    };
    el1_rw!(write "esr_el1", "s3_5_c5_c2_0", esr);
    if let Some(f) = far {
        el1_rw!(write "far_el1", "s3_5_c6_c0_0", f);
    }
    el1_rw!(write "elr_el1", "s3_5_c4_c0_1", regs.elr);
    el1_rw!(write "spsr_el1", "s3_5_c4_c0_0", regs.spsr);
    let vbar = el1_rw!(read "vbar_el1", "s3_5_c12_c0_0");
    let sctlr = el1_rw!(read "sctlr_el1", "s3_5_c1_c0_0");
    // PSTATE on exception entry: EL1h, DAIF set; PAN set when SCTLR_EL1.SPAN == 0 and the
    // guest had PAN available (we keep the guest's PAN bit otherwise).
    let mut spsr = 0x3c5;
    if !has_pan() {
        // PSTATE.PAN does not exist (ARMv8.0, e.g. Cortex-A72): bit 22 is RES0.
    } else if sctlr & (1 << 23) == 0 {
        spsr |= 1 << 22;
    } else {
        spsr |= regs.spsr & (1 << 22);
    }
    regs.spsr = spsr;
    regs.elr = vbar.wrapping_add(offset);
}

/// Saves the guest's EL1 virtual timer (CTL, CVAL) and disables it, so it cannot fire for
/// another vCPU. Under VHE the guest's CNTV_* are reached through the `_EL02` aliases.
pub fn save_vtimer() -> (u64, u64) {
    let (ctl, cval) = if vhe() {
        (
            el1_rw!(read "cntv_ctl_el0", "s3_5_c14_c3_1"),
            el1_rw!(read "cntv_cval_el0", "s3_5_c14_c3_2"),
        )
    } else {
        (
            plain_rw!(read "cntv_ctl_el0"),
            plain_rw!(read "cntv_cval_el0"),
        )
    };
    if vhe() {
        el1_rw!(write "cntv_ctl_el0", "s3_5_c14_c3_1", 0);
    } else {
        plain_rw!(write "cntv_ctl_el0", 0);
    }
    (ctl & 0b11, cval)
}

/// The output line of the loaded guest's EL1 virtual timer, read from CNTV_CTL_EL0 (the
/// `_EL02` alias under VHE): asserted while ENABLE = 1, IMASK = 0 and ISTATUS = 1, where the
/// hardware keeps ISTATUS equal to CVAL <= CNTVCT (ARM ARM D11.2.4, "Operation of the
/// CompareValue views of the timers"). A guest write that disables or masks the timer, or
/// moves CVAL ahead, does not trap; this is how the hypervisor sees the line fall.
pub fn vtimer_line() -> bool {
    const ENABLE: u64 = 1 << 0;
    const IMASK: u64 = 1 << 1;
    const ISTATUS: u64 = 1 << 2;
    let ctl = el1_rw!(read "cntv_ctl_el0", "s3_5_c14_c3_1");
    ctl & (ENABLE | IMASK | ISTATUS) == ENABLE | ISTATUS
}

/// Restores a guest's EL1 virtual timer (CVAL first, then CTL).
pub fn restore_vtimer(t: (u64, u64)) {
    if vhe() {
        el1_rw!(write "cntv_cval_el0", "s3_5_c14_c3_2", t.1);
        el1_rw!(write "cntv_ctl_el0", "s3_5_c14_c3_1", t.0);
    } else {
        plain_rw!(write "cntv_cval_el0", t.1);
        plain_rw!(write "cntv_ctl_el0", t.0);
    }
}

/// CPTR_EL2 for a guest whose FP/SIMD use must trap (another vCPU owns the FP registers).
pub fn guest_cptr_fp_trapped() -> u64 {
    CPTR_FP_TRAPPED.load(core::sync::atomic::Ordering::Relaxed)
}

/// [`guest_cptr_fp_trapped`] as computed once per CPU by [`init_cpu_traps`].
fn compute_fp_trapped() -> u64 {
    let extra = CPTR_EXTRA.load(core::sync::atomic::Ordering::Relaxed);
    if vhe() {
        extra // FPEN = 0b00 (ZEN = SMEN = 0b00 too); TAM kept
    } else {
        super::boot::CPTR_EL2_NVHE | (1 << 10) | extra // TFP; TZ, TSM, TAM kept
    }
}

/// Writes CPTR_EL2 (FP trap configuration) now.
pub fn write_cptr(v: u64) {
    // SAFETY: the kernel never uses FP/SIMD; this only changes what lower ELs trap on.
    unsafe { asm!("msr cptr_el2, {}", "isb", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// The trap registers that are the same for every vCPU, written once per physical CPU as it
/// comes up, before any guest runs there.
///
/// - HCRX_EL2 (FEAT_HCX, ARM ARM D24.2.49): its reset value is UNKNOWN on hardware, so it is
///   written whole: every "enable" bit clear (LS64, TCR2_EL1, SCTLR2_EL1, GCS, FPMR, D128, the
///   SError/abort extensions: their registers and instructions trap and become UNDEFINED,
///   matching the ID registers), MSCEn set where FEAT_MOPS is advertised, TALLINT set where
///   FEAT_NMI exists (hidden from guests: their ALLINT writes trap and UNDEF).
/// - HFGRTR/HFGWTR/HFGITR/HDFGRTR/HDFGWTR_EL2 (FEAT_FGT, D24.2.49-60): written as zero. Their
///   classic bits then trap nothing, and their "n" bits, which cover the registers of newer
///   features (PIR/PIRE0, POR, MAIR2/AMAIR2, ACCDATA, TPIDR2, the GCS and BRBE registers,
///   RCWMASK, ...), trap them all: none of that state is switched between vCPUs. (FEAT_FGT2's
///   second set is not written yet: neither QEMU 10 nor the Cortex-A72 has it.)
///
/// Both need SCR_EL3.HXEn / FGTEn from the firmware where EL3 exists, as Linux's booting.rst
/// requires of it too.
pub fn init_cpu_traps() {
    use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1};
    use aarch64_cpu::registers::{ID_AA64PFR0_EL1, ID_AA64PFR1_EL1};
    let nibble = |v: u64, lsb: u32| (v >> lsb) & 0xf;
    let mmfr1 = ID_AA64MMFR1_EL1.get();
    if nibble(mmfr1, 40) != 0 {
        let mut v = 0;
        if nibble(super::idregs::read(6, 2), 16) != 0 {
            v |= hcrx::MSCEN;
        }
        if nibble(ID_AA64PFR1_EL1.get(), 36) != 0 {
            v |= hcrx::TALLINT;
        }
        plain_rw!(write "s3_4_c1_c2_2", v); // HCRX_EL2
    }
    if nibble(ID_AA64MMFR0_EL1.get(), 56) != 0 {
        plain_rw!(write "s3_4_c1_c1_4", 0); // HFGRTR_EL2
        plain_rw!(write "s3_4_c1_c1_5", 0); // HFGWTR_EL2
        plain_rw!(write "s3_4_c1_c1_6", 0); // HFGITR_EL2
        plain_rw!(write "s3_4_c3_c1_4", 0); // HDFGRTR_EL2
        plain_rw!(write "s3_4_c3_c1_5", 0); // HDFGWTR_EL2
    }
    let pfr0 = ID_AA64PFR0_EL1.get();
    if nibble(pfr0, 44) != 0 {
        CPTR_EXTRA.store(1 << 30, core::sync::atomic::Ordering::Relaxed);
    }
    // RAS is ID_AA64PFR0_EL1[31:28] (ARM ARM D24.2.76); aarch64-cpu names no field for it.
    HAS_RAS.store(nibble(pfr0, 28) != 0, core::sync::atomic::Ordering::Relaxed);
    let guest = compute_guest_cptr();
    let relaxed = core::sync::atomic::Ordering::Relaxed;
    CPTR_GUEST.store(guest, relaxed);
    // SVE untrapped: E2H=1: ZEN [17:16] = 0b11; E2H=0: TZ (bit 8) = 0.
    CPTR_GUEST_SVE.store(
        if vhe() {
            guest | (3 << 16)
        } else {
            guest & !(1 << 8)
        },
        relaxed,
    );
    CPTR_FP_TRAPPED.store(compute_fp_trapped(), relaxed);
    // This CPU's largest SVE vector length (with the values above set: it writes CPTR_EL2).
    super::sve::init_cpu();
    // The counter event stream, from this CPU's first lock wait on (vCPU loads rewrite
    // CNTHCTL_EL2 with the same bits, `guest_cnthctl`).
    let cnthctl = plain_rw!(read "cnthctl_el2");
    plain_rw!(write "cnthctl_el2", (cnthctl & !0xfc) | CNTHCTL_EVENT_STREAM);
    // SAFETY: barrier only; the new traps are in force before any guest runs (ARM ARM
    // D24.1.2: a direct write to a system register needs a context synchronization event).
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}
