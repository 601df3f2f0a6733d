"""The I/O benchmarks of scripts/bench: guests/iobench under elvisor and natively.

Per hypervisor configuration four runs, each one QEMU invocation with the VM templates below
(scripts/mkdtb), the guest image copied to build/bench/iobench.img:

  net       iobench-net-a + iobench-net-b   two 1-vCPU VMs on pCPUs 0 and 1, one switch
  blk       iobench-blk                     one VM, a blank 16 MiB disk module
  doorbell  iobench-bell-a + iobench-bell-b two 1-vCPU VMs on pCPUs 0 and 1, one shared region
  ipi       iobench-ipi                     one VM, two vCPUs on pCPUs 0 and 1
  linux-blk iobench-linux-blk               Debian's Linux, one vCPU, the same blank disk: /init
                                            (init.bench-blk, scripts/mkinitramfs) times dd

and per native configuration (same GIC) the guest alone at EL1 with QEMU's own devices:

  net       two virtio-net-device on one hub (-netdev hubport), CPU 0 drives A, CPU 1 B
  blk       virtio-blk-device on a blank 16 MiB raw file
  ipi       two CPUs, SGIs through QEMU's GIC

(virtio-mmio.force-legacy=false: QEMU's virtio-mmio is legacy by default; the guest drives
version 2 only). The doorbell has no native counterpart: its reference is the ipi run.

Under elvisor every figure is exact (the runs are repeated and must print identical BENCH
lines). Natively, QEMU completes virtio requests in its main loop, concurrently with the
vCPU thread, so a sample can absorb a clock jump: native runs are not required to repeat
exactly, and the tables compare medians.
"""

import os
import re
import shutil
import subprocess
import time

GUEST = "build/guests/iobench.img"
DISK_BYTES = 16 << 20

# name, run, budget (max per operation on GICv3 under elvisor, or None), unit, what
BENCHES = [
    ("net-ping", "net", 32_000, "instructions per round trip",
     "60-byte PING from VM A to VM B and B's 60-byte PONG back, through the virtual switch "
     "(A: transmit notification to PONG in hand)"),
    ("net-stream", "net", 11_500, "instructions per 1514-byte frame",
     "1514-byte frames from A to B in windows of 8, each window acknowledged by a 60-byte "
     "frame from B; 2,048 frames"),
    ("blk-write", "blk", 44_000, "instructions per 64 KiB request",
     "sequential 64 KiB writes over a 16 MiB disk, one request in flight"),
    ("blk-read", "blk", 44_000, "instructions per 64 KiB request",
     "sequential 64 KiB reads of the same disk, one request in flight"),
    ("linux-blk-write", "linux-blk", None, "instructions per 64 KiB request",
     "Debian's Linux: `dd if=/dev/zero of=/dev/vda bs=65536 oflag=direct` over the whole 16 MiB"
     " disk (virtio_blk), timed by /init with CLOCK_MONOTONIC"),
    ("linux-blk-read", "linux-blk", None, "instructions per 64 KiB request",
     "Debian's Linux: `dd if=/dev/vda of=/dev/null bs=65536 iflag=direct`, the same disk"),
    ("doorbell-rtt", "doorbell", 20_000, "instructions per round trip",
     "A rings B through the shared region's doorbell, B takes the interrupt (acknowledge, "
     "STATUS, ACK, EOI) and rings A back; VMs on pCPUs 0 and 1"),
    ("doorbell-status-read", "doorbell", None, "instructions per access",
     "one read of the doorbell's STATUS register (a trapped MMIO access; two counter reads"
     " around it), for the breakdown of doorbell-rtt"),
    ("ipi-rtt", "ipi", 6_500, "instructions per round trip",
     "the same exchange between two vCPUs of one VM (pCPUs 0 and 1) with SGIs"),
]
RUNS = {
    "net": ["iobench-net-a", "iobench-net-b"],
    "blk": ["iobench-blk"],
    "doorbell": ["iobench-bell-a", "iobench-bell-b"],
    "ipi": ["iobench-ipi"],
    "linux-blk": ["iobench-linux-blk"],
}
# No native linux-blk: see the report's linux-blk paragraph.
NATIVE_RUNS = ["net", "blk", "ipi"]


