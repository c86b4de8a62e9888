//! QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA.
//!
//! Every user has one quota root, named `""` for its owner, holding all of
//! its mailboxes, with the resources STORAGE (RFC 9208 §5.1, in units of
//! 1024 octets on the wire, bytes in the store) and MESSAGE (§5.2). The
//! limits are the user's own or its domain's default (set with `mailctl
//! quota`); a resource without a limit is left out of the QUOTA response.
//! The accounting and the refusals (APPEND/COPY: `NO [OVERQUOTA]`, §4.3)
//! are the store's.
//!
//! SETQUOTA (§4.1.3) is for the users named by `--quota-admin` only
//! (`NO [NOPERM]` for others). An administrator names another user's root
//! by its address, and may GETQUOTA it too; a SETQUOTA replaces the user's
//! own limits, and a resource not listed falls back to the domain default.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::Io;
use crate::model::QuotaInfo;
use crate::response::{self, Code, Status};
use crate::session::Session;
use crate::store::store_error;

/// The `* QUOTA root (resource usage limit ...)` line (RFC 9208 §5.1).
fn quota_line(out: &mut Vec<u8>, root: &str, q: &QuotaInfo, utf8: bool) {
    out.extend_from_slice(b"* QUOTA ");
    response::astring(out, root.as_bytes(), utf8);
    out.extend_from_slice(b" (");
    let mut items = Vec::new();
    if let Some(limit) = q.limit_bytes {
        items.push(format!(
            "STORAGE {} {}",
            q.used_bytes.div_ceil(1024),
            limit.div_ceil(1024)
        ));
    }
    if let Some(limit) = q.limit_messages {
        items.push(format!("MESSAGE {} {limit}", q.used_messages));
    }
    out.extend_from_slice(items.join(" ").as_bytes());
    out.extend_from_slice(b")\r\n");
}

impl Session {
    fn is_quota_admin(&self) -> bool {
        self.user().is_some_and(|u| {
            self.cfg()
                .quota_admins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&u.address))
        })
    }

    /// Which user a quota root names: `""` (or its own address) is the
    /// session's user; another address only for quota administrators.
    /// Returns the address to ask the store for (`None` = own, by id).
    fn quota_root(&self, raw: &[u8]) -> Result<Option<String>, Status> {
        let unknown = || Status::no("No such quota root").with(Code::Nonexistent);
        let Some(user) = self.user() else {
            return Err(Status::bad("Not authenticated"));
        };
        let root = std::str::from_utf8(raw).map_err(|_| unknown())?;
        if root.is_empty() || root.eq_ignore_ascii_case(&user.address) {
            Ok(None)
        } else if self.is_quota_admin() && root.contains('@') {
            Ok(Some(root.to_ascii_lowercase()))
        } else {
            Err(unknown())
        }
    }

    /// GETQUOTA (RFC 9208 §4.1.1).
    pub(super) async fn getquota<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
    ) -> Status {
        let Some(user_id) = self.user_id() else {
            return Status::bad("Not authenticated");
        };
        let address = match self.quota_root(raw) {
            Ok(a) => a,
            Err(st) => return st,
        };
        match self.store().get_quota(user_id, address.as_deref()).await {
            Ok(q) => {
                let mut out = Vec::new();
                quota_line(&mut out, &String::from_utf8_lossy(raw), &q, self.utf8());
                io.write(&out);
                Status::ok("GETQUOTA completed")
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                Status::no("No such quota root").with(Code::Nonexistent)
            }
            Err(e) => store_error(&e),
        }
    }

    /// GETQUOTAROOT (RFC 9208 §4.1.2): every mailbox is under the user's
    /// one root `""`.
    pub(super) async fn getquotaroot<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
    ) -> Status {
        let Some(user_id) = self.user_id() else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let store = self.store();
        if let Err(e) = store.get_mailbox(user_id, &name, false).await {
            return store_error(&e);
        }
        match store.get_quota(user_id, None).await {
            Ok(q) => {
                let mut out = b"* QUOTAROOT ".to_vec();
                self.mailbox_out(&mut out, &name);
                out.extend_from_slice(b" \"\"\r\n");
                quota_line(&mut out, "", &q, self.utf8());
                io.write(&out);
                Status::ok("GETQUOTAROOT completed")
            }
            Err(e) => store_error(&e),
        }
    }

    /// SETQUOTA (RFC 9208 §4.1.3), for quota administrators.
    pub(super) async fn setquota<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        limits: &[(String, u64)],
    ) -> Status {
        let Some(user) = self.user().cloned() else {
            return Status::bad("Not authenticated");
        };
        if !self.is_quota_admin() {
            return Status::no("Only quota administrators may set quotas").with(Code::NoPerm);
        }
        let address = match self.quota_root(raw) {
            Ok(a) => a.unwrap_or(user.address),
            Err(st) => return st,
        };
        let (mut bytes, mut messages) = (None, None);
        for (name, limit) in limits {
            let slot = match name.as_str() {
                "STORAGE" => &mut bytes,
                "MESSAGE" => &mut messages,
                _ => return Status::no(format!("Unsupported resource {name}")).with(Code::Cannot),
            };
            if slot.is_some() {
                return Status::bad(format!("{name} given twice"));
            }
            let value = if name == "STORAGE" {
                match limit.checked_mul(1024) {
                    Some(v) => v,
                    None => return Status::bad("STORAGE limit too large"),
                }
            } else {
                *limit
            };
            *slot = Some(value);
        }
        match self.store().set_quota(&address, bytes, messages).await {
            Ok(q) => {
                let mut out = Vec::new();
                quota_line(&mut out, &String::from_utf8_lossy(raw), &q, self.utf8());
                io.write(&out);
                Status::ok("SETQUOTA completed")
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                Status::no("No such quota root").with(Code::Nonexistent)
            }
            Err(e) => store_error(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_line_lists_only_limited_resources_in_kib() {
        let mut q = QuotaInfo {
            used_bytes: 1025,
            used_messages: 3,
            ..QuotaInfo::default()
        };
        let mut out = Vec::new();
        quota_line(&mut out, "", &q, false);
        assert_eq!(out, b"* QUOTA \"\" ()\r\n");
        q.limit_bytes = Some(10 * 1024);
        q.limit_messages = Some(5);
        out.clear();
        quota_line(&mut out, "", &q, false);
        assert_eq!(out, b"* QUOTA \"\" (STORAGE 2 10 MESSAGE 3 5)\r\n");
        out.clear();
        quota_line(&mut out, "bob@example.org", &q, false);
        assert_eq!(
            out,
            b"* QUOTA bob@example.org (STORAGE 2 10 MESSAGE 3 5)\r\n"
        );
    }
}
