//! What oauth-sync knows about one OAuth provider: endpoints, client
//! authentication, refresh timing and rotation, how a dead refresh token
//! looks, and how its data API pages and rate-limits.
//!
//! Every field exists three times: resolved in [`ProviderSettings`], and as an
//! optional override in a preset (`presets.toml`) and in a user's
//! `[providers.NAME]` table. One macro declares them once so the three never
//! drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the client authenticates at the token and revocation endpoints
/// (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`.
    Basic,
    /// `client_id` and `client_secret` as form fields in the request body.
    Body,
}

/// One way a provider says "this refresh token is dead; the user must log in
/// again". A response matches when every given part matches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeadTokenRule {
    /// HTTP status the answer must have; any status when absent.
    pub status: Option<u16>,
    /// Top-level JSON field to look at (`error` for RFC 6749 answers,
    /// `status` for HubSpot).
    #[serde(default = "default_error_field")]
    pub field: String,
    /// The value that field must have.
    pub equals: String,
    /// A substring the provider's message must contain (case-insensitive).
    pub message_contains: Option<String>,
}

fn default_error_field() -> String {
    "error".to_owned()
}

/// How the data API pages through results.
// `remote = "Self"`: the derives become inherent functions, wrapped below by
// a `Deserialize` that also refuses unknown keys next to a style without
// fields (serde ignores them in an internally tagged unit variant).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(remote = "Self", tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// OData v2: `{"d": {"results": [...], "__next": "<full url>"}}` (Exact Online).
    OdataV2,
    /// OData v4: `value` + `@odata.nextLink`, used verbatim (Microsoft Graph).
    OdataNextLink,
    /// Salesforce: `records`, `done`, `nextRecordsUrl` (relative to the instance).
    NextRecordsUrl,
    /// A cursor from the response sent back as a query parameter.
    Cursor {
        /// Query parameter that carries the cursor (`after`, `pageToken`).
        param: String,
        /// Dotted path of the next cursor in the response (`paging.next.after`).
        next_field: String,
        /// Dotted path of the record array (`results`, `items`).
        items_field: String,
    },
    /// RFC 8288 `Link: <url>; rel="next"`.
    LinkHeader,
    /// Offset and limit query parameters.
    Offset {
        offset_param: String,
        limit_param: String,
        /// The offset of the first record (QuickBooks counts from 1).
        #[serde(default)]
        first: u64,
    },
    /// A page number query parameter (Xero `page=1, 2, …`).
    PageNumber {
        param: String,
        #[serde(default = "one")]
        first: u64,
    },
}

fn one() -> u64 {
    1
}

impl<'de> Deserialize<'de> for Pagination {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = toml::Table::deserialize(deserializer)?;
        let style = table.get("style").and_then(toml::Value::as_str).unwrap_or_default();
        if ["odata_v2", "odata_next_link", "next_records_url", "link_header"].contains(&style)
            && let Some(extra) = table.keys().find(|key| *key != "style")
        {
            return Err(D::Error::custom(format!(
                "unknown field `{extra}`: pagination style `{style}` has no other fields"
            )));
        }
        if let Some(first) = table.get("first") {
            // Said here: serde's error from inside would not name the key.
            let rule = super::limits::Whole::of("first");
            let problem = rule.and_then(|rule| match first {
                toml::Value::Integer(value) => rule.check(i128::from(*value)).err(),
                toml::Value::Float(value) => {
                    Some(format!("must be {}; got `{value}`, which is not whole", rule.words()))
                }
                toml::Value::String(text) => Some(format!(
                    "must be {}; got the string \"{text}\" (write the number without quotes)",
                    rule.words()
                )),
                other => Some(format!("must be {}; got {}", rule.words(), other.type_str())),
            });
            if let Some(problem) = problem {
                return Err(D::Error::custom(format!("`first` {problem}")));
            }
        }
        Pagination::deserialize(toml::Value::Table(table)).map_err(|e| D::Error::custom(e.message()))
    }
}

impl Serialize for Pagination {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Pagination::serialize(self, serializer)
    }
}

/// How a reset header counts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetFormat {
    /// Unix time in milliseconds (Exact Online).
    EpochMs,
    /// Unix time in seconds.
    EpochSecs,
    /// Seconds from now.
    DeltaSecs,
}

