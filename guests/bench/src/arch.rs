//! Everything in the bench guest that touches the CPU directly: the boot-count hook in front of
//! the runtime's entry, the timed loops, a minimal IRQ vector, the secondary CPU's entry, and
//! raw access to the guest-compute buffer. The only module of the crate with `asm!`/`unsafe`.
//!
//! Timing method (PLATFORM.md section 5): every measurement reads CNTVCT_EL0 after an `isb`
//! before and after the code under test. Under QEMU `-icount shift=0` with `-cpu max`
//! (CNTFRQ = 1 GHz) the counter advances exactly once per executed instruction, at EL1 and at
//! EL2 alike, and exception entry and return cost nothing; so the difference between a loop
//! around an exiting instruction and the same loop around a `nop` is the number of hypervisor
//! instructions the exit runs. The results are in counter ticks; `scripts/bench` knows the run
//! was under icount and calls them instructions.
//!
//! IRQs stay masked at the PE (PSTATE.I, as the runtime enters `main`) except inside the wait
//! routines here, which unmask them only around `wfi`/`wfe` and while spinning, with the
//! registers the IRQ vector clobbers declared clobbered.

use core::arch::{asm, global_asm};
use core::mem::offset_of;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use elvisor_guest_rt::arch::boot::{IMAGE_FLAGS, IMAGE_MAGIC, TEXT_OFFSET};
use elvisor_guest_rt::mem;
use fdt::Fdt;

// ---- boot count ---------------------------------------------------------------------------

/// CNTPCT_EL0 as the guest's first instruction read it, or `u64::MAX` if the hook did not run.
/// The non-zero initialiser keeps it in `.data`: the runtime's entry zeroes `.bss` after the
/// hook stored the count.
static BOOT_CNTPCT: AtomicU64 = AtomicU64::new(u64::MAX);

// SAFETY (of the assembly as a whole): the loader enters here, first, on the only running CPU,
// with the MMU off; the hook uses x9/x10 (which the runtime's entry code does not expect to
// hold anything), leaves x0 (the DTB) alone, writes only BOOT_CNTPCT (inside the loaded image)
// and continues at the runtime's `_start`, whose own header's first word branches to its entry
// code. The header below is the one the loader reads (text_offset, image_size, magic); the
// runtime's header, now 0x40+ bytes into the image, is never read.
global_asm!(
    ".pushsection .text.image_head, \"ax\"",
    ".global _bench_start",
    ".type _bench_start, %function",
    "_bench_start:",
    // --- arm64 Image header (64 bytes); code0/code1 are the first instructions executed ------
    "    mrs     x9, cntpct_el0",        // 0x00 code0: instructions since machine start
    "    b       2f",                    // 0x04 code1
    "    .quad   {text_offset}",         // 0x08 text_offset
    "    .quad   __image_size",          // 0x10 image_size
    "    .quad   {flags}",               // 0x18 flags
    "    .quad   0",                     // 0x20 res2
    "    .quad   0",                     // 0x28 res3
    "    .quad   0",                     // 0x30 res4
    "    .long   {magic}",               // 0x38 magic "ARM\x64"
    "    .long   0",                     // 0x3c res5
    "2:  adrp    x10, {boot}",
    "    str     x9, [x10, :lo12:{boot}]",
    "    b       _start",
    ".size _bench_start, . - _bench_start",
    ".popsection",
    text_offset = const TEXT_OFFSET,
    flags = const IMAGE_FLAGS,
    magic = const IMAGE_MAGIC,
    boot = sym BOOT_CNTPCT,
);

/// CNTPCT_EL0 at the guest's first instruction, if the entry hook ran.
pub fn boot_count() -> Option<u64> {
    let count = BOOT_CNTPCT.load(Ordering::SeqCst);
    (count != u64::MAX).then_some(count)
}

/// CNTVCT_EL0 after an `isb`.
pub fn now() -> u64 {
    let count: u64;
    // SAFETY: reading the virtual counter has no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack, preserves_flags))
    };
    count
}

// ---- timed loops --------------------------------------------------------------------------

