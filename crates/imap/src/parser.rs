//! The IMAP command grammar (RFC 9051 §9, RFC 3501 §9 and the extensions'
//! ABNF): one complete command (as framed by [`crate::framing`]) in, a
//! typed [`Command`] or an error out. Pure, no I/O, no allocation beyond
//! the command's own size; recursion (search keys, lists) is bounded.

use crate::command::{
    AppendMessage, Command, CommandKind, FetchAtt, ListReturn, ListSelect, SearchKey, SearchReturn,
    Section, SectionText, SeqRange, SeqSet, StatusItem, StoreOp,
};

/// Deepest nesting of parenthesised search keys / `NOT` / `OR` (ATTACKS.md #30).
pub const MAX_DEPTH: usize = 32;
/// Most ranges in one sequence set (ATTACKS.md #33).
pub const MAX_SEQ_RANGES: usize = 100_000;
/// Most FETCH items, search keys, flags or patterns in one list.
pub const MAX_ITEMS: usize = 1_000;
/// Most messages in one MULTIAPPEND.
pub const MAX_APPEND_MESSAGES: usize = 50;
/// Deepest part path in `BODY[1.2.3...]`.
pub const MAX_PART_DEPTH: usize = 64;

/// A command that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The tag, when it could be read (else the reply is untagged `* BAD`).
    pub tag: Option<String>,
    pub msg: &'static str,
    /// `SEARCH CHARSET` with a charset we do not know: `NO [BADCHARSET]`.
    pub bad_charset: bool,
}

type R<T> = Result<T, &'static str>;

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_atom_char(b: u8) -> bool {
    // RFC 9051 §9: ATOM-CHAR = any CHAR except atom-specials
    // ( "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials ).
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, msg: &'static str) -> R<()> {
        if self.eat(b) { Ok(()) } else { Err(msg) }
    }

    fn sp(&mut self) -> R<()> {
        self.expect(b' ', "expected a space")
    }

    fn at_end(&self) -> bool {
        matches!(&self.s[self.i..], b"\r\n" | b"\n")
    }

    fn end(&mut self) -> R<()> {
        if self.at_end() {
            self.i = self.s.len();
            Ok(())
        } else {
            Err("unexpected characters at end of command")
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn atom(&mut self) -> R<&'a [u8]> {
        let a = self.take_while(is_atom_char);
        if a.is_empty() {
            Err("expected an atom")
        } else {
            Ok(a)
        }
    }

    /// An atom, upper-cased (command names, keywords of the grammar).
    fn word(&mut self) -> R<String> {
        let w =
            self.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'=');
        if w.is_empty() {
            return Err("expected a keyword");
        }
        Ok(String::from_utf8_lossy(w).to_ascii_uppercase())
    }

    fn number64(&mut self) -> R<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 20 {
            return Err("expected a number");
        }
        let mut n: u64 = 0;
        for &c in d {
            n = n
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or("number too large")?;
        }
        Ok(n)
    }

    fn number(&mut self) -> R<u32> {
        u32::try_from(self.number64()?).map_err(|_| "number too large")
    }

    fn nz_number(&mut self) -> R<u32> {
        match self.number()? {
            0 => Err("zero is not allowed here"),
            n => Ok(n),
        }
    }

    fn quoted(&mut self) -> R<Vec<u8>> {
        self.expect(b'"', "expected a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r' | b'\n' | 0) => return Err("bad quoted string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.i += 1;
                        }
                        _ => return Err("bad escape in quoted string"),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// `{n}CRLF<n octets>`, `{n+}`, `{n-}` and with `binary`, `~{n}`.
    fn literal(&mut self, binary: bool) -> R<Vec<u8>> {
        let is8 = self.eat(b'~');
        if is8 && !binary {
            return Err("literal8 not allowed here");
        }
        self.expect(b'{', "expected a literal")?;
        let n = self.number64()?;
        let _ = self.eat(b'+') || self.eat(b'-');
        self.expect(b'}', "bad literal")?;
        let _ = self.eat(b'\r');
        self.expect(b'\n', "bad literal")?;
        let n = usize::try_from(n).map_err(|_| "literal too large")?;
        let end = self.i.checked_add(n).ok_or("literal too large")?;
        let data = self.s.get(self.i..end).ok_or("truncated literal")?;
        if !binary && data.contains(&0) {
            return Err("NUL in literal");
        }
        self.i = end;
        Ok(data.to_vec())
    }

    fn string(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(false),
            _ => Err("expected a string"),
        }
    }

    fn astring(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    Err("expected a string")
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    fn astring_utf8(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "invalid UTF-8")
    }

    fn list_mailbox(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(is_list_char);
                if a.is_empty() {
                    Err("expected a mailbox pattern")
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    fn seq_number(&mut self) -> R<Option<u32>> {
        if self.eat(b'*') {
            Ok(None)
        } else {
            self.nz_number().map(Some)
        }
    }

    fn seq_set(&mut self) -> R<SeqSet> {
        let mut v = Vec::new();
        loop {
            let first = self.seq_number()?;
            let last = if self.eat(b':') {
                self.seq_number()?
            } else {
                first
            };
            if v.len() >= MAX_SEQ_RANGES {
                return Err("sequence set too long");
            }
            v.push(SeqRange { first, last });
            if !self.eat(b',') {
                return Ok(SeqSet(v));
            }
        }
    }

    fn flag(&mut self) -> R<String> {
        let backslash = self.eat(b'\\');
        let a = self.atom()?;
        let s = String::from_utf8_lossy(a).into_owned();
        if backslash {
            // System flags: canonical spelling (RFC 9051 §2.3.2).
            let canon = match s.to_ascii_lowercase().as_str() {
                "seen" => "\\Seen",
                "answered" => "\\Answered",
                "flagged" => "\\Flagged",
                "deleted" => "\\Deleted",
                "draft" => "\\Draft",
                "recent" => "\\Recent",
                _ => return Err("unknown system flag"),
            };
            Ok(canon.to_string())
        } else {
            Ok(s)
        }
    }

    fn flag_list(&mut self) -> R<Vec<String>> {
        self.expect(b'(', "expected a flag list")?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            if flags.len() >= MAX_ITEMS {
                return Err("too many flags");
            }
            flags.push(self.flag()?);
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
    }

    /// A parenthesised list of upper-cased words, for option lists.
    fn word_list(&mut self) -> R<Vec<String>> {
        self.expect(b'(', "expected a list")?;
        let mut v = Vec::new();
        if self.eat(b')') {
            return Ok(v);
        }
        loop {
            if v.len() >= MAX_ITEMS {
                return Err("list too long");
            }
            v.push(self.word()?);
            if self.eat(b')') {
                return Ok(v);
            }
            self.sp()?;
        }
    }

    /// Skips a balanced parenthesised list of strings/atoms/NIL (ID's
    /// parameter list): bounded by the command size and [`MAX_DEPTH`].
    fn skip_list(&mut self, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err("too deeply nested");
        }
        self.expect(b'(', "expected a list")?;
        loop {
            match self.peek() {
                Some(b')') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b' ') => self.i += 1,
                Some(b'(') => self.skip_list(depth + 1)?,
                Some(b'"' | b'{') => {
                    self.string()?;
                }
                Some(_) => {
                    self.astring()?;
                }
                None => return Err("unterminated list"),
            }
        }
    }
}