/// The headers of one rate-limit window (per minute, per day…) that tell how
/// much of it is left, so a sync slows down before the 429 instead of after
/// it. `Retry-After` is always honoured as well.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitHeaders {
    pub remaining_header: String,
    pub reset_header: Option<String>,
    pub reset_format: Option<ResetFormat>,
}

/// How an incremental sync asks for what changed since its cursor: a query
/// parameter whose value is `filter` with `{field}` and `{cursor}` filled in
/// (Exact Online: `$filter` = `{field} gt {cursor}L`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalFilter {
    pub param: String,
    pub filter: String,
    /// The cursor of a first run (Exact Online: `1`); without it a first run
    /// sends no filter.
    pub initial: Option<String>,
}

/// A provider's feed of deleted records (Exact Online `sync/Deleted`): paged
/// like the data, filtered by entity type, ordered by its own cursor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeletedFeed {
    /// Path under `api_base_url`.
    pub endpoint: String,
    /// The field holding the deleted record's primary key.
    pub key_field: String,
    /// The field naming the entity type, filtered on with `{type_field} eq {n}`.
    pub type_field: String,
    /// The field that orders the feed (its cursor).
    pub cursor_field: String,
    /// Query parameters every request of the feed carries (Exact Online:
    /// `$select`, mandatory on its `sync/` endpoints, `sync/Deleted` included).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

/// A connection parameter learned at login by one API call with the new
/// access token (Exact Online's division from `current/Me`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// The URL to call (`{name}` placeholders from `params`).
    pub url: String,
    /// Dotted path of the value in the JSON answer; numbers index arrays
    /// (`d.results.0.CurrentDivision`).
    pub field: String,
}

/// Combining a preset value with a user's override: lists and scalars are
/// replaced, maps are merged key by key.
trait Merge {
    fn merge_from(&mut self, other: Self);
}

macro_rules! replace_on_merge {
    ($($ty:ty),* $(,)?) => {
        $(impl Merge for $ty {
            fn merge_from(&mut self, other: Self) {
                *self = other;
            }
        })*
    };
}

replace_on_merge!(
    String,
    bool,
    u64,
    ClientAuth,
    Vec<String>,
    Vec<DeadTokenRule>,
    Option<String>,
    Option<u64>,
    Option<bool>,
    Option<Pagination>,
    Vec<RateLimitHeaders>,
    Option<IncrementalFilter>,
    Option<DeletedFeed>,
);

impl<V> Merge for BTreeMap<String, V> {
    fn merge_from(&mut self, other: Self) {
        self.extend(other);
    }
}

macro_rules! provider_fields {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $default:expr; )*) => {
        /// A provider after its preset and the user's overrides are applied;
        /// serialized in the shape of a config table (`oauth-sync --json presets`).
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct ProviderSettings {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// Optional values for every [`ProviderSettings`] field, as a preset or
        /// a user's `[providers.NAME]` table gives them.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct ProviderFields {
            $( #[serde(default)] pub(crate) $field: Option<$ty>, )*
        }

        /// A user's `[providers.NAME]` table: the preset it starts from, the
        /// Secrets Manager secret with its client credentials, and overrides.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct ProviderEntry {
            pub(crate) preset: Option<PresetName>,
            pub(crate) credentials_secret: Option<String>,
            // Accepted only to reject them with a clear message: client
            // credentials never live in the config file.
            pub(crate) client_id: Option<toml::Value>,
            pub(crate) client_secret: Option<toml::Value>,
            $( #[serde(default)] pub(crate) $field: Option<$ty>, )*
        }

        impl ProviderSettings {
            /// The values a field has when neither preset nor user sets it.
            fn base() -> Self {
                Self { $( $field: $default, )* }
            }

            fn apply(&mut self, fields: ProviderFields) {
                $( if let Some(value) = fields.$field { self.$field.merge_from(value); } )*
            }
        }

        impl ProviderEntry {
            pub(crate) fn overrides(&self) -> ProviderFields {
                ProviderFields { $( $field: self.$field.clone(), )* }
            }
        }
    };
}