/// A loop of `iters` (>= 1) executions of `$body`, bracketed by counter reads; x21 holds
/// `$arg` for the body. Every caller-saved register is declared clobbered (the bodies use
/// x0/x9, and an SMCCC call may change x0..x17); the loop counter, the argument and the two
/// counts live in callee-saved x20..x23 (explicit: `clobber_abi` requires it), which no body
/// touches. Returns the elapsed ticks.
macro_rules! timed_loop {
    ($iters:expr, $arg:expr, $body:literal) => {{
        let (t0, t1): (u64, u64);
        let iters: u64 = $iters;
        let arg: u64 = $arg;
        assert!(iters > 0);
        // SAFETY: see the callers: each body is an instruction whose effects on registers are
        // covered by clobber_abi("C"), which touches no Rust memory, and which either returns
        // here or ends the guest.
        unsafe {
            asm!(
                "isb",
                "mrs x22, cntvct_el0",
                "2:",
                $body,
                "subs x20, x20, #1",
                "b.ne 2b",
                "isb",
                "mrs x23, cntvct_el0",
                inout("x20") iters => _,
                inout("x21") arg => _,
                out("x22") t0,
                out("x23") t1,
                clobber_abi("C"),
                options(nostack),
            )
        };
        t1.wrapping_sub(t0)
    }};
}

/// What a timed loop repeats.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// `mov x0, fid; hvc #0`: an SMCCC call with no arguments, result ignored.
    Hvc(u32),
    /// `ldr w9, [addr]`: a 32-bit device register read.
    Load32(Mmio),
    /// `mrs x9, cntp_ctl_el0`: the EL1 physical timer control (trapped under elvisor).
    ReadCntpCtl,
}

/// A device register address: outside every Rust object (see [`Mmio::new`]).
#[derive(Debug, Clone, Copy)]
pub struct Mmio(usize);

impl Mmio {
    /// The 32-bit register at `addr`, if it is aligned and outside the image, stack and DTB
    /// (so a load from it cannot alias a Rust object, whatever device is there).
    pub fn new(addr: usize) -> Option<Self> {
        Self::block(addr, 4)
    }

    /// The base of a register block of `len_bytes` at `addr`, under the same conditions for
    /// the whole block.
    pub fn block(addr: usize, len_bytes: usize) -> Option<Self> {
        let range = addr..addr.checked_add(len_bytes)?;
        (addr.is_multiple_of(4) && !mem::overlaps_rust_memory(&range)).then_some(Self(addr))
    }

    /// The 8-bit register at `addr`, if it is outside the image, stack and DTB.
    pub fn byte(addr: usize) -> Option<Self> {
        let range = addr..addr.checked_add(1)?;
        (!mem::overlaps_rust_memory(&range)).then_some(Self(addr))
    }

    /// Writes the byte register at this address with one `strb` (GICv2 GICD_SPENDSGIR: a
    /// word write would also set the other three SGIs of the word pending on QEMU's GIC, which
    /// marks an SGI pending even for an all-zero source byte).
    pub fn write8(self, value: u8) {
        // SAFETY: the address is outside every Rust object (checked at construction), so the
        // store reaches a device (or nothing), never Rust memory.
        unsafe {
            asm!("strb {v:w}, [{a}]", a = in(reg) self.0, v = in(reg) u32::from(value), options(nostack, preserves_flags))
        };
    }
}

/// Runs `op` `iters` times (or, with `real` false, the same loop with `nop` in its place) and
/// returns the elapsed counter ticks. `iters` must be at least 1.
pub fn time_loop(op: Op, iters: u64, real: bool) -> u64 {
    match (op, real) {
        // An SMCCC call changes no guest memory (none is passed) and at most x0..x17.
        (Op::Hvc(fid), true) => timed_loop!(iters, u64::from(fid), "mov x0, x21\nhvc #0"),
        (Op::Hvc(fid), false) => timed_loop!(iters, u64::from(fid), "mov x0, x21\nnop"),
        // A device read (Mmio::new checked it is no Rust object) only changes x9.
        (Op::Load32(Mmio(addr)), true) => timed_loop!(iters, addr as u64, "ldr w9, [x21]"),
        (Op::Load32(Mmio(addr)), false) => timed_loop!(iters, addr as u64, "nop"),
        // Reading CNTP_CTL_EL0 has no side effects.
        (Op::ReadCntpCtl, true) => timed_loop!(iters, 0, "mrs x9, cntp_ctl_el0"),
        (Op::ReadCntpCtl, false) => timed_loop!(iters, 0, "nop"),
    }
}

