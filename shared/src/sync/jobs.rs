//! The sync-state table: one job item per (connection, sync) with its run
//! lease, checkpoint and next run, found through the sparse `sync-due` index
//! (a parked job has no `next_run_at` and is not in it); and the sync-runs
//! table: the run history (expires after 30 days) and, during a sweep, the
//! ids each page saw.
//!
//! Every write by a run is conditional on the run's lease owner, so a run
//! that lost its lease can change nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use serde::{Deserialize, Serialize};

use super::rate::RateState;
use crate::connection::{ConnectionId, now_ms};
use crate::dynamo::{Conditional, Item, StoreError, conditional, has_s, n, s, sdk_failure};

/// How long run history is kept.
pub const HISTORY_DAYS: i64 = 30;
/// How long a sweep's seen-id markers are kept (a sweep may span invocations).
const SEEN_TTL_SECS: i64 = 2 * 86_400;
/// A sweep pass older than this starts again from scratch: its first
/// markers may be gone (DynamoDB's TTL), and a pass that lost markers would
/// mark the records they held as deleted. A day less than the markers' life.
pub const SWEEP_MAX_AGE_MS: i64 = (SEEN_TTL_SECS - 86_400) * 1000;

/// Why a job whose sync is not in the configuration is parked. A job
/// parked for this reason is brought back by [`JobStore::create`] when the
/// sync is configured again.
pub fn unconfigured_reason(sync: &str) -> String {
    format!("sync `{sync}` is no longer configured")
}

/// A job's id: `{connection}#{sync}` (neither may contain `#`).
pub fn job_id(connection: &ConnectionId, sync: &str) -> String {
    format!("{connection}#{sync}")
}

/// What a run counted. Kept on the job while the run lasts and in its history item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunCounts {
    /// Pages committed.
    pub pages: u64,
    /// Records (and deletions) received.
    pub fetched: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    /// Records that could not be stored (no primary key, over 400 KB).
    pub rejected: u64,
    /// The first rejected records and why.
    pub rejected_examples: Vec<String>,
    /// HTTP requests to the data API.
    pub requests: u64,
    /// Answers 429.
    pub throttled: u64,
    /// Times the run waited for a rate-limit window, and how long in total.
    pub rate_limit_waits: u64,
    pub waited_ms: u64,
    /// Requests sent again after a 5xx, a timeout or a broken page.
    pub retries: u64,
    /// Access tokens refreshed after a 401.
    pub token_refreshes: u64,
}

/// The counts a run event carries (its schema is the events', not ours).
impl From<&RunCounts> for crate::events::Counts {
    fn from(c: &RunCounts) -> crate::events::Counts {
        crate::events::Counts {
            pages: c.pages,
            fetched: c.fetched,
            inserted: c.inserted,
            updated: c.updated,
            unchanged: c.unchanged,
            deleted: c.deleted,
            rejected: c.rejected,
            requests: c.requests,
            throttled: c.throttled,
        }
    }
}

impl RunCounts {
    /// What was counted since `before` (an earlier copy of the same run's
    /// counts): one invocation's share of a run that spans several.
    pub fn since(&self, before: &RunCounts) -> RunCounts {
        RunCounts {
            pages: self.pages.saturating_sub(before.pages),
            fetched: self.fetched.saturating_sub(before.fetched),
            inserted: self.inserted.saturating_sub(before.inserted),
            updated: self.updated.saturating_sub(before.updated),
            unchanged: self.unchanged.saturating_sub(before.unchanged),
            deleted: self.deleted.saturating_sub(before.deleted),
            rejected: self.rejected.saturating_sub(before.rejected),
            rejected_examples: self.rejected_examples
                [before.rejected_examples.len().min(self.rejected_examples.len())..]
                .to_vec(),
            requests: self.requests.saturating_sub(before.requests),
            throttled: self.throttled.saturating_sub(before.throttled),
            rate_limit_waits: self.rate_limit_waits.saturating_sub(before.rate_limit_waits),
            waited_ms: self.waited_ms.saturating_sub(before.waited_ms),
            retries: self.retries.saturating_sub(before.retries),
            token_refreshes: self.token_refreshes.saturating_sub(before.token_refreshes),
        }
    }

