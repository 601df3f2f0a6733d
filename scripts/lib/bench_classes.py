"""Instruction classes per benchmark operation, for scripts/bench --classes.

The QEMU TCG plugin in tools/insn-plugin counts, per exception level, the instructions that
cost more on a real core than their count says: system-register accesses (MRS/MSR), barriers
(DSB/DMB/ISB), TLB maintenance (TLBI), cache maintenance (DC/IC), exception entries into EL2
and ERETs. Before every counter read below EL2 (`mrs xN, cntvct_el0` / `cntpct_el0`, the
points the bench guest times between) it prints a `INSNCLS mark` line with the counts so far
on QEMU's stderr, which scripts/bench merges with the serial console: the marks land in the
output in execution order, so the marks of a benchmark come after the previous benchmark's
`BENCH name=` line and before its own.

A loop benchmark (hypercall, psci-version, io-kernel, vgic-dist-read, sysreg-trap) times a
warm-up, the empty loop and the real loop (guests/bench `loop_bench`), each between two counter
reads: the per-operation figure is (real interval - empty interval) / iterations, for every
class, exactly as the guest computes its instruction figure. The pair of intervals is found by
that figure: the real minus the empty interval's instructions must equal the guest's `total`
(to within TOLERANCE of it); a benchmark whose intervals cannot be matched gets no class figures
rather than wrong ones.
"""

import os
import re
import subprocess

PLUGIN_DIR = "tools/insn-plugin"
PLUGIN_TARGET = os.path.join("build", "insn-plugin")
PLUGIN_SO = os.path.join(PLUGIN_TARGET, "release", "libelvisor_insn_plugin.so")

# Benchmarks measured as loop_bench (real loop - empty loop) in guests/bench.
LOOP_BENCHMARKS = ("hypercall", "psci-version", "io-kernel", "vgic-dist-read", "sysreg-trap")
# Benchmarks timed one trap at a time between two counter reads of one CPU: first-touch (a
# read, the store that faults, a read) and vm-switch (in the two-VM run: one VM's read before
# its yield, the other VM's read after its own yield returned, both on CPU 0).
TRAP_BENCHMARKS = ("first-touch", "vm-switch")
# The guest's instruction figure and the plugin's count of the same intervals may differ by
# this fraction (plus one instruction per iteration): icount and the plugin's inline counter
# can disagree on an instruction that faults and is re-executed.
TOLERANCE = 0.01

# Columns shown in docs/benchmarks.md: (heading, plugin fields summed, ELs).
COLUMNS = [
    ("MRS/MSR", ("mrs", "msr"), ("el1", "el2")),
    ("DSB", ("dsb",), ("el1", "el2")),
    ("DMB", ("dmb",), ("el1", "el2")),
    ("ISB", ("isb",), ("el1", "el2")),
    ("TLBI", ("tlbi",), ("el1", "el2")),
    ("DC/IC", ("dc", "ic"), ("el1", "el2")),
    ("entries to EL2", ("entry",), ("el2",)),
    ("ERET", ("eret",), ("el2",)),
]

MARK_RE = re.compile(r"INSNCLS [^\n]*\n")


def build(root, env=None):
    """Builds the plugin (cargo, release) into build/insn-plugin; -> (path or None, message)."""
    env = dict(env or os.environ)
    cargo_bin = os.path.join(env.get("CARGO_HOME", os.path.expanduser("~/.cargo")), "bin")
    env["PATH"] = cargo_bin + os.pathsep + env.get("PATH", "")
    cmd = ["cargo", "build", "--quiet", "--release", "--locked",
           "--manifest-path", os.path.join(PLUGIN_DIR, "Cargo.toml"),
           "--target-dir", PLUGIN_TARGET]
    try:
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        return None, "cargo not found (run scripts/setup)"
    if r.returncode != 0:
        return None, f"building {PLUGIN_DIR} failed:\n{r.stderr[-3000:]}"
    return PLUGIN_SO, "ok"


def qemu_args(so):
    return ["-plugin", so]


