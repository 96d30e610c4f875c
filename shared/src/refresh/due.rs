//! The token-refresher's run over its shards of the refresh-due index: take
//! each shard's lease (two runs never work one shard at once), read what
//! comes due before the run must stop, and refresh each connection at its
//! due time (a timer wheel: tokio's timer and a heap of due times, no
//! polling), a bounded number at a time, within each provider's cap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::{Fresh, ProviderLoad, RefreshError, RunPlace, RunPlaces, TokenService, millis};
use crate::connection::ConnectionId;
use crate::connection::now_ms;
use crate::connection::store::{ConnectionStore, ShardLease};
use crate::shards::ShardPage;
use crate::telemetry::error_chain;

/// A shard lease outlasts the run's deadline by this much: the time a
/// refresh still running at the deadline needs to end.
const SHARD_LEASE_SLACK: Duration = Duration::from_secs(2);
/// How often a run waiting for a shard another run holds looks again.
const SHARD_POLL_MIN: Duration = Duration::from_millis(200);
const SHARD_POLL_MAX: Duration = Duration::from_secs(2);

/// One run of the token-refresher.
#[derive(Debug, Clone)]
pub struct DueRun {
    /// The shards of the refresh-due index to work ([`crate::shards::Layout::shards_of`]).
    pub shards: Vec<u32>,
    /// The invocation's end: refreshes start until one send and one commit
    /// no longer fit before it, each at its due time; what comes due later
    /// is the next run's.
    pub deadline: Instant,
    /// Refreshes in flight at most (`[service] refresh_concurrency`).
    pub concurrency: usize,
}

impl DueRun {
    /// The latest due time (epoch ms) a run with `deadline` starts
    /// refreshes for, with the protocol's `settings`: a send and a commit
    /// must still fit before the deadline.
    pub fn due_until(deadline: Instant, settings: &super::RefreshSettings) -> i64 {
        epoch_of(start_by(deadline, settings))
    }

    /// Every shard of a refresh-due index of [`crate::connection::DUE_SHARDS`]
    /// shards (one group; the tests' and the CLI's run).
    pub fn all(deadline: Instant, concurrency: usize) -> DueRun {
        DueRun {
            shards: (0..crate::connection::DUE_SHARDS).collect(),
            deadline,
            concurrency,
        }
    }
}

