//! The refresh protocol (DESIGN.md, invariants 1–6): a single-use refresh
//! token is never sent twice concurrently, a rotated one is never lost, an old
//! token set never overwrites a newer one, a send whose outcome is unknown is
//! recorded and resent at most once, and a dead connection says so and stops.
//!
//! One call, one worker:
//!
//! 1. Consistent read: `token_version = v`, expiry, lease ([`LeaseState`],
//!    computed once per read).
//! 2. Fresh enough (or someone else just refreshed)? Use the access token.
//! 3. Take the lease (`lease.rs`): a conditional write on `token_version = v`
//!    and no lease. Lost the race: wait for a version above `v` and use that.
//!    A lease whose holder vanished is taken over: its send's outcome is unknown.
//! 4. Send the refresh (`send.rs`), with a timeout `T` shorter than the lease;
//!    no send starts with less than `T` of lease left. What the answer leads
//!    to is decided by the pure [`decide`](decide::decide) (`decide.rs`).
//! 5. Commit the new tokens (`commit.rs`) with `token_version = v + 1`,
//!    conditional on (`v`, lease owner = me), retrying with backoff until the
//!    lease ends. A lost response is resolved from the item DynamoDB returns
//!    with the failed condition: is its `commit_id` mine?
//!
//! Failures: a dead-token answer moves the connection to `needs_reauth` with
//! the provider's message (after a consistent re-read); a provider that is
//! down releases the lease and backs off exponentially, with jitter, per
//! connection; a send whose outcome is unknown is recorded on the connection
//! and the old token is sent exactly once more, no sooner than `T` after the
//! first send: that saves the connection when the first send was not
//! processed, and otherwise turns a token already lost into the provider's
//! dead-token answer.

mod commit;
mod decide;
mod lease;
mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

pub use self::decide::{Action, Answer, Plan, ResendPolicy, Sent, UnknownSend, decide, plan};
use self::lease::LeaseState;
use crate::config::{Config, Provider, UnknownProvider};
use crate::connection::store::{ConnectionStore, Write};
use crate::connection::{Connection, ConnectionId, Status, now_ms, refresh_due_at};
use crate::crypto::{CryptoError, KeyRing};
use crate::dynamo::StoreError;
use crate::oauth::{ClientCredentials, TokenEndpoint, TokenSet};
use crate::secret::AccessToken;
use crate::secrets::{SecretStore, SecretsError};
use crate::shards::ShardPage;
use crate::telemetry::error_chain;

/// The longest token (access or refresh) stored, in bytes. Real ones are a
/// few kilobytes (Microsoft: ~1,800-character refresh tokens, ~2,500-character
/// JWT access tokens); the bound keeps every lease and commit write small.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Timing of the protocol.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// `T`: the token call's timeout.
    pub token_timeout: Duration,
    /// Lease time kept after `T` for committing. The commit stops retrying
    /// at the lease's end, also for a caller with a long deadline (a sync
    /// run): from that end plus the clock-skew margin another worker may take
    /// the lease over, and nothing of ours may still be retrying then.
    pub commit_budget: Duration,
    /// First backoff after a failed refresh; doubles per consecutive failure.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How often a worker that lost the lease race looks for the new version.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Ids per query of the refresh-due index in [`TokenService::refresh_due`].
    pub due_page_size: i32,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            token_timeout: Duration::from_secs(10),
            commit_budget: Duration::from_secs(20),
            base_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            poll_min: Duration::from_millis(50),
            poll_max: Duration::from_secs(1),
            due_page_size: 100,
        }
    }
}

impl RefreshSettings {
    fn lease_ms(&self) -> i64 {
        millis(self.token_timeout + self.commit_budget)
    }

    /// The least lease left at which a send may start: the token call's
    /// timeout and one commit attempt (or half the commit budget, if shorter:
    /// what came before the send may take a little of the lease).
    fn lease_needed_to_send(&self) -> Duration {
        self.token_timeout + (self.commit_budget / 2).min(MIN_COMMIT)
    }

