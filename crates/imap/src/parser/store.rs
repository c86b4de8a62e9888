//! STORE (RFC 9051 §6.4.6) with UNCHANGEDSINCE (RFC 7162 §3.1.3).

use crate::command::{CommandKind, StoreOp};

use super::MAX_ITEMS;
use super::lexer::{P, R};

pub(super) fn store_command(p: &mut P<'_>, uid: bool) -> R<CommandKind> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mut unchanged_since = None;
    if p.eat(b'(') {
        // RFC 7162 §3.1.3
        if p.word()? != "UNCHANGEDSINCE" {
            return Err("unknown STORE modifier");
        }
        p.sp()?;
        unchanged_since = Some(p.number64()?);
        p.expect(b')', "expected )")?;
        p.sp()?;
    }
    let op = if p.eat(b'+') {
        StoreOp::Add
    } else if p.eat(b'-') {
        StoreOp::Remove
    } else {
        StoreOp::Replace
    };
    let silent = match p.word()?.as_str() {
        "FLAGS" => false,
        "FLAGS.SILENT" => true,
        _ => return Err("expected FLAGS"),
    };
    p.sp()?;
    let flags = if p.peek() == Some(b'(') {
        p.flag_list()?
    } else {
        let mut v = vec![p.flag()?];
        while p.eat(b' ') {
            if v.len() >= MAX_ITEMS {
                return Err("too many flags");
            }
            v.push(p.flag()?);
        }
        v
    };
    Ok(CommandKind::Store {
        uid,
        set,
        op,
        silent,
        flags,
        unchanged_since,
    })
}
