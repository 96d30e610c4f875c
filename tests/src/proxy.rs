//! A fault-injecting HTTP proxy in front of DynamoDB Local, for the
//! DynamoDB faults of the refresh protocol: a write that lands but whose
//! response is lost, a DynamoDB that refuses connections for a while, one
//! that answers 503 without doing anything, and one whose clock (its `Date`
//! header) is far from ours.
//!
//! Requests are matched by a marker in their body (the commit's UpdateItem is
//! the only request carrying `commit_id`).
//!
//! It also records every call it forwards (operation, table, index, secret),
//! so a test can compare what a function's code calls with what its IAM
//! policy allows. It forwards any AWS JSON protocol, Secrets Manager's and
//! EventBridge's too.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};

use crate::serve::{Kill, Server, serve};

/// What goes wrong, once armed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyFault {
    /// Forward the next request whose body contains `marker`, then close the
    /// connection without returning DynamoDB's answer.
    LoseResponse { marker: String },
    /// From the next request whose body contains `marker` on, refuse every
    /// connection and request (unforwarded) for `duration`.
    RefuseFor { marker: String, duration: Duration },
    /// Answer the next `times` requests whose body contains `marker` with
    /// HTTP 503 (unforwarded), the way DynamoDB says it is briefly unavailable.
    Unavailable { marker: String, times: u32 },
    /// Forward the next request whose body contains `marker` and hold
    /// DynamoDB's answer back for `delay`: a write that lands at once and is
    /// heard of late, as under a loaded table.
    SlowAnswer { marker: String, delay: Duration },
}

#[derive(Debug)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    fault: Mutex<Option<ProxyFault>>,
    refusing_until: Mutex<Option<Instant>>,
    /// Seconds added to the `Date` of every answer.
    date_shift: Mutex<Option<i64>>,
    /// Requests forwarded whose answer was thrown away.
    lost_responses: AtomicU64,
    /// Connections and requests refused.
    refused: AtomicU64,
    /// Requests answered 503.
    unavailable: AtomicU64,
    /// Every call forwarded, in order.
    calls: Mutex<Vec<AwsCall>>,
}

/// One AWS call seen by the proxy: the IAM action it needs and what it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AwsCall {
    /// `dynamodb:GetItem`, `secretsmanager:GetSecretValue`…
    pub action: String,
    /// The tables (a batch names several) or the secret.
    pub resources: Vec<String>,
    /// `IndexName` of a Query.
    pub index: Option<String>,
}

impl AwsCall {
    /// Reads the call from an AWS JSON-protocol request: `X-Amz-Target` and the body.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Option<AwsCall> {
        let target = headers.get("x-amz-target")?.to_str().ok()?;
        let (service, operation) = target.split_once('.')?;
        let prefix = if service.starts_with("DynamoDB") {
            "dynamodb"
        } else if service == "AWSEvents" {
            "events"
        } else {
            service
        };
        // SQS (the webhooks' queues) speaks AWS JSON too; it authorizes a
        // batch call by its single-message action.
        let (prefix, operation) = match service {
            "AmazonSQS" => ("sqs", operation.strip_suffix("Batch").unwrap_or(operation)),
            _ => (prefix, operation),
        };
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |key: &str| json.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
        let mut resources: Vec<String> = text("TableName")
            .or_else(|| text("SecretId"))
            .or_else(|| text("QueueUrl"))
            .into_iter()
            .collect();
        if let Some(items) = json.get("RequestItems").and_then(serde_json::Value::as_object) {
            resources.extend(items.keys().cloned());
        }
        // PutEvents: the buses its entries name.
        for entry in json
            .get("Entries")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(bus) = entry.get("EventBusName").and_then(serde_json::Value::as_str)
                && !resources.iter().any(|r| r == bus)
            {
                resources.push(bus.to_owned());
            }
        }
        Some(AwsCall {
            action: format!("{prefix}:{operation}"),
            resources,
            index: text("IndexName"),
        })
    }
}

impl ProxyState {
    fn refusing(&self) -> bool {
        self.refusing_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }
}

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct DynamoProxy {
    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub url: String,
    state: Arc<ProxyState>,
    _server: Server,
}

