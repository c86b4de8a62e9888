//! SEARCH evaluation (RFC 9051 §6.4.4) over stored metadata and the text
//! index (`blob_text`, migration 0014; see [`crate::text`]).
//!
//! Text keys (BODY, TEXT, HEADER and the SUBJECT/FROM/TO/CC/BCC keys the
//! IMAP server turns into HEADER) are case-insensitive substring matches:
//! each is answered first, as a UID set, by one SQL query ([`index`]): a
//! trigram candidate selection (pg_trgm GIN index) and the exact check
//! `LIKE '%needle%'` on the stored lower-cased text, with `%`, `_` and `\`
//! escaped. The rest of the program is then evaluated per message in Rust,
//! only over the messages a text key can still match when the program
//! requires one.
//!
//! Messages whose text is not (completely) in the index — blobs stored
//! before migration 0014 and not yet backfilled (`mailctl search
//! backfill`), or texts cut at [`crate::text::MAX_BODY`] — are answered by
//! reading their blob and extracting the same normalised text unbounded:
//! the fallback gives the same answers, only slower.

mod backfill;
mod index;

use std::collections::{HashMap, HashSet};

use mail_parser::MessageParser;
use mailstore_api::pb;
use mailstore_api::pb::search_key::Key;
use sqlx::PgPool;

use crate::error::{Result, StoreError};
use crate::flags;
use crate::text::{self, SearchText};

pub use backfill::backfill;

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
    /// Extracted from the blob for messages the index cannot answer.
    text: Option<SearchText>,
}

struct Row {
    uid: i64,
    flags: i32,
    keywords: Vec<String>,
    iday: i32,
    sday: Option<i32>,
    size: i64,
    modseq: i64,
    blob_hash: Vec<u8>,
}

/// A text key's answer from the index, for the messages it covers.
enum Answer {
    /// An empty needle: every message matches.
    All,
    Set(HashSet<u32>),
}

/// What the index said, per text key (by the key's address in the program).
struct Answers {
    by_key: HashMap<usize, Answer>,
    /// The messages the index cannot answer.
    unindexed: HashSet<u32>,
}

fn key_id(k: &pb::SearchKey) -> usize {
    std::ptr::from_ref(k) as usize
}

/// Collects the text keys of the program and checks its depth.
fn text_keys<'a>(
    k: &'a pb::SearchKey,
    out: &mut Vec<&'a pb::SearchKey>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(StoreError::invalid("search program nested too deeply"));
    }
    match &k.key {
        Some(Key::AllOf(l) | Key::AnyOf(l)) => {
            for k in &l.keys {
                text_keys(k, out, depth + 1)?;
            }
        }
        Some(Key::Not(n)) => text_keys(n, out, depth + 1)?,
        Some(Key::Header(_) | Key::Body(_) | Key::Text(_)) => out.push(k),
        _ => {}
    }
    Ok(())
}

/// SENT* compare the Date: field's own calendar day, read from the blob.
fn needs_sent_day(k: &pb::SearchKey) -> bool {
    match &k.key {
        Some(Key::AllOf(l) | Key::AnyOf(l)) => l.keys.iter().any(needs_sent_day),
        Some(Key::Not(k)) => needs_sent_day(k),
        Some(Key::SentDate(_)) => true,
        _ => false,
    }
}

/// The UIDs the program can match at most, when a text key bounds them:
/// only those rows are read.
fn restriction(k: &pb::SearchKey, a: &Answers) -> Option<HashSet<u32>> {
    match &k.key {
        Some(Key::Header(_) | Key::Body(_) | Key::Text(_)) => match a.by_key.get(&key_id(k))? {
            Answer::All => None,
            Answer::Set(s) => Some(s.iter().chain(a.unindexed.iter()).copied().collect()),
        },
        Some(Key::AllOf(l)) => l
            .keys
            .iter()
            .filter_map(|k| restriction(k, a))
            .reduce(|x, y| x.intersection(&y).copied().collect()),
        Some(Key::AnyOf(l)) if !l.keys.is_empty() => {
            let mut all = HashSet::new();
            for k in &l.keys {
                all.extend(restriction(k, a)?);
            }
            Some(all)
        }
        _ => None,
    }
}

