//! GETMETADATA and SETMETADATA (RFC 5464 §4.2, §4.3, grammar §5).
//!
//! Entry names are validated here (RFC 5464 §3.2: a slash-separated path
//! under `/private` or `/shared`, no `*` or `%`, no empty component) and
//! lower-cased: entry names are compared without regard to case.

use mailstore_api::{METADATA_MAX_NAME, METADATA_MAX_PER_COMMAND};

use crate::command::CommandKind;

use super::lexer::{P, R};

/// Depth `infinity` (RFC 5464 §4.2.2).
pub const DEPTH_INFINITY: u32 = u32::MAX;

/// An entry name, checked and lower-cased. `root`: `/private` and
/// `/shared` themselves are allowed (GETMETADATA with a DEPTH, §4.2.2).
fn entry(p: &mut P<'_>, root: bool) -> R<String> {
    let raw = p.astring()?;
    if raw.len() > METADATA_MAX_NAME {
        return Err("entry name too long");
    }
    if !raw
        .iter()
        .all(|&b| (0x21..0x7f).contains(&b) && b != b'*' && b != b'%')
    {
        return Err("invalid entry name");
    }
    let name = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    if root && (name == "/private" || name == "/shared") {
        return Ok(name);
    }
    let under = name
        .strip_prefix("/private/")
        .or_else(|| name.strip_prefix("/shared/"));
    match under {
        Some(rest) if !rest.is_empty() && !rest.ends_with('/') && !name.contains("//") => Ok(name),
        _ => Err("entry names are /private/... or /shared/..."),
    }
}

/// `entries = entry / "(" entry *(SP entry) ")"`.
fn entries(p: &mut P<'_>) -> R<Vec<String>> {
    if !p.eat(b'(') {
        return Ok(vec![entry(p, true)?]);
    }
    let mut v = Vec::new();
    loop {
        if v.len() >= METADATA_MAX_PER_COMMAND {
            return Err("too many entries");
        }
        v.push(entry(p, true)?);
        if p.eat(b')') {
            return Ok(v);
        }
        p.sp()?;
    }
}

/// `"(" option *(SP option) ")"`, `option = "MAXSIZE" SP number /
/// "DEPTH" SP ("0" / "1" / "infinity")`, the `(` already read; each at
/// most once.
fn options(p: &mut P<'_>, maxsize: &mut Option<u64>, depth: &mut Option<u32>) -> R<()> {
    loop {
        match p.word()?.as_str() {
            "MAXSIZE" if maxsize.is_none() => {
                p.sp()?;
                *maxsize = Some(p.number64()?);
            }
            "DEPTH" if depth.is_none() => {
                p.sp()?;
                *depth = Some(match p.word()?.as_str() {
                    "0" => 0,
                    "1" => 1,
                    "INFINITY" => DEPTH_INFINITY,
                    _ => return Err("DEPTH is 0, 1 or infinity"),
                });
            }
            _ => return Err("unknown or repeated GETMETADATA option"),
        }
        if p.eat(b')') {
            return Ok(());
        }
        p.sp()?;
    }
}

/// `GETMETADATA [SP "(" option *(SP option) ")"] SP mailbox SP entries`
/// (RFC 5464 §5). The options are also accepted after the mailbox, as
/// some clients send them (an entry list starts with `/` or `"`, an
/// option list with a letter, so the two cannot be confused).
pub(super) fn getmetadata_command(p: &mut P<'_>) -> R<CommandKind> {
    p.sp()?;
    let (mut maxsize, mut depth) = (None, None);
    if p.eat(b'(') {
        options(p, &mut maxsize, &mut depth)?;
        p.sp()?;
    }
    let mailbox = p.astring()?;
    p.sp()?;
    if p.peek() == Some(b'(') && p.s.get(p.i + 1).is_some_and(u8::is_ascii_alphabetic) {
        p.i += 1;
        options(p, &mut maxsize, &mut depth)?;
        p.sp()?;
    }
    let entries = entries(p)?;
    Ok(CommandKind::GetMetadata {
        mailbox,
        maxsize,
        depth: depth.unwrap_or(0),
        entries,
    })
}

