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
use shared::events::stream::{StreamChange, record_event};
use shared::events::{Event, EventSink};

/// A stream record without a sequence number cannot be reported alone:
/// the batch fails, and Lambda bisects it.
#[derive(Debug, thiserror::Error)]
#[error("stream record {index} of the batch has no SequenceNumber: {reason}")]
pub struct BatchError {
    pub index: usize,
    pub reason: String,
}

impl From<BatchError> for Diagnostic {
    fn from(error: BatchError) -> Diagnostic {
        Diagnostic {
            error_type: "NonRetryable".to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// What one batch did (logged; the response carries only the failures).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub records: usize,
    pub published: usize,
    /// Bookkeeping changes and removals: no event.
    pub skipped: usize,
    pub failed: usize,
}

pub async fn function_handler(
    events: &EventSink,
    event: LambdaEvent<Value>,
) -> Result<DynamoDbEventResponse, BatchError> {
    let (response, summary) = handle(events, &event.payload).await?;
    tracing::info!(
        request_id = %event.context.request_id,
        records = summary.records,
        published = summary.published,
        skipped = summary.skipped,
        failed = summary.failed,
        "stream batch done"
    );
    Ok(response)
}

/// The batch: each stream record's event, published together; the
/// sequence numbers of those that failed.
pub async fn handle(events: &EventSink, payload: &Value) -> Result<(DynamoDbEventResponse, BatchSummary), BatchError> {
    let records = payload["Records"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut summary = BatchSummary {
        records: records.len(),
        ..BatchSummary::default()
    };
    let mut failed = Vec::new();
    let mut to_put: Vec<(String, Event)> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let decided = StreamChange::parse(record).and_then(|change| {
            let sequence = change.sequence_number.clone();
            record_event(&change).map(|event| (sequence, event))
        });
        match decided {
            Ok((_, None)) => summary.skipped += 1,
            Ok((Some(sequence), Some(event))) => to_put.push((sequence, event)),
            Ok((None, Some(_))) => {
                return Err(BatchError {
                    index,
                    reason: "a change to publish".to_owned(),
                });
            }
            Err(e) => {
                tracing::error!(index, error = %e, "a stream record could not be read");
                let Some(sequence) = StreamChange::sequence_number_of(record) else {
                    return Err(BatchError {
                        index,
                        reason: e.to_string(),
                    });
                };
                failed.push(sequence);
            }
        }
    }
    let (sequences, batch): (Vec<String>, Vec<Event>) = to_put.into_iter().unzip();
    for ((sequence, event), result) in sequences.into_iter().zip(&batch).zip(events.put(&batch).await) {
        match result {
            Ok(()) => summary.published += 1,
            Err(e) => {
                tracing::warn!(detail_type = event.detail_type(), connection = event.connection(), error = %e, "a record event could not be published; Lambda retries from it");
                failed.push(sequence);
            }
        }
    }
    summary.failed = failed.len();
    Ok((batch_response(failed), summary))
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
