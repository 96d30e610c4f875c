//! Jobs for syncs added after the logins. A login schedules the syncs
//! configured at that moment; when the configuration later gains a sync (or
//! moves one to another provider), the sync function notices it and gives
//! every active connection of the sync's provider its job, once.
//!
//! It keeps one item in the sync-state table, [`ITEM_ID`]: the fingerprint
//! of the set of syncs ([`Sync::jobs_fingerprint`]) whose jobs all exist,
//! the [`Sync::job_key`]s of that set, and the walk in progress (the syncs
//! still to walk and the last connection id done in the first of them). An
//! invocation whose configuration has the stored fingerprint reads that one
//! item and nothing else. Otherwise it takes the item's lease with a
//! conditional write (two invocations never walk at once), then walks the
//! `by-provider` index of each new sync's provider a page at a time (a
//! Query, then a consistent BatchGetItem; never a Scan), creates the job of
//! every active connection with [`JobStore::create`] (conditional: an
//! existing job is never overwritten), and saves its place after every
//! page. It stops at its deadline after at least one page, and the next
//! invocation goes on from the saved place. A removed sync changes nothing
//! here: its jobs park themselves on their next run.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde::{Deserialize, Serialize};

use super::jobs::JobStore;
use crate::config::Sync;
use crate::connection::store::ConnectionStore;
use crate::connection::{Connection, ConnectionId, Status, now_ms};
use crate::dynamo::{Conditional, StoreError, conditional, has_s, n, s, sdk_failure};
use crate::reload::LiveConfig;

/// The reconciliation's item in the sync-state table.
pub const ITEM_ID: &str = "reconcile#syncs";

/// How much one invocation does.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Connections read per page of the `by-provider` index.
    pub page_size: i32,
    /// Job writes in flight at once.
    pub concurrency: usize,
    /// No page starts after this much time (the first page always runs),
    /// so the invocation keeps the rest of its time for the due jobs.
    pub budget: Duration,
    /// The lease lasts this much past the point where no page starts, for
    /// the page in flight; an invocation that dies leaves the walk to the
    /// next one after it.
    pub lease_margin: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> ReconcileSettings {
        ReconcileSettings {
            page_size: 100,
            concurrency: 8,
            budget: Duration::from_secs(60),
            lease_margin: Duration::from_secs(60),
        }
    }
}

/// Whether a connection gets a job of a sync of `provider`: it is that
/// provider's and active (as at a login; a job of any other connection
/// would only park). `sync schedule` and the reconciliation both ask this.
pub fn wants_job(connection: &Connection, provider: &str) -> bool {
    connection.provider == provider && connection.status == Status::Active
}

/// How one write per wanted connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobWrite {
    /// [`JobStore::schedule`]: create, or bring a parked job back (the
    /// operator's `sync schedule`).
    Schedule,
    /// [`JobStore::create`]: create only (the reconciliation).
    Create,
}

/// What [`jobs_for_page`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageJobs {
    /// The connections whose job was written.
    pub written: Vec<ConnectionId>,
    /// Wanted connections whose job exists and was left alone ([`JobWrite::Create`]).
    pub existing: u64,
    /// Connections that want no job (not active, or another provider's).
    pub skipped: u64,
}

/// Writes the job of `sync` (of `provider`) for every connection of a page
/// that [`wants_job`], `concurrency` writes at a time: the one code path
/// of `sync schedule` and the reconciliation.
pub async fn jobs_for_page(
    jobs: &JobStore,
    sync: &str,
    provider: &str,
    connections: &[Connection],
    how: JobWrite,
    concurrency: usize,
) -> Result<PageJobs, StoreError> {
    let mut page = PageJobs::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut first_error = None;
    for connection in connections {
        if !wants_job(connection, provider) {
            page.skipped += 1;
            continue;
        }
        while tasks.len() >= concurrency.max(1) {
            if let Some(done) = tasks.join_next().await {
                count_write(done, &mut page, &mut first_error);
            }
        }
        let (jobs, id, sync) = (jobs.clone(), connection.id.clone(), sync.to_owned());
        tasks.spawn(async move {
            let written = match how {
                JobWrite::Schedule => jobs.schedule(&id, &sync).await.map(|()| true),
                JobWrite::Create => jobs.create(&id, &sync).await,
            };
            (id, written)
        });
    }
    while let Some(done) = tasks.join_next().await {
        count_write(done, &mut page, &mut first_error);
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            page.written.sort();
            Ok(page)
        }
    }
}

