//! Typed server responses and their serialisation, in one place (RFC 9051
//! §7). Handlers build [`Status`] replies and untagged data through these
//! functions and never write ad-hoc bytes.

use std::fmt::Write as _;

use crate::model::{Address, BodyPart, Envelope, Param};

/// Status of a tagged or untagged status response (RFC 9051 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    No,
    Bad,
    Bye,
}

/// Response codes (RFC 9051 §7.1, RFC 4315 UIDPLUS, RFC 7162 CONDSTORE,
/// RFC 5530).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Alert,
    Capability(String),
    TryCreate,
    ReadOnly,
    ReadWrite,
    UidValidity(u32),
    UidNext(u32),
    Unseen(u32),
    PermanentFlags(String),
    HighestModSeq(u64),
    NoModSeq,
    /// RFC 8474 §4.
    MailboxId(String),
    AppendUid(u32, String),
    CopyUid(u32, String, String),
    Modified(String),
    TooBig,
    ExpungeIssued,
    Nonexistent,
    AlreadyExists,
    AuthenticationFailed,
    Unavailable,
    Cannot,
    Limit,
    OverQuota,
    ServerBug,
    PrivacyRequired,
    ClientBug,
    Closed,
    BadCharset,
    InUse,
    ContactAdmin,
    /// RFC 5530 §3.
    NoPerm,
    /// RFC 4978 §3.
    CompressionActive,
    /// RFC 5464 §4.2.1: the size of the largest value GETMETADATA left out.
    MetadataLongEntries(u64),
    /// RFC 5464 §4.3: the largest value SETMETADATA accepts.
    MetadataMaxSize(usize),
    /// RFC 5464 §4.3: too many entries.
    MetadataTooMany,
    /// RFC 5465 §5: the events the server supports.
    BadEvent,
    /// RFC 5465 §5.8.
    NotificationOverflow,
}

impl Code {
    fn write(&self, out: &mut String) {
        let _ = match self {
            Self::Alert => write!(out, "ALERT"),
            Self::Capability(c) => write!(out, "CAPABILITY {c}"),
            Self::TryCreate => write!(out, "TRYCREATE"),
            Self::ReadOnly => write!(out, "READ-ONLY"),
            Self::ReadWrite => write!(out, "READ-WRITE"),
            Self::UidValidity(v) => write!(out, "UIDVALIDITY {v}"),
            Self::UidNext(v) => write!(out, "UIDNEXT {v}"),
            Self::Unseen(v) => write!(out, "UNSEEN {v}"),
            Self::PermanentFlags(f) => write!(out, "PERMANENTFLAGS ({f})"),
            Self::HighestModSeq(v) => write!(out, "HIGHESTMODSEQ {v}"),
            Self::NoModSeq => write!(out, "NOMODSEQ"),
            Self::MailboxId(id) => write!(out, "MAILBOXID ({id})"),
            Self::AppendUid(v, u) => write!(out, "APPENDUID {v} {u}"),
            Self::CopyUid(v, s, d) => write!(out, "COPYUID {v} {s} {d}"),
            Self::Modified(s) => write!(out, "MODIFIED {s}"),
            Self::TooBig => write!(out, "TOOBIG"),
            Self::ExpungeIssued => write!(out, "EXPUNGEISSUED"),
            Self::Nonexistent => write!(out, "NONEXISTENT"),
            Self::AlreadyExists => write!(out, "ALREADYEXISTS"),
            Self::AuthenticationFailed => write!(out, "AUTHENTICATIONFAILED"),
            Self::Unavailable => write!(out, "UNAVAILABLE"),
            Self::Cannot => write!(out, "CANNOT"),
            Self::Limit => write!(out, "LIMIT"),
            Self::OverQuota => write!(out, "OVERQUOTA"),
            Self::ServerBug => write!(out, "SERVERBUG"),
            Self::PrivacyRequired => write!(out, "PRIVACYREQUIRED"),
            Self::ClientBug => write!(out, "CLIENTBUG"),
            Self::Closed => write!(out, "CLOSED"),
            Self::BadCharset => write!(out, "BADCHARSET (UTF-8 US-ASCII)"),
            Self::InUse => write!(out, "INUSE"),
            Self::ContactAdmin => write!(out, "CONTACTADMIN"),
            Self::NoPerm => write!(out, "NOPERM"),
            Self::CompressionActive => write!(out, "COMPRESSIONACTIVE"),
            Self::MetadataLongEntries(n) => write!(out, "METADATA LONGENTRIES {n}"),
            Self::MetadataMaxSize(n) => write!(out, "METADATA MAXSIZE {n}"),
            Self::MetadataTooMany => write!(out, "METADATA TOOMANY"),
            Self::BadEvent => write!(
                out,
                "BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange MailboxMetadataChange ServerMetadataChange)"
            ),
            Self::NotificationOverflow => write!(out, "NOTIFICATIONOVERFLOW"),
        };
    }
}