    /// The least time before the deadline in which a send may start: the
    /// token call's timeout and one commit attempt. A run given the deadline
    /// `now + w + time_for_a_send()` starts refreshes for `w`.
    pub fn time_for_a_send(&self) -> Duration {
        self.token_timeout + MIN_COMMIT
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A usable access token.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub access_token: AccessToken,
    pub token_version: u64,
    /// Epoch milliseconds.
    pub expires_at: i64,
    /// Whether this call refreshed it.
    pub refreshed: bool,
}

/// What [`TokenService::revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// The provider's RFC 7009 endpoint confirmed the revocation.
    pub at_provider: bool,
    /// The connection was revoked before this call.
    pub already: bool,
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("connection {0} does not exist")]
    NotFound(ConnectionId),
    #[error("connection {id} is {}{}", status.as_str(), reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NotActive {
        id: ConnectionId,
        status: Status,
        reason: Option<String>,
        message: Option<String>,
    },
    #[error("connection {id} needs a new login ({reason}): {message}")]
    NeedsReauth {
        id: ConnectionId,
        reason: &'static str,
        message: String,
    },
    #[error("refreshing connection {id} failed ({cause}); next attempt {}", crate::when::moment(*until, now_ms()))]
    RetryLater {
        id: ConnectionId,
        until: i64,
        cause: String,
    },
    #[error("connection {id}: not enough time left in this invocation to refresh safely")]
    Deadline { id: ConnectionId },
    #[error(
        "connection {id}: this machine's clock is {} s {} DynamoDB's; refusing to take a refresh lease \
         (at most {} s are tolerated): set the clock (NTP) and try again",
        offset_ms.unsigned_abs().div_ceil(1000),
        if *offset_ms > 0 { "behind" } else { "ahead of" },
        crate::connection::clock::MAX_CLOCK_OFFSET_MS / 1000
    )]
    ClockSkew { id: ConnectionId, offset_ms: i64 },
    #[error("connection {id}: the provider returned a {field} of {bytes} bytes; at most {max} are stored", max = MAX_TOKEN_BYTES)]
    TokenTooLarge {
        id: ConnectionId,
        field: &'static str,
        bytes: usize,
    },
    #[error("connection {id}: {source}")]
    Store { id: ConnectionId, source: StoreError },
    #[error("connection {id}: {source}")]
    Crypto { id: ConnectionId, source: CryptoError },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
    /// A login's tokens were not stored: the connection was revoked at or
    /// after the time its connect link was made.
    #[error("connection {id} was revoked after this login's link was made; nothing was stored")]
    RevokedDuringLogin { id: ConnectionId },
}

/// What [`TokenService::refresh_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DueSummary {
    /// Due connections found in the index (started or left for the next run).
    pub due: u64,
    pub refreshed: u64,
    /// Someone else refreshed it first.
    pub still_fresh: u64,
    pub needs_reauth: u64,
    pub retry_later: u64,
    pub failed: u64,
    /// Found due, not started: too little of the invocation was left.
    pub left_for_next_run: u64,
    /// Every shard was read to its end and every due connection started
    /// (`false` when time ran out first or a query failed): the rest waits
    /// for the next run.
    pub complete: bool,
    /// Shards whose index query failed (each logged with its error).
    pub shards_failed: u64,
    /// Refresh sends whose outcome was unknown (each is recorded and resent once).
    pub outcome_unknown: u64,
}

impl DueSummary {
    /// The run as CloudWatch metrics (`OauthSync`, `Function=token-refresher`);
    /// the template's alarms watch `NeedsReauth` and `RefreshFailed`.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        crate::metrics::Metrics::new("token-refresher")
            .count("DueConnections", self.due)
            .count("Refreshed", self.refreshed)
            .count("NeedsReauth", self.needs_reauth)
            .count("RetryLater", self.retry_later)
            .count("RefreshFailed", self.failed)
            .count("LeftForNextRun", self.left_for_next_run)
            .count("OutcomeUnknown", self.outcome_unknown)
    }

    fn count(&mut self, result: Result<Result<Fresh, RefreshError>, tokio::task::JoinError>) {
        match result {
            Ok(Ok(fresh)) if fresh.refreshed => self.refreshed += 1,
            Ok(Ok(_)) => self.still_fresh += 1,
            Ok(Err(RefreshError::NeedsReauth { .. } | RefreshError::NotActive { .. })) => self.needs_reauth += 1,
            Ok(Err(RefreshError::RetryLater { .. })) => self.retry_later += 1,
            // Started, then found too little time left to send: as if never started.
            Ok(Err(RefreshError::Deadline { .. })) => {
                self.left_for_next_run += 1;
                self.complete = false;
            }
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "refresh failed");
                self.failed += 1;
            }
            Err(e) => {
                error!(error = %e, "refresh task failed");
                self.failed += 1;
            }
        }
    }
}

/// Whether a call refreshes only when due, or now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    IfDue,
    Force,
}

