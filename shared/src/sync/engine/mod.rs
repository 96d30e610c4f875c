//! One run of one job, and the scheduled run over every due job.
//!
//! A run, like a refresh, is a lease and a checkpoint:
//!
//! 1. Claim the job's run lease (conditional write). A scheduled run's lease
//!    lasts past its invocation's deadline, so a takeover can only follow a
//!    dead run; a run started by hand (the CLI) holds a short lease renewed
//!    in the background, and no record write starts without lease left.
//! 2. Per page ([`fetch`]): access token from the refresh protocol → one
//!    request drawn from the rate key's shared budget → fetch (retries
//!    bounded, with jittered backoff; after a 401 a newer token, or one
//!    refresh) → ([`store`]) read the stored hashes of the page's keys →
//!    write only new or changed records → save the checkpoint (conditional
//!    on the lease owner). Never the checkpoint before the writes.
//! 3. At the end of a pass ([`pass`]): a sweep (a pass read from scratch,
//!    every seen-id marker still there) marks what it did not see as
//!    deleted; then the cursor moves to the highest value seen and the delta
//!    link to the new one; the deleted-records feed follows.
//! 4. Near the deadline, or when the rate budget says wait longer than the
//!    run may, save the place and yield: the next invocation resumes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::budget::RateBudget;
use super::jobs::{Checkpoint, JobStore, LeaseClock, Next, Phase, RunCounts, RunRecord, job_id};
use super::records::RecordStore;
use crate::config::{Config, Provider, Sync};
use crate::connection::{ConnectionId, now_ms};
use crate::dynamo::StoreError;
use crate::refresh::TokenService;
use crate::reload::LiveConfig;
use crate::shards::ShardPage;
use crate::telemetry::error_chain;

mod fetch;
mod pass;
mod store;
mod sweep;

pub use pass::rate_key;

impl SyncSettings {
    /// How long before its lease ends a run starts no more writes: the
    /// commit margin, and at least as long as a DynamoDB call with its
    /// retries can last ([`crate::aws::OPERATION_TIMEOUT`]). A write still
    /// in flight when another run takes the job over could otherwise land
    /// behind a change number that run already made readable (docs/api.md).
    /// A renewed lease must be longer than twice this.
    pub fn write_fence(&self) -> Duration {
        self.commit_margin.max(crate::aws::OPERATION_TIMEOUT)
    }
}

/// Timing and bounds of the engine.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// One page request's timeout.
    pub page_timeout: Duration,
    /// Attempts at one page after a 5xx, a timeout or a broken body.
    pub page_attempts: u32,
    /// 429 answers one page may get before the run yields.
    pub max_throttled: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest in-run wait for a rate-limit window; a longer one yields.
    pub max_wait: Duration,
    /// How long the run lease outlives the invocation's deadline.
    pub lease_margin: Duration,
    /// Time kept before the deadline for the last writes and the checkpoint;
    /// also how much of its lease a run keeps unused: no write starts later.
    pub commit_margin: Duration,
    /// Runs started by [`SyncEngine::run_now`] (the CLI's `sync run`, which
    /// no Lambda timeout ends) hold a lease this long, renewed in the
    /// background at a third of it, instead of one lasting their whole
    /// deadline: a run paused longer (a laptop asleep, SIGSTOP) loses the
    /// job to the next run and writes nothing more. `None`: the lease lasts
    /// the deadline plus `lease_margin`, as for scheduled runs.
    pub renewed_lease: Option<Duration>,
    /// Jobs run at once by [`SyncEngine::run_due`].
    pub concurrency: usize,
    /// Records a sweep reads (and at most marks deleted) per step; its place
    /// is saved after each.
    pub sweep_page: i32,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            page_timeout: Duration::from_secs(30),
            page_attempts: 4,
            max_throttled: 10,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_wait: Duration::from_secs(70),
            lease_margin: Duration::from_secs(60),
            commit_margin: Duration::from_secs(5),
            renewed_lease: Some(Duration::from_secs(60)),
            concurrency: 4,
            sweep_page: 1_000,
        }
    }
}

/// Why a run could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("unknown sync `{0}`")]
    UnknownSync(String),
    #[error("job {0}: {1}")]
    Store(String, #[source] StoreError),
    /// Another run holds the job's lease: who, and until when (epoch ms).
    #[error("job {job} is running elsewhere: {}", busy_holder(holder.as_deref(), *until))]
    Busy {
        job: String,
        holder: Option<String>,
        until: Option<i64>,
    },
    #[error("job {0} does not exist; it is created at login (or by `oauth-sync sync run`)")]
    NoJob(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "end", content = "detail", rename_all = "snake_case")]