/// A status response: `tag OK [CODE] text` or `* BYE text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub kind: Kind,
    pub code: Option<Code>,
    pub text: String,
}

impl Status {
    #[must_use]
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            kind: Kind::Ok,
            code: None,
            text: text.into(),
        }
    }
    #[must_use]
    pub fn no(text: impl Into<String>) -> Self {
        Self {
            kind: Kind::No,
            code: None,
            text: text.into(),
        }
    }
    #[must_use]
    pub fn bad(text: impl Into<String>) -> Self {
        Self {
            kind: Kind::Bad,
            code: None,
            text: text.into(),
        }
    }
    #[must_use]
    pub fn bye(text: impl Into<String>) -> Self {
        Self {
            kind: Kind::Bye,
            code: None,
            text: text.into(),
        }
    }
    #[must_use]
    pub fn with(mut self, code: Code) -> Self {
        self.code = Some(code);
        self
    }

    /// Serialises with `tag` (`None` = untagged `*`).
    #[must_use]
    pub fn encode(&self, tag: Option<&str>) -> Vec<u8> {
        let mut s = String::with_capacity(64);
        s.push_str(tag.unwrap_or("*"));
        s.push_str(match self.kind {
            Kind::Ok => " OK ",
            Kind::No => " NO ",
            Kind::Bad => " BAD ",
            Kind::Bye => " BYE ",
        });
        if let Some(c) = &self.code {
            s.push('[');
            c.write(&mut s);
            s.push_str("] ");
        }
        // Text never contains CR/LF: it comes from us, not from clients.
        s.extend(self.text.chars().filter(|c| *c != '\r' && *c != '\n'));
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Appends `s` as an IMAP `string`: quoted when it is short and clean,
/// otherwise a literal (RFC 9051 §4.3). 8-bit text is quoted only when
/// the client accepts UTF-8 (`utf8`) and the bytes are valid UTF-8.
pub fn string(out: &mut Vec<u8>, s: &[u8], utf8: bool) {
    let clean = s.len() < 1024
        && s.iter()
            .all(|&b| b != 0 && b != b'\r' && b != b'\n' && (b < 0x80 || utf8))
        && (!utf8 || std::str::from_utf8(s).is_ok());
    if clean {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        let _ = write!(Vecw(out), "{{{}}}\r\n", s.len());
        out.extend_from_slice(s);
    }
}

/// `nstring`: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>, utf8: bool) {
    match s {
        Some(s) => string(out, s, utf8),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// `astring` for mailbox names and the like: an atom when possible.
pub fn astring(out: &mut Vec<u8>, s: &[u8], utf8: bool) {
    let atom = !s.is_empty()
        && s.len() < 256
        && s.iter()
            .all(|&b| b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b))
        && !s.eq_ignore_ascii_case(b"NIL");
    if atom {
        out.extend_from_slice(s)
    } else {
        string(out, s, utf8)
    }
}

/// `io::Write` adapter so `write!` works on a `Vec<u8>` without `Result` noise.
pub struct Vecw<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Vecw<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// RFC 2047 encoded-word (base64, UTF-8) for a display name with non-ASCII
/// characters, for clients that did not enable UTF-8.
#[must_use]
pub fn encode_word(s: &[u8], utf8: bool) -> Vec<u8> {
    use base64::Engine as _;
    if utf8 || s.is_ascii() {
        return s.to_vec();
    }
    // Encoded words are at most 75 characters (RFC 2047 §2): split on char
    // boundaries every 45 bytes of input.
    let text = String::from_utf8_lossy(s);
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
        .into_bytes()
}

fn address_list(out: &mut Vec<u8>, list: &[Address], utf8: bool) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        let name = a.name.as_deref().map(|n| encode_word(n, utf8));
        nstring(out, name.as_deref(), utf8);
        out.push(b' ');
        nstring(out, a.adl.as_deref(), utf8);
        out.push(b' ');
        nstring(out, a.mailbox.as_deref(), utf8);
        out.push(b' ');
        nstring(out, a.host.as_deref(), utf8);
        out.push(b')');
    }
    out.push(b')');
}