// ---- vm-switch trace --------------------------------------------------------------------------

/// CNTPCT_EL0: the physical count, the same for every VM (CNTVCT_EL0 is offset per VM).
pub fn physical_now() -> u64 {
    let count: u64;
    // SAFETY: reading the physical counter has no side effects (elvisor sets
    // CNTHCTL_EL2.EL1PCTEN, so it does not trap).
    unsafe {
        asm!("isb", "mrs {}, cntpct_el0", out(reg) count, options(nomem, nostack, preserves_flags))
    };
    count
}

/// Polls CNTPCT_EL0 in a 6-instruction loop, starting from `prev`, until two consecutive reads
/// are more than `gap` ticks apart (the vCPU was off the CPU in between) or the count passes
/// `deadline`. Returns (last read before the gap, first read after it).
pub fn poll_for_gap(prev: u64, gap: u64, deadline: u64) -> (u64, u64) {
    let (before, after): (u64, u64);
    // SAFETY: reads the physical counter and compares; no memory, no side effects.
    unsafe {
        asm!(
            "2: mrs  {now}, cntpct_el0",
            "sub     {d}, {now}, {prev}",
            "cmp     {d}, {gap}",
            "b.hi    3f",
            "mov     {prev}, {now}",
            "cmp     {now}, {deadline}",
            "b.lo    2b",
            "3:",
            prev = inout(reg) prev => before,
            now = out(reg) after,
            d = out(reg) _,
            gap = in(reg) gap,
            deadline = in(reg) deadline,
            options(nomem, nostack),
        )
    };
    (before, after)
}

/// `hvc #0` with x0 = `fid` (elvisor's ELVISOR_YIELD) between two CNTPCT_EL0 reads: returns
/// (count just before the call, count just after it returned). x0..x17 are treated as clobbered
/// (SMCCC); the counts live in callee-saved x20/x22.
pub fn timed_yield(fid: u32) -> (u64, u64) {
    let (before, after): (u64, u64);
    // SAFETY: an SMCCC call that passes no memory; it returns here (possibly after other vCPUs
    // ran) with at most x0..x17 changed, which clobber_abi("C") covers.
    unsafe {
        asm!(
            "isb",
            "mrs x20, cntpct_el0",
            "mov x0, x21",
            "hvc #0",
            "mrs x22, cntpct_el0",
            out("x20") before,
            inout("x21") u64::from(fid) => _,
            out("x22") after,
            clobber_abi("C"),
            options(nostack),
        )
    };
    (before, after)
}

// ---- the IRQ vector -------------------------------------------------------------------------

/// What the bench IRQ vector records, and what it needs to know. Shared between the code that
/// waits (which resets `count`) and the vector (which fills it in).
#[repr(C)]
#[derive(Debug)]
pub struct IrqRecord {
    /// CNTVCT_EL0 read by the vector's first instruction, for the first IRQ since `count` was 0.
    pub time: AtomicU64,
    /// The IAR value of that IRQ.
    pub iar: AtomicU64,
    /// IRQs taken (spurious acknowledges are not counted).
    pub count: AtomicU64,
    /// GICv2: the CPU interface base (GICC, or GICV under a hypervisor); GICv3: 0.
    pub gicc: AtomicU64,
    /// INTID whose source is the EL1 virtual timer: the vector disables that timer.
    pub vtimer_intid: AtomicU64,
    /// INTID whose source is the EL1 physical timer (the watchdog): disabled likewise.
    pub ptimer_intid: AtomicU64,
}

