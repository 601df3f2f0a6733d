//! vCPU state: the general-register frame the exit path saves, and the EL1 system-register
//! context that only moves when a different vCPU takes a physical CPU.

use core::mem::offset_of;

/// The frame the exception vector fills on every exit, and restores before `eret`.
///
/// While the guest runs, SP_EL2 points at this frame, so the vector saves x0..x30 with no
/// scratch register; `host_sp` is then the hypervisor stack to switch to. The layout is
/// pinned by the asserts below because the assembly uses these offsets.
#[repr(C, align(16))]
#[derive(Clone, Debug, Default)]
pub struct GuestRegs {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    /// Top of the stack the exit handler runs on (this physical CPU's kernel stack).
    pub host_sp: u64,
}

pub const REGS_X0: usize = offset_of!(GuestRegs, x);
pub const REGS_ELR: usize = offset_of!(GuestRegs, elr);
pub const REGS_SPSR: usize = offset_of!(GuestRegs, spsr);
pub const REGS_HOST_SP: usize = offset_of!(GuestRegs, host_sp);
const _: () = assert!(REGS_X0 == 0);
const _: () = assert!(REGS_ELR == 248, "x30 and ELR are saved with one stp at 240");
const _: () = assert!(REGS_SPSR == 256);
const _: () = assert!(REGS_HOST_SP == 264);

impl GuestRegs {
    /// Reads Xn where 31 means XZR.
    pub fn get(&self, n: u8) -> u64 {
        self.x.get(n as usize).copied().unwrap_or(0)
    }
    /// Writes Xn; writes to 31 (XZR) are discarded.
    pub fn set(&mut self, n: u8, v: u64) {
        if let Some(r) = self.x.get_mut(n as usize) {
            *r = v;
        }
    }

    /// Completes an instruction the hypervisor emulated: the guest resumes `len` bytes on, and
    /// a software step the guest had active is completed too. The trapped instruction was
    /// taken with PSTATE.SS = 1 (active-not-pending); returning with SPSR.SS still 1 would let
    /// the guest execute the next instruction before its step exception, stepping two. With
    /// SS = 0 the ERET enters the active-pending state and the step exception is taken at
    /// once, before the next instruction (ARM ARM D2.12.5, "Entering the active-pending state").
    /// With MDSCR_EL1.SS = 0 the bit has no effect. Tested first so that the common case (not
    /// stepping) stores nothing.
    #[inline(always)]
    pub fn skip_instruction(&mut self, len: u64) {
        self.elr = self.elr.wrapping_add(len);
        if self.spsr & SPSR_SS != 0 {
            self.spsr &= !SPSR_SS;
        }
    }
}

/// SPSR_EL2.SS (bit 21): the software-step state to return to (ARM ARM C5.2.19).
pub const SPSR_SS: u64 = 1 << 21;

/// SPSR value for entering a guest: EL1h, D, A, I, F masked.
pub const SPSR_EL1H_DAIF: u64 = 0x3c5;
/// SCTLR_EL1 at reset per the Linux boot protocol: MMU and caches off, RES1 bits set.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// Guest EL1 (and EL0) system-register context. Loaded into the CPU when the vCPU is put on
/// a physical CPU, saved when it is taken off; never touched on an ordinary exit.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct El1Context {
    pub sctlr: u64,
    pub actlr: u64,
    pub cpacr: u64,
    pub ttbr0: u64,
    pub ttbr1: u64,
    pub tcr: u64,
    pub esr: u64,
    pub afsr0: u64,
    pub afsr1: u64,
    pub far: u64,
    pub mair: u64,
    pub amair: u64,
    pub vbar: u64,
    pub contextidr: u64,
    pub tpidr_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub sp_el0: u64,
    pub sp_el1: u64,
    pub elr_el1: u64,
    pub spsr_el1: u64,
    pub par: u64,
    pub cntkctl: u64,
    pub csselr: u64,
    /// VDISR_EL2 (with FEAT_RAS): what the guest reads and writes as DISR_EL1.
    pub vdisr: u64,
}

impl El1Context {
    /// The state a vCPU starts (and restarts) in.
    pub fn reset() -> Self {
        Self {
            sctlr: SCTLR_EL1_RESET,
            ..Self::default()
        }
    }
}

/// The virtual CPU interface state that is not in the list registers: VMCR and the active
/// priorities. Moves only when the vCPU on a physical CPU changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VifState {
    /// ICH_VMCR_EL2 / GICH_VMCR.
    pub vmcr: u64,
    /// GICv3 ICH_AP0R0..3_EL2 (group 0 active priorities; as many as ICH_VTR_EL2.PREbits gives).
    pub ap0r: [u32; 4],
    /// GICv3 ICH_AP1R0..3_EL2 (group 1); on GICv2, `ap1r[0]` holds GICH_APR.
    pub ap1r: [u32; 4],
}

