//! The lexical layer of the grammar (RFC 9051 §9 core rules): a cursor
//! over one framed command with atoms, numbers, strings and literals,
//! sequence sets and flags. Every list it reads is bounded.

use crate::command::{SeqRange, SeqSet};

use super::{MAX_DEPTH, MAX_ITEMS, MAX_SEQ_RANGES};

/// Result of a grammar rule: the message becomes the `BAD` text.
pub(super) type R<T> = Result<T, &'static str>;

/// A cursor over one complete command.
pub(super) struct P<'a> {
    pub(super) s: &'a [u8],
    pub(super) i: usize,
}

fn is_atom_char(b: u8) -> bool {
    // RFC 9051 §9: ATOM-CHAR = any CHAR except atom-specials
    // ( "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials ).
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

pub(super) fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

impl<'a> P<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    pub(super) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn expect(&mut self, b: u8, msg: &'static str) -> R<()> {
        if self.eat(b) { Ok(()) } else { Err(msg) }
    }

    pub(super) fn sp(&mut self) -> R<()> {
        self.expect(b' ', "expected a space")
    }

    pub(super) fn at_end(&self) -> bool {
        matches!(&self.s[self.i..], b"\r\n" | b"\n")
    }

    pub(super) fn end(&mut self) -> R<()> {
        if self.at_end() {
            self.i = self.s.len();
            Ok(())
        } else {
            Err("unexpected characters at end of command")
        }
    }

    pub(super) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    pub(super) fn atom(&mut self) -> R<&'a [u8]> {
        let a = self.take_while(is_atom_char);
        if a.is_empty() {
            Err("expected an atom")
        } else {
            Ok(a)
        }
    }

    /// An atom, upper-cased (command names, keywords of the grammar).
    pub(super) fn word(&mut self) -> R<String> {
        let w =
            self.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'=');
        if w.is_empty() {
            return Err("expected a keyword");
        }
        Ok(String::from_utf8_lossy(w).to_ascii_uppercase())
    }

    pub(super) fn number64(&mut self) -> R<u64> {
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

    pub(super) fn number(&mut self) -> R<u32> {
        u32::try_from(self.number64()?).map_err(|_| "number too large")
    }

    pub(super) fn nz_number(&mut self) -> R<u32> {
        match self.number()? {
            0 => Err("zero is not allowed here"),
            n => Ok(n),
        }
    }

    pub(super) fn quoted(&mut self) -> R<Vec<u8>> {
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
    pub(super) fn literal(&mut self, binary: bool) -> R<Vec<u8>> {
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

    pub(super) fn string(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(false),
            _ => Err("expected a string"),
        }
    }

    pub(super) fn astring(&mut self) -> R<Vec<u8>> {
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

    pub(super) fn astring_utf8(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "invalid UTF-8")
    }

    pub(super) fn list_mailbox(&mut self) -> R<Vec<u8>> {
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

    pub(super) fn seq_number(&mut self) -> R<Option<u32>> {
        if self.eat(b'*') {
            Ok(None)
        } else {
            self.nz_number().map(Some)
        }
    }

    pub(super) fn seq_set(&mut self) -> R<SeqSet> {
        // RFC 5182 §4: `sequence-set =/ seq-last-command` ("$" alone).
        if self.eat(b'$') {
            return Ok(SeqSet::saved());
        }
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

    pub(super) fn flag(&mut self) -> R<String> {
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

    pub(super) fn flag_list(&mut self) -> R<Vec<String>> {
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
    pub(super) fn word_list(&mut self) -> R<Vec<String>> {
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
    pub(super) fn skip_list(&mut self, depth: usize) -> R<()> {
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