impl IrqRecord {
    /// An empty record.
    pub const fn new() -> Self {
        Self {
            time: AtomicU64::new(0),
            iar: AtomicU64::new(0),
            count: AtomicU64::new(0),
            gicc: AtomicU64::new(0),
            vtimer_intid: AtomicU64::new(u64::MAX),
            ptimer_intid: AtomicU64::new(u64::MAX),
        }
    }

    /// Sets what the vector needs: the GICv2 CPU interface (`None` for GICv3) and the timer INTIDs.
    pub fn configure(&self, gicc: Option<Mmio>, vtimer_intid: u32, ptimer_intid: u32) {
        self.gicc
            .store(gicc.map_or(0, |Mmio(addr)| addr as u64), Ordering::SeqCst);
        self.vtimer_intid
            .store(vtimer_intid.into(), Ordering::SeqCst);
        self.ptimer_intid
            .store(ptimer_intid.into(), Ordering::SeqCst);
    }

    /// Forgets the last IRQ.
    pub fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.time.store(0, Ordering::SeqCst);
        self.iar.store(0, Ordering::SeqCst);
    }
}

/// GICC_IAR / GICC_EOIR offsets (IHI 0048B 4.4).
const GICC_IAR: usize = 0x0c;
const GICC_EOIR: usize = 0x10;
/// CNTx_CTL_EL0 with ENABLE = 0 and IMASK = 1: the timer off.
const CTL_OFF: u64 = elvisor_guest_rt::timer::CTL_IMASK;

// The bench's vector table: the IRQ entry for "current EL with SP_ELx" (offset 0x280) reads
// CNTVCT_EL0 as its first instruction, so the recorded time is when the interrupt reached the
// guest. Every other entry branches to the runtime's entry of the same index, whose code does
// not depend on where it was entered from, so faults are still reported as usual.
//
// The IRQ code relies on its caller (only the wait routines below ever unmask IRQs): x13 =
// the IrqRecord, and x9..x12, x14 free to clobber. It acknowledges (ICC_IAR1_EL1 or GICC_IAR),
// switches off the EL1 virtual or physical timer if that was the source (both are level
// sensitive), ends the interrupt (EOImode 0: priority drop and deactivation), records time and
// IAR for the first IRQ since `count` was reset, counts it, `sev`s (for a waiter in `wfe`) and
// returns. PSTATE, flags included, comes back from SPSR_EL1.
//
// SAFETY (of the assembly as a whole): the table is installed in VBAR_EL1 only by
// `with_bench_vectors`, and IRQs are unmasked only inside the wait routines of this module,
// which pass x13 and declare x9..x12, x14 clobbered; the IRQ code writes only the IrqRecord.
global_asm!(
    ".macro BENCH_FORWARD index",
    "    .balign 0x80",
    "    b       elvisor_guest_vectors + (\\index * 0x80)",
    ".endm",
    ".pushsection .text.bench_vectors, \"ax\"",
    ".balign 0x800",
    ".global bench_vectors",
    "bench_vectors:",
    "    BENCH_FORWARD 0",
    "    BENCH_FORWARD 1",
    "    BENCH_FORWARD 2",
    "    BENCH_FORWARD 3",
    "    BENCH_FORWARD 4",
    "    .balign 0x80",                     // 5: IRQ, current EL, SP_ELx
    "    mrs     x9, cntvct_el0",
    "    b       bench_irq_record",
    "    BENCH_FORWARD 6",
    "    BENCH_FORWARD 7",
    "    BENCH_FORWARD 8",
    "    BENCH_FORWARD 9",
    "    BENCH_FORWARD 10",
    "    BENCH_FORWARD 11",
    "    BENCH_FORWARD 12",
    "    BENCH_FORWARD 13",
    "    BENCH_FORWARD 14",
    "    BENCH_FORWARD 15",
    "    .balign 0x80",
    "bench_irq_record:",
    "    ldr     x12, [x13, #{rec_gicc}]",
    "    cbnz    x12, 1f",
    "    mrs     x10, icc_iar1_el1",
    "    b       2f",
    "1:  ldr     w10, [x12, #{gicc_iar}]",
    "2:  and     x11, x10, #0x3ff",          // INTID (GICv2 IAR [9:0]; no LPIs here)
    "    cmp     x11, #1020",
    "    b.hs    9f",                        // 1020..1023: nothing was acknowledged
    "    ldr     x14, [x13, #{rec_vtimer}]",
    "    cmp     x11, x14",
    "    b.ne    3f",
    "    mov     x14, #{ctl_off}",
    "    msr     cntv_ctl_el0, x14",
    "3:  ldr     x14, [x13, #{rec_ptimer}]",
    "    cmp     x11, x14",
    "    b.ne    4f",
    "    mov     x14, #{ctl_off}",
    "    msr     cntp_ctl_el0, x14",
    "4:  isb",
    "    cbnz    x12, 5f",
    "    msr     icc_eoir1_el1, x10",
    "    b       6f",
    "5:  str     w10, [x12, #{gicc_eoir}]",
    "6:  ldr     x14, [x13, #{rec_count}]",
    "    cbnz    x14, 7f",
    "    str     x9, [x13, #{rec_time}]",
    "    str     x10, [x13, #{rec_iar}]",
    "7:  add     x14, x14, #1",
    "    str     x14, [x13, #{rec_count}]",
    "    dsb     sy",
    "    sev",
    "9:  eret",
    ".popsection",
    rec_time = const offset_of!(IrqRecord, time),
    rec_iar = const offset_of!(IrqRecord, iar),
    rec_count = const offset_of!(IrqRecord, count),
    rec_gicc = const offset_of!(IrqRecord, gicc),
    rec_vtimer = const offset_of!(IrqRecord, vtimer_intid),
    rec_ptimer = const offset_of!(IrqRecord, ptimer_intid),
    gicc_iar = const GICC_IAR,
    gicc_eoir = const GICC_EOIR,
    ctl_off = const CTL_OFF,
);

