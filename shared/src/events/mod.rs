//! Events on the stack's EventBridge bus (`source = "oauth-sync"`): what
//! happened to a connection, a sync run and a record, for the operator's
//! application (docs/events.md; one JSON Schema per type in docs/events/).
//!
//! The facts are published where they are decided, once: the token service
//! (connected, refresh failed, needs a new login, revoked), the sync engine
//! (a run finished or failed, a job parked) and the `record-events` function
//! (the records table's stream). An [`EventSink`] is built once per process
//! from `OAUTH_SYNC_EVENT_BUS`; without it events are off.
//!
//! Publishing never fails what it reports on: every `PutEvents` call has a
//! timeout and a bounded, jittered retry of the entries EventBridge refused
//! (`FailedEntryCount`); what still fails is logged and counted in the EMF
//! metric `EventsFailed` (dimension `Function=events`, written in Lambda). Details are typed
//! structs without a token, code or client secret in them.

pub mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

/// Every event's `source`.
pub const SOURCE: &str = "oauth-sync";
/// The environment variable naming the bus (set by infra/template.yaml);
/// unset or empty: no events.
pub const EVENT_BUS_ENV: &str = "OAUTH_SYNC_EVENT_BUS";
/// EventBridge's limit for one entry, and for one `PutEvents` request.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Entries per `PutEvents` request, at most.
const MAX_BATCH: usize = 10;
/// The EMF metric counting events that could not be published.
pub const EVENTS_FAILED_METRIC: &str = "EventsFailed";

/// `connection.connected`: a login stored its tokens (a new connection, or
/// one back from `needs_reauth`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Connected {
    pub connection: String,
    pub provider: String,
    /// `per_user` or `shared`.
    pub kind: String,
    pub token_version: u64,
    /// The scopes the provider granted.
    pub scopes: Vec<String>,
}

/// `connection.refresh_failed`: a refresh did not happen; the connection
/// backs off and is tried again at `next_attempt_at`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefreshFailed {
    pub connection: String,
    pub provider: String,
    pub token_version: u64,
    /// Failures in a row, this one included.
    pub failures: u32,
    pub cause: String,
    /// RFC 3339.
    pub next_attempt_at: String,
}

/// `connection.needs_reauth`: the refresh token is dead; a new login
/// through a new connect link brings the connection back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeedsReauth {
    pub connection: String,
    pub provider: String,
    pub token_version: u64,
    /// `dead_refresh_token`, `refresh_outcome_unknown`, `token_too_large`, `no_refresh_token`.
    pub reason: String,
    /// What the provider said (with its HTTP status and error code).
    pub provider_message: String,
}

/// `connection.revoked`: disconnected; its tokens are erased.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revoked {
    pub connection: String,
    pub provider: String,
    /// The provider's RFC 7009 endpoint confirmed the revocation.
    pub at_provider: bool,
}

/// A run's counts, as events carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub pages: u64,
    pub fetched: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub rejected: u64,
    pub requests: u64,
    pub throttled: u64,
}

/// `sync.run.finished` and `sync.run.failed`: a run ended (a run that
/// yields at a deadline goes on in the next invocation and ends later).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEnded {
    pub connection: String,
    pub sync: String,
    /// `{connection}#{sync}`.
    pub job: String,
    pub run_id: String,
    /// RFC 3339.
    pub started_at: String,
    pub finished_at: String,
    pub counts: Counts,
    /// Why it failed (`sync.run.failed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the job runs next (RFC 3339; after a failure, backed off).
    pub next_run_at: String,
}

/// `sync.job.parked`: the job is out of the schedule until a new login.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobParked {
    pub connection: String,
    pub sync: String,
    pub job: String,
    pub reason: String,
}

/// `record.inserted`, `record.updated`, `record.deleted`: one change of the
/// records table, from its stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordChanged {
    pub connection: String,
    pub sync: String,
    pub record_id: String,
    /// The record as stored now (for a deletion: as it was when deleted).
    /// Absent when `truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Value>,
    /// `record.updated`: the record before, when both fit in one event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_record: Option<Value>,
    /// The record did not fit in an event (256 KB): read it through the API.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// RFC 3339: when the sync stored the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
}

