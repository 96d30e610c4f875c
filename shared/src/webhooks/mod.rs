//! Signed webhooks for applications outside AWS (docs/webhooks.md).
//!
//! The stack's bus sends every `oauth-sync` event to the *events* queue. The
//! `webhooks` function reads two queues and tells their messages apart by
//! the `endpoint` message attribute:
//!
//! 1. an event (no attribute) is **fanned out**: one message per endpoint
//!    whose `events` want its type, onto the *deliveries* queue;
//! 2. a delivery is **sent** to its one endpoint, signed the Standard
//!    Webhooks way; a failure makes that message alone invisible for its
//!    backoff ([`retry`]), and after the last attempt the queue's redrive
//!    policy moves it to the dead-letter queue.
//!
//! So an endpoint that keeps failing holds back only its own messages: each
//! waits out its backoff invisible, while the deliveries to the other
//! endpoints of the same event are other messages, sent and deleted.

pub mod deliver;
pub mod queue;
pub mod retry;
pub mod sign;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::Webhook;
use crate::metrics::Metrics;
use crate::secrets::SecretStore;
pub use deliver::{DELIVERY_TIMEOUT, DeliveryError};
use queue::{DeliveryQueue, NewDelivery, Postpone};
pub use retry::RetrySchedule;
use sign::SigningSecret;

/// The `source` of the stack's events.
pub const EVENT_SOURCE: &str = "oauth-sync";

/// An EventBridge event as a rule with an SQS target delivers it.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub source: String,
    pub time: String,
    #[serde(default)]
    pub detail: Value,
}

impl Event {
    /// Parses an SQS message body; `None` for anything but an `oauth-sync` event.
    pub fn parse(body: &str) -> Option<Event> {
        serde_json::from_str::<Event>(body)
            .ok()
            .filter(|e| e.source == EVENT_SOURCE && !e.id.is_empty() && !e.detail_type.is_empty())
    }
}

/// One SQS message as the function receives it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// The `endpoint` attribute: set on deliveries, absent on events.
    pub endpoint: Option<String>,
    /// `ApproximateReceiveCount`: 1 on the first attempt.
    pub receive_count: u32,
}

/// What one batch came to; `failed` are the message ids to report as
/// batch item failures (left on their queue, to come back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub failed: Vec<String>,
    /// Events fanned out, and the deliveries they made.
    pub events: u64,
    pub enqueued: u64,
    /// Deliveries the endpoint accepted (2xx).
    pub delivered: u64,
    /// Deliveries that failed and will be retried.
    pub retrying: u64,
    /// Deliveries that failed their last attempt: on to the dead-letter queue.
    pub dead_lettered: u64,
    /// Messages that were not an `oauth-sync` event (left to dead-letter).
    pub malformed: u64,
    /// Deliveries to an endpoint no longer configured (dropped).
    pub dropped: u64,
}

impl BatchReport {
    /// The batch's EMF metrics; the template's alarm watches `WebhookDeadLettered`.
    pub fn metrics(&self) -> Metrics {
        Metrics::new("webhooks")
            .count("WebhookEventsFannedOut", self.events)
            .count("WebhookDelivered", self.delivered)
            .count("WebhookFailed", self.retrying + self.dead_lettered)
            .count("WebhookDeadLettered", self.dead_lettered)
            .count("WebhookMalformed", self.malformed)
    }
}

/// Fans events out and delivers webhooks. Built once per process.
#[derive(Debug)]
pub struct WebhookService {
    endpoints: BTreeMap<String, Endpoint>,
    secrets: SecretStore,
    http: reqwest::Client,
    queue: DeliveryQueue,
    schedule: RetrySchedule,
}

#[derive(Debug)]
struct Endpoint {
    webhook: Webhook,
    /// Read from Secrets Manager at the first delivery, then kept for the
    /// process's life; a failed read is not kept (the next delivery retries it).
    secret: OnceCell<SigningSecret>,
}

/// How one delivery went.
#[derive(Debug)]
enum Sent {
    Delivered,
    Failed,
    Malformed,
    Dropped,
}

impl WebhookService {
    pub fn new(
        webhooks: &BTreeMap<String, Webhook>,
        secrets: SecretStore,
        queue: DeliveryQueue,
        schedule: RetrySchedule,
    ) -> Result<WebhookService, reqwest::Error> {
        Ok(WebhookService {
            endpoints: webhooks
                .iter()
                .map(|(name, webhook)| {
                    (
                        name.clone(),
                        Endpoint {
                            webhook: webhook.clone(),
                            secret: OnceCell::new(),
                        },
                    )
                })
                .collect(),
            secrets,
            http: crate::http::client(DELIVERY_TIMEOUT, crate::http::Pooling::Off)?,
            queue,
            schedule,
        })
    }

    /// Handles one batch from either queue.
    pub async fn handle(self: &Arc<Self>, messages: Vec<Received>) -> BatchReport {
        let mut report = BatchReport::default();
        let (deliveries, events): (Vec<_>, Vec<_>) = messages.into_iter().partition(|m| m.endpoint.is_some());
        self.fan_out(events, &mut report).await;
        self.deliver_all(deliveries, &mut report).await;
        report
    }

