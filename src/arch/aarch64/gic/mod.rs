//! The physical GIC and the virtualization interface.
//!
//! The distributor and redistributors are driven through the `arm-gic` crate. The CPU
//! interface at EL2 runs with EOImode = 1 (priority drop and deactivation split), so an
//! interrupt forwarded to a guest with the HW bit (the virtual timer) stays active until the
//! guest deactivates it. The virtual CPU interface is ours: GICv3's ICH_* system registers,
//! or GICv2's GICH block (list registers) with GICV mapped at the guest's GICC address.

use core::arch::asm;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use super::sync::Mutex;
use aarch64_cpu::registers::ICH_VTR_EL2;
use arm_gic::gicv2::GicV2;
use arm_gic::gicv2::registers::{Gicc, Gicd as GicdV2};
use arm_gic::gicv3::GicV3;
use arm_gic::gicv3::registers::{Gicd as GicdV3, GicrSgi};
use arm_gic::{IntId, Trigger, UniqueMmioPointer};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

use crate::platform::{Gic as GicInfo, GicVersion};

mod vif;
pub use vif::*;

register_structs! {
    /// GICv2 virtual interface control (GICH), IHI 0048B §5.3.
    pub GichRegs {
        (0x000 => hcr: ReadWrite<u32>),
        (0x004 => vtr: ReadOnly<u32>),
        (0x008 => vmcr: ReadWrite<u32>),
        (0x00c => _r0),
        (0x010 => misr: ReadOnly<u32>),
        (0x014 => _r1),
        (0x020 => eisr0: ReadOnly<u32>),
        (0x024 => _r2),
        (0x030 => elrsr0: ReadOnly<u32>),
        (0x034 => _r3),
        (0x0f0 => apr: ReadWrite<u32>),
        (0x0f4 => _r4),
        (0x100 => lr: [ReadWrite<u32>; 64]),
        (0x200 => @END),
    }
}

register_structs! {
    /// The GICv2 distributor registers the kernel drives itself (IHI 0048B §4.3):
    /// - IGROUPR0, banked per CPU, which arm-gic's `setup` writes on the boot CPU only;
    /// - IPRIORITYR as bytes: the registers are byte-accessible (§4.3.11), and arm-gic 0.10's
    ///   `set_interrupt_priority` writes the whole word, setting the three neighbours in it to
    ///   priority 0;
    /// - ITARGETSR, which arm-gic does not expose.
    pub GicdExtra {
        (0x000 => _r0),
        (0x080 => igroupr0: ReadWrite<u32>),
        (0x084 => _r1),
        (0x400 => ipriorityr: [ReadWrite<u8>; 1020]),
        (0x7fc => _r2),
        (0x800 => itargetsr: [ReadWrite<u32>; 256]),
        (0xc00 => @END),
    }
}

register_structs! {
    /// The GICv2 CPU-interface registers the kernel drives itself: CTLR (EOImode), PMR (see
    /// [`before_wait`]), IAR and EOIR (arm-gic's accessors drop the source-CPU bits of an SGI's
    /// IAR) and DIR.
    pub GiccExtra {
        (0x0000 => ctlr: ReadWrite<u32>),
        (0x0004 => pmr: ReadWrite<u32>),
        (0x0008 => _r0),
        (0x000c => iar: ReadOnly<u32>),
        (0x0010 => eoir: ReadWrite<u32>),
        (0x0014 => _r1),
        (0x1000 => dir: ReadWrite<u32>),
        (0x1004 => @END),
    }
}

