//! Cold starts of the three function binaries, measured from outside: each
//! start spawns the binary against a Lambda runtime API served here on
//! loopback, hands it one event the way AWS would (an HTTP API v2 request
//! for `oauth-callback`, an EventBridge scheduled event for the others) and
//! takes the time from the spawn to the function's answer. The binaries run
//! against the local stack (DynamoDB Local, Secrets Manager on moto) with a
//! fixture's configuration, secrets and tables; nothing is due, so the
//! figure is the start-up plus one empty run.
//!
//! Also reported: each process's peak resident memory (`VmHWM`) at its
//! answer, and the binaries' sizes raw and zipped as deployed.
//!
//! usage: coldstart [BIN_DIR] (default `target/release`; build them with
//! `cargo build --release -p oauth-callback -p token-refresher -p sync`),
//! `COLDSTART_RUNS` starts per function (default 21). Run by `scripts/bench`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use oauth_sync_tests::functions::scheduled_event;
use oauth_sync_tests::serve::serve;
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::LoginFixture;
use serde_json::{Value, json};
use shared::config::PresetName;
use tokio::sync::oneshot;

const FUNCTIONS: [&str; 3] = ["oauth-callback", "token-refresher", "sync"];

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
        let deadline = shared::connection::now_ms() + 60_000;
        for (name, value) in [
            ("lambda-runtime-aws-request-id", "coldstart-1".to_owned()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:eu-west-1:123456789012:function:coldstart".to_owned(),
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

/// An HTTP API (payload 2.0) request for a connect link's confirmation page.
fn confirmation_event(query: &str) -> Value {
    let host = "abc123.execute-api.eu-west-1.amazonaws.com";
    json!({
        "version": "2.0", "routeKey": "GET /connect/{provider}", "rawPath": "/connect/sim",
        "rawQueryString": query,
        "headers": {"host": host, "user-agent": "coldstart", "accept": "text/html", "sec-fetch-site": "none",
                     "x-forwarded-proto": "https", "x-forwarded-for": "127.0.0.1"},
        "pathParameters": {"provider": "sim"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": host, "domainPrefix": "abc123",
            "http": {"method": "GET", "path": "/connect/sim", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                     "userAgent": "coldstart"},
            "requestId": "coldstart", "routeKey": "GET /connect/{provider}", "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 1_796_083_200_000_i64
        },
        "isBase64Encoded": false
    })
}

/// One start: spawn, hand over `event`, wait for the answer. Returns the
/// time to the answer, the peak RSS in KiB and the answer.
async fn start_once(
    binary: &Path,
    env: &[(String, String)],
    event: Value,
    log: &Path,
) -> anyhow::Result<(Duration, u64, Bytes)> {
    let (answer, answered) = oneshot::channel();
    let api = Arc::new(RuntimeApi {
        event: Mutex::new(Some(event)),
        answer: Mutex::new(Some(answer)),
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
    let outcome = tokio::time::timeout(Duration::from_secs(60), answered).await;
    let took = started.elapsed();
    let rss = child.id().map_or(0, peak_rss_kib);
    let _ = child.kill().await;
    match outcome {
        Ok(Ok(Outcome::Response(body))) => Ok((took, rss, body)),
        Ok(Ok(Outcome::Error(error))) => bail!(
            "{} answered an error: {error} (log: {})",
            binary.display(),
            log.display()
        ),
        _ => bail!(
            "{} did not answer within 60 s (log: {})",
            binary.display(),
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The zipped size of `binary` deployed as `bootstrap` (what `sam build` uploads).
fn zipped_size(binary: &Path, work: &Path) -> anyhow::Result<u64> {
    let dir = work.join("zip");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(binary, dir.join("bootstrap"))?;
    let zip = work.join("bootstrap.zip");
    let _ = std::fs::remove_file(&zip);
    let status = std::process::Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED, compresslevel=9); z.write(sys.argv[2], 'bootstrap'); z.close()"])
        .arg(&zip)
        .arg(dir.join("bootstrap"))
        .status()?;
    if !status.success() {
        bail!("zipping {} failed", binary.display());
    }
    Ok(std::fs::metadata(&zip)?.len())
}

fn say(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(out.flush()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let bin_dir = std::env::args()
        .nth(1)
        .map_or_else(|| root.join("target/release"), PathBuf::from);
    let runs: usize = std::env::var("COLDSTART_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let work = root.join("target/coldstart");
    std::fs::create_dir_all(&work)?;

    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "coldstart").await;
    let config = work.join("oauth-sync.toml");
    std::fs::write(&config, &login.config_text)?;
    let tables = &login.fixture.tables;
    let mut env: Vec<(String, String)> = vec![
        ("OAUTH_SYNC_CONFIG".into(), config.display().to_string()),
        (
            "OAUTH_SYNC_CONNECTIONS_TABLE".into(),
            login.fixture.connections_table().to_owned(),
        ),
        (
            "OAUTH_SYNC_LOGIN_ATTEMPTS_TABLE".into(),
            tables["LoginAttemptsTable"].clone(),
        ),
        ("OAUTH_SYNC_SYNC_STATE_TABLE".into(), tables["SyncStateTable"].clone()),
        ("OAUTH_SYNC_SYNC_RUNS_TABLE".into(), tables["SyncRunsTable"].clone()),
        ("OAUTH_SYNC_RECORDS_TABLE".into(), tables["RecordsTable"].clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "256".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME".into(), "/aws/lambda/coldstart".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME".into(), "coldstart".into()),
        (
            "RUST_LOG".into(),
            std::env::var("COLDSTART_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&login.link("coldstart-1"))
        .finish();

    say(&format!(
        "Cold starts: {runs} per function, binaries in {}, against the local stack\n",
        bin_dir.display()
    ))?;
    say("| function | median ms | min ms | max ms | peak RSS MiB (median) | raw MB | zipped MB |")?;
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for function in FUNCTIONS {
        let binary = bin_dir.join(function);
        if !binary.exists() {
            bail!(
                "{} is missing: build with `cargo build --release -p oauth-callback -p token-refresher -p sync`",
                binary.display()
            );
        }
        env.retain(|(k, _)| k != "AWS_LAMBDA_FUNCTION_NAME");
        env.push(("AWS_LAMBDA_FUNCTION_NAME".into(), function.into()));
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let event = match function {
                "oauth-callback" => confirmation_event(&query),
                _ => scheduled_event(),
            };
            let log = work.join(format!("{function}-{run}.log"));
            let (took, peak, body) = start_once(&binary, &env, event, &log).await?;
            if function == "oauth-callback" {
                let answer: Value = serde_json::from_slice(&body).context("the function's answer")?;
                if answer["statusCode"] != 200 {
                    bail!(
                        "the confirmation page answered {} (log: {})",
                        answer["statusCode"],
                        log.display()
                    );
                }
            }
            times.push(took.as_secs_f64() * 1000.0);
            rss.push(peak as f64 / 1024.0);
        }
        let raw = std::fs::metadata(&binary)?.len();
        let zipped = zipped_size(&binary, &work)?;
        let (min, max) = times
            .iter()
            .fold((f64::MAX, 0.0_f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
        say(&format!(
            "| {function} | {:.1} | {min:.1} | {max:.1} | {:.1} | {:.2} | {:.2} |",
            median(times),
            median(rss),
            raw as f64 / 1e6,
            zipped as f64 / 1e6
        ))?;
    }
    Ok(())
}
