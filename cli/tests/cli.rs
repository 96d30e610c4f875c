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
}