enum Driver {
    V3(GicV3<'static>),
    V2 {
        gic: GicV2<'static>,
        gicd: &'static GicdExtra,
        gicc: &'static GiccExtra,
        gich: &'static GichRegs,
    },
}

// SAFETY: the driver only holds MMIO pointers; every use goes through the `GIC` mutex.
unsafe impl Send for Driver {}

static GIC: Mutex<Option<Driver>> = Mutex::new(None);
/// 0 = none, 2 or 3: the version, readable without the lock on the exit path.
static VERSION: AtomicU8 = AtomicU8::new(0);
static NR_LRS: AtomicUsize = AtomicUsize::new(0);
/// GICv3: how many ICH_AP0Rn_EL2 / ICH_AP1Rn_EL2 pairs the virtual CPU interface has, from
/// ICH_VTR_EL2.PREbits (IHI 0069H §12.4.1/§12.4.2): 5 preemption bits -> n = 0 only, 6 -> 0..1,
/// 7 -> 0..3. Every one of them is a vCPU's state and moves with it.
static NR_APRS: AtomicUsize = AtomicUsize::new(1);
/// GICv2: each CPU's target-list bit (its CPU interface number), learned at bring-up.
static V2_TARGET: [AtomicU8; super::cpu::MAX_CPUS] =
    [const { AtomicU8::new(0) }; super::cpu::MAX_CPUS];
/// GICH base for lock-free list-register access on GICv2 (per-CPU banked at the same address).
static GICH: AtomicUsize = AtomicUsize::new(0);
/// GICC base for lock-free acknowledge/EOI/deactivate on GICv2 (banked per CPU).
static GICC: AtomicUsize = AtomicUsize::new(0);
/// GICD base, for lock-free reads of an SPI's pending state ([`spi_line_pending`]).
static GICD: AtomicUsize = AtomicUsize::new(0);
/// GICD_ISPENDR<n>: the same offset in GICv2 (IHI 0048B §4.3.7) and GICv3 (IHI 0069 §12.9.24).
const GICD_ISPENDR: usize = 0x200;

/// ICC_CTLR_EL1.EOImode.
const ICC_CTLR_EOIMODE: u64 = 1 << 1;
/// GICC_CTLR: EnableGrp0 | EnableGrp1 | EOImodeNS.
const GICC_CTLR_EL2: u32 = (1 << 0) | (1 << 1) | (1 << 9);

/// Brings up the distributor (and redistributors) and this CPU's interface. `cpus` is the
/// number of physical CPUs (redistributor frames). The GIC regions must be mapped.
pub fn init(info: &GicInfo, cpus: usize) -> Result<(), &'static str> {
    let driver = match info.version {
        GicVersion::V3 => {
            let gicr = info
                .gicr
                .first()
                .ok_or("GICv3 without a redistributor region")?;
            let gicd = NonNull::new(info.gicd.base.0 as *mut GicdV3).ok_or("GICD at 0")?;
            let gicr = NonNull::new(gicr.base.0 as *mut GicrSgi).ok_or("GICR at 0")?;
            // SAFETY: the address comes from the host device tree's GIC node and is mapped as
            // Device memory by the EL2 map; this is the only pointer to the distributor.
            let gicd = unsafe { UniqueMmioPointer::new(gicd) };
            // SAFETY: as above for the redistributors; this is the only driver instance.
            let mut gic = unsafe { GicV3::new(gicd, gicr, cpus) }
                .map_err(|_| "GICv3 redistributor frames not found")?;
            gic.setup(0);
            Driver::V3(gic)
        }
        GicVersion::V2 => {
            let gicc_r = info.gicc.ok_or("GICv2 without GICC")?;
            let gich_r = info.gich.ok_or("GICv2 without GICH")?;
            // SAFETY: as above for GICD/GICC: from the host device tree, mapped as Device
            // memory, the only driver instance.
            let mut gic =
                unsafe { GicV2::new(info.gicd.base.0 as *mut GicdV2, gicc_r.base.0 as *mut Gicc) };
            gic.setup();
            // SAFETY: `GicdExtra` aliases GICD only for IGROUPR0, IPRIORITYR and ITARGETSR,
            // which the arm-gic driver never touches after `setup` (this module sets
            // priorities through the alias, not the driver); both are volatile MMIO used under
            // the same lock.
            let gicd = unsafe { &*(info.gicd.base.0 as *const GicdExtra) };
            // SAFETY: `GiccExtra` aliases GICC only for CTLR, PMR and DIR, which the arm-gic
            // driver never writes after `setup` and `init_cpu`; all are volatile MMIO.
            let gicc = unsafe { &*(gicc_r.base.0 as *const GiccExtra) };
            // SAFETY: GICH from the host device tree, mapped as Device memory; only this
            // module touches it.
            let gich = unsafe { &*(gich_r.base.0 as *const GichRegs) };
            GICH.store(gich_r.base.0 as usize, Ordering::Relaxed);
            GICC.store(gicc_r.base.0 as usize, Ordering::Relaxed);
            Driver::V2 {
                gic,
                gicd,
                gicc,
                gich,
            }
        }
    };
    *GIC.lock() = Some(driver);
    GICD.store(info.gicd.base.0 as usize, Ordering::Relaxed);
    VERSION.store(
        match info.version {
            GicVersion::V3 => 3,
            GicVersion::V2 => 2,
        },
        Ordering::Relaxed,
    );
    init_cpu(0);
    Ok(())
}