fn vbar() -> u64 {
    let vbar: u64;
    // SAFETY: reading VBAR_EL1 has no side effects.
    unsafe { asm!("mrs {}, vbar_el1", out(reg) vbar, options(nomem, nostack, preserves_flags)) };
    vbar
}

/// # Safety
/// `table` must be a valid, 2 KiB aligned EL1 vector table.
unsafe fn set_vbar(table: u64) {
    // SAFETY: the caller passes a valid table; the `isb` makes exceptions use it from here on.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) table, options(nostack, preserves_flags)) };
}

fn bench_vectors_address() -> u64 {
    let table: u64;
    // SAFETY: computes the address of the bench vector table; no memory is touched.
    unsafe {
        asm!(
            "adrp {t}, bench_vectors",
            "add {t}, {t}, :lo12:bench_vectors",
            t = out(reg) table,
            options(nomem, nostack, preserves_flags),
        )
    };
    table
}

/// Runs `f` with the bench vector table installed (IRQs are handled by the minimal recording
/// vector; everything else as before), then puts the previous table back.
pub fn with_bench_vectors<R>(f: impl FnOnce() -> R) -> R {
    let previous = vbar();
    // SAFETY: `bench_vectors` is 2 KiB aligned, forwards every entry but the IRQ one to the
    // runtime's table, and its IRQ entry is reachable only from this module's wait routines.
    unsafe { set_vbar(bench_vectors_address()) };
    let result = f();
    // SAFETY: `previous` is the table that was installed when we were called.
    unsafe { set_vbar(previous) };
    result
}

// ---- interrupt benchmarks ----------------------------------------------------------------