pub enum RunEnd {
    /// Every page read; the next run is scheduled.
    Finished,
    /// Saved its place to go on at `until` (epoch ms): the deadline, a rate limit.
    Yielded { until: i64, reason: String },
    /// Out of the schedule until a new login: the connection cannot be synced.
    Parked(String),
    /// A page kept failing; the checkpoint stays where it was.
    Failed(String),
    /// Another holder took the lease; nothing more was written.
    LostLease,
}

/// What one run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub job: String,
    pub end: RunEnd,
    /// The run's counts so far (a run resumed after a yield includes what
    /// the earlier invocations did).
    pub counts: RunCounts,
    /// This invocation's share of them (what the metrics count).
    pub invocation: RunCounts,
}

/// What [`SyncEngine::run_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DueRuns {
    pub due: u64,
    pub finished: u64,
    pub yielded: u64,
    pub parked: u64,
    pub failed: u64,
    /// Claimed by another invocation first.
    pub busy: u64,
    /// Found due, not started: too little of the invocation was left.
    pub left_for_next_run: u64,
    /// Index shards whose query failed (each logged).
    pub shards_failed: u64,
    /// What the runs of this invocation did, summed over its jobs.
    pub pages: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    /// Answers 429, and waits for a spent rate-limit window.
    pub throttled: u64,
    pub rate_limit_waits: u64,
    /// Time spent in runs, summed over jobs (ms).
    pub run_ms: u64,
    /// The most overdue job found: time since its last finish as a percentage
    /// of its interval (100 = on time; above 200 = lagging more than twice
    /// its interval).
    pub lag_percent: u64,
}

/// The sync engine: built once per process.
#[derive(Debug)]
pub struct SyncEngine {
    /// Shared with the token service in the functions ([`crate::reload`]).
    config: LiveConfig,
    tokens: Arc<TokenService>,
    jobs: JobStore,
    records: RecordStore,
    /// The shared rate budgets, in the sync-state table.
    budget: RateBudget,
    http: reqwest::Client,
    settings: SyncSettings,
    /// This process's name in the leases it takes ([`crate::aws::worker_name`]).
    worker: String,
    /// Where run events go (off unless [`SyncEngine::with_events`]).
    events: crate::events::EventSink,
    /// A request to stop early ([`SyncEngine::with_stop`]).
    stop: Option<tokio::sync::watch::Receiver<Option<String>>>,
}

/// Who holds a lease and until when, in words: `held by pid 4242 on build-7
/// #1a2b3c4d until 13:20:00 UTC, in 45 s` (as [`crate::when`] says times).
fn busy_holder(holder: Option<&str>, until: Option<i64>) -> String {
    let holder = holder.unwrap_or("another run");
    match until {
        Some(until) => {
            let now = now_ms();
            format!(
                "its lease is held by {holder} until {}, {}",
                crate::when::clock(until, now),
                crate::when::relative(until, now)
            )
        }
        None => format!("its lease is held by {holder}"),
    }
}

/// Something the run knows for its whole length.
struct Context<'a> {
    /// The job id, also the records' partition key (`{connection}#{sync}`).
    job: String,
    connection: &'a ConnectionId,
    sync: &'a Sync,
    provider: &'a Provider,
    params: BTreeMap<String, String>,
    deadline: Instant,
    /// The run lease; every record write checks it first.
    lease: LeaseClock,
    /// The provider's rate key: whose shared budget the requests draw on.
    rate_key: String,
    /// The job's next change number ([`Checkpoint::changes`]): every record
    /// write takes numbers from here, and it moves past them only once the
    /// writes have landed, so the checkpoint never names a number whose
    /// write could still be missing.
    changes: std::sync::atomic::AtomicU64,
}

impl Context<'_> {
    /// The first change number of the next write.
    fn next_change(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// After `count` writes from `first` landed.
    fn changes_landed(&self, first: u64, count: u64) {
        self.changes
            .store(first.saturating_add(count), std::sync::atomic::Ordering::Release);
    }
}

