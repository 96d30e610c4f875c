//! The sync engine against DynamoDB Local and the simulator's data APIs:
//! records land exactly once, reruns of unchanged data write nothing,
//! upstream changes and deletions arrive, faults and rate limits are ridden
//! out, and a run that stops (deadline, crash, another invocation) resumes
//! without losing or duplicating anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use oauth_sync_tests::simulator::{DataFault, DataFaultPlan, RateLimits, SimConfig};
use oauth_sync_tests::stack::{SyncFixture, deadline, quick_sync_settings};
use shared::config::PresetName;
use shared::connection::ConnectionId;
use shared::sync::engine::{RunEnd, SyncSettings};
use shared::sync::jobs::{Next, job_id};

const INCREMENTAL: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
     query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"incremental\"\ncursor_field = \"Timestamp\"\n\
     fields = { id = \"ID\", code = \"Code\", description = \"Description\" }\ninterval_secs = 900\n";

const FULL: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
     query = { \"$select\" = \"ID,Code,Description\" }\nmode = \"full\"\n";

/// An Exact Online simulator without rate limits (tests that are not about them).
fn exact() -> SimConfig {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    sim
}

/// A Microsoft Graph simulator without rate limits.
fn graph() -> SimConfig {
    let mut sim = SimConfig::for_preset(PresetName::Microsoft);
    sim.data.rate_limit = None;
    sim
}

/// An Exact Online simulator with these limits and 20 projects a page on
/// the normal endpoint, so that a few hundred projects take many requests.
fn exact_limited(limits: RateLimits) -> SimConfig {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.page_size = 20;
    sim.data.rate_limit = Some(limits);
    sim
}

async fn fixture(sim: SimConfig, syncs: &str, test: &str) -> SyncFixture {
    SyncFixture::start(sim, "min_refresh_interval_secs = 0", syncs, quick_sync_settings(), test).await
}

/// The live (not deleted) records as id → description.
async fn live(fx: &SyncFixture, id: &ConnectionId, sync: &str) -> BTreeMap<String, String> {
    fx.records(id, sync)
        .await
        .into_iter()
        .filter(|r| r.deleted_at.is_none())
        .map(|r| {
            let description = r
                .data
                .get("description")
                .or_else(|| r.data.get("Description"))
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_owned();
            (r.id, description)
        })
        .collect()
}

/// The simulator's projects as id → description.
fn upstream(fx: &SyncFixture) -> BTreeMap<String, String> {
    fx.sim()
        .projects()
        .into_iter()
        .map(|p| {
            (
                p["ID"].as_str().unwrap_or_default().to_owned(),
                p["Description"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Requests for project pages the simulator answered 200.
fn project_pages(fx: &SyncFixture) -> usize {
    fx.sim()
        .data_requests_log()
        .iter()
        .filter(|r| r.path_and_query.contains("Project/Projects") && r.status == 200)
        .count()
}

fn writes(fx: &SyncFixture) -> u64 {
    fx.engine.records().ops().writes.load(Ordering::Relaxed)
}

/// Settings for runs cut by a deadline of a few seconds: a page may take 2 s
/// and the last writes 1 s, so a run yields with 3 s left.
fn short_deadline_settings() -> SyncSettings {
    SyncSettings {
        page_timeout: Duration::from_secs(2),
        commit_margin: Duration::from_secs(1),
        ..quick_sync_settings()
    }
}

#[tokio::test]
async fn ten_thousand_projects_land_once_and_the_next_run_fetches_only_what_changed() {
    let fx = fixture(exact(), INCREMENTAL, "sync-10k").await;
    let ids = fx.sim().seed_projects(10_000);
    let conn = fx.connect("acme-10k").await;

    let first = fx.run(&conn, "projects").await;
    assert_eq!(first.end, RunEnd::Finished, "{first:?}");
    assert_eq!(first.counts.inserted, 10_000);
    assert_eq!(first.counts.pages, 10, "1,000 per page on sync/ endpoints");
    assert_eq!(project_pages(&fx), 10, "each page fetched once");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));

    // Upstream: one insert and one update; the next run fetches just those two.
    fx.sim().insert_project("NEW-1", "a new project");
    assert!(fx.sim().update_project(&ids[17], "renamed"));
    let before = writes(&fx);
    let second = fx.run(&conn, "projects").await;
    assert_eq!(second.end, RunEnd::Finished, "{second:?}");
    assert_eq!(
        (second.counts.fetched, second.counts.inserted, second.counts.updated),
        (2, 1, 1)
    );
    assert_eq!(writes(&fx) - before, 2, "only the changed records are written");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));

    // Nothing changed: nothing fetched, nothing written.
    let before = writes(&fx);
    let third = fx.run(&conn, "projects").await;
    assert_eq!((third.counts.fetched, writes(&fx) - before), (0, 0));
}

#[tokio::test]
async fn an_unchanged_full_rerun_writes_nothing_and_the_sweep_finds_deletions() {
    let fx = fixture(exact(), FULL, "sync-full").await;
    let ids = fx.sim().seed_projects(300);
    let conn = fx.connect("acme-full").await;
    let first = fx.run(&conn, "projects").await;
    assert_eq!(
        (first.end.clone(), first.counts.inserted),
        (RunEnd::Finished, 300),
        "{first:?}"
    );
    assert_eq!(first.counts.pages, 5, "60 per page on normal endpoints");

    let before = writes(&fx);
    let rerun = fx.run(&conn, "projects").await;
    assert_eq!(rerun.counts.unchanged, 300);
    assert_eq!(writes(&fx) - before, 0, "an unchanged record costs zero writes");

    assert!(fx.sim().delete_project(&ids[3]));
    assert!(fx.sim().delete_project(&ids[250]));
    let third = fx.run(&conn, "projects").await;
    assert_eq!(third.counts.deleted, 2, "{third:?}");
    let stored = fx.records(&conn, "projects").await;
    let deleted: BTreeSet<_> = stored
        .iter()
        .filter(|r| r.deleted_at.is_some())
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(deleted, BTreeSet::from([ids[3].clone(), ids[250].clone()]));
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
}

#[tokio::test]
async fn a_full_run_that_fails_halfway_deletes_nothing() {
    let fx = fixture(exact(), FULL, "sync-partial").await;
    let ids = fx.sim().seed_projects(300);
    let conn = fx.connect("acme-partial").await;
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);

    for id in &ids[..5] {
        fx.sim().delete_project(id);
    }
    // Every page after the first fails as often as a run tries it.
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 500 },
        times: quick_sync_settings().page_attempts,
        path_contains: Some("skiptoken".to_owned()),
    });
    let failed = fx.run(&conn, "projects").await;
    assert!(matches!(failed.end, RunEnd::Failed(_)), "{failed:?}");
    assert_eq!(failed.counts.deleted, 0);
    assert!(
        fx.records(&conn, "projects")
            .await
            .iter()
            .all(|r| r.deleted_at.is_none()),
        "a partial run deletes nothing"
    );
    let job = fx
        .engine
        .jobs()
        .get(&job_id(&conn, "projects"))
        .await
        .expect("read")
        .expect("job");
    let last = job.last_run.expect("the failed run is recorded");
    assert_eq!(last.status, "failed");
    assert!(
        last.error.as_deref().unwrap_or_default().contains("HTTP 500"),
        "{last:?}"
    );

    // The next run resumes where it failed, completes, and then sweeps.
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.deleted, 5, "{report:?}");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
}

