//! The demo's main act (run by `scripts/demo`): the job oauth-sync is for,
//! end to end, on the three real function binaries served by `scripts/stack
//! start --functions` (`cargo lambda watch`), invoked the way AWS invokes
//! them.
//!
//! 1. The simulator (an Exact Online-style provider) gets a few hundred
//!    projects.
//! 2. A person logs in as a browser does: a connect link from `oauth-sync
//!    connect-link`, its confirmation page, the button, the provider, the
//!    callback — HTTP requests to `oauth-callback`'s function URL.
//! 3. On a compressed schedule (EventBridge scheduled events posted to the
//!    runtime's invoke endpoint), `token-refresher` keeps the short-lived
//!    access token fresh, rotating the single-use refresh token, and `sync`
//!    copies `sync/Project/Projects` into the records table.
//! 4. Upstream, a project is inserted, one updated and one deleted; the next
//!    incremental sync and the sweep bring the changes.
//! 5. The simulator's counters must show zero reused refresh tokens.
//!
//! A line per step; the tables at the end come from the CLI (scripts/demo).
//! Needs the stack's environment with the functions and `OAUTH_SYNC_CONFIG`
//! naming the stack's generated configuration (provider `sim`, sync
//! `projects`) on the demo's schedule (`OAUTH_SYNC_STACK_*_SECS`).
//! `DEMO_SECONDS` (default 60) is how long the schedule runs.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use oauth_sync_tests::functions::{browse_to_callback, connect_link, invoke, scheduled_event, sim_data};
use serde_json::{Value, json};
use shared::connection::ConnectionId;
use shared::connection::store::ConnectionStore;

const PROVIDER: &str = "sim";
const CONNECTION: &str = "acme-books";
const PROJECTS: usize = 300;

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: run scripts/demo"))
}

struct Demo {
    http: reqwest::Client,
    functions: String,
    simulator: String,
    store: ConnectionStore,
    id: ConnectionId,
}

impl Demo {
    /// Invokes a function the way its EventBridge schedule does; its answer.
    async fn invoke(&self, function: &str) -> anyhow::Result<Value> {
        invoke(&self.http, &self.functions, function, &scheduled_event()).await
    }

    async fn sim_data(&self, command: Value) -> anyhow::Result<Value> {
        sim_data(&self.http, &self.simulator, &command).await
    }