/// Arms the EL1 virtual timer at `cval`, then sleeps in `wfi` with IRQs masked and, on every
/// wake-up, unmasks them for one instruction so a pending IRQ is taken (by the bench vector,
/// which records it in `record`). Returns once `record` counts an IRQ, or the virtual count
/// reaches `deadline` (arm a watchdog at `deadline` so a `wfi` cannot sleep forever).
///
/// Call only inside [`with_bench_vectors`].
pub fn timer_irq_wait(record: &IrqRecord, cval: u64, deadline: u64) {
    // SAFETY: writes only this PE's virtual timer; the vector (see the table above) gets x13 =
    // `record` and may clobber x9..x12, x14, which are declared clobbered; it writes only
    // `record` (not `nomem`: the compiler re-reads `record` afterwards).
    unsafe {
        asm!(
            "msr     cntv_cval_el0, {cval}",
            "mov     x9, #1",                 // ENABLE, IMASK clear
            "msr     cntv_ctl_el0, x9",
            "isb",
            "2: wfi",
            "msr     daifclr, #2",
            "isb",
            "msr     daifset, #2",
            "ldr     x9, [x13, #{count}]",
            "cbnz    x9, 3f",
            "mrs     x9, cntvct_el0",
            "cmp     x9, {deadline}",
            "b.lo    2b",
            "3:",
            cval = in(reg) cval,
            deadline = in(reg) deadline,
            count = const offset_of!(IrqRecord, count),
            in("x13") record as *const IrqRecord,
            out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x14") _,
            options(nostack),
        )
    };
}

/// The CPU interface, for [`ack_eoi_timed`].
#[derive(Debug, Clone, Copy)]
pub enum CpuInterface {
    /// GICv3 system registers (ICC_*, or ICV_* under a hypervisor).
    V3,
    /// GICv2 memory-mapped CPU interface at this base (GICC, or GICV under a hypervisor).
    V2(Mmio),
}

/// Times one acknowledge + end-of-interrupt (`real`), or two `nop`s in their place, between
/// counter reads. Returns (ticks, IAR value; 0 for the `nop`s). IRQs must be masked at the PE.
pub fn ack_eoi_timed(cpu: CpuInterface, real: bool) -> (u64, u32) {
    let (t0, t1, iar): (u64, u64, u64);
    match (cpu, real) {
        // SAFETY: the ICC acknowledge and EOI only change GIC state; registers are outputs.
        (CpuInterface::V3, true) => unsafe {
            asm!(
                "isb",
                "mrs {t0}, cntvct_el0",
                "mrs {iar}, icc_iar1_el1",
                "msr icc_eoir1_el1, {iar}",
                "isb",
                "mrs {t1}, cntvct_el0",
                t0 = out(reg) t0, t1 = out(reg) t1, iar = out(reg) iar,
                options(nostack),
            )
        },
        // SAFETY: GICC_IAR/EOIR in the CPU interface block (an Mmio, no Rust object) only
        // change GIC state; registers are outputs.
        (CpuInterface::V2(Mmio(base)), true) => unsafe {
            asm!(
                "isb",
                "mrs {t0}, cntvct_el0",
                "ldr {iar:w}, [{base}, #{giar}]",
                "str {iar:w}, [{base}, #{geoir}]",
                "isb",
                "mrs {t1}, cntvct_el0",
                base = in(reg) base,
                giar = const GICC_IAR, geoir = const GICC_EOIR,
                t0 = out(reg) t0, t1 = out(reg) t1, iar = out(reg) iar,
                options(nostack),
            )
        },
        (_, false) => {
            // SAFETY: counter reads and `nop`s only.
            unsafe {
                asm!(
                    "isb",
                    "mrs {t0}, cntvct_el0",
                    "nop",
                    "nop",
                    "isb",
                    "mrs {t1}, cntvct_el0",
                    t0 = out(reg) t0, t1 = out(reg) t1,
                    options(nostack),
                )
            };
            iar = 0;
        }
    }
    (t1.wrapping_sub(t0), iar as u32)
}

/// How the primary generates an SGI for the virtual-IPI benchmark.
#[derive(Debug, Clone, Copy)]
pub enum SgiWrite {
    /// `msr icc_sgi1r_el1, value` (GICv3).
    V3 { value: u64 },
    /// `str value, [GICD_SGIR]` (GICv2).
    V2 { sgir: Mmio, value: u32 },
}

