//! The handler, called directly with a fixture EventBridge schedule event,
//! against the local stack and the simulator's Exact Online data API.

mod common;

use std::sync::Arc;

use common::scheduled_event;
use oauth_sync_tests::proxy::DynamoProxy;
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{SyncFixture, dynamodb_via, quick_sync_settings};
use shared::config::PresetName;
use shared::connection::{ConnectionId, DUE_SHARDS, now_ms};
use shared::runtime::Starting;
use shared::sync::jobs::{JobStore, job_id};
use shared::sync::reconcile::{ReconcileSettings, Reconciler};
use shared::telemetry::startup_failed;

/// Two connections to Exact Online's simulated data API, each with a due
/// incremental sync of its `projects` projects, and the reconciliation.
async fn two_tenants(test: &str, projects: usize) -> (SyncFixture, [ConnectionId; 2], Reconciler) {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let syncs = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
                 query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"incremental\"\n\
                 cursor_field = \"Timestamp\"\ninterval_secs = 900\n";
    let fx = SyncFixture::start(sim, "min_refresh_interval_secs = 0", syncs, quick_sync_settings(), test).await;
    fx.sim().seed_projects(projects);
    let ids = [fx.connect("tenant-a").await, fx.connect("tenant-b").await];
    let reconciler = Reconciler::new(
        fx.fixture.config.clone(),
        fx.fixture.service.store().clone(),
        fx.engine.jobs().clone(),
        ReconcileSettings::default(),
    );
    (fx, ids, reconciler)
}

#[tokio::test]
async fn a_scheduled_run_syncs_every_due_job_and_schedules_the_next() {
    let (fx, ids, reconciler) = two_tenants("handler", 150).await;
    let engine: &Arc<_> = &fx.engine;

    let summary = sync::function_handler(engine, &reconciler, scheduled_event(120_000))
        .await
        .expect("the run succeeds");
    assert_eq!(
        (summary.due, summary.finished, summary.failed),
        (2, 2, 0),
        "{summary:?}"
    );
    for id in &ids {
        assert_eq!(fx.records(id, "projects").await.len(), 150);
        let job = engine
            .jobs()
            .get(&job_id(id, "projects"))
            .await
            .expect("read")
            .expect("job");
        let next = job.next_run_at.expect("scheduled");
        assert!(next >= now_ms() + 800_000, "the next run is an interval away");
        assert_eq!(job.lease_owner, None, "the lease is released");
    }

    // Nothing is due until the interval has passed.
    let summary = sync::function_handler(engine, &reconciler, scheduled_event(120_000))
        .await
        .expect("the run succeeds");
    assert_eq!(summary.due, 0, "{summary:?}");
}

#[tokio::test]
async fn the_first_invocation_looks_at_the_due_index_while_the_start_up_still_runs() {
    let (fx, ids, reconciler) = two_tenants("starting", 20).await;
    let engine = Arc::clone(&fx.engine);
    // The looks go through a proxy that counts them.
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack is running");
    let proxy = DynamoProxy::start(&upstream).await.expect("proxy");
    let jobs = JobStore::new(
        dynamodb_via(&proxy.url),
        &fx.fixture.tables["SyncStateTable"],
        &fx.fixture.tables["SyncRunsTable"],
    );
    // A start-up still reading its configuration when the event comes.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let starting = Arc::new(Starting::spawn(async move {
        let _ = released.await;
        Ok(Arc::new(sync::Services { engine, reconciler }))
    }));
    let invocation = {
        let (starting, jobs) = (Arc::clone(&starting), jobs.clone());
        tokio::spawn(async move { sync::invoke_starting(&starting, &jobs, scheduled_event(120_000)).await })
    };
    // Every shard of the sync-due index is looked at before the start-up ends.
    let looked = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let looks = || {
        proxy
            .calls()
            .iter()
            .filter(|call| call.index.as_deref() == Some("sync-due"))
            .count()
    };
    while looks() < DUE_SHARDS as usize {
        assert!(std::time::Instant::now() < looked, "the shards were not looked at");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!starting.ended() && !invocation.is_finished());
    release.send(()).expect("the start-up waits");
    let done = invocation.await.expect("the invocation").expect("it succeeds");
    assert_eq!(
        (done.runs.due, done.runs.finished, done.runs.failed),
        (2, 2, 0),
        "{:?}",
        done.runs
    );
    assert!(done.reconciled.is_some());
    for id in &ids {
        assert_eq!(fx.records(id, "projects").await.len(), 20);
    }
}

#[tokio::test]
async fn an_invocation_whose_start_up_failed_says_so() {
    let fx = SyncFixture::start(
        SimConfig::for_preset(PresetName::ExactOnline),
        "",
        "",
        quick_sync_settings(),
        "start-failed",
    )
    .await;
    let starting: Starting<sync::Services> = Starting::spawn(async {
        Err(startup_failed(std::io::Error::other(
            "configuration secret: oauth-sync/config not found",
        )))
    });
    let e = sync::invoke_starting(&starting, fx.engine.jobs(), scheduled_event(120_000))
        .await
        .expect_err("no start-up, no run");
    assert!(matches!(e, sync::SyncRunError::Startup(_)), "{e}");
    let diagnostic = lambda_runtime::Diagnostic::from(e);
    assert_eq!(diagnostic.error_type, "StartupFailed");
    assert!(diagnostic.error_message.contains("oauth-sync/config not found"));
}
