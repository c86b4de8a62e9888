//! Property tests for the IMAP command framing and grammar (issue #18):
//! arbitrary bytes give a command, "need more" or an error, never a panic,
//! and input fed split at random points frames and parses exactly as it
//! does whole. The fuzzer `fuzz/fuzz_targets/imap_command.rs` goes further.

use imap::framing::{Frame, Framer, Limits};
use imap::parser;
use proptest::prelude::*;

/// Real client commands (RFC 9051 examples and what clients send).
const COMMANDS: &[&[u8]] = &[
    b"a1 CAPABILITY\r\n",
    b"a2 LOGIN alice \"pass word\"\r\n",
    b"a3 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
    b"a4 SELECT INBOX\r\n",
    b"a5 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODYSTRUCTURE ENVELOPE)\r\n",
    b"a6 FETCH 2,4:7 (BODY[1.2.MIME] BODY[]<0.100> RFC822.SIZE INTERNALDATE)\r\n",
    b"a7 UID SEARCH CHARSET UTF-8 OR (FROM \"bob\" SINCE 1-Jul-2025) NOT (SEEN UNDELETED) LARGER 100\r\n",
    b"a8 APPEND Sent (\\Seen) \"01-Jul-2025 10:00:00 +0000\" {11}\r\nhello\r\n.\r\n\r\n",
    b"a9 STORE 1:3,5 +FLAGS.SILENT (\\Deleted)\r\n",
    b"a10 LIST \"\" \"*\"\r\n",
    b"a11 STATUS INBOX (MESSAGES UIDNEXT UNSEEN)\r\n",
    b"a12 UID MOVE 1:5 Archive\r\n",
    b"a13 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"a14 ID (\"name\" \"client\")\r\n",
    b"a15 ENABLE UTF8=ACCEPT CONDSTORE\r\n",
    b"a16 SEARCH NOT NOT NOT (OR SEEN (DRAFT FLAGGED))\r\n",
    b"a17 LOGOUT\r\n",
    b"a18 UID SORT RETURN (SAVE MIN ALL) (REVERSE DATE SUBJECT DISPLAYFROM) UTF-8 UNSEEN $\r\n",
    b"a19 THREAD ORDEREDSUBJECT US-ASCII OR SUBJECT \"x\" UID 1:*\r\n",
    b"a20 FETCH $ (FLAGS)\r\n",
];

/// Small limits, so that random input reaches them.
const LIMITS: Limits = Limits {
    max_line: 512,
    max_literal: 300,
    max_append_literal: 2_000,
    max_command: 4_000,
    max_literals: 4,
    preauth_max: 256,
};

/// Everything the session would do with this input, fed in these pieces.
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
                    assert!(n > 0 && n <= buf.len());
                    let cmd: Vec<u8> = buf.drain(..n).collect();
                    events.push(format!("{:?}", parser::parse_command(&cmd)));
                }
                Frame::Reject {
                    consume,
                    tag,
                    close,
                    ..
                } => {
                    assert!(consume > 0 && consume <= buf.len());
                    buf.drain(..consume);
                    events.push(format!("reject {consume} {tag:?}"));
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

/// Pipelined real commands, sometimes mutated.
fn session() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(prop::sample::select(COMMANDS), 1..6),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    )
        .prop_map(|(cmds, edits)| {
            let mut input = cmds.concat();
            for (at, b) in edits {
                let i = at.index(input.len());
                input[i] = b;
            }
            input
        })
}

fn split(input: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    points.sort_unstable();
    let mut parts = Vec::new();
    let mut prev = 0;
    for p in points {
        parts.push(input[prev..p].to_vec());
        prev = p;
    }
    parts.push(input[prev..].to_vec());
    parts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Unmodified real commands parse, whatever the split.
    #[test]
    fn real_sessions_parse(cmds in prop::collection::vec(prop::sample::select(COMMANDS), 1..6),
                           cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let input = cmds.concat();
        let whole = run(&[&input], true);
        prop_assert_eq!(whole.len(), cmds.len());
        prop_assert!(whole.iter().all(|e| e.starts_with("Ok(")), "{:?}", whole);
        let parts = split(&input, &cuts);
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(run(&parts, true), whole);
    }

    /// Mutated and random input: same outcome whole, split and byte by
    /// byte; the parser alone never panics.
    #[test]
    fn split_feeding_matches_whole(input in prop_oneof![session(), any::<Vec<u8>>()],
                                   auth in any::<bool>(),
                                   cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let whole = run(&[&input], auth);
        let parts = split(&input, &cuts);
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(&run(&parts, auth), &whole);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&run(&bytes, auth), &whole);
        let _ = parser::parse_command(&input);
    }

    /// Modified UTF-7 mailbox names: only canonical encodings decode, and
    /// every name encodes to one that decodes back.
    #[test]
    fn mutf7_round_trip(name in "\\PC{0,20}", wire in "[ -~]{0,20}") {
        let enc = imap::mutf7::encode(&name);
        prop_assert_eq!(imap::mutf7::decode(enc.as_bytes()), Some(name));
        if let Some(dec) = imap::mutf7::decode(wire.as_bytes()) {
            prop_assert_eq!(imap::mutf7::encode(&dec), wire);
        }
    }
}