/// Reads the counter, generates the SGI, and waits in `wfe` (IRQs stay masked here) until the
/// receiver's `record` counts `expected` IRQs or the virtual count reaches `deadline`. Returns
/// the counter value read just before the SGI was generated.
pub fn ipi_send_and_wait(sgi: SgiWrite, record: &IrqRecord, expected: u64, deadline: u64) -> u64 {
    let t0: u64;
    let (kind, value, addr) = match sgi {
        SgiWrite::V3 { value } => (3u64, value, 0usize),
        SgiWrite::V2 {
            sgir: Mmio(addr),
            value,
        } => (2, u64::from(value), addr),
    };
    // SAFETY: the SGI write changes GIC state only (GICD_SGIR is an Mmio); the loop reads
    // `record` (written by the other CPU's IRQ vector); `wfe` only waits.
    unsafe {
        asm!(
            "dsb     sy",                     // the record reset is visible to the receiver
            "isb",
            "mrs     {t0}, cntvct_el0",
            "cmp     {kind}, #3",
            "b.ne    1f",
            "msr     icc_sgi1r_el1, {value}",
            "b       2f",
            "1: str  {value:w}, [{addr}]",
            "2: isb",
            "3: wfe",
            "ldr     {c}, [{rec}, #{count}]",
            "cmp     {c}, {expected}",
            "b.hs    4f",
            "mrs     {c}, cntvct_el0",
            "cmp     {c}, {deadline}",
            "b.lo    3b",
            "4:",
            kind = in(reg) kind,
            value = in(reg) value,
            addr = in(reg) addr,
            rec = in(reg) record as *const IrqRecord,
            expected = in(reg) expected,
            deadline = in(reg) deadline,
            count = const offset_of!(IrqRecord, count),
            t0 = out(reg) t0,
            c = out(reg) _,
            options(nostack),
        )
    };
    t0
}

/// The receiving CPU's loop: IRQs unmasked, `wfe` (a yield under QEMU's TCG, so the sender
/// runs), until `stop` is non-zero or the virtual count reaches `deadline`. IRQs are taken by
/// the bench vector (which must be installed on this CPU) and recorded in `record`.
pub fn ipi_receive(record: &IrqRecord, stop: &AtomicU64, deadline: u64) {
    // SAFETY: the vector gets x13 = `record` and may clobber x9..x12, x14, declared clobbered;
    // the loop only reads `stop`.
    unsafe {
        asm!(
            "msr     daifclr, #2",
            "isb",
            "2: wfe",
            "ldr     {s}, [{stop}]",
            "cbnz    {s}, 3f",
            "mrs     {s}, cntvct_el0",
            "cmp     {s}, {deadline}",
            "b.lo    2b",
            "3: msr  daifset, #2",
            stop = in(reg) stop.as_ptr(),
            deadline = in(reg) deadline,
            s = out(reg) _,
            in("x13") record as *const IrqRecord,
            out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x14") _,
            options(nostack),
        )
    };
}

// ---- the secondary CPU ------------------------------------------------------------------------

/// Bytes of the secondary CPU's stack.
const SECONDARY_STACK_BYTES: usize = 16 * 1024;

// The secondary CPU's entry for PSCI CPU_ON (x0 = context id, MMU off, DAIF masked, EL1h):
// FP/SIMD on (compiled Rust uses NEON), its own stack in .bss, the bench vectors, then
// `crate::ipi::secondary_main(context)`, which does not return.
//
// SAFETY (of the assembly as a whole): entered only through PSCI CPU_ON, once, on the second
// CPU; it touches its own stack (reserved here, used by nothing else) and EL1 registers of its
// own PE.
global_asm!(
    ".pushsection .bss.bench_secondary_stack, \"aw\", %nobits",
    ".balign 16",
    "bench_secondary_stack:",
    "    .space {stack_bytes}",
    "bench_secondary_stack_top:",
    ".popsection",
    ".pushsection .text.bench_secondary, \"ax\"",
    ".global bench_secondary_entry",
    ".type bench_secondary_entry, %function",
    "bench_secondary_entry:",
    "    mov     x9, #(3 << 20)",            // CPACR_EL1.FPEN = 0b11
    "    msr     cpacr_el1, x9",
    "    isb",
    "    adrp    x9, bench_secondary_stack_top",
    "    add     x9, x9, :lo12:bench_secondary_stack_top",
    "    mov     sp, x9",
    "    adrp    x9, bench_vectors",
    "    add     x9, x9, :lo12:bench_vectors",
    "    msr     vbar_el1, x9",
    "    isb",
    "    bl      {main}",
    "1:  wfi",
    "    b       1b",
    ".size bench_secondary_entry, . - bench_secondary_entry",
    ".popsection",
    stack_bytes = const SECONDARY_STACK_BYTES,
    main = sym crate::ipi::secondary_main,
);

