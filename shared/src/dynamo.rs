//! What every table of the library shares: attribute values, the one error
//! type of a table call and how it is classified, call counts, batched reads,
//! the one bounded retry of transient failures, and the one check that tells
//! a conditional write that lost its answer from one that lost its condition.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use tracing::warn;

use crate::telemetry::error_chain;

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A string attribute.
pub fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

/// A number attribute.
pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// DynamoDB calls made, for the benchmark and for tests that count them.
#[derive(Debug, Default)]
pub struct OpCounts {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub queries: AtomicU64,
}

impl OpCounts {
    /// (reads, writes, queries)
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.queries.load(Ordering::Relaxed),
        )
    }
}

/// Why a table call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB {operation} on table {table} failed")]
    Dynamo {
        operation: &'static str,
        table: String,
        /// Throttling, a 5xx, a timeout or a connection failure: worth retrying.
        transient: bool,
        #[source]
        source: Box<aws_sdk_dynamodb::Error>,
    },
    #[error("connection {id}: the stored item is malformed ({reason})")]
    Malformed { id: String, reason: String },
    #[error("DynamoDB {operation} did not answer in the time left")]
    TimedOut { operation: &'static str },
    /// A batch kept coming back with unprocessed items (throttling).
    #[error("DynamoDB {operation} on table {table} left items unprocessed after {attempts} attempts")]
    Unprocessed {
        operation: &'static str,
        table: String,
        attempts: u32,
    },
    /// A connection belongs to one provider for life: its refresh token must
    /// never be sent to another provider's token endpoint.
    #[error(
        "connection {id} is connected to provider `{existing}`; a login at `{requested}` cannot take it over (use another connection id)"
    )]
    OtherProvider {
        id: String,
        existing: String,
        requested: String,
    },
    /// A sync run's lease ran out (the process was paused past it, or
    /// another run took the job over): the run writes nothing more.
    #[error("the run's lease ran out; nothing more is written")]
    LeaseLost,
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Dynamo { transient: true, .. } | StoreError::TimedOut { .. } | StoreError::Unprocessed { .. }
        )
    }
}

fn is_transient<E>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => false,
    }
}

/// An SDK error of `operation` on `table`, classified (see [`dynamo_error`]).
pub fn sdk_failure<E>(operation: &'static str, table: &str, error: SdkError<E, HttpResponse>) -> StoreError
where
    aws_sdk_dynamodb::Error: From<SdkError<E, HttpResponse>>,
{
    let transient = is_transient(&error);
    dynamo_error(operation, table, aws_sdk_dynamodb::Error::from(error), transient)
}

/// A DynamoDB error, transient when the transport said so (a timeout, a
/// dropped connection, an HTTP 5xx) or DynamoDB throttled or failed internally.
pub fn dynamo_error(
    operation: &'static str,
    table: &str,
    source: aws_sdk_dynamodb::Error,
    transport_transient: bool,
) -> StoreError {
    let transient = transport_transient
        || matches!(
            source,
            aws_sdk_dynamodb::Error::ProvisionedThroughputExceededException(_)
                | aws_sdk_dynamodb::Error::RequestLimitExceeded(_)
                | aws_sdk_dynamodb::Error::InternalServerError(_)
                | aws_sdk_dynamodb::Error::ThrottlingException(_)
        );
    StoreError::Dynamo {
        operation,
        table: table.to_owned(),
        transient,
        source: Box::new(source),
    }
}

/// What a conditional write came to.
#[derive(Debug)]
pub enum Conditional {
    /// It was applied: answered so, or found applied after a lost answer.
    Done,
    /// The condition did not hold; the item as it is now, when it exists.
    Refused(Option<Item>),
}

/// The answer to a conditional write sent with
/// `ReturnValuesOnConditionCheckFailure = ALL_OLD`, read the one way every
/// such write is read. When the SDK retries a write whose first try landed
/// but whose answer was lost, the retry fails its own condition; the item
/// DynamoDB returns then shows the write, which `ours` recognises (an owner,
/// a write id), so it counts as [`Conditional::Done`], not as a loss.
pub fn conditional<O, E>(
    sent: Result<O, SdkError<E, HttpResponse>>,
    operation: &'static str,
    table: &str,
    ours: impl FnOnce(&Item) -> bool,
) -> Result<Conditional, StoreError>
where
    aws_sdk_dynamodb::Error: From<SdkError<E, HttpResponse>>,
{
    let error = match sent {
        Ok(_) => return Ok(Conditional::Done),
        Err(error) => error,
    };
    match refused(error, operation, table)? {
        Some(item) if ours(&item) => Ok(Conditional::Done),
        item => Ok(Conditional::Refused(item)),
    }
}

/// A failed conditional write sent with `ReturnValuesOnConditionCheckFailure
/// = ALL_OLD`: the item its condition was checked against (`None` when there
/// is none), or, when it failed for another reason, that error.
pub fn refused<E>(
    error: SdkError<E, HttpResponse>,
    operation: &'static str,
    table: &str,
) -> Result<Option<Item>, StoreError>
where
    aws_sdk_dynamodb::Error: From<SdkError<E, HttpResponse>>,
{
    let transient = is_transient(&error);
    match aws_sdk_dynamodb::Error::from(error) {
        aws_sdk_dynamodb::Error::ConditionalCheckFailedException(failed) => Ok(failed.item),
        other => Err(dynamo_error(operation, table, other, transient)),
    }
}

/// Does `item` hold `value` as the string attribute `key`?
pub fn has_s(item: &Item, key: &str, value: &str) -> bool {
    matches!(item.get(key), Some(AttributeValue::S(v)) if v == value)
}

/// `call`, cut off at `until`: a call still running then is
/// [`StoreError::TimedOut`] (its write may still land; conditional writes
/// make that safe).
pub async fn within<T>(
    until: Instant,
    operation: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let left = until.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, call)
        .await
        .unwrap_or(Err(StoreError::TimedOut { operation }))
}