/// `envelope` (RFC 9051 §7.5.2) from the store's precomputed envelope.
pub fn envelope(out: &mut Vec<u8>, e: &Envelope, utf8: bool) {
    out.push(b'(');
    nstring(out, e.date.as_deref(), utf8);
    out.push(b' ');
    nstring(out, e.subject.as_deref(), utf8);
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        out.push(b' ');
        address_list(out, list, utf8);
    }
    out.push(b' ');
    nstring(out, e.in_reply_to.as_deref(), utf8);
    out.push(b' ');
    nstring(out, e.message_id.as_deref(), utf8);
    out.push(b')');
}

fn upper(out: &mut Vec<u8>, s: &str) {
    string(out, s.to_ascii_uppercase().as_bytes(), false);
}

fn params(out: &mut Vec<u8>, ps: &[Param], utf8: bool) {
    if ps.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, p) in ps.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, &p.name, utf8);
        out.push(b' ');
        string(out, &p.value, utf8);
    }
    out.push(b')');
}

/// The structure of one message with child indexes, for walking the flat
/// pre-order list of parts.
pub struct Tree<'a> {
    pub parts: &'a [BodyPart],
    pub children: Vec<Vec<usize>>,
}

impl<'a> Tree<'a> {
    #[must_use]
    pub fn new(parts: &'a [BodyPart]) -> Self {
        let mut children = vec![Vec::new(); parts.len()];
        for (i, p) in parts.iter().enumerate() {
            if let Some(parent) = p.parent
                && let Some(c) = children.get_mut(parent as usize)
                && (parent as usize) < i
            {
                c.push(i);
            }
        }
        Self { parts, children }
    }

    /// The encapsulated message root of a message/rfc822 part.
    #[must_use]
    pub fn inner(&self, i: usize) -> Option<usize> {
        let p = &self.parts[i];
        if p.envelope.is_some() && !p.multipart {
            self.children[i].first().copied()
        } else {
            None
        }
    }

    /// Resolves a part path (RFC 9051 §6.4.5) to a part index.
    #[must_use]
    pub fn resolve(&self, path: &[u32]) -> Option<usize> {
        if self.parts.is_empty() {
            return None;
        }
        let mut cur = 0usize;
        // Whether `cur` is the root of a message (top level or encapsulated).
        let mut is_root = true;
        for &n in path {
            let n = n as usize;
            // Descend into an encapsulated message first.
            if !is_root && let Some(inner) = self.inner(cur) {
                cur = inner;
                is_root = true;
            }
            if self.parts[cur].multipart {
                cur = *self.children[cur].get(n.checked_sub(1)?)?;
                is_root = false;
            } else if is_root && n == 1 {
                // The body of a single-part message is part 1.
                is_root = false;
            } else {
                return None;
            }
        }
        Some(cur)
    }

    /// BODY / BODYSTRUCTURE of part `i` (RFC 9051 §7.5.2), iteratively
    /// bounded by `depth`.
    pub fn body(&self, out: &mut Vec<u8>, i: usize, extended: bool, utf8: bool, depth: usize) {
        let p = &self.parts[i];
        if depth > 100 {
            out.extend_from_slice(b"(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"7BIT\" 0)");
            return;
        }
        out.push(b'(');
        if p.multipart {
            for &c in &self.children[i] {
                self.body(out, c, extended, utf8, depth + 1);
            }
            if self.children[i].is_empty() {
                // RFC 9051 requires at least one part: describe an empty text part.
                out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
            }
            out.push(b' ');
            upper(out, &p.media_subtype);
            if extended {
                out.push(b' ');
                params(out, &p.params, utf8);
                self.ext_tail(out, p, utf8);
            }
            out.push(b')');
            return;
        }
        upper(out, &p.media_type);
        out.push(b' ');
        upper(out, &p.media_subtype);
        out.push(b' ');
        params(out, &p.params, utf8);
        out.push(b' ');
        nstring(out, p.content_id.as_deref(), utf8);
        out.push(b' ');
        nstring(out, p.description.as_deref(), utf8);
        out.push(b' ');
        match p.encoding.as_deref() {
            Some(e) if !e.is_empty() => string(out, e.to_ascii_uppercase().as_slice(), false),
            _ => out.extend_from_slice(b"\"7BIT\""),
        }
        let size = p.end_offset.saturating_sub(p.body_offset);
        let _ = write!(Vecw(out), " {size}");
        if let (Some(env), Some(inner)) = (&p.envelope, self.inner(i)) {
            out.push(b' ');
            envelope(out, env, utf8);
            out.push(b' ');
            self.body(out, inner, extended, utf8, depth + 1);
            let _ = write!(Vecw(out), " {}", p.lines);
        } else if p.media_type.eq_ignore_ascii_case("text") {
            let _ = write!(Vecw(out), " {}", p.lines);
        }
        if extended {
            out.push(b' ');
            nstring(out, p.md5.as_deref(), utf8);
            self.ext_tail(out, p, utf8);
        }
        out.push(b')');
    }