/// How long a job waits after its `failures`-th failed run in a row: the
/// sync's interval (at most 15 minutes) doubling with each failure, capped at
/// 6 hours, with jitter, so a job that fails until an admin acts does not
/// spend the provider's error budget at the pace of its schedule.
fn failure_backoff(interval: i64, failures: u32) -> i64 {
    let first = Duration::from_millis(u64::try_from(interval.clamp(1_000, 900_000)).unwrap_or(900_000));
    millis(crate::backoff::exponential(
        first,
        Duration::from_secs(6 * 3600),
        failures,
    ))
}

/// Time since a job's last finish as a percentage of its `interval` (ms),
/// for a job due at `due_at` (its last finish plus the interval).
fn lag_percent(interval: i64, due_at: i64, now: i64) -> u64 {
    let since_finish = now.saturating_sub(due_at).saturating_add(interval).max(0);
    u64::try_from(since_finish.saturating_mul(100) / interval.max(1)).unwrap_or(0)
}

impl DueRuns {
    /// The invocation as CloudWatch metrics (`OauthSync`, `Function=sync`);
    /// the template's alarms watch `SyncLagRatio` (above 2: a job lags more
    /// than twice its interval) and `SyncsFailed`.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        use crate::metrics::Unit;
        #[allow(clippy::cast_precision_loss)]
        let (seconds, lag) = (self.run_ms as f64 / 1000.0, self.lag_percent as f64 / 100.0);
        let metrics = crate::metrics::Metrics::new("sync")
            .count("DueSyncs", self.due)
            .count("RecordsInserted", self.inserted)
            .count("RecordsUpdated", self.updated)
            .count("RecordsDeleted", self.deleted)
            .count("RecordsUnchanged", self.unchanged)
            .count("Pages", self.pages)
            .count("RateLimited", self.throttled)
            .count("RateLimitWaits", self.rate_limit_waits)
            .count("SyncsParked", self.parked)
            .count("SyncsFailed", self.failed)
            .value("SyncRunSeconds", seconds, Unit::Seconds);
        if self.due > 0 {
            metrics.value("SyncLagRatio", lag, Unit::None)
        } else {
            metrics
        }
    }

    fn add(&mut self, counts: &RunCounts) {
        self.pages += counts.pages;
        self.inserted += counts.inserted;
        self.updated += counts.updated;
        self.unchanged += counts.unchanged;
        self.deleted += counts.deleted;
        self.throttled += counts.throttled;
        self.rate_limit_waits += counts.rate_limit_waits;
    }
}

impl SyncEngine {
    /// `config`: an `Arc<Config>` (never reloaded), or the [`LiveConfig`]
    /// the token service reloads (the `sync` function's).
    pub fn new(
        config: impl Into<LiveConfig>,
        tokens: Arc<TokenService>,
        jobs: JobStore,
        records: RecordStore,
        settings: SyncSettings,
    ) -> Result<SyncEngine, reqwest::Error> {
        let http = crate::http::client(settings.page_timeout, crate::http::Pooling::On)?;
        Ok(SyncEngine {
            config: config.into(),
            tokens,
            budget: jobs.budget(),
            jobs,
            records,
            http,
            settings,
            worker: crate::aws::worker_name(),
            events: crate::events::EventSink::off(),
            stop: None,
        })
    }

    /// The configuration in use now: a job's pass keeps the snapshot it started with.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// At the start of an invocation: picks up a pushed configuration and a
    /// rotated key ring ([`TokenService::reload_if_changed`]).
    pub async fn reload_if_changed(&self) {
        self.config.check().await;
        self.tokens.reload_if_changed().await;
    }

