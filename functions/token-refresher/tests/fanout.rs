//! The refresher fanned out: shard leases between concurrent runs, shard
//! groups, the timer wheel within a run, and each provider's cap with its
//! AIMD decrease, against DynamoDB Local and the strict simulator. Each run
//! of another "process" is a second `TokenService` on the same tables.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Context, LambdaEvent};
use oauth_sync_tests::simulator::{Fault, FaultPlan, Grant, SimConfig};
use oauth_sync_tests::stack::{RefreshFixture, deadline};
use shared::config::{Config, PresetName};
use shared::connection::{ConnectionId, ConnectionKind, now_ms};
use shared::refresh::{DueRun, RefreshSettings, TokenService};
use shared::shards::Layout;
use token_refresher::RefresherError;

/// Tokens that live a minute: inside Xero's 300 s lead, so due at once.
fn due_at_once(latency_ms: u64) -> SimConfig {
    SimConfig {
        access_token_ttl: Duration::from_secs(60),
        token_latency: Duration::from_millis(latency_ms),
        ..SimConfig::for_preset(PresetName::Xero)
    }
}

/// How many shards of 16 hold `ids` (a run takes a lease only for those).
fn shards_holding<'a>(ids: impl IntoIterator<Item = &'a ConnectionId>) -> u64 {
    ids.into_iter()
        .map(|id| id.shard_of(16))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64
}

async fn connect_n(fixture: &RefreshFixture, prefix: &str, n: usize) -> Vec<ConnectionId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(fixture.connect(&format!("{prefix}-{i}")).await);
    }
    // What the runs refresh lives an hour: not due again in these tests.
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(3600));
    ids
}

/// Another process's token service on the same tables (its own caps).
async fn another_process(fixture: &RefreshFixture) -> Arc<TokenService> {
    let dynamodb = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack is running");
    Arc::new(fixture.service_via(&dynamodb, RefreshSettings::default()).await)
}

fn event(payload: serde_json::Value) -> LambdaEvent<serde_json::Value> {
    let mut context = Context::default();
    context.deadline = u64::try_from(now_ms()).expect("time") + 30_000;
    LambdaEvent::new(payload, context)
}

#[tokio::test]
async fn two_runs_of_one_group_never_work_a_shard_at_once() {
    let fixture = RefreshFixture::start(due_at_once(100), RefreshSettings::default(), "", "shard-lease").await;
    let ids = connect_n(&fixture, "lease", 24).await;
    let holding = shards_holding(&ids);
    let other = another_process(&fixture).await;

    let (a, b) = tokio::join!(
        fixture.service.refresh_due(DueRun::all(deadline(30), 4)),
        other.refresh_due(DueRun::all(deadline(30), 4)),
    );
    // Without the shard leases both runs read all 16 shards: 48 found, and
    // the later of two runs on one connection finds it already refreshed.
    assert_eq!(a.due + b.due, 24, "each connection found by one run: {a:?} {b:?}");
    assert_eq!(
        (a.refreshed + b.refreshed, a.still_fresh + b.still_fresh),
        (24, 0),
        "{a:?} {b:?}"
    );
    // Two runs of one schedule (a duplicate delivery): each shard with
    // something due is worked by the run that took it first; the other leaves
    // it at once. A shard with nothing due takes no lease.
    assert_eq!(
        (a.shards + b.shards, a.shards_busy + b.shards_busy),
        (holding, holding),
        "{a:?} {b:?}"
    );
    let counters = fixture.sim().counters();
    assert_eq!((counters.refreshes, counters.refresh_tokens_reused), (24, 0));
}

/// The next minute's run starts while the last one still finishes a
/// refresh: it waits for the shards to be given back, then works them,
/// including what came due after the last run stopped starting refreshes.
#[tokio::test]
async fn the_next_run_waits_for_the_last_to_give_its_shards_back() {
    // Xero's lead is 300 s: tokens of 303 s are due 3 s after the login,
    // of 310 s 10 s after it; every refresh takes 3 s.
    let sim = SimConfig {
        access_token_ttl: Duration::from_secs(303),
        token_latency: Duration::from_secs(3),
        ..SimConfig::for_preset(PresetName::Xero)
    };
    let fixture = RefreshFixture::start(sim, RefreshSettings::default(), "", "handover").await;
    let first = fixture.connect("handover-first").await;
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(310));
    let second = fixture.connect("handover-second").await;
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(3600));
    let next = another_process(&fixture).await;

    // The last run starts refreshes for 5 s (20 − 15): `first` only, whose
    // refresh it holds until 6 s. The next one starts at 1 s.
    let (last, next) = tokio::join!(fixture.service.refresh_due(DueRun::all(deadline(20), 4)), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        next.refresh_due(DueRun::all(deadline(40), 4)).await
    });
    // The last run's window holds `first` only: one shard leased.
    assert_eq!((last.shards, last.refreshed), (1, 1), "{last:?}");
    // Without the wait it would find `first`'s shard held and leave it.
    assert_eq!(
        (next.shards, next.shards_busy, next.refreshed),
        (shards_holding([&first, &second]), 0, 1),
        "{next:?}"
    );
    for id in [&first, &second] {
        assert_eq!(fixture.connection(id).await.token_version, 2, "{id}");
    }
    assert_eq!(fixture.sim().counters().refresh_tokens_reused, 0);
}

