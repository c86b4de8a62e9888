//! SEARCH evaluation (RFC 9051 §6.4.4) over stored metadata. Header and body
//! keys read the message from its blob only when the program needs them;
//! a full-text index can replace `text_of` later without changing the API.

use mail_parser::MessageParser;
use mailstore_api::pb;
use mailstore_api::pb::search_key::Key;
use sqlx::PgPool;

use crate::error::{Result, StoreError};
use crate::flags;

/// Deepest search program accepted.
const MAX_DEPTH: usize = 64;

struct Candidate {
    uid: u32,
    bits: i32,
    keywords: Vec<String>,
    internal_day: i64,
    sent_day: Option<i64>,
    size: u64,
    modseq: u64,
    hash: Vec<u8>,
    raw: Option<Vec<u8>>,
}

fn needs_body(k: &pb::SearchKey, depth: usize) -> Result<bool> {
    if depth > MAX_DEPTH {
        return Err(StoreError::invalid("search program nested too deeply"));
    }
    Ok(match &k.key {
        Some(Key::AllOf(l) | Key::AnyOf(l)) => {
            let mut any = false;
            for k in &l.keys {
                any |= needs_body(k, depth + 1)?;
            }
            any
        }
        Some(Key::Not(k)) => needs_body(k, depth + 1)?,
        // SENT* compare the Date: field's own calendar day (below).
        Some(Key::Header(_) | Key::Body(_) | Key::Text(_) | Key::SentDate(_)) => true,
        _ => false,
    })
}

pub async fn search(
    pool: &PgPool,
    mailbox_id: i64,
    key: &pb::SearchKey,
) -> Result<pb::SearchResponse> {
    let with_body = needs_body(key, 0)?;
    let rows = sqlx::query!(
        "SELECT uid, flags, keywords, (internal_date AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS \"iday!\", \
         (sent_date AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS sday, size, modseq, blob_hash \
         FROM messages WHERE mailbox_id = $1 ORDER BY uid",
        mailbox_id
    )
    .fetch_all(pool)
    .await?;
    let mut resp = pb::SearchResponse::default();
    for r in rows {
        let mut c = Candidate {
            uid: r.uid as u32,
            bits: r.flags,
            keywords: r.keywords,
            internal_day: i64::from(r.iday),
            sent_day: r.sday.map(i64::from),
            size: r.size as u64,
            modseq: r.modseq as u64,
            hash: r.blob_hash,
            raw: None,
        };
        if with_body {
            let data: Vec<u8> =
                sqlx::query_scalar!("SELECT data FROM blobs WHERE hash = $1", &c.hash)
                    .fetch_one(pool)
                    .await?;
            if let Some(day) = sent_local_day(&data) {
                c.sent_day = Some(day);
            }
            c.raw = Some(data);
        }
        if matches(&c, key) {
            resp.uids.push(c.uid);
            resp.highest_modseq = resp.highest_modseq.max(c.modseq);
        }
    }
    Ok(resp)
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    needle.is_empty() || hay.to_lowercase().contains(&needle.to_lowercase())
}

fn in_range(day: i64, r: &pb::DateRange) -> bool {
    r.since_day.is_none_or(|s| day >= s) && r.before_day.is_none_or(|b| day < b)
}

