//! For the tests that start a function without its link key or its token
//! key ring: a login fixture's configuration whose secret does not exist
//! yet, and one start of a real function binary handed one event.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::invoke::{function_env, invoke_once};
use crate::stack::{LoginFixture, unique_prefix};

/// A secret of a configuration (the link key or the token key ring),
/// renamed to one that does not exist yet.
#[derive(Debug)]
pub struct Absent {
    /// The fixture's configuration naming the absent secret.
    pub config_text: String,
    /// The absent secret's name.
    pub secret: String,
    /// What it must hold for the fixture's links to verify (the fixture's key).
    pub key: String,
}

/// `fx`'s configuration with its link key secret renamed to one that does not exist yet.
pub async fn without_link_key(fx: &LoginFixture, test: &str) -> Absent {
    let present = fx.config.service.link_key_secret.clone();
    without(
        fx,
        "link_key_secret",
        &present,
        &format!("{}link-key", unique_prefix(test)),
    )
    .await
}

/// `fx`'s configuration with its token key ring's secret renamed to one that
/// does not exist yet.
pub async fn without_token_keys(fx: &LoginFixture, test: &str) -> Absent {
    let present = fx.config.service.token_key_secret.clone();
    without(
        fx,
        "token_key_secret",
        &present,
        &format!("{}token-keys", unique_prefix(test)),
    )
    .await
}

/// `fx`'s configuration with `setting` (naming secret `present`) naming
/// `secret` instead.
async fn without(fx: &LoginFixture, setting: &str, present: &str, secret: &str) -> Absent {
    #[allow(clippy::expect_used)]
    let key = fx
        .fixture
        .aws
        .secrets
        .get_secret_value()
        .secret_id(present)
        .send()
        .await
        .expect("the fixture's secret")
        .secret_string()
        .expect("text")
        .to_owned();
    let config_text = fx.config_text.replace(
        &format!("{setting} = \"{present}\""),
        &format!("{setting} = \"{secret}\""),
    );
    assert!(config_text.contains(secret), "the configuration names {setting}");
    Absent {
        config_text,
        secret: secret.to_owned(),
        key,
    }
}

/// An HTTP API (payload 2.0) request to the `api` function's routes, as API
/// Gateway passes it on, with a JSON `body` if given.
pub fn api_request(method: &str, path: &str, body: Option<Value>) -> Value {
    let mut event = serde_json::json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "api.example.com", "accept": "application/json"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": "api.example.com", "domainPrefix": "api",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.10", "userAgent": "test"},
            "requestId": "lazy-secret", "routeKey": "$default", "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 1_796_083_200_000_i64
        },
        "isBase64Encoded": false
    });
    if let Some(body) = body {
        event["headers"]["content-type"] = "application/json".into();
        event["body"] = body.to_string().into();
    }
    event
}

/// One start of `binary` (function `function`) on `fx`'s tables with the
/// configuration file `config`, handed `event`: its answer's status and
/// body. Panics with the function's log when it does not answer.
pub async fn start_and_answer(
    fx: &LoginFixture,
    binary: &Path,
    function: &str,
    config: &Path,
    event: Value,
) -> (u64, String) {
    let env = function_env(&fx.fixture, config, function, "info");
    let log = config.with_extension(format!("{}.log", log_suffix()));
    let invocation = invoke_once(binary, &env, event, &log, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    #[allow(clippy::expect_used)]
    let answer: Value = serde_json::from_slice(&invocation.body).expect("the function's answer");
    let body = answer["body"].as_str().unwrap_or_default().to_owned();
    (answer["statusCode"].as_u64().unwrap_or(0), body)
}

/// A suffix that keeps each start's log apart.
fn log_suffix() -> String {
    #[allow(clippy::expect_used)]
    let token = shared::crypto::random_token().expect("rng");
    token[..8].replace(['-', '_'], "x")
}