/// The IPA PSCI CPU_ON should start the secondary at.
pub fn secondary_entry_address() -> u64 {
    let entry: u64;
    // SAFETY: computes an address; no memory is touched.
    unsafe {
        asm!(
            "adrp {t}, bench_secondary_entry",
            "add {t}, {t}, :lo12:bench_secondary_entry",
            t = out(reg) entry,
            options(nomem, nostack, preserves_flags),
        )
    };
    entry
}

/// The device tree range, published by the primary for the secondary CPU.
static DTB_START: AtomicUsize = AtomicUsize::new(0);
static DTB_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Publishes the device tree the runtime found (its `BootInfo::dtb_range`) for [`shared_dtb`].
pub fn publish_dtb(boot: &elvisor_guest_rt::BootInfo) {
    if let Some(range) = boot.dtb_range() {
        DTB_BYTES.store(0, Ordering::SeqCst);
        DTB_START.store(range.start, Ordering::SeqCst);
        DTB_BYTES.store(range.end - range.start, Ordering::SeqCst);
    }
}

/// The device tree [`publish_dtb`] published, parsed again (on the secondary CPU).
pub fn shared_dtb() -> Option<Fdt<'static>> {
    let bytes = DTB_BYTES.load(Ordering::SeqCst);
    let start = DTB_START.load(Ordering::SeqCst);
    if bytes == 0 {
        return None;
    }
    // SAFETY: the range is the runtime's `BootInfo::dtb_range`: a validated device tree in
    // guest RAM that the runtime already hands out as `&'static [u8]` and nothing ever writes.
    let slice = unsafe { core::slice::from_raw_parts(start as *const u8, bytes) };
    Fdt::new(slice).ok()
}

// ---- guest-compute buffer ---------------------------------------------------------------------

/// A block of guest RAM outside the image, its stack and the DTB, as 64-bit words.
///
/// With the MMU off every access is to Device memory, so the words are read and written one
/// aligned `ldr`/`str` at a time (volatile; no `dc zva`, no unaligned or pair accesses that
/// Device memory would fault or a compiler might merge).
#[derive(Debug)]
pub struct Buffer {
    base: *mut u64,
    words: usize,
}

impl Buffer {
    /// The buffer over `range`, if it is 8-byte aligned, inside guest RAM (`/memory`) and clear
    /// of every Rust object (image, stack, DTB). Take it once: two `Buffer`s over one range
    /// would alias.
    pub fn new(range: Range<usize>) -> Option<Self> {
        let ram = mem::guest_ram()?;
        let ok = range.start.is_multiple_of(8)
            && range.end.is_multiple_of(8)
            && range.start < range.end
            && ram.start <= range.start
            && range.end <= ram.end
            && !mem::overlaps_rust_memory(&range);
        ok.then(|| Self {
            base: range.start as *mut u64,
            words: (range.end - range.start) / 8,
        })
    }

    /// Words in the buffer.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Word `index`. Panics if out of range.
    #[inline(always)]
    pub fn read(&self, index: usize) -> u64 {
        assert!(index < self.words);
        // SAFETY: `index < words`: in bounds of the buffer (checked by `new`).
        let p = unsafe { self.base.add(index) };
        // SAFETY: in bounds of a RAM range no Rust object lives in (checked by `new`), aligned.
        unsafe { p.read_volatile() }
    }

    /// Writes word `index`. Panics if out of range.
    #[inline(always)]
    pub fn write(&mut self, index: usize, value: u64) {
        assert!(index < self.words);
        // SAFETY: `index < words`: in bounds of the buffer (checked by `new`).
        let p = unsafe { self.base.add(index) };
        // SAFETY: as in `read`; `&mut self` makes this the only access through the buffer.
        unsafe { p.write_volatile(value) }
    }
}
