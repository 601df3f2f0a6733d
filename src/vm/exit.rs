//! The exit dispatcher: a decoded syndrome in, an action out.
//!
//! Pure logic over the vCPU's register frame and the VM's device bus, so that every path a
//! hostile guest can take is unit-tested on the host. The arch layer reads the syndrome and
//! fault registers, calls [`handle_sync`], and carries out the returned [`Action`]
//! (injecting exceptions needs the CPU's EL1 registers, which only it may touch).

use core::sync::atomic::{AtomicU32, Ordering};

use log::warn;

/// Diagnostics a VM may cause before they are suppressed (a guest must not be able to keep
/// the console busy with interrupts masked).
pub const WARN_BUDGET: u32 = 64;

/// `warn!` for guest-caused events, limited by the VM's budget.
macro_rules! guest_warn {
    ($ctx:expr, $($arg:tt)*) => {{
        let left = $ctx.warn_budget.load(Ordering::Relaxed);
        if left > 0 {
            $ctx.warn_budget.store(left - 1, Ordering::Relaxed);
            if left == 1 {
                warn!("{}: further diagnostics from this VM suppressed", $ctx.vm_name);
            } else {
                warn!($($arg)*);
            }
        }
    }};
}

use super::psci::{self, Call};
use super::sysreg::{self, DebugShadow, SysRegResult};
use super::timer::PhysTimer;
use super::vcpu::GuestRegs;
use crate::arch::aarch64::esr::{self, DataAbort, Esr, Exit, fsc};
use crate::mm::GuestPhysAddr;
use crate::vdev::MmioBus;

/// What to do after handling an exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Return to the guest.
    Resume,
    /// Inject a synchronous external data abort at `far` (the guest VA).
    InjectDataAbort { far: u64, write: bool },
    /// Inject a synchronous external instruction abort at `far`.
    InjectInstrAbort { far: u64 },
    /// Inject UNDEFINED at the trapping instruction.
    InjectUndef,
    /// A PSCI call that needs VM-level state (power, other vCPUs).
    Psci(Call),
    /// WFI/WFE: the vCPU has nothing to do until an interrupt.
    /// WFI (block) or WFE (yield).
    Wait { wfe: bool },
    /// The guest changed its emulated physical timer: re-evaluate its interrupt line and the
    /// kernel's EL2 timer.
    TimerChanged,
    /// A trapped ICC_SGI1R_EL1 (or ICC_ASGI1R_EL1 / ICC_SGI0R_EL1) write: generate SGIs.
    Sgi { value: u64, group1: bool },
    /// FP/SIMD use trapped because another vCPU owns the FP registers on this CPU: switch
    /// them and retry the instruction.
    FpAccess,
    /// An SVE instruction or ZCR_EL1 access trapped (EC 0x19). For a vCPU of a VM with SVE
    /// (`vm::sve`), which does not own the register file in SVE mode (`kernel::fpu`): switch to
    /// its SVE state and retry the instruction. For a vCPU without SVE the kernel injects
    /// UNDEFINED (SVE is hidden): it alone knows, and deciding there keeps the flag off the
    /// common exit path.
    SveAccess,
    /// A trapped debug-register write needs the hardware updated: the vCPU's first use of
    /// its debug registers (load them, stop trapping) or an OS lock change (vm::debug).
    DebugSync,
    /// A trapped PMU register access (vm::pmu), PC not moved: the kernel performs it on the
    /// vCPU's PMU (loading it on first use) or injects UNDEFINED in a VM without a PMU.
    Pmu,
    /// The guest did something we cannot continue from; stop the VM with this diagnostic.
    Stop(&'static str),
    /// A translation fault on the guest's own RAM: the block is not backed yet (mm::lazy).
    /// Back it and retry the access (the PC is unchanged).
    BackRam { ipa: GuestPhysAddr },
}

/// Fault addresses, read by the arch layer only for aborts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fault {
    /// FAR_EL2: the faulting virtual address (guest VA).
    pub far: u64,
    /// The faulting IPA (HPFAR_EL2.FIPA << 8 | FAR[11:0]).
    pub ipa: GuestPhysAddr,
}

