//! The quota RPCs (RFC 9208 quota roots, one per user); the accounting
//! itself is in [`crate::quota`].

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::error::StoreError;
use crate::{names, quota};

use super::AccountsSvc;
use super::users::user_id_of;

async fn user_key(
    svc: &AccountsSvc,
    address: Option<&str>,
    id: Option<u64>,
) -> Result<i64, StoreError> {
    match (address, id) {
        (Some(a), _) => user_id_of(svc.pool(), a).await,
        (None, Some(id)) => i64::try_from(id).map_err(|_| StoreError::NotFound("user")),
        (None, None) => Err(StoreError::invalid("address or user_id required")),
    }
}

pub(super) async fn get_quota(
    svc: &AccountsSvc,
    req: Request<pb::GetQuotaRequest>,
) -> Result<Response<pb::Quota>, Status> {
    use pb::get_quota_request::Key;
    let id = match req.into_inner().key {
        Some(Key::Address(a)) => user_key(svc, Some(&a), None).await?,
        Some(Key::UserId(id)) => user_key(svc, None, Some(id)).await?,
        None => user_key(svc, None, None).await?,
    };
    Ok(Response::new(quota::get(svc.pool(), id).await?))
}

pub(super) async fn set_quota(
    svc: &AccountsSvc,
    req: Request<pb::SetQuotaRequest>,
) -> Result<Response<pb::Quota>, Status> {
    use pb::set_quota_request::Key;
    let req = req.into_inner();
    let id = match &req.key {
        Some(Key::Address(a)) => user_key(svc, Some(a), None).await?,
        Some(Key::UserId(id)) => user_key(svc, None, Some(*id)).await?,
        None => user_key(svc, None, None).await?,
    };
    Ok(Response::new(
        quota::set(svc.pool(), id, req.limit_bytes, req.limit_messages).await?,
    ))
}

pub(super) async fn set_domain_quota(
    svc: &AccountsSvc,
    req: Request<pb::SetDomainQuotaRequest>,
) -> Result<Response<pb::DomainQuota>, Status> {
    let req = req.into_inner();
    let domain = names::domain(&req.domain)?;
    Ok(Response::new(
        quota::set_domain(svc.pool(), &domain, req.limit_bytes, req.limit_messages).await?,
    ))
}
