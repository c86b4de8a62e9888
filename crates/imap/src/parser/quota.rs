//! SETQUOTA (RFC 9208 §4.1.3, §7 `setquota`); GETQUOTA and GETQUOTAROOT
//! take one astring and are parsed in the command table.

use crate::command::CommandKind;

use super::lexer::{P, R};

/// More resources than RFC 9208 defines (four) is not a real request.
const MAX_RESOURCES: usize = 16;

pub(super) fn setquota_command(p: &mut P<'_>) -> R<CommandKind> {
    p.sp()?;
    let root = p.astring()?;
    p.sp()?;
    p.expect(b'(', "expected a resource list")?;
    let mut limits = Vec::new();
    if !p.eat(b')') {
        loop {
            if limits.len() >= MAX_RESOURCES {
                return Err("too many resources");
            }
            let name = p.word()?;
            p.sp()?;
            // RFC 9208 §7: resource-limit = number64.
            let limit = p.number64()?;
            if limit > i64::MAX as u64 {
                return Err("number too large");
            }
            limits.push((name, limit));
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    }
    Ok(CommandKind::SetQuota { root, limits })
}

#[cfg(test)]
mod tests {
    use crate::command::{CommandKind, StatusItem};
    use crate::parser::parse_command;

    fn kind(s: &str) -> Result<CommandKind, &'static str> {
        parse_command(s.as_bytes())
            .map(|c| c.kind)
            .map_err(|e| e.msg)
    }

    #[test]
    fn quota_commands_parse() {
        assert_eq!(
            kind("a GETQUOTA \"\"\r\n"),
            Ok(CommandKind::GetQuota(Vec::new()))
        );
        assert_eq!(
            kind("a getquotaroot INBOX\r\n"),
            Ok(CommandKind::GetQuotaRoot(b"INBOX".to_vec()))
        );
        assert_eq!(
            kind("a SETQUOTA \"\" (storage 512 MESSAGE 10)\r\n"),
            Ok(CommandKind::SetQuota {
                root: Vec::new(),
                limits: vec![("STORAGE".into(), 512), ("MESSAGE".into(), 10)],
            })
        );
        assert_eq!(
            kind("a SETQUOTA x@example.org ()\r\n"),
            Ok(CommandKind::SetQuota {
                root: b"x@example.org".to_vec(),
                limits: Vec::new(),
            })
        );
        assert_eq!(
            kind("a STATUS INBOX (DELETED DELETED-STORAGE)\r\n"),
            Ok(CommandKind::Status {
                mailbox: b"INBOX".to_vec(),
                items: vec![StatusItem::Deleted, StatusItem::DeletedStorage],
            })
        );
    }

    #[test]
    fn malformed_setquota_is_refused() {
        for bad in [
            "a SETQUOTA \"\"\r\n",
            "a SETQUOTA \"\" STORAGE 1\r\n",
            "a SETQUOTA \"\" (STORAGE)\r\n",
            "a SETQUOTA \"\" (STORAGE -1)\r\n",
            "a SETQUOTA \"\" (STORAGE 1\r\n",
            "a SETQUOTA \"\" (STORAGE 99999999999999999999)\r\n",
            "a SETQUOTA \"\" (STORAGE 9223372036854775808)\r\n",
            "a SETQUOTA \"\" (A 1 B 1 C 1 D 1 E 1 F 1 G 1 H 1 I 1 J 1 K 1 L 1 M 1 N 1 O 1 P 1 Q 1)\r\n",
            "a GETQUOTA\r\n",
            "a GETQUOTAROOT\r\n",
        ] {
            assert!(kind(bad).is_err(), "{bad:?}");
        }
    }
}