/// What one pass of the protocol concluded.
enum Step {
    Done(Fresh),
    /// The connection changed under us: read it again.
    Again,
}

/// One worker's pass of the protocol over one read of the connection.
pub(crate) struct Pass<'a> {
    conn: &'a Connection,
    provider: &'a Provider,
    owner: &'a str,
    deadline: Instant,
    mode: Mode,
}

/// Why no refresh is sent before an unknown send's resend may go.
const WAITING_TO_RESEND: &str = "waiting to resend a refresh whose outcome is unknown";

/// Time a commit needs at least: one DynamoDB attempt (see `aws::ATTEMPT_TIMEOUT`).
const MIN_COMMIT: Duration = Duration::from_secs(5);

/// The one entry point for access tokens: every function and the CLI go
/// through it. Build it once per process.
#[derive(Debug)]
pub struct TokenService {
    store: ConnectionStore,
    keys: Arc<KeyRing>,
    config: Arc<Config>,
    secrets: SecretStore,
    credentials: Mutex<HashMap<String, ClientCredentials>>,
    http: reqwest::Client,
    settings: RefreshSettings,
    worker: String,
    /// Sends with an unknown outcome since the process started (for metrics).
    unknown_outcomes: std::sync::atomic::AtomicU64,
    /// Where connection events go (off unless [`TokenService::with_events`]).
    events: crate::events::EventSink,
}

impl TokenService {
    /// Loads the key ring named by the configuration from Secrets Manager.
    pub async fn load(
        config: Arc<Config>,
        store: ConnectionStore,
        secrets: SecretStore,
        settings: RefreshSettings,
    ) -> Result<TokenService, LoadError> {
        let text = secrets.text(&config.service.token_key_secret).await?;
        let keys = KeyRing::from_json(&text).map_err(|source| LoadError::KeyRing {
            secret: config.service.token_key_secret.clone(),
            source,
        })?;
        let http = crate::http::client(settings.token_timeout, crate::http::Pooling::Off).map_err(LoadError::Http)?;
        Ok(TokenService {
            store,
            keys: Arc::new(keys),
            config,
            secrets,
            credentials: Mutex::new(HashMap::new()),
            http,
            settings,
            worker: format!("{:08x}", fastrand::u32(..)),
            unknown_outcomes: std::sync::atomic::AtomicU64::new(0),
            events: crate::events::EventSink::off(),
        })
    }

    /// Publishes connection events (connected, refresh failed, needs a new
    /// login, revoked) to `events`.
    pub fn with_events(mut self, events: crate::events::EventSink) -> TokenService {
        self.events = events;
        self
    }

    /// Where connection events go.
    pub fn events(&self) -> &crate::events::EventSink {
        &self.events
    }

