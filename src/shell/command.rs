//! Shell commands: a typed line parsed into a [`Command`], and a VM argument (name or index)
//! resolved against the VMs' names. Every mistake is an error with a one-line [`Display`].
//!
//! [`Display`]: core::fmt::Display

use core::fmt;

use log::LevelFilter;

/// One command, with its VM argument as typed (resolved by [`resolve_vm`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Command<'a> {
    /// An empty line: nothing to do.
    Nothing,
    Help,
    List,
    Cpus,
    Info(&'a str),
    Start(&'a str),
    Stop(&'a str),
    Shutdown(&'a str),
    Reset(&'a str),
    Restart(&'a str),
    Focus(&'a str),
    /// `log` alone shows the level; `log LEVEL` sets it.
    Log(Option<LevelFilter>),
    Poweroff,
}

/// The commands with what they take and do: `help`'s text, and the parser's table.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "", "this list"),
    (
        "list",
        "",
        "every VM: state, vCPUs and their CPUs, memory, exits",
    ),
    (
        "info",
        "VM",
        "one VM: devices, memory map, passthrough, disks, console, resets",
    ),
    ("cpus", "", "every physical CPU: its vCPUs, time idle"),
    ("start", "VM", "boot a stopped VM afresh from its images"),
    ("stop", "VM", "stop a VM at once (pulls the plug)"),
    (
        "shutdown",
        "VM",
        "ask the guest to power off (if its device tree offers a way)",
    ),
    (
        "reset",
        "VM",
        "reset a running VM, as its own PSCI SYSTEM_RESET would",
    ),
    (
        "restart",
        "VM",
        "stop a VM (if running) and start it afresh",
    ),
    ("focus", "VM", "give a running VM the console input"),
    (
        "log",
        "[LEVEL]",
        "show or set the log level: off error warn info debug trace",
    ),
    ("poweroff", "", "power the machine off"),
];

/// Why a line is not a command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParseError<'a> {
    Unknown(&'a str),
    /// The command needs a VM.
    MissingVm(&'static str),
    /// More words than the command takes (the command, the first extra word).
    Extra(&'static str, &'a str),
    BadLevel(&'a str),
}

/// At most this much of a word the user typed is repeated in an answer.
const ECHO_CHARS: usize = 24;

/// A word typed by the user, cut short and kept to printable ASCII for an answer.
struct Word<'a>(&'a str);

impl fmt::Display for Word<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, c) in self.0.chars().enumerate() {
            if n == ECHO_CHARS {
                return f.write_str("...");
            }
            let c = if c.is_ascii_graphic() { c } else { '?' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(w) => write!(f, "unknown command \"{}\"; `help` lists them", Word(w)),
            Self::MissingVm(c) => write!(f, "{c} which VM? (`{c} NAME` or `{c} INDEX`)"),
            Self::Extra(c, w) => write!(
                f,
                "{c}: unexpected \"{}\"; `help` shows what {c} takes",
                Word(w)
            ),
            Self::BadLevel(w) => write!(
                f,
                "log: \"{}\" is not a level (off error warn info debug trace)",
                Word(w)
            ),
        }
    }
}

/// A log level by name.
pub fn level(name: &str) -> Option<LevelFilter> {
    Some(match name {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// A log level's name, as [`level`] takes it.
pub fn level_name(l: LevelFilter) -> &'static str {
    match l {
        LevelFilter::Off => "off",
        LevelFilter::Error => "error",
        LevelFilter::Warn => "warn",
        LevelFilter::Info => "info",
        LevelFilter::Debug => "debug",
        LevelFilter::Trace => "trace",
    }
}

/// Parses one line (words separated by spaces; the command in any case).
pub fn parse<'a>(line: &'a str) -> Result<Command<'a>, ParseError<'a>> {
    let mut words = line.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return Ok(Command::Nothing);
    };
    let Some(&(name, _, _)) = COMMANDS
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(first))
    else {
        return Err(ParseError::Unknown(first));
    };
    let arg = words.next();
    if let Some(extra) = words.next() {
        return Err(ParseError::Extra(name, extra));
    }
    let vm = |make: fn(&'a str) -> Command<'a>| arg.map(make).ok_or(ParseError::MissingVm(name));
    let none = |c: Command<'static>| match arg {
        Some(extra) => Err(ParseError::Extra(name, extra)),
        None => Ok(c),
    };
    match name {
        "help" => none(Command::Help),
        "list" => none(Command::List),
        "cpus" => none(Command::Cpus),
        "poweroff" => none(Command::Poweroff),
        "info" => vm(Command::Info),
        "start" => vm(Command::Start),
        "stop" => vm(Command::Stop),
        "shutdown" => vm(Command::Shutdown),
        "reset" => vm(Command::Reset),
        "restart" => vm(Command::Restart),
        "focus" => vm(Command::Focus),
        "log" => match arg {
            None => Ok(Command::Log(None)),
            Some(w) => level(&w.to_ascii_lowercase())
                .map(|l| Command::Log(Some(l)))
                .ok_or(ParseError::BadLevel(w)),
        },
        _ => Err(ParseError::Unknown(first)),
    }
}

/// A VM argument that names no VM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NoSuchVm<'a> {
    pub arg: &'a str,
    pub count: usize,
}

impl fmt::Display for NoSuchVm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no VM named or numbered \"{}\" (`list` shows the {} VM{})",
            Word(self.arg),
            self.count,
            if self.count == 1 { "" } else { "s" }
        )
    }
}

