//! The management shell's kernel side: console input bytes while the shell has the focus go
//! through its line editor; an entered line is parsed (`crate::shell`), and the command
//! carried out here: snapshots of the VMs and CPUs for `list`, `info` and `cpus`, the
//! lifecycle calls for `start`, `stop`, `shutdown`, `reset`, `restart`, the focus, the log
//! level, power-off.
//!
//! It runs where console input is taken: in the interrupt handling of the CPU the console
//! UART interrupts (with that CPU's scheduler held, so nothing here locks it: see
//! `lifecycle::wait_parked`). No lock of the shell's is held while a command runs.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use log::info;

use crate::arch::aarch64::cpu::MAX_CPUS;
use crate::arch::aarch64::sync::Mutex;
use crate::arch::aarch64::timer;
use crate::console::{PENDING_INPUT_BYTES, key_name};
use crate::shell::{self, Command, Entered, LineEditor};

use super::{PLATFORM, Vm, VmState, console_input, lifecycle, sched};

struct Shell {
    editor: LineEditor,
    focused: bool,
}

static SHELL: Mutex<Shell> = Mutex::new(Shell {
    editor: LineEditor::new(),
    focused: false,
});

/// The shell gains (`on`) or loses the console focus: on gaining it, the prompt and what was
/// typed of the line before are shown.
pub(super) fn focus(on: bool) {
    let mut sh = SHELL.lock();
    if sh.focused == on {
        return;
    }
    sh.focused = on;
    if on {
        crate::console::shell_bytes(shell::PROMPT.as_bytes());
        crate::console::shell_bytes(sh.editor.text());
    } else {
        crate::console::shell_unfocus();
    }
}

/// One byte of console input for the shell.
pub(super) fn input(byte: u8) {
    let entered = {
        let mut sh = SHELL.lock();
        let mut echo: Vec<u8> = Vec::new();
        let entered = sh.editor.feed(byte, &mut |b| echo.push(b));
        if sh.focused {
            crate::console::shell_bytes(&echo);
        }
        entered
    };
    let Some(entered) = entered else {
        return;
    };
    run(entered);
    let sh = SHELL.lock();
    if sh.focused {
        crate::console::shell_bytes(shell::PROMPT.as_bytes());
    }
}

/// Prints an answer (text ending in a line feed).
fn say(text: &str) {
    crate::console::print(format_args!("{text}"));
}

fn run(entered: Entered) {
    let line = match entered {
        Entered::Line(line) => line,
        Entered::Cancelled => return,
        Entered::TooLong => {
            return say(&alloc::format!(
                "line too long (the shell takes {} characters); nothing done\n",
                shell::LINE_BYTES
            ));
        }
        Entered::Foreign => {
            return say(
                "the line had control or non-ASCII bytes; nothing done (commands are plain ASCII)\n",
            );
        }
    };
    let cmd = match shell::parse(&line) {
        Ok(Command::Nothing) => return,
        Ok(cmd) => cmd,
        Err(e) => return say(&alloc::format!("{e}\n")),
    };
    // Someone is at the console: the machine now stays up when the last VM stops.
    super::KEEP_UP.store(true, Ordering::Release);
    let vm_arg = |arg: &str| -> Option<&'static Vm> {
        let vms = super::vms();
        let names: Vec<&str> = vms.iter().map(|vm| vm.name.as_str()).collect();
        match shell::resolve_vm(arg, &names) {
            Ok(i) => vms.get(i).copied(),
            Err(e) => {
                say(&alloc::format!("{e}\n"));
                None
            }
        }
    };
    let done = |r: Result<(), String>| {
        if let Err(e) = r {
            say(&alloc::format!("{e}\n"));
        }
    };
    match cmd {
        Command::Nothing => {}
        Command::Help => say(&shell::help(&alloc::format!(
            "{}",
            key_name(console_input::switch_key())
        ))),
        Command::List => {
            let snaps: Vec<shell::VmSnap> = super::vms().iter().map(|vm| snapshot(vm)).collect();
            say(&shell::list(&snaps));
        }
        Command::Info(arg) => {
            if let Some(vm) = vm_arg(arg) {
                say(&shell::info(&detail(vm)));
            }
        }
        Command::Cpus => say(&shell::cpus(&cpu_snapshots(), timer::frequency())),
        Command::Start(arg) => {
            if let Some(vm) = vm_arg(arg) {
                done(lifecycle::start_vm(vm));
            }
        }
        Command::Stop(arg) => {
            if let Some(vm) = vm_arg(arg) {
                if vm.state.load(Ordering::Acquire) == VmState::Running as u8 {
                    lifecycle::stop_vm(vm, "`stop` in the shell");
                } else {
                    say(&alloc::format!("{} ({}) is not running\n", vm.id, vm.name));
                }
            }
        }
        Command::Shutdown(arg) => {
            if let Some(vm) = vm_arg(arg) {
                if vm.state.load(Ordering::Acquire) != VmState::Running as u8 {
                    say(&alloc::format!("{} ({}) is not running\n", vm.id, vm.name));
                } else {
                    match lifecycle::request_shutdown(vm) {
                        Ok(()) => say(&alloc::format!(
                            "{} ({}): asked to shut down\n",
                            vm.id,
                            vm.name
                        )),
                        Err(why) => say(&alloc::format!("{} ({}): {why}\n", vm.id, vm.name)),
                    }
                }
            }
        }
        Command::Reset(arg) => {
            if let Some(vm) = vm_arg(arg) {
                done(lifecycle::shell_reset(vm));
            }
        }
        Command::Restart(arg) => {
            if let Some(vm) = vm_arg(arg) {
                done(lifecycle::restart_vm(vm));
            }
        }
        Command::Focus(arg) => {
            if let Some(vm) = vm_arg(arg) {
                done(console_input::focus_vm(vm));
            }
        }
        Command::Log(None) => say(&alloc::format!(
            "log level: {}\n",
            shell::level_name(log::max_level())
        )),
        Command::Log(Some(level)) => {
            log::set_max_level(level);
            say(&alloc::format!("log level: {}\n", shell::level_name(level)));
        }
        Command::Poweroff => {
            info!("powering off (`poweroff` in the shell)");
            super::halt::power_off();
        }
    }
}

