//! The `token-refresher` Lambda function: on an EventBridge schedule, refreshes
//! every connection whose access token is due (or whose refresh token would
//! otherwise die of idleness), found through the sharded refresh-due index.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::connection::DUE_SHARDS;
use shared::refresh::{DueSummary, TokenService};

/// Time kept back from the invocation's deadline: no refresh starts in it.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Part of the refresh-due index could not be read (each failure is logged
/// with its cause); the rest was served. Worth retrying, and the next
/// schedule will.
#[derive(Debug, thiserror::Error)]
#[error(
    "the refresh-due index could not be read for {shards_failed} of {DUE_SHARDS} shards; \
     their connections wait for the next run"
)]
pub struct RefresherError {
    pub shards_failed: u64,
    /// What the run did with the shards it could read.
    pub summary: DueSummary,
}

impl From<RefresherError> for Diagnostic {
    fn from(error: RefresherError) -> Diagnostic {
        shared::lambda::retryable(&error)
    }
}

pub async fn function_handler(
    service: &Arc<TokenService>,
    event: LambdaEvent<serde_json::Value>,
) -> Result<DueSummary, RefresherError> {
    let deadline = shared::lambda::deadline_of(&event.context, DEADLINE_MARGIN);
    // A pushed configuration or a rotated key ring, at most once a minute.
    service.reload_if_changed().await;
    // `[service] refresh_concurrency`: refreshes in flight (default 16).
    let concurrency = service.config().service.refresh_concurrency;
    let summary = service.refresh_due(deadline, concurrency).await;
    tracing::info!(
        request_id = %event.context.request_id,
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
        "refresh run finished"
    );
    summary.metrics().emit();
    if summary.shards_failed > 0 {
        return Err(RefresherError {
            shards_failed: summary.shards_failed,
            summary,
        });
    }
    if !summary.complete {
        tracing::warn!(
            left_for_next_run = summary.left_for_next_run,
            "the run ended before every due connection was started; raise the function's timeout or the schedule's rate if this persists"
        );
    }
    Ok(summary)
}
