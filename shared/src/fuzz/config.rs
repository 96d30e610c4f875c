//! The configuration file: valid documents generated from the schema, then
//! mutated with the schema's own keys set to wrong types and edge values,
//! keys removed or duplicated, text cut or nested deeply.

use proptest::prelude::*;
use toml::{Table, Value};

use super::{assert_clear_error, cases, edge_integer, hostile_string, raw_bytes, truncate};
use crate::config::{CONNECTION_PLACEHOLDERS, Config, ConfigErrors, MAX_FILLED_LEN, PresetName, fill_template};

/// Client credentials a user pasted into the file by mistake; no error may quote them.
const PLANTED_SECRET: &str = "cs-planted-7d1e0a93b4";
const PLANTED_ID: &str = "ci-planted-52c8f0e6aa";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "oauth-sync.toml")
}

/// Each error is clear (one line, bounded, no planted secret, no Rust type
/// name), and so is the one-line summary a function's start-up failure logs.
fn assert_clear_errors(errors: &ConfigErrors, secrets: &[&str]) -> Result<(), TestCaseError> {
    for error in errors {
        assert_clear_error(error, secrets)?;
        let rust_type = crate::config::names_a_rust_type(&error.message);
        prop_assert!(rust_type.is_none(), "names {rust_type:?}: {error}");
    }
    assert_clear_error(&errors.in_one_line(), secrets)
}

/// The keys of every table in the schema, top level first.
const KEYS: &[&str] = &[
    // top level and [service]
    "service",
    "providers",
    "syncs",
    "callback_url",
    "token_key_secret",
    "link_key_secret",
    "return_url_allow_list",
    // [providers.NAME]
    "preset",
    "credentials_secret",
    "client_id",
    "client_secret",
    "display_name",
    "issuer",
    "authorize_url",
    "token_url",
    "revocation_url",
    "params",
    "client_auth",
    "scopes",
    "offline_scope",
    "authorize_params",
    "pkce",
    "redirect_requires_https",
    "refresh_lead_secs",
    "min_refresh_interval_secs",
    "rotates_refresh_tokens",
    "reuse_grace_secs",
    "resend_after_unknown_outcome",
    "refresh_token_idle_secs",
    "default_expires_in_secs",
    "dead_token",
    "api_base_url",
    "pagination",
    "rate_limits",
    "error_budget_per_hour",
    "rate_key",
    "records_path",
    "record_key",
    "incremental",
    "deleted_feed",
    "discover",
    // inside those
    "style",
    "param",
    "next_field",
    "items_field",
    "offset_param",
    "limit_param",
    "first",
    "status",
    "field",
    "equals",
    "message_contains",
    "url",
    "filter",
    "initial",
    "region",
    "tenant",
    // [syncs.NAME]
    "provider",
    "endpoint",
    "query",
    "headers",
    "records",
    "primary_key",
    "fields",
    "mode",
    "cursor_field",
    "deleted_entity_type",
    "sweep_interval_secs",
    "interval_secs",
];

fn preset() -> impl Strategy<Value = PresetName> {
    proptest::sample::select(PresetName::ALL.to_vec())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => hostile_string(),
    ]
}

/// Any TOML value: every type, edge numbers, hostile strings, nesting.
///
/// One function: a generator with one arm per shape of configuration value
/// (test-only).
fn toml_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        hostile_string().prop_map(Value::String),
        proptest::sample::select(PresetName::ALL.to_vec()).prop_map(|p| Value::String(p.as_str().to_owned())),
        proptest::sample::select(vec![
            "https://api.test/x",
            "http://[::1]:1/",
            "https://h/{tenant}/{region}",
            "https://h/{instance_url}",
            "{unclosed",
            "odata_v2",
            "basic",
            "incremental",
            "delta",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        edge_integer().prop_map(Value::Integer),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(1e308), Just(0.5)].prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        Just(Value::Datetime(
            "1979-05-27T07:32:00Z".parse().unwrap_or_else(|e| panic!("{e}"))
        )),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..4).prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A valid provider table and what it should resolve to.
