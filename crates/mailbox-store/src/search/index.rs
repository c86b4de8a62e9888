//! Text keys answered from `blob_text` (RFC 9051 §6.4.4: case-insensitive
//! substring). The stored text and the needle are both lower-cased by
//! [`crate::text`], so a plain `LIKE '%needle%'` (metacharacters
//! escaped) is the exact check; pg_trgm's GIN index selects its candidates.
//!
//! Two plans per key. A needle with a run of three ASCII letters or digits
//! gives pg_trgm trigrams to look up: the index is read first (a
//! materialised CTE keeps the planner from scanning the mailbox instead),
//! then joined to the mailbox's messages. A shorter needle (`"ab"`, `"%_"`,
//! or non-ASCII letters, which pg_trgm may not index under every locale)
//! gives no trigram: the mailbox's messages are read first and the exact
//! check runs on their rows, still from the table and never from blobs.

use std::collections::HashSet;

use mailstore_api::pb;
use mailstore_api::pb::search_key::Key;
use sqlx::PgPool;

use super::Answer;
use crate::error::Result;
use crate::text::{self, MAX_BODY, MAX_HEADERS};

/// `LIKE` pattern matching any text that contains `s` (RFC 9051 §6.4.4
/// substring): `\`, `%` and `_` escaped with PostgreSQL's default escape
/// character, the backslash.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for ch in s.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Whether pg_trgm can extract a trigram from the needle (a run of three
/// ASCII alphanumerics, which it indexes under every locale).
fn trigram_useful(s: &str) -> bool {
    let mut run = 0;
    for ch in s.chars() {
        run = if ch.is_ascii_alphanumeric() {
            run + 1
        } else {
            0
        };
        if run >= 3 {
            return true;
        }
    }
    false
}

fn set(uids: Vec<i64>) -> Answer {
    Answer::Set(uids.into_iter().map(|u| u as u32).collect())
}

/// The normalised needle of a BODY or TEXT key, or the answer that needs
/// no query: no match for a needle that cannot be normalised or is longer
/// than any indexed text (`max`), every message for the empty needle
/// (RFC 9051 §6.4.4: the empty string is a substring of everything).
fn substring(s: &str, max: usize) -> std::result::Result<String, Answer> {
    let Some(n) = text::needle(s) else {
        return Err(Answer::Set(HashSet::new()));
    };
    if n.is_empty() {
        return Err(Answer::All);
    }
    if n.len() > max {
        return Err(Answer::Set(HashSet::new()));
    }
    Ok(n)
}

