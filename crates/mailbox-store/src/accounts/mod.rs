//! Accounts service: domains, users, aliases, authentication, recipient
//! lookup and resolution.

mod domains;
mod users;

pub use authenticate::hash_password;
pub use recipients::resolve;
pub use users::create_user;
mod aliases;
mod authenticate;
mod dkim;
mod filters;
mod quotas;
mod recipients;

use std::sync::{Arc, LazyLock};

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::auth::require_admin;
use crate::db::Store;
use crate::error::Result;

use authenticate::DUMMY_HASH;

/// The default folder set of a new user, with RFC 6154 SPECIAL-USE.
pub const DEFAULT_MAILBOXES: [(&str, &str); 6] = [
    ("INBOX", ""),
    ("Sent", "Sent"),
    ("Drafts", "Drafts"),
    ("Trash", "Trash"),
    ("Junk", "Junk"),
    ("Archive", "Archive"),
];

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

/// The id of a hosted domain (lowercase ASCII name).
pub(crate) async fn domain_id(pool: &PgPool, domain: &str) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar!("SELECT id FROM domains WHERE name = $1", domain)
            .fetch_optional(pool)
            .await?,
    )
}

#[tonic::async_trait]
impl pb::accounts_server::Accounts for AccountsSvc {
    async fn create_domain(
        &self,
        req: Request<pb::CreateDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        require_admin(&req)?;
        domains::create_domain(self, req).await
    }

    async fn delete_domain(
        &self,
        req: Request<pb::DeleteDomainRequest>,
    ) -> Result<Response<pb::DeleteDomainResponse>, Status> {
        require_admin(&req)?;
        domains::delete_domain(self, req).await
    }

    async fn list_domains(
        &self,
        _req: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        domains::list_domains(self, _req).await
    }

    async fn set_domain_policy(
        &self,
        req: Request<pb::SetDomainPolicyRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        require_admin(&req)?;
        domains::set_domain_policy(self, req).await
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        require_admin(&req)?;
        users::create_user_rpc(self, req).await
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        require_admin(&req)?;
        users::set_password(self, req).await
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        require_admin(&req)?;
        users::delete_user(self, req).await
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        users::get_user(self, req).await
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        require_admin(&req)?;
        users::list_users(self, req).await
    }

    async fn create_alias(
        &self,
        req: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::Alias>, Status> {
        require_admin(&req)?;
        aliases::create_alias(self, req).await
    }

    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        require_admin(&req)?;
        aliases::delete_alias(self, req).await
    }

    async fn list_aliases(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        require_admin(&req)?;
        aliases::list_aliases(self, req).await
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        authenticate::authenticate(self, req).await
    }

    async fn lookup_recipient(
        &self,
        req: Request<pb::LookupRecipientRequest>,
    ) -> Result<Response<pb::LookupRecipientResponse>, Status> {
        recipients::lookup_recipient(self, req).await
    }

    async fn resolve_recipient(
        &self,
        req: Request<pb::ResolveRecipientRequest>,
    ) -> Result<Response<pb::ResolveRecipientResponse>, Status> {
        recipients::resolve_recipient(self, req).await
    }

    async fn check_sender(
        &self,
        req: Request<pb::CheckSenderRequest>,
    ) -> Result<Response<pb::CheckSenderResponse>, Status> {
        recipients::check_sender(self, req).await
    }

    async fn add_filter(
        &self,
        req: Request<pb::AddFilterRequest>,
    ) -> Result<Response<pb::Filter>, Status> {
        require_admin(&req)?;
        filters::add_filter(self, req).await
    }

    async fn list_filters(
        &self,
        req: Request<pb::ListFiltersRequest>,
    ) -> Result<Response<pb::ListFiltersResponse>, Status> {
        filters::list_filters(self, req).await
    }

    async fn put_dkim_key(
        &self,
        req: Request<pb::PutDkimKeyRequest>,
    ) -> Result<Response<pb::DkimKey>, Status> {
        require_admin(&req)?;
        dkim::put_dkim_key(self, req).await
    }

    async fn list_dkim_keys(
        &self,
        req: Request<pb::ListDkimKeysRequest>,
    ) -> Result<Response<pb::ListDkimKeysResponse>, Status> {
        dkim::list_dkim_keys(self, req).await
    }

    async fn delete_filter(
        &self,
        req: Request<pb::DeleteFilterRequest>,
    ) -> Result<Response<pb::DeleteFilterResponse>, Status> {
        require_admin(&req)?;
        filters::delete_filter(self, req).await
    }

    async fn get_quota(
        &self,
        req: Request<pb::GetQuotaRequest>,
    ) -> Result<Response<pb::Quota>, Status> {
        quotas::get_quota(self, req).await
    }

    async fn set_quota(
        &self,
        req: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::Quota>, Status> {
        quotas::set_quota(self, req).await
    }

    async fn set_domain_quota(
        &self,
        req: Request<pb::SetDomainQuotaRequest>,
    ) -> Result<Response<pb::DomainQuota>, Status> {
        require_admin(&req)?;
        quotas::set_domain_quota(self, req).await
    }
}
