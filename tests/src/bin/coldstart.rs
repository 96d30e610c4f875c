//! Cold starts of the six function binaries, measured from outside: each
//! start spawns the binary against a Lambda runtime API served on loopback
//! (`oauth_sync_tests::invoke`), hands it one event the way AWS would and
//! takes the time from the spawn to the function's answer. The events: a
//! connect link's confirmation page for `oauth-callback` (it reads the link
//! key and two DynamoDB items), `GET /connections` for `api`, an EventBridge
//! scheduled event for the refresher and the sync (nothing is due), and an
//! empty batch for `record-events` (a stream batch) and `webhooks` (an SQS
//! batch). The figure is the start-up plus that one invocation.
//!
//! The binaries run against the local stack's DynamoDB Local with a
//! fixture's configuration, secrets and tables. Their Secrets Manager is a
//! stand-in (`oauth_sync_tests::secrets_standin`) holding a copy of the
//! stack's secrets and answering each read after
//! `COLDSTART_SECRETS_LATENCY_MS` (default 15, an assumed in-region latency:
//! AWS publishes none), not moto, whose Python answers are slower than the
//! service's; `COLDSTART_SECRETS=moto` measures against moto instead.
//!
//! Also reported: each process's peak resident memory (`VmHWM`) at its
//! answer, and the binaries' sizes raw and zipped as deployed.
//!
//! usage: coldstart [BIN_DIR] (default `target/release`; build them with
//! `cargo build --release` and the six function packages, as `scripts/bench`
//! does), `COLDSTART_RUNS` starts per function (default 21).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use oauth_sync_tests::functions::scheduled_event;
use oauth_sync_tests::invoke::{function_env, invoke_once};
use oauth_sync_tests::secrets_standin::{DEFAULT_LATENCY, SecretsStandIn};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::LoginFixture;
use serde_json::{Value, json};
use shared::config::PresetName;
use shared::webhooks::queue::DELIVERIES_QUEUE_ENV;

const FUNCTIONS: [&str; 6] = [
    "oauth-callback",
    "api",
    "token-refresher",
    "sync",
    "record-events",
    "webhooks",
];

/// What `function` is handed, and whether its answer is an HTTP one
/// (whose status must be 200).
fn event_for(function: &str, link_query: &str) -> (Value, bool) {
    match function {
        "oauth-callback" => (confirmation_event(link_query), true),
        "api" => (connections_event(), true),
        "record-events" | "webhooks" => (json!({"Records": []}), false),
        _ => (scheduled_event(), false),
    }
}

/// An HTTP API (payload 2.0) GET of `path?query` on route `route`, as API
/// Gateway passes it on.
fn get_event(route: &str, path: &str, query: &str, accept: &str) -> Value {
    let host = "abc123.execute-api.eu-west-1.amazonaws.com";
    let parameters: serde_json::Map<String, Value> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned().into()))
        .collect();
    let mut event = json!({
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": query,
        "headers": {"host": host, "user-agent": "coldstart", "accept": accept, "sec-fetch-site": "none",
                     "x-forwarded-proto": "https", "x-forwarded-for": "127.0.0.1"},
        "queryStringParameters": parameters,
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": host, "domainPrefix": "abc123",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                     "userAgent": "coldstart"},
            "requestId": "coldstart", "routeKey": route, "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 1_796_083_200_000_i64
        },
        "isBase64Encoded": false
    });
    if let Some(provider) = path.strip_prefix("/connect/") {
        event["pathParameters"] = json!({ "provider": provider });
    }
    event
}

/// A connect link's confirmation page.
fn confirmation_event(query: &str) -> Value {
    get_event("GET /connect/{provider}", "/connect/sim", query, "text/html")
}

/// The first page of connections (the route is IAM-signed; API Gateway checks it).
fn connections_event() -> Value {
    get_event("$default", "/connections", "limit=10", "application/json")
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

/// Where a function's Secrets Manager is: the stand-in, or moto when
/// `COLDSTART_SECRETS=moto` (then `None`).
async fn secrets_endpoint(login: &LoginFixture) -> anyhow::Result<(Option<SecretsStandIn>, String)> {
    if std::env::var("COLDSTART_SECRETS").is_ok_and(|v| v == "moto") {
        return Ok((None, "Secrets Manager on moto".into()));
    }
    let latency = std::env::var("COLDSTART_SECRETS_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_LATENCY, Duration::from_millis);
    let standin = SecretsStandIn::copy_of(&login.fixture.aws.secrets, latency).await?;
    let said = format!("Secrets Manager stand-in answering in {} ms", latency.as_millis());
    Ok((Some(standin), said))
}

/// One function's row: `runs` starts, each handed its event.
async fn measure(
    function: &str,
    binary: &Path,
    env: &[(String, String)],
    link_query: &str,
    runs: usize,
    work: &Path,
) -> anyhow::Result<String> {
    let (mut times, mut rss) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (event, http) = event_for(function, link_query);
        let log = work.join(format!("{function}-{run}.log"));
        let invocation = invoke_once(binary, env, event, &log, Duration::from_secs(60)).await?;
        if http {
            let answer: Value = serde_json::from_slice(&invocation.body).context("the function's answer")?;
            if answer["statusCode"] != 200 {
                bail!("{function} answered {} (log: {})", answer["statusCode"], log.display());
            }
        }
        times.push(invocation.took.as_secs_f64() * 1000.0);
        rss.push(invocation.peak_rss_kib as f64 / 1024.0);
    }
    let raw = std::fs::metadata(binary)?.len();
    let zipped = zipped_size(binary, work)?;
    let (min, max) = times
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    Ok(format!(
        "| {function} | {:.1} | {min:.1} | {max:.1} | {:.1} | {:.2} | {:.2} |",
        median(times),
        median(rss),
        raw as f64 / 1e6,
        zipped as f64 / 1e6
    ))
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
    let rust_log = std::env::var("COLDSTART_RUST_LOG").unwrap_or_else(|_| "warn".into());
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&login.link("coldstart-1"))
        .finish();
    let (standin, secrets) = secrets_endpoint(&login).await?;

    say(&format!(
        "Cold starts: {runs} per function, binaries in {}, against DynamoDB Local and the {secrets}\n",
        bin_dir.display()
    ))?;
    say("| function | median ms | min ms | max ms | peak RSS MiB (median) | raw MB | zipped MB |")?;
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for function in FUNCTIONS {
        let binary = bin_dir.join(function);
        if !binary.exists() {
            bail!(
                "{} is missing: build with `cargo build --release -p {}`",
                binary.display(),
                FUNCTIONS.join(" -p ")
            );
        }
        let mut env = function_env(&login.fixture, &config, function, &rust_log);
        if let Some(standin) = &standin {
            env.push(("AWS_ENDPOINT_URL_SECRETS_MANAGER".into(), standin.endpoint()));
        }
        if function == "webhooks" {
            // Needed to start; an empty batch sends nothing to it.
            let queue = std::env::var(DELIVERIES_QUEUE_ENV)
                .unwrap_or_else(|_| "http://127.0.0.1:9/000000000000/coldstart-deliveries".into());
            env.push((DELIVERIES_QUEUE_ENV.into(), queue));
        }
        say(&measure(function, &binary, &env, &query, runs, &work).await?)?;
    }
    Ok(())
}
