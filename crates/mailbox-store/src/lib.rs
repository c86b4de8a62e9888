//! # mailbox-store
//!
//! The only owner of Epistole's state: domains, users, aliases, mailboxes,
//! messages, content-addressed blobs, the inbound and outbound mail queues and
//! the per-message event log. A tonic gRPC server (API in
//! `proto/mailstore/v1`, package `mailstore.v1`) over PostgreSQL via sqlx;
//! migrations are embedded and applied on start.
//!
//! Stateless itself: N replicas can serve one database. Each replica holds one
//! `LISTEN` connection and fans notifications out to `Watch` streams and to
//! queue workers waiting in `Lease`.
//!
//! Durability: every mutating RPC answers only after its transaction has
//! committed (PostgreSQL's synchronous commit), so an acknowledged message is
//! on disk.
//!
//! ## Modules
//!
//! One module per gRPC service, split into one file per command family
//! (`accounts/`, `mailboxes/`, `queue/`), over shared lower layers. The
//! `use crate::…` edges between top-level modules form a DAG (an arrow means
//! "uses"; every module may also use `error`):
//!
//! ```text
//! server ──> accounts, mailboxes, queue, guard, janitor, auth, config, db,
//!            hashing, notify
//! mailboxes ──> queue (DeliverFromQueue), messages, blobs, search, db, wire,
//!               names, flags, notify, quota, auth
//! queue ──> messages, blobs, db, wire, names, flags, structure, notify, auth,
//!           text
//! accounts ──> db, wire, names, auth, hashing, config, quota
//! guard ──> db, names
//! dmarc, tlsrpt, mta_sts ──> db
//! janitor ──> blobs, db, guard
//! messages ──> flags, structure, notify, quota, text
//! search ──> flags, text
//! blobs ──> wire, text
//! db ──> config, notify, hashing
//! wire, names, flags, structure, notify, config, auth, hashing, quota, text,
//! error: leaves
//! ```
//!
//! [`messages`] owns message insertion (UID and MODSEQ allocation, the row,
//! the quota counter, the change notification) and [`blobs`] the stored
//! bytes; both services call them, so neither service imports the other's
//! internals.

pub mod accounts;
pub mod auth;
pub mod autoconfig;
pub mod blobs;
pub mod config;
pub mod db;
pub mod dmarc;
pub mod error;
pub mod flags;
pub mod guard;
pub mod hashing;
pub mod janitor;
pub mod mailboxes;
pub mod messages;
pub mod mta_sts;
pub mod names;
pub mod notify;
pub mod queue;
pub mod quota;
pub mod search;
pub mod server;
pub mod structure;
pub mod text;
pub mod tlsrpt;
pub mod wire;

pub use config::Config;
pub use db::{MIGRATOR, Store, migrate, pool};
pub use error::{Result, StoreError};
pub use server::{SHUTDOWN_GRACE, Server, run};