/// `date = date-text / DQUOTE date-text DQUOTE`, as days since 1970-01-01.
fn search_date(p: &mut P<'_>) -> R<i64> {
    let quoted = p.eat(b'"');
    let text = p.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
    if quoted {
        p.expect(b'"', "bad date")?;
    }
    let text = std::str::from_utf8(text).map_err(|_| "bad date")?;
    let d = chrono::NaiveDate::parse_from_str(text, "%d-%b-%Y").map_err(|_| "bad date")?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).ok_or("bad date")?;
    Ok(d.signed_duration_since(epoch).num_days())
}

/// `date-time` of APPEND (RFC 9051 §9): `"dd-Mon-yyyy hh:mm:ss +zzzz"`.
fn date_time(p: &mut P<'_>) -> R<i64> {
    let q = p.quoted()?;
    let s = std::str::from_utf8(&q).map_err(|_| "bad date-time")?;
    let s = s.trim_start();
    let dt =
        chrono::DateTime::parse_from_str(s, "%d-%b-%Y %H:%M:%S %z").map_err(|_| "bad date-time")?;
    Ok(dt.timestamp())
}

fn search_key(p: &mut P<'_>, depth: usize) -> R<SearchKey> {
    if depth > MAX_DEPTH {
        return Err("search program too deeply nested");
    }
    if p.eat(b'(') {
        let mut keys = Vec::new();
        loop {
            if keys.len() >= MAX_ITEMS {
                return Err("too many search keys");
            }
            keys.push(search_key(p, depth + 1)?);
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
        return Ok(SearchKey::And(keys));
    }
    if matches!(p.peek(), Some(b'0'..=b'9' | b'*')) {
        return Ok(SearchKey::SeqSet(p.seq_set()?));
    }
    let w = p.word()?;
    let str_arg = |p: &mut P<'_>| -> R<String> {
        p.sp()?;
        String::from_utf8(p.astring()?).map_err(|_| "invalid UTF-8 in search string")
    };
    let flag = |f: &str| SearchKey::Flag(f.to_string());
    let noflag = |f: &str| SearchKey::NoFlag(f.to_string());
    Ok(match w.as_str() {
        "ALL" => SearchKey::All,
        "ANSWERED" => flag("\\Answered"),
        "DELETED" => flag("\\Deleted"),
        "DRAFT" => flag("\\Draft"),
        "FLAGGED" => flag("\\Flagged"),
        "SEEN" => flag("\\Seen"),
        "UNANSWERED" => noflag("\\Answered"),
        "UNDELETED" => noflag("\\Deleted"),
        "UNDRAFT" => noflag("\\Draft"),
        "UNFLAGGED" => noflag("\\Flagged"),
        "UNSEEN" => noflag("\\Seen"),
        "RECENT" => SearchKey::Recent,
        "NEW" => SearchKey::New,
        "OLD" => SearchKey::Old,
        "KEYWORD" | "UNKEYWORD" => {
            p.sp()?;
            let k = p.flag()?;
            if w == "KEYWORD" {
                SearchKey::Flag(k)
            } else {
                SearchKey::NoFlag(k)
            }
        }
        "BCC" | "CC" | "FROM" | "TO" | "SUBJECT" => {
            let v = str_arg(p)?;
            let field = match w.as_str() {
                "BCC" => "Bcc",
                "CC" => "Cc",
                "FROM" => "From",
                "TO" => "To",
                _ => "Subject",
            };
            SearchKey::Header(field.to_string(), v)
        }
        "HEADER" => {
            let f = str_arg(p)?;
            let v = str_arg(p)?;
            SearchKey::Header(f, v)
        }
        "BODY" => SearchKey::Body(str_arg(p)?),
        "TEXT" => SearchKey::Text(str_arg(p)?),
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
            p.sp()?;
            let d = search_date(p)?;
            let (since, before) = match w.trim_start_matches("SENT") {
                "BEFORE" => (None, Some(d)),
                "ON" => (Some(d), Some(d + 1)),
                _ => (Some(d), None),
            };
            if w.starts_with("SENT") {
                SearchKey::SentDate { since, before }
            } else {
                SearchKey::Date { since, before }
            }
        }
        "LARGER" => {
            p.sp()?;
            SearchKey::Larger(p.number64()?)
        }
        "SMALLER" => {
            p.sp()?;
            SearchKey::Smaller(p.number64()?)
        }
        "UID" => {
            p.sp()?;
            SearchKey::Uid(p.seq_set()?)
        }
        "NOT" => {
            p.sp()?;
            SearchKey::Not(Box::new(search_key(p, depth + 1)?))
        }
        "OR" => {
            p.sp()?;
            let a = search_key(p, depth + 1)?;
            p.sp()?;
            let b = search_key(p, depth + 1)?;
            SearchKey::Or(Box::new(a), Box::new(b))
        }
        "MODSEQ" => {
            // RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
            p.sp()?;
            if p.peek() == Some(b'"') {
                p.quoted()?;
                p.sp()?;
                p.word()?;
                p.sp()?;
            }
            SearchKey::ModSeq(p.number64()?)
        }
        _ => return Err("unknown search key"),
    })
}

