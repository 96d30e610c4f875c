//! The token-refresher's run: every connection the refresh-due index says is
//! due, a bounded number at a time, until the invocation's deadline.

use std::sync::Arc;
use std::time::Instant;

use tracing::{error, warn};

use super::{Fresh, RefreshError, TokenService};
use crate::connection::now_ms;
use crate::shards::ShardPage;
use crate::telemetry::error_chain;

/// What [`TokenService::refresh_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DueSummary {
    /// Due connections found in the index (started or left for the next run).
    pub due: u64,
    pub refreshed: u64,
    /// Someone else refreshed it first.
    pub still_fresh: u64,
    pub needs_reauth: u64,
    pub retry_later: u64,
    pub failed: u64,
    /// Found due, not started: too little of the invocation was left.
    pub left_for_next_run: u64,
    /// Every shard was read to its end and every due connection started
    /// (`false` when time ran out first or a query failed): the rest waits
    /// for the next run.
    pub complete: bool,
    /// Shards whose index query failed (each logged with its error).
    pub shards_failed: u64,
    /// Refresh sends whose outcome was unknown (each is recorded and resent once).
    pub outcome_unknown: u64,
}

impl DueSummary {
    /// The run as CloudWatch metrics (`OauthSync`, `Function=token-refresher`);
    /// the template's alarms watch `NeedsReauth` and `RefreshFailed`.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        crate::metrics::Metrics::new("token-refresher")
            .count("DueConnections", self.due)
            .count("Refreshed", self.refreshed)
            .count("NeedsReauth", self.needs_reauth)
            .count("RetryLater", self.retry_later)
            .count("RefreshFailed", self.failed)
            .count("LeftForNextRun", self.left_for_next_run)
            .count("OutcomeUnknown", self.outcome_unknown)
    }

    fn count(&mut self, result: Result<Result<Fresh, RefreshError>, tokio::task::JoinError>) {
        match result {
            Ok(Ok(fresh)) if fresh.refreshed => self.refreshed += 1,
            Ok(Ok(_)) => self.still_fresh += 1,
            Ok(Err(RefreshError::NeedsReauth { .. } | RefreshError::NotActive { .. })) => self.needs_reauth += 1,
            Ok(Err(RefreshError::RetryLater { .. })) => self.retry_later += 1,
            // Started, then found too little time left to send: as if never started.
            Ok(Err(RefreshError::Deadline { .. })) => {
                self.left_for_next_run += 1;
                self.complete = false;
            }
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "refresh failed");
                self.failed += 1;
            }
            Err(e) => {
                error!(error = %e, "refresh task failed");
                self.failed += 1;
            }
        }
    }
}

impl TokenService {
    /// Refreshes every connection the refresh-due index says is due, at most
    /// `concurrency` at a time (the token-refresher's job). Every shard of the
    /// index is read at once, a page at a time, while refreshes run (a run
    /// with nothing due costs one query round trip, not one per shard); no
    /// refresh starts once less than one send and one commit fit before
    /// `deadline`, and what is left waits for the next run. A failed query of
    /// one shard is logged and counted, and the other shards are still served.
    pub async fn refresh_due(self: &Arc<Self>, deadline: Instant, concurrency: usize) -> DueSummary {
        let now = now_ms();
        let start_by = deadline
            .checked_sub(self.settings.time_for_a_send())
            .unwrap_or_else(Instant::now);
        let mut summary = DueSummary {
            complete: true,
            ..DueSummary::default()
        };
        let unknown_before = self.unknown_outcomes();
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let (store, page_size) = (self.store.clone(), self.settings.due_page_size);
        let mut found = crate::shards::read_all(start_by, move |shard, after| {
            let store = store.clone();
            async move {
                let page = store
                    .due(&shard.to_string(), now, page_size, after)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok::<_, String>((page.ids, page.next))
            }
        });
        while let Some(page) = found.recv().await {
            let ids = match page {
                ShardPage::Items(ids) => ids,
                ShardPage::Failed { shard, error } => {
                    error!(
                        shard,
                        error, "the refresh-due index could not be read; this shard waits for the next run"
                    );
                    summary.shards_failed += 1;
                    summary.complete = false;
                    continue;
                }
                ShardPage::OutOfTime => {
                    summary.complete = false;
                    continue;
                }
            };
            // A connection refreshed in this run is due no sooner than its
            // refresh (`refresh_due_at`), after `now`: later pages never
            // bring it up again.
            summary.due += ids.len() as u64;
            for id in ids {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                while let Some(result) = tasks.try_join_next() {
                    summary.count(result);
                }
                if Instant::now() >= start_by {
                    summary.left_for_next_run += 1;
                    summary.complete = false;
                    continue;
                }
                let service = Arc::clone(self);
                tasks.spawn(async move {
                    let _permit = permit;
                    service.access_token(&id, deadline).await
                });
            }
        }
        while let Some(result) = tasks.join_next().await {
            summary.count(result);
        }
        summary.outcome_unknown = self.unknown_outcomes().saturating_sub(unknown_before);
        summary
    }

    /// Refresh sends whose outcome was unknown, since the process started.
    pub fn unknown_outcomes(&self) -> u64 {
        self.unknown_outcomes.load(std::sync::atomic::Ordering::Relaxed)
    }
}
