//! The `sync` Lambda function: on an EventBridge schedule, first gives the
//! configuration's syncs the jobs they lack (a sync added after the logins,
//! [`Reconciler`]; one read when nothing changed), then claims every due
//! sync job through the `sync-due` index and runs it (pages, upserts,
//! checkpoints) until the invocation's deadline; what is left resumes in the
//! next invocation from its checkpoint.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::connection::DUE_SHARDS;
use shared::sync::engine::{DueRuns, SyncEngine};
use shared::sync::reconcile::{Reconciled, Reconciler};

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

/// Part of the sync-due index could not be read (each failure is logged);
/// the rest was served. Worth retrying, and the next schedule will.
#[derive(Debug, thiserror::Error)]
#[error(
    "the sync-due index could not be read for {shards_failed} of {DUE_SHARDS} shards; their jobs wait for the next run"
)]
pub struct SyncRunError {
    pub shards_failed: u64,
    pub summary: DueRuns,
}

impl From<SyncRunError> for Diagnostic {
    fn from(error: SyncRunError) -> Diagnostic {
        shared::lambda::retryable(&error)
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
    tracing::info!(
        request_id = %event.context.request_id,
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
        return Err(SyncRunError {
            shards_failed: summary.shards_failed,
            summary,
        });
    }
    Ok(Invocation {
        reconciled,
        runs: summary,
    })
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
