//! elvisor-insn-plugin: a QEMU TCG plugin (API version 4, QEMU 9.2 .. 10.0 and later) that
//! counts executed instructions by class and exception level, for `scripts/bench --classes`.
//!
//! Counted per exception level (the EL of the translation block, read from PSTATE once per
//! executed block): instructions, MRS, MSR, DSB, DMB, ISB, other barriers, TLBI, DC, IC, AT,
//! SVC/HVC/SMC, ERET, and exception entries into that EL from a lower one (a block at a
//! higher EL than the vCPU's previous block). Exceptions taken to the same EL (an EL1 IRQ
//! while at EL1) do not change the EL and are not seen.
//!
//! Output, on QEMU's stderr (unbuffered, so it interleaves with the serial console on stdout
//! in execution order when both go to one pipe):
//!
//! ```text
//! INSNCLS mark seq=<n> cpu=<vcpu> el=<el> pc=<hex> counter=<cntvct|cntpct> after_repeats=<n> el1=<counts> el2=<counts>
//! INSNCLS total el1=<counts> el2=<counts>
//! ```
//!
//! A `mark` line is printed just before every `mrs xN, cntvct_el0` / `cntpct_el0` executed
//! below EL2 that begins a translation block (the points a guest times between: QEMU ends a
//! block at every `isb`, and a timed read follows one), with the counts of all vCPUs so far;
//! `<counts>` is `FIELD:VALUE,...` with the fields of [`FIELDS`] (EL0 is folded into el1, EL3
//! into el2). A vCPU's marks at the address of its previous mark with no exception entry in
//! between (a polling loop) are left out; `after_repeats` on its next mark says how many. Plugin argument `marks=off` leaves
//! all mark lines out.
//!
//! The counts are global over all vCPUs, like the guest's counter under `-icount shift=0`;
//! they are exact when QEMU runs the vCPUs one at a time (icount does), as a snapshot needs.

pub mod decode;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use qemu_plugin::install::{Args, Info, Value};
use qemu_plugin::plugin::{HasCallbacks, Register};
use qemu_plugin::{
    CallbackFlags, PluginId, RegisterDescriptor, TranslationBlock, VCPUIndex,
    qemu_plugin_get_registers,
};

use decode::{Class, Counter, classify, counter_read};

/// The fields of a `<counts>` list, in order.
pub const FIELDS: [&str; 13] = [
    "insns", "mrs", "msr", "dsb", "dmb", "isb", "barrier", "tlbi", "dc", "ic", "at", "call", "eret",
];
/// Index of the exception-entry count (per EL), printed after [`FIELDS`] as `entry`.
const ENTRY: usize = FIELDS.len();

type Counts = [u64; FIELDS.len() + 1];

fn field(class: Class) -> Option<usize> {
    Some(match class {
        Class::Plain => return None,
        Class::Mrs => 1,
        Class::Msr => 2,
        Class::Dsb => 3,
        Class::Dmb => 4,
        Class::Isb => 5,
        Class::OtherBarrier => 6,
        Class::Tlbi => 7,
        Class::Dc => 8,
        Class::Ic => 9,
        Class::At => 10,
        Class::Call => 11,
        Class::Eret => 12,
    })
}

/// Fields counted per vCPU (instructions, the classes); [`ENTRY`] is counted per EL only.
const PER_VCPU: usize = FIELDS.len();
/// vCPUs with their own counters; more share the last one's.
const MAX_VCPUS: usize = 64;

/// Per vCPU and field: executed so far. Bumped by instruction callbacks, without a lock; the
/// block callback attributes the growth to the EL the vCPU was at.
static EXECUTED: [[AtomicU64; PER_VCPU]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; PER_VCPU] }; MAX_VCPUS];

#[derive(Default, Clone, Copy)]
struct Vcpu {
    /// EL of the block this vCPU executes (None before its first block).
    el: Option<u8>,
    /// [`EXECUTED`] when last attributed.
    seen: [u64; PER_VCPU],
    /// Address of this vCPU's last mark, and the marks at that address left out since.
    last_mark: Option<u64>,
    repeats: u64,
    /// The vCPU entered a higher EL since its last mark.
    entered: bool,
}

struct State {
    vcpus: Vec<Vcpu>,
    /// Per EL 0..3.
    counts: [Counts; 4],
    marks: bool,
    seq: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    vcpus: Vec::new(),
    counts: [[0; FIELDS.len() + 1]; 4],
    marks: true,
    seq: 0,
});
static PSTATE: OnceLock<RegisterDescriptor<'static>> = OnceLock::new();

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn slot(vcpu: VCPUIndex) -> usize {
    (vcpu as usize).min(MAX_VCPUS - 1)
}

/// Instruction callback: one more instruction (field 0), or one more of class field `f`.
/// Lock-free on purpose: under QEMU 10.0 -icount, instruction callbacks that took the state
/// lock stalled the bench guest's cross-CPU wait (and inline scoreboard adds crashed), while
/// atomics and block callbacks run cleanly.
fn bump(vcpu: VCPUIndex, f: usize) {
    EXECUTED[slot(vcpu)][f].fetch_add(1, Ordering::Relaxed);
}

impl State {
    fn vcpu(&mut self, index: VCPUIndex) -> &mut Vcpu {
        let i = index as usize;
        if self.vcpus.len() <= i {
            self.vcpus.resize(i + 1, Vcpu::default());
        }
        &mut self.vcpus[i]
    }

