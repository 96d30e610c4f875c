//! The deliveries queue (SQS): one message per (event, endpoint), its body
//! the EventBridge event unchanged and the endpoint in a message attribute,
//! each retried on its own by making it invisible for its backoff.

use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};

/// The environment variable naming the deliveries queue (its URL; set by infra/template.yaml).
pub const DELIVERIES_QUEUE_ENV: &str = "OAUTH_SYNC_WEBHOOK_DELIVERIES_QUEUE_URL";
/// The message attribute that names the endpoint of a delivery message.
pub const ENDPOINT_ATTRIBUTE: &str = "endpoint";

/// SQS takes at most 10 entries per batch call.
const BATCH_ENTRIES: usize = 10;
/// …and at most 256 KiB in one call's bodies; a little is kept for attributes.
const BATCH_BYTES: usize = 250 * 1024;

/// A call to SQS failed as a whole.
#[derive(Debug, thiserror::Error)]
#[error("SQS {operation} failed")]
pub struct QueueError {
    pub operation: &'static str,
    #[source]
    pub source: Box<aws_sdk_sqs::Error>,
}

/// One delivery to enqueue: `id` is the caller's, to map failures back.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub endpoint: String,
    pub body: String,
}

/// A received delivery to make invisible for `delay`.
#[derive(Debug, Clone)]
pub struct Postpone {
    pub id: String,
    pub receipt_handle: String,
    pub delay: Duration,
}

/// The deliveries queue.
#[derive(Debug, Clone)]
pub struct DeliveryQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl DeliveryQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> DeliveryQueue {
        DeliveryQueue {
            client,
            url: url.into(),
        }
    }

    /// The queue named by `OAUTH_SYNC_WEBHOOK_DELIVERIES_QUEUE_URL`, on a
    /// client from the standard environment (`AWS_ENDPOINT_URL_SQS` locally)
    /// with the timeouts and retry bounds of every AWS client here.
    pub async fn from_env() -> Result<DeliveryQueue, crate::runtime::StartupError> {
        let url = std::env::var(DELIVERIES_QUEUE_ENV)
            .map_err(|_| crate::runtime::StartupError::MissingEnv(DELIVERIES_QUEUE_ENV))?;
        let sdk = crate::aws::sdk_config_from_env();
        Ok(DeliveryQueue::new(aws_sdk_sqs::Client::new(&sdk), url))
    }

    /// Enqueues the deliveries (in as few batch calls as SQS allows); the
    /// ids of those SQS did not take. A call that fails as a whole fails
    /// all of its entries.
    pub async fn send(&self, deliveries: &[NewDelivery]) -> Vec<String> {
        let mut failed = Vec::new();
        for chunk in chunks(deliveries) {
            let mut request = self.client.send_message_batch().queue_url(&self.url);
            for delivery in chunk {
                let entry = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(&delivery.endpoint)
                    .build()
                    .and_then(|endpoint| {
                        SendMessageBatchRequestEntry::builder()
                            .id(&delivery.id)
                            .message_body(&delivery.body)
                            .message_attributes(ENDPOINT_ATTRIBUTE, endpoint)
                            .build()
                    });
                match entry {
                    Ok(entry) => request = request.entries(entry),
                    Err(_) => failed.push(delivery.id.clone()),
                }
            }
            match request.send().await {
                Ok(output) => failed.extend(output.failed().iter().map(|f| f.id().to_owned())),
                Err(e) => {
                    let error = QueueError {
                        operation: "SendMessageBatch",
                        source: Box::new(e.into()),
                    };
                    tracing::warn!(error = %crate::telemetry::error_chain(&error), "enqueueing deliveries failed");
                    failed.extend(chunk.iter().map(|d| d.id.clone()));
                }
            }
        }
        failed
    }

    /// Makes each received delivery invisible for its delay (its backoff).
    /// Best effort: a delivery whose change fails comes back after the
    /// queue's own visibility timeout instead; the ids of those.
    pub async fn postpone(&self, entries: &[Postpone]) -> Vec<String> {
        let mut failed = Vec::new();
        for chunk in entries.chunks(BATCH_ENTRIES) {
            let mut request = self.client.change_message_visibility_batch().queue_url(&self.url);
            for entry in chunk {
                let secs = i32::try_from(entry.delay.as_secs()).unwrap_or(i32::MAX).min(43_200);
                match ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(&entry.id)
                    .receipt_handle(&entry.receipt_handle)
                    .visibility_timeout(secs)
                    .build()
                {
                    Ok(built) => request = request.entries(built),
                    Err(_) => failed.push(entry.id.clone()),
                }
            }
            match request.send().await {
                Ok(output) => failed.extend(output.failed().iter().map(|f| f.id().to_owned())),
                Err(e) => {
                    let error = QueueError {
                        operation: "ChangeMessageVisibilityBatch",
                        source: Box::new(e.into()),
                    };
                    tracing::warn!(error = %crate::telemetry::error_chain(&error), "postponing deliveries failed");
                    failed.extend(chunk.iter().map(|e| e.id.clone()));
                }
            }
        }
        failed
    }
}

/// Batches of at most 10 entries and [`BATCH_BYTES`] of bodies.
fn chunks(deliveries: &[NewDelivery]) -> Vec<&[NewDelivery]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, delivery) in deliveries.iter().enumerate() {
        let size = delivery.body.len() + delivery.endpoint.len();
        if i > start && (i - start == BATCH_ENTRIES || bytes + size > BATCH_BYTES) {
            out.push(&deliveries[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < deliveries.len() {
        out.push(&deliveries[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(n: usize, size: usize) -> NewDelivery {
        NewDelivery {
            id: n.to_string(),
            endpoint: String::new(),
            body: "x".repeat(size),
        }
    }

    #[test]
    fn batches_hold_at_most_ten_entries_and_250_kib() {
        let small: Vec<_> = (0..23).map(|n| delivery(n, 10)).collect();
        assert_eq!(chunks(&small).iter().map(|c| c.len()).collect::<Vec<_>>(), [10, 10, 3]);
        let big: Vec<_> = (0..5).map(|n| delivery(n, 100 * 1024)).collect();
        assert_eq!(chunks(&big).iter().map(|c| c.len()).collect::<Vec<_>>(), [2, 2, 1]);
        assert!(chunks(&[]).is_empty());
    }
}
