//! The API's token route and proxy, in one run against DynamoDB Local and
//! the simulator (Exact Online preset, no rate limit), through
//! `shared::api::ApiService` (the `api` function's handler adds only the
//! JSON mapping):
//! - the token route with a fresh token: p50/p99 of sequential calls, and
//!   calls/s with a few concurrent callers of one connection;
//! - the token route when every call refreshes (20 s access tokens, inside
//!   Exact's 25 s refresh lead, `min_refresh_interval_secs = 0`): p50/p99;
//! - the proxy's overhead: one GET of a page of projects, directly with
//!   `reqwest` and the bearer token, and through `Proxy::forward`,
//!   alternating, p50/p99 of each and the difference; and the DynamoDB calls
//!   one proxied request makes, counted by a recording proxy in front of
//!   DynamoDB Local in a separate, untimed pass.
//!
//! Beside them, DynamoDB Local's own round trip on the same stack (a
//! consistent `GetItem`, a conditional `PutItem`): the proxy's overhead is
//! mostly such round trips.
//!
//! Needs the local stack:
//!   scripts/stack start && . .local/stack.env && cargo bench -p oauth-sync-tests --bench api
//! Optional: BENCH_CALLS (default 300, per measurement), BENCH_CONCURRENCY
//! (default "4,16": concurrent callers of the fresh token route),
//! BENCH_WARM_ROUNDS (default 1: whole rounds run first and thrown away,
//! which warm up DynamoDB Local on a just-started stack).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use oauth_sync_tests::proxy::DynamoProxy;
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{PROJECTS_INCREMENTAL, SyncFixture, deadline, quick_sync_settings};
use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use shared::api::ApiService;
use shared::api::proxy::{Proxy, ProxyRequest};
use shared::config::PresetName;
use shared::connection::ConnectionId;
use shared::login::LinkKeys;
use shared::refresh::RefreshSettings;
use shared::sync::budget::RateBudget;

/// The page both the direct call and the proxy fetch: Exact's normal
/// endpoint, 60 projects a page.
const PAGE_PATH: &str = "project/Projects";
const PAGE_QUERY: &str = "$select=ID,Code,Description";
/// Projects seeded: one full page.
const PROJECTS: usize = 60;
/// Calls before each measurement, not timed (open connections, warm caches).
const WARM_UP: usize = 20;
/// Proxied requests in the counting pass.
const COUNTED: usize = 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Exact Online with its rate limit switched off, access tokens living `ttl`.
fn exact(ttl: Duration) -> SimConfig {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    sim.access_token_ttl = ttl;
    sim
}

/// Fresh tables, the simulator, one connection `name` and the API on them.
async fn start(ttl: Duration, name: &str) -> (SyncFixture, Arc<ApiService>, ConnectionId) {
    let fx = SyncFixture::start(
        exact(ttl),
        "min_refresh_interval_secs = 0",
        PROJECTS_INCREMENTAL,
        quick_sync_settings(),
        name,
    )
    .await;
    let links = LinkKeys::from_json(&shared::crypto::KeyRing::generate_json("k1").expect("rng")).expect("keys");
    let api = ApiService::new(
        fx.fixture.config.clone(),
        fx.fixture.service.clone(),
        fx.engine.jobs().clone(),
        fx.engine.records().clone(),
        links,
    )
    .expect("api service");
    let id = fx.connect(name).await;
    (fx, Arc::new(api), id)
}

/// Latencies in ms, sorted.
struct Latencies(Vec<f64>);

impl Latencies {
    fn new(mut ms: Vec<f64>) -> Latencies {
        ms.sort_by(f64::total_cmp);
        Latencies(ms)
    }

