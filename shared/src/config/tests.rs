use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "oauth-sync.toml")
}

/// Every error of `text`, in file order.
fn errs(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.into_vec(),
    }
}

/// The first error of `text`.
fn err(text: &str) -> ConfigError {
    errs(text).remove(0)
}

#[test]
fn presets_file_parses_and_names_every_preset_but_generic() {
    let tables: BTreeMap<String, toml::Table> = toml::from_str(PRESETS_TOML).expect("presets.toml parses");
    for preset in PresetName::ALL {
        assert!(tables.contains_key(preset.as_str()), "presets.toml lacks [{preset}]");
    }
    assert_eq!(
        tables.len(),
        PresetName::ALL.len(),
        "presets.toml has a table no PresetName names"
    );
}

#[test]
fn every_preset_resolves_with_only_a_credentials_secret() {
    for preset in PresetName::ALL.into_iter().filter(|p| *p != PresetName::Generic) {
        let text = format!("[providers.p]\npreset = \"{preset}\"\ncredentials_secret = \"s\"\n");
        let config = parse(&text).unwrap_or_else(|e| panic!("{preset}: {e}"));
        let provider = &config.providers["p"];
        assert_eq!(provider.preset, preset);
        assert_eq!(provider.token_url.scheme(), "https", "{preset}");
        assert!(!provider.settings.dead_token.is_empty(), "{preset}");
        assert!(
            provider.settings.pagination.is_some(),
            "{preset} has no pagination style"
        );
        assert!(provider.settings.api_base_url.is_some(), "{preset} has no api_base_url");
    }
}

#[test]
fn preset_facts() {
    let exact = PresetName::ExactOnline.settings();
    assert_eq!(exact.client_auth, ClientAuth::Body);
    assert!(exact.refresh_lead_secs <= 30);
    assert_eq!(exact.min_refresh_interval_secs, 570);
    assert!(exact.rotates_refresh_tokens);
    assert_eq!(exact.reuse_grace_secs, 0);
    assert_eq!(exact.refresh_token_idle_secs, Some(30 * 86_400));
    assert!(exact.redirect_requires_https);
    assert_eq!(
        exact.rate_limits.iter().map(|r| r.reset_format).collect::<Vec<_>>(),
        [Some(ResetFormat::EpochMs); 2]
    );
    assert_eq!(exact.pagination, Some(Pagination::OdataV2));

    let xero = PresetName::Xero.settings();
    assert_eq!(xero.client_auth, ClientAuth::Basic);
    assert_eq!(xero.reuse_grace_secs, 1800);
    assert_eq!(xero.refresh_token_idle_secs, Some(60 * 86_400));

    let microsoft = PresetName::Microsoft.settings();
    assert_eq!(microsoft.offline_scope.as_deref(), Some("offline_access"));
    assert!(microsoft.scopes.iter().any(|s| s == "offline_access"));
    assert_eq!(microsoft.refresh_token_idle_secs, Some(90 * 86_400));
    assert_eq!(microsoft.pagination, Some(Pagination::OdataNextLink));

    let google = PresetName::Google.settings();
    assert_eq!(
        google.authorize_params.get("access_type").map(String::as_str),
        Some("offline")
    );
    assert_eq!(
        google.authorize_params.get("prompt").map(String::as_str),
        Some("consent")
    );
    assert!(!google.rotates_refresh_tokens);

    let salesforce = PresetName::Salesforce.settings();
    assert_eq!(salesforce.default_expires_in_secs, 7200);
    assert_eq!(salesforce.pagination, Some(Pagination::NextRecordsUrl));
    assert!(
        salesforce
            .api_base_url
            .as_deref()
            .is_some_and(|u| u.starts_with("{instance_url}"))
    );

    assert_eq!(PresetName::Quickbooks.settings().client_auth, ClientAuth::Basic);
    assert!(!PresetName::Hubspot.settings().rotates_refresh_tokens);
    assert!(PresetName::Zoho.settings().authorize_params.contains_key("access_type"));
    assert_eq!(
        PresetName::Dropbox
            .settings()
            .authorize_params
            .get("token_access_type")
            .map(String::as_str),
        Some("offline")
    );
    let generic = PresetName::Generic.settings();
    assert!(generic.token_url.is_empty() && generic.pkce);
}

#[test]
fn each_preset_recognises_its_dead_token_answer() {
    use serde_json::json;
    let cases = [
        (
            PresetName::ExactOnline,
            401,
            json!({"error": "unauthorized_client", "error_description": "Old refresh token used."}),
        ),
        (
            PresetName::ExactOnline,
            400,
            json!({"error": "invalid_request", "error_description": "The refresh token expired at 2026-01-01"}),
        ),
        (
            PresetName::Microsoft,
            400,
            json!({"error": "invalid_grant", "error_description": "AADSTS700082: The refresh token has expired due to inactivity."}),
        ),
        (
            PresetName::Google,
            400,
            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        ),
        (
            PresetName::Salesforce,
            400,
            json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}),
        ),
        (PresetName::Xero, 400, json!({"error": "invalid_grant"})),
        (PresetName::Quickbooks, 400, json!({"error": "invalid_grant"})),
        (
            PresetName::Hubspot,
            400,
            json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"}),
        ),
        (PresetName::Zoho, 200, json!({"error": "invalid_code"})),
        (PresetName::Dropbox, 400, json!({"error": "invalid_grant"})),
        (
            PresetName::Generic,
            403,
            json!({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}),
        ),
    ];
    for (preset, status, body) in cases {
        assert!(
            preset.settings().is_dead_token(status, &body),
            "{preset} {status} {body}"
        );
    }
    // Not dead: a server error, Exact's "too early", a bad client, HubSpot's rule on another status.
    let not_dead = [
        (
            PresetName::ExactOnline,
            503,
            json!({"error": "temporarily_unavailable"}),
        ),
        (
            PresetName::ExactOnline,
            400,
            json!({"error": "invalid_request", "error_description": "TooEarlyToRefreshTokens"}),
        ),
        (
            PresetName::ExactOnline,
            401,
            json!({"error": "unauthorized_client", "error_description": "Client not allowed."}),
        ),
        (PresetName::Microsoft, 401, json!({"error": "invalid_client"})),
        (PresetName::Hubspot, 500, json!({"status": "BAD_REFRESH_TOKEN"})),
    ];
    for (preset, status, body) in not_dead {
        assert!(
            !preset.settings().is_dead_token(status, &body),
            "{preset} {status} {body}"
        );
    }
}