provider_fields! {
    /// The provider's name as people know it, on the confirmation page
    /// ("Connect your Exact Online account"); the provider's key when absent.
    display_name: Option<String> = None;
    /// The authorization server's issuer identifier (RFC 9207). When the
    /// authorization response carries `iss`, it must equal this; absent where
    /// it is not one fixed value (Microsoft's v2 issuer names the tenant).
    /// With `authorize_url` or `token_url` unset, the endpoints, supported
    /// client authentication and scopes are read from
    /// `{issuer}/.well-known/openid-configuration` when the configuration is
    /// loaded (OpenID Connect Discovery 1.0); keys that are set still win.
    issuer: Option<String> = None;
    /// Refuse an authorization response without `iss` (RFC 9207 §2.4).
    /// Unset: refused when the provider's discovery document says
    /// `authorization_response_iss_parameter_supported: true`. Needs `issuer`.
    require_iss: Option<bool> = None;
    /// Authorization endpoint; `{name}` placeholders are filled from `params`.
    authorize_url: String = String::new();
    /// Token endpoint (code exchange and refresh).
    token_url: String = String::new();
    /// RFC 7009 revocation endpoint, when the provider has one.
    revocation_url: Option<String> = None;
    /// Values for the `{name}` placeholders in the URLs (tenant, region, host).
    params: BTreeMap<String, String> = BTreeMap::new();
    /// Client authentication at the token endpoint.
    client_auth: ClientAuth = ClientAuth::Body;
    /// Scopes requested at login.
    scopes: Vec<String> = Vec::new();
    /// The scope without which no refresh token comes back (`offline_access`),
    /// named in warnings when a login returns none.
    offline_scope: Option<String> = None;
    /// Extra authorize parameters (`access_type = "offline"`, `prompt = "consent"`).
    authorize_params: BTreeMap<String, String> = BTreeMap::new();
    /// Send a PKCE S256 challenge (RFC 7636) at login.
    pkce: bool = true;
    /// The provider refuses redirect URIs that are not https (Exact Online
    /// refuses localhost too).
    redirect_requires_https: bool = false;
    /// Refresh when the access token has at most this many seconds left.
    refresh_lead_secs: u64 = 300;
    /// At most one refresh per this many seconds (Exact Online: 570).
    min_refresh_interval_secs: u64 = 0;
    /// Refreshes in flight to this provider's token endpoint at most, across
    /// every shard group of the token-refresher (each of the stack's
    /// `RefreshGroups` keeps `token_concurrency / groups`); unset:
    /// `[service] token_concurrency`. Fewer while the provider answers
    /// refreshes with 429 or 503 (halved per such answer, one more per
    /// `limit` refreshes that succeed).
    token_concurrency: Option<u64> = None;
    /// Each refresh returns a new refresh token and invalidates the old one.
    rotates_refresh_tokens: bool = true;
    /// How long a rotated-out refresh token still works (Xero: 1800 s);
    /// 0 means reuse kills the connection.
    reuse_grace_secs: u64 = 0;
    /// After a refresh whose outcome is unknown (a timeout, a dropped
    /// connection, a 500/502/504/408/52x, an unusable 2xx), send the old
    /// refresh token once more: it saves the connection when the first send
    /// was not processed, and otherwise only turns a token already lost into
    /// the provider's dead-token answer. Turn it off where reuse is punished
    /// beyond the token family; a reuse grace period still allows it.
    resend_after_unknown_outcome: bool = true;
    /// A refresh token unused this long dies; the refresher keeps idle
    /// connections alive before that.
    refresh_token_idle_secs: Option<u64> = None;
    /// Access-token lifetime to assume when the token response has no `expires_in`.
    default_expires_in_secs: u64 = 3600;
    /// Answers that mean the refresh token is dead (needs a new login).
    dead_token: Vec<DeadTokenRule> = vec![DeadTokenRule {
        status: None,
        field: default_error_field(),
        equals: "invalid_grant".to_owned(),
        message_contains: None,
    }];
    /// Base URL of the data API; may name per-connection values such as
    /// `{instance_url}` (Salesforce) or `{division}` (Exact Online).
    api_base_url: Option<String> = None;
    /// How the data API pages.
    pagination: Option<Pagination> = None;
    /// Rate-limit windows of the data API and their headers.
    rate_limits: Vec<RateLimitHeaders> = Vec::new();
    /// Error answers (4xx other than 429) a key may get per hour before the
    /// provider blocks it (Exact Online: 10); a sync stops before that.
    error_budget_per_hour: Option<u64> = None;
    /// What the data API's limits belong to, as a template over the
    /// connection's parameters and `{connection}`: every job, invocation and
    /// caller whose key is the same draws on one shared budget (Exact Online:
    /// `{division}`, its limits being per app and division). The app's
    /// credentials secret is always part of the key.
    rate_key: String = "{connection}".to_owned();
    /// Dotted path of the record array in a page, when the pagination style
    /// does not imply one (a sync's `records` overrides it).
    records_path: Option<String> = None;
    /// The primary key field(s) of a record (a sync's `primary_key` overrides it).
    record_key: Vec<String> = Vec::new();
    /// How an incremental sync filters on its cursor.
    incremental: Option<IncrementalFilter> = None;
    /// The provider's feed of deleted records, when it has one.
    deleted_feed: Option<DeletedFeed> = None;
    /// Connection parameters learned at login (`division`).
    discover: BTreeMap<String, Discovery> = BTreeMap::new();
}

