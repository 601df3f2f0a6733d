//! elvisor I/O benchmark guest: times, from inside VMs, what the hypervisor's virtio devices,
//! virtual switch and doorbells cost, and prints `BENCH name=...` lines in guests/bench's
//! format (scripts/bench parses both). The mode comes from the bootarg `iobench=`:
//!
//! ```text
//!   net       two VMs on one switch (or natively: two QEMU virtio-net devices on a hub, one
//!             per CPU): ping round trips and one-way throughput; see [`net`]
//!   blk       one virtio-blk disk: sequential writes, then reads, 64 KiB requests; see [`blk`]
//!   doorbell  two VMs on different CPUs ring each other through a shared-memory doorbell
//!   ipi       two CPUs of one VM (or natively) send each other SGIs; see [`bell`]
//! ```
//!
//! Under QEMU `-icount shift=0` with `-cpu max` the virtual counter advances once per
//! instruction executed by any CPU, so every figure is an instruction count. Waits are `wfi`
//! with IRQs masked (a pending interrupt ends it without being taken), then the GIC's
//! acknowledge register, so an idle CPU executes nothing while the other works. Waits in timed
//! phases have no deadline (see [`Irqs::wait`]); scripts/bench bounds every run.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod bell;
mod blk;
mod net;

use elvisor_guest_rt::arch::irq::wfi;
use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::boot::find_node;
use elvisor_guest_rt::gic::{self, Gic, Iar, Version};
use elvisor_guest_rt::timer::{Timer, TimerInterrupts};
use elvisor_guest_rt::virtio_mmio::reg;
use elvisor_guest_rt::{BootInfo, Report, dt, println, smccc};
use fdt::Fdt;

elvisor_guest_rt::entry!(main);

fn main(boot: &BootInfo) {
    let _report = Report::new("BENCH");
    let mode = boot.bootarg("iobench").unwrap_or("");
    println!(
        "BENCH info mode={mode} el={} mpidr={:#x}",
        elvisor_guest_rt::arch::current_el(),
        elvisor_guest_rt::arch::mpidr() & 0xff_ffff
    );
    let fdt = boot.fdt.as_ref();
    let done = match mode {
        "net" => net::run(fdt),
        "blk" => blk::run(fdt),
        "doorbell" => bell::doorbell(fdt),
        "ipi" => bell::ipi(fdt),
        _ => {
            println!("BENCH FAIL: unknown mode {mode:?} (bootarg iobench=net|blk|doorbell|ipi)");
            true
        }
    };
    if done {
        println!("BENCH DONE");
    }
    smccc::psci::system_off();
}

/// The virtual counter: one tick per instruction under `-icount shift=0`.
pub fn now() -> u64 {
    Timer::Virtual.count()
}

/// Prints one result line: `BENCH name=N iters=I total=T per_iter=P unit=ticks min=.. max=..
/// median=..` plus `extra`. `scale` divides the per-sample range and median (samples that
/// hold `scale` operations each).
pub fn emit(name: &str, stats: &Stats, scale: u64, extra: core::fmt::Arguments<'_>) {
    let per = stats.total * 100 / stats.n.max(1);
    println!(
        "BENCH name={name} iters={} total={} per_iter={}.{:02} unit=ticks min={} max={} median={} {extra}",
        stats.n,
        stats.total,
        per / 100,
        per % 100,
        stats.min / scale,
        stats.max / scale,
        stats.median() / scale
    );
}

/// Samples kept for the median.
const SAMPLES: usize = 256;

