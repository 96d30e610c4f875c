//! The token key ring is read beside the first work, not at start: the real
//! binary, started the way Lambda starts it against the local stack, lists
//! connections while the ring's secret does not exist, a token is then a 503
//! naming the secret (and no token), and is given once the secret exists;
//! in one process, a failed read is tried again by a call a second later
//! (and not by the calls within that second).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth_sync_tests::link_keys::{api_request, start_and_answer, without_token_keys};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, create_secret};
use serde_json::Value;
use shared::config::{Config, PresetName};
use shared::refresh::{RefreshError, RefreshSettings, TokenService};
use shared::reload::{KEY_RING_RETRY, KeyRingError};

/// One start of the real binary, handed `event`: its answer's status and body.
async fn start_and_call(fx: &LoginFixture, config: &Path, event: Value) -> (u64, String) {
    start_and_answer(fx, Path::new(env!("CARGO_BIN_EXE_api")), "api", config, event).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_starts_without_the_token_key_ring_and_reads_it_for_a_token() {
    let fx = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "api-lazy-ring-bin").await;
    let id = fx.fixture.connect("lazy-ring-1").await;
    let planted = fx
        .fixture
        .service
        .access_token(&id, Instant::now() + Duration::from_secs(30))
        .await
        .expect("the fixture's token");
    let absent = without_token_keys(&fx, "api-lazy-ring-bin").await;
    let config = std::env::temp_dir().join(format!("{}.toml", absent.secret));
    std::fs::write(&config, &absent.config_text).expect("config file");
    let token_route = format!("/connections/{id}/token");

    let (status, page) = start_and_call(&fx, &config, api_request("GET", "/connections", None)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(id.as_str()), "{page}");

    let (status, error) = start_and_call(&fx, &config, api_request("POST", &token_route, None)).await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error.contains(&absent.secret) && error.contains("does not exist"),
        "{error}"
    );
    assert!(!error.contains(planted.access_token.secret()), "{error}");

    create_secret(&fx.fixture.aws, &absent.secret, absent.key).await;
    let (status, answer) = start_and_call(&fx, &config, api_request("POST", &token_route, None)).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(answer["access_token"].as_str(), Some(planted.access_token.secret()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_of_the_token_key_ring_is_tried_again_by_the_next_call() {
    let fx = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "api-lazy-ring-lib").await;
    let id = fx.fixture.connect("lazy-ring-2").await;
    let absent = without_token_keys(&fx, "api-lazy-ring-lib").await;
    let config = Arc::new(Config::parse(&absent.config_text, "lazy.toml").unwrap_or_else(|e| panic!("{e}")));
    let service = TokenService::load(
        config,
        fx.fixture.service.store().clone(),
        shared::secrets::SecretStore::new(fx.fixture.aws.secrets.clone()),
        RefreshSettings::default(),
    )
    .await
    .expect("a service starts without its key ring");
    let deadline = || Instant::now() + Duration::from_secs(30);

    let error = service.access_token(&id, deadline()).await.expect_err("no ring yet");
    assert!(
        matches!(error, RefreshError::KeyRing(_)) && error.to_string().contains(&absent.secret),
        "{error}"
    );
    create_secret(&fx.fixture.aws, &absent.secret, absent.key).await;
    // Within a second of the failure, no second read: the same error, at once.
    let again = service
        .access_token(&id, deadline())
        .await
        .expect_err("not read again yet");
    assert!(
        matches!(again, RefreshError::KeyRing(KeyRingError::Unavailable { .. })),
        "{again}"
    );
    tokio::time::sleep(KEY_RING_RETRY).await;
    let fresh = service
        .access_token(&id, deadline())
        .await
        .expect("the same service read the ring again");
    assert!(!fresh.access_token.secret().is_empty());
}
