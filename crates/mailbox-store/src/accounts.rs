//! Accounts service: domains, users, aliases, authentication, recipient
//! lookup and resolution.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use mailstore_api::pb;
use sqlx::{PgPool, Row};
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError, sqlstate};
use crate::{Store, names};

/// The default folder set of a new user, with RFC 6154 SPECIAL-USE.
pub const DEFAULT_MAILBOXES: [(&str, &str); 6] = [
    ("INBOX", ""),
    ("Sent", "Sent"),
    ("Drafts", "Drafts"),
    ("Trash", "Trash"),
    ("Junk", "Junk"),
    ("Archive", "Archive"),
];

/// Alias expansion limits: depth of the chain and total targets.
const MAX_ALIAS_DEPTH: usize = 10;
const MAX_TARGETS: usize = 1_000;
const MAX_PASSWORD: usize = 1_024;

/// A hash verified for unknown users, so that they cost the same time as a
/// wrong password for a real one.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"epistole-dummy-password")
        .map(|h| h.to_string())
        .unwrap_or_default()
});

pub struct AccountsSvc {
    store: Arc<Store>,
}

impl AccountsSvc {
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        LazyLock::force(&DUMMY_HASH);
        Self { store }
    }

    fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(ts(t))
}

/// Hashes a password with argon2id on the blocking pool (it is CPU-heavy).
///
/// # Errors
/// On an empty or oversized password.
pub async fn hash_password(password: String) -> Result<String> {
    if password.is_empty() || password.len() > MAX_PASSWORD {
        return Err(StoreError::invalid("password must be 1 to 1024 bytes"));
    }
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| StoreError::Internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| StoreError::Internal(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

async fn domain_id(pool: &PgPool, domain: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
        .bind(domain)
        .fetch_optional(pool)
        .await?)
}

fn user_from_row(row: &sqlx::postgres::PgRow) -> Result<pb::User> {
    let local: String = row.try_get("local_part")?;
    let domain: String = row.try_get("domain")?;
    Ok(pb::User {
        id: row.try_get::<i64, _>("id")? as u64,
        address: format!("{local}@{domain}"),
        quota_bytes: row.try_get::<i64, _>("quota_bytes")? as u64,
        used_bytes: row.try_get::<i64, _>("used_bytes")?.max(0) as u64,
        disabled: row.try_get("disabled")?,
        created_at: timestamp(row.try_get("created_at")?),
    })
}

const USER_SELECT: &str = "SELECT u.id, u.local_part, d.name AS domain, u.quota_bytes, u.used_bytes, u.disabled, u.created_at \
     FROM users u JOIN domains d ON d.id = u.domain_id";

/// One step of recipient resolution.
enum Found {
    User { id: i64, address: String },
    Aliases(Vec<String>),
    Nothing,
}

async fn lookup_exact(pool: &PgPool, domain_id: i64, local: &str, domain: &str) -> Result<Found> {
    if let Some(id) = sqlx::query_scalar::<_, i64>(
        "SELECT id FROM users WHERE domain_id = $1 AND local_part = $2 AND NOT disabled",
    )
    .bind(domain_id)
    .bind(local)
    .fetch_optional(pool)
    .await?
    {
        return Ok(Found::User {
            id,
            address: format!("{local}@{domain}"),
        });
    }
    let targets: Vec<String> = sqlx::query_scalar(
        "SELECT target FROM aliases WHERE domain_id = $1 AND local_part = $2 ORDER BY id",
    )
    .bind(domain_id)
    .bind(local)
    .fetch_all(pool)
    .await?;
    Ok(if targets.is_empty() {
        Found::Nothing
    } else {
        Found::Aliases(targets)
    })
}

/// Resolves an address to local users and remote addresses.
/// Order: exact user, exact alias, `base` of `base+detail` (user or alias),
/// then the domain's catch-all. Alias chains are followed breadth-first with
/// a depth limit; a chain that comes back to an address already expanded is
/// a loop.
pub async fn resolve(pool: &PgPool, address: &str) -> Result<pb::ResolveRecipientResponse> {
    let Ok((local, domain)) = names::address(address) else {
        // Not a plain address: it cannot be one of ours. A domain that is ours
        // with a weird local part is UNKNOWN, anything else NOT_LOCAL.
        let status = match address.rsplit_once('@').map(|(_, d)| names::domain(d)) {
            Some(Ok(d)) if domain_id(pool, &d).await?.is_some() => pb::RecipientStatus::Unknown,
            _ => pb::RecipientStatus::NotLocal,
        };
        return Ok(pb::ResolveRecipientResponse {
            status: status as i32,
            ..Default::default()
        });
    };
    let Some(did) = domain_id(pool, &domain).await? else {
        return Ok(pb::ResolveRecipientResponse {
            status: pb::RecipientStatus::NotLocal as i32,
            ..Default::default()
        });
    };
    let mut out = pb::ResolveRecipientResponse {
        status: pb::RecipientStatus::Unknown as i32,
        ..Default::default()
    };
    let mut seen_targets = HashSet::new();
    let mut expanded = HashSet::new();
    let mut frontier = vec![(local, domain, did, 0usize)];
    while let Some((local, domain, did, depth)) = frontier.pop() {
        if depth > MAX_ALIAS_DEPTH || out.targets.len() >= MAX_TARGETS {
            out.loop_detected = true;
            break;
        }
        let key = format!("{local}@{domain}");
        if !expanded.insert(key.clone()) {
            out.loop_detected = true;
            continue;
        }
        let mut detail = String::new();
        let mut found = lookup_exact(pool, did, &local, &domain).await?;
        if matches!(found, Found::Nothing)
            && let Some((base, tag)) = local.split_once('+')
            && !base.is_empty()
        {
            detail = tag.to_string();
            found = lookup_exact(pool, did, base, &domain).await?;
        }
        if matches!(found, Found::Nothing) {
            found = lookup_exact(pool, did, "", &domain).await?;
        }
        match found {
            Found::User { id, address } => {
                if seen_targets.insert(address.clone()) {
                    out.targets.push(pb::ResolvedTarget {
                        target: Some(pb::resolved_target::Target::Local(pb::LocalTarget {
                            user_id: id as u64,
                            address,
                            detail,
                        })),
                    });
                }
            }
            Found::Aliases(targets) => {
                for t in targets {
                    let Ok((tl, td)) = names::address(&t) else {
                        continue;
                    };
                    match domain_id(pool, &td).await? {
                        Some(tdid) => frontier.push((tl, td, tdid, depth + 1)),
                        None => {
                            let remote = format!("{tl}@{td}");
                            if seen_targets.insert(remote.clone()) {
                                out.targets.push(pb::ResolvedTarget {
                                    target: Some(pb::resolved_target::Target::Remote(remote)),
                                });
                            }
                        }
                    }
                }
            }
            Found::Nothing => {}
        }
    }
    if !out.targets.is_empty() {
        out.status = pb::RecipientStatus::Local as i32;
    }
    Ok(out)
}

/// Creates a user and its default mailboxes in one transaction.
pub async fn create_user(
    pool: &PgPool,
    address: &str,
    password: String,
    quota: u64,
) -> Result<pb::User> {
    let (local, domain) = names::address(address)?;
    if local.contains('+') {
        return Err(StoreError::invalid("'+' is reserved for plus-addressing"));
    }
    let hash = hash_password(password).await?;
    let mut tx = pool.begin().await?;
    let did: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
        .bind(&domain)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("domain"))?;
    let res = sqlx::query_scalar::<_, i64>(
        "INSERT INTO users (domain_id, local_part, password_hash, quota_bytes) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(did)
    .bind(&local)
    .bind(&hash)
    .bind(i64::try_from(quota).unwrap_or(i64::MAX))
    .fetch_one(&mut *tx)
    .await;
    let id = match res {
        Ok(id) => id,
        Err(e) if sqlstate(&e).as_deref() == Some("23505") => {
            return Err(StoreError::AlreadyExists("user"));
        }
        Err(e) => return Err(e.into()),
    };
    for (name, special) in DEFAULT_MAILBOXES {
        sqlx::query("INSERT INTO mailboxes (user_id, name, special_use) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(special)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO subscriptions (user_id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    get_user_by_id(pool, id).await
}

async fn get_user_by_id(pool: &PgPool, id: i64) -> Result<pb::User> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{USER_SELECT} WHERE u.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound("user"))?;
    user_from_row(&row)
}

async fn user_id_of(pool: &PgPool, address: &str) -> Result<i64> {
    let (local, domain) = names::address(address)?;
    sqlx::query_scalar(
        "SELECT u.id FROM users u JOIN domains d ON d.id = u.domain_id WHERE d.name = $1 AND u.local_part = $2",
    )
    .bind(&domain)
    .bind(&local)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound("user"))
}

