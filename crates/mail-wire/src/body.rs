//! Message content of DATA (RFC 5321 §4.1.1.4, §4.5.2) and BDAT (RFC 3030).
//!
//! # End of data (SMTP smuggling, CVE-2023-51764/51765/51766)
//! Only `<CRLF>.<CRLF>` ends DATA. The CRLF of the DATA command itself counts
//! as the first CRLF, so `.<CRLF>` as the very first line ends an empty
//! message. `\n.\n`, `\r.\r`, `\n.\r\n`, `\r\n.\n`, `\r.\r\n`… are never an
//! end.
//!
//! # Line-ending policy: reject (the one policy, for DATA and BDAT alike)
//! A bare LF, or a bare CR (one not immediately followed by LF), anywhere in
//! the content makes the whole message refused with `550 5.5.2` once its
//! real end has been read. Nothing is normalised and nothing is stored: a
//! message another MTA could read differently never enters the queue. The
//! decoder keeps scanning a refused message only to find its real end, and
//! stops collecting its bytes (memory stays bounded).
//!
//! # Dot-unstuffing (RFC 5321 §4.5.2)
//! In DATA, a line that starts with "." has that first "." removed. BDAT
//! content is taken as is.
//!
//! # Limits
//! The decoded size is checked against the maximum as it grows; past it the
//! message is refused with `552 5.3.4` (RFC 1870 §6) and no more bytes are
//! kept. Text lines longer than [`MAX_TEXT_LINE`] are refused the same way:
//! RFC 5321 §4.5.3.1.6 allows 1000 octets, we tolerate much more but not an
//! endless line.

/// Longest text line we accept, CRLF excluded (RFC 5321 §4.5.3.1.6 says
/// 998; real-world mail sometimes exceeds it, so we allow far more).
pub const MAX_TEXT_LINE: usize = 64 * 1024;

/// Why a message is refused once its end is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// Bare CR or bare LF (our line-ending policy): 550 5.5.2.
    BareLineEnding,
    /// Larger than the maximum size: 552 5.3.4.
    TooBig,
    /// A text line longer than [`MAX_TEXT_LINE`]: 552 5.3.4.
    LineTooLong,
    /// The server's spool memory budget ran out: 452 4.3.1.
    Storage,
}

/// DATA (dot-stuffed, ends at `<CRLF>.<CRLF>`) or BDAT (raw chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// RFC 5321 DATA.
    Data,
    /// RFC 3030 BDAT.
    Bdat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start of DATA).
    LineStart,
    /// "." at the start of a line.
    Dot,
    /// ".\r" at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// CR inside a line, not yet known to be part of CRLF.
    Cr,
}

/// Incremental decoder: feed it bytes as they arrive, it appends the
/// message content to a buffer and tells where DATA ended.
#[derive(Debug)]
pub struct BodyDecoder {
    mode: Mode,
    state: State,
    size: u64,
    max_size: u64,
    line_len: usize,
    defect: Option<Defect>,
}

impl BodyDecoder {
    /// A decoder for one message.
    #[must_use]
    pub fn new(mode: Mode, max_size: u64) -> Self {
        Self {
            mode,
            state: State::LineStart,
            size: 0,
            max_size,
            line_len: 0,
            defect: None,
        }
    }

    /// The first defect found, if any.
    #[must_use]
    pub fn defect(&self) -> Option<Defect> {
        self.defect
    }

    /// Marks the message as refused for a reason found outside the decoder.
    pub fn fail(&mut self, defect: Defect) {
        self.defect.get_or_insert(defect);
    }