/// One event: its detail type and detail.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected(Connected),
    RefreshFailed(RefreshFailed),
    NeedsReauth(NeedsReauth),
    Revoked(Revoked),
    RunFinished(RunEnded),
    RunFailed(RunEnded),
    JobParked(JobParked),
    RecordInserted(RecordChanged),
    RecordUpdated(RecordChanged),
    RecordDeleted(RecordChanged),
}

/// Every detail type, in the order docs/events.md lists them: the list an
/// `[webhooks.NAME]` endpoint is checked against, kept once.
pub const DETAIL_TYPES: [&str; 10] = crate::config::EVENT_TYPES;

impl Event {
    /// The event's `detail-type`.
    pub fn detail_type(&self) -> &'static str {
        let index = match self {
            Event::Connected(_) => 0,
            Event::RefreshFailed(_) => 1,
            Event::NeedsReauth(_) => 2,
            Event::Revoked(_) => 3,
            Event::RunFinished(_) => 4,
            Event::RunFailed(_) => 5,
            Event::JobParked(_) => 6,
            Event::RecordInserted(_) => 7,
            Event::RecordUpdated(_) => 8,
            Event::RecordDeleted(_) => 9,
        };
        DETAIL_TYPES[index]
    }

    /// The event's `detail`, as JSON.
    pub fn detail(&self) -> Value {
        let value = match self {
            Event::Connected(d) => serde_json::to_value(d),
            Event::RefreshFailed(d) => serde_json::to_value(d),
            Event::NeedsReauth(d) => serde_json::to_value(d),
            Event::Revoked(d) => serde_json::to_value(d),
            Event::RunFinished(d) | Event::RunFailed(d) => serde_json::to_value(d),
            Event::JobParked(d) => serde_json::to_value(d),
            Event::RecordInserted(d) | Event::RecordUpdated(d) | Event::RecordDeleted(d) => serde_json::to_value(d),
        };
        // Plain structs of strings, numbers and JSON values: serializing cannot fail.
        value.unwrap_or(Value::Null)
    }

    /// The connection it is about.
    pub fn connection(&self) -> &str {
        match self {
            Event::Connected(d) => &d.connection,
            Event::RefreshFailed(d) => &d.connection,
            Event::NeedsReauth(d) => &d.connection,
            Event::Revoked(d) => &d.connection,
            Event::RunFinished(d) | Event::RunFailed(d) => &d.connection,
            Event::JobParked(d) => &d.connection,
            Event::RecordInserted(d) | Event::RecordUpdated(d) | Event::RecordDeleted(d) => &d.connection,
        }
    }
}

