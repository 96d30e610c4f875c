//! A strict OAuth 2.0 authorization server that behaves like the providers we
//! support, for tests and the local demo.
//!
//! - `GET /authorize` approves headlessly: it redirects straight back with a
//!   code and the state (or `error=access_denied` when told to deny).
//! - `POST /token` serves `authorization_code` (single-use codes bound to the
//!   client and redirect URI, PKCE S256 verified; a replayed code revokes what
//!   it issued) and `refresh_token` (rotating single-use refresh tokens; reuse
//!   outside the grace period revokes the whole token family).
//! - `POST /revoke` is RFC 7009.
//! - `GET /.well-known/openid-configuration` is its OpenID Connect Discovery
//!   document, with members changed or removed, or a fault (not JSON,
//!   oversized, a status), as configured (`discovery.rs`).
//! - `GET /api/me` answers 200 for a live access token and 401 otherwise.
//! - Each preset's response and error quirks (Exact Online's string
//!   `expires_in` and 401 "Old refresh token used.", HubSpot's
//!   `BAD_REFRESH_TOKEN`, Salesforce without `expires_in`, Zoho's HTTP 200
//!   errors, …).
//! - Fault injection on the token endpoint: a 5xx, a delay after processing,
//!   and accept-then-drop (process, then close the connection unanswered).
//! - Counters for tests to assert on, also at `GET /_sim/counters`; faults can
//!   be queued over HTTP at `POST /_sim/faults` for other processes.
//!
//! Data APIs for the sync engine, mounted whatever the preset (see
//! `data.rs`, for the providers' pages it follows, and docs/simulator.md).
//! Bearer tokens are checked against the token state above: an unknown,
//! expired or revoked one answers 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`.
//! - Exact Online style (OData v2, `{"d": {"results": [...], "__next": url}}`,
//!   JSON only with `Accept: application/json`, XML otherwise):
//!   `GET /api/v1/current/Me` (the division; not rate limited);
//!   `GET /api/v1/{division}/project/Projects` (60 a page by `ID`,
//!   `$skiptoken=guid'…'`); `GET /api/v1/{division}/sync/Project/Projects`
//!   (1,000 a page by `Timestamp`, a string row version,
//!   `$filter=Timestamp gt nL`); `GET /api/v1/{division}/sync/Deleted` (the
//!   deletion log; projects only when configured). `$select` everywhere,
//!   mandatory on `bulk/` and `sync/` (400 without it).
//!   Per-division minutely and daily limits with Exact's `X-RateLimit-*`
//!   headers (resets in epoch ms) and 429s without `Retry-After`; another
//!   division answers 403. The error block: more than 10 answers of 400,
//!   401, 403 or 404 for a division within an hour refuse all of its
//!   requests (429) for an hour (`ErrorBlock`, configurable).
//! - Microsoft Graph style: `GET /v1.0/me/contacts` and `GET /v1.0/users`
//!   (`value`, `@odata.nextLink`, page size from `Prefer:
//!   odata.maxpagesize` or `$top`) and `GET /v1.0/me/contacts/delta` and
//!   `GET /v1.0/users/delta` (rounds ending in `@odata.deltaLink`, removals
//!   as `@removed`, `$deltatoken=latest`, 410 for expired tokens, next links
//!   included). Contacts come back whole; a user updated since the round's
//!   start comes back as `id` and the changed properties only, as Graph
//!   documents for directory objects; a deleted user is soft-deleted
//!   (`@removed` reason `changed`) until purged (`deleted`).
//! - Data faults (4xx, 5xx, 429 with `Retry-After`, slow, truncated and HTML
//!   pages), also at `POST /_sim/data-faults`; changes to the data over HTTP
//!   at `POST /_sim/data`; data counters and a request log.

mod data;
mod discovery;
mod server;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shared::config::{ClientAuth, PresetName};

pub use data::{DataCommand, DataConfig, DataFault, DataFaultPlan, DataRequest, ErrorBlock, RateLimits};
pub use discovery::{DiscoveryDoc, DiscoveryFault};
pub use server::SimulatorHandle;

