//! The handler, called directly with API Gateway HTTP API v2 events, against
//! the local stack and the strict simulator: every route's answers and
//! errors, the changes cursor while a sync writes, and the token route
//! hammered beside the refresher and the sync at a rotating provider.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lambda_http::{Body, Request, Response};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{PROJECTS_INCREMENTAL, SyncFixture, deadline, quick_sync_settings};
use serde_json::{Value, json};
use shared::api::ApiService;
use shared::config::PresetName;
use shared::login::LinkKeys;

const CALLBACK: &str = "https://auth.example.com/callback";

/// An HTTP API v2 event: `method path` with a raw query string and a JSON body.
fn request(method: &str, path: &str, query: &str, body: Option<&Value>) -> Request {
    let mut value: Value = serde_json::from_str(include_str!("fixtures/http-api-v2.json")).expect("fixture");
    value["routeKey"] = "$default".into();
    value["requestContext"]["routeKey"] = "$default".into();
    value["pathParameters"] = json!({});
    value["rawPath"] = path.into();
    value["requestContext"]["http"]["path"] = path.into();
    value["requestContext"]["http"]["method"] = method.into();
    value["rawQueryString"] = query.into();
    let mut parameters = serde_json::Map::new();
    for (name, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let joined = match parameters.get(name.as_ref()).and_then(Value::as_str) {
            Some(before) => format!("{before},{v}"),
            None => v.into_owned(),
        };
        parameters.insert(name.into_owned(), joined.into());
    }
    value["queryStringParameters"] = Value::Object(parameters);
    value["cookies"] = json!([]);
    // Exact Online answers XML unless asked for JSON.
    value["headers"]["accept"] = "application/json".into();
    if let Some(body) = body {
        value["headers"]["content-type"] = "application/json".into();
        value["body"] = body.to_string().into();
    }
    lambda_http::request::from_str(&value.to_string()).expect("a valid HTTP API v2 event")
}

fn text(response: &Response<Body>) -> String {
    match response.body() {
        Body::Text(text) => text.clone(),
        Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    }
}

async fn call(service: &ApiService, method: &str, path: &str, query: &str, body: Option<Value>) -> (u16, Value) {
    let response = api::handle(service, request(method, path, query, body.as_ref()))
        .await
        .unwrap_or_else(|never| match never {});
    assert_eq!(
        response.headers().get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "{method} {path}"
    );
    let status = response.status().as_u16();
    let body = serde_json::from_str(&text(&response)).unwrap_or(Value::Null);
    (status, body)
}

/// An Exact Online-style provider with its projects sync, and the API on the same tables.
async fn start(sim: SimConfig, provider: &str, test: &str) -> (SyncFixture, ApiService) {
    let fx = SyncFixture::start(sim, provider, PROJECTS_INCREMENTAL, quick_sync_settings(), test).await;
    let text = fx
        .fixture
        .config_text
        .replace("[service]\n", &format!("[service]\ncallback_url = \"{CALLBACK}\"\n"));
    let config = Arc::new(shared::config::Config::parse(&text, "api.toml").unwrap_or_else(|e| panic!("{e}")));
    let links = LinkKeys::from_json(&shared::crypto::KeyRing::generate_json("k1").expect("rng")).expect("keys");
    let service = ApiService::new(
        config,
        fx.fixture.service.clone(),
        fx.engine.jobs().clone(),
        fx.engine.records().clone(),
        links,
    )
    .expect("api service");
    (fx, service)
}

