//! Host tests of the virtual GIC: register emulation (GICD v2/v3, GICR), SGI generation,
//! device inputs, list-register flush/sync (ordering, overflow, eviction, resample, HW links),
//! LR encodings, and a hostile random access storm.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::mm::GuestPhysAddr;
use crate::vdev::MmioBus;
use AccessWidth::{Byte, Double, Half, Word};

const V0: VcpuId = VcpuId(0);
const V1: VcpuId = VcpuId(1);
const V2: VcpuId = VcpuId(2);

// ----- helpers -------------------------------------------------------------------------------

fn v3_with(mpidrs: &[u64], nr_spis: u32) -> Vgic {
    Vgic::new(&VgicConfig {
        version: GicVersion::V3,
        nr_spis,
        mpidrs,
    })
    .unwrap()
}

/// A GICv3 VM with `n` vCPUs (MPIDR Aff0 = index) and 64 SPIs.
fn v3(n: u64) -> Vgic {
    let mpidrs: Vec<u64> = (0..n).collect();
    v3_with(&mpidrs, 64)
}

/// A GICv2 VM with `n` vCPUs and 64 SPIs.
fn v2(n: u64) -> Vgic {
    let mpidrs: Vec<u64> = (0..n).collect();
    Vgic::new(&VgicConfig {
        version: GicVersion::V2,
        nr_spis: 64,
        mpidrs: &mpidrs,
    })
    .unwrap()
}

fn rd(g: &mut Vgic, v: VcpuId, off: u64) -> u32 {
    u32::try_from(g.dist_read(v, off, Word).unwrap()).unwrap()
}
fn wr(g: &mut Vgic, v: VcpuId, off: u64, value: u32) {
    g.dist_write(v, off, Word, u64::from(value)).unwrap();
}
fn rdr(g: &mut Vgic, v: VcpuId, off: u64) -> u32 {
    u32::try_from(g.redist_read(v, off, Word).unwrap()).unwrap()
}
fn wrr(g: &mut Vgic, v: VcpuId, off: u64, value: u32) {
    g.redist_write(v, off, Word, u64::from(value)).unwrap();
}

/// GICR SGI_base offset of vCPU `n`'s frame.
fn sgi_base(n: u64) -> u64 {
    n * 0x2_0000 + 0x1_0000
}

/// Offset of the one-bit register `block` (1 = IGROUPR ... 7 = ICACTIVER) word for `intid`.
fn bit_off(block: u64, intid: u32) -> u64 {
    block * 0x80 + u64::from(intid / 32) * 4
}
const IGROUPR: u64 = 1;
const ISENABLER: u64 = 2;
const ICENABLER: u64 = 3;
const ISPENDR: u64 = 4;
const ICPENDR: u64 = 5;
const ISACTIVER: u64 = 6;
const ICACTIVER: u64 = 7;

fn bit(intid: u32) -> u32 {
    1 << (intid % 32)
}

/// Distributor on (both groups), SPI `intid` enabled, group 1, priority `prio`, edge, routed
/// to vCPU 0 (v3) / CPU 0 (v2).
fn setup_spi(g: &mut Vgic, intid: u32, prio: u8, edge: bool) {
    wr(g, V0, 0x0, 0x3);
    let groups = rd(g, V0, bit_off(IGROUPR, intid));
    wr(g, V0, bit_off(IGROUPR, intid), groups | bit(intid));
    g.dist_write(V0, 0x400 + u64::from(intid), Byte, u64::from(prio))
        .unwrap();
    let cfg_off = 0xC00 + u64::from(intid / 16) * 4;
    let cfg_bit = 2 << (2 * (intid % 16));
    let cfg = rd(g, V0, cfg_off);
    wr(
        g,
        V0,
        cfg_off,
        if edge { cfg | cfg_bit } else { cfg & !cfg_bit },
    );
    if g.version() == GicVersion::V2 {
        g.dist_write(V0, 0x800 + u64::from(intid), Byte, 1).unwrap();
    }
    wr(g, V0, bit_off(ISENABLER, intid), bit(intid));
}

/// GICv3: SGI/PPI `intid` of vCPU `n` enabled, group 1, priority `prio`.
fn setup_private_v3(g: &mut Vgic, n: u64, intid: u32, prio: u8) {
    let base = sgi_base(n);
    wr(g, V0, 0x0, 0x3);
    let grp = rdr(g, V0, base + 0x80);
    wrr(g, V0, base + 0x80, grp | bit(intid));
    g.redist_write(V0, base + 0x400 + u64::from(intid), Byte, u64::from(prio))
        .unwrap();
    wrr(g, V0, base + 0x100, bit(intid));
}

fn lrs(n: usize) -> Vec<Lr> {
    vec![Lr::INVALID; n]
}

/// The guest's CPU interface acknowledges the highest-priority pending LR that can preempt the
/// active ones (the virtual CPU interface's behaviour, without groups and masks).
fn guest_ack(lrs: &mut [Lr]) -> Option<(u32, u8)> {
    let running = lrs
        .iter()
        .filter(|l| l.state.active())
        .map(|l| l.priority)
        .min()
        .unwrap_or(0xFF);
    let best = lrs
        .iter_mut()
        .filter(|l| l.state == LrState::Pending && (l.priority < running || running == 0xFF))
        .min_by_key(|l| (l.priority, l.intid))?;
    best.state = LrState::Active;
    Some((best.intid, best.source))
}

/// The guest deactivates `intid` (from `source`).
fn guest_eoi(lrs: &mut [Lr], intid: u32, source: u8) {
    if let Some(l) = lrs
        .iter_mut()
        .find(|l| l.intid == intid && l.source == source && l.state.active())
    {
        l.state = if l.state == LrState::PendingActive {
            LrState::Pending
        } else {
            LrState::Invalid
        };
    }
}

/// The guest takes and completes every interrupt it can; returns them in order.
fn guest_drain(lrs: &mut [Lr]) -> Vec<(u32, u8)> {
    let mut got = Vec::new();
    while let Some((intid, source)) = guest_ack(lrs) {
        got.push((intid, source));
        guest_eoi(lrs, intid, source);
    }
    got
}

/// Runs exit/entry rounds for `vcpu` until nothing is left: sync, flush, guest drains.
fn deliver_all(g: &mut Vgic, vcpu: VcpuId, lrs: &mut [Lr]) -> Vec<(u32, u8)> {
    let mut got = Vec::new();
    for _ in 0..100 {
        g.sync(vcpu, lrs);
        let r = g.flush(vcpu, lrs);
        check_invariants(g, vcpu, lrs);
        let round = guest_drain(lrs);
        if round.is_empty() && !r.overflow {
            g.sync(vcpu, lrs);
            return got;
        }
        got.extend(round);
    }
    panic!("delivery did not converge");
}

/// Cross-checks list-register bookkeeping (see [`Vgic::check_lrs`]).
fn check_invariants(g: &Vgic, vcpu: VcpuId, lrs: &[Lr]) {
    if let Err(problem) = g.check_lrs(vcpu, lrs) {
        panic!("vCPU {}: {problem}", vcpu.0);
    }
}

// ----- construction --------------------------------------------------------------------------

#[test]
fn config_validation() {
    let cfg = |version, nr_spis, mpidrs: &[u64]| {
        Vgic::new(&VgicConfig {
            version,
            nr_spis,
            mpidrs,
        })
        .map(|_| ())
    };
    use GicVersion::{V2 as G2, V3 as G3};
    assert_eq!(cfg(G3, 64, &[]), Err(VgicError::NoVcpus));
    let nine: Vec<u64> = (0..9).collect();
    assert_eq!(cfg(G2, 64, &nine), Err(VgicError::TooManyVcpus(9)));
    assert_eq!(cfg(G3, 64, &nine), Ok(()));
    let many: Vec<u64> = (0..65).map(|i| ((i / 16) << 8) | (i % 16)).collect();
    assert_eq!(cfg(G3, 64, &many), Err(VgicError::TooManyVcpus(65)));
    assert_eq!(cfg(G3, 64, many.get(..64).unwrap()), Ok(()));
    assert_eq!(cfg(G3, 33, &[0]), Err(VgicError::BadSpiCount(33)));
    assert_eq!(cfg(G3, 992, &[0]), Err(VgicError::BadSpiCount(992)));
    assert_eq!(cfg(G3, 960, &[0]), Ok(()));
    assert_eq!(cfg(G3, 0, &[0]), Ok(()));
    assert_eq!(cfg(G3, 64, &[1 << 24]), Err(VgicError::BadMpidr(1 << 24)));
    assert_eq!(cfg(G3, 64, &[1 << 31]), Err(VgicError::BadMpidr(1 << 31)));
    assert_eq!(cfg(G3, 64, &[0xFF_00FF_FFFF]), Ok(()));
    assert_eq!(cfg(G3, 64, &[3, 3]), Err(VgicError::DuplicateMpidr(3)));
    // Errors print something useful.
    assert!(alloc::format!("{}", VgicError::BadSpiCount(33)).contains("33"));
}

#[test]
fn kickset_basics() {
    let k = KickSet::single(3).union(KickSet::single(63));
    assert!(k.contains(VcpuId(3)) && k.contains(VcpuId(63)) && !k.contains(VcpuId(0)));
    assert!(!k.contains(VcpuId(64)));
    assert_eq!(k.iter().collect::<Vec<_>>(), vec![VcpuId(3), VcpuId(63)]);
    assert_eq!(KickSet::single(64), KickSet::EMPTY);
    assert_eq!(KickSet::all(64).0, u64::MAX);
    assert_eq!(KickSet::all(3).0, 7);
    assert!(KickSet::EMPTY.is_empty());
}

// ----- identification and control registers --------------------------------------------------

#[test]
fn v3_distributor_identification() {
    let mut g = v3(4);
    // 64 SPIs: 96 INTIDs, ITLinesNumber 2; IDbits 9; A3V; No1N 0; RSS 0 (Aff0 <= 15).
    assert_eq!(rd(&mut g, V0, 0x4), 2 | (9 << 19) | (1 << 24));
    assert_eq!(rd(&mut g, V0, 0x8), 0x4500_043B);
    assert_eq!(rd(&mut g, V0, 0xC), 0, "TYPER2");
    assert_eq!(rd(&mut g, V0, 0xFFE8), 0x3B, "PIDR2.ArchRev = 3");
    assert_eq!(rd(&mut g, V0, 0xFFE0), 0x92);
    assert_eq!(rd(&mut g, V0, 0xFFF0), 0x0D);
    assert_eq!(rd(&mut g, V0, 0xFFFC), 0xB1);
    // Read-only.
    wr(&mut g, V0, 0x4, 0);
    wr(&mut g, V0, 0x8, 0);
    wr(&mut g, V0, 0xFFE8, 0);
    assert_eq!(rd(&mut g, V0, 0x8), 0x4500_043B);
    assert_eq!(rd(&mut g, V0, 0xFFE8), 0x3B);
    // RSS when a vCPU has Aff0 >= 16; 960 SPIs -> ITLinesNumber 30.
    let mpidrs: Vec<u64> = (0..20).collect();
    let mut g = v3_with(&mpidrs, 960);
    assert_eq!(rd(&mut g, V0, 0x4), 30 | (9 << 19) | (1 << 24) | (1 << 26));
}

#[test]
fn v3_distributor_ctlr() {
    let mut g = v3(2);
    // ARE (bit 4) and DS (bit 6) read as one; nothing enabled.
    assert_eq!(rd(&mut g, V0, 0x0), 0x50);
    wr(&mut g, V0, 0x0, 0xFFFF_FFFF);
    assert_eq!(rd(&mut g, V0, 0x0), 0x53, "RWP and E1NWF stay zero");
    wr(&mut g, V0, 0x0, 0);
    assert_eq!(rd(&mut g, V0, 0x0), 0x50, "ARE and DS are RAO/WI");
    // Linux writes ARE_NS | EnableGrp1A | EnableGrp1 (bits 4, 1, 0).
    wr(&mut g, V0, 0x0, 0x13);
    assert_eq!(rd(&mut g, V0, 0x0), 0x53);
    // Enabling a group kicks everyone.
    assert_eq!(g.take_kicks(), KickSet::all(2));
    wr(&mut g, V0, 0x0, 0x13);
    assert_eq!(g.take_kicks(), KickSet::EMPTY, "no change, no kick");
}

