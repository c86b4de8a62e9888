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
    let rows = sqlx::query!("SELECT id, name, created_at FROM domains ORDER BY name")
        .fetch_all(svc.pool())
        .await
        .map_err(StoreError::from)?;
    let domains = rows
        .into_iter()
        .map(|r| pb::Domain {
            id: r.id as u64,
            name: r.name,
            created_at: timestamp(r.created_at),
        })
        .collect();
    Ok(Response::new(pb::ListDomainsResponse { domains }))
}
