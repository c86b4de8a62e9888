//! SELECT / EXAMINE parameters (RFC 4466 §2.1 `select-params`): CONDSTORE
//! (RFC 7162 §3.1.8) and QRESYNC (RFC 7162 §3.2.5). Client-supplied sets
//! are bounded to [`MAX_QRESYNC_RANGES`] ranges (threat model T122).

use crate::command::{QresyncParams, SeqSet};

use super::MAX_QRESYNC_RANGES;
use super::lexer::{P, R};

/// A UID set of a QRESYNC parameter: no `$` (RFC 5182 applies to
/// commands, not to remembered state), at most [`MAX_QRESYNC_RANGES`].
fn bounded_set(p: &mut P<'_>) -> R<SeqSet> {
    if p.peek() == Some(b'$') {
        return Err("$ is not allowed in QRESYNC parameters");
    }
    let s = p.seq_set()?;
    if s.0.len() > MAX_QRESYNC_RANGES {
        return Err("QRESYNC set too long");
    }
    Ok(s)
}

/// Number of values a set names, saturating (`*` counts as one).
fn count(s: &SeqSet) -> u64 {
    s.0.iter()
        .map(|r| {
            let a = u64::from(r.first.unwrap_or(u32::MAX));
            let b = u64::from(r.last.unwrap_or(u32::MAX));
            a.abs_diff(b) + 1
        })
        .fold(0u64, u64::saturating_add)
}

/// `"QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
/// [SP seq-match-data] ")"` after the keyword (RFC 7162 §7).
fn qresync_param(p: &mut P<'_>) -> R<QresyncParams> {
    p.sp()?;
    p.expect(b'(', "expected ( after QRESYNC")?;
    let uidvalidity = p.nz_number()?;
    p.sp()?;
    let modseq = p.number64()?;
    if modseq == 0 {
        return Err("mod-sequence-value must not be 0");
    }
    let mut known_uids = None;
    let mut seq_match = None;
    if p.eat(b' ') && p.peek() != Some(b'(') {
        known_uids = Some(bounded_set(p)?);
        if !p.eat(b' ') {
            p.expect(b')', "expected )")?;
            return Ok(QresyncParams {
                uidvalidity,
                modseq,
                known_uids,
                seq_match,
            });
        }
    }
    if p.eat(b'(') {
        let seqs = bounded_set(p)?;
        p.sp()?;
        let uids = bounded_set(p)?;
        p.expect(b')', "expected ) after seq-match-data")?;
        // RFC 7162 §3.2.5.2: both sets name the same number of messages.
        if count(&seqs) != count(&uids) {
            return Err("seq-match-data sets differ in size");
        }
        seq_match = Some((seqs, uids));
    }
    p.expect(b')', "expected )")?;
    Ok(QresyncParams {
        uidvalidity,
        modseq,
        known_uids,
        seq_match,
    })
}

/// `select-params` (RFC 4466 §2.1): `(CONDSTORE)`, `(QRESYNC (...))` or
/// both; returns (condstore, qresync).
pub(super) fn select_params(p: &mut P<'_>) -> R<(bool, Option<QresyncParams>)> {
    p.expect(b'(', "expected SELECT parameters")?;
    let (mut condstore, mut qresync) = (false, None);
    loop {
        match p.word()?.as_str() {
            "CONDSTORE" if !condstore => condstore = true,
            "QRESYNC" if qresync.is_none() => qresync = Some(qresync_param(p)?),
            _ => return Err("unknown or repeated SELECT parameter"),
        }
        if p.eat(b')') {
            return Ok((condstore, qresync));
        }
        p.sp()?;
    }
}