#[test]
fn v2_distributor_identification_and_ctlr() {
    let mut g = v2(4);
    assert_eq!(
        rd(&mut g, V0, 0x4),
        2 | (3 << 5),
        "ITLinesNumber 2, CPUNumber 3"
    );
    assert_eq!(rd(&mut g, V0, 0x8), 0x0200_043B);
    assert_eq!(rd(&mut g, V0, 0xFE8), 0x2B, "ICPIDR2.ArchRev = 2");
    assert_eq!(rd(&mut g, V0, 0xFE0), 0x90);
    assert_eq!(rd(&mut g, V0, 0xFFE8), 0, "no GICv3 ID block");
    assert_eq!(rd(&mut g, V0, 0xC), 0);
    assert_eq!(rd(&mut g, V0, 0x0), 0);
    wr(&mut g, V0, 0x0, 0xFFFF_FFFF);
    assert_eq!(rd(&mut g, V0, 0x0), 3);
    // GICv3-only registers are reserved.
    g.dist_write(V0, 0x6100, Word, 1).unwrap();
    assert_eq!(rd(&mut g, V0, 0x6100), 0);
    assert_eq!(g.dist_read(V0, 0x6100, Double), Err(MmioError::BadAccess));
    // No redistributor on GICv2.
    assert_eq!(g.redist_read(V0, 0x8, Word), Err(MmioError::BadAccess));
    // A uniprocessor VM.
    let mut g = v2(1);
    assert_eq!(rd(&mut g, V0, 0x4), 2);
}

#[test]
fn gicr_typer_waker_and_ids() {
    let mpidrs = [0x0, 0x1, 0x01_0002_0304];
    let mut g = v3_with(&mpidrs, 32);
    assert_eq!(g.redist_size_bytes(), 3 * 0x2_0000);
    for (n, &mpidr) in mpidrs.iter().enumerate() {
        let base = n as u64 * 0x2_0000;
        let typer = g.redist_read(V0, base + 0x8, Double).unwrap();
        let aff = ((mpidr >> 8) & 0xFF00_0000) | (mpidr & 0xFF_FFFF);
        let last = u64::from(n == 2) << 4;
        assert_eq!(typer, (aff << 32) | ((n as u64) << 8) | last, "frame {n}");
        // 32-bit halves (AArch32 guests, and Linux's lo-hi accessors).
        assert_eq!(
            g.redist_read(V0, base + 0x8, Word).unwrap(),
            typer & 0xFFFF_FFFF
        );
        assert_eq!(g.redist_read(V0, base + 0xC, Word).unwrap(), typer >> 32);
        // Read-only.
        g.redist_write(V0, base + 0x8, Double, 0).unwrap();
        assert_eq!(g.redist_read(V0, base + 0x8, Double).unwrap(), typer);
        assert_eq!(rdr(&mut g, V0, base + 0x4), 0x4500_043B, "GICR_IIDR");
        assert_eq!(rdr(&mut g, V0, base + 0xFFE8), 0x3B, "GICR_PIDR2");
        assert_eq!(rdr(&mut g, V0, base + 0xFFE0), 0x93, "GICR_PIDR0");
        // CTLR: EnableLPIs RAZ/WI, RWP/UWP zero.
        wrr(&mut g, V0, base, 0xFFFF_FFFF);
        assert_eq!(rdr(&mut g, V0, base), 0);
        assert_eq!(rdr(&mut g, V0, base + 0x10), 0, "STATUSR");
    }
    // The guest's "last" loop: frame 2 ends it.
    assert_eq!(g.redist_read(V0, 0x8, Word).unwrap() & 0x10, 0);
    assert_eq!(g.redist_read(V0, 0x4_0008, Word).unwrap() & 0x10, 0x10);
    // Beyond the last frame: RAZ/WI.
    assert_eq!(rdr(&mut g, V0, 0x6_0008), 0);
    wrr(&mut g, V0, 0x6_0014, 0);

    // WAKER: ProcessorSleep and ChildrenAsleep set at reset; waking clears both.
    assert_eq!(rdr(&mut g, V1, 0x2_0014), 0x6);
    wrr(&mut g, V1, 0x2_0014, 0);
    assert_eq!(rdr(&mut g, V1, 0x2_0014), 0);
    assert_eq!(rdr(&mut g, V1, 0x0_0014), 0x6, "other frames untouched");
    // ChildrenAsleep is read-only; ProcessorSleep sends it back to sleep.
    wrr(&mut g, V1, 0x2_0014, 0x4);
    assert_eq!(rdr(&mut g, V1, 0x2_0014), 0);
    wrr(&mut g, V1, 0x2_0014, 0x2);
    assert_eq!(rdr(&mut g, V1, 0x2_0014), 0x6);
}

// ----- per-INTID registers -------------------------------------------------------------------

#[test]
fn enable_disable_spis_and_private_ranges() {
    let mut g = v3(2);
    wr(&mut g, V0, bit_off(ISENABLER, 40), bit(40) | bit(63));
    assert_eq!(rd(&mut g, V0, bit_off(ISENABLER, 40)), bit(40) | bit(63));
    assert_eq!(rd(&mut g, V0, bit_off(ICENABLER, 40)), bit(40) | bit(63));
    wr(&mut g, V0, bit_off(ICENABLER, 40), bit(63));
    assert_eq!(rd(&mut g, V0, bit_off(ISENABLER, 40)), bit(40));
    // Writing zeros changes nothing.
    wr(&mut g, V0, bit_off(ISENABLER, 40), 0);
    wr(&mut g, V0, bit_off(ICENABLER, 40), 0);
    assert_eq!(rd(&mut g, V0, bit_off(ISENABLER, 40)), bit(40));
    // Beyond the implemented SPIs: RAZ/WI.
    wr(&mut g, V0, bit_off(ISENABLER, 96), u32::MAX);
    assert_eq!(rd(&mut g, V0, bit_off(ISENABLER, 96)), 0);
    // GICv3: the GICD's SGI/PPI word is RAZ/WI; the GICR has them, banked per frame.
    wr(&mut g, V0, bit_off(ISENABLER, 0), u32::MAX);
    assert_eq!(rd(&mut g, V0, bit_off(ISENABLER, 0)), 0);
    assert_eq!(
        rdr(&mut g, V0, sgi_base(0) + 0x100),
        0,
        "SGIs disabled at reset"
    );
    wrr(&mut g, V1, sgi_base(0) + 0x100, 0x8000_0002);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x100), 0x8000_0002);
    assert_eq!(
        rdr(&mut g, V0, sgi_base(1) + 0x100),
        0,
        "bank of vCPU 1 untouched"
    );
    wrr(&mut g, V0, sgi_base(0) + 0x180, 0x2);
    assert_eq!(rdr(&mut g, V1, sgi_base(0) + 0x180), 0x8000_0000);
}

#[test]
fn v2_banked_registers_and_permanent_sgi_enables() {
    let mut g = v2(2);
    // SGIs are permanently enabled (RAO/WI); PPIs are banked per accessing CPU.
    assert_eq!(rd(&mut g, V0, 0x100), 0xFFFF);
    wr(&mut g, V0, 0x180, u32::MAX);
    assert_eq!(rd(&mut g, V0, 0x100), 0xFFFF);
    wr(&mut g, V1, 0x100, 0x0800_0000);
    assert_eq!(rd(&mut g, V1, 0x100), 0x0800_FFFF);
    assert_eq!(rd(&mut g, V0, 0x100), 0xFFFF);
    // IGROUPR0 and IPRIORITYR0-7 banked too.
    wr(&mut g, V1, 0x80, 0xFFFF_FFFF);
    assert_eq!(rd(&mut g, V1, 0x80), u32::MAX);
    assert_eq!(rd(&mut g, V0, 0x80), 0);
    g.dist_write(V1, 0x41B, Byte, 0xA0).unwrap();
    assert_eq!(rd(&mut g, V1, 0x418), 0xA000_0000);
    assert_eq!(rd(&mut g, V0, 0x418), 0);
}

#[test]
fn pend_unpend_through_registers() {
    let mut g = v3(2);
    wr(&mut g, V0, bit_off(ISPENDR, 45), bit(45));
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 45)), bit(45));
    assert_eq!(rd(&mut g, V0, bit_off(ICPENDR, 45)), bit(45));
    wr(&mut g, V0, bit_off(ICPENDR, 45), bit(45));
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 45)), 0);
    // A level-sensitive interrupt stays pending while its line is high, whatever ICPENDR says.
    g.set_level(46, V0, true).unwrap();
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 46)), bit(46));
    wr(&mut g, V0, bit_off(ICPENDR, 46), bit(46));
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 46)), bit(46));
    g.set_level(46, V0, false).unwrap();
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 46)), 0);
    // ISPENDR latches a level interrupt until cleared.
    wr(&mut g, V0, bit_off(ISPENDR, 46), bit(46));
    g.set_level(46, V0, true).unwrap();
    g.set_level(46, V0, false).unwrap();
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 46)), bit(46));
    wr(&mut g, V0, bit_off(ICPENDR, 46), bit(46));
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 46)), 0);
    // GICv3 SGIs can be pended through GICR_ISPENDR0.
    wrr(&mut g, V0, sgi_base(1) + 0x200, 0x1);
    assert_eq!(rdr(&mut g, V0, sgi_base(1) + 0x200), 0x1);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x200), 0);
    wrr(&mut g, V0, sgi_base(1) + 0x280, 0x1);
    assert_eq!(rdr(&mut g, V0, sgi_base(1) + 0x200), 0);
}

#[test]
fn activate_deactivate_through_registers() {
    let mut g = v3(1);
    wr(&mut g, V0, bit_off(ISACTIVER, 50), bit(50));
    assert_eq!(rd(&mut g, V0, bit_off(ISACTIVER, 50)), bit(50));
    assert_eq!(rd(&mut g, V0, bit_off(ICACTIVER, 50)), bit(50));
    wr(&mut g, V0, bit_off(ICACTIVER, 50), bit(50));
    assert_eq!(rd(&mut g, V0, bit_off(ISACTIVER, 50)), 0);
    // An active interrupt gets an LR even when disabled, so the guest's deactivation lands.
    wr(&mut g, V0, bit_off(ISACTIVER, 50), bit(50));
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    assert_eq!(l[0].intid, 50);
    assert_eq!(l[0].state, LrState::Active);
    // ICACTIVER while in the LR: requested, merged at the next flush.
    wr(&mut g, V0, bit_off(ICACTIVER, 50), bit(50));
    assert_eq!(rd(&mut g, V0, bit_off(ISACTIVER, 50)), 0);
    assert!(g.take_kicks().contains(V0));
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::Invalid);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(rd(&mut g, V0, bit_off(ISACTIVER, 50)), 0);
    // GICR active registers.
    wrr(&mut g, V0, sgi_base(0) + 0x300, 0x8000_0000);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x380), 0x8000_0000);
    wrr(&mut g, V0, sgi_base(0) + 0x380, 0x8000_0000);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x300), 0);
}

