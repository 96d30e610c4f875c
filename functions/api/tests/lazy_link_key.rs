//! The link key is read by the first `POST /links`, not at start: the real
//! binary, started the way Lambda starts it against the local stack, lists
//! connections while the link key's secret does not exist, `POST /links` is
//! then a 500 naming the secret, and works once the secret exists; in one
//! process, a failed read is tried again by the next call.

use std::path::Path;
use std::sync::Arc;

use oauth_sync_tests::link_keys::{api_request, start_and_answer, without_link_key};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, create_secret};
use serde_json::{Value, json};
use shared::api::{ApiService, LinkBody};
use shared::config::{Config, PresetName};
use shared::login::flow::LinkKeySource;

/// One start of the real binary, handed `event`: its answer's status and JSON body.
async fn start_and_call(fx: &LoginFixture, config: &Path, event: Value) -> (u64, Value) {
    let binary = Path::new(env!("CARGO_BIN_EXE_api"));
    let (status, body) = start_and_answer(fx, binary, "api", config, event).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn link_body() -> Value {
    json!({"provider": "sim", "connection": "lazy-1"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_starts_without_the_link_key_and_reads_it_for_a_link() {
    let fx = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "api-lazy-bin").await;
    let absent = without_link_key(&fx, "api-lazy-bin").await;
    let config = std::env::temp_dir().join(format!("{}.toml", absent.secret));
    std::fs::write(&config, &absent.config_text).expect("config file");

    let (status, page) = start_and_call(&fx, &config, api_request("GET", "/connections", None)).await;
    assert_eq!(status, 200, "{page}");

    let (status, error) = start_and_call(&fx, &config, api_request("POST", "/links", Some(link_body()))).await;
    assert_eq!((status, error["error"].as_str()), (500, Some("internal")), "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&absent.secret) && message.contains("does not exist"),
        "{error}"
    );

    create_secret(&fx.fixture.aws, &absent.secret, absent.key).await;
    let (status, link) = start_and_call(&fx, &config, api_request("POST", "/links", Some(link_body()))).await;
    assert_eq!(status, 201, "{link}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_of_the_link_key_is_tried_again_by_the_next_call() {
    let fx = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "api-lazy-lib").await;
    let absent = without_link_key(&fx, "api-lazy-lib").await;
    let config = Arc::new(Config::parse(&absent.config_text, "lazy.toml").unwrap_or_else(|e| panic!("{e}")));
    let secrets = shared::secrets::SecretStore::new(fx.fixture.aws.secrets.clone());
    let tables = &fx.fixture.tables;
    let dynamodb = fx.fixture.aws.dynamodb.clone();
    let api = ApiService::new(
        config.clone(),
        fx.fixture.service.clone(),
        shared::sync::jobs::JobStore::new(dynamodb.clone(), &tables["SyncStateTable"], &tables["SyncRunsTable"]),
        shared::sync::records::RecordStore::new(dynamodb, &tables["RecordsTable"]),
        LinkKeySource::lazy(&config, &secrets),
    )
    .expect("api");
    let body = || LinkBody {
        provider: "sim".to_owned(),
        connection: Some("lazy-2".to_owned()),
        ..Default::default()
    };

    let error = api.create_link(body()).await.expect_err("no link key yet");
    assert!(
        error.status() == 500 && error.to_string().contains(&absent.secret),
        "{error}"
    );
    create_secret(&fx.fixture.aws, &absent.secret, absent.key).await;
    let link = api
        .create_link(body())
        .await
        .expect("the same service read the key again");
    assert!(link.url.contains("sig="), "{}", link.url);
}
