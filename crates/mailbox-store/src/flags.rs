//! IMAP flags (RFC 9051 §2.3.2): system flags as a bit set in the database,
//! keywords as a text array. `\Recent` is a session notion and never stored.

pub const SEEN: i32 = 1;
pub const ANSWERED: i32 = 2;
pub const FLAGGED: i32 = 4;
pub const DELETED: i32 = 8;
pub const DRAFT: i32 = 16;

const SYSTEM: [(&str, i32); 5] = [
    ("\\Seen", SEEN),
    ("\\Answered", ANSWERED),
    ("\\Flagged", FLAGGED),
    ("\\Deleted", DELETED),
    ("\\Draft", DRAFT),
];

/// Longest keyword accepted, and most keywords per message.
pub const MAX_KEYWORD_LEN: usize = 128;
pub const MAX_KEYWORDS: usize = 64;

/// Flags split into the stored form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlagSet {
    pub bits: i32,
    pub keywords: Vec<String>,
}

/// Parses flags given by a client of the store. System flags are matched
/// case-insensitively; keywords must be IMAP atoms.
///
/// # Errors
/// On an unknown backslash flag or a keyword that is not an atom.
pub fn parse(flags: &[String]) -> Result<FlagSet, String> {
    let mut set = FlagSet::default();
    for f in flags {
        if let Some((_, bit)) = SYSTEM.iter().find(|(n, _)| n.eq_ignore_ascii_case(f)) {
            set.bits |= bit;
        } else if f.eq_ignore_ascii_case("\\Recent") {
            // Not storable; ignored (RFC 9051 §2.3.2).
        } else if f.starts_with('\\') {
            return Err(format!("unknown system flag {f}"));
        } else if is_atom(f) && f.len() <= MAX_KEYWORD_LEN {
            if !set.keywords.iter().any(|k| k.eq_ignore_ascii_case(f)) {
                set.keywords.push(f.clone());
            }
        } else {
            return Err("invalid keyword".to_string());
        }
    }
    if set.keywords.len() > MAX_KEYWORDS {
        return Err("too many keywords".to_string());
    }
    Ok(set)
}

/// RFC 9051 atom: printable ASCII without atom-specials.
fn is_atom(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b > 0x20
                && b < 0x7f
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
        })
}

/// The wire form: system flags first, then keywords.
#[must_use]
pub fn render(bits: i32, keywords: &[String]) -> Vec<String> {
    let mut out: Vec<String> = SYSTEM
        .iter()
        .filter(|(_, b)| bits & b != 0)
        .map(|(n, _)| (*n).to_string())
        .collect();
    out.extend(keywords.iter().cloned());
    out
}

/// Applies an add/remove/replace to stored flags.
#[must_use]
pub fn apply(op: i32, current: &FlagSet, change: &FlagSet) -> FlagSet {
    use mailstore_api::pb::FlagOp;
    match FlagOp::try_from(op).unwrap_or(FlagOp::Unspecified) {
        FlagOp::Add => {
            let mut kw = current.keywords.clone();
            for k in &change.keywords {
                if !kw.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                    kw.push(k.clone());
                }
            }
            FlagSet {
                bits: current.bits | change.bits,
                keywords: kw,
            }
        }
        FlagOp::Remove => FlagSet {
            bits: current.bits & !change.bits,
            keywords: current
                .keywords
                .iter()
                .filter(|k| !change.keywords.iter().any(|c| c.eq_ignore_ascii_case(k)))
                .cloned()
                .collect(),
        },
        FlagOp::Replace => change.clone(),
        FlagOp::Unspecified => current.clone(),
    }
}

/// Does the message carry this flag (system or keyword)?
#[must_use]
pub fn has(bits: i32, keywords: &[String], flag: &str) -> bool {
    if let Some((_, bit)) = SYSTEM.iter().find(|(n, _)| n.eq_ignore_ascii_case(flag)) {
        bits & bit != 0
    } else {
        keywords.iter().any(|k| k.eq_ignore_ascii_case(flag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailstore_api::pb::FlagOp;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn parse_and_render() {
        let f = parse(&s(&["\\seen", "$Junk", "\\Recent", "$junk"])).expect("ok");
        assert_eq!(f.bits, SEEN);
        assert_eq!(f.keywords, s(&["$Junk"]));
        assert_eq!(render(f.bits, &f.keywords), s(&["\\Seen", "$Junk"]));
        assert!(parse(&s(&["\\Bogus"])).is_err());
        assert!(parse(&s(&["a b"])).is_err());
        assert!(parse(&s(&["x]"])).is_err());
    }

    #[test]
    fn ops() {
        let cur = parse(&s(&["\\Seen", "a"])).expect("ok");
        let ch = parse(&s(&["\\Deleted", "A", "b"])).expect("ok");
        let add = apply(FlagOp::Add as i32, &cur, &ch);
        assert_eq!(add.bits, SEEN | DELETED);
        assert_eq!(add.keywords, s(&["a", "b"]));
        let rm = apply(FlagOp::Remove as i32, &add, &ch);
        assert_eq!(rm.bits, SEEN);
        assert!(rm.keywords.is_empty());
        assert_eq!(apply(FlagOp::Replace as i32, &cur, &ch), ch);
    }
}
