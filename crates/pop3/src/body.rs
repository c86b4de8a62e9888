//! Message bodies on the wire: stored raw bytes → CRLF form → dot-stuffed
//! multi-line response (RFC 1939 §3), streamed chunk by chunk, with `TOP`'s
//! line limit (RFC 1939 §7). Pure: no I/O.
//!
//! Line ends: the store keeps messages as they were received. CRLF is passed
//! through; a bare LF and a bare CR are each a line end and are sent as CRLF
//! (one documented policy, so `a\n.\r\nb` or `a\r.\r\nb` reach the client as
//! `a` CRLF `..` CRLF `b`, never as an early end of the response).
//!
//! Sizes: `LIST`/`STAT` report [`BodyEncoder::octets`] of the CRLF form,
//! before dot-stuffing, including the CRLF added when the last line has no
//! line end. That is exactly what a client counts after removing the
//! stuffing and the terminating `.` line, which is what RFC 1939 §5 asks for
//! ("the exact size of the message"). Because it can differ from the stored
//! raw size, the session computes it by running this encoder in counting
//! mode over the stored bytes once and caches it (see `session.rs`).

use mail_wire::dotstuff::DotStuffer;

/// Streams one message body into the POP3 wire form: line ends and
/// stuffing by [`DotStuffer`] (the one encoder every outbound copy of a
/// message uses), and here only what is POP3's own: where `TOP` stops and
/// the CRLF-form size.
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    /// The wire encoder; `None` only counts.
    stuffer: Option<DotStuffer>,
    /// Body lines wanted for TOP; `None` = whole message.
    top: Option<u32>,
    in_header: bool,
    body_lines: u32,
    at_line_start: bool,
    /// The last byte was a CR: a following LF belongs to the same line end.
    after_cr: bool,
    /// Current line has content (for the header/body separator).
    line_has_content: bool,
    done: bool,
    finished: bool,
    octets: u64,
}

impl BodyEncoder {
    /// The whole message (RETR).
    #[must_use]
    pub fn retr() -> Self {
        Self::new(true, None)
    }

    /// The header, the blank line and `lines` body lines (TOP).
    #[must_use]
    pub fn top(lines: u32) -> Self {
        Self::new(true, Some(lines))
    }

    /// Counts the CRLF-form octets without producing output.
    #[must_use]
    pub fn counter() -> Self {
        Self::new(false, None)
    }

    fn new(emit: bool, top: Option<u32>) -> Self {
        Self {
            stuffer: emit.then(DotStuffer::new),
            top,
            in_header: true,
            body_lines: 0,
            at_line_start: true,
            after_cr: false,
            line_has_content: false,
            done: false,
            finished: false,
            octets: 0,
        }
    }

    /// True once TOP has everything it wants: the caller may stop reading.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Octets of the CRLF form produced so far, not counting stuffing dots
    /// nor the terminating `.` line.
    #[must_use]
    pub fn octets(&self) -> u64 {
        self.octets
    }

    /// Converts the next chunk of stored bytes, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        // CR, LF and CRLF each end one line (the policy of
        // `mail_wire::crlf`); a CR ends its line at once, so TOP can stop
        // right after it and the encoder completes the CRLF.
        let mut end = input.len();
        for (i, &b) in input.iter().enumerate() {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => self.end_line(),
                _ => {
                    self.at_line_start = false;
                    self.line_has_content = true;
                    self.octets += 1;
                }
            }
            if self.done {
                end = i + 1;
                break;
            }
        }
        if let Some(s) = &mut self.stuffer {
            s.encode(&input[..end], out);
        }
    }

    /// Ends the message: completes a last line without line end and, when
    /// emitting, writes the terminating `.` CRLF. Idempotent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.finished = true;
        if !self.at_line_start {
            self.end_line();
        }
        if let Some(s) = &mut self.stuffer {
            s.finish(out);
        }
    }

    fn end_line(&mut self) {
        self.octets += 2;
        let was_empty = !self.line_has_content;
        self.at_line_start = true;
        self.line_has_content = false;
        if let Some(limit) = self.top {
            if self.in_header {
                // RFC 1939 §7: the header ends with the first empty line.
                if was_empty {
                    self.in_header = false;
                    if limit == 0 {
                        self.done = true;
                    }
                }
            } else {
                self.body_lines += 1;
                if self.body_lines >= limit {
                    self.done = true;
                }
            }
        }
    }
}