fn exact() -> SimConfig {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented_and_bad_input_changes_nothing() {
    let logs = oauth_sync_tests::logs::captured();
    let (fx, api) = start(exact(), "min_refresh_interval_secs = 0", "api-routes").await;
    fx.sim().seed_projects(30);
    let id = fx.connect("acme-1").await;

    // Each part its own function: one test body this long has a stack
    // frame (debug build) near the 2 MiB a test thread gets.
    links_and_connections(&fx, &api).await;
    token_and_proxy(&fx, &api).await;
    syncs_and_records(&fx, &api, &id).await;

    // Revoke: the connection is revoked and its token route says so.
    let (status, revoked) = call(&api, "DELETE", "/connections/acme-1", "", None).await;
    assert_eq!(
        (status, revoked["status"].as_str()),
        (200, Some("revoked")),
        "{revoked}"
    );
    let (status, error) = call(&api, "POST", "/connections/acme-1/token", "", None).await;
    assert_eq!((status, error["error"].as_str()), (409, Some("needs_login")), "{error}");

    let logged = logs.text();
    for secret in fx.sim().issued_secrets() {
        assert!(!logged.contains(&secret), "a token reached the log");
    }
}

/// `POST /links` and `GET /connections…`: the same checks as connect-link, never a token.
async fn links_and_connections(fx: &SyncFixture, api: &ApiService) {
    // Links: the same checks as connect-link.
    let (status, link) = call(
        api,
        "POST",
        "/links",
        "",
        Some(json!({"provider": "sim", "connection": "acme-2", "label": "Acme", "expires_in": 600})),
    )
    .await;
    assert_eq!(status, 201, "{link}");
    assert!(
        link["url"]
            .as_str()
            .unwrap_or_default()
            .starts_with("https://auth.example.com/connect/sim?"),
        "{link}"
    );
    assert_eq!(link["connection"], "acme-2");
    let (status, made) = call(api, "POST", "/links", "", Some(json!({"provider": "sim"}))).await;
    assert_eq!(status, 201);
    assert!(made["connection"].as_str().unwrap_or_default().starts_with("conn-"));
    for (body, field) in [
        (json!({"provider": "nope"}), "provider"),
        (json!({"provider": "sim", "connection": "a b"}), "connection"),
        (json!({"provider": "sim", "expires_in": 99_999_999}), "expires_in"),
        (
            json!({"provider": "sim", "return_url": "https://evil.example/"}),
            "return_url",
        ),
        (json!({"provider": "sim", "label": "two\nlines"}), "label"),
        (json!({"provider": "sim", "kind": "team"}), "kind"),
        (json!({"provider": "sim", "colour": "blue"}), "body"),
        (json!({"connection": "x"}), "body"),
    ] {
        let (status, error) = call(api, "POST", "/links", "", Some(body.clone())).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("bad_request")),
            "{body}: {error}"
        );
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(field) || message.contains(&format!("`{field}`")) || field == "body",
            "{body}: {message}"
        );
    }

    // Connections: listed and shown, never a token.
    let (status, page) = call(api, "GET", "/connections", "provider=sim&status=active", None).await;
    assert_eq!(status, 200, "{page}");
    let listed: Vec<&str> = page["connections"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, ["acme-1"]);
    let (status, shown) = call(api, "GET", "/connections/acme-1", "", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (shown["status"].as_str(), shown["token_version"].as_u64()),
        (Some("active"), Some(1))
    );
    assert!(shown["params"]["division"].is_string(), "{shown}");
    assert_eq!(shown["syncs"][0]["sync"], "projects");
    for secret in fx.sim().issued_secrets() {
        assert!(!page.to_string().contains(&secret) && !shown.to_string().contains(&secret));
    }
    let (status, _) = call(api, "GET", "/connections/nobody", "", None).await;
    assert_eq!(status, 404);
    let (status, error) = call(api, "GET", "/connections", "status=sleeping", None).await;
    assert_eq!(
        (status, error["message"].as_str().map(|m| m.starts_with("status"))),
        (400, Some(true))
    );
    let (status, error) = call(api, "GET", "/connections", "limit=5&limit=6", None).await;
    assert_eq!(status, 400, "a repeated parameter: {error}");
    let (status, _) = call(api, "PUT", "/connections/acme-1", "", None).await;
    assert_eq!(status, 405);
    let (status, _) = call(api, "GET", "/nothing/here", "", None).await;
    assert_eq!(status, 404);
}

/// `POST /connections/{id}/token` and `ANY /proxy/{id}/…`.
async fn token_and_proxy(fx: &SyncFixture, api: &ApiService) {
    // A token valid for what was asked, through the protocol.
    let (status, token) = call(api, "POST", "/connections/acme-1/token", "", None).await;
    assert_eq!(status, 200, "{token}");
    let access = token["access_token"].as_str().expect("a token").to_owned();
    assert!(
        fx.fixture.oauth.api_accepts(&access).await,
        "the token works at the provider"
    );
    assert_eq!(token["token_type"], "Bearer");
    let (status, error) = call(
        api,
        "POST",
        "/connections/acme-1/token",
        "",
        Some(json!({"min_valid_secs": 999_999})),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));

    // The proxy: the provider's API with the connection's token and division.
    let (status, projects) = {
        let response = api::handle(
            api,
            request("GET", "/proxy/acme-1/project/Projects", "$select=ID,Code", None),
        )
        .await
        .unwrap_or_else(|never| match never {});
        (response.status().as_u16(), text(&response))
    };
    assert_eq!(status, 200, "{projects}");
    assert!(projects.contains("\"Code\""), "{projects}");
    let (status, error) = call(api, "GET", "/proxy/acme-1/..%2f..%2fother", "", None).await;
    assert_eq!(status, 400, "{error}");
    // A proxy-shaped path (IAM authorizes it as a proxy call) that would
    // resolve to the token route is refused, never resolved.
    for smuggled in [
        "/proxy/acme-1/%2e%2e/%2e%2e/connections/acme-1/token",
        "/proxy/acme-1/../../connections/acme-1/token",
    ] {
        let (status, error) = call(api, "POST", smuggled, "", None).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("bad_request")),
            "{smuggled}: {error}"
        );
        assert!(error.get("access_token").is_none());
    }
}