#[test]
fn priorities_have_five_bits() {
    let mut g = v3(1);
    wr(&mut g, V0, 0x420, 0xFFFF_FFFF);
    assert_eq!(rd(&mut g, V0, 0x420), 0xF8F8_F8F8);
    g.dist_write(V0, 0x421, Byte, 0x17).unwrap();
    assert_eq!(rd(&mut g, V0, 0x420), 0xF8F8_10F8);
    assert_eq!(g.dist_read(V0, 0x421, Byte).unwrap(), 0x10);
    assert_eq!(g.dist_read(V0, 0x423, Byte).unwrap(), 0xF8);
    // GICD_IPRIORITYR0-7 are RAZ/WI with affinity routing; the GICR has them.
    wr(&mut g, V0, 0x400, 0xFFFF_FFFF);
    assert_eq!(rd(&mut g, V0, 0x400), 0);
    g.redist_write(V0, sgi_base(0) + 0x41F, Byte, 0xA7).unwrap();
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x41C), 0xA000_0000);
    // Beyond the implemented INTIDs.
    wr(&mut g, V0, 0x400 + 96, 0xFFFF_FFFF);
    assert_eq!(rd(&mut g, V0, 0x400 + 96), 0);
}

#[test]
fn configuration_registers() {
    let mut g = v3(1);
    // GICR_ICFGR0: SGIs edge, read-only.
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0xC00), 0xAAAA_AAAA);
    wrr(&mut g, V0, sgi_base(0) + 0xC00, 0);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0xC00), 0xAAAA_AAAA);
    // GICR_ICFGR1: PPIs level at reset, programmable; Int_config[0] RAZ.
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0xC04), 0);
    wrr(&mut g, V0, sgi_base(0) + 0xC04, 0xFFFF_FFFF);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0xC04), 0xAAAA_AAAA);
    // SPIs.
    wr(&mut g, V0, 0xC08, 0x0000_0008);
    assert_eq!(rd(&mut g, V0, 0xC08), 0x8, "INTID 33 edge");
    // GICD_ICFGR0/1 RAZ/WI with ARE.
    assert_eq!(rd(&mut g, V0, 0xC00), 0);
    // GICv2 exposes the banked ones in the GICD.
    let mut g = v2(1);
    assert_eq!(rd(&mut g, V0, 0xC00), 0xAAAA_AAAA);
    wr(&mut g, V0, 0xC04, 0x2000_0000);
    assert_eq!(rd(&mut g, V0, 0xC04), 0x2000_0000);
}

#[test]
fn groups_and_ds_raz_registers() {
    let mut g = v3(1);
    wr(&mut g, V0, bit_off(IGROUPR, 32), 0xF0F0_F0F0);
    assert_eq!(rd(&mut g, V0, bit_off(IGROUPR, 32)), 0xF0F0_F0F0);
    wr(&mut g, V0, bit_off(IGROUPR, 32), 0x0F);
    assert_eq!(
        rd(&mut g, V0, bit_off(IGROUPR, 32)),
        0x0F,
        "IGROUPR writes zeros too"
    );
    wrr(&mut g, V0, sgi_base(0) + 0x80, u32::MAX);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x80), u32::MAX);
    for off in [0xD04, 0xE08, 0xF00, 0xF10, 0xF20] {
        wr(&mut g, V0, off, u32::MAX);
        assert_eq!(rd(&mut g, V0, off), 0, "GICD {off:#x}");
    }
    for off in [0xD00, 0xE00] {
        wrr(&mut g, V0, sgi_base(0) + off, u32::MAX);
        assert_eq!(rdr(&mut g, V0, sgi_base(0) + off), 0, "GICR {off:#x}");
    }
}

// ----- access widths -------------------------------------------------------------------------

#[test]
fn bad_widths_and_offsets() {
    let mut g = v3(2);
    let bad = Err(MmioError::BadAccess);
    // Halfwords never.
    assert_eq!(g.dist_read(V0, 0x0, Half), bad);
    assert_eq!(g.dist_read(V0, 0x420, Half), bad);
    assert_eq!(g.dist_write(V0, 0x420, Half, 0), Err(MmioError::BadAccess));
    assert_eq!(g.redist_read(V0, 0x14, Half), bad);
    // 64-bit only on the 64-bit registers.
    assert_eq!(g.dist_read(V0, 0x0, Double), bad);
    assert_eq!(g.dist_read(V0, 0x100, Double), bad);
    assert_eq!(g.dist_read(V0, 0x3000, Double), bad, "reserved");
    assert!(g.dist_read(V0, 0x6100, Double).is_ok());
    assert_eq!(g.dist_read(V0, 0x6104, Double), bad, "misaligned");
    assert!(g.redist_read(V0, 0x8, Double).is_ok());
    assert_eq!(g.redist_read(V0, 0x10, Double), bad);
    // Bytes only where the specification allows them.
    assert_eq!(g.dist_read(V0, 0x0, Byte), bad);
    assert_eq!(g.dist_read(V0, 0x101, Byte), bad);
    assert_eq!(g.dist_write(V0, 0x6100, Byte, 0), Err(MmioError::BadAccess));
    assert!(g.dist_read(V0, 0x421, Byte).is_ok());
    assert!(
        g.dist_read(V0, 0x801, Byte).is_ok(),
        "ITARGETSR RAZ/WI but byte-accessible"
    );
    assert!(g.redist_read(V0, 0x1_0401, Byte).is_ok());
    assert_eq!(g.redist_read(V0, 0x1_0100, Byte), bad);
    // Misaligned words.
    assert_eq!(g.dist_read(V0, 0x102, Word), bad);
    assert_eq!(g.redist_write(V0, 0x16, Word, 0), Err(MmioError::BadAccess));
    // Outside the window, unknown accessor.
    assert_eq!(g.dist_read(V0, 0x1_0000, Word), bad);
    assert_eq!(g.dist_read(V0, u64::MAX - 3, Word), bad);
    assert_eq!(g.dist_read(VcpuId(2), 0x0, Word), bad);
    assert_eq!(g.redist_read(VcpuId(9), 0x0, Word), bad);
    // Reserved space: RAZ/WI for bytes and words.
    for off in [0x10, 0x40, 0x48, 0x3000, 0xF30, 0x8000, 0xFFC0] {
        wr(&mut g, V0, off, u32::MAX);
        g.dist_write(V0, off + 1, Byte, 0xFF).unwrap();
        assert_eq!(rd(&mut g, V0, off), 0, "GICD {off:#x}");
    }
    // IROUTER<0..31> are reserved but keep the 64-bit register's widths.
    for off in [0x6000, 0x60F8] {
        g.dist_write(V0, off, Double, u64::MAX).unwrap();
        assert_eq!(g.dist_read(V0, off, Double).unwrap(), 0);
        assert_eq!(g.dist_read(V0, off, Byte), bad);
    }
    for off in [
        0x18, 0x70, 0x78, 0x100, 0x1_0000, 0x1_0104, 0x1_0C08, 0x1_1000,
    ] {
        wrr(&mut g, V0, off, u32::MAX);
        assert_eq!(rdr(&mut g, V0, off), 0, "GICR {off:#x}");
    }
    // Nothing above changed the visible state.
    assert_eq!(rd(&mut g, V0, 0x0), 0x50);
    assert_eq!(g.take_kicks(), KickSet::EMPTY);
}

// ----- routing -------------------------------------------------------------------------------

#[test]
fn irouter_routing_of_spis() {
    let mpidrs = [0x0, 0x1, 0x100, 0x01_0000_0000];
    let mut g = v3_with(&mpidrs, 64);
    setup_spi(&mut g, 40, 0x80, true);
    let router = 0x6000 + 8 * 40;
    assert_eq!(
        g.dist_read(V0, router, Double).unwrap(),
        0,
        "reset: Aff 0.0.0.0"
    );
    // Only implemented bits stick: affinity and IRM.
    g.dist_write(V0, router, Double, u64::MAX).unwrap();
    assert_eq!(g.dist_read(V0, router, Double).unwrap(), 0xFF_80FF_FFFF);
    // Route to vCPU 2 (Aff1 = 1) with 32-bit halves.
    g.dist_write(V0, router, Word, 0x100).unwrap();
    g.dist_write(V0, router + 4, Word, 0).unwrap();
    assert_eq!(g.dist_read(V0, router, Double).unwrap(), 0x100);
    assert_eq!(g.dist_read(V0, router + 4, Word).unwrap(), 0);
    g.take_kicks();
    wr(&mut g, V0, bit_off(ISPENDR, 40), bit(40));
    assert_eq!(g.take_kicks(), KickSet::single(2));
    assert!(g.has_deliverable(V2));
    assert!(!g.has_deliverable(V0));
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    g.flush(V2, &mut l);
    assert_eq!(l[0].intid, 40);
    // Aff3 routing (vCPU 3).
    g.dist_write(V0, router, Double, 0x01_0000_0000).unwrap();
    assert_eq!(g.dist_read(V0, router + 4, Word).unwrap(), 1);
    // While the interrupt sits in vCPU 2's LR, re-routing kicks vCPU 2 to retract it.
    assert!(g.take_kicks().contains(V2));
    g.sync(V2, &mut l);
    let r = g.flush(V2, &mut l);
    assert_eq!(g.live_lrs(V2), 0);
    assert_eq!(r.kick, KickSet::single(3), "the new target is kicked");
    assert!(g.has_deliverable(VcpuId(3)));
    // An affinity that matches no vCPU: pending, deliverable nowhere.
    g.dist_write(V0, router, Double, 0x55).unwrap();
    assert!((0..4).all(|v| !g.has_deliverable(VcpuId(v))));
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 40)), bit(40));
}

#[test]
fn irouter_one_of_n() {
    let mut g = v3(3);
    setup_spi(&mut g, 40, 0x80, true);
    g.dist_write(V0, 0x6000 + 8 * 40, Double, 1 << 31).unwrap();
    g.inject_edge(40, V0).unwrap();
    // No redistributor awake yet: nobody participates.
    assert!((0..3).all(|v| !g.has_deliverable(VcpuId(v))));
    wrr(&mut g, V1, 0x2_0014, 0);
    wrr(&mut g, V2, 0x4_0014, 0);
    assert!(!g.has_deliverable(V0));
    assert!(g.has_deliverable(V1) && g.has_deliverable(V2));
    // The first to flush takes it; the other no longer sees it.
    let mut l = lrs(4);
    g.flush(V2, &mut l);
    assert_eq!(l[0].intid, 40);
    assert!(!g.has_deliverable(V1));
    let mut l1 = lrs(4);
    g.flush(V1, &mut l1);
    assert_eq!(g.live_lrs(V1), 0);
}

#[test]
fn v2_itargetsr() {
    let mut g = v2(3);
    // SGI/PPI bytes: read-only, the accessing CPU's bit.
    assert_eq!(rd(&mut g, V0, 0x800), 0x0101_0101);
    assert_eq!(rd(&mut g, V2, 0x81C), 0x0404_0404);
    wr(&mut g, V1, 0x800, 0);
    assert_eq!(rd(&mut g, V1, 0x800), 0x0202_0202);
    // SPIs: writable, bits beyond the CPUs ignored.
    wr(&mut g, V0, 0x820, 0xFF04_0302);
    assert_eq!(rd(&mut g, V0, 0x820), 0x0704_0302);
    g.dist_write(V0, 0x821, Byte, 0x01).unwrap();
    assert_eq!(rd(&mut g, V0, 0x820), 0x0704_0102);
    // Delivery follows the targets: SPI 33 -> CPU 0, SPI 35 -> any of three.
    setup_spi(&mut g, 33, 0x80, true);
    g.inject_edge(33, V0).unwrap();
    assert!(g.has_deliverable(V0) && !g.has_deliverable(V1));
    g.dist_write(V0, 0x821, Byte, 0x02).unwrap();
    assert!(!g.has_deliverable(V0) && g.has_deliverable(V1));
    // A uniprocessor VM: RAZ/WI, every SPI goes to CPU 0.
    let mut g = v2(1);
    assert_eq!(rd(&mut g, V0, 0x800), 0);
    wr(&mut g, V0, 0x820, 0xFFFF_FFFF);
    assert_eq!(rd(&mut g, V0, 0x820), 0);
    wr(&mut g, V0, 0x0, 1);
    wr(&mut g, V0, 0x104, 0x2);
    g.inject_edge(33, V0).unwrap();
    assert!(g.has_deliverable(V0));
}