/// Counts a failed login from `ip` and tells whether the IP is now over the limit.
async fn over_failure_limit(pool: &PgPool, ip: &str, limit: u32) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM auth_failures WHERE ip = $1 AND at > now() - interval '1 minute'",
    )
    .bind(ip)
    .fetch_one(pool)
    .await?;
    Ok(n >= i64::from(limit))
}

#[tonic::async_trait]
impl pb::accounts_server::Accounts for AccountsSvc {
    async fn create_domain(
        &self,
        req: Request<pb::CreateDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let name = names::domain(&req.get_ref().name)?;
        let row = sqlx::query("INSERT INTO domains (name) VALUES ($1) RETURNING id, created_at")
            .bind(&name)
            .fetch_one(self.pool())
            .await;
        let row = match row {
            Ok(r) => r,
            Err(e) if sqlstate(&e).as_deref() == Some("23505") => {
                return Err(StoreError::AlreadyExists("domain").into());
            }
            Err(e) => return Err(StoreError::from(e).into()),
        };
        Ok(Response::new(pb::Domain {
            id: row.try_get::<i64, _>("id").map_err(StoreError::from)? as u64,
            name,
            created_at: timestamp(row.try_get("created_at").map_err(StoreError::from)?),
        }))
    }

    async fn delete_domain(
        &self,
        req: Request<pb::DeleteDomainRequest>,
    ) -> Result<Response<pb::DeleteDomainResponse>, Status> {
        let req = req.into_inner();
        let name = names::domain(&req.name)?;
        let did = domain_id(self.pool(), &name)
            .await?
            .ok_or(StoreError::NotFound("domain"))?;
        if !req.force {
            let users: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM users WHERE domain_id = $1) + (SELECT count(*) FROM aliases WHERE domain_id = $1)",
            )
            .bind(did)
            .fetch_one(self.pool())
            .await
            .map_err(StoreError::from)?;
            if users > 0 {
                return Err(StoreError::precondition("domain still has users or aliases").into());
            }
        }
        sqlx::query("DELETE FROM domains WHERE id = $1")
            .bind(did)
            .execute(self.pool())
            .await
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::DeleteDomainResponse {}))
    }

    async fn list_domains(
        &self,
        _req: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let rows = sqlx::query("SELECT id, name, created_at FROM domains ORDER BY name")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::from)?;
        let domains = rows
            .iter()
            .map(|r| {
                Ok(pb::Domain {
                    id: r.try_get::<i64, _>("id")? as u64,
                    name: r.try_get("name")?,
                    created_at: timestamp(r.try_get("created_at")?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::ListDomainsResponse { domains }))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let req = req.into_inner();
        Ok(Response::new(
            create_user(self.pool(), &req.address, req.password, req.quota_bytes).await?,
        ))
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let req = req.into_inner();
        let id = user_id_of(self.pool(), &req.address).await?;
        let hash = hash_password(req.password).await?;
        sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(id)
            .bind(hash)
            .execute(self.pool())
            .await
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::SetPasswordResponse {}))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let id = user_id_of(self.pool(), &req.get_ref().address).await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let id = match req.into_inner().key {
            Some(pb::get_user_request::Key::Address(a)) => user_id_of(self.pool(), &a).await?,
            Some(pb::get_user_request::Key::Id(id)) => {
                i64::try_from(id).map_err(|_| StoreError::NotFound("user"))?
            }
            None => return Err(StoreError::invalid("address or id required").into()),
        };
        Ok(Response::new(get_user_by_id(self.pool(), id).await?))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let domain = req.into_inner().domain;
        let rows = if domain.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{USER_SELECT} ORDER BY d.name, u.local_part"
            )))
            .fetch_all(self.pool())
            .await
        } else {
            let d = names::domain(&domain)?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{USER_SELECT} WHERE d.name = $1 ORDER BY u.local_part"
            )))
            .bind(d)
            .fetch_all(self.pool())
            .await
        }
        .map_err(StoreError::from)?;
        let users = rows.iter().map(user_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn create_alias(
        &self,
        req: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::Alias>, Status> {
        let req = req.into_inner();
        let (local, domain) = parse_alias_source(&req.source)?;
        let (tl, td) = names::address(&req.target)?;
        let target = format!("{tl}@{td}");
        let did = domain_id(self.pool(), &domain)
            .await?
            .ok_or(StoreError::NotFound("domain"))?;
        let res = sqlx::query_scalar::<_, i64>(
            "INSERT INTO aliases (domain_id, local_part, target) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(did)
        .bind(&local)
        .bind(&target)
        .fetch_one(self.pool())
        .await;
        let id = match res {
            Ok(id) => id,
            Err(e) if sqlstate(&e).as_deref() == Some("23505") => {
                return Err(StoreError::AlreadyExists("alias").into());
            }
            Err(e) => return Err(StoreError::from(e).into()),
        };
        Ok(Response::new(pb::Alias {
            id: id as u64,
            source: format!("{local}@{domain}"),
            target,
        }))
    }

    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let req = req.into_inner();
        let (local, domain) = parse_alias_source(&req.source)?;
        let did = domain_id(self.pool(), &domain)
            .await?
            .ok_or(StoreError::NotFound("domain"))?;
        let res = if req.target.is_empty() {
            sqlx::query("DELETE FROM aliases WHERE domain_id = $1 AND local_part = $2")
                .bind(did)
                .bind(&local)
                .execute(self.pool())
                .await
        } else {
            let (tl, td) = names::address(&req.target)?;
            sqlx::query(
                "DELETE FROM aliases WHERE domain_id = $1 AND local_part = $2 AND target = $3",
            )
            .bind(did)
            .bind(&local)
            .bind(format!("{tl}@{td}"))
            .execute(self.pool())
            .await
        }
        .map_err(StoreError::from)?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound("alias").into());
        }
        Ok(Response::new(pb::DeleteAliasResponse {
            deleted: u32::try_from(res.rows_affected()).unwrap_or(u32::MAX),
        }))
    }

    async fn list_aliases(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let domain = req.into_inner().domain;
        let sql = "SELECT a.id, a.local_part, d.name, a.target FROM aliases a JOIN domains d ON d.id = a.domain_id \
                   WHERE ($1 = '' OR d.name = $1) ORDER BY d.name, a.local_part, a.target";
        let d = if domain.is_empty() {
            String::new()
        } else {
            names::domain(&domain)?
        };
        let rows = sqlx::query(sql)
            .bind(d)
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::from)?;
        let aliases = rows
            .iter()
            .map(|r| {
                let local: String = r.try_get("local_part")?;
                let domain: String = r.try_get("name")?;
                Ok(pb::Alias {
                    id: r.try_get::<i64, _>("id")? as u64,
                    source: format!("{local}@{domain}"),
                    target: r.try_get("target")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::ListAliasesResponse { aliases }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = req.into_inner();
        let pool = self.pool();
        let ip = req.remote_ip.clone();
        let limit = self.store.config.auth_failure_limit;
        if !ip.is_empty() && over_failure_limit(pool, &ip, limit).await? {
            metrics::counter!("store_auth_total", "result" => "throttled").increment(1);
            return Ok(Response::new(pb::AuthenticateResponse {
                status: pb::AuthStatus::Throttled as i32,
                retry_after_ms: 60_000,
                ..Default::default()
            }));
        }
        let password = if req.password.len() > MAX_PASSWORD {
            String::new()
        } else {
            req.password
        };
        let user = match names::address(&req.username) {
            Ok((local, domain)) => sqlx::query(
                "SELECT u.id, u.password_hash, u.disabled FROM users u JOIN domains d ON d.id = u.domain_id \
                 WHERE d.name = $1 AND u.local_part = $2",
            )
            .bind(&domain)
            .bind(&local)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?
            .map(|r| -> Result<(i64, String, bool)> {
                Ok((r.try_get("id")?, r.try_get("password_hash")?, r.try_get("disabled")?))
            })
            .transpose()?
            .map(|(id, hash, disabled)| (id, hash, disabled, format!("{local}@{domain}"))),
            Err(_) => None,
        };
        // Same work whether or not the user exists (RFC 4954 §9, ATTACKS 16).
        let (hash, user) = match user {
            Some((id, hash, disabled, address)) => (hash, (!disabled).then_some((id, address))),
            None => (DUMMY_HASH.clone(), None),
        };
        let verified = !password.is_empty() && verify_password(password, hash).await;
        match (verified, user) {
            (true, Some((id, address))) => {
                metrics::counter!("store_auth_total", "result" => "ok").increment(1);
                Ok(Response::new(pb::AuthenticateResponse {
                    status: pb::AuthStatus::Ok as i32,
                    user_id: id as u64,
                    address,
                    retry_after_ms: 0,
                }))
            }
            _ => {
                metrics::counter!("store_auth_total", "result" => "failed").increment(1);
                if !ip.is_empty() {
                    sqlx::query("INSERT INTO auth_failures (ip) VALUES ($1)")
                        .bind(&ip)
                        .execute(pool)
                        .await
                        .map_err(StoreError::from)?;
                }
                tracing::info!(ip = %ip, protocol = req.protocol, sid = %req.session_id, "authentication failed");
                Ok(Response::new(pb::AuthenticateResponse {
                    status: pb::AuthStatus::Failed as i32,
                    ..Default::default()
                }))
            }
        }
    }

    async fn lookup_recipient(
        &self,
        req: Request<pb::LookupRecipientRequest>,
    ) -> Result<Response<pb::LookupRecipientResponse>, Status> {
        let r = resolve(self.pool(), &req.get_ref().address).await?;
        Ok(Response::new(pb::LookupRecipientResponse {
            status: r.status,
        }))
    }

    async fn resolve_recipient(
        &self,
        req: Request<pb::ResolveRecipientRequest>,
    ) -> Result<Response<pb::ResolveRecipientResponse>, Status> {
        Ok(Response::new(
            resolve(self.pool(), &req.get_ref().address).await?,
        ))
    }

    async fn check_sender(
        &self,
        req: Request<pb::CheckSenderRequest>,
    ) -> Result<Response<pb::CheckSenderResponse>, Status> {
        let req = req.into_inner();
        let uid = i64::try_from(req.user_id).map_err(|_| StoreError::NotFound("user"))?;
        let user = get_user_by_id(self.pool(), uid).await?;
        // Own address, own plus-address, or an alias that expands to the user.
        let allowed = match names::address(&req.address) {
            Ok((local, domain)) => {
                let addr = format!("{local}@{domain}");
                let base = local.split_once('+').map_or(local.as_str(), |(b, _)| b);
                if addr == user.address || format!("{base}@{domain}") == user.address {
                    true
                } else {
                    let did = domain_id(self.pool(), &domain).await?;
                    match did {
                        Some(did) => {
                            let targets: Vec<String> = sqlx::query_scalar(
                                "SELECT target FROM aliases WHERE domain_id = $1 AND local_part = $2",
                            )
                            .bind(did)
                            .bind(base)
                            .fetch_all(self.pool())
                            .await
                            .map_err(StoreError::from)?;
                            targets.contains(&user.address)
                        }
                        None => false,
                    }
                }
            }
            Err(_) => false,
        };
        Ok(Response::new(pb::CheckSenderResponse { allowed }))
    }

    async fn add_filter(
        &self,
        req: Request<pb::AddFilterRequest>,
    ) -> Result<Response<pb::Filter>, Status> {
        let req = req.into_inner();
        let user = user_id_of(self.pool(), &req.address).await?;
        let folder = names::mailbox(&req.folder)?;
        if req.header.is_empty()
            || req.header.len() > 200
            || !req
                .header
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b':')
            || req.contains.len() > 1_000
        {
            return Err(StoreError::invalid(
                "filter needs a header name and a value up to 1000 bytes",
            )
            .into());
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO filters (user_id, position, header, contains, folder) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(user)
        .bind(req.position)
        .bind(&req.header)
        .bind(&req.contains)
        .bind(&folder)
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::from)?;
        Ok(Response::new(pb::Filter {
            id: id as u64,
            user_id: user as u64,
            position: req.position,
            header: req.header,
            contains: req.contains,
            folder,
        }))
    }

    async fn list_filters(
        &self,
        req: Request<pb::ListFiltersRequest>,
    ) -> Result<Response<pb::ListFiltersResponse>, Status> {
        let user = match req.into_inner().key {
            Some(pb::list_filters_request::Key::Address(a)) => user_id_of(self.pool(), &a).await?,
            Some(pb::list_filters_request::Key::UserId(id)) => {
                i64::try_from(id).map_err(|_| StoreError::NotFound("user"))?
            }
            None => return Err(StoreError::invalid("address or user_id required").into()),
        };
        let rows = sqlx::query(
            "SELECT id, position, header, contains, folder FROM filters WHERE user_id = $1 ORDER BY position, id",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        let filters = rows
            .iter()
            .map(|r| {
                Ok(pb::Filter {
                    id: r.try_get::<i64, _>("id")? as u64,
                    user_id: user as u64,
                    position: r.try_get("position")?,
                    header: r.try_get("header")?,
                    contains: r.try_get("contains")?,
                    folder: r.try_get("folder")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::ListFiltersResponse { filters }))
    }

    async fn put_dkim_key(
        &self,
        req: Request<pb::PutDkimKeyRequest>,
    ) -> Result<Response<pb::DkimKey>, Status> {
        let req = req.into_inner();
        let domain = names::domain(&req.domain)?;
        let selector = req.selector.to_ascii_lowercase();
        // RFC 6376 §3.1: a selector is a sub-domain of dot-separated labels.
        if names::domain(&selector).is_err() {
            return Err(StoreError::invalid("invalid DKIM selector").into());
        }
        let k = match req.algorithm.as_str() {
            "rsa-sha256" => "rsa",
            "ed25519-sha256" => "ed25519",
            _ => {
                return Err(
                    StoreError::invalid("algorithm must be rsa-sha256 or ed25519-sha256").into(),
                );
            }
        };
        if !req.private_key.contains("PRIVATE KEY")
            || req.public_key.is_empty()
            || !req
                .public_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        {
            return Err(
                StoreError::invalid("PEM private key and base64 public key required").into(),
            );
        }
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let did: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
            .bind(&domain)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .ok_or(StoreError::NotFound("domain"))?;
        if req.activate {
            sqlx::query("UPDATE dkim_keys SET active = false WHERE domain_id = $1 AND active")
                .bind(did)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        let res = sqlx::query(
            "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_key, public_key, active) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
        )
        .bind(did)
        .bind(&selector)
        .bind(&req.algorithm)
        .bind(&req.private_key)
        .bind(&req.public_key)
        .bind(req.activate)
        .fetch_one(&mut *tx)
        .await;
        let row = match res {
            Ok(r) => r,
            Err(e) if sqlstate(&e).as_deref() == Some("23505") => {
                return Err(StoreError::AlreadyExists("DKIM selector").into());
            }
            Err(e) => return Err(StoreError::from(e).into()),
        };
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Response::new(pb::DkimKey {
            dns_txt: format!("v=DKIM1; k={k}; p={}", req.public_key),
            domain,
            selector,
            algorithm: req.algorithm,
            private_key: String::new(),
            public_key: req.public_key,
            active: req.activate,
            created_at: timestamp(row.try_get("created_at").map_err(StoreError::from)?),
        }))
    }

    async fn list_dkim_keys(
        &self,
        req: Request<pb::ListDkimKeysRequest>,
    ) -> Result<Response<pb::ListDkimKeysResponse>, Status> {
        let req = req.into_inner();
        let domain = if req.domain.is_empty() {
            String::new()
        } else {
            names::domain(&req.domain)?
        };
        let rows = sqlx::query(
            "SELECT d.name, k.selector, k.algorithm, k.private_key, k.public_key, k.active, k.created_at \
             FROM dkim_keys k JOIN domains d ON d.id = k.domain_id \
             WHERE ($1 = '' OR d.name = $1) AND (NOT $2 OR k.active) ORDER BY d.name, k.created_at, k.id",
        )
        .bind(&domain)
        .bind(req.active_only)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        let keys = rows
            .iter()
            .map(|r| {
                let algorithm: String = r.try_get("algorithm")?;
                let public_key: String = r.try_get("public_key")?;
                let k = if algorithm.starts_with("ed25519") {
                    "ed25519"
                } else {
                    "rsa"
                };
                Ok(pb::DkimKey {
                    domain: r.try_get("name")?,
                    selector: r.try_get("selector")?,
                    private_key: if req.include_private {
                        r.try_get("private_key")?
                    } else {
                        String::new()
                    },
                    dns_txt: format!("v=DKIM1; k={k}; p={public_key}"),
                    algorithm,
                    public_key,
                    active: r.try_get("active")?,
                    created_at: timestamp(r.try_get("created_at")?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::ListDkimKeysResponse { keys }))
    }

    async fn delete_filter(
        &self,
        req: Request<pb::DeleteFilterRequest>,
    ) -> Result<Response<pb::DeleteFilterResponse>, Status> {
        let id = i64::try_from(req.get_ref().id).map_err(|_| StoreError::NotFound("filter"))?;
        let n = sqlx::query("DELETE FROM filters WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(StoreError::from)?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound("filter").into());
        }
        Ok(Response::new(pb::DeleteFilterResponse {}))
    }
}

/// "local@domain" or "@domain" (catch-all).
fn parse_alias_source(source: &str) -> Result<(String, String)> {
    if let Some(d) = source.strip_prefix('@') {
        return Ok((String::new(), names::domain(d)?));
    }
    names::address(source)
}