/// `POST /syncs/…/run`, `GET /syncs/…` and `GET /records/…`.
async fn syncs_and_records(fx: &SyncFixture, api: &ApiService, id: &shared::connection::ConnectionId) {
    // Run now, the sync's status, and the records changed since a cursor.
    let (status, job) = call(api, "POST", "/syncs/acme-1/projects/run", "", None).await;
    assert_eq!((status, job["state"].as_str()), (202, Some("scheduled")), "{job}");
    fx.run(id, "projects").await;
    let (status, job) = call(api, "GET", "/syncs/acme-1/projects", "", None).await;
    assert_eq!(status, 200);
    assert_eq!(job["last_run"]["status"], "finished", "{job}");
    assert_eq!(job["runs"].as_array().map(Vec::len), Some(1));
    let (seen, cursor) = read_changes(api, "", 7).await;
    assert_eq!(seen.len(), 30, "every record once, over pages of 7");
    assert!(seen.iter().all(|(_, change)| change == "inserted"));
    let (status, one) = call(api, "GET", &format!("/records/acme-1/projects/{}", seen[0].0), "", None).await;
    assert_eq!((status, one["id"].as_str()), (200, Some(seen[0].0.as_str())), "{one}");
    assert!(one["record"].is_object(), "{one}");
    let (status, _) = call(api, "GET", "/records/acme-1/projects/nothing-here", "", None).await;
    assert_eq!(status, 404);
    let (status, error) = call(api, "GET", "/records/acme-1/projects", "since=garbage", None).await;
    assert_eq!(status, 400, "{error}");
    let (status, _) = call(api, "GET", "/records/acme-1/other", "", None).await;
    assert_eq!(status, 404);

    // Nothing new: an empty page and the same place.
    let (nothing, again) = read_changes(api, &cursor, 7).await;
    assert!(nothing.is_empty());
    assert_eq!(again, cursor);
}