fn matches(c: &Candidate, key: &pb::SearchKey) -> bool {
    match &key.key {
        None | Some(Key::All(_)) => true,
        Some(Key::AllOf(l)) => l.keys.iter().all(|k| matches(c, k)),
        Some(Key::AnyOf(l)) => l.keys.iter().any(|k| matches(c, k)),
        Some(Key::Not(k)) => !matches(c, k),
        Some(Key::HasFlag(f)) => flags::has(c.bits, &c.keywords, f),
        Some(Key::LacksFlag(f)) => !flags::has(c.bits, &c.keywords, f),
        Some(Key::Uids(set)) => set.ranges.iter().any(|r| {
            let (a, b) = if r.first <= r.last {
                (r.first, r.last)
            } else {
                (r.last, r.first)
            };
            (a..=b).contains(&c.uid)
        }),
        Some(Key::InternalDate(r)) => in_range(c.internal_day, r),
        Some(Key::SentDate(r)) => c.sent_day.is_some_and(|d| in_range(d, r)),
        Some(Key::Larger(n)) => c.size > *n,
        Some(Key::Smaller(n)) => c.size < *n,
        Some(Key::ModseqMin(n)) => c.modseq >= *n,
        Some(Key::Header(h)) => header_matches(c, &h.field, &h.value),
        Some(Key::Body(s)) => body_text(c).is_some_and(|t| contains_ci(&t, s)),
        Some(Key::Text(s)) => {
            header_text(c).is_some_and(|t| contains_ci(&t, s))
                || body_text(c).is_some_and(|t| contains_ci(&t, s))
        }
    }
}

fn header_matches(c: &Candidate, field: &str, value: &str) -> bool {
    let Some(raw) = &c.raw else { return false };
    let Some(msg) = MessageParser::default().parse_headers(raw) else {
        return false;
    };
    let Some(root) = msg.parts.first() else {
        return false;
    };
    root.headers.iter().any(|h| {
        if !h.name.as_str().eq_ignore_ascii_case(field) {
            return false;
        }
        if value.is_empty() {
            return true;
        }
        // Match the raw value and the decoded one (RFC 2047 words).
        let rawv = raw
            .get(h.offset_start as usize..h.offset_end as usize)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let decoded = match &h.value {
            mail_parser::HeaderValue::Text(t) => t.to_string(),
            mail_parser::HeaderValue::TextList(l) => l.join(" "),
            mail_parser::HeaderValue::Address(a) => a
                .iter()
                .map(|x| {
                    format!(
                        "{} <{}>",
                        x.name.as_deref().unwrap_or(""),
                        x.address.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        };
        contains_ci(&rawv, value) || contains_ci(&decoded, value)
    })
}

/// The calendar day of the `Date:` field in the sender's own time zone,
/// as days since 1970-01-01: RFC 9051 §6.4.4 (SENTBEFORE, SENTON,
/// SENTSINCE) compares dates "disregarding time and timezone", so
/// `Sat, 24 Mar 2007 23:30:00 +0200` is on 24 March although it is
/// 21:30 UTC. The stored `sent_date` (UTC) is the fallback.
fn sent_local_day(raw: &[u8]) -> Option<i64> {
    let msg = MessageParser::default().parse_headers(raw)?;
    let d = msg.date().filter(|d| d.is_valid())?;
    Some(d.to_timestamp_local().div_euclid(86_400))
}

fn header_text(c: &Candidate) -> Option<String> {
    let raw = c.raw.as_ref()?;
    let msg = MessageParser::default().parse_headers(raw)?;
    let end = msg.parts.first().map_or(0, |p| p.offset_body as usize);
    Some(String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned())
}

fn body_text(c: &Candidate) -> Option<String> {
    let raw = c.raw.as_ref()?;
    // The same guard as `structure::parse`: mail-parser's debug assertion on
    // broken multipart/rfc822 nesting must not fail a search.
    let msg = std::panic::catch_unwind(|| MessageParser::default().parse(raw.as_slice()))
        .ok()
        .flatten()?;
    let mut out = String::new();
    for i in 0..msg.text_body.len().max(msg.html_body.len()) {
        if let Some(t) = msg.body_text(i) {
            out.push_str(&t);
            out.push('\n');
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// imaptest search-date: the day of the Date: field in its own zone.
    #[test]
    fn sent_day_is_the_local_calendar_day() {
        let day = |d: &str| sent_local_day(format!("Date: {d}\r\n\r\nx").as_bytes());
        // 2007-03-25 is day 13597 since 1970-01-01.
        assert_eq!(day("Sun, 25 Mar 2007 01:00:00 +0300"), Some(13_597));
        assert_eq!(day("Sat, 24 Mar 2007 23:00:00 -0500"), Some(13_596));
        assert_eq!(day("not a date"), None);
    }
}