/// The index of the VM `arg` means: its name first, then its index (`1` or `vm1`).
pub fn resolve_vm<'a>(arg: &'a str, names: &[&str]) -> Result<usize, NoSuchVm<'a>> {
    if let Some(i) = names.iter().position(|n| *n == arg) {
        return Ok(i);
    }
    let digits = arg.strip_prefix("vm").unwrap_or(arg);
    match digits.parse::<usize>() {
        Ok(i) if i < names.len() && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(i),
        _ => Err(NoSuchVm {
            arg,
            count: names.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn commands_and_arguments() {
        assert_eq!(parse(""), Ok(Command::Nothing));
        assert_eq!(parse("   "), Ok(Command::Nothing));
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse(" LIST "), Ok(Command::List));
        assert_eq!(parse("cpus"), Ok(Command::Cpus));
        assert_eq!(parse("stop hb"), Ok(Command::Stop("hb")));
        assert_eq!(parse("start  1"), Ok(Command::Start("1")));
        assert_eq!(parse("info vm0"), Ok(Command::Info("vm0")));
        assert_eq!(parse("shutdown x"), Ok(Command::Shutdown("x")));
        assert_eq!(parse("reset x"), Ok(Command::Reset("x")));
        assert_eq!(parse("restart x"), Ok(Command::Restart("x")));
        assert_eq!(parse("focus x"), Ok(Command::Focus("x")));
        assert_eq!(parse("log"), Ok(Command::Log(None)));
        assert_eq!(
            parse("log DEBUG"),
            Ok(Command::Log(Some(LevelFilter::Debug)))
        );
        assert_eq!(parse("poweroff"), Ok(Command::Poweroff));
        // Every command in the table parses (with an argument where it takes one).
        for (name, args, _) in COMMANDS {
            let line = if args.is_empty() || args.starts_with('[') {
                name.to_string()
            } else {
                alloc::format!("{name} 0")
            };
            assert!(parse(&line).is_ok(), "{line}");
        }
    }

    #[test]
    fn mistakes_get_one_line() {
        let cases = [
            ("lsit", "unknown command \"lsit\"; `help` lists them"),
            ("stop", "stop which VM? (`stop NAME` or `stop INDEX`)"),
            (
                "stop a b",
                "stop: unexpected \"b\"; `help` shows what stop takes",
            ),
            (
                "list all",
                "list: unexpected \"all\"; `help` shows what list takes",
            ),
            (
                "log loud",
                "log: \"loud\" is not a level (off error warn info debug trace)",
            ),
            (
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "unknown command \"xxxxxxxxxxxxxxxxxxxxxxxx...\"; `help` lists them",
            ),
        ];
        for (line, want) in cases {
            let got = parse(line).map(|_| ()).unwrap_err().to_string();
            assert_eq!(got, want);
            assert!(!got.contains('\n'));
        }
        // A word with bytes that are not printable is shown with '?'.
        assert_eq!(
            ParseError::Unknown("a\u{1b}b\u{e9}").to_string(),
            "unknown command \"a?b?\"; `help` lists them"
        );
    }

    #[test]
    fn vm_by_name_or_index() {
        let names = ["hb", "linux", "7"];
        assert_eq!(resolve_vm("hb", &names), Ok(0));
        assert_eq!(resolve_vm("linux", &names), Ok(1));
        assert_eq!(resolve_vm("1", &names), Ok(1));
        assert_eq!(resolve_vm("vm1", &names), Ok(1));
        // A name wins over an index.
        assert_eq!(resolve_vm("7", &names), Ok(2));
        for bad in [
            "3",
            "vm3",
            "-1",
            "+1",
            "vm",
            "",
            "HB",
            "99999999999999999999999",
        ] {
            assert_eq!(
                resolve_vm(bad, &names),
                Err(NoSuchVm { arg: bad, count: 3 })
            );
        }
        assert_eq!(
            resolve_vm("x", &["a"]).unwrap_err().to_string(),
            "no VM named or numbered \"x\" (`list` shows the 1 VM)"
        );
    }
}
