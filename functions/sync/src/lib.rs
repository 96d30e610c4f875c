//! The `sync` Lambda function: on an EventBridge schedule, claims every due
//! sync job through the `sync-due` index and runs it (pages, upserts,
//! checkpoints) until the invocation's deadline; what is left resumes in the
//! next invocation from its checkpoint.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::connection::DUE_SHARDS;
use shared::sync::engine::{DueRuns, SyncEngine};

/// Time kept back from the invocation's deadline for the last checkpoint.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

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

pub async fn function_handler(
    engine: &Arc<SyncEngine>,
    event: LambdaEvent<serde_json::Value>,
) -> Result<DueRuns, SyncRunError> {
    // A pushed configuration or a rotated key ring, at most once a minute.
    engine.reload_if_changed().await;
    let summary = engine
        .run_due(shared::lambda::deadline_of(&event.context, DEADLINE_MARGIN))
        .await;
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
    Ok(summary)
}