#[tokio::test]
async fn broken_slow_and_failing_pages_are_recovered_without_loss_or_duplicates() {
    let settings = SyncSettings {
        page_attempts: 6,
        ..quick_sync_settings()
    };
    let fx = SyncFixture::start(
        exact(),
        "min_refresh_interval_secs = 0",
        INCREMENTAL,
        settings,
        "sync-faults",
    )
    .await;
    fx.sim().seed_projects(2_500);
    let conn = fx.connect("acme-faults").await;
    for fault in [
        DataFault::Truncated,
        DataFault::InvalidJson,
        DataFault::Status { status: 503 },
        DataFault::Status { status: 502 },
        DataFault::Delay { millis: 1_500 },
    ] {
        fx.sim().inject_data_fault(DataFaultPlan {
            fault,
            times: 1,
            path_contains: None,
        });
    }
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.inserted, 2_500);
    assert_eq!(report.counts.retries, 4, "{report:?}");
    let stored = fx.records(&conn, "projects").await;
    assert_eq!(stored.len(), 2_500, "no record lost or duplicated");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
}

#[tokio::test]
async fn with_rate_limit_headers_no_request_is_ever_answered_429() {
    let sim = exact_limited(RateLimits {
        minutely: 4,
        minute_window: Duration::from_secs(3),
        daily: 5_000,
        day_window: Duration::from_secs(86_400),
    });
    let fx = fixture(sim, FULL, "sync-rate").await;
    fx.sim().seed_projects(200);
    let conn = fx.connect("acme-rate").await;
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.inserted, 200);
    assert_eq!(fx.sim().counters().data_429s, 0, "slowed down before the 429");
    assert!(report.counts.requests > 4, "more requests than one window allows");
}

#[tokio::test]
async fn a_spent_daily_budget_stops_the_run_until_its_reset() {
    let sim = exact_limited(RateLimits {
        minutely: 60,
        minute_window: Duration::from_secs(60),
        daily: 3,
        day_window: Duration::from_secs(3_600),
    });
    let fx = fixture(sim, FULL, "sync-daily").await;
    fx.sim().seed_projects(200);
    let conn = fx.connect("acme-daily").await;
    let report = fx.run(&conn, "projects").await;
    let RunEnd::Yielded { until, .. } = report.end else {
        panic!("the run should stop for the day: {report:?}")
    };
    assert!(
        until > shared::connection::now_ms() + 600_000,
        "resumes after the reset"
    );
    assert_eq!(fx.sim().counters().data_429s, 0);
    let job = fx
        .engine
        .jobs()
        .get(&job_id(&conn, "projects"))
        .await
        .expect("read")
        .expect("job");
    assert_eq!(job.next_run_at, Some(until), "the next run waits for the reset");
    assert_eq!(
        job.checkpoint.rate.least_remaining(),
        Some(0),
        "the budget is kept on the job"
    );
}

#[tokio::test]
async fn a_429_storm_with_retry_after_is_ridden_out() {
    let mut sim = SimConfig::for_preset(PresetName::Microsoft);
    sim.data.graph_page_size = 50;
    let syncs = "[syncs.contacts]\nprovider = \"sim\"\nendpoint = \"/me/contacts\"\nmode = \"full\"\n";
    let fx = fixture(sim, syncs, "sync-storm").await;
    fx.sim().seed_contacts(120);
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::RetryAfter { status: 429, secs: 1 },
        times: 4,
        path_contains: None,
    });
    let conn = fx.connect("acme-storm").await;
    let report = fx.run(&conn, "contacts").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!((report.counts.inserted, report.counts.throttled), (120, 4));
    assert_eq!(fx.records(&conn, "contacts").await.len(), 120);
}

#[tokio::test]
async fn graph_delta_brings_inserts_updates_and_removals() {
    let sim = graph();
    let syncs = "[syncs.contacts]\nprovider = \"sim\"\nendpoint = \"/me/contacts/delta\"\nmode = \"delta\"\n";
    let fx = fixture(sim, syncs, "sync-delta").await;
    let ids = fx.sim().seed_contacts(250);
    let conn = fx.connect("acme-delta").await;
    let first = fx.run(&conn, "contacts").await;
    assert_eq!(
        (first.end.clone(), first.counts.inserted),
        (RunEnd::Finished, 250),
        "{first:?}"
    );

    fx.sim().insert_contact("Ada", "Lovelace", "ada@example.com");
    assert!(fx.sim().update_contact(&ids[1], "Renamed Person"));
    assert!(fx.sim().delete_contact(&ids[2]));
    let second = fx.run(&conn, "contacts").await;
    assert_eq!(second.end, RunEnd::Finished, "{second:?}");
    assert_eq!(
        (second.counts.inserted, second.counts.updated, second.counts.deleted),
        (1, 1, 1),
        "{second:?}"
    );
    let stored = fx.records(&conn, "contacts").await;
    let removed = stored.iter().find(|r| r.id == ids[2]).expect("kept as deleted");
    assert!(removed.deleted_at.is_some());
    assert_eq!(stored.iter().filter(|r| r.deleted_at.is_none()).count(), 250);
}

