//! `vm-switch` tracing: the guest's side of the VM-switch benchmark, selected with the guest
//! bootarg `bench=vm-switch` (template `boards/qemu-virt/vms/bench-switch.dtsi`: two
//! single-vCPU VMs, both pinned to physical CPU 0).
//!
//! Each VM records, [`SWITCHES`] times, the physical count (CNTPCT_EL0, common to both VMs)
//! just before it gave up the CPU and just after it got it back, and prints
//!
//! ```text
//! BENCH vm-switch-trace vm=<a|b> gap=<i> out=<count> in=<count>
//! BENCH vm-switch-trace vm=<a|b> done gaps=<n> method=<yield|slice>
//! ```
//!
//! `scripts/bench` pairs them: a switch from VM x to VM y costs `in_y - out_x` for the first
//! `in_y` inside one of x's gaps.
//!
//! - `method=yield`: the VMs give the CPU to each other with elvisor's ELVISOR_YIELD hypercall
//!   (`hvc #0`, x0 = `elvisor_abi::hypercall::YIELD`), the counter read right before and right after it. A switch
//!   is then the hypervisor's whole path from one VM's yield to the other VM's return from its
//!   own yield (exit, scheduler, EL1/vGIC/timer state switch, entry), plus two guest
//!   instructions.
//! - `method=slice` (the hypervisor answers NOT_SUPPORTED to the yield): each VM polls the
//!   counter in a 7-instruction loop and the gaps are the hypervisor's 10 ms time slices; a
//!   switch then also contains the time-slice interrupt and up to ~14 polling instructions.

use elvisor_guest_rt::smccc::{self, NOT_SUPPORTED};
use elvisor_guest_rt::{BootInfo, println, timer};

use crate::arch;

/// Switches each VM records before it stops.
const SWITCHES: usize = 32;
/// elvisor's yield hypercall: give the rest of the time slice to the next runnable vCPU.
const ELVISOR_YIELD: u32 = elvisor_guest_rt::smccc::fid::ELVISOR_YIELD;
/// Time-slice mode: a pause in the count longer than this is a gap (a slice is 10 ms =
/// 10,000,000 ticks at 1 GHz; an interrupt exit costs a few thousand).
const GAP_TICKS: u64 = 200_000;
/// Time-slice mode: give up after this long.
const DEADLINE_US: u64 = 1_000_000;

/// Records and prints the switches; returns when done (the caller powers off).
pub fn trace(boot: &BootInfo) {
    let vm = boot.bootarg("bench.vm").unwrap_or("?");
    let yield_works = matches!(
        smccc::try_hvc_call(ELVISOR_YIELD, 0, 0, 0),
        Ok(ret) if ret[0] as i64 != NOT_SUPPORTED
    );
    let mut gaps = [(0u64, 0u64); SWITCHES];
    let found = if yield_works {
        for gap in gaps.iter_mut() {
            *gap = arch::timed_yield(ELVISOR_YIELD);
        }
        SWITCHES
    } else {
        poll_time_slices(&mut gaps)
    };
    for (i, (out, back)) in gaps[..found].iter().enumerate() {
        println!("BENCH vm-switch-trace vm={vm} gap={i} out={out} in={back}");
    }
    println!(
        "BENCH vm-switch-trace vm={vm} done gaps={found} method={}",
        if yield_works { "yield" } else { "slice" }
    );
}

/// Fills `gaps` with time-slice gaps; returns how many it found before the deadline.
fn poll_time_slices(gaps: &mut [(u64, u64)]) -> usize {
    let gap = GAP_TICKS.max(timer::ticks_from_us(200));
    let mut prev = arch::physical_now();
    let deadline = prev.wrapping_add(timer::ticks_from_us(DEADLINE_US));
    for (found, slot) in gaps.iter_mut().enumerate() {
        let (out, back) = arch::poll_for_gap(prev, gap, deadline);
        if back.wrapping_sub(out) <= gap {
            return found;
        }
        *slot = (out, back);
        prev = back;
    }
    gaps.len()
}