    async fn counters(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/_sim/counters", self.simulator))
            .send()
            .await?
            .json()
            .await?)
    }

    async fn token_version(&self) -> anyhow::Result<u64> {
        Ok(self.store.get(&self.id).await?.map_or(0, |c| c.token_version))
    }

    /// The login, as a browser makes it.
    async fn login(&self, config: &str, root: &str) -> anyhow::Result<()> {
        let link = connect_link(
            root,
            std::path::Path::new(config),
            PROVIDER,
            CONNECTION,
            &["--label", "Acme Books", "--for", "ann@acme.example"],
        )?;
        say(&format!(
            "  the operator makes a connect link for {CONNECTION} (oauth-sync connect-link)"
        ));
        let base = link.split("/connect/").next().unwrap_or_default();
        let at = browse_to_callback(&self.http, &link, base, PROVIDER).await?;
        say("  GET  /connect/sim      200  the confirmation page: \"Connect your Example Books (simulator) account\"");
        say("  POST /connect/sim      303  to the provider's login (PKCE S256, state bound to this browser)");
        say("  the person logs in at the provider, which sends the browser back with a code");
        let finish = self
            .http
            .get(&at.callback_url)
            .header("cookie", &at.cookie)
            .send()
            .await?;
        let status = finish.status();
        let page = finish.text().await.unwrap_or_default();
        ensure!(
            status == 200 && page.contains("Connected"),
            "/callback/sim answered {status}: {page}"
        );
        say("  GET  /callback/sim     200  \"Connected\": the tokens are stored encrypted, the sync is scheduled");
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let seconds: u64 = std::env::var("DEMO_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let config = env("OAUTH_SYNC_CONFIG")?;
    let aws = shared::aws::AwsClients::from_env();
    shared::http::install_crypto_provider();
    let demo = Demo {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()?,
        functions: env("OAUTH_SYNC_FUNCTIONS_URL")?,
        simulator: env("OAUTH_SYNC_SIMULATOR_URL")?,
        store: ConnectionStore::new(aws.dynamodb.clone(), env(shared::runtime::CONNECTIONS_TABLE_ENV)?),
        id: ConnectionId::parse(CONNECTION)?,
    };

    say(&format!("\n1. The provider has {PROJECTS} projects"));
    let seeded = demo.sim_data(json!({"op": "seed_projects", "count": PROJECTS})).await?;
    let ids: Vec<String> = serde_json::from_value(seeded["ids"].clone()).context("seeded ids")?;
    ensure!(ids.len() == PROJECTS, "seeded {}", ids.len());

    say("\n2. A person connects their account (HTTP API events to oauth-callback)");
    demo.login(&config, root).await?;

    say(&format!(
        "\n3. The schedules, compressed: token-refresher every 4 s, sync every 5 s, for {seconds} s \
         (access tokens live 20 s; each refresh token is single-use)"
    ));
    let started = Instant::now();
    let (mut next_refresh, mut next_sync) = (Duration::ZERO, Duration::ZERO);
    let mut changed_upstream = false;
    let (mut inserted_id, updated_id, deleted_id) = (String::new(), ids[7].clone(), ids[42].clone());
    let mut totals = (0_u64, 0_u64, 0_u64);
    let mut said = started.elapsed();
    while started.elapsed() < Duration::from_secs(seconds) {
        let at = started.elapsed();
        if at.saturating_sub(said) >= Duration::from_secs(5) {
            said = at;
            let left = demo
                .store
                .get(&demo.id)
                .await?
                .and_then(|c| c.access_expires_at)
                .map_or(0, |expires| (expires - shared::connection::now_ms()) / 1000);
            say(&format!(
                "  {:>4.1} s  nothing due: the access token has {left} s left (refreshed at 12 s); the sync runs every minute",
                at.as_secs_f64()
            ));
        }
        if at >= next_refresh {
            next_refresh = at + Duration::from_secs(4);
            let summary = demo.invoke("token-refresher").await?;
            if summary["refreshed"].as_u64().unwrap_or(0) > 0 {
                said = at;
                say(&format!(
                    "  {:>4.1} s  token-refresher: refreshed, token version {} (the old refresh token is now spent)",
                    at.as_secs_f64(),
                    demo.token_version().await?
                ));
            }
            for (field, what) in [("needs_reauth", "needs a new login"), ("failed", "failed")] {
                if summary[field].as_u64().unwrap_or(0) > 0 {
                    bail!("token-refresher: a connection {what}: {summary}");
                }
            }
        }
        if !changed_upstream && at >= Duration::from_secs(seconds / 3) {
            changed_upstream = true;
            let insert = demo
                .sim_data(
                    json!({"op": "insert_project", "code": "P-NEW", "description": "Added upstream during the demo"}),
                )
                .await?;
            inserted_id = insert["id"].as_str().unwrap_or_default().to_owned();
            said = at;
            demo.sim_data(json!({"op": "update_project", "id": updated_id, "description": "Renamed upstream"}))
                .await?;
            demo.sim_data(json!({"op": "delete_project", "id": deleted_id})).await?;
            say(&format!(
                "  {:>4.1} s  upstream: project P-NEW inserted, {updated_id} renamed, {deleted_id} deleted",
                at.as_secs_f64()
            ));
        }
        if at >= next_sync {
            next_sync = at + Duration::from_secs(5);
            let runs = demo.invoke("sync").await?;
            let count = |f: &str| runs[f].as_u64().unwrap_or(0);
            if count("due") > 0 {
                said = at;
                totals = (
                    totals.0 + count("inserted"),
                    totals.1 + count("updated"),
                    totals.2 + count("deleted"),
                );
                say(&format!(
                    "  {:>4.1} s  sync: {} run(s) {}: {} inserted, {} updated, {} deleted, {} unchanged",
                    at.as_secs_f64(),
                    count("due"),
                    if count("failed") + count("parked") > 0 {
                        "with trouble"
                    } else {
                        "finished"
                    },
                    count("inserted"),
                    count("updated"),
                    count("deleted"),
                    count("unchanged"),
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    say("\n4. What the provider saw");
    let counters = demo.counters().await?;
    let n = |f: &str| counters[f].as_u64().unwrap_or(0);
    say(&format!(
        "  refresh requests {}, refresh tokens reused {}, token families revoked {}, data pages {}, 429s {}",
        n("refresh_requests"),
        n("refresh_tokens_reused"),
        n("families_revoked"),
        n("data_pages"),
        n("data_429s")
    ));
    ensure!(
        n("refresh_tokens_reused") == 0 && n("families_revoked") == 0,
        "a refresh token was spent twice"
    );
    let version = demo.token_version().await?;
    ensure!(
        version >= 3,
        "the refresh token rotated only {} time(s)",
        version.saturating_sub(1)
    );
    ensure!(
        totals.0 > PROJECTS as u64,
        "the sync inserted {} records, not all {PROJECTS} and the upstream insert",
        totals.0
    );
    ensure!(
        totals.1 >= 1 && totals.2 >= 1,
        "the upstream update or deletion did not arrive: {totals:?}"
    );
    say(&format!(
        "  the refresh token rotated {} times, none reused; {} projects copied, then {inserted_id} inserted, \
         {updated_id} updated and {deleted_id} deleted incrementally",
        version - 1,
        totals.0 - 1
    ));
    Ok(())
}
