//! Aliases and catch-alls (`@domain`).

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::db::{UNIQUE_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::names;

use super::{AccountsSvc, domain_id};

/// "local@domain" or "@domain" (catch-all).
fn parse_alias_source(source: &str) -> Result<(String, String)> {
    if let Some(d) = source.strip_prefix('@') {
        return Ok((String::new(), names::domain(d)?));
    }
    names::address(source)
}

pub(super) async fn create_alias(
    svc: &AccountsSvc,
    req: Request<pb::CreateAliasRequest>,
) -> Result<Response<pb::Alias>, Status> {
    let req = req.into_inner();
    let (local, domain) = parse_alias_source(&req.source)?;
    let (tl, td) = names::address(&req.target)?;
    let target = format!("{tl}@{td}");
    let did = domain_id(svc.pool(), &domain)
        .await?
        .ok_or(StoreError::NotFound("domain"))?;
    let res = sqlx::query_scalar!(
        "INSERT INTO aliases (domain_id, local_part, target) VALUES ($1, $2, $3) RETURNING id",
        did,
        &local,
        &target
    )
    .fetch_one(svc.pool())
    .await;
    let id = match res {
        Ok(id) => id,
        Err(e) if is_sqlstate(&e, UNIQUE_VIOLATION) => {
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

pub(super) async fn delete_alias(
    svc: &AccountsSvc,
    req: Request<pb::DeleteAliasRequest>,
) -> Result<Response<pb::DeleteAliasResponse>, Status> {
    let req = req.into_inner();
    let (local, domain) = parse_alias_source(&req.source)?;
    let did = domain_id(svc.pool(), &domain)
        .await?
        .ok_or(StoreError::NotFound("domain"))?;
    let res = if req.target.is_empty() {
        sqlx::query!(
            "DELETE FROM aliases WHERE domain_id = $1 AND local_part = $2",
            did,
            &local
        )
        .execute(svc.pool())
        .await
    } else {
        let (tl, td) = names::address(&req.target)?;
        sqlx::query!(
            "DELETE FROM aliases WHERE domain_id = $1 AND local_part = $2 AND target = $3",
            did,
            &local,
            format!("{tl}@{td}")
        )
        .execute(svc.pool())
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

pub(super) async fn list_aliases(
    svc: &AccountsSvc,
    req: Request<pb::ListAliasesRequest>,
) -> Result<Response<pb::ListAliasesResponse>, Status> {
    let domain = req.into_inner().domain;
    let d = if domain.is_empty() {
        String::new()
    } else {
        names::domain(&domain)?
    };
    let rows = sqlx::query!(
        "SELECT a.id, a.local_part, d.name, a.target FROM aliases a JOIN domains d ON d.id = a.domain_id \
         WHERE ($1 = '' OR d.name = $1) ORDER BY d.name, a.local_part, a.target",
        d
    )
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    let aliases = rows
        .into_iter()
        .map(|r| pb::Alias {
            id: r.id as u64,
            source: format!("{}@{}", r.local_part, r.name),
            target: r.target,
        })
        .collect();
    Ok(Response::new(pb::ListAliasesResponse { aliases }))
}