#[tokio::test]
async fn exact_deletions_arrive_through_sync_deleted() {
    let mut sim = exact();
    sim.data.project_deleted_entity_type = Some(77);
    let syncs = format!("{INCREMENTAL}deleted_entity_type = 77\n");
    let fx = fixture(sim, &syncs, "sync-deleted").await;
    let ids = fx.sim().seed_projects(50);
    let conn = fx.connect("acme-deleted").await;
    let first = fx.run(&conn, "projects").await;
    assert_eq!(first.end, RunEnd::Finished, "{first:?}");
    assert!(fx.sim().delete_project(&ids[7]));
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.counts.deleted, 1, "{report:?}");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
}

#[tokio::test]
async fn an_access_token_that_expires_mid_run_is_refreshed_through_the_protocol() {
    let mut sim = exact();
    sim.access_token_ttl = Duration::from_secs(3);
    sim.data.sync_page_size = 100;
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0\nrefresh_lead_secs = 1",
        INCREMENTAL,
        quick_sync_settings(),
        "sync-token",
    )
    .await;
    fx.sim().seed_projects(400);
    let conn = fx.connect("acme-token").await;
    // Slow pages: the run outlives the 3 s access token.
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Delay { millis: 1_500 },
        times: 4,
        path_contains: None,
    });
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.inserted, 400);
    let counters = fx.sim().counters();
    assert!(counters.refreshes >= 1, "refreshed during the run: {counters:?}");
    assert_eq!(counters.refresh_tokens_reused, 0);
    assert_eq!(counters.families_revoked, 0);
    assert!(fx.fixture.stored_tokens_work(&conn).await);
}

#[tokio::test]
async fn a_run_stopped_at_its_deadline_resumes_to_the_same_table() {
    let mut sim = exact();
    sim.data.sync_page_size = 100;
    let settings = short_deadline_settings();
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        INCREMENTAL,
        settings,
        "sync-deadline",
    )
    .await;
    fx.sim().seed_projects(500);
    let conn = fx.connect("acme-deadline").await;
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Delay { millis: 1_000 },
        times: 100,
        path_contains: None,
    });
    let mut runs = 0;
    let mut yielded = 0;
    loop {
        runs += 1;
        assert!(runs < 50, "never finished");
        let report = fx
            .engine
            .run_now(&conn, "projects", deadline(4), &|_| {})
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match report.end {
            RunEnd::Finished => break,
            RunEnd::Yielded { .. } => yielded += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(yielded >= 1, "the deadline stopped a run");
    assert_eq!(fx.records(&conn, "projects").await.len(), 500);
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
}

#[tokio::test]
async fn a_run_killed_between_its_writes_and_its_checkpoint_loses_and_duplicates_nothing() {
    let mut sim = exact();
    sim.data.sync_page_size = 100;
    let fx = fixture(sim, INCREMENTAL, "sync-crash").await;
    fx.sim().seed_projects(500);
    let conn = fx.connect("acme-crash").await;
    let id = job_id(&conn, "projects");
    // The checkpoint after the first page…
    let checkpoints = std::sync::Mutex::new(Vec::new());
    let job_before = fx.engine.jobs().get(&id).await.expect("read").expect("job");
    let report = fx
        .engine
        .run_now(&conn, "projects", deadline(300), &|counts| {
            checkpoints.lock().unwrap_or_else(|p| p.into_inner()).push(counts.pages);
        })
        .await
        .expect("run");
    assert_eq!(report.end, RunEnd::Finished);
    assert_eq!(checkpoints.into_inner().unwrap_or_default(), [1, 2, 3, 4, 5]);
    // …is what a run killed after writing pages 1-5 but before their
    // checkpoints would leave: put the job back at its start.
    let claimed = fx
        .engine
        .jobs()
        .claim(&id, "crash-test", shared::connection::now_ms() + 60_000, true)
        .await
        .expect("claim")
        .expect("free");
    assert!(
        fx.engine
            .jobs()
            .release(&id, "crash-test", &job_before.checkpoint, Next::At(0), None, None)
            .await
            .expect("release")
    );
    drop(claimed);
    let before = writes(&fx);
    let replay = fx.run(&conn, "projects").await;
    assert_eq!(replay.end, RunEnd::Finished);
    assert_eq!(replay.counts.fetched, 500, "the pages are read again");
    assert_eq!((replay.counts.inserted, replay.counts.updated), (0, 0), "{replay:?}");
    assert_eq!(writes(&fx) - before, 0, "replays are harmless");
    assert_eq!(fx.records(&conn, "projects").await.len(), 500);
}

#[tokio::test]
async fn two_concurrent_invocations_never_run_a_job_twice() {
    let mut sim = exact();
    sim.data.sync_page_size = 200;
    let fx = fixture(sim, INCREMENTAL, "sync-twice").await;
    fx.sim().seed_projects(600);
    let mut connections = Vec::new();
    for i in 0..6 {
        connections.push(fx.connect(&format!("acme-twice-{i}")).await);
    }
    let other = std::sync::Arc::new(fx.fixture.engine(quick_sync_settings()).await);
    let (a, b) = tokio::join!(fx.engine.run_due(deadline(300)), other.run_due(deadline(120)));
    assert_eq!(a.finished + b.finished, 6, "{a:?} {b:?}");
    assert_eq!(a.failed + b.failed, 0, "{a:?} {b:?}");
    assert_eq!(project_pages(&fx), 6 * 3, "every job's pages fetched exactly once");
    for conn in &connections {
        let runs = fx
            .engine
            .jobs()
            .runs(&job_id(conn, "projects"), 10)
            .await
            .expect("history");
        assert_eq!(runs.len(), 1, "one run for {conn}");
        assert_eq!(runs[0].counts.inserted, 600);
    }
}

#[tokio::test]
async fn a_connection_that_needs_a_new_login_is_parked_and_says_why() {
    let fx = fixture(exact(), INCREMENTAL, "sync-parked").await;
    fx.sim().seed_projects(10);
    let conn = fx.connect("acme-parked").await;
    let refresh = fx.fixture.stored_refresh_token(&conn).await;
    fx.sim().kill_family_of(refresh.secret());
    fx.fixture
        .service
        .refresh_now(&conn, deadline(30))
        .await
        .expect_err("the refresh token is dead");
    let report = fx.run(&conn, "projects").await;
    let RunEnd::Parked(why) = &report.end else {
        panic!("{report:?}")
    };
    assert!(why.contains("needs_reauth"), "{why}");
    let job = fx
        .engine
        .jobs()
        .get(&job_id(&conn, "projects"))
        .await
        .expect("read")
        .expect("job");
    assert_eq!(job.next_run_at, None, "out of the sync-due index");
    assert_eq!(job.parked_reason.as_deref(), Some(why.as_str()));
    assert_eq!(project_pages(&fx), 0);
}

#[tokio::test]
async fn records_without_a_primary_key_are_counted_and_named() {
    let syncs = format!("{INCREMENTAL}primary_key = [\"Missing\"]\n");
    let fx = fixture(exact(), &syncs, "sync-rejected").await;
    fx.sim().seed_projects(3);
    let conn = fx.connect("acme-rejected").await;
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.counts.rejected, 3, "{report:?}");
    assert!(
        report.counts.rejected_examples[0].contains("no primary key `Missing`"),
        "{report:?}"
    );
    assert!(fx.records(&conn, "projects").await.is_empty());
}