/// Per-CPU interface setup for CPU `cpu` (its index in the host /cpus list, which is also its
/// redistributor's index): redistributor awake, priority mask open, group 1 on, EOImode = 1,
/// virtual interface on.
pub fn init_cpu(cpu: usize) {
    match &mut *GIC.lock() {
        Some(Driver::V3(g)) => {
            if cpu != 0 {
                g.init_cpu(cpu);
                if let Ok(mut rd) = g.redistributor(cpu) {
                    rd.configure_default_settings();
                }
            }
            arm_gic::gicv3::GicCpuInterface::enable_system_register_el2(true);
            arm_gic::gicv3::GicCpuInterface::set_priority_mask(PMR_ALL);
            let ctlr: u64;
            // SAFETY: reads this CPU's physical interface control register; no side effects.
            unsafe { asm!("mrs {}, icc_ctlr_el1", out(reg) ctlr, options(nomem, nostack)) };
            // SAFETY: sets EOImode in this CPU's physical interface; only the kernel acks.
            unsafe {
                asm!("msr icc_ctlr_el1, {}", "isb", in(reg) ctlr | ICC_CTLR_EOIMODE,
                     options(nomem, nostack))
            };
            arm_gic::gicv3::GicCpuInterface::enable_group1(true);
            let lrs = ICH_VTR_EL2.read(ICH_VTR_EL2::ListRegs) + 1;
            NR_LRS.store(lrs as usize, Ordering::Relaxed);
            let pre_bits = ICH_VTR_EL2.read(ICH_VTR_EL2::PREbits) + 1;
            NR_APRS.store(aprs_for_pre_bits(pre_bits), Ordering::Relaxed);
            write_hcr(HCR_EN);
        }
        Some(Driver::V2 {
            gic,
            gicc,
            gich,
            gicd,
        }) => {
            // The SGIs' and PPIs' group (IGROUPR0 is banked per CPU): the one arm-gic's
            // `setup` gave the boot CPU's, group 1 where the GIC has the Security Extensions
            // and group 0 where it has none. A secondary's copy is otherwise what the firmware
            // left: TF-A's BL31 sets it to group 1 when it powers a CPU on, and on a GIC
            // without the Security Extensions (QEMU raspi4b) the distributor, enabled for
            // group 0 only, then never signals this CPU's kicks. Where the hypervisor runs
            // Non-secure on a GIC with them, the write is ignored (RAZ/WI, IHI 0048B §4.3.4)
            // and the firmware's choice, group 1, is already the one the Non-secure side owns.
            gicd.igroupr0.set(if gic.typer().has_security_extension() {
                u32::MAX
            } else {
                0
            });
            // This CPU's GICv2 CPU-interface number, as its own target bit (ITARGETSR0 is
            // banked and reads back the current CPU's mask). Kicks target it.
            let mask = gicd.itargetsr[0].get() & 0xff;
            if let Some(m) = V2_TARGET.get(cpu) {
                m.store(mask as u8, Ordering::Relaxed);
            }
            log::debug!("cpu{cpu}: GICv2 CPU interface mask {mask:#x}");
            gic.set_priority_mask(PMR_ALL);
            gicc.ctlr.set(GICC_CTLR_EL2);
            NR_LRS.store(((gich.vtr.get() & 0x3f) + 1) as usize, Ordering::Relaxed);
            write_hcr(HCR_EN);
        }
        None => {}
    }
}

