//! Start-up with a provider whose endpoints come from OpenID Connect
//! discovery: the function fetches the document once, before its first
//! invocation, and a document it cannot use stops it there, with the
//! document's URL in the error.

use std::process::Stdio;

use oauth_sync_tests::simulator::{DiscoveryDoc, DiscoveryFault, SimConfig, Simulator};
use shared::config::PresetName;

/// Runs the function binary with this configuration file and no Lambda
/// runtime API: it either fails at start-up or gets as far as asking the
/// runtime API for an event (which is not there).
async fn start_with(config: &str, name: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("oauth-sync-startup-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, config).expect("write config");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-refresher"))
        .env("OAUTH_SYNC_CONFIG", &path)
        .env_remove("OAUTH_SYNC_CONFIG_SECRET")
        .env("OAUTH_SYNC_CONNECTIONS_TABLE", "connections")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the function binary runs");
    let _ = std::fs::remove_file(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn generic_at(issuer: &str) -> String {
    format!("[providers.oidc]\npreset = \"generic\"\ncredentials_secret = \"oauth-sync/oidc\"\nissuer = \"{issuer}\"\n")
}

#[tokio::test]
async fn a_malformed_or_unreachable_discovery_document_stops_the_function_at_start_up_naming_its_url() {
    let sim = Simulator::start(
        SimConfig {
            discovery: DiscoveryDoc {
                fault: Some(DiscoveryFault::NotJson),
                ..DiscoveryDoc::default()
            },
            ..SimConfig::for_preset(PresetName::Generic)
        },
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("simulator");
    let (ok, text) = start_with(&generic_at(&sim.base_url), "malformed").await;
    assert!(!ok, "{text}");
    assert!(text.contains("start-up failed"), "{text}");
    assert!(
        text.contains(&format!(
            "the OpenID Connect discovery document {}/.well-known/openid-configuration is malformed",
            sim.base_url
        )),
        "{text}"
    );
    assert_eq!(sim.sim.counters().discovery_requests, 1, "fetched once");
    assert_eq!(sim.sim.counters().refresh_requests, 0);

    let (ok, text) = start_with(&generic_at("http://127.0.0.1:9"), "unreachable").await;
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "cannot fetch the OpenID Connect discovery document http://127.0.0.1:9/.well-known/openid-configuration"
        ),
        "{text}"
    );
}
