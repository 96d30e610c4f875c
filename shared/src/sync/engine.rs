//! One run of one job, and the scheduled run over every due job.
//!
//! A run, like a refresh, is a lease and a checkpoint:
//!
//! 1. Claim the job's run lease (conditional write; the lease lasts past the
//!    invocation's deadline, so a takeover can only follow a dead run).
//! 2. Per page: gate on the rate budget → access token from the refresh
//!    protocol → fetch (retries bounded, with jittered backoff; one
//!    `refresh_now` after a 401) → read the stored hashes of the page's keys
//!    → write only new or changed records → save the checkpoint (conditional
//!    on the lease owner). Never the checkpoint before the writes.
//! 3. At the end of a pass: the cursor moves to the highest value seen (an
//!    incremental pass resumes from its next-page link, never from a cursor
//!    value that records still to come may share); a complete sweep marks
//!    what it did not see as deleted; the deleted-records feed follows.
//! 4. Near the deadline, or when the rate budget says wait longer than the
//!    run may, save the place and yield: the next invocation resumes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{info, warn};
use url::Url;

use super::budget::RateBudget;
use super::jobs::{
    Checkpoint, Job, JobStore, LeaseClock, Next, Phase, RunCounts, RunRecord, RunState, SWEEP_MAX_AGE_MS, job_id,
};
use super::pages::{Page, first_page, parse_page, set_param};
use super::rate::{Answer, Draw, Ticket};
use super::records::{Change, Incoming, MAX_ITEM_BYTES, RecordStore, content_hash};
use super::{compare_cursors, scalar_text, value_at};
use crate::config::{Config, Provider, Sync, SyncMode, fill_template};
use crate::connection::store::StoreError;
use crate::connection::{ConnectionId, Status, now_ms};
use crate::oauth::excerpt;
use crate::refresh::{RefreshError, TokenService, jitter};
use crate::shards::ShardPage;
use crate::telemetry::error_chain;

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
    #[error("job {0} is running elsewhere (its lease is held)")]
    Busy(String),
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

/// Aborts a background task when dropped (the lease renewal ends with its run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a complete data pass ended.
enum PassEnd {
    /// Cursors moved (and the sweep done): on to the feed, or finished.
    Done,
    /// The sweep found markers missing: the pass starts again from scratch.
    Again,
}

/// Starts a data pass: a fresh marker name, its start time, no pages yet.
fn begin_pass(run: &mut RunState) {
    run.pass_id = format!("{:x}-{:08x}", now_ms(), fastrand::u32(..));
    run.pass_started_at = now_ms();
    run.pass_pages = 0;
    run.pass_max = None;
}

/// Why fetching a page stopped the run.
enum Stop {
    Yield {
        until: i64,
        why: String,
    },
    Park(String),
    Fail(String),
    /// A 400, 404 or 410 on a link the provider gave (an expired next-page or
    /// delta link): the pass starts again, from the cursor, as a sweep.
    Gone(String),
}

/// The sync engine: built once per process.
#[derive(Debug)]
pub struct SyncEngine {
    config: Arc<Config>,
    tokens: Arc<TokenService>,
    jobs: JobStore,
    records: RecordStore,
    /// The shared rate budgets, in the sync-state table.
    budget: RateBudget,
    http: reqwest::Client,
    settings: SyncSettings,
    worker: String,
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
}

