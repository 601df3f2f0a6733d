//! Fuzz target `vgic`: the virtual GIC (`vdev::vgic`), GICv2 or GICv3, any shape (vCPUs, SPIs,
//! list registers), driven by any interleaving of guest GICD/GICR accesses from any vCPU (valid
//! or not), SGIs, device inputs, hardware links, resets, and vCPU runs: the guest acknowledges
//! and deactivates what its list registers hold, then the hypervisor syncs and flushes them.
//!
//! Properties (those of the storm tests in src/vdev/vgic/tests.rs, on inputs a fuzzer picks):
//! nothing panics; a read returns no bits beyond its width and reading a register twice gives
//! the same value; a flush never marks more LRs live or changed than there are, reports the live
//! set `live_lrs` reports, and leaves the bookkeeping consistent (`Vgic::check_lrs`); with an
//! LR free and no overflow, no deliverable interrupt was left out; kicks name real vCPUs only.
#![no_main]

use arbitrary::Arbitrary;
use elvisor::vdev::vgic::{GicVersion, KickSet, Lr, LrState, Vgic, VgicConfig};
use elvisor::vdev::{AccessWidth, VcpuId};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Shape {
    v3: bool,
    vcpus: u8,
    spi_words: u8,
    lrs: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    DistRead {
        vcpu: u8,
        offset: u16,
        sas: u8,
    },
    DistWrite {
        vcpu: u8,
        offset: u16,
        sas: u8,
        value: u64,
    },
    RedistRead {
        vcpu: u8,
        offset: u32,
        sas: u8,
    },
    RedistWrite {
        vcpu: u8,
        offset: u32,
        sas: u8,
        value: u64,
    },
    Sgi {
        vcpu: u8,
        value: u64,
        group1: bool,
    },
    Level {
        intid: u16,
        vcpu: u8,
        high: bool,
    },
    Edge {
        intid: u16,
        vcpu: u8,
    },
    Hw {
        intid: u16,
        vcpu: u8,
        phys: Option<u16>,
    },
    /// vCPU `vcpu` runs: the guest acts on its LRs (`guest` picks what), then exit and entry.
    Run {
        vcpu: u8,
        guest: Vec<u8>,
    },
    /// VM reset; the kernel clears the LRs of its vCPUs, a stale copy must be harmless too.
    Reset {
        clear_lrs: bool,
    },
    Poll {
        vcpu: u8,
    },
}

/// What the guest's CPU interface does with an LR.
fn guest_act(lrs: &mut [Lr], action: u8) {
    let n = lrs.len();
    if n == 0 {
        return;
    }
    let Some(lr) = lrs.get_mut(usize::from(action >> 2) % n) else {
        return;
    };
    lr.state = match (action & 3, lr.state) {
        // Acknowledge.
        (0, LrState::Pending) => LrState::Active,
        // Deactivate (EOI).
        (1, LrState::Active) => LrState::Invalid,
        (1, LrState::PendingActive) => LrState::Pending,
        (_, s) => s,
    };
}

fn check_read(
    r: Result<u64, elvisor::vdev::MmioError>,
    again: Result<u64, elvisor::vdev::MmioError>,
    width: AccessWidth,
    what: &str,
) {
    if let Ok(v) = r {
        assert_eq!(v & !width.mask(), 0, "{what}: read wider than its access");
    }
    assert_eq!(r, again, "{what}: two reads differ");
}

