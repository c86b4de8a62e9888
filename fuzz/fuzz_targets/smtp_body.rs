//! The DATA/BDAT decoder (`mail_wire::body`). The first byte picks the mode
//! and the maximum size, the next two a split point; the rest is what the
//! client sends after `354`.
//!
//! Invariants: DATA ends exactly at the first `<CRLF>.<CRLF>` (or `.<CRLF>`
//! as the first line) and nowhere else; feeding in two pieces gives what
//! feeding whole gives; a message without defect has only CRLF line ends,
//! and dot-stuffing it again then decoding gives it back unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mail_wire::body::{BodyDecoder, Defect, Mode};

type Outcome = (Option<usize>, Vec<u8>, Option<Defect>, u64);

fn run(mode: Mode, max: u64, parts: &[&[u8]]) -> Outcome {
    let mut d = BodyDecoder::new(mode, max);
    let mut out = Vec::new();
    let mut offset = 0;
    for part in parts {
        let (n, end) = d.feed(part, &mut out);
        assert!(n <= part.len());
        offset += n;
        if end {
            return (Some(offset), out, d.defect(), d.size());
        }
        assert_eq!(n, part.len(), "bytes left over without an end");
    }
    if mode == Mode::Bdat {
        d.finish();
    }
    (None, out, d.defect(), d.size())
}

/// Where DATA really ends: after the first `.CRLF` at the start of a line.
fn expected_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    input
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|i| i + 5)
}

fuzz_target!(|data: &[u8]| {
    let [sel, a, b, input @ ..] = data else {
        return;
    };
    let mode = if sel & 1 == 0 { Mode::Data } else { Mode::Bdat };
    // Small limits too, so that TooBig is reached.
    let max = if sel & 2 == 0 {
        u64::MAX
    } else {
        u64::from(sel >> 2) * 16
    };
    let cut = usize::from(u16::from_le_bytes([*a, *b])) % (input.len() + 1);

    let whole = run(mode, max, &[input]);
    let (first, second) = input.split_at(cut);
    assert_eq!(run(mode, max, &[first, second]), whole, "split at {cut}");

    let (end, out, defect, size) = whole;
    match mode {
        Mode::Data => assert_eq!(end, expected_end(input), "end of DATA"),
        Mode::Bdat => assert_eq!(end, None),
    }
    let content = &input[..end.unwrap_or(input.len())];
    assert!(size <= content.len() as u64);
    if let Some(d) = defect {
        if d == Defect::TooBig {
            assert!(size > max);
        }
        return;
    }
    assert!(size <= max);
    assert_eq!(out.len() as u64, size);
    for (i, &c) in out.iter().enumerate() {
        if c == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
        }
        if c == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    if mode == Mode::Data && end.is_some() {
        assert!(out.is_empty() || out.ends_with(b"\r\n"));
        // What smtp-out would send of it, decoded again: the same message.
        let mut wire = mail_wire::dotstuff::encode_all(&out);
        let sent = wire.len();
        wire.extend_from_slice(b"QUIT\r\n");
        let again = run(Mode::Data, u64::MAX, &[&wire]);
        assert_eq!(again.0, Some(sent));
        assert_eq!(again.2, None);
        assert_eq!(again.1, out, "re-encoded message differs");
    } else if mode == Mode::Bdat {
        // BDAT takes the content as is.
        assert_eq!(out, input);
    }
});
