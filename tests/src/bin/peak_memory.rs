//! Peak memory of the real function binaries under load, each in one
//! invocation made the way Lambda makes it (`oauth_sync_tests::invoke`, as
//! the cold-start driver does), with its deployed timeout and log settings:
//!
//! - `token-refresher` with 1,000 due connections (fresh logins whose 60 s
//!   access tokens are inside the generic preset's refresh lead);
//! - `sync` with one Exact Online connection whose `projects` sync
//!   (incremental over `sync/Project/Projects`, 1,000 a page) is due and
//!   10,000 projects at the provider.
//!
//! The figure is the function process's peak resident set (`VmHWM` of
//! `/proc/PID/status`) at its answer, beside the time from the spawn to the
//! answer. The work is checked, not timed: every connection refreshed (the
//! simulator's counters: that many refreshes, no refresh token reused) and
//! every record stored in the records table. The simulator runs in this
//! process, the functions against the local stack with a fixture's
//! configuration file, secrets and tables.
//!
//! usage: peak-memory [BIN_DIR] (default `target/release`), after
//! `cargo build --release -p token-refresher -p sync`; `MEMORY_CONNECTIONS`
//! (default 1000) and `MEMORY_RECORDS` (default 10000). Needs a freshly
//! started stack: `scripts/bench memory` runs it once per stack.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use oauth_sync_tests::functions::scheduled_event;
use oauth_sync_tests::invoke::{Invocation, function_env, invoke_once};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{PROJECTS_INCREMENTAL, RefreshFixture, SyncFixture, quick_sync_settings};
use serde_json::Value;
use shared::config::PresetName;

/// The deployed timeouts (infra/template.yaml).
const REFRESHER_TIMEOUT: Duration = Duration::from_secs(60);
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

fn say(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(out.flush()?)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Where the functions run: the release binaries, their logs and configuration.
struct Bench {
    bin_dir: PathBuf,
    work: PathBuf,
}

impl Bench {
    /// One scheduled invocation of `function` on `fixture`'s tables and
    /// configuration, logging as deployed (JSON, INFO); its answer as JSON.
    async fn invoke(
        &self,
        function: &str,
        fixture: &RefreshFixture,
        timeout: Duration,
    ) -> anyhow::Result<(Invocation, Value)> {
        let binary = self.bin_dir.join(function);
        let config = self.work.join(format!("{function}.toml"));
        std::fs::write(&config, &fixture.config_text)?;
        let mut env = function_env(fixture, &config, function, "info");
        env.push(("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()));
        env.push(("AWS_LAMBDA_LOG_LEVEL".into(), "INFO".into()));
        let log = self.work.join(format!("{function}.log"));
        let invocation = invoke_once(&binary, &env, scheduled_event(), &log, timeout).await?;
        let answer = serde_json::from_slice(&invocation.body).context("the function's answer")?;
        Ok((invocation, answer))
    }
}

/// A table row: function, work done, peak RSS, time to the answer.
fn row(function: &str, work: &str, invocation: &Invocation) -> String {
    format!(
        "| {function} | {work} | {:.1} | {:.1} |",
        invocation.peak_rss_kib as f64 / 1024.0,
        invocation.took.as_secs_f64()
    )
}

async fn refresher(bench: &Bench, connections: usize) -> anyhow::Result<String> {
    let sim = SimConfig {
        access_token_ttl: Duration::from_secs(60),
        ..SimConfig::for_preset(PresetName::Generic)
    };
    let fixture =
        Arc::new(RefreshFixture::start(sim, shared::refresh::RefreshSettings::default(), "", "memory-refresh").await);
    fixture.connect_many("memory", connections, 32).await;
    let before = fixture.sim().counters();
    let (invocation, answer) = bench.invoke("token-refresher", &fixture, REFRESHER_TIMEOUT).await?;
    let after = fixture.sim().counters();
    let refreshed = answer["refreshed"].as_u64().unwrap_or(0);
    ensure!(
        refreshed == connections as u64 && answer["complete"] == true,
        "token-refresher refreshed {refreshed} of {connections}: {answer}"
    );
    let refreshes = after.refreshes - before.refreshes;
    ensure!(
        refreshes == connections as u64 && after.refresh_tokens_reused == 0 && after.families_revoked == 0,
        "the simulator saw {refreshes} refreshes, {} reused refresh tokens, {} revoked families",
        after.refresh_tokens_reused,
        after.families_revoked
    );
    Ok(row(
        "token-refresher",
        &format!("{connections} due connections refreshed"),
        &invocation,
    ))
}

async fn sync(bench: &Bench, records: usize) -> anyhow::Result<String> {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        PROJECTS_INCREMENTAL,
        quick_sync_settings(),
        "memory-sync",
    )
    .await;
    fx.sim().seed_projects(records);
    let id = fx.connect("memory-sync").await;
    let (invocation, answer) = bench.invoke("sync", &fx.fixture, SYNC_TIMEOUT).await?;
    let count = |field: &str| answer[field].as_u64().unwrap_or(0);
    ensure!(
        count("finished") == 1 && count("inserted") == records as u64,
        "sync did not insert all {records} records in one finished run: {answer}"
    );
    let stored = fx.records(&id, "projects").await;
    ensure!(
        stored.len() == records,
        "{} records stored, not {records}",
        stored.len()
    );
    Ok(row("sync", &format!("{records} records stored"), &invocation))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let bench = Bench {
        bin_dir: std::env::args()
            .nth(1)
            .map_or_else(|| root.join("target/release"), PathBuf::from),
        work: root.join("target/peak-memory"),
    };
    std::fs::create_dir_all(&bench.work)?;
    for function in ["token-refresher", "sync"] {
        let binary = bench.bin_dir.join(function);
        if !binary.exists() {
            bail!(
                "{} is missing: build with `cargo build --release -p token-refresher -p sync`",
                binary.display()
            );
        }
    }
    let connections = env_or("MEMORY_CONNECTIONS", 1_000);
    let records = env_or("MEMORY_RECORDS", 10_000);

    let refresher = refresher(&bench, connections).await?;
    let sync = sync(&bench, records).await?;
    say("| function | work in one invocation | peak RSS MiB | seconds to the answer |")?;
    say("| --- | --- | ---: | ---: |")?;
    say(&refresher)?;
    say(&sync)?;
    Ok(())
}