/// How the simulator behaves. Start from [`SimConfig::for_preset`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Whose quirks to reproduce.
    pub preset: PresetName,
    pub client_id: String,
    pub client_secret: String,
    /// The client authentication the token endpoint accepts (only this one).
    pub client_auth: ClientAuth,
    /// Exact redirect URIs registered for the client; empty accepts any.
    pub redirect_uris: Vec<String>,
    pub access_token_ttl: Duration,
    pub code_ttl: Duration,
    /// Refresh returns a new refresh token and retires the old one.
    pub rotate_refresh_tokens: bool,
    /// How long a retired refresh token still works.
    pub reuse_grace: Duration,
    /// Refuse a code request without an S256 challenge.
    pub require_pkce: bool,
    /// Issue a refresh token at code exchange.
    pub issue_refresh_token: bool,
    /// OpenID Connect Core §11: honour an `offline_access` request only with
    /// `prompt=consent`, dropping the scope silently otherwise, and issue a
    /// refresh token only when `offline_access` was granted.
    pub offline_access_needs_consent: bool,
    /// Exact Online: refuse a refresh while the access token has more than this left.
    pub too_early: Option<Duration>,
    /// How long the token endpoint takes to answer a refresh (a real one
    /// takes a few hundred ms; the scale bench's is 300 ms).
    pub token_latency: Duration,
    /// Scopes granted regardless of the request (`None`: grant what was asked).
    pub granted_scopes: Option<Vec<String>>,
    /// The account that "logs in".
    pub user: String,
    pub tenant: String,
    /// The data APIs: Exact's division, rate limits and page sizes, Graph's page sizes.
    pub data: DataConfig,
    /// The `iss` the authorization response carries (RFC 9207); none when `None`.
    pub issuer: Option<String>,
    /// What `GET /.well-known/openid-configuration` serves.
    pub discovery: DiscoveryDoc,
}

impl SimConfig {
    /// The simulator as the preset's provider behaves, with test credentials.
    pub fn for_preset(preset: PresetName) -> SimConfig {
        let settings = preset.settings();
        SimConfig {
            preset,
            client_id: "sim-client".to_owned(),
            client_secret: "sim-secret:with+special/chars".to_owned(),
            client_auth: settings.client_auth,
            redirect_uris: Vec::new(),
            access_token_ttl: Duration::from_secs(settings.default_expires_in_secs),
            code_ttl: Duration::from_secs(180),
            rotate_refresh_tokens: settings.rotates_refresh_tokens,
            reuse_grace: Duration::from_secs(settings.reuse_grace_secs),
            require_pkce: true,
            issue_refresh_token: true,
            offline_access_needs_consent: false,
            too_early: None,
            token_latency: Duration::ZERO,
            granted_scopes: None,
            user: "user@example.com".to_owned(),
            tenant: "tenant-1".to_owned(),
            data: DataConfig::default(),
            issuer: None,
            discovery: DiscoveryDoc::default(),
        }
    }
}

/// Which token-endpoint requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
    Revoke,
}

/// Something to go wrong on the next matching request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status, without processing the request.
    Status { status: u16 },
    /// Answer with this status and `Retry-After: secs`, without processing.
    RetryAfter { status: u16, secs: u64 },
    /// Process the request, then wait this long before answering.
    DelayAfterProcessing { millis: u64 },
    /// Process the request, then close the connection without answering.
    DropAfterProcessing,
    /// Process the request, then answer with this raw body instead (a
    /// truncated or non-JSON answer).
    BodyAfterProcessing { status: u16, body: String },
}

