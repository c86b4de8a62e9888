//! Conversions at the gRPC boundary: protobuf ids and timestamps to and from
//! their SQL types, and the boxed stream type of server-streaming RPCs.

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

use crate::error::{Result, StoreError};

/// A server-streaming RPC's response stream.
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A protobuf id as a database key; ids beyond `i64` cannot exist, so they
/// are "not found".
pub(crate) fn id(v: u64, what: &'static str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::NotFound(what))
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(ts(t))
}

pub(crate) fn ts_opt(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<prost_types::Timestamp> {
    t.and_then(timestamp)
}

pub(crate) fn from_pb_ts(t: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}
