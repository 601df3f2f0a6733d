//! The few POSIX calls std does not wrap: killing a process group, tying QEMU's life to the
//! harness, and noticing SIGINT/SIGTERM so no QEMU is left running after the harness stops.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const PR_SET_PDEATHSIG: i32 = 1;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn prctl(option: i32, ...) -> i32;
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signum: i32) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag ([`interrupted`]); the runners then
/// kill their QEMU process groups and report.
pub fn catch_interrupts() {
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: `on_signal` is an `extern "C" fn(i32)` that only stores to an atomic, which is
        // async-signal-safe; installing a handler has no other effect on this process.
        unsafe { signal(sig, on_signal) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sends SIGKILL to every process in the process group `pgid`.
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid only signals that process group; the group is one
    // this harness created for a child it has not reaped yet, so the id cannot be reused.
    unsafe { kill(-pgid, SIGKILL) };
}

/// Runs the command in a process group of its own (so the whole group can be killed) and
/// has the kernel kill it if the harness dies first.
pub fn own_group_die_with_parent(cmd: &mut Command) {
    cmd.process_group(0);
    let die_with_parent = || {
        // SAFETY: prctl(2) PR_SET_PDEATHSIG takes a signal number and touches no memory.
        unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong) };
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe { cmd.pre_exec(die_with_parent) };
}
