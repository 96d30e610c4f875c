//! Webhooks end to end through the real `webhooks` binary: events on the
//! events queue (the stack's SQS, moto), Lambda's SQS event source mapping
//! played by the test (`oauth_sync_tests::webhooks::poll_once`), receivers
//! on loopback that verify every delivery as a Standard Webhooks consumer
//! does. The retry schedule starts at 1 s here (an hour-scale default
//! cannot be waited for); no assertion is about time.

use std::path::PathBuf;

use oauth_sync_tests::stack::{aws, create_secret, unique_prefix};
use oauth_sync_tests::webhooks::{Attempt, Behaviour, Invoker, Queues, Receiver, event, pump};
use serde_json::json;
use shared::webhooks::sign::{SigningSecret, webhook_id};

/// Rounds of the event source mapping before a test gives up (each waits
/// at most a second for messages, plus the invocations).
const ROUNDS: usize = 60;

/// One endpoint of a test: its receiver, and its table in the configuration.
struct Endpoint {
    name: &'static str,
    events: &'static str,
    receiver: Receiver,
}

/// The configuration, the secrets, the queues and the invoker of one test.
struct Setup {
    queues: Queues,
    invoker: Invoker,
    logs: PathBuf,
}

async fn setup(test: &str, endpoints: &[&Endpoint], secrets: &[String], max_attempts: u32) -> Setup {
    let aws = aws().await;
    let prefix = unique_prefix(test);
    let mut config = "[providers.g]\npreset = \"google\"\ncredentials_secret = \"oauth-sync/g\"\n".to_owned();
    for (endpoint, secret) in endpoints.iter().zip(secrets) {
        let secret_name = format!("oauth-sync/{prefix}{}", endpoint.name);
        create_secret(&aws, &secret_name, secret.clone()).await;
        config.push_str(&format!(
            "[webhooks.{}]\nurl = \"{}\"\nevents = {}\nsigning_secret = \"{secret_name}\"\n",
            endpoint.name, endpoint.receiver.url, endpoint.events
        ));
    }
    let logs = std::env::temp_dir().join(format!("oauth-sync-{prefix}logs"));
    std::fs::create_dir_all(&logs).expect("logs dir");
    let config_path = logs.join("oauth-sync.toml");
    std::fs::write(&config_path, config).expect("config");
    let queues = Queues::create(test, max_attempts).await.expect("queues");
    let env = [
        ("OAUTH_SYNC_CONFIG", config_path.display().to_string()),
        ("OAUTH_SYNC_CONFIG_SECRET", String::new()),
        (
            shared::webhooks::queue::DELIVERIES_QUEUE_ENV,
            queues.deliveries.url.clone(),
        ),
        (shared::webhooks::retry::FIRST_DELAY_ENV, "1".to_owned()),
        (shared::webhooks::retry::MAX_ATTEMPTS_ENV, max_attempts.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "webhooks".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let invoker = Invoker::Binary {
        path: PathBuf::from(env!("CARGO_BIN_EXE_webhooks")),
        env,
        logs: logs.clone(),
    };
    Setup { queues, invoker, logs }
}

impl Drop for Setup {
    /// The logs stay for a failed test to be read.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

impl Setup {
    /// Everything the function wrote, over all its invocations.
    fn log(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.logs).expect("logs").flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }
}

fn secret() -> String {
    SigningSecret::generate().expect("rng")
}

async fn endpoint(name: &'static str, events: &'static str, secret: &str, behaviour: Behaviour) -> Endpoint {
    Endpoint {
        name,
        events,
        receiver: Receiver::start(secret, behaviour).await.expect("receiver"),
    }
}

fn verified(attempts: &[Attempt]) -> bool {
    attempts.iter().all(|a| a.verified.is_ok())
}

#[tokio::test]
async fn each_endpoint_gets_the_events_it_asked_for_signed_and_a_receiver_refuses_a_tampered_body() {
    let secrets = [secret(), secret(), secret()];
    let app = endpoint("app", "[\"connection.*\"]", &secrets[0], Behaviour::Accept).await;
    let all = endpoint("all", "[\"*\"]", &secrets[1], Behaviour::Accept).await;
    let records = endpoint("records", "[\"record.deleted\"]", &secrets[2], Behaviour::Accept).await;
    let setup = setup("wh-verify", &[&app, &all, &records], &secrets, 5).await;

    let connected = event(
        "e-connected-1",
        "connection.connected",
        json!({"connection": "c1", "provider": "sim"}),
    );
    let finished = event(
        "e-finished-1",
        "sync.run.finished",
        json!({"connection": "c1", "sync": "projects", "inserted": 3}),
    );
    setup.queues.put_event(&connected).await.expect("put");
    setup.queues.put_event(&finished).await.expect("put");
    pump(&setup.queues, &setup.invoker, ROUNDS, || {
        app.receiver.attempts().len() == 1 && all.receiver.attempts().len() == 2
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", setup.log()));

    let to_app = app.receiver.attempts();
    assert!(verified(&to_app), "{to_app:?}");
    assert_eq!(to_app[0].id, webhook_id("e-connected-1", "app"));
    assert_eq!(
        to_app[0].json(),
        json!({"type": "connection.connected", "timestamp": "2026-12-06T10:00:00Z",
               "data": {"connection": "c1", "provider": "sim"}})
    );
    let to_all = all.receiver.attempts();
    assert!(verified(&to_all), "{to_all:?}");
    let mut types: Vec<_> = to_all.iter().map(|a| a.json()["type"].clone()).collect();
    types.sort_by_key(ToString::to_string);
    assert_eq!(types, [json!("connection.connected"), json!("sync.run.finished")]);
    assert!(
        to_all.iter().all(|a| a.id != to_app[0].id),
        "each endpoint has its own webhook-id for one event"
    );
    assert!(records.receiver.attempts().is_empty(), "record.deleted only");

    // The receiver refuses the same request with one byte of the body
    // changed, and accepts it unchanged.
    let http = oauth_sync_tests::stack::http(std::time::Duration::from_secs(5));
    let first = &to_app[0];
    let replay = |body: Vec<u8>| {
        http.post(&app.receiver.url)
            .header("webhook-id", &first.id)
            .header("webhook-timestamp", &first.timestamp)
            .header("webhook-signature", &first.signature)
            .body(body)
            .send()
    };
    let tampered = String::from_utf8(first.body.clone())
        .expect("utf-8")
        .replace("\"c1\"", "\"c2\"")
        .into_bytes();
    assert_ne!(tampered, first.body);
    assert_eq!(replay(tampered).await.expect("send").status().as_u16(), 401);
    assert_eq!(replay(first.body.clone()).await.expect("send").status().as_u16(), 204);
    let last = app.receiver.attempts().pop().expect("the replay");
    assert!(last.verified.is_ok());
    assert!(app.receiver.attempts()[1].verified.is_err(), "the tampered one");

    let log = setup.log();
    for secret in &secrets {
        assert!(!log.contains(&secret[6..]), "a signing secret in the log");
    }
    assert!(setup.queues.dead_lettered().await.expect("dlq").is_empty());
}

#[tokio::test]
async fn a_delivery_that_fails_three_times_arrives_on_the_fourth_with_the_same_id_while_others_arrive_at_once() {
    let secrets = [secret(), secret()];
    let flaky = endpoint("flaky", "[\"sync.*\"]", &secrets[0], Behaviour::FailFirst(3)).await;
    let healthy = endpoint("healthy", "[\"sync.*\"]", &secrets[1], Behaviour::Accept).await;
    let setup = setup("wh-flaky", &[&flaky, &healthy], &secrets, 5).await;

    setup
        .queues
        .put_event(&event("e-failed-1", "sync.run.failed", json!({"error": "HTTP 500"})))
        .await
        .expect("put");
    pump(&setup.queues, &setup.invoker, ROUNDS, || {
        flaky.receiver.attempts().iter().any(|a| a.answered == 204)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", setup.log()));

    let attempts = flaky.receiver.attempts();
    assert!(verified(&attempts), "{attempts:?}");
    assert_eq!(
        attempts.iter().map(|a| a.answered).collect::<Vec<_>>(),
        [500, 500, 500, 204]
    );
    let id = webhook_id("e-failed-1", "flaky");
    assert!(
        attempts.iter().all(|a| a.id == id),
        "the same webhook-id on every attempt: {attempts:?}"
    );
    assert!(attempts.iter().all(|a| a.body == attempts[0].body));
    // The healthy endpoint's delivery is a message of its own: delivered once,
    // in the first round, never held back by the flaky one's retries.
    let other = healthy.receiver.attempts();
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0].id, webhook_id("e-failed-1", "healthy"));
    let log = setup.log();
    assert_eq!(
        log.matches("webhook failed; retried after its backoff").count(),
        3,
        "{log}"
    );
    assert!(setup.queues.dead_lettered().await.expect("dlq").is_empty());
}

#[tokio::test]
async fn a_delivery_that_always_fails_is_dead_lettered_after_its_last_attempt_and_counted() {
    let secrets = [secret(), secret()];
    let down = endpoint("down", "[\"*\"]", &secrets[0], Behaviour::AlwaysFail).await;
    let healthy = endpoint("healthy", "[\"*\"]", &secrets[1], Behaviour::Accept).await;
    let setup = setup("wh-down", &[&down, &healthy], &secrets, 3).await;

    let parked = event(
        "e-parked-1",
        "sync.job.parked",
        json!({"connection": "c1", "sync": "projects"}),
    );
    setup.queues.put_event(&parked).await.expect("put");
    let mut dead = Vec::new();
    for _ in 0..ROUNDS {
        pump(&setup.queues, &setup.invoker, 1, || true)
            .await
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", setup.log()));
        dead = setup.queues.dead_lettered().await.expect("dlq");
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead.len(), 1, "log:\n{}", setup.log());
    let (body, endpoint) = &dead[0];
    assert_eq!((body, endpoint.as_deref()), (&parked, Some("down")));

    let attempts = down.receiver.attempts();
    assert!(verified(&attempts), "{attempts:?}");
    assert_eq!(attempts.len(), 3, "max attempts: {attempts:?}");
    assert!(attempts.iter().all(|a| a.id == webhook_id("e-parked-1", "down")));
    assert_eq!(healthy.receiver.attempts().len(), 1);

    // The alarm's metric: one EMF line with WebhookDeadLettered 1.
    let log = setup.log();
    let dead_lettered: f64 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|doc| doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "OauthSync")
        .filter_map(|doc| doc["WebhookDeadLettered"].as_f64())
        .sum();
    assert!((dead_lettered - 1.0).abs() < f64::EPSILON, "{log}");
    assert_eq!(
        log.matches("webhook failed its last attempt; it goes to the dead-letter queue")
            .count(),
        1,
        "{log}"
    );
}
