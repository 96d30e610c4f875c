//! Cold starts of the three function binaries, measured from outside: each
//! start spawns the binary against a Lambda runtime API served on loopback
//! (`oauth_sync_tests::invoke`), hands it one event the way AWS would (an HTTP API v2 request
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
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use oauth_sync_tests::functions::scheduled_event;
use oauth_sync_tests::invoke::{function_env, invoke_once};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::LoginFixture;
use serde_json::{Value, json};
use shared::config::PresetName;

const FUNCTIONS: [&str; 3] = ["oauth-callback", "token-refresher", "sync"];

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
    let rust_log = std::env::var("COLDSTART_RUST_LOG").unwrap_or_else(|_| "warn".into());
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
        let env = function_env(&login.fixture, &config, function, &rust_log);
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let event = match function {
                "oauth-callback" => confirmation_event(&query),
                _ => scheduled_event(),
            };
            let log = work.join(format!("{function}-{run}.log"));
            let invocation = invoke_once(&binary, &env, event, &log, Duration::from_secs(60)).await?;
            if function == "oauth-callback" {
                let answer: Value = serde_json::from_slice(&invocation.body).context("the function's answer")?;
                if answer["statusCode"] != 200 {
                    bail!(
                        "the confirmation page answered {} (log: {})",
                        answer["statusCode"],
                        log.display()
                    );
                }
            }
            times.push(invocation.took.as_secs_f64() * 1000.0);
            rss.push(invocation.peak_rss_kib as f64 / 1024.0);
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