/// `SETMETADATA SP mailbox SP "(" entry SP value *(SP entry SP value) ")"`,
/// `value = nstring / literal8`.
pub(super) fn setmetadata_command(p: &mut P<'_>) -> R<CommandKind> {
    p.sp()?;
    let mailbox = p.astring()?;
    p.sp()?;
    p.expect(b'(', "expected an entry list")?;
    let mut values = Vec::new();
    loop {
        if values.len() >= METADATA_MAX_PER_COMMAND {
            return Err("too many entries");
        }
        let name = entry(p, false)?;
        p.sp()?;
        let value = match p.peek() {
            Some(b'"') => Some(p.quoted()?),
            Some(b'{' | b'~') => Some(p.literal(true)?),
            _ => {
                if p.word()? != "NIL" {
                    return Err("expected a value or NIL");
                }
                None
            }
        };
        values.push((name, value));
        if p.eat(b')') {
            break;
        }
        p.sp()?;
    }
    Ok(CommandKind::SetMetadata { mailbox, values })
}

#[cfg(test)]
mod tests {
    use super::DEPTH_INFINITY;
    use crate::command::CommandKind;
    use crate::parser::parse_command;

    fn kind(s: &str) -> Result<CommandKind, &'static str> {
        parse_command(s.as_bytes())
            .map(|c| c.kind)
            .map_err(|e| e.msg)
    }

    #[test]
    fn metadata_commands_parse() {
        assert_eq!(
            kind("a GETMETADATA \"\" /Private/Comment\r\n"),
            Ok(CommandKind::GetMetadata {
                mailbox: Vec::new(),
                maxsize: None,
                depth: 0,
                entries: vec!["/private/comment".into()],
            })
        );
        assert_eq!(
            kind("a GETMETADATA (DEPTH infinity MAXSIZE 10) INBOX (/shared/a /private/b)\r\n"),
            Ok(CommandKind::GetMetadata {
                mailbox: b"INBOX".to_vec(),
                maxsize: Some(10),
                depth: DEPTH_INFINITY,
                entries: vec!["/shared/a".into(), "/private/b".into()],
            })
        );
        assert_eq!(
            kind(
                "a SETMETADATA INBOX (/private/a \"x\" /shared/b NIL /private/c {2}\r\nyz /private/d ~{1}\r\n\0)\r\n"
            ),
            Ok(CommandKind::SetMetadata {
                mailbox: b"INBOX".to_vec(),
                values: vec![
                    ("/private/a".into(), Some(b"x".to_vec())),
                    ("/shared/b".into(), None),
                    ("/private/c".into(), Some(b"yz".to_vec())),
                    ("/private/d".into(), Some(vec![0])),
                ],
            })
        );
    }

    #[test]
    fn malformed_metadata_commands_are_refused() {
        let many = (0..65)
            .map(|i| format!("/private/e{i}"))
            .collect::<Vec<_>>();
        for bad in [
            "a GETMETADATA INBOX\r\n".to_string(),
            "a GETMETADATA INBOX /privat\r\n".into(),
            "a SETMETADATA INBOX (/private \"x\")\r\n".into(),
            "a GETMETADATA INBOX /private/\r\n".into(),
            "a GETMETADATA INBOX /other/x\r\n".into(),
            "a GETMETADATA INBOX /private//x\r\n".into(),
            "a GETMETADATA INBOX \"/private/a*\"\r\n".into(),
            "a GETMETADATA (DEPTH 2) INBOX /private/a\r\n".into(),
            "a GETMETADATA (DEPTH 1 DEPTH 1) INBOX /private/a\r\n".into(),
            "a GETMETADATA (FOO 1) INBOX /private/a\r\n".into(),
            "a GETMETADATA (DEPTH 1) INBOX (DEPTH 0) /private/a\r\n".into(),
            "a GETMETADATA INBOX (/private/a\r\n".into(),
            "a SETMETADATA INBOX ()\r\n".into(),
            "a SETMETADATA INBOX (/private/a)\r\n".into(),
            "a SETMETADATA INBOX (/private/a FOO)\r\n".into(),
            "a SETMETADATA INBOX /private/a \"x\"\r\n".into(),
            format!("a GETMETADATA INBOX ({})\r\n", many.join(" ")),
            format!("a GETMETADATA INBOX /private/{}\r\n", "x".repeat(300)),
        ] {
            assert!(kind(&bad).is_err(), "{bad:?}");
        }
    }
}