#[tokio::test]
async fn each_shard_group_works_only_its_own_shards() {
    let fixture = RefreshFixture::start(due_at_once(0), RefreshSettings::default(), "", "shard-groups").await;
    let ids = connect_n(&fixture, "group", 32).await;
    let layout = Layout::new(16, 4).expect("layout");

    // A schedule's input that names no group of this deployment does nothing.
    let wrong = token_refresher::function_handler(&fixture.service, &layout, event(serde_json::json!({"group": 4})))
        .await
        .unwrap_err();
    assert!(matches!(wrong, RefresherError::Group(_)), "{wrong}");
    assert!(wrong.to_string().contains("there are 4 groups"), "{wrong}");
    assert_eq!(fixture.sim().counters().refreshes, 0);

    let mut runs = tokio::task::JoinSet::new();
    for group in 0..4u32 {
        let service = another_process(&fixture).await;
        runs.spawn(async move {
            let payload = serde_json::json!({"group": group});
            let summary = token_refresher::function_handler(&service, &layout, event(payload))
                .await
                .expect("run");
            (group, summary)
        });
    }
    while let Some(joined) = runs.join_next().await {
        let (group, summary) = joined.expect("task");
        let mine: Vec<&ConnectionId> = ids.iter().filter(|id| id.shard_of(16) % 4 == group).collect();
        let count = mine.len() as u64;
        assert_eq!(
            (summary.shards, summary.due, summary.refreshed),
            (shards_holding(mine), count, count),
            "group {group}"
        );
    }
    let counters = fixture.sim().counters();
    assert_eq!((counters.refreshes, counters.refresh_tokens_reused), (32, 0));
}

/// Exact refuses a refresh while the access token has more than 30 s left
/// and its lead is 25 s: a connection that comes due in the middle of a run
/// is refreshed at its due time by that run, neither before (refused as too
/// early) nor at the next schedule (after expiry, at a one-minute schedule).
#[tokio::test]
async fn a_connection_due_during_the_run_is_refreshed_at_its_due_time() {
    let sim = SimConfig {
        // Due 8 s after the login (33 − 25), refusable until 3 s after it.
        access_token_ttl: Duration::from_secs(33),
        too_early: Some(Duration::from_secs(30)),
        ..SimConfig::for_preset(PresetName::ExactOnline)
    };
    // Exact allows one refresh per 570 s, counted from the login too: off here.
    let fixture = RefreshFixture::start(
        sim,
        RefreshSettings::default(),
        "min_refresh_interval_secs = 0",
        "wheel",
    )
    .await;
    let soon = fixture.connect("wheel-soon").await;
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(60 + 25));
    let later = fixture.connect("wheel-later").await;
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(600));
    let due_at = fixture.connection(&soon).await.refresh_due_at.expect("due");
    assert!(due_at > now_ms(), "not due yet when the run starts");

    // A run of 30 s starts refreshes for 15 s: `soon` comes due within it,
    // `later` (due in a minute) after it.
    let summary = fixture.service.refresh_due(DueRun::all(deadline(30), 4)).await;
    assert_eq!((summary.due, summary.refreshed), (1, 1), "{summary:?}");
    let refreshed = fixture.connection(&soon).await;
    assert_eq!(refreshed.token_version, 2);
    assert!(
        refreshed.last_refresh_at.expect("refreshed") >= due_at,
        "not before its due time"
    );
    assert_eq!(fixture.connection(&later).await.token_version, 1, "the next run's");
    let counters = fixture.sim().counters();
    assert_eq!((counters.too_early, counters.refresh_tokens_reused), (0, 0));
}