/// The size EventBridge counts for an entry: source, detail type and detail
/// (plus 14 bytes of time). `detail` is the JSON text sent.
pub fn entry_size(detail_type: &str, detail: &str) -> usize {
    14 + SOURCE.len() + detail_type.len() + detail.len()
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds: `2026-12-06T10:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (year, month, day) = crate::when::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3_600,
        s % 3_600 / 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// Timing of a publication.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// One `PutEvents` call's timeout.
    pub attempt_timeout: Duration,
    /// Calls per batch, the first included, while entries keep failing.
    pub attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for PublishSettings {
    fn default() -> Self {
        PublishSettings {
            attempt_timeout: Duration::from_secs(2),
            attempts: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the event is {bytes} bytes; EventBridge takes at most {MAX_ENTRY_BYTES}")]
    TooLarge { bytes: usize },
    #[error("EventBridge refused the entry: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("PutEvents failed: {0}")]
    Call(String),
    #[error("PutEvents did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where events go: the stack's bus, or nowhere. Cheap to clone; build it
/// once per process.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    inner: Option<Arc<Publisher>>,
}

#[derive(Debug)]
struct Publisher {
    client: aws_sdk_eventbridge::Client,
    bus: String,
    settings: PublishSettings,
    /// Events given up on since the process started.
    failed: AtomicU64,
}

impl EventSink {
    /// No events.
    pub fn off() -> EventSink {
        EventSink::default()
    }

    /// Events on `bus`. The client's own retries are off: [`PublishSettings`]
    /// bound the calls, and only refused entries are sent again.
    pub fn new(sdk: &aws_types::SdkConfig, bus: impl Into<String>, settings: PublishSettings) -> EventSink {
        EventSink::with_config(aws_sdk_eventbridge::config::Builder::from(sdk), bus, settings)
    }

    /// Events on `bus` through a client built from `config` (another
    /// endpoint, for tests), its retries off as in [`EventSink::new`].
    pub fn with_config(
        config: aws_sdk_eventbridge::config::Builder,
        bus: impl Into<String>,
        settings: PublishSettings,
    ) -> EventSink {
        let config = config
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build();
        EventSink {
            inner: Some(Arc::new(Publisher {
                client: aws_sdk_eventbridge::Client::from_conf(config),
                bus: bus.into(),
                settings,
                failed: AtomicU64::new(0),
            })),
        }
    }

    /// Events on the bus named by `OAUTH_SYNC_EVENT_BUS`, or off (said once, here).
    pub fn from_env(sdk: &aws_types::SdkConfig) -> EventSink {
        match std::env::var(EVENT_BUS_ENV) {
            Ok(bus) if !bus.trim().is_empty() => {
                info!(bus = %bus, "events go to the EventBridge bus");
                EventSink::new(sdk, bus.trim(), PublishSettings::default())
            }
            _ => {
                info!("{EVENT_BUS_ENV} is not set: no events are published");
                EventSink::off()
            }
        }
    }

    /// The bus, when events are on.
    pub fn bus(&self) -> Option<&str> {
        self.inner.as_deref().map(|p| p.bus.as_str())
    }

    /// Events given up on since the process started.
    pub fn failed(&self) -> u64 {
        self.inner.as_deref().map_or(0, |p| p.failed.load(Ordering::Relaxed))
    }

    /// Publishes one event. Never fails: a failure is logged and counted
    /// (`EventsFailed`), and what it reports on goes on.
    pub async fn publish(&self, event: Event) {
        if self.inner.is_none() {
            return;
        }
        self.publish_all(vec![event]).await;
    }

    /// Publishes events; each failure is logged and counted.
    pub async fn publish_all(&self, events: Vec<Event>) {
        let results = self.put(&events).await;
        for (event, result) in events.iter().zip(results) {
            if let Err(e) = result {
                warn!(detail_type = event.detail_type(), connection = event.connection(), error = %e, "an event could not be published");
            }
        }
    }

    /// Puts the events on the bus, in batches, with a bounded retry of the
    /// entries refused; one result per event, in order. Failures are counted
    /// (`EventsFailed`); with events off every result is `Ok`.
    pub async fn put(&self, events: &[Event]) -> Vec<Result<(), PublishError>> {
        let Some(publisher) = self.inner.as_deref() else {
            return events.iter().map(|_| Ok(())).collect();
        };
        let details: Vec<String> = events.iter().map(|e| e.detail().to_string()).collect();
        let mut results: Vec<Result<(), PublishError>> = vec![Ok(()); events.len()];
        let mut batch: Vec<usize> = Vec::new();
        let mut batch_bytes = 0;
        for (i, event) in events.iter().enumerate() {
            let bytes = entry_size(event.detail_type(), &details[i]);
            if bytes > MAX_ENTRY_BYTES {
                results[i] = Err(PublishError::TooLarge { bytes });
                continue;
            }
            if batch.len() == MAX_BATCH || batch_bytes + bytes > MAX_ENTRY_BYTES {
                publisher
                    .put_batch(events, &details, &std::mem::take(&mut batch), &mut results)
                    .await;
                batch_bytes = 0;
            }
            batch.push(i);
            batch_bytes += bytes;
        }
        if !batch.is_empty() {
            publisher.put_batch(events, &details, &batch, &mut results).await;
        }
        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
        if failed > 0 {
            publisher.failed.fetch_add(failed, Ordering::Relaxed);
            // In Lambda only: the CLI's stdout is its output, not a log.
            if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
                crate::metrics::Metrics::new("events")
                    .count(EVENTS_FAILED_METRIC, failed)
                    .emit();
            }
        }
        results
    }
}

impl Publisher {
    /// One batch (at most 10 entries, 256 KB), sent until every entry is
    /// accepted or the attempts are spent; refused entries alone go again.
    async fn put_batch(
        &self,
        events: &[Event],
        details: &[String],
        batch: &[usize],
        results: &mut [Result<(), PublishError>],
    ) {
        let mut pending: Vec<usize> = batch.to_vec();
        for attempt in 1..=self.settings.attempts.max(1) {
            if attempt > 1 {
                tokio::time::sleep(crate::backoff::exponential(
                    self.settings.base_backoff,
                    self.settings.max_backoff,
                    attempt - 1,
                ))
                .await;
            }
            let entries = pending.iter().map(|&i| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(SOURCE)
                    .detail_type(events[i].detail_type())
                    .detail(&details[i])
                    .build()
            });
            let call = self.client.put_events().set_entries(Some(entries.collect())).send();
            let answer = match tokio::time::timeout(self.settings.attempt_timeout, call).await {
                Err(_) => Err(PublishError::Timeout(self.settings.attempt_timeout)),
                Ok(Err(e)) => Err(PublishError::Call(crate::telemetry::error_chain(
                    &aws_sdk_eventbridge::Error::from(e),
                ))),
                Ok(Ok(answer)) => Ok(answer),
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    for &i in &pending {
                        results[i] = Err(e.clone());
                    }
                    continue;
                }
            };
            // One result entry per request entry, in order: an `error_code` marks a refusal.
            let mut refused = Vec::new();
            for (n, &i) in pending.iter().enumerate() {
                match answer.entries().get(n) {
                    Some(entry) if entry.error_code().is_some() => {
                        results[i] = Err(PublishError::Refused {
                            code: entry.error_code().unwrap_or_default().to_owned(),
                            message: entry.error_message().unwrap_or_default().to_owned(),
                        });
                        refused.push(i);
                    }
                    Some(_) => results[i] = Ok(()),
                    // An answer shorter than the request: count the missing as refused.
                    None if answer.failed_entry_count() > 0 => {
                        results[i] = Err(PublishError::Refused {
                            code: "Missing".to_owned(),
                            message: "no result entry".to_owned(),
                        });
                        refused.push(i);
                    }
                    None => results[i] = Ok(()),
                }
            }
            if refused.is_empty() {
                return;
            }
            pending = refused;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_126_400_123), "2026-12-01T12:00:00.123Z");
    }

    #[test]
    fn each_event_has_its_detail_type_and_a_plain_detail() {
        let counts = Counts {
            inserted: 3,
            ..Counts::default()
        };
        let run = RunEnded {
            connection: "c1".into(),
            sync: "projects".into(),
            job: "c1#projects".into(),
            run_id: "r1".into(),
            started_at: rfc3339(0),
            finished_at: rfc3339(1_000),
            counts,
            error: None,
            next_run_at: rfc3339(2_000),
        };
        let finished = Event::RunFinished(run.clone());
        assert_eq!(finished.detail_type(), "sync.run.finished");
        assert_eq!(finished.detail()["counts"]["inserted"], 3);
        assert!(finished.detail().get("error").is_none(), "no error on a finished run");
        let failed = Event::RunFailed(RunEnded {
            error: Some("HTTP 500".into()),
            ..run
        });
        assert_eq!(failed.detail_type(), "sync.run.failed");
        assert_eq!(failed.detail()["error"], "HTTP 500");
        let record = Event::RecordUpdated(RecordChanged {
            connection: "c1".into(),
            sync: "projects".into(),
            record_id: "42".into(),
            record: None,
            old_record: None,
            truncated: true,
            changed_at: None,
        });
        assert_eq!(record.detail_type(), "record.updated");
        assert_eq!(
            record.detail(),
            serde_json::json!({"connection": "c1", "sync": "projects", "record_id": "42", "truncated": true})
        );
    }

    #[tokio::test]
    async fn with_events_off_nothing_is_sent_and_nothing_fails() {
        let sink = EventSink::off();
        assert_eq!(sink.bus(), None);
        let event = Event::Revoked(Revoked {
            connection: "c1".into(),
            provider: "sim".into(),
            at_provider: true,
        });
        assert_eq!(sink.put(std::slice::from_ref(&event)).await, vec![Ok(())]);
        sink.publish(event).await;
        assert_eq!(sink.failed(), 0);
    }
}