def native_devices(run, disk):
    if run == "net":
        return ["-netdev", "hubport,id=p0,hubid=0", "-netdev", "hubport,id=p1,hubid=0",
                "-device", "virtio-net-device,netdev=p0,mac=52:54:00:12:34:01",
                "-device", "virtio-net-device,netdev=p1,mac=52:54:00:12:34:02"]
    if run == "blk":
        return ["-drive", f"file={disk},format=raw,if=none,id=d0",
                "-device", "virtio-blk-device,drive=d0"]
    return []


def fresh_disk(root, path):
    with open(os.path.join(root, path), "wb") as f:
        f.truncate(DISK_BYTES)


def parse(text):
    """-> ({name: fields}, [failure lines], done)."""
    results, fails, done = {}, [], False
    for line in text.splitlines():
        m = re.search(r"BENCH (name=.*)$", line)
        if m:
            f = dict(t.split("=", 1) for t in m.group(1).split() if "=" in t)
            try:
                results[f["name"]] = {k: (v if k == "name" else float(v) if "." in v else int(v))
                                      for k, v in f.items() if re.match(r"^[\d.]+$", v) or k == "name"}
            except ValueError:
                fails.append(f"unparsable: {line}")
        m = re.search(r"INIT: bench-blk (write|read) requests=(\d+) bytes=(\d+) ns=(\d+)"
                      r" status=(\d+)", line)
        if m:
            n, b, t = int(m.group(2)), int(m.group(3)), int(m.group(4))
            if m.group(5) != "0" or not n or not t:
                fails.append(line.strip())
                continue
            per = t / n
            results[f"linux-blk-{m.group(1)}"] = {
                "name": f"linux-blk-{m.group(1)}", "iters": n, "total": t, "per_iter": per,
                "median": round(per), "min": round(per), "max": round(per),
                "bytes_per_mi": b * 1_000_000 // t, "median_bytes_per_mi": b * 1_000_000 // t}
        elif "BENCH FAIL" in line:
            fails.append(line.strip())
        elif line.rstrip().endswith("BENCH DONE") or line.rstrip().endswith("INIT: done"):
            done = True
    return results, fails, done


def bench_lines(text):
    return [l for l in text.splitlines() if "BENCH name=" in l]


class Runner:
    """Runs the I/O benchmarks for scripts/bench (which passes its own helpers)."""

    def __init__(self, root, work, configs, machine_args, rel, timeout, repeat):
        self.root, self.work, self.configs = root, work, configs
        self.machine_args, self.rel = machine_args, rel
        self.timeout, self.repeat = timeout, repeat
        self.guest = os.path.join(work, "iobench.img")
        self.disk = os.path.join(work, "iobench-disk.img")
        self.native_disk = os.path.join(work, "iobench-disk-native.img")
        self.templates = {}

    def prepare(self, guest_src=GUEST):
        src = os.path.join(self.root, guest_src)
        if not os.path.isfile(src):
            return f"{guest_src} does not exist (run scripts/build)"
        shutil.copyfile(src, os.path.join(self.root, self.guest))
        fresh_disk(self.root, self.disk)
        for names in RUNS.values():
            for name in names:
                with open(os.path.join(self.root, f"boards/qemu-virt/vms/{name}.dtsi")) as f:
                    tpl = f.read()
                path = os.path.join(self.work, f"{name}.dtsi")
                with open(os.path.join(self.root, path), "w") as f:
                    f.write(tpl.replace("build/guests/iobench.img", self.guest))
                self.templates[name] = path
        return None

    def command(self, cfg, run):
        gic, hv, bootargs = self.configs[cfg]
        machine = self.machine_args(gic, hv)
        tail = ["-icount", "shift=0,sleep=off", "-nographic", "-no-reboot"]
        if not hv:
            return ["qemu-system-aarch64"] + machine + tail + [
                "-kernel", self.guest, "-append", f"iobench={run}",
                "-global", "virtio-mmio.force-legacy=false"] + \
                native_devices(run, self.native_disk)
        dtb = os.path.join(self.work, f"io-{cfg}-{run}.dtb")
        mk = ["scripts/mkdtb", "-o", dtb]
        for t in RUNS[run]:
            mk += ["--vm", self.templates[t]]
        if bootargs:
            mk += ["--bootargs", bootargs]
        r = subprocess.run(mk + ["--"] + machine, cwd=self.root, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/mkdtb failed for {cfg}/{run}:\n{r.stderr}")
        extra = [self.rel(a) if a.startswith("/") else a for a in r.stdout.split("\n") if a]
        extra = [re.sub(r"file=(/[^,]*)", lambda m: "file=" + self.rel(m.group(1)), a)
                 for a in extra]
        return ["qemu-system-aarch64"] + machine + tail + ["-kernel", "build/bench/elvisor.img"] \
            + extra

    def run_once(self, cmd, log):
        fresh_disk(self.root, self.native_disk)
        start = time.monotonic()
        try:
            r = subprocess.run(cmd, cwd=self.root, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=self.timeout)
            out, timed_out = r.stdout, False
        except subprocess.TimeoutExpired as e:
            out, timed_out = e.stdout or b"", True
        text = out.decode("utf-8", "replace").replace("\r", "")
        with open(os.path.join(self.root, log), "w") as f:
            f.write(text)
        return text, time.monotonic() - start, timed_out

    def run_config(self, cfg):
        """-> {run: {cmd, log, results, fails, done, timed_out, wall, repeat_ok}}."""
        hv = self.configs[cfg][1]
        out = {}
        for run in (RUNS if hv else NATIVE_RUNS):
            try:
                cmd = self.command(cfg, run)
            except RuntimeError as e:
                # A missing module (say build/guest-material/Image before scripts/setup).
                out[run] = {"cmd": ["scripts/mkdtb", "..."], "log": "-", "results": {},
                            "fails": [str(e).splitlines()[-1] if str(e) else "mkdtb failed"],
                            "done": False, "timed_out": False, "wall": 0.0, "repeat_ok": True}
                continue
            first, same = None, True
            for i in range(self.repeat):
                log = os.path.join(self.work, f"io-{cfg}-{run}" + (f".{i + 1}" if i else "") + ".log")
                text, wall, timed_out = self.run_once(cmd, log)
                if first is None:
                    results, fails, done = parse(text)
                    first = {"cmd": cmd, "log": log, "results": results, "fails": fails,
                             "done": done and not timed_out, "timed_out": timed_out,
                             "wall": wall, "text": text}
                elif bench_lines(text) != bench_lines(first["text"]):
                    same = False
            first["repeat_ok"] = same
            del first["text"]
            out[run] = first
        return out


def native_of(configs, cfg):
    return f"native-v{configs[cfg][0]}"


def figure(res):
    """(per-operation mean, median) of a result."""
    return res["per_iter"], res.get("median", res["per_iter"])


def judge(name, cfg, configs, io_runs, budget_gics):
    """-> (cell text, verdict) with verdict PASS / OVER / within / above / INFO / FAIL / N/A."""
    run_name = next(r for n, r, *_ in BENCHES if n == name)
    runs = io_runs.get(cfg, {})
    hv = configs[cfg][1]
    if run_name not in runs:
        return "—", "N/A"
    run = runs[run_name]
    res = run["results"].get(name)
    if res is None:
        return "**FAILED**", "FAIL"
    mean, median = figure(res)
    text = f"{mean:,.0f}" if hv else f"{median:,}"
    budget = next(b for n, _, b, *_ in BENCHES if n == name)
    if not hv or budget is None:
        return text, "INFO"
    ok, bad = ("PASS", "OVER") if configs[cfg][0] in budget_gics else ("within", "above")
    return text, ok if mean <= budget else bad


def throughput(res, hv):
    if res is None or "bytes_per_mi" not in res:
        return "—"
    return f"{(res['bytes_per_mi'] if hv else res.get('median_bytes_per_mi', 0)):,}"


def report(w, configs, cfgs, io_runs, budget_gics, md_escape):
    """Appends the I/O section of docs/benchmarks.md through `w`."""
    hv_cfgs = [c for c in cfgs if configs[c][1] and c in io_runs]
    nat_cfgs = [c for c in cfgs if not configs[c][1] and c in io_runs]
    if not io_runs:
        return
    w("## I/O: virtio-net, virtio-blk, doorbells")
    w("")
    w("The I/O guest (`guests/iobench`, one image; the bootarg `iobench=net|blk|doorbell|ipi`"
      " picks the benchmark) is timed like the micro-benchmarks: CNTVCT_EL0 under `-icount"
      " shift=0`, so every figure is an instruction count, of every CPU (QEMU runs them one at a"
      " time, and an idle CPU in `wfi` executes nothing). Waits are `wfi` with IRQs masked, then"
      " the GIC's acknowledge register; receive and completion interrupts wake the waiting side,"
      " transmit completions are polled. The guests never touch payload bytes: the figures are"
      " the drivers' request paths plus what the device (the hypervisor, or QEMU) does with"
      " them. Throughput is bytes per million instructions, i.e. per simulated millisecond at"
      " one instruction per nanosecond.")
    w("")
    w("| benchmark | unit | what is timed |")
    w("|---|---|---|")
    for n, _, _, unit, what in BENCHES:
        w(f"| {n} | {unit} | {md_escape(what)} |")
    w("")
    w("Under elvisor: two VMs with one NIC each on the switch `bench0`"
      " (`boards/qemu-virt/vms/iobench-net-a.dtsi`, `iobench-net-b.dtsi`, pCPUs 0 and 1); one VM"
      " with a blank 16 MiB disk module (`iobench-blk.dtsi`); two VMs mapping the shared region"
      " `bell` (`iobench-bell-a.dtsi`, `iobench-bell-b.dtsi`, pCPUs 0 and 1); one VM with two"
      " vCPUs (`iobench-ipi.dtsi`). Natively (\"native-vN\"): the same image alone at EL1 with"
      " QEMU's own virtio-mmio devices — two `virtio-net-device` on one hub, CPU 0 driving A"
      " and CPU 1 (PSCI CPU_ON) driving B; one `virtio-blk-device` on a blank raw file; SGIs"
      " through QEMU's GIC. The doorbell has no native counterpart; `ipi-rtt` is its reference"
      " inside one VM. Elvisor figures are means and exact (each run repeated, identical BENCH"
      " lines required). QEMU's own devices complete requests in its main loop, concurrently"
      " with the vCPU thread, so a native sample can absorb a clock jump (`sleep=off` skips"
      " idle time to the next timer): native figures are **medians** and are not required to"
      " repeat exactly. Budgets (GICv3, VHE and non-VHE, checked by `scripts/bench --check`)"
      " are set about 20 % above the measured figures; on GICv2 they are shown for reference.")
    w("")
    w("**Reading the native column.** QEMU's own devices do their work in host code: copying a"
      " frame from one NIC to the other or 64 KiB between the disk file and guest RAM costs no"
      " guest instructions there, so the native net and blk figures are essentially the"
      " bare-metal driver's own path (and the CPUs' `wfi` wake-ups). Under elvisor the device"
      " is EL2 code and every instruction of it is counted: the exit, the virtqueue walk with"
      " every descriptor checked against the VM's RAM, the copy, the used ring and the"
      " interrupt through the vGIC. The difference is the cost of doing the device in the"
      " hypervisor as instructions, not a ratio of wall-clock speeds. The ipi row compares like"
      " with like (SGIs through QEMU's GIC natively, through the vGIC under elvisor).")
    w("")
    w("**linux-blk** is the same disk from inside Debian's unmodified Linux (the kernel and"
      " initramfs of the Linux system tests, `boards/qemu-virt/vms/iobench-linux-blk.dtsi`, one"
      " vCPU): /init (`init.bench-blk`, scripts/mkinitramfs) runs busybox `dd` with O_DIRECT"
      " over all of /dev/vda, 64 KiB at a time, and reads CLOCK_MONOTONIC from"
      " /proc/timer_list around it, so the figure holds dd, the block layer, virtio_blk and the"
      " device. It has no native column: Linux always has a timer armed, and natively, while"
      " it idles waiting for QEMU's main loop to complete a request, `-icount sleep=off` jumps"
      " the clock to that timer (a trial run measured from 136,590 to 200,730,634 instructions"
      " per request for the same dd); under elvisor the request completes during the"
      " notification's exit and the guest never waits. Under elvisor the Linux figures repeat"
      " within one invocation of scripts/bench but move by under 1 % between invocations: the"
      " host DTB that scripts/mkdtb takes from QEMU carries a fresh random `rng-seed`, from"
      " which elvisor seeds each guest's, so the kernel's random choices differ. They have no"
      " budget.")
    w("")
    cols = hv_cfgs + nat_cfgs
    w("| benchmark | budget | " + " | ".join(cols) + " |")
    w("|---|---|" + "---|" * len(cols))
    for n, _, budget, _, _ in BENCHES:
        row = [n, f"≤ {budget:,}" if budget else "—"]
        for c in cols:
            text, verdict = judge(n, c, configs, io_runs, budget_gics)
            if verdict in ("PASS", "OVER", "within", "above"):
                text += f" {verdict}"
            elif verdict == "N/A":
                text = "—"
            row.append(text)
        w("| " + " | ".join(md_escape(x) for x in row) + " |")
    w("")
    w("Throughput, bytes per million instructions (net-stream: frame bytes, Ethernet header"
      " included; blk: data bytes):")
    w("")
    w("| benchmark | " + " | ".join(cols) + " |")
    w("|---|" + "---|" * len(cols))
    for n, run, *_ in BENCHES:
        if run not in ("net", "blk", "linux-blk") or n == "net-ping":
            continue
        row = [n]
        for c in cols:
            r = io_runs[c].get(run)
            row.append(throughput(r["results"].get(n) if r else None, configs[c][1]))
        w("| " + " | ".join(row) + " |")
    w("")
    w("Per run (the command is run from the repository root; the host DTBs come from"
      " `scripts/mkdtb --vm build/bench/<template>.dtsi ... -- <machine>`, the templates"
      " pointing at the copied image):")
    w("")
    for c in cols:
        for run, r in io_runs[c].items():
            state = "completed" if r["done"] else "**did not complete**"
            if r["timed_out"]:
                state += ", timed out"
            if not r["repeat_ok"]:
                state += ", repeats differed" if configs[c][1] else ", repeats differed (native)"
            figs = "; ".join(
                f"{k}: mean {v['per_iter']:,.2f}, median {v.get('median', '—'):,}, min"
                f" {v.get('min', '—'):,}, max {v.get('max', '—'):,} over {v['iters']:,}"
                for k, v in r["results"].items())
            w(f"- **{c} {run}** ({state}, {r['wall']:.1f} s): {figs or 'no figures'}."
              + "".join(f" Guest reported: `{f_}`." for f_ in r["fails"]))
            w("")
            w("  ```")
            w("  " + " ".join(r["cmd"]))
            w("  ```")
    w("")


def problems(configs, io_runs, budget_gics):
    """Check failures: missing figures, broken runs, budgets exceeded, non-repeating hv runs."""
    out = []
    for c, runs in io_runs.items():
        hv = configs[c][1]
        for run, r in runs.items():
            if not r["done"]:
                out.append(f"io {c}/{run}: run broken ({r['log']})")
            if hv and not r["repeat_ok"]:
                out.append(f"io {c}/{run}: repeats differ ({r['log']})")
        for n, run, *_ in BENCHES:
            if run not in runs:
                continue
            _, verdict = judge(n, c, configs, io_runs, budget_gics)
            if verdict in ("OVER", "FAIL"):
                out.append(f"io {c}/{n}: {verdict}")
    return out