/// One job write of [`jobs_for_page`], counted; the first error kept.
fn count_write(
    done: Result<(ConnectionId, Result<bool, StoreError>), tokio::task::JoinError>,
    page: &mut PageJobs,
    first_error: &mut Option<StoreError>,
) {
    match done {
        Ok((id, Ok(true))) => page.written.push(id),
        Ok((_, Ok(false))) => page.existing += 1,
        Ok((_, Err(e))) => {
            first_error.get_or_insert(e);
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// One sync still to walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    sync: String,
    provider: String,
}

/// A walk in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct Walk {
    /// The fingerprint this walk reconciles for.
    target: String,
    /// The syncs still to walk, in name order; the first is in progress.
    pending: Vec<Pending>,
    /// The last connection id done in the first pending sync.
    after: Option<String>,
    /// Jobs created and pages read by the walk so far (all invocations).
    created: u64,
    pages: u64,
}

/// The item's `state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// The fingerprint of the set of syncs whose jobs all exist.
    reconciled: Option<String>,
    /// The [`Sync::job_key`]s of that set.
    reconciled_keys: BTreeSet<String>,
    walk: Option<Walk>,
}

/// How an invocation's reconciliation went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    /// The stored fingerprint was the configuration's: nothing to do (one read).
    pub up_to_date: bool,
    /// Another invocation holds the walk.
    pub busy: bool,
    /// Pages of the `by-provider` index read.
    pub pages: u64,
    /// Jobs created (or brought back after their sync was configured again).
    pub created: u64,
    /// Active connections whose job existed, and connections that want none.
    pub existing: u64,
    pub skipped: u64,
    /// The walk finished in this invocation: the configuration's set of
    /// syncs is reconciled.
    pub finished: bool,
    /// The lease was taken over (this invocation outlived it); the other
    /// holder goes on.
    pub lost_lease: bool,
}

impl Reconciled {
    /// CloudWatch metrics (`Function=sync`): `SyncJobsCreated`, `ReconcilePages`.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        crate::metrics::Metrics::new("sync")
            .count("SyncJobsCreated", self.created)
            .count("ReconcilePages", self.pages)
    }
}

/// The reconciliation: the configuration's syncs, the connections, the jobs.
#[derive(Debug, Clone)]
pub struct Reconciler {
    /// Shared with the token service in the `sync` function, so a pushed
    /// configuration's syncs are reconciled without a restart ([`crate::reload`]).
    config: LiveConfig,
    connections: ConnectionStore,
    jobs: JobStore,
    settings: ReconcileSettings,
    owner: String,
}

/// The item as read: its state, its version and whether someone holds it.
struct Read {
    state: State,
    version: Option<u64>,
    held_until: Option<i64>,
}

impl Reconciler {
    /// `config`: an `Arc<Config>` (never reloaded), or the [`LiveConfig`]
    /// the token service reloads (the `sync` function's).
    pub fn new(
        config: impl Into<LiveConfig>,
        connections: ConnectionStore,
        jobs: JobStore,
        settings: ReconcileSettings,
    ) -> Reconciler {
        Reconciler {
            config: config.into(),
            connections,
            jobs,
            settings,
            owner: format!("reconcile-{:016x}", fastrand::u64(..)),
        }
    }

