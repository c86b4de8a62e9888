//! Recipient resolution (users, aliases, plus-addressing, catch-all) and
//! the sender check for authenticated submission.

use std::collections::HashSet;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::{names, quota};

use super::users::get_user_by_id;
use super::{AccountsSvc, domain_id};

/// Alias expansion limits: depth of the chain and total targets.
const MAX_ALIAS_DEPTH: usize = 10;

const MAX_TARGETS: usize = 1_000;

/// One step of recipient resolution.
enum Found {
    User { id: i64, address: String },
    Aliases(Vec<String>),
    Nothing,
}

async fn lookup_exact(pool: &PgPool, domain_id: i64, local: &str, domain: &str) -> Result<Found> {
    if let Some(id) = sqlx::query_scalar!(
        "SELECT id FROM users WHERE domain_id = $1 AND local_part = $2 AND NOT disabled",
        domain_id,
        local
    )
    .fetch_optional(pool)
    .await?
    {
        return Ok(Found::User {
            id,
            address: format!("{local}@{domain}"),
        });
    }
    let targets: Vec<String> = sqlx::query_scalar!(
        "SELECT target FROM aliases WHERE domain_id = $1 AND local_part = $2 ORDER BY id",
        domain_id,
        local
    )
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

pub(super) async fn lookup_recipient(
    svc: &AccountsSvc,
    req: Request<pb::LookupRecipientRequest>,
) -> Result<Response<pb::LookupRecipientResponse>, Status> {
    let address = &req.get_ref().address;
    let r = resolve(svc.pool(), address).await?;
    // The recipient domain's inbound DMARC choice, for smtp-in's verdict
    // at the end of DATA (read here so it costs no extra round trip).
    let mut dmarc_reject_action = String::new();
    if r.status == pb::RecipientStatus::Local as i32
        && let Ok((_, domain)) = names::address(address)
    {
        dmarc_reject_action = sqlx::query_scalar!(
            "SELECT dmarc_reject_action FROM domains WHERE name = $1",
            domain
        )
        .fetch_optional(svc.pool())
        .await
        .map_err(StoreError::from)?
        .unwrap_or_default();
    }
    // RFC 3463 X.2.2 at RCPT: when every target is a local user that has
    // reached its quota, nothing can be delivered now (smtp-in: 452 4.2.2).
    let mut users = Vec::new();
    for t in &r.targets {
        match &t.target {
            Some(pb::resolved_target::Target::Local(l)) => users.push(l.user_id as i64),
            _ => {
                users.clear();
                break;
            }
        }
    }
    let over_quota = quota::all_full(svc.pool(), &users).await?;
    Ok(Response::new(pb::LookupRecipientResponse {
        status: r.status,
        dmarc_reject_action,
        over_quota,
    }))
}

pub(super) async fn resolve_recipient(
    svc: &AccountsSvc,
    req: Request<pb::ResolveRecipientRequest>,
) -> Result<Response<pb::ResolveRecipientResponse>, Status> {
    Ok(Response::new(
        resolve(svc.pool(), &req.get_ref().address).await?,
    ))
}

pub(super) async fn check_sender(
    svc: &AccountsSvc,
    req: Request<pb::CheckSenderRequest>,
) -> Result<Response<pb::CheckSenderResponse>, Status> {
    let req = req.into_inner();
    let uid = i64::try_from(req.user_id).map_err(|_| StoreError::NotFound("user"))?;
    let user = get_user_by_id(svc.pool(), uid).await?;
    // Own address, own plus-address, or an alias that expands to the user.
    let allowed = match names::address(&req.address) {
        Ok((local, domain)) => {
            let addr = format!("{local}@{domain}");
            let base = local.split_once('+').map_or(local.as_str(), |(b, _)| b);
            if addr == user.address || format!("{base}@{domain}") == user.address {
                true
            } else {
                let did = domain_id(svc.pool(), &domain).await?;
                match did {
                    Some(did) => {
                        let targets: Vec<String> = sqlx::query_scalar!(
                            "SELECT target FROM aliases WHERE domain_id = $1 AND local_part = $2",
                            did,
                            base
                        )
                        .fetch_all(svc.pool())
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
