//! DKIM signing keys per domain (RFC 6376).

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::db::{UNIQUE_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::names;
use crate::wire::timestamp;

use super::AccountsSvc;

pub(super) async fn put_dkim_key(
    svc: &AccountsSvc,
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
        return Err(StoreError::invalid("PEM private key and base64 public key required").into());
    }
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let did: i64 = sqlx::query_scalar!("SELECT id FROM domains WHERE name = $1", &domain)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .ok_or(StoreError::NotFound("domain"))?;
    if req.activate {
        sqlx::query!(
            "UPDATE dkim_keys SET active = false WHERE domain_id = $1 AND active",
            did
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    }
    let res = sqlx::query!(
        "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_key, public_key, active) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
        did,
        &selector,
        &req.algorithm,
        &req.private_key,
        &req.public_key,
        req.activate
    )
    .fetch_one(&mut *tx)
    .await;
    let row = match res {
        Ok(r) => r,
        Err(e) if is_sqlstate(&e, UNIQUE_VIOLATION) => {
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
        created_at: timestamp(row.created_at),
    }))
}

pub(super) async fn list_dkim_keys(
    svc: &AccountsSvc,
    req: Request<pb::ListDkimKeysRequest>,
) -> Result<Response<pb::ListDkimKeysResponse>, Status> {
    let req = req.into_inner();
    let domain = if req.domain.is_empty() {
        String::new()
    } else {
        names::domain(&req.domain)?
    };
    let rows = sqlx::query!(
        "SELECT d.name, k.selector, k.algorithm, k.private_key, k.public_key, k.active, k.created_at \
         FROM dkim_keys k JOIN domains d ON d.id = k.domain_id \
         WHERE ($1 = '' OR d.name = $1) AND (NOT $2 OR k.active) ORDER BY d.name, k.created_at, k.id",
        &domain,
        req.active_only
    )
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    let keys = rows
        .into_iter()
        .map(|r| {
            let algorithm: String = r.algorithm;
            let public_key: String = r.public_key;
            let k = if algorithm.starts_with("ed25519") {
                "ed25519"
            } else {
                "rsa"
            };
            pb::DkimKey {
                domain: r.name,
                selector: r.selector,
                private_key: if req.include_private {
                    r.private_key
                } else {
                    String::new()
                },
                dns_txt: format!("v=DKIM1; k={k}; p={public_key}"),
                algorithm,
                public_key,
                active: r.active,
                created_at: timestamp(r.created_at),
            }
        })
        .collect();
    Ok(Response::new(pb::ListDkimKeysResponse { keys }))
}
