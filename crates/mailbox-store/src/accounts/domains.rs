//! Domains we receive mail for.

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::db::{UNIQUE_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::names;
use crate::wire::timestamp;

use super::{AccountsSvc, domain_id};

pub(super) async fn create_domain(
    svc: &AccountsSvc,
    req: Request<pb::CreateDomainRequest>,
) -> Result<Response<pb::Domain>, Status> {
    let name = names::domain(&req.get_ref().name)?;
    let row = sqlx::query!(
        "INSERT INTO domains (name) VALUES ($1) RETURNING id, created_at",
        &name
    )
    .fetch_one(svc.pool())
    .await;
    let row = match row {
        Ok(r) => r,
        Err(e) if is_sqlstate(&e, UNIQUE_VIOLATION) => {
            return Err(StoreError::AlreadyExists("domain").into());
        }
        Err(e) => return Err(StoreError::from(e).into()),
    };
    Ok(Response::new(pb::Domain {
        id: row.id as u64,
        name,
        created_at: timestamp(row.created_at),
        dmarc_reject_action: String::new(),
    }))
}

/// The values `domains.dmarc_reject_action` may take ("" = smtp-in's flag).
pub const DMARC_REJECT_ACTIONS: [&str; 4] = ["", "enforce", "quarantine", "report"];

pub(super) async fn set_domain_policy(
    svc: &AccountsSvc,
    req: Request<pb::SetDomainPolicyRequest>,
) -> Result<Response<pb::Domain>, Status> {
    let req = req.into_inner();
    let name = names::domain(&req.name)?;
    let action = req.dmarc_reject_action.trim().to_ascii_lowercase();
    if !DMARC_REJECT_ACTIONS.contains(&action.as_str()) {
        return Err(StoreError::invalid(
            "dmarc_reject_action must be enforce, quarantine, report or empty",
        )
        .into());
    }
    let row = sqlx::query!(
        "UPDATE domains SET dmarc_reject_action = $2 WHERE name = $1 \
         RETURNING id, created_at, dmarc_reject_action",
        &name,
        &action
    )
    .fetch_optional(svc.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or(StoreError::NotFound("domain"))?;
    Ok(Response::new(pb::Domain {
        id: row.id as u64,
        name,
        created_at: timestamp(row.created_at),
        dmarc_reject_action: row.dmarc_reject_action,
    }))
}

pub(super) async fn delete_domain(
    svc: &AccountsSvc,
    req: Request<pb::DeleteDomainRequest>,
) -> Result<Response<pb::DeleteDomainResponse>, Status> {
    let req = req.into_inner();
    let name = names::domain(&req.name)?;
    let did = domain_id(svc.pool(), &name)
        .await?
        .ok_or(StoreError::NotFound("domain"))?;
    if !req.force {
        let users: i64 = sqlx::query_scalar!(
            "SELECT (SELECT count(*) FROM users WHERE domain_id = $1) + (SELECT count(*) FROM aliases WHERE domain_id = $1) AS \"n!\"",
            did
        )
        .fetch_one(svc.pool())
        .await
        .map_err(StoreError::from)?;
        if users > 0 {
            return Err(StoreError::precondition("domain still has users or aliases").into());
        }
    }
    sqlx::query!("DELETE FROM domains WHERE id = $1", did)
        .execute(svc.pool())
        .await
        .map_err(StoreError::from)?;
    Ok(Response::new(pb::DeleteDomainResponse {}))
}

pub(super) async fn list_domains(
    svc: &AccountsSvc,
    _req: Request<pb::ListDomainsRequest>,
) -> Result<Response<pb::ListDomainsResponse>, Status> {
    let rows =
        sqlx::query!("SELECT id, name, created_at, dmarc_reject_action FROM domains ORDER BY name")
            .fetch_all(svc.pool())
            .await
            .map_err(StoreError::from)?;
    let domains = rows
        .into_iter()
        .map(|r| pb::Domain {
            id: r.id as u64,
            name: r.name,
            created_at: timestamp(r.created_at),
            dmarc_reject_action: r.dmarc_reject_action,
        })
        .collect();
    Ok(Response::new(pb::ListDomainsResponse { domains }))
}