// ----- SGIs ----------------------------------------------------------------------------------

#[test]
fn v2_sgir_filters() {
    let mut g = v2(4);
    wr(&mut g, V0, 0x0, 1);
    g.take_kicks();
    // List: CPUs 1 and 3, SGI 5 from CPU 2; targets beyond the CPUs ignored.
    wr(&mut g, V2, 0xF00, (0xFA << 16) | 5);
    assert_eq!(g.take_kicks(), KickSet(0b1010));
    assert_eq!(
        rd(&mut g, V1, 0xF24),
        0x0000_0400,
        "SGI 5 pending from CPU 2"
    );
    assert_eq!(rd(&mut g, V3_ID, 0xF24), 0x0000_0400);
    assert_eq!(rd(&mut g, V0, 0xF24), 0);
    assert_eq!(rd(&mut g, V2, 0xF24), 0);
    assert_eq!(rd(&mut g, V1, bit_off(ISPENDR, 0)), bit(5));
    // All but self (NSATT ignored).
    wr(&mut g, V1, 0xF00, (1 << 24) | (1 << 15) | 2);
    assert_eq!(g.take_kicks(), KickSet(0b1101));
    for v in [V0, V2, V3_ID] {
        assert_eq!(g.dist_read(v, 0xF22, Byte).unwrap(), 0x02);
    }
    assert_eq!(g.dist_read(V1, 0xF22, Byte).unwrap(), 0);
    // Self only; the target list is ignored.
    wr(&mut g, V3_ID, 0xF00, (2 << 24) | (0xFF << 16) | 15);
    assert_eq!(g.take_kicks(), KickSet::single(3));
    assert_eq!(g.dist_read(V3_ID, 0xF2F, Byte).unwrap(), 0x08);
    // The reserved filter does nothing; SGIR reads as zero.
    wr(&mut g, V0, 0xF00, (3 << 24) | (0xFF << 16) | 1);
    assert_eq!(g.take_kicks(), KickSet::EMPTY);
    assert_eq!(rd(&mut g, V0, 0xF00), 0);
    // ISPENDR/ICPENDR writes to SGIs are ignored on GICv2.
    wr(&mut g, V0, bit_off(ICPENDR, 0), 0xFFFF);
    assert_eq!(g.dist_read(V0, 0xF22, Byte).unwrap(), 0x02);
    wr(&mut g, V0, bit_off(ISPENDR, 0), 0x1);
    assert_eq!(rd(&mut g, V0, 0xF20), 0x0002_0000);
}
const V3_ID: VcpuId = VcpuId(3);

#[test]
fn v2_spendsgir_cpendsgir_per_source() {
    let mut g = v2(4);
    wr(&mut g, V0, 0x0, 1);
    g.take_kicks();
    // SPENDSGIR sets sources of the accessing CPU's SGIs, byte by byte.
    g.dist_write(V1, 0xF21, Byte, 0x0D).unwrap();
    assert_eq!(
        rd(&mut g, V1, 0xF20),
        0x0000_0D00,
        "SGI 1 from CPUs 0, 2, 3"
    );
    assert_eq!(g.take_kicks(), KickSet::single(1));
    wr(&mut g, V1, 0xF2C, 0xFF00_0000);
    assert_eq!(
        rd(&mut g, V1, 0xF2C),
        0x0F00_0000,
        "bits beyond the CPUs ignored"
    );
    // CPENDSGIR clears chosen sources.
    g.dist_write(V1, 0xF11, Byte, 0x04).unwrap();
    assert_eq!(rd(&mut g, V1, 0xF10), 0x0000_0900);
    assert_eq!(rd(&mut g, V1, 0xF20), 0x0000_0900, "both views agree");
    // Delivery: one LR per source, lowest source first; EOI maintenance while more wait.
    let mut l = lrs(4);
    g.flush(V1, &mut l);
    let sgi1 = l.iter().find(|lr| lr.intid == 1).copied().unwrap();
    assert_eq!(
        (sgi1.source, sgi1.state, sgi1.eoi_maint),
        (0, LrState::Pending, true)
    );
    assert_eq!(
        rd(&mut g, V1, 0xF20) & 0xFF00,
        0x0900,
        "source 0 now in the LR"
    );
    let got = deliver_all(&mut g, V1, &mut l);
    let mut sgi1_sources: Vec<u8> = got
        .iter()
        .filter(|(i, _)| *i == 1)
        .map(|&(_, s)| s)
        .collect();
    sgi1_sources.sort_unstable();
    assert_eq!(sgi1_sources, vec![0, 3]);
    let mut sgi15: Vec<u8> = got
        .iter()
        .filter(|(i, _)| *i == 15)
        .map(|&(_, s)| s)
        .collect();
    sgi15.sort_unstable();
    assert_eq!(sgi15, vec![0, 1, 2, 3]);
    assert_eq!(got.len(), 6);
    assert_eq!(rd(&mut g, V1, 0xF20), 0);
    assert_eq!(rd(&mut g, V1, 0xF2C), 0);
    // CPENDSGIR on the instance in an LR retracts it.
    g.dist_write(V2, 0xF24, Byte, 0x01).unwrap();
    let mut l2 = lrs(4);
    g.flush(V2, &mut l2);
    assert_eq!(l2[0].state, LrState::Pending);
    g.dist_write(V2, 0xF14, Byte, 0x01).unwrap();
    assert_eq!(rd(&mut g, V2, 0xF24), 0);
    g.sync(V2, &mut l2);
    g.flush(V2, &mut l2);
    assert_eq!(g.live_lrs(V2), 0);
    assert!(!g.has_deliverable(V2));
}

#[test]
fn v2_sgi_from_same_source_while_active() {
    let mut g = v2(2);
    wr(&mut g, V0, 0x0, 1);
    wr(&mut g, V0, 0xF00, (1 << 16) | 3);
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    assert_eq!(guest_ack(&mut l), Some((3, 0)));
    // The same source sends again while the first is active: pending+active in the same LR.
    g.sync(V0, &mut l);
    wr(&mut g, V0, 0xF00, (1 << 16) | 3);
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::PendingActive);
    assert_eq!(g.live_lrs(V0), 1);
    guest_eoi(&mut l, 3, 0);
    assert_eq!(guest_drain(&mut l), vec![(3, 0)]);
    g.sync(V0, &mut l);
    assert!(!g.has_deliverable(V0));
}

#[test]
fn v3_sgi1r_targets() {
    // 20 vCPUs: Aff0 0..15 at Aff1 = 0, then Aff0 16..19 (needs RS = 1), plus one on Aff1 = 2.
    let mut mpidrs: Vec<u64> = (0..20).collect();
    mpidrs.push(0x0200);
    mpidrs.push(0x02_0004_0607);
    let mut g = v3_with(&mpidrs, 32);
    let sgi = |intid: u64, aff1: u64, rs: u64, list: u64| {
        (intid << 24) | (aff1 << 16) | (rs << 44) | list
    };
    // vCPUs 1 and 3.
    assert_eq!(
        g.sgi1r(V0, sgi(2, 0, 0, 0b1010)),
        KickSet(0),
        "disabled: pended, no kick"
    );
    let pend = |g: &mut Vgic, n: u64| rdr(g, V0, sgi_base(n) + 0x200);
    assert_eq!(pend(&mut g, 1), 1 << 2);
    assert_eq!(pend(&mut g, 3), 1 << 2);
    assert_eq!(pend(&mut g, 0), 0);
    // Enabled and group enabled: kicks.
    for n in 0..22 {
        setup_private_v3(&mut g, n, 7, 0x40);
    }
    g.take_kicks();
    assert_eq!(g.sgi1r(V0, sgi(7, 0, 0, 0b1010)), KickSet(0b1010));
    // RS = 1: TargetList bit n is Aff0 16 + n.
    assert_eq!(
        g.sgi1r(V0, sgi(7, 0, 1, 0b1001)),
        KickSet((1 << 16) | (1 << 19))
    );
    // Aff1 = 2, Aff0 0.
    assert_eq!(g.sgi1r(V0, sgi(7, 2, 0, 1)), KickSet(1 << 20));
    // Aff3.Aff2.Aff1.Aff0 = 02.04.06.07.
    let full = (0x02 << 48) | (0x04 << 32) | sgi(7, 0x06, 0, 1 << 7);
    assert_eq!(g.sgi1r(V0, full), KickSet(1 << 21));
    // Targets that match nobody are ignored.
    assert_eq!(g.sgi1r(V0, sgi(7, 9, 0, 0xFFFF)), KickSet(0));
    assert_eq!(g.sgi1r(V0, sgi(7, 0, 2, 0xFFFF)), KickSet(0));
    // IRM: everyone but the sender, whatever the list says.
    let all = g.sgi1r(V1, (1 << 40) | sgi(7, 0, 0, 0));
    assert_eq!(all, KickSet(KickSet::all(22).0 & !2));
    // SGI0R only reaches Group 0 SGIs; SGI1R reaches both (single security state).
    wrr(&mut g, V0, sgi_base(0) + 0x100, 1 << 9);
    assert_eq!(
        g.sgi(V1, sgi(9, 0, 0, 1), false),
        KickSet(1),
        "group 0 SGI, group 0 request"
    );
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x200) & (1 << 9), 1 << 9);
    assert_eq!(
        g.sgi(V1, sgi(7, 0, 0, 1), false),
        KickSet(0),
        "group 1 SGI, group 0 request"
    );
    wrr(&mut g, V0, sgi_base(0) + 0x280, 1 << 7);
    g.sgi(V1, sgi(7, 0, 0, 1), false);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + 0x200) & (1 << 7), 0);
    // An unknown sender generates nothing; a GICv2 VM ignores the call.
    assert_eq!(g.sgi1r(VcpuId(99), (1 << 40) | sgi(7, 0, 0, 0)), KickSet(0));
    let mut g2 = v2(2);
    assert_eq!(g2.sgi1r(V0, 1 << 40), KickSet(0));
}

#[test]
fn v3_sgi_delivery() {
    let mut g = v3(2);
    setup_private_v3(&mut g, 1, 1, 0x20);
    g.sgi1r(V0, (1 << 24) | 0b10);
    let mut l = lrs(4);
    g.flush(V1, &mut l);
    assert_eq!(l[0].intid, 1);
    assert_eq!(l[0].source, 0, "GICv3 LRs carry no source");
    assert!(!l[0].eoi_maint);
    assert_eq!(deliver_all(&mut g, V1, &mut l), vec![(1, 0)]);
}

// ----- device inputs -------------------------------------------------------------------------

#[test]
fn device_input_validation() {
    let mut g = v3(2);
    assert_eq!(
        g.inject_edge(3, V0),
        Err(VgicError::BadIntid(3)),
        "SGIs via sgi()"
    );
    assert_eq!(g.inject_edge(96, V0), Err(VgicError::BadIntid(96)));
    assert_eq!(
        g.set_level(20, VcpuId(2), true),
        Err(VgicError::BadVcpu(VcpuId(2)))
    );
    assert!(
        g.set_level(40, VcpuId(7), true).is_ok(),
        "vCPU ignored for SPIs"
    );
    assert_eq!(g.set_hw(27, V0, Some(1020)), Err(VgicError::BadIntid(1020)));
    assert_eq!(g.set_hw(27, V0, Some(5)), Err(VgicError::BadIntid(5)));
    assert_eq!(g.set_hw(27, V0, Some(27)), Ok(()));
    assert_eq!(g.set_hw(1019, V0, Some(40)), Err(VgicError::BadIntid(1019)));
}

