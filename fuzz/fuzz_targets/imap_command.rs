//! IMAP client input: the framing (`imap::framing`: lines, literals,
//! limits) over a pipelined buffer, then the command grammar
//! (`imap::parser`) on every complete command, as the session does; also
//! SASL response lines, modified UTF-7 and mailbox names.
//!
//! Invariants: the same input fed whole, split at a chosen point, or byte
//! by byte frames and parses to the same commands; mUTF-7 decode/encode
//! round-trips (only canonical encodings decode).
#![no_main]
use imap::framing::{Frame, Framer, Limits};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them.
const LIMITS: Limits = Limits {
    max_line: 512,
    max_literal: 300,
    max_append_literal: 2_000,
    max_command: 4_000,
    max_literals: 4,
    preauth_max: 256,
};

/// What the session does with the input, as a list of events.
fn run(parts: &[&[u8]], authenticated: bool) -> Vec<String> {
    let mut framer = Framer::new();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match framer.advance(&buf, &LIMITS, authenticated) {
                Frame::Incomplete | Frame::Continue => break,
                Frame::Complete(n) => {
                    assert!(n > 0 && n <= buf.len() && buf[n - 1] == b'\n');
                    let cmd: Vec<u8> = buf.drain(..n).collect();
                    events.push(format!("{:?}", imap::parser::parse_command(&cmd)));
                }
                Frame::Reject {
                    consume,
                    tag,
                    too_big,
                    close,
                } => {
                    assert!(consume > 0 && consume <= buf.len());
                    buf.drain(..consume);
                    events.push(format!("reject {consume} {tag:?} {too_big}"));
                    if close {
                        return events;
                    }
                }
                Frame::TooLong => {
                    events.push("too long".into());
                    return events;
                }
                Frame::PreauthTooLong { tag } => {
                    events.push(format!("preauth too long {tag:?}"));
                }
                // How much is skipped at a time depends on what has
                // arrived; only what follows must agree.
                Frame::Discard(n) => {
                    assert!(n > 0 && n <= buf.len());
                    buf.drain(..n);
                }
            }
        }
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let [sel, a, b, input @ ..] = data else {
        return;
    };
    let authenticated = sel & 1 == 1;
    let whole = run(&[input], authenticated);
    let cut = usize::from(u16::from_le_bytes([*a, *b])) % (input.len() + 1);
    let (x, y) = input.split_at(cut);
    assert_eq!(run(&[x, y], authenticated), whole, "split at {cut}");
    if input.len() <= 512 {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes, authenticated), whole, "byte by byte");
    }

    // The grammar alone, on any bytes.
    let _ = imap::parser::parse_command(input);
    let _ = mail_wire::sasl::plain::decode(input);
    if let Some(name) = imap::mutf7::decode(input) {
        assert_eq!(
            imap::mutf7::encode(&name).as_bytes(),
            input,
            "not canonical"
        );
        if let Some(n) = imap::mailbox_name::normalise(&name) {
            assert_eq!(
                imap::mailbox_name::normalise(&n).as_deref(),
                Some(n.as_str())
            );
            let _ = imap::mailbox_name::matches(&name, &n);
        }
    }
});