    pub fn reject(&mut self, what: String) {
        self.rejected += 1;
        if self.rejected_examples.len() < 10 {
            self.rejected_examples.push(what);
        }
    }
}

/// Which list a run is reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Data,
    /// The provider's deleted-records feed, after the data.
    Deleted,
}

/// A run in progress: where it is, so the next invocation resumes there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    pub run_id: String,
    pub started_at: i64,
    pub phase: Phase,
    /// This pass reads everything from scratch (no cursor, no delta link) and
    /// marks what it did not see as deleted.
    pub sweep: bool,
    /// Names the current pass's seen-id markers; a new one for every pass
    /// that starts from scratch, so a restarted pass never counts the ids an
    /// abandoned one saw.
    pub pass_id: String,
    /// When the current pass started (epoch ms).
    pub pass_started_at: i64,
    /// The pass read its last page and is sweeping: marking what it did not
    /// see as deleted, a page of the records table at a time.
    pub sweeping: bool,
    /// The sweep's place: the last record id it went through.
    pub sweep_after: Option<String>,
    /// The delta link of the pass's last page, stored once its sweep is done.
    pub pending_delta_link: Option<String>,
    /// The next page of the current pass; `None` at its start.
    pub next_url: Option<String>,
    /// The highest cursor value seen in this pass.
    pub pass_max: Option<String>,
    /// Pages read in this pass (numbers the seen-id markers).
    pub pass_pages: u64,
    pub counts: RunCounts,
}

/// The checkpoint: everything a job keeps between runs and invocations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Checkpoint {
    /// Incremental: every record up to this cursor value is stored.
    pub cursor: Option<String>,
    /// Delta: the link that starts the next pass.
    pub delta_link: Option<String>,
    /// The deleted-records feed's cursor.
    pub deleted_cursor: Option<String>,
    pub last_sweep_at: Option<i64>,
    /// Runs that failed in a row: the next one waits exponentially longer.
    pub failures: u32,
    pub rate: RateState,
    pub run: Option<RunState>,
    /// The job's next change number: every record write of the job carries
    /// one (`change_seq`), and every number below this one has landed. Moved
    /// only by the run that holds the lease, after its writes; readers of
    /// changes since a cursor read no further (docs/api.md).
    pub changes: u64,
}

/// How a run ended, for the history and `sync status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// `finished`, `failed` or `parked`.
    pub status: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub counts: RunCounts,
    pub error: Option<String>,
}

/// A job item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub connection: ConnectionId,
    pub sync: String,
    /// Absent while parked.
    pub next_run_at: Option<i64>,
    /// Changed by every [`JobStore::schedule`] (a login): a run that parks
    /// the job does so only if no login scheduled it since the run began.
    pub schedule_nonce: Option<String>,
    pub parked_reason: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub checkpoint: Checkpoint,
    pub last_run: Option<RunRecord>,
}

/// One page of the sync-due index.
#[derive(Debug)]
pub struct DueJobs {
    /// Each due job's id and when it became due (epoch ms).
    pub ids: Vec<(String, i64)>,
    pub next: Option<HashMap<String, AttributeValue>>,
}

/// The sync-state and sync-runs tables.
#[derive(Debug, Clone)]
pub struct JobStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    runs_table: String,
}