    /// Attributes what vCPU `index` executed since the last call to its current EL.
    fn settle(&mut self, index: VCPUIndex) {
        let now: [u64; PER_VCPU] =
            std::array::from_fn(|f| EXECUTED[slot(index)][f].load(Ordering::Relaxed));
        let v = self.vcpu(index);
        let el = v.el;
        let seen = std::mem::replace(&mut v.seen, now);
        if let Some(el) = el {
            for f in 0..PER_VCPU {
                self.counts[usize::from(el)][f] += now[f] - seen[f];
            }
        }
    }

    fn settle_all(&mut self) {
        for i in 0..self.vcpus.len() {
            self.settle(i as VCPUIndex);
        }
    }

    fn line(&self) -> String {
        let mut out = String::new();
        for (name, els) in [("el1", [0, 1]), ("el2", [2, 3])] {
            out.push_str(&format!(" {name}="));
            for (i, f) in FIELDS.iter().chain(["entry"].iter()).enumerate() {
                let v = self.counts[els[0]][i] + self.counts[els[1]][i];
                let sep = if i == 0 { "" } else { "," };
                out.push_str(&format!("{sep}{f}:{v}"));
            }
        }
        out
    }
}

/// One `write` of a whole line (stderr is unbuffered; a pipe takes up to PIPE_BUF bytes in one
/// piece), so the line never splits around console output.
fn emit(line: &str) {
    let _ = std::io::stderr().write_all(format!("INSNCLS {line}\n").as_bytes());
}

/// Start of a block: what the vCPU executed since its previous block belongs to the previous
/// block's EL; read this block's EL from PSTATE (CurrentEL is PSTATE bits [3:2]); print a mark
/// if the block begins with a counter read below EL2.
fn block_start(index: VCPUIndex, mark: Option<(u64, Counter)>) {
    let el = PSTATE
        .get()
        .and_then(|r| r.read().ok())
        .and_then(|b| b.first().copied())
        .map(|b| (b >> 2) & 3);
    let mut s = state();
    s.settle(index);
    let v = s.vcpu(index);
    let prev = v.el;
    v.el = el;
    if let (Some(prev), Some(el)) = (prev, el)
        && el > prev
    {
        s.counts[usize::from(el)][ENTRY] += 1;
        s.vcpu(index).entered = true;
    }
    let Some((pc, counter)) = mark else { return };
    if el.is_none_or(|el| el >= 2) || !s.marks {
        return;
    }
    // A polling loop reads the counter at one address over and over: only its first mark is
    // printed, and the next mark at another address says how many were left out. A mark after
    // an exception entry is always printed (two VMs on one CPU run the same code).
    let v = s.vcpu(index);
    if v.last_mark == Some(pc) && !v.entered {
        v.repeats += 1;
        return;
    }
    v.last_mark = Some(pc);
    v.entered = false;
    let repeats = std::mem::take(&mut v.repeats);
    s.settle_all();
    s.seq += 1;
    let name = match counter {
        Counter::Virtual => "cntvct",
        Counter::Physical => "cntpct",
    };
    let line = format!(
        "mark seq={} cpu={index} el={} pc={pc:#x} counter={name} after_repeats={repeats}{}",
        s.seq,
        el.unwrap_or(1),
        s.line()
    );
    drop(s);
    emit(&line);
}

struct InsnClasses;

impl Register for InsnClasses {
    fn register(&mut self, id: PluginId, args: &Args, _info: &Info) -> qemu_plugin::Result<()> {
        if let Some(Value::Bool(false)) | Some(Value::String(_)) = args.parsed.get("marks") {
            state().marks = false;
        }
        qemu_plugin::qemu_plugin_register_atexit_cb(id, |_| {
            let mut s = state();
            s.settle_all();
            let line = format!("total{}", s.line());
            drop(s);
            emit(&line);
        })?;
        Ok(())
    }
}

impl HasCallbacks for InsnClasses {
    fn on_vcpu_init(&mut self, _id: PluginId, _vcpu: VCPUIndex) -> qemu_plugin::Result<()> {
        if PSTATE.get().is_none() {
            // AArch64's gdb core registers: x0..x30, sp, pc, cpsr (PSTATE, 32 bits).
            if let Some(r) = qemu_plugin_get_registers()?
                .into_iter()
                .find(|r| r.name == "cpsr")
            {
                let _ = PSTATE.set(r);
            }
        }
        Ok(())
    }

    fn on_translation_block_translate(
        &mut self,
        _id: PluginId,
        tb: TranslationBlock,
    ) -> qemu_plugin::Result<()> {
        let mut mark = None;
        for (i, insn) in tb.instructions().enumerate() {
            insn.register_execute_callback(|vcpu| bump(vcpu, 0));
            let Ok(bytes) = <[u8; 4]>::try_from(insn.data().as_slice()) else {
                continue;
            };
            let word = u32::from_le_bytes(bytes);
            if i == 0 {
                mark = counter_read(word).map(|c| (insn.vaddr(), c));
            }
            if let Some(f) = field(classify(word)) {
                insn.register_execute_callback(move |vcpu| bump(vcpu, f));
            }
        }
        tb.register_execute_callback_flags(
            move |vcpu| block_start(vcpu, mark),
            CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
        );
        Ok(())
    }
}

qemu_plugin::register!(InsnClasses);
