//! SMTP replies as smtp-out reads them from a (possibly hostile) remote
//! server (`mail_wire::reply::parse`).
//!
//! Invariants: a prefix of the input gives "need more" or the same result;
//! a parsed reply renders (`write_to`) to bytes that parse back to the
//! same reply; the text never carries a control character.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mail_wire::reply::{self, MAX_LINE, MAX_LINES};

fuzz_target!(|data: &[u8]| {
    let [a, b, data @ ..] = data else {
        return;
    };
    let whole = reply::parse(data);
    let cut = usize::from(u16::from_le_bytes([*a, *b])) % (data.len() + 1);
    match reply::parse(&data[..cut]) {
        Ok(None) => {}
        // Which error a hostile reply gets may depend on how much of it
        // arrived (a bad code seen early, or an over-long line): both close.
        Err(_) if whole.is_err() => {}
        prefix => assert_eq!(prefix, whole, "prefix of {cut} bytes"),
    }
    let Ok(Some((r, n))) = whole else {
        return;
    };
    assert!(n <= data.len() && data[n - 1] == b'\n');
    assert!((200..=599).contains(&r.code));
    assert!(!r.lines.is_empty() && r.lines.len() <= MAX_LINES);
    for l in &r.lines {
        assert!(l.len() <= MAX_LINE * 3, "lossy UTF-8 at most triples");
        // ASCII controls are refused (C1 controls in UTF-8 are text here;
        // the DSN writer strips them).
        assert!(!l.contains(|c: char| (c < ' ' && c != '\t') || c == '\x7f'));
    }
    let _ = (r.enhanced(), r.summary(), r.is_error());
    let wire = r.to_wire();
    let again = reply::parse(wire.as_bytes());
    // Lines near the limit can grow past it when lossy UTF-8 expands them.
    if wire.lines().all(|l| l.len() + 1 < MAX_LINE) {
        let (back, m) = again.expect("rendered reply parses").expect("complete");
        assert_eq!(m, wire.len());
        assert_eq!(back, r, "{wire:?}");
    }
});
