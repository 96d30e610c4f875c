//! The link key is read by the first request that needs it, not at start:
//! the real binary, started the way Lambda starts it against the local
//! stack, serves `/callback` while the link key's secret does not exist, a
//! connect link's page is then a clear 503 naming the secret, and the page
//! works once the secret exists; in one process, a failed read is tried
//! again by the next request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use lambda_http::Body;
use oauth_sync_tests::link_keys::{start_and_answer, without_link_key};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, create_secret};
use serde_json::{Value, json};
use shared::config::{Config, PresetName};
use shared::login::flow::{ATTEMPT_TTL, LinkKeySource, LoginService};

/// An HTTP API (payload 2.0) GET of `path?query`.
fn get(path: &str, query: &BTreeMap<String, String>) -> Value {
    let raw: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let (route, provider) = path.rsplit_once('/').unwrap_or(("", ""));
    let route = format!("GET {}/{{provider}}", route);
    json!({
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": raw,
        "headers": {"host": "auth.example.com", "accept": "text/html", "sec-fetch-site": "none"},
        "queryStringParameters": query, "pathParameters": {"provider": provider}, "cookies": [],
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": "auth.example.com", "domainPrefix": "auth",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.10", "userAgent": "test"},
            "requestId": "lazy-link-key", "routeKey": route, "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 1_796_083_200_000_i64
        },
        "isBase64Encoded": false
    })
}

/// One start of the real binary, handed `event`: the status and body of its answer.
async fn start_and_get(fx: &LoginFixture, config: &Path, event: Value) -> (u64, String) {
    let binary = Path::new(env!("CARGO_BIN_EXE_oauth-callback"));
    start_and_answer(fx, binary, "oauth-callback", config, event).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_starts_without_the_link_key_and_reads_it_when_a_link_needs_it() {
    let fx = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "lazy-key-bin").await;
    let absent = without_link_key(&fx, "lazy-key-bin").await;
    let config = std::env::temp_dir().join(format!("{}.toml", absent.secret));
    std::fs::write(&config, &absent.config_text).expect("config file");

    // No link key needed: an answer for a login this service never started.
    let callback = BTreeMap::from([("state".to_owned(), "x".repeat(43)), ("code".to_owned(), "c".into())]);
    let (status, page) = start_and_get(&fx, &config, get("/callback/sim", &callback)).await;
    assert_eq!(status, 400, "{page}");

    // A link's page needs the key: a clear error naming the secret.
    let link = fx.link("lazy-1");
    let (status, page) = start_and_get(&fx, &config, get("/connect/sim", &link)).await;
    assert_eq!(status, 503, "{page}");
    assert!(
        page.contains(&absent.secret) && page.contains("does not exist"),
        "{page}"
    );

    create_secret(&fx.fixture.aws, &absent.secret, absent.key).await;
    let (status, page) = start_and_get(&fx, &config, get("/connect/sim", &link)).await;
    assert_eq!(status, 200, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_of_the_link_key_is_tried_again_by_the_next_request() {
    let fx = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "lazy-key-lib").await;
    let absent = without_link_key(&fx, "lazy-key-lib").await;
    let config = Arc::new(Config::parse(&absent.config_text, "lazy.toml").unwrap_or_else(|e| panic!("{e}")));
    let secrets = shared::secrets::SecretStore::new(fx.fixture.aws.secrets.clone());
    let attempts = shared::login::attempts::AttemptStore::new(
        fx.fixture.aws.dynamodb.clone(),
        &fx.fixture.tables["LoginAttemptsTable"],
    );
    let links = LinkKeySource::lazy(&config, &secrets);
    let login = LoginService::new(config, fx.fixture.service.clone(), attempts, links, ATTEMPT_TTL);
    let link = fx.link("lazy-2");
    let page = |event: Value| {
        let request = lambda_http::request::from_str(&event.to_string()).expect("event");
        let login = &login;
        async move {
            let response = oauth_callback::handle(login, request)
                .await
                .unwrap_or_else(|never| match never {});
            let body = match response.body() {
                Body::Text(text) => text.clone(),
                _ => String::new(),
            };
            (response.status().as_u16(), body)
        }
    };

    let (status, body) = page(get("/connect/sim", &link)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&absent.secret), "{body}");
    create_secret(&fx.fixture.aws, &absent.secret, absent.key).await;
    let (status, body) = page(get("/connect/sim", &link)).await;
    assert_eq!(status, 200, "the same service read the key again: {body}");
}
