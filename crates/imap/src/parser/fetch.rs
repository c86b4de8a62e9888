//! FETCH (RFC 9051 §6.4.5): data items, sections, partial ranges, the
//! macros, BINARY (RFC 3516), the CHANGEDSINCE and VANISHED modifiers (RFC
//! 7162 §3.1.4, §3.2.6), EMAILID / THREADID (RFC 8474) and PREVIEW (RFC 8970).

use crate::command::{CommandKind, FetchAtt, Section, SectionText};

use super::lexer::{P, R};
use super::{MAX_ITEMS, MAX_PART_DEPTH};

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
        "EMAILID" => FetchAtt::EmailId,
        "THREADID" => FetchAtt::ThreadId,
        "PREVIEW" => FetchAtt::Preview {
            lazy: preview_mods(p)?,
        },
        _ => return Err("unknown fetch item"),
    })
}

/// RFC 8970 §3 `[SP "(" preview-mod *(SP preview-mod) ")"]`; true when
/// LAZY is among them. A following `(` that does not start with a preview
/// modifier is left alone (it is the FETCH modifiers' list).
fn preview_mods(p: &mut P<'_>) -> R<bool> {
    let save = p.i;
    if !(p.eat(b' ') && p.eat(b'(')) {
        p.i = save;
        return Ok(false);
    }
    let mut lazy = false;
    loop {
        match p.word() {
            Ok(w) if w == "LAZY" => lazy = true,
            _ if !lazy => {
                p.i = save;
                return Ok(false);
            }
            _ => return Err("unknown PREVIEW modifier"),
        }
        if p.eat(b')') {
            return Ok(lazy);
        }
        p.sp()?;
    }
}

pub(super) fn fetch_atts(p: &mut P<'_>) -> R<Vec<FetchAtt>> {
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

pub(super) fn fetch_command(p: &mut P<'_>, uid: bool) -> R<CommandKind> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let atts = fetch_atts(p)?;
    let mut changed_since = None;
    let mut vanished = false;
    if p.eat(b' ') {
        // RFC 7162 §3.1.4 FETCH modifiers, §3.2.6 VANISHED.
        p.expect(b'(', "expected FETCH modifiers")?;
        loop {
            match p.word()?.as_str() {
                "CHANGEDSINCE" if changed_since.is_none() => {
                    p.sp()?;
                    changed_since = Some(p.number64()?);
                }
                "VANISHED" if !vanished => vanished = true,
                _ => return Err("unknown or repeated FETCH modifier"),
            }
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    }
    // RFC 7162 §3.2.6: VANISHED only with UID FETCH and CHANGEDSINCE.
    if vanished && (!uid || changed_since.is_none()) {
        return Err("VANISHED needs UID FETCH and CHANGEDSINCE");
    }
    Ok(CommandKind::Fetch {
        uid,
        set,
        atts,
        changed_since,
        vanished,
    })
}
