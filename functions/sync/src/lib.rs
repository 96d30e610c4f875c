//! The `sync` Lambda function: on an EventBridge schedule, first gives the
//! configuration's syncs the jobs they lack (a sync added after the logins,
//! [`Reconciler`]; one read when nothing changed), then claims every due
//! sync job through the `sync-due` index and runs it (pages, upserts,
//! checkpoints) until the invocation's deadline; what is left resumes in the
//! next invocation from its checkpoint.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::connection::{DUE_SHARDS, now_ms};
use shared::runtime::Starting;
use shared::sync::engine::{DueRuns, SyncEngine};
use shared::sync::jobs::JobStore;
use shared::sync::reconcile::{Reconciled, Reconciler};
use shared::telemetry::StartupError;

/// Time kept back from the invocation's deadline for the last checkpoint.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// What one invocation did: the reconciliation (`None` when it failed; the
/// failure is logged and counted, and the next invocation tries again) and
/// the due jobs' runs (the function's answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    pub reconciled: Option<Reconciled>,
    pub runs: DueRuns,
}

/// Why an invocation did not do all it should.
#[derive(Debug, thiserror::Error)]
pub enum SyncRunError {
    /// Part of the sync-due index could not be read (each failure is
    /// logged); the rest was served. Worth retrying, and the next schedule will.
    #[error(
        "the sync-due index could not be read for {shards_failed} of {DUE_SHARDS} shards; their jobs wait for the next run"
    )]
    ShardsFailed { shards_failed: u64, summary: Box<DueRuns> },
    /// The function could not start (its configuration, its clients):
    /// nothing was done, and the process ends with the same error.
    #[error("start-up failed: {0}")]
    Startup(#[from] StartupError),
}

impl From<SyncRunError> for Diagnostic {
    fn from(error: SyncRunError) -> Diagnostic {
        match error {
            SyncRunError::ShardsFailed { .. } => shared::lambda::retryable(&error),
            SyncRunError::Startup(_) => Diagnostic {
                error_type: "StartupFailed".to_owned(),
                error_message: error.to_string(),
            },
        }
    }
}

/// The handler: answers with the due jobs' runs ([`invoke`]).
pub async fn function_handler(
    engine: &Arc<SyncEngine>,
    reconciler: &Reconciler,
    event: LambdaEvent<serde_json::Value>,
) -> Result<DueRuns, SyncRunError> {
    invoke(engine, reconciler, event).await.map(|done| done.runs)
}

/// One invocation: the reconciliation, then the due jobs until the deadline.
pub async fn invoke(
    engine: &Arc<SyncEngine>,
    reconciler: &Reconciler,
    event: LambdaEvent<serde_json::Value>,
) -> Result<Invocation, SyncRunError> {
    let deadline = shared::lambda::deadline_of(&event.context, DEADLINE_MARGIN);
    // A pushed configuration or a rotated key ring, at most once a minute.
    engine.reload_if_changed().await;
    let reconciled = reconcile(reconciler, &event.context.request_id, deadline).await;
    let summary = engine.run_due(deadline).await;
    finish(reconciled, summary, &event.context.request_id)
}

/// Logs and emits an invocation's runs, and judges them.
fn finish(reconciled: Option<Reconciled>, summary: DueRuns, request_id: &str) -> Result<Invocation, SyncRunError> {
    tracing::info!(
        request_id,
        due = summary.due,
        finished = summary.finished,
        yielded = summary.yielded,
        parked = summary.parked,
        failed = summary.failed,
        busy = summary.busy,
        left_for_next_run = summary.left_for_next_run,
        shards_failed = summary.shards_failed,
        inserted = summary.inserted,
        updated = summary.updated,
        deleted = summary.deleted,
        unchanged = summary.unchanged,
        lag_percent = summary.lag_percent,
        "sync run finished"
    );
    summary.metrics().emit();
    if summary.shards_failed > 0 {
        return Err(SyncRunError::ShardsFailed {
            shards_failed: summary.shards_failed,
            summary: Box::new(summary),
        });
    }
    Ok(Invocation {
        reconciled,
        runs: summary,
    })
}

/// What the sync function builds at start-up: the engine and the job
/// reconciliation.
#[derive(Debug)]
pub struct Services {
    pub engine: Arc<SyncEngine>,
    pub reconciler: Reconciler,
}

/// [`invoke`] while the function's start-up may still be running
/// ([`Starting`]): the process's first invocation looks at each shard of
/// the sync-due index for a due job (one query each, on `jobs`, which needs
/// only the environment) while the configuration is read, and works only
/// the shards where one is (all of them when the reconciliation created
/// jobs). An invocation with nothing due then costs its queries beside the
/// start-up, not after it.
pub async fn invoke_starting(
    starting: &Starting<Services>,
    jobs: &JobStore,
    event: LambdaEvent<serde_json::Value>,
) -> Result<Invocation, SyncRunError> {
    if starting.ended() {
        let services = starting.get().await.map_err(SyncRunError::from)?;
        return invoke(&services.engine, &services.reconciler, event).await;
    }
    let deadline = shared::lambda::deadline_of(&event.context, DEADLINE_MARGIN);
    let shards: Vec<u32> = (0..DUE_SHARDS).collect();
    let (services, due) = tokio::join!(starting.get(), jobs.shards_with_due(&shards, now_ms()));
    let services = services.map_err(SyncRunError::from)?;
    let reconciled = reconcile(&services.reconciler, &event.context.request_id, deadline).await;
    let shards = match &reconciled {
        Some(done) if done.created > 0 => shards,
        _ => due,
    };
    let summary = services.engine.run_due_in(&shards, deadline).await;
    finish(reconciled, summary, &event.context.request_id)
}

/// The reconciliation's share of the invocation (bounded by its settings'
/// budget), logged and counted; `None` when it failed.
async fn reconcile(reconciler: &Reconciler, request_id: &str, deadline: std::time::Instant) -> Option<Reconciled> {
    match reconciler.run(deadline).await {
        Ok(done) => {
            if !done.up_to_date {
                tracing::info!(
                    request_id,
                    created = done.created,
                    existing = done.existing,
                    skipped = done.skipped,
                    pages = done.pages,
                    finished = done.finished,
                    busy = done.busy,
                    lost_lease = done.lost_lease,
                    "sync jobs reconciled with the configuration's syncs"
                );
                done.metrics().emit();
            }
            Some(done)
        }
        Err(e) => {
            tracing::error!(request_id, error = %shared::telemetry::error_chain(&e),
                "the configuration's syncs could not be reconciled with the jobs; the next invocation goes on from the saved place");
            shared::metrics::Metrics::new("sync").count("ReconcileFailed", 1).emit();
            None
        }
    }
}
