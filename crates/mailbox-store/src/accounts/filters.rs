//! Per-user delivery filter rules (header contains → folder).

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::names;

use super::AccountsSvc;
use super::users::user_id_of;

pub(super) async fn add_filter(
    svc: &AccountsSvc,
    req: Request<pb::AddFilterRequest>,
) -> Result<Response<pb::Filter>, Status> {
    let req = req.into_inner();
    let user = user_id_of(svc.pool(), &req.address).await?;
    let folder = names::mailbox(&req.folder)?;
    if req.header.is_empty()
        || req.header.len() > 200
        || !req
            .header
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':')
        || req.contains.len() > 1_000
    {
        return Err(
            StoreError::invalid("filter needs a header name and a value up to 1000 bytes").into(),
        );
    }
    let id: i64 = sqlx::query_scalar!(
        "INSERT INTO filters (user_id, position, header, contains, folder) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        user,
        req.position,
        &req.header,
        &req.contains,
        &folder
    )
    .fetch_one(svc.pool())
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

pub(super) async fn list_filters(
    svc: &AccountsSvc,
    req: Request<pb::ListFiltersRequest>,
) -> Result<Response<pb::ListFiltersResponse>, Status> {
    let user = match req.into_inner().key {
        Some(pb::list_filters_request::Key::Address(a)) => user_id_of(svc.pool(), &a).await?,
        Some(pb::list_filters_request::Key::UserId(id)) => {
            i64::try_from(id).map_err(|_| StoreError::NotFound("user"))?
        }
        None => return Err(StoreError::invalid("address or user_id required").into()),
    };
    let rows = sqlx::query!(
        "SELECT id, position, header, contains, folder FROM filters WHERE user_id = $1 ORDER BY position, id",
        user
    )
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    let filters = rows
        .into_iter()
        .map(|r| pb::Filter {
            id: r.id as u64,
            user_id: user as u64,
            position: r.position,
            header: r.header,
            contains: r.contains,
            folder: r.folder,
        })
        .collect();
    Ok(Response::new(pb::ListFiltersResponse { filters }))
}

pub(super) async fn delete_filter(
    svc: &AccountsSvc,
    req: Request<pb::DeleteFilterRequest>,
) -> Result<Response<pb::DeleteFilterResponse>, Status> {
    let id = i64::try_from(req.get_ref().id).map_err(|_| StoreError::NotFound("filter"))?;
    let n = sqlx::query!("DELETE FROM filters WHERE id = $1", id)
        .execute(svc.pool())
        .await
        .map_err(StoreError::from)?
        .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound("filter").into());
    }
    Ok(Response::new(pb::DeleteFilterResponse {}))
}
