//! The bearer-token check on every RPC: the store holds everyone's mail and
//! is never anonymous (threat model: the store API).
//!
//! Two tokens, two roles:
//! - the **service token** (`--token`, `EPISTOLE_STORE_TOKEN`) is what the
//!   protocol services and the queue workers hold: enough to read and write
//!   mail, check passwords and run the queues;
//! - the **admin token** (`--admin-token`, `EPISTOLE_STORE_ADMIN_TOKEN`) is
//!   what `mailctl` holds: everything the service token allows, plus the
//!   administrative RPCs below. A pod that leaks its service token cannot
//!   create users, change passwords or read DKIM private keys it did not
//!   already need.
//!
//! Without `--admin-token` the administrative RPCs are refused for everyone
//! (PERMISSION_DENIED, and a warning at start). That is the safe default:
//! nothing falls back to the service token. An empty token is refused at
//! start and an empty bearer token is refused on every call.
//!
//! | service  | RPC                                   | role    | why |
//! |----------|---------------------------------------|---------|-----|
//! | Accounts | CreateDomain, DeleteDomain, SetDomainPolicy | admin | changes what we accept mail for |
//! | Accounts | ListDomains                           | service | smtp-in, readiness |
//! | Accounts | CreateUser, SetPassword, DeleteUser   | admin   | account takeover |
//! | Accounts | GetUser                               | service | read one known user |
//! | Accounts | ListUsers, ListAliases                | admin   | enumerates every account |
//! | Accounts | CreateAlias, DeleteAlias              | admin   | redirects mail |
//! | Accounts | Authenticate, LookupRecipient, ResolveRecipient, CheckSender | service | protocols |
//! | Accounts | AddFilter, DeleteFilter               | admin   | redirects mail |
//! | Accounts | ListFilters                           | service | delivery |
//! | Accounts | PutDkimKey                            | admin   | signs as the domain |
//! | Accounts | ListDkimKeys                          | service | smtp-out signs with them |
//! | Accounts | GetQuota                              | service | imap GETQUOTA, smtp-in RCPT |
//! | Accounts | SetQuota                              | service | imap SETQUOTA by its quota admins (RFC 9208 §4.1.3); a leaked service token can lift a quota (disk use), nothing more |
//! | Accounts | SetDomainQuota                        | admin   | every user of a domain at once |
//! | Queue    | Enqueue, Lease, RenewLease, ReadMessage, SetRecipientResult, FinishJob, AddEvent | service | workers |
//! | Queue    | ListJobs, GetJob, RetryJob, DeleteJob, ListEvents, Trace | admin | reads everyone's envelopes, drops mail |
//! | Mailboxes| BackfillSearchText                    | admin   | reads every stored message; heavy |
//! | Mailboxes| all others                            | service | imap, pop3, delivery |
//! | Guard    | all                                   | service | every protocol service |
//!
//! The interceptor tags each request with its [`Role`]; each administrative
//! handler starts with [`require_admin`].

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// What the presented token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Service,
    Admin,
}

/// Compares the presented bearer token with the configured ones in constant
/// time (all hashed first, so lengths leak nothing either).
#[derive(Clone)]
pub struct TokenCheck {
    service: Arc<[u8; 32]>,
    admin: Option<Arc<[u8; 32]>>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl TokenCheck {
    /// `admin` None disables the administrative RPCs.
    #[must_use]
    pub fn new(service: &str, admin: Option<&str>) -> Self {
        Self {
            service: Arc::new(digest(service.as_bytes())),
            admin: admin.map(|a| Arc::new(digest(a.as_bytes()))),
        }
    }

    /// The role of a presented token; None when it matches neither (or is
    /// empty). Both comparisons always run.
    fn role(&self, presented: &[u8]) -> Option<Role> {
        if presented.is_empty() {
            return None;
        }
        let got = digest(presented);
        let service = ct_eq(&got, &self.service);
        let admin = self.admin.as_ref().is_some_and(|a| ct_eq(&got, a));
        if admin {
            Some(Role::Admin)
        } else if service {
            Some(Role::Service)
        } else {
            None
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let role = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.role(t.trim().as_bytes()));
        match role {
            Some(r) => {
                req.extensions_mut().insert(r);
                Ok(req)
            }
            None => Err(Status::unauthenticated("missing or wrong store token")),
        }
    }
}

/// Refuses the call unless it carries the admin token.
///
/// # Errors
/// PERMISSION_DENIED for the service token (or no configured admin token).
pub fn require_admin<T>(req: &Request<T>) -> Result<(), Status> {
    if req.extensions().get::<Role>() == Some(&Role::Admin) {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "administrative RPC: needs the store's admin token",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let c = TokenCheck::new("svc", Some("adm"));
        assert_eq!(c.role(b"svc"), Some(Role::Service));
        assert_eq!(c.role(b"adm"), Some(Role::Admin));
        assert_eq!(c.role(b""), None);
        assert_eq!(c.role(b"svc "), None);
        let no_admin = TokenCheck::new("svc", None);
        assert_eq!(no_admin.role(b"adm"), None);
        // An empty configured token (refused at start anyway) matches nothing.
        assert_eq!(TokenCheck::new("", None).role(b""), None);
    }
}
