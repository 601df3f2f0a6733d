//! Host tests of the console: the screen, the router and switch key, the input queue.

use super::*;
use alloc::vec::Vec;

const K: u8 = DEFAULT_SWITCH_KEY;

#[test]
fn input_router_switch_sequence() {
    let mut r = InputRouter::default();
    let mut ev = Vec::new();
    for b in [b'a', K, K, b'b', K, K, K, b'c'] {
        r.feed(b, |e| ev.push(e));
    }
    assert_eq!(
        ev,
        [
            Input::Byte(b'a'),
            Input::Held,
            Input::Held,
            Input::Byte(K),
            Input::Byte(K),
            Input::Byte(b'b'),
            Input::Held,
            Input::Held,
            Input::Switch,
            Input::Byte(b'c'),
        ]
    );
    // Room: none for the key, the held bytes plus one otherwise.
    let mut r = InputRouter::default();
    assert_eq!(r.room_needed(b'x'), 1);
    r.feed(K, |_| {});
    r.feed(K, |_| {});
    assert_eq!(r.room_needed(K), 0);
    assert_eq!(r.room_needed(b'x'), 3);
    let mut n = 0;
    r.feed(b'x', |e| n += usize::from(matches!(e, Input::Byte(_))));
    assert_eq!(n, 3);
    // Another key; Ctrl-A is then an ordinary byte.
    let mut r = InputRouter::default();
    r.set_key(0x01);
    let mut ev = Vec::new();
    for b in [K, 0x01, 0x01, 0x01] {
        r.feed(b, |e| ev.push(e));
    }
    assert_eq!(
        ev,
        [Input::Byte(K), Input::Held, Input::Held, Input::Switch]
    );
}

#[test]
fn switch_key_values() {
    assert_eq!(switch_key("a"), Ok(0x01));
    assert_eq!(switch_key("A"), Ok(0x01));
    assert_eq!(switch_key("]"), Ok(0x1d));
    assert_eq!(switch_key("t"), Ok(0x14));
    assert_eq!(switch_key("_"), Ok(0x1f));
    for bad in [
        "", "ab", "1", "c", "C", "d", "z", "s", "q", "h", "i", "j", "m", "[", "é",
    ] {
        assert!(switch_key(bad).is_err(), "{bad:?}");
    }
    assert_eq!(alloc::format!("{}", key_name(0x1d)), "Ctrl-]");
    assert_eq!(alloc::format!("{}", key_name(0x01)), "Ctrl-A");
}

#[test]
fn pending_input_both_ends() {
    let mut q = PendingInput::new();
    assert!(q.is_empty());
    assert_eq!(q.pop_front(), None);
    assert!(q.push_back(b'b'));
    assert!(q.push_back(b'c'));
    assert!(q.push_front(b'a'));
    assert_eq!(q.len(), 3);
    assert_eq!(q.pop_front(), Some(b'a'));
    assert_eq!(q.pop_front(), Some(b'b'));
    assert_eq!(q.pop_front(), Some(b'c'));
    assert_eq!(q.pop_front(), None);
    // Fill to the brim across the wrap; nothing more fits at either end.
    for i in 0..PENDING_INPUT_BYTES {
        assert!(q.push_back(i as u8));
    }
    assert_eq!(q.room(), 0);
    assert!(!q.push_back(0));
    assert!(!q.push_front(0));
    for i in 0..PENDING_INPUT_BYTES {
        assert_eq!(q.pop_front(), Some(i as u8));
    }
    // Fronts pushed in reverse come out in order.
    for b in [b'3', b'2', b'1'] {
        assert!(q.push_front(b));
    }
    q.push_back(b'4');
    let got: Vec<u8> = core::iter::from_fn(|| q.pop_front()).collect();
    assert_eq!(got, b"1234");
    q.push_back(1);
    q.clear();
    assert!(q.is_empty());
}

#[test]
fn screen_focused_bytes_and_interruptions() {
    let mut s = Screen::new();
    let mut out = Vec::new();
    let mut sink = |b| out.push(b);
    // A prompt with no line feed goes out at once, prefixed.
    for &b in b"login: " {
        s.focused_byte(Some("vm"), b, &mut sink);
    }
    // Another line breaks in: the prompt is ended, then printed again after it.
    s.break_line(&mut sink);
    for &b in b"[b] hello\r\n" {
        sink(b);
    }
    s.redisplay(&mut sink);
    for &b in b"root\r\n" {
        s.focused_byte(Some("vm"), b, &mut sink);
    }
    // At a line start nothing is broken or repeated.
    s.break_line(&mut sink);
    s.redisplay(&mut sink);
    // Any byte passes, and no prefix with one VM.
    for &b in &[0x1b, b'[', b'1', b'm', 0xff, b'\n'] {
        s.focused_byte(None, b, &mut sink);
    }
    assert_eq!(
        out,
        b"[vm] login: \r\n[b] hello\r\n[vm] login: root\r\n\x1b[1m\xff\n".as_slice()
    );
    // Losing focus mid-line ends the line once.
    let mut out = Vec::new();
    let mut sink = |b| out.push(b);
    s.focused_byte(None, b'$', &mut sink);
    s.focused_byte(None, b' ', &mut sink);
    let mut rest = Vec::new();
    s.end_focus(&mut rest, &mut sink);
    s.end_focus(&mut rest, &mut sink);
    s.break_line(&mut sink);
    assert_eq!(out, b"$ \r\n");
    // The partial line goes back to the VM, without its prefix.
    assert_eq!(rest, b"$ ");
    let mut s = Screen::new();
    let mut sink = |_| {};
    for &b in b"login: " {
        s.focused_byte(Some("vm"), b, &mut sink);
    }
    let mut rest = Vec::new();
    s.end_focus(&mut rest, &mut sink);
    assert_eq!(rest, b"login: ");
    // A line too long to keep: only the prefix is printed again.
    let mut s = Screen::new();
    let mut out = Vec::new();
    let mut sink = |b| out.push(b);
    for _ in 0..PARTIAL_LINE_BYTES + 10 {
        s.focused_byte(Some("x"), b'.', &mut sink);
    }
    out.clear();
    let mut sink = |b| out.push(b);
    s.redisplay(&mut sink);
    // The prefix and what came after the buffer ran over (13 of the 266 dots).
    assert_eq!(&out[..4], b"[x] ");
    assert_eq!(out.len(), 4 + 13);
}

#[test]
fn buffered_lines_show_invalid_utf8_as_replacement() {
    assert_eq!(
        alloc::format!("{}", Line(b"ok \xff\xfe done \xe2\x82\xac")),
        "ok \u{FFFD}\u{FFFD} done \u{20AC}"
    );
}

#[test]
fn log_level_and_bootargs() {
    assert_eq!(level_from_bootargs(""), Ok(LevelFilter::Info));
    assert_eq!(
        level_from_bootargs("console=x elvisor.log=debug"),
        Ok(LevelFilter::Debug)
    );
    assert_eq!(level_from_bootargs("elvisor.log=loud"), Err("loud"));
    assert_eq!(bootarg("a=1 elvisor.vhe=off", "elvisor.vhe"), Some("off"));
    assert_eq!(bootarg("elvisor.vhex=1", "elvisor.vhe"), None);
}