/// The built-in presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresetName {
    ExactOnline,
    Microsoft,
    Google,
    Salesforce,
    Xero,
    Quickbooks,
    Hubspot,
    Zoho,
    Dropbox,
    Generic,
}

impl PresetName {
    pub const ALL: [PresetName; 10] = [
        PresetName::ExactOnline,
        PresetName::Microsoft,
        PresetName::Google,
        PresetName::Salesforce,
        PresetName::Xero,
        PresetName::Quickbooks,
        PresetName::Hubspot,
        PresetName::Zoho,
        PresetName::Dropbox,
        PresetName::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PresetName::ExactOnline => "exact_online",
            PresetName::Microsoft => "microsoft",
            PresetName::Google => "google",
            PresetName::Salesforce => "salesforce",
            PresetName::Xero => "xero",
            PresetName::Quickbooks => "quickbooks",
            PresetName::Hubspot => "hubspot",
            PresetName::Zoho => "zoho",
            PresetName::Dropbox => "dropbox",
            PresetName::Generic => "generic",
        }
    }

    /// The preset's settings: the base values with the preset's table from
    /// `presets.toml` applied.
    pub fn settings(self) -> ProviderSettings {
        let mut settings = ProviderSettings::base();
        if let Some(fields) = presets().remove(self.as_str()) {
            settings.apply(fields);
        }
        settings
    }
}

impl std::fmt::Display for PresetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The preset file shipped inside the binary. A unit test parses it, so a
/// broken preset cannot be released.
pub const PRESETS_TOML: &str = include_str!("presets.toml");

fn presets() -> BTreeMap<String, ProviderFields> {
    #[allow(clippy::expect_used)]
    toml::from_str(PRESETS_TOML).expect("presets.toml is checked by a unit test")
}

impl ProviderSettings {
    pub(crate) fn with_overrides(mut self, fields: ProviderFields) -> Self {
        self.apply(fields);
        self
    }

    /// Is this answer from the token endpoint one of the provider's ways of
    /// saying the refresh token is dead?
    pub fn is_dead_token(&self, status: u16, body: &serde_json::Value) -> bool {
        self.dead_token.iter().any(|rule| rule.matches(status, body))
    }
}

impl DeadTokenRule {
    fn matches(&self, status: u16, body: &serde_json::Value) -> bool {
        if self.status.is_some_and(|wanted| wanted != status) {
            return false;
        }
        if body.get(&self.field).and_then(|v| v.as_str()) != Some(self.equals.as_str()) {
            return false;
        }
        match &self.message_contains {
            None => true,
            Some(needle) => provider_message(body).is_some_and(|m| m.to_lowercase().contains(&needle.to_lowercase())),
        }
    }
}

/// The human-readable message of a provider's error answer: RFC 6749's
/// `error_description`, or `message` (HubSpot and others).
pub fn provider_message(body: &serde_json::Value) -> Option<&str> {
    ["error_description", "message"]
        .iter()
        .find_map(|key| body.get(key).and_then(|v| v.as_str()))
}
