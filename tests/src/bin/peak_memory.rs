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
//! `MEMORY_PART=sweep` measures instead the real `sync` binary sweeping a
//! large job: `MEMORY_SWEEP_RECORDS` (default 100,000) Exact projects are
//! stored by a first run of a `full` sync over `sync/Project/Projects`
//! (1,000 a page; run here, in process, with the engine, until it
//! finishes), then `MEMORY_SWEEP_DELETE_PERCENT` (default 10) % of them are
//! deleted upstream, the job is made due, and the binary is invoked until
//! that sweep run finishes (it yields at each invocation's deadline). The
//! figures: the highest `VmHWM` of the binary's processes, the wall time of
//! the sweep run, and the invocations it took; the result is checked (the
//! live records are exactly the upstream projects, and exactly the deleted
//! ones are marked deleted, each once).
//!
//! usage: peak-memory [BIN_DIR] (default `target/release`), after
//! `cargo build --release -p token-refresher -p sync`; `MEMORY_CONNECTIONS`
//! (default 1000) and `MEMORY_RECORDS` (default 10000); `MEMORY_PART`
//! (`functions`, the default, or `sweep`). Needs a freshly started stack:
//! `scripts/bench memory` runs the functions part once per stack,
//! `scripts/bench sweep` the sweep once on a stack of its own.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use oauth_sync_tests::functions::scheduled_event;
use oauth_sync_tests::invoke::{Invocation, function_env, invoke_once};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{PROJECTS_INCREMENTAL, RefreshFixture, SyncFixture, deadline, quick_sync_settings};
use serde_json::Value;
use shared::config::PresetName;
use shared::sync::engine::RunEnd;

/// The deployed timeouts (infra/template.yaml).
const REFRESHER_TIMEOUT: Duration = Duration::from_secs(60);
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

/// The sweep's sync: the same endpoint read whole every run (`mode = "full"`),
/// so every run is a sweep.
const SWEEP_SYNC: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
     query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"full\"\n\
     fields = { id = \"ID\", code = \"Code\", description = \"Description\" }\ninterval_secs = 900\n";

/// Progress, on stderr (stdout is the report).
fn progress(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "peak-memory: {text}");
}

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