#[derive(Debug, Clone)]
struct ValidProvider {
    name: String,
    preset: PresetName,
    credentials_secret: String,
    display_name: String,
    scopes: Vec<String>,
    refresh_lead_secs: u64,
    pkce: bool,
    authorize_params: std::collections::BTreeMap<String, String>,
}

impl ValidProvider {
    fn table(&self) -> Table {
        let mut table = Table::new();
        table.insert("preset".into(), Value::String(self.preset.as_str().into()));
        table.insert(
            "credentials_secret".into(),
            Value::String(self.credentials_secret.clone()),
        );
        table.insert("display_name".into(), Value::String(self.display_name.clone()));
        table.insert(
            "scopes".into(),
            Value::Array(self.scopes.iter().cloned().map(Value::String).collect()),
        );
        let lead = i64::try_from(self.refresh_lead_secs).unwrap_or(i64::MAX);
        table.insert("refresh_lead_secs".into(), Value::Integer(lead));
        table.insert("pkce".into(), Value::Boolean(self.pkce));
        let params: Table = self
            .authorize_params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        table.insert("authorize_params".into(), Value::Table(params));
        if self.preset == PresetName::Generic {
            table.insert(
                "authorize_url".into(),
                Value::String("https://id.test/authorize".into()),
            );
            table.insert("token_url".into(), Value::String("https://id.test/token".into()));
        }
        table
    }
}

/// A name the user chooses (a provider's, a sync's): one an error may quote,
/// so never one the clear-error check takes for a Rust type (`u8`, `enum`).
fn user_name(pattern: &'static str) -> impl Strategy<Value = String> {
    pattern.prop_filter(
        "a Rust type's name, which an error quoting it would be taken for",
        |name| crate::config::names_a_rust_type(name).is_none(),
    )
}

fn valid_provider() -> impl Strategy<Value = ValidProvider> {
    (
        user_name("[a-z0-9_-]{1,20}"),
        preset(),
        any::<String>(),
        // One line a person can read (config::MAX_DISPLAY_NAME_CHARS), and RFC 6749 scope tokens.
        "[^\\p{C}\\p{Z}][^\\p{C}\\p{Zl}\\p{Zp}]{0,99}",
        proptest::collection::vec("[!#-\\[\\]-~]{1,40}", 0..4),
        0u64..=30,
        any::<bool>(),
        proptest::collection::btree_map("x_[a-z_]{1,10}", any::<String>(), 0..3),
    )
        .prop_map(
            |(name, preset, credentials_secret, display_name, scopes, refresh_lead_secs, pkce, authorize_params)| {
                ValidProvider {
                    name,
                    preset,
                    credentials_secret,
                    display_name,
                    scopes,
                    refresh_lead_secs,
                    pkce,
                    authorize_params,
                }
            },
        )
}

/// A valid document: `[service]`, providers, and a sync of the first one.
fn valid_document() -> impl Strategy<Value = (Table, Vec<ValidProvider>)> {
    (
        proptest::collection::vec(valid_provider(), 1..4),
        any::<bool>(),
        proptest::option::of(user_name("[a-z]{1,10}")),
    )
        .prop_map(|(providers, with_service, sync)| {
            let mut doc = Table::new();
            if with_service {
                let mut service = Table::new();
                service.insert(
                    "callback_url".into(),
                    Value::String("https://abc.execute-api.eu-west-1.amazonaws.com/callback".into()),
                );
                doc.insert("service".into(), Value::Table(service));
            }
            let mut tables = Table::new();
            for provider in &providers {
                tables.insert(provider.name.clone(), Value::Table(provider.table()));
            }
            doc.insert("providers".into(), Value::Table(tables));
            if let Some(sync) = sync {
                let mut table = Table::new();
                table.insert("provider".into(), Value::String(providers[0].name.clone()));
                table.insert("endpoint".into(), Value::String("https://api.test/items".into()));
                table.insert("primary_key".into(), Value::Array(vec![Value::String("id".into())]));
                table.insert(
                    "pagination".into(),
                    Value::Table(Table::from_iter([(
                        "style".into(),
                        Value::String("link_header".into()),
                    )])),
                );
                doc.insert(
                    "syncs".into(),
                    Value::Table(Table::from_iter([(sync, Value::Table(table))])),
                );
            }
            // Providers with the same name: the last one generated wins.
            let mut seen = std::collections::BTreeMap::new();
            for provider in providers {
                seen.insert(provider.name.clone(), provider);
            }
            (doc, seen.into_values().collect())
        })
}

