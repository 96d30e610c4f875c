//! The handler, called directly with a fixture EventBridge schedule event,
//! against the local stack and the simulator.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Context, Diagnostic, LambdaEvent};
use oauth_sync_tests::proxy::{DynamoProxy, ProxyFault};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{RefreshFixture, deadline};
use shared::config::PresetName;
use shared::connection::{DUE_SHARDS, now_ms};
use shared::refresh::RefreshSettings;
use shared::runtime::Starting;
use shared::shards::Layout;
use shared::telemetry::startup_failed;
use token_refresher::RefresherError;

/// A scheduled event with a minute left in the invocation.
fn scheduled_event() -> LambdaEvent<serde_json::Value> {
    let event: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/eventbridge-schedule.json")).expect("fixture event");
    let mut context = Context::default();
    context.request_id = "req-1".to_owned();
    context.deadline = u64::try_from(now_ms()).expect("time") + 60_000;
    LambdaEvent::new(event, context)
}

/// Simulated tokens that live a minute: inside every preset's refresh lead, so due at once.
fn due_at_once(preset: PresetName) -> SimConfig {
    SimConfig {
        access_token_ttl: Duration::from_secs(60),
        ..SimConfig::for_preset(preset)
    }
}

/// A generic provider's fixture whose connections are due at once.
async fn generic_due_at_once(test: &str) -> RefreshFixture {
    RefreshFixture::start(due_at_once(PresetName::Generic), RefreshSettings::default(), "", test).await
}

#[tokio::test]
async fn a_scheduled_run_refreshes_what_is_due() {
    let fixture = RefreshFixture::start(due_at_once(PresetName::Xero), RefreshSettings::default(), "", "handler").await;
    let ids = [fixture.connect("tenant-a").await, fixture.connect("tenant-b").await];

    let summary = token_refresher::function_handler(&fixture.service, &Layout::default(), scheduled_event())
        .await
        .expect("the run succeeds");
    assert_eq!(
        (summary.due, summary.refreshed, summary.complete),
        (2, 2, true),
        "{summary:?}"
    );
    for id in &ids {
        assert_eq!(fixture.connection(id).await.token_version, 2);
    }
}

#[test]
fn the_deadline_keeps_a_margin() {
    let mut context = Context::default();
    context.deadline = u64::try_from(now_ms()).expect("time") + 10_000;
    let left = shared::lambda::deadline_of(&context, token_refresher::DEADLINE_MARGIN)
        .saturating_duration_since(std::time::Instant::now());
    assert!(left <= Duration::from_secs(8), "{left:?}");
    context.deadline = 0;
    assert_eq!(
        shared::lambda::deadline_of(&context, token_refresher::DEADLINE_MARGIN)
            .saturating_duration_since(std::time::Instant::now()),
        Duration::ZERO
    );
}