/// Everything of the VM a synchronous exit may touch.
pub struct ExitCtx<'a> {
    pub regs: &'a mut GuestRegs,
    pub mmio: &'a crate::arch::aarch64::sync::Mutex<MmioBus>,
    pub debug: &'a mut DebugShadow,
    /// The vCPU's emulated EL1 physical timer.
    pub ptimer: &'a mut PhysTimer,
    /// Reads the physical counter (only called for timer accesses).
    pub counter: fn() -> u64,
    /// Reads the hardware ID register S3_0_C0_C<crm>_<op2> (for trapped ID reads).
    pub id_read: fn(u8, u8) -> u64,
    /// The exiting vCPU (banked device registers depend on it).
    pub vcpu: crate::vm::VcpuId,
    /// For diagnostics.
    pub vm_name: &'a str,
    /// Diagnostics this VM may still print ([`WARN_BUDGET`] to start with).
    pub warn_budget: &'a AtomicU32,
    /// Where guest RAM starts ([`super::layout::RAM_BASE`] unless the VM is direct-mapped).
    pub ram_base: GuestPhysAddr,
    /// Bytes of guest RAM from `ram_base`.
    pub ram_bytes: u64,
}

impl ExitCtx<'_> {
    /// Whether `ipa` is in the VM's RAM.
    fn in_ram(&self, ipa: GuestPhysAddr) -> bool {
        ipa.0
            .checked_sub(self.ram_base.0)
            .is_some_and(|off| off < self.ram_bytes)
    }
}

