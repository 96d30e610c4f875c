//! The operator CLI as an operator runs it.

mod common;

use common::oauth_sync_with;

fn oauth_sync(args: &[&str]) -> (bool, String, String) {
    oauth_sync_with(args, &[])
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

/// A table cell of 65,536 characters or more made `{:<w$}` panic
/// ("Formatting argument out of range"): cells are cut, nothing panics.
#[test]
fn a_huge_value_is_cut_in_the_table_not_a_panic() {
    let long = "s".repeat(70_000);
    let text = std::fs::read_to_string(example()).expect("example").replace(
        "credentials_secret = \"oauth-sync/exact\"",
        &format!("credentials_secret = \"{long}\""),
    );
    let path = std::env::temp_dir().join(format!("oauth-sync-huge-{}.toml", std::process::id()));
    std::fs::write(&path, &text).expect("write");
    let (ok, stdout, stderr) = oauth_sync(&["config", "check", path.to_str().expect("utf8 path")]);
    let (json_ok, json, _) = oauth_sync(&["--json", "config", "check", path.to_str().expect("utf8 path")]);
    std::fs::remove_file(&path).ok();
    assert!(ok && !stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains('…') && !stdout.contains(&long), "the cell is cut");
    assert!(json_ok && json.contains(&long), "--json keeps the whole value");
}

#[test]
fn a_typo_fails_with_file_line_and_field() {
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace("token_url = \"https://auth", "tokn_url = \"https://auth");
    let path = std::env::temp_dir().join(format!("oauth-sync-typo-{}.toml", std::process::id()));
    std::fs::write(&path, &text).expect("write");
    let (ok, _, stderr) = oauth_sync(&["config", "check", path.to_str().expect("utf8 path")]);
    std::fs::remove_file(&path).ok();
    assert!(!ok);
    let line = 1 + text.lines().position(|l| l.contains("tokn_url")).expect("the typo");
    let expected = format!(
        "error: {}:{line}:1: providers.crm.tokn_url: unknown field `tokn_url`",
        path.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("unknown field `tokn_url`"), "{stderr}");
}

/// Every mistake of a file, one `error:` line each in file order, and a
/// failing exit; `config push` of that file writes nothing.
#[test]
fn config_check_reports_every_mistake_and_push_writes_nothing() {
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace("token_url = \"https://auth", "tokn_url = \"https://auth")
        .replace("provider = \"exact\"", "provider = \"exakt\"")
        .replace("interval_secs = 3600", "interval_secs = 10");
    let path = std::env::temp_dir().join(format!("oauth-sync-mistakes-{}.toml", std::process::id()));
    std::fs::write(&path, &text).expect("write");
    let file = path.to_str().expect("utf8 path");
    let (ok, stdout, stderr) = oauth_sync(&["config", "check", file]);
    let (pushed, _, push_stderr) = oauth_sync_with(
        &["config", "push", file],
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9"), ("AWS_REGION", "eu-west-1")],
    );
    std::fs::remove_file(&path).ok();
    assert!(!ok && !stdout.contains("valid"), "{stdout}");
    let line = |needle: &str| 1 + text.lines().position(|l| l.contains(needle)).expect(needle);
    let lines: Vec<&str> = stderr.lines().collect();
    let wanted = [
        format!(
            "{file}:{}:1: providers.crm.tokn_url: unknown field `tokn_url`",
            line("tokn_url")
        ),
        format!(
            "{file}:{}:1: syncs.exact_projects.provider: unknown provider `exakt`",
            line("exakt")
        ),
        format!(
            "{file}:{}:1: syncs.graph_contacts.interval_secs: ",
            line("interval_secs = 10")
        ),
    ];
    assert_eq!(lines.len(), wanted.len(), "{stderr}");
    for (got, wanted) in lines.iter().zip(&wanted) {
        assert!(got.starts_with(&format!("error: {wanted}")), "{got}\nwanted {wanted}");
    }
    assert!(!pushed, "{push_stderr}");
    assert!(push_stderr.starts_with(&stderr), "the same errors:\n{push_stderr}");
    assert!(push_stderr.ends_with("error: nothing was written\n"), "{push_stderr}");
}

/// The errors docs/configuration.md shows are what `config check` prints
/// for its copy of the example with six mistakes.
#[test]
fn the_documented_config_check_output_is_real() {
    let docs = std::fs::read_to_string(format!("{}/../docs/configuration.md", env!("CARGO_MANIFEST_DIR")))
        .expect("docs/configuration.md");
    let section = &docs[docs.find("## The configuration file").expect("the section")..];
    let block = &section[section
        .find("$ oauth-sync config check oauth-sync.toml\n")
        .expect("the example")..];
    let documented: Vec<&str> = block.lines().skip(1).take_while(|l| l.starts_with("error: ")).collect();
    let mut text = std::fs::read_to_string(example()).expect("example");
    for (from, to) in [
        (
            "return_url_allow_list = [\"https://app.example.com/integrations\"]",
            "return_url_allow_list = [\"https://app:s3cret@app.example.com/integrations\"]",
        ),
        ("preset = \"exact_online\"", "preset = \"exakt_online\""),
        (
            "params = { tenant = \"organizations\" }",
            "params = { tennant = \"organizations\" }",
        ),
        (
            "token_url = \"https://auth.crm.example/oauth/token\"",
            "token_url = \"htp:/auth.crm.example/oauth/token\"",
        ),
        ("interval_secs = 900", "interval_secs = -900"),
        ("interval_secs = 3600", "interval_secs = 99999999999999999999"),
    ] {
        assert_eq!(text.matches(from).count(), 1, "{from}");
        text = text.replace(from, to);
    }
    let dir = std::env::temp_dir().join(format!("oauth-sync-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("oauth-sync.toml"), &text).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-sync"))
        .args(["config", "check", "oauth-sync.toml"])
        .current_dir(&dir)
        .output()
        .expect("run oauth-sync");
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().collect::<Vec<_>>(), documented);
    assert!(!stderr.contains("s3cret"), "{stderr}");
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

    // A login that brought no refresh token is active, and says it cannot be refreshed.
    fixture.sim().reconfigure(|c| c.issue_refresh_token = false);
    fixture.connect("no-offline").await;
    let (ok, stdout, stderr) = oauth_sync_with(&["--config", config, "list"], &env);
    assert!(ok, "{stderr}");
    let row = stdout.lines().find(|l| l.contains("no-offline")).expect("listed");
    assert!(row.contains("active, no refresh token — stops working at "), "{row}");
    assert!(row.contains(" UTC, in "), "{row}");
    let (ok, stdout, _) = oauth_sync_with(&["--config", config, "show", "no-offline"], &env);
    assert!(ok && stdout.contains("no refresh token"), "{stdout}");
    let (_, stdout, stderr) = oauth_sync_with(&["--config", config, "--json", "doctor"], &env);
    let findings: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    let named: Vec<_> = findings
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["check"] == "refresh token")
        .map(|f| f["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        named,
        ["connection no-offline"],
        "doctor names each connection that cannot be refreshed"
    );
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
    // One redirect URI per provider, each to be registered at its provider.
    for provider in ["sim", "noscope"] {
        let (v, detail) = verdict(provider, "redirect URI");
        let expected = format!("https://auth.example.com/prod/callback/{provider} (register exactly this");
        assert!(v == "ok" && detail.starts_with(&expected), "{detail}");
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn sync_and_records_commands_are_documented() {
    let (ok, stdout, _) = oauth_sync(&["sync", "--help"]);
    assert!(ok);
    assert!(stdout.contains("run") && stdout.contains("status"), "{stdout}");
    let (ok, stdout, _) = oauth_sync(&["sync", "run", "--help"]);
    assert!(ok);
    assert!(
        stdout.contains("--timeout") && stdout.contains("[default: 15m]"),
        "{stdout}"
    );
    let (ok, stdout, _) = oauth_sync(&["records", "--help"]);
    assert!(ok);
    assert!(
        stdout.contains("--limit") && stdout.contains("--json") && stdout.contains("[default: 20]"),
        "{stdout}"
    );

    // Mistakes are named before anything touches AWS.
    let (ok, _, stderr) = oauth_sync(&["sync", "run", "a", "b", "--timeout", "10s"]);
    assert!(!ok && stderr.contains("--timeout: at least"), "{stderr}");
    let (ok, _, stderr) = oauth_sync(&["sync", "run", "a", "b", "--timeout", "soon"]);
    assert!(!ok && stderr.contains("is not a duration"), "{stderr}");
    let (ok, _, stderr) = oauth_sync(&["sync", "run", "a", "b", "--lease", "30s"]);
    assert!(
        !ok && stderr.contains("--lease: more than 40s (no write starts in its last 20s)"),
        "{stderr}"
    );
    let (ok, _, stderr) = oauth_sync(&["--config", &example(), "records", "acme", "nope"]);
    assert!(
        !ok && stderr.contains("unknown sync `nope` (configured: exact_projects"),
        "{stderr}"
    );
}

#[test]
fn config_check_shows_each_sync_and_its_mode() {
    let text = "[providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\n\n\
                [syncs.x]\nprovider = \"exact\"\nendpoint = \"/project/Projects\"\nmode = \"full\"\n";
    let path = std::env::temp_dir().join(format!("oauth-sync-syncs-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let file = path.to_str().expect("utf8 path");
    let (ok, stdout, stderr) = oauth_sync(&["config", "check", file]);
    assert!(ok, "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("x "))
        .unwrap_or_else(|| panic!("no sync line in\n{stdout}"));
    assert!(line.contains("/project/Projects") && line.contains("full"), "{line}");

    // `--json` gives the whole resolved sync, the preset's parts included.
    let (ok, stdout, _) = oauth_sync(&["--json", "config", "check", file]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let x = &json["syncs"]["x"];
    assert_eq!(x["mode"], "full");
    assert_eq!(x["primary_key"][0], "ID");
    assert_eq!(x["pagination"]["style"], "odata_v2");
    std::fs::remove_file(&path).ok();
}

/// `sync run`, `sync status`, `records` and `show` against the local stack
/// and the simulator's Exact Online data API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_run_a_sync_and_see_its_state_and_records() {
    use oauth_sync_tests::simulator::{DataFault, DataFaultPlan, SimConfig};
    use oauth_sync_tests::stack::{SyncFixture, quick_sync_settings};
    use shared::config::PresetName;

    // Rate limits stay on, so the jobs know a budget.
    let syncs = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
         query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"incremental\"\n\
         cursor_field = \"Timestamp\"\ninterval_secs = 900\n\n\
         [syncs.all_projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
         query = { \"$select\" = \"ID,Code,Description\" }\nmode = \"full\"\n";
    let fx = SyncFixture::start(
        SimConfig::for_preset(PresetName::ExactOnline),
        "min_refresh_interval_secs = 0",
        syncs,
        quick_sync_settings(),
        "cli-sync",
    )
    .await;
    let ids = fx.sim().seed_projects(150);
    // A login without the scheduling: `sync run` creates the job.
    fx.fixture.connect("acme-exact").await;
    let path = std::env::temp_dir().join(format!("oauth-sync-sync-{}.toml", std::process::id()));
    std::fs::write(&path, &fx.fixture.config_text).expect("write");
    let config = path.to_str().expect("utf8 path");
    let tables = &fx.fixture.tables;
    let env = [
        ("OAUTH_SYNC_CONNECTIONS_TABLE", tables["ConnectionsTable"].as_str()),
        ("OAUTH_SYNC_SYNC_STATE_TABLE", tables["SyncStateTable"].as_str()),
        ("OAUTH_SYNC_SYNC_RUNS_TABLE", tables["SyncRunsTable"].as_str()),
        ("OAUTH_SYNC_RECORDS_TABLE", tables["RecordsTable"].as_str()),
    ];
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config];
        all.extend(args);
        oauth_sync_with(&all, &env)
    };

    let (ok, stdout, stderr) = run(&["sync", "status", "acme-exact"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("no sync jobs for acme-exact"), "{stdout}");

    // A sync added after the login: `sync schedule` gives every active
    // connection of its provider a job.
    let (ok, stdout, stderr) = run(&["sync", "schedule", "projects"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("scheduled for 1 active connection(s) of provider `sim`: acme-exact"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = run(&["sync", "status", "acme-exact"]);
    assert!(ok && stdout.contains("acme-exact#projects"), "{stdout}\n{stderr}");

    // The full sync: 60 projects a page, a progress line per page. The counts
    // are exact even when DynamoDB made the engine store a page again.
    let (ok, stdout, stderr) = run(&["sync", "run", "acme-exact", "all_projects"]);
    assert!(ok, "{stdout}\n{stderr}");
    for (page, fetched) in [(1, 60), (2, 120), (3, 150)] {
        let line = line_of(&stderr, &format!("page {page}: fetched {fetched}, inserted "));
        assert_eq!(
            line,
            format!("page {page}: fetched {fetched}, inserted {fetched}, updated 0, unchanged 0, deleted 0")
        );
    }
    assert!(stdout.starts_with("acme-exact#all_projects: finished"), "{stdout}");
    assert!(stdout.contains("pages 3, fetched 150, inserted 150"), "{stdout}");
    assert!(
        stdout.contains(", 429s 0, rate-limit waits 0") && stdout.contains("rejected 0"),
        "{stdout}"
    );

    // The incremental sync, then a rerun after one upstream change, as JSON.
    let (ok, _, stderr) = run(&["sync", "run", "acme-exact", "projects"]);
    assert!(ok, "{stderr}");
    assert!(fx.sim().update_project(&ids[7], "renamed"));
    let (ok, stdout, stderr) = run(&["--json", "sync", "run", "acme-exact", "projects"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["job"], "acme-exact#projects");
    assert_eq!(report["end"]["end"], "finished");
    assert_eq!(
        (
            report["counts"]["fetched"].as_u64(),
            report["counts"]["updated"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // An upstream deletion: the next full run finds it; `records` shows it.
    assert!(fx.sim().delete_project(&ids[0]));
    let (ok, stdout, stderr) = run(&["--json", "sync", "run", "acme-exact", "all_projects"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["counts"]["deleted"], 1, "{report}");

    let (ok, stdout, stderr) = run(&["records", "acme-exact", "all_projects", "--limit", "200"]);
    assert!(ok, "{stderr}");
    let header = stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("id ")
            && header.contains("Code")
            && header.contains("Description")
            && !header.contains("ID")
            && !header.contains("__metadata"),
        "the id column once, then the fields: {header}"
    );
    assert_eq!(stdout.lines().count(), 151, "a header and 150 records:\n{stdout}");
    let deleted: Vec<&str> = stdout.lines().filter(|l| l.contains("deleted ")).collect();
    assert!(
        deleted.len() == 1 && deleted[0].starts_with(ids[0].as_str()),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&["--json", "records", "acme-exact", "projects", "--limit", "2"]);
    assert!(ok);
    let records: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    assert_eq!(records.len(), 2);
    assert!(records[0]["record"]["Description"].is_string(), "{stdout}");
    assert!(
        records[0]["updated_at"].is_i64() && records[0]["deleted_at"].is_null(),
        "{stdout}"
    );

    // A run that fails: exit non-zero, the reason in the summary and the status.
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 500 },
        times: shared::sync::engine::SyncSettings::default().page_attempts,
        path_contains: Some("/project/Projects".to_owned()),
    });
    let (ok, stdout, stderr) = run(&["sync", "run", "acme-exact", "all_projects"]);
    assert!(!ok && stderr.contains("the run failed"), "{stderr}");
    assert!(stdout.contains("failed: ") && stdout.contains("HTTP 500"), "{stdout}");

    let (ok, stdout, stderr) = run(&["sync", "status"]);
    assert!(ok, "{stderr}");
    let projects = line_of(&stdout, "acme-exact#projects ");
    assert!(
        projects.contains("scheduled") && projects.contains("finished") && projects.contains("0/1/0"),
        "{projects}"
    );
    // The budget left of the minute window (which may reset while the test runs).
    assert!(
        projects.contains(", resets in ") || projects.contains("(stale: the window reset "),
        "the budget left: {projects}"
    );
    let all = line_of(&stdout, "acme-exact#all_projects ");
    assert!(
        all.contains("scheduled, resumes its run at page 1") && all.contains("failed") && all.contains("HTTP 500"),
        "{all}"
    );

    let (ok, stdout, _) = run(&["--json", "sync", "status", "acme-exact"]);
    assert!(ok);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    let job = jobs
        .iter()
        .find(|j| j["sync"] == "projects")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(job["state"], "scheduled");
    assert_eq!(job["last_run"]["status"], "finished");
    assert!(job["checkpoint"]["cursor"].is_string(), "{job}");
    assert!(job["budget_left"].as_u64().is_some_and(|left| left < 60), "{job}");
    assert_eq!(job["recent_runs"].as_array().map(Vec::len), Some(2), "{job}");

    // `show`: the learned division and one line per sync.
    let (ok, stdout, stderr) = run(&["show", "acme-exact"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("division=3155812"), "{stdout}");
    assert!(line_of(&stdout, "projects ").contains("finished"), "{stdout}");
    assert!(line_of(&stdout, "all_projects ").contains("failed"), "{stdout}");
    let (ok, stdout, _) = run(&["--json", "show", "acme-exact"]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(shown[0]["params"]["division"], "3155812");
    assert_eq!(shown[0]["syncs"].as_array().map(Vec::len), Some(2), "{stdout}");
    let (ok, stdout, _) = run(&["list"]);
    assert!(ok);
    assert!(
        line_of(&stdout, "acme-exact ").contains("failed"),
        "the newest run: {stdout}"
    );

    // Access refused (403): the job is parked with the reason, not retried
    // on a schedule; a later `sync run` says it takes the job back.
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 403 },
        times: 1,
        path_contains: Some("/project/Projects".to_owned()),
    });
    let (ok, stdout, stderr) = run(&["sync", "run", "acme-exact", "all_projects"]);
    assert!(!ok && stderr.contains("the run was parked"), "{stderr}");
    assert!(stdout.contains("parked: ") && stdout.contains("HTTP 403"), "{stdout}");
    let (ok, stdout, _) = run(&["sync", "status", "acme-exact"]);
    assert!(ok);
    let all = line_of(&stdout, "acme-exact#all_projects ");
    assert!(all.contains("parked: ") && all.contains("HTTP 403"), "{all}");
    let (ok, stdout, stderr) = run(&["sync", "run", "acme-exact", "all_projects"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("acme-exact#all_projects: was parked (") && stderr.contains("takes it back into the schedule"),
        "{stderr}"
    );

    // Mistakes create no job.
    let (ok, _, stderr) = run(&["sync", "run", "acme-exact", "nope"]);
    assert!(!ok && stderr.contains("unknown sync `nope`"), "{stderr}");
    let (ok, _, stderr) = run(&["sync", "run", "nobody", "projects"]);
    assert!(!ok && stderr.contains("connection nobody does not exist"), "{stderr}");
    let (ok, stdout, _) = run(&["sync", "status", "nobody"]);
    assert!(ok && stdout.contains("no sync jobs for nobody"), "{stdout}");

    // A revoked connection: the run parks the job and exits non-zero.
    let (ok, _, stderr) = run(&["revoke", "acme-exact"]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run(&["sync", "run", "acme-exact", "projects"]);
    assert!(!ok && stderr.contains("the run was parked"), "{stderr}");
    assert!(stdout.contains("parked: connection acme-exact is revoked"), "{stdout}");
    let (ok, stdout, _) = run(&["sync", "status", "acme-exact"]);
    assert!(ok);
    assert!(
        line_of(&stdout, "acme-exact#projects ").contains("parked: connection acme-exact is revoked"),
        "{stdout}"
    );
    std::fs::remove_file(&path).ok();
}

fn line_of<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting `{start}` in\n{text}"))
}

#[test]
fn config_check_refuses_an_empty_file_and_quotes_only_a_prefix_of_bad_input() {
    let path = std::env::temp_dir().join(format!("oauth-sync-empty-{}.toml", std::process::id()));
    std::fs::write(&path, "").expect("write");
    let (ok, stdout, stderr) = oauth_sync(&["config", "check", path.to_str().expect("utf8 path")]);
    assert!(!ok && !stdout.contains("valid"), "{stdout}");
    assert!(stderr.contains("no providers configured"), "{stderr}");

    let huge = "v".repeat(5 * 1024 * 1024);
    let text = format!("[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\npkce = \"{huge}\"\n");
    std::fs::write(&path, text).expect("write");
    let (ok, _, stderr) = oauth_sync(&["config", "check", path.to_str().expect("utf8 path")]);
    std::fs::remove_file(&path).ok();
    assert!(!ok);
    assert!(stderr.contains("providers.g.pkce") && stderr.contains('…'), "{stderr}");
    assert!(stderr.len() < 1_000, "{} bytes of error", stderr.len());
}

/// A sync fixture with 4,000 Exact projects (4 pages of 1,000: storing one
/// takes DynamoDB Local a while, long enough to act in the middle of it),
/// a connection `acme-{name}`, and the configuration in a file for the CLI.
struct Projects {
    fx: oauth_sync_tests::stack::SyncFixture,
    ids: Vec<String>,
    conn: shared::connection::ConnectionId,
    path: std::path::PathBuf,
}

impl Projects {
    async fn start(name: &str) -> Projects {
        use oauth_sync_tests::simulator::SimConfig;
        use oauth_sync_tests::stack::{SyncFixture, quick_sync_settings};
        use shared::config::PresetName;

        let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
        sim.data.rate_limit = None;
        let syncs = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
             query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"incremental\"\n\
             cursor_field = \"Timestamp\"\ninterval_secs = 900\n";
        let fx = SyncFixture::start(
            sim,
            "min_refresh_interval_secs = 0",
            syncs,
            quick_sync_settings(),
            &format!("cli-{name}"),
        )
        .await;
        let ids = fx.sim().seed_projects(4_000);
        let conn = fx.connect(&format!("acme-{name}")).await;
        let path = std::env::temp_dir().join(format!("oauth-sync-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, &fx.fixture.config_text).expect("write");
        Projects { fx, ids, conn, path }
    }

    /// `oauth-sync --config PATH sync run ID projects` on the fixture's tables.
    fn sync_run(&self) -> std::process::Command {
        let tables = &self.fx.fixture.tables;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-sync"));
        command
            .args(["--config", self.path.to_str().expect("utf8 path")])
            .args(["sync", "run", self.conn.as_str(), "projects"])
            .env("OAUTH_SYNC_CONNECTIONS_TABLE", &tables["ConnectionsTable"])
            .env("OAUTH_SYNC_SYNC_STATE_TABLE", &tables["SyncStateTable"])
            .env("OAUTH_SYNC_SYNC_RUNS_TABLE", &tables["SyncRunsTable"])
            .env("OAUTH_SYNC_RECORDS_TABLE", &tables["RecordsTable"]);
        command
    }

    /// Waits until the provider has answered the run's second page.
    async fn second_page_answered(&self) {
        let answered = || {
            self.fx
                .sim()
                .data_requests_log()
                .iter()
                .filter(|r| r.path_and_query.contains("Project/Projects") && r.status == 200)
                .count()
        };
        let started = std::time::Instant::now();
        while answered() < 2 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "the run never reached its second page"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Projects {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// A CLI process in the background, its stderr collected.
struct Background {
    child: std::process::Child,
    pid: String,
    stderr: std::thread::JoinHandle<Vec<String>>,
}

impl Background {
    fn spawn(command: &mut std::process::Command) -> Background {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn oauth-sync");
        let stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        Background {
            pid: child.id().to_string(),
            child,
            stderr,
        }
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([name, &self.pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {name}");
    }

    /// Its exit status and stderr.
    async fn finish(self) -> (std::process::ExitStatus, String) {
        let mut child = self.child;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        (status, self.stderr.join().expect("stderr lines").join("\n"))
    }
}

/// Ctrl-C in `sync run`: the run saves its place and releases the job's
/// lease, so the next run starts at once and goes on from that place. While
/// the first run holds the lease, the refusal says by whom and until when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_sync_run_releases_its_lease_and_the_next_goes_on() {
    let p = Projects::start("interrupted").await;
    let run = Background::spawn(&mut p.sync_run());
    p.second_page_answered().await;

    // While it holds the lease, another run is refused, naming the holder.
    run.signal("-STOP");
    let refused = p.sync_run().output().expect("run");
    run.signal("-CONT");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{why}");
    assert!(
        why.contains("is running elsewhere")
            && why.contains(&format!("held by pid {} on ", run.pid))
            && why.contains(" until ")
            && why.contains(" UTC, in "),
        "{why}"
    );

    // Ctrl-C: the run stops, saves its place, releases its lease.
    run.signal("-INT");
    let (status, stderr) = run.finish().await;
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    let job =
        p.fx.engine
            .jobs()
            .get(&format!("{}#projects", p.conn))
            .await
            .expect("read")
            .expect("job");
    assert_eq!(job.lease_owner, None, "the lease is released");

    // The next run starts at once and goes on from the saved place.
    let next = p.sync_run().arg("--json").output().expect("run");
    let out = String::from_utf8_lossy(&next.stdout);
    assert!(
        next.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&next.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["end"]["end"], "finished", "{out}");
    let fetched = report["invocation"]["fetched"].as_u64().expect("fetched");
    assert!(fetched < 4_000, "the next run started over: {out}");
    assert_eq!(p.fx.records(&p.conn, "projects").await.len(), 4_000);
}

/// `sync run` paused (SIGSTOP) past its lease while another run takes the
/// job over and stores newer data: when it wakes it writes nothing more, so
/// what it read before the pause never overwrites what is newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_run_paused_past_its_lease_writes_nothing_when_it_wakes() {
    use oauth_sync_tests::stack::deadline;

    let p = Projects::start("paused").await;
    let (fx, conn) = (&p.fx, &p.conn);
    let run = Background::spawn(p.sync_run().args(["--lease", "45s"]));
    // Pause it as soon as the provider has answered its second page: it
    // holds that page, read before the change below, not yet stored.
    p.second_page_answered().await;
    run.signal("-STOP");

    // Upstream every project changes; past the paused run's lease, another
    // run takes the job over and stores the new data.
    assert_eq!(fx.sim().update_projects_together(&p.ids, "newer"), 4_000);
    tokio::time::sleep(std::time::Duration::from_secs(46)).await;
    let mut takeover = fx
        .engine
        .run_now(conn, "projects", deadline(300), &|_| {})
        .await
        .expect("the takeover");
    while takeover.end != shared::sync::engine::RunEnd::Finished {
        assert!(
            matches!(takeover.end, shared::sync::engine::RunEnd::Yielded { .. }),
            "{takeover:?}"
        );
        takeover = fx
            .engine
            .run_now(conn, "projects", deadline(300), &|_| {})
            .await
            .expect("run");
    }
    let caught_up = fx.run(conn, "projects").await;
    assert_eq!(caught_up.end, shared::sync::engine::RunEnd::Finished, "{caught_up:?}");
    let newest = |records: Vec<shared::sync::records::StoredRecord>| {
        records.iter().filter(|r| r.data["Description"] != "newer").count()
    };
    assert_eq!(
        newest(fx.records(conn, "projects").await),
        0,
        "the takeover stored the new data"
    );

    // The paused run wakes: it must not write the page it held.
    run.signal("-CONT");
    let (status, stderr) = run.finish().await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("lost its lease"), "{stderr}");
    assert_eq!(
        newest(fx.records(conn, "projects").await),
        0,
        "no record older than the takeover's: {stderr}"
    );
}

/// `token` and `proxy` (the API's token and proxy routes from a terminal)
/// against the local stack and the simulator's Exact Online data API: the
/// token works at the provider, the proxy returns the provider's data and
/// refreshes once on a 401, bad input is named, and no token value or client
/// secret ever reaches stderr, even with every log level on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_get_a_token_and_call_the_provider_through_the_proxy() {
    use oauth_sync_tests::simulator::SimConfig;
    use oauth_sync_tests::stack::{SyncFixture, quick_sync_settings};
    use shared::config::PresetName;

    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.access_token_ttl = std::time::Duration::from_secs(600);
    // A small minute window that cannot reset while the test runs.
    sim.data.rate_limit = Some(oauth_sync_tests::simulator::RateLimits {
        minutely: 8,
        minute_window: std::time::Duration::from_secs(600),
        ..Default::default()
    });
    let syncs = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\nmode = \"full\"\n";
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        syncs,
        quick_sync_settings(),
        "cli-api",
    )
    .await;
    let ids = fx.sim().seed_projects(3);
    fx.connect("acme-api").await;
    let path = std::env::temp_dir().join(format!("oauth-sync-api-{}.toml", std::process::id()));
    std::fs::write(&path, &fx.fixture.config_text).expect("write");
    let config = path.to_str().expect("utf8 path");
    let tables = &fx.fixture.tables;
    // Every log level on, and the AWS SDK asked to print the answers it
    // marks sensitive (the client secret, read from Secrets Manager for the
    // refresh below): whatever is logged, no token or secret may be among it.
    let env = [
        ("OAUTH_SYNC_CONNECTIONS_TABLE", tables["ConnectionsTable"].as_str()),
        ("OAUTH_SYNC_SYNC_STATE_TABLE", tables["SyncStateTable"].as_str()),
        ("OAUTH_SYNC_SYNC_RUNS_TABLE", tables["SyncRunsTable"].as_str()),
        ("RUST_LOG", "trace"),
        ("LOG_SENSITIVE_BODIES", "true"),
    ];
    let mut stderrs = Vec::new();
    let mut run = |args: &[&str]| {
        let mut all = vec!["--config", config];
        all.extend(args);
        let (ok, stdout, stderr) = oauth_sync_with(&all, &env);
        stderrs.push(stderr.clone());
        (ok, stdout, stderr)
    };

    // The token alone on stdout; what it is on stderr.
    let (ok, stdout, stderr) = run(&["token", "acme-api"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "only the token: {stdout}");
    let token = stdout.trim().to_owned();
    assert!(fx.sim().is_latest_access_token(&token), "the connection's token");
    assert!(stderr.contains("acme-api: token_version 1, expires at "), "{stderr}");
    let me = fx
        .fixture
        .oauth
        .http
        .get(fx.fixture.oauth.sim.url("/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("/api/me");
    assert_eq!(me.status().as_u16(), 200, "the token works at the provider");

    // --json: the token route's answer. A token that lives shorter than
    // asked (10 min, 1 h asked) is handed out while half its life is left.
    let (ok, stdout, stderr) = run(&["--json", "token", "acme-api", "--min-valid", "1h"]);
    assert!(ok, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let mut fields: Vec<&str> = answer
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "access_token",
            "expires_at",
            "expires_in",
            "token_type",
            "token_version"
        ]
    );
    assert_eq!(answer["access_token"], token.as_str(), "not refreshed");
    assert_eq!(
        (answer["token_type"].as_str(), answer["token_version"].as_u64()),
        (Some("Bearer"), Some(1))
    );
    assert!(
        answer["expires_in"].as_i64().is_some_and(|s| (300..=600).contains(&s)),
        "{answer}"
    );
    assert!(
        answer["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{answer}"
    );

    // The proxy: the simulator's projects, under the connection's division.
    let (ok, stdout, stderr) = run(&[
        "proxy",
        "acme-api",
        "GET",
        "/project/Projects?$select=ID,Code",
        "--header",
        "Accept: application/json",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.lines().any(|l| l == "HTTP 200"), "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).expect("the provider's JSON, as it came");
    let mut got: Vec<&str> = body["d"]["results"]
        .as_array()
        .expect("d.results")
        .iter()
        .filter_map(|r| r["ID"].as_str())
        .collect();
    got.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    let division = fx.sim().division().to_string();
    assert!(
        fx.sim().data_requests_log().iter().any(|r| r
            .path_and_query
            .starts_with(&format!("/api/v1/{division}/project/Projects?"))
            && r.status == 200),
        "the division filled in from the connection"
    );

    // The provider ends the token early: one refresh, one retry, as JSON.
    fx.sim().expire_access_tokens();
    let (ok, stdout, stderr) = run(&[
        "--json",
        "proxy",
        "acme-api",
        "get",
        "project/Projects?$top=1",
        "-H",
        "Accept: application/json",
    ]);
    assert!(ok, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        (answer["status"].as_u64(), answer["refreshed"].as_bool()),
        (Some(200), Some(true)),
        "{answer}"
    );
    assert!(answer["body"]["d"]["results"].is_array(), "{answer}");
    assert!(
        answer["headers"]["content-type"]
            .as_str()
            .is_some_and(|t| t.starts_with("application/json")),
        "{answer}"
    );
    assert_eq!(fx.sim().counters().data_401s, 1);
    let (ok, stdout, _) = run(&["token", "acme-api"]);
    assert!(
        ok && fx.sim().is_latest_access_token(stdout.trim()),
        "the refreshed token is stored"
    );
    assert_ne!(stdout.trim(), token);

    // The provider's 4xx: its answer is shown, and the command fails.
    let (ok, stdout, stderr) = run(&[
        "proxy",
        "acme-api",
        "GET",
        "/project/Nothing",
        "-H",
        "Accept: application/json",
    ]);
    assert!(!ok, "{stdout}");
    assert!(stderr.lines().any(|l| l == "HTTP 404"), "{stderr}");
    assert!(stderr.contains("error: the provider answered HTTP 404"), "{stderr}");
    assert!(stdout.contains("Not found"), "the provider's body: {stdout}");

    // Bad input: named, non-zero, and nothing sent to the provider.
    let sent = fx.sim().data_requests_log().len();
    for (args, expected) in [
        (
            vec!["token", "acme-api", "--min-valid", "2h"],
            "error: --min-valid: at most 3600s",
        ),
        (vec!["token", "acme-api", "--min-valid", "soon"], "is not a duration"),
        (vec!["token", "nobody"], "connection nobody does not exist"),
        (vec!["token", "no body"], "error: ID: invalid connection id `no body`"),
        (vec!["proxy", "nobody", "GET", "/x"], "connection nobody does not exist"),
        (
            vec!["proxy", "acme-api", "GTE", "/x"],
            "error: METHOD: `GTE` is not one of GET",
        ),
        (
            vec!["proxy", "acme-api", "GET", "/../../4711/project/Projects"],
            "error: PATH: the target must stay below the provider's API",
        ),
        (
            vec!["proxy", "acme-api", "GET", "https://evil.example/x"],
            "error: PATH: `https://evil.example/x` is a URL",
        ),
        (
            vec!["proxy", "acme-api", "GET", "/x", "-H", "Accept"],
            "error: --header: `Accept` is not `Name: value`",
        ),
        (
            vec!["proxy", "acme-api", "POST", "/x", "--data", "@/nonexistent.json"],
            "error: --data @/nonexistent.json",
        ),
    ] {
        let (ok, _, stderr) = run(&args);
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(fx.sim().data_requests_log().len(), sent, "no request for bad input");
    let (ok, _, stderr) = oauth_sync_with(
        &["--config", config, "proxy", "acme-api", "GET", "/x"],
        &[("OAUTH_SYNC_SYNC_STATE_TABLE", "")],
    );
    assert!(
        !ok && stderr.contains("OAUTH_SYNC_SYNC_STATE_TABLE"),
        "the budget's table: {stderr}"
    );

    // The caller's Authorization is not forwarded: the connection's token is.
    let (ok, _, stderr) = run(&[
        "proxy",
        "acme-api",
        "GET",
        "/project/Projects?$top=1",
        "-H",
        "Accept: application/json",
        "-H",
        "Authorization: Bearer not-the-connections",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("--header authorization: not forwarded; the proxy sends the connection's own token"),
        "{stderr}"
    );

    // The shared budget (the sync's) says wait before the provider says 429:
    // a 429 of the proxy's own, with when to come back, and nothing sent.
    let mut refused = None;
    for _ in 0..10 {
        let (ok, _, stderr) = run(&[
            "proxy",
            "acme-api",
            "GET",
            "/project/Projects?$top=1",
            "-H",
            "Accept: application/json",
        ]);
        if !ok {
            refused = Some(stderr);
            break;
        }
    }
    let refused = refused.expect("the budget of 8 a window ends");
    assert!(
        refused
            .contains("error: the provider's rate limit for this connection is spent; try again later (retry after "),
        "{refused}"
    );
    assert!(
        fx.sim().data_requests_log().iter().all(|r| r.status != 429),
        "the provider never had to answer 429"
    );

    // Not one token, refresh token or code the simulator issued is on stderr,
    // and not the client secret the refresh read.
    let secrets = fx.sim().issued_secrets();
    assert!(secrets.len() >= 4, "a code, two access and two refresh tokens");
    let client_secret = fx.fixture.oauth.credentials.client_secret.secret();
    for stderr in &stderrs {
        for secret in &secrets {
            assert!(!stderr.contains(secret.as_str()), "a token on stderr:\n{stderr}");
        }
        assert!(
            !stderr.contains(client_secret),
            "the client secret on stderr:\n{stderr}"
        );
    }
    std::fs::remove_file(&path).ok();
}
