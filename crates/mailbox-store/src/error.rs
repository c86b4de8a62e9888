//! The store's error enum and its one mapping to a closed set of gRPC codes.
//! Database text never reaches a client: `Internal` and `Unavailable` carry a
//! generic message and the detail goes to the log.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("message larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// RFC 9208 quota; `permanent`: the request alone exceeds the limit.
    #[error("over quota")]
    OverQuota { permanent: bool },
    /// A count limit (e.g. mailboxes per user): RESOURCE_EXHAUSTED like a
    /// quota, with its own message; the caller knows which limit its RPC has.
    #[error("{0}")]
    LimitReached(&'static str),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::FailedPrecondition(msg.into())
    }
}

/// PostgreSQL SQLSTATE of a database error, if any.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
        _ => None,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err.to_string()),
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                // Class 08: connection exception; 57P: operator intervention
                // (shutdown); 40001/40P01: serialization failure / deadlock.
                if code.starts_with("08") || code.starts_with("57P") || code.starts_with("40") {
                    Self::Unavailable(err.to_string())
                } else {
                    Self::Internal(format!("{code}: {err}"))
                }
            }
            _ => Self::Internal(err.to_string()),
        }
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
            StoreError::AlreadyExists(what) => {
                Status::already_exists(format!("{what} already exists"))
            }
            StoreError::InvalidArgument(msg) => Status::invalid_argument(msg),
            StoreError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            StoreError::TooLarge(limit) => {
                Status::out_of_range(format!("message larger than {limit} bytes"))
            }
            StoreError::OverQuota { permanent: false } => Status::resource_exhausted("over quota"),
            StoreError::OverQuota { permanent: true } => {
                let mut st = Status::resource_exhausted("over quota: larger than the quota");
                st.metadata_mut().insert(
                    mailstore_api::QUOTA_EXCEEDS_LIMIT,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                st
            }
            StoreError::LimitReached(what) => Status::resource_exhausted(what),
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                Status::unavailable("store temporarily unavailable")
            }
            StoreError::Internal(detail) => {
                tracing::error!(%detail, "internal store error");
                Status::internal("internal store error")
            }
        }
    }
}
