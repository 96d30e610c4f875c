//! `sync run`: one run of one connection's sync now, through the same
//! engine, lease and checkpoint as the scheduled runs; a progress line per
//! page, the summary at the end, and Ctrl-C that saves the run's place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shared::config::Config;
use shared::connection::{ConnectionId, now_ms};
use shared::refresh::{RefreshSettings, TokenService};
use shared::secrets::SecretStore;
use shared::sync::engine::{RunEnd, RunReport, SyncEngine, SyncSettings};
use shared::sync::jobs::{RunCounts, job_id};

use super::sync_definition;
use crate::output::{elapsed, relative, shorten, write_out};
use crate::{job_store, parse_duration, record_store, store};

/// A run stopped by a signal ends in [`Interrupted`] (exit code 130); one
/// parked, failed or that lost its lease, in an error.
pub async fn sync_run(
    config_file: PathBuf,
    id: &str,
    sync: &str,
    timeout: &str,
    lease: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let (settings, timeout) = run_settings(timeout, lease)?;
    let config = Arc::new(Config::load_and_discover(&config_file).await?);
    let id = ConnectionId::parse(id)?;
    let definition = sync_definition(&config, sync)?;
    let (aws, store) = store().await?;
    let jobs = job_store(&aws)?;
    let records = record_store(&aws)?;
    // Checked here, so that a typo creates no job.
    let connection = store
        .get(&id)
        .await?
        .with_context(|| format!("connection {id} does not exist"))?;
    anyhow::ensure!(
        connection.provider == definition.provider,
        "connection {id} belongs to provider `{}`; sync `{sync}` pulls from `{}`",
        connection.provider,
        definition.provider
    );
    let tokens = TokenService::load(
        config.clone(),
        store,
        SecretStore::new(aws.secrets.clone()),
        RefreshSettings::default(),
    )
    .await?;
    // Running a parked job takes it back into the schedule: say so.
    if let Some(job) = jobs.get(&job_id(&id, sync)).await?
        && let Some(reason) = &job.parked_reason
    {
        eprintln!(
            "{}: was parked ({reason}); this run takes it back into the schedule",
            job.id
        );
    }
    let events = shared::events::EventSink::from_env(&crate::aws::sdk_config().await);
    let stop = stop_on_signals()?;
    let engine = SyncEngine::new(
        config,
        Arc::new(tokens.with_events(events.clone())),
        jobs,
        records,
        settings,
    )?
    .with_events(events)
    .with_stop(stop.clone());
    let started = Instant::now();
    let report = engine.run_now(&id, sync, started + timeout, &progress).await?;
    print_report(&report, started.elapsed(), as_json)?;
    if let (Some(why), RunEnd::Yielded { .. }) = (stop.borrow().clone(), &report.end) {
        return Err(Interrupted(format!("{}: {why}", report.job)).into());
    }
    match report.end {
        RunEnd::Finished | RunEnd::Yielded { .. } => Ok(()),
        RunEnd::Parked(_) => anyhow::bail!("{}: the run was parked", report.job),
        RunEnd::Failed(_) => anyhow::bail!("{}: the run failed", report.job),
        RunEnd::LostLease => anyhow::bail!("{}: the run lost its lease", report.job),
    }
}

/// The engine's settings with `--lease`, and `--timeout`, checked before
/// anything is read: a lease longer than twice the write fence, and time
/// for one page and the run's last writes.
fn run_settings(timeout: &str, lease: &str) -> anyhow::Result<(SyncSettings, Duration)> {
    let lease = parse_duration(lease).context("--lease")?;
    let settings = SyncSettings {
        renewed_lease: Some(lease),
        ..SyncSettings::default()
    };
    anyhow::ensure!(
        lease > settings.write_fence() * 2,
        "--lease: more than {}s (no write starts in its last {}s)",
        (settings.write_fence() * 2).as_secs(),
        settings.write_fence().as_secs()
    );
    let timeout = parse_duration(timeout).context("--timeout")?;
    let least = settings.page_timeout + settings.commit_margin + Duration::from_secs(5);
    anyhow::ensure!(
        timeout >= least,
        "--timeout: at least {}s (one page may take {}s, and the run keeps {}s for its last writes)",
        least.as_secs(),
        settings.page_timeout.as_secs(),
        settings.commit_margin.as_secs()
    );
    Ok((settings, timeout))
}

/// A run ended early by a signal, its place saved and its lease released:
/// exit code 130, as a shell reports an interrupted command.
#[derive(Debug)]
pub struct Interrupted(String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The first Ctrl-C (SIGINT) or SIGTERM asks the run to stop: it abandons a
/// page request or a wait in flight (a token refresh and a fetched page's
/// writes finish), saves its place and releases the job's lease, so the
/// next `sync run` or scheduled run can go on at once. A second signal quits
/// at once, leaving the lease to run out.
fn stop_on_signals() -> anyhow::Result<tokio::sync::watch::Receiver<Option<String>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        eprintln!("{name}: stopping; saving the run's place and releasing its lease (send it again to quit at once)");
        let why = format!("stopped by {name}; `oauth-sync sync run` again, or the schedule, goes on from here");
        if tx.send(Some(why)).is_err() {
            return;
        }
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("quitting at once: the job's lease stays held until it runs out");
        std::process::exit(130);
    });
    Ok(rx)
}

/// One progress line per committed page, on stderr (the counts are the run's so far).
fn progress(counts: &RunCounts) {
    eprintln!(
        "page {}: fetched {}, inserted {}, updated {}, unchanged {}, deleted {}",
        counts.pages, counts.fetched, counts.inserted, counts.updated, counts.unchanged, counts.deleted
    );
}

/// How a run ended, in words.
fn run_end(end: &RunEnd) -> String {
    match end {
        RunEnd::Finished => "finished".to_owned(),
        RunEnd::Yielded { until, reason } => {
            let when = if *until > now_ms() + 1_000 {
                format!(" until {}", relative(Some(*until)))
            } else {
                String::new()
            };
            format!(
                "yielded{when}: {reason}; the next run (scheduled, or `sync run` again) resumes where this one stopped"
            )
        }
        RunEnd::Parked(why) => format!("parked: {why}"),
        RunEnd::Failed(why) => format!("failed: {why}"),
        RunEnd::LostLease => {
            "stopped: another invocation took the job over (the lease was lost); this run wrote nothing more".to_owned()
        }
    }
}

fn print_report(report: &RunReport, took: Duration, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return write_out(&format!("{}\n", serde_json::to_string_pretty(report)?));
    }
    let c = &report.counts;
    let mut out = format!("{}: {} ({})\n", report.job, run_end(&report.end), elapsed(took));
    out.push_str(&format!(
        "  pages {}, fetched {}, inserted {}, updated {}, unchanged {}, deleted {}\n",
        c.pages, c.fetched, c.inserted, c.updated, c.unchanged, c.deleted
    ));
    out.push_str(&format!(
        "  requests {}, 429s {}, rate-limit waits {} ({} waited), retries {}, token refreshes {}\n",
        c.requests,
        c.throttled,
        c.rate_limit_waits,
        elapsed(Duration::from_millis(c.waited_ms)),
        c.retries,
        c.token_refreshes
    ));
    out.push_str(&format!("  rejected {}\n", c.rejected));
    for example in &c.rejected_examples {
        out.push_str(&format!("    {}\n", shorten(example, 160)));
    }
    if c.rejected > c.rejected_examples.len() as u64 {
        out.push_str(&format!(
            "    … and {} more\n",
            c.rejected - c.rejected_examples.len() as u64
        ));
    }
    write_out(&out)
}
