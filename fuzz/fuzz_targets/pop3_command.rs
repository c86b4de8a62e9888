//! POP3 client input (`pop3::proto`): the bounded line decoder over a
//! pipelined stream, then the command grammar on every line.
//!
//! Invariants: the same input fed whole, split at a chosen point, or byte
//! by byte gives the same commands and errors; the buffer never grows past
//! the line limit while a line is being skipped.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pop3::proto::{self, LineDecoder, MAX_COMMAND_LINE};

fn run(parts: &[&[u8]]) -> Vec<String> {
    let mut decoder = LineDecoder::new();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match proto::parse(&mut decoder, &mut buf) {
                Ok(None) => break,
                Ok(Some(cmd)) => {
                    let _ = cmd.name();
                    events.push(format!("{cmd:?}"));
                }
                Err(e) => events.push(format!("{e:?}")),
            }
        }
        assert!(buf.len() < MAX_COMMAND_LINE, "unbounded buffer");
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let [a, b, input @ ..] = data else {
        return;
    };
    let whole = run(&[input]);
    let cut = usize::from(u16::from_le_bytes([*a, *b])) % (input.len() + 1);
    let (x, y) = input.split_at(cut);
    assert_eq!(run(&[x, y]), whole, "split at {cut}");
    if input.len() <= 1024 {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
    }
    let _ = proto::parse_command(input);
});