/// The CRLF-form size of a complete message held in memory (RFC 1939 §11).
pub use mail_wire::crlf::crlf_size;

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes the stuffing and strips the terminator, as a client does.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        assert!(wire.ends_with(b".\r\n"), "no terminator in {wire:?}");
        let body = &wire[..wire.len() - 3];
        assert!(body.is_empty() || body.ends_with(b"\r\n"));
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert!(line.ends_with(b"\r\n"), "line without CRLF {line:?}");
            assert_ne!(line, b".\r\n", "early terminator");
            let line = line.strip_prefix(b".").unwrap_or(line);
            out.extend_from_slice(line);
        }
        out
    }

    fn run(mut enc: BodyEncoder, chunks: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        for c in chunks {
            enc.feed(c, &mut out);
        }
        enc.finish(&mut out);
        (out, enc.octets())
    }

    fn retr_table() -> Vec<(&'static [u8], &'static [u8])> {
        vec![
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\n", b"a\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"..x\r\n", b"...x\r\n.\r\n"),
            (b"x.\r\n.y\r\n", b"x.\r\n..y\r\n.\r\n"),
            (
                b"Subject: s\r\n\r\nbody\r\n",
                b"Subject: s\r\n\r\nbody\r\n.\r\n",
            ),
            // threat model T4: smuggling shapes all become CRLF + stuffing.
            (b"a\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n.\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n\x00.\r\n", b"a\r\n\x00.\r\n.\r\n"),
            (b"\n\n", b"\r\n\r\n.\r\n"),
            (b"\r\r\n", b"\r\n\r\n.\r\n"),
            (b"\n\r", b"\r\n\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
        ]
    }

    #[test]
    fn retr_at_every_split_and_bytewise() {
        for (input, expected) in retr_table() {
            let expected_octets = unstuff(expected).len() as u64;
            for split in 0..=input.len() {
                let (out, octets) = run(BodyEncoder::retr(), &[&input[..split], &input[split..]]);
                assert_eq!(out, expected, "input {input:?} split {split}");
                assert_eq!(octets, expected_octets, "octets of {input:?}");
                assert_eq!(crlf_size(input), expected_octets);
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let (out, _) = run(BodyEncoder::retr(), &bytes);
            assert_eq!(out, expected, "bytewise {input:?}");
            // Three-way splits catch state carried across two boundaries.
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let (out, _) = run(
                        BodyEncoder::retr(),
                        &[&input[..i], &input[i..j], &input[j..]],
                    );
                    assert_eq!(out, expected, "input {input:?} splits {i},{j}");
                }
            }
        }
    }

    #[test]
    fn top_limits_body_lines() {
        let msg: &[u8] = b"From: a\r\nSubject: b\r\n\r\nl1\r\n.l2\nl3\r\nl4\r\n";
        let cases: Vec<(u32, &[u8])> = vec![
            (0, b"From: a\r\nSubject: b\r\n\r\n.\r\n"),
            (1, b"From: a\r\nSubject: b\r\n\r\nl1\r\n.\r\n"),
            (2, b"From: a\r\nSubject: b\r\n\r\nl1\r\n..l2\r\n.\r\n"),
            (
                4,
                b"From: a\r\nSubject: b\r\n\r\nl1\r\n..l2\r\nl3\r\nl4\r\n.\r\n",
            ),
            (
                100,
                b"From: a\r\nSubject: b\r\n\r\nl1\r\n..l2\r\nl3\r\nl4\r\n.\r\n",
            ),
        ];
        for (n, expected) in cases {
            for split in 0..=msg.len() {
                let (out, _) = run(BodyEncoder::top(n), &[&msg[..split], &msg[split..]]);
                assert_eq!(out, expected, "TOP {n} split {split}");
            }
        }
        // No blank line: the whole message is header.
        let (out, _) = run(BodyEncoder::top(0), &[b"A: b\nC: d"]);
        assert_eq!(out, b"A: b\r\nC: d\r\n.\r\n");
        // Bare-LF header end.
        let (out, _) = run(BodyEncoder::top(1), &[b"A: b\n\nx\ny\n"]);
        assert_eq!(out, b"A: b\r\n\r\nx\r\n.\r\n");
        let mut enc = BodyEncoder::top(0);
        let mut out = Vec::new();
        enc.feed(b"A: b\r\n\r\nrest", &mut out);
        assert!(enc.is_done());
    }

    #[test]
    fn counter_matches_emitted_octets_for_generated_inputs() {
        // Every string over a small alphabet up to length 6.
        let alphabet = [b'\r', b'\n', b'.', b'x'];
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut frontier: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..6 {
            frontier = frontier
                .iter()
                .flat_map(|s| {
                    alphabet.iter().map(move |&c| {
                        let mut t = s.clone();
                        t.push(c);
                        t
                    })
                })
                .collect();
            inputs.extend(frontier.iter().cloned());
        }
        for input in &inputs {
            let (out, octets) = run(BodyEncoder::retr(), &[input]);
            let plain = unstuff(&out);
            assert_eq!(plain.len() as u64, octets, "{input:?}");
            assert_eq!(crlf_size(input), octets);
            // The store precomputes the same number (MessageMeta.crlf_size).
            assert_eq!(mailstore_api::crlf_size(input), octets, "{input:?}");
            // Every CR is followed by LF and every LF preceded by CR.
            for (i, &b) in plain.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(plain.get(i + 1), Some(&b'\n'));
                }
                if b == b'\n' {
                    assert_eq!(plain[i - 1], b'\r');
                }
            }
        }
    }
}
