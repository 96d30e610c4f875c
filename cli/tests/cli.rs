//! The operator CLI as an operator runs it.

use std::process::Command;

fn oauth_sync(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_oauth-sync"))
        .args(args)
        .output()
        .expect("run oauth-sync");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn example() -> String {
    format!("{}/../examples/oauth-sync.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_example_configuration_is_valid() {
    let (ok, stdout, stderr) = oauth_sync(&["config", "check", &example()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(
        stdout.contains("https://login.microsoftonline.com/organizations/oauth2/v2.0/token"),
        "{stdout}"
    );

    let (ok, stdout, _) = oauth_sync(&["--json", "config", "check", &example()]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json["providers"]["exact"]["min_refresh_interval_secs"], 570);
    assert_eq!(json["syncs"]["exact_projects"]["mode"], "incremental");
}

#[test]
fn a_typo_fails_with_file_line_and_field() {
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace("token_url = \"https://auth", "tokn_url = \"https://auth");
    let path = std::env::temp_dir().join(format!("oauth-sync-typo-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let (ok, _, stderr) = oauth_sync(&["config", "check", path.to_str().expect("utf8 path")]);
    std::fs::remove_file(&path).ok();
    assert!(!ok);
    let expected = format!(
        "error: {}:34:1: providers.crm.tokn_url: unknown field `tokn_url`",
        path.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("unknown field `tokn_url`"), "{stderr}");
}

#[test]
fn presets_are_listed() {
    let (ok, stdout, _) = oauth_sync(&["presets"]);
    assert!(ok);
    for preset in [
        "exact_online",
        "microsoft",
        "google",
        "salesforce",
        "xero",
        "quickbooks",
        "hubspot",
        "zoho",
        "dropbox",
        "generic",
    ] {
        assert!(stdout.contains(preset), "{preset} missing from\n{stdout}");
    }

    // `--json` gives every value, in the shape of a config table.
    let (ok, stdout, _) = oauth_sync(&["--json", "presets"]);
    assert!(ok);
    let presets: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let exact = &presets["exact_online"];
    assert_eq!(exact["min_refresh_interval_secs"], 570);
    assert_eq!(exact["redirect_requires_https"], true);
    assert_eq!(exact["pagination"]["style"], "odata_v2");
    assert_eq!(exact["dead_token"][0]["equals"], "unauthorized_client");
    assert_eq!(presets["microsoft"]["offline_scope"], "offline_access");
    assert_eq!(presets.as_object().map(|m| m.len()), Some(10));
}

/// Against the local stack's Secrets Manager: the link the CLI prints verifies
/// with the same key, and a return URL off the allow-list is refused.
#[tokio::test]
async fn connect_link_signs_with_the_link_key_from_secrets_manager() {
    use shared::crypto::KeyRing;
    use shared::login::LinkKeys;

    let aws = oauth_sync_tests::stack::aws().await;
    let secret = format!("{}link-key", oauth_sync_tests::stack::unique_prefix("cli"));
    let key_json = KeyRing::generate_json("l1").expect("rng");
    aws.secrets
        .create_secret()
        .name(&secret)
        .secret_string(&key_json)
        .send()
        .await
        .expect("secret");
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace("[service]\n", &format!("[service]\nlink_key_secret = \"{secret}\"\n"));
    let path = std::env::temp_dir().join(format!("oauth-sync-link-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let config = path.to_str().expect("utf8 path");

    let (ok, stdout, stderr) = oauth_sync(&[
        "--json",
        "--config",
        config,
        "connect-link",
        "--provider",
        "exact",
        "--connection",
        "acme-1",
        "--shared",
        "--return-url",
        "https://app.example.com/integrations/done",
        "--expires",
        "2h",
    ]);
    assert!(ok, "{stderr}");
    let out: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let url = url::Url::parse(out["url"].as_str().expect("url")).expect("url");
    assert!(
        url.as_str()
            .starts_with("https://abc123.execute-api.eu-west-1.amazonaws.com/connect/exact?"),
        "{url}"
    );
    let keys = LinkKeys::from_json(&key_json).expect("keys");
    let query = url.query_pairs().into_owned().collect();
    let allow = [url::Url::parse("https://app.example.com/integrations").expect("url")];
    let now = shared::connection::now_ms() / 1000;
    let claims = keys
        .verify("exact", &query, now, &allow)
        .expect("the printed link verifies");
    assert_eq!((claims.connection.as_str(), claims.kind.as_str()), ("acme-1", "shared"));
    assert!((now + 7_100..=now + 7_300).contains(&claims.expires_at), "two hours");

    let (ok, _, stderr) = oauth_sync(&[
        "--config",
        config,
        "connect-link",
        "--provider",
        "exact",
        "--connection",
        "acme-1",
        "--return-url",
        "https://evil.example/",
    ]);
    assert!(
        !ok && stderr.contains("not on service.return_url_allow_list"),
        "{stderr}"
    );
    let (ok, _, stderr) = oauth_sync(&[
        "--config",
        config,
        "connect-link",
        "--provider",
        "nope",
        "--connection",
        "a",
    ]);
    assert!(!ok && stderr.contains("unknown provider `nope`"), "{stderr}");
    std::fs::remove_file(&path).ok();
}

fn oauth_sync_with(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_oauth-sync"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// list, show, refresh and revoke against the local stack and the simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_show_refresh_and_revoke_connections() {
    use oauth_sync_tests::simulator::SimConfig;
    use oauth_sync_tests::stack::RefreshFixture;
    use shared::config::PresetName;

    let fixture = RefreshFixture::start(
        SimConfig::for_preset(PresetName::Google),
        shared::refresh::RefreshSettings::default(),
        "",
        "cli-ops",
    )
    .await;
    let id = fixture.connect("acme-google").await;
    let path = std::env::temp_dir().join(format!("oauth-sync-ops-{}.toml", std::process::id()));
    std::fs::write(&path, &fixture.config_text).expect("write");
    let config = path.to_str().expect("utf8 path");
    let env = [("OAUTH_SYNC_CONNECTIONS_TABLE", fixture.connections_table())];

    let (ok, stdout, stderr) = oauth_sync_with(&["--config", config, "list"], &env);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("acme-google") && stdout.contains("active"), "{stdout}");
    let (ok, stdout, _) = oauth_sync_with(&["--config", config, "--json", "show", "acme-google"], &env);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(shown[0]["token_version"], 1);
    assert!(
        !stdout.contains("at-") && !stdout.contains("rt-"),
        "no token values: {stdout}"
    );

    let (ok, stdout, stderr) = oauth_sync_with(&["--config", config, "--json", "refresh", "acme-google"], &env);
    assert!(ok, "{stderr}");
    let refreshed: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        (refreshed["token_version"].as_u64(), refreshed["refreshed"].as_bool()),
        (Some(2), Some(true))
    );

    let (ok, stdout, stderr) = oauth_sync_with(&["--config", config, "revoke", "acme-google"], &env);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("revoked at the provider"), "{stdout}");
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.status, shared::connection::Status::Revoked);
    assert!(
        connection.access_token.is_none() && connection.refresh_token.is_none(),
        "tokens erased"
    );
    assert_eq!(fixture.sim().counters().families_revoked, 1, "RFC 7009 at the provider");

    let (ok, _, stderr) = oauth_sync_with(&["--config", config, "refresh", "acme-google"], &env);
    assert!(!ok && stderr.contains("revoked"), "{stderr}");
    let (ok, _, stderr) = oauth_sync_with(&["--config", config, "show", "nobody"], &env);
    assert!(!ok && stderr.contains("does not exist"), "{stderr}");
    let (ok, _, stderr) = oauth_sync_with(&["--config", config, "list"], &[("OAUTH_SYNC_CONNECTIONS_TABLE", "")]);
    assert!(!ok && stderr.contains("OAUTH_SYNC_CONNECTIONS_TABLE"), "{stderr}");
    std::fs::remove_file(&path).ok();
}

/// doctor names what is wrong and how to fix it, against the stack and the simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_fix() {
    use oauth_sync_tests::simulator::SimConfig;
    use oauth_sync_tests::stack::{LoginFixture, unique_prefix};
    use shared::config::PresetName;

    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "doctor").await;
    let aws = &login.fixture.aws;
    let bad = format!("{}bad-credentials", unique_prefix("doctor"));
    let wrong = r#"{"client_id": "sim-client", "client_secret": "wrong"}"#;
    aws.secrets
        .create_secret()
        .name(&bad)
        .secret_string(wrong)
        .send()
        .await
        .expect("secret");
    let good = &login.config.providers["sim"].credentials_secret;
    let base = &login.fixture.oauth.sim.base_url;
    let endpoints = format!("authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\n");
    let text = login.fixture.config_text.replace(
        "[service]\n",
        &format!(
            "[service]\nlink_key_secret = \"{}\"\ncallback_url = \"https://auth.example.com/prod/callback\"\n",
            login.config.service.link_key_secret
        ),
    ) + &format!(
        "\n[providers.badsecret]\npreset = \"generic\"\ncredentials_secret = \"{bad}\"\n{endpoints}\
         \n[providers.noscope]\npreset = \"microsoft\"\ncredentials_secret = \"{good}\"\nscopes = [\"User.Read\"]\n{endpoints}\
         \n[providers.nosecret]\npreset = \"generic\"\ncredentials_secret = \"{bad}-missing\"\n{endpoints}"
    );
    let path = std::env::temp_dir().join(format!("oauth-sync-doctor-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let config = path.to_str().expect("utf8 path");

    let (ok, stdout, stderr) = oauth_sync_with(&["--config", config, "doctor", "sim"], &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("accepted") && stdout.contains("valid key ring"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = oauth_sync_with(&["--config", config, "--json", "doctor"], &[]);
    assert!(!ok && stderr.contains("check(s) failed"), "{stderr}");
    let findings: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    let verdict = |subject: &str, check: &str| {
        findings
            .iter()
            .find(|f| f["subject"] == subject && f["check"] == check)
            .map(|f| {
                (
                    f["verdict"].as_str().unwrap_or_default().to_owned(),
                    f["detail"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .unwrap_or_else(|| panic!("no {subject}/{check} in {stdout}"))
    };
    let (v, detail) = verdict("badsecret", "client id and secret");
    assert!(
        v == "fail" && detail.contains("rejected the client id or secret"),
        "{detail}"
    );
    let (v, detail) = verdict("noscope", "refresh token scope");
    assert!(v == "fail" && detail.contains("offline_access"), "{detail}");
    let (v, detail) = verdict("nosecret", "client credentials secret");
    assert!(v == "fail" && detail.contains("does not exist"), "{detail}");
    assert_eq!(verdict("sim", "client id and secret").0, "ok");
    std::fs::remove_file(&path).ok();
}
