//! The `webhooks` Lambda function: on batches from the webhook events queue
//! (fanned out, one delivery message per endpoint) and from the deliveries
//! queue (each sent, signed, to its endpoint), reporting the messages that
//! must come back as `batchItemFailures` (docs/webhooks.md).

use std::convert::Infallible;
use std::sync::Arc;

use std::collections::HashMap;

use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};
use shared::webhooks::queue::ENDPOINT_ATTRIBUTE;
use shared::webhooks::{Received, WebhookService};

/// The SQS event Lambda sends: only what the function reads. (Not
/// `aws_lambda_events`' `sqs` feature, which brings `serde_with` and its
/// proc macros into every function of the workspace for these few fields.)
#[derive(Debug, Default, Deserialize)]
pub struct SqsEvent {
    #[serde(rename = "Records", default)]
    pub records: Vec<SqsMessage>,
}

/// One SQS record.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SqsMessage {
    pub message_id: Option<String>,
    pub receipt_handle: Option<String>,
    pub body: Option<String>,
    pub attributes: HashMap<String, String>,
    pub message_attributes: HashMap<String, MessageAttribute>,
}

/// A message attribute (only string values are read).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageAttribute {
    pub string_value: Option<String>,
}

/// The partial batch response: the records to receive again.
#[derive(Debug, Default, Serialize)]
pub struct SqsBatchResponse {
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One record to receive again.
#[derive(Debug, Default, Serialize)]
pub struct BatchItemFailure {
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

/// A record as the library takes it; `None` without an id or a receipt
/// handle (Lambda always sends both).
pub fn received(message: SqsMessage) -> Option<Received> {
    let endpoint = message
        .message_attributes
        .get(ENDPOINT_ATTRIBUTE)
        .and_then(|a| a.string_value.clone());
    let receive_count = message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    Some(Received {
        message_id: message.message_id?,
        receipt_handle: message.receipt_handle?,
        body: message.body.unwrap_or_default(),
        endpoint,
        receive_count,
    })
}

pub async fn function_handler(
    service: &Arc<WebhookService>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Infallible> {
    let records = event.payload.records.len();
    let messages: Vec<Received> = event.payload.records.into_iter().filter_map(received).collect();
    let report = service.handle(messages).await;
    tracing::info!(
        request_id = %event.context.request_id,
        records,
        events = report.events,
        enqueued = report.enqueued,
        delivered = report.delivered,
        retrying = report.retrying,
        dead_lettered = report.dead_lettered,
        malformed = report.malformed,
        dropped = report.dropped,
        "webhook batch handled"
    );
    report.metrics().emit();
    Ok(SqsBatchResponse {
        batch_item_failures: report
            .failed
            .into_iter()
            .map(|id| BatchItemFailure { item_identifier: id })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_a_delivery_with_its_endpoint_and_receive_count_or_an_event_without() {
        let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [
            {"messageId": "m1", "receiptHandle": "r1", "body": "{}", "eventSource": "aws:sqs",
             "attributes": {"ApproximateReceiveCount": "4", "SentTimestamp": "1"},
             "messageAttributes": {"endpoint": {"stringValue": "crm", "stringListValues": [], "binaryListValues": [], "dataType": "String"}}},
            {"messageId": "m2", "receiptHandle": "r2", "body": "{}", "attributes": {}, "messageAttributes": {}},
            {"receiptHandle": "r3", "body": "{}"}
        ]}))
        .expect("an SQS event");
        let received: Vec<Received> = event.records.into_iter().filter_map(received).collect();
        assert_eq!(received.len(), 2, "a record without an id is not ours to answer for");
        assert_eq!(
            (received[0].endpoint.as_deref(), received[0].receive_count),
            (Some("crm"), 4)
        );
        assert_eq!((received[1].endpoint.as_deref(), received[1].receive_count), (None, 1));
    }
}
