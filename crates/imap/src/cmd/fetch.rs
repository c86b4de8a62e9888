//! FETCH and UID FETCH (RFC 9051 §6.4.5, §7.5.2), BINARY (RFC 3516) and CONDSTORE's
//! CHANGEDSINCE / MODSEQ (RFC 7162 §3.1.4).
//!
//! Metadata comes from the store's `FetchMeta` stream in batches; bodies
//! from `FetchBody` byte ranges computed from the stored structure, each
//! written to the client as it arrives, so memory stays bounded by a batch
//! of metadata plus one chunk whatever the size of `1:*`. Only BINARY
//! (which must decode before it knows the length) and HEADER.FIELDS load
//! one part at a time.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{FetchAtt, Section, SectionText, SeqSet};
use crate::io::Io;
use crate::model::{BodyPart, FlagOp};
use crate::objectid::email_id;
use crate::preview;
use crate::response::{self, Code, Status, Tree, Vecw};
use crate::session::Session;
use crate::store::store_error;

/// Which byte range of the raw message a section names.
fn section_range(tree: &Tree<'_>, section: &Section, size: u64) -> Option<(u64, u64)> {
    if tree.parts.is_empty() {
        return match (&section.text, section.part.is_empty()) {
            (SectionText::None, true) => Some((0, size)),
            _ => None,
        };
    }
    let i = tree.resolve(&section.part)?;
    let p = &tree.parts[i];
    let msg = |i: usize| -> usize {
        // HEADER/TEXT of part n address the encapsulated message.
        if section.part.is_empty() {
            0
        } else {
            tree.inner(i).unwrap_or(usize::MAX)
        }
    };
    let r = match &section.text {
        SectionText::None if section.part.is_empty() => (0, size),
        SectionText::None => (p.body_offset, p.end_offset),
        SectionText::Mime => (p.header_offset, p.body_offset),
        SectionText::Header | SectionText::HeaderFields { .. } => {
            let m = tree.parts.get(msg(i))?;
            (m.header_offset, m.body_offset)
        }
        SectionText::Text => {
            let m = tree.parts.get(msg(i))?;
            // The text of an encapsulated message runs to the end of the
            // message/rfc822 part: a multipart body's epilogue included.
            let end = if section.part.is_empty() {
                m.end_offset
            } else {
                p.end_offset
            };
            (m.body_offset, end)
        }
    };
    (r.0 <= r.1 && r.1 <= size).then_some(r)
}

/// The section spec as echoed in the response (`1.HEADER.FIELDS (A B)`).
fn section_name(section: &Section) -> String {
    let mut s = section
        .part
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".");
    let text = match &section.text {
        SectionText::None => return s,
        SectionText::Header => "HEADER".to_string(),
        SectionText::Text => "TEXT".to_string(),
        SectionText::Mime => "MIME".to_string(),
        SectionText::HeaderFields { not, fields } => {
            format!(
                "HEADER.FIELDS{} ({})",
                if *not { ".NOT" } else { "" },
                fields.join(" ").to_ascii_uppercase()
            )
        }
    };
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(&text);
    s
}

/// Keeps (or drops, with `not`) the named fields of a header block, plus
/// the blank line that ends it (RFC 9051 §6.4.5 HEADER.FIELDS).
#[must_use]
pub fn filter_header(raw: &[u8], fields: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        // One field: a line plus its continuation lines.
        let mut end = i;
        loop {
            match raw[end..].iter().position(|&b| b == b'\n') {
                Some(lf) => end += lf + 1,
                None => {
                    end = raw.len();
                    break;
                }
            }
            if !matches!(raw.get(end), Some(b' ' | b'\t')) {
                break;
            }
        }
        let field = &raw[i..end];
        if field == b"\r\n" || field == b"\n" {
            break;
        }
        let name_end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
        let name = String::from_utf8_lossy(&field[..name_end]);
        let name = name.trim();
        let listed = fields.iter().any(|f| f.eq_ignore_ascii_case(name));
        if listed != not {
            out.extend_from_slice(field);
        }
        i = end;
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Decodes a Content-Transfer-Encoding for BINARY (RFC 3516 §4.2);
/// `None` for an unknown encoding.
fn decode_cte(encoding: Option<&[u8]>, data: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let enc = encoding
        .map(|e| String::from_utf8_lossy(e).trim().to_ascii_lowercase())
        .unwrap_or_default();
    match enc.as_str() {
        "" | "7bit" | "8bit" | "binary" => Some(data.to_vec()),
        "base64" => {
            let clean: Vec<u8> = data
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&clean)
                .or_else(|_| {
                    base64::engine::general_purpose::STANDARD_NO_PAD.decode(clean.trim_ascii_end())
                })
                .ok()
        }
        "quoted-printable" => Some(decode_qp(data)),
        _ => None,
    }
}

