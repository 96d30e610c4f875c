//! The handler, called directly with a fixture EventBridge schedule event,
//! against the local stack and the simulator's Exact Online data API.

mod common;

use std::sync::Arc;

use common::scheduled_event;
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{SyncFixture, quick_sync_settings};
use shared::config::PresetName;
use shared::connection::now_ms;
use shared::sync::jobs::job_id;
use shared::sync::reconcile::{ReconcileSettings, Reconciler};

#[tokio::test]
async fn a_scheduled_run_syncs_every_due_job_and_schedules_the_next() {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let syncs = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
                 query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"incremental\"\n\
                 cursor_field = \"Timestamp\"\ninterval_secs = 900\n";
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        syncs,
        quick_sync_settings(),
        "handler",
    )
    .await;
    fx.sim().seed_projects(150);
    let ids = [fx.connect("tenant-a").await, fx.connect("tenant-b").await];
    let engine: &Arc<_> = &fx.engine;
    let reconciler = Reconciler::new(
        fx.fixture.config.clone(),
        fx.fixture.service.store().clone(),
        engine.jobs().clone(),
        ReconcileSettings::default(),
    );

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
