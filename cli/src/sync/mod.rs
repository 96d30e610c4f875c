//! `sync run`, `sync status`, `sync schedule` and `records`: the sync jobs
//! run now, shown and scheduled, and the records they stored. A job is shown
//! the same way here and in `show` ([`job_cells`], [`job_json`]).

mod records;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use shared::config::Config;
use shared::connection::{ConnectionId, now_ms};
use shared::sync::jobs::{Checkpoint, Job, Phase, RunRecord};
use shared::sync::rate::RateState;

pub use records::records;
pub use run::{Interrupted, sync_run};

use crate::output::{ago, elapsed, relative, shorten, table, write_out};
use crate::{job_store, store};

/// A configured sync, or an error that names the configured ones.
fn sync_definition<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a shared::config::Sync> {
    config.syncs.get(name).with_context(|| {
        let known: Vec<&str> = config.syncs.keys().map(String::as_str).collect();
        if known.is_empty() {
            format!("unknown sync `{name}`: the configuration has no [syncs]")
        } else {
            format!("unknown sync `{name}` (configured: {})", known.join(", "))
        }
    })
}

/// `sync schedule SYNC`: a job for every active connection of the sync's
/// provider, read a page at a time from the `by-provider` index; a job that
/// exists keeps its schedule and checkpoint, a parked one is made due. The
/// same code path as the sync function's reconciliation
/// ([`shared::sync::reconcile::jobs_for_page`]).
pub async fn sync_schedule(config_file: PathBuf, sync: &str, as_json: bool) -> anyhow::Result<()> {
    use shared::sync::reconcile::{JobWrite, ReconcileSettings, jobs_for_page};
    let config = Config::load_and_discover(&config_file).await?;
    let definition = sync_definition(&config, sync)?;
    let (aws, store) = store().await?;
    let jobs = job_store(&aws)?;
    let settings = ReconcileSettings::default();
    let mut scheduled = Vec::new();
    let mut skipped = 0u64;
    let mut after = None;
    loop {
        let (connections, last) = store
            .page_of_provider(&definition.provider, after.as_ref(), settings.page_size)
            .await?;
        let page = jobs_for_page(
            &jobs,
            sync,
            &definition.provider,
            &connections,
            JobWrite::Schedule,
            settings.concurrency,
        )
        .await?;
        scheduled.extend(page.written.iter().map(ToString::to_string));
        skipped += page.skipped;
        after = last;
        if after.is_none() {
            break;
        }
    }
    if as_json {
        let out = serde_json::json!({"sync": sync, "scheduled": scheduled, "skipped": skipped});
        write_out(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        write_out(&format!(
            "sync `{sync}` scheduled for {} active connection(s) of provider `{}`{}; {skipped} inactive connection(s) left alone\n",
            scheduled.len(),
            definition.provider,
            if scheduled.is_empty() {
                String::new()
            } else {
                format!(": {}", scheduled.join(", "))
            },
        ))?;
    }
    Ok(())
}

/// Runs shown per job by `sync status ID`.
const RECENT_RUNS: i32 = 5;

/// `sync status [ID]`: the jobs, and with an id each job's recent runs.
pub async fn sync_status(config_file: PathBuf, id: Option<String>, as_json: bool) -> anyhow::Result<()> {
    let _ = Config::load_and_discover(&config_file).await?;
    let id = id.as_deref().map(ConnectionId::parse).transpose()?;
    let aws = crate::aws::clients().await;
    let store = job_store(&aws)?;
    let mut jobs: Vec<Job> = store.all().await?;
    if let Some(id) = &id {
        jobs.retain(|job| &job.connection == id);
    }
    jobs.sort_by(|a, b| a.id.cmp(&b.id));
    let mut history = BTreeMap::new();
    if id.is_some() {
        for job in &jobs {
            history.insert(job.id.clone(), store.runs(&job.id, RECENT_RUNS).await?);
        }
    }
    print_jobs(&jobs, id.as_ref(), &history, as_json)
}

/// `running`, `parked` or `scheduled`.
fn job_state_word(job: &Job, now: i64) -> &'static str {
    if job.lease_until.is_some_and(|until| until > now) {
        "running"
    } else if job.next_run_at.is_none() {
        "parked"
    } else {
        "scheduled"
    }
}

fn job_state(job: &Job, now: i64) -> String {
    match job_state_word(job, now) {
        "running" => format!(
            "running (lease held by {} until {})",
            job.lease_owner.as_deref().unwrap_or("another run"),
            relative(job.lease_until)
        ),
        "parked" => format!(
            "parked: {}",
            job.parked_reason.as_deref().unwrap_or("no reason recorded")
        ),
        _ => match &job.checkpoint.run {
            // A run that yielded or failed: the next one goes on from its place.
            Some(run) => format!(
                "scheduled, resumes its run at page {}{}",
                run.pass_pages + 1,
                match run.phase {
                    Phase::Data => "",
                    Phase::Deleted => " of the deleted-records feed",
                }
            ),
            None => "scheduled".to_owned(),
        },
    }
}

fn last_run(run: Option<&RunRecord>) -> String {
    run.map_or_else(
        || "-".to_owned(),
        |run| format!("{} {}", run.status, ago(Some(run.finished_at))),
    )
}

