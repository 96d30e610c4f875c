//! A sync added to the configuration after the logins: the sync function
//! gives every active connection of its provider the job, by itself, over
//! several invocations, against the local stack and the simulator.

mod common;

use std::sync::Arc;

use common::scheduled_event;
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{SyncFixture, deadline, quick_sync_settings};
use shared::config::{Config, PresetName};
use shared::connection::ConnectionId;
use shared::sync::engine::SyncEngine;
use shared::sync::jobs::{Job, job_id};
use shared::sync::reconcile::{ReconcileSettings, Reconciler};

const PROJECTS: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
                        query = { \"$select\" = \"ID,Code,Description\" }\nmode = \"full\"\n";
/// The sync the configuration gains.
const ACCOUNTS: &str = "[syncs.accounts]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
                        query = { \"$select\" = \"ID,Code\" }\nmode = \"full\"\n";

/// Four connections a page.
fn reconciler(fx: &SyncFixture, config: Arc<Config>, engine: &SyncEngine) -> Reconciler {
    let settings = ReconcileSettings {
        page_size: 4,
        ..ReconcileSettings::default()
    };
    Reconciler::new(
        config,
        fx.fixture.service.store().clone(),
        engine.jobs().clone(),
        settings,
    )
}

async fn job(engine: &SyncEngine, id: &ConnectionId, sync: &str) -> Option<Job> {
    engine.jobs().get(&job_id(id, sync)).await.expect("read job")
}

/// A fixture with ten logins to `sim` (each scheduling `projects`), two of
/// them revoked since.
async fn ten_logins() -> (SyncFixture, Vec<ConnectionId>) {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        PROJECTS,
        quick_sync_settings(),
        "reconcile",
    )
    .await;
    fx.sim().seed_projects(5);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(fx.connect(&format!("tenant-{i:02}")).await);
    }
    for revoked in [&ids[3], &ids[7]] {
        fx.fixture.service.revoke(revoked).await.expect("revoke");
    }
    (fx, ids)
}

/// Late invocations (their deadline has passed, so the walk reads one page
/// and no due job starts), until the walk finishes: how many it
/// took and the jobs they created.
async fn walk_to_the_end(engine: &Arc<SyncEngine>, reconciler: &Reconciler) -> (u64, u64) {
    let (mut invocations, mut created) = (0, 0);
    loop {
        invocations += 1;
        assert!(invocations <= 6, "the walk of 10 connections, 4 a page, ends");
        let done = sync::invoke(engine, reconciler, scheduled_event(0))
            .await
            .expect("invocation");
        let reconciled = done.reconciled.expect("reconciled");
        assert_eq!(reconciled.pages, 1, "{reconciled:?}");
        created += reconciled.created;
        if reconciled.finished {
            return (invocations, created);
        }
    }
}

/// The fixture's configuration with `accounts` added, and a sync engine on it.
fn with_accounts(fx: &SyncFixture) -> (Arc<Config>, Arc<SyncEngine>) {
    let text = format!("{}\n{ACCOUNTS}", fx.fixture.config_text);
    let config = Arc::new(Config::parse(&text, "fixture.toml").unwrap_or_else(|e| panic!("{e}")));
    let engine = SyncEngine::new(
        config.clone(),
        fx.fixture.service.clone(),
        fx.engine.jobs().clone(),
        fx.engine.records().clone(),
        quick_sync_settings(),
    )
    .expect("engine");
    (config, Arc::new(engine))
}

#[tokio::test]
async fn a_sync_added_after_the_logins_gets_a_job_for_every_active_connection_once() {
    let (fx, ids) = ten_logins().await;
    let old = reconciler(&fx, fx.fixture.config.clone(), &fx.engine);
    // A job of `accounts` from before it was configured (scheduled by hand),
    // parked by its run as not configured.
    fx.engine.jobs().schedule(&ids[1], "accounts").await.expect("schedule");
    let first = sync::invoke(&fx.engine, &old, scheduled_event(120_000))
        .await
        .expect("invocation");
    let reconciled = first.reconciled.expect("reconciled");
    assert!(
        reconciled.finished && reconciled.created == 0,
        "every `projects` job exists: {reconciled:?}"
    );
    assert!(
        job(&fx.engine, &ids[1], "accounts")
            .await
            .expect("job")
            .parked_reason
            .is_some()
    );

    // The configuration gains `accounts`. One active connection got its job
    // by hand and ran it: that job must stay exactly as it is.
    let (config, engine) = with_accounts(&fx);
    let report = engine
        .run_now(&ids[0], "accounts", deadline(120), &|_| {})
        .await
        .expect("run");
    assert_eq!(report.end, shared::sync::engine::RunEnd::Finished, "{report:?}");
    let ran = job(&engine, &ids[0], "accounts").await.expect("job");
    let new = reconciler(&fx, config, &engine);

    // Late invocations, one page each: the walk resumes where the last stopped.
    let (invocations, created) = walk_to_the_end(&engine, &new).await;
    assert!(invocations >= 3, "10 connections, 4 a page: {invocations} invocations");
    // 8 active connections, one of which had its job: 7 created (one of
    // them the parked job of a sync configured again, made due).
    assert_eq!(created, 7);
    for (i, id) in ids.iter().enumerate() {
        let job = job(&engine, id, "accounts").await;
        match i {
            3 | 7 => assert!(job.is_none(), "no job for the revoked {id}"),
            0 => assert_eq!(job.as_ref(), Some(&ran), "the existing job is untouched"),
            _ => {
                let job = job.unwrap_or_else(|| panic!("a job for {id}"));
                assert!(job.next_run_at.is_some() && job.parked_reason.is_none(), "{job:?}");
            }
        }
    }

    // The same configuration again: one read, no query, nothing created.
    let queries = fx.fixture.service.store().ops().snapshot().2;
    let again = sync::invoke(&engine, &new, scheduled_event(0))
        .await
        .expect("invocation");
    let reconciled = again.reconciled.expect("reconciled");
    assert!(reconciled.up_to_date && reconciled.created == 0, "{reconciled:?}");
    assert_eq!(
        fx.fixture.service.store().ops().snapshot().2,
        queries,
        "no query of the connections"
    );
    assert_eq!(
        job(&engine, &ids[0], "accounts").await.as_ref(),
        Some(&ran),
        "the existing job is untouched"
    );
}

#[tokio::test]
async fn two_invocations_at_once_never_both_walk() {
    let (fx, ids) = ten_logins().await;
    let (config, engine) = with_accounts(&fx);
    // Two warm instances, each with its own reconciler, invoked together.
    let (a, b) = (
        reconciler(&fx, config.clone(), &engine),
        reconciler(&fx, config, &engine),
    );
    let (one, other) = tokio::join!(
        sync::invoke(&engine, &a, scheduled_event(120_000)),
        sync::invoke(&engine, &b, scheduled_event(120_000)),
    );
    let (one, other) = (
        one.expect("invocation").reconciled.expect("reconciled"),
        other.expect("invocation").reconciled.expect("reconciled"),
    );
    assert!(
        one.pages == 0 || other.pages == 0,
        "one walks, the other finds it held or done: {one:?} {other:?}"
    );
    assert_eq!(one.created + other.created, 8, "a job for each active connection");
    for (i, id) in ids.iter().enumerate() {
        let job = job(&engine, id, "accounts").await;
        assert_eq!(job.is_some(), i != 3 && i != 7, "{id}");
    }
}
