//! For the tests that start a function without its link key: a login
//! fixture's configuration whose link key secret does not exist yet, and one
//! start of a real function binary handed one event.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::invoke::{function_env, invoke_once};
use crate::stack::{LoginFixture, unique_prefix};

/// The link key secret of a configuration, renamed to one that does not
/// exist yet.
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
    let secret = format!("{}link-key", unique_prefix(test));
    #[allow(clippy::expect_used)]
    let key = fx
        .fixture
        .aws
        .secrets
        .get_secret_value()
        .secret_id(&present)
        .send()
        .await
        .expect("the fixture's link key")
        .secret_string()
        .expect("text")
        .to_owned();
    let config_text = fx.config_text.replace(
        &format!("link_key_secret = \"{present}\""),
        &format!("link_key_secret = \"{secret}\""),
    );
    assert!(
        config_text.contains(&secret),
        "the configuration names the link key secret"
    );
    Absent {
        config_text,
        secret,
        key,
    }
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