def parse_counts(line):
    """`INSNCLS mark ... el1=a:1,b:2 el2=...` -> {"el1": {...}, "el2": {...}, other keys}."""
    out = {}
    for tok in line.split()[2:]:
        if "=" not in tok:
            continue
        k, v = tok.split("=", 1)
        if k in ("el1", "el2"):
            out[k] = {f: int(n) for f, n in (p.split(":") for p in v.split(","))}
        else:
            out[k] = v
    return out


def split_output(text):
    """Separates the plugin's lines from the console output.
    -> (console text, [(position in console text, mark dict)], total dict or None)."""
    marks, total, parts, pos, clean_len = [], None, [], 0, 0
    for m in MARK_RE.finditer(text):
        parts.append(text[pos:m.start()])
        clean_len += m.start() - pos
        pos = m.end()
        line = m.group(0).strip()
        if line.startswith("INSNCLS mark "):
            marks.append((clean_len, parse_counts(line)))
        elif line.startswith("INSNCLS total"):
            total = parse_counts(line)
    parts.append(text[pos:])
    return "".join(parts), marks, total


def diff(a, b):
    """Counts of mark b minus mark a, per EL and field."""
    return {el: {f: b[el][f] - a[el][f] for f in b[el]} for el in ("el1", "el2")}


def insns(d):
    return d["el1"]["insns"] + d["el2"]["insns"]


def loop_figures(segment, iters, total):
    """Per-operation counts of a loop benchmark from the marks of its segment, or None."""
    cpu0 = [m for m in segment if m.get("cpu") == "0"]
    found = None
    for i in range(2, len(cpu0) - 1):
        base = diff(cpu0[i - 2], cpu0[i - 1])
        real = diff(cpu0[i], cpu0[i + 1])
        got = insns(real) - insns(base)
        if abs(got - total) <= TOLERANCE * abs(total) + iters:
            found = (base, real)
    if found is None:
        return None
    base, real = found
    return {el: {f: (real[el][f] - base[el][f]) / iters for f in real[el]}
            for el in ("el1", "el2")}


def trap_figures(segment, iters, per_iter):
    """Per-operation EL2 counts of a benchmark timed one trap at a time, or None.

    The operations are the intervals between consecutive marks of CPU 0 that contain an entry
    into EL2 and are about as long as the guest's figure (within a fifth: the guest's figure
    subtracts a two-instruction baseline, the segment also holds the set-up's own exits); there
    must be exactly `iters` of them and their mean must match the figure to within TOLERANCE.
    Only EL2 is reported: the guest's share of such an interval is its own timing code."""
    cpu0 = [m for m in segment if m.get("cpu") == "0"]
    ops = []
    for a, b in zip(cpu0, cpu0[1:]):
        d = diff(a, b)
        if d["el2"]["entry"] >= 1 and abs(insns(d) - per_iter) <= 0.2 * per_iter:
            ops.append(d)
    if len(ops) != iters:
        return None
    mean = sum(insns(d) for d in ops) / iters
    if abs(mean - per_iter) > TOLERANCE * per_iter + 2:
        return None
    el2 = {f: sum(d["el2"][f] for d in ops) / iters for f in ops[0]["el2"]}
    return {"el1": {f: 0.0 for f in el2}, "el2": el2}


def per_benchmark(text, results):
    """-> ({benchmark: {el: {field: per-op}}}, plugin total dict or None) for one run's output.
    `results` is scripts/bench's parsed results of the same run."""
    clean, marks, total = split_output(text)
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^BENCH name=(\S+)", clean, re.M)]
    out, prev_end = {}, 0
    for start, name in starts:
        segment = [mk for pos, mk in marks if prev_end <= pos <= start]
        line_end = clean.find("\n", start)
        prev_end = line_end if line_end >= 0 else len(clean)
        res = results.get(name)
        if not res or res.get("status") != "measured":
            continue
        fig = None
        if name in LOOP_BENCHMARKS:
            fig = loop_figures(segment, res["iters"], res["total"])
        elif name in TRAP_BENCHMARKS:
            fig = trap_figures(segment, res["iters"], res["per_iter"])
        if fig is not None:
            out[name] = fig
    return out, total