/// Quoted-printable decoding (RFC 2045 §6.7), line by line: trailing
/// white space is transport padding and is dropped (rule 3), a final `=`
/// joins the next line (rule 5), `=XX` is an octet; a malformed `=` stays
/// as it is. Line ends come out as CRLF.
fn decode_qp(data: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while !rest.is_empty() {
        let (line, has_eol, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.trim_ascii_end();
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'='
                && let (Some(a), Some(b)) = (
                    line.get(i + 1).and_then(|&c| hex(c)),
                    line.get(i + 2).and_then(|&c| hex(c)),
                )
            {
                out.push(a * 16 + b);
                i += 3;
                continue;
            }
            out.push(line[i]);
            i += 1;
        }
        if has_eol && !soft {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

fn needs_structure(a: &FetchAtt) -> bool {
    match a {
        FetchAtt::Envelope
        | FetchAtt::Body
        | FetchAtt::BodyStructure
        | FetchAtt::Rfc822Header
        | FetchAtt::Rfc822Text => true,
        FetchAtt::BodySection { section, .. } => {
            !section.part.is_empty() || section.text != SectionText::None
        }
        FetchAtt::Binary { part, .. } | FetchAtt::BinarySize { part } => !part.is_empty(),
        _ => false,
    }
}

fn sets_seen(a: &FetchAtt) -> bool {
    matches!(
        a,
        FetchAtt::Rfc822
            | FetchAtt::Rfc822Text
            | FetchAtt::BodySection { peek: false, .. }
            | FetchAtt::Binary { peek: false, .. }
    )
}

impl Session {
    /// Streams `length` bytes at `offset` of message `uid` as a literal,
    /// after `prefix` (the response so far, written and cleared once the
    /// store has answered). `Ok(false)`, with nothing written, when
    /// `can_skip` and the store has no such message (expunged meanwhile).
    #[allow(clippy::too_many_arguments)]
    async fn body_literal<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        prefix: &mut Vec<u8>,
        can_skip: bool,
        mailbox_id: u64,
        uid: u32,
        offset: u64,
        length: u64,
    ) -> std::io::Result<bool> {
        let mut stream = None;
        let mut first = None;
        if length > 0 {
            match self
                .store()
                .fetch_body(mailbox_id, uid, offset, length)
                .await
            {
                Ok(mut s) => match s.next_chunk().await {
                    Ok(Some(c)) => {
                        first = Some(c);
                        stream = Some(s);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, uid, "body stream failed"),
                },
                Err(e) => tracing::debug!(error = %e, uid, "fetch body failed"),
            }
            if first.is_none() && can_skip {
                return Ok(false);
            }
        }
        io.write(prefix);
        prefix.clear();
        io.write(format!("{{{length}}}\r\n").as_bytes());
        let mut sent = 0u64;
        let mut chunk = first;
        while let Some(c) = chunk.take() {
            let take = usize::try_from((length - sent).min(c.len() as u64)).unwrap_or(0);
            io.write(&c[..take]);
            sent += take as u64;
            io.maybe_flush().await?;
            if sent >= length {
                break;
            }
            if let Some(s) = stream.as_mut() {
                match s.next_chunk().await {
                    Ok(next) => chunk = next,
                    Err(e) => tracing::warn!(error = %e, uid, "body stream failed"),
                }
            }
        }
        // The literal length is promised: pad if the store came up short
        // (message expunged under us), so the protocol stays in sync.
        if sent < length {
            let pad = vec![b' '; usize::try_from(length - sent).unwrap_or(0)];
            io.write(&pad);
        }
        Ok(true)
    }

    /// Loads a (small, bounded by the message size limit) byte range.
    async fn load_range(
        &self,
        mailbox_id: u64,
        uid: u32,
        offset: u64,
        length: u64,
    ) -> Option<Vec<u8>> {
        if length == 0 {
            return Some(Vec::new());
        }
        let mut s = self
            .store()
            .fetch_body(mailbox_id, uid, offset, length)
            .await
            .ok()?;
        let mut out = Vec::new();
        while let Ok(Some(c)) = s.next_chunk().await {
            out.extend_from_slice(&c);
            if out.len() as u64 >= length {
                break;
            }
        }
        // Short: the message was expunged meanwhile (or the store failed).
        if (out.len() as u64) < length {
            return None;
        }
        out.truncate(usize::try_from(length).unwrap_or(usize::MAX));
        Some(out)
    }

    /// FETCH / UID FETCH.
    pub(super) async fn fetch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uid_cmd: bool,
        set: &SeqSet,
        atts: &[FetchAtt],
        changed_since: Option<u64>,
        vanished: bool,
    ) -> std::io::Result<Status> {
        if changed_since.is_some() || atts.contains(&FetchAtt::ModSeq) {
            self.enable_condstore(io);
        }
        // RFC 7162 §3.2.6: VANISHED needs QRESYNC enabled; the expunged
        // UIDs of the set come first, as VANISHED (EARLIER).
        if vanished {
            if !self.enabled.qresync {
                return Ok(Status::bad("QRESYNC is not enabled"));
            }
            if self.selected().is_some() {
                let within = super::qresync::ranges(set);
                self.vanished_earlier(io, changed_since.unwrap_or(0), Some(&within))
                    .await;
            }
        }
        let qresync = self.enabled.qresync;
        let condstore = self.enabled.condstore;
        let utf8 = self.utf8();
        let rev2 = self.enabled.rev2;
        let store = self.store();
        let Some(mb) = self.selected() else {
            return Ok(Status::bad("No mailbox selected"));
        };
        let uids = mb.resolve(set, uid_cmd);
        if uids.is_empty() {
            return Ok(Status::ok("FETCH completed"));
        }
        let (mailbox_id, read_only) = (mb.id, mb.read_only);
        let with_structure = atts.iter().any(needs_structure);
        // RFC 9051 §6.4.5: BODY[...] (not PEEK) sets \Seen; FLAGS then follow.
        let mark_seen = !read_only && atts.iter().any(sets_seen);
        let mut seen_before: Vec<u32> = Vec::new();
        if mark_seen {
            let unseen: Vec<u32> = uids
                .iter()
                .copied()
                .filter(|u| {
                    mb.seq_of(*u)
                        .is_some_and(|s| !mb.flags[s as usize - 1].iter().any(|f| f == "\\Seen"))
                })
                .collect();
            if !unseen.is_empty() {
                let seen = vec!["\\Seen".into()];
                if let Err(e) = store
                    .store_flags(mailbox_id, &unseen, FlagOp::Add, seen, 0)
                    .await
                {
                    return Ok(store_error(&e));
                }
            }
            seen_before = unseen;
        }
        let mut items: Vec<FetchAtt> = atts.to_vec();
        // RFC 7162 §3.2.4: with QRESYNC every FETCH response has the UID.
        if (uid_cmd || qresync) && !items.contains(&FetchAtt::Uid) {
            items.insert(0, FetchAtt::Uid);
        }
        if changed_since.is_some() && !items.contains(&FetchAtt::ModSeq) {
            items.push(FetchAtt::ModSeq);
        }
        let stream = store
            .fetch_meta(
                mailbox_id,
                Some(&uids),
                changed_since.unwrap_or(0),
                with_structure,
            )
            .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => return Ok(store_error(&e)),
        };
        let mut unknown_cte = false;
        let (mut answered, mut gone) = (0usize, false);
        loop {
            let batch = match stream.next_batch().await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "fetch meta stream failed");
                    return Ok(store_error(&e));
                }
            };
            for m in batch {
                let Some(mb) = self.selected() else { break };
                let Some(seq) = mb.seq_of(m.uid) else {
                    continue;
                };
                let idx = seq as usize - 1;
                let ann = mb.announce(&m.flags);
                io.write(&ann);
                let flags_changed = seen_before.binary_search(&m.uid).is_ok();
                mb.flags.set(idx, m.flags.clone());
                let recent = !rev2 && mb.is_recent(m.uid);
                answered += 1;
                let mut out: Vec<u8> = format!("* {seq} FETCH (").into_bytes();
                let mut first = true;
                // Nothing of this message's response written yet: it can
                // still be left out if the message turns out expunged.
                let mut fresh = true;
                let mut skip = false;
                let structure = m.structure.as_ref();
                let parts: &[BodyPart] = structure.map_or(&[], |s| s.parts.as_slice());
                let tree = Tree::new(parts);
                let mut list = items.clone();
                if flags_changed && !list.contains(&FetchAtt::Flags) {
                    list.push(FetchAtt::Flags);
                }
                for att in &list {
                    if !first {
                        out.push(b' ');
                    }
                    first = false;
                    match att {
                        FetchAtt::Uid => {
                            let _ = write!(Vecw(&mut out), "UID {}", m.uid);
                        }
                        FetchAtt::Flags => {
                            out.extend_from_slice(b"FLAGS ");
                            response::flag_list(&mut out, &m.flags, recent);
                        }
                        FetchAtt::InternalDate => {
                            out.extend_from_slice(b"INTERNALDATE ");
                            out.extend_from_slice(response::date_time(m.internal_date).as_bytes());
                        }
                        FetchAtt::Rfc822Size => {
                            let _ = write!(Vecw(&mut out), "RFC822.SIZE {}", m.size);
                        }
                        FetchAtt::ModSeq => {
                            let _ = write!(Vecw(&mut out), "MODSEQ ({})", m.modseq);
                        }
                        FetchAtt::Envelope => {
                            out.extend_from_slice(b"ENVELOPE ");
                            let env = structure
                                .and_then(|s| s.envelope.clone())
                                .unwrap_or_default();
                            response::envelope(&mut out, &env, utf8);
                        }
                        FetchAtt::Body | FetchAtt::BodyStructure => {
                            let ext = *att == FetchAtt::BodyStructure;
                            out.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                            if parts.is_empty() {
                                out.extend_from_slice(
                                    b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)",
                                );
                            } else {
                                tree.body(&mut out, 0, ext, utf8, 0);
                            }
                        }
                        FetchAtt::Rfc822
                        | FetchAtt::Rfc822Header
                        | FetchAtt::Rfc822Text
                        | FetchAtt::BodySection { .. } => {
                            let Some((label, section, partial)) = body_item(att) else {
                                continue;
                            };
                            out.extend_from_slice(label.as_bytes());
                            out.push(b' ');
                            let Some((start, end)) = section_range(&tree, &section, m.size) else {
                                // RFC 9051 §6.4.5: a nonexistent section is empty.
                                out.extend_from_slice(b"\"\"");
                                continue;
                            };
                            if let SectionText::HeaderFields { not, fields } = &section.text {
                                let raw =
                                    self.load_range(mailbox_id, m.uid, start, end - start).await;
                                if raw.is_none() && fresh {
                                    skip = true;
                                    break;
                                }
                                let filtered =
                                    filter_header(&raw.unwrap_or_default(), fields, *not);
                                let slice = apply_partial(&filtered, partial);
                                let _ = write!(Vecw(&mut out), "{{{}}}\r\n", slice.len());
                                out.extend_from_slice(slice);
                                continue;
                            }
                            let (s, e) = match partial {
                                Some((o, l)) => {
                                    let s = start.saturating_add(u64::from(o)).min(end);
                                    (s, s.saturating_add(u64::from(l)).min(end))
                                }
                                None => (start, end),
                            };
                            if !self
                                .body_literal(io, &mut out, fresh, mailbox_id, m.uid, s, e - s)
                                .await?
                            {
                                skip = true;
                                break;
                            }
                            fresh = false;
                        }
                        // RFC 8474 §5.1, §5.2 (see `crate::objectid`).
                        FetchAtt::EmailId => {
                            let _ = write!(Vecw(&mut out), "EMAILID ({})", email_id(&m.blob_id));
                        }
                        FetchAtt::ThreadId => out.extend_from_slice(b"THREADID NIL"),
                        // RFC 8970 §3 (see `crate::preview`).
                        FetchAtt::Preview { lazy } => {
                            out.extend_from_slice(b"PREVIEW ");
                            if *lazy && m.size > preview::LAZY_MAX_SIZE {
                                out.extend_from_slice(b"NIL");
                                continue;
                            }
                            let len = m.size.min(preview::MAX_PREVIEW_INPUT);
                            let Some(raw) = self.load_range(mailbox_id, m.uid, 0, len).await else {
                                if fresh {
                                    skip = true;
                                    break;
                                }
                                out.extend_from_slice(b"NIL");
                                continue;
                            };
                            let text = preview::preview(&raw);
                            response::string(&mut out, text.as_bytes(), utf8);
                        }
                        FetchAtt::Binary { part, .. } | FetchAtt::BinarySize { part } => {
                            let section = Section {
                                part: part.clone(),
                                text: SectionText::None,
                            };
                            let Some((start, end)) = section_range(&tree, &section, m.size) else {
                                out.extend_from_slice(b"NIL");
                                continue;
                            };
                            let enc = if part.is_empty() {
                                None
                            } else {
                                tree.resolve(part)
                                    .and_then(|i| tree.parts[i].encoding.clone())
                            };
                            let raw = self.load_range(mailbox_id, m.uid, start, end - start).await;
                            if raw.is_none() && fresh {
                                skip = true;
                                break;
                            }
                            let raw = raw.unwrap_or_default();
                            let Some(decoded) = decode_cte(enc.as_deref(), &raw) else {
                                unknown_cte = true;
                                out.extend_from_slice(b"NIL");
                                continue;
                            };
                            let name = part
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(".");
                            if let FetchAtt::Binary { partial, .. } = att {
                                let slice = apply_partial(&decoded, *partial);
                                let _ = write!(Vecw(&mut out), "BINARY[{name}]");
                                if let Some((o, _)) = partial {
                                    let _ = write!(Vecw(&mut out), "<{o}>");
                                }
                                let tilde = if slice.contains(&0) { "~" } else { "" };
                                let _ = write!(Vecw(&mut out), " {tilde}{{{}}}\r\n", slice.len());
                                out.extend_from_slice(slice);
                            } else {
                                let _ =
                                    write!(Vecw(&mut out), "BINARY.SIZE[{name}] {}", decoded.len());
                            }
                        }
                    }
                }
                if skip {
                    gone = true;
                    continue;
                }
                if flags_changed && condstore && !list.contains(&FetchAtt::ModSeq) {
                    let _ = write!(Vecw(&mut out), " MODSEQ ({})", m.modseq);
                }
                out.extend_from_slice(b")\r\n");
                io.write(&out);
                io.maybe_flush().await?;
            }
        }
        if unknown_cte {
            return Ok(Status::no("Unknown Content-Transfer-Encoding").with(Code::Cannot));
        }
        // Expunged by another session since this one last heard (RFC 9051
        // §7.1 EXPUNGEISSUED): no made-up data, a NO once the rest is sent.
        if gone || (changed_since.is_none() && answered < uids.len()) {
            return Ok(Status::no("Some of the requested messages no longer exist")
                .with(Code::ExpungeIssued));
        }
        Ok(Status::ok("FETCH completed"))
    }
}

