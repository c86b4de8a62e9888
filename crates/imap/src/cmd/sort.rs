//! SORT and THREAD (RFC 5256 §3), ESORT (RFC 5267 §3). The store evaluates
//! the search criteria; the sort keys come from the envelopes the store
//! precomputed (no bodies are read); [`crate::sort`] orders and threads.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{SearchKey, SearchReturn, SortCriterion, ThreadAlgorithm};
use crate::io::Io;
use crate::model::MessageMeta;
use crate::response::Status;
use crate::session::Session;
use crate::sort;
use crate::store::store_error;

use super::search::{convert, saved_uids};

impl Session {
    /// The messages matching `k` that this session knows, with envelopes,
    /// in UID order.
    async fn matching_with_envelopes(&mut self, k: &SearchKey) -> Result<Vec<MessageMeta>, Status> {
        let store = self.store();
        let Some(mb) = self.selected() else {
            return Err(Status::bad("No mailbox selected"));
        };
        let r = store
            .search(mb.id, &convert(k, mb))
            .await
            .map_err(|e| store_error(&e))?;
        let mut uids: Vec<u32> = r
            .uids
            .iter()
            .copied()
            .filter(|&u| mb.seq_of(u).is_some())
            .collect();
        uids.sort_unstable();
        uids.dedup();
        let mut out = Vec::with_capacity(uids.len());
        if uids.is_empty() {
            return Ok(out);
        }
        let mut stream = store
            .fetch_meta(mb.id, Some(&uids), 0, true)
            .await
            .map_err(|e| store_error(&e))?;
        while let Some(batch) = stream.next_batch().await.map_err(|e| store_error(&e))? {
            out.extend(batch.into_iter().filter(|m| mb.seq_of(m.uid).is_some()));
        }
        out.sort_by_key(|m| m.uid);
        out.dedup_by_key(|m| m.uid);
        Ok(out)
    }

    /// SORT / UID SORT (RFC 5256 §3), with RETURN options (RFC 5267 §3).
    pub(super) async fn sort<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        uid: bool,
        ret: Option<SearchReturn>,
        criteria: &[SortCriterion],
        k: &SearchKey,
    ) -> Status {
        let save = ret.as_ref().is_some_and(|r| r.save);
        let messages = match self.matching_with_envelopes(k).await {
            Ok(m) => m,
            Err(st) => {
                // RFC 5182 §2.1: a failed SAVE empties `$`.
                if let (true, Some(mb)) = (save, self.selected()) {
                    mb.saved.clear();
                }
                return st;
            }
        };
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        let nums: Vec<u32> = sort::sort(&messages, criteria)
            .into_iter()
            .filter_map(|u| if uid { Some(u) } else { mb.seq_of(u) })
            .collect();
        if save {
            mb.saved = saved_uids(mb, &nums, uid, ret.as_ref());
        }
        let mut line = String::new();
        match ret {
            // RFC 5182 §2.1: SAVE alone answers no ESEARCH.
            Some(ret) if ret.save && !(ret.min || ret.max || ret.all || ret.count) => {
                return Status::ok("SORT completed, result saved");
            }
            // RFC 5267 §3.1: ESEARCH reply; MIN/MAX are the first and last
            // in sort order; ALL keeps the sort order (only ascending runs
            // become ranges).
            Some(ret) => {
                let _ = write!(line, "* ESEARCH (TAG \"{tag}\")");
                if uid {
                    line.push_str(" UID");
                }
                if let (true, Some(v)) = (ret.min, nums.first()) {
                    let _ = write!(line, " MIN {v}");
                }
                if let (true, Some(v)) = (ret.max, nums.last()) {
                    let _ = write!(line, " MAX {v}");
                }
                if ret.count {
                    let _ = write!(line, " COUNT {}", nums.len());
                }
                if ret.all && !nums.is_empty() {
                    let _ = write!(line, " ALL {}", sort::ordered_set(&nums));
                }
            }
            None => {
                line.push_str("* SORT");
                for n in &nums {
                    let _ = write!(line, " {n}");
                }
            }
        }
        line.push_str("\r\n");
        io.write(line.as_bytes());
        Status::ok("SORT completed")
    }

    /// THREAD / UID THREAD (RFC 5256 §3).
    pub(super) async fn thread<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uid: bool,
        algorithm: ThreadAlgorithm,
        k: &SearchKey,
    ) -> Status {
        let messages = match self.matching_with_envelopes(k).await {
            Ok(m) => m,
            Err(st) => return st,
        };
        let threads = match algorithm {
            ThreadAlgorithm::OrderedSubject => sort::ordered_subject(&messages),
            ThreadAlgorithm::References => sort::references(&messages),
        };
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        // Every message here is known to the session (filtered above).
        let num = |u| if uid { u } else { mb.seq_of(u).unwrap_or(0) };
        let mut line = String::from("* THREAD");
        if !threads.is_empty() {
            line.push(' ');
        }
        for t in &threads {
            sort::write_thread(&mut line, t, &num, true);
        }
        line.push_str("\r\n");
        io.write(line.as_bytes());
        Status::ok("THREAD completed")
    }
}