#[test]
fn edge_input_latches_on_rising_edge_only() {
    let mut g = v3(1);
    setup_spi(&mut g, 34, 0x80, true);
    g.take_kicks();
    assert_eq!(g.set_level(34, V0, true).unwrap(), KickSet::single(0));
    assert_eq!(
        g.set_level(34, V0, true).unwrap(),
        KickSet::EMPTY,
        "no new edge"
    );
    assert_eq!(g.set_level(34, V0, false).unwrap(), KickSet::EMPTY);
    let mut l = lrs(4);
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(34, 0)]);
    // Falling edge leaves nothing pending.
    assert!(!g.has_deliverable(V0));
    g.set_level(34, V0, true).unwrap();
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(34, 0)]);
}

#[test]
fn kicks_for_disabled_and_other_targets() {
    let mut g = v3(2);
    // Disabled: pending, no kick.
    assert_eq!(g.inject_edge(40, V0).unwrap(), KickSet::EMPTY);
    assert!(!g.has_deliverable(V0));
    // Enabling (by vCPU 1) kicks the target, vCPU 0.
    wr(&mut g, V0, 0x0, 0x2);
    wr(&mut g, V1, bit_off(IGROUPR, 40), bit(40));
    g.take_kicks();
    wr(&mut g, V1, bit_off(ISENABLER, 40), bit(40));
    assert_eq!(g.take_kicks(), KickSet::single(0));
    assert!(g.needs_flush(V0));
    assert!(g.has_deliverable(V0));
    assert_eq!(g.highest_pending_priority(V0), Some(0));
    // PPIs kick their own vCPU.
    setup_private_v3(&mut g, 1, 20, 0x30);
    g.take_kicks();
    assert_eq!(g.inject_edge(20, V1).unwrap(), KickSet::single(1));
    assert_eq!(g.highest_pending_priority(V1), Some(0x30));
    // Group disabled in GICD_CTLR: nothing deliverable.
    wr(&mut g, V0, 0x0, 0);
    assert!(!g.has_deliverable(V0) && !g.has_deliverable(V1));
    assert_eq!(g.highest_pending_priority(V1), None);
}

// ----- list registers ------------------------------------------------------------------------

#[test]
fn lr_encoding_v3() {
    let lr = Lr {
        intid: 27,
        priority: 0xA0,
        state: LrState::Pending,
        group1: true,
        hw: Some(27),
        eoi_maint: false,
        source: 0,
    };
    let v = encode_v3(&lr);
    assert_eq!(
        v,
        (1 << 62) | (1 << 61) | (1 << 60) | (0xA0 << 48) | (27 << 32) | 27
    );
    assert_eq!(decode_v3(v), lr);
    // HW = 0 with EOI maintenance: bit 41.
    let lr = Lr {
        intid: 33,
        priority: 0x08,
        state: LrState::PendingActive,
        group1: false,
        hw: None,
        eoi_maint: true,
        source: 0,
    };
    let v = encode_v3(&lr);
    assert_eq!(v, (3 << 62) | (1 << 41) | (0x08 << 48) | 33);
    assert_eq!(decode_v3(v), lr);
    // Active, large INTIDs and pINTIDs (13 bits).
    let lr = Lr {
        intid: 1019,
        priority: 0xF8,
        state: LrState::Active,
        group1: true,
        hw: Some(0x1FFF),
        eoi_maint: false,
        source: 0,
    };
    assert_eq!(decode_v3(encode_v3(&lr)), lr);
    assert_eq!(encode_v3(&Lr::INVALID), 0);
    assert_eq!(decode_v3(0), Lr::INVALID);
}

#[test]
fn lr_encoding_v2() {
    // SGI 3 from CPU 5, EOI maintenance, group 1, priority 0xA8 (5 bits: 0x15).
    let lr = Lr {
        intid: 3,
        priority: 0xA8,
        state: LrState::Pending,
        group1: true,
        hw: None,
        eoi_maint: true,
        source: 5,
    };
    let v = encode_v2(&lr);
    assert_eq!(
        v,
        (1 << 30) | (1 << 28) | (0x15 << 23) | (1 << 19) | (5 << 10) | 3
    );
    assert_eq!(decode_v2(v), lr);
    // Hardware-linked timer PPI 27 -> physical 30, active.
    let lr = Lr {
        intid: 27,
        priority: 0x00,
        state: LrState::Active,
        group1: false,
        hw: Some(30),
        eoi_maint: false,
        source: 0,
    };
    let v = encode_v2(&lr);
    assert_eq!(v, (1 << 31) | (2 << 28) | (30 << 10) | 27);
    assert_eq!(decode_v2(v), lr);
    // Pending+active, INTID 1019 (10 bits).
    let lr = Lr {
        intid: 1019,
        priority: 0xF8,
        state: LrState::PendingActive,
        group1: false,
        hw: Some(1019),
        eoi_maint: false,
        source: 0,
    };
    assert_eq!(decode_v2(encode_v2(&lr)), lr);
    assert_eq!(encode_v2(&Lr::INVALID), 0);
    // The low priority bits do not exist in GICH_LR.
    let lossy = Lr {
        priority: 0xFF,
        ..Lr::INVALID
    };
    assert_eq!(decode_v2(encode_v2(&lossy)).priority, 0xF8);
    for bits in 0..4u8 {
        assert_eq!(LrState::from_bits(bits).bits(), bits);
    }
}

#[test]
fn flush_orders_by_priority() {
    let mut g = v3(1);
    // Eight SPIs with distinct priorities, pended in scrambled order; ties broken by INTID.
    let prios = [
        (40, 0x80),
        (41, 0x10),
        (42, 0xF0),
        (43, 0x30),
        (44, 0x10),
        (45, 0x50),
        (46, 0x08),
        (47, 0x90),
    ];
    for &(intid, p) in &prios {
        setup_spi(&mut g, intid, p, true);
    }
    for &(intid, _) in prios.iter().rev() {
        g.inject_edge(intid, V0).unwrap();
    }
    let mut l = lrs(4);
    let r = g.flush(V0, &mut l);
    assert!(r.overflow);
    assert_eq!(r.live, 0xF);
    assert_eq!(r.changed, 0xF);
    let mut held: Vec<(u8, u32)> = l.iter().map(|lr| (lr.priority, lr.intid)).collect();
    held.sort_unstable();
    assert_eq!(held, vec![(0x08, 46), (0x10, 41), (0x10, 44), (0x30, 43)]);
    assert!(
        l.iter()
            .all(|lr| lr.state == LrState::Pending && lr.group1 && lr.hw.is_none())
    );
    assert!(
        l.iter().all(|lr| !lr.eoi_maint),
        "edge interrupts need no maintenance"
    );
    check_invariants(&g, V0, &l);
    // The rest come out in priority order as the guest works through them.
    let got: Vec<u32> = deliver_all(&mut g, V0, &mut l)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(got, vec![46, 41, 44, 43, 45, 40, 47, 42]);
    assert!(!g.has_deliverable(V0));
    assert_eq!(g.live_lrs(V0), 0);
}

#[test]
fn overflow_refills_exactly_once() {
    let mut g = v3(1);
    let spis: Vec<u32> = (32..64).collect();
    for &i in &spis {
        setup_spi(&mut g, i, 0x80, true);
        g.inject_edge(i, V0).unwrap();
    }
    // PPIs and SGIs too.
    for i in [1u32, 2, 25, 26] {
        setup_private_v3(&mut g, 0, i, 0x80);
    }
    g.sgi1r(V0, (1 << 24) | 1);
    g.sgi1r(V0, (2 << 24) | 1);
    g.inject_edge(25, V0).unwrap();
    g.inject_edge(26, V0).unwrap();
    let mut l = lrs(4);
    let mut got: Vec<u32> = Vec::new();
    let mut rounds = 0;
    loop {
        g.sync(V0, &mut l);
        let r = g.flush(V0, &mut l);
        check_invariants(&g, V0, &l);
        // The guest takes only two per round (partial progress between exits).
        for _ in 0..2 {
            if let Some((i, s)) = guest_ack(&mut l) {
                got.push(i);
                guest_eoi(&mut l, i, s);
            }
        }
        rounds += 1;
        if !r.overflow && l.iter().all(|lr| lr.state == LrState::Invalid) {
            break;
        }
        assert!(rounds < 100);
    }
    got.sort_unstable();
    let mut want: Vec<u32> = spis.clone();
    want.extend([1, 2, 25, 26]);
    want.sort_unstable();
    assert_eq!(got, want, "every interrupt exactly once");
    g.sync(V0, &mut l);
    assert!(!g.has_deliverable(V0));
}

#[test]
fn higher_priority_arrival_evicts_pending_entry() {
    let mut g = v3(1);
    for i in 40..46 {
        setup_spi(&mut g, i, 0x80, true);
    }
    setup_spi(&mut g, 50, 0x10, true);
    for i in 40..44 {
        g.inject_edge(i, V0).unwrap();
    }
    let mut l = lrs(4);
    assert!(!g.flush(V0, &mut l).overflow);
    // The guest takes one (now active), then a high-priority interrupt arrives.
    let (first, _) = guest_ack(&mut l).unwrap();
    assert_eq!(g.sync(V0, &mut l), 0, "nothing left the LRs");
    g.inject_edge(50, V0).unwrap();
    let r = g.flush(V0, &mut l);
    assert!(r.overflow, "the evicted one waits");
    assert!(
        l.iter()
            .any(|lr| lr.intid == 50 && lr.state == LrState::Pending)
    );
    assert!(
        l.iter()
            .any(|lr| lr.intid == first && lr.state == LrState::Active),
        "active kept"
    );
    // The victim is the pending entry with the largest (priority, INTID): 43.
    assert!(!l.iter().any(|lr| lr.intid == 43));
    assert_ne!(
        rd(&mut g, V0, bit_off(ISPENDR, 43)) & bit(43),
        0,
        "evicted, still pending"
    );
    assert!(r.changed.count_ones() == 1);
    check_invariants(&g, V0, &l);
    // Equal priorities do not evict each other.
    g.inject_edge(44, V0).unwrap();
    let r = g.flush(V0, &mut l);
    assert_eq!(r.changed, 0);
    assert!(r.overflow);
    // Everything arrives exactly once, the high-priority one first.
    guest_eoi(&mut l, first, 0);
    let got: Vec<u32> = deliver_all(&mut g, V0, &mut l)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(got.first(), Some(&50));
    let mut sorted = got.clone();
    sorted.sort_unstable();
    let mut want: Vec<u32> = (40..45).filter(|&i| i != first).collect();
    want.push(50);
    want.sort_unstable();
    assert_eq!(sorted, want);
}

#[test]
fn active_interrupt_displaces_pending_entry() {
    // Software-active interrupts must get an LR; they take one from a pending entry.
    let mut g = v3(1);
    for i in 40..44 {
        setup_spi(&mut g, i, 0x10, true);
        g.inject_edge(i, V0).unwrap();
    }
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    wr(&mut g, V0, bit_off(ISACTIVER, 60), bit(60));
    g.sync(V0, &mut l);
    let r = g.flush(V0, &mut l);
    assert!(r.overflow);
    assert!(
        l.iter()
            .any(|lr| lr.intid == 60 && lr.state == LrState::Active)
    );
    check_invariants(&g, V0, &l);
}