/// Sum, count, range and the first [`SAMPLES`] samples.
pub struct Stats {
    pub n: u64,
    pub total: u64,
    pub min: u64,
    pub max: u64,
    samples: [u32; SAMPLES],
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub const fn new() -> Self {
        Self {
            n: 0,
            total: 0,
            min: u64::MAX,
            max: 0,
            samples: [0; SAMPLES],
        }
    }
    pub fn add(&mut self, v: u64) {
        if let Some(slot) = self.samples.get_mut(self.n as usize) {
            *slot = v.min(u64::from(u32::MAX)) as u32;
        }
        self.n += 1;
        self.total += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
    /// The median of the kept samples (natively, QEMU's backends finish in its main loop and
    /// an occasional clock jump makes one sample huge; the median ignores it).
    pub fn median(&self) -> u64 {
        let n = (self.n as usize).min(SAMPLES);
        let mut s = self.samples;
        let s = &mut s[..n];
        s.sort_unstable();
        s.get(n / 2).map_or(0, |&v| u64::from(v))
    }
}

/// This CPU's GIC, brought up (`primary`: the distributor too), with the virtual timer's
/// interrupt enabled as the wait deadline.
pub struct Irqs {
    pub gic: Gic,
    timer: u32,
}

impl Irqs {
    pub fn up(fdt: Option<&Fdt<'static>>, primary: bool) -> Option<Self> {
        let gic = Gic::discover(fdt).ok()?;
        if primary {
            gic.init_distributor().ok()?;
        }
        gic.wake_redistributor().ok()?;
        gic.init_cpu().ok()?;
        gic.set_priority_mask(gic::PRIORITY_MASK_NONE);
        let timer = TimerInterrupts::discover(fdt).virtual_;
        gic.set_priority(timer, 0x80);
        gic.enable(timer);
        Some(Self { gic, timer })
    }

    /// Enables `intid` (an SPI: routed to this CPU; an SGI: banked, this CPU's).
    pub fn take(&self, intid: u32) {
        if intid >= 32 {
            let d = self.gic.distributor();
            let me = elvisor_guest_rt::arch::mpidr();
            match self.gic.version() {
                Version::V3 => {
                    // GICD_IROUTER<n>: Aff3 [39:32], Aff2.Aff1.Aff0 [23:0], IRM = 0.
                    let o = 0x6000 + 8 * intid as usize;
                    d.write32(o, (me & 0xff_ffff) as u32);
                    d.write32(o + 4, ((me >> 32) & 0xff) as u32);
                }
                Version::V2 => {
                    // GICD_ITARGETSR<n>: one byte per interrupt, bit k = CPU interface k.
                    let o = 0x800 + (intid as usize & !3);
                    let shift = 8 * (intid % 4);
                    let old = d.read32(o) & !(0xff << shift);
                    d.write32(o, old | (1 << (me & 7)) << shift);
                }
            }
        }
        self.gic.set_priority(intid, 0x80);
        self.gic.enable(intid);
    }

    /// Waits for an interrupt other than the deadline timer: `Some(iar)` (still to be EOId by
    /// the caller, after it quietened the source), `None` once the counter passed `deadline`.
    ///
    /// Timed phases pass no deadline: natively, QEMU's device backends complete in its main
    /// loop, and under `-icount sleep=off` an armed timer would make the idle clock jump to it
    /// before they do. Without one an idle machine's clock stands still until the device's
    /// interrupt (a lost one hangs the run, which scripts/bench's QEMU timeout catches).
    pub fn wait(&self, deadline: Option<u64>) -> Option<Iar> {
        if let Some(d) = deadline {
            Timer::Virtual.arm_at(d);
        }
        loop {
            let iar = self.gic.acknowledge();
            if iar.is_special() {
                if deadline.is_some_and(|d| now() >= d) {
                    return None;
                }
                wfi();
                continue;
            }
            if iar.intid() == self.timer {
                Timer::Virtual.stop();
                self.gic.end_of_interrupt(iar);
                if deadline.is_some_and(|d| now() >= d) {
                    return None;
                }
                continue;
            }
            return Some(iar);
        }
    }

    pub fn eoi(&self, iar: Iar) {
        self.gic.end_of_interrupt(iar);
    }
}

/// A virtio-mmio device of the device tree with this device ID: (registers, INTID), in the
/// order of the tree (QEMU lists its transports from the highest address down).
pub fn virtio_devices(fdt: Option<&Fdt<'static>>, id: u32, out: &mut [Option<(Region, u32)>]) {
    let Some(root) = fdt.and_then(|f| find_node(f, "/")) else {
        return;
    };
    let mut k = 0;
    for node in root.children() {
        if k == out.len() || !dt::is_compatible(node, &["virtio,mmio"]) {
            continue;
        }
        let (Some(r), Some(irq)) = (dt::reg_range(node, 0), dt::gic_interrupt(node, 0)) else {
            continue;
        };
        let (Some(regs), Some(intid)) = (Region::new(r.start, 0x200), irq.intid()) else {
            continue;
        };
        if regs.read32(reg::MAGIC) == 0x7472_6976 && regs.read32(reg::DEVICE_ID) == id {
            out[k] = Some((regs, intid));
            k += 1;
        }
    }
}
