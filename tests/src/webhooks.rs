//! For the webhook tests: a receiver that verifies what it gets the way a
//! Standard Webhooks consumer does, the three queues of
//! infra/template.yaml in the stack's SQS (moto), and Lambda's SQS event
//! source mapping played by hand: receive a batch, hand it to the real
//! `webhooks` binary as an SQS event, delete what it did not report as failed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use shared::webhooks::sign::{SigningSecret, VerifyError, verify};

use crate::serve::{Server, serve};

/// How the receiver answers verified deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 204 to every verified delivery.
    Accept,
    /// 500 to the first `n` verified deliveries, 204 after.
    FailFirst(usize),
    /// 503 to every one.
    AlwaysFail,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// The Standard Webhooks verification (timestamp within 5 minutes, a
    /// `v1` signature matching the body).
    pub verified: Result<(), VerifyError>,
    pub answered: u16,
}

impl Attempt {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

struct ReceiverState {
    secret: SigningSecret,
    behaviour: Behaviour,
    attempts: Mutex<Vec<Attempt>>,
}

/// A webhook endpoint on a free loopback port; dropping it stops it.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hooks`.
    pub url: String,
    state: Arc<ReceiverState>,
    _server: Server,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The receiver's tolerance for `webhook-timestamp`, as the reference libraries.
pub const TOLERANCE_SECS: i64 = 300;

async fn verify_and_answer(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let now = shared::connection::now_ms() / 1000;
    let verified = verify(&state.secret, &id, &timestamp, &signature, &body, now, TOLERANCE_SECS);
    let mut attempts = state.attempts.lock().unwrap_or_else(|p| p.into_inner());
    let verified_before = attempts.iter().filter(|a| a.verified.is_ok()).count();
    let answered = match (&verified, state.behaviour) {
        (Err(_), _) => StatusCode::UNAUTHORIZED,
        (Ok(()), Behaviour::Accept) => StatusCode::NO_CONTENT,
        (Ok(()), Behaviour::FailFirst(n)) if verified_before < n => StatusCode::INTERNAL_SERVER_ERROR,
        (Ok(()), Behaviour::FailFirst(_)) => StatusCode::NO_CONTENT,
        (Ok(()), Behaviour::AlwaysFail) => StatusCode::SERVICE_UNAVAILABLE,
    };
    attempts.push(Attempt {
        id,
        timestamp,
        signature,
        body: body.to_vec(),
        verified,
        answered: answered.as_u16(),
    });
    answered
}

impl Receiver {
    /// Starts a receiver that verifies with `secret` (`whsec_…`).
    pub async fn start(secret: &str, behaviour: Behaviour) -> anyhow::Result<Receiver> {
        Receiver::start_on(secret, behaviour, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    pub async fn start_on(secret: &str, behaviour: Behaviour, addr: SocketAddr) -> anyhow::Result<Receiver> {
        let state = Arc::new(ReceiverState {
            secret: SigningSecret::parse(secret)?,
            behaviour,
            attempts: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/hooks", axum::routing::post(verify_and_answer))
            .with_state(state.clone());
        let server = serve(router, addr, || true).await?;
        Ok(Receiver {
            url: format!("http://{}/hooks", server.addr),
            state,
            _server: server,
        })
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.state.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An `oauth-sync` EventBridge event as a rule with an SQS target delivers it.
pub fn event(id: &str, detail_type: &str, detail: Value) -> Value {
    json!({
        "version": "0", "id": id, "detail-type": detail_type, "source": "oauth-sync",
        "account": "123456789012", "time": "2026-12-06T10:00:00Z", "region": "eu-west-1",
        "resources": [], "detail": detail
    })
}

/// The events queue, the deliveries queue and their dead-letter queue, as
/// infra/template.yaml makes them, under a unique prefix.
#[derive(Debug, Clone)]
pub struct Queues {
    pub sqs: aws_sdk_sqs::Client,
    pub events: Queue,
    pub deliveries: Queue,
    pub dead_letters: Queue,
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub url: String,
    pub arn: String,
}

/// SQS from the standard environment (`AWS_ENDPOINT_URL_SQS`: the stack's moto).
pub async fn sqs() -> aws_sdk_sqs::Client {
    let value = std::env::var("AWS_ENDPOINT_URL_SQS").unwrap_or_default();
    assert!(
        value.starts_with("http://127.0.0.1:"),
        "AWS_ENDPOINT_URL_SQS is `{value}`: start the local stack (scripts/stack start) and source its env file"
    );
    aws_sdk_sqs::Client::new(&shared::aws::sdk_config_from_env())
}

impl Queues {
    /// `max_attempts`: the deliveries queue's `maxReceiveCount`.
    pub async fn create(test: &str, max_attempts: u32) -> anyhow::Result<Queues> {
        let sqs = sqs().await;
        let prefix = crate::stack::unique_prefix(test);
        let dead_letters = create_queue(&sqs, &format!("{prefix}dlq"), None).await?;
        let events = create_queue(&sqs, &format!("{prefix}events"), Some((&dead_letters.arn, 5))).await?;
        let deliveries = create_queue(
            &sqs,
            &format!("{prefix}deliveries"),
            Some((&dead_letters.arn, max_attempts)),
        )
        .await?;
        Ok(Queues {
            sqs,
            events,
            deliveries,
            dead_letters,
        })
    }

    /// Puts `event` on the events queue, as the bus's rule does.
    pub async fn put_event(&self, event: &Value) -> anyhow::Result<()> {
        self.sqs
            .send_message()
            .queue_url(&self.events.url)
            .message_body(event.to_string())
            .send()
            .await?;
        Ok(())
    }

    /// The bodies in the dead-letter queue (received, left there).
    pub async fn dead_lettered(&self) -> anyhow::Result<Vec<(Value, Option<String>)>> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(&self.dead_letters.url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .visibility_timeout(0)
            .send()
            .await?;
        Ok(output
            .messages()
            .iter()
            .map(|m| {
                let endpoint = m
                    .message_attributes()
                    .and_then(|a| a.get(shared::webhooks::queue::ENDPOINT_ATTRIBUTE))
                    .and_then(|a| a.string_value().map(str::to_owned));
                (
                    serde_json::from_str(m.body().unwrap_or_default()).unwrap_or(Value::Null),
                    endpoint,
                )
            })
            .collect())
    }
}

impl Queue {
    /// The queue at `url`, with its ARN.
    pub async fn at(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<Queue> {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .with_context(|| format!("GetQueueAttributes {url}"))?;
        let arn = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .context("no queue ARN")?
            .clone();
        Ok(Queue {
            url: url.to_owned(),
            arn,
        })
    }
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str, redrive: Option<(&str, u32)>) -> anyhow::Result<Queue> {
    let mut request = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, "360");
    if let Some((arn, max)) = redrive {
        request = request.attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string(),
        );
    }
    let url = request
        .send()
        .await
        .context("CreateQueue (moto)")?
        .queue_url()
        .context("no queue URL")?
        .to_owned();
    Queue::at(sqs, &url).await
}

/// How the function is invoked.
#[derive(Debug, Clone)]
pub enum Invoker {
    /// The real binary, started for each invocation against a Lambda runtime
    /// API served here ([`crate::invoke::invoke_once`]), with `env` added to
    /// this process's environment; its logs go to `logs`.
    Binary {
        path: PathBuf,
        env: Vec<(String, String)>,
        logs: PathBuf,
    },
    /// The function served by `cargo lambda watch` (`scripts/stack start --functions`) at `url`.
    Watch { url: String, http: reqwest::Client },
}

static INVOCATION: AtomicU64 = AtomicU64::new(0);

impl Invoker {
    /// Invokes the function with `event`; its answer.
    pub async fn invoke(&self, event: Value) -> anyhow::Result<Value> {
        match self {
            Invoker::Binary { path, env, logs } => {
                let n = INVOCATION.fetch_add(1, Ordering::Relaxed);
                let log = logs.join(format!("webhooks-{}-{n}.log", std::process::id()));
                let invocation = crate::invoke::invoke_once(path, env, event, &log, Duration::from_secs(60)).await?;
                Ok(serde_json::from_slice(&invocation.body)?)
            }
            Invoker::Watch { url, http } => {
                let answer = http
                    .post(format!("{url}/2015-03-31/functions/webhooks/invocations"))
                    .json(&event)
                    .send()
                    .await?;
                let status = answer.status();
                let body: Value = answer.json().await?;
                if !status.is_success() {
                    bail!("the webhooks function answered {status}: {body}");
                }
                Ok(body)
            }
        }
    }
}

/// What one round of the event source mapping did on a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub received: usize,
    pub failed: usize,
}

/// Lambda's SQS event source mapping, once: receives up to 10 messages
/// from `queue` (waiting up to a second), invokes the function with them as
/// an SQS event, and deletes those its answer does not list in
/// `batchItemFailures` (those stay invisible for what the function set, or
/// the queue's visibility timeout).
pub async fn poll_once(sqs: &aws_sdk_sqs::Client, queue: &Queue, invoker: &Invoker) -> anyhow::Result<Round> {
    let output = sqs
        .receive_message()
        .queue_url(&queue.url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .context("ReceiveMessage (moto)")?;
    let messages = output.messages();
    if messages.is_empty() {
        return Ok(Round::default());
    }
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                .collect();
            let message_attributes: serde_json::Map<String, Value> = m
                .message_attributes()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({
                            "stringValue": v.string_value(), "stringListValues": [], "binaryListValues": [],
                            "dataType": v.data_type()
                        }),
                    )
                })
                .collect();
            json!({
                "messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                "attributes": attributes, "messageAttributes": message_attributes,
                "md5OfBody": m.md5_of_body(), "eventSource": "aws:sqs", "eventSourceARN": queue.arn,
                "awsRegion": "eu-west-1"
            })
        })
        .collect();
    let answer = invoker.invoke(json!({ "Records": records })).await?;
    let failed: Vec<&str> = answer["batchItemFailures"]
        .as_array()
        .context("no batchItemFailures in the answer")?
        .iter()
        .filter_map(|f| f["itemIdentifier"].as_str())
        .collect();
    let done: Vec<DeleteMessageBatchRequestEntry> = messages
        .iter()
        .filter(|m| !failed.contains(&m.message_id().unwrap_or_default()))
        .enumerate()
        .filter_map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
                .ok()
        })
        .collect();
    if !done.is_empty() {
        sqs.delete_message_batch()
            .queue_url(&queue.url)
            .set_entries(Some(done))
            .send()
            .await
            .context("DeleteMessageBatch (moto)")?;
    }
    Ok(Round {
        received: messages.len(),
        failed: failed.len(),
    })
}