fn section(p: &mut P<'_>) -> R<Section> {
    p.expect(b'[', "expected [")?;
    let mut part = Vec::new();
    let mut text = SectionText::None;
    loop {
        if p.eat(b']') {
            return Ok(Section { part, text });
        }
        if matches!(p.peek(), Some(b'0'..=b'9')) {
            if part.len() >= MAX_PART_DEPTH {
                return Err("section too deep");
            }
            part.push(p.nz_number()?);
            if p.eat(b'.') {
                continue;
            }
            p.expect(b']', "bad section")?;
            return Ok(Section { part, text });
        }
        let w = p.word()?;
        text = match w.as_str() {
            "HEADER" => SectionText::Header,
            "TEXT" => SectionText::Text,
            "MIME" if !part.is_empty() => SectionText::Mime,
            "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
                p.sp()?;
                p.expect(b'(', "expected header list")?;
                let mut fields = Vec::new();
                loop {
                    if fields.len() >= MAX_ITEMS {
                        return Err("too many header fields");
                    }
                    fields.push(p.astring_utf8()?);
                    if p.eat(b')') {
                        break;
                    }
                    p.sp()?;
                }
                SectionText::HeaderFields {
                    not: w.ends_with(".NOT"),
                    fields,
                }
            }
            _ => return Err("bad section"),
        };
        p.expect(b']', "bad section")?;
        return Ok(Section { part, text });
    }
}

fn partial(p: &mut P<'_>) -> R<Option<(u32, u32)>> {
    if !p.eat(b'<') {
        return Ok(None);
    }
    let start = p.number()?;
    p.expect(b'.', "bad partial")?;
    let len = p.nz_number()?;
    p.expect(b'>', "bad partial")?;
    Ok(Some((start, len)))
}

fn part_only(p: &mut P<'_>) -> R<Vec<u32>> {
    let s = section(p)?;
    if s.text != SectionText::None {
        return Err("BINARY takes a part number only");
    }
    Ok(s.part)
}

fn fetch_att(p: &mut P<'_>) -> R<FetchAtt> {
    let w = p.word()?;
    Ok(match w.as_str() {
        "UID" => FetchAtt::Uid,
        "FLAGS" => FetchAtt::Flags,
        "INTERNALDATE" => FetchAtt::InternalDate,
        "RFC822.SIZE" => FetchAtt::Rfc822Size,
        "ENVELOPE" => FetchAtt::Envelope,
        "BODYSTRUCTURE" => FetchAtt::BodyStructure,
        "MODSEQ" => FetchAtt::ModSeq,
        "RFC822" => FetchAtt::Rfc822,
        "RFC822.HEADER" => FetchAtt::Rfc822Header,
        "RFC822.TEXT" => FetchAtt::Rfc822Text,
        "BODY" if p.peek() != Some(b'[') => FetchAtt::Body,
        "BODY" | "BODY.PEEK" => {
            let section = section(p)?;
            let partial = partial(p)?;
            FetchAtt::BodySection {
                peek: w == "BODY.PEEK",
                section,
                partial,
            }
        }
        "BINARY" | "BINARY.PEEK" => {
            let part = part_only(p)?;
            let partial = partial(p)?;
            FetchAtt::Binary {
                peek: w == "BINARY.PEEK",
                part,
                partial,
            }
        }
        "BINARY.SIZE" => FetchAtt::BinarySize {
            part: part_only(p)?,
        },
        _ => return Err("unknown fetch item"),
    })
}

fn fetch_atts(p: &mut P<'_>) -> R<Vec<FetchAtt>> {
    use FetchAtt as F;
    if p.eat(b'(') {
        let mut v = Vec::new();
        loop {
            if v.len() >= MAX_ITEMS {
                return Err("too many fetch items");
            }
            v.push(fetch_att(p)?);
            if p.eat(b')') {
                return Ok(v);
            }
            p.sp()?;
        }
    }
    let save = p.i;
    let w = p.word()?;
    // RFC 9051 §6.4.5 macros.
    Ok(match w.as_str() {
        "ALL" => vec![F::Flags, F::InternalDate, F::Rfc822Size, F::Envelope],
        "FAST" => vec![F::Flags, F::InternalDate, F::Rfc822Size],
        "FULL" => vec![
            F::Flags,
            F::InternalDate,
            F::Rfc822Size,
            F::Envelope,
            F::Body,
        ],
        _ => {
            p.i = save;
            vec![fetch_att(p)?]
        }
    })
}