fuzz_target!(|input: (Shape, Vec<Op>)| {
    let (shape, ops) = input;
    let version = if shape.v3 {
        GicVersion::V3
    } else {
        GicVersion::V2
    };
    let nvcpus = usize::from(shape.vcpus % 8) + 1;
    // Affinities as the VM builder makes them (Aff0 = index), or spread over clusters.
    let mpidrs: Vec<u64> = (0..nvcpus as u64)
        .map(|i| {
            if shape.spi_words & 0x80 != 0 {
                (i & 1) << 8 | i >> 1
            } else {
                i
            }
        })
        .collect();
    let nr_spis = 32 * u32::from(shape.spi_words % 31);
    let Ok(mut g) = Vgic::new(&VgicConfig {
        version,
        nr_spis,
        mpidrs: &mpidrs,
    }) else {
        panic!("valid shape refused: {version:?} {nr_spis} SPIs {mpidrs:?}");
    };
    let nlrs = match shape.lrs % 8 {
        0 => 0,
        7 => 64,
        k => usize::from(k) * 2,
    };
    let mut lrs: Vec<Vec<Lr>> = (0..nvcpus).map(|_| vec![Lr::INVALID; nlrs]).collect();
    let all = KickSet((1u64 << nvcpus) - 1);
    // One more than the VM has: accesses from an unknown vCPU must be harmless too.
    let vcpu = |v: u8| VcpuId(u16::from(v) % (nvcpus as u16 + 1));
    let redist_span = 0x2_0000 * (nvcpus as u32 + 1);

    for op in ops.iter().take(256) {
        match *op {
            Op::DistRead {
                vcpu: v,
                offset,
                sas,
            } => {
                let (w, off) = (AccessWidth::from_sas(sas), u64::from(offset));
                let r = g.dist_read(vcpu(v), off, w);
                let again = g.dist_read(vcpu(v), off, w);
                check_read(r, again, w, "GICD");
            }
            Op::DistWrite {
                vcpu: v,
                offset,
                sas,
                value,
            } => {
                let _ = g.dist_write(
                    vcpu(v),
                    u64::from(offset),
                    AccessWidth::from_sas(sas),
                    value,
                );
            }
            Op::RedistRead {
                vcpu: v,
                offset,
                sas,
            } => {
                let (w, off) = (AccessWidth::from_sas(sas), u64::from(offset % redist_span));
                let r = g.redist_read(vcpu(v), off, w);
                let again = g.redist_read(vcpu(v), off, w);
                check_read(r, again, w, "GICR");
            }
            Op::RedistWrite {
                vcpu: v,
                offset,
                sas,
                value,
            } => {
                let off = u64::from(offset % redist_span);
                let _ = g.redist_write(vcpu(v), off, AccessWidth::from_sas(sas), value);
            }
            Op::Sgi {
                vcpu: v,
                value,
                group1,
            } => {
                let k = g.sgi(vcpu(v), value, group1);
                assert_eq!(k.intersect(all), k, "SGI kicks {k:?}");
            }
            Op::Level {
                intid,
                vcpu: v,
                high,
            } => {
                if let Ok(k) = g.set_level(u32::from(intid % 1100), vcpu(v), high) {
                    assert_eq!(k.intersect(all), k);
                }
            }
            Op::Edge { intid, vcpu: v } => {
                if let Ok(k) = g.inject_edge(u32::from(intid % 1100), vcpu(v)) {
                    assert_eq!(k.intersect(all), k);
                }
            }
            Op::Hw {
                intid,
                vcpu: v,
                phys,
            } => {
                let _ = g.set_hw(
                    u32::from(intid % 100),
                    vcpu(v),
                    phys.map(|p| u32::from(p % 1100)),
                );
            }
            Op::Run { vcpu: v, ref guest } => {
                let v = usize::from(v) % nvcpus;
                let id = VcpuId(v as u16);
                let l = &mut lrs[v];
                for &a in guest.iter().take(16) {
                    guest_act(l, a);
                }
                g.sync(id, l);
                let res = g.flush(id, l);
                let n = l.len() as u32;
                assert!(res.live.count_ones() <= n && res.changed.count_ones() <= n);
                assert_eq!(res.live, g.live_lrs(id), "flush's live set");
                assert_eq!(
                    res.kick.intersect(all),
                    res.kick,
                    "flush kicks {:?}",
                    res.kick
                );
                if let Err(problem) = g.check_lrs(id, l) {
                    panic!("vCPU {v}: {problem}");
                }
                if !res.overflow && res.live.count_ones() < n {
                    assert_eq!(g.missed_candidates(id, l.len()), 0, "flush left one out");
                }
            }
            Op::Reset { clear_lrs } => {
                g.reset();
                if clear_lrs {
                    for l in &mut lrs {
                        l.fill(Lr::INVALID);
                    }
                }
            }
            Op::Poll { vcpu: v } => {
                let k = g.take_kicks();
                assert_eq!(k.intersect(all), k, "kicks {k:?}");
                while g.take_hw_deactivation().is_some() {}
                let _ = g.has_deliverable(vcpu(v));
                let _ = g.highest_pending_priority(vcpu(v));
                let _ = g.needs_flush(vcpu(v));
            }
        }
    }
});