#[tokio::test]
async fn token_concurrency_caps_the_refreshes_in_flight_to_a_provider() {
    let fixture = RefreshFixture::start(
        due_at_once(300),
        RefreshSettings::default(),
        "token_concurrency = 2",
        "cap",
    )
    .await;
    connect_n(&fixture, "cap", 10).await;

    let summary = fixture.service.refresh_due(DueRun::all(deadline(60), 8)).await;
    assert_eq!(summary.refreshed, 10, "{summary:?}");
    // Without the cap, 8 at once (the run's concurrency).
    assert_eq!(fixture.sim().counters().peak_refreshes_in_flight, 2);
    let load = &summary.providers[0];
    assert_eq!((load.cap, load.peak_in_flight, load.throttled), (2, 2, 0), "{load:?}");

    // One of two shard groups keeps half of the cap.
    let half = another_process(&fixture).await;
    let half = Arc::new(Arc::into_inner(half).expect("one owner").with_token_groups(2));
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(60));
    for i in 0..4 {
        fixture.connect(&format!("half-{i}")).await;
    }
    let summary = half.refresh_due(DueRun::all(deadline(60), 8)).await;
    assert_eq!(summary.refreshed, 4, "{summary:?}");
    assert_eq!((summary.providers[0].cap, summary.providers[0].peak_in_flight), (1, 1));
}

#[tokio::test]
async fn a_provider_that_answers_503_gets_fewer_refreshes_in_flight() {
    let fixture = RefreshFixture::start(
        due_at_once(200),
        RefreshSettings::default(),
        "token_concurrency = 8",
        "aimd",
    )
    .await;
    connect_n(&fixture, "aimd", 16).await;
    fixture.sim().inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::Status { status: 503 },
        times: 4,
    });

    let summary = fixture.service.refresh_due(DueRun::all(deadline(30), 8)).await;
    // The four refused keep their still valid tokens and back off.
    assert_eq!((summary.refreshed, summary.still_fresh), (12, 4), "{summary:?}");
    let load = &summary.providers[0];
    // Four 503s of one burst halve the limit once; without AIMD it stays 8.
    assert_eq!((load.throttled, load.lowest_limit), (4, 4), "{load:?}");
    assert!(
        load.limit < 8,
        "it grows back one place per limit's worth of successes: {load:?}"
    );
    let metrics = summary.provider_metrics()[0].to_string();
    assert!(metrics.contains(r#""Provider":"sim""#), "{metrics}");
    assert!(metrics.contains(r#""TokenThrottled":4"#), "{metrics}");
}

#[tokio::test]
async fn a_provider_at_its_cap_does_not_keep_the_runs_places_from_another() {
    // "sim" capped at one refresh in flight, its token endpoint answering in
    // 1.5 s; "other" is the same simulator under another name, uncapped.
    let fixture = RefreshFixture::start(
        due_at_once(1500),
        RefreshSettings::default(),
        "token_concurrency = 1",
        "hol",
    )
    .await;
    let (_, sim_table) = fixture
        .config_text
        .split_once("[providers.sim]\n")
        .expect("the fixture's provider table");
    let text = format!(
        "{}\n[providers.other]\n{}",
        fixture.config_text,
        sim_table.replace("token_concurrency = 1\n", "")
    );
    let config = Arc::new(Config::parse(&text, "hol.toml").unwrap_or_else(|e| panic!("{e}")));
    let service = Arc::new(
        TokenService::load(
            config,
            fixture.service.store().clone(),
            shared::secrets::SecretStore::new(fixture.aws.secrets.clone()),
            RefreshSettings::default(),
        )
        .await
        .expect("service"),
    );
    // Four of "sim" come due first, then one of "other".
    let mut capped = Vec::new();
    for i in 0..4 {
        capped.push(fixture.connect(&format!("hol-sim-{i}")).await);
    }
    let other = ConnectionId::parse("hol-other").expect("id");
    let tokens = fixture.oauth.login().await;
    service
        .save_login(&other, "other", ConnectionKind::Shared, &tokens, None)
        .await
        .expect("save");
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(3600));

    // Two places in the run: one refresh of "sim" at a time, so three wait
    // for their provider; the one of "other" must not wait behind them.
    let summary = service.refresh_due(DueRun::all(deadline(60), 2)).await;
    assert_eq!(summary.refreshed, 5, "{summary:?}");
    let refreshed_at = |conn: shared::connection::Connection| conn.last_refresh_at.expect("refreshed");
    let mut sim_times = Vec::new();
    for id in &capped {
        sim_times.push(refreshed_at(fixture.connection(id).await));
    }
    sim_times.sort_unstable();
    let other_at = refreshed_at(fixture.connection(&other).await);
    // Without giving the run's place back while waiting for the provider's,
    // the waiting "sim" refreshes hold both places and "other" is refreshed
    // after the third "sim" one; with it, beside the first.
    assert!(
        other_at < sim_times[1],
        "other refreshed at {other_at}, sim at {sim_times:?}"
    );
    let sim_load = summary.providers.iter().find(|l| l.provider == "sim").expect("sim");
    assert_eq!(sim_load.peak_in_flight, 1, "{sim_load:?}");
}
