//! How a page is stored: its records as changes, written only while the
//! run holds its lease, each step retried while DynamoDB answers with a
//! transient error.

use std::time::Duration;

use serde_json::Value;
use tracing::warn;

use super::{Context, SyncEngine};
use crate::config::SyncMode;
use crate::connection::now_ms;
use crate::dynamo::StoreError;
use crate::json::{scalar_text, value_at};
use crate::sync::jobs::{LeaseClock, Phase, RunState};
use crate::sync::records::{Change, Incoming, MAX_ITEM_BYTES, content_hash};
use crate::telemetry::error_chain;

/// Aborts a background task when dropped (the lease renewal ends with its run).
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SyncEngine {
    /// The page's records as changes, and the ids the page shows to exist
    /// (for a sweep); what cannot be stored is counted and named. A record
    /// rejected for its size still exists: it counts as seen, so a sweep does
    /// not mark its stored copy deleted.
    pub(super) fn changes(
        &self,
        cx: &Context<'_>,
        run: &mut RunState,
        records: &[Value],
    ) -> (Vec<Change>, Vec<String>) {
        let sync = cx.sync;
        let mut changes = Vec::with_capacity(records.len());
        let mut seen = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            if run.phase == Phase::Deleted {
                let key = sync
                    .deleted
                    .as_ref()
                    .and_then(|(feed, _)| value_at(record, &feed.key_field))
                    .and_then(scalar_text);
                match key {
                    Some(key) => changes.push(Change::Delete(key)),
                    None => run.counts.reject(format!("deleted-feed entry {index}: no key")),
                }
                continue;
            }
            let id: Option<Vec<String>> = sync
                .primary_key
                .iter()
                .map(|key| value_at(record, key).and_then(scalar_text).filter(|v| !v.is_empty()))
                .collect();
            let Some(id) = id else {
                run.counts.reject(format!(
                    "record {index} of page {}: no primary key `{}`",
                    run.pass_pages + 1,
                    sync.primary_key.join("`, `")
                ));
                continue;
            };
            let id = id.join("|");
            if sync.mode == SyncMode::Delta && record.get("@removed").is_some() {
                changes.push(Change::Delete(id));
                continue;
            }
            seen.push(id.clone());
            // A delta answer may carry only the properties that changed: a
            // field it does not carry is left as stored, not set to null.
            let partial = sync.mode == SyncMode::Delta;
            let data = match &sync.fields {
                Some(fields) => fields
                    .iter()
                    .filter_map(|(name, source)| match value_at(record, source) {
                        Some(value) => Some((name.clone(), value.clone())),
                        None if partial => None,
                        None => Some((name.clone(), Value::Null)),
                    })
                    .collect(),
                None => match record {
                    Value::Object(map) => map.clone(),
                    _ => {
                        run.counts.reject(format!("record {id}: not a JSON object"));
                        continue;
                    }
                },
            };
            let size = serde_json::to_string(&data).map_or(usize::MAX, |t| t.len()) + 2 * id.len() + 256;
            if size > MAX_ITEM_BYTES {
                run.counts
                    .reject(format!("record {id}: {size} bytes, over DynamoDB's 400 KB item limit"));
                continue;
            }
            let hash = content_hash(&data);
            let incoming = Incoming { id, data, hash };
            changes.push(if partial {
                Change::Merge(incoming)
            } else {
                Change::Upsert(incoming)
            });
        }
        (changes, seen)
    }

    /// Stores a page: plans it from the stored hashes, then writes the plan,
    /// each step tried again (bounded, with backoff) while DynamoDB answers
    /// with a transient error. The counts are the plan's, so a write that
    /// needed a second try does not count its records as unchanged.
    pub(super) async fn store_page(
        &self,
        cx: &Context<'_>,
        changes: Vec<Change>,
    ) -> Result<crate::sync::records::Applied, StoreError> {
        let now = now_ms();
        let plan = self
            .store_retry(cx, || self.records.plan(&cx.job, changes.clone(), now))
            .await?;
        let first = cx.next_change();
        self.store_retry(cx, || self.records.write(&plan, &cx.lease, first))
            .await?;
        cx.changes_landed(first, plan.writes());
        Ok(plan.counts)
    }

    /// `step` retried while DynamoDB answers with a transient error, up to
    /// the page's attempts, while the run has time for it and its last writes.
    pub(super) async fn store_retry<T, F, Fut>(&self, cx: &Context<'_>, step: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let retry = crate::dynamo::Retry {
            until: cx
                .deadline
                .checked_sub(self.settings.commit_margin)
                .unwrap_or(cx.deadline),
            attempts: self.settings.page_attempts,
            base: self.settings.base_backoff,
            cap: self.settings.max_backoff,
        };
        crate::dynamo::retry_transient(retry, &format!("storing a page of {}", cx.job), step).await
    }

    /// Does the run still hold its lease with time to write? When its clock
    /// says no (the process was paused, say), one renewal decides: it holds
    /// only while nobody took the job over.
    pub(super) async fn lease_holds(&self, cx: &Context<'_>) -> bool {
        if cx.lease.holds() {
            return true;
        }
        let Some(lease) = self.settings.renewed_lease else {
            return false;
        };
        match self.jobs.renew_clock(&cx.job, &self.worker, lease, &cx.lease).await {
            Ok(true) => true,
            Ok(false) => {
                warn!(job = cx.job, "the run's lease was taken over; it writes nothing more");
                false
            }
            Err(e) => {
                warn!(job = cx.job, error = %error_chain(&e), "the run's lease could not be renewed");
                false
            }
        }
    }

    /// Renews the run lease every third of `lease` until the returned guard
    /// is dropped; a lost lease stops it and sets the clock to 0.
    pub(super) fn renew_in_background(&self, id: &str, lease: Duration, clock: &LeaseClock) -> AbortOnDrop {
        let (jobs, id, owner, clock) = (self.jobs.clone(), id.to_owned(), self.worker.clone(), clock.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match jobs.renew_clock(&id, &owner, lease, &clock).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    // The clock runs out on its own if this keeps failing.
                    Err(e) => warn!(job = id, error = %error_chain(&e), "renewing the run's lease failed"),
                }
            }
        }))
    }

    /// Deletes the current pass's seen-id markers, best effort: they expire
    /// on their own, and a new pass never reads them.
    pub(super) async fn forget_markers(&self, cx: &Context<'_>, run: &RunState) {
        if let Err(e) = self.jobs.forget_seen(&cx.job, &run.pass_id, run.pass_pages).await {
            warn!(job = cx.job, error = %error_chain(&e), "the sweep's seen-id markers could not be deleted");
        }
    }
}
