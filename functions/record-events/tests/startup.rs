//! Start-up: the event sink comes from `OAUTH_SYNC_EVENT_BUS`, and the
//! process says once which it is, events on that bus or none.

use std::process::Stdio;

/// Runs the function binary with no reachable Lambda runtime API: it starts,
/// then fails asking for its first event. Its log.
async fn start_with(bus: Option<&str>) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_record-events"));
    command
        .env_remove("OAUTH_SYNC_EVENT_BUS")
        .env("RUST_LOG", "info")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(bus) = bus {
        command.env("OAUTH_SYNC_EVENT_BUS", bus);
    }
    let output = command.output().await.expect("the function binary runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn without_a_bus_events_are_off_and_it_says_so_once() {
    let text = start_with(None).await;
    assert_eq!(
        text.matches("OAUTH_SYNC_EVENT_BUS is not set: no events are published")
            .count(),
        1,
        "{text}"
    );
    let text = start_with(Some("my-stack-events")).await;
    assert!(text.contains("events go to the EventBridge bus"), "{text}");
    assert!(text.contains("my-stack-events"), "{text}");
    assert!(!text.contains("no events are published"), "{text}");
}