/// One change to a document, aimed at a table by index.
#[derive(Debug, Clone)]
enum Mutation {
    Set {
        table: usize,
        key: String,
        value: Value,
    },
    Remove {
        table: usize,
        key: usize,
    },
    /// The client credentials, pasted where they never belong.
    PlantCredentials {
        table: usize,
        nested: bool,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), key(), toml_value()).prop_map(|(table, key, value)| Mutation::Set { table, key, value }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(table, key)| Mutation::Remove { table, key }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(table, nested)| Mutation::PlantCredentials { table, nested }),
    ]
}

/// The key paths of every table in the document, the root (empty) first.
fn table_paths(table: &Table, prefix: &[String], out: &mut Vec<Vec<String>>) {
    out.push(prefix.to_vec());
    for (key, value) in table {
        if let Value::Table(child) = value {
            let mut path = prefix.to_vec();
            path.push(key.clone());
            table_paths(child, &path, out);
        }
    }
}

fn apply(doc: &mut Table, mutation: &Mutation) {
    let index = match mutation {
        Mutation::Set { table, .. } | Mutation::Remove { table, .. } | Mutation::PlantCredentials { table, .. } => {
            *table
        }
    };
    let mut paths = Vec::new();
    table_paths(doc, &[], &mut paths);
    let mut target = doc;
    for key in &paths[index % paths.len()] {
        match target.get_mut(key) {
            Some(Value::Table(child)) => target = child,
            _ => return,
        }
    }
    apply_to(target, mutation);
}

fn apply_to(table: &mut Table, mutation: &Mutation) {
    match mutation {
        Mutation::Set { key, value, .. } => {
            table.insert(key.clone(), value.clone());
        }
        Mutation::Remove { key, .. } => {
            if let Some(name) = table.keys().nth(key % table.len().max(1)).cloned() {
                table.remove(&name);
            }
        }
        Mutation::PlantCredentials { nested, .. } => {
            let (secret, id) = if *nested {
                (
                    Value::Array(vec![Value::String(PLANTED_SECRET.into())]),
                    Value::Table(Table::from_iter([("v".into(), Value::String(PLANTED_ID.into()))])),
                )
            } else {
                (Value::String(PLANTED_SECRET.into()), Value::String(PLANTED_ID.into()))
            };
            table.insert("client_secret".into(), secret);
            table.insert("client_id".into(), id);
        }
    }
}

