//! `config check` and `doctor` with a generic provider that takes its
//! endpoints from OpenID Connect discovery (the simulator's document).

mod common;

use common::oauth_sync_with;
use oauth_sync_tests::simulator::{DiscoveryDoc, DiscoveryFault, SimConfig, Simulator, SimulatorHandle};
use shared::config::PresetName;

async fn simulator(discovery: DiscoveryDoc) -> SimulatorHandle {
    let config = SimConfig {
        discovery,
        ..SimConfig::for_preset(PresetName::Generic)
    };
    Simulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator")
}

/// A configuration file whose provider `oidc` names only its issuer (line 6).
fn config_file(name: &str, issuer: &str, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "[service]\ncallback_url = \"https://abc.execute-api.eu-west-1.amazonaws.com/callback\"\n\n\
         [providers.oidc]\npreset = \"generic\"\nissuer = \"{issuer}\"\ncredentials_secret = \"oauth-sync/oidc\"\n{extra}"
    );
    let path = std::env::temp_dir().join(format!("oauth-sync-discovery-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    path
}

/// The CLI, off the runtime's threads (the simulator answers on them).
async fn run(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // AWS calls (doctor's secrets) go nowhere and fail at once.
        oauth_sync_with(
            &args,
            &[
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
                ("AWS_MAX_ATTEMPTS", "1"),
                ("OAUTH_SYNC_CONNECTIONS_TABLE", ""),
            ],
        )
    })
    .await
    .expect("the CLI ran")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn config_check_shows_the_discovered_endpoints_and_doctor_what_the_document_says() {
    let sim = simulator(DiscoveryDoc::default()).await;
    let path = config_file("ok", &sim.base_url, "");
    let file = path.to_str().expect("utf8 path");

    let (ok, stdout, stderr) = run(args(&["config", "check", file])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("{}/token", sim.base_url)), "{stdout}");
    let (ok, stdout, _) = run(args(&["--json", "config", "check", file])).await;
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        json["providers"]["oidc"]["authorize_url"],
        format!("{}/authorize", sim.base_url)
    );

    let (_, stdout, stderr) = run(args(&["--json", "--config", file, "doctor", "oidc"])).await;
    std::fs::remove_file(&path).ok();
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    let of = |check: &str| {
        findings
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no `{check}` in {stdout}"))
    };
    assert_eq!(of("discovery")["verdict"], "ok");
    assert_eq!(of("client authentication")["verdict"], "ok");
    assert_eq!(of("PKCE")["verdict"], "ok");
    let scope = of("refresh token scope");
    assert_eq!(scope["verdict"], "warn");
    assert!(
        scope["detail"]
            .as_str()
            .is_some_and(|d| d.contains("set offline_scope = \"offline_access\"")),
        "{scope}"
    );
}

#[tokio::test]
async fn config_check_fails_on_a_malformed_or_unreachable_document_naming_its_url() {
    let sim = simulator(DiscoveryDoc {
        fault: Some(DiscoveryFault::NotJson),
        ..DiscoveryDoc::default()
    })
    .await;
    for (name, issuer, says) in [
        (
            "malformed",
            sim.base_url.clone(),
            format!(
                "the OpenID Connect discovery document {}/.well-known/openid-configuration is malformed",
                sim.base_url
            ),
        ),
        (
            "unreachable",
            "http://127.0.0.1:9".to_owned(),
            "cannot fetch the OpenID Connect discovery document http://127.0.0.1:9/.well-known/openid-configuration"
                .to_owned(),
        ),
    ] {
        let path = config_file(name, &issuer, "");
        let (ok, _, stderr) = run(args(&["config", "check", path.to_str().expect("utf8 path")])).await;
        std::fs::remove_file(&path).ok();
        assert!(!ok, "{name}");
        assert!(
            stderr.contains(&format!("error: {}:6:1: providers.oidc.issuer: {says}", path.display())),
            "{name}: {stderr}"
        );
    }
}
