//! `mailctl search backfill`: fills the search index (the store's
//! `blob_text`, migration 0014) for mail stored before it existed, one
//! bounded batch per call of the store's `BackfillSearchText`, until none
//! is left. Safe to interrupt and to run again (the store only fills rows
//! that are still placeholders); old mail is searchable meanwhile, from
//! its blobs, only slower.

use clap::Subcommand;
use mailstore_api::{StoreClient, pb};

#[derive(Subcommand, Debug)]
pub enum SearchCmd {
    /// Index the text of messages stored before the index existed.
    Backfill {
        /// Messages (blobs) per store call, at most 1000.
        #[arg(long, default_value_t = 100)]
        batch: u32,
    },
}

/// Runs one `mailctl search` command.
///
/// # Errors
/// Store errors (the admin token is needed), I/O.
pub async fn run(
    c: &StoreClient,
    cmd: SearchCmd,
    out: &mut impl std::io::Write,
    status: impl Fn(tonic::Status) -> anyhow::Error,
) -> anyhow::Result<()> {
    let SearchCmd::Backfill { batch } = cmd;
    let mut after = Vec::new();
    let mut total: u64 = 0;
    loop {
        let r = c
            .mailboxes
            .clone()
            .backfill_search_text(pb::BackfillSearchTextRequest {
                after: after.clone(),
                limit: batch,
            })
            .await
            .map_err(&status)?
            .into_inner();
        total += u64::from(r.indexed);
        if r.done {
            writeln!(
                out,
                "search backfill done: {total} indexed, {} left",
                r.remaining
            )?;
            return Ok(());
        }
        writeln!(out, "indexed {total}, {} left", r.remaining)?;
        after = r.next_after;
    }
}