    /// One delivery message per (event, wanting endpoint); an event whose
    /// deliveries could not all be enqueued fails as a whole, and its
    /// retry enqueues them all again (same webhook-ids: receivers deduplicate).
    async fn fan_out(&self, events: Vec<Received>, report: &mut BatchReport) {
        let mut deliveries = Vec::new();
        let mut origin = BTreeMap::new();
        for message in events {
            let Some(event) = Event::parse(&message.body) else {
                tracing::error!(
                    message_id = %message.message_id,
                    "not an oauth-sync EventBridge event; left on the queue for its dead-letter queue"
                );
                report.malformed += 1;
                report.failed.push(message.message_id);
                continue;
            };
            report.events += 1;
            for webhook in self.endpoints.values().map(|e| &e.webhook) {
                if !webhook.wants(&event.detail_type) {
                    continue;
                }
                let id = deliveries.len().to_string();
                origin.insert(id.clone(), message.message_id.clone());
                deliveries.push(NewDelivery {
                    id,
                    endpoint: webhook.name.clone(),
                    body: message.body.clone(),
                });
            }
            tracing::debug!(event_id = %event.id, event_type = %event.detail_type, "fanned out");
        }
        if deliveries.is_empty() {
            return;
        }
        let failed = self.queue.send(&deliveries).await;
        report.enqueued += (deliveries.len() - failed.len()) as u64;
        let mut failed_events: Vec<String> = failed.iter().filter_map(|id| origin.get(id).cloned()).collect();
        failed_events.sort();
        failed_events.dedup();
        if !failed_events.is_empty() {
            tracing::warn!(
                events = failed_events.len(),
                "some deliveries could not be enqueued; their events will be fanned out again"
            );
        }
        report.failed.extend(failed_events);
    }

    /// Sends the deliveries at once (each with its own timeout), then
    /// postpones the failed ones by their backoff.
    async fn deliver_all(self: &Arc<Self>, deliveries: Vec<Received>, report: &mut BatchReport) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut ids = std::collections::HashMap::new();
        for message in deliveries {
            let service = Arc::clone(self);
            let message_id = message.message_id.clone();
            let task = tasks.spawn(async move {
                let sent = service.deliver_one(&message).await;
                (message, sent)
            });
            ids.insert(task.id(), message_id);
        }
        let mut postpone = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (message, sent) = match joined {
                Ok(done) => done,
                Err(e) => {
                    // Not acknowledged: it comes back after the queue's visibility timeout.
                    tracing::error!(error = %e, "a delivery task panicked");
                    report.failed.extend(ids.get(&e.id()).cloned());
                    continue;
                }
            };
            match sent {
                Sent::Delivered => report.delivered += 1,
                Sent::Dropped => report.dropped += 1,
                Sent::Malformed => {
                    report.malformed += 1;
                    report.failed.push(message.message_id);
                }
                Sent::Failed => {
                    let delay = if self.schedule.is_last(message.receive_count) {
                        report.dead_lettered += 1;
                        self.schedule.after_last(message.receive_count)
                    } else {
                        report.retrying += 1;
                        self.schedule.jittered(message.receive_count)
                    };
                    postpone.push(Postpone {
                        id: message.message_id.clone(),
                        receipt_handle: message.receipt_handle.clone(),
                        delay,
                    });
                    report.failed.push(message.message_id);
                }
            }
        }
        if !postpone.is_empty() {
            let unchanged = self.queue.postpone(&postpone).await;
            if !unchanged.is_empty() {
                tracing::warn!(
                    deliveries = unchanged.len(),
                    "backoff not set; these come back after the queue's visibility timeout"
                );
            }
        }
    }

    async fn deliver_one(&self, message: &Received) -> Sent {
        let name = message.endpoint.as_deref().unwrap_or_default();
        let Some(endpoint) = self.endpoints.get(name) else {
            tracing::warn!(endpoint = %name, message_id = %message.message_id, "no such webhook endpoint (removed from the configuration?); dropped");
            return Sent::Dropped;
        };
        let Some(event) = Event::parse(&message.body) else {
            tracing::error!(endpoint = %name, message_id = %message.message_id, "a delivery without an oauth-sync event; left for the dead-letter queue");
            return Sent::Malformed;
        };
        let webhook_id = sign::webhook_id(&event.id, name);
        let attempt = message.receive_count;
        let secret = match endpoint
            .secret
            .get_or_try_init(|| deliver::signing_secret(&self.secrets, &endpoint.webhook.signing_secret))
            .await
        {
            Ok(secret) => secret,
            Err(e) => {
                tracing::error!(endpoint = %name, %webhook_id, attempt, error = %crate::telemetry::error_chain(&e), "webhook not sent");
                return Sent::Failed;
            }
        };
        let timestamp = crate::connection::now_ms() / 1000;
        match deliver::send(&self.http, &endpoint.webhook, secret, &webhook_id, timestamp, &event).await {
            Ok(status) => {
                tracing::info!(endpoint = %name, %webhook_id, event_type = %event.detail_type, attempt, status, "webhook delivered");
                Sent::Delivered
            }
            Err(e) => {
                let last = self.schedule.is_last(attempt);
                if last {
                    tracing::error!(endpoint = %name, %webhook_id, event_type = %event.detail_type, attempt, error = %crate::telemetry::error_chain(&e), "webhook failed its last attempt; it goes to the dead-letter queue");
                } else {
                    tracing::warn!(endpoint = %name, %webhook_id, event_type = %event.detail_type, attempt, error = %crate::telemetry::error_chain(&e), "webhook failed; retried after its backoff");
                }
                Sent::Failed
            }
        }
    }
}
