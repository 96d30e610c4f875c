//! The `token-refresher` Lambda function: on an EventBridge schedule, one
//! invocation per shard group every minute, refreshes each connection of its
//! shards of the refresh-due index at its due time (or before its refresh
//! token would die of idleness).

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::connection::store::ConnectionStore;
use shared::refresh::{DueRun, DueSummary, RefreshSettings, TokenService, shards_with_due};
use shared::runtime::Starting;
use shared::shards::{Layout, LayoutError};
use shared::telemetry::StartupError;

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
    /// The function could not start (its configuration, its clients):
    /// nothing was done, and the process ends with the same error.
    #[error("start-up failed: {0}")]
    Startup(StartupError),
}

impl From<RefresherError> for Diagnostic {
    fn from(error: RefresherError) -> Diagnostic {
        match error {
            RefresherError::ShardsFailed { .. } => shared::lambda::retryable(&error),
            RefresherError::Group(_) => Diagnostic {
                error_type: "InvalidGroup".to_owned(),
                error_message: error.to_string(),
            },
            RefresherError::Startup(_) => Diagnostic {
                error_type: "StartupFailed".to_owned(),
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

/// One scheduled run: the event's shard group, refreshed until the deadline.
pub async fn function_handler(
    service: &Arc<TokenService>,
    layout: &Layout,
    event: LambdaEvent<serde_json::Value>,
) -> Result<DueSummary, RefresherError> {
    // A pushed configuration or a rotated key ring, at most once a minute.
    service.reload_if_changed().await;
    let shards = group_of(&event.payload, layout)?;
    let deadline = shared::lambda::deadline_of(&event.context, DEADLINE_MARGIN);
    run_shards(service, shards, deadline, &event.context.request_id).await
}

/// [`function_handler`] while the function's start-up may still be running
/// ([`Starting`]): the process's first run looks at each of its shards for
/// anything due (one query each, on `store`, which needs only the
/// environment) while the configuration is read, and works only the shards
/// where something is. A run with nothing due then costs its queries beside
/// the start-up, not after it.
pub async fn handle_starting(
    starting: &Starting<TokenService>,
    store: &ConnectionStore,
    layout: &Layout,
    event: LambdaEvent<serde_json::Value>,
) -> Result<DueSummary, RefresherError> {
    if starting.ended() {
        let service = starting.get().await.map_err(RefresherError::Startup)?;
        return function_handler(&service, layout, event).await;
    }
    let shards = group_of(&event.payload, layout)?;
    let deadline = shared::lambda::deadline_of(&event.context, DEADLINE_MARGIN);
    // The settings the start-up's service has (`App::token_service`).
    let until = DueRun::due_until(deadline, &RefreshSettings::default());
    let (service, due) = tokio::join!(starting.get(), shards_with_due(store, &shards, until));
    let service = service.map_err(RefresherError::Startup)?;
    run_shards(&service, due, deadline, &event.context.request_id).await
}

/// Works `shards` until `deadline`, then logs, emits and judges the run.
async fn run_shards(
    service: &Arc<TokenService>,
    shards: Vec<u32>,
    deadline: std::time::Instant,
    request_id: &str,
) -> Result<DueSummary, RefresherError> {
    let run = DueRun {
        shards,
        deadline,
        // `[service] refresh_concurrency`: refreshes in flight (default 16).
        concurrency: service.config().service.refresh_concurrency,
    };
    let shard_count = run.shards.len();
    let summary = service.refresh_due(run).await;
    tracing::info!(
        request_id,
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