fn status_items(p: &mut P<'_>) -> R<Vec<StatusItem>> {
    let words = p.word_list()?;
    if words.is_empty() {
        return Err("empty status item list");
    }
    words
        .iter()
        .map(|w| {
            Ok(match w.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "DELETED" => StatusItem::Deleted,
                "SIZE" => StatusItem::Size,
                "HIGHESTMODSEQ" => StatusItem::HighestModseq,
                _ => return Err("unknown status item"),
            })
        })
        .collect()
}

fn list_command(p: &mut P<'_>) -> R<CommandKind> {
    let mut select = ListSelect::default();
    let mut ret = ListReturn::default();
    let mut extended = false;
    p.sp()?;
    if p.peek() == Some(b'(') {
        // RFC 5258 §3.1 selection options.
        extended = true;
        for w in p.word_list()? {
            match w.as_str() {
                "SUBSCRIBED" => select.subscribed = true,
                "RECURSIVEMATCH" => select.recursive_match = true,
                "SPECIAL-USE" => select.special_use = true,
                "REMOTE" => {}
                _ => return Err("unknown LIST selection option"),
            }
        }
        if select.recursive_match && !select.subscribed && !select.special_use {
            return Err("RECURSIVEMATCH needs another selection option");
        }
        p.sp()?;
    }
    let reference = p.astring()?;
    p.sp()?;
    let mut patterns = Vec::new();
    if p.eat(b'(') {
        extended = true;
        loop {
            if patterns.len() >= MAX_ITEMS {
                return Err("too many patterns");
            }
            patterns.push(p.list_mailbox()?);
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    } else {
        patterns.push(p.list_mailbox()?);
    }
    if !p.at_end() {
        p.sp()?;
        if p.word()? != "RETURN" {
            return Err("expected RETURN");
        }
        extended = true;
        p.sp()?;
        p.expect(b'(', "expected return options")?;
        if !p.eat(b')') {
            loop {
                match p.word()?.as_str() {
                    "SUBSCRIBED" => ret.subscribed = true,
                    "CHILDREN" => ret.children = true,
                    "SPECIAL-USE" => ret.special_use = true,
                    "STATUS" => {
                        p.sp()?;
                        ret.status = status_items(p)?;
                    }
                    _ => return Err("unknown LIST return option"),
                }
                if p.eat(b')') {
                    break;
                }
                p.sp()?;
            }
        }
    }
    Ok(CommandKind::List {
        reference,
        patterns,
        select,
        ret,
        extended,
    })
}

fn search_command(p: &mut P<'_>, uid: bool) -> Result<CommandKind, (&'static str, bool)> {
    p.sp().map_err(|e| (e, false))?;
    let mut ret = None;
    let save = p.i;
    let first = p.word().unwrap_or_default();
    if first == "RETURN" {
        p.sp().map_err(|e| (e, false))?;
        let mut r = SearchReturn::default();
        for w in p.word_list().map_err(|e| (e, false))? {
            match w.as_str() {
                "MIN" => r.min = true,
                "MAX" => r.max = true,
                "ALL" => r.all = true,
                "COUNT" => r.count = true,
                _ => return Err(("unknown SEARCH return option", false)),
            }
        }
        ret = Some(r.normalised());
        p.sp().map_err(|e| (e, false))?;
    } else {
        p.i = save;
    }
    let save = p.i;
    if p.word().unwrap_or_default() == "CHARSET" {
        p.sp().map_err(|e| (e, false))?;
        let cs = p.astring().map_err(|e| (e, false))?;
        let cs = String::from_utf8_lossy(&cs).to_ascii_uppercase();
        if cs != "UTF-8" && cs != "US-ASCII" {
            return Err(("unsupported charset", true));
        }
        p.sp().map_err(|e| (e, false))?;
    } else {
        p.i = save;
    }
    let mut keys = Vec::new();
    loop {
        if keys.len() >= MAX_ITEMS {
            return Err(("too many search keys", false));
        }
        keys.push(search_key(p, 0).map_err(|e| (e, false))?);
        if p.at_end() {
            break;
        }
        p.sp().map_err(|e| (e, false))?;
    }
    let key = if keys.len() == 1 {
        keys.remove(0)
    } else {
        SearchKey::And(keys)
    };
    Ok(CommandKind::Search { uid, ret, key })
}

fn store_command(p: &mut P<'_>, uid: bool) -> R<CommandKind> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mut unchanged_since = None;
    if p.eat(b'(') {
        // RFC 7162 §3.1.3
        if p.word()? != "UNCHANGEDSINCE" {
            return Err("unknown STORE modifier");
        }
        p.sp()?;
        unchanged_since = Some(p.number64()?);
        p.expect(b')', "expected )")?;
        p.sp()?;
    }
    let op = if p.eat(b'+') {
        StoreOp::Add
    } else if p.eat(b'-') {
        StoreOp::Remove
    } else {
        StoreOp::Replace
    };
    let silent = match p.word()?.as_str() {
        "FLAGS" => false,
        "FLAGS.SILENT" => true,
        _ => return Err("expected FLAGS"),
    };
    p.sp()?;
    let flags = if p.peek() == Some(b'(') {
        p.flag_list()?
    } else {
        let mut v = vec![p.flag()?];
        while p.eat(b' ') {
            if v.len() >= MAX_ITEMS {
                return Err("too many flags");
            }
            v.push(p.flag()?);
        }
        v
    };
    Ok(CommandKind::Store {
        uid,
        set,
        op,
        silent,
        flags,
        unchanged_since,
    })
}

fn fetch_command(p: &mut P<'_>, uid: bool) -> R<CommandKind> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let atts = fetch_atts(p)?;
    let mut changed_since = None;
    if p.eat(b' ') {
        // RFC 7162 §3.1.4 FETCH modifiers.
        p.expect(b'(', "expected FETCH modifiers")?;
        loop {
            match p.word()?.as_str() {
                "CHANGEDSINCE" => {
                    p.sp()?;
                    changed_since = Some(p.number64()?);
                }
                _ => return Err("unknown FETCH modifier"),
            }
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    }
    Ok(CommandKind::Fetch {
        uid,
        set,
        atts,
        changed_since,
    })
}

fn append_command(p: &mut P<'_>) -> R<CommandKind> {
    p.sp()?;
    let mailbox = p.astring()?;
    let mut messages = Vec::new();
    // RFC 3502 MULTIAPPEND: more messages follow, each with its own
    // optional flags and date.
    while p.eat(b' ') {
        if messages.len() >= MAX_APPEND_MESSAGES {
            return Err("too many messages in one APPEND");
        }
        let mut flags = Vec::new();
        let mut date = None;
        if p.peek() == Some(b'(') {
            flags = p.flag_list()?;
            p.sp()?;
        }
        if p.peek() == Some(b'"') {
            date = Some(date_time(p)?);
            p.sp()?;
        }
        let data = p.literal(true)?;
        messages.push(AppendMessage { flags, date, data });
    }
    if messages.is_empty() {
        return Err("APPEND needs a message");
    }
    Ok(CommandKind::Append { mailbox, messages })
}

fn body(p: &mut P<'_>, name: &str) -> Result<CommandKind, (&'static str, bool)> {
    let e = |m| (m, false);
    let mailbox_arg = |p: &mut P<'_>| -> R<Vec<u8>> {
        p.sp()?;
        p.astring()
    };
    Ok(match name {
        "CAPABILITY" => CommandKind::Capability,
        "NOOP" => CommandKind::Noop,
        "LOGOUT" => CommandKind::Logout,
        "STARTTLS" => CommandKind::StartTls,
        "NAMESPACE" => CommandKind::Namespace,
        "IDLE" => CommandKind::Idle,
        "CHECK" => CommandKind::Check,
        "CLOSE" => CommandKind::Close,
        "UNSELECT" => CommandKind::Unselect,
        "EXPUNGE" => CommandKind::Expunge { uids: None },
        "ID" => {
            // RFC 2971: parameters are accepted and ignored.
            p.sp().map_err(e)?;
            if p.peek() == Some(b'(') {
                p.skip_list(0).map_err(e)?;
            } else if p.word().map_err(e)? != "NIL" {
                return Err(e("expected NIL or a list"));
            }
            CommandKind::Id
        }
        "ENABLE" => {
            let mut v = Vec::new();
            while p.eat(b' ') {
                if v.len() >= MAX_ITEMS {
                    return Err(e("too many capabilities"));
                }
                v.push(String::from_utf8_lossy(p.atom().map_err(e)?).to_ascii_uppercase());
            }
            if v.is_empty() {
                return Err(e("ENABLE needs a capability"));
            }
            CommandKind::Enable(v)
        }
        "LOGIN" => {
            let user = mailbox_arg(p).map_err(e)?;
            let pass = mailbox_arg(p).map_err(e)?;
            CommandKind::Login { user, pass }
        }
        "AUTHENTICATE" => {
            p.sp().map_err(e)?;
            let mechanism = p.word().map_err(e)?;
            let initial = if p.eat(b' ') {
                let a = p.take_while(|b| {
                    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
                });
                if a.is_empty() {
                    return Err(e("bad initial response"));
                }
                Some(a.to_vec())
            } else {
                None
            };
            CommandKind::Authenticate { mechanism, initial }
        }
        "SELECT" | "EXAMINE" => {
            let mailbox = mailbox_arg(p).map_err(e)?;
            let mut condstore = false;
            if p.eat(b' ') {
                // RFC 4466 select-params; RFC 7162 §3.1.8 CONDSTORE.
                for w in p.word_list().map_err(e)? {
                    match w.as_str() {
                        "CONDSTORE" => condstore = true,
                        _ => return Err(e("unknown SELECT parameter")),
                    }
                }
            }
            CommandKind::Select {
                mailbox,
                condstore,
                read_only: name == "EXAMINE",
            }
        }
        "CREATE" => {
            let m = mailbox_arg(p).map_err(e)?;
            CommandKind::Create(m)
        }
        "DELETE" => CommandKind::Delete(mailbox_arg(p).map_err(e)?),
        "SUBSCRIBE" => CommandKind::Subscribe(mailbox_arg(p).map_err(e)?),
        "UNSUBSCRIBE" => CommandKind::Unsubscribe(mailbox_arg(p).map_err(e)?),
        "RENAME" => {
            let from = mailbox_arg(p).map_err(e)?;
            let to = mailbox_arg(p).map_err(e)?;
            CommandKind::Rename { from, to }
        }
        "LIST" => list_command(p).map_err(e)?,
        "LSUB" => {
            let reference = mailbox_arg(p).map_err(e)?;
            p.sp().map_err(e)?;
            let pattern = p.list_mailbox().map_err(e)?;
            CommandKind::Lsub { reference, pattern }
        }
        "STATUS" => {
            let mailbox = mailbox_arg(p).map_err(e)?;
            p.sp().map_err(e)?;
            let items = status_items(p).map_err(e)?;
            CommandKind::Status { mailbox, items }
        }
        "APPEND" => append_command(p).map_err(e)?,
        "SEARCH" => search_command(p, false)?,
        "FETCH" => fetch_command(p, false).map_err(e)?,
        "STORE" => store_command(p, false).map_err(e)?,
        "COPY" | "MOVE" => {
            p.sp().map_err(e)?;
            let set = p.seq_set().map_err(e)?;
            let mailbox = mailbox_arg(p).map_err(e)?;
            CommandKind::Copy {
                uid: false,
                set,
                mailbox,
                is_move: name == "MOVE",
            }
        }
        "UID" => {
            p.sp().map_err(e)?;
            let sub = p.word().map_err(e)?;
            match sub.as_str() {
                "SEARCH" => search_command(p, true)?,
                "FETCH" => fetch_command(p, true).map_err(e)?,
                "STORE" => store_command(p, true).map_err(e)?,
                "COPY" | "MOVE" => {
                    p.sp().map_err(e)?;
                    let set = p.seq_set().map_err(e)?;
                    let mailbox = mailbox_arg(p).map_err(e)?;
                    CommandKind::Copy {
                        uid: true,
                        set,
                        mailbox,
                        is_move: sub == "MOVE",
                    }
                }
                "EXPUNGE" => {
                    p.sp().map_err(e)?;
                    CommandKind::Expunge {
                        uids: Some(p.seq_set().map_err(e)?),
                    }
                }
                _ => return Err(e("unknown UID command")),
            }
        }
        _ => return Err(e("unknown command")),
    })
}

/// Parses one complete command (including its final CRLF).
///
/// # Errors
/// A [`ParseError`] carrying the tag when it could be read.
pub fn parse_command(input: &[u8]) -> Result<Command, ParseError> {
    let mut p = P { s: input, i: 0 };
    let tag = p.take_while(|b| is_astring_char(b) && b != b'+');
    if tag.is_empty() || tag.len() > 64 || p.peek() != Some(b' ') {
        return Err(ParseError {
            tag: None,
            msg: "missing or invalid tag",
            bad_charset: false,
        });
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    let fail = |msg, bad_charset| ParseError {
        tag: Some(tag.clone()),
        msg,
        bad_charset,
    };
    p.i += 1;
    let name = p.word().map_err(|m| fail(m, false))?;
    let kind = body(&mut p, &name).map_err(|(m, c)| fail(m, c))?;
    p.end().map_err(|m| fail(m, false))?;
    Ok(Command { tag, kind })
}

/// Reads a SASL client response line (RFC 9051 §6.2.2): base64 or `*`.
/// Returns `None` for a cancellation.
///
/// # Errors
/// When the line is not valid base64.
pub fn parse_sasl_response(line: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    use base64::Engine as _;
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line == b"*" {
        return Ok(None);
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map(Some)
        .map_err(|_| "invalid base64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> CommandKind {
        match parse_command(s.as_bytes()) {
            Ok(c) => c.kind,
            Err(e) => panic!("{s:?}: {e:?}"),
        }
    }

    fn bad(s: &[u8]) -> ParseError {
        match parse_command(s) {
            Ok(c) => panic!("{s:?} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn simple_commands() {
        assert_eq!(ok("a NOOP\r\n"), CommandKind::Noop);
        assert_eq!(ok("a capability\r\n"), CommandKind::Capability);
        assert_eq!(
            ok("a1.x UID EXPUNGE 1:3\r\n"),
            CommandKind::Expunge {
                uids: Some(SeqSet(vec![SeqRange {
                    first: Some(1),
                    last: Some(3)
                }]))
            }
        );
        assert_eq!(
            ok("a ID (\"name\" \"x\" \"version\" NIL)\r\n"),
            CommandKind::Id
        );
        assert_eq!(
            ok("a ENABLE IMAP4rev2 condstore\r\n"),
            CommandKind::Enable(vec!["IMAP4REV2".into(), "CONDSTORE".into()])
        );
    }

    #[test]
    fn login_forms() {
        let want = CommandKind::Login {
            user: b"bob".to_vec(),
            pass: b"p w\"".to_vec(),
        };
        assert_eq!(ok("a LOGIN bob \"p w\\\"\"\r\n"), want);
        assert_eq!(ok("a LOGIN {3}\r\nbob {4+}\r\np w\"\r\n"), want);
        let e = bad(b"a LOGIN \"us\x00er\" \"pw\"\r\n");
        assert_eq!(e.tag.as_deref(), Some("a"));
        bad(b"a LOGIN {3}\r\nb\x00b pw\r\n");
    }

    #[test]
    fn fetch_items() {
        let k = ok(
            "a FETCH 1:*,3 (UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject From)]<0.100> BODY[1.2.MIME] BINARY[1] RFC822.SIZE) (CHANGEDSINCE 5)\r\n",
        );
        let CommandKind::Fetch {
            uid,
            set,
            atts,
            changed_since,
        } = k
        else {
            panic!()
        };
        assert!(!uid);
        assert_eq!(set.0.len(), 2);
        assert_eq!(changed_since, Some(5));
        assert_eq!(
            atts[2],
            FetchAtt::BodySection {
                peek: true,
                section: Section {
                    part: vec![],
                    text: SectionText::HeaderFields {
                        not: false,
                        fields: vec!["Subject".into(), "From".into()]
                    }
                },
                partial: Some((0, 100)),
            }
        );
        assert_eq!(
            atts[3],
            FetchAtt::BodySection {
                peek: false,
                section: Section {
                    part: vec![1, 2],
                    text: SectionText::Mime
                },
                partial: None
            }
        );
        assert_eq!(ok("a UID FETCH 1 ALL\r\n").name(), "FETCH");
        assert_eq!(
            ok("a FETCH 1 BODY[]\r\n"),
            CommandKind::Fetch {
                uid: false,
                set: SeqSet(vec![SeqRange {
                    first: Some(1),
                    last: Some(1)
                }]),
                atts: vec![FetchAtt::BodySection {
                    peek: false,
                    section: Section {
                        part: vec![],
                        text: SectionText::None
                    },
                    partial: None
                }],
                changed_since: None
            }
        );
        bad(b"a FETCH 0 FLAGS\r\n");
        bad(b"a FETCH 1 BODY[]<4294967296.1>\r\n");
        bad(b"a FETCH 1 BODY[MIME]\r\n");
    }

    #[test]
    fn deep_section_is_bounded() {
        let mut s = b"a FETCH 1 BODY[".to_vec();
        for _ in 0..1000 {
            s.extend_from_slice(b"1.");
        }
        s.extend_from_slice(b"1]\r\n");
        bad(&s);
    }

    #[test]
    fn search_programs() {
        let k = ok(
            "a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR SEEN NOT (FROM \"bob\" SINCE 1-Feb-2024) 1:5 UID 7:*\r\n",
        );
        let CommandKind::Search {
            uid: true,
            ret: Some(r),
            key: SearchKey::And(keys),
        } = k
        else {
            panic!("{k:?}")
        };
        assert!(r.min && r.count && !r.all);
        assert_eq!(keys.len(), 3);
        assert!(matches!(&keys[0], SearchKey::Or(..)));
        let e = bad(b"a SEARCH CHARSET KOI8-R ALL\r\n");
        assert!(e.bad_charset);
        assert_eq!(
            ok("a SEARCH ON 1-Jan-1970\r\n"),
            CommandKind::Search {
                uid: false,
                ret: None,
                key: SearchKey::Date {
                    since: Some(0),
                    before: Some(1)
                }
            }
        );
        // 4,000 nested parentheses: BAD, no stack overflow.
        let mut s = b"a SEARCH ".to_vec();
        s.extend(std::iter::repeat_n(b'(', 4000));
        s.extend_from_slice(b"ALL");
        s.extend(std::iter::repeat_n(b')', 4000));
        s.extend_from_slice(b"\r\n");
        bad(&s);
    }

    #[test]
    fn store_and_copy() {
        assert_eq!(
            ok("a STORE 1 +FLAGS.SILENT (\\seen $Junk)\r\n"),
            CommandKind::Store {
                uid: false,
                set: SeqSet(vec![SeqRange {
                    first: Some(1),
                    last: Some(1)
                }]),
                op: StoreOp::Add,
                silent: true,
                flags: vec!["\\Seen".into(), "$Junk".into()],
                unchanged_since: None
            }
        );
        let k = ok("a UID STORE 1:* (UNCHANGEDSINCE 9) -FLAGS \\Deleted\r\n");
        assert!(matches!(
            k,
            CommandKind::Store {
                uid: true,
                op: StoreOp::Remove,
                unchanged_since: Some(9),
                ..
            }
        ));
        assert!(matches!(
            ok("a UID MOVE 1:2 Trash\r\n"),
            CommandKind::Copy {
                uid: true,
                is_move: true,
                ..
            }
        ));
        bad(b"a STORE 1 +FLAGS (\\Bogus)\r\n");
    }

    #[test]
    fn list_forms() {
        let k = ok(
            "a LIST (SUBSCRIBED) \"\" (\"INBOX\" \"*\") RETURN (CHILDREN STATUS (MESSAGES SIZE) SPECIAL-USE)\r\n",
        );
        let CommandKind::List {
            patterns,
            select,
            ret,
            extended,
            ..
        } = k
        else {
            panic!()
        };
        assert!(extended && select.subscribed && ret.children && ret.special_use);
        assert_eq!(patterns.len(), 2);
        assert_eq!(ret.status, vec![StatusItem::Messages, StatusItem::Size]);
        assert!(matches!(
            ok("a LIST \"\" %\r\n"),
            CommandKind::List {
                extended: false,
                ..
            }
        ));
        assert!(matches!(ok("a LSUB \"\" *\r\n"), CommandKind::Lsub { .. }));
    }

    #[test]
    fn append_forms() {
        let k = ok("a APPEND INBOX (\\Seen) \" 5-Mar-2024 10:00:00 +0100\" {5}\r\nhello\r\n");
        let CommandKind::Append {
            mailbox,
            mut messages,
        } = k
        else {
            panic!()
        };
        assert_eq!(mailbox, b"INBOX");
        assert_eq!(messages.len(), 1);
        let message = messages.remove(0);
        assert_eq!(message.flags, vec!["\\Seen".to_string()]);
        assert_eq!(message.date, Some(1_709_629_200));
        assert_eq!(message.data, b"hello");
        assert!(matches!(
            ok("a APPEND x ~{3+}\r\na\x00b\r\n"),
            CommandKind::Append { .. }
        ));
        // RFC 3502 MULTIAPPEND.
        let k = ok(
            "a APPEND x {1+}\r\na (\\Seen) {1+}\r\nb \"01-Jan-2020 00:00:00 +0000\" {1+}\r\nc\r\n",
        );
        let CommandKind::Append { messages, .. } = k else {
            panic!()
        };
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1].flags, vec!["\\Seen".to_string()]);
        assert_eq!(messages[2].data, b"c");
        bad(b"a APPEND x\r\n");
        bad(b"a APPEND x {1+}\r\na \r\n");
    }

    #[test]
    fn garbage_is_bad_not_panic() {
        for s in [
            &b"\r\n"[..],
            b"a\r\n",
            b"a FOO\r\n",
            b"a FETCH\r\n",
            b"a FETCH 1:",
            b"a LOGIN {99}\r\nab\r\n",
            b"a SELECT INBOX (",
            b"a SEARCH OR\r\n",
            b"a STATUS x ()\r\n",
            b"+ NOOP\r\n",
        ] {
            let _ = bad(s);
        }
    }

    #[test]
    fn sasl_response() {
        assert_eq!(parse_sasl_response(b"*\r\n"), Ok(None));
        assert_eq!(
            parse_sasl_response(b"AGJvYgBwdw==\r\n"),
            Ok(Some(b"\0bob\0pw".to_vec()))
        );
        assert!(parse_sasl_response(b"!!\r\n").is_err());
    }

    /// Every command of the table, framed and parsed after being split
    /// at every byte boundary, parses exactly as the unsplit command.
    #[test]
    fn split_at_every_boundary() {
        use crate::framing::{Frame, Framer, Limits};
        let table: &[&[u8]] = &[
            b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n",
            b"a1 UID FETCH 1:*,7 (FLAGS BODY.PEEK[HEADER.FIELDS (From)]<0.9>) (CHANGEDSINCE 4)\r\n",
            b"t APPEND INBOX (\\Seen) {11}\r\nSub: x\r\n\r\nb\r\n",
            b"x SEARCH RETURN (COUNT) OR (FROM {3}\r\nbob) UNSEEN\r\n",
            b"y LIST (SUBSCRIBED) \"\" (\"*\" %) RETURN (STATUS (MESSAGES))\r\n",
            b"z STORE 1:3 -FLAGS.SILENT (\\Deleted)\r\n",
        ];
        let limits = Limits::default();
        for cmd in table {
            let whole = parse_command(cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e:?}"));
            for cut in 1..cmd.len() {
                let mut f = Framer::new();
                let mut buf = cmd[..cut].to_vec();
                let mut done = None;
                for chunk in [&cmd[cut..], &b""[..]] {
                    let mut last_continue = false;
                    while done.is_none() {
                        match f.advance(&buf, &limits, true) {
                            Frame::Complete(n) => done = Some(n),
                            Frame::Incomplete => break,
                            Frame::Continue => {
                                // Each literal is announced once; the next call
                                // with the same input must not announce again.
                                assert!(!last_continue, "{cmd:?} cut {cut}: Continue twice");
                                last_continue = true;
                            }
                            other => panic!("{cmd:?} cut {cut}: {other:?}"),
                        }
                    }
                    if done.is_some() {
                        break;
                    }
                    buf.extend_from_slice(chunk);
                }
                let n = done.unwrap_or_else(|| panic!("{cmd:?} cut {cut}: never complete"));
                assert_eq!(n, cmd.len());
                assert_eq!(
                    parse_command(&buf[..n]).ok().as_ref(),
                    Some(&whole),
                    "{cmd:?} cut {cut}"
                );
            }
        }
    }

    /// A poor man's fuzzer (cargo-fuzz needs nightly): random mutations of
    /// real commands through the framer and the parser never panic.
    #[test]
    fn random_mutations_never_panic() {
        use crate::framing::{Frame, Framer, Limits};
        let seeds: &[&[u8]] = &[
            b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n",
            b"a1 UID FETCH 1:*,7 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS.NOT (From)]<0.9> BINARY[1]) (CHANGEDSINCE 4)\r\n",
            b"t APPEND INBOX (\\Seen) \" 1-Jan-2020 00:00:00 +0000\" ~{3}\r\na\x00b\r\n",
            b"x UID SEARCH RETURN (MIN) CHARSET UTF-8 OR (FROM x NOT SEEN) 1:3 HEADER a b SENTON 1-Feb-2000\r\n",
            b"y LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"*\" %) RETURN (CHILDREN STATUS (MESSAGES SIZE))\r\n",
            b"z UID STORE 1:3 (UNCHANGEDSINCE 5) -FLAGS.SILENT (\\Deleted $x)\r\n",
            b"s SELECT \"&AOk-t&AOk-\" (CONDSTORE)\r\n",
        ];
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let limits = Limits {
            max_line: 4096,
            max_literal: 4096,
            max_command: 16 * 1024,
            ..Limits::default()
        };
        for round in 0..20_000u32 {
            let seed = seeds[round as usize % seeds.len()];
            let mut v = seed.to_vec();
            let edits = 1 + next() % 4;
            for _ in 0..edits {
                let i = usize::try_from(next() % (v.len() as u64 + 1)).unwrap_or(0);
                let b = u8::try_from(next() % 256).unwrap_or(0);
                match next() % 4 {
                    0 if i < v.len() => v[i] = b,
                    1 => {
                        let alphabet = b"(){}[]<>*%\\\" \r\n0123456789+-.:~";
                        let k = usize::try_from(next() % alphabet.len() as u64).unwrap_or(0);
                        v.insert(i, alphabet[k]);
                    }
                    2 if i < v.len() => {
                        v.remove(i);
                    }
                    _ => v.insert(i, b),
                }
            }
            let _ = parse_command(&v);
            let mut f = Framer::new();
            let mut off = 0;
            for _ in 0..8 {
                match f.advance(&v[off..], &limits, true) {
                    Frame::Complete(n) => {
                        let _ = parse_command(&v[off..off + n]);
                        off += n;
                    }
                    Frame::Reject { consume, .. } => off += consume,
                    _ => break,
                }
                if off >= v.len() {
                    break;
                }
            }
        }
    }
}