#[test]
fn level_resample_on_eoi() {
    let mut g = v3(1);
    setup_spi(&mut g, 33, 0x80, false);
    g.take_kicks();
    assert_eq!(g.set_level(33, V0, true).unwrap(), KickSet::single(0));
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    assert_eq!(
        (l[0].intid, l[0].state, l[0].eoi_maint),
        (33, LrState::Pending, true)
    );
    // Guest handles it but the device keeps the line high: pending again after the EOI.
    assert_eq!(guest_drain(&mut l), vec![(33, 0)]);
    assert_eq!(
        g.sync(V0, &mut l),
        1,
        "LR 0 must be zeroed (its EOI bit is set)"
    );
    assert_eq!(l[0], Lr::INVALID);
    assert!(g.needs_flush(V0));
    assert!(g.has_deliverable(V0));
    g.flush(V0, &mut l);
    assert_eq!((l[0].intid, l[0].state), (33, LrState::Pending));
    // This time the handler quiets the device (line low) before the EOI.
    assert_eq!(guest_ack(&mut l), Some((33, 0)));
    g.set_level(33, V0, false).unwrap();
    guest_eoi(&mut l, 33, 0);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    assert!(!g.has_deliverable(V0));
    // Line still high at an exit after the acknowledge: pending+active.
    g.set_level(33, V0, true).unwrap();
    g.flush(V0, &mut l);
    guest_ack(&mut l);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::PendingActive);
    g.set_level(33, V0, false).unwrap();
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::Active, "the line dropped: only active");
    guest_eoi(&mut l, 33, 0);
    g.sync(V0, &mut l);
    assert!(!g.has_deliverable(V0));
    // The line drops before the guest acknowledges: retracted from the LR.
    g.set_level(33, V0, true).unwrap();
    g.flush(V0, &mut l);
    g.set_level(33, V0, false).unwrap();
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 33)), 0);
}

#[test]
fn hw_linked_interrupt() {
    let mut g = v3(1);
    setup_private_v3(&mut g, 0, 27, 0xA0);
    g.set_hw(27, V0, Some(27)).unwrap();
    g.inject_edge(27, V0).unwrap();
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    assert_eq!(l[0].hw, Some(27));
    assert!(!l[0].eoi_maint);
    assert_eq!(
        encode_v3(&l[0]),
        (1 << 62) | (1 << 61) | (1 << 60) | (0xA0 << 48) | (27 << 32) | 27
    );
    // Guest EOI deactivates the physical interrupt: nothing for the hypervisor to do.
    assert_eq!(guest_drain(&mut l), vec![(27, 0)]);
    g.sync(V0, &mut l);
    assert_eq!(g.take_hw_deactivation(), None);
    // The guest clears a pending HW interrupt: the hypervisor must deactivate the physical one.
    g.inject_edge(27, V0).unwrap();
    wrr(&mut g, V0, sgi_base(0) + 0x280, 1 << 27);
    assert_eq!(g.take_hw_deactivation(), Some(27));
    assert_eq!(g.take_hw_deactivation(), None);
    // ... also when it sits in an LR: at the next flush.
    g.inject_edge(27, V0).unwrap();
    g.flush(V0, &mut l);
    wrr(&mut g, V0, sgi_base(0) + 0x280, 1 << 27);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(g.take_hw_deactivation(), Some(27));
    // Guest-pended (not taken by the hypervisor): an LR without the HW bit.
    wrr(&mut g, V0, sgi_base(0) + 0x200, 1 << 27);
    g.flush(V0, &mut l);
    assert_eq!(l[0].hw, None);
    assert_eq!(guest_drain(&mut l), vec![(27, 0)]);
    g.sync(V0, &mut l);
    // Level-sensitive with a HW link: a high level injects, a low one takes it back and hands
    // the physical interrupt back (it is not in an LR).
    g.set_level(27, V0, true).unwrap();
    g.set_level(27, V0, false).unwrap();
    assert!(!g.has_deliverable(V0));
    assert_eq!(g.take_hw_deactivation(), Some(27));
    g.set_level(27, V0, true).unwrap();
    assert!(g.has_deliverable(V0));
    g.flush(V0, &mut l);
    assert_eq!(l[0].hw, Some(27));
    assert!(!l[0].eoi_maint);
    // Disabled while in the LR: retracted, physical stays active (re-linked later).
    wrr(&mut g, V0, sgi_base(0) + 0x180, 1 << 27);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(g.take_hw_deactivation(), None);
    wrr(&mut g, V0, sgi_base(0) + 0x100, 1 << 27);
    g.flush(V0, &mut l);
    assert_eq!(l[0].hw, Some(27));
    // Reset: the physical interrupt taken for the guest is handed back.
    g.reset();
    assert_eq!(g.take_hw_deactivation(), Some(27));
    // Re-linking an idle interrupt whose physical side was taken hands the old one back.
    g.inject_edge(27, V0).unwrap();
    g.set_hw(27, V0, Some(27)).unwrap();
    assert_eq!(g.take_hw_deactivation(), None, "same link: nothing changes");
    g.set_hw(27, V0, Some(26)).unwrap();
    assert_eq!(g.take_hw_deactivation(), Some(27));
    g.set_hw(27, V0, None).unwrap();
    assert_eq!(g.take_hw_deactivation(), None);
}

#[test]
fn hw_deactivation_queue_never_grows() {
    // Every interrupt hardware-linked and taken for the guest, then a reset hands them all
    // back at once: the queue holds them in the room it was built with, so the heap in use
    // does not change across VM resets.
    let mut g = v3(2);
    let (room, at) = (g.hw_deactivate.capacity(), g.hw_deactivate.as_ptr());
    assert!(room >= 2 * 32 + 64, "{room}");
    for v in [V0, VcpuId(1)] {
        g.set_hw(27, v, Some(27)).unwrap();
        g.inject_edge(27, v).unwrap();
    }
    for intid in 32..96 {
        g.set_hw(intid, V0, Some(intid)).unwrap();
        g.inject_edge(intid, V0).unwrap();
    }
    g.reset();
    assert_eq!(g.hw_deactivate.len(), 66);
    assert_eq!(
        (g.hw_deactivate.capacity(), g.hw_deactivate.as_ptr()),
        (room, at)
    );
    while g.take_hw_deactivation().is_some() {}
}

#[test]
fn hw_linked_v2_lr() {
    let mut g = v2(1);
    wr(&mut g, V0, 0x0, 1);
    wr(&mut g, V0, 0x100, 1 << 27);
    g.set_hw(27, V0, Some(27)).unwrap();
    g.inject_edge(27, V0).unwrap();
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    assert_eq!(encode_v2(&l[0]), (1 << 31) | (1 << 28) | (27 << 10) | 27);
}

#[test]
fn disable_retracts_pending_lr_but_keeps_pending() {
    let mut g = v3(1);
    setup_spi(&mut g, 40, 0x80, true);
    g.inject_edge(40, V0).unwrap();
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::Pending);
    wr(&mut g, V0, bit_off(ICENABLER, 40), bit(40));
    assert!(g.take_kicks().contains(V0));
    g.sync(V0, &mut l);
    let r = g.flush(V0, &mut l);
    assert_eq!(r.live, 0);
    assert_eq!(r.changed, 1);
    assert_eq!(
        rd(&mut g, V0, bit_off(ISPENDR, 40)),
        bit(40),
        "still pending"
    );
    // Re-enabled: delivered once.
    wr(&mut g, V0, bit_off(ISENABLER, 40), bit(40));
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(40, 0)]);
    // ICPENDR while in the LR removes it.
    g.inject_edge(40, V0).unwrap();
    g.flush(V0, &mut l);
    wr(&mut g, V0, bit_off(ICPENDR, 40), bit(40));
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 40)), 0);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    assert!(!g.has_deliverable(V0));
}

#[test]
fn new_edge_while_in_lr() {
    let mut g = v3(1);
    setup_spi(&mut g, 40, 0x80, true);
    g.inject_edge(40, V0).unwrap();
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    // Pending in the LR: a second edge coalesces.
    g.inject_edge(40, V0).unwrap();
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::Pending);
    assert_eq!(g.live_lrs(V0), 1);
    // Active in the LR: a new edge makes it pending+active.
    guest_ack(&mut l);
    g.sync(V0, &mut l);
    assert_eq!(rd(&mut g, V0, bit_off(ISACTIVER, 40)), bit(40));
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 40)), 0);
    g.inject_edge(40, V0).unwrap();
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 40)), bit(40));
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::PendingActive);
    guest_eoi(&mut l, 40, 0);
    assert_eq!(guest_drain(&mut l), vec![(40, 0)]);
    g.sync(V0, &mut l);
    assert!(!g.has_deliverable(V0));
    assert_eq!(g.live_lrs(V0), 0);
}

#[test]
fn priority_change_reaches_lr() {
    let mut g = v3(1);
    setup_spi(&mut g, 40, 0x80, true);
    g.inject_edge(40, V0).unwrap();
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    g.dist_write(V0, 0x400 + 40, Byte, 0x20).unwrap();
    assert!(g.needs_flush(V0));
    g.sync(V0, &mut l);
    let r = g.flush(V0, &mut l);
    assert_eq!(r.changed, 1);
    assert_eq!(l[0].priority, 0x20);
}

#[test]
fn flush_without_changes_writes_nothing() {
    let mut g = v3(1);
    let mut l = lrs(4);
    // The very first flush scrubs every LR.
    let r = g.flush(V0, &mut l);
    assert_eq!((r.live, r.changed, r.overflow), (0, 0xF, false));
    assert!(!g.needs_flush(V0));
    let r = g.flush(V0, &mut l);
    assert_eq!(r.changed, 0);
    // Stale contents in the shadow are overwritten by a scrub after reset.
    setup_spi(&mut g, 40, 0x80, true);
    g.inject_edge(40, V0).unwrap();
    g.flush(V0, &mut l);
    g.reset();
    let r = g.flush(V0, &mut l);
    assert_eq!((r.live, r.changed), (0, 0xF));
    assert!(l.iter().all(|lr| *lr == Lr::INVALID));
}

#[test]
fn unknown_vcpus_are_ignored() {
    let mut g = v3(2);
    let mut l = lrs(4);
    assert_eq!(g.flush(VcpuId(5), &mut l), FlushResult::default());
    g.sync(VcpuId(5), &mut l);
    assert!(!g.needs_flush(VcpuId(5)));
    assert!(!g.has_deliverable(VcpuId(5)));
    assert_eq!(g.live_lrs(VcpuId(5)), 0);
}

#[test]
fn many_lrs_and_zero_lrs() {
    let mut g = v3(1);
    for i in 32..96 {
        setup_spi(&mut g, i, 0x80, true);
        g.inject_edge(i, V0).unwrap();
    }
    // 64 LRs (a GICv2 GICH maximum): everything fits.
    let mut l = lrs(70);
    let r = g.flush(V0, &mut l);
    assert!(!r.overflow);
    assert_eq!(r.live, u64::MAX);
    check_invariants(&g, V0, &l);
    assert_eq!(deliver_all(&mut g, V0, &mut l).len(), 64);
    // No LRs at all: nothing placed, overflow reported.
    g.inject_edge(40, V0).unwrap();
    let mut none: [Lr; 0] = [];
    assert!(g.flush(V0, &mut none).overflow);
}

// ----- reset and the MMIO bus ----------------------------------------------------------------

#[test]
fn reset_restores_power_on_state() {
    let mut g = v3(2);
    let fresh_d: Vec<u32> = (0..0x1_0000u64)
        .step_by(4)
        .map(|off| rd(&mut g, V0, off))
        .collect();
    let fresh_r: Vec<u32> = (0..0x4_0000u64)
        .step_by(4)
        .map(|off| rdr(&mut g, V0, off))
        .collect();
    // Scribble over everything writable.
    g.set_hw(40, V0, Some(72)).unwrap();
    for off in (0..0x1_0000u64).step_by(4) {
        wr(&mut g, V0, off, 0xFFFF_FFFF);
    }
    for off in (0..0x4_0000u64).step_by(4) {
        wrr(&mut g, V1, off, 0xFFFF_FFFF);
    }
    g.set_level(33, V0, true).unwrap();
    g.inject_edge(40, V0).unwrap();
    g.sgi1r(V0, 1 << 40);
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    g.reset();
    let after_d: Vec<u32> = (0..0x1_0000u64)
        .step_by(4)
        .map(|off| rd(&mut g, V0, off))
        .collect();
    let after_r: Vec<u32> = (0..0x4_0000u64)
        .step_by(4)
        .map(|off| rdr(&mut g, V0, off))
        .collect();
    assert!(fresh_d == after_d, "distributor differs after reset");
    assert!(fresh_r == after_r, "redistributors differ after reset");
    assert!(!g.has_deliverable(V0) && !g.has_deliverable(V1));
    assert!(g.needs_flush(V0) && g.needs_flush(V1));
    // The hardware link survives; the physical interrupt taken for the guest is handed back.
    assert_eq!(g.irq(40, 0).unwrap().hw, Some(72));
    assert_eq!(g.take_hw_deactivation(), Some(72));
    // Reset values that matter to guests.
    assert_eq!(rd(&mut g, V0, 0x0), 0x50);
    assert_eq!(rdr(&mut g, V0, 0x14), 0x6);
    assert_eq!(rdr(&mut g, V0, 0x1_0C00), 0xAAAA_AAAA);
}

