//! The events of the real function binaries behind the Lambda runtime API,
//! as the local stack serves them (`scripts/stack start --functions`:
//! `cargo lambda watch`), on the stack's bus (moto's EventBridge, made from
//! infra/template.yaml), received through a rule and an SQS queue as an
//! operator's application would:
//!
//! 1. a login through `oauth-callback` → `connection.connected`;
//! 2. a scheduled `sync` run → `sync.run.finished` with its counts, and the
//!    records table's stream handed to `record-events` → one
//!    `record.inserted` per record;
//! 3. upstream one project renamed and one added; the next run → exactly
//!    two record events, none for the unchanged records (deletions: the
//!    stack's incremental sync has no deleted feed; record-events' own tests
//!    cover `record.deleted` with a full sync);
//! 4. a refresh by `token-refresher` that the provider answers 503 →
//!    `connection.refresh_failed`;
//! 5. `oauth-sync revoke` → `connection.revoked`.
//!
//! Every event is checked against its JSON Schema (docs/events/). Run by
//! `scripts/test` after `watch-login`; needs the stack's environment with
//! the functions and the stack's own configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use aws_sdk_dynamodb::types::AttributeValue;
use oauth_sync_tests::events::{Envelope, EventsFixture};
use oauth_sync_tests::functions::{browse_to_callback, connect_link, scheduled_event};
use oauth_sync_tests::schema::validate_event;
use oauth_sync_tests::simulator::{Fault, FaultPlan, Grant};
use oauth_sync_tests::stream::{stream_event, stream_records};
use serde_json::{Value, json};

const PROVIDER: &str = "sim";
const PROJECTS: usize = 20;

fn say(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name}: start the functions (scripts/stack start --functions) and source the stack's env file")
    })
}

struct Run {
    http: reqwest::Client,
    functions: String,
    simulator: String,
    dynamodb: aws_sdk_dynamodb::Client,
    events: EventsFixture,
    connection: String,
}

impl Run {
    /// Invokes a function as Lambda does; its answer.
    async fn invoke(&self, function: &str, event: &Value) -> anyhow::Result<Value> {
        oauth_sync_tests::functions::invoke(&self.http, &self.functions, function, event).await
    }