    /// The configuration's fingerprint ([`Sync::jobs_fingerprint`]).
    pub fn fingerprint(&self) -> String {
        Sync::jobs_fingerprint(self.config.current().syncs.values())
    }

    /// Creates the jobs the configuration wants and lacks, until `deadline`
    /// or the settings' budget, whichever comes first (at least one page).
    pub async fn run(&self, deadline: Instant) -> Result<Reconciled, StoreError> {
        let stop_at = deadline.min(Instant::now() + self.settings.budget);
        let fingerprint = self.fingerprint();
        let read = self.read().await?;
        if read.state.reconciled.as_deref() == Some(fingerprint.as_str()) {
            return Ok(Reconciled {
                up_to_date: true,
                ..Reconciled::default()
            });
        }
        let now = now_ms();
        if read.held_until.is_some_and(|until| until >= now) {
            return Ok(busy());
        }
        let mut state = read.state;
        if state.walk.as_ref().is_none_or(|walk| walk.target != fingerprint) {
            state.walk = Some(self.new_walk(&state, fingerprint));
        }
        let until = now + millis(stop_at.saturating_duration_since(Instant::now()) + self.settings.lease_margin);
        let mut version = read.version.unwrap_or(0);
        if !self.claim(&state, read.version, until).await? {
            return Ok(busy());
        }
        version += 1;
        let result = self.walk(&mut state, &mut version, stop_at).await;
        if result.as_ref().is_ok_and(|r| !r.lost_lease) || result.is_err() {
            // Leave the walk to the next invocation at once (best effort:
            // a failed release only waits for the lease to run out).
            let _ = self.save(&state, version, true).await;
        }
        result
    }

    /// A walk over the configured syncs whose jobs were not reconciled yet, in name order.
    fn new_walk(&self, state: &State, target: String) -> Walk {
        let pending = self
            .config
            .current()
            .syncs
            .values()
            .filter(|sync| !state.reconciled_keys.contains(&sync.job_key()))
            .map(|sync| Pending {
                sync: sync.name.clone(),
                provider: sync.provider.clone(),
            })
            .collect();
        Walk {
            target,
            pending,
            ..Walk::default()
        }
    }

    /// Walks pages until the walk is done or `stop_at` (after at least one
    /// page), saving the place after each.
    async fn walk(&self, state: &mut State, version: &mut u64, stop_at: Instant) -> Result<Reconciled, StoreError> {
        let mut done = Reconciled::default();
        loop {
            let Some(walk) = state.walk.as_mut() else {
                return Ok(done);
            };
            let Some(current) = walk.pending.first().cloned() else {
                state.reconciled = Some(walk.target.clone());
                state.reconciled_keys = self.config.current().syncs.values().map(Sync::job_key).collect();
                state.walk = None;
                done.finished = true;
                return Ok(done);
            };
            if done.pages > 0 && Instant::now() >= stop_at {
                return Ok(done);
            }
            let after = walk
                .after
                .as_deref()
                .map(ConnectionId::parse)
                .transpose()
                .map_err(|e| malformed(&e.to_string()))?;
            let (connections, last) = self
                .connections
                .page_of_provider(&current.provider, after.as_ref(), self.settings.page_size)
                .await?;
            let page = jobs_for_page(
                &self.jobs,
                &current.sync,
                &current.provider,
                &connections,
                JobWrite::Create,
                self.settings.concurrency,
            )
            .await?;
            let created = page.written.len() as u64;
            (done.pages, done.created) = (done.pages + 1, done.created + created);
            (done.existing, done.skipped) = (done.existing + page.existing, done.skipped + page.skipped);
            (walk.pages, walk.created) = (walk.pages + 1, walk.created + created);
            match last {
                Some(id) => walk.after = Some(id.to_string()),
                None => {
                    walk.pending.remove(0);
                    walk.after = None;
                }
            }
            if !self.save(state, *version, false).await? {
                done.lost_lease = true;
                return Ok(done);
            }
            *version += 1;
        }
    }