#[test]
fn windows_on_the_mmio_bus() {
    let shared: SharedVgic = Arc::new(Mutex::new(v3(2)));
    let mut bus = MmioBus::new();
    bus.add(
        GuestPhysAddr(0x0800_0000),
        Box::new(GicdWindow::new(shared.clone())),
    )
    .unwrap();
    bus.add(
        GuestPhysAddr(0x080A_0000),
        Box::new(GicrWindow::new(shared.clone())),
    )
    .unwrap();
    let windows: Vec<_> = bus.windows().collect();
    assert_eq!(windows[0], (GuestPhysAddr(0x0800_0000), 0x1_0000, "gicd"));
    assert_eq!(windows[1], (GuestPhysAddr(0x080A_0000), 0x4_0000, "gicr"));
    let (dev, off) = bus.find(GuestPhysAddr(0x0800_0004)).unwrap();
    assert_eq!(dev.read(V0, off, Word).unwrap(), 2 | (9 << 19) | (1 << 24));
    dev.write(V0, 0, Word, 3).unwrap();
    let (dev, off) = bus.find(GuestPhysAddr(0x080C_0008)).unwrap();
    assert_eq!(
        dev.read(V0, off, Double).unwrap(),
        (1 << 32) | (1 << 8) | 0x10
    );
    assert!(bus.find(GuestPhysAddr(0x080E_0000)).is_none());
    assert_eq!(shared.lock().take_kicks(), KickSet::all(2));
    bus.reset_all();
    assert_eq!(shared.lock().dist_read(V0, 0, Word).unwrap(), 0x50);
}

// ----- hostile guests ------------------------------------------------------------------------

/// A small linear congruential generator (Knuth's MMIX constants); the high bits are used.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 16
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random guest actions on the LRs: acknowledge some, deactivate some.
fn guest_random(rng: &mut Lcg, lrs: &mut [Lr]) {
    for _ in 0..rng.below(4) {
        match rng.below(3) {
            0 => {
                guest_ack(lrs);
            }
            _ => {
                let i = usize::try_from(rng.below(lrs.len().max(1) as u64)).unwrap();
                if let Some(lr) = lrs.get(i).copied()
                    && lr.state.active()
                {
                    guest_eoi(lrs, lr.intid, lr.source);
                }
            }
        }
    }
}

fn storm(mut g: Vgic, seed: u64, iterations: usize) {
    let mut rng = Lcg(seed);
    let n = g.nr_vcpus();
    let mut shadows: Vec<Vec<Lr>> = (0..n).map(|_| lrs(4)).collect();
    let widths = [Byte, Half, Word, Double];
    let interesting = [
        0x0, 0x4, 0x80, 0x100, 0x180, 0x200, 0x280, 0x300, 0x380, 0x400, 0x800, 0xC00, 0xF00,
        0xF10, 0xF20, 0x6100, 0xFFE8,
    ];
    for _ in 0..iterations {
        let r = rng.next();
        let vcpu = VcpuId(u16::try_from(rng.below(n as u64 + 1)).unwrap());
        let width = widths[usize::try_from(r & 3).unwrap()];
        let value = if r & 0x40 != 0 { u64::MAX } else { rng.next() };
        let base = interesting[usize::try_from(rng.below(interesting.len() as u64)).unwrap()];
        let near = base + rng.below(0x100);
        let anywhere = rng.below(0x2_0000);
        let off = if r & 0x80 != 0 { near } else { anywhere };
        match (r >> 8) % 16 {
            0 | 1 => {
                let _ = g.dist_read(vcpu, off, width);
            }
            2..=5 => {
                let _ = g.dist_write(vcpu, off, width, value);
            }
            6 => {
                let _ = g.redist_read(vcpu, rng.below(0x2_0000 * (n as u64 + 1)), width);
            }
            7 | 8 => {
                let frame = rng.below(n as u64 + 1) * 0x2_0000;
                let roff = if r & 0x100 != 0 {
                    0x1_0000 + near % 0x1000
                } else {
                    anywhere
                };
                let _ = g.redist_write(vcpu, frame + roff, width, value);
            }
            9 => {
                let _ = g.sgi(vcpu, rng.next() << 8 | rng.next(), r & 0x200 != 0);
            }
            10 => {
                let intid = u32::try_from(rng.below(1100)).unwrap();
                let _ = g.set_level(intid, vcpu, r & 0x200 != 0);
            }
            11 => {
                let intid = u32::try_from(rng.below(1100)).unwrap();
                let _ = g.inject_edge(intid, vcpu);
            }
            12 => {
                let intid = u32::try_from(rng.below(100)).unwrap();
                let p = if r & 0x200 != 0 {
                    Some(u32::try_from(rng.below(1100)).unwrap())
                } else {
                    None
                };
                let _ = g.set_hw(intid, vcpu, p);
            }
            13 | 14 => {
                // A vCPU runs: guest acts on its LRs, exits, sync, flush.
                let v = usize::try_from(rng.below(n as u64)).unwrap();
                let id = VcpuId(u16::try_from(v).unwrap());
                let l = &mut shadows[v];
                guest_random(&mut rng, l);
                g.sync(id, l);
                let res = g.flush(id, l);
                assert_eq!(res.live, g.live_lrs(id));
                check_invariants(&g, id, l);
                // Liveness of the flush's hints: with an LR free and nothing reported left
                // out, a full scan finds no candidate the flush missed.
                if !res.overflow && res.live.count_ones() < l.len() as u32 {
                    let missed = g.missed_candidates(id, l.len());
                    assert_eq!(missed, 0, "flush left a deliverable interrupt out");
                }
            }
            _ => {
                if rng.below(50) == 0 {
                    g.reset();
                }
                let _ = g.take_kicks();
                while g.take_hw_deactivation().is_some() {}
                let v = VcpuId(u16::try_from(rng.below(n as u64 + 1)).unwrap());
                let _ = g.has_deliverable(v);
                let _ = g.highest_pending_priority(v);
            }
        }
    }
    // Wind down: every vCPU drains; the bookkeeping stays consistent.
    for (v, l) in shadows.iter_mut().enumerate() {
        let id = VcpuId(u16::try_from(v).unwrap());
        for _ in 0..10 {
            g.sync(id, l);
            g.flush(id, l);
            check_invariants(&g, id, l);
            guest_drain(l);
            for lr in l.iter_mut() {
                if lr.state.active() {
                    let (i, s) = (lr.intid, lr.source);
                    guest_eoi(core::slice::from_mut(lr), i, s);
                }
            }
        }
    }
}

#[test]
fn hostile_storm_v3_never_panics() {
    storm(v3(3), 0x9E37_79B9_7F4A_7C15, 200_000);
}

#[test]
fn hostile_storm_v2_never_panics() {
    storm(v2(4), 0xD1B5_4A32_D192_ED03, 200_000);
}

#[test]
fn hostile_storm_single_vcpu_no_spis() {
    let g = Vgic::new(&VgicConfig {
        version: GicVersion::V3,
        nr_spis: 0,
        mpidrs: &[0],
    })
    .unwrap();
    storm(g, 42, 50_000);
}

// ----- direct injection into a list register --------------------------------------------------

#[test]
fn inject_hw_into_places_like_flush_or_defers() {
    let mut g = v3(1);
    setup_private_v3(&mut g, 0, 27, 0xA0);
    let mut l = lrs(4);
    // Settle: the first flush (scrub, scan) happens before the guest runs.
    g.flush(V0, &mut l);
    assert!(!g.needs_flush(V0));

    // Idle vCPU, free LR: placed at once, nothing left for a flush.
    let (_, changed) = g.inject_hw_into(27, V0, &mut l).unwrap();
    assert_ne!(changed, 0);
    assert!(!g.needs_flush(V0));
    check_invariants(&g, V0, &l);
    assert_eq!(guest_drain(&mut l), vec![(27, 0)]);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);

    // Something else waits for the flush: the injection waits too, and the flush places it.
    setup_private_v3(&mut g, 0, 28, 0x80);
    g.inject_edge(28, V0).unwrap();
    assert!(g.needs_flush(V0));
    let (_, changed) = g.inject_hw_into(27, V0, &mut l).unwrap();
    assert_eq!(changed, 0);
    g.flush(V0, &mut l);
    check_invariants(&g, V0, &l);
    assert!(l.iter().any(|lr| lr.intid == 27 && lr.state.pending()));

    // No free LR: deferred to the flush, which reports the overflow.
    let mut none: [Lr; 0] = [];
    let mut g2 = v3(1);
    setup_private_v3(&mut g2, 0, 27, 0xA0);
    g2.flush(V0, &mut none);
    let (_, changed) = g2.inject_hw_into(27, V0, &mut none).unwrap();
    assert_eq!(changed, 0);
    assert!(g2.needs_flush(V0));
    assert!(g2.flush(V0, &mut none).overflow);

    // SPIs and bad INTIDs take the usual path / fail as inject_edge does.
    assert!(g.inject_hw_into(1020, V0, &mut l).is_err());
}

// ----- hardware-linked level interrupts follow their line --------------------------------------

fn line_low(_: u32, _: bool) -> Option<bool> {
    Some(false)
}
fn line_high(_: u32, _: bool) -> Option<bool> {
    Some(true)
}
fn line_unknown(_: u32, _: bool) -> Option<bool> {
    None
}
/// Only the vCPU running here can be sampled (the virtual timer): low if local, else unknown.
fn line_low_if_local(_: u32, local: bool) -> Option<bool> {
    if local { Some(false) } else { None }
}

/// A vGICv3 with the virtual timer of vCPU 0 linked and injected into an LR, as the
/// hypervisor does when PPI 27 fires.
fn vtimer_in_lr(sampler: LineSampler) -> (Vgic, Vec<Lr>) {
    let mut g = v3(1);
    setup_private_v3(&mut g, 0, 27, 0xA0);
    g.set_hw(27, V0, Some(27)).unwrap();
    g.set_line_sampler(sampler);
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    let (_, changed) = g.inject_hw_into(27, V0, &mut l).unwrap();
    assert_ne!(changed, 0);
    assert_eq!(l[0].state, LrState::Pending);
    assert_eq!(l[0].hw, Some(27));
    check_invariants(&g, V0, &l);
    (g, l)
}

const GICR_ISPENDR0: u64 = 0x200;
const GICR_ICPENDR0: u64 = 0x280;

