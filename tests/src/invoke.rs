//! One invocation of a real function binary, made the way Lambda makes it:
//! the binary is spawned against a Lambda runtime API served here on
//! loopback, handed one event, and its answer awaited; the process's peak
//! resident memory (`VmHWM`) is read at the answer. Used by the cold-start
//! and peak-memory drivers (`coldstart`, `peak-memory`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::serve::serve;
use crate::stack::RefreshFixture;

/// What the function said about its one event.
#[derive(Debug)]
enum Outcome {
    Response(Bytes),
    Error(String),
}

/// One start's runtime API: serves `event` once, then holds `next` open the
/// way Lambda does between invocations.
struct RuntimeApi {
    event: Mutex<Option<Value>>,
    answer: Mutex<Option<oneshot::Sender<Outcome>>>,
    /// The invocation's time limit, sent as its deadline.
    timeout: Duration,
}

async fn runtime_api(State(api): State<Arc<RuntimeApi>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path();
    if method == Method::GET && path == "/2018-06-01/runtime/invocation/next" {
        let event = api.event.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(event) = event else {
            // The next invocation never comes; the process is stopped.
            std::future::pending::<()>().await;
            unreachable!();
        };
        let mut headers = HeaderMap::new();
        let timeout_ms = i64::try_from(api.timeout.as_millis()).unwrap_or(i64::MAX);
        let deadline = shared::connection::now_ms().saturating_add(timeout_ms);
        for (name, value) in [
            ("lambda-runtime-aws-request-id", "invoke-1".to_owned()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:eu-west-1:123456789012:function:invoke".to_owned(),
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000".to_owned(),
            ),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        return (StatusCode::OK, headers, event.to_string()).into_response();
    }
    let outcome = if path.ends_with("/response") {
        Outcome::Response(body)
    } else {
        Outcome::Error(String::from_utf8_lossy(&body).into_owned())
    };
    if let Some(answer) = api.answer.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = answer.send(outcome);
    }
    StatusCode::ACCEPTED.into_response()
}

/// One invocation's figures and answer.
#[derive(Debug)]
pub struct Invocation {
    /// From the spawn to the function's answer.
    pub took: Duration,
    /// `VmHWM` of the function's process at its answer, in KiB.
    pub peak_rss_kib: u64,
    /// The function's answer (its JSON).
    pub body: Bytes,
}

/// Spawns `binary` with `env`, hands it `event` with `timeout` to its
/// deadline, and waits that long for the answer; the process is stopped
/// after it. Its stdout and stderr go to `log`. An error answer is an error.
pub async fn invoke_once(
    binary: &Path,
    env: &[(String, String)],
    event: Value,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Invocation> {
    let (answer, answered) = oneshot::channel();
    let api = Arc::new(RuntimeApi {
        event: Mutex::new(Some(event)),
        answer: Mutex::new(Some(answer)),
        timeout,
    });
    let router = Router::new().fallback(runtime_api).with_state(api);
    let server = serve(router, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), || true).await?;
    let log_file = std::fs::File::create(log)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", server.addr.to_string())
        // Lambda sets no SSL_CERT_DIR; with it (as on some build machines)
        // every TLS client scans the whole directory at start-up.
        .env_remove("SSL_CERT_DIR")
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let outcome = tokio::time::timeout(timeout, answered).await;
    let took = started.elapsed();
    let peak_rss_kib = child.id().map_or(0, peak_rss_kib);
    let _ = child.kill().await;
    match outcome {
        Ok(Ok(Outcome::Response(body))) => Ok(Invocation {
            took,
            peak_rss_kib,
            body,
        }),
        Ok(Ok(Outcome::Error(error))) => bail!(
            "{} answered an error: {error} (log: {})",
            binary.display(),
            log.display()
        ),
        _ => bail!(
            "{} did not answer within {} s (log: {})",
            binary.display(),
            timeout.as_secs(),
            log.display()
        ),
    }
}

/// `VmHWM` of a live process, in KiB (0 when unreadable).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The environment infra/template.yaml gives `function`, on `fixture`'s
/// tables, with its configuration in the file `config` (its secrets are in
/// the stack's Secrets Manager) and `rust_log` as its log filter.
pub fn function_env(fixture: &RefreshFixture, config: &Path, function: &str, rust_log: &str) -> Vec<(String, String)> {
    use shared::runtime::{
        CONNECTIONS_TABLE_ENV, LOGIN_ATTEMPTS_TABLE_ENV, RECORDS_TABLE_ENV, SYNC_RUNS_TABLE_ENV, SYNC_STATE_TABLE_ENV,
    };
    let tables = &fixture.tables;
    [
        (shared::config::CONFIG_ENV, config.display().to_string()),
        (CONNECTIONS_TABLE_ENV, tables["ConnectionsTable"].clone()),
        (LOGIN_ATTEMPTS_TABLE_ENV, tables["LoginAttemptsTable"].clone()),
        (SYNC_STATE_TABLE_ENV, tables["SyncStateTable"].clone()),
        (SYNC_RUNS_TABLE_ENV, tables["SyncRunsTable"].clone()),
        (RECORDS_TABLE_ENV, tables["RecordsTable"].clone()),
        ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{function}")),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "invoke".to_owned()),
        ("RUST_LOG", rust_log.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
