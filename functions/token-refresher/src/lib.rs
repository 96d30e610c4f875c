//! The `token-refresher` Lambda function: on an EventBridge schedule, one
//! invocation per shard group every minute, refreshes each connection of its
//! shards of the refresh-due index at its due time (or before its refresh
//! token would die of idleness).

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::refresh::{DueRun, DueSummary, TokenService};
use shared::shards::{Layout, LayoutError};

/// Time kept back from the invocation's deadline: no refresh starts in it.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Why a run did not do all it should.
#[derive(Debug, thiserror::Error)]
pub enum RefresherError {
    /// Part of the refresh-due index could not be read (each failure is
    /// logged with its cause); the rest was served. Worth retrying, and the
    /// next schedule will.
    #[error(
        "the refresh-due index could not be read for {shards_failed} of the {shards} shards of this group; \
         their connections wait for the next run"
    )]
    ShardsFailed {
        shards_failed: u64,
        shards: usize,
        /// What the run did with the shards it could read.
        summary: Box<DueSummary>,
    },
    /// The event names no group of this deployment (the schedule's input
    /// and the stack's `RefreshGroups` disagree): nothing was done.
    #[error("the event's `group` {0}")]
    Group(String),
}

impl From<RefresherError> for Diagnostic {
    fn from(error: RefresherError) -> Diagnostic {
        match error {
            RefresherError::ShardsFailed { .. } => shared::lambda::retryable(&error),
            RefresherError::Group(_) => Diagnostic {
                error_type: "InvalidGroup".to_owned(),
                error_message: error.to_string(),
            },
        }
    }
}

/// The shard group an event asks for: its `group` (a whole number below
/// the stack's `RefreshGroups`), or 0 when it names none.
pub fn group_of(event: &serde_json::Value, layout: &Layout) -> Result<Vec<u32>, RefresherError> {
    let group = match event.get("group") {
        None | Some(serde_json::Value::Null) => 0,
        Some(value) => value
            .as_u64()
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| RefresherError::Group(format!("must be a whole number; it is {value}")))?,
    };
    layout
        .shards_of(group)
        .map_err(|e: LayoutError| RefresherError::Group(e.to_string()))
}

pub async fn function_handler(
    service: &Arc<TokenService>,
    layout: &Layout,
    event: LambdaEvent<serde_json::Value>,
) -> Result<DueSummary, RefresherError> {
    // A pushed configuration or a rotated key ring, at most once a minute.
    service.reload_if_changed().await;
    let shards = group_of(&event.payload, layout)?;
    let run = DueRun {
        shards,
        deadline: shared::lambda::deadline_of(&event.context, DEADLINE_MARGIN),
        // `[service] refresh_concurrency`: refreshes in flight (default 16).
        concurrency: service.config().service.refresh_concurrency,
    };
    let shard_count = run.shards.len();
    let summary = service.refresh_due(run).await;
    tracing::info!(
        request_id = %event.context.request_id,
        shards = summary.shards,
        shards_busy = summary.shards_busy,
        due = summary.due,
        refreshed = summary.refreshed,
        still_fresh = summary.still_fresh,
        needs_reauth = summary.needs_reauth,
        retry_later = summary.retry_later,
        failed = summary.failed,
        left_for_next_run = summary.left_for_next_run,
        complete = summary.complete,
        shards_failed = summary.shards_failed,
        outcome_unknown = summary.outcome_unknown,
        started_late_max_ms = summary.started_late_max_ms,
        "refresh run finished"
    );
    summary.metrics().emit();
    for metrics in summary.provider_metrics() {
        metrics.emit();
    }
    if summary.shards_failed > 0 {
        return Err(RefresherError::ShardsFailed {
            shards_failed: summary.shards_failed,
            shards: shard_count,
            summary: Box::new(summary),
        });
    }
    if !summary.complete {
        tracing::warn!(
            left_for_next_run = summary.left_for_next_run,
            "the run ended before every due connection was started; raise `refresh_concurrency`, `token_concurrency` or the stack's RefreshGroups if this persists"
        );
    }
    Ok(summary)
}