    pub fn store(&self) -> &ConnectionStore {
        &self.store
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The HTTP client for authorization servers (no redirects, timeouts).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Stores the tokens of a login (sealed) as connection `id`: a new
    /// connection at version 1, or an existing one at its next version,
    /// active again. Without a new refresh token the old one is kept.
    /// `link_issued_at` (epoch ms) is when the login's connect link was made:
    /// a connection revoked since then is not written
    /// ([`RefreshError::RevokedDuringLogin`]); `None` for logins without a link.
    pub async fn save_login(
        &self,
        id: &ConnectionId,
        provider: &str,
        kind: crate::connection::ConnectionKind,
        tokens: &TokenSet,
        link_issued_at: Option<i64>,
    ) -> Result<Connection, RefreshError> {
        let settings = &self.config.provider(provider)?.settings;
        let (params, param_error) = crate::connection::params::learn(&self.http, settings, &tokens.access_token).await;
        if let Some(error) = &param_error {
            warn!(connection = %id, provider, error, "a connection parameter could not be learned; the connection will not be synced");
        }
        let (access_token, refresh_token) = self.seal_tokens(id, tokens)?;
        let now = now_ms();
        let expires_at = expiry(now, tokens.expires_in);
        let login = crate::connection::store::NewLogin {
            id: id.clone(),
            provider: provider.to_owned(),
            kind,
            access_token,
            refresh_token,
            access_expires_at: expires_at,
            scopes: tokens.scope.clone().unwrap_or_default(),
            refresh_due_at: refresh_due_at(settings, expires_at, Some(now)),
            instance_url: tokens.instance_url.clone(),
            api_domain: tokens.api_domain.clone(),
            params,
            param_error,
        };
        let saved = self
            .store
            .save_login(&login, link_issued_at)
            .await
            .map_err(|source| RefreshError::Store { id: id.clone(), source })?
            .ok_or_else(|| RefreshError::RevokedDuringLogin { id: id.clone() })?;
        info!(connection = %id, provider, version = saved.token_version, "login stored");
        self.events
            .publish(crate::events::Event::Connected(crate::events::Connected {
                connection: id.to_string(),
                provider: provider.to_owned(),
                kind: saved.kind.as_str().to_owned(),
                token_version: saved.token_version,
                scopes: saved.scopes.clone(),
            }))
            .await;
        Ok(saved)
    }

    /// A valid access token for the connection, refreshed through the protocol when due.
    pub async fn access_token(&self, id: &ConnectionId, deadline: Instant) -> Result<Fresh, RefreshError> {
        self.run(id, Mode::IfDue, deadline, None, 0).await
    }

    /// [`TokenService::access_token`] for a caller that will use the token
    /// for a while (the API's token route): one with less than `valid_for`
    /// left is refreshed through the protocol first. When the provider's
    /// tokens live shorter than that, asking for more cannot be met: a
    /// token with at least half its lifetime left is handed out as it is,
    /// so that repeated calls do not refresh on every call.
    pub async fn access_token_valid_for(
        &self,
        id: &ConnectionId,
        valid_for: Duration,
        deadline: Instant,
    ) -> Result<Fresh, RefreshError> {
        self.run(id, Mode::IfDue, deadline, None, millis(valid_for)).await
    }

    /// Refreshes now, unless another worker refreshed it while this call waited.
    pub async fn refresh_now(&self, id: &ConnectionId, deadline: Instant) -> Result<Fresh, RefreshError> {
        self.run(id, Mode::Force, deadline, None, 0).await
    }

    /// The provider refused the access token of `refused_version` (a 401):
    /// a newer one when the store already has it (another worker rotated
    /// meanwhile: nothing is spent), else one refresh now. `refreshed` in
    /// the answer says which.
    pub async fn replace_refused(
        &self,
        id: &ConnectionId,
        refused_version: u64,
        deadline: Instant,
    ) -> Result<Fresh, RefreshError> {
        self.run(id, Mode::Force, deadline, Some(refused_version), 0).await
    }

    /// Disconnects: revokes the tokens at the provider's RFC 7009 endpoint
    /// when it has one (the refresh token first, which ends the whole grant),
    /// then erases them and marks the connection revoked. The revocation holds
    /// the refresh lease, so no refresh spends the token meanwhile; a lease
    /// whose holder vanished is taken over, a live one makes the caller retry.
    /// A provider that cannot revoke right now (503) leaves everything as it
    /// was: the tokens still live there, so they are kept and the caller retries.
    pub async fn revoke(&self, id: &ConnectionId) -> Result<Revoked, RefreshError> {
        let owner = self.owner();
        let deadline = Instant::now() + self.settings.time_for_a_send() + self.settings.token_timeout;
        for _ in 0..5 {
            let conn = self.read(id).await?;
            if conn.status == Status::Revoked {
                return Ok(Revoked {
                    at_provider: false,
                    already: true,
                });
            }
            let provider = self.config.provider(&conn.provider)?;
            let pass = Pass {
                conn: &conn,
                provider,
                owner: &owner,
                deadline,
                mode: Mode::Force,
            };
            let taken = match LeaseState::of(&conn, &owner, now_ms()) {
                LeaseState::Live(_) => {
                    return Err(RefreshError::RetryLater {
                        id: id.clone(),
                        until: now_ms() + 1_000,
                        cause: "a refresh is in progress".to_owned(),
                    });
                }
                LeaseState::Mine(_) => true,
                LeaseState::Free => self.take_lease(&pass, false).await?.is_some(),
                LeaseState::Abandoned(lease) => self.take_over_lease(&pass, lease, false).await?.is_some(),
            };
            if !taken {
                continue;
            }
            let at_provider = match self.revoke_at_provider(&conn, provider).await {
                Ok(at_provider) => at_provider,
                Err(e) => {
                    self.write(
                        id,
                        self.store.release_unused_lease(id, conn.token_version, &owner).await,
                    )?;
                    return Err(e);
                }
            };
            match self.write(id, self.store.mark_revoked(id, conn.token_version, &owner).await)? {
                Write::Done => {
                    info!(connection = %id, at_provider, "connection revoked");
                    self.events
                        .publish(crate::events::Event::Revoked(crate::events::Revoked {
                            connection: id.to_string(),
                            provider: conn.provider.clone(),
                            at_provider,
                        }))
                        .await;
                    return Ok(Revoked {
                        at_provider,
                        already: false,
                    });
                }
                Write::Conflict(_) => continue,
            }
        }
        Err(RefreshError::RetryLater {
            id: id.clone(),
            until: now_ms() + 1_000,
            cause: "the connection kept changing".into(),
        })
    }

    /// Revokes the stored tokens at the provider's RFC 7009 endpoint, if it
    /// has one. `true` when the provider confirmed.
    async fn revoke_at_provider(&self, conn: &Connection, provider: &Provider) -> Result<bool, RefreshError> {
        let id = &conn.id;
        if provider.revocation_url.is_none() {
            return Ok(false);
        }
        let credentials = self.credentials(provider).await?;
        let endpoint = TokenEndpoint {
            provider,
            credentials: &credentials,
            http: &self.http,
        };
        let tokens = [
            (
                conn.refresh_token.as_ref(),
                "refresh_token",
                crate::oauth::TokenHint::RefreshToken,
            ),
            (
                conn.access_token.as_ref(),
                "access_token",
                crate::oauth::TokenHint::AccessToken,
            ),
        ];
        let mut at_provider = false;
        for (sealed, field, hint) in tokens {
            let Some(sealed) = sealed else { continue };
            let token = self
                .keys
                .open(id.as_str(), field, &sealed.0)
                .map_err(|source| RefreshError::Crypto { id: id.clone(), source })?;
            at_provider |= endpoint
                .revoke(&token, hint)
                .await
                .map_err(|e| RefreshError::RetryLater {
                    id: id.clone(),
                    until: now_ms() + 60_000,
                    cause: format!("revocation at the provider failed, nothing was erased: {e}"),
                })?;
        }
        Ok(at_provider)
    }

    /// A lease owner id for one call: unique, not secret.
    fn owner(&self) -> String {
        format!("{}/{:016x}", self.worker, fastrand::u64(..))
    }

    /// Refreshes every connection the refresh-due index says is due, at most
    /// `concurrency` at a time (the token-refresher's job). Every shard of the
    /// index is read at once, a page at a time, while refreshes run (a run
    /// with nothing due costs one query round trip, not one per shard); no
    /// refresh starts once less than one send and one commit fit before
    /// `deadline`, and what is left waits for the next run. A failed query of
    /// one shard is logged and counted, and the other shards are still served.
    pub async fn refresh_due(self: &Arc<Self>, deadline: Instant, concurrency: usize) -> DueSummary {
        let now = now_ms();
        let start_by = deadline
            .checked_sub(self.settings.time_for_a_send())
            .unwrap_or_else(Instant::now);
        let mut summary = DueSummary {
            complete: true,
            ..DueSummary::default()
        };
        let unknown_before = self.unknown_outcomes();
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let (store, page_size) = (self.store.clone(), self.settings.due_page_size);
        let mut found = crate::shards::read_all(start_by, move |shard, after| {
            let store = store.clone();
            async move {
                let page = store
                    .due(&shard.to_string(), now, page_size, after)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok::<_, String>((page.ids, page.next))
            }
        });
        while let Some(page) = found.recv().await {
            let ids = match page {
                ShardPage::Items(ids) => ids,
                ShardPage::Failed { shard, error } => {
                    error!(
                        shard,
                        error, "the refresh-due index could not be read; this shard waits for the next run"
                    );
                    summary.shards_failed += 1;
                    summary.complete = false;
                    continue;
                }
                ShardPage::OutOfTime => {
                    summary.complete = false;
                    continue;
                }
            };
            // A connection refreshed in this run is due no sooner than its
            // refresh (`refresh_due_at`), after `now`: later pages never
            // bring it up again.
            summary.due += ids.len() as u64;
            for id in ids {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                while let Some(result) = tasks.try_join_next() {
                    summary.count(result);
                }
                if Instant::now() >= start_by {
                    summary.left_for_next_run += 1;
                    summary.complete = false;
                    continue;
                }
                let service = Arc::clone(self);
                tasks.spawn(async move {
                    let _permit = permit;
                    service.access_token(&id, deadline).await
                });
            }
        }
        while let Some(result) = tasks.join_next().await {
            summary.count(result);
        }
        summary.outcome_unknown = self.unknown_outcomes().saturating_sub(unknown_before);
        summary
    }

    /// Refresh sends whose outcome was unknown, since the process started.
    pub fn unknown_outcomes(&self) -> u64 {
        self.unknown_outcomes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The protocol's loop. `forced_from`, with [`Mode::Force`]: the version
    /// to replace (`None`: the one first read). `valid_for_ms`: how long the
    /// caller needs the token (see [`TokenService::access_token_valid_for`]).
    async fn run(
        &self,
        id: &ConnectionId,
        mode: Mode,
        deadline: Instant,
        forced_from: Option<u64>,
        valid_for_ms: i64,
    ) -> Result<Fresh, RefreshError> {
        let owner = self.owner();
        let mut forced_from = forced_from;
        let mut poll = self.settings.poll_min;
        loop {
            if Instant::now() >= deadline {
                return Err(RefreshError::Deadline { id: id.clone() });
            }
            let conn = self.read(id).await?;
            if conn.status != Status::Active {
                return Err(RefreshError::NotActive {
                    id: id.clone(),
                    status: conn.status,
                    reason: conn.status_reason,
                    message: conn.provider_message,
                });
            }
            let provider = self.config.provider(&conn.provider)?;
            let now = now_ms();
            let access_valid = usable(&conn, now, needed_margin(&conn, valid_for_ms));
            let due = match mode {
                Mode::IfDue => !access_valid || is_due(&conn, provider, now),
                Mode::Force => match forced_from {
                    None => {
                        forced_from = Some(conn.token_version);
                        true
                    }
                    // Another worker refreshed while we waited: that is the refresh we asked for.
                    Some(version) => conn.token_version == version,
                },
            };
            if !due {
                return self.fresh(&conn, false);
            }
            let pass = Pass {
                conn: &conn,
                provider,
                owner: &owner,
                deadline,
                mode,
            };
            let lease = LeaseState::of(&conn, &owner, now);
            if let LeaseState::Free = lease
                && let Some(held_back) = self.held_back_by_provider(&pass, now)
            {
                return held_back;
            }
            let policy = ResendPolicy::new(&provider.settings, self.settings.token_timeout);
            let step = match lease {
                LeaseState::Live(_) => {
                    // Someone else is refreshing. A caller whose token still works uses it;
                    // one that needs the new token waits for the new version. Nobody spends.
                    if access_valid && mode == Mode::IfDue {
                        return self.fresh(&conn, false);
                    }
                    debug!(connection = %id, version = conn.token_version, "waiting for another worker's refresh");
                    tokio::time::sleep(crate::backoff::jitter(poll)).await;
                    poll = (poll * 2).min(self.settings.poll_max);
                    continue;
                }
                LeaseState::Free | LeaseState::Abandoned(_) => {
                    let abandoned = match lease {
                        LeaseState::Abandoned(abandoned) => Some(abandoned),
                        _ => None,
                    };
                    // An abandoned lease's holder may have sent the refresh: an
                    // unknown outcome from when it took the lease.
                    let unknown = UnknownSend::of(&conn).or(abandoned.map(|a| UnknownSend {
                        first_sent_at: a.taken_at,
                        resent_at: None,
                    }));
                    match plan(unknown, &policy, now) {
                        Plan::WaitUntil(until) => {
                            return self.held_back(&conn, mode, now, until, WAITING_TO_RESEND.to_owned());
                        }
                        plan => {
                            let resend = matches!(plan, Plan::Resend(_));
                            let taken = match abandoned {
                                Some(abandoned) => self.take_over_lease(&pass, abandoned, resend).await?,
                                None => self.take_lease(&pass, resend).await?,
                            };
                            match taken {
                                None => Step::Again,
                                Some(until) => self.after_taking(&pass, until, plan).await?,
                            }
                        }
                    }
                }
                // Our own take landed although its answer was lost: the same
                // write set `lease_taken_at` and, for a resend, the resend mark.
                LeaseState::Mine(lease) => {
                    let mut unknown = UnknownSend::of(&conn);
                    if let Some(u) = unknown.as_mut()
                        && u.resent_at == Some(lease.taken_at)
                    {
                        u.resent_at = None;
                    }
                    let until = lease.until;
                    self.after_taking(&pass, until, plan(unknown, &policy, now)).await?
                }
            };
            match step {
                Step::Done(fresh) => return Ok(fresh),
                Step::Again => continue,
            }
        }
    }

    /// The provider's own limits before any lease: one refresh per interval
    /// (Exact Online: 570 s), and the backoff after earlier failures.
    fn held_back_by_provider(&self, pass: &Pass<'_>, now: i64) -> Option<Result<Fresh, RefreshError>> {
        let (conn, provider) = (pass.conn, pass.provider);
        let interval = millis(Duration::from_secs(provider.settings.min_refresh_interval_secs));
        if let Some(until) = conn
            .last_refresh_at
            .map(|t| t.saturating_add(interval))
            .filter(|t| *t > now)
        {
            let cause = format!(
                "provider `{}` allows one refresh per {} s",
                provider.name, provider.settings.min_refresh_interval_secs
            );
            return Some(self.held_back(conn, pass.mode, now, until, cause));
        }
        let until = conn.next_attempt_at.filter(|t| *t > now)?;
        let cause = conn
            .last_refresh_outcome
            .clone()
            .unwrap_or_else(|| "earlier failures".to_owned());
        Some(self.held_back(conn, pass.mode, now, until, cause))
    }

    /// Holding the lease (until `lease_until`): act on the plan.
    async fn after_taking(&self, pass: &Pass<'_>, lease_until: i64, plan: Plan) -> Result<Step, RefreshError> {
        match plan {
            Plan::Send => self.send(pass, lease_until, Sent::First { at: now_ms() }).await,
            // (Only after a take whose answer was lost.) The resend's time has not come: release.
            Plan::WaitUntil(until) => {
                let wait = Duration::from_millis(u64::try_from(until - now_ms()).unwrap_or(0));
                self.not_refreshed(pass, WAITING_TO_RESEND, UnknownSend::of(pass.conn), Some(wait))
                    .await
            }
            Plan::Resend(unknown) => {
                let resend = UnknownSend {
                    resent_at: Some(now_ms()),
                    ..unknown
                };
                self.send(pass, lease_until, Sent::Resend(resend)).await
            }
            Plan::GiveUp(unknown) => self.give_up(pass, unknown, "").await,
        }
    }

    /// No refresh now: a caller who only needs a token gets the current one
    /// while it still works; a caller who asked for a refresh learns when to
    /// try again.
    fn held_back(
        &self,
        conn: &Connection,
        mode: Mode,
        now: i64,
        until: i64,
        cause: String,
    ) -> Result<Fresh, RefreshError> {
        if mode == Mode::IfDue && usable(conn, now, USABLE_MARGIN_MS) {
            return self.fresh(conn, false);
        }
        Err(RefreshError::RetryLater {
            id: conn.id.clone(),
            until,
            cause,
        })
    }

    /// Seals a token for `field` of connection `id`.
    /// Seals a token set's access and refresh token for connection `id`:
    /// the one place tokens are sealed, so the one place they are bounded.
    fn seal_tokens(
        &self,
        id: &ConnectionId,
        tokens: &TokenSet,
    ) -> Result<(crate::connection::Sealed, Option<crate::connection::Sealed>), RefreshError> {
        let access = seal_bounded(&self.keys, id, "access_token", tokens.access_token.secret())?;
        let refresh = tokens
            .refresh_token
            .as_ref()
            .map(|t| seal_bounded(&self.keys, id, "refresh_token", t.secret()))
            .transpose()?;
        Ok((access, refresh))
    }

    fn fresh(&self, conn: &Connection, refreshed: bool) -> Result<Fresh, RefreshError> {
        let id = &conn.id;
        let sealed = conn.access_token.as_ref().ok_or_else(|| RefreshError::NotActive {
            id: id.clone(),
            status: conn.status,
            reason: Some("no access token".to_owned()),
            message: None,
        })?;
        let access = self
            .keys
            .open(id.as_str(), "access_token", &sealed.0)
            .map_err(|source| RefreshError::Crypto { id: id.clone(), source })?;
        Ok(Fresh {
            access_token: AccessToken::new(access),
            token_version: conn.token_version,
            expires_at: conn.access_expires_at.unwrap_or_default(),
            refreshed,
        })
    }

    async fn read(&self, id: &ConnectionId) -> Result<Connection, RefreshError> {
        self.store
            .get(id)
            .await
            .map_err(|source| RefreshError::Store { id: id.clone(), source })?
            .ok_or_else(|| RefreshError::NotFound(id.clone()))
    }

    fn write(&self, id: &ConnectionId, result: Result<Write, StoreError>) -> Result<Write, RefreshError> {
        result.map_err(|source| RefreshError::Store { id: id.clone(), source })
    }

    /// The provider's client credentials, read from Secrets Manager once per process.
    pub(crate) async fn credentials(&self, provider: &Provider) -> Result<ClientCredentials, SecretsError> {
        if let Some(found) = self
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&provider.name)
        {
            return Ok(found.clone());
        }
        let loaded = self.secrets.client_credentials(&provider.credentials_secret).await?;
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider.name.clone(), loaded.clone());
        Ok(loaded)
    }
}