    /// Stops runs early when `stop` holds a reason (the CLI's Ctrl-C): a run
    /// abandons a page request or a wait in flight, lets a token refresh and
    /// the writes of a fetched page finish, saves its place and releases its
    /// lease, ending [`RunEnd::Yielded`] with the reason. The job is due at
    /// once, so the next run (by hand or on schedule) goes on from there.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<Option<String>>) -> SyncEngine {
        self.stop = Some(stop);
        self
    }

    /// Why the run must stop now, if it must.
    fn stop_requested(&self) -> Option<String> {
        self.stop.as_ref().and_then(|stop| stop.borrow().clone())
    }

    /// Waits for a stop request; never returns without one.
    async fn stopped(&self) -> String {
        if let Some(stop) = &self.stop {
            let mut stop = stop.clone();
            if let Ok(why) = stop.wait_for(Option::is_some).await {
                return why.clone().unwrap_or_default();
            }
        }
        std::future::pending().await
    }

    /// Publishes run events (finished, failed, parked) to `events`.
    pub fn with_events(mut self, events: crate::events::EventSink) -> SyncEngine {
        self.events = events;
        self
    }

    pub fn jobs(&self) -> &JobStore {
        &self.jobs
    }

    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// Runs every due job, `concurrency` at a time, until `deadline`.
    pub async fn run_due(self: &Arc<Self>, deadline: Instant) -> DueRuns {
        let shards: Vec<u32> = (0..crate::connection::DUE_SHARDS).collect();
        self.run_due_in(&shards, deadline).await
    }

    /// [`SyncEngine::run_due`] over `shards` of the sync-due index alone
    /// (those a function's first invocation found something due in:
    /// [`JobStore::shards_with_due`]).
    pub async fn run_due_in(self: &Arc<Self>, shards: &[u32], deadline: Instant) -> DueRuns {
        let mut summary = DueRuns::default();
        let permits = Arc::new(tokio::sync::Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let start_by = deadline
            .checked_sub(self.settings.page_timeout + self.settings.commit_margin)
            .unwrap_or_else(Instant::now);
        let (jobs, now) = (self.jobs.clone(), now_ms());
        let mut found = crate::shards::read_all(shards, start_by, move |shard, start| {
            let jobs = jobs.clone();
            async move {
                let page = jobs.due(shard, now, 100, start).await.map_err(|e| error_chain(&e))?;
                Ok::<_, String>((page.ids, page.next))
            }
        });
        while let Some(page) = found.recv().await {
            let ids = match page {
                ShardPage::Items(ids) => ids,
                ShardPage::Failed { shard, error } => {
                    warn!(shard, error, "the sync-due index could not be read");
                    summary.shards_failed += 1;
                    continue;
                }
                ShardPage::OutOfTime => continue,
            };
            for (id, due_at) in ids {
                summary.due += 1;
                summary.lag_percent = summary.lag_percent.max(self.lag_percent(&id, due_at, now_ms()));
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                if Instant::now() >= start_by {
                    summary.left_for_next_run += 1;
                    continue;
                }
                let engine = self.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let report = engine.run_id(&id, deadline, false).await;
                    (report, started.elapsed())
                });
            }
        }
        while let Some(result) = tasks.join_next().await {
            let result = result.map(|(report, took)| {
                summary.run_ms += u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                if let Ok(report) = &report {
                    summary.add(&report.invocation);
                }
                report
            });
            match result {
                Ok(Ok(report)) => match report.end {
                    RunEnd::Finished => summary.finished += 1,
                    RunEnd::Yielded { .. } => summary.yielded += 1,
                    RunEnd::Parked(_) => summary.parked += 1,
                    RunEnd::Failed(_) => summary.failed += 1,
                    RunEnd::LostLease => summary.busy += 1,
                },
                Ok(Err(SyncError::Busy { .. })) => summary.busy += 1,
                Ok(Err(e)) => {
                    warn!(error = %error_chain(&e), "sync run failed");
                    summary.failed += 1;
                }
                Err(e) => {
                    warn!(error = %e, "sync task failed");
                    summary.failed += 1;
                }
            }
        }
        summary
    }

    /// How overdue job `id`, due at `due_at`, is at `now`: the time since its
    /// last finish (`due_at` is that finish plus the interval) as a
    /// percentage of the sync's interval.
    fn lag_percent(&self, id: &str, due_at: i64, now: i64) -> u64 {
        let config = self.config();
        let sync = id.rsplit_once('#').and_then(|(_, sync)| config.syncs.get(sync));
        let interval = sync.map_or(3_600_000, |s| i64::try_from(s.interval_secs).unwrap_or(3600) * 1000);
        lag_percent(interval, due_at, now)
    }

    /// Runs one job now (the CLI), creating it when the connection has none;
    /// `on_page` sees the counts after every committed page.
    pub async fn run_now(
        &self,
        connection: &ConnectionId,
        sync: &str,
        deadline: Instant,
        on_page: &(dyn Fn(&RunCounts) + std::marker::Sync),
    ) -> Result<RunReport, SyncError> {
        if !self.config().syncs.contains_key(sync) {
            return Err(SyncError::UnknownSync(sync.to_owned()));
        }
        let id = job_id(connection, sync);
        self.jobs
            .schedule(connection, sync)
            .await
            .map_err(|e| SyncError::Store(id.clone(), e))?;
        self.run(&id, deadline, true, on_page).await
    }

    async fn run_id(&self, id: &str, deadline: Instant, force: bool) -> Result<RunReport, SyncError> {
        self.run(id, deadline, force, &|_| {}).await
    }

    /// Claims the job and runs it until it finishes, yields or fails.
    ///
    /// One function: claim, run, conclude, release, record, publish, in that
    /// order.
    async fn run(
        &self,
        id: &str,
        deadline: Instant,
        force: bool,
        on_page: &(dyn Fn(&RunCounts) + std::marker::Sync),
    ) -> Result<RunReport, SyncError> {
        let store_error = |e| SyncError::Store(id.to_owned(), e);
        let renewed = self.settings.renewed_lease.filter(|_| force);
        let until = now_ms()
            + millis(match renewed {
                Some(lease) => lease,
                None => deadline.saturating_duration_since(Instant::now()) + self.settings.lease_margin,
            });
        let Some(job) = self
            .jobs
            .claim(id, &self.worker, until, force)
            .await
            .map_err(store_error)?
        else {
            return match self.jobs.get(id).await.map_err(store_error)? {
                None => Err(SyncError::NoJob(id.to_owned())),
                Some(job) => Err(SyncError::Busy {
                    job: id.to_owned(),
                    holder: job.lease_owner,
                    until: job.lease_until,
                }),
            };
        };
        let lease = LeaseClock::new(until, millis(self.settings.write_fence()));
        let _renewal = renewed.map(|every| self.renew_in_background(id, every, &lease));
        let mut checkpoint = job.checkpoint.clone();
        let before = checkpoint.run.as_ref().map(|r| r.counts.clone()).unwrap_or_default();
        let (end, counts) = Box::pin(self.run_claimed(&job, &mut checkpoint, deadline, &lease, on_page)).await;
        let invocation = counts.since(&before);
        let now = now_ms();
        let config = self.config();
        let sync = config.syncs.get(&job.sync);
        let interval = sync.map_or(3_600_000, |s| i64::try_from(s.interval_secs).unwrap_or(3600) * 1000);
        let Some((next, last_run)) = conclude(&end, &mut checkpoint, &counts, interval, now) else {
            return Ok(RunReport {
                job: id.to_owned(),
                end,
                counts,
                invocation,
            });
        };
        let next_at = match &next {
            Next::At(at) => Some(*at),
            Next::Parked(_) => None,
        };
        let released = self
            .jobs
            .release(
                id,
                &self.worker,
                &checkpoint,
                next,
                last_run.as_ref(),
                job.schedule_nonce.as_deref(),
            )
            .await
            .map_err(store_error)?;
        if !released {
            return Ok(RunReport {
                job: id.to_owned(),
                end: RunEnd::LostLease,
                counts,
                invocation,
            });
        }
        if let Some(run) = &last_run
            && let Err(e) = self.jobs.record_run(id, run).await
        {
            warn!(job = id, error = %error_chain(&e), "the run history item could not be written");
        }
        if let Some(event) = run_event(&job, &end, next_at, last_run.as_ref()) {
            self.events.publish(event).await;
        }
        info!(job = id, end = ?end, pages = counts.pages, fetched = counts.fetched, inserted = counts.inserted,
              updated = counts.updated, unchanged = counts.unchanged, deleted = counts.deleted,
              rejected = counts.rejected, requests = counts.requests, throttled = counts.throttled,
              rate_limit_waits = counts.rate_limit_waits, "sync run ended");
        Ok(RunReport {
            job: id.to_owned(),
            end,
            counts,
            invocation,
        })
    }
}

