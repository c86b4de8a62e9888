//! Users: creation with the default mailboxes, passwords, lookup.

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::db::{UNIQUE_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::names;
use crate::wire::timestamp;

use crate::hashing::HashPool;

use super::authenticate::hash_password;
use super::{AccountsSvc, DEFAULT_MAILBOXES};

/// Creates a user and its default mailboxes in one transaction.
pub async fn create_user(
    pool: &PgPool,
    hasher: &HashPool,
    address: &str,
    password: String,
    quota: u64,
) -> Result<pb::User> {
    let (local, domain) = names::address(address)?;
    if local.contains('+') {
        return Err(StoreError::invalid("'+' is reserved for plus-addressing"));
    }
    let hash = hash_password(hasher, password).await?;
    let mut tx = pool.begin().await?;
    let did: i64 = sqlx::query_scalar!("SELECT id FROM domains WHERE name = $1", &domain)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("domain"))?;
    let res = sqlx::query_scalar!(
        "INSERT INTO users (domain_id, local_part, password_hash, quota_bytes) VALUES ($1, $2, $3, $4) RETURNING id",
        did,
        &local,
        &hash,
        // 0 = no own limit: the domain default applies (migration 0009).
        (quota > 0).then(|| i64::try_from(quota).unwrap_or(i64::MAX))
    )
    .fetch_one(&mut *tx)
    .await;
    let id = match res {
        Ok(id) => id,
        Err(e) if is_sqlstate(&e, UNIQUE_VIOLATION) => {
            return Err(StoreError::AlreadyExists("user"));
        }
        Err(e) => return Err(e.into()),
    };
    for (name, special) in DEFAULT_MAILBOXES {
        sqlx::query!(
            "INSERT INTO mailboxes (user_id, name, special_use) VALUES ($1, $2, $3)",
            id,
            name,
            special
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO subscriptions (user_id, name) VALUES ($1, $2)",
            id,
            name
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    get_user_by_id(pool, id).await
}

pub(super) async fn get_user_by_id(pool: &PgPool, id: i64) -> Result<pb::User> {
    let row = sqlx::query_as!(
        UserRow,
        "SELECT u.id, u.local_part, d.name AS domain, u.quota_bytes, u.used_bytes, u.disabled, u.created_at \
         FROM users u JOIN domains d ON d.id = u.domain_id WHERE u.id = $1",
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound("user"))?;
    Ok(row.into())
}

pub(super) async fn user_id_of(pool: &PgPool, address: &str) -> Result<i64> {
    let (local, domain) = names::address(address)?;
    sqlx::query_scalar!(
        "SELECT u.id FROM users u JOIN domains d ON d.id = u.domain_id WHERE d.name = $1 AND u.local_part = $2",
        &domain,
        &local
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound("user"))
}

/// A user row joined with its domain.
struct UserRow {
    id: i64,
    local_part: String,
    domain: String,
    quota_bytes: Option<i64>,
    used_bytes: i64,
    disabled: bool,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<UserRow> for pb::User {
    fn from(row: UserRow) -> Self {
        pb::User {
            id: row.id as u64,
            address: format!("{}@{}", row.local_part, row.domain),
            quota_bytes: row.quota_bytes.unwrap_or(0).max(0) as u64,
            used_bytes: row.used_bytes.max(0) as u64,
            disabled: row.disabled,
            created_at: timestamp(row.created_at),
        }
    }
}

pub(super) async fn create_user_rpc(
    svc: &AccountsSvc,
    req: Request<pb::CreateUserRequest>,
) -> Result<Response<pb::User>, Status> {
    let req = req.into_inner();
    Ok(Response::new(
        create_user(
            svc.pool(),
            &svc.store.hasher,
            &req.address,
            req.password,
            req.quota_bytes,
        )
        .await?,
    ))
}

pub(super) async fn set_password(
    svc: &AccountsSvc,
    req: Request<pb::SetPasswordRequest>,
) -> Result<Response<pb::SetPasswordResponse>, Status> {
    let req = req.into_inner();
    let id = user_id_of(svc.pool(), &req.address).await?;
    let hash = hash_password(&svc.store.hasher, req.password).await?;
    sqlx::query!(
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        id,
        hash
    )
    .execute(svc.pool())
    .await
    .map_err(StoreError::from)?;
    // Other replicas miss their cache by themselves: its key includes the
    // stored hash (see `hashing`).
    svc.store.auth_cache.forget_user(id);
    Ok(Response::new(pb::SetPasswordResponse {}))
}

pub(super) async fn delete_user(
    svc: &AccountsSvc,
    req: Request<pb::DeleteUserRequest>,
) -> Result<Response<pb::DeleteUserResponse>, Status> {
    let id = user_id_of(svc.pool(), &req.get_ref().address).await?;
    sqlx::query!("DELETE FROM users WHERE id = $1", id)
        .execute(svc.pool())
        .await
        .map_err(StoreError::from)?;
    svc.store.auth_cache.forget_user(id);
    Ok(Response::new(pb::DeleteUserResponse {}))
}

pub(super) async fn get_user(
    svc: &AccountsSvc,
    req: Request<pb::GetUserRequest>,
) -> Result<Response<pb::User>, Status> {
    let id = match req.into_inner().key {
        Some(pb::get_user_request::Key::Address(a)) => user_id_of(svc.pool(), &a).await?,
        Some(pb::get_user_request::Key::Id(id)) => {
            i64::try_from(id).map_err(|_| StoreError::NotFound("user"))?
        }
        None => return Err(StoreError::invalid("address or id required").into()),
    };
    Ok(Response::new(get_user_by_id(svc.pool(), id).await?))
}

pub(super) async fn list_users(
    svc: &AccountsSvc,
    req: Request<pb::ListUsersRequest>,
) -> Result<Response<pb::ListUsersResponse>, Status> {
    let domain = req.into_inner().domain;
    let rows = if domain.is_empty() {
        sqlx::query_as!(
            UserRow,
            "SELECT u.id, u.local_part, d.name AS domain, u.quota_bytes, u.used_bytes, u.disabled, u.created_at \
             FROM users u JOIN domains d ON d.id = u.domain_id ORDER BY d.name, u.local_part"
        )
        .fetch_all(svc.pool())
        .await
    } else {
        let d = names::domain(&domain)?;
        sqlx::query_as!(
            UserRow,
            "SELECT u.id, u.local_part, d.name AS domain, u.quota_bytes, u.used_bytes, u.disabled, u.created_at \
             FROM users u JOIN domains d ON d.id = u.domain_id WHERE d.name = $1 ORDER BY u.local_part",
            d
        )
        .fetch_all(svc.pool())
        .await
    }
    .map_err(StoreError::from)?;
    let users = rows.into_iter().map(pb::User::from).collect();
    Ok(Response::new(pb::ListUsersResponse { users }))
}
