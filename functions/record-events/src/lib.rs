//! The `record-events` Lambda function: the records table's stream in,
//! `record.inserted` / `record.updated` / `record.deleted` on the stack's
//! bus out (the rules are `shared::events::stream`'s). A stream record that
//! cannot be read or published is reported in the partial batch response
//! (`ReportBatchItemFailures`), so Lambda retries from it instead of
//! replaying the whole batch; one that keeps failing goes to the
//! on-failure queue (infra/template.yaml).

use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use shared::events::EventSink;
use shared::events::stream::{BatchError, publish_batch};

/// A batch whose failure cannot be reported per record.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HandlerError(#[from] BatchError);

impl From<HandlerError> for Diagnostic {
    fn from(error: HandlerError) -> Diagnostic {
        // Lambda retries the batch, halving it (BisectBatchOnFunctionError).
        shared::lambda::retryable(&error)
    }
}

pub async fn function_handler(
    events: &EventSink,
    event: LambdaEvent<Value>,
) -> Result<DynamoDbEventResponse, HandlerError> {
    let outcome = publish_batch(events, &event.payload).await?;
    tracing::info!(
        request_id = %event.context.request_id,
        records = outcome.records,
        published = outcome.published,
        skipped = outcome.skipped,
        failed = outcome.failed.len(),
        "stream batch done"
    );
    Ok(batch_response(outcome.failed))
}

/// The partial batch response naming the failed records' sequence numbers.
/// (The types are `non_exhaustive`: built from their defaults.)
fn batch_response(failed: Vec<String>) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    for sequence in failed {
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(sequence);
        response.batch_item_failures.push(failure);
    }
    response
}