/// What a run's end means for its job: when it runs next, what its
/// checkpoint keeps, and the history item it leaves (a yield leaves none).
/// `interval` is the sync's, in ms; `now` when the run ended. `None` for a
/// run that lost its lease.
fn conclude(
    end: &RunEnd,
    checkpoint: &mut Checkpoint,
    counts: &RunCounts,
    interval: i64,
    now: i64,
) -> Option<(Next, Option<RunRecord>)> {
    let run = checkpoint.run.clone();
    let record = |status: &str, error: Option<String>| RunRecord {
        run_id: run.as_ref().map(|r| r.run_id.clone()).unwrap_or_default(),
        status: status.to_owned(),
        started_at: run.as_ref().map_or(now, |r| r.started_at),
        finished_at: now,
        counts: counts.clone(),
        error,
    };
    let concluded = match end {
        RunEnd::Finished => {
            checkpoint.run = None;
            checkpoint.failures = 0;
            (Next::At(now + interval), Some(record("finished", None)))
        }
        RunEnd::Yielded { until, .. } => (Next::At((*until).max(now)), None),
        RunEnd::Parked(why) => (Next::Parked(why.clone()), Some(record("parked", Some(why.clone())))),
        RunEnd::Failed(why) => {
            checkpoint.failures = checkpoint.failures.saturating_add(1);
            match checkpoint.run.as_mut() {
                // The data are stored and their cursor moved: a feed of
                // deletions that keeps failing must not keep the next
                // runs from the data, so the next run starts afresh and
                // reads the feed again from its own cursor.
                Some(run) if run.phase == Phase::Deleted => checkpoint.run = None,
                // Keep the place; the next run resumes from it with fresh counts.
                Some(run) => run.counts = RunCounts::default(),
                None => {}
            }
            let wait = failure_backoff(interval, checkpoint.failures);
            (Next::At(now + wait), Some(record("failed", Some(why.clone()))))
        }
        // The job is another run's now: nothing of it is ours to write.
        RunEnd::LostLease => return None,
    };
    Some(concluded)
}