/// What [`TokenService::refresh_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DueSummary {
    /// Shards this run worked (their leases taken). A shard with nothing
    /// due is looked at (one query) and not counted.
    pub shards: u64,
    /// Shards with something due that another run held for as long as this
    /// one would: that run works them.
    pub shards_busy: u64,
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
    /// Shards whose lease or index query failed (each logged with its error).
    pub shards_failed: u64,
    /// Refresh sends whose outcome was unknown (each is recorded and resent once).
    pub outcome_unknown: u64,
    /// The latest a refresh started after its due time, in milliseconds: its
    /// timer and its wait for a place among the run's `concurrency`.
    pub started_late_max_ms: u64,
    /// Each provider's cap, limit and refreshes in flight (`token_concurrency`).
    pub providers: Vec<ProviderLoad>,
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
            .count("ShardsBusy", self.shards_busy)
    }

    /// One document per provider (dimensions `Function`, `Provider`):
    /// `TokenThrottled` (its 429 and 503 answers to refreshes so far),
    /// `TokenLimit` (the AIMD limit now) of `TokenCap` (this group's share of
    /// `token_concurrency`), `TokenLimitLowest` and `TokenInFlightPeak`.
    pub fn provider_metrics(&self) -> Vec<crate::metrics::Metrics> {
        self.providers
            .iter()
            .map(|load| {
                crate::metrics::Metrics::new("token-refresher")
                    .with_dimension("Provider", &load.provider)
                    .count("TokenThrottled", load.throttled)
                    .count("TokenLimit", load.limit)
                    .count("TokenCap", load.cap)
                    .count("TokenLimitLowest", load.lowest_limit)
                    .count("TokenInFlightPeak", load.peak_in_flight)
            })
            .collect()
    }

    fn count(&mut self, result: Result<Option<Started>, tokio::task::JoinError>) {
        if let Ok(Some((late_ms, _))) = &result {
            self.started_late_max_ms = self.started_late_max_ms.max(*late_ms);
        }
        let result = result.map(|started| started.map(|(_, refreshed)| refreshed));
        match result {
            Ok(None) => {
                self.left_for_next_run += 1;
                self.complete = false;
            }
            Ok(Some(Ok(fresh))) if fresh.refreshed => self.refreshed += 1,
            Ok(Some(Ok(_))) => self.still_fresh += 1,
            Ok(Some(Err(RefreshError::NeedsReauth { .. } | RefreshError::NotActive { .. }))) => self.needs_reauth += 1,
            Ok(Some(Err(RefreshError::RetryLater { .. }))) => self.retry_later += 1,
            // Started, then found too little time left to send: as if never started.
            Ok(Some(Err(RefreshError::Deadline { .. }))) => {
                self.left_for_next_run += 1;
                self.complete = false;
            }
            Ok(Some(Err(e))) => {
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

/// The last moment a run with `deadline` starts a refresh.
fn start_by(deadline: Instant, settings: &super::RefreshSettings) -> Instant {
    deadline
        .checked_sub(settings.time_for_a_send())
        .unwrap_or_else(Instant::now)
}

/// The shards of `shards` with a connection due by `until` (epoch ms, see
/// [`DueRun::due_until`]), on the store alone: [`crate::shards::with_due`].
pub async fn shards_with_due(store: &ConnectionStore, shards: &[u32], until: i64) -> Vec<u32> {
    crate::shards::with_due(shards, |shard| {
        let store = store.clone();
        async move {
            let look = store.due(&shard.to_string(), until, 1, None).await?;
            Ok::<_, crate::dynamo::StoreError>(!look.ids.is_empty())
        }
    })
    .await
}

/// The `Instant` of the epoch time `at_ms`.
fn instant_of(at_ms: i64) -> Instant {
    crate::when::instant_of(at_ms, now_ms())
}

/// The epoch time of `at`.
fn epoch_of(at: Instant) -> i64 {
    crate::when::epoch_of(at, now_ms())
}

/// A refresh the run started: how late (ms after its due time), and how it went.
type Started = (u64, Result<Fresh, RefreshError>);

/// A due connection in the wheel: soonest first.
type Timer = Reverse<(i64, ConnectionId)>;

impl TokenService {
    /// Works the shards of `run` (the token-refresher's job): takes each
    /// shard's lease, waiting for a run that still holds one; reads every
    /// taken shard at once for the connections that come due before the run
    /// must stop; and refreshes each at its due time, at most
    /// `run.concurrency` at a time and within each provider's cap. No
    /// refresh starts once less than one send and one commit fit before the
    /// deadline; what is left waits for the next run. A failed query of one
    /// shard is logged and counted, and the other shards are still served.
    pub async fn refresh_due(self: &Arc<Self>, run: DueRun) -> DueSummary {
        let start_by = start_by(run.deadline, &self.settings);
        let mut summary = DueSummary {
            complete: true,
            ..DueSummary::default()
        };
        let unknown_before = self.unknown_outcomes();
        let owner = crate::aws::worker_name();
        let lease_until = epoch_of(run.deadline) + millis(SHARD_LEASE_SLACK);
        let until = epoch_of(start_by);
        let leases = Arc::new(Leases::default());
        let (store, page_size) = (self.store.clone(), self.settings.due_page_size);
        let (held, me) = (Arc::clone(&leases), owner.clone());
        // Each shard's reader looks for anything due first: a shard with
        // nothing due costs that one query and no lease. Otherwise it takes
        // the shard's lease (waiting while another run holds it, so no run
        // waits for a shard before reading the ones it already has) and
        // reads the shard again under it: the run it waited for may have
        // refreshed some of what the first look found.
        let found = crate::shards::read_all(&run.shards, start_by, move |shard, after| {
            let (store, held, me) = (store.clone(), Arc::clone(&held), me.clone());
            async move {
                if after.is_none() {
                    let look = store
                        .due(&shard.to_string(), until, 1, None)
                        .await
                        .map_err(|e| error_chain(&e))?;
                    if look.ids.is_empty() || !held.take(&store, shard, &me, start_by, lease_until).await? {
                        return Ok((Vec::new(), None));
                    }
                }
                let page = store
                    .due(&shard.to_string(), until, page_size, after)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok::<_, String>((page.ids.into_iter().zip(page.due_at).collect(), page.next))
            }
        });
        Box::pin(self.run_wheel(found, &run, start_by, &mut summary)).await;
        let (taken, busy) = leases.outcome();
        (summary.shards, summary.shards_busy) = (taken.len() as u64, busy);
        // Given back at once, not one after another: a run that found
        // nothing costs three round trips, not two and one per shard.
        let mut releases = tokio::task::JoinSet::new();
        for shard in taken {
            let (store, owner) = (self.store.clone(), owner.clone());
            releases.spawn(async move {
                if let Err(e) = store.release_shard_lease(shard, &owner).await {
                    warn!(shard, error = %error_chain(&e), "a shard lease could not be given back; it ends by itself");
                }
            });
        }
        while releases.join_next().await.is_some() {}
        summary.outcome_unknown = self.unknown_outcomes().saturating_sub(unknown_before);
        summary.providers = self.provider_loads();
        summary
    }

    /// The timer wheel: due connections from `found` go into a heap by due
    /// time; each is started when its time comes (tokio's timer), while
    /// pages keep arriving and finished refreshes are counted.
    async fn run_wheel(
        self: &Arc<Self>,
        mut found: tokio::sync::mpsc::Receiver<ShardPage<(ConnectionId, i64)>>,
        run: &DueRun,
        start_by: Instant,
        summary: &mut DueSummary,
    ) {
        let permits = RunPlaces::new(run.concurrency.max(1));
        let mut tasks = tokio::task::JoinSet::new();
        let mut wheel: BinaryHeap<Timer> = BinaryHeap::new();
        let mut reading = true;
        loop {
            let next = wheel.peek().map(|Reverse((at, _))| instant_of(*at));
            tokio::select! {
                page = found.recv(), if reading => match page {
                    None => reading = false,
                    Some(page) => self.file(page, &mut wheel, summary),
                },
                () = tokio::time::sleep_until(next.unwrap_or(start_by).into()), if next.is_some() => {
                    let now = now_ms();
                    while let Some(Reverse((at, _))) = wheel.peek()
                        && *at <= now
                    {
                        let Some(Reverse((at, id))) = wheel.pop() else { break };
                        let (service, permits, deadline) = (Arc::clone(self), Arc::clone(&permits), run.deadline);
                        tasks.spawn(async move {
                            let place = RunPlace::take(permits).await?;
                            if Instant::now() >= start_by {
                                return None;
                            }
                            // Late by the timer and the wait for a place among the run's refreshes.
                            let late_ms = u64::try_from(now_ms() - at).unwrap_or(0);
                            Some((late_ms, service.access_token_in_run(&id, deadline, &place).await))
                        });
                    }
                }
                Some(result) = tasks.join_next(), if !tasks.is_empty() => summary.count(result),
                else => break,
            }
        }
    }

    /// A page of the index into the wheel (or a failed shard into the summary).
    fn file(&self, page: ShardPage<(ConnectionId, i64)>, wheel: &mut BinaryHeap<Timer>, summary: &mut DueSummary) {
        match page {
            ShardPage::Items(entries) => {
                // A connection refreshed in this run is due no sooner than
                // its refresh (`refresh_due_at`), after the query's bound:
                // later pages never bring it up again.
                summary.due += entries.len() as u64;
                wheel.extend(entries.into_iter().map(|(id, at)| Reverse((at, id))));
            }
            ShardPage::Failed { shard, error } => {
                error!(
                    shard,
                    error, "the refresh-due index could not be read; this shard waits for the next run"
                );
                summary.shards_failed += 1;
                summary.complete = false;
            }
            ShardPage::OutOfTime => summary.complete = false,
        }
    }

    /// Refresh sends whose outcome was unknown, since the process started.
    pub fn unknown_outcomes(&self) -> u64 {
        self.unknown_outcomes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The shard leases a run took, and how many shards another run kept.
#[derive(Debug, Default)]
struct Leases {
    taken: std::sync::Mutex<Vec<u32>>,
    busy: std::sync::atomic::AtomicU64,
}

impl Leases {
    /// Takes `shard` (see [`take_shard`]): `Ok(false)` when another run
    /// keeps it; an error when the lease cannot be written.
    async fn take(
        &self,
        store: &crate::connection::store::ConnectionStore,
        shard: u32,
        owner: &str,
        start_by: Instant,
        until: i64,
    ) -> Result<bool, String> {
        let taken = take_shard(store, shard, owner, start_by, until)
            .await
            .map_err(|e| format!("its lease could not be taken: {}", error_chain(&e)))?;
        if taken {
            self.taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(shard);
        } else {
            self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(taken)
    }

    fn outcome(&self) -> (Vec<u32>, u64) {
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        taken.sort_unstable();
        (taken, self.busy.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Takes `shard`'s lease until `until` (epoch ms), waiting while an earlier
/// run holds it (until that run gives it back or its lease ends): `Ok(false)`
/// when the holder keeps it past `start_by`.
async fn take_shard(
    store: &crate::connection::store::ConnectionStore,
    shard: u32,
    owner: &str,
    start_by: Instant,
    until: i64,
) -> Result<bool, crate::dynamo::StoreError> {
    let mut poll = SHARD_POLL_MIN;
    loop {
        match store.take_shard_lease(shard, owner, now_ms(), until).await? {
            ShardLease::Taken => return Ok(true),
            ShardLease::Held { owner: holder, until } => {
                // A run that keeps it past our own start is one of the same
                // schedule (a duplicate delivery): it works the shard. An
                // earlier run that ends before then is waited for.
                if instant_of(until) >= start_by {
                    warn!(shard, holder, until = %crate::when::utc(until), "another run holds this shard for as long as this one would; that run works it");
                    return Ok(false);
                }
                let ends_in = instant_of(until).saturating_duration_since(Instant::now());
                let wait = crate::backoff::jitter(poll).min(ends_in).max(Duration::from_millis(10));
                tokio::time::sleep(wait).await;
                poll = (poll * 2).min(SHARD_POLL_MAX);
            }
        }
    }
}