    /// The item, read consistently.
    async fn read(&self) -> Result<Read, StoreError> {
        let (client, table) = self.jobs.table();
        let output = client
            .get_item()
            .table_name(table)
            .key("id", s(ITEM_ID))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_failure("GetItem(reconcile)", table, e))?;
        let Some(item) = output.item else {
            return Ok(Read {
                state: State::default(),
                version: None,
                held_until: None,
            });
        };
        let number = |key: &str| item.get(key).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
        let state = match item.get("state") {
            Some(AttributeValue::S(text)) => serde_json::from_str(text).map_err(|e| malformed(&e.to_string()))?,
            _ => State::default(),
        };
        Ok(Read {
            state,
            version: Some(number("version").unwrap_or(0)),
            held_until: number("lease_until").map(|v: u64| i64::try_from(v).unwrap_or(i64::MAX)),
        })
    }

    /// Takes the lease until `until` (epoch ms), storing `state`, if the
    /// item is still at `version` (or absent) and nobody holds a live lease.
    async fn claim(&self, state: &State, version: Option<u64>, until: i64) -> Result<bool, StoreError> {
        let (client, table) = self.jobs.table();
        let (condition, seen) = match version {
            None => ("attribute_not_exists(id)", HashMap::new()),
            Some(v) => (
                "version = :seen AND (attribute_not_exists(lease_until) OR lease_until < :now)",
                HashMap::from([(":seen".to_owned(), n(v)), (":now".to_owned(), n(now_ms()))]),
            ),
        };
        let result = client
            .update_item()
            .table_name(table)
            .key("id", s(ITEM_ID))
            .update_expression("SET #state = :state, version = :version, lease_owner = :me, lease_until = :until")
            .condition_expression(condition)
            .set_expression_attribute_values(Some(seen))
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":state", s(&to_json(state)))
            .expression_attribute_values(":version", n(version.map_or(1, |v| v + 1)))
            .expression_attribute_values(":me", s(&self.owner))
            .expression_attribute_values(":until", n(until))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let ours = |item: &crate::dynamo::Item| has_s(item, "lease_owner", &self.owner);
        Ok(matches!(
            conditional(result, "UpdateItem(claim reconcile)", table, ours)?,
            Conditional::Done
        ))
    }

    /// Stores `state` (now at `version`, which becomes `version + 1`) while
    /// this invocation holds the lease; `release` gives the lease up.
    /// `false`: the lease was taken over, nothing was written.
    async fn save(&self, state: &State, version: u64, release: bool) -> Result<bool, StoreError> {
        let (client, table) = self.jobs.table();
        let update = if release {
            "SET #state = :state, version = :next REMOVE lease_owner, lease_until"
        } else {
            "SET #state = :state, version = :next"
        };
        let result = client
            .update_item()
            .table_name(table)
            .key("id", s(ITEM_ID))
            .update_expression(update)
            .condition_expression("lease_owner = :me AND version = :version")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":state", s(&to_json(state)))
            .expression_attribute_values(":version", n(version))
            .expression_attribute_values(":next", n(version + 1))
            .expression_attribute_values(":me", s(&self.owner))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        // A retry after a lost answer finds the next version stored by us.
        let ours = |item: &crate::dynamo::Item| {
            item.get("version").and_then(|v| v.as_n().ok()) == Some(&(version + 1).to_string())
                && (release || has_s(item, "lease_owner", &self.owner))
        };
        Ok(matches!(
            conditional(result, "UpdateItem(save reconcile)", table, ours)?,
            Conditional::Done
        ))
    }
}

fn busy() -> Reconciled {
    Reconciled {
        busy: true,
        ..Reconciled::default()
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

fn malformed(reason: &str) -> StoreError {
    StoreError::Malformed {
        id: ITEM_ID.to_owned(),
        reason: reason.to_owned(),
    }
}