    /// Decoded octets so far (counted even after a defect).
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Decodes `input`, appending content to `out` (nothing once a defect
    /// is known). Returns how many input bytes were consumed and whether the
    /// end of DATA was reached; bytes after the end are not consumed. In
    /// BDAT mode everything is consumed and the end is never reached (the
    /// chunk sizes say where it is; call [`BodyDecoder::finish`]).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        for (i, &b) in input.iter().enumerate() {
            if self.step(b, out) {
                return (i + 1, true);
            }
        }
        (input.len(), false)
    }

    /// End of the last BDAT chunk: a pending CR is a bare CR.
    pub fn finish(&mut self) {
        if matches!(self.state, State::Cr | State::DotCr) {
            self.fail(Defect::BareLineEnding);
        }
        self.state = State::LineStart;
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.fail(Defect::TooBig);
        }
        if self.defect.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        self.line_len += 1;
        if self.line_len > MAX_TEXT_LINE {
            self.fail(Defect::LineTooLong);
        }
        self.emit(&[b], out);
    }

    /// One byte; true at the end of DATA.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match (self.state, b) {
            (State::LineStart, b'.') if self.mode == Mode::Data => self.state = State::Dot,
            (State::DotCr, b'\n') => return true,
            (State::DotCr, _) => {
                // ".\r" then not LF: a bare CR. The message is refused; go on
                // scanning with this byte as ordinary content.
                self.fail(Defect::BareLineEnding);
                self.state = State::Mid;
                return self.step(b, out);
            }
            (State::Dot, b'\r') => self.state = State::DotCr,
            (State::Dot, _) => {
                // RFC 5321 §4.5.2: the leading dot is deleted.
                self.state = State::Mid;
                return self.step(b, out);
            }
            (State::Cr, b'\n') => {
                self.emit(b"\r\n", out);
                self.line_len = 0;
                self.state = State::LineStart;
            }
            (State::Cr, _) => {
                self.fail(Defect::BareLineEnding);
                self.text(b'\r', out);
                self.state = State::Mid;
                return self.step(b, out);
            }
            (State::LineStart | State::Mid, b'\r') => self.state = State::Cr,
            (State::LineStart | State::Mid, b'\n') => {
                self.fail(Defect::BareLineEnding);
                self.text(b'\n', out);
                self.state = State::Mid;
            }
            (State::LineStart | State::Mid, _) => {
                self.text(b, out);
                self.state = State::Mid;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` whole and split at every byte boundary; all must agree.
    fn decode(mode: Mode, input: &[u8]) -> (Option<usize>, Vec<u8>, Option<Defect>) {
        let whole = run(mode, &[input]);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(run(mode, &[a, b]), whole, "split at {cut} of {input:?}");
        }
        // One byte at a time, too.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(mode, &bytes), whole, "bytewise {input:?}");
        whole
    }

    fn run(mode: Mode, parts: &[&[u8]]) -> (Option<usize>, Vec<u8>, Option<Defect>) {
        let mut d = BodyDecoder::new(mode, 1_000);
        let mut out = Vec::new();
        let mut offset = 0;
        for part in parts {
            let (n, end) = d.feed(part, &mut out);
            offset += n;
            if end {
                return (Some(offset), out, d.defect());
            }
        }
        if mode == Mode::Bdat {
            d.finish();
        }
        (None, out, d.defect())
    }

    #[test]
    fn plain_message() {
        let (end, out, defect) = decode(Mode::Data, b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(end, Some(24));
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(defect, None);
    }

    #[test]
    fn empty_message_and_unstuffing() {
        assert_eq!(decode(Mode::Data, b".\r\n"), (Some(3), vec![], None));
        let (end, out, defect) = decode(Mode::Data, b"..\r\n..x\r\n.y\r\n...\r\n.\r\n");
        assert_eq!(end, Some(21));
        assert_eq!(out, b".\r\n.x\r\ny\r\n..\r\n");
        assert_eq!(defect, None);
    }

    /// threat model T1–T3: none of these is an end of data; every one has a
    /// bare CR or LF, so the message is refused at the real end.
    #[test]
    fn smuggling_variants() {
        for fake in [
            &b"\n.\r\n"[..],
            b"\n.\n",
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\rX",
        ] {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(
                b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<u@ours>\r\nDATA\r\nx\r\n.\r\n",
            );
            let (end, _, defect) = decode(Mode::Data, &input);
            assert_eq!(end, Some(input.len()), "{fake:?} must not end DATA");
            assert_eq!(defect, Some(Defect::BareLineEnding), "{fake:?}");
        }
    }

    #[test]
    fn nul_before_dot_is_content() {
        let input = b"a\r\n\x00.\r\nb\r\n.\r\n";
        let (end, out, defect) = decode(Mode::Data, input);
        assert_eq!(end, Some(input.len()));
        assert_eq!(out, b"a\r\n\x00.\r\nb\r\n");
        assert_eq!(defect, None);
    }

    #[test]
    fn bdat_same_policy_no_unstuffing() {
        assert_eq!(
            decode(Mode::Bdat, b"a\r\n.\r\nb\r\n"),
            (None, b"a\r\n.\r\nb\r\n".to_vec(), None)
        );
        assert_eq!(
            decode(Mode::Bdat, b"a\nb\r\n").2,
            Some(Defect::BareLineEnding)
        );
        assert_eq!(
            decode(Mode::Bdat, b"a\rb\r\n").2,
            Some(Defect::BareLineEnding)
        );
        assert_eq!(
            decode(Mode::Bdat, b"a\r\nb\r").2,
            Some(Defect::BareLineEnding)
        );
    }

    #[test]
    fn too_big_keeps_scanning_without_collecting() {
        let mut input = vec![b'x'; 998];
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(b"yy\r\n.\r\n");
        let mut d = BodyDecoder::new(Mode::Data, 1_000);
        let mut out = Vec::new();
        let (n, end) = d.feed(&input, &mut out);
        assert!(end);
        assert_eq!(n, input.len());
        assert_eq!(d.defect(), Some(Defect::TooBig));
        assert!(out.len() <= 1_000);
    }

    #[test]
    fn endless_line() {
        let mut d = BodyDecoder::new(Mode::Data, u64::MAX);
        let mut out = Vec::new();
        let chunk = vec![b'a'; 8192];
        for _ in 0..10 {
            d.feed(&chunk, &mut out);
        }
        assert_eq!(d.defect(), Some(Defect::LineTooLong));
        assert!(out.len() <= MAX_TEXT_LINE);
    }

    /// What the outbound encoder sends, the inbound decoder takes back:
    /// the message with every line end made CRLF, ended exactly at ".CRLF".
    #[test]
    fn encoder_round_trip() {
        for raw in [
            &b""[..],
            b"a",
            b"a\r\n.\r\nb",
            b"a\n.\r\nb",
            b"..x\r\n.y",
            b"a\r.\rb\r",
            b".\r\n",
        ] {
            let mut wire = crate::dotstuff::encode_all(raw);
            let sent = wire.len();
            wire.extend_from_slice(b"QUIT\r\n");
            let (end, out, defect) = decode(Mode::Data, &wire);
            assert_eq!(end, Some(sent), "{raw:?}");
            assert_eq!(defect, None, "{raw:?}");
            assert_eq!(out.len() as u64, crate::crlf::crlf_size(raw), "{raw:?}");
            let mut want = crate::crlf::normalise_crlf(raw);
            if !want.is_empty() && !want.ends_with(b"\r\n") {
                want.extend_from_slice(b"\r\n");
            }
            assert_eq!(out, want, "{raw:?}");
        }
    }
}