pub async fn search(
    pool: &PgPool,
    mailbox_id: i64,
    key: &pb::SearchKey,
) -> Result<pb::SearchResponse> {
    let mut keys = Vec::new();
    text_keys(key, &mut keys, 0)?;
    let mut answers = Answers {
        by_key: HashMap::new(),
        unindexed: HashSet::new(),
    };
    for k in &keys {
        answers
            .by_key
            .insert(key_id(k), index::answer(pool, mailbox_id, k).await?);
    }
    if !keys.is_empty() {
        answers.unindexed = index::unindexed(pool, mailbox_id).await?;
    }
    let with_date = needs_sent_day(key);
    let rows = match restriction(key, &answers) {
        Some(uids) => {
            let mut uids: Vec<i64> = uids.into_iter().map(i64::from).collect();
            uids.sort_unstable();
            sqlx::query_as!(
                Row,
                "SELECT uid, flags, keywords, (internal_date AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS \"iday!\", \
                 (sent_date AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS sday, size, modseq, blob_hash \
                 FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) ORDER BY uid",
                mailbox_id,
                &uids
            )
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query_as!(
                Row,
                "SELECT uid, flags, keywords, (internal_date AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS \"iday!\", \
                 (sent_date AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS sday, size, modseq, blob_hash \
                 FROM messages WHERE mailbox_id = $1 ORDER BY uid",
                mailbox_id
            )
            .fetch_all(pool)
            .await?
        }
    };
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
            text: None,
        };
        let unindexed = answers.unindexed.contains(&c.uid);
        if with_date || unindexed {
            let data: Vec<u8> =
                sqlx::query_scalar!("SELECT data FROM blobs WHERE hash = $1", &r.blob_hash)
                    .fetch_one(pool)
                    .await?;
            if with_date && let Some(day) = sent_local_day(&data) {
                c.sent_day = Some(day);
            }
            if unindexed {
                c.text = Some(text::extract_unbounded(&data));
            }
        }
        if matches(&c, key, &answers) {
            resp.uids.push(c.uid);
            resp.highest_modseq = resp.highest_modseq.max(c.modseq);
        }
    }
    Ok(resp)
}

fn in_range(day: i64, r: &pb::DateRange) -> bool {
    r.since_day.is_none_or(|s| day >= s) && r.before_day.is_none_or(|b| day < b)
}

/// A text key for one message: from its extracted text when the index
/// does not cover it, else from the index's answer.
fn text_key(
    c: &Candidate,
    k: &pb::SearchKey,
    a: &Answers,
    f: impl Fn(&SearchText) -> bool,
) -> bool {
    match &c.text {
        Some(t) => f(t),
        None => match a.by_key.get(&key_id(k)) {
            Some(Answer::All) => true,
            Some(Answer::Set(s)) => s.contains(&c.uid),
            None => false,
        },
    }
}

/// HEADER's exact check on stored header lines (`name: value`): a line of
/// the field whose value contains the needle; an empty needle matches any
/// message with the field (RFC 9051 §6.4.4). Both already normalised.
pub(crate) fn header_has(headers: &str, field: &str, value: &str) -> bool {
    headers.split('\n').any(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|v| v.contains(value))
    })
}

fn matches(c: &Candidate, key: &pb::SearchKey, a: &Answers) -> bool {
    match &key.key {
        None | Some(Key::All(_)) => true,
        Some(Key::AllOf(l)) => l.keys.iter().all(|k| matches(c, k, a)),
        Some(Key::AnyOf(l)) => l.keys.iter().any(|k| matches(c, k, a)),
        Some(Key::Not(k)) => !matches(c, k, a),
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
        Some(Key::Header(h)) => {
            let (Some(field), Some(value)) = (text::needle(&h.field), text::needle(&h.value))
            else {
                return false;
            };
            text_key(c, key, a, |t| header_has(&t.headers, &field, &value))
        }
        Some(Key::Body(s)) => {
            let Some(n) = text::needle(s) else {
                return false;
            };
            text_key(c, key, a, |t| t.body.contains(&n))
        }
        Some(Key::Text(s)) => {
            let Some(n) = text::needle(s) else {
                return false;
            };
            text_key(c, key, a, |t| t.headers.contains(&n) || t.body.contains(&n))
        }
    }
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

    #[test]
    fn header_lines_match_by_field_then_value() {
        let h = "subject: hello world\nx-subject: other\nfrom: ann <a@b>\n";
        assert!(header_has(h, "subject", "world"));
        assert!(header_has(h, "subject", ""));
        assert!(!header_has(h, "subject", "other"));
        assert!(!header_has(h, "subject", "subj"));
        assert!(header_has(h, "x-subject", "oth"));
        assert!(!header_has(h, "cc", ""));
    }
}
