//! The sweep at the end of a pass read from scratch: what the pass did not
//! see is marked deleted. Bounded in memory and time: the pass's seen ids
//! are held as sorted 8-byte fingerprints, the records table is read a page
//! at a time in key order, deletions go out a few batches at a time, and
//! the sweep's place is saved after every page, so it yields at the
//! deadline and the next invocation goes on from there.

use std::time::Instant;

use tracing::warn;

use super::{Context, RunEnd, SyncEngine};
use crate::connection::now_ms;
use crate::dynamo::StoreError;
use crate::sync::jobs::{Checkpoint, RunState};
use crate::telemetry::error_chain;

/// How a sweep went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Swept {
    Done,
    /// Markers were missing: nothing was deleted, the pass starts again.
    Again,
}

impl SyncEngine {
    /// Sweeps the pass that just ended (or goes on with its sweep), unless
    /// a seen-id marker of the pass is missing: then it deletes nothing and
    /// the pass starts again. Yields (`Err(RunEnd::Yielded)`, the place
    /// saved) when the deadline is near.
    pub(super) async fn sweep(
        &self,
        cx: &Context<'_>,
        checkpoint: &Checkpoint,
        run: &mut RunState,
    ) -> Result<Swept, RunEnd> {
        let read = self.store_retry(cx, || self.jobs.seen(&cx.job, &run.pass_id)).await;
        let (seen, markers) =
            read.map_err(|e| RunEnd::Failed(format!("reading the sweep's seen ids failed: {}", error_chain(&e))))?;
        if markers != run.pass_pages {
            warn!(
                job = cx.job,
                markers,
                pages = run.pass_pages,
                "seen-id markers of the sweep are missing; it starts again, deleting nothing"
            );
            self.forget_markers(cx, run).await;
            run.next_url = None;
            run.sweeping = false;
            return Ok(Swept::Again);
        }
        loop {
            let left = cx.deadline.saturating_duration_since(Instant::now());
            let stop = self.stop_requested();
            if stop.is_some() || left < self.settings.page_timeout + self.settings.commit_margin {
                self.save(cx, checkpoint, run).await?;
                return Err(RunEnd::Yielded {
                    until: now_ms(),
                    reason: stop.unwrap_or_else(|| "the invocation's deadline is near (sweeping)".to_owned()),
                });
            }
            let after = run.sweep_after.clone();
            let page = self
                .store_retry(cx, || {
                    self.records
                        .live_page(&cx.job, after.as_deref(), self.settings.sweep_page)
                })
                .await;
            let (live, last) = page.map_err(|e| RunEnd::Failed(format!("the sweep failed: {}", error_chain(&e))))?;
            let gone: Vec<String> = live.into_iter().filter(|id| !seen.contains(id)).collect();
            if !gone.is_empty() {
                if !self.lease_holds(cx).await {
                    return Err(RunEnd::LostLease);
                }
                let (now, first) = (now_ms(), cx.next_change());
                match self
                    .store_retry(cx, || self.records.delete_many(&cx.job, &gone, now, &cx.lease, first))
                    .await
                {
                    Ok(deleted) => {
                        cx.changes_landed(first, gone.len() as u64);
                        run.counts.deleted += deleted;
                    }
                    Err(StoreError::LeaseLost) => return Err(RunEnd::LostLease),
                    Err(e) => return Err(RunEnd::Failed(format!("the sweep failed: {}", error_chain(&e)))),
                }
            }
            let Some(last) = last else {
                self.forget_markers(cx, run).await;
                run.sweep_after = None;
                return Ok(Swept::Done);
            };
            run.sweep_after = Some(last);
            self.save(cx, checkpoint, run).await?;
        }
    }
}