fn int_id(intid: u32) -> IntId {
    match intid {
        0..=15 => IntId::sgi(intid),
        16..=31 => IntId::ppi(intid - 16),
        _ => IntId::spi(intid - 32),
    }
}

/// Enables a physical interrupt routed to the kernel (SGIs and PPIs: on CPU `cpu`).
pub fn enable(intid: u32, priority: u8, level: bool, cpu: usize) {
    let id = int_id(intid);
    let trig = if level { Trigger::Level } else { Trigger::Edge };
    match &mut *GIC.lock() {
        Some(Driver::V3(g)) => {
            let cpu = if intid < 32 { Some(cpu) } else { None };
            let _ = g.set_interrupt_priority(id, cpu, priority);
            if intid >= 16 {
                let _ = g.set_trigger(id, cpu, trig);
            }
            let _ = g.enable_interrupt(id, cpu, true);
        }
        Some(Driver::V2 { gic, gicd, .. }) => {
            // One byte, so the neighbours in the same word keep theirs (see GicdExtra).
            if let Some(p) = gicd.ipriorityr.get(intid as usize) {
                p.set(priority);
            }
            if intid >= 16 {
                gic.set_trigger(id, trig);
            }
            let _ = gic.enable_interrupt(id, true);
        }
        None => {}
    }
}

/// The SGI the kernel uses to kick another physical CPU (reschedule, deliver, stop).
pub const KICK_SGI: u32 = 0;
/// The SGI a failing CPU sends to stop the others (kernel::halt). Its own number keeps the
/// halting check off the kick's path (virtual IPIs, VM stops).
pub const HALT_SGI: u32 = 1;

/// Sends the kick SGI to the CPU with affinity `mpidr` and GICv2 CPU-interface number `cpu`.
pub fn kick(mpidr: u64, cpu: usize) {
    // The target must see every Normal-memory store made before the kick (its vCPU's power
    // state, the vGIC's pending bits) once it takes the SGI: a DSB orders them before the SGI
    // is generated, for the system-register write (IHI 0069H §12.1.7: writes to ICC_SGI1R_EL1
    // are not ordered with memory accesses without one) and for the GICD_SGIR store alike
    // (ARM ARM B2.3: Normal stores and a later Device store to another observer). Linux's
    // gic_ipi_send_mask does the same.
    // SAFETY: a barrier; no memory or register is changed.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    if version() == 3 {
        // A system-register write on this CPU: no driver state, no lock.
        let v = sgi1r_to(KICK_SGI, mpidr);
        // SAFETY: generates one group-1 SGI for the target CPU; the ISB makes it take effect
        // now rather than at the next context synchronization.
        unsafe {
            asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) v, options(nostack, preserves_flags))
        };
        return;
    }
    sgi_v2(&mut GIC.lock(), KICK_SGI, cpu);
}

/// A GICv2 SGI to CPU `cpu`: a GICD_SGIR write through the driver.
fn sgi_v2(driver: &mut Option<Driver>, intid: u32, cpu: usize) {
    match driver {
        Some(Driver::V2 { gic, .. }) => gic.send_sgi(
            IntId::sgi(intid),
            arm_gic::gicv2::SgiTarget::List {
                target_list_filter: arm_gic::gicv2::SgiTargetListFilter::CPUTargetList,
                target_list: match V2_TARGET.get(cpu).map(|m| m.load(Ordering::Relaxed)) {
                    Some(m) if m != 0 => m as u16,
                    _ => 1 << (cpu & 7),
                },
            },
        ),
        // GICv3 kicks through the system register; no driver, nothing to kick with.
        Some(Driver::V3(_)) | None => {}
    }
}

