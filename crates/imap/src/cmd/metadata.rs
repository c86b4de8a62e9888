//! METADATA and METADATA-SERVER (RFC 5464): GETMETADATA, SETMETADATA.
//!
//! Server entries are named with the mailbox `""` (§3.1), mailbox entries
//! with the mailbox's name (§3.2). Both `/private` and `/shared` entries
//! exist, and both are per user: Epistole has no mailbox sharing, so a
//! `/shared` entry is seen by its owner only (there is no one else with
//! access to share it with); `[METADATA NOPRIVATE]` is therefore never
//! sent. Entry names are case-insensitive (kept in lower case).
//!
//! Limits (threat model T124), enforced by the store and announced here:
//! a value of at most [`METADATA_MAX_VALUE`] octets (`NO [METADATA MAXSIZE
//! n]`, §4.3), at most [`mailstore_api::METADATA_MAX_ENTRIES`] entries per
//! user (`NO [METADATA TOOMANY]`), at most 64 entries per command. A
//! mailbox's entries are deleted with it and follow it when renamed.

use mailstore_api::METADATA_MAX_VALUE;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::Io;
use crate::response::{self, Code, Status};
use crate::session::Session;
use crate::store::store_error;

/// A value as RFC 5464 §5 `value = nstring / literal8`: `literal8` when it
/// holds a NUL octet, else a quoted string or a literal.
fn value_out(out: &mut Vec<u8>, v: &[u8], utf8: bool) {
    if v.contains(&0) {
        out.extend_from_slice(format!("~{{{}}}\r\n", v.len()).as_bytes());
        out.extend_from_slice(v);
    } else {
        response::string(out, v, utf8);
    }
}

/// Values not larger than `maxsize` (all without it), and the size of the
/// largest one left out (RFC 5464 §4.2.1 LONGENTRIES).
fn within(
    entries: Vec<(String, Vec<u8>)>,
    maxsize: Option<u64>,
) -> (Vec<(String, Vec<u8>)>, Option<u64>) {
    let Some(max) = maxsize else {
        return (entries, None);
    };
    let mut longest = None;
    let kept = entries
        .into_iter()
        .filter(|(_, v)| {
            let len = v.len() as u64;
            if len > max {
                longest = longest.max(Some(len));
                false
            } else {
                true
            }
        })
        .collect();
    (kept, longest)
}

impl Session {
    /// The store's name for a METADATA mailbox argument: "" is the server.
    fn metadata_target(&self, raw: &[u8]) -> Result<String, Status> {
        if raw.is_empty() {
            Ok(String::new())
        } else {
            self.mailbox_in(raw)
        }
    }

    /// GETMETADATA (RFC 5464 §4.2): one `* METADATA` response with every
    /// existing entry asked for; entries that do not exist are left out.
    pub(super) async fn getmetadata<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        maxsize: Option<u64>,
        depth: u32,
        entries: Vec<String>,
    ) -> Status {
        let Some(user_id) = self.user_id() else {
            return Status::bad("Not authenticated");
        };
        let name = match self.metadata_target(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let found = match self
            .store()
            .get_metadata(user_id, &name, entries, depth)
            .await
        {
            Ok(f) => f,
            Err(e) => return store_error(&e),
        };
        let (found, longest) = within(found, maxsize);
        if !found.is_empty() {
            let utf8 = self.utf8();
            let mut out = b"* METADATA ".to_vec();
            if name.is_empty() {
                out.extend_from_slice(b"\"\"");
            } else {
                self.mailbox_out(&mut out, &name);
            }
            out.extend_from_slice(b" (");
            for (i, (entry, value)) in found.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                response::astring(&mut out, entry.as_bytes(), false);
                out.push(b' ');
                value_out(&mut out, value, utf8);
            }
            out.extend_from_slice(b")\r\n");
            io.write(&out);
        }
        let st = Status::ok("GETMETADATA completed");
        match longest {
            Some(n) => st.with(Code::MetadataLongEntries(n)),
            None => st,
        }
    }

    /// SETMETADATA (RFC 5464 §4.3): all entries or none; NIL deletes.
    pub(super) async fn setmetadata(
        &mut self,
        raw: &[u8],
        values: Vec<(String, Option<Vec<u8>>)>,
    ) -> Status {
        let Some(user_id) = self.user_id() else {
            return Status::bad("Not authenticated");
        };
        let name = match self.metadata_target(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        if values
            .iter()
            .any(|(_, v)| v.as_ref().is_some_and(|v| v.len() > METADATA_MAX_VALUE))
        {
            return Status::no("Value too large").with(Code::MetadataMaxSize(METADATA_MAX_VALUE));
        }
        match self.store().set_metadata(user_id, &name, values).await {
            Ok(()) => Status::ok("SETMETADATA completed"),
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                Status::no("Too many metadata entries").with(Code::MetadataTooMany)
            }
            Err(e) => store_error(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_strings_or_literal8() {
        let mut out = Vec::new();
        value_out(&mut out, b"plain", false);
        assert_eq!(out, b"\"plain\"");
        out.clear();
        value_out(&mut out, b"a\r\nb", false);
        assert_eq!(out, b"{4}\r\na\r\nb");
        out.clear();
        value_out(&mut out, b"a\0b", false);
        assert_eq!(out, b"~{3}\r\na\0b");
    }

    #[test]
    fn maxsize_leaves_out_long_values_and_reports_the_longest() {
        let e = |n: &str, len: usize| (n.to_string(), vec![b'x'; len]);
        let all = vec![e("/private/a", 3), e("/private/b", 10), e("/private/c", 7)];
        let (kept, longest) = within(all.clone(), None);
        assert_eq!((kept.len(), longest), (3, None));
        let (kept, longest) = within(all, Some(5));
        assert_eq!(kept, vec![e("/private/a", 3)]);
        assert_eq!(longest, Some(10));
    }
}
