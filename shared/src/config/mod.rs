//! The configuration file: one TOML file declares the providers (each from a
//! built-in preset plus overrides) and the syncs. It is parsed once at start-up
//! and every mistake is reported with the file, line, column and field, all
//! at once ([`ConfigErrors`]): each table is read and checked on its own
//! (`errors.rs` says how a mistake reads, `limits.rs` what a value may be).
//!
//! ```toml
//! [service]
//! callback_url = "https://abc123.execute-api.eu-west-1.amazonaws.com/callback"
//!
//! [providers.exact]
//! preset = "exact_online"
//! credentials_secret = "oauth-sync/exact"   # {"client_id": ..., "client_secret": ...}
//! params = { region = "be" }
//!
//! [syncs.projects]
//! provider = "exact"
//! endpoint = "/sync/Project/Projects"
//! query = { "$select" = "ID,Code,Description,Timestamp" }
//! mode = "incremental"
//! cursor_field = "Timestamp"
//! ```

pub mod discovery;
mod errors;
mod limits;
mod provider;
mod service;
mod sync;
mod template;
mod webhooks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use toml::Spanned;
use toml::de::DeValue;
use url::Url;

use discovery::{Discovered, ServerMetadata};
use errors::{CREDENTIALS_NEVER_HERE, Locator};
pub use errors::{ConfigError, ConfigErrors, QUOTE_LIMIT, cut_quoted};
use limits::NameChars;
#[cfg(test)]
pub(crate) use limits::names_a_rust_type;
pub use limits::{MAX_DISPLAY_NAME_CHARS, MAX_NAME_CHARS, MAX_SCOPE_CHARS};
use provider::ProviderEntry;
pub use provider::{
    ClientAuth, DeadTokenRule, DeletedFeed, Discovery, IncrementalFilter, PRESETS_TOML, Pagination, PresetName,
    ProviderSettings, RateLimitHeaders, ResetFormat, provider_message,
};
use service::ServiceEntry;
pub use service::{
    DEFAULT_REFRESH_CONCURRENCY, DEFAULT_TOKEN_CONCURRENCY, MAX_REFRESH_CONCURRENCY, MAX_TOKEN_CONCURRENCY,
    ServiceSettings,
};
pub use sync::{Sync, SyncMode};
pub use template::{CONNECTION_PLACEHOLDERS, MAX_FILLED_LEN, TemplateError, fill_template};
pub use webhooks::{EVENT_TYPES, EventPattern, Webhook, webhook_url_allowed};

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "OAUTH_SYNC_CONFIG";

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceSettings,
    pub providers: BTreeMap<String, Provider>,
    pub syncs: BTreeMap<String, Sync>,
    /// `[webhooks.NAME]`: endpoints outside AWS that get signed events.
    pub webhooks: BTreeMap<String, Webhook>,
}

/// One configured provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The name used in URLs (`/connect/{name}`) and connection records.
    pub name: String,
    pub preset: PresetName,
    /// Secrets Manager secret holding `{"client_id": ..., "client_secret": ...}`.
    pub credentials_secret: String,
    pub settings: ProviderSettings,
    pub authorize_url: Url,
    pub token_url: Url,
    pub revocation_url: Option<Url>,
    /// The provider's discovery document, when its endpoints came from one.
    pub metadata: Option<ServerMetadata>,
}

impl Provider {
    /// Refreshes in flight to this provider at most, across the refresher's
    /// shard groups: its own `token_concurrency`, else `[service]`'s.
    pub fn token_concurrency(&self, service: &ServiceSettings) -> u64 {
        self.settings.token_concurrency.unwrap_or(service.token_concurrency)
    }

    /// Is an authorization response without `iss` refused (RFC 9207 §2.4)?
    /// `require_iss` when set, else what the discovery document announces.
    pub fn requires_iss(&self) -> bool {
        self.settings.issuer.is_some()
            && self.settings.require_iss.unwrap_or_else(|| {
                self.metadata
                    .as_ref()
                    .is_some_and(|m| m.authorization_response_iss_parameter_supported)
            })
    }
}