impl DynamoProxy {
    /// Starts a proxy to `upstream` (DynamoDB Local's URL) on a free loopback port.
    pub async fn start(upstream: &str) -> std::io::Result<DynamoProxy> {
        shared::http::install_crypto_provider();
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(std::io::Error::other)?,
            fault: Mutex::new(None),
            refusing_until: Mutex::new(None),
            date_shift: Mutex::new(None),
            lost_responses: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
        });
        let router = Router::new().fallback(forward).with_state(state.clone());
        let gate = state.clone();
        let server = serve(router, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), move || {
            let refuse = gate.refusing();
            if refuse {
                gate.refused.fetch_add(1, Ordering::Relaxed);
            }
            !refuse
        })
        .await?;
        Ok(DynamoProxy {
            url: format!("http://{}", server.addr),
            state,
            _server: server,
        })
    }

    pub fn arm(&self, fault: ProxyFault) {
        *self.state.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault);
    }

    /// From now on, every answer's `Date` is `secs` later than DynamoDB's.
    pub fn shift_date(&self, secs: i64) {
        *self.state.date_shift.lock().unwrap_or_else(|p| p.into_inner()) = Some(secs);
    }

    /// Is it refusing connections right now (a `RefuseFor` in force)?
    pub fn refusing(&self) -> bool {
        self.state.refusing()
    }

    pub fn lost_responses(&self) -> u64 {
        self.state.lost_responses.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    pub fn unavailable(&self) -> u64 {
        self.state.unavailable.load(Ordering::Relaxed)
    }

    /// Every call forwarded so far.
    pub fn calls(&self) -> Vec<AwsCall> {
        self.state.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    Extension(kill): Extension<Kill>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state.refusing() {
        state.refused.fetch_add(1, Ordering::Relaxed);
        kill.drop_connection().await;
    }
    let text = String::from_utf8_lossy(&body);
    let triggered = {
        let mut fault = state.fault.lock().unwrap_or_else(|p| p.into_inner());
        let hit = match fault.as_ref() {
            Some(
                ProxyFault::LoseResponse { marker }
                | ProxyFault::RefuseFor { marker, .. }
                | ProxyFault::Unavailable { marker, .. }
                | ProxyFault::SlowAnswer { marker, .. },
            ) => text.contains(marker.as_str()),
            None => false,
        };
        match fault.as_mut() {
            Some(ProxyFault::Unavailable { times, .. }) if hit && *times > 1 => {
                *times -= 1;
                fault.clone()
            }
            _ if hit => fault.take(),
            _ => None,
        }
    };
    if matches!(triggered, Some(ProxyFault::Unavailable { .. })) {
        state.unavailable.fetch_add(1, Ordering::Relaxed);
        let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ServiceUnavailable","message":"Service unavailable (injected)"}"#;
        let mut out = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        out.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        return out;
    }
    if let Some(ProxyFault::RefuseFor { duration, .. }) = &triggered {
        *state.refusing_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + *duration);
        state.refused.fetch_add(1, Ordering::Relaxed);
        kill.drop_connection().await;
    }
    if let Some(call) = AwsCall::parse(&headers, &body) {
        state.calls.lock().unwrap_or_else(|p| p.into_inner()).push(call);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = state
        .http
        .request(method, format!("{}{path}", state.upstream))
        .body(body.clone());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    if matches!(triggered, Some(ProxyFault::LoseResponse { .. })) {
        // DynamoDB applied the write; its caller never hears.
        state.lost_responses.fetch_add(1, Ordering::Relaxed);
        kill.drop_connection().await;
    }
    if let Some(ProxyFault::SlowAnswer { delay, .. }) = &triggered {
        tokio::time::sleep(*delay).await;
    }
    let mut out = (status, body).into_response();
    for (name, value) in &headers {
        if name != "transfer-encoding" && name != "connection" && name != "content-length" {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let shift = *state.date_shift.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(secs) = shift {
        let shifted = std::time::SystemTime::now()
            .checked_add(Duration::from_secs(secs.unsigned_abs()))
            .filter(|_| secs >= 0)
            .or_else(|| std::time::SystemTime::now().checked_sub(Duration::from_secs(secs.unsigned_abs())));
        if let Some(date) = shifted
            .map(aws_sdk_dynamodb::primitives::DateTime::from)
            .and_then(|t| t.fmt(aws_sdk_dynamodb::primitives::DateTimeFormat::HttpDate).ok())
            .and_then(|t| axum::http::HeaderValue::from_str(&t).ok())
        {
            out.headers_mut().insert(axum::http::header::DATE, date);
        }
    }
    out
}