    fn ext_tail(&self, out: &mut Vec<u8>, p: &BodyPart, utf8: bool) {
        out.push(b' ');
        match &p.disposition {
            Some(d) => {
                out.push(b'(');
                string(out, &d.kind.to_ascii_uppercase(), utf8);
                out.push(b' ');
                params(out, &d.params, utf8);
                out.push(b')');
            }
            None => out.extend_from_slice(b"NIL"),
        }
        out.push(b' ');
        match p.language.as_slice() {
            [] => out.extend_from_slice(b"NIL"),
            [one] => string(out, one, utf8),
            many => {
                out.push(b'(');
                for (i, l) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    string(out, l, utf8);
                }
                out.push(b')');
            }
        }
        out.push(b' ');
        nstring(out, p.location.as_deref(), utf8);
    }
}

/// `flag-list` with an optional `\Recent`.
pub fn flag_list(out: &mut Vec<u8>, flags: &[String], recent: bool) {
    out.push(b'(');
    let mut first = true;
    for f in flags
        .iter()
        .map(String::as_str)
        .chain(recent.then_some("\\Recent"))
    {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(f.as_bytes());
    }
    out.push(b')');
}

/// `* n EXPUNGE` (RFC 9051 §7.5.1).
#[must_use]
pub fn expunge(seq: usize) -> Vec<u8> {
    format!("* {seq} EXPUNGE\r\n").into_bytes()
}

/// `* n EXISTS` (RFC 9051 §7.4.1).
#[must_use]
pub fn exists(n: usize) -> Vec<u8> {
    format!("* {n} EXISTS\r\n").into_bytes()
}

/// `* n RECENT` (RFC 3501 §7.3.2; not sent to IMAP4rev2 clients).
#[must_use]
pub fn recent(n: usize) -> Vec<u8> {
    format!("* {n} RECENT\r\n").into_bytes()
}

/// `* seq FETCH ([UID u ]FLAGS (...)[ MODSEQ (m)])`: a flag change, after
/// STORE or found by a resync (RFC 9051 §7.5.2, RFC 7162 §3.1.4).
#[must_use]
pub fn flags_fetch(
    seq: usize,
    uid: Option<u32>,
    flags: &[String],
    recent: bool,
    modseq: Option<u64>,
) -> Vec<u8> {
    let mut line = format!("* {seq} FETCH (").into_bytes();
    if let Some(uid) = uid {
        let _ = write!(Vecw(&mut line), "UID {uid} ");
    }
    line.extend_from_slice(b"FLAGS ");
    flag_list(&mut line, flags, recent);
    if let Some(m) = modseq {
        let _ = write!(Vecw(&mut line), " MODSEQ ({m})");
    }
    line.extend_from_slice(b")\r\n");
    line
}

/// `date-time` (RFC 9051 §9): `"dd-Mon-yyyy hh:mm:ss +zzzz"`, in UTC.
#[must_use]
pub fn date_time(secs: Option<i64>) -> String {
    let secs = secs.unwrap_or(0);
    let dt = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    dt.format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string()
}