/// The document's top-level tables, each entry still unread, and the
/// mistakes in its shape (an unknown top-level key, `providers = 1`).
#[derive(Default)]
struct Tables<'a> {
    service: Option<Spanned<DeValue<'a>>>,
    providers: Vec<(String, Spanned<DeValue<'a>>)>,
    syncs: Vec<(String, Spanned<DeValue<'a>>)>,
    webhooks: Vec<(String, Spanned<DeValue<'a>>)>,
    errors: Vec<ConfigError>,
}

/// The tables a configuration file may have at the top.
const TOP_LEVEL: [&str; 4] = ["service", "providers", "syncs", "webhooks"];

impl<'a> Tables<'a> {
    /// Splits the text into its tables; a TOML syntax error is the only error.
    fn read(locate: &Locator<'a>) -> Result<Tables<'a>, ConfigErrors> {
        let mut tables = Tables::default();
        for (key, value) in locate.document()? {
            let key_span = key.span();
            let key = key.into_inner();
            let entries = match key.as_ref() {
                "service" => {
                    tables.service = Some(value);
                    continue;
                }
                "providers" => &mut tables.providers,
                "syncs" => &mut tables.syncs,
                "webhooks" => &mut tables.webhooks,
                other => {
                    let known = TOP_LEVEL.map(|k| format!("`{k}`")).join(", ");
                    tables.errors.push(locate.error(
                        Some(key_span),
                        other,
                        &format!("unknown field `{other}`, expected one of {known}"),
                    ));
                    continue;
                }
            };
            let span = value.span();
            match value.into_inner() {
                DeValue::Table(table) => {
                    entries.extend(
                        table
                            .into_iter()
                            .map(|(name, entry)| (name.into_inner().into_owned(), entry)),
                    );
                }
                other => tables.errors.push(locate.error(
                    Some(span),
                    &key,
                    &format!("invalid type: {}, expected a table", other.type_str()),
                )),
            }
        }
        Ok(tables)
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let (text, file) = read_file(path)?;
        Config::parse(&text, &file)
    }

    /// Reads the file named by `OAUTH_SYNC_CONFIG` (default `oauth-sync.toml`).
    pub fn from_env() -> Result<Config, ConfigErrors> {
        let path = std::env::var(CONFIG_ENV).unwrap_or_else(|_| "oauth-sync.toml".to_owned());
        Config::load(Path::new(&path))
    }

    /// Parses and validates configuration text; `file` names it in errors.
    /// Fetches nothing: a provider whose endpoints come from its discovery
    /// document is an error here (see [`Config::parse_and_discover`]).
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with(text, file, &Discovered::new())
    }

    /// [`Config::load`], fetching the discovery documents its providers need.
    pub async fn load_and_discover(path: &Path) -> Result<Config, ConfigErrors> {
        let (text, file) = read_file(path)?;
        Config::parse_and_discover(&text, &file).await
    }

    /// [`Config::parse`], after fetching the discovery document of every
    /// provider that sets `issuer` and leaves `authorize_url` or `token_url`
    /// unset, all at once. A provider whose endpoints are all given fetches
    /// nothing. A document that cannot be fetched or used is an error at the
    /// provider's `issuer` key that names the document's URL, reported with
    /// every other mistake in the file.
    pub async fn parse_and_discover(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let pending = Config::to_discover(text, file)?;
        if pending.is_empty() {
            return Config::parse(text, file);
        }
        let (discovered, failures) = discovery::fetch_each(pending.iter().map(|(issuer, _)| issuer.clone())).await;
        let errors = match Config::parse_with(text, file, &discovered) {
            Ok(config) if failures.is_empty() => return Ok(config),
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_vec(),
        };
        // A provider whose document failed has the error "this command does
        // not fetch" at its `issuer`: the reason it failed replaces it.
        let failed: Vec<ConfigError> = pending
            .into_iter()
            .filter_map(|(issuer, at)| {
                let (_, e) = failures.iter().find(|(failed, _)| *failed == issuer)?;
                Some(ConfigError {
                    message: cut_quoted(&e.to_string()),
                    ..at
                })
            })
            .collect();
        let same_place =
            |a: &ConfigError, b: &ConfigError| (a.line, a.column, &a.field) == (b.line, b.column, &b.field);
        let mut errors: Vec<ConfigError> = errors
            .into_iter()
            .filter(|e| !failed.iter().any(|f| same_place(e, f)))
            .collect();
        errors.extend(failed);
        // Not empty: each failure is about an issuer some provider needs.
        Err(ConfigErrors::new(errors).unwrap_or_else(|| Locator { text, file }.unplaced("", "discovery failed").into()))
    }

    /// Parses with the discovery documents at hand (by issuer); a provider
    /// that needs one not among them is an error. Each `[service]`,
    /// `[providers.NAME]`, `[syncs.NAME]` and `[webhooks.NAME]` table is read
    /// and checked on its own, so every mistake in the file is reported at
    /// once; a sync whose provider has a mistake is checked only for its own.
    pub fn parse_with(text: &str, file: &str, discovered: &Discovered) -> Result<Config, ConfigErrors> {
        let locate = Locator { text, file };
        let tables = Tables::read(&locate)?;
        let mut errors = tables.errors;
        let has_providers = !tables.providers.is_empty();

        let service = match tables.service {
            None => ServiceSettings::default(),
            Some(value) => {
                let span = value.span();
                let service = locate
                    .deserialize::<ServiceEntry>("service", value)
                    .map_err(|e| vec![e])
                    .and_then(|entry| service::resolve(&locate, span, entry));
                service.unwrap_or_else(|found| {
                    errors.extend(found);
                    ServiceSettings::default()
                })
            }
        };

        let (providers, broken) = read_each(&locate, "providers", tables.providers, &mut errors, |name, entry| {
            resolve_provider(name, entry, discovered)
        });
        let (syncs, _) = read_each(&locate, "syncs", tables.syncs, &mut errors, |name, entry| {
            sync::resolve(name, entry, &providers, &broken)
        });
        let (webhooks, _) = read_each(&locate, "webhooks", tables.webhooks, &mut errors, webhooks::resolve);

        if !has_providers {
            // An empty file is a mistake (a wrong path, a truncated upload), not a valid set-up.
            errors.push(locate.unplaced(
                "providers",
                "no providers configured: add a [providers.NAME] table with a `preset` and a \
                 `credentials_secret` (`oauth-sync presets` lists the presets)",
            ));
        }
        match ConfigErrors::new(errors) {
            Some(errors) => Err(errors),
            None => Ok(Config {
                service,
                providers,
                syncs,
                webhooks,
            }),
        }
    }

    /// The issuers whose documents the providers need, each with where an
    /// error about it points (its provider's `issuer` key). A table with a
    /// mistake is left to [`Config::parse_with`] to report.
    fn to_discover(text: &str, file: &str) -> Result<Vec<(String, ConfigError)>, ConfigErrors> {
        let locate = Locator { text, file };
        let mut pending = Vec::new();
        for (name, value) in Tables::read(&locate)?.providers {
            let (span, table) = (value.span(), format!("providers.{name}"));
            let Ok(entry) = locate.deserialize::<ProviderEntry>(&table, value) else {
                continue;
            };
            let Some(preset) = entry.preset else { continue };
            let settings = preset.settings().with_overrides(entry.overrides());
            if let Some(issuer) = issuer_to_discover(&settings) {
                pending.push((issuer.to_owned(), locate.field_error(span, &table, "issuer", "")));
            }
        }
        Ok(pending)
    }

    /// The discovery documents the providers were resolved with, by issuer
    /// (to read another text of the same configuration without fetching again).
    pub fn discovered(&self) -> Discovered {
        self.providers
            .values()
            .filter_map(|p| p.metadata.clone())
            .map(|m| (m.issuer.clone(), m))
            .collect()
    }

    /// The provider called `name`, or an error that lists the configured ones.
    pub fn provider(&self, name: &str) -> Result<&Provider, UnknownProvider> {
        self.providers.get(name).ok_or_else(|| UnknownProvider {
            name: name.to_owned(),
            known: self.providers.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

/// Each `[kind.NAME]` table read into its shape and resolved on its own:
/// what the good ones make, by name, and the names of those with a mistake
/// (each mistake, located, into `errors`).
fn read_each<E: serde::de::DeserializeOwned, T>(
    locate: &Locator<'_>,
    kind: &str,
    entries: Vec<(String, Spanned<DeValue<'_>>)>,
    errors: &mut Vec<ConfigError>,
    resolve: impl Fn(&str, E) -> Result<T, Vec<FieldProblem>>,
) -> (BTreeMap<String, T>, BTreeSet<String>) {
    let mut made = BTreeMap::new();
    let mut broken = BTreeSet::new();
    for (name, value) in entries {
        let (span, table) = (value.span(), format!("{kind}.{name}"));
        let resolved = locate
            .deserialize(&table, value)
            .map_err(|e| vec![e])
            .and_then(|entry| resolve(&name, entry).map_err(|problems| locate.problems(&span, &table, problems)));
        match resolved {
            Ok(value) => {
                made.insert(name, value);
            }
            Err(found) => {
                errors.extend(found);
                broken.insert(name);
            }
        }
    }
    (made, broken)
}

/// The file's text and the name errors give it.
fn read_file(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Ok((errors::utf8(bytes, &file)?, file)),
        Err(e) => Err(ConfigError {
            file,
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        }),
    }
}

/// The issuer whose discovery document fills this provider's endpoints:
/// set when `issuer` is and `authorize_url` or `token_url` is not. A preset
/// that gives all endpoints fetches nothing (no cold-start cost, no
/// dependency on the document's availability).
fn issuer_to_discover(settings: &ProviderSettings) -> Option<&str> {
    settings
        .issuer
        .as_deref()
        .filter(|_| settings.authorize_url.is_empty() || settings.token_url.is_empty())
}

/// Fills what the user and the preset left unset from the discovery
/// document: the endpoints, and the client authentication when the preset's
/// default is not one the token endpoint accepts.
fn apply_discovered(settings: &mut ProviderSettings, metadata: &ServerMetadata, client_auth_set: bool) {
    if settings.authorize_url.is_empty() {
        settings.authorize_url = metadata.authorization_endpoint.to_string();
    }
    if settings.token_url.is_empty() {
        settings.token_url = metadata.token_endpoint.to_string();
    }
    if settings.revocation_url.is_none() {
        settings.revocation_url = metadata.revocation_endpoint.as_ref().map(Url::to_string);
    }
    if !client_auth_set && !metadata.supports_client_auth(settings.client_auth) {
        let other = match settings.client_auth {
            ClientAuth::Basic => ClientAuth::Body,
            ClientAuth::Body => ClientAuth::Basic,
        };
        if metadata.supports_client_auth(other) {
            settings.client_auth = other;
        }
    }
}

/// A provider name that is not in the configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown provider `{name}` (configured: {known})")]
pub struct UnknownProvider {
    pub name: String,
    pub known: String,
}

/// (field, message) of a validation failure inside one table.
type FieldProblem = (&'static str, String);

/// What a table makes, when neither the checks made on their own
/// (`problems`) nor the rest found a problem; else every problem.
fn all_problems<T>(mut problems: Vec<FieldProblem>, rest: Result<T, FieldProblem>) -> Result<T, Vec<FieldProblem>> {
    match rest {
        Ok(made) if problems.is_empty() => Ok(made),
        Ok(_) => Err(problems),
        Err(problem) => {
            problems.push(problem);
            Err(problems)
        }
    }
}

/// Every problem of one provider table: its name, credentials written in
/// the file, and the first problem of its settings.
fn resolve_provider(name: &str, entry: ProviderEntry, discovered: &Discovered) -> Result<Provider, Vec<FieldProblem>> {
    let mut problems: Vec<FieldProblem> = limits::check_name("provider", name, NameChars::Lower, "it appears in URLs")
        .err()
        .into_iter()
        .collect();
    for (key, value) in [("client_id", &entry.client_id), ("client_secret", &entry.client_secret)] {
        if value.is_some() {
            problems.push((key, CREDENTIALS_NEVER_HERE.to_owned()));
        }
    }
    if let Some(preset) = entry.preset {
        problems.extend(settings_problems(&preset.settings().with_overrides(entry.overrides())));
    }
    all_problems(problems, provider_settings(name, entry, discovered))
}

/// What is out of bounds in a provider's settings (numbers, the display
/// name, scopes), each key on its own.
fn settings_problems(settings: &ProviderSettings) -> Vec<FieldProblem> {
    let numbers = [
        ("refresh_lead_secs", Some(settings.refresh_lead_secs)),
        ("min_refresh_interval_secs", Some(settings.min_refresh_interval_secs)),
        ("reuse_grace_secs", Some(settings.reuse_grace_secs)),
        ("refresh_token_idle_secs", settings.refresh_token_idle_secs),
        ("default_expires_in_secs", Some(settings.default_expires_in_secs)),
        ("error_budget_per_hour", settings.error_budget_per_hour),
        ("token_concurrency", settings.token_concurrency),
    ];
    let statuses = settings
        .dead_token
        .iter()
        .filter_map(|rule| rule.status)
        .map(|status| limits::check_whole("status", status).map_err(|(_, message)| ("dead_token", message)));
    let display_name = settings
        .display_name
        .iter()
        .map(|text| limits::check_display_name(text).map_err(|message| ("display_name", message)));
    let scopes = settings
        .scopes
        .iter()
        .map(|scope| limits::check_scope(scope).map_err(|message| ("scopes", message)))
        .chain(
            settings
                .offline_scope
                .iter()
                .map(|scope| limits::check_scope(scope).map_err(|message| ("offline_scope", message))),
        );
    numbers
        .into_iter()
        .filter_map(|(key, value)| Some(limits::check_whole(key, value?)))
        .chain(statuses)
        .chain(display_name)
        .chain(scopes)
        .filter_map(Result::err)
        .collect()
}

/// The provider its preset, overrides and discovery document make, or the
/// first problem found on the way.
fn provider_settings(name: &str, entry: ProviderEntry, discovered: &Discovered) -> Result<Provider, FieldProblem> {
    let preset = entry.preset.ok_or((
        "preset",
        format!(
            "missing field `preset`; one of: {}",
            PresetName::ALL.map(PresetName::as_str).join(", ")
        ),
    ))?;
    let credentials_secret = entry.credentials_secret.clone().ok_or((
        "credentials_secret",
        "missing field `credentials_secret`: the Secrets Manager secret holding {\"client_id\": ..., \"client_secret\": ...}".to_owned(),
    ))?;
    let mut settings = preset.settings().with_overrides(entry.overrides());
    check_params_are_used(&settings, entry.params.iter().flat_map(|p| p.keys()))?;
    let metadata = match issuer_to_discover(&settings) {
        None => None,
        Some(issuer) => {
            let url = discovery::document_url(issuer).map_err(|e| ("issuer", e.to_string()))?;
            let metadata = discovered.get(issuer).ok_or_else(|| {
                (
                    "issuer",
                    format!(
                        "the endpoints come from {url}, which this command does not fetch: set `authorize_url` \
                         and `token_url`, or check the file with `oauth-sync config check`"
                    ),
                )
            })?;
            apply_discovered(&mut settings, metadata, entry.client_auth.is_some());
            Some(metadata.clone())
        }
    };
    if settings.require_iss.is_some() && settings.issuer.is_none() {
        return Err((
            "require_iss",
            "`require_iss` needs `issuer`: the `iss` of an answer is compared with it".to_owned(),
        ));
    }

    let endpoint = |key: &'static str, template: &str| -> Result<Url, FieldProblem> {
        if template.is_empty() {
            return Err((
                key,
                format!(
                    "missing field `{key}` (preset `{preset}` does not provide one; or set `issuer` to read the \
                     endpoints from the server's OpenID Connect discovery document)"
                ),
            ));
        }
        let filled = fill_template(template, &settings.params, &[]).map_err(|e| (key, e.to_string()))?;
        parse_http_url(&filled).map_err(|e| (key, e))
    };
    let authorize_url = endpoint("authorize_url", &settings.authorize_url)?;
    let token_url = endpoint("token_url", &settings.token_url)?;
    let revocation_url = match &settings.revocation_url {
        Some(template) => Some(endpoint("revocation_url", template)?),
        None => None,
    };
    if let Some(template) = &settings.api_base_url {
        let filled = fill_template(template, &settings.params, CONNECTION_PLACEHOLDERS)
            .map_err(|e| ("api_base_url", e.to_string()))?;
        // Per-connection values are filled at run time; check the shape with a stand-in.
        let sample = filled
            .replace("{instance_url}", "https://instance.example")
            .replace("{api_domain}", "https://api.example");
        let sample = CONNECTION_PLACEHOLDERS
            .iter()
            .fold(sample, |s, p| s.replace(&format!("{{{p}}}"), "x"));
        parse_http_url(&sample).map_err(|e| ("api_base_url", e))?;
    }
    for (param, discovery) in &settings.discover {
        let url = fill_template(&discovery.url, &settings.params, &[]).map_err(|e| ("discover", e.to_string()))?;
        parse_http_url(&url).map_err(|e| ("discover", format!("{param}: {e}")))?;
        if discovery.field.is_empty() {
            return Err(("discover", format!("{param}: `field` must name where the value is")));
        }
    }
    if settings.authorize_params.contains_key("client_secret") {
        // The authorize URL goes through the user's browser.
        return Err(("authorize_params", CREDENTIALS_NEVER_HERE.to_owned()));
    }
    if let Some(reserved) = settings
        .authorize_params
        .keys()
        .find(|key| RESERVED_AUTHORIZE_PARAMS.contains(&key.as_str()))
    {
        return Err((
            "authorize_params",
            format!("`{reserved}` is set by oauth-sync for every login and cannot be configured"),
        ));
    }
    if settings.reuse_grace_secs > 0 && !settings.rotates_refresh_tokens {
        return Err((
            "reuse_grace_secs",
            "a reuse grace period needs `rotates_refresh_tokens = true`".to_owned(),
        ));
    }
    if preset == PresetName::ExactOnline && settings.refresh_lead_secs > 30 {
        return Err((
            "refresh_lead_secs",
            "Exact Online refuses refreshes more than ~30 s before expiry (TooEarlyToRefreshTokens); use at most 30"
                .to_owned(),
        ));
    }
    Ok(Provider {
        name: name.to_owned(),
        preset,
        credentials_secret,
        settings,
        authorize_url,
        token_url,
        revocation_url,
        metadata,
    })
}

/// Authorize-URL parameters each login sets itself (RFC 6749 §4.1.1, RFC 7636).
const RESERVED_AUTHORIZE_PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// A `params` key the user set that no URL uses is a typo (`tennant`), which
/// would otherwise leave the preset's default in place without a word. (A
/// preset's own default may go unused when the user replaces its URLs.)
fn check_params_are_used<'a>(
    settings: &ProviderSettings,
    mut user_keys: impl Iterator<Item = &'a String>,
) -> Result<(), FieldProblem> {
    let templates = [
        Some(&settings.authorize_url),
        Some(&settings.token_url),
        settings.revocation_url.as_ref(),
        settings.api_base_url.as_ref(),
    ];
    let used = |key: &str| {
        let placeholder = format!("{{{key}}}");
        templates.iter().flatten().any(|t| t.contains(&placeholder))
            || settings.discover.values().any(|d| d.url.contains(&placeholder))
    };
    match user_keys.find(|key| !used(key)) {
        None => Ok(()),
        Some(unused) => {
            let mut known: Vec<String> = settings
                .params
                .keys()
                .filter(|k| used(k))
                .map(|k| format!("`{k}`"))
                .collect();
            known.dedup();
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            Err((
                "params",
                format!("no URL of this provider uses `{{{unused}}}` (its parameters: {known})"),
            ))
        }
    }
}

/// Parses an absolute URL the service may send to or send people to, with a
/// message fit for a person: https, or http only to a loopback host
/// ([`secure_url`]).
pub fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = parse_absolute(text)?;
    if !secure_url(&url) {
        return Err(format!(
            "`{text}` must use https (http:// only to localhost or a loopback address, for local test servers)"
        ));
    }
    Ok(url)
}

/// An absolute http(s) URL with a host, whichever host: the caller judges it.
pub(crate) fn parse_absolute(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid URL `{text}`: {e}"))?;
    match url.scheme() {
        "https" | "http" if url.host().is_some() => Ok(url),
        _ => Err(format!("invalid URL `{text}`: expected an https:// URL with a host")),
    }
}

/// The one rule for every URL of the configuration (endpoints, discovery
/// documents, webhooks, return URLs): https, or http to a loopback host
/// (`localhost`, 127.0.0.0/8, `::1`), a test server on the same machine.
/// Plain http anywhere else would carry tokens and codes in the clear.
pub fn secure_url(url: &Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host() {
            Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests;