/// The messages of the mailbox whose indexed text matches one text key.
/// Messages without complete text are not in the answer (see
/// [`unindexed`]).
pub(super) async fn answer(pool: &PgPool, mailbox_id: i64, k: &pb::SearchKey) -> Result<Answer> {
    match &k.key {
        Some(Key::Body(s)) => {
            let n = match substring(s, MAX_BODY) {
                Ok(n) => n,
                Err(answer) => return Ok(answer),
            };
            let pat = format!("%{}%", like_escape(&n));
            let uids = if trigram_useful(&n) {
                sqlx::query_scalar!(
                    "WITH c AS MATERIALIZED (SELECT hash FROM blob_text WHERE complete AND body LIKE $2) \
                     SELECT m.uid FROM c JOIN messages m ON m.blob_hash = c.hash WHERE m.mailbox_id = $1",
                    mailbox_id,
                    pat
                )
                .fetch_all(pool)
                .await?
            } else {
                sqlx::query_scalar!(
                    "SELECT m.uid FROM messages m JOIN blob_text t ON t.hash = m.blob_hash \
                     WHERE m.mailbox_id = $1 AND t.complete AND t.body LIKE $2",
                    mailbox_id,
                    pat
                )
                .fetch_all(pool)
                .await?
            };
            Ok(set(uids))
        }
        Some(Key::Text(s)) => {
            let n = match substring(s, MAX_BODY.max(MAX_HEADERS)) {
                Ok(n) => n,
                Err(answer) => return Ok(answer),
            };
            let pat = format!("%{}%", like_escape(&n));
            let uids = if trigram_useful(&n) {
                sqlx::query_scalar!(
                    "WITH c AS MATERIALIZED (SELECT hash FROM blob_text WHERE complete AND (body LIKE $2 OR headers LIKE $2)) \
                     SELECT m.uid FROM c JOIN messages m ON m.blob_hash = c.hash WHERE m.mailbox_id = $1",
                    mailbox_id,
                    pat
                )
                .fetch_all(pool)
                .await?
            } else {
                sqlx::query_scalar!(
                    "SELECT m.uid FROM messages m JOIN blob_text t ON t.hash = m.blob_hash \
                     WHERE m.mailbox_id = $1 AND t.complete AND (t.body LIKE $2 OR t.headers LIKE $2)",
                    mailbox_id,
                    pat
                )
                .fetch_all(pool)
                .await?
            };
            Ok(set(uids))
        }
        Some(Key::Header(h)) => {
            let (Some(field), Some(value)) = (text::needle(&h.field), text::needle(&h.value))
            else {
                return Ok(Answer::Set(HashSet::new()));
            };
            if field.len() + value.len() > MAX_HEADERS {
                return Ok(Answer::Set(HashSet::new()));
            }
            // Candidates: the field name then the value somewhere after it;
            // exact: one line that starts with "field:" and whose value
            // (what follows the colon) contains the needle.
            let pat = format!("%{}:%{}%", like_escape(&field), like_escape(&value));
            let start = format!("{field}:");
            let from = i32::try_from(start.chars().count() + 1).unwrap_or(i32::MAX);
            let uids = if trigram_useful(&value) {
                sqlx::query_scalar!(
                    "WITH c AS MATERIALIZED (SELECT hash FROM blob_text t WHERE complete AND headers LIKE $2 \
                     AND EXISTS (SELECT 1 FROM unnest(string_to_array(t.headers, E'\\n')) AS l(line) \
                     WHERE starts_with(l.line, $3) AND ($4 = '' OR strpos(substr(l.line, $5), $4) > 0))) \
                     SELECT m.uid FROM c JOIN messages m ON m.blob_hash = c.hash WHERE m.mailbox_id = $1",
                    mailbox_id,
                    pat,
                    start,
                    value,
                    from
                )
                .fetch_all(pool)
                .await?
            } else {
                sqlx::query_scalar!(
                    "SELECT m.uid FROM messages m JOIN blob_text t ON t.hash = m.blob_hash \
                     WHERE m.mailbox_id = $1 AND t.complete AND t.headers LIKE $2 \
                     AND EXISTS (SELECT 1 FROM unnest(string_to_array(t.headers, E'\\n')) AS l(line) \
                     WHERE starts_with(l.line, $3) AND ($4 = '' OR strpos(substr(l.line, $5), $4) > 0))",
                    mailbox_id,
                    pat,
                    start,
                    value,
                    from
                )
                .fetch_all(pool)
                .await?
            };
            Ok(set(uids))
        }
        _ => Ok(Answer::All),
    }
}

/// The messages of the mailbox whose text the index does not hold
/// completely (placeholders of blobs stored before migration 0014, texts
/// cut at a bound). The partial index
/// `blob_text_incomplete` keeps this cheap once backfilled.
pub(super) async fn unindexed(pool: &PgPool, mailbox_id: i64) -> Result<HashSet<u32>> {
    let uids = sqlx::query_scalar!(
        "SELECT m.uid FROM blob_text t JOIN messages m ON m.blob_hash = t.hash \
         WHERE NOT t.complete AND m.mailbox_id = $1",
        mailbox_id
    )
    .fetch_all(pool)
    .await?;
    Ok(uids.into_iter().map(|u| u as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(like_escape("50%_off\\"), "50\\%\\_off\\\\");
        assert_eq!(like_escape("plain"), "plain");
    }

    #[test]
    fn trigram_use_needs_three_ascii_alphanumerics_in_a_row() {
        assert!(trigram_useful("word"));
        assert!(trigram_useful("a-b-cde"));
        assert!(!trigram_useful("ab"));
        assert!(!trigram_useful("a%b_c"));
        assert!(!trigram_useful("äöü"));
    }
}
