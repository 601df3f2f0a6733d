//! The management shell's pure half: the line editor, command parsing, and the text of every
//! answer rendered from snapshots (the kernel side, `kernel::shell`, takes the snapshots and
//! carries the commands out). Host-tested; nothing here touches the machine.
//!
//! The shell is one more stop in the console's focus cycle (the switch key moves input from
//! the last VM to the shell, and from the shell to the first running VM).

mod command;
mod line;
mod render;

pub use command::{COMMANDS, Command, NoSuchVm, ParseError, level, level_name, parse, resolve_vm};
pub use line::{Entered, LINE_BYTES, LineEditor};
pub use render::{
    CpuSnap, DeviceSnap, DiskSnap, NicSnap, PassthroughSnap, VcpuSnap, VmDetail, VmRun, VmSnap,
    cpus, help, info, list,
};

/// The shell's prompt.
pub const PROMPT: &str = "elvisor> ";