/// Handles a synchronous exit from the guest. `fault` is only called for aborts.
pub fn handle_sync(ctx: &mut ExitCtx<'_>, esr: Esr, fault: impl FnOnce() -> Fault) -> Action {
    match esr::decode(esr) {
        Exit::Hvc { imm } => smccc(ctx.regs, imm),
        Exit::Smc { imm } => {
            // A trapped SMC reports the SMC itself in ELR_EL2; step over it.
            ctx.regs.skip_instruction(4);
            smccc(ctx.regs, imm)
        }
        Exit::DataAbort(da) => data_abort(ctx, esr, da, fault()),
        Exit::InstrAbort(ia) => {
            let f = fault();
            // The first fetch from a RAM block that is not backed yet (also on a stage-1 walk
            // through it: the walk's IPA is the one reported).
            if fsc::is_translation(ia.fsc) && ctx.in_ram(f.ipa) {
                return Action::BackRam { ipa: f.ipa };
            }
            // Instruction fetch from an IPA with no RAM behind it (devices are never executable).
            guest_warn!(
                ctx,
                "{}: instruction fetch from unbacked IPA {:#x} (pc {:#x}); injecting abort",
                ctx.vm_name,
                f.ipa.0,
                ctx.regs.elr
            );
            Action::InjectInstrAbort { far: f.far }
        }
        Exit::SysReg(acc) => {
            let value = ctx.regs.get(acc.rt);
            if acc.read
                // ID registers never get here in the kernel: its fast path answers every ID
                // read first (with the vCPU's SVE setting); here they are those of a VM
                // without SVE, which is always safe.
                && let Some(v) =
                    local_sysreg_read(&acc, ctx.ptimer, ctx.counter, ctx.id_read, false, 0)
            {
                ctx.regs.set(acc.rt, v);
                ctx.regs.skip_instruction(4);
                return Action::Resume;
            }
            if PhysTimer::handles(&acc) {
                if let Some(v) = ctx.ptimer.access(&acc, value, (ctx.counter)()) {
                    ctx.regs.set(acc.rt, v);
                }
                ctx.regs.skip_instruction(4);
                return Action::TimerChanged;
            }
            // ICC_SGI1R_EL1 / ICC_ASGI1R_EL1 / ICC_SGI0R_EL1 writes trap with HCR_EL2.IMO set.
            if !acc.read && acc.op0 == 3 && acc.op1 == 0 && acc.crn == 12 && acc.crm == 11 {
                let group1 = match acc.op2 {
                    5 | 6 => Some(true),
                    7 => Some(false),
                    _ => None,
                };
                if let Some(group1) = group1 {
                    ctx.regs.skip_instruction(4);
                    return Action::Sgi { value, group1 };
                }
            }
            // The PMU (vm::pmu): the kernel emulates it on the vCPU's hardware state, or
            // injects UNDEFINED in a VM without one.
            if super::pmu::decode(&acc).is_some() {
                return Action::Pmu;
            }
            match sysreg::emulate(&acc, value, ctx.debug, ctx.id_read) {
                SysRegResult::Read(v) => {
                    ctx.regs.set(acc.rt, v);
                    ctx.regs.skip_instruction(4);
                    Action::Resume
                }
                SysRegResult::Written => {
                    ctx.regs.skip_instruction(4);
                    if ctx.debug.sync_hw {
                        Action::DebugSync
                    } else {
                        Action::Resume
                    }
                }
                SysRegResult::Undefined => {
                    log::debug!(
                        "{}: undefined sysreg access op0={} op1={} CRn={} CRm={} op2={} at pc {:#x}",
                        ctx.vm_name,
                        acc.op0,
                        acc.op1,
                        acc.crn,
                        acc.crm,
                        acc.op2,
                        ctx.regs.elr
                    );
                    Action::InjectUndef
                }
            }
        }
        // WFIT/WFET (FEAT_WFxT) are not offered (see vm::idregs): UNDEFINED, PC unchanged.
        Exit::Wfx {
            timeout_reg: Some(_),
            ..
        } => Action::InjectUndef,
        Exit::Wfx { wfe, .. } => {
            ctx.regs.skip_instruction(esr.insn_len());
            Action::Wait { wfe }
        }
        Exit::Other { ec } => match ec {
            // Traps we configure but do not emulate (SVE/SME access, ...): UNDEFINED.
            esr::ec::FP_ASIMD => Action::FpAccess,
            // SVE (and ZCR_EL1): the vCPU takes the register file in SVE mode, or, in a VM
            // without SVE, gets UNDEFINED (see `Action::SveAccess`).
            esr::ec::SVE => Action::SveAccess,
            // SME is never offered (ID_AA64PFR1_EL1.SME is hidden) and CPTR_EL2 traps it even
            // when the guest opens CPACR_EL1.SMEN: `smstart` is UNDEFINED, as on a CPU without
            // SME, not a reason to stop the VM.
            // Pointer authentication and LS64 are hidden too (keys not switched; LS64 needs
            // device memory semantics we do not offer): their trapped instructions UNDEF.
            esr::ec::SME | esr::ec::PAC | esr::ec::LS64 | esr::ec::UNKNOWN => Action::InjectUndef,
            // AArch32 EL0 coprocessor accesses trapped by MDCR_EL2/TIDCP (MCR/MRC cp14/cp15,
            // MCRR/MRRC, LDC/STC): a 32-bit process gets UNDEFINED, not its VM stopped.
            0x03 | 0x04 | 0x05 | 0x06 | 0x0c => Action::InjectUndef,
            _ => {
                guest_warn!(
                    ctx,
                    "{}: unexpected exit EC {:#x} (ESR {:#x}) at pc {:#x}",
                    ctx.vm_name,
                    ec,
                    esr.0,
                    ctx.regs.elr
                );
                Action::Stop("unexpected exception class")
            }
        },
    }
}

fn smccc(regs: &mut GuestRegs, imm: u16) -> Action {
    let call = psci::dispatch(imm, [regs.x[0], regs.x[1], regs.x[2], regs.x[3]]);
    match call {
        Call::Return(r) => {
            for (i, v) in r.0.iter().enumerate() {
                if let Some(v) = v {
                    regs.x[i] = *v;
                }
            }
            Action::Resume
        }
        other => Action::Psci(other),
    }
}