/// A UID list in the order given (COPYUID pairs source and destination
/// positionally, so no sorting), ranges compressed where consecutive.
#[must_use]
pub fn uid_list(uids: &[u32]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        if !s.is_empty() {
            s.push(',');
        }
        if start == end {
            s.push_str(&start.to_string());
        } else {
            s.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    s
}

/// Compresses sorted UIDs (or sequence numbers) into a sequence set.
#[must_use]
pub fn seq_set_string(nums: &[u32]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = nums[i];
        }
        if !s.is_empty() {
            s.push(',');
        }
        if start == end {
            let _ = write!(s, "{start}");
        } else {
            let _ = write!(s, "{start}:{end}");
        }
        i += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(Status::ok("done").encode(Some("a1")), b"a1 OK done\r\n");
        assert_eq!(
            Status::no("x")
                .with(Code::AppendUid(7, "3".into()))
                .encode(Some("t")),
            b"t NO [APPENDUID 7 3] x\r\n"
        );
        assert_eq!(Status::bye("bye\r\nx").encode(None), b"* BYE byex\r\n");
    }

    #[test]
    fn strings() {
        let mut v = Vec::new();
        string(&mut v, b"a\"b\\", false);
        assert_eq!(v, b"\"a\\\"b\\\\\"");
        v.clear();
        string(&mut v, "é".as_bytes(), false);
        assert_eq!(v, b"{2}\r\n\xc3\xa9");
        v.clear();
        string(&mut v, "é".as_bytes(), true);
        assert_eq!(v, "\"é\"".as_bytes());
        v.clear();
        astring(&mut v, b"INBOX", false);
        astring(&mut v, b" a b", false);
        assert_eq!(v, b"INBOX\" a b\"");
    }

    #[test]
    fn encoded_words() {
        assert_eq!(encode_word(b"Bob", false), b"Bob");
        assert_eq!(
            encode_word("Jürgen".as_bytes(), false),
            b"=?UTF-8?B?SsO8cmdlbg==?="
        );
        assert_eq!(encode_word("Jürgen".as_bytes(), true), "Jürgen".as_bytes());
    }

    #[test]
    fn untagged_data() {
        assert_eq!(expunge(3), b"* 3 EXPUNGE\r\n");
        assert_eq!(exists(0), b"* 0 EXISTS\r\n");
        assert_eq!(recent(2), b"* 2 RECENT\r\n");
        assert_eq!(
            flags_fetch(2, Some(7), &["\\Seen".into()], true, Some(9)),
            b"* 2 FETCH (UID 7 FLAGS (\\Seen \\Recent) MODSEQ (9))\r\n"
        );
        assert_eq!(
            flags_fetch(1, None, &[], false, None),
            b"* 1 FETCH (FLAGS ())\r\n"
        );
    }

    #[test]
    fn uid_lists_keep_order() {
        assert_eq!(uid_list(&[5, 6, 2]), "5:6,2");
    }

    #[test]
    fn seq_sets() {
        assert_eq!(seq_set_string(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(seq_set_string(&[]), "");
    }

    fn part(parent: Option<u32>, section: &str, t: &str, s: &str, multipart: bool) -> BodyPart {
        BodyPart {
            parent,
            section: section.into(),
            media_type: t.into(),
            media_subtype: s.into(),
            multipart,
            ..Default::default()
        }
    }

    #[test]
    fn resolve_sections() {
        // multipart/mixed: 1 text/plain, 2 message/rfc822 (single part inside), 3 multipart/alternative (3.1, 3.2)
        let mut m = part(Some(0), "2", "message", "rfc822", false);
        m.envelope = Some(Envelope::default());
        let parts = vec![
            part(None, "", "multipart", "mixed", true),
            part(Some(0), "1", "text", "plain", false),
            m,
            part(Some(2), "2", "text", "plain", false),
            part(Some(0), "3", "multipart", "alternative", true),
            part(Some(4), "3.1", "text", "plain", false),
            part(Some(4), "3.2", "text", "html", false),
        ];
        let t = Tree::new(&parts);
        assert_eq!(t.resolve(&[]), Some(0));
        assert_eq!(t.resolve(&[1]), Some(1));
        assert_eq!(t.resolve(&[2]), Some(2));
        assert_eq!(t.resolve(&[2, 1]), Some(3));
        assert_eq!(t.resolve(&[2, 2]), None);
        assert_eq!(t.resolve(&[3, 2]), Some(6));
        assert_eq!(t.resolve(&[4]), None);
        assert_eq!(t.resolve(&[1, 1]), None);
        let single = vec![part(None, "", "text", "plain", false)];
        let t = Tree::new(&single);
        assert_eq!(t.resolve(&[1]), Some(0));
        assert_eq!(t.resolve(&[2]), None);
        // Each resolved part's section string matches the path (the store's numbering).
        let t = Tree::new(&parts);
        assert_eq!(parts[t.resolve(&[3, 1]).unwrap_or(0)].section, "3.1");
    }

    #[test]
    fn bodystructure_single() {
        let mut p = part(None, "", "text", "plain", false);
        p.params = vec![Param {
            name: b"charset".to_vec(),
            value: b"us-ascii".to_vec(),
        }];
        p.body_offset = 10;
        p.end_offset = 30;
        p.lines = 2;
        let parts = vec![p];
        let t = Tree::new(&parts);
        let mut v = Vec::new();
        t.body(&mut v, 0, false, false, 0);
        assert_eq!(
            String::from_utf8_lossy(&v),
            "(\"TEXT\" \"PLAIN\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 20 2)"
        );
        v.clear();
        t.body(&mut v, 0, true, false, 0);
        assert_eq!(
            String::from_utf8_lossy(&v),
            "(\"TEXT\" \"PLAIN\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 20 2 NIL NIL NIL NIL)"
        );
    }
}