/// Plays the event source mappings of both queues until `done` holds,
/// for at most `rounds` rounds (each waits up to a second for messages).
pub async fn pump(
    queues: &Queues,
    invoker: &Invoker,
    rounds: usize,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    for _ in 0..rounds {
        poll_once(&queues.sqs, &queues.events, invoker).await?;
        poll_once(&queues.sqs, &queues.deliveries, invoker).await?;
        if done() {
            return Ok(());
        }
    }
    bail!("not done after {rounds} rounds")
}

/// Receives up to 10 messages from `queue` as the function would get them
/// (for tests that call the library directly).
pub async fn receive(sqs: &aws_sdk_sqs::Client, queue: &Queue) -> anyhow::Result<Vec<shared::webhooks::Received>> {
    let output = sqs
        .receive_message()
        .queue_url(&queue.url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_attribute_names("All")
        .send()
        .await
        .context("ReceiveMessage (moto)")?;
    Ok(output
        .messages()
        .iter()
        .map(|m| shared::webhooks::Received {
            message_id: m.message_id().unwrap_or_default().to_owned(),
            receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
            body: m.body().unwrap_or_default().to_owned(),
            endpoint: m
                .message_attributes()
                .and_then(|a| a.get(shared::webhooks::queue::ENDPOINT_ATTRIBUTE))
                .and_then(|a| a.string_value().map(str::to_owned)),
            receive_count: m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1),
        })
        .collect())
}