#[tokio::test]
async fn the_division_is_learned_at_login_and_fills_the_url() {
    let fx = fixture(exact(), INCREMENTAL, "sync-division").await;
    let conn = fx.connect("acme-division").await;
    let connection = fx.fixture.connection(&conn).await;
    assert_eq!(
        connection.params.get("division").map(String::as_str),
        Some(fx.sim().division().to_string().as_str())
    );
    assert_eq!(connection.param_error, None);
    fx.sim().seed_projects(2);
    fx.run(&conn, "projects").await;
    let log = fx.sim().data_requests_log();
    assert!(
        log.iter().any(|r| r
            .path_and_query
            .starts_with(&format!("/api/v1/{}/sync/Project/Projects", fx.sim().division()))),
        "{log:?}"
    );
}

#[tokio::test]
async fn an_expired_delta_link_starts_a_new_round_that_still_finds_deletions() {
    let sim = graph();
    let syncs = "[syncs.contacts]\nprovider = \"sim\"\nendpoint = \"/me/contacts/delta\"\nmode = \"delta\"\n";
    let fx = fixture(sim, syncs, "sync-gone").await;
    let ids = fx.sim().seed_contacts(30);
    let conn = fx.connect("acme-gone").await;
    assert_eq!(fx.run(&conn, "contacts").await.end, RunEnd::Finished);

    // The stored delta link expires (410), and a contact is deleted meanwhile.
    fx.sim().expire_delta_tokens();
    assert!(fx.sim().delete_contact(&ids[4]));
    let failed = fx.run(&conn, "contacts").await;
    assert!(
        matches!(&failed.end, RunEnd::Failed(why) if why.contains("410")),
        "{failed:?}"
    );
    // The next run reads a whole new round as a sweep: the deletion is found.
    let report = fx.run(&conn, "contacts").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.deleted, 1, "{report:?}");
    assert_eq!(
        fx.records(&conn, "contacts")
            .await
            .iter()
            .filter(|r| r.deleted_at.is_none())
            .count(),
        29
    );
}

#[tokio::test]
async fn a_401_mid_run_is_answered_by_one_refresh_and_a_retry_of_the_page() {
    let mut sim = exact();
    sim.data.sync_page_size = 100;
    let fx = fixture(sim, INCREMENTAL, "sync-401").await;
    fx.sim().seed_projects(300);
    let conn = fx.connect("acme-401").await;
    // The provider ends the access token early: the stored expiry still says
    // it is good, so the first page is answered 401 ("access token expired").
    fx.sim().expire_access_tokens();
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!((report.counts.inserted, report.counts.token_refreshes), (300, 1));
    let counters = fx.sim().counters();
    assert_eq!((counters.data_401s, counters.refreshes), (1, 1), "{counters:?}");
    assert_eq!(counters.refresh_tokens_reused, 0);

    // A token the provider refuses even after a refresh ends the run: no loop.
    fx.sim().expire_access_tokens();
    fx.sim().insert_project("NEW", "new");
    fx.sim().reconfigure(|c| c.access_token_ttl = Duration::ZERO);
    let failed = fx.run(&conn, "projects").await;
    assert!(
        matches!(&failed.end, RunEnd::Failed(why) if why.contains("401")),
        "{failed:?}"
    );
    assert_eq!(failed.counts.token_refreshes, 1);
    assert_eq!(
        fx.sim().counters().data_401s,
        3,
        "one 401, one refresh, one more 401, then stop"
    );
}

/// Every stream record of the table so far: (event name, record id, deleted?).
async fn stream_events(fx: &SyncFixture) -> Vec<(String, String, bool)> {
    use aws_sdk_dynamodbstreams::types::{AttributeValue, ShardIteratorType};
    let table = &fx.fixture.tables["RecordsTable"];
    let arn = fx
        .fixture
        .aws
        .dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .expect("describe table")
        .table
        .and_then(|t| t.latest_stream_arn)
        .expect("the records table has a stream");
    let sdk = shared::aws::sdk_config_from_env();
    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack");
    let streams = aws_sdk_dynamodbstreams::Client::from_conf(
        aws_sdk_dynamodbstreams::config::Builder::from(&sdk)
            .endpoint_url(endpoint)
            .build(),
    );
    let shards = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .expect("describe stream")
        .stream_description
        .and_then(|d| d.shards)
        .unwrap_or_default();
    let mut events = Vec::new();
    for shard in shards {
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(shard.shard_id.unwrap_or_default())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator;
        while let Some(current) = iterator.take() {
            let output = streams
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .expect("get records");
            let records = output.records.unwrap_or_default();
            if records.is_empty() {
                break;
            }
            for record in records {
                let change = record.dynamodb.unwrap_or_else(|| panic!("a change"));
                let id = match change.keys.as_ref().and_then(|k| k.get("record_id")) {
                    Some(AttributeValue::S(id)) => id.clone(),
                    _ => String::new(),
                };
                let deleted = change.new_image.as_ref().is_some_and(|i| i.contains_key("deleted_at"));
                let name = record.event_name.map(|e| e.as_str().to_owned()).unwrap_or_default();
                events.push((name, id, deleted));
            }
            iterator = output.next_shard_iterator;
        }
    }
    events
}