/// Every change from `since` to the end, `limit` at a time: (id, change)
/// in order, and the cursor to go on from.
async fn read_changes(api: &ApiService, since: &str, limit: usize) -> (Vec<(String, String)>, String) {
    let mut seen = Vec::new();
    let mut cursor = since.to_owned();
    loop {
        let query = format!("since={cursor}&limit={limit}");
        let (status, page) = call(api, "GET", "/records/acme-1/projects", &query, None).await;
        assert_eq!(status, 200, "{page}");
        for record in page["records"].as_array().cloned().unwrap_or_default() {
            seen.push((
                record["id"].as_str().unwrap_or_default().to_owned(),
                record["change"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
        if page["has_more"] != true {
            return (seen, cursor);
        }
    }
}

/// A consumer reading changes page by page while syncs insert, update and
/// delete misses none: every change made upstream is seen at least once
/// after the cursor that preceded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reading_while_the_sync_writes_misses_no_change() {
    let (fx, api) = start(exact(), "min_refresh_interval_secs = 0", "api-changes").await;
    let ids = fx.sim().seed_projects(40);
    let id = fx.connect("acme-1").await;
    fx.run(&id, "projects").await;
    let (first, mut cursor) = read_changes(&api, "", 9).await;
    assert_eq!(first.len(), 40);

    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for round in 0..4 {
        // Upstream changes, then a sync running while the consumer reads.
        let updated = &ids[round * 3..round * 3 + 3];
        for project in updated {
            fx.sim().update_project(project, &format!("round {round}"));
            expected.insert((project.clone(), "updated".to_owned()));
        }
        let added = fx.sim().insert_project(&format!("NEW{round}"), "new");
        expected.insert((added, "inserted".to_owned()));
        let engine = fx.engine.clone();
        let job = tokio::spawn({
            let id = id.clone();
            async move { engine.run_now(&id, "projects", deadline(120), &|_| {}).await }
        });
        let mut seen = Vec::new();
        loop {
            let (page, next) = read_changes(&api, &cursor, 2).await;
            seen.extend(page);
            cursor = next;
            if job.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        job.await.expect("join").expect("run");
        let (rest, next) = read_changes(&api, &cursor, 2).await;
        seen.extend(rest);
        cursor = next;
        let seen: BTreeSet<(String, String)> = seen.into_iter().collect();
        let missing: Vec<_> = expected.difference(&seen).collect();
        assert!(missing.is_empty(), "round {round}: missed {missing:?}; saw {seen:?}");
        expected.clear();
    }
}

/// The token route, the refresher and the sync, all at once on one
/// connection of a provider that rotates single-use refresh tokens and
/// revokes the family on reuse: no refresh token is ever sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_route_the_refresher_and_the_sync_never_spend_a_refresh_token_twice() {
    let logs = oauth_sync_tests::logs::captured();
    let mut sim = exact();
    sim.access_token_ttl = Duration::from_secs(6);
    let (fx, api) = start(sim, "min_refresh_interval_secs = 0\nrefresh_lead_secs = 3", "api-race").await;
    fx.sim().seed_projects(20);
    let id = fx.connect("acme-1").await;
    let api = Arc::new(api);

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = tokio::task::JoinSet::new();
    {
        let (service, done) = (fx.fixture.service.clone(), done.clone());
        background.spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                service.refresh_due(shared::refresh::DueRun::all(deadline(30), 4)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    {
        let (engine, done, id) = (fx.engine.clone(), done.clone(), id.clone());
        background.spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = engine.run_now(&id, "projects", deadline(60), &|_| {}).await;
            }
        });
    }
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (api, sim) = (api.clone(), fx.sim().clone());
        callers.spawn(async move {
            let mut tokens = Vec::new();
            // Until the provider rotated the token ten times (bounded).
            for _ in 0..400 {
                if sim.counters().refreshes >= 10 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                // Longer than half the token's life: often a refresh.
                let (status, token) = call(
                    &api,
                    "POST",
                    "/connections/acme-1/token",
                    "",
                    Some(json!({"min_valid_secs": 60})),
                )
                .await;
                assert_eq!(status, 200, "{token}");
                tokens.push(token["access_token"].as_str().unwrap_or_default().to_owned());
            }
            tokens
        });
    }
    let mut handed_out = Vec::new();
    while let Some(tokens) = callers.join_next().await {
        handed_out.extend(tokens.expect("caller"));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    while background.join_next().await.is_some() {}

    let counters = fx.sim().counters();
    assert!(counters.refreshes >= 10, "the race must rotate: {counters:?}");
    assert_eq!(counters.refresh_tokens_reused, 0, "a refresh token was sent twice");
    assert_eq!(counters.families_revoked, 0);
    let connection = fx.fixture.connection(&id).await;
    assert_eq!(connection.status, shared::connection::Status::Active);
    assert_eq!(
        connection.token_version - 1,
        counters.refreshes,
        "one version per rotation"
    );
    let logged = logs.text();
    for token in handed_out.iter().filter(|t| !t.is_empty()) {
        assert!(!logged.contains(token.as_str()), "a token handed out reached the log");
    }
}

/// Proxy calls and a sync of one Exact division draw on one budget: the
/// provider never answers 429, and a proxy call the budget cannot serve
/// soon gets our 429 with `Retry-After` instead of spending the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_calls_and_a_sync_of_one_division_never_exceed_its_limit() {
    use oauth_sync_tests::simulator::RateLimits;
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.page_size = 20;
    sim.data.sync_page_size = 20;
    sim.data.rate_limit = Some(RateLimits {
        minutely: 3,
        minute_window: Duration::from_secs(2),
        daily: 5_000,
        day_window: Duration::from_secs(86_400),
    });
    let (fx, api) = start(sim, "min_refresh_interval_secs = 0", "api-budget").await;
    fx.sim().seed_projects(100);
    let id = fx.connect("acme-1").await;
    let api = Arc::new(api);

    let sync = {
        let (engine, id) = (fx.engine.clone(), id.clone());
        tokio::spawn(async move { engine.run_now(&id, "projects", deadline(300), &|_| {}).await })
    };
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let api = api.clone();
        callers.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..6 {
                let response = api::handle(&api, request("GET", "/proxy/acme-1/project/Projects", "$top=1", None))
                    .await
                    .unwrap_or_else(|never| match never {});
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                answers.push((status, retry_after));
                if let Some(wait) = retry_after {
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
            }
            answers
        });
    }
    let mut answers = Vec::new();
    while let Some(part) = callers.join_next().await {
        answers.extend(part.expect("caller"));
    }
    let report = sync.await.expect("join").expect("sync run");
    assert!(
        matches!(report.end, shared::sync::engine::RunEnd::Finished),
        "{:?}",
        report.end
    );
    let counters = fx.sim().counters();
    assert_eq!(counters.data_429s, 0, "the provider's limit was exceeded: {counters:?}");
    assert!(answers.iter().any(|(status, _)| *status == 200), "{answers:?}");
    for (status, retry_after) in &answers {
        assert!(
            *status == 200 || (*status == 429 && retry_after.is_some()),
            "{answers:?}"
        );
    }
}