/// Damage at the text level: a cut, a repeated line (a duplicate key or
/// table), a stray character, or deep nesting.
fn damage(text: &str, how: u8, at: usize, depth: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    match how % 10 {
        0 => truncate(text, at).to_owned(),
        1 if !lines.is_empty() => {
            let i = at % lines.len();
            let mut out = lines.clone();
            out.insert(i, lines[i]);
            out.join("\n")
        }
        2 => {
            let cut = truncate(text, at);
            let stray = ['"', '\'', '[', ']', '{', '=', '\n', '\\', '\u{0}', '\u{2028}'][depth % 10];
            format!("{cut}{stray}{}", &text[cut.len()..])
        }
        3 => format!("{text}\nx = {}1{}\n", "[".repeat(depth), "]".repeat(depth)),
        4 => format!("{text}\nx = {}1{}\n", "{a=".repeat(depth), "}".repeat(depth)),
        5 => format!("[{}b]\n{text}", "a.".repeat(depth)),
        _ => text.to_owned(),
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// A generated valid document parses, and each provider has exactly the
    /// values its table set.
    #[test]
    fn a_valid_document_parses_to_what_it_says((doc, providers) in valid_document()) {
        let text = toml::to_string(&doc).map_err(|e| TestCaseError::reject(e.to_string()))?;
        let config = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(config.providers.len(), providers.len());
        for want in &providers {
            let got = &config.providers[&want.name];
            prop_assert_eq!(got.preset, want.preset);
            prop_assert_eq!(&got.credentials_secret, &want.credentials_secret);
            prop_assert_eq!(got.settings.display_name.as_deref(), Some(want.display_name.as_str()));
            prop_assert_eq!(&got.settings.scopes, &want.scopes);
            prop_assert_eq!(got.settings.refresh_lead_secs, want.refresh_lead_secs);
            prop_assert_eq!(got.settings.pkce, want.pkce);
            for (key, value) in &want.authorize_params {
                prop_assert_eq!(got.settings.authorize_params.get(key), Some(value));
            }
            prop_assert!(got.token_url.as_str().len() <= text.len() + 256);
        }
    }

    /// Whatever the mutations, a document parses or gives one clear, located
    /// error that never quotes client credentials; no URL it resolves is
    /// larger than the file that made it.
    #[test]
    fn a_mutated_document_parses_or_gives_a_clear_error(
        (mut doc, _) in valid_document(),
        mutations in proptest::collection::vec(mutation(), 0..5),
        how in any::<u8>(),
        at in any::<usize>(),
        depth in 1usize..2_000,
    ) {
        for mutation in &mutations {
            apply(&mut doc, mutation);
        }
        let Ok(text) = toml::to_string(&doc) else {
            return Ok(());
        };
        let text = damage(&text, how, at, depth);
        match parse(&text) {
            Err(errors) => {
                assert_clear_errors(&errors, &[PLANTED_SECRET, PLANTED_ID])?;
                for e in &errors {
                    prop_assert!(e.line <= text.lines().count() + 1, "line {} of {}", e.line, text.lines().count());
                }
            }
            Ok(config) => {
                prop_assert!(!text.contains("client_secret = "), "client credentials were accepted");
                for provider in config.providers.values() {
                    let urls = [Some(&provider.authorize_url), Some(&provider.token_url), provider.revocation_url.as_ref()];
                    for url in urls.into_iter().flatten() {
                        prop_assert!(url.as_str().len() <= MAX_FILLED_LEN, "a {}-byte URL", url.as_str().len());
                    }
                }
            }
        }
    }

    /// A placeholder repeated in a URL template, with a long value: the file
    /// stays small, the URL it makes must too.
    #[test]
    fn repeated_placeholders_cannot_blow_a_small_file_up(
        preset in preset(),
        key in proptest::sample::select(vec!["authorize_url", "token_url", "revocation_url", "api_base_url"]),
        repeats in 1usize..2_000,
        value_len in 1usize..2_000,
    ) {
        let template = format!("https://h.test/{}", "{p}".repeat(repeats));
        let mut lines = vec![
            format!("preset = \"{preset}\""),
            "credentials_secret = \"s\"".to_owned(),
            format!("params = {{ p = \"{}\" }}", "a".repeat(value_len)),
            format!("{key} = \"{template}\""),
        ];
        for (other, url) in [("authorize_url", "https://h.test/a/{p}"), ("token_url", "https://h.test/t")] {
            if other != key {
                lines.push(format!("{other} = \"{url}\""));
            }
        }
        let text = format!("[providers.x]\n{}\n", lines.join("\n"));
        match parse(&text) {
            Err(errors) => assert_clear_errors(&errors, &[])?,
            Ok(config) => {
                let provider = &config.providers["x"];
                let urls = [Some(&provider.authorize_url), Some(&provider.token_url), provider.revocation_url.as_ref()];
                for url in urls.into_iter().flatten() {
                    prop_assert!(url.as_str().len() <= MAX_FILLED_LEN, "a {}-byte URL from a {}-byte file", url.as_str().len(), text.len());
                }
                // The data API's base is filled again for every request of a sync.
                if let Some(base) = &provider.settings.api_base_url {
                    let filled = fill_template(base, &provider.settings.params, CONNECTION_PLACEHOLDERS);
                    prop_assert!(filled.is_ok_and(|url| url.len() <= MAX_FILLED_LEN), "api_base_url grows past a URL");
                }
            }
        }
    }

    /// Text that is not a configuration file at all.
    #[test]
    fn raw_text_gives_a_clear_error(bytes in raw_bytes()) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(errors) = parse(&text) {
            assert_clear_errors(&errors, &[])?;
        }
    }
}
