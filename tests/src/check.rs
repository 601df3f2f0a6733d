//! Checking a serial log against a case's expectations: pure functions, unit-tested.

/// Finds `needles` in `log` in order; returns the first one that is missing, saying whether it
/// appears at all (then only the order is wrong).
pub fn missing_in_order(log: &str, needles: &[&str]) -> Option<String> {
    let mut from = 0;
    for n in needles {
        match log[from..].find(n) {
            Some(at) => from += at + n.len(),
            None if log.contains(n) => {
                return Some(format!(
                    "{n:?} appears, but not after the lines expected before it"
                ));
            }
            None => return Some(format!("missing {n:?}")),
        }
    }
    None
}

/// The first forbidden substring found in `log`, with the line it is on.
pub fn first_rejected<'a>(log: &str, reject: &[&'a str]) -> Option<(&'a str, String)> {
    reject
        .iter()
        .filter_map(|r| log.find(r).map(|at| (at, *r)))
        .min()
        .map(|(at, r)| (r, line_at(log, at).to_string()))
}

/// The first of `needles` that appears after the first line containing `marker`, with its
/// line; `None` when none does (or `marker` is absent).
pub fn first_after<'a>(log: &str, marker: &str, needles: &[&'a str]) -> Option<(&'a str, String)> {
    let at = log.find(marker)?;
    let from = log[at..].find('\n').map_or(log.len(), |i| at + i);
    first_rejected(&log[from..], needles)
}

/// The line containing byte offset `at`, without its line ending.
pub fn line_at(log: &str, at: usize) -> &str {
    let start = log[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = log[at..].find('\n').map_or(log.len(), |i| at + i);
    log[start..end].trim_end_matches('\r')
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> &str {
    let mut start = log.len();
    let mut seen = 0;
    let body = log.trim_end_matches('\n');
    for (i, _) in body.rmatch_indices('\n') {
        seen += 1;
        if seen == n {
            start = i + 1;
            break;
        }
    }
    if seen < n { log } else { &log[start..] }
}

/// Quotes an argument for a POSIX shell when it needs it, so a printed command can be pasted.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./,=:@+%".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_matching() {
        let log = "a VHE mode\r\nGICv3\r\nSMOKE RESULT: passed=3 failed=0\r\n";
        assert_eq!(
            missing_in_order(log, &["VHE", "GICv3", "passed=", "failed=0"]),
            None
        );
        assert_eq!(
            missing_in_order(log, &["GICv3", "VHE"]).unwrap(),
            "\"VHE\" appears, but not after the lines expected before it"
        );
        assert_eq!(
            missing_in_order(log, &["nope"]).unwrap(),
            "missing \"nope\""
        );
        assert_eq!(missing_in_order(log, &[]), None);
    }

    #[test]
    fn rejection_reports_the_earliest_hit_and_its_line() {
        let log = "ok\r\nSMOKE FAIL: x\r\nelvisor: PANIC: panicked at y\n";
        let (what, line) = first_rejected(log, &["panicked", "FAIL"]).unwrap();
        assert_eq!(what, "FAIL");
        assert_eq!(line, "SMOKE FAIL: x");
        assert!(first_rejected(log, &["nothing"]).is_none());
    }

    #[test]
    fn only_what_follows_the_marker_line_counts() {
        let log = "HB: beat 1\r\nelvisor: halted: all CPUs parked\r\n";
        assert!(first_after(log, "halted:", &["HB: beat"]).is_none());
        let late = "HB: beat 1\nhalted: all\nHB: beat 2\n";
        let (what, line) = first_after(late, "halted:", &["HB: beat"]).unwrap();
        assert_eq!((what, line.as_str()), ("HB: beat", "HB: beat 2"));
        // On the marker's own line it does not count; without the marker nothing does.
        assert!(first_after("halted: HB: beat\n", "halted:", &["HB: beat"]).is_none());
        assert!(first_after("HB: beat 3\n", "halted:", &["HB: beat"]).is_none());
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-M"), "-M");
        assert_eq!(
            shell_quote("loader,file=/x/y.img,addr=0x1"),
            "loader,file=/x/y.img,addr=0x1"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