/// A VM as `list` shows it.
fn snapshot(vm: &Vm) -> shell::VmSnap {
    let stats = vm.stats();
    let state = match vm.state.load(Ordering::Acquire) {
        s if s == VmState::Running as u8 => shell::VmRun::Running,
        s if s == VmState::Resetting as u8 => shell::VmRun::Resetting,
        _ if stats.starts.load(Ordering::Relaxed) == 0 => shell::VmRun::NotStarted,
        _ => shell::VmRun::Stopped,
    };
    shell::VmSnap {
        index: usize::from(vm.id.0),
        name: vm.name.clone(),
        state,
        vcpus: vm
            .placement
            .iter()
            .zip(&vm.power)
            .map(|(&pcpu, p)| shell::VcpuSnap {
                pcpu,
                on: p.is_on(),
            })
            .collect(),
        memory_bytes: vm.config.memory_bytes,
        backed_bytes: vm.ram.backed_bytes(),
        exits: vm
            .exit_counters
            .iter()
            .map(|c| c.sync.load(Ordering::Relaxed) + c.irq.load(Ordering::Relaxed))
            .sum(),
        irqs: vm
            .exit_counters
            .iter()
            .map(|c| c.irq.load(Ordering::Relaxed))
            .sum(),
        focus: console_input::has_focus(vm),
    }
}

/// A VM as `info` shows it.
fn detail(vm: &Vm) -> shell::VmDetail {
    let (devices, room) = {
        let bus = vm.mmio.lock();
        let devices = bus
            .windows()
            .map(|(base, size_bytes, name)| shell::DeviceSnap {
                base: base.0,
                size_bytes,
                name,
            })
            .collect();
        (devices, bus.console_room())
    };
    shell::VmDetail {
        vm: snapshot(vm),
        ram_base: vm.ram.base().0,
        // Where the first host piece is (RAM may be several: vm::build's log line lists them).
        host_base: vm
            .ram
            .host_pieces()
            .pieces()
            .first()
            .map_or(0, |p| p.base.0),
        entry: vm.entry_ipa(),
        dtb: vm.fdt_ipa(),
        devices,
        passthrough: vm
            .config
            .passthrough
            .iter()
            .map(|p| shell::PassthroughSnap {
                host_path: p.host_path.clone(),
                regs: p.regs.iter().map(|r| (r.base.0, r.size_bytes)).collect(),
                irqs: p.irqs.iter().map(|&(i, _)| i).collect(),
            })
            .collect(),
        disks: vm
            .config
            .disks
            .iter()
            .map(|d| shell::DiskSnap {
                id: d.id.clone(),
                bytes: d.range.size_bytes,
                read_only: d.read_only,
            })
            .collect(),
        nics: super::net::nic_snaps(&vm.config),
        bootargs: vm.config.bootargs.clone(),
        input_waiting: PENDING_INPUT_BYTES.saturating_sub(room),
        resets: vm.reset_count.load(Ordering::Relaxed),
        starts: vm.stats().starts.load(Ordering::Relaxed),
        autostart: vm.config.autostart,
    }
}

/// Every physical CPU as `cpus` shows it (from atomics only: this CPU's scheduler is held by
/// the interrupt handling the shell runs in).
fn cpu_snapshots() -> Vec<shell::CpuSnap> {
    let ncpus = PLATFORM.get().map_or(1, |p| p.cpus.len()).min(MAX_CPUS);
    let now = timer::now();
    (0..ncpus)
        .map(|i| {
            let up = sched::CPU_UP[i].load(Ordering::Acquire);
            let vcpus = super::vms()
                .iter()
                .flat_map(|vm| {
                    vm.placement
                        .iter()
                        .enumerate()
                        .filter(move |&(_, &p)| p == i)
                        .map(move |(v, _)| (vm.name.clone(), v, vm.power[v].is_on()))
                })
                .collect();
            shell::CpuSnap {
                index: i,
                up,
                vcpus,
                idle_ticks: sched::idle_ticks(i, now),
                up_ticks: if up {
                    now.wrapping_sub(sched::UP_SINCE[i].load(Ordering::Relaxed))
                } else {
                    0
                },
            }
        })
        .collect()
}