/// A virtual CPU. `regs` must stay the first field: the exit vector hands the kernel a
/// pointer to it, and the kernel recovers the vCPU from that pointer.
#[repr(C)]
pub struct Vcpu {
    pub regs: GuestRegs,
    /// Where the exit vectors count this vCPU's exits (right after `regs.host_sp`, so the
    /// vector loads both with one LDP; arch::aarch64::vectors).
    pub counters: &'static ExitCounters,
    pub el1: El1Context,
    pub debug: super::sysreg::DebugShadow,
    pub id: super::VcpuId,
    /// The emulated EL1 physical timer.
    pub ptimer: super::timer::PhysTimer,
    /// Virtual CPU interface state outside the list registers (VMCR, active priorities).
    pub vif: VifState,
    /// List registers in use (bit n = LR n holds an interrupt), mirrored in `lrs`.
    pub lr_used: u64,
    /// The list registers' contents as last written or synced.
    pub lrs: [crate::vdev::vgic::Lr; 16],
    /// ICH_HCR_EL2 / GICH_HCR as last written (written only when it changes).
    pub hcr: u32,
    /// MPIDR the guest sees (VMPIDR_EL2 without the RES1 bit): Aff0 = vCPU index.
    pub mpidr: u64,
    /// Its VM (set when the kernel places the vCPU; one load on the exit paths).
    #[cfg(target_os = "none")]
    pub vm: Option<&'static crate::kernel::Vm>,
    /// Its slot in its physical CPU's run queue.
    pub slot: usize,
    /// The EL1 virtual timer (CNTV_CTL, CNTV_CVAL) while the vCPU is off its CPU.
    pub vtimer: (u64, u64),
    /// FP/SIMD registers while another vCPU owns the FP unit.
    pub fp: FpState,
    /// SVE registers, for a vCPU of a VM with SVE (`vm::sve`); `None` otherwise.
    pub sve: Option<alloc::boxed::Box<super::sve::SveState>>,
    /// Its PMU (`vm::pmu`; `present` false in a VM without one).
    pub pmu: super::pmu::PmuState,
}
const _: () = assert!(offset_of!(Vcpu, regs) == 0);
const _: () = assert!(offset_of!(Vcpu, counters) == REGS_HOST_SP + 8);
/// Offset of `counters` in [`Vcpu`], for the exit vectors.
pub const VCPU_COUNTERS: usize = offset_of!(Vcpu, counters);

/// A vCPU's exit counts, incremented by the exit vectors (one load, add and store each: only
/// the vCPU's own CPU writes them) and read by the shell's `list` and `info` on any CPU. They
/// live outside the [`Vcpu`] (which its CPU holds `&mut`), in the VM's counter table.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Synchronous exits: traps, hypercalls, aborts (the fast path's too).
    pub sync: core::sync::atomic::AtomicU64,
    /// Asynchronous exits: physical interrupts (and the rare FIQ or SError) taken while the
    /// vCPU ran; plus wake-ups of the vCPU waiting in WFI alone on its CPU (kernel::exit::block).
    pub irq: core::sync::atomic::AtomicU64,
}
pub const COUNTERS_SYNC: usize = offset_of!(ExitCounters, sync);
pub const COUNTERS_IRQ: usize = offset_of!(ExitCounters, irq);

impl ExitCounters {
    pub const fn new() -> Self {
        Self {
            sync: core::sync::atomic::AtomicU64::new(0),
            irq: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Both counts back to zero (a VM start).
    pub fn clear(&self) {
        self.sync.store(0, core::sync::atomic::Ordering::Relaxed);
        self.irq.store(0, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Counters for a vCPU nothing reads (host tests; a vCPU before its VM's table exists).
pub static UNCOUNTED: ExitCounters = ExitCounters::new();

impl Vcpu {
    /// A vCPU about to run from `entry` with `x0` as its first argument (the DTB for the boot
    /// vCPU, per the Linux arm64 boot protocol).
    pub fn new(id: super::VcpuId, mpidr: u64) -> Self {
        Self {
            regs: GuestRegs::default(),
            counters: &UNCOUNTED,
            el1: El1Context::reset(),
            debug: Default::default(),
            id,
            ptimer: Default::default(),
            vif: Default::default(),
            lr_used: 0,
            lrs: [crate::vdev::vgic::Lr::INVALID; 16],
            hcr: 0,
            mpidr,
            #[cfg(target_os = "none")]
            vm: None,
            slot: 0,
            vtimer: (0, 0),
            fp: FpState::default(),
            sve: None,
            pmu: Default::default(),
        }
    }

    /// Whether the vCPU is in SVE mode: its register file is its SVE state (`vm::sve`).
    #[inline(always)]
    pub fn sve_active(&self) -> bool {
        self.sve.as_ref().is_some_and(|s| s.active)
    }

    /// Puts the vCPU in its architectural reset state, ready to enter at `entry` with `x0`.
    /// `host_sp` is preserved.
    pub fn reset(&mut self, entry: u64, x0: u64) {
        let host_sp = self.regs.host_sp;
        self.regs = GuestRegs {
            host_sp,
            ..Default::default()
        };
        self.regs.x[0] = x0;
        self.regs.elr = entry;
        self.regs.spsr = SPSR_EL1H_DAIF;
        self.el1 = El1Context::reset();
        self.debug = Default::default();
        self.ptimer = Default::default();
        self.vif = Default::default();
        self.lr_used = 0;
        self.lrs = [crate::vdev::vgic::Lr::INVALID; 16];
        self.vtimer = (0, 0);
        self.fp = FpState::default();
        if let Some(s) = self.sve.as_mut() {
            s.reset();
        }
        self.pmu.reset();
    }
}

/// A vCPU's FP/SIMD registers, saved only when another vCPU needs the FP unit on the same
/// physical CPU (lazily, on its first trapped FP/SIMD instruction).
#[repr(C, align(16))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FpState {
    pub q: [u128; 32],
    pub fpsr: u64,
    pub fpcr: u64,
}
const _: () = assert!(core::mem::size_of::<FpState>() == 528);