/// Sends [`HALT_SGI`] like [`kick`] sends the kick, for the halting path: on GICv2 it gives up
/// (returns false) when the driver lock stays taken for `spins` tries, because the CPU that
/// failed may be the one holding it.
pub fn try_send_halt(mpidr: u64, cpu: usize, spins: u32) -> bool {
    // Stores before the SGI (the halting flag) are visible to the target once it takes the
    // SGI: as in `kick`.
    // SAFETY: a barrier; no memory or register is changed.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    if version() == 3 {
        let v = sgi1r_to(HALT_SGI, mpidr);
        // SAFETY: generates one group-1 SGI for the target CPU, as in `kick`.
        unsafe {
            asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) v, options(nostack, preserves_flags))
        };
        return true;
    }
    for _ in 0..spins {
        if let Some(mut g) = GIC.try_lock() {
            sgi_v2(&mut g, HALT_SGI, cpu);
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Routes SPI `intid` to this CPU.
pub fn route_to_this_cpu(intid: u32) {
    match &mut *GIC.lock() {
        Some(Driver::V3(g)) => {
            let _ = g
                .distributor()
                .set_routing(int_id(intid), Some(super::cpu::mpidr()));
        }
        Some(Driver::V2 { gicd, .. }) => {
            // ITARGETSR0..7 (SGIs) read back this CPU's own target bit (byte 0 of word 0).
            let me = gicd.itargetsr[0].get() & 0xff;
            if let Some(t) = gicd.itargetsr.get(intid as usize / 4) {
                let shift = (intid % 4) * 8;
                t.set((t.get() & !(0xff << shift)) | (me << shift));
            }
        }
        None => {}
    }
}

/// An acknowledged interrupt: its INTID, and the raw IAR value that EOIR and DIR must be
/// given back (on GICv2 an SGI's IAR also carries the source CPU in bits [12:10]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ack {
    pub intid: u32,
    pub raw: u32,
}

/// Acknowledges the highest-priority pending physical interrupt (IAR), if any.
pub fn ack() -> Option<Ack> {
    let raw = match VERSION.load(Ordering::Relaxed) {
        3 => {
            let v: u64;
            // SAFETY: ICC_IAR1_EL1 read acknowledges one interrupt; the caller handles it. Not
            // `nomem`: what the interrupt's sender published must be read after the
            // acknowledge, so the compiler may not hoist those loads above it.
            unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) v, options(nostack)) };
            v as u32 & 0xff_ffff
        }
        2 => gicc().iar.get(),
        _ => 1023,
    };
    let intid = if VERSION.load(Ordering::Relaxed) == 2 {
        raw & 0x3ff
    } else {
        raw
    };
    (intid < 1020).then_some(Ack { intid, raw })
}

/// Priority drop (EOImode = 1: the interrupt stays active).
pub fn eoi(a: Ack) {
    match VERSION.load(Ordering::Relaxed) {
        // SAFETY: EOIR1 for an interrupt this CPU acknowledged.
        3 => unsafe {
            asm!("msr icc_eoir1_el1, {}", "isb", in(reg) a.raw as u64, options(nostack))
        },
        2 => gicc().eoir.set(a.raw),
        _ => {}
    }
}

/// Deactivation (after [`eoi`]) of an interrupt the kernel handled itself.
pub fn deactivate(a: Ack) {
    deactivate_raw(a.raw)
}

/// Deactivates a physical interrupt by its (raw) INTID, e.g. a HW-linked one a guest no
/// longer holds.
pub fn deactivate_raw(raw: u32) {
    match VERSION.load(Ordering::Relaxed) {
        // SAFETY: DIR for an interrupt this CPU acknowledged and priority-dropped.
        3 => unsafe { asm!("msr icc_dir_el1, {}", "isb", in(reg) raw as u64, options(nostack)) },
        2 => gicc().dir.set(raw),
        _ => {}
    }
}

