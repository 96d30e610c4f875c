//! Scale: 200,000 connections across presets with staggered expiries,
//! refreshed by the token-refresher fanned out over shard groups, each group
//! its own process on the real one-minute schedule, against DynamoDB Local
//! and one strict simulator per provider answering in 300 ms.
//!
//! The population stands for connections that logged in at different times,
//! a steady state: each provider's refresh-due times are spread evenly over
//! its own part of `BENCH_SPAN_SECS` (1,400 s), all ending together at its
//! end; a part is the span, or the provider's cycle less 30 s and a tick if
//! that is shorter (Exact's: 575 - 90 = 485 s). So each connection comes
//! due once in the run (no run starts whose window would reach a second due
//! time, and the last run that may start still sees the last due time 30 s
//! before its window ends: its refresh has Exact's slack), and the peak rate
//! is where all the spreads overlap: 80,000 Exact over 485 s and 120,000
//! others over 1,400 s, 251 due a second, against 190 a second for 200,000
//! of this mix at their real lifetimes. `BENCH_SPAN_SECS=480` spreads every
//! provider over the same 480 s (417 a second, the most the protocol lets
//! the bench compress). The connections are
//! a mix of Exact Online (40 %, single-use refresh tokens that Exact refuses
//! to refresh more than 30 s early), Microsoft (20 %), Xero (20 %) and Google
//! (20 %). `BENCH_GROUPS` (4) worker processes (this binary again, with
//! `SCALE_WORKER_GROUP` set) each play one shard group's schedule: a run
//! every `BENCH_TICK_SECS` (60 s, the template's), each
//! `TokenService::refresh_due` over the group's shards with the function's
//! deadline (its 80 s timeout: refreshes start for the tick plus 3 s, each
//! at its due time) at `BENCH_REFRESH_CONCURRENCY` (96), each process
//! keeping `BENCH_TOKEN_CONCURRENCY / BENCH_GROUPS` of each provider's cap
//! (128). Runs start on schedule even if the previous one is still going, as
//! EventBridge starts them. After the run, DynamoDB Local's raw rate of
//! conditional updates is measured on the same stack, and the refreshes a
//! second are reported against it.
//!
//! Checked and reported: every connection refreshed exactly once (token
//! version), never before its due time, within its window (before its access
//! token expired), no refresh token reused and none refused as too early by
//! the simulators; the due index's items per shard and the peak commits per
//! shard and second (the hot-key check); the invocations in flight at once
//! and the refreshes per second one invocation achieved, from which the
//! README's model derives the Lambda concurrency at a million connections.
//!
//! Needs a freshly started local stack (`scripts/bench scale` starts one).
//! Knobs: BENCH_CONNECTIONS (200000), BENCH_SPAN_SECS (1400), BENCH_TICK_SECS
//! (60), BENCH_GROUPS (4), BENCH_REFRESH_CONCURRENCY (96),
//! BENCH_TOKEN_CONCURRENCY (128), BENCH_TOKEN_LATENCY_MS (300).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, Select};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{self, OauthFixture};
use shared::config::{Config, PresetName};
use shared::connection::{ConnectionId, ConnectionKind, DUE_SHARDS, now_ms};
use shared::refresh::{DueRun, DueSummary, RefreshSettings, TokenService};
use shared::shards::Layout;

/// The provider mix: name in the configuration, preset, share in tenths.
const MIX: [(&str, PresetName, usize); 4] = [
    ("exact", PresetName::ExactOnline, 4),
    ("microsoft", PresetName::Microsoft, 2),
    ("xero", PresetName::Xero, 2),
    ("google", PresetName::Google, 2),
];

/// The saves are done before the first due time: this many seconds, plus
/// one for every `SAVES_PER_SEC` connections (the saves run at 500–570 a
/// second here when nothing else runs).
const LEAD_IN_SECS: u64 = 20;
const SAVES_PER_SEC: u64 = 400;

/// A provider's cycle: from a refresh to its next due time.
fn cycle_of(preset: PresetName) -> u64 {
    let settings = preset.settings();
    settings.default_expires_in_secs - settings.refresh_lead_secs
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Which provider connection `i` belongs to: the mix interleaved, so that
/// every stretch of due times has every provider.
fn provider_of(i: usize) -> usize {
    let tenth = i % 10;
    let mut upto = 0;
    MIX.iter()
        .position(|(_, _, share)| {
            upto += share;
            tenth < upto
        })
        .unwrap_or(0)
}

/// What was stored for one connection at its login.
#[derive(Debug, Clone, Copy)]
struct Seeded {
    provider: usize,
    due_at: i64,
    expires_at: i64,
    /// The save landed after the connection's due time.
    late: bool,
}

/// One scheduled run of the refresher, as a worker process reports it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Invocation {
    group: u32,
    /// Epoch ms.
    started_at: i64,
    seconds: f64,
    summary: DueSummary,
    /// The worker's DynamoDB calls on the connections table so far
    /// (reads, writes, queries), when this run ended.
    ops: (u64, u64, u64),
}

