//! A separate OS process that drives connections through the refresh protocol,
//! for the multi-process race and the kill-after-send fault.
//!
//! Environment (besides the standard AWS variables of the local stack):
//! `OAUTH_SYNC_CONFIG` (configuration file), `OAUTH_SYNC_CONNECTIONS_TABLE`,
//! `WORKER_IDS` (comma-separated connection ids), `WORKER_TARGET` (refresh
//! until every connection has at least this `token_version`), `WORKER_TASKS`
//! (concurrent tasks, default 4), `WORKER_TOKEN_TIMEOUT_MS` and
//! `WORKER_COMMIT_BUDGET_MS` (protocol timing).
//!
//! Prints `{"calls": n, "refreshed": n}` and exits 0 when the target is reached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shared::config::Config;
use shared::connection::ConnectionId;
use shared::connection::store::ConnectionStore;
use shared::refresh::{RefreshSettings, TokenService};
use shared::secrets::SecretStore;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(
        std::env::var(name)
            .map_or(Ok(default), |v| v.parse())
            .context(name.to_owned())?,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init(shared::telemetry::Target::Cli);
    let config = Arc::new(Config::from_env()?);
    let ids: Vec<ConnectionId> = env("WORKER_IDS")?
        .split(',')
        .map(ConnectionId::parse)
        .collect::<Result<_, _>>()
        .context("WORKER_IDS")?;
    let target: u64 = env("WORKER_TARGET")?.parse().context("WORKER_TARGET")?;
    let tasks: usize = std::env::var("WORKER_TASKS")
        .map_or(Ok(4), |v| v.parse())
        .context("WORKER_TASKS")?;
    let settings = RefreshSettings {
        token_timeout: millis("WORKER_TOKEN_TIMEOUT_MS", 5_000)?,
        commit_budget: millis("WORKER_COMMIT_BUDGET_MS", 5_000)?,
        poll_min: Duration::from_millis(10),
        poll_max: Duration::from_millis(100),
        ..RefreshSettings::default()
    };
    let aws = shared::aws::AwsClients::from_env();
    let store = ConnectionStore::new(aws.dynamodb.clone(), env("OAUTH_SYNC_CONNECTIONS_TABLE")?);
    let service = Arc::new(TokenService::load(config, store, SecretStore::new(aws.secrets.clone()), settings).await?);
    let (calls, refreshed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (service, ids, calls, refreshed) = (service.clone(), ids.clone(), calls.clone(), refreshed.clone());
        workers.spawn(async move {
            let mut versions = vec![0u64; ids.len()];
            while versions.iter().any(|v| *v < target) {
                for (id, version) in ids.iter().zip(versions.iter_mut()).filter(|(_, v)| **v < target) {
                    let fresh = service
                        .refresh_now(id, Instant::now() + Duration::from_secs(60))
                        .await?;
                    calls.fetch_add(1, Ordering::Relaxed);
                    refreshed.fetch_add(u64::from(fresh.refreshed), Ordering::Relaxed);
                    *version = fresh.token_version;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = workers.join_next().await {
        if let Err(e) = result? {
            bail!("worker failed: {e}");
        }
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            serde_json::json!({"calls": calls.load(Ordering::Relaxed), "refreshed": refreshed.load(Ordering::Relaxed)})
        );
    }
    Ok(())
}