/// A `<origin.length>` partial range.
type Partial = Option<(u32, u32)>;

/// The response label, section and partial range of a body item.
fn body_item(att: &FetchAtt) -> Option<(String, Section, Partial)> {
    let whole = |text| Section { part: vec![], text };
    Some(match att {
        FetchAtt::Rfc822 => ("RFC822".into(), whole(SectionText::None), None),
        FetchAtt::Rfc822Header => ("RFC822.HEADER".into(), whole(SectionText::Header), None),
        FetchAtt::Rfc822Text => ("RFC822.TEXT".into(), whole(SectionText::Text), None),
        FetchAtt::BodySection {
            section, partial, ..
        } => {
            let mut l = format!("BODY[{}]", section_name(section));
            if let Some((o, _)) = partial {
                let _ = write!(l, "<{o}>");
            }
            (l, section.clone(), *partial)
        }
        _ => return None,
    })
}

fn apply_partial(data: &[u8], partial: Option<(u32, u32)>) -> &[u8] {
    match partial {
        Some((o, l)) => {
            let s = (o as usize).min(data.len());
            let e = s.saturating_add(l as usize).min(data.len());
            &data[s..e]
        }
        None => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let raw = b"From: a@b\r\nSubject: hi\r\n there\r\nTo: c@d\r\n\r\n";
        assert_eq!(
            filter_header(raw, &["subject".into()], false),
            b"Subject: hi\r\n there\r\n\r\n"
        );
        assert_eq!(
            filter_header(raw, &["subject".into()], true),
            b"From: a@b\r\nTo: c@d\r\n\r\n"
        );
        assert_eq!(filter_header(b"", &["x".into()], false), b"\r\n");
    }

    #[test]
    fn cte() {
        assert_eq!(
            decode_cte(Some(b"BASE64"), b"aGVs\r\nbG8=\r\n").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            decode_cte(Some(b"quoted-printable"), b"a=3Db=\r\nc").as_deref(),
            Some(&b"a=bc"[..])
        );
        assert_eq!(decode_cte(None, b"x").as_deref(), Some(&b"x"[..]));
        assert_eq!(decode_cte(Some(b"x-uuencode"), b"x"), None);
    }

    #[test]
    fn partials() {
        assert_eq!(apply_partial(b"hello", Some((1, 3))), b"ell");
        assert_eq!(apply_partial(b"hello", Some((10, 3))), b"");
        assert_eq!(apply_partial(b"hello", Some((u32::MAX, u32::MAX))), b"");
    }

    #[test]
    fn section_names() {
        assert_eq!(
            section_name(&Section {
                part: vec![1, 2],
                text: SectionText::Mime
            }),
            "1.2.MIME"
        );
        assert_eq!(
            section_name(&Section {
                part: vec![],
                text: SectionText::HeaderFields {
                    not: true,
                    fields: vec!["a".into()]
                }
            }),
            "HEADER.FIELDS.NOT (A)"
        );
    }
}