/// The figures of one run of the bench that are not in the table.
#[derive(Debug)]
struct Fanout {
    groups: u32,
    token_concurrency: u64,
    /// DynamoDB Local's conditional updates a second, measured after the run.
    raw_updates_per_sec: f64,
}

#[tokio::main]
async fn main() {
    if let Ok(group) = std::env::var("SCALE_WORKER_GROUP") {
        return worker(group.parse().expect("SCALE_WORKER_GROUP")).await;
    }
    let connections = env("BENCH_CONNECTIONS", 200_000) as usize;
    let span = Duration::from_secs(env("BENCH_SPAN_SECS", 1400));
    let tick = Duration::from_secs(env("BENCH_TICK_SECS", 60));
    let concurrency = env("BENCH_REFRESH_CONCURRENCY", 96) as usize;
    let latency_ms = env("BENCH_TOKEN_LATENCY_MS", 300);
    let groups = env("BENCH_GROUPS", 4) as u32;
    let token_concurrency = env("BENCH_TOKEN_CONCURRENCY", 128);

    let aws = stack::aws().await;
    let tables = stack::fresh_tables(&aws, "scale").await;
    let prefix = stack::unique_prefix("scale");
    let keys_secret = format!("{prefix}keys");
    stack::create_secret(
        &aws,
        &keys_secret,
        shared::crypto::KeyRing::generate_json("k1").expect("rng"),
    )
    .await;
    let mut config_text = format!(
        "[service]\ntoken_key_secret = \"{keys_secret}\"\nrefresh_concurrency = {concurrency}\n\
         token_concurrency = {token_concurrency}\n\n"
    );
    let mut providers = Vec::new();
    for (name, preset, _) in MIX {
        let mut sim = SimConfig::for_preset(preset);
        sim.token_latency = Duration::from_millis(latency_ms);
        if preset == PresetName::ExactOnline {
            // Exact refuses a refresh more than ~30 s before expiry.
            sim.too_early = Some(Duration::from_secs(30));
        }
        let fixture = OauthFixture::start(sim, Duration::from_secs(10)).await;
        let credentials_secret = format!("{prefix}{name}");
        let credentials = serde_json::json!({
            "client_id": fixture.credentials.client_id,
            "client_secret": fixture.credentials.client_secret.secret(),
        });
        stack::create_secret(&aws, &credentials_secret, credentials.to_string()).await;
        let base = &fixture.sim.base_url;
        config_text.push_str(&format!(
            "[providers.{name}]\npreset = \"{preset}\"\ncredentials_secret = \"{credentials_secret}\"\n\
             authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nrevocation_url = \"{base}/revoke\"\n"
        ));
        if preset == PresetName::ExactOnline {
            // The seeded logins stand for logins made long ago: the minimum
            // interval after a login does not hold their first refresh back.
            // And every call stays on loopback.
            config_text.push_str(&format!(
                "min_refresh_interval_secs = 0\ndiscover = {{ division = {{ url = \"{base}/api/v1/current/Me?$select=CurrentDivision\", field = \"d.results.0.CurrentDivision\" }} }}\n"
            ));
        }
        config_text.push('\n');
        providers.push(fixture);
    }
    let config = Arc::new(Config::parse(&config_text, "scale.toml").unwrap_or_else(|e| panic!("{e}")));
    // Each connection must come due once in the run: a token refreshed at
    // its first due time must not come due again before the last run's
    // window ends. A run reads what comes due in its window (the tick and
    // 3 s); the last run that may start must see the last due time at least
    // 30 s before its window ends (the lateness a refresh may have before
    // Exact's token expires). So a provider's due times spread over at most
    // its cycle less 30 s and a tick, and they all end at `span`: the
    // providers with a short cycle (Exact's 575 s) come due in the last part
    // of it, as in a steady state where each provider's connections come due
    // spread over its own cycle.
    let window = tick.as_secs() + 3;
    let spans: Vec<u64> = MIX
        .iter()
        .map(|(_, preset, _)| {
            let cycle = cycle_of(*preset);
            let longest = cycle.saturating_sub(30 + tick.as_secs());
            assert!(longest > 0, "BENCH_TICK_SECS too long for {preset}'s {cycle} s cycle");
            span.as_secs().min(longest)
        })
        .collect();
    // No run starts whose window reaches a second due time: the earliest is
    // a provider's cycle after the start of its spread.
    let second_due = MIX
        .iter()
        .zip(&spans)
        .map(|((_, preset, _), spread)| span.as_secs() - spread + cycle_of(*preset))
        .min()
        .unwrap_or(0);
    let leads: Vec<i64> = MIX
        .iter()
        .map(|(name, _, _)| config.provider(name).expect("provider").settings.refresh_lead_secs as i64 * 1000)
        .collect();
    let store = shared::connection::store::ConnectionStore::new(aws.dynamodb.clone(), &tables["ConnectionsTable"]);
    let service = Arc::new(
        TokenService::load(
            config.clone(),
            store,
            shared::secrets::SecretStore::new(aws.secrets.clone()),
            RefreshSettings::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let providers = Arc::new(providers);

    // 1. The logins at the providers, all before any time counts.
    eprintln!("scale: {connections} logins at {} simulators", MIX.len());
    let started = Instant::now();
    // At most 64 tasks exist at a time: 100,000 waiting tasks made the
    // allocator the bottleneck (logins 20 times slower).
    let mut tasks = tokio::task::JoinSet::new();
    let mut tokens = vec![None; connections];
    for i in 0..connections {
        while tasks.len() >= 64 {
            let (i, set) = tasks.join_next().await.expect("a task").expect("login");
            tokens[i] = Some(set);
        }
        let providers = providers.clone();
        tasks.spawn(async move { (i, providers[provider_of(i)].login().await) });
    }
    while let Some(result) = tasks.join_next().await {
        let (i, set) = result.expect("login");
        tokens[i] = Some(set);
    }
    let login_seconds = started.elapsed().as_secs_f64();

    // 2. The saves, in order of due time, while the schedule runs; the due
    // times start once the saves are done and end `span` later, each
    // provider's spread over its part of it (above).
    let lead_in = LEAD_IN_SECS + connections as u64 / SAVES_PER_SEC;
    let t0 = now_ms() + lead_in as i64 * 1000;
    let due_of = |i: usize| {
        let p = provider_of(i);
        let spread = spans[p] as i64 * 1000;
        t0 + (span.as_secs() - spans[p]) as i64 * 1000 + (i as i64 * spread) / connections as i64
    };
    let mut order: Vec<usize> = (0..connections).collect();
    order.sort_by_key(|&i| due_of(i));
    let save_started = Instant::now();
    let schedule_start = Instant::now();
    let seeded = Arc::new(std::sync::Mutex::new(HashMap::with_capacity(connections)));
    let saves = Arc::new(tokio::sync::Semaphore::new(16));
    let mut save_tasks = tokio::task::JoinSet::new();
    // Give up once every due time is a minute past and 20 runs more went by.
    let give_up = Duration::from_secs(lead_in + 60) + span + 20 * tick;
    // The workers start no run whose window would reach a second due time.
    let last_start = t0 + (second_due - window - 1) as i64 * 1000;
    let config_path = std::env::temp_dir().join(format!("{prefix}scale.toml"));
    std::fs::write(&config_path, &config_text).expect("write the workers' configuration");
    let workers = Workers {
        groups,
        tick,
        config: config_path.clone(),
        table: tables["ConnectionsTable"].clone(),
        last_start,
    };
    let schedule = tokio::task::spawn_blocking(move || workers.run(connections, give_up));
    for i in order {
        let mut set = tokens[i].take().expect("every login finished");
        let provider = provider_of(i);
        let expires_at = due_of(i) + leads[provider];
        let permit = saves.clone().acquire_owned().await.expect("semaphore");
        let (service, providers, seeded) = (service.clone(), providers.clone(), seeded.clone());
        save_tasks.spawn(async move {
            let _permit = permit;
            let id = ConnectionId::parse(&format!("scale-{i:06}")).expect("id");
            let left_ms = (expires_at - now_ms()).max(1);
            set.expires_in = (left_ms as u64).div_ceil(1000);
            let saved = service
                .save_login(&id, MIX[provider].0, ConnectionKind::Shared, &set, None)
                .await
                .unwrap_or_else(|e| panic!("save login: {e}"));
            let expires = saved.access_expires_at.expect("expiry");
            let remaining = Duration::from_millis((expires - now_ms()).max(0) as u64);
            providers[provider]
                .sim
                .sim
                .set_access_expiry(set.access_token.secret(), Instant::now() + remaining);
            let due_at = saved.refresh_due_at.expect("due");
            let late = now_ms() > due_at;
            seeded.lock().expect("lock").insert(
                id.as_str().to_owned(),
                Seeded {
                    provider,
                    due_at,
                    expires_at: expires,
                    late,
                },
            );
        });
    }
    while let Some(result) = save_tasks.join_next().await {
        result.expect("save");
    }
    let save_seconds = save_started.elapsed().as_secs_f64();
    eprintln!("scale: logins {login_seconds:.0} s, saves {save_seconds:.0} s; the schedule runs");
    let (invocations, max_in_flight) = schedule.await.expect("schedule");
    let run_seconds = schedule_start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&config_path);
    let seeded = std::mem::take(&mut *seeded.lock().expect("lock"));

    // 3. What the providers saw, and what the table holds.
    let mut counters = Vec::new();
    for fixture in providers.iter() {
        counters.push(fixture.sim.sim.counters());
    }
    let stored = scan(&aws.dynamodb, &tables["ConnectionsTable"]).await;
    let per_shard = due_index_items(&aws.dynamodb, &tables["ConnectionsTable"]).await;
    eprintln!("scale: measuring DynamoDB Local's raw conditional updates");
    let raw_updates_per_sec = raw_update_rate(&aws.dynamodb, &tables["SyncStateTable"]).await;

    let report = Report {
        connections,
        span,
        spans,
        tick,
        concurrency,
        latency_ms,
        login_seconds,
        save_seconds,
        run_seconds,
        invocations,
        max_in_flight,
        seeded,
        stored,
        per_shard,
        counters,
        fanout: Fanout {
            groups,
            token_concurrency,
            raw_updates_per_sec,
        },
    };
    let (text, problems) = report.render();
    #[allow(clippy::print_stdout)]
    {
        print!("{text}");
    }
    assert!(problems.is_empty(), "{}", problems.join("; "));
}

/// The shard groups' worker processes.
struct Workers {
    groups: u32,
    tick: Duration,
    config: std::path::PathBuf,
    table: String,
    /// Epoch ms: no run starts after this.
    last_start: i64,
}

impl Workers {
    /// Starts one worker process per group, reads the runs they report
    /// until all `connections` were refreshed, every worker ended (no run
    /// starts after `last_start`) or `give_up` passed, then
    /// closes their input (they start no more runs) and waits for them;
    /// returns the runs and the most that ran at once across the groups.
    fn run(self, connections: usize, give_up: Duration) -> (Vec<Invocation>, usize) {
        use std::io::BufRead;
        let start = Instant::now();
        let exe = std::env::current_exe().expect("this binary");
        let (lines, found) = std::sync::mpsc::channel::<Invocation>();
        let mut children = Vec::new();
        for group in 0..self.groups {
            let mut child = std::process::Command::new(&exe)
                .env("SCALE_WORKER_GROUP", group.to_string())
                .env("SCALE_GROUPS", self.groups.to_string())
                .env("SCALE_CONFIG", &self.config)
                .env("SCALE_TABLE", &self.table)
                .env("BENCH_TICK_SECS", self.tick.as_secs().to_string())
                .env("SCALE_LAST_START_MS", self.last_start.to_string())
                // The refresher's warnings (a failure, a backoff) on stderr; `RUST_LOG` to see more.
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a worker");
            let stdout = child.stdout.take().expect("stdout");
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(run) = serde_json::from_str::<Invocation>(&line) {
                        let _ = lines.send(run);
                    }
                }
            });
            children.push(child);
        }
        drop(lines);
        let mut done = Vec::new();
        let mut refreshed = 0;
        while refreshed < connections as u64 && start.elapsed() < give_up {
            match found.recv_timeout(Duration::from_secs(1)) {
                Ok(run) => {
                    refreshed += run.summary.refreshed;
                    done.push(run);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // Every worker is done: its last run has started and ended.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for child in &mut children {
            drop(child.stdin.take());
        }
        for mut child in children {
            let status = child.wait().expect("a worker");
            assert!(status.success(), "a worker failed: {status}");
        }
        done.extend(found.try_iter());
        done.sort_by_key(|run| run.started_at);
        let max_in_flight = most_at_once(&done);
        (done, max_in_flight)
    }
}