/// An access token with less than this left is not handed out.
const USABLE_MARGIN_MS: i64 = 5_000;

/// Is the stored access token still good to hand out, with `margin` ms left?
fn usable(conn: &Connection, now: i64, margin: i64) -> bool {
    conn.access_token.is_some() && conn.access_expires_at.is_some_and(|e| e > now.saturating_add(margin))
}

/// How much of its life a token must have left for a caller that needs it
/// `valid_for_ms`: at least [`USABLE_MARGIN_MS`], and at most half the
/// lifetime the provider gave it (from its last refresh or the login), a
/// need a refresh could not meet any better.
fn needed_margin(conn: &Connection, valid_for_ms: i64) -> i64 {
    let issued_at = conn.last_refresh_at.unwrap_or(conn.created_at);
    let lifetime = conn.access_expires_at.map_or(0, |e| e.saturating_sub(issued_at));
    let reachable = if lifetime > 0 {
        valid_for_ms.min(lifetime / 2)
    } else {
        valid_for_ms
    };
    reachable.max(USABLE_MARGIN_MS)
}

/// When a token issued at `issued_at` (epoch ms) that lives `expires_in` seconds expires.
fn expiry(issued_at: i64, expires_in: u64) -> i64 {
    issued_at.saturating_add(i64::try_from(expires_in.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// Due by the refresh-due rule (lead before expiry, idle keep-alive, minimum interval)?
fn is_due(conn: &Connection, provider: &Provider, now: i64) -> bool {
    let Some(expires_at) = conn.access_expires_at else {
        return true;
    };
    now >= refresh_due_at(&provider.settings, expires_at, conn.last_refresh_at)
}

/// Seals a token for `field` of connection `id`, refusing one longer than
/// [`MAX_TOKEN_BYTES`] so that every lease and commit write stays small.
fn seal_bounded(
    keys: &KeyRing,
    id: &ConnectionId,
    field: &'static str,
    value: &str,
) -> Result<crate::connection::Sealed, RefreshError> {
    if value.len() > MAX_TOKEN_BYTES {
        return Err(RefreshError::TokenTooLarge {
            id: id.clone(),
            field,
            bytes: value.len(),
        });
    }
    keys.seal(id.as_str(), field, value)
        .map(crate::connection::Sealed)
        .map_err(|source| RefreshError::Crypto { id: id.clone(), source })
}

/// Why a [`TokenService`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("token key ring in secret `{secret}`: {source}")]
    KeyRing { secret: String, source: CryptoError },
    #[error("HTTP client: {0}")]
    Http(reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_back_refresh_says_when_as_a_time_and_a_duration() {
        let e = RefreshError::RetryLater {
            id: ConnectionId::parse("acme-1").expect("id"),
            until: now_ms() + 570_500,
            cause: "rate limited".to_owned(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("refreshing connection acme-1 failed (rate limited); next attempt at "),
            "{text}"
        );
        assert!(text.contains(" UTC, in 9 min"), "{text}");
        assert!(!text.contains("epoch"), "{text}");
    }

    #[test]
    fn a_token_over_the_bound_is_named_with_its_length() {
        let keys = KeyRing::from_json(&KeyRing::generate_json("k1").expect("rng")).expect("ring");
        let id = ConnectionId::parse("c1").expect("id");
        let seal = |field, len: usize| seal_bounded(&keys, &id, field, &"t".repeat(len));
        assert!(seal("access_token", 2_500).is_ok(), "Microsoft-sized tokens fit");
        assert!(seal("refresh_token", 1_800).is_ok());
        assert!(seal("access_token", MAX_TOKEN_BYTES).is_ok());
        assert!(matches!(
            seal("access_token", MAX_TOKEN_BYTES + 1),
            Err(RefreshError::TokenTooLarge { field: "access_token", bytes, .. }) if bytes == MAX_TOKEN_BYTES + 1
        ));
        assert!(matches!(
            seal("refresh_token", 1 << 20),
            Err(RefreshError::TokenTooLarge { field: "refresh_token", bytes, .. }) if bytes == 1 << 20
        ));
    }
}