#[tokio::test]
async fn a_shard_whose_index_query_fails_is_reported_after_the_others_are_served() {
    let fixture = generic_due_at_once("shard-down").await;
    let in_3 = fixture.connect_in_shard("down", "3", 2).await;
    let mut elsewhere = fixture.connect_in_shard("up", "5", 1).await;
    elsewhere.extend(fixture.connect_in_shard("up", "12", 1).await);
    // Refreshed tokens live an hour: not due again in the second run.
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(3600));
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack is running");
    let proxy = DynamoProxy::start(&upstream).await.expect("proxy");
    let service = Arc::new(fixture.service_via(&proxy.url, RefreshSettings::default()).await);
    // Every attempt the SDK makes at shard 3's query is answered 503.
    let times = shared::aws::MAX_ATTEMPTS;
    proxy.arm(ProxyFault::Unavailable {
        marker: r#"":shard":{"S":"3"}"#.into(),
        times,
    });

    let e = token_refresher::function_handler(&service, &Layout::default(), scheduled_event())
        .await
        .unwrap_err();
    assert_eq!(proxy.unavailable(), u64::from(times), "shard 3's query was refused");
    assert!(e.to_string().contains("1 of the 16 shards"), "{e}");
    let RefresherError::ShardsFailed { summary, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(
        (summary.shards_failed, summary.complete, summary.due, summary.refreshed),
        (1, false, 2, 2),
        "{summary:?}"
    );
    for id in &elsewhere {
        assert_eq!(fixture.connection(id).await.token_version, 2, "{id} was served");
    }
    for id in &in_3 {
        assert_eq!(
            fixture.connection(id).await.token_version,
            1,
            "{id} waits for the next run"
        );
    }
    assert_eq!(Diagnostic::from(e).error_type, "Retryable");

    // Once DynamoDB answers again, the next run takes them.
    let summary = service.refresh_due(shared::refresh::DueRun::all(deadline(60), 4)).await;
    assert_eq!(
        (summary.shards_failed, summary.complete, summary.refreshed),
        (0, true, 2),
        "{summary:?}"
    );
    for id in &in_3 {
        assert_eq!(fixture.connection(id).await.token_version, 2, "{id}");
    }
}

#[tokio::test]
async fn the_first_run_looks_at_its_shards_while_the_start_up_still_runs() {
    let fixture = generic_due_at_once("starting").await;
    let ids = fixture.connect_in_shard("starting", "5", 2).await;
    let store = fixture.service.store().clone();
    // A start-up still reading its configuration when the event comes.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let service = Arc::clone(&fixture.service);
    let starting = Arc::new(Starting::spawn(async move {
        let _ = released.await;
        Ok(service)
    }));
    let queries = || store.ops().snapshot().2;
    let before = queries();
    let run = {
        let (starting, store) = (Arc::clone(&starting), store.clone());
        tokio::spawn(async move {
            token_refresher::handle_starting(&starting, &store, &Layout::default(), scheduled_event()).await
        })
    };
    // Every shard is looked at before the start-up ends.
    let looked = deadline(30);
    while queries() - before < u64::from(DUE_SHARDS) {
        assert!(std::time::Instant::now() < looked, "the shards were not looked at");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!starting.ended() && !run.is_finished());
    release.send(()).expect("the start-up waits");
    let summary = run.await.expect("the run").expect("the run succeeds");
    assert_eq!(
        (summary.shards, summary.due, summary.refreshed, summary.complete),
        (1, 2, 2, true),
        "only the shard with something due is worked: {summary:?}"
    );
    for id in &ids {
        assert_eq!(fixture.connection(id).await.token_version, 2);
    }
    // Once started, a run is the ordinary one (the minute-long tokens are due again).
    let summary = token_refresher::handle_starting(&starting, &store, &Layout::default(), scheduled_event())
        .await
        .expect("the next run");
    assert_eq!((summary.due, summary.refreshed), (2, 2), "{summary:?}");
}

#[tokio::test]
async fn a_run_whose_start_up_failed_says_so_and_does_nothing() {
    let fixture = generic_due_at_once("start-failed").await;
    let id = fixture.connect("waiting").await;
    let starting: Starting<shared::refresh::TokenService> = Starting::spawn(async {
        Err(startup_failed(std::io::Error::other(
            "configuration secret: oauth-sync/config not found",
        )))
    });
    let e = token_refresher::handle_starting(
        &starting,
        fixture.service.store(),
        &Layout::default(),
        scheduled_event(),
    )
    .await
    .expect_err("no start-up, no run");
    assert!(matches!(e, RefresherError::Startup(_)), "{e}");
    let diagnostic = Diagnostic::from(e);
    assert_eq!(diagnostic.error_type, "StartupFailed");
    assert!(
        diagnostic.error_message.contains("oauth-sync/config not found"),
        "{}",
        diagnostic.error_message
    );
    assert_eq!(fixture.connection(&id).await.token_version, 1, "nothing refreshed");
}