/// A fault for the next `times` requests of `grant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    pub grant: Grant,
    pub fault: Fault,
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// What happened, for tests to assert on. Everything counts since start.
/// Missing fields read as 0, so a reader and a simulator process of different
/// versions still agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub authorize_requests: u64,
    pub code_requests: u64,
    pub refresh_requests: u64,
    pub revoke_requests: u64,
    pub api_requests: u64,
    /// Access tokens issued (one per successful code exchange or refresh).
    pub tokens_issued: u64,
    /// Successful refreshes.
    pub refreshes: u64,
    /// A retired refresh token used outside the grace period.
    pub refresh_tokens_reused: u64,
    /// A retired refresh token used inside the grace period (allowed).
    pub grace_reuses: u64,
    /// Token families revoked because of reuse, code replay or RFC 7009.
    pub families_revoked: u64,
    pub codes_replayed: u64,
    pub pkce_failures: u64,
    pub invalid_client: u64,
    pub too_early: u64,
    pub faults_injected: u64,
    /// Connections closed without an answer after processing.
    pub dropped_after_processing: u64,
    /// Requests to the data APIs (`/api/v1/…`, `/v1.0/…`), answered or not.
    pub data_requests: u64,
    /// Data answers that were whole, usable pages (2xx JSON, not faulted).
    pub data_pages: u64,
    /// 429 answers of the data APIs, from rate limits or faults.
    pub data_429s: u64,
    /// 401 answers of the data APIs (also counted in `data_errors`).
    pub data_401s: u64,
    /// 4xx answers other than 429, on either API. Exact's error block counts
    /// the 400, 401, 403 and 404 among them per division (`ErrorBlock`).
    pub data_errors: u64,
    /// Times Exact's error block was imposed on a division (too many errors
    /// within the window). A well-behaved client keeps this at 0.
    pub data_blocks: u64,
    /// Requests refused (429) because their division was blocked; also
    /// counted in `data_429s`.
    pub data_blocked: u64,
    /// Data faults injected.
    pub data_faults: u64,
    /// Requests for the discovery document.
    pub discovery_requests: u64,
    /// The most refresh requests in flight at once (being answered).
    pub peak_refreshes_in_flight: u64,
}

/// The simulator's state, shared by its handlers and the test that owns it.
#[derive(Debug)]
pub struct Simulator {
    config: Mutex<SimConfig>,
    state: Mutex<State>,
    /// The data APIs' records, apart from the token state so that paging
    /// does not hold up token requests.
    data: Mutex<data::DataStore>,
    pub(crate) base_url: Mutex<String>,
}

#[derive(Debug, Default)]
struct State {
    codes: HashMap<String, CodeRecord>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    access_tokens: HashMap<String, AccessRecord>,
    families: Vec<Family>,
    faults: VecDeque<FaultPlan>,
    deny_next_authorize: bool,
    /// The next code exchange, once processed, says so here and waits for the release.
    hold_next_exchange: Option<(tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>)>,
    counters: Counters,
    refreshes_in_flight: u64,
}

/// A refresh request being answered (see [`Counters::peak_refreshes_in_flight`]).
pub(crate) struct InFlight(Arc<Simulator>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state().refreshes_in_flight -= 1;
    }
}

/// A code exchange held after the provider issued the tokens and before it
/// answers, from [`Simulator::hold_next_code_exchange`]: something can happen
/// in between, in order, without timing.
#[derive(Debug)]
pub struct HeldExchange {
    /// Resolves once the exchange was processed (the tokens exist).
    pub reached: tokio::sync::oneshot::Receiver<()>,
    /// Send (or drop) to let the answer go.
    pub release: tokio::sync::oneshot::Sender<()>,
}

#[derive(Debug)]
struct CodeRecord {
    redirect_uri: String,
    challenge: Option<String>,
    scopes: Vec<String>,
    issued: Instant,
    /// Set once redeemed; a second redemption revokes this family.
    family: Option<usize>,
}

#[derive(Debug)]
struct RefreshRecord {
    family: usize,
    /// When it was rotated out; `None` while it is the family's live token.
    retired: Option<Instant>,
}

#[derive(Debug)]
struct AccessRecord {
    family: usize,
    expires: Instant,
}

#[derive(Debug)]
struct Family {
    revoked: bool,
    scopes: Vec<String>,
    live_refresh_token: Option<String>,
    /// The newest access token issued to this family, and when it expires.
    last_access_token: Option<String>,
    last_access_expires: Instant,
}

/// An answer of the token endpoint: status and JSON body.
pub(crate) type Answer = (u16, serde_json::Value);

impl Simulator {
    pub fn new(config: SimConfig) -> Arc<Simulator> {
        Arc::new(Simulator {
            config: Mutex::new(config),
            state: Mutex::new(State::default()),
            data: Mutex::new(data::DataStore::new()),
            base_url: Mutex::new(String::new()),
        })
    }

