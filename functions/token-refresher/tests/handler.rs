//! The handler, called directly with a fixture EventBridge schedule event,
//! against the local stack and the simulator.

use std::time::Duration;

use lambda_runtime::{Context, LambdaEvent};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::RefreshFixture;
use shared::config::PresetName;
use shared::connection::now_ms;
use shared::refresh::RefreshSettings;

#[tokio::test]
async fn a_scheduled_run_refreshes_what_is_due() {
    let sim = SimConfig {
        access_token_ttl: Duration::from_secs(60),
        ..SimConfig::for_preset(PresetName::Xero)
    };
    let fixture = RefreshFixture::start(sim, RefreshSettings::default(), "", "handler").await;
    let ids = [fixture.connect("tenant-a").await, fixture.connect("tenant-b").await];

    let event: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/eventbridge-schedule.json")).expect("fixture event");
    let mut context = Context::default();
    context.request_id = "req-1".to_owned();
    context.deadline = u64::try_from(now_ms()).expect("time") + 60_000;
    let summary = token_refresher::function_handler(&fixture.service, LambdaEvent::new(event, context))
        .await
        .expect("the run succeeds");
    assert_eq!((summary.due, summary.refreshed), (2, 2), "{summary:?}");
    for id in &ids {
        assert_eq!(fixture.connection(id).await.token_version, 2);
    }
}

#[test]
fn the_deadline_keeps_a_margin() {
    let mut context = Context::default();
    context.deadline = u64::try_from(now_ms()).expect("time") + 10_000;
    let left = token_refresher::deadline_of(&context).saturating_duration_since(std::time::Instant::now());
    assert!(left <= Duration::from_secs(8), "{left:?}");
    context.deadline = 0;
    assert_eq!(
        token_refresher::deadline_of(&context).saturating_duration_since(std::time::Instant::now()),
        Duration::ZERO
    );
}
