//! `oauth-sync redirect-uris`, as a script reads it.

mod common;

use common::oauth_sync_with;

fn example() -> String {
    format!("{}/../examples/oauth-sync.toml", env!("CARGO_MANIFEST_DIR"))
}

const CALLBACK: &str = "https://abc123.execute-api.eu-west-1.amazonaws.com/callback";

#[test]
fn each_provider_gets_one_line_with_its_own_redirect_uri() {
    let (ok, stdout, stderr) = oauth_sync_with(&["--config", &example(), "redirect-uris"], &[]);
    assert!(ok, "{stderr}");
    let lines: Vec<(&str, &str)> = stdout
        .lines()
        .map(|line| line.split_once('\t').expect("provider<TAB>uri"))
        .collect();
    assert_eq!(
        lines,
        ["crm", "exact", "graph", "xero"]
            .map(|p| (p, format!("{CALLBACK}/{p}")))
            .iter()
            .map(|(p, uri)| (*p, uri.as_str()))
            .collect::<Vec<_>>()
    );

    // One provider, named; the configuration from the environment.
    let (ok, stdout, _) = oauth_sync_with(&["redirect-uris", "exact"], &[("OAUTH_SYNC_CONFIG", &example())]);
    assert!(ok);
    assert_eq!(stdout, format!("exact\t{CALLBACK}/exact\n"));
}

#[test]
fn json_is_an_object_from_provider_to_uri() {
    let (ok, stdout, stderr) = oauth_sync_with(&["--json", "--config", &example(), "redirect-uris"], &[]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json.as_object().map(|o| o.len()), Some(4), "{json}");
    assert_eq!(json["graph"], format!("{CALLBACK}/graph"));
}

#[test]
fn without_a_callback_url_or_for_an_unknown_provider_it_says_what_is_wrong() {
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace(&format!("callback_url = \"{CALLBACK}\""), "");
    let path = std::env::temp_dir().join(format!("oauth-sync-redirect-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let file = path.to_str().expect("utf8 path");
    let (ok, stdout, stderr) = oauth_sync_with(&["--config", file, "redirect-uris"], &[]);
    std::fs::remove_file(&path).ok();
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("service.callback_url is not set"), "{stderr}");

    let (ok, _, stderr) = oauth_sync_with(&["--config", &example(), "redirect-uris", "nope"], &[]);
    assert!(!ok);
    assert!(stderr.contains("nope"), "{stderr}");
}