/// The real `sync` binary sweeping `records` stored records of which
/// `percent` % were deleted upstream; the report's table.
async fn sweep(bench: &Bench, records: usize, percent: usize) -> anyhow::Result<Vec<String>> {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        SWEEP_SYNC,
        quick_sync_settings(),
        "memory-sweep",
    )
    .await;
    let ids = fx.sim().seed_projects(records);
    let conn = fx.connect("memory-sweep").await;
    let job = shared::sync::jobs::job_id(&conn, "projects");

    // The first run stores every record: here, with the engine, until it
    // finishes (a run yields at its deadline and goes on in the next).
    progress(&format!("first run: storing {records} records (in process)"));
    let started = Instant::now();
    let mut first = 0;
    let stored = loop {
        first += 1;
        ensure!(first <= 20, "the first run did not finish in 20 runs");
        let report = fx
            .engine
            .run_now(&conn, "projects", deadline(1_800), &|counts| {
                if counts.pages % 10 == 0 {
                    progress(&format!("first run: {} records stored", counts.inserted));
                }
            })
            .await?;
        match report.end {
            RunEnd::Finished => break report.counts.inserted,
            RunEnd::Yielded { .. } => {}
            other => bail!("the first run ended {other:?}"),
        }
    };
    let first_secs = started.elapsed().as_secs_f64();
    ensure!(
        stored == records as u64,
        "the first run stored {stored} of {records} records"
    );
    progress(&format!("first run: {records} records in {first_secs:.1} s"));

    // Deletions upstream, spread over the projects; then the job is due.
    let to_delete = records * percent / 100;
    let step = (records / to_delete.max(1)).max(1);
    let mut deleted_upstream = 0;
    for id in ids.iter().step_by(step).take(to_delete) {
        ensure!(fx.sim().delete_project(id), "project {id} was not there to delete");
        deleted_upstream += 1;
    }
    fx.fixture
        .aws
        .dynamodb
        .update_item()
        .table_name(&fx.fixture.tables["SyncStateTable"])
        .key("id", aws_sdk_dynamodb::types::AttributeValue::S(job.clone()))
        .update_expression("SET next_run_at = :now")
        .expression_attribute_values(
            ":now",
            aws_sdk_dynamodb::types::AttributeValue::N(shared::connection::now_ms().to_string()),
        )
        .send()
        .await
        .context("making the job due")?;

    // The sweep run, by the real binary, invoked until the run finishes.
    progress(&format!(
        "sweep: {deleted_upstream} of {records} deleted upstream; invoking the sync binary"
    ));
    let started = Instant::now();
    let (mut invocations, mut peak_kib, mut deleted, mut unchanged) = (0, 0, 0, 0);
    loop {
        invocations += 1;
        ensure!(invocations <= 20, "the sweep run did not finish in 20 invocations");
        let (invocation, answer) = bench.invoke("sync", &fx.fixture, SYNC_TIMEOUT).await?;
        let count = |field: &str| answer[field].as_u64().unwrap_or(0);
        peak_kib = peak_kib.max(invocation.peak_rss_kib);
        deleted += count("deleted");
        unchanged += count("unchanged");
        progress(&format!(
            "sweep: invocation {invocations}: {:.1} s, peak RSS {:.1} MiB: {answer}",
            invocation.took.as_secs_f64(),
            invocation.peak_rss_kib as f64 / 1024.0
        ));
        match (count("finished"), count("yielded")) {
            (1, 0) => break,
            (0, 1) => {}
            _ => bail!("the sweep run neither finished nor yielded: {answer}"),
        }
    }
    let sweep_secs = started.elapsed().as_secs_f64();

    let stored = fx.records(&conn, "projects").await;
    let live: BTreeSet<String> = stored
        .iter()
        .filter(|r| r.deleted_at.is_none())
        .map(|r| r.id.clone())
        .collect();
    let upstream: BTreeSet<String> = fx
        .sim()
        .projects()
        .iter()
        .filter_map(|p| p["ID"].as_str().map(str::to_owned))
        .collect();
    let marked = stored.iter().filter(|r| r.deleted_at.is_some()).count();
    ensure!(
        live == upstream,
        "{} live records against {} upstream projects",
        live.len(),
        upstream.len()
    );
    ensure!(
        marked == deleted_upstream && deleted == deleted_upstream as u64,
        "{deleted_upstream} deleted upstream, {marked} marked deleted, the runs counted {deleted}"
    );
    ensure!(
        unchanged == (records - deleted_upstream) as u64,
        "the sweep run found {unchanged} unchanged records, not {}",
        records - deleted_upstream
    );
    Ok(vec![
        "| sync sweep | records stored | deleted upstream | invocations | peak RSS MiB | sweep run seconds | first run seconds (in process) |"
            .to_owned(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
        format!(
            "| full, `sync/Project/Projects`, 1,000 a page | {records} | {deleted_upstream} | {invocations} | {:.1} | {sweep_secs:.1} | {first_secs:.1} |",
            peak_kib as f64 / 1024.0
        ),
    ])
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
    let part = std::env::var("MEMORY_PART").unwrap_or_else(|_| "functions".to_owned());
    let functions: &[&str] = match part.as_str() {
        "functions" => &["token-refresher", "sync"],
        "sweep" => &["sync"],
        other => bail!("MEMORY_PART is `{other}`: functions (the default) or sweep"),
    };
    for function in functions {
        let binary = bench.bin_dir.join(function);
        if !binary.exists() {
            bail!(
                "{} is missing: build with `cargo build --release -p token-refresher -p sync`",
                binary.display()
            );
        }
    }
    if part == "sweep" {
        let records = env_or("MEMORY_SWEEP_RECORDS", 100_000);
        let percent = env_or("MEMORY_SWEEP_DELETE_PERCENT", 10);
        for line in sweep(&bench, records, percent).await? {
            say(&line)?;
        }
        return Ok(());
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