#[test]
fn a_full_config_resolves_overrides_and_placeholders() {
    let config = parse(
        r#"
[service]
callback_url = "https://example.execute-api.eu-west-1.amazonaws.com/callback"
return_url_allow_list = ["https://app.example.com/connected"]

[providers.graph]
preset = "microsoft"
credentials_secret = "oauth-sync/graph"
params = { tenant = "contoso.onmicrosoft.com" }
scopes = ["offline_access", "Contacts.Read"]

[providers.exact]
preset = "exact_online"
credentials_secret = "oauth-sync/exact"
params = { region = "be" }
token_url = "http://127.0.0.1:9000/token"

[providers.local]
preset = "generic"
credentials_secret = "oauth-sync/local"
authorize_url = "http://127.0.0.1:9000/authorize"
token_url = "http://127.0.0.1:9000/token"
client_auth = "basic"
reuse_grace_secs = 30

[syncs.contacts]
provider = "graph"
endpoint = "/me/contacts"

[syncs.projects]
provider = "exact"
endpoint = "/sync/Project/Projects"
mode = "incremental"
cursor_field = "Timestamp"
interval_secs = 900
"#,
    )
    .expect("valid config");
    let graph = &config.providers["graph"];
    assert_eq!(
        graph.token_url.as_str(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(graph.settings.scopes, ["offline_access", "Contacts.Read"]);
    let exact = &config.providers["exact"];
    assert_eq!(
        exact.authorize_url.as_str(),
        "https://start.exactonline.be/api/oauth2/auth"
    );
    assert_eq!(exact.token_url.as_str(), "http://127.0.0.1:9000/token");
    assert_eq!(exact.settings.min_refresh_interval_secs, 570, "preset value kept");
    let local = &config.providers["local"];
    assert_eq!(local.settings.client_auth, ClientAuth::Basic);
    assert_eq!(local.settings.reuse_grace_secs, 30);
    assert_eq!(config.syncs["projects"].mode, SyncMode::Incremental);
    assert_eq!(config.syncs["contacts"].mode, SyncMode::Full);
    assert_eq!(config.syncs["contacts"].name, "contacts");
    assert_eq!(config.service.return_url_allow_list.len(), 1);
    assert_eq!(config.service.token_key_secret, "oauth-sync/token-keys");
    assert!(
        config
            .provider("nope")
            .unwrap_err()
            .to_string()
            .contains("exact, graph, local")
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = err("[providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\ntokn_url = \"https://x\"\n");
    assert_eq!((e.file.as_str(), e.line), ("oauth-sync.toml", 4), "{e}");
    assert!(e.field.starts_with("providers.exact"), "{e}");
    assert!(e.message.contains("unknown field `tokn_url`"), "{e}");
    assert!(e.to_string().starts_with("oauth-sync.toml:4:"), "{e}");

    let e = err("[service]\ncallback = \"https://x\"\n");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("unknown field `callback`"), "{e}");

    let e = err("[sync.x]\nprovider = \"p\"\n");
    assert_eq!(e.line, 1, "{e}");
    assert!(e.message.contains("unknown field `sync`"), "{e}");
}

#[test]
fn bad_url_is_named_with_its_line() {
    let e = err(
        "[providers.g]\npreset = \"generic\"\ncredentials_secret = \"s\"\nauthorize_url = \"https://a.example/auth\"\ntoken_url = \"htp:/nowhere\"\n",
    );
    assert_eq!((e.line, e.field.as_str()), (5, "providers.g.token_url"), "{e}");
    assert!(e.message.contains("invalid URL `htp:/nowhere`"), "{e}");

    let e = err("[service]\ncallback_url = \"not a url\"\n");
    assert_eq!((e.line, e.field.as_str()), (2, "service.callback_url"), "{e}");
    assert!(e.message.contains("invalid URL"), "{e}");
}

#[test]
fn refresh_concurrency_is_bounded() {
    let provider = "[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\n";
    let parse = |service: &str| {
        Config::parse(&format!("[service]\n{service}{provider}"), "oauth-sync.toml").unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(parse("").service.refresh_concurrency, 16);
    assert_eq!(parse("refresh_concurrency = 64\n").service.refresh_concurrency, 64);
    for bad in ["0", "257", "-1"] {
        let e = err(&format!("[service]\nrefresh_concurrency = {bad}\n"));
        assert_eq!((e.line, e.field.as_str()), (2, "service.refresh_concurrency"), "{e}");
        assert!(e.message.contains("between 1 and 256"), "{e}");
    }
}

#[test]
fn missing_fields_are_named() {
    let e = err(
        "[providers.g]\npreset = \"generic\"\ncredentials_secret = \"s\"\nauthorize_url = \"https://a.example/auth\"\n",
    );
    assert_eq!((e.line, e.field.as_str()), (1, "providers.g.token_url"), "{e}");
    assert!(e.message.contains("missing field `token_url`"), "{e}");

    let e = err("[providers.g]\npreset = \"google\"\n");
    assert_eq!(e.field, "providers.g.credentials_secret", "{e}");

    let e = err("[providers.g]\ncredentials_secret = \"s\"\n");
    assert_eq!(e.field, "providers.g.preset", "{e}");
    assert!(e.message.contains("exact_online"), "lists the presets: {e}");

    let e = err("[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\n\n[syncs.s]\nprovider = \"g\"\n");
    assert!(e.field.starts_with("syncs.s"), "{e}");
    assert!(e.message.contains("missing field `endpoint`"), "{e}");
    assert_eq!(e.line, 5, "{e}");
}

#[test]
fn unknown_preset_lists_the_known_ones() {
    let e = err("[providers.x]\npreset = \"exakt_online\"\ncredentials_secret = \"s\"\n");
    assert_eq!((e.line, e.field.as_str()), (2, "providers.x.preset"), "{e}");
    assert!(e.message.contains("unknown variant `exakt_online`"), "{e}");
    assert!(e.message.contains("exact_online"), "{e}");
}

#[test]
fn semantic_mistakes_are_located() {
    let base = "[providers.ms]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\n";

    // An unfilled placeholder.
    let e = err(
        "[providers.ms]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\ntoken_url = \"https://login.example/{tennant}/token\"\n",
    );
    assert_eq!((e.line, e.field.as_str()), (4, "providers.ms.token_url"), "{e}");
    assert!(e.message.contains("params.tennant"), "{e}");

    // A misspelt URL parameter would silently keep the preset's default.
    let e =
        err("[providers.ms]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\nparams = { tennant = \"contoso\" }\n");
    assert_eq!((e.line, e.field.as_str()), (4, "providers.ms.params"), "{e}");
    assert!(
        e.message.contains("`{tennant}`") && e.message.contains("`tenant`"),
        "{e}"
    );

    // Replacing the URLs leaves the preset's own `tenant` unused, which is fine.
    parse("[providers.ms]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\nauthorize_url = \"https://a.example/a\"\ntoken_url = \"https://a.example/t\"\n")
        .expect("preset params may go unused");

    // Inline credentials are refused with the fix named.
    let e = err(&format!("{base}client_secret = \"hunter2\"\n"));
    assert_eq!((e.line, e.field.as_str()), (4, "providers.ms.client_secret"), "{e}");
    assert!(e.message.contains("Secrets Manager"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "the secret is not echoed: {e}");

    // A sync naming a provider that does not exist.
    let e = err(&format!(
        "{base}\n[syncs.c]\nprovider = \"graph\"\nendpoint = \"/me/contacts\"\n"
    ));
    assert_eq!((e.line, e.field.as_str()), (6, "syncs.c.provider"), "{e}");
    assert!(e.message.contains("unknown provider `graph`"), "{e}");

    // Incremental without a cursor field.
    let e = err(&format!(
        "{base}\n[syncs.c]\nprovider = \"ms\"\nendpoint = \"/me/contacts\"\nmode = \"incremental\"\n"
    ));
    assert_eq!(e.field, "syncs.c.cursor_field", "{e}");

    // Exact Online refuses early refreshes.
    let e = err("[providers.e]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\nrefresh_lead_secs = 300\n");
    assert_eq!((e.line, e.field.as_str()), (4, "providers.e.refresh_lead_secs"), "{e}");

    // A parameter every login sets itself.
    let e = err(&format!(
        "{base}authorize_params = {{ redirect_uri = \"https://evil.example/\" }}\n"
    ));
    assert_eq!((e.line, e.field.as_str()), (4, "providers.ms.authorize_params"), "{e}");
    assert!(e.message.contains("`redirect_uri` is set by oauth-sync"), "{e}");

    // A wrong type.
    let e = err(&format!("{base}pkce = \"yes\"\n"));
    assert_eq!((e.line, e.field.as_str()), (4, "providers.ms.pkce"), "{e}");

    // A bad provider name.
    let e = err("[providers.\"Bad Name\"]\npreset = \"google\"\ncredentials_secret = \"s\"\n");
    assert!(e.message.contains("may use only"), "{e}");
}

#[test]
fn syntax_errors_are_located() {
    let e = err("[providers.x]\npreset = \"google\n");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.starts_with("syntax error"), "{e}");
}

#[test]
fn unreadable_file_is_named() {
    let e = Config::load(Path::new("/nonexistent/oauth-sync.toml"))
        .unwrap_err()
        .first()
        .clone();
    assert_eq!(e.file, "/nonexistent/oauth-sync.toml");
    assert!(e.message.contains("cannot read"), "{e}");
}

#[test]
fn the_seed_example_is_six_lines_and_the_preset_fills_the_rest() {
    let config = parse(
        "[providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\n\n\
         [syncs.projects]\nprovider = \"exact\"\nendpoint = \"/sync/Project/Projects\"\n\
         query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"incremental\"\ncursor_field = \"Timestamp\"\n",
    )
    .expect("valid");
    let sync = &config.syncs["projects"];
    assert_eq!(sync.pagination, Pagination::OdataV2);
    assert_eq!(sync.records, "d.results");
    assert_eq!(sync.primary_key, ["ID"]);
    assert_eq!(
        sync.incremental.as_ref().map(|i| i.filter.as_str()),
        Some("{field} gt {cursor}L")
    );
    assert_eq!(sync.interval_secs, 3600);
    assert!(config.providers["exact"].settings.discover.contains_key("division"));
}

#[test]
fn every_sync_mistake_is_named_with_its_line_and_field() {
    let base = "[providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\n\n\
                [providers.ms]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\n\n\
                [providers.crm]\npreset = \"generic\"\ncredentials_secret = \"s\"\n\
                authorize_url = \"https://a.example/a\"\ntoken_url = \"https://a.example/t\"\n\
                api_base_url = \"https://api.example\"\npagination = { style = \"link_header\" }\n\n";
    let sync_line = base.lines().count() + 1;
    let cases: &[(&str, &str, &str)] = &[
        (
            "provider = \"exact\"\nendpoint = \"/x\"\nfilds = {}\n",
            "syncs.s.filds",
            "unknown field `filds`",
        ),
        (
            "provider = \"exact\"\nendpoint = \"x\"\n",
            "syncs.s.endpoint",
            "must start with `/`",
        ),
        (
            "provider = \"ms\"\nendpoint = \"/me/contacts\"\nmode = \"incremental\"\ncursor_field = \"x\"\n",
            "syncs.s.mode",
            "no `incremental` filter",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\nmode = \"delta\"\n",
            "syncs.s.mode",
            "odata_next_link",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\ncursor_field = \"Timestamp\"\n",
            "syncs.s.cursor_field",
            "only an incremental sync",
        ),
        (
            "provider = \"ms\"\nendpoint = \"/x\"\nmode = \"delta\"\ndeleted_entity_type = 1\n",
            "syncs.s.deleted_entity_type",
            "no deleted-records feed",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\nsweep_interval_secs = 86400\n",
            "syncs.s.sweep_interval_secs",
            "only an incremental sync sweeps",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\nmode = \"incremental\"\ncursor_field = \"T\"\ninterval_secs = 900\nsweep_interval_secs = 60\n",
            "syncs.s.sweep_interval_secs",
            "shorter than `interval_secs`",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\nfields = {}\n",
            "syncs.s.fields",
            "empty field list",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\nmode = \"incremental\"\ncursor_field = \"T\"\npagination = { style = \"page_number\", param = \"page\" }\n",
            "syncs.s.mode",
            "cannot page by offset or page number",
        ),
        (
            "provider = \"crm\"\nendpoint = \"/items\"\n",
            "syncs.s.primary_key",
            "primary key",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\ninterval_secs = 10\n",
            "syncs.s.interval_secs",
            "minimum of 60",
        ),
        (
            "provider = \"exact\"\nendpoint = \"/x\"\nmode = \"sometimes\"\n",
            "syncs.s.mode",
            "unknown variant `sometimes`",
        ),
    ];
    for (table, field, message) in cases {
        let e = err(&format!("{base}[syncs.s]\n{table}"));
        assert_eq!(e.field, *field, "{table}: {e}");
        assert!(e.message.contains(message), "{table}: {e}");
        assert!(e.line >= sync_line, "{table}: {e}");
    }
    let e = err(&format!(
        "{base}[syncs.\"a#b\"]\nprovider = \"exact\"\nendpoint = \"/x\"\n"
    ));
    assert!(e.message.contains("may use only"), "{e}");
    // A generic provider's sync names its own key and records.
    let ok = parse(&format!(
        "{base}[syncs.s]\nprovider = \"crm\"\nendpoint = \"/items\"\nprimary_key = [\"id\"]\nrecords = \"data\"\n"
    ))
    .expect("valid");
    assert_eq!(ok.syncs["s"].records, "data");
}

#[test]
fn an_empty_configuration_is_an_error_not_valid() {
    for text in [
        "",
        "\n# nothing yet\n",
        "[service]\ncallback_url = \"https://a.example/callback\"\n",
    ] {
        let e = err(text);
        assert!(e.message.contains("no providers configured"), "{e}");
        assert_eq!(e.field, "providers");
    }
}

#[test]
fn errors_quote_at_most_a_short_prefix_of_the_input() {
    let huge = "x".repeat(5 * 1024 * 1024);
    let base = "[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\n";
    for text in [
        // A wrong value, an unknown preset, a bad URL, an unknown key, a bad
        // provider name, a syntax error inside a long value, an unknown provider in a sync.
        format!("{base}pkce = \"{huge}\"\n"),
        format!("[providers.g]\npreset = \"{huge}\"\ncredentials_secret = \"s\"\n"),
        format!("{base}token_url = \"not a url {huge}\"\n"),
        format!("{base}{huge} = 1\n"),
        format!(
            "[providers.\"{}\"]\npreset = \"google\"\ncredentials_secret = \"s\"\n",
            huge.to_uppercase()
        ),
        format!("{base}scopes = [\"{huge}\n"),
        format!("{base}\n[syncs.s]\nprovider = \"{huge}\"\nendpoint = \"/x\"\n"),
    ] {
        let e = err(&text);
        let shown = e.to_string();
        assert!(shown.len() < 1_500, "{} characters: {}", shown.len(), &shown[..1_500]);
        assert!(!shown.to_lowercase().contains(&"x".repeat(QUOTE_LIMIT + 1)), "{shown}");
    }
    assert_eq!(cut_quoted("value `abc` is bad"), "value `abc` is bad");
    assert_eq!(
        cut_quoted(&format!("value \"{}\" is bad", "y".repeat(100))),
        format!("value \"{}…\" is bad", "y".repeat(QUOTE_LIMIT))
    );
    assert_eq!(
        cut_quoted(&format!("open `{}", "z".repeat(100))),
        format!("open `{}…", "z".repeat(QUOTE_LIMIT))
    );
}

#[test]
fn issuers_are_preset_only_where_they_are_one_fixed_value() {
    assert_eq!(
        PresetName::Google.settings().issuer.as_deref(),
        Some("https://accounts.google.com")
    );
    // Microsoft's v2 issuer names the tenant: not one value a preset can hold.
    assert_eq!(PresetName::Microsoft.settings().issuer, None);
    assert_eq!(
        PresetName::ExactOnline.settings().display_name.as_deref(),
        Some("Exact Online")
    );
    let config = parse(
        "[service]\ncallback_url = \"https://a.example/prod/callback/\"\n\n\
         [providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\nissuer = \"https://other.example\"\n",
    )
    .expect("config");
    assert_eq!(
        config.providers["g"].settings.issuer.as_deref(),
        Some("https://other.example")
    );
    assert_eq!(
        config.service.redirect_uri("g").map(String::from).as_deref(),
        Some("https://a.example/prod/callback/g"),
        "one redirect URI per provider"
    );
}

#[tokio::test]
async fn a_provider_whose_endpoints_are_all_given_fetches_no_discovery_document() {
    // Nothing listens at the issuer: a fetch would fail the load.
    let text = "[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\nissuer = \"https://127.0.0.1:9\"\n\n\
                [providers.own]\npreset = \"generic\"\ncredentials_secret = \"s\"\nissuer = \"http://127.0.0.1:9\"\n\
                authorize_url = \"https://id.example/auth\"\ntoken_url = \"https://id.example/token\"\n";
    let config = Config::parse_and_discover(text, "oauth-sync.toml")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.providers.values().all(|p| p.metadata.is_none()));
    assert!(config.discovered().is_empty());
}

#[test]
fn require_iss_needs_an_issuer_and_an_explicit_value_wins() {
    let e = err("[providers.p]\npreset = \"generic\"\ncredentials_secret = \"s\"\n\
                 authorize_url = \"https://id.example/auth\"\ntoken_url = \"https://id.example/token\"\nrequire_iss = true\n");
    assert_eq!((e.line, e.field.as_str()), (6, "providers.p.require_iss"), "{e}");
    let google = |extra: &str| {
        let text = format!("[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\n{extra}");
        parse(&text).unwrap_or_else(|e| panic!("{e}")).providers["g"].requires_iss()
    };
    // Without a discovery document, an answer without `iss` is refused only when asked for.
    assert!(!google(""));
    assert!(google("require_iss = true\n"));
}

#[test]
fn without_discovery_a_provider_that_needs_its_document_says_where_it_is() {
    let e = err(
        "[providers.p]\npreset = \"generic\"\ncredentials_secret = \"s\"\nissuer = \"https://id.example/realms/a/\"\n",
    );
    assert_eq!((e.line, e.field.as_str()), (4, "providers.p.issuer"), "{e}");
    assert!(
        e.message
            .contains("https://id.example/realms/a/.well-known/openid-configuration"),
        "{e}"
    );
    let e = err("[providers.p]\npreset = \"generic\"\ncredentials_secret = \"s\"\nissuer = \"http://id.example\"\n");
    assert!(e.message.contains("must use https"), "{e}");
}

#[test]
fn credentials_in_the_wrong_table_are_refused_without_being_quoted() {
    // Found by fuzz::config: `[providers]` with the credentials written
    // straight under it gave `invalid type: string "<the secret>"`.
    for text in [
        "[providers]\nclient_id = \"ci-planted\"\nclient_secret = \"cs-planted\"\n",
        "[providers]\nclient_secret = 12345678\n",
        "[syncs]\nclient_secret = \"cs-planted\"\n",
        "[providers]\nclient_secret = [\"cs-planted\"]\n",
    ] {
        let e = err(text);
        assert!(
            e.field.contains("client_id") || e.field.contains("client_secret"),
            "{e}"
        );
        assert!(e.message.contains("Secrets Manager"), "{e}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("planted") && !shown.contains("12345678"), "{shown}");
    }
}

#[test]
fn an_error_about_a_key_with_control_characters_stays_one_line() {
    // Found by fuzz::config: a quoted key `"\r"` came back raw in the field
    // and the message, and a terminal printed the rest over the file name.
    let e = err("\"a\\r\\nb\\u2028\" = 1\n[providers.p]\npreset = \"google\"\ncredentials_secret = \"s\"\n");
    let shown = e.to_string();
    assert!(!shown.chars().any(|c| c.is_control() || c == '\u{2028}'), "{shown:?}");
    assert!(shown.contains("a\\r\\nb\\u{2028}"), "{shown}");
}

#[test]
fn a_pagination_style_without_fields_refuses_unknown_keys() {
    // Found by fuzz::config: serde ignores unknown keys in the unit variants
    // of an internally tagged enum, so a typo (or a pasted client secret)
    // next to `style = "link_header"` was accepted without a word.
    let base = "[providers.p]\npreset = \"google\"\ncredentials_secret = \"s\"\n";
    for style in ["odata_v2", "odata_next_link", "next_records_url", "link_header"] {
        let e = err(&format!(
            "{base}pagination = {{ style = \"{style}\", records_pth = \"x\" }}\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (4, "providers.p.pagination"), "{e}");
        assert!(e.message.contains("unknown field `records_pth`"), "{e}");
        let config = parse(&format!("{base}pagination = {{ style = \"{style}\" }}\n")).expect("config");
        assert!(config.providers["p"].settings.pagination.is_some());
    }
    let e = err(&format!(
        "{base}pagination = {{ style = \"cursor\", param = \"a\", next_field = \"b\", items_field = \"c\", typo = 1 }}\n"
    ));
    assert!(e.message.contains("unknown field `typo`"), "{e}");
}

#[test]
fn a_client_secret_in_the_authorize_parameters_is_refused() {
    // Found by fuzz::config: it was accepted, and every login would have
    // carried the client secret through the user's browser.
    let e = err(
        "[providers.p]\npreset = \"google\"\ncredentials_secret = \"s\"\nauthorize_params = { client_secret = \"cs-planted\" }\n",
    );
    assert_eq!((e.line, e.field.as_str()), (4, "providers.p.authorize_params"), "{e}");
    assert!(e.message.contains("Secrets Manager"), "{e}");
    assert!(!format!("{e} {e:?}").contains("planted"), "{e}");
}

#[test]
fn a_key_of_many_dots_is_cut_in_the_field_path() {
    // Found by fuzz::config: `params = { "a.a.a…" = 1 }` with 5,000 dots
    // gave a 10,000-character field path, each part short enough to be kept.
    let key = "a.".repeat(5_000);
    let e = err(&format!(
        "[providers.p]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\nparams = {{ \"{key}\" = 1 }}\n"
    ));
    assert!(e.field.starts_with("providers.p.params.a.a"), "{e}");
    assert!(
        e.field.chars().count() <= 4 * QUOTE_LIMIT + 1,
        "{} chars",
        e.field.chars().count()
    );
    assert!(
        e.to_string().chars().count() < 2_000,
        "{} chars",
        e.to_string().chars().count()
    );
}

/// The line of `text` that contains `needle` (1-based).
fn line_of(text: &str, needle: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}`"))
}

#[test]
fn every_table_with_a_mistake_is_reported_in_file_order() {
    let text = "\
[service]
callback_url = \"not a url\"

[providers.exact]
preset = \"exact_online\"
credentials_secret = \"s\"
refresh_lead_secs = 300

[providers.ms]
preset = \"microsoft\"
credentials_secret = \"s\"
params = { tennant = \"contoso\" }

[providers.ok]
preset = \"google\"
credentials_secret = \"s\"

[syncs.projects]
provider = \"ok\"
endpoint = \"/x\"
modes = \"incremental\"

[syncs.contacts]
provider = \"ms\"
endpoint = \"/me/contacts\"
mode = \"sometimes\"

[syncs.mail]
provider = \"ms\"
endpoint = \"/me/messages\"

[syncs.files]
provider = \"gdrive\"
endpoint = \"/files\"

[webhooks.crm]
url = \"http://crm.example.com/hooks\"
events = [\"*\"]
signing_secret = \"s\"
";
    let found: Vec<(usize, String)> = errs(text).into_iter().map(|e| (e.line, e.field)).collect();
    let expected = [
        (line_of(text, "not a url"), "service.callback_url"),
        (line_of(text, "refresh_lead_secs"), "providers.exact.refresh_lead_secs"),
        (line_of(text, "tennant"), "providers.ms.params"),
        (line_of(text, "modes"), "syncs.projects.modes"),
        // Not a mode at all, whatever the provider.
        (line_of(text, "sometimes"), "syncs.contacts.mode"),
        // `syncs.mail` names `ms`, whose own mistake is reported above: no
        // second error says `ms` is unknown.
        (line_of(text, "gdrive"), "syncs.files.provider"),
        (line_of(text, "http://crm"), "webhooks.crm.url"),
    ]
    .map(|(line, field)| (line, field.to_owned()));
    assert_eq!(found, expected);
    let shown = parse(text).expect_err("mistakes").to_string();
    assert_eq!(shown.lines().count(), expected.len(), "one error a line:\n{shown}");
    assert!(
        shown.contains("unknown provider `gdrive` (configured: exact, ms, ok)"),
        "{shown}"
    );
    assert!(!shown.contains("unknown provider `ms`"), "{shown}");
}

#[test]
fn a_table_reports_each_of_its_own_problems() {
    // A bad name and credentials in the file are found whatever the rest says.
    let found = errs(
        "[providers.Exact]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\nclient_secret = \"cs-planted\"\nrefresh_lead_secs = 300\n",
    );
    let found: Vec<(usize, &str)> = found.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        [
            (1, "providers.Exact"),
            (4, "providers.Exact.client_secret"),
            (5, "providers.Exact.refresh_lead_secs")
        ]
    );
    // A sync of a provider with a mistake still has its own name checked.
    let found = errs("[providers.p]\npreset = \"nope\"\n\n[syncs.\"a#b\"]\nprovider = \"p\"\nendpoint = \"/x\"\n");
    let found: Vec<(usize, &str)> = found.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(found, [(2, "providers.p.preset"), (4, "syncs.a#b")]);
}

#[test]
fn a_syntax_error_is_the_only_error() {
    let e = parse("[providers.p]\npreset = \"google\ncredentials_secret = 1\n\n[syncs.s]\nbogus = 1\n")
        .expect_err("syntax");
    assert_eq!(e.as_slice().len(), 1, "{e}");
    assert!(e.first().message.starts_with("syntax error"), "{e}");
}

#[test]
fn without_providers_other_mistakes_come_first() {
    let found = errs("[sync.x]\nprovider = \"p\"\n");
    let found: Vec<(usize, &str)> = found.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(found, [(1, "sync"), (0, "providers")]);
}

#[test]
fn a_table_or_key_defined_twice_is_named_with_both_lines() {
    let base = "[providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\n\n";
    let cases = [
        // A table, a key in a table, a key in an array of tables, a table
        // over a dotted key, a quoted name.
        (
            format!("{base}[providers.ms]\npreset = \"microsoft\"\n\n[providers.exact]\npreset = \"exact_online\"\n"),
            (8, 12),
            "providers.exact",
            "`providers.exact` is defined twice (lines 1 and 8)",
        ),
        (
            format!("{base}[syncs.s]\nprovider = \"exact\"\nendpoint = \"/x\"\n  provider = \"ms\"\n"),
            (8, 3),
            "syncs.s.provider",
            "`syncs.s.provider` is defined twice (lines 6 and 8)",
        ),
        (
            format!("{base}[[providers.exact.dead_token]]\nequals = \"a\"\nequals = \"b\"\n"),
            (7, 1),
            "providers.exact.dead_token.equals",
            "(lines 6 and 7)",
        ),
        (
            format!("providers.exact.preset = \"exact_online\"\n{base}"),
            (2, 12),
            "providers.exact",
            "`providers.exact` is defined twice (lines 1 and 2)",
        ),
        (
            format!("{base}[providers.\"exact\"]\n"),
            (5, 12),
            "providers.exact",
            "(lines 1 and 5)",
        ),
    ];
    for (text, place, field, says) in cases {
        let e = parse(&text).expect_err(&text);
        assert_eq!(e.as_slice().len(), 1, "{e}");
        let e = e.first();
        assert_eq!(((e.line, e.column), e.field.as_str()), (place, field), "{text}\n{e}");
        assert!(e.message.contains(says), "{e}");
    }
    // Twice on one line, inside an inline table: the key and the line.
    let e = err(&format!(
        "{base}[providers.ms]\npreset = \"microsoft\"\nparams = {{ tenant = \"a\", tenant = \"b\" }}\n"
    ));
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.contains("`tenant` is defined twice"), "{e}");
}

#[test]
fn a_file_that_is_not_utf8_names_the_line_and_column_of_the_first_bad_byte() {
    let path = std::env::temp_dir().join(format!("oauth-sync-latin1-{}.toml", std::process::id()));
    let mut bytes = b"[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\ndisplay_name = \"Gr".to_vec();
    bytes.extend([0xFC, b'n', b'e', b'"', b'\n', 0xFF]);
    std::fs::write(&path, &bytes).expect("write");
    let e = Config::load(&path).expect_err("not UTF-8");
    std::fs::remove_file(&path).ok();
    assert_eq!(e.as_slice().len(), 1, "{e}");
    let e = e.first();
    assert_eq!((e.line, e.column), (4, 19), "{e}");
    assert_eq!(
        e.message,
        "the file is not UTF-8: invalid byte 0xFC at line 4, column 19 (save it as UTF-8)"
    );
    // Characters before it count as one column each.
    let e = errors::utf8("é\n ü\u{2028}x\u{FF}".bytes().chain([0xC3]).collect(), "f").expect_err("cut");
    assert_eq!((e.line, e.column), (2, 6), "{e}");
}

#[test]
fn every_preset_is_within_the_bounds() {
    for preset in PresetName::ALL {
        assert_eq!(settings_problems(&preset.settings()), [], "{preset}");
    }
}

#[test]
fn a_number_out_of_range_or_of_the_wrong_type_says_what_the_key_takes() {
    let provider = "[providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"s\"\n";
    let sync = |line: &str| format!("{provider}\n[syncs.s]\nprovider = \"exact\"\nendpoint = \"/x\"\n{line}\n");
    let seconds = "must be a whole number of seconds between 60 and 31536000 (365 days)";
    let cases = [
        (
            sync("interval_secs = 99999999999999999999"),
            "syncs.s.interval_secs",
            format!("{seconds}; 99999999999999999999 is above the maximum of 31536000"),
        ),
        (
            sync("interval_secs = -5"),
            "syncs.s.interval_secs",
            format!("{seconds}; -5 is below the minimum of 60"),
        ),
        (
            sync("interval_secs = 31536001"),
            "syncs.s.interval_secs",
            format!("{seconds}; 31536001 is above the maximum of 31536000"),
        ),
        (
            sync("interval_secs = \"900\""),
            "syncs.s.interval_secs",
            format!("{seconds}; got the string \"900\" (write the number without quotes)"),
        ),
        (
            sync("interval_secs = 1.5"),
            "syncs.s.interval_secs",
            format!("{seconds}; got `1.5`, which is not whole"),
        ),
        (
            sync("mode = \"incremental\"\ncursor_field = \"T\"\nsweep_interval_secs = 0"),
            "syncs.s.sweep_interval_secs",
            format!("{seconds}; 0 is below the minimum of 60"),
        ),
        (
            sync("mode = \"incremental\"\ncursor_field = \"T\"\ndeleted_entity_type = 99999999999"),
            "syncs.s.deleted_entity_type",
            "must be a whole number between 0 and 2147483647; 99999999999 is above the maximum of 2147483647"
                .to_owned(),
        ),
        (
            format!("[service]\nrefresh_concurrency = 99999999999999999999\n{provider}"),
            "service.refresh_concurrency",
            "must be a whole number between 1 and 256; 99999999999999999999 is above the maximum of 256".to_owned(),
        ),
        (
            format!("{provider}refresh_lead_secs = -1\n"),
            "providers.exact.refresh_lead_secs",
            "must be a whole number of seconds between 0 and 86400 (1 day); -1 is below the minimum of 0".to_owned(),
        ),
        (
            format!("{provider}refresh_token_idle_secs = 60\n"),
            "providers.exact.refresh_token_idle_secs",
            "must be a whole number of seconds between 3600 and 315360000 (3650 days); 60 is below the minimum of 3600"
                .to_owned(),
        ),
        (
            format!("{provider}error_budget_per_hour = 0\n"),
            "providers.exact.error_budget_per_hour",
            "must be a whole number between 1 and 100000; 0 is below the minimum of 1".to_owned(),
        ),
        (
            format!("{provider}dead_token = [{{ status = 70000, equals = \"x\" }}]\n"),
            "providers.exact.dead_token[0].status",
            "must be an HTTP status between 100 and 599; 70000 is above the maximum of 599".to_owned(),
        ),
        (
            format!("{provider}dead_token = [{{ status = 99, equals = \"x\" }}]\n"),
            "providers.exact.dead_token",
            "must be an HTTP status between 100 and 599; 99 is below the minimum of 100".to_owned(),
        ),
        (
            format!("{provider}pagination = {{ style = \"page_number\", param = \"p\", first = -1 }}\n"),
            "providers.exact.pagination",
            "`first` must be a whole number between 0 and 1000000; -1 is below the minimum of 0".to_owned(),
        ),
    ];
    for (text, field, message) in cases {
        let e = err(&text);
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            (field, message.as_str()),
            "{text}"
        );
        let key = field
            .rsplit('.')
            .next()
            .and_then(|k| k.split('[').next())
            .unwrap_or_default();
        assert_eq!(e.line, line_of(&text, key), "{e}");
    }
}

#[test]
fn no_error_names_a_rust_type() {
    let provider = "[providers.p]\npreset = \"google\"\ncredentials_secret = \"s\"\n";
    let sync = "[syncs.s]\nprovider = \"p\"\nendpoint = \"/x\"\n";
    let mut texts: Vec<String> = Vec::new();
    for value in [
        "-1",
        "99999999999999999999",
        "999999999999999999999999999999999999999999",
        "1.5",
        "nan",
        "\"7\"",
        "true",
        "[]",
        "{}",
        "1979-05-27",
    ] {
        for key in [
            "refresh_lead_secs",
            "min_refresh_interval_secs",
            "reuse_grace_secs",
            "refresh_token_idle_secs",
            "default_expires_in_secs",
            "error_budget_per_hour",
            "pkce",
            "scopes",
            "params",
            "dead_token",
            "pagination",
            "rate_limits",
            "preset",
            "display_name",
        ] {
            texts.push(format!("{provider}{key} = {value}\n"));
        }
        texts.push(format!(
            "{provider}dead_token = [{{ status = {value}, equals = \"x\" }}]\n"
        ));
        texts.push(format!("{provider}dead_token = [{value}]\n"));
        texts.push(format!("{provider}rate_limits = [{value}]\n"));
        texts.push(format!(
            "{provider}pagination = {{ style = \"offset\", offset_param = \"o\", limit_param = \"l\", first = {value} }}\n"
        ));
        for key in [
            "interval_secs",
            "sweep_interval_secs",
            "deleted_entity_type",
            "query",
            "primary_key",
        ] {
            texts.push(format!("{provider}{sync}{key} = {value}\n"));
        }
        texts.push(format!("[service]\nrefresh_concurrency = {value}\n{provider}"));
        texts.push(format!("[service]\nreturn_url_allow_list = {value}\n{provider}"));
        texts.push(format!("service = {value}\n{provider}"));
        texts.push(format!("providers = {value}\n"));
        texts.push(format!("[providers]\np = {value}\n"));
        texts.push(format!("[syncs]\ns = {value}\n{provider}"));
    }
    let mut messages = 0;
    let mut wrong = Vec::new();
    for text in &texts {
        if let Err(errors) = parse(text) {
            for e in &errors {
                messages += 1;
                if let Some(name) = limits::names_a_rust_type(&e.message) {
                    wrong.push(format!("{name}: {e}"));
                }
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
    assert!(
        messages > texts.len() / 2,
        "{messages} errors from {} files",
        texts.len()
    );
}

#[test]
fn text_shown_to_people_is_capped_and_one_line() {
    let provider = |line: &str| format!("[providers.p]\npreset = \"google\"\ncredentials_secret = \"s\"\n{line}\n");
    let fits = "é".repeat(MAX_DISPLAY_NAME_CHARS);
    let config = parse(&provider(&format!("display_name = \"{fits}\""))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.providers["p"].settings.display_name.as_deref(),
        Some(fits.as_str())
    );
    let huge = "x".repeat(5 * 1024 * 1024);
    let cases = [
        (
            format!("display_name = \"{huge}\""),
            "providers.p.display_name",
            "has 5242880 characters; at most 100 (the login pages show it)",
        ),
        (
            format!("display_name = \"{fits}e\""),
            "providers.p.display_name",
            "has 101 characters; at most 100",
        ),
        (
            "display_name = \" \"".to_owned(),
            "providers.p.display_name",
            "must not be empty",
        ),
        (
            "display_name = \"Acme \\u202Egnp.exe\"".to_owned(),
            "providers.p.display_name",
            "invisible formatting",
        ),
        (
            "display_name = \"a\\nb\"".to_owned(),
            "providers.p.display_name",
            "one line",
        ),
        (
            "scopes = [\"openid email\"]".to_owned(),
            "providers.p.scopes",
            "`openid email` is several scopes: write each as its own list item",
        ),
        (
            format!("scopes = [\"{}\"]", "s".repeat(MAX_SCOPE_CHARS + 1)),
            "providers.p.scopes",
            "has 201 characters; a scope has at most 200",
        ),
        (
            "offline_scope = \"\"".to_owned(),
            "providers.p.offline_scope",
            "is not a scope",
        ),
    ];
    for (line, field, says) in cases {
        let e = err(&provider(&line));
        assert_eq!((e.line, e.field.as_str()), (4, field), "{e}");
        assert!(e.message.contains(says), "{e}");
        assert!(e.to_string().len() < 400, "{e}");
    }
}

#[test]
fn names_have_at_most_64_characters() {
    let name = "n".repeat(MAX_NAME_CHARS);
    let text = |name: &str| {
        format!(
            "[providers.{name}]\npreset = \"google\"\ncredentials_secret = \"s\"\n\n\
             [syncs.{name}]\nprovider = \"{name}\"\nendpoint = \"/x\"\n\n\
             [webhooks.{name}]\nurl = \"https://h.example/x\"\nevents = [\"*\"]\nsigning_secret = \"s\"\n"
        )
    };
    let config = parse(&text(&name)).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.providers.contains_key(&name) && config.syncs.contains_key(&name));
    let long = format!("{name}n");
    let found = errs(&text(&long));
    let found: Vec<(usize, &str)> = found.iter().map(|e| (e.line, e.message.as_str())).collect();
    assert_eq!(found.len(), 3, "{found:?}");
    for ((line, message), (want, kind)) in found.iter().zip([(1, "provider"), (5, "sync"), (9, "webhook")]) {
        assert_eq!(*line, want, "{message}");
        assert!(message.starts_with(&format!("{kind} name `nnn")), "{message}");
        assert!(message.contains("has 65 characters; at most 64"), "{message}");
    }
}

#[test]
fn an_allow_list_entry_that_no_return_url_is_matched_on_is_refused_at_its_place() {
    let text = "[service]\nreturn_url_allow_list = [\n  \"https://app.example.com/connected\",\n  \
                \"https://user:pw-planted@app.example.com/\",\n  \"https://app.example.com/done#top\",\n  \
                \"http://app.example.com/back\",\n]\n\n[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\n";
    let found = errs(text);
    let places: Vec<(usize, usize, &str)> = found.iter().map(|e| (e.line, e.column, e.field.as_str())).collect();
    let field = "service.return_url_allow_list";
    assert_eq!(places, [(4, 3, field), (5, 3, field), (6, 3, field)]);
    assert!(found[0].message.contains("has user info"), "{}", found[0]);
    assert!(found[1].message.contains("remove `#top`"), "{}", found[1]);
    assert!(found[2].message.contains("must be https"), "{}", found[2]);
    let shown = parse(text).expect_err("refused").to_string();
    assert!(!shown.contains("planted"), "{shown}");
    let config = parse(
        "[service]\nreturn_url_allow_list = [\"https://app.example.com/connected\", \"http://127.0.0.1:3000/\"]\n\
         [providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.service.return_url_allow_list.len(), 2);
}

#[tokio::test]
async fn a_discovery_document_that_cannot_be_fetched_is_one_error_among_the_others() {
    // Nothing listens at the issuer: the fetch fails at once.
    let text = "[providers.idp]\npreset = \"generic\"\ncredentials_secret = \"s\"\nissuer = \"http://127.0.0.1:9\"\n\n\
                [providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\ndisplay_name = \"\"\n";
    let e = Config::parse_and_discover(text, "oauth-sync.toml")
        .await
        .expect_err("unreachable");
    let found: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        [(4, "providers.idp.issuer"), (9, "providers.g.display_name")],
        "{e}"
    );
    assert!(
        e.first()
            .message
            .starts_with("cannot fetch the OpenID Connect discovery document http://127.0.0.1:9/.well-known/"),
        "{e}"
    );
}

#[test]
fn endpoints_are_https_or_http_only_on_a_loopback_host() {
    let with = |key: &str, url: &str| {
        let mut table = String::from("[providers.g]\npreset = \"generic\"\ncredentials_secret = \"s\"\n");
        for (k, v) in [
            ("authorize_url", "https://id.example.com/authorize"),
            ("token_url", "https://id.example.com/token"),
            ("revocation_url", "https://id.example.com/revoke"),
            ("api_base_url", "https://api.example.com"),
        ] {
            let v = if k == key { url } else { v };
            table.push_str(&format!("{k} = \"{v}\"\n"));
        }
        table
    };
    for key in ["authorize_url", "token_url", "revocation_url", "api_base_url"] {
        for url in [
            "http://127.0.0.1:9000/x",
            "http://localhost:9000/x",
            "http://[::1]:9000/x",
        ] {
            Config::parse(&with(key, url), "f.toml").unwrap_or_else(|e| panic!("{key} = {url}: {e}"));
        }
        for url in [
            "http://id.example.com/x",
            "http://10.0.0.1/x",
            "http://localhost.example.com/x",
        ] {
            let e = err(&with(key, url));
            assert_eq!(e.field, format!("providers.g.{key}"), "{e}");
            assert!(e.message.contains("must use https"), "{e}");
        }
    }
}
