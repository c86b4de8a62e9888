//! SEARCH (RFC 9051 §6.4.4): search keys, dates, RETURN options (RFC 4731)
//! and CONDSTORE's MODSEQ key (RFC 7162 §3.1.5).

use crate::command::{CommandKind, SearchKey, SearchReturn};

use super::MAX_DEPTH;
use super::MAX_ITEMS;
use super::lexer::{P, R};

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
    if matches!(p.peek(), Some(b'0'..=b'9' | b'*' | b'$')) {
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

/// `RETURN (MIN MAX ALL COUNT) SP` after the word RETURN (RFC 4731 §3.1,
/// RFC 5267 §3 for SORT).
pub(super) fn return_options(p: &mut P<'_>) -> Result<SearchReturn, (&'static str, bool)> {
    p.sp().map_err(|e| (e, false))?;
    let mut r = SearchReturn::default();
    for w in p.word_list().map_err(|e| (e, false))? {
        match w.as_str() {
            "MIN" => r.min = true,
            "MAX" => r.max = true,
            "ALL" => r.all = true,
            "COUNT" => r.count = true,
            "SAVE" => r.save = true,
            _ => return Err(("unknown SEARCH return option", false)),
        }
    }
    p.sp().map_err(|e| (e, false))?;
    Ok(r.normalised())
}

pub(super) fn search_command(
    p: &mut P<'_>,
    uid: bool,
) -> Result<CommandKind, (&'static str, bool)> {
    p.sp().map_err(|e| (e, false))?;
    let mut ret = None;
    let save = p.i;
    let first = p.word().unwrap_or_default();
    if first == "RETURN" {
        ret = Some(return_options(p)?);
    } else {
        p.i = save;
    }
    let key = charset_and_keys(p, true)?;
    Ok(CommandKind::Search { uid, ret, key })
}

/// `[CHARSET astring SP] search-key *(SP search-key)`; SORT and THREAD
/// always name the charset (RFC 5256 §5: `charset SP search-key`).
pub(super) fn charset_and_keys(
    p: &mut P<'_>,
    optional_charset: bool,
) -> Result<SearchKey, (&'static str, bool)> {
    let save = p.i;
    let charset = if optional_charset {
        p.word().unwrap_or_default() == "CHARSET"
    } else {
        true
    };
    if charset {
        if optional_charset {
            p.sp().map_err(|e| (e, false))?;
        }
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
    Ok(if keys.len() == 1 {
        keys.remove(0)
    } else {
        SearchKey::And(keys)
    })
}