    /// Starts serving on `addr` (use port 0 for a free port).
    pub async fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimulatorHandle> {
        server::serve(Simulator::new(config), addr).await
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> SimConfig {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the behaviour from now on (e.g. a shorter access-token lifetime).
    pub fn reconfigure(&self, change: impl FnOnce(&mut SimConfig)) {
        change(&mut self.config.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn counters(&self) -> Counters {
        self.state().counters.clone()
    }

    pub fn inject(&self, plan: FaultPlan) {
        self.state().faults.push_back(plan);
    }

    /// Every token value (codes, access and refresh tokens) issued so far, for
    /// tests that search logs for them.
    pub fn issued_secrets(&self) -> Vec<String> {
        let state = self.state();
        state
            .codes
            .keys()
            .chain(state.access_tokens.keys())
            .chain(state.refresh_tokens.keys())
            .cloned()
            .collect()
    }

    /// Kills the token family of this refresh token, as a provider does when
    /// the user revokes access or the token expires.
    pub fn kill_family_of(&self, refresh_token: &str) {
        let mut state = self.state();
        if let Some(family) = state.refresh_tokens.get(refresh_token).map(|r| r.family) {
            revoke_family(&mut state, family);
        }
    }

    /// Every access token issued so far expires now, earlier than its
    /// `expires_in` said (a provider may end a token early: a password
    /// change, a server-side revocation). The client learns it from a 401.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        let mut state = self.state();
        for record in state.access_tokens.values_mut() {
            record.expires = record.expires.min(now);
        }
    }

    /// This access token, and its family's newest if it is that one, expires
    /// at `expires` instead: a population seeded at once whose logins stand
    /// for different times (the scale bench's staggered expiries). Provider
    /// rules that depend on the expiry (Exact's `too_early`) follow it.
    pub fn set_access_expiry(&self, access_token: &str, expires: Instant) {
        let mut state = self.state();
        let Some(record) = state.access_tokens.get_mut(access_token) else {
            return;
        };
        record.expires = expires;
        let family = record.family;
        if state.families[family].last_access_token.as_deref() == Some(access_token) {
            state.families[family].last_access_expires = expires;
        }
    }

    /// Holds the next code exchange after processing it, until released.
    pub fn hold_next_code_exchange(&self) -> HeldExchange {
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        self.state().hold_next_exchange = Some((reached_tx, release_rx));
        HeldExchange { reached, release }
    }

    pub(crate) fn take_hold(&self) -> Option<(tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>)> {
        self.state().hold_next_exchange.take()
    }

    /// How many token families (one per login) are not revoked.
    pub fn live_families(&self) -> usize {
        self.state().families.iter().filter(|f| !f.revoked).count()
    }

    /// The next `/authorize` answers `error=access_denied` (the user cancelled).
    pub fn deny_next_authorize(&self) {
        self.state().deny_next_authorize = true;
    }

    pub(crate) fn take_fault(&self, grant: Grant) -> Option<Fault> {
        let mut state = self.state();
        let index = state.faults.iter().position(|p| p.grant == grant)?;
        let plan = &mut state.faults[index];
        let fault = plan.fault.clone();
        plan.times = plan.times.saturating_sub(1);
        if plan.times == 0 {
            state.faults.remove(index);
        }
        state.counters.faults_injected += 1;
        Some(fault)
    }

    /// A refresh request came in; the guard counts it out when answered.
    pub(crate) fn refresh_in_flight(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.refreshes_in_flight += 1;
        state.counters.peak_refreshes_in_flight =
            state.counters.peak_refreshes_in_flight.max(state.refreshes_in_flight);
        InFlight(Arc::clone(self))
    }

    pub(crate) fn note_dropped(&self) {
        self.state().counters.dropped_after_processing += 1;
    }

    pub(crate) fn count(&self, grant: Option<Grant>) {
        let mut state = self.state();
        let counters = &mut state.counters;
        match grant {
            Some(Grant::AuthorizationCode) => counters.code_requests += 1,
            Some(Grant::RefreshToken) => counters.refresh_requests += 1,
            Some(Grant::Revoke) => counters.revoke_requests += 1,
            None => counters.api_requests += 1,
        }
    }

    /// `/authorize`: where to send the browser, or an error page (never a
    /// redirect to an unverified redirect URI).
    pub(crate) fn authorize(&self, query: &HashMap<String, String>) -> Result<String, String> {
        let config = self.config();
        let mut state = self.state();
        state.counters.authorize_requests += 1;
        let get = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
        if get("client_id") != config.client_id {
            return Err("unknown client_id".to_owned());
        }
        let redirect_uri = get("redirect_uri");
        let mut redirect = url::Url::parse(redirect_uri).map_err(|_| "redirect_uri is not a URL".to_owned())?;
        if !config.redirect_uris.is_empty() && !config.redirect_uris.iter().any(|u| u == redirect_uri) {
            return Err("redirect_uri is not registered for this client".to_owned());
        }
        let mut params: Vec<(&str, String)> = Vec::new();
        let challenge = query.get("code_challenge").cloned();
        if get("response_type") != "code" {
            params.push(("error", "unsupported_response_type".to_owned()));
        } else if config.require_pkce && (challenge.is_none() || get("code_challenge_method") != "S256") {
            params.push(("error", "invalid_request".to_owned()));
            params.push(("error_description", "PKCE with S256 is required".to_owned()));
        } else if std::mem::take(&mut state.deny_next_authorize) {
            params.push(("error", "access_denied".to_owned()));
            params.push(("error_description", "The user denied the request".to_owned()));
        } else {
            let code = new_token("code");
            let asks_consent = get("prompt").split(' ').any(|p| p == "consent");
            let scopes = get("scope")
                .split_whitespace()
                .filter(|s| !(config.offline_access_needs_consent && *s == "offline_access" && !asks_consent))
                .map(str::to_owned)
                .collect();
            state.codes.insert(
                code.clone(),
                CodeRecord {
                    redirect_uri: redirect_uri.to_owned(),
                    challenge,
                    scopes,
                    issued: Instant::now(),
                    family: None,
                },
            );
            params.push(("code", code));
        }
        if let Some(s) = query.get("state") {
            params.push(("state", s.clone()));
        }
        if let Some(issuer) = config.issuer {
            params.push(("iss", issuer));
        }
        redirect.query_pairs_mut().extend_pairs(params);
        Ok(redirect.into())
    }

    /// Checks client authentication as the configured style demands.
    pub(crate) fn authenticate(
        &self,
        basic: Option<(String, String)>,
        form: &HashMap<String, String>,
    ) -> Result<(), Answer> {
        let config = self.config();
        let given = match config.client_auth {
            ClientAuth::Basic => basic,
            ClientAuth::Body => match (form.get("client_id"), form.get("client_secret")) {
                (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
                _ => None,
            },
        };
        if given == Some((config.client_id.clone(), config.client_secret.clone())) {
            return Ok(());
        }
        self.state().counters.invalid_client += 1;
        Err((
            401,
            serde_json::json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        ))
    }

    pub(crate) fn exchange_code(&self, form: &HashMap<String, String>) -> Answer {
        let config = self.config();
        let mut state = self.state();
        let code = form.get("code").cloned().unwrap_or_default();
        let Some(record) = state.codes.get(&code) else {
            return invalid_grant("unknown authorization code");
        };
        if let Some(family) = record.family {
            // RFC 6749 §4.1.2: a replayed code revokes what it issued.
            state.counters.codes_replayed += 1;
            revoke_family(&mut state, family);
            return invalid_grant("authorization code already used");
        }
        if record.issued.elapsed() > config.code_ttl {
            return invalid_grant("authorization code expired");
        }
        if form.get("redirect_uri").map(String::as_str) != Some(record.redirect_uri.as_str()) {
            return invalid_grant("redirect_uri does not match the authorization request");
        }
        if let Some(challenge) = &record.challenge {
            let verifier = form.get("code_verifier").map(String::as_str).unwrap_or_default();
            if shared::crypto::Pkce::challenge_of(verifier) != *challenge {
                state.counters.pkce_failures += 1;
                return invalid_grant("PKCE verification failed");
            }
        }
        let scopes = config.granted_scopes.clone().unwrap_or_else(|| record.scopes.clone());
        let family = state.families.len();
        state.families.push(Family {
            revoked: false,
            scopes,
            live_refresh_token: None,
            last_access_token: None,
            last_access_expires: Instant::now(),
        });
        if let Some(record) = state.codes.get_mut(&code) {
            record.family = Some(family);
        }
        let offline_granted =
            !config.offline_access_needs_consent || state.families[family].scopes.iter().any(|s| s == "offline_access");
        let refresh = (config.issue_refresh_token && offline_granted)
            .then(|| new_refresh_token(&mut state, family, config.preset));
        issue(&config, &mut state, family, refresh, self.base_url())
    }

    pub(crate) fn refresh(&self, form: &HashMap<String, String>) -> Answer {
        let config = self.config();
        let mut state = self.state();
        let token = form.get("refresh_token").cloned().unwrap_or_default();
        let Some(record) = state.refresh_tokens.get(&token) else {
            return dead_token(config.preset, "unknown refresh token");
        };
        let family = record.family;
        let retired = record.retired;
        if state.families[family].revoked {
            return dead_token(config.preset, "refresh token revoked");
        }
        if let Some(retired_at) = retired {
            if retired_at.elapsed() > config.reuse_grace {
                state.counters.refresh_tokens_reused += 1;
                revoke_family(&mut state, family);
                return dead_token(config.preset, "refresh token reused; token family revoked");
            }
            // Inside the grace period: answer with the family's live token.
            state.counters.grace_reuses += 1;
            state.counters.refreshes += 1;
            let live = state.families[family].live_refresh_token.clone();
            return issue(&config, &mut state, family, live, self.base_url());
        }
        if let Some(too_early) = config.too_early {
            let left = state.families[family]
                .last_access_expires
                .saturating_duration_since(Instant::now());
            if left > too_early {
                state.counters.too_early += 1;
                return (
                    400,
                    serde_json::json!({"error": "invalid_request", "error_description": "TooEarlyToRefreshTokens"}),
                );
            }
        }
        state.counters.refreshes += 1;
        let refresh = if config.rotate_refresh_tokens {
            if let Some(record) = state.refresh_tokens.get_mut(&token) {
                record.retired = Some(Instant::now());
            }
            Some(new_refresh_token(&mut state, family, config.preset))
        } else if config.preset == PresetName::Hubspot {
            Some(token) // HubSpot echoes the same refresh token.
        } else {
            None
        };
        issue(&config, &mut state, family, refresh, self.base_url())
    }

    /// RFC 7009: revoking a refresh token revokes its family; 200 even for unknown tokens.
    pub(crate) fn revoke(&self, form: &HashMap<String, String>) -> Answer {
        let mut state = self.state();
        let token = form.get("token").cloned().unwrap_or_default();
        if let Some(family) = state.refresh_tokens.get(&token).map(|r| r.family) {
            revoke_family(&mut state, family);
        } else {
            state.access_tokens.remove(&token);
        }
        (200, serde_json::json!({}))
    }

    /// Whether `token` is the newest access token of a family that is not
    /// revoked, whether or not it has expired yet: what a client that lost no
    /// rotation holds. Unlike `/api/me`, the answer does not depend on time.
    pub fn is_latest_access_token(&self, token: &str) -> bool {
        let state = self.state();
        state.access_tokens.get(token).is_some_and(|record| {
            let family = &state.families[record.family];
            !family.revoked && family.last_access_token.as_deref() == Some(token)
        })
    }

    /// `/api/me`: who the bearer token belongs to, if it is live.
    pub(crate) fn whoami(&self, bearer: Option<&str>) -> Option<serde_json::Value> {
        let config = self.config();
        let state = self.state();
        let record = state.access_tokens.get(bearer?)?;
        let family = &state.families[record.family];
        (record.expires > Instant::now() && !family.revoked)
            .then(|| serde_json::json!({"user": config.user, "tenant": config.tenant, "scopes": family.scopes}))
    }

    fn base_url(&self) -> String {
        self.base_url.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn new_token(prefix: &str) -> String {
    #[allow(clippy::expect_used)]
    let random = shared::crypto::random_token().expect("system random number generator");
    format!("{prefix}-{random}")
}

/// Random base64url text of `len` characters.
fn random_text(len: usize) -> String {
    let mut text = String::with_capacity(len + 43);
    while text.len() < len {
        #[allow(clippy::expect_used)]
        text.push_str(&shared::crypto::random_token().expect("system random number generator"));
    }
    text.truncate(len);
    text
}

/// Microsoft's tokens are long: JWT-shaped access tokens of about 2,500
/// characters and opaque refresh tokens of about 1,800 (the seed platform's
/// users lost refresh tokens longer than 1,024 characters to a column limit).
fn long_access_token() -> String {
    format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsImtpZCI6InNpbSJ9.{}.{}",
        random_text(2_100),
        random_text(342)
    )
}

fn new_refresh_token(state: &mut State, family: usize, preset: PresetName) -> String {
    let token = match preset {
        PresetName::Microsoft => format!("1.AXkA{}", random_text(1_800)),
        _ => new_token("rt"),
    };
    state
        .refresh_tokens
        .insert(token.clone(), RefreshRecord { family, retired: None });
    state.families[family].live_refresh_token = Some(token.clone());
    token
}

fn revoke_family(state: &mut State, family: usize) {
    if !state.families[family].revoked {
        state.families[family].revoked = true;
        state.counters.families_revoked += 1;
    }
}

fn invalid_grant(description: &str) -> Answer {
    (
        400,
        serde_json::json!({"error": "invalid_grant", "error_description": description}),
    )
}

/// How each provider says "this refresh token is dead".
fn dead_token(preset: PresetName, description: &str) -> Answer {
    use serde_json::json;
    match preset {
        PresetName::ExactOnline => (
            401,
            json!({"error": "unauthorized_client", "error_description": "Old refresh token used."}),
        ),
        PresetName::Hubspot => (
            400,
            json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token", "correlationId": "sim"}),
        ),
        PresetName::Microsoft => (
            400,
            json!({"error": "invalid_grant", "error_description": format!("AADSTS70000: {description}"), "error_codes": [70000]}),
        ),
        PresetName::Zoho => (200, json!({"error": "invalid_code"})),
        PresetName::Google => (
            400,
            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        ),
        _ => invalid_grant(description),
    }
}

/// A successful token answer in the preset's shape.
fn issue(config: &SimConfig, state: &mut State, family: usize, refresh: Option<String>, base_url: String) -> Answer {
    use serde_json::{Value, json};
    let access = match config.preset {
        PresetName::Microsoft => long_access_token(),
        _ => new_token("at"),
    };
    let expires = Instant::now() + config.access_token_ttl;
    state
        .access_tokens
        .insert(access.clone(), AccessRecord { family, expires });
    state.families[family].last_access_expires = expires;
    state.families[family].last_access_token = Some(access.clone());
    state.counters.tokens_issued += 1;
    let ttl = config.access_token_ttl.as_secs();
    let scopes = state.families[family].scopes.clone();
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": ttl});
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    match config.preset {
        PresetName::ExactOnline => {
            body["token_type"] = json!("bearer");
            body["expires_in"] = json!(ttl.to_string());
        }
        PresetName::Microsoft => {
            body["ext_expires_in"] = json!(ttl);
            let echoed: Vec<_> = scopes
                .iter()
                .filter(|s| s.as_str() != "offline_access")
                .cloned()
                .collect();
            body["scope"] = json!(echoed.join(" "));
        }
        PresetName::Salesforce => {
            if let Some(map) = body.as_object_mut() {
                map.remove("expires_in");
            }
            body["instance_url"] = json!(base_url);
            body["issued_at"] = json!(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default()
                    .to_string()
            );
            body["signature"] = json!("sim-signature");
            body["scope"] = json!(scopes.join(" "));
        }
        PresetName::Zoho => body["api_domain"] = json!(base_url),
        PresetName::Quickbooks => body["x_refresh_token_expires_in"] = json!(8_640_000),
        _ => {
            if !scopes.is_empty() {
                body["scope"] = Value::String(scopes.join(" "));
            }
        }
    }
    (200, body)
}