    /// Nearest rank: the smallest value with at least `p` of the calls at or below it.
    fn percentile(&self, p: f64) -> f64 {
        let rank = (p * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    fn p50(&self) -> f64 {
        self.percentile(0.50)
    }

    fn p99(&self) -> f64 {
        self.percentile(0.99)
    }
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

/// One table row; `None` prints as `—`.
struct Row {
    what: String,
    calls: usize,
    concurrency: usize,
    p50: f64,
    p99: Option<f64>,
    per_second: Option<f64>,
    dynamodb: String,
}

impl Row {
    fn timed(
        what: impl Into<String>,
        calls: usize,
        concurrency: usize,
        latencies: &Latencies,
        elapsed: Duration,
        dynamodb: impl Into<String>,
    ) -> Row {
        Row {
            what: what.into(),
            calls,
            concurrency,
            p50: latencies.p50(),
            p99: Some(latencies.p99()),
            per_second: Some(calls as f64 / elapsed.as_secs_f64()),
            dynamodb: dynamodb.into(),
        }
    }

    fn line(&self) -> String {
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "—".to_owned());
        format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} |",
            self.what,
            self.calls,
            self.concurrency,
            self.p50,
            or_dash(self.p99.map(|v| format!("{v:.2}"))),
            or_dash(self.per_second.map(|v| format!("{v:.0}"))),
            self.dynamodb
        )
    }
}

