//! Property tests for the POP3 command grammar (issue #18): arbitrary
//! bytes give a command, "need more" or an error, never a panic; input fed
//! split at random points gives the same commands as whole; the buffer
//! stays bounded. The fuzzer `fuzz/fuzz_targets/pop3_command.rs` goes further.

use bytes::BytesMut;
use pop3::proto::{self, LineDecoder, MAX_COMMAND_LINE};
use proptest::prelude::*;

/// What real clients send (RFC 1939, RFC 2449, RFC 5034).
const LINES: &[&[u8]] = &[
    b"CAPA\r\n",
    b"USER alice@example.org\r\n",
    b"PASS secret with spaces\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH\r\n",
    b"STLS\r\n",
    b"UTF8\r\n",
    b"STAT\r\n",
    b"LIST\r\n",
    b"LIST 1\r\n",
    b"UIDL 2\r\n",
    b"TOP 1 10\r\n",
    b"RETR 4294967295\r\n",
    b"DELE 1\r\n",
    b"NOOP\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"retr 1\n",
];

fn run(parts: &[&[u8]]) -> Vec<String> {
    let mut decoder = LineDecoder::new();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match proto::parse(&mut decoder, &mut buf) {
                Ok(None) => break,
                Ok(Some(cmd)) => events.push(format!("{cmd:?}")),
                Err(e) => events.push(format!("{e:?}")),
            }
        }
        assert!(buf.len() < MAX_COMMAND_LINE, "unbounded buffer");
    }
    events
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            prop::collection::vec(prop::sample::select(LINES), 1..8),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        )
            .prop_map(|(lines, edits)| {
                let mut input = lines.concat();
                for (at, b) in edits {
                    let i = at.index(input.len());
                    input[i] = b;
                }
                input
            }),
        any::<Vec<u8>>(),
        // Over-long lines around the limit.
        (200usize..600, prop::sample::select(LINES)).prop_map(|(n, next)| [
            vec![b'A'; n],
            b"\r\n".to_vec(),
            next.to_vec()
        ]
        .concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Real lines parse to commands, whatever the split.
    #[test]
    fn real_lines_parse(lines in prop::collection::vec(prop::sample::select(LINES), 1..8),
                        cut in any::<prop::sample::Index>()) {
        let input = lines.concat();
        let whole = run(&[&input]);
        prop_assert_eq!(whole.len(), lines.len());
        let at = cut.index(input.len() + 1);
        prop_assert_eq!(run(&[&input[..at], &input[at..]]), whole);
    }

    /// Any input: whole, split in two and byte by byte agree; no panic.
    #[test]
    fn split_feeding_matches_whole(input in input(), cut in any::<prop::sample::Index>()) {
        let whole = run(&[&input]);
        let at = cut.index(input.len() + 1);
        prop_assert_eq!(&run(&[&input[..at], &input[at..]]), &whole);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&run(&bytes), &whole);
        let _ = proto::parse_command(&input);
    }
}