#[tokio::test]
async fn the_records_stream_carries_exactly_the_changes_of_each_run() {
    let fx = fixture(exact(), FULL, "sync-stream").await;
    let ids = fx.sim().seed_projects(5);
    let conn = fx.connect("acme-stream").await;
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    let first = stream_events(&fx).await;
    assert_eq!(first.len(), 5, "{first:?}");
    assert!(
        first.iter().all(|(name, _, deleted)| name == "INSERT" && !deleted),
        "{first:?}"
    );

    // One update, one deletion, three unchanged: two changes, nothing for the rest.
    assert!(fx.sim().update_project(&ids[0], "renamed"));
    assert!(fx.sim().delete_project(&ids[1]));
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    let all = stream_events(&fx).await;
    let second: BTreeSet<_> = all[5..].iter().cloned().collect();
    assert_eq!(
        second,
        BTreeSet::from([
            ("MODIFY".to_owned(), ids[0].clone(), false),
            ("MODIFY".to_owned(), ids[1].clone(), true),
        ]),
        "{all:?}"
    );
    assert_eq!(all.len(), 7, "{all:?}");

    // An unchanged rerun adds nothing to the stream.
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    assert_eq!(stream_events(&fx).await.len(), 7);
}

#[tokio::test]
async fn a_connection_whose_division_was_not_learned_says_so_and_is_not_synced() {
    let provider = "min_refresh_interval_secs = 0\n\
                    discover = { division = { url = \"{sim}/api/v1/current/Nobody\", field = \"d.results.0.CurrentDivision\" } }";
    let fx = SyncFixture::start(exact(), provider, INCREMENTAL, quick_sync_settings(), "sync-noparam").await;
    fx.sim().seed_projects(3);
    let conn = fx.connect("acme-noparam").await;
    let connection = fx.fixture.connection(&conn).await;
    assert_eq!(
        connection.status,
        shared::connection::Status::Active,
        "the login itself worked"
    );
    assert!(connection.params.is_empty());
    let error = connection.param_error.expect("the connection says why");
    assert!(error.contains("`division`"), "{error}");

    let report = fx.run(&conn, "projects").await;
    let RunEnd::Parked(why) = &report.end else {
        panic!("{report:?}")
    };
    assert!(why.contains("connection parameter `division` is missing"), "{why}");
    assert_eq!(project_pages(&fx), 0, "nothing was fetched");
}

#[tokio::test]
async fn no_token_reaches_a_log_line_through_401s_retries_and_failures() {
    let logs = oauth_sync_tests::logs::captured();
    let mut sim = exact();
    sim.data.sync_page_size = 100;
    let fx = fixture(sim, INCREMENTAL, "sync-logs").await;
    fx.sim().seed_projects(300);
    let conn = fx.connect("acme-logs").await;
    fx.sim().expire_access_tokens();
    for fault in [DataFault::Status { status: 503 }, DataFault::Truncated] {
        fx.sim().inject_data_fault(DataFaultPlan {
            fault,
            times: 1,
            path_contains: None,
        });
    }
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    // And a run that fails: every attempt at a page answered 500.
    fx.sim().insert_project("NEW", "new");
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 500 },
        times: quick_sync_settings().page_attempts,
        path_contains: None,
    });
    assert!(matches!(fx.run(&conn, "projects").await.end, RunEnd::Failed(_)));

    let text = logs.text();
    assert!(text.contains("sync run ended"), "the capture saw the engine's logs");
    assert!(text.contains("trying the page again"), "and its retries");
    let secrets = fx.sim().issued_secrets();
    assert!(secrets.len() >= 4, "a login and a refresh: {}", secrets.len());
    for secret in secrets {
        assert!(!text.contains(&secret), "a token value appeared in the logs");
    }
    assert!(
        !text.contains(fx.fixture.oauth.credentials.client_secret.secret()),
        "the client secret (read from Secrets Manager) appeared in the logs"
    );
}

/// The engine's settings with in-run waits for a rate limit cut to `max_wait`.
fn settings_waiting_at_most(max_wait: Duration) -> SyncSettings {
    SyncSettings {
        max_wait,
        ..quick_sync_settings()
    }
}

async fn job(fx: &SyncFixture, conn: &ConnectionId, sync: &str) -> shared::sync::jobs::Job {
    fx.engine
        .jobs()
        .get(&job_id(conn, sync))
        .await
        .expect("read")
        .expect("job")
}

/// Requests the simulator answered with `status`.
fn answered(fx: &SyncFixture, status: u16) -> usize {
    fx.sim()
        .data_requests_log()
        .iter()
        .filter(|r| r.status == status)
        .count()
}

#[tokio::test]
async fn a_delta_round_whose_next_link_expires_after_a_yield_deletes_only_what_is_gone() {
    // Graph: a delta round yields on a 429 with Retry-After, its next link
    // then expires (410); the next run must read everything again and mark
    // deleted only what is really gone, not everything the old delta link
    // would not have returned.
    let sim = graph();
    let syncs = "[syncs.contacts]\nprovider = \"sim\"\nendpoint = \"/me/contacts/delta\"\nmode = \"delta\"\n";
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        syncs,
        settings_waiting_at_most(Duration::from_millis(100)),
        "sync-delta-restart",
    )
    .await;
    let ids = fx.sim().seed_contacts(245);
    let conn = fx.connect("acme-delta-restart").await;
    assert_eq!(fx.run(&conn, "contacts").await.end, RunEnd::Finished);

    // 150 changes: the next round from the delta link has two pages.
    for id in &ids[..150] {
        assert!(fx.sim().update_contact(id, "Changed"));
    }
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::RetryAfter { status: 429, secs: 1 },
        times: 1,
        path_contains: Some("skiptoken".to_owned()),
    });
    let yielded = fx.run(&conn, "contacts").await;
    assert!(matches!(yielded.end, RunEnd::Yielded { .. }), "{yielded:?}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    fx.sim().expire_delta_tokens();
    assert!(fx.sim().delete_contact(&ids[200]));
    let gone = fx.run(&conn, "contacts").await;
    assert!(
        matches!(&gone.end, RunEnd::Failed(why) if why.contains("410")),
        "{gone:?}"
    );
    let report = fx.run(&conn, "contacts").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.deleted, 1, "only the contact that is gone: {report:?}");
    let live: BTreeSet<String> = fx
        .records(&conn, "contacts")
        .await
        .into_iter()
        .filter(|r| r.deleted_at.is_none())
        .map(|r| r.id)
        .collect();
    let upstream: BTreeSet<String> = fx
        .sim()
        .contacts()
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(live, upstream);
    assert_eq!(live.len(), 244);
}