#[tokio::main]
async fn main() {
    let calls = env("BENCH_CALLS", 300).max(1);
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "4,16".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|c| *c > 0)
        .collect();
    // DynamoDB Local answered a just-started stack's calls two to three
    // times slower than a warm one's (likely its JVM warming up): the first
    // rounds warm it and are thrown away.
    for _ in 0..env("BENCH_WARM_ROUNDS", 1) {
        measure(calls, &levels).await;
    }
    let rows = measure(calls, &levels).await;
    let mut out = String::from(
        "| measurement | calls | concurrency | p50 ms | p99 ms | calls/s | DynamoDB calls each |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for row in &rows {
        out.push_str(&row.line());
        out.push('\n');
    }
    out.push('\n');
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    out.push_str(&format!(
        "load average after the run: {}\n",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
}

/// One round of every measurement, each part on tables of its own.
async fn measure(calls: usize, levels: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();

    // The fresh token and the proxy: Exact's 600 s tokens, never due here.
    let (fx, api, id) = start(Duration::from_secs(600), "bench-api").await;
    fx.sim().seed_projects(PROJECTS);
    rows.extend(fresh_tokens(&fx, &api, &id, calls, levels).await);
    // The anchors just before the proxy, whose overhead they explain.
    let anchors = raw_round_trips(&fx, &id, calls).await;
    let counted = counted_proxy_calls(&fx, &id).await;
    rows.extend(proxy_overhead(&fx, &api, &id, calls, &counted, anchors).await);
    drop_tables(&fx).await;

    // Every call refreshes: 20 s tokens are always inside the 25 s lead.
    let (fx, api, id) = start(Duration::from_secs(20), "bench-api-refresh").await;
    rows.push(refreshing_tokens(&fx, &api, &id, calls).await);
    drop_tables(&fx).await;
    rows
}

/// DynamoDB Local's own round trip on this stack: `calls` consistent
/// `GetItem`s of the connection's item, and `calls` conditional `PutItem`s
/// of a scratch item in the sync-state table (the rate budget's kind of write).
async fn raw_round_trips(fx: &SyncFixture, id: &ConnectionId, calls: usize) -> Vec<(&'static str, Row)> {
    let dynamodb = &fx.fixture.aws.dynamodb;
    let connections = fx.fixture.connections_table();
    let state = &fx.fixture.tables["SyncStateTable"];
    let get = || async {
        dynamodb
            .get_item()
            .table_name(connections)
            .key("id", AttributeValue::S(id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .expect("raw GetItem");
    };
    let put = |version: usize| async move {
        dynamodb
            .put_item()
            .table_name(state)
            .item("id", AttributeValue::S("bench#raw".to_owned()))
            .item("version", AttributeValue::N(version.to_string()))
            .item("state", AttributeValue::S("{}".to_owned()))
            .condition_expression("attribute_not_exists(id) OR version = :v")
            .expression_attribute_values(":v", AttributeValue::N(version.saturating_sub(1).to_string()))
            .send()
            .await
            .expect("raw PutItem");
    };
    for _ in 0..WARM_UP {
        get().await;
    }
    let (mut gets, mut puts) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        get().await;
        gets.push(ms(t.elapsed()));
    }
    let get_elapsed = started.elapsed();
    let started = Instant::now();
    for version in 1..=calls {
        let t = Instant::now();
        put(version).await;
        puts.push(ms(t.elapsed()));
    }
    let put_elapsed = started.elapsed();
    let _ = dynamodb
        .delete_item()
        .table_name(state)
        .key("id", AttributeValue::S("bench#raw".to_owned()))
        .send()
        .await;
    vec![
        (
            "GetItem",
            Row::timed(
                "anchor: DynamoDB Local, consistent GetItem",
                calls,
                1,
                &Latencies::new(gets),
                get_elapsed,
                "1",
            ),
        ),
        (
            "PutItem",
            Row::timed(
                "anchor: DynamoDB Local, conditional PutItem",
                calls,
                1,
                &Latencies::new(puts),
                put_elapsed,
                "1",
            ),
        ),
    ]
}

/// (reads, writes, queries) of the connection store per call, from its counters.
fn per_call(before: (u64, u64, u64), after: (u64, u64, u64), calls: usize) -> String {
    let per = |a: u64, b: u64| (a - b) as f64 / calls as f64;
    let (reads, writes, queries) = (per(after.0, before.0), per(after.1, before.1), per(after.2, before.2));
    let mut text = format!("{reads:.2} read, {writes:.2} write");
    if queries > 0.0 {
        text.push_str(&format!(", {queries:.2} query"));
    }
    text
}

/// One call of the token route with the default `min_valid_secs`: the token's version.
async fn token_call(api: &ApiService, id: &ConnectionId) -> u64 {
    api.token(id.as_str(), None, deadline(30))
        .await
        .unwrap_or_else(|e| panic!("token route: {e}"))
        .token_version
}

/// The token route with a token that needs no refresh: `calls` in a row,
/// then `calls` at each concurrency level, all of one connection.
async fn fresh_tokens(
    fx: &SyncFixture,
    api: &Arc<ApiService>,
    id: &ConnectionId,
    calls: usize,
    levels: &[usize],
) -> Vec<Row> {
    let version = fx.fixture.connection(id).await.token_version;
    for _ in 0..WARM_UP {
        token_call(api, id).await;
    }
    let ops = || fx.fixture.service.store().ops().snapshot();
    let mut rows = Vec::new();
    for concurrency in std::iter::once(1).chain(levels.iter().copied()) {
        let before = ops();
        let next = Arc::new(AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        let started = Instant::now();
        for _ in 0..concurrency {
            let (api, id, next) = (api.clone(), id.clone(), next.clone());
            callers.spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let t = Instant::now();
                    let answer = token_call(&api, &id).await;
                    latencies.push(ms(t.elapsed()));
                    assert_eq!(answer, version, "a fresh token needs no refresh");
                }
                latencies
            });
        }
        let mut latencies = Vec::with_capacity(calls);
        while let Some(caller) = callers.join_next().await {
            latencies.extend(caller.expect("caller"));
        }
        let elapsed = started.elapsed();
        let callers = if concurrency == 1 { "caller" } else { "callers" };
        rows.push(Row::timed(
            format!("token route, fresh token, {concurrency} {callers}"),
            calls,
            concurrency,
            &Latencies::new(latencies),
            elapsed,
            per_call(before, ops(), calls),
        ));
    }
    rows
}

