//! Invariants 1–3 under contention, against DynamoDB Local and a strict
//! simulator (single-use rotation, reuse revokes the family, short access
//! tokens): many workers drive the same connections through hundreds of
//! rotations, and what must be zero is counted.

use std::time::Duration;

use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{RefreshFixture, deadline};
use shared::config::PresetName;
use shared::connection::ConnectionId;
use shared::refresh::{RefreshSettings, RunPlace, RunPlaces};

const ROTATIONS: u64 = 200;
const CONNECTIONS: usize = 3;

/// Generous timeouts: on a loaded machine a slow send must not turn into an
/// unknown outcome, which at a rotating provider ends in `needs_reauth`.
fn settings() -> RefreshSettings {
    RefreshSettings {
        token_timeout: Duration::from_secs(15),
        commit_budget: Duration::from_secs(15),
        poll_min: Duration::from_millis(10),
        poll_max: Duration::from_millis(100),
        ..RefreshSettings::default()
    }
}

fn strict_simulator() -> SimConfig {
    SimConfig {
        access_token_ttl: Duration::from_secs(2),
        ..SimConfig::for_preset(PresetName::Generic)
    }
}

async fn connect_all(fixture: &RefreshFixture, prefix: &str) -> Vec<ConnectionId> {
    let mut ids = Vec::new();
    for i in 0..CONNECTIONS {
        ids.push(fixture.connect(&format!("{prefix}-{i}")).await);
    }
    ids
}

/// What must hold after any race: nothing spent twice, nothing revoked, one
/// version per rotation, and the final stored tokens work.
async fn assert_race_was_clean(fixture: &RefreshFixture, ids: &[ConnectionId]) {
    let counters = fixture.sim().counters();
    assert_eq!(counters.refresh_tokens_reused, 0, "a refresh token was sent twice");
    assert_eq!(counters.families_revoked, 0, "a token family was revoked");
    assert_eq!(counters.grace_reuses, 0);
    let mut rotations = 0;
    for id in ids {
        let connection = fixture.connection(id).await;
        assert!(
            connection.token_version > ROTATIONS,
            "{id}: only {} versions",
            connection.token_version
        );
        assert!(connection.lease.is_none(), "{id}: a lease was left behind");
        rotations += connection.token_version - 1;
    }
    assert_eq!(
        rotations, counters.refreshes,
        "token_version counts exactly the successful rotations"
    );
    for id in ids {
        assert!(
            fixture.stored_tokens_work(id).await,
            "{id}: the final stored tokens do not work"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_never_spend_a_refresh_token_twice() {
    let logs = oauth_sync_tests::logs::captured();
    let fixture = RefreshFixture::start(strict_simulator(), settings(), "", "race-tasks").await;
    let ids = connect_all(&fixture, "race-task").await;

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (service, ids) = (fixture.service.clone(), ids.clone());
        workers.spawn(async move {
            let mut versions = vec![1u64; ids.len()];
            while versions.iter().any(|v| *v <= ROTATIONS) {
                for (id, version) in ids.iter().zip(versions.iter_mut()).filter(|(_, v)| **v <= ROTATIONS) {
                    // Half force a refresh; the others ask for a token (2 s
                    // access tokens are always due), a quarter of all as a
                    // refresher run does (the lease taken without a read).
                    let fresh = match worker % 4 {
                        0 | 2 => service.refresh_now(id, deadline(60)).await,
                        1 => service.access_token(id, deadline(60)).await,
                        _ => {
                            let place = RunPlace::take(RunPlaces::new(1)).await.expect("a place");
                            service.access_token_in_run(id, deadline(60), &place).await
                        }
                    };
                    *version = fresh.unwrap_or_else(|e| panic!("worker {worker}: {e}")).token_version;
                }
            }
        });
    }
    while let Some(result) = workers.join_next().await {
        result.expect("worker");
    }
    assert_race_was_clean(&fixture, &ids).await;

    // No planted secret reached a log line, though trace logging was on
    // throughout (filtered as the functions filter it): not the tokens, and
    // not the client secret, which the service read from Secrets Manager.
    let text = logs.text();
    assert!(text.contains("refreshed"), "the capture saw the protocol's logs");
    let secrets = fixture.sim().issued_secrets();
    assert!(secrets.len() > 2 * ROTATIONS as usize);
    for secret in secrets {
        assert!(!text.contains(&secret), "a token value appeared in the logs");
    }
    let credentials = &fixture.oauth.credentials;
    assert!(
        !text.contains(credentials.client_secret.secret()),
        "the client secret appeared in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_spend_a_refresh_token_twice() {
    let fixture = RefreshFixture::start(strict_simulator(), settings(), "", "race-procs").await;
    let ids = connect_all(&fixture, "race-proc").await;
    let config = std::env::temp_dir().join(format!("oauth-sync-race-{}.toml", std::process::id()));
    std::fs::write(&config, &fixture.config_text).expect("write config");
    let id_list = ids.iter().map(ConnectionId::as_str).collect::<Vec<_>>().join(",");

    let children: Vec<_> = (0..4)
        .map(|_| {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_refresh-worker"))
                .env("OAUTH_SYNC_CONFIG", &config)
                .env("OAUTH_SYNC_CONNECTIONS_TABLE", fixture.connections_table())
                .env("WORKER_IDS", &id_list)
                .env("WORKER_TARGET", (ROTATIONS + 1).to_string())
                .env("WORKER_TASKS", "4")
                .env("WORKER_TOKEN_TIMEOUT_MS", "15000")
                .env("WORKER_COMMIT_BUDGET_MS", "15000")
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .output()
        })
        .collect();
    let mut refreshed = 0;
    for child in children {
        let output = child.await.expect("worker process");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "worker failed: {stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("summary");
        refreshed += summary["refreshed"].as_u64().expect("refreshed");
    }
    std::fs::remove_file(&config).ok();
    assert_race_was_clean(&fixture, &ids).await;
    assert_eq!(
        refreshed,
        fixture.sim().counters().refreshes - CONNECTIONS as u64,
        "every refresh is accounted for"
    );
}
