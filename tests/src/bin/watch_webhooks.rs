//! A webhook through the real `webhooks` binary as the local stack serves it
//! (`scripts/stack start --functions`: `cargo lambda watch`, one process
//! kept across invocations), with the stack's own configuration: its
//! `[webhooks.local]` endpoint, a short retry schedule (first retry after
//! 1 s, 3 attempts) and the webhooks' queues in moto.
//!
//! An event goes on the events queue as the bus's rule would put it; this
//! program plays Lambda's SQS event source mapping (receive, invoke,
//! delete what was not reported failed) and serves the endpoint: a receiver
//! that verifies each delivery and fails the first two. The third attempt
//! must arrive, verified, under the same `webhook-id`, nothing may be
//! dead-lettered, and the signing secret must not be in the functions' log.
//!
//! Run by `scripts/test` after `cargo test`; needs the stack's environment
//! with the functions and the stack's own configuration.

use std::net::SocketAddr;

use anyhow::{Context, bail, ensure};
use oauth_sync_tests::webhooks::{Behaviour, Invoker, Queue, Receiver, event, poll_once, sqs};
use shared::webhooks::sign::webhook_id;

/// The endpoint of the stack's generated configuration.
const ENDPOINT: &str = "local";
const ROUNDS: usize = 60;

fn say(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!(
            "{name}: start the functions with the stack's own configuration (scripts/stack start --functions) and source the stack's env file"
        )
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let functions = env("OAUTH_SYNC_FUNCTIONS_URL")?;
    let receiver_url = url::Url::parse(&env("OAUTH_SYNC_WEBHOOK_RECEIVER_URL")?)?;
    let aws = oauth_sync_tests::stack::aws().await;
    let secret = shared::secrets::SecretStore::new(aws.secrets.clone())
        .text(&env("OAUTH_SYNC_WEBHOOK_SECRET")?)
        .await?;
    let addr: SocketAddr = format!(
        "{}:{}",
        receiver_url.host_str().context("receiver host")?,
        receiver_url.port().context("receiver port")?
    )
    .parse()?;
    let receiver = Receiver::start_on(&secret, Behaviour::FailFirst(2), addr).await?;
    let sqs = sqs().await;
    let events = Queue::at(&sqs, &env("OAUTH_SYNC_WEBHOOK_EVENTS_QUEUE_URL")?).await?;
    let deliveries = Queue::at(&sqs, &env("OAUTH_SYNC_WEBHOOK_DELIVERIES_QUEUE_URL")?).await?;
    let dead_letters = Queue::at(&sqs, &env("OAUTH_SYNC_WEBHOOK_DEAD_LETTER_QUEUE_URL")?).await?;
    let invoker = Invoker::Watch {
        url: functions,
        http: oauth_sync_tests::stack::http(std::time::Duration::from_secs(120)),
    };

    let event_id = format!("watch-{}", shared::crypto::random_token()?);
    let connected = event(
        &event_id,
        "connection.connected",
        serde_json::json!({"connection": "watch", "provider": "sim"}),
    );
    sqs.send_message()
        .queue_url(&events.url)
        .message_body(connected.to_string())
        .send()
        .await?;
    say(&format!("put {event_id} (connection.connected) on the events queue"));

    let mut delivered = false;
    for round in 1..=ROUNDS {
        let fanned = poll_once(&sqs, &events, &invoker).await?;
        let sent = poll_once(&sqs, &deliveries, &invoker).await?;
        if fanned.received + sent.received > 0 {
            say(&format!(
                "round {round}: {} event(s) fanned out, {} delivery(ies) tried, {} failed",
                fanned.received, sent.received, sent.failed
            ));
        }
        if receiver.attempts().iter().any(|a| a.answered == 204) {
            delivered = true;
            break;
        }
    }
    let attempts = receiver.attempts();
    ensure!(delivered, "not delivered after {ROUNDS} rounds: {attempts:?}");
    let id = webhook_id(&event_id, ENDPOINT);
    for attempt in &attempts {
        if let Err(e) = &attempt.verified {
            bail!("attempt {} did not verify: {e}", attempt.id);
        }
        ensure!(
            attempt.id == id,
            "webhook-id {} on one attempt, {id} expected",
            attempt.id
        );
    }
    let answered: Vec<u16> = attempts.iter().map(|a| a.answered).collect();
    ensure!(answered == [500, 500, 204], "answers {answered:?}");
    ensure!(
        attempts[2].json()["type"] == "connection.connected" && attempts[2].json()["data"]["connection"] == "watch",
        "body {:?}",
        attempts[2].json()
    );
    say(&format!(
        "delivered on the third attempt, all three signed and verified under {id}"
    ));

    let dead = sqs
        .receive_message()
        .queue_url(&dead_letters.url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await?;
    ensure!(
        dead.messages()
            .iter()
            .all(|m| !m.body().unwrap_or_default().contains(&event_id)),
        "the delivery was dead-lettered"
    );
    let log = std::fs::read_to_string(env("OAUTH_SYNC_FUNCTIONS_LOG_FILE")?)?;
    ensure!(
        !log.contains(secret.trim_start_matches("whsec_")),
        "the signing secret is in the functions' log"
    );
    say("nothing dead-lettered; the signing secret is not in the functions' log");
    Ok(())
}