def switch_figures(text, result):
    """vm-switch's per-switch EL2 counts from the two-VM run's output (its marks all precede
    the trace's end), or None."""
    if not result or result.get("status") != "measured":
        return None
    _, marks, _ = split_output(text)
    return trap_figures([m for _, m in marks], result["iters"], result["per_iter"])


def column_value(fig, fields, els):
    return sum(fig[el][f] for el in els for f in fields)


def fmt(v):
    """A per-operation count: integers plainly, fractions with two decimals."""
    if abs(v - round(v)) < 0.005:
        return f"{round(v):,}"
    return f"{v:,.2f}"


def cell(fig, fields, els):
    """A report cell: the EL2 count, with the guest's own (EL1) share added as "+ n at EL1"."""
    if fig is None:
        return "—"
    hyp = column_value(fig, fields, [e for e in els if e == "el2"])
    guest = column_value(fig, fields, [e for e in els if e == "el1"])
    text = fmt(hyp)
    if abs(guest) >= 0.005:
        text += f" + {fmt(guest)} at EL1"
    return text


METHOD = [
    "**Cycle-leaning counts.** Besides instructions, the tables below give per operation the"
    " instructions that cost far more than one cycle on a real core (a Cortex-A72 serializes on"
    " ISB, waits on DSB, and many system-register writes are self-synchronizing or trap-heavy):"
    " system-register accesses (MRS and MSR, including MSR to PSTATE fields such as DAIFSet),"
    " DSB, DMB, ISB, TLB maintenance (TLBI), cache maintenance (DC, including DC ZVA, and IC),"
    " exception entries into EL2 and ERETs executed at EL2. They are counted by a QEMU TCG plugin"
    " kept in the repository (`tools/insn-plugin`, Rust, QEMU plugin API 4; `scripts/bench"
    " --classes` builds it with cargo and loads it with `-plugin`), which decodes every"
    " translated instruction (Arm ARM C4.1, C5.2 system instruction classes) and attributes it"
    " to the exception level of its translation block (PSTATE read once per executed block)."
    " The plugin marks every counter read the guest times between; a loop benchmark's figure is"
    " (real loop − empty loop) / iterations, the same intervals and arithmetic as the"
    " instruction figure; `first-touch` and `vm-switch` (from the two-VM run) average the"
    " intervals between two counter reads that hold one trap each. A figure is shown only when"
    " the plugin's instruction count of those intervals matches the guest's instruction figure."
    " Counts are at EL2 (the hypervisor); \"+ n at EL1\" is the guest's own share (its"
    " `hvc`/`mrs` that trapped). \"—\": not derived for this benchmark (its interval does not"
    " start at a counter read, or spans two CPUs). The plugin is loaded into the first run of"
    " each hypervisor configuration only; the repeated run without it gave identical BENCH"
    " lines, so the plugin does not change the instruction figures.",
]

CONFIG_NOTE = ("Counts per operation at EL2 from `tools/insn-plugin` (see above); exception"
               " entries are entries into EL2 from a lower EL.")


def check(runs, hv_cfgs):
    """Sanity of the class figures for scripts/bench --check --classes: -> [problems]."""
    problems = []
    for c in hv_cfgs:
        classes = runs[c].get("classes")
        if classes is None:
            problems.append(f"{c}: no class figures (plugin not loaded)")
            continue
        for n in LOOP_BENCHMARKS + TRAP_BENCHMARKS:
            res = runs[c]["parsed"]["results"].get(n)
            if not res or res["status"] != "measured":
                continue
            fig = classes.get(n)
            if fig is None:
                problems.append(f"{c}/{n}: the plugin's intervals do not match the guest's figure")
                continue
            # Each operation is one trap: one entry into EL2 and one ERET back (an occasional
            # host interrupt in the loop may add a little), and the exit path reads ESR_EL2
            # at least: a sysreg access.
            for what, v in (("entries to EL2", fig["el2"]["entry"]), ("ERETs", fig["el2"]["eret"])):
                if not 1.0 <= v <= 1.01:
                    problems.append(f"{c}/{n}: {what} per operation {v:.4f}, expected 1")
            if fig["el2"]["mrs"] + fig["el2"]["msr"] <= 0:
                problems.append(f"{c}/{n}: no system-register access at EL2")
    return problems