/// The most runs that overlapped in time.
fn most_at_once(runs: &[Invocation]) -> usize {
    let mut edges: Vec<(i64, i32)> = runs
        .iter()
        .flat_map(|run| {
            [
                (run.started_at, 1),
                (run.started_at + (run.seconds * 1000.0) as i64, -1),
            ]
        })
        .collect();
    edges.sort_unstable();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// A worker process: one shard group's schedule, a run every tick (each
/// with the function's deadline), each reported as a JSON line on stdout,
/// until its input closes or the last start time (`SCALE_LAST_START_MS`)
/// passed.
async fn worker(group: u32) {
    shared::telemetry::init(shared::telemetry::Target::Cli);
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}"));
    let groups: u32 = var("SCALE_GROUPS").parse().expect("SCALE_GROUPS");
    let tick = Duration::from_secs(env("BENCH_TICK_SECS", 60));
    let last_start: i64 = var("SCALE_LAST_START_MS").parse().expect("SCALE_LAST_START_MS");
    let text = std::fs::read_to_string(var("SCALE_CONFIG")).expect("the configuration");
    let config = Arc::new(Config::parse(&text, "scale.toml").unwrap_or_else(|e| panic!("{e}")));
    let concurrency = config.service.refresh_concurrency;
    let aws = stack::aws().await;
    let store = shared::connection::store::ConnectionStore::new(aws.dynamodb.clone(), var("SCALE_TABLE"));
    let service = TokenService::load(
        config,
        store,
        shared::secrets::SecretStore::new(aws.secrets.clone()),
        RefreshSettings::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let service = Arc::new(service.with_token_groups(groups));
    let shards = Layout::new(DUE_SHARDS, groups)
        .and_then(|layout| layout.shards_of(group))
        .expect("the group's shards");
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::SeqCst);
    });
    let mut runs = tokio::task::JoinSet::new();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !closed.load(Ordering::SeqCst) && now_ms() <= last_start {
        tokio::select! {
            _ = interval.tick() => {}
            Some(run) = runs.join_next(), if !runs.is_empty() => {
                report(run.expect("run"));
                continue;
            }
        }
        if now_ms() > last_start {
            break;
        }
        let (service, shards) = (service.clone(), shards.clone());
        runs.spawn(async move {
            let began = Instant::now();
            let started_at = now_ms();
            // The function's deadline: an 80 s timeout less its 2 s margin,
            // so refreshes start for the tick and 3 s more.
            let deadline = began + tick + Duration::from_secs(3) + RefreshSettings::default().time_for_a_send();
            let summary = service
                .refresh_due(DueRun {
                    shards,
                    deadline,
                    concurrency,
                })
                .await;
            Invocation {
                group,
                started_at,
                seconds: began.elapsed().as_secs_f64(),
                summary,
                ops: service.store().ops().snapshot(),
            }
        });
    }
    while let Some(run) = runs.join_next().await {
        report(run.expect("run"));
    }
}