/// The seen-id marker items of a job in the sync-runs table.
async fn seen_markers(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    job: &str,
) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    dynamodb
        .query()
        .table_name(table)
        .key_condition_expression("job = :job AND begins_with(sk, :seen)")
        .expression_attribute_values(":job", AttributeValue::S(job.to_owned()))
        .expression_attribute_values(":seen", AttributeValue::S("seen#".to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("query markers")
        .items
        .unwrap_or_default()
}

#[tokio::test]
async fn a_sweep_whose_early_markers_are_gone_starts_again_and_deletes_nothing_wrongly() {
    // A full pass stops halfway (its invocation's deadline), and while the
    // job waits its first seen-id markers disappear (their TTL: a connection
    // that needed a new login and came back days later). Finishing that pass
    // would mark the records of the early pages deleted; the sweep must see
    // the gap and read again.
    let mut sim = exact();
    sim.data.page_size = 20;
    let settings = short_deadline_settings();
    let fx = SyncFixture::start(sim, "min_refresh_interval_secs = 0", FULL, settings, "sync-markers").await;
    fx.sim().seed_projects(200);
    let conn = fx.connect("acme-markers").await;
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);

    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Delay { millis: 700 },
        times: 4,
        path_contains: None,
    });
    let stopped = fx
        .engine
        .run_now(&conn, "projects", deadline(5), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(stopped.end, RunEnd::Yielded { .. }), "{stopped:?}");
    assert!(stopped.counts.pages >= 2, "{stopped:?}");

    // The markers of the pass so far expire.
    let sdk = shared::aws::sdk_config_from_env();
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let runs_table = &fx.fixture.tables["SyncRunsTable"];
    let markers = seen_markers(&dynamodb, runs_table, &job_id(&conn, "projects")).await;
    assert!(markers.len() >= 2, "the stopped pass left markers");
    for marker in markers.iter().take(2) {
        dynamodb
            .delete_item()
            .table_name(runs_table)
            .set_key(Some(
                ["job", "sk"]
                    .into_iter()
                    .map(|k| (k.to_owned(), marker[k].clone()))
                    .collect(),
            ))
            .send()
            .await
            .expect("delete marker");
    }
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.deleted, 0, "nothing is gone upstream: {report:?}");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
    // And the markers are cleaned up: the abandoned pass's and the finished one's.
    let left = seen_markers(&dynamodb, runs_table, &job_id(&conn, "projects"))
        .await
        .len();
    assert_eq!(left, 0, "the markers of both passes are deleted");
}

#[tokio::test]
async fn a_record_too_large_to_store_is_not_swept_as_deleted() {
    let fx = fixture(exact(), FULL, "sync-too-large").await;
    let ids = fx.sim().seed_projects(30);
    let conn = fx.connect("acme-too-large").await;
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    // Upstream, one project grows past DynamoDB's 400 KB item limit.
    assert!(fx.sim().update_project(&ids[3], &"x".repeat(420 * 1024)));
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!((report.counts.rejected, report.counts.deleted), (1, 0), "{report:?}");
    let stored = fx.records(&conn, "projects").await;
    let big = stored.iter().find(|r| r.id == ids[3]).expect("still stored");
    assert!(big.deleted_at.is_none(), "it exists upstream: not deleted");
}

#[tokio::test]
async fn a_401_after_another_worker_rotated_the_token_spends_no_second_refresh() {
    let fx = fixture(exact(), INCREMENTAL, "sync-401-version").await;
    fx.sim().seed_projects(20);
    let conn = fx.connect("acme-401-version").await;
    // The page is slow; while it is on its way, the provider ends the token
    // it carries and another worker (the refresher) rotates it.
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Delay { millis: 1_500 },
        times: 1,
        path_contains: Some("Project".to_owned()),
    });
    let refreshes_before = fx.sim().counters().refreshes;
    let run = fx.run(&conn, "projects");
    let other = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        fx.sim().expire_access_tokens();
        fx.fixture
            .service
            .refresh_now(&conn, deadline(30))
            .await
            .expect("the other worker's refresh");
    };
    let (report, ()) = tokio::join!(run, other);
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.inserted, 20);
    let counters = fx.sim().counters();
    assert_eq!(counters.data_401s, 1, "{counters:?}");
    assert_eq!(
        counters.refreshes - refreshes_before,
        1,
        "only the other worker's refresh: the newer token is used as it is"
    );
    assert_eq!(report.counts.token_refreshes, 0);
    assert_eq!(counters.refresh_tokens_reused, 0);
}

#[tokio::test]
async fn a_403_parks_the_job_with_the_reason_and_failures_back_off() {
    let fx = fixture(exact(), INCREMENTAL, "sync-403").await;
    fx.sim().seed_projects(20);
    let conn = fx.connect("acme-403").await;
    // Rights not granted yet: every data request is refused.
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 403 },
        times: 1,
        path_contains: Some("Project".to_owned()),
    });
    let report = fx.run(&conn, "projects").await;
    let RunEnd::Parked(why) = &report.end else {
        panic!("{report:?}")
    };
    assert!(why.contains("403"), "{why}");
    let parked = job(&fx, &conn, "projects").await;
    assert_eq!(
        parked.next_run_at, None,
        "out of the schedule, not retried each interval"
    );
    assert_eq!(parked.parked_reason.as_deref(), Some(why.as_str()));
    assert_eq!(answered(&fx, 403), 1, "one error spent, not one per interval");

    // A failing run waits longer each time: the interval (at most 15 min),
    // doubling, with jitter.
    let mut waits = Vec::new();
    for _ in 0..3 {
        fx.sim().inject_data_fault(DataFaultPlan {
            fault: DataFault::Status { status: 500 },
            times: quick_sync_settings().page_attempts,
            path_contains: Some("Project".to_owned()),
        });
        let failed = fx.run(&conn, "projects").await;
        assert!(matches!(failed.end, RunEnd::Failed(_)), "{failed:?}");
        let after = job(&fx, &conn, "projects").await;
        let wait = after.next_run_at.expect("scheduled") - shared::connection::now_ms();
        waits.push((after.checkpoint.failures, wait));
    }
    let minute = 60_000;
    assert_eq!(waits.iter().map(|(f, _)| *f).collect::<Vec<_>>(), [1, 2, 3]);
    for (failures, wait) in &waits {
        let full = (15 * minute) << (failures - 1);
        assert!(*wait > full / 2 - minute && *wait <= full, "{failures}: {wait}");
    }
    // A finished run starts the count again.
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(job(&fx, &conn, "projects").await.checkpoint.failures, 0);
}

