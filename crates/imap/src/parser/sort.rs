//! SORT and THREAD (RFC 5256 §5 ABNF), SORT=DISPLAY criteria (RFC 5957 §4)
//! and ESORT's RETURN options on SORT (RFC 5267 §3).

use crate::command::{CommandKind, SortCriterion, SortKey, ThreadAlgorithm};

use super::MAX_ITEMS;
use super::lexer::P;
use super::search::{charset_and_keys, return_options};

type Fail = (&'static str, bool);

/// `sort-criteria = "(" sort-criterion *(SP sort-criterion) ")"`.
fn criteria(p: &mut P<'_>) -> Result<Vec<SortCriterion>, Fail> {
    let words = p.word_list().map_err(|e| (e, false))?;
    if words.len() > MAX_ITEMS {
        return Err(("too many sort criteria", false));
    }
    let mut out = Vec::new();
    let mut reverse = false;
    for w in words {
        let key = match w.as_str() {
            "REVERSE" if !reverse => {
                reverse = true;
                continue;
            }
            "ARRIVAL" => SortKey::Arrival,
            "CC" => SortKey::Cc,
            "DATE" => SortKey::Date,
            "FROM" => SortKey::From,
            "SIZE" => SortKey::Size,
            "SUBJECT" => SortKey::Subject,
            "TO" => SortKey::To,
            "DISPLAYFROM" => SortKey::DisplayFrom,
            "DISPLAYTO" => SortKey::DisplayTo,
            _ => return Err(("unknown sort criterion", false)),
        };
        out.push(SortCriterion { reverse, key });
        reverse = false;
    }
    if reverse || out.is_empty() {
        return Err(("incomplete sort criteria", false));
    }
    Ok(out)
}

/// `sort = ["UID" SP] "SORT" [SP sort-return-opts] SP sort-criteria SP
/// search-criteria`.
pub(super) fn sort_command(p: &mut P<'_>, uid: bool) -> Result<CommandKind, Fail> {
    p.sp().map_err(|e| (e, false))?;
    let save = p.i;
    let ret = if p.word().unwrap_or_default() == "RETURN" {
        Some(return_options(p)?)
    } else {
        p.i = save;
        None
    };
    let criteria = criteria(p)?;
    p.sp().map_err(|e| (e, false))?;
    let key = charset_and_keys(p, false)?;
    Ok(CommandKind::Sort {
        uid,
        ret,
        criteria,
        key,
    })
}

/// `thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria`.
pub(super) fn thread_command(p: &mut P<'_>, uid: bool) -> Result<CommandKind, Fail> {
    p.sp().map_err(|e| (e, false))?;
    let algorithm = match p.word().map_err(|e| (e, false))?.as_str() {
        "ORDEREDSUBJECT" => ThreadAlgorithm::OrderedSubject,
        "REFERENCES" => ThreadAlgorithm::References,
        _ => return Err(("unsupported THREAD algorithm", false)),
    };
    p.sp().map_err(|e| (e, false))?;
    let key = charset_and_keys(p, false)?;
    Ok(CommandKind::Thread {
        uid,
        algorithm,
        key,
    })
}