/// The HTTP client for data pages: like the token client (no redirects, a
/// timeout on every call) but keeping connections alive between pages of a
/// run. A socket the provider closed while Lambda was frozen only fails a
/// GET, which the engine retries; a refresh is never sent on this client.
fn page_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("oauth-sync/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// How long a job waits after its `failures`-th failed run in a row: the
/// sync's interval (at most 15 minutes) doubling with each failure, capped at
/// 6 hours, with jitter, so a job that fails until an admin acts does not
/// spend the provider's error budget at the pace of its schedule.
fn failure_backoff(interval: i64, failures: u32) -> i64 {
    const CAP_MS: i64 = 6 * 3_600_000;
    let first = interval.clamp(1_000, 900_000);
    let wait = first
        .saturating_mul(1i64 << failures.saturating_sub(1).min(20))
        .min(CAP_MS);
    millis(jitter(Duration::from_millis(u64::try_from(wait).unwrap_or(0))))
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
    pub fn new(
        config: Arc<Config>,
        tokens: Arc<TokenService>,
        jobs: JobStore,
        records: RecordStore,
        settings: SyncSettings,
    ) -> Result<SyncEngine, reqwest::Error> {
        let http = page_client(settings.page_timeout)?;
        Ok(SyncEngine {
            config,
            tokens,
            budget: jobs.budget(),
            jobs,
            records,
            http,
            settings,
            worker: format!("sync-{:08x}", fastrand::u32(..)),
        })
    }

    pub fn jobs(&self) -> &JobStore {
        &self.jobs
    }

    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// Runs every due job, `concurrency` at a time, until `deadline`.
    pub async fn run_due(self: &Arc<Self>, deadline: Instant) -> DueRuns {
        let mut summary = DueRuns::default();
        let permits = Arc::new(tokio::sync::Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let start_by = deadline
            .checked_sub(self.settings.page_timeout + self.settings.commit_margin)
            .unwrap_or_else(Instant::now);
        let (jobs, now) = (self.jobs.clone(), now_ms());
        let mut found = crate::shards::read_all(start_by, move |shard, start| {
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
                Ok(Err(SyncError::Busy(_))) => summary.busy += 1,
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
        let sync = id.rsplit_once('#').and_then(|(_, sync)| self.config.syncs.get(sync));
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
        if !self.config.syncs.contains_key(sync) {
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
                Some(_) => Err(SyncError::Busy(id.to_owned())),
            };
        };
        let lease = LeaseClock::new(until, millis(self.settings.commit_margin));
        let _renewal = renewed.map(|every| self.renew_in_background(id, every, &lease));
        let mut checkpoint = job.checkpoint.clone();
        let before = checkpoint.run.as_ref().map(|r| r.counts.clone()).unwrap_or_default();
        let (end, counts) = self.run_claimed(&job, &mut checkpoint, deadline, &lease, on_page).await;
        let invocation = counts.since(&before);
        let now = now_ms();
        let sync = self.config.syncs.get(&job.sync);
        let interval = sync.map_or(3_600_000, |s| i64::try_from(s.interval_secs).unwrap_or(3600) * 1000);
        let run = checkpoint.run.clone();
        let record = |status: &str, error: Option<String>| RunRecord {
            run_id: run.as_ref().map(|r| r.run_id.clone()).unwrap_or_default(),
            status: status.to_owned(),
            started_at: run.as_ref().map_or(now, |r| r.started_at),
            finished_at: now,
            counts: counts.clone(),
            error,
        };
        let (next, last_run) = match &end {
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
            RunEnd::LostLease => {
                return Ok(RunReport {
                    job: id.to_owned(),
                    end,
                    counts,
                    invocation,
                });
            }
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

    /// The run itself, with the lease held. Returns how it ended and the
    /// counts of this invocation's part of it.
    async fn run_claimed(
        &self,
        job: &Job,
        checkpoint: &mut Checkpoint,
        deadline: Instant,
        lease: &LeaseClock,
        on_page: &(dyn Fn(&RunCounts) + std::marker::Sync),
    ) -> (RunEnd, RunCounts) {
        let Some(sync) = self.config.syncs.get(&job.sync) else {
            return (
                RunEnd::Parked(format!("sync `{}` is no longer configured", job.sync)),
                RunCounts::default(),
            );
        };
        let provider = match self.config.provider(&sync.provider) {
            Ok(provider) => provider,
            Err(e) => return (RunEnd::Parked(e.to_string()), RunCounts::default()),
        };
        let connection = match self.tokens.store().get(&job.connection).await {
            Ok(Some(connection)) => connection,
            Ok(None) => {
                return (
                    RunEnd::Parked(format!("connection {} does not exist", job.connection)),
                    RunCounts::default(),
                );
            }
            Err(e) => return (RunEnd::Failed(error_chain(&e)), RunCounts::default()),
        };
        if connection.status != Status::Active {
            let reason = connection.status_reason.map(|r| format!(" ({r})")).unwrap_or_default();
            return (
                RunEnd::Parked(format!(
                    "connection {} is {}{reason}; a new login resumes the sync",
                    job.connection,
                    connection.status.as_str()
                )),
                RunCounts::default(),
            );
        }
        if connection.provider != sync.provider {
            return (
                RunEnd::Parked(format!(
                    "connection {} belongs to provider `{}`, not `{}`",
                    job.connection, connection.provider, sync.provider
                )),
                RunCounts::default(),
            );
        }
        let mut params = provider.settings.params.clone();
        params.extend(connection.url_params());
        if let Some(missing) = unfilled(&provider.settings.api_base_url, sync, &params) {
            let why = connection
                .param_error
                .clone()
                .unwrap_or_else(|| "not learned at login".to_owned());
            return (
                RunEnd::Parked(format!(
                    "connection parameter `{missing}` is missing ({why}); a new login learns it"
                )),
                RunCounts::default(),
            );
        }
        let context = Context {
            job: job.id.clone(),
            connection: &job.connection,
            sync,
            provider,
            rate_key: rate_key(provider, &params, &job.connection),
            params,
            deadline,
            lease: lease.clone(),
        };
        let now = now_ms();
        let mut run = checkpoint.run.take().unwrap_or_else(|| RunState {
            run_id: format!("{now:x}-{:04x}", fastrand::u16(..)),
            started_at: now,
            pass_started_at: now,
            sweep: match sync.mode {
                SyncMode::Full => true,
                SyncMode::Delta => false,
                SyncMode::Incremental => sync.sweep_interval_secs.is_some_and(|interval| {
                    checkpoint
                        .last_sweep_at
                        .is_none_or(|at| now - at >= i64::try_from(interval).unwrap_or(i64::MAX) * 1000)
                }),
            },
            ..RunState::default()
        });
        let end = self.pages(&context, checkpoint, &mut run, on_page).await;
        let counts = run.counts.clone();
        checkpoint.run = Some(run);
        (end, counts)
    }

    /// Reads pages until the run ends.
    async fn pages(
        &self,
        cx: &Context<'_>,
        checkpoint: &mut Checkpoint,
        run: &mut RunState,
        on_page: &(dyn Fn(&RunCounts) + std::marker::Sync),
    ) -> RunEnd {
        loop {
            let left = cx.deadline.saturating_duration_since(Instant::now());
            if left < self.settings.page_timeout + self.settings.commit_margin {
                return RunEnd::Yielded {
                    until: now_ms(),
                    reason: "the invocation's deadline is near".to_owned(),
                };
            }
            if run.phase == Phase::Data
                && run.sweep
                && run.next_url.is_some()
                && now_ms() - run.pass_started_at > SWEEP_MAX_AGE_MS
            {
                // Its first markers may be gone: a pass this old starts again.
                warn!(
                    job = cx.job,
                    "a sweep older than its seen-id markers' life starts again from scratch"
                );
                run.next_url = None;
            }
            if run.phase == Phase::Data && run.next_url.is_none() {
                begin_pass(run);
            }
            let url = match &run.next_url {
                Some(next) => match Url::parse(next) {
                    Ok(url) => url,
                    Err(e) => return RunEnd::Failed(format!("the stored next-page link is not a URL: {e}")),
                },
                None => match self.first_url(cx, checkpoint, run) {
                    Ok(url) => url,
                    Err(e) => return RunEnd::Parked(e),
                },
            };
            let page = match self.fetch(cx, &url, checkpoint, &mut run.counts).await {
                Ok(page) => page,
                Err(Stop::Yield { until, why }) => return RunEnd::Yielded { until, reason: why },
                Err(Stop::Park(why)) => return RunEnd::Parked(why),
                Err(Stop::Fail(why)) => return RunEnd::Failed(why),
                Err(Stop::Gone(why)) => return self.gone(cx, checkpoint, run, why),
            };
            let (changes, seen) = self.changes(cx, run, &page.records);
            run.counts.fetched += page.records.len() as u64;
            if !self.lease_holds(cx).await {
                return RunEnd::LostLease;
            }
            match self.store_page(cx, changes).await {
                Ok(applied) => {
                    run.counts.inserted += applied.inserted;
                    run.counts.updated += applied.updated;
                    run.counts.unchanged += applied.unchanged;
                    run.counts.deleted += applied.deleted;
                }
                Err(StoreError::LeaseLost) => return RunEnd::LostLease,
                Err(e) => return RunEnd::Failed(format!("storing the page failed: {}", error_chain(&e))),
            }
            if run.sweep && run.phase == Phase::Data {
                if let Err(e) = self.jobs.save_seen(&cx.job, &run.pass_id, run.pass_pages, &seen).await {
                    return RunEnd::Failed(format!("saving the sweep's seen ids failed: {}", error_chain(&e)));
                }
            }
            run.pass_pages += 1;
            run.counts.pages += 1;
            // The pass's highest cursor: the data's, or the deleted feed's.
            let cursor_field = match run.phase {
                Phase::Data => cx.sync.cursor_field.as_deref(),
                Phase::Deleted => cx.sync.deleted.as_ref().map(|(feed, _)| feed.cursor_field.as_str()),
            };
            if let Some(field) = cursor_field {
                for value in page
                    .records
                    .iter()
                    .filter_map(|r| value_at(r, field).and_then(scalar_text))
                {
                    if run
                        .pass_max
                        .as_deref()
                        .is_none_or(|max| compare_cursors(&value, max).is_gt())
                    {
                        run.pass_max = Some(value);
                    }
                }
            }
            run.next_url = page.next.as_ref().map(Url::to_string);
            let mut finished = false;
            if page.next.is_none() {
                match run.phase {
                    Phase::Data => match self.end_data_pass(cx, checkpoint, run, page.delta_link.as_ref()).await {
                        Ok(PassEnd::Done) if cx.sync.deleted.is_some() => {
                            run.phase = Phase::Deleted;
                            run.pass_pages = 0;
                        }
                        Ok(PassEnd::Done) => finished = true,
                        Ok(PassEnd::Again) => {}
                        Err(end) => return end,
                    },
                    Phase::Deleted => {
                        if let Some(max) = run.pass_max.take() {
                            checkpoint.deleted_cursor = Some(max);
                        }
                        finished = true;
                    }
                }
            }
            // The page's writes are durable: now the checkpoint.
            let mut saved = checkpoint.clone();
            saved.run = Some(run.clone());
            match self.jobs.checkpoint(&cx.job, &self.worker, &saved).await {
                Ok(true) => {}
                Ok(false) => return RunEnd::LostLease,
                Err(e) => return RunEnd::Failed(format!("saving the checkpoint failed: {}", error_chain(&e))),
            }
            on_page(&run.counts);
            if finished {
                return RunEnd::Finished;
            }
        }
    }

    /// A 400, 404 or 410 on a link the provider gave (an expired next-page or
    /// delta link). The pass starts again as a sweep, from scratch: neither
    /// the stored delta link nor the cursor (both only know recent changes),
    /// so that deletions missed with the lost link are still found, and
    /// nothing is marked deleted on the word of a pass that did not read
    /// everything.
    fn gone(&self, cx: &Context<'_>, checkpoint: &mut Checkpoint, run: &mut RunState, why: String) -> RunEnd {
        let had_next = run.next_url.take().is_some();
        let had_delta =
            cx.sync.mode == SyncMode::Delta && run.phase == Phase::Data && checkpoint.delta_link.take().is_some();
        if !had_next && !had_delta {
            return RunEnd::Failed(why);
        }
        if run.phase == Phase::Data {
            run.sweep = cx.sync.mode != SyncMode::Incremental || cx.sync.sweep_interval_secs.is_some();
        }
        RunEnd::Failed(format!("{why}; the next run starts the pass again"))
    }

    /// The end of a complete data pass: a sweep marks what the pass did not
    /// see as deleted, if every page's seen-id marker is still there (else
    /// the pass starts again); only then do the cursor and the delta link
    /// move, so a pass that fails at its end is read again from scratch,
    /// never resumed from a link that knows only recent changes.
    async fn end_data_pass(
        &self,
        cx: &Context<'_>,
        checkpoint: &mut Checkpoint,
        run: &mut RunState,
        delta_link: Option<&Url>,
    ) -> Result<PassEnd, RunEnd> {
        if run.sweep {
            let (seen, markers) = self
                .jobs
                .seen(&cx.job, &run.pass_id)
                .await
                .map_err(|e| RunEnd::Failed(format!("reading the sweep's seen ids failed: {}", error_chain(&e))))?;
            if markers != run.pass_pages {
                warn!(
                    job = cx.job,
                    markers,
                    pages = run.pass_pages,
                    "seen-id markers of the sweep are missing; it starts again, deleting nothing"
                );
                self.forget_markers(cx, run).await;
                run.next_url = None;
                return Ok(PassEnd::Again);
            }
            if !self.lease_holds(cx).await {
                return Err(RunEnd::LostLease);
            }
            let deleted = match self.records.sweep(&cx.job, &seen, now_ms(), &cx.lease).await {
                Ok(deleted) => deleted,
                Err(StoreError::LeaseLost) => return Err(RunEnd::LostLease),
                Err(e) => return Err(RunEnd::Failed(format!("the sweep failed: {}", error_chain(&e)))),
            };
            run.counts.deleted += deleted;
            self.forget_markers(cx, run).await;
            checkpoint.last_sweep_at = Some(run.pass_started_at);
        }
        if let Some(link) = delta_link {
            checkpoint.delta_link = Some(link.to_string());
        }
        if let Some(max) = run.pass_max.take()
            && checkpoint
                .cursor
                .as_deref()
                .is_none_or(|c| compare_cursors(&max, c).is_gt())
        {
            checkpoint.cursor = Some(max);
        }
        Ok(PassEnd::Done)
    }

    /// Does the run still hold its lease with time to write? When its clock
    /// says no (the process was paused, say), one renewal decides: it holds
    /// only while nobody took the job over.
    async fn lease_holds(&self, cx: &Context<'_>) -> bool {
        if cx.lease.holds() {
            return true;
        }
        let Some(lease) = self.settings.renewed_lease else {
            return false;
        };
        let until = now_ms() + millis(lease);
        match self.jobs.renew(&cx.job, &self.worker, until).await {
            Ok(true) => {
                cx.lease.set(until);
                true
            }
            Ok(false) => {
                warn!(job = cx.job, "the run's lease was taken over; it writes nothing more");
                cx.lease.set(0);
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
    fn renew_in_background(&self, id: &str, lease: Duration, clock: &LeaseClock) -> AbortOnDrop {
        let (jobs, id, owner, clock) = (self.jobs.clone(), id.to_owned(), self.worker.clone(), clock.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let until = now_ms() + millis(lease);
                match jobs.renew(&id, &owner, until).await {
                    Ok(true) => clock.set(until),
                    Ok(false) => {
                        clock.set(0);
                        return;
                    }
                    // The clock runs out on its own if this keeps failing.
                    Err(e) => warn!(job = id, error = %error_chain(&e), "renewing the run's lease failed"),
                }
            }
        }))
    }

    /// Deletes the current pass's seen-id markers, best effort: they expire
    /// on their own, and a new pass never reads them.
    async fn forget_markers(&self, cx: &Context<'_>, run: &RunState) {
        if let Err(e) = self.jobs.forget_seen(&cx.job, &run.pass_id, run.pass_pages).await {
            warn!(job = cx.job, error = %error_chain(&e), "the sweep's seen-id markers could not be deleted");
        }
    }

    /// Stores a page: plans it from the stored hashes, then writes the plan,
    /// each step tried again (bounded, with backoff) while DynamoDB answers
    /// with a transient error. The counts are the plan's, so a write that
    /// needed a second try does not count its records as unchanged.
    async fn store_page(&self, cx: &Context<'_>, changes: Vec<Change>) -> Result<super::records::Applied, StoreError> {
        let now = now_ms();
        let plan = self
            .store_retry(cx, || self.records.plan(&cx.job, changes.clone(), now))
            .await?;
        self.store_retry(cx, || self.records.write(&plan, &cx.lease)).await?;
        Ok(plan.counts)
    }

    async fn store_retry<T, F, Fut>(&self, cx: &Context<'_>, step: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match step().await {
                Err(e) if e.is_transient() && attempt < self.settings.page_attempts => {
                    let wait = self.backoff(attempt);
                    if Instant::now() + wait + self.settings.commit_margin > cx.deadline {
                        return Err(e);
                    }
                    warn!(job = cx.job, attempt, error = %error_chain(&e), "storing the page failed; trying again");
                    tokio::time::sleep(wait).await;
                }
                result => return result,
            }
        }
    }

    /// The first page of the current pass.
    fn first_url(&self, cx: &Context<'_>, checkpoint: &Checkpoint, run: &RunState) -> Result<Url, String> {
        let sync = cx.sync;
        if run.phase == Phase::Data
            && sync.mode == SyncMode::Delta
            && !run.sweep
            && let Some(link) = &checkpoint.delta_link
        {
            return Url::parse(link).map_err(|e| format!("the stored delta link is not a URL: {e}"));
        }
        let (endpoint, mut query, cursor_field, cursor) = match run.phase {
            Phase::Data => (
                sync.endpoint.as_str(),
                sync.query.clone(),
                sync.cursor_field.as_deref(),
                if run.sweep { None } else { checkpoint.cursor.clone() },
            ),
            Phase::Deleted => {
                let Some((feed, _)) = &sync.deleted else {
                    return Err("no deleted-records feed".to_owned());
                };
                (
                    feed.endpoint.as_str(),
                    feed.query.clone(),
                    Some(feed.cursor_field.as_str()),
                    checkpoint.deleted_cursor.clone(),
                )
            }
        };
        let filter_on_cursor = sync.mode == SyncMode::Incremental;
        if filter_on_cursor
            && let (Some(incremental), Some(field)) = (&sync.incremental, cursor_field)
            && let Some(cursor) = cursor.or_else(|| incremental.initial.clone())
        {
            let filter = incremental
                .filter
                .replace("{field}", field)
                .replace("{cursor}", &cursor);
            let value = match query.remove(&incremental.param) {
                Some(own) => and(&own, &filter),
                None => filter,
            };
            query.insert(incremental.param.clone(), value);
        }
        if run.phase == Phase::Deleted
            && let Some((feed, entity_type)) = &sync.deleted
        {
            let param = sync.incremental.as_ref().map_or("$filter", |i| i.param.as_str());
            let extra = format!("{} eq {entity_type}", feed.type_field);
            let value = match query.remove(param) {
                Some(filter) => and(&filter, &extra),
                None => extra,
            };
            query.insert(param.to_owned(), value);
        }
        let endpoint = fill_template(endpoint, &cx.params, &[]).map_err(|e| e.to_string())?;
        let full = if endpoint.starts_with('/') {
            let base = cx.provider.settings.api_base_url.as_deref().unwrap_or_default();
            let base = fill_template(base, &cx.params, &[]).map_err(|e| e.to_string())?;
            format!("{}{endpoint}", base.trim_end_matches('/'))
        } else {
            endpoint
        };
        let mut url = Url::parse(&full).map_err(|e| format!("the endpoint `{full}` is not a URL: {e}"))?;
        for (key, value) in &query {
            let value = fill_template(value, &cx.params, &[]).map_err(|e| e.to_string())?;
            set_param(&mut url, key, &value);
        }
        Ok(first_page(&sync.pagination, url))
    }

    /// The page's records as changes, and the ids the page shows to exist
    /// (for a sweep); what cannot be stored is counted and named. A record
    /// rejected for its size still exists: it counts as seen, so a sweep does
    /// not mark its stored copy deleted.
    fn changes(&self, cx: &Context<'_>, run: &mut RunState, records: &[Value]) -> (Vec<Change>, Vec<String>) {
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

    /// One page: rate gate, token, request, with bounded retries.
    async fn fetch(
        &self,
        cx: &Context<'_>,
        url: &Url,
        checkpoint: &mut Checkpoint,
        counts: &mut RunCounts,
    ) -> Result<Page, Stop> {
        let settings = &cx.provider.settings;
        let mut attempt = 0u32;
        let mut throttled = 0u32;
        let mut refreshed = false;
        loop {
            let (token, version) = match self.tokens.access_token(cx.connection, cx.deadline).await {
                Ok(fresh) => (fresh.access_token, fresh.token_version),
                Err(e) => return Err(token_stop(e)),
            };
            // The token first, then the draw: a refresh holds no reservation.
            let ticket = self.draw(cx, counts).await?;
            let mut request = self
                .http
                .get(url.clone())
                .bearer_auth(token.secret())
                .header(reqwest::header::ACCEPT, "application/json");
            for (name, value) in &cx.sync.headers {
                let value = fill_template(value, &cx.params, &[]).map_err(|e| Stop::Park(e.to_string()))?;
                request = request.header(name.as_str(), value);
            }
            counts.requests += 1;
            let sent = request.send().await;
            let now = now_ms();
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    // It may have counted at the provider: the reservation stays spent.
                    self.observe(cx, ticket, &Answer::lost()).await;
                    attempt += 1;
                    let why = format!("the request failed: {}", error_chain(&e));
                    self.retry(cx, attempt, None, counts, why).await?;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let mut answer = Answer::read(&settings.rate_limits, header, status, now);
            if status == 429 && answer.retry_after_secs.is_none() && answer.windows.iter().all(|w| w.remaining > 0) {
                // A 429 that says nothing of how long: back off exponentially.
                answer.retry_after_secs = Some(self.backoff(throttled + 1).as_secs().max(1));
            }
            self.observe(cx, ticket, &answer).await;
            // What this job last saw, for `sync status`; the gate is the shared budget.
            checkpoint.rate.observe(&settings.rate_limits, header, now);
            let retry_after = answer.retry_after_secs;
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    attempt += 1;
                    let why = format!("reading the page failed: {}", error_chain(&e));
                    self.retry(cx, attempt, None, counts, why).await?;
                    continue;
                }
            };
            match status {
                200..=299 => {
                    let link = headers.get(reqwest::header::LINK).and_then(|v| v.to_str().ok());
                    match parse_page(&cx.sync.pagination, &cx.sync.records, url, link, &body) {
                        Ok(page) => return Ok(page),
                        Err(e) if e.is_transient() => {
                            attempt += 1;
                            self.retry(cx, attempt, None, counts, e.to_string()).await?;
                        }
                        Err(e) => return Err(Stop::Fail(format!("{}: {e}", url.path()))),
                    }
                }
                401 if !refreshed => {
                    // The token expired early or was revoked: this page again
                    // with a newer token, once, never a loop. When another
                    // worker already rotated the token, its version is newer
                    // and no refresh is spent (Exact refuses a second one
                    // within 9.5 minutes); else one refresh through the protocol.
                    refreshed = true;
                    match self.tokens.replace_refused(cx.connection, version, cx.deadline).await {
                        Ok(fresh) if fresh.refreshed => counts.token_refreshes += 1,
                        Ok(_) => {}
                        Err(e) => return Err(token_stop(e)),
                    }
                }
                403 => {
                    // Access refused until somebody with rights acts (an admin
                    // grants the app or the user the module): trying again on
                    // a schedule only spends the error budget.
                    let text = excerpt(&String::from_utf8_lossy(&body), &[token.secret()]);
                    return Err(Stop::Park(format!(
                        "{} answered HTTP 403 (access refused: {text}); once access is granted, \
                         `oauth-sync sync run` or a new login resumes the sync",
                        url.path()
                    )));
                }
                429 => {
                    counts.throttled += 1;
                    throttled += 1;
                    if throttled > self.settings.max_throttled {
                        return Err(Stop::Yield {
                            until: now + millis(self.settings.max_backoff),
                            why: format!("{throttled} answers 429 in a row"),
                        });
                    }
                    // The shared budget now holds every caller of the key
                    // until the window's reset or the `Retry-After`.
                }
                408 | 500..=599 => {
                    attempt += 1;
                    let why = format!(
                        "HTTP {status}: {}",
                        excerpt(&String::from_utf8_lossy(&body), &[token.secret()])
                    );
                    self.retry(cx, attempt, retry_after, counts, why).await?;
                }
                _ => {
                    let text = excerpt(&String::from_utf8_lossy(&body), &[token.secret()]);
                    let why = format!("{} answered HTTP {status}: {text}", url.path());
                    return Err(if matches!(status, 400 | 404 | 410) {
                        Stop::Gone(why)
                    } else {
                        Stop::Fail(why)
                    });
                }
            }
        }
    }

    /// One request from the rate key's shared budget: waits (in the run) for
    /// a spent window or a `Retry-After`, yields when the wait is longer or
    /// the error budget is spent.
    async fn draw(&self, cx: &Context<'_>, counts: &mut RunCounts) -> Result<Ticket, Stop> {
        let budget_per_hour = cx.provider.settings.error_budget_per_hour;
        let mut failures = 0;
        loop {
            match self.budget.draw(&cx.rate_key, budget_per_hour).await {
                Ok(Draw::Go(ticket)) => return Ok(ticket),
                Ok(Draw::WaitUntil(until)) => self.wait_until(cx, until, counts, "rate limit").await?,
                Ok(Draw::ErrorBudgetSpent(until)) => {
                    return Err(Stop::Yield {
                        until,
                        why: "half of the provider's hourly error budget is used".to_owned(),
                    });
                }
                Err(e) if e.is_transient() && failures < 3 => {
                    failures += 1;
                    warn!(job = cx.job, error = %error_chain(&e), "the rate budget could not be read; trying again");
                    tokio::time::sleep(self.backoff(failures)).await;
                }
                Err(e) => return Err(Stop::Fail(format!("the rate budget: {}", error_chain(&e)))),
            }
        }
    }

    /// Folds an answer into the shared budget; a failure is logged (the
    /// reservation then expires on its own, the window corrects itself with
    /// the next answer).
    async fn observe(&self, cx: &Context<'_>, ticket: Ticket, answer: &Answer) {
        if let Err(e) = self.budget.observe(&cx.rate_key, ticket, answer).await {
            warn!(job = cx.job, error = %error_chain(&e), "an answer could not be recorded in the rate budget");
        }
    }

    /// Waits for a transient failure, or ends the run when attempts or time run out.
    async fn retry(
        &self,
        cx: &Context<'_>,
        attempt: u32,
        retry_after: Option<u64>,
        counts: &mut RunCounts,
        why: String,
    ) -> Result<(), Stop> {
        if attempt >= self.settings.page_attempts {
            return Err(Stop::Fail(format!("{why} (after {attempt} attempts)")));
        }
        let wait = retry_after
            .map(|s| Duration::from_secs(s).min(self.settings.max_backoff))
            .unwrap_or_else(|| self.backoff(attempt));
        counts.retries += 1;
        warn!(
            job = cx.job,
            attempt,
            wait_ms = millis(wait),
            "{why}; trying the page again"
        );
        if Instant::now() + wait + self.settings.page_timeout + self.settings.commit_margin > cx.deadline {
            return Err(Stop::Yield {
                until: now_ms() + millis(wait),
                why: format!("{why}; no time left to try again in this invocation"),
            });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Sleeps until a rate-limit window resets, if that fits in the run.
    async fn wait_until(&self, cx: &Context<'_>, until: i64, counts: &mut RunCounts, what: &str) -> Result<(), Stop> {
        let wait = Duration::from_millis(u64::try_from(until - now_ms()).unwrap_or(0));
        let fits = Instant::now() + wait + self.settings.page_timeout + self.settings.commit_margin <= cx.deadline;
        if wait > self.settings.max_wait || !fits {
            return Err(Stop::Yield {
                until,
                why: format!("waiting for the {what} to reset"),
            });
        }
        counts.rate_limit_waits += 1;
        counts.waited_ms += u64::try_from(millis(wait)).unwrap_or(0);
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Exponential from `base_backoff`, capped, with full jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        jitter((self.settings.base_backoff * factor).min(self.settings.max_backoff))
    }
}

/// A token that could not be had ends the run: a dead connection parks it,
/// a provider that is down makes it wait.
fn token_stop(error: RefreshError) -> Stop {
    match error {
        RefreshError::NeedsReauth { .. } | RefreshError::NotActive { .. } | RefreshError::NotFound(_) => {
            Stop::Park(format!("{error}; a new login resumes the sync"))
        }
        RefreshError::RetryLater { until, .. } => Stop::Yield {
            until,
            why: error.to_string(),
        },
        other => Stop::Fail(format!("no access token: {}", error_chain(&other))),
    }
}

/// The key of the budget a connection's requests draw on: the app (its
/// credentials secret) and the provider's `rate_key` filled from the
/// connection (Exact Online: the division). A key that cannot be filled
/// falls back to the connection alone.
pub fn rate_key(provider: &Provider, params: &BTreeMap<String, String>, connection: &ConnectionId) -> String {
    let mut params = params.clone();
    params.insert("connection".to_owned(), connection.to_string());
    let key = fill_template(&provider.settings.rate_key, &params, &[]).unwrap_or_else(|_| connection.to_string());
    format!("{}#{key}", provider.credentials_secret)
}

/// The first placeholder of the sync's URL that the connection cannot fill.
fn unfilled(api_base_url: &Option<String>, sync: &Sync, params: &BTreeMap<String, String>) -> Option<String> {
    let templates = api_base_url
        .iter()
        .chain(std::iter::once(&sync.endpoint))
        .chain(sync.query.values())
        .chain(sync.headers.values());
    for template in templates {
        if let Err(crate::config::TemplateError::Unfilled(name)) = fill_template(template, params, &[]) {
            return Some(name);
        }
    }
    None
}

/// Two filters that must both hold. A side with an `or` goes in parentheses,
/// so that the `or` stays inside it (`A or B` and `C` is `(A or B) and C`,
/// not `A or (B and C)`); a side without one is sent as it is.
fn and(a: &str, b: &str) -> String {
    let group = |f: &str| {
        if f.to_ascii_lowercase().contains(" or ") {
            format!("({f})")
        } else {
            f.to_owned()
        }
    };
    format!("{} and {}", group(a), group(b))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_joined_so_that_an_or_stays_inside_its_side() {
        assert_eq!(and("A or B", "T gt 1L"), "(A or B) and T gt 1L");
        assert_eq!(and("A eq 1", "T gt 1L"), "A eq 1 and T gt 1L");
        assert_eq!(and("A eq 1", "X OR Y"), "A eq 1 and (X OR Y)");
    }

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