    async fn sim(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/_sim/{path}", self.simulator))
            .json(body)
            .send()
            .await?;
        ensure!(response.status().is_success(), "simulator: {}", response.status());
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// The events about this run's connection received until none come for
    /// two seconds (moto delivers within the PutEvents call), each checked
    /// against its schema.
    async fn events(&self) -> anyhow::Result<Vec<Envelope>> {
        let mine: Vec<Envelope> = self
            .events
            .drain()
            .await
            .into_iter()
            .filter(|e| e["detail"]["connection"] == self.connection.as_str())
            .collect();
        for event in &mine {
            if let Err(errors) = validate_event(event) {
                anyhow::bail!("{event} breaks its schema: {errors:?}");
            }
        }
        Ok(mine)
    }

    /// This connection's records-stream records after the first `skip` of them.
    async fn stream(&self, skip: usize) -> anyhow::Result<Vec<Value>> {
        let table = env(shared::runtime::RECORDS_TABLE_ENV)?;
        let pk = format!("{}#projects", self.connection);
        Ok(stream_records(&self.dynamodb, &table)
            .await
            .into_iter()
            .filter(|r| r["dynamodb"]["Keys"]["pk"]["S"] == pk.as_str())
            .skip(skip)
            .collect())
    }

    async fn set_number(&self, table_env: &str, key: (&str, &str), field: &str) -> anyhow::Result<()> {
        self.dynamodb
            .update_item()
            .table_name(env(table_env)?)
            .key(key.0, AttributeValue::S(key.1.to_owned()))
            .update_expression(format!("SET {field} = :zero"))
            .expression_attribute_values(":zero", AttributeValue::N("0".to_owned()))
            .send()
            .await?;
        Ok(())
    }
}

/// detail-type → how many.
fn counted(events: &[Envelope]) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for event in events {
        *map.entry(event["detail-type"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    map
}

fn types(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let config = std::path::PathBuf::from(env("OAUTH_SYNC_CONFIG")?);
    let sdk = shared::aws::sdk_config_from_env();
    let connection = format!("events-{}", std::process::id());
    shared::http::install_crypto_provider();
    let run = Run {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()?,
        functions: env("OAUTH_SYNC_FUNCTIONS_URL")?,
        simulator: env("OAUTH_SYNC_SIMULATOR_URL")?,
        dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
        events: EventsFixture::subscribe(&sdk, &env(shared::events::EVENT_BUS_ENV)?, &connection).await,
        connection: connection.clone(),
    };
    let seeded = run
        .sim("data", &json!({"op": "seed_projects", "count": PROJECTS}))
        .await?;
    let ids: Vec<String> = serde_json::from_value(seeded["ids"].clone()).context("seeded ids")?;

    // 1. The login, as a browser makes it.
    let link = connect_link(root, &config, PROVIDER, &connection, &[])?;
    let base = link.split("/connect/").next().unwrap_or_default().to_owned();
    let at = browse_to_callback(&run.http, &link, &base, PROVIDER).await?;
    let finish = run
        .http
        .get(&at.callback_url)
        .header("cookie", &at.cookie)
        .send()
        .await?;
    ensure!(finish.status().is_success(), "/callback answered {}", finish.status());
    let login = run.events().await?;
    ensure!(counted(&login) == types(&[("connection.connected", 1)]), "{login:?}");
    say("oauth-callback: a login put connection.connected");

    // 2. The first sync run and its records. Other connections of the stack
    // may be due as well; only this one's events count.
    let job = format!("{connection}#projects");
    run.set_number(shared::runtime::SYNC_STATE_TABLE_ENV, ("id", &job), "next_run_at")
        .await?;
    run.invoke("sync", &scheduled_event()).await?;
    let synced = run.events().await?;
    ensure!(counted(&synced) == types(&[("sync.run.finished", 1)]), "{synced:?}");
    let inserted = synced[0]["detail"]["counts"]["inserted"].as_u64().unwrap_or(0);
    ensure!(inserted >= PROJECTS as u64, "counts: {}", synced[0]["detail"]);
    let first = run.stream(0).await?;
    let answer = run.invoke("record-events", &stream_event(&first)).await?;
    ensure!(answer["batchItemFailures"] == json!([]), "record-events: {answer}");
    let records = run.events().await?;
    ensure!(
        counted(&records) == types(&[("record.inserted", first.len())]) && first.len() as u64 == inserted,
        "{} stream records, {inserted} inserted: {records:?}",
        first.len()
    );
    say(&format!(
        "sync: a run put sync.run.finished ({inserted} inserted); record-events put {} record.inserted",
        records.len()
    ));

    // 3. Upstream changes, the next run: one event per change.
    run.sim(
        "data",
        &json!({"op": "update_project", "id": ids[3], "description": "Renamed upstream"}),
    )
    .await?;
    run.sim(
        "data",
        &json!({"op": "insert_project", "code": "P-NEW", "description": "Added upstream"}),
    )
    .await?;
    run.set_number(shared::runtime::SYNC_STATE_TABLE_ENV, ("id", &job), "next_run_at")
        .await?;
    run.invoke("sync", &scheduled_event()).await?;
    let finished = run.events().await?;
    ensure!(counted(&finished) == types(&[("sync.run.finished", 1)]), "{finished:?}");
    let second = run.stream(first.len()).await?;
    let answer = run.invoke("record-events", &stream_event(&second)).await?;
    ensure!(answer["batchItemFailures"] == json!([]), "record-events: {answer}");
    let changes = run.events().await?;
    ensure!(
        counted(&changes) == types(&[("record.inserted", 1), ("record.updated", 1)]),
        "one event per change, none for the unchanged: {changes:?}"
    );
    say("sync + record-events: one renamed and one added upstream → exactly two record events");

    // 4. A refresh the provider answers 503.
    let plan = FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::Status { status: 503 },
        times: 1,
    };
    run.sim("faults", &serde_json::to_value([plan])?).await?;
    // Due now: its access token expired, and in the refresh-due index.
    for field in ["access_expires_at", "refresh_due_at"] {
        run.set_number(shared::runtime::CONNECTIONS_TABLE_ENV, ("id", &connection), field)
            .await?;
    }
    run.invoke("token-refresher", &scheduled_event()).await?;
    let refresh = run.events().await?;
    ensure!(
        counted(&refresh) == types(&[("connection.refresh_failed", 1)]),
        "{refresh:?}"
    );
    say("token-refresher: a 503 from the provider put connection.refresh_failed");

    // 5. The operator disconnects it.
    let output = std::process::Command::new(format!("{root}/target/debug/oauth-sync"))
        .arg("--config")
        .arg(&config)
        .args(["revoke", &connection])
        .output()
        .context("running oauth-sync")?;
    ensure!(
        output.status.success(),
        "oauth-sync revoke: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let revoked = run.events().await?;
    ensure!(counted(&revoked) == types(&[("connection.revoked", 1)]), "{revoked:?}");
    say("oauth-sync revoke: connection.revoked");
    say("events through the real functions: ok");
    Ok(())
}