/// Called right before the CPU waits for an interrupt in WFI at EL2 (the idle loop, a vCPU's
/// in-place wait): makes a GICv2 CPU interface re-evaluate what it signals.
///
/// QEMU's GICv2 (hw/intc/arm_gic.c, 10.0.2) does not recompute a CPU's physical IRQ output
/// when a guest's EOI through the virtual CPU interface deactivates a hardware-linked physical
/// interrupt (`gic_complete_irq`'s vCPU path ends in `gic_update_virt` only). If the physical
/// interrupt's level is high at that moment (a virtual timer the guest re-armed with a
/// deadline already past while its interrupt was still active), it is pending and inactive
/// but not signalled, and a WFI waiting for it sleeps until some other GIC access recomputes
/// the outputs: forever once the other CPUs are idle too (seen as the second of two Linux
/// VMs never powering off once the first had, docs/qemu-bugs.md). A physical CPU-interface
/// write ends in `gic_update`, so PMR is written again with the value `init_cpu` gave it (it
/// never changes). On hardware the write changes nothing (IHI 0048B §4.4.2) and a GIC-400
/// signals an interrupt as soon as its deactivation makes it eligible (§3.2.4), so the
/// workaround only costs one Device write per wait, and nothing on GICv3, whose QEMU model
/// does not have the bug.
pub fn before_wait() {
    if VERSION.load(Ordering::Relaxed) == 2 {
        gicc().pmr.set(u32::from(PMR_ALL));
    }
}

/// The physical priority mask of every CPU: every priority passes.
const PMR_ALL: u8 = 0xff;

/// Whether SPI `intid` is pending at the physical distributor (GICD_ISPENDR). For a
/// level-sensitive SPI that the hypervisor acknowledged and left active (forwarded with the HW
/// bit), that is its input line: the interrupt is "active and pending" exactly while the line
/// is asserted (IHI 0069 §4.1.2; IHI 0048B §3.2.4), since acknowledging cleared any latch.
/// False before `init` and for INTIDs below 32 (banked per CPU, not read here).
pub fn spi_line_pending(intid: u32) -> bool {
    let base = GICD.load(Ordering::Relaxed);
    if base == 0 || !(32..1020).contains(&intid) {
        return false;
    }
    let addr = base + GICD_ISPENDR + 4 * (intid as usize / 32);
    // SAFETY: GICD_ISPENDR<n> of the distributor set in `init` (from the host device tree,
    // mapped as Device memory); n <= 31 stays inside the 64 KiB frame; a read has no side
    // effects, so no lock is needed against the driver's accesses.
    let word = unsafe { core::ptr::read_volatile(addr as *const u32) };
    word & (1 << (intid % 32)) != 0
}

/// GIC version in use (2 or 3), 0 before `init`.
pub fn version() -> u8 {
    VERSION.load(Ordering::Relaxed)
}

/// Number of list registers.
pub fn nr_lrs() -> usize {
    NR_LRS.load(Ordering::Relaxed)
}

/// ICC_SGI1R_EL1 value for SGI `intid` to the single CPU `mpidr` (IHI 0069H §12.2.21):
/// Aff3 [55:48], RS [47:44], Aff2 [39:32], INTID [27:24], Aff1 [23:16], TargetList [15:0].
/// TargetList covers Aff0 16 at a time, so Aff0 / 16 goes in RS (arm-gic's `SgiTarget::List`
/// has no RS, so CPUs with Aff0 >= 16 were unreachable through it).
const fn sgi1r_to(intid: u32, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    (((mpidr >> 32) & 0xff) << 48)
        | ((aff0 >> 4) << 44)
        | (((mpidr >> 16) & 0xff) << 32)
        | (((intid & 0xf) as u64) << 24)
        | (((mpidr >> 8) & 0xff) << 16)
        | (1 << (aff0 & 0xf))
}

const _: () = assert!(sgi1r_to(0, 0x0000_0000) == 1);
const _: () = assert!(sgi1r_to(0, 0x0000_0013) == (1 << 44) | (1 << 3));
const _: () =
    assert!(sgi1r_to(5, 0x01_0002_0300) == (1 << 48) | (2 << 32) | (5 << 24) | (3 << 16) | 1);

fn gicc() -> &'static GiccExtra {
    // SAFETY: set once in `init` to the GICC base from the device tree (mapped as Device);
    // the CPU interface is banked per CPU, so each CPU only touches its own; only used on
    // GICv2 paths, after `init`.
    unsafe { &*(GICC.load(Ordering::Relaxed) as *const GiccExtra) }
}
