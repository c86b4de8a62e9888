//! The shared-secret check on every RPC: the store holds everyone's mail and
//! is never anonymous.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Compares the presented bearer token with the configured one in constant
/// time (both hashed first, so lengths leak nothing either).
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<[u8; 32]>,
}

impl TokenCheck {
    #[must_use]
    pub fn new(token: &str) -> Self {
        Self {
            expected: Arc::new(Sha256::digest(token.as_bytes()).into()),
        }
    }

    fn ok(&self, presented: &[u8]) -> bool {
        let got: [u8; 32] = Sha256::digest(presented).into();
        got.iter()
            .zip(self.expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(t) if self.ok(t.as_bytes()) => Ok(req),
            _ => Err(Status::unauthenticated("missing or wrong store token")),
        }
    }
}