/// How [`retry_transient`] tries again.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// No try starts after this.
    pub until: Instant,
    /// Tries in all.
    pub attempts: u32,
    /// The first wait, doubling up to `cap`, jittered.
    pub base: Duration,
    pub cap: Duration,
}

/// Runs `call` again while it fails with a transient error
/// ([`StoreError::is_transient`]), with jittered exponential backoff, at
/// most `retry.attempts` times in all and never starting a try whose wait
/// would end past `retry.until`. The last error is returned. Every
/// retrying DynamoDB write of the library goes through here.
pub async fn retry_transient<T, F, Fut>(retry: Retry, what: &str, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(e) if e.is_transient() && attempt < retry.attempts => {
                let wait = crate::backoff::exponential(retry.base, retry.cap, attempt);
                if Instant::now() + wait >= retry.until {
                    return Err(e);
                }
                warn!(attempt, wait_ms = wait.as_millis() as u64, error = %error_chain(&e), "{what} failed; trying again");
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

/// Every item of `table`, by a paginated `Scan`: for operator commands only
/// (`list`, `sync status`), never on a function's path. Each page is counted
/// in `ops.queries` when given.
pub async fn scan_all(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    ops: Option<&OpCounts>,
    operation: &'static str,
) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        if let Some(ops) = ops {
            ops.queries.fetch_add(1, Ordering::Relaxed);
        }
        let output = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_failure(operation, table, e))?;
        items.extend(output.items.unwrap_or_default());
        start = output.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// Attempts for a batch whose items keep coming back unprocessed.
pub const BATCH_ATTEMPTS: u32 = 8;

/// The wait before a batch's unprocessed items are sent again: 100 ms
/// doubling, at most 2 s, with jitter.
pub fn batch_backoff(attempt: u32) -> Duration {
    crate::backoff::exponential(Duration::from_millis(100), Duration::from_secs(2), attempt)
}

/// Every item of one `BatchGetItem` of `keys` on `table`: keys the service
/// leaves unprocessed are asked again with jittered backoff, at most
/// [`BATCH_ATTEMPTS`] times. Items read are counted in `ops.reads`.
pub async fn batch_get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: aws_sdk_dynamodb::types::KeysAndAttributes,
    ops: &OpCounts,
    operation: &'static str,
) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut request = Some(keys);
    let mut attempt = 0;
    while let Some(keys) = request.take() {
        ops.reads.fetch_add(keys.keys().len() as u64, Ordering::Relaxed);
        let output = client
            .batch_get_item()
            .request_items(table, keys)
            .send()
            .await
            .map_err(|e| sdk_failure(operation, table, e))?;
        items.extend(output.responses.and_then(|mut r| r.remove(table)).unwrap_or_default());
        request = output
            .unprocessed_keys
            .and_then(|mut u| u.remove(table))
            .filter(|k| !k.keys().is_empty());
        if request.is_some() {
            attempt += 1;
            if attempt >= BATCH_ATTEMPTS {
                return Err(StoreError::Unprocessed {
                    operation,
                    table: table.to_owned(),
                    attempts: attempt,
                });
            }
            tokio::time::sleep(batch_backoff(attempt)).await;
        }
    }
    Ok(items)
}