fn report(run: Invocation) {
    let line = serde_json::to_string(&run).expect("json");
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
}

/// DynamoDB Local's conditional updates a second: 64 workers, each
/// updating its own item conditionally on the value it last wrote (as a
/// lease and a commit do), for 10 s.
async fn raw_update_rate(client: &aws_sdk_dynamodb::Client, table: &str) -> f64 {
    let window = Duration::from_secs(10);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..64 {
        let (client, table) = (client.clone(), table.to_owned());
        tasks.spawn(async move {
            let key = AttributeValue::S(format!("raw#{worker}"));
            let mut seen = 0u64;
            let mut done = 0u64;
            let end = Instant::now() + window;
            while Instant::now() < end {
                let (condition, update) = if seen == 0 {
                    ("attribute_not_exists(v)", "SET v = :next")
                } else {
                    ("v = :seen", "SET v = :next")
                };
                let mut request = client
                    .update_item()
                    .table_name(&table)
                    .key("id", key.clone())
                    .update_expression(update)
                    .condition_expression(condition)
                    .expression_attribute_values(":next", AttributeValue::N((seen + 1).to_string()));
                if seen > 0 {
                    request = request.expression_attribute_values(":seen", AttributeValue::N(seen.to_string()));
                }
                request.send().await.expect("a conditional update");
                seen += 1;
                done += 1;
            }
            done
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.expect("worker");
    }
    total as f64 / window.as_secs_f64()
}

/// A connection as the table holds it after the run.
#[derive(Debug)]
struct Stored {
    version: u64,
    last_refresh_at: Option<i64>,
}

/// Every connection's token version and last refresh, by id. In pages of
/// 2,000 items: a whole 1 MB page of a table that has just taken 200,000
/// refreshes took DynamoDB Local more than the SDK's 5 s attempt timeout
/// once (a run at 128 places a group), and the report was lost with it.
async fn scan(client: &aws_sdk_dynamodb::Client, table: &str) -> HashMap<String, Stored> {
    let mut stored = HashMap::new();
    let mut after = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .limit(2_000)
            .projection_expression("id, token_version, last_refresh_at")
            .set_exclusive_start_key(after)
            .send()
            .await
            .expect("scan");
        for item in page.items.unwrap_or_default() {
            let number = |name: &str| match item.get(name) {
                Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
                _ => None,
            };
            let Some(AttributeValue::S(id)) = item.get("id") else {
                continue;
            };
            stored.insert(
                id.clone(),
                Stored {
                    version: number("token_version").unwrap_or(0) as u64,
                    last_refresh_at: number("last_refresh_at"),
                },
            );
        }
        match page.last_evaluated_key.filter(|key| !key.is_empty()) {
            Some(key) => after = Some(key),
            None => return stored,
        }
    }
}

/// Items in each shard of the refresh-due index.
async fn due_index_items(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for shard in 0..DUE_SHARDS {
        let mut count = 0;
        let mut after = None;
        loop {
            let page = client
                .query()
                .table_name(table)
                .index_name("refresh-due")
                .key_condition_expression("due_shard = :shard")
                .expression_attribute_values(":shard", AttributeValue::S(shard.to_string()))
                .select(Select::Count)
                .set_exclusive_start_key(after)
                .send()
                .await
                .expect("count the due index");
            count += page.count as u64;
            match page.last_evaluated_key.filter(|key| !key.is_empty()) {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        counts.push(count);
    }
    counts
}

struct Report {
    connections: usize,
    span: Duration,
    /// Each provider's spread of due times, the last part of `span`.
    spans: Vec<u64>,
    tick: Duration,
    concurrency: usize,
    latency_ms: u64,
    login_seconds: f64,
    save_seconds: f64,
    run_seconds: f64,
    invocations: Vec<Invocation>,
    max_in_flight: usize,
    seeded: HashMap<String, Seeded>,
    stored: HashMap<String, Stored>,
    per_shard: Vec<u64>,
    counters: Vec<oauth_sync_tests::simulator::Counters>,
    fanout: Fanout,
}

impl Report {
    /// The report as Markdown, and what failed the bench's checks.
    fn render(&self) -> (String, Vec<String>) {
        let mut problems = Vec::new();
        let n = self.connections;
        let mut out = String::new();
        let line = |out: &mut String, text: String| {
            out.push_str(&text);
            out.push('\n');
        };

        // Per provider: refreshed once, twice, never; early; outside window; lateness.
        let mut rows = Vec::new();
        let mut lateness_all = Vec::new();
        let mut shard_seconds: BTreeMap<(String, i64), u64> = BTreeMap::new();
        // Refreshes more than 5 s late, by the minute they came due.
        let mut late_by_minute: BTreeMap<i64, u64> = BTreeMap::new();
        let first_due = self.seeded.values().map(|s| s.due_at).min().unwrap_or(0);
        for (p, (name, preset, _)) in MIX.iter().enumerate() {
            let (mut once, mut more, mut never, mut early, mut outside, mut late_saves) = (0, 0, 0, 0, 0, 0);
            let mut lateness = Vec::new();
            for (id, seed) in self.seeded.iter().filter(|(_, s)| s.provider == p) {
                late_saves += u64::from(seed.late);
                let Some(stored) = self.stored.get(id) else {
                    never += 1;
                    continue;
                };
                match stored.version {
                    0 | 1 => never += 1,
                    2 => once += 1,
                    _ => more += 1,
                }
                if let Some(at) = stored.last_refresh_at.filter(|_| stored.version >= 2) {
                    if at < seed.due_at {
                        early += 1;
                    }
                    if at > seed.expires_at {
                        outside += 1;
                    }
                    lateness.push((at - seed.due_at) as f64 / 1000.0);
                    if at - seed.due_at > 5_000 {
                        *late_by_minute.entry((seed.due_at - first_due) / 60_000).or_default() += 1;
                    }
                    let shard = ConnectionId::parse(id).map(|id| id.due_shard()).unwrap_or_default();
                    *shard_seconds.entry((shard, at / 1000)).or_default() += 1;
                }
            }
            lateness.sort_by(f64::total_cmp);
            let c = &self.counters[p];
            rows.push(format!(
                "| {name} ({preset}) | {} | {once} | {more} | {never} | {early} | {outside} | {} | {} | {} | {} | {} |",
                once + more + never,
                quantile(&lateness, 0.5),
                quantile(&lateness, 0.99),
                quantile(&lateness, 1.0),
                c.refreshes,
                c.refresh_tokens_reused + c.too_early + c.families_revoked + c.grace_reuses,
            ));
            for (what, count) in [
                ("refreshed more than once", more),
                ("never refreshed", never),
                ("refreshed before its due time", early),
                ("refreshed after its access token expired", outside),
                ("saved after its due time (seeding too slow)", late_saves),
                ("refresh token reused", c.refresh_tokens_reused),
                ("refused as too early", c.too_early),
                ("family revoked", c.families_revoked),
                ("retired refresh token used in grace", c.grace_reuses),
            ] {
                if count > 0 {
                    problems.push(format!("{name}: {count} {what}"));
                }
            }
            if c.refreshes != once + more {
                problems.push(format!(
                    "{name}: the provider refreshed {} times for {} refreshed connections",
                    c.refreshes,
                    once + more
                ));
            }
            lateness_all.extend(lateness);
        }
        lateness_all.sort_by(f64::total_cmp);

        let refreshed: u64 = self.invocations.iter().map(|i| i.summary.refreshed).sum();
        // The due times a second where every provider's spread overlaps
        // (the last part of the span), and what that rate stands for.
        let needed_rate: f64 = MIX
            .iter()
            .zip(&self.spans)
            .map(|((_, _, share), spread)| (n * share / 10) as f64 / *spread as f64)
            .sum();
        let spreads = MIX
            .iter()
            .zip(&self.spans)
            .map(|((name, _, _), spread)| format!("{name} {spread} s"))
            .collect::<Vec<_>>()
            .join(", ");
        line(
            &mut out,
            format!(
                "{n} connections (Exact Online 40 %, Microsoft 20 %, Xero 20 %, Google 20 %), due times over {} s, \
                 each provider's spread over the last part of it ({spreads}): {needed_rate:.0} due/s at the peak; {} shard groups, each its own process, each running the refresher every {} s \
                 (refreshes start for {} s, each at its due time), {} at a time, each provider capped at {} in flight \
                 ({} a group); token endpoint latency {} ms. Logins took {:.0} s, the saves {:.0} s (before the first \
                 due time), the schedule {:.0} s.",
                self.span.as_secs(),
                self.fanout.groups,
                self.tick.as_secs(),
                self.tick.as_secs() + 3,
                self.concurrency,
                self.fanout.token_concurrency,
                (self.fanout.token_concurrency / u64::from(self.fanout.groups.max(1))).max(1),
                self.latency_ms,
                self.login_seconds,
                self.save_seconds,
                self.run_seconds,
            ),
        );
        line(&mut out, String::new());
        line(
            &mut out,
            "| provider | connections | refreshed once | more than once | never | before due | after expiry | \
             late p50 s | late p99 s | late max s | provider refreshes | reused / too early / revoked / grace |"
                .to_owned(),
        );
        line(&mut out, format!("| --- |{}", " --- |".repeat(11)));
        for row in rows {
            line(&mut out, row);
        }
        line(
            &mut out,
            format!(
                "| all | {n} | | | | | | {} | {} | {} | {refreshed} (by the runs) | |",
                quantile(&lateness_all, 0.5),
                quantile(&lateness_all, 0.99),
                quantile(&lateness_all, 1.0),
            ),
        );
        line(&mut out, String::new());

        // Invocations.
        let busy: Vec<&Invocation> = self.invocations.iter().filter(|i| i.summary.due > 0).collect();
        let left: u64 = self.invocations.iter().map(|i| i.summary.left_for_next_run).sum();
        let still_fresh: u64 = self.invocations.iter().map(|i| i.summary.still_fresh).sum();
        let longest = busy.iter().map(|i| i.seconds).fold(0.0, f64::max);
        line(
            &mut out,
            format!(
                "Refresher runs: {} ({} found something due); at most {} at once across the groups; the longest took \
                 {longest:.1} s; {} shards left to another run (busy); {left} found due but left for the next run, \
                 {still_fresh} found already refreshed by another run.",
                self.invocations.len(),
                busy.len(),
                self.max_in_flight,
                self.invocations.iter().map(|i| i.summary.shards_busy).sum::<u64>(),
            ),
        );
        line(&mut out, String::new());
        line(&mut out, late_episodes(&late_by_minute, &self.invocations));
        line(&mut out, String::new());

        // Throughput against DynamoDB Local's own rate, and each provider's cap.
        let mut per_second: BTreeMap<i64, u64> = BTreeMap::new();
        for stored in self.stored.values().filter(|s| s.version >= 2) {
            if let Some(at) = stored.last_refresh_at {
                *per_second.entry(at / 1000).or_default() += 1;
            }
        }
        let seconds = match (per_second.keys().next(), per_second.keys().last()) {
            (Some(first), Some(last)) => (last - first + 1) as f64,
            _ => 1.0,
        };
        let mean_rate = per_second.values().sum::<u64>() as f64 / seconds;
        let peak_second = per_second.values().copied().max().unwrap_or(0);
        let raw = self.fanout.raw_updates_per_sec;
        // Each worker's counts are cumulative: its last run's are its total.
        let mut by_group: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        for run in &self.invocations {
            let total = by_group.entry(run.group).or_default();
            *total = (*total).max(run.ops);
        }
        let (reads, writes, queries) = by_group
            .values()
            .fold((0, 0, 0), |(r, w, q), (r2, w2, q2)| (r + r2, w + w2, q + q2));
        let refreshed: u64 = self.invocations.iter().map(|run| run.summary.refreshed).sum();
        let per_refresh = (reads + writes + queries) as f64 / refreshed.max(1) as f64;
        line(
            &mut out,
            format!(
                "Throughput: {mean_rate:.0} refreshes/s over the {seconds:.0} s of refreshes (peak second {peak_second}). \
                 DynamoDB Local's raw conditional updates on the same stack, after the run (64 at a time): {raw:.0}/s. \
                 The workers made {reads} reads, {writes} writes and {queries} queries of the connections table, \
                 {per_refresh:.2} operations a refresh: the refreshes' operations were {:.0} % of the raw rate on \
                 average and {:.0} % in the peak second.",
                100.0 * per_refresh * mean_rate / raw.max(1.0),
                100.0 * per_refresh * peak_second as f64 / raw.max(1.0),
            ),
        );
        line(&mut out, String::new());
        line(&mut out, "| provider | cap (token_concurrency) | peak in flight at the provider | sum of the groups' peaks | lowest limit (AIMD) | 429/503 |".to_owned());
        line(&mut out, "| --- | --- | --- | --- | --- | --- |".to_owned());
        for (p, (name, _, _)) in MIX.iter().enumerate() {
            let mut group_peaks: BTreeMap<u32, u64> = BTreeMap::new();
            let (mut lowest, mut throttled) = (u64::MAX, 0);
            for run in &self.invocations {
                for load in run.summary.providers.iter().filter(|l| l.provider == *name) {
                    let peak = group_peaks.entry(run.group).or_default();
                    *peak = (*peak).max(load.peak_in_flight);
                    lowest = lowest.min(load.lowest_limit);
                    throttled = throttled.max(load.throttled);
                }
            }
            let at_provider = self.counters[p].peak_refreshes_in_flight;
            line(
                &mut out,
                format!(
                    "| {name} | {} | {at_provider} | {} | {} | {throttled} |",
                    self.fanout.token_concurrency,
                    group_peaks.values().sum::<u64>(),
                    if lowest == u64::MAX {
                        "–".to_owned()
                    } else {
                        lowest.to_string()
                    },
                ),
            );
            if at_provider > self.fanout.token_concurrency {
                problems.push(format!(
                    "{name}: {at_provider} refreshes in flight at once, over the cap of {}",
                    self.fanout.token_concurrency
                ));
            }
        }
        line(&mut out, String::new());

        // The due index per shard.
        let total: u64 = self.per_shard.iter().sum();
        let mean = total as f64 / self.per_shard.len().max(1) as f64;
        let (min, max) = (
            self.per_shard.iter().copied().min().unwrap_or(0),
            self.per_shard.iter().copied().max().unwrap_or(0),
        );
        let peak_shard_second = shard_seconds.values().copied().max().unwrap_or(0);
        let shard_list: Vec<String> = self.per_shard.iter().map(u64::to_string).collect();
        line(
            &mut out,
            format!(
                "Refresh-due index: {total} items in {} shards, {min}–{max} a shard (mean {mean:.0}, max/mean {:.3}): {}. \
                 Peak commits into one shard in one second: {peak_shard_second} (each moves the connection's index \
                 item; DynamoDB allows 1,000 writes/s per partition).",
                self.per_shard.len(),
                if mean > 0.0 { max as f64 / mean } else { 0.0 },
                shard_list.join(", "),
            ),
        );
        if total != n as u64 {
            problems.push(format!("the due index holds {total} items for {n} connections"));
        }
        if mean > 0.0 && (max as f64) > 1.1 * mean {
            problems.push(format!("a hot shard: {max} items against a mean of {mean:.0}"));
        }
        if !problems.is_empty() {
            line(&mut out, String::new());
            line(&mut out, format!("**Failed:** {}", problems.join("; ")));
        }
        (out, problems)
    }
}

/// The refreshes more than 5 s late by the minute they came due, and the
/// runs' latest start after a due time, as one line.
fn late_episodes(late_by_minute: &BTreeMap<i64, u64>, invocations: &[Invocation]) -> String {
    let late_total: u64 = late_by_minute.values().sum();
    let minutes: Vec<String> = late_by_minute
        .iter()
        .map(|(minute, count)| format!("minute {minute}: {count}"))
        .collect();
    let latest_start = invocations
        .iter()
        .map(|i| i.summary.started_late_max_ms)
        .max()
        .unwrap_or(0);
    format!(
        "Refreshed more than 5 s after their due time: {late_total}{}{}. The runs' latest start of a refresh \
         after its due time (its timer and its wait for one of the run's places): {:.1} s.",
        if minutes.is_empty() {
            ""
        } else {
            "; by the minute they came due, from the first: "
        },
        minutes.join(", "),
        latest_start as f64 / 1000.0,
    )
}

/// The `q` quantile of sorted `values`, to one decimal, or "–".
fn quantile(values: &[f64], q: f64) -> String {
    if values.is_empty() {
        return "–".to_owned();
    }
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    format!("{:.1}", values[index])
}