/// The event of a run's end: finished, failed or parked (a yield is no end).
fn run_event(
    job: &super::jobs::Job,
    end: &RunEnd,
    next_at: Option<i64>,
    run: Option<&RunRecord>,
) -> Option<crate::events::Event> {
    use crate::events::{Event, JobParked, RunEnded, rfc3339};
    let ended = |run: &RunRecord, error: Option<String>| {
        let next_run_at = next_at.map(rfc3339).unwrap_or_default();
        RunEnded {
            connection: job.connection.to_string(),
            sync: job.sync.clone(),
            job: job.id.clone(),
            run_id: run.run_id.clone(),
            started_at: rfc3339(run.started_at),
            finished_at: rfc3339(run.finished_at),
            counts: (&run.counts).into(),
            error,
            next_run_at,
        }
    };
    match (end, run) {
        (RunEnd::Finished, Some(run)) => Some(Event::RunFinished(ended(run, None))),
        (RunEnd::Failed(why), Some(run)) => Some(Event::RunFailed(ended(run, Some(why.clone())))),
        (RunEnd::Parked(why), _) => Some(Event::JobParked(JobParked {
            connection: job.connection.to_string(),
            sync: job.sync.clone(),
            job: job.id.clone(),
            reason: why.clone(),
        })),
        _ => None,
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_job_waits_exponentially_longer_up_to_a_cap() {
        let hour = 3_600_000;
        for failures in 1..=12u32 {
            let wait = failure_backoff(hour, failures);
            let full = (900_000i64 << (failures - 1)).min(6 * hour);
            assert!(wait >= full / 2 && wait <= full, "{failures}: {wait} vs {full}");
        }
        // A short interval starts short.
        assert!(failure_backoff(60_000, 1) <= 60_000);
    }

    #[test]
    fn lag_is_the_time_since_the_last_finish_over_the_interval() {
        let hour = 3_600_000;
        // Due now: finished one interval ago, on time.
        assert_eq!(lag_percent(hour, 1_000, 1_000), 100);
        // Due since two more hours: three intervals since the last finish.
        assert_eq!(lag_percent(hour, 0, 2 * hour), 300);
        // Found before it was due (a clock ahead): never negative.
        assert_eq!(lag_percent(hour, 10 * hour, 0), 0);
    }

    #[test]
    fn an_invocation_becomes_the_metrics_the_alarms_watch() {
        let runs = DueRuns {
            due: 2,
            failed: 1,
            inserted: 7,
            run_ms: 1_500,
            lag_percent: 250,
            ..DueRuns::default()
        };
        let doc = runs.metrics().document(0);
        assert_eq!(doc["Function"], "sync");
        assert_eq!(doc["RecordsInserted"], 7.0);
        assert_eq!(doc["SyncsFailed"], 1.0);
        assert_eq!(doc["SyncRunSeconds"], 1.5);
        assert_eq!(doc["SyncLagRatio"], 2.5, "above the alarm's 2");
        let idle = DueRuns::default().metrics().document(0);
        assert!(idle.get("SyncLagRatio").is_none(), "no jobs, no lag to report");
    }
}