impl JobStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>, runs_table: impl Into<String>) -> JobStore {
        JobStore {
            client,
            table: table.into(),
            runs_table: runs_table.into(),
        }
    }

    /// Creates the job if it does not exist and makes it due now if it is
    /// parked (a new login brings a parked job back); a scheduled job keeps
    /// its time.
    pub async fn schedule(&self, connection: &ConnectionId, sync: &str) -> Result<(), StoreError> {
        self.set_due(connection, sync, "if_not_exists(next_run_at, :now)", None)
            .await
            .map(|_| ())
    }

    /// [`JobStore::schedule`], but due now whatever its time was: the API's
    /// "run now" (the sync function picks it up on its next schedule; a run
    /// in progress keeps its lease and goes on).
    pub async fn make_due(&self, connection: &ConnectionId, sync: &str) -> Result<(), StoreError> {
        self.set_due(connection, sync, ":now", None).await.map(|_| ())
    }

    /// [`JobStore::schedule`] only where no job would otherwise run: the job
    /// does not exist, or it was parked because its sync was not configured
    /// ([`unconfigured_reason`]: the sync was removed and is back). Any other
    /// job, parked or not, is left exactly as it is. `true`: written.
    pub async fn create(&self, connection: &ConnectionId, sync: &str) -> Result<bool, StoreError> {
        let condition = "attribute_not_exists(id) OR parked_reason = :unconfigured";
        self.set_due(
            connection,
            sync,
            "if_not_exists(next_run_at, :now)",
            Some((condition, unconfigured_reason(sync))),
        )
        .await
    }

    /// The one write that schedules a job, under `condition` (and the value
    /// of its `:unconfigured`) when given. `true`: written.
    async fn set_due(
        &self,
        connection: &ConnectionId,
        sync: &str,
        next_run_at: &str,
        condition: Option<(&str, String)>,
    ) -> Result<bool, StoreError> {
        let id = job_id(connection, sync);
        let nonce = format!("{:016x}", fastrand::u64(..));
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(&id))
            .update_expression(format!(
                "SET #connection = :connection, #sync = :sync, due_shard = :shard, \
                 next_run_at = {next_run_at}, updated_at = :now, schedule_nonce = :nonce \
                 REMOVE parked_reason"
            ))
            .expression_attribute_values(":nonce", s(&nonce))
            .expression_attribute_names("#connection", "connection")
            .expression_attribute_names("#sync", "sync")
            .expression_attribute_values(":connection", s(connection.as_str()))
            .expression_attribute_values(":sync", s(sync))
            .expression_attribute_values(":shard", s(&shard_of(&id)))
            .expression_attribute_values(":now", n(now_ms()));
        if let Some((condition, unconfigured)) = condition {
            request = request
                .condition_expression(condition)
                .expression_attribute_values(":unconfigured", s(&unconfigured))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        }
        // A retry after a lost answer finds our own nonce: written.
        let written = conditional(request.send().await, "UpdateItem(schedule job)", &self.table, |item| {
            has_s(item, "schedule_nonce", &nonce)
        })?;
        Ok(matches!(written, Conditional::Done))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_failure("GetItem(job)", &self.table, e))?;
        output.item.map(|item| from_item(&item)).transpose()
    }

    /// The table's client and name, for the other items kept in it
    /// (the reconciliation's, `sync::reconcile`).
    pub(crate) fn table(&self) -> (&aws_sdk_dynamodb::Client, &str) {
        (&self.client, &self.table)
    }

    /// The shared rate budgets, kept in the same table (`rate#…` items).
    pub fn budget(&self) -> super::budget::RateBudget {
        super::budget::RateBudget::new(self.client.clone(), self.table.clone())
    }

    /// Every job item (the CLI's `sync status`; the functions never scan).
    /// Items that are not jobs (the shared rate budgets, `rate#…`, and the
    /// reconciliation's `reconcile#…`) are skipped.
    pub async fn all(&self) -> Result<Vec<Job>, StoreError> {
        let items = crate::dynamo::scan_all(&self.client, &self.table, None, "Scan(jobs)").await?;
        items
            .iter()
            .filter(|item| {
                !item
                    .get("id")
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|id| id.starts_with("rate#") || id.starts_with("reconcile#"))
            })
            .map(from_item)
            .collect()
    }

    /// The shards of `shards` of the sync-due index with a job due at `now`
    /// (epoch ms): one query each, all at once ([`crate::shards::with_due`]).
    pub async fn shards_with_due(&self, shards: &[u32], now: i64) -> Vec<u32> {
        crate::shards::with_due(shards, |shard| {
            let jobs = self.clone();
            async move { Ok::<_, StoreError>(!jobs.due(shard, now, 1, None).await?.ids.is_empty()) }
        })
        .await
    }

    /// Ids of jobs due by `now` in one shard of the `sync-due` index, a page at a time.
    pub async fn due(
        &self,
        shard: u32,
        now: i64,
        page_size: i32,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<DueJobs, StoreError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("sync-due")
            .key_condition_expression("due_shard = :shard AND next_run_at <= :now")
            .expression_attribute_values(":shard", s(&shard.to_string()))
            .expression_attribute_values(":now", n(now))
            .limit(page_size)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_failure("Query(sync-due)", &self.table, e))?;
        let ids = output
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| match (item.get("id"), item.get("next_run_at")) {
                (Some(AttributeValue::S(id)), Some(AttributeValue::N(due))) => {
                    Some((id.clone(), due.parse().unwrap_or_default()))
                }
                (Some(AttributeValue::S(id)), _) => Some((id.clone(), 0)),
                _ => None,
            })
            .collect();
        Ok(DueJobs {
            ids,
            next: output.last_evaluated_key.filter(|k| !k.is_empty()),
        })
    }

    /// Takes the run lease until `until` (epoch ms) when nobody holds a live
    /// one and the job is due (or `force`: any job that is not running).
    /// `None`: someone else runs it, or it is not due.
    pub async fn claim(&self, id: &str, owner: &str, until: i64, force: bool) -> Result<Option<Job>, StoreError> {
        let now = now_ms();
        let free = "(attribute_not_exists(lease_until) OR lease_until < :now)";
        let condition = if force {
            format!("attribute_exists(id) AND {free}")
        } else {
            format!("attribute_exists(next_run_at) AND next_run_at <= :now AND {free}")
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id))
            .update_expression("SET lease_owner = :owner, lease_until = :until, updated_at = :now")
            .condition_expression(condition)
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let error = match result {
            Ok(output) => return output.attributes.map(|item| from_item(&item)).transpose(),
            Err(e) => e,
        };
        match crate::dynamo::refused(error, "UpdateItem(claim job)", &self.table)? {
            // A retry that met the claim its lost answer came from: the item is the claimed job.
            Some(item) if has_s(&item, "lease_owner", owner) && item.get("lease_until") == Some(&n(until)) => {
                from_item(&item).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Extends the run lease to `until` while `owner` still holds it (even if
    /// it ran out: nobody took it over). `false`: another run has the job.
    pub async fn renew(&self, id: &str, owner: &str, until: i64) -> Result<bool, StoreError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id))
            .update_expression("SET lease_until = :until")
            .expression_attribute_values(":until", n(until));
        self.owned(request, owner, "UpdateItem(renew lease)").await
    }

    /// [`JobStore::renew`] for `lease` from now, and the run's clock set to
    /// what it gave: the new end, or 0 when another run has the job (then
    /// nothing more is written). An error leaves the clock as it was.
    pub async fn renew_clock(
        &self,
        id: &str,
        owner: &str,
        lease: std::time::Duration,
        clock: &LeaseClock,
    ) -> Result<bool, StoreError> {
        let until = now_ms() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let renewed = self.renew(id, owner, until).await?;
        clock.set(if renewed { until } else { 0 });
        Ok(renewed)
    }

    /// Saves the checkpoint while holding the lease. `false`: the lease was lost.
    pub async fn checkpoint(&self, id: &str, owner: &str, checkpoint: &Checkpoint) -> Result<bool, StoreError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id))
            .update_expression("SET #state = :state, updated_at = :now")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":state", s(&to_json(checkpoint)))
            .expression_attribute_values(":now", n(now_ms()));
        self.owned(request, owner, "UpdateItem(checkpoint)").await
    }

    /// Ends this holder's lease: saves the checkpoint, then either schedules
    /// the next run at `next_run_at` or parks the job with `parked` (out of
    /// the due index until a new login), and records the last run if given.
    ///
    /// Parking holds only while the job's `schedule_nonce` is still `seen`
    /// (what the claim read): when a login scheduled the job during the run,
    /// the job is released due now instead, so an active connection's job is
    /// never left parked.
    pub async fn release(
        &self,
        id: &str,
        owner: &str,
        checkpoint: &Checkpoint,
        next: Next,
        last_run: Option<&RunRecord>,
        seen: Option<&str>,
    ) -> Result<bool, StoreError> {
        if let Next::Parked(_) = &next {
            match self
                .release_once(id, owner, checkpoint, next.clone(), last_run, Some(seen))
                .await?
            {
                Released::Done => return Ok(true),
                Released::LostLease => return Ok(false),
                Released::Rescheduled => {}
            }
            let next = Next::At(now_ms());
            return Ok(self.release_once(id, owner, checkpoint, next, last_run, None).await? == Released::Done);
        }
        Ok(self.release_once(id, owner, checkpoint, next, last_run, None).await? == Released::Done)
    }

    async fn release_once(
        &self,
        id: &str,
        owner: &str,
        checkpoint: &Checkpoint,
        next: Next,
        last_run: Option<&RunRecord>,
        nonce: Option<Option<&str>>,
    ) -> Result<Released, StoreError> {
        let now = now_ms();
        let mut set = vec!["#state = :state", "updated_at = :now"];
        let mut remove = vec!["lease_owner", "lease_until"];
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id))
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":state", s(&to_json(checkpoint)))
            .expression_attribute_values(":now", n(now));
        match next {
            Next::At(at) => {
                set.push("next_run_at = :next");
                remove.push("parked_reason");
                request = request.expression_attribute_values(":next", n(at));
            }
            Next::Parked(reason) => {
                set.push("parked_reason = :reason");
                remove.push("next_run_at");
                request = request.expression_attribute_values(":reason", s(&reason));
            }
        }
        if let Some(run) = last_run {
            set.push("last_run = :last");
            request = request.expression_attribute_values(":last", s(&to_json(run)));
        }
        let request = request.update_expression(format!("SET {} REMOVE {}", set.join(", "), remove.join(", ")));
        let Some(nonce) = nonce else {
            return Ok(match self.owned(request, owner, "UpdateItem(release job)").await? {
                true => Released::Done,
                false => Released::LostLease,
            });
        };
        let request = match nonce {
            Some(seen) => request
                .condition_expression("lease_owner = :me AND schedule_nonce = :seen")
                .expression_attribute_values(":seen", s(seen)),
            None => request.condition_expression("lease_owner = :me AND attribute_not_exists(schedule_nonce)"),
        };
        let result = request
            .expression_attribute_values(":me", s(owner))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        // Refused while we still hold the lease: a new schedule came (a login), so the job stays scheduled.
        let rescheduled = |item: &Item| has_s(item, "lease_owner", owner);
        Ok(
            match conditional(result, "UpdateItem(park job)", &self.table, |_| false)? {
                Conditional::Done => Released::Done,
                Conditional::Refused(Some(item)) if rescheduled(&item) => Released::Rescheduled,
                Conditional::Refused(_) => Released::LostLease,
            },
        )
    }

    /// A conditional update that holds only while `owner` holds the lease.
    async fn owned(
        &self,
        request: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
        owner: &str,
        operation: &'static str,
    ) -> Result<bool, StoreError> {
        let result = request
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        // Holds only while we hold the lease, so a retry after a lost answer holds too.
        Ok(matches!(
            conditional(result, operation, &self.table, |_| false)?,
            Conditional::Done
        ))
    }

    /// Writes a run's history item (expires after [`HISTORY_DAYS`]).
    pub async fn record_run(&self, id: &str, run: &RunRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.runs_table)
            .item("job", s(id))
            // A run that failed and then resumed leaves one item per ending.
            .item(
                "sk",
                s(&format!(
                    "run#{:015}#{}#{:015}",
                    run.started_at, run.run_id, run.finished_at
                )),
            )
            .item("run", s(&to_json(run)))
            .item("expires_at", n(run.finished_at / 1000 + HISTORY_DAYS * 86_400))
            .send()
            .await
            .map_err(|e| sdk_failure("PutItem(run history)", &self.runs_table, e))?;
        Ok(())
    }

    /// The newest runs of a job, newest first.
    pub async fn runs(&self, id: &str, limit: i32) -> Result<Vec<RunRecord>, StoreError> {
        let output = self
            .client
            .query()
            .table_name(&self.runs_table)
            .key_condition_expression("job = :job AND begins_with(sk, :run)")
            .expression_attribute_values(":job", s(id))
            .expression_attribute_values(":run", s("run#"))
            .scan_index_forward(false)
            .limit(limit)
            .send()
            .await
            .map_err(|e| sdk_failure("Query(run history)", &self.runs_table, e))?;
        output
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| match item.get("run") {
                Some(AttributeValue::S(text)) => serde_json::from_str(text).map_err(|e| malformed(id, &e.to_string())),
                _ => Err(malformed(id, "a run item without `run`")),
            })
            .collect()
    }

    /// Remembers the ids one page of a sweep pass saw (one write per page,
    /// none per record), as 8-byte fingerprints ([`seen_hash`]): a sweep
    /// holds 8 bytes per record in memory, whatever the ids' length.
    pub async fn save_seen(&self, id: &str, pass_id: &str, page: u64, ids: &[String]) -> Result<(), StoreError> {
        let hashes: Vec<u8> = ids.iter().flat_map(|i| seen_hash(i).to_le_bytes()).collect();
        self.client
            .put_item()
            .table_name(&self.runs_table)
            .item("job", s(id))
            .item("sk", s(&format!("seen#{pass_id}#{page:08}")))
            .item("hashes", AttributeValue::B(hashes.into()))
            .item("expires_at", n(now_ms() / 1000 + SEEN_TTL_SECS))
            .send()
            .await
            .map_err(|e| sdk_failure("PutItem(seen ids)", &self.runs_table, e))?;
        Ok(())
    }

    /// The fingerprints of every id the sweep pass `pass_id` saw, sorted
    /// (look one up with [`Seen::contains`]), and how many page markers held them.
    pub async fn seen(&self, id: &str, pass_id: &str) -> Result<(Seen, u64), StoreError> {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.runs_table)
                .key_condition_expression("job = :job AND begins_with(sk, :prefix)")
                .expression_attribute_values(":job", s(id))
                .expression_attribute_values(":prefix", s(&format!("seen#{pass_id}#")))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_failure("Query(seen ids)", &self.runs_table, e))?;
            for item in output.items.unwrap_or_default() {
                pages += 1;
                match item.get("hashes") {
                    Some(AttributeValue::B(bytes)) => seen.extend(
                        bytes
                            .as_ref()
                            .chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())),
                    ),
                    // A marker written before fingerprints: the ids themselves.
                    _ => {
                        if let Some(AttributeValue::L(ids)) = item.get("ids") {
                            seen.extend(ids.iter().filter_map(|v| v.as_s().ok()).map(|i| seen_hash(i)));
                        }
                    }
                }
            }
            start = output.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                seen.sort_unstable();
                seen.dedup();
                return Ok((Seen(seen), pages));
            }
        }
    }

    /// Deletes the seen-id markers of pages `0..pages` of pass `pass_id`
    /// (after its sweep; DynamoDB's TTL would take days).
    pub async fn forget_seen(&self, id: &str, pass_id: &str, pages: u64) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        let keys: Vec<WriteRequest> = (0..pages)
            .map(|page| {
                DeleteRequest::builder()
                    .key("job", s(id))
                    .key("sk", s(&format!("seen#{pass_id}#{page:08}")))
                    .build()
                    .map(|delete| WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<Result<_, _>>()
            .map_err(|e| malformed(id, &e.to_string()))?;
        for chunk in keys.chunks(25) {
            let mut batch = chunk.to_vec();
            for attempt in 0..8u32 {
                let output = self
                    .client
                    .batch_write_item()
                    .request_items(&self.runs_table, batch)
                    .send()
                    .await
                    .map_err(|e| sdk_failure("BatchWriteItem(forget seen ids)", &self.runs_table, e))?;
                batch = output
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.runs_table))
                    .unwrap_or_default();
                if batch.is_empty() {
                    break;
                }
                tokio::time::sleep(crate::dynamo::batch_backoff(attempt + 1)).await;
            }
        }
        Ok(())
    }
}