#[tokio::test]
async fn a_failing_deleted_feed_does_not_keep_the_data_from_arriving() {
    let mut sim = exact();
    sim.data.project_deleted_entity_type = Some(77);
    let syncs = format!("{INCREMENTAL}deleted_entity_type = 77\n");
    let fx = fixture(sim, &syncs, "sync-deleted-fails").await;
    let ids = fx.sim().seed_projects(40);
    let conn = fx.connect("acme-deleted-fails").await;
    let first = fx.run(&conn, "projects").await;
    assert_eq!(first.end, RunEnd::Finished, "{first:?}");
    assert_eq!(answered(&fx, 400), 0, "the feed sends the `$select` Exact requires");

    // The feed fails twice; the data of each run arrive all the same.
    for round in 0..2 {
        fx.sim().insert_project(&format!("NEW-{round}"), "new");
        fx.sim().inject_data_fault(DataFaultPlan {
            fault: DataFault::Status { status: 500 },
            times: quick_sync_settings().page_attempts,
            path_contains: Some("sync/Deleted".to_owned()),
        });
        let failed = fx.run(&conn, "projects").await;
        assert!(matches!(failed.end, RunEnd::Failed(_)), "{failed:?}");
        assert_eq!(failed.counts.inserted, 1, "round {round}: {failed:?}");
    }
    // Then it recovers, and the deletion arrives.
    assert!(fx.sim().delete_project(&ids[5]));
    let report = fx.run(&conn, "projects").await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.deleted, 1, "{report:?}");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
    assert_eq!(answered(&fx, 400), 0);
}

#[tokio::test]
async fn a_failed_run_and_its_resumed_finish_each_leave_a_history_item() {
    let mut sim = exact();
    sim.data.page_size = 20;
    let fx = fixture(sim, FULL, "sync-history").await;
    fx.sim().seed_projects(100);
    let conn = fx.connect("acme-history").await;
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 500 },
        times: quick_sync_settings().page_attempts,
        path_contains: Some("skiptoken".to_owned()),
    });
    assert!(matches!(fx.run(&conn, "projects").await.end, RunEnd::Failed(_)));
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    let runs = fx
        .engine
        .jobs()
        .runs(&job_id(&conn, "projects"), 10)
        .await
        .expect("history");
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["finished", "failed"], "{runs:?}");
}

#[tokio::test]
async fn a_login_during_a_run_that_parks_leaves_the_job_scheduled() {
    let fx = fixture(exact(), INCREMENTAL, "sync-park-race").await;
    let conn = fx.connect("acme-park-race").await;
    let id = job_id(&conn, "projects");
    let jobs = fx.engine.jobs();
    let until = shared::connection::now_ms() + 60_000;
    let claimed = jobs.claim(&id, "run", until, true).await.expect("claim").expect("free");
    // The run finds the connection dead; meanwhile the user logs in again,
    // which schedules the job; then the run parks it.
    jobs.schedule(&conn, "projects").await.expect("the login schedules");
    let released = jobs
        .release(
            &id,
            "run",
            &claimed.checkpoint,
            Next::Parked("needs a new login".to_owned()),
            None,
            claimed.schedule_nonce.as_deref(),
        )
        .await
        .expect("release");
    assert!(released);
    let after = job(&fx, &conn, "projects").await;
    assert_eq!(after.parked_reason, None, "the login's schedule wins");
    assert!(after.next_run_at.is_some(), "{after:?}");
    assert_eq!(after.lease_owner, None);

    // Without a login in between, parking holds.
    let claimed = jobs.claim(&id, "run", until, true).await.expect("claim").expect("free");
    assert!(
        jobs.release(
            &id,
            "run",
            &claimed.checkpoint,
            Next::Parked("needs a new login".to_owned()),
            None,
            claimed.schedule_nonce.as_deref(),
        )
        .await
        .expect("release")
    );
    assert_eq!(job(&fx, &conn, "projects").await.next_run_at, None);
}

#[tokio::test]
async fn graph_user_updates_that_carry_only_what_changed_are_merged_into_the_whole_record() {
    let sim = graph();
    let syncs = "[syncs.users]\nprovider = \"sim\"\nendpoint = \"/users/delta\"\nmode = \"delta\"\n";
    let fx = fixture(sim, syncs, "sync-users-delta").await;
    let ids = fx.sim().seed_users(60);
    let conn = fx.connect("acme-users").await;
    let first = fx.run(&conn, "users").await;
    assert_eq!(
        (first.end.clone(), first.counts.inserted),
        (RunEnd::Finished, 60),
        "{first:?}"
    );

    for id in &ids[..20] {
        assert!(fx.sim().update_user_job_title(id, Some("Engineer")));
    }
    let second = fx.run(&conn, "users").await;
    assert_eq!(second.end, RunEnd::Finished, "{second:?}");
    assert_eq!(second.counts.updated, 20, "{second:?}");
    // Every stored record is the whole user, as the provider has it now.
    let upstream: BTreeMap<String, serde_json::Value> = fx
        .sim()
        .users()
        .into_iter()
        .map(|u| (u["id"].as_str().unwrap_or_default().to_owned(), u))
        .collect();
    let stored = fx.records(&conn, "users").await;
    assert_eq!(stored.len(), 60);
    for record in &stored {
        let want = &upstream[&record.id];
        for (field, value) in want.as_object().into_iter().flatten() {
            assert_eq!(record.data.get(field), Some(value), "{}: `{field}`", record.id);
        }
    }
    // A rerun of the same round changes nothing.
    let third = fx.run(&conn, "users").await;
    assert_eq!((third.counts.updated, third.counts.inserted), (0, 0), "{third:?}");
}