/// The token route when every call refreshes: each answer is the next
/// version, and the simulator saw no refresh token spent twice.
async fn refreshing_tokens(fx: &SyncFixture, api: &ApiService, id: &ConnectionId, calls: usize) -> Row {
    let mut version = fx.fixture.connection(id).await.token_version;
    for _ in 0..WARM_UP {
        version = token_call(api, id).await;
    }
    let ops = || fx.fixture.service.store().ops().snapshot();
    let before = ops();
    let mut latencies = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let answer = token_call(api, id).await;
        latencies.push(ms(t.elapsed()));
        assert_eq!(answer, version + 1, "every call refreshes once");
        version = answer;
    }
    let elapsed = started.elapsed();
    let counters = fx.sim().counters();
    assert_eq!((counters.refresh_tokens_reused, counters.families_revoked), (0, 0));
    Row::timed(
        "token route, a refresh on every call (20 s tokens)",
        calls,
        1,
        &Latencies::new(latencies),
        elapsed,
        per_call(before, ops(), calls),
    )
}

/// The same page fetched `calls` times directly (an HTTP client built as
/// the proxy's, the token from the token route) and `calls` times through
/// `Proxy::forward`, alternating (and which goes first), so that a change
/// in the machine's load falls on both. `counted`: the proxied request's
/// DynamoDB calls by operation, which `anchors` (by operation) price.
/// Returns the anchors' rows, the two timed rows, the overhead, and what
/// the counted calls cost at the anchors' p50.
async fn proxy_overhead(
    fx: &SyncFixture,
    api: &ApiService,
    id: &ConnectionId,
    calls: usize,
    counted: &Counted,
    anchors: Vec<(&'static str, Row)>,
) -> Vec<Row> {
    let conn = fx.fixture.connection(id).await;
    let division = conn.params.get("division").expect("the division learned at login");
    let url = format!(
        "{}/api/v1/{division}/{PAGE_PATH}?{PAGE_QUERY}",
        fx.fixture.oauth.sim.base_url
    );
    let token = api
        .token(id.as_str(), None, deadline(30))
        .await
        .unwrap_or_else(|e| panic!("token route: {e}"))
        .access_token;
    shared::http::install_crypto_provider();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(shared::api::proxy::PROXY_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let direct = || async {
        let response = http
            .get(&url)
            .bearer_auth(&token)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .expect("direct GET");
        assert_eq!(response.status().as_u16(), 200);
        response.bytes().await.expect("direct body").len()
    };
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    let request = ProxyRequest {
        method: Method::GET,
        path: PAGE_PATH.to_owned(),
        query: Some(PAGE_QUERY.to_owned()),
        headers,
        body: Vec::new(),
    };
    let proxied = || async {
        let answer = api
            .proxy()
            .forward(id, request.clone(), deadline(30))
            .await
            .unwrap_or_else(|e| panic!("proxy: {e}"));
        assert_eq!((answer.status, answer.refreshed), (200, false));
        answer.body.len()
    };
    let bytes = direct().await;
    assert_eq!(proxied().await, bytes, "the same page either way");
    for _ in 0..WARM_UP {
        direct().await;
        proxied().await;
    }
    let ops = || fx.fixture.service.store().ops().snapshot();
    let before = ops();
    let (mut direct_ms, mut proxied_ms) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let (mut direct_time, mut proxied_time) = (Duration::ZERO, Duration::ZERO);
    for i in 0..calls {
        let proxy_first = i % 2 == 0;
        for through_proxy in [proxy_first, !proxy_first] {
            let t = Instant::now();
            if through_proxy {
                proxied().await;
                proxied_time += t.elapsed();
                proxied_ms.push(ms(t.elapsed()));
            } else {
                direct().await;
                direct_time += t.elapsed();
                direct_ms.push(ms(t.elapsed()));
            }
        }
    }
    let store = per_call(before, ops(), calls);
    let (direct, proxied) = (Latencies::new(direct_ms), Latencies::new(proxied_ms));
    let priced: f64 = counted
        .0
        .iter()
        .map(|(action, n)| {
            let anchor = anchors.iter().find(|(a, _)| a == action);
            n * anchor.map_or(f64::NAN, |(_, row)| row.p50)
        })
        .sum();
    let mut rows: Vec<Row> = anchors.into_iter().map(|(_, row)| row).collect();
    rows.push(Row::timed(
        format!("GET {PAGE_PATH} ({bytes} bytes), direct: reqwest + bearer"),
        calls,
        1,
        &direct,
        direct_time,
        "0",
    ));
    rows.push(Row::timed(
        format!("GET {PAGE_PATH} ({bytes} bytes), through Proxy::forward"),
        calls,
        1,
        &proxied,
        proxied_time,
        format!("{} ({store} in the connection store)", counted.text()),
    ));
    rows.push(Row {
        what: "proxy overhead: proxied − direct".to_owned(),
        calls,
        concurrency: 1,
        p50: proxied.p50() - direct.p50(),
        p99: Some(proxied.p99() - direct.p99()),
        per_second: None,
        dynamodb: counted.text(),
    });
    rows.push(Row {
        what: "the proxied request's DynamoDB calls at the anchors' p50".to_owned(),
        calls,
        concurrency: 1,
        p50: priced,
        p99: None,
        per_second: None,
        dynamodb: counted.text(),
    });
    rows
}

/// DynamoDB calls per proxied request, by operation (`GetItem`, `PutItem`…).
struct Counted(std::collections::BTreeMap<String, f64>);

impl Counted {
    /// "6.00 (4.00 GetItem + 2.00 PutItem)"
    fn text(&self) -> String {
        let each = self
            .0
            .iter()
            .map(|(action, n)| format!("{n:.2} {action}"))
            .collect::<Vec<_>>()
            .join(" + ");
        format!("{:.2} ({each})", self.0.values().sum::<f64>())
    }
}

/// The DynamoDB calls of one proxied request, by operation: a `Proxy` on
/// the same tables whose DynamoDB traffic goes through a recording proxy,
/// [`COUNTED`] requests after one to warm up.
async fn counted_proxy_calls(fx: &SyncFixture, id: &ConnectionId) -> Counted {
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("AWS_ENDPOINT_URL_DYNAMODB (the local stack)");
    let recorder = DynamoProxy::start(&upstream).await.expect("recording proxy");
    let tokens = Arc::new(fx.fixture.service_via(&recorder.url, RefreshSettings::default()).await);
    let sdk = shared::aws::sdk_config_from_env();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(&recorder.url)
            .build(),
    );
    let budget = RateBudget::new(dynamodb, fx.fixture.tables["SyncStateTable"].clone());
    let proxy = Proxy::new(tokens, budget).expect("proxy");
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    let request = ProxyRequest {
        method: Method::GET,
        path: PAGE_PATH.to_owned(),
        query: Some(PAGE_QUERY.to_owned()),
        headers,
        body: Vec::new(),
    };
    let forward = || async {
        let answer = proxy
            .forward(id, request.clone(), deadline(30))
            .await
            .unwrap_or_else(|e| panic!("proxy: {e}"));
        assert_eq!(answer.status, 200);
    };
    forward().await;
    let before = recorder.calls().len();
    for _ in 0..COUNTED {
        forward().await;
    }
    let mut by_action = std::collections::BTreeMap::<String, f64>::new();
    for call in &recorder.calls()[before..] {
        let action = call.action.trim_start_matches("dynamodb:").to_owned();
        *by_action.entry(action).or_default() += 1.0 / COUNTED as f64;
    }
    Counted(by_action)
}

/// Deletes the fixture's tables: DynamoDB Local slows down as its in-memory
/// database grows.
async fn drop_tables(fx: &SyncFixture) {
    for table in fx.fixture.tables.values() {
        let _ = fx.fixture.aws.dynamodb.delete_table().table_name(table).send().await;
    }
}