fn data_abort(ctx: &mut ExitCtx<'_>, esr: Esr, da: DataAbort, f: Fault) -> Action {
    let abort = Action::InjectDataAbort {
        far: f.far,
        write: da.write,
    };
    // A RAM block the guest touches first (or its stage-1 table walk does): back it.
    if fsc::is_translation(da.fsc) && ctx.in_ram(f.ipa) {
        return Action::BackRam { ipa: f.ipa };
    }
    // Only translation faults can be emulated MMIO: RAM is mapped RW, so a permission or
    // access-flag fault, or a fault on the guest's own table walk, means the guest touched
    // something it may not.
    if !fsc::is_translation(da.fsc) || da.s1ptw {
        guest_warn!(
            ctx,
            "{}: stage-2 abort at IPA {:#x} (DFSC {:#x}{}); injecting abort",
            ctx.vm_name,
            f.ipa.0,
            da.fsc,
            if da.s1ptw { ", stage-1 walk" } else { "" }
        );
        return abort;
    }
    let mut bus = ctx.mmio.lock();
    let Some((dev, offset)) = bus.find(f.ipa) else {
        guest_warn!(
            ctx,
            "{}: {} of unbacked IPA {:#x} at pc {:#x}; injecting external abort",
            ctx.vm_name,
            if da.write { "write" } else { "read" },
            f.ipa.0,
            ctx.regs.elr
        );
        return abort;
    };
    if !da.isv || da.cache_maintenance {
        // Load/store pair, writeback addressing, SIMD registers...: no syndrome to emulate
        // from, and decoding the guest's instruction would mean reading its memory through
        // its own stage 1. Real hardware raises an external abort here too.
        guest_warn!(
            ctx,
            "{}: {} access to {} at IPA {:#x} has no valid syndrome (ISV=0) at pc {:#x}; \
             injecting external abort",
            ctx.vm_name,
            if da.write { "write" } else { "read" },
            dev.name(),
            f.ipa.0,
            ctx.regs.elr
        );
        return abort;
    }
    let width = da.width;
    let result = mmio_access(ctx.regs, da, dev, offset, ctx.vcpu);
    drop(bus);
    match result {
        Ok(()) => {
            ctx.regs.skip_instruction(esr.insn_len());
            Action::Resume
        }
        Err(_) => {
            guest_warn!(
                ctx,
                "{}: bad {}-byte access at IPA {:#x}; injecting external abort",
                ctx.vm_name,
                width.bytes(),
                f.ipa.0
            );
            abort
        }
    }
}

/// System-register reads answered from the vCPU's own state: the ID registers (HCR_EL2.TID3:
/// the hardware's values minus what guests don't get) and the emulated physical timer. Used by
/// [`handle_sync`] and by the kernel's exit fast path.
#[inline(always)]
pub fn local_sysreg_read(
    acc: &crate::arch::aarch64::esr::SysRegAccess,
    ptimer: &mut PhysTimer,
    counter: fn() -> u64,
    id_read: fn(u8, u8) -> u64,
    sve: bool,
    pmuver: u8,
) -> Option<u64> {
    // The timer first: it is what guests read at run time; ID registers are read at boot.
    if PhysTimer::handles(acc) {
        return ptimer.access(acc, 0, counter());
    }
    if acc.op0 == 3 && acc.op1 == 0 && acc.crn == 0 && (1..=7).contains(&acc.crm) {
        let v = super::idregs::sanitize_vm(acc.crm, acc.op2, id_read(acc.crm, acc.op2), sve);
        return Some(super::pmu::id_value(acc.crm, acc.op2, v, pmuver));
    }
    None
}

/// Performs a decoded (ISV = 1) guest access on `dev` at `offset`: a write takes Rt masked to
/// the access width; a read is zero- or sign-extended (SSE) to 32 or 64 bits (SF) into Rt.
#[inline(always)]
pub fn mmio_access(
    regs: &mut GuestRegs,
    da: DataAbort,
    dev: &mut dyn crate::vdev::MmioDevice,
    offset: u64,
    vcpu: crate::vm::VcpuId,
) -> Result<(), crate::vdev::MmioError> {
    let width = da.width;
    if da.write {
        let v = regs.get(da.srt) & width.mask();
        dev.write(vcpu, offset, width, v)
    } else {
        let v = dev.read(vcpu, offset, width)?;
        mmio_load_result(regs, da, v);
        Ok(())
    }
}

/// Completes an emulated load: the value read (of the access's width) into the transfer
/// register, sign-extended (SSE) and to the register's size (SF) as the syndrome says.
#[inline(always)]
pub fn mmio_load_result(regs: &mut GuestRegs, da: DataAbort, value: u64) {
    let width = da.width;
    let mut v = value & width.mask();
    if da.sign_extend {
        let shift = 64 - 8 * width.bytes();
        v = (((v << shift) as i64) >> shift) as u64;
    }
    if !da.sixty_four {
        v &= 0xffff_ffff;
    }
    regs.set(da.srt, v);
}

#[cfg(test)]
mod tests;