#[test]
fn vtimer_line_falls_before_ack_read_sees_it_and_lr_is_retired() {
    let (mut g, mut l) = vtimer_in_lr(line_low);
    // The guest disabled its timer (no trap), then reads GICR_ISPENDR0 (and ICPENDR0): the
    // line is re-sampled at the read.
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0) & (1 << 27), 0);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ICPENDR0) & (1 << 27), 0);
    // The exit's sync and the entry's flush take the LR back and deactivate the physical PPI
    // the hypervisor left active, once.
    let freed = g.sync(V0, &mut l);
    let r = g.flush(V0, &mut l);
    assert_eq!(freed | r.changed, 1);
    assert_eq!(l[0], Lr::INVALID);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(g.take_hw_deactivation(), Some(27));
    assert_eq!(g.take_hw_deactivation(), None);
    check_invariants(&g, V0, &l);
    // Nothing is delivered after unmasking, and nothing comes back by itself.
    assert!(deliver_all(&mut g, V0, &mut l).is_empty());
    assert!(!g.has_deliverable(V0));
    // The next rise of the line is a new injection, delivered once.
    g.inject_hw(27, V0).unwrap();
    assert_eq!(
        rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0) & (1 << 27),
        0,
        "sampled low"
    );
    g.set_line_sampler(line_high);
    g.inject_hw(27, V0).unwrap();
    assert_eq!(
        rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0) & (1 << 27),
        1 << 27
    );
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(27, 0)]);
    assert_eq!(g.take_hw_deactivation(), Some(27), "the first instance");
    assert_eq!(g.take_hw_deactivation(), None);
}

#[test]
fn vtimer_line_falls_without_a_read_sync_retires_it() {
    let (mut g, mut l) = vtimer_in_lr(line_low);
    // Any exit with the LR live: the sync re-samples the pending HW entry.
    let freed = g.sync(V0, &mut l);
    assert_eq!(freed, 1);
    assert_eq!(l[0], Lr::INVALID);
    assert_eq!(g.take_hw_deactivation(), Some(27));
    assert_eq!(g.take_hw_deactivation(), None);
    g.flush(V0, &mut l);
    check_invariants(&g, V0, &l);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 0);
    assert!(deliver_all(&mut g, V0, &mut l).is_empty());
}

#[test]
fn vtimer_line_still_high_is_delivered_once() {
    let (mut g, mut l) = vtimer_in_lr(line_high);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 1 << 27);
    assert_eq!(g.sync(V0, &mut l), 0, "line high: the LR stays");
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::Pending);
    // Acknowledged with the line still high: active, and pending again per the line (the
    // physical interrupt is active and pending), but never pending+active in a HW LR.
    assert_eq!(guest_ack(&mut l), Some((27, 0)));
    g.sync(V0, &mut l);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 1 << 27);
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::Active);
    // The guest's deactivation deactivates the physical PPI itself; from then the physical
    // GIC signals a still-high line anew, nothing is re-pended in software.
    guest_eoi(&mut l, 27, 0);
    g.sync(V0, &mut l);
    assert_eq!(g.take_hw_deactivation(), None);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 0);
    assert!(deliver_all(&mut g, V0, &mut l).is_empty());
    assert!(!g.has_deliverable(V0));
}

#[test]
fn line_falling_after_ack_is_left_to_the_guests_deactivation() {
    let (mut g, mut l) = vtimer_in_lr(line_high);
    assert_eq!(guest_ack(&mut l), Some((27, 0)));
    g.sync(V0, &mut l);
    g.set_line_sampler(line_low);
    // Active, no longer pending: the read says so, the LR stays active, the physical PPI is the
    // guest's to deactivate.
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 0);
    assert_eq!(g.sync(V0, &mut l), 0);
    g.flush(V0, &mut l);
    assert_eq!(l[0].state, LrState::Active);
    assert_eq!(g.take_hw_deactivation(), None);
    guest_eoi(&mut l, 27, 0);
    g.sync(V0, &mut l);
    assert_eq!(g.take_hw_deactivation(), None);
    assert!(deliver_all(&mut g, V0, &mut l).is_empty());
}

#[test]
fn ispendr_latch_survives_the_line() {
    let (mut g, mut l) = vtimer_in_lr(line_low);
    // Set pending by the guest: that latch holds until acknowledged, whatever the line does.
    wrr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0, 1 << 27);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 1 << 27);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    check_invariants(&g, V0, &l);
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(27, 0)]);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 0);
    // The entry kept its HW bit: the guest's deactivation deactivated the physical PPI.
    assert_eq!(g.take_hw_deactivation(), None);
}

#[test]
fn icpendr_does_not_clear_a_high_line() {
    let (mut g, mut l) = vtimer_in_lr(line_high);
    // IHI 0069 §4.1.2: clearing the pending state of an asserted level interrupt has no
    // lasting effect.
    wrr(&mut g, V0, sgi_base(0) + GICR_ICPENDR0, 1 << 27);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 1 << 27);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.take_hw_deactivation(), None);
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(27, 0)]);
}

#[test]
fn unknown_line_is_left_alone() {
    let (mut g, mut l) = vtimer_in_lr(line_unknown);
    assert_eq!(rdr(&mut g, V0, sgi_base(0) + GICR_ISPENDR0), 1 << 27);
    assert_eq!(g.sync(V0, &mut l), 0);
    assert_eq!(g.take_hw_deactivation(), None);
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(27, 0)]);
}

#[test]
fn another_vcpus_timer_is_sampled_only_by_its_own_exits() {
    let mut g = v3(2);
    for n in 0..2 {
        setup_private_v3(&mut g, n, 27, 0xA0);
        g.set_hw(27, VcpuId(n as u16), Some(27)).unwrap();
    }
    g.set_line_sampler(line_low_if_local);
    g.inject_hw(27, V1).unwrap();
    // vCPU 0 reads vCPU 1's GICR_ISPENDR0: its timer cannot be read from here.
    assert_eq!(rdr(&mut g, V0, sgi_base(1) + GICR_ISPENDR0), 1 << 27);
    assert_eq!(g.take_hw_deactivation(), None);
    // vCPU 1 reads its own: the line is low.
    assert_eq!(rdr(&mut g, V1, sgi_base(1) + GICR_ISPENDR0), 0);
    assert_eq!(g.take_hw_deactivation(), Some(27));
}

#[test]
fn passthrough_level_spi_follows_its_line() {
    let mut g = v3(1);
    setup_spi(&mut g, 40, 0x80, false);
    g.set_hw(40, V0, Some(40)).unwrap();
    g.set_line_sampler(line_high);
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    // The device asserts its line, the hypervisor takes the SPI: an LR with the HW bit.
    g.inject_hw(40, V0).unwrap();
    g.flush(V0, &mut l);
    assert_eq!(
        (l[0].intid, l[0].hw, l[0].state),
        (40, Some(40), LrState::Pending)
    );
    // The guest clears its device before acknowledging (a passthrough write, no exit); the
    // next exit re-samples the physical line and takes the entry back.
    g.set_line_sampler(line_low);
    assert_eq!(rd(&mut g, V0, bit_off(ISPENDR, 40)) & bit(40), 0);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    check_invariants(&g, V0, &l);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(g.take_hw_deactivation(), Some(40));
    assert_eq!(g.take_hw_deactivation(), None);
    assert!(deliver_all(&mut g, V0, &mut l).is_empty());
    // Lowered by the hypervisor itself (set_level / lower_hw_line) while in an LR: the same.
    g.set_line_sampler(line_high);
    g.inject_hw(40, V0).unwrap();
    g.flush(V0, &mut l);
    assert!(g.lower_hw_line(40, V0).unwrap().contains(V0));
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(g.take_hw_deactivation(), Some(40));
    // An edge-triggered passthrough SPI is a latch: a line does not take it back.
    wr(&mut g, V0, offset_icfgr(40), 0b10 << ((40 % 16) * 2));
    g.inject_hw(40, V0).unwrap();
    assert_eq!(g.lower_hw_line(40, V0).unwrap(), KickSet::EMPTY);
    g.set_line_sampler(line_low);
    assert_eq!(deliver_all(&mut g, V0, &mut l), vec![(40, 0)]);
}

/// GICD_ICFGR word holding `intid`'s configuration.
fn offset_icfgr(intid: u32) -> u64 {
    0xC00 + u64::from(intid / 16) * 4
}

#[test]
fn v2_vtimer_read_resamples() {
    let mut g = v2(1);
    wr(&mut g, V0, 0x0, 1);
    wr(&mut g, V0, 0x100, 1 << 27);
    g.set_hw(27, V0, Some(27)).unwrap();
    g.set_line_sampler(line_low);
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    g.inject_hw(27, V0).unwrap();
    g.flush(V0, &mut l);
    assert_eq!(l[0].hw, Some(27));
    assert_eq!(rd(&mut g, V0, 0x200) & (1 << 27), 0);
    assert_eq!(rd(&mut g, V0, 0x280) & (1 << 27), 0);
    g.sync(V0, &mut l);
    g.flush(V0, &mut l);
    assert_eq!(g.live_lrs(V0), 0);
    assert_eq!(g.take_hw_deactivation(), Some(27));
    assert!(deliver_all(&mut g, V0, &mut l).is_empty());
}

#[test]
fn passthrough_entry_asks_for_an_acknowledge_check() {
    let mut g = v3(1);
    setup_spi(&mut g, 40, 0x80, false);
    g.set_hw(40, V0, Some(40)).unwrap();
    g.set_line_sampler(line_high);
    let mut l = lrs(4);
    g.flush(V0, &mut l);
    // The handler EOIed before clearing the device: the deactivation left the line high, the
    // SPI fired again and is injected: the guest's acknowledge must be checked.
    g.inject_hw(40, V0).unwrap();
    assert!(g.flush(V0, &mut l).check_lines);
    // The guest cleared the device, then its acknowledge trapped: the sync finds the line low.
    g.set_line_sampler(line_low);
    g.sync(V0, &mut l);
    g.check_lines_done(V0, &l);
    assert!(g.needs_flush(V0));
    let r = g.flush(V0, &mut l);
    assert!(!r.check_lines);
    assert_eq!(r.live, 0);
    assert_eq!(g.take_hw_deactivation(), Some(40));
    assert!(deliver_all(&mut g, V0, &mut l).is_empty());
    // A line still high at the check: delivered once, no more checks for that instance.
    g.set_line_sampler(line_high);
    g.inject_hw(40, V0).unwrap();
    assert!(g.flush(V0, &mut l).check_lines);
    g.sync(V0, &mut l);
    g.check_lines_done(V0, &l);
    let r = g.flush(V0, &mut l);
    assert!(!r.check_lines);
    assert_eq!(r.live, 1);
    assert_eq!(guest_drain(&mut l), vec![(40, 0)]);
    g.sync(V0, &mut l);
    assert!(!g.flush(V0, &mut l).check_lines);
    assert_eq!(g.take_hw_deactivation(), None);
    // The virtual timer never asks: its line is read at every exit.
    let (mut g, mut l) = vtimer_in_lr(line_high);
    g.sync(V0, &mut l);
    assert!(!g.flush(V0, &mut l).check_lines);
}

/// The SGI target shortcut for VMs whose vCPU i has MPIDR i agrees with the search over every
/// vCPU's MPIDR, for random ICC_SGI1R values (every field, RS and the Aff fields included)
/// and VM sizes up to the GICv3 maximum; a VM with other MPIDRs keeps the search.
#[test]
fn sgi_targets_by_index_equal_the_search() {
    let mut rng = Lcg(0x5151_2024);
    for n in [1u64, 2, 3, 15, 16, 17, 33, 64] {
        let g = v3(n);
        assert!(g.mpidr_is_index);
        for _ in 0..4000 {
            let mut value = rng.next() << 32 ^ rng.next();
            // Often a plausible value: RS small, Aff3..Aff1 zero.
            if rng.next().is_multiple_of(2) {
                value &= !(0xff << 48 | 0xff << 32 | 0xff << 16 | 0xf << 44);
                value |= (rng.next() % 5) << 44;
            }
            assert_eq!(
                g.sgi_targets_by_index(value),
                g.sgi_targets_by_search(value),
                "{n} vCPUs, value {value:#x}"
            );
        }
    }
    assert!(!v3_with(&[0, 1, 0x100], 64).mpidr_is_index);
    assert!(!v3_with(&[1, 0], 64).mpidr_is_index);
}