/// inserted/updated/deleted of the last run.
fn changes(run: Option<&RunRecord>) -> String {
    run.map_or_else(
        || "-".to_owned(),
        |run| format!("{}/{}/{}", run.counts.inserted, run.counts.updated, run.counts.deleted),
    )
}

fn cursor(checkpoint: &Checkpoint) -> String {
    match (&checkpoint.cursor, &checkpoint.delta_link) {
        (Some(cursor), _) => shorten(cursor, 32),
        (None, Some(_)) => "delta link".to_owned(),
        (None, None) => "-".to_owned(),
    }
}

/// The smallest known remaining count of the provider's rate-limit windows,
/// and when that window resets.
fn budget(rate: &RateState) -> String {
    let now = now_ms();
    let mut text = match rate.windows.iter().min_by_key(|(_, w)| w.remaining) {
        None => "-".to_owned(),
        Some((_, window)) => match window.reset_at {
            Some(at) if at > now => format!("{}, resets {}", window.remaining, relative(Some(at))),
            Some(at) => format!("{} (stale: the window reset {})", window.remaining, relative(Some(at))),
            None => window.remaining.to_string(),
        },
    };
    if let Some(until) = rate.retry_after_until.filter(|until| *until > now) {
        text.push_str(&format!("; Retry-After until {}", relative(Some(until))));
    }
    text
}

/// The last run's error, unless the state already says it (a parked job).
fn job_error(job: &Job) -> String {
    match job.last_run.as_ref().and_then(|r| r.error.as_deref()) {
        Some(error) if job.next_run_at.is_some() || job.parked_reason.as_deref() != Some(error) => error.to_owned(),
        _ => "-".to_owned(),
    }
}

pub const JOB_COLUMNS: [&str; 7] = [
    "state",
    "next run",
    "last run",
    "ins/upd/del",
    "cursor",
    "budget left",
    "error",
];

pub fn job_cells(job: &Job, now: i64) -> Vec<String> {
    vec![
        job_state(job, now),
        if job.next_run_at.is_some() {
            relative(job.next_run_at)
        } else {
            "-".to_owned()
        },
        last_run(job.last_run.as_ref()),
        changes(job.last_run.as_ref()),
        cursor(&job.checkpoint),
        budget(&job.checkpoint.rate),
        job_error(job),
    ]
}

pub fn job_json(job: &Job, now: i64) -> Value {
    json!({
        "id": job.id,
        "connection": job.connection.as_str(),
        "sync": job.sync,
        "state": job_state_word(job, now),
        "next_run_at": job.next_run_at,
        "parked_reason": job.parked_reason,
        "lease_owner": job.lease_owner,
        "lease_until": job.lease_until,
        "budget_left": job.checkpoint.rate.least_remaining(),
        "checkpoint": job.checkpoint,
        "last_run": job.last_run,
    })
}

/// `history`: the recent runs of each job, by job id (`sync status ID`).
fn print_jobs(
    jobs: &[Job],
    connection: Option<&ConnectionId>,
    history: &BTreeMap<String, Vec<RunRecord>>,
    as_json: bool,
) -> anyhow::Result<()> {
    let now = now_ms();
    if as_json {
        let values: Vec<Value> = jobs
            .iter()
            .map(|job| {
                let mut value = job_json(job, now);
                if let Some(runs) = history.get(&job.id) {
                    value["recent_runs"] = json!(runs);
                }
                value
            })
            .collect();
        return write_out(&format!("{}\n", serde_json::to_string_pretty(&values)?));
    }
    if jobs.is_empty() {
        return write_out(&match connection {
            Some(id) => format!("no sync jobs for {id}; a login creates them, or `oauth-sync sync run {id} SYNC`\n"),
            None => "no sync jobs; a login creates them, or `oauth-sync sync run ID SYNC`\n".to_owned(),
        });
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let mut row = vec![job.id.clone()];
            row.extend(job_cells(job, now));
            row
        })
        .collect();
    let mut header = vec!["job"];
    header.extend(JOB_COLUMNS);
    let mut out = table(&header, &rows);
    for job in jobs {
        let Some(runs) = history.get(&job.id).filter(|runs| !runs.is_empty()) else {
            continue;
        };
        out.push_str(&format!("\nrecent runs of {}\n", job.id));
        out.push_str(&recent_runs(runs));
    }
    write_out(&out)
}

/// The table of a job's recent runs (`sync status ID`).
fn recent_runs(runs: &[RunRecord]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            vec![
                ago(Some(run.started_at)),
                run.status.clone(),
                elapsed(Duration::from_millis(
                    u64::try_from(run.finished_at - run.started_at).unwrap_or(0),
                )),
                run.counts.pages.to_string(),
                run.counts.fetched.to_string(),
                changes(Some(run)),
                run.counts.requests.to_string(),
                run.counts.throttled.to_string(),
                run.error.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        &[
            "started",
            "status",
            "took",
            "pages",
            "fetched",
            "ins/upd/del",
            "requests",
            "429s",
            "error",
        ],
        &rows,
    )
}