/// The fingerprint a sweep keeps of a seen record id: the first 8 bytes of
/// its SHA-256. Two ids that share one (about one pair in 2^64) can only
/// keep a deleted record live until the next sweep, never delete a live one.
pub fn seen_hash(id: &str) -> u64 {
    crate::crypto::sha256_u64(id.as_bytes())
}

/// What a sweep pass saw: sorted fingerprints.
#[derive(Debug, Clone, Default)]
pub struct Seen(Vec<u64>);

impl Seen {
    pub fn contains(&self, id: &str) -> bool {
        self.0.binary_search(&seen_hash(id)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How one attempt at releasing a lease went.
#[derive(Debug, PartialEq, Eq)]
enum Released {
    Done,
    LostLease,
    /// Parking was refused: a login scheduled the job during the run.
    Rescheduled,
}

/// A run's lease as the run knows it: until when it holds (epoch ms), kept
/// up to date by whoever renews it. Record writes check it before every
/// batch, without a round trip, and stop `margin` before it runs out.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    until: Arc<AtomicI64>,
    margin_ms: i64,
}

impl LeaseClock {
    pub fn new(until: i64, margin_ms: i64) -> LeaseClock {
        LeaseClock {
            until: Arc::new(AtomicI64::new(until)),
            margin_ms,
        }
    }

    /// A clock that always holds: writes outside any run (benchmarks, tools).
    pub fn unfenced() -> LeaseClock {
        LeaseClock::new(i64::MAX, 0)
    }

    /// May a write still start now?
    pub fn holds(&self) -> bool {
        now_ms().saturating_add(self.margin_ms) < self.until()
    }

    pub fn until(&self) -> i64 {
        self.until.load(Ordering::Acquire)
    }

    /// After a renewal; `0` after a lost one, so that nothing more is written.
    pub fn set(&self, until: i64) {
        self.until.store(until, Ordering::Release);
    }
}

/// What follows a released lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The next run, at this time (epoch ms).
    At(i64),
    /// Out of the schedule until a new login, for this reason.
    Parked(String),
}

/// The shard of the `sync-due` index a job lives in.
pub fn shard_of(job_id: &str) -> String {
    match ConnectionId::parse(&job_id.replace('#', ".")) {
        Ok(id) => id.due_shard(),
        Err(_) => "0".to_owned(),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

fn malformed(id: &str, reason: &str) -> StoreError {
    StoreError::Malformed {
        id: id.to_owned(),
        reason: reason.to_owned(),
    }
}

fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Job, StoreError> {
    let text = |key: &str| item.get(key).and_then(|v| v.as_s().ok()).cloned();
    let number = |key: &str| item.get(key).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
    let id = text("id").ok_or_else(|| malformed("?", "no id"))?;
    let connection = text("connection").ok_or_else(|| malformed(&id, "no connection"))?;
    let connection = ConnectionId::parse(&connection).map_err(|e| malformed(&id, &e.to_string()))?;
    let checkpoint = match text("state") {
        Some(state) => serde_json::from_str(&state).map_err(|e| malformed(&id, &format!("state: {e}")))?,
        None => Checkpoint::default(),
    };
    let last_run = match text("last_run") {
        Some(run) => Some(serde_json::from_str(&run).map_err(|e| malformed(&id, &format!("last_run: {e}")))?),
        None => None,
    };
    Ok(Job {
        sync: text("sync").ok_or_else(|| malformed(&id, "no sync"))?,
        connection,
        next_run_at: number("next_run_at"),
        schedule_nonce: text("schedule_nonce"),
        parked_reason: text("parked_reason"),
        lease_owner: text("lease_owner"),
        lease_until: number("lease_until"),
        checkpoint,
        last_run,
        id,
    })
}