#[tokio::test]
async fn four_jobs_of_one_division_share_its_rate_budget_without_a_429() {
    // Exact's limits belong to the app and the division: two syncs of two
    // connections (two users of one company) draw on one budget.
    // A limit the four jobs together outrun many times over, even on a busy
    // machine: at every reset, jobs are waiting to draw, so a window left
    // unused is the budget's fault, not a lack of demand.
    let minute = Duration::from_secs(2);
    let limit = 2;
    let mut sim = exact_limited(RateLimits {
        minutely: limit,
        minute_window: minute,
        daily: 5_000,
        day_window: Duration::from_secs(86_400),
    });
    sim.data.sync_page_size = 20;
    let syncs = format!(
        "{INCREMENTAL}\n[syncs.all_projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
         query = {{ \"$select\" = \"ID,Code,Description\" }}\nmode = \"full\"\n"
    );
    let fx = fixture(sim, &syncs, "sync-shared-budget").await;
    fx.sim().seed_projects(100);
    let a = fx.connect("acme-user-a").await;
    let b = fx.connect("acme-user-b").await;
    let runs = fx.engine.run_due(deadline(300)).await;
    assert_eq!((runs.due, runs.finished), (4, 4), "{runs:?}");
    for conn in [&a, &b] {
        assert_eq!(live(&fx, conn, "projects").await, upstream(&fx));
        assert_eq!(live(&fx, conn, "all_projects").await, upstream(&fx));
    }
    let counters = fx.sim().counters();
    assert_eq!(counters.data_429s, 0, "{counters:?}");
    assert_eq!(counters.data_blocks, 0, "{counters:?}");
    // The provider's windows, as it counted them: each starts at the first
    // request after the one before ended. All but the last are (nearly) full.
    let mut times: Vec<u64> = fx
        .sim()
        .data_requests_log()
        .iter()
        .filter(|r| r.path_and_query.contains("Project"))
        .map(|r| r.at_ms)
        .collect();
    times.sort_unstable();
    let window = u64::try_from(minute.as_millis()).unwrap_or(u64::MAX);
    let mut windows: Vec<u64> = Vec::new();
    let mut start = None;
    for at in times {
        match start {
            Some(s) if at < s + window => *windows.last_mut().expect("a window") += 1,
            _ => {
                start = Some(at);
                windows.push(1);
            }
        }
    }
    assert!(windows.len() >= 5, "{windows:?}");
    let full: Vec<&u64> = windows[..windows.len() - 1].iter().collect();
    let used: u64 = full.iter().copied().sum();
    assert!(
        used * 100 >= 90 * u64::from(limit) * full.len() as u64,
        "at least 90 % of each window is used: {windows:?}"
    );
}

#[tokio::test]
async fn a_sweep_cut_by_deadlines_goes_on_where_it_stopped_and_deletes_exactly_what_is_gone() {
    let full_sync = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
         query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"full\"\n";
    let settings = SyncSettings {
        sweep_page: 40,
        ..short_deadline_settings()
    };
    let fx = SyncFixture::start(
        exact(),
        "min_refresh_interval_secs = 0",
        full_sync,
        settings,
        "sync-sweep-yield",
    )
    .await;
    let ids = fx.sim().seed_projects(2_000);
    let conn = fx.connect("acme-sweep-yield").await;
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    for id in &ids[..1_500] {
        assert!(fx.sim().delete_project(id));
    }
    let (mut runs, mut sweeping, mut deleted) = (0, 0, 0);
    loop {
        runs += 1;
        assert!(runs < 100, "never finished");
        let report = fx
            .engine
            .run_now(&conn, "projects", deadline(5), &|_| {})
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        deleted += report.invocation.deleted;
        match &report.end {
            RunEnd::Finished => break,
            RunEnd::Yielded { reason, .. } if reason.contains("sweeping") => sweeping += 1,
            RunEnd::Yielded { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(sweeping >= 1, "a deadline cut the sweep ({runs} runs)");
    assert_eq!(deleted, 1_500, "each deletion once, across the invocations");
    assert_eq!(live(&fx, &conn, "projects").await, upstream(&fx));
}

/// Change numbers a failed run wrote but never committed are used again by
/// the next run: the two records sharing a number are both read, once each,
/// across pages of one, in number order (equal numbers in the index's own
/// order, which the paging key pins), and only once the number is committed.
#[tokio::test]
async fn change_numbers_reused_after_a_failed_run_are_read_once_each() {
    use serde_json::json;
    use shared::sync::jobs::LeaseClock;
    use shared::sync::records::{Change, ChangePlace, Incoming, content_hash};
    let fx = fixture(exact(), INCREMENTAL, "sync-reused-numbers").await;
    let records = fx.engine.records();
    let pk = "acme#projects";
    let upsert = |id: &str| {
        let data = json!({ "id": id }).as_object().cloned().unwrap_or_default();
        Change::Upsert(Incoming {
            id: id.to_owned(),
            hash: content_hash(&data),
            data,
        })
    };
    let fence = LeaseClock::unfenced();
    // A page stored as the engine stores one: its plan, then its writes from `first`.
    let store = |changes: Vec<Change>, now: i64, first: u64| {
        let (records, fence) = (&records, &fence);
        async move {
            let plan = records.plan(pk, changes, now).await.expect("plan");
            records.write(&plan, fence, first).await.expect("write");
        }
    };
    // The failed run: its writes landed with numbers 0 and 1, its checkpoint never moved.
    store(vec![upsert("b-failed"), upsert("d-failed")], 1, 0).await;
    let none = records.changes(pk, None, 0, 10).await.expect("changes");
    assert!(none.records.is_empty(), "nothing is readable below the committed 0");
    // The next run starts again from the committed number 0 and commits 3.
    store(vec![upsert("a-next"), upsert("c-next"), upsert("e-next")], 2, 0).await;
    let mut seen = Vec::new();
    let mut after: Option<ChangePlace> = None;
    loop {
        let page = records.changes(pk, after.as_ref(), 3, 1).await.expect("changes");
        seen.extend(page.records.iter().map(|r| (r.change_seq, r.id.clone())));
        after = page.next;
        if !page.more {
            break;
        }
    }
    let numbers: Vec<Option<u64>> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(numbers, [Some(0), Some(0), Some(1), Some(1), Some(2)], "{seen:?}");
    let mut ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a-next", "b-failed", "c-next", "d-failed", "e-next"], "each once");
}
