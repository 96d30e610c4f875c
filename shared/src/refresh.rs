//! The refresh protocol (DESIGN.md, invariants 1–6): a single-use refresh
//! token is never sent twice concurrently, a rotated one is never lost, an old
//! token set never overwrites a newer one, a send whose outcome is unknown is
//! recorded, and a dead connection says so and stops.
//!
//! One call, one worker:
//!
//! 1. Consistent read: `token_version = v`, expiry, lease.
//! 2. Fresh enough (or someone else just refreshed)? Use the access token.
//! 3. Take the lease: a conditional write on `token_version = v` and no live
//!    lease. Lost the race: wait for a version above `v` and use that.
//! 4. Send the refresh, with a timeout `T` shorter than the lease; no send
//!    starts with less than `T` of lease left.
//! 5. Commit the new tokens with `token_version = v + 1`, conditional on
//!    (`v`, lease owner = me), retrying with backoff while the lease lasts. A
//!    lost response is resolved from the item DynamoDB returns with the failed
//!    condition: is its `commit_id` mine?
//!
//! Failures: a dead-token answer moves the connection to `needs_reauth` with
//! the provider's message (after a consistent re-read); a provider that is
//! down releases the lease and backs off exponentially, with jitter, per
//! connection; a send whose outcome is unknown (timeout, dropped connection,
//! a worker that vanished holding the lease) is sent again only where that
//! is safe — the provider does not rotate, or the retired token is still
//! inside the provider's reuse grace period — and otherwise moves the
//! connection to `needs_reauth` with reason `refresh_outcome_unknown`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::config::{Config, Provider, UnknownProvider};
use crate::connection::store::{Commit, ConnectionStore, StoreError, Write};
use crate::connection::{Connection, ConnectionId, DUE_SHARDS, Lease, Status, now_ms, reason, refresh_due_at};
use crate::crypto::{CryptoError, KeyRing, random_token};
use crate::oauth::{ClientCredentials, TokenEndpoint, TokenError, TokenSet, http_client};
use crate::secret::{AccessToken, RefreshToken};
use crate::secrets::{SecretStore, SecretsError};
use crate::telemetry::error_chain;

/// Timing of the protocol.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// `T`: the token call's timeout.
    pub token_timeout: Duration,
    /// Lease time kept after `T` for committing. A commit that needs longer
    /// keeps retrying until the caller's deadline; from this lease's end plus
    /// the clock-skew margin another worker may take the lease over, and then
    /// the commit can no longer land.
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

    /// The least time before the deadline in which a send may start: the
    /// token call's timeout and one commit attempt.
    fn time_for_a_send(&self) -> Duration {
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
    #[error("refreshing connection {id} failed ({cause}); next attempt at {until} (epoch ms)")]
    RetryLater {
        id: ConnectionId,
        until: i64,
        cause: String,
    },
    #[error("connection {id}: not enough time left in this invocation to refresh safely")]
    Deadline { id: ConnectionId },
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
}

impl DueSummary {
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

/// One worker's attempt on one read of the connection.
struct Attempt<'a> {
    conn: &'a Connection,
    provider: &'a Provider,
    owner: &'a str,
    deadline: Instant,
    mode: Mode,
}

/// An earlier send of the same refresh token whose outcome is unknown: when
/// it left, and what is known about it. Every decision to send again is
/// measured from the first send, never from a retry.
#[derive(Debug, Clone, Copy)]
struct Unknown<'a> {
    sent_at: i64,
    detail: &'a str,
}

/// Clock difference between workers that a lease end is allowed to have:
/// nobody treats a lease as abandoned until this long after it ended.
const CLOCK_SKEW_MS: i64 = 2_000;
/// Time a commit needs at least: one DynamoDB attempt (see `aws::ATTEMPT_TIMEOUT`).
const MIN_COMMIT: Duration = Duration::from_secs(5);

/// How long the read that looks for a commit that landed unseen may take
/// after the deadline.
const LAST_READ: Duration = Duration::from_secs(1);

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
        let http = http_client(settings.token_timeout).map_err(LoadError::Http)?;
        Ok(TokenService {
            store,
            keys: Arc::new(keys),
            config,
            secrets,
            credentials: Mutex::new(HashMap::new()),
            http,
            settings,
            worker: format!("{:08x}", fastrand::u32(..)),
        })
    }

    pub fn store(&self) -> &ConnectionStore {
        &self.store
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
        let (params, param_error) = crate::sync::discover(&self.http, settings, &tokens.access_token).await;
        if let Some(error) = &param_error {
            warn!(connection = %id, provider, error, "a connection parameter could not be learned; the connection will not be synced");
        }
        let seal = |field: &str, value: &str| self.seal(id, field, value);
        let now = now_ms();
        let expires_at = expiry(now, tokens.expires_in);
        let login = crate::connection::store::NewLogin {
            id: id.clone(),
            provider: provider.to_owned(),
            kind,
            access_token: seal("access_token", tokens.access_token.secret())?,
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|t| seal("refresh_token", t.secret()))
                .transpose()?,
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
        Ok(saved)
    }

    /// A valid access token for the connection, refreshed through the protocol when due.
    pub async fn access_token(&self, id: &ConnectionId, deadline: Instant) -> Result<Fresh, RefreshError> {
        self.run(id, Mode::IfDue, deadline).await
    }

    /// Refreshes now, unless another worker refreshed it while this call waited.
    pub async fn refresh_now(&self, id: &ConnectionId, deadline: Instant) -> Result<Fresh, RefreshError> {
        self.run(id, Mode::Force, deadline).await
    }

    /// Disconnects: revokes the tokens at the provider's RFC 7009 endpoint
    /// when it has one (the refresh token first, which ends the whole grant),
    /// then erases them and marks the connection revoked. A provider that
    /// cannot revoke right now (503) leaves everything as it was: the tokens
    /// still live there, so they are kept and the caller retries.
    pub async fn revoke(&self, id: &ConnectionId) -> Result<Revoked, RefreshError> {
        for _ in 0..5 {
            let conn = self.read(id).await?;
            if conn.status == Status::Revoked {
                return Ok(Revoked {
                    at_provider: false,
                    already: true,
                });
            }
            if conn
                .lease
                .as_ref()
                .is_some_and(|l| l.until.saturating_add(CLOCK_SKEW_MS) > now_ms())
            {
                return Err(RefreshError::RetryLater {
                    id: id.clone(),
                    until: now_ms() + 1_000,
                    cause: "a refresh is in progress".to_owned(),
                });
            }
            let provider = self.config.provider(&conn.provider)?;
            let mut at_provider = false;
            if provider.revocation_url.is_some() {
                let credentials = self.credentials(provider).await?;
                let endpoint = TokenEndpoint {
                    provider,
                    credentials: &credentials,
                    http: &self.http,
                };
                let open = |field: &str, sealed: &crate::connection::Sealed| {
                    self.keys
                        .open(id.as_str(), field, &sealed.0)
                        .map_err(|source| RefreshError::Crypto { id: id.clone(), source })
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
                for (sealed, field, hint) in tokens {
                    if let Some(sealed) = sealed {
                        let token = open(field, sealed)?;
                        at_provider |= endpoint
                            .revoke(&token, hint)
                            .await
                            .map_err(|e| RefreshError::RetryLater {
                                id: id.clone(),
                                until: now_ms() + 60_000,
                                cause: format!("revocation at the provider failed, nothing was erased: {e}"),
                            })?;
                    }
                }
            }
            match self.store.mark_revoked(id, conn.token_version).await {
                Ok(Write::Done) => {
                    info!(connection = %id, at_provider, "connection revoked");
                    return Ok(Revoked {
                        at_provider,
                        already: false,
                    });
                }
                Ok(Write::Conflict(_)) => continue,
                Err(source) => return Err(RefreshError::Store { id: id.clone(), source }),
            }
        }
        Err(RefreshError::RetryLater {
            id: id.clone(),
            until: now_ms() + 1_000,
            cause: "the connection kept changing".into(),
        })
    }

    /// Refreshes every connection the refresh-due index says is due, at most
    /// `concurrency` at a time (the token-refresher's job). The index is read
    /// a page at a time, shard by shard, while refreshes run; no refresh
    /// starts once less than one send and one commit fit before `deadline`,
    /// and what is left waits for the next run. A failed query of one shard is
    /// logged and counted, and the other shards are still served.
    pub async fn refresh_due(self: &Arc<Self>, deadline: Instant, concurrency: usize) -> DueSummary {
        let now = now_ms();
        let start_by = deadline
            .checked_sub(self.settings.time_for_a_send())
            .unwrap_or_else(Instant::now);
        let mut summary = DueSummary {
            complete: true,
            ..DueSummary::default()
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        'shards: for shard in 0..DUE_SHARDS {
            let mut after = None;
            loop {
                if Instant::now() >= start_by {
                    summary.complete = false;
                    break 'shards;
                }
                let page = match self
                    .store
                    .due(&shard.to_string(), now, self.settings.due_page_size, after)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        error!(shard, error = %error_chain(&e), "the refresh-due index could not be read; this shard waits for the next run");
                        summary.shards_failed += 1;
                        summary.complete = false;
                        break;
                    }
                };
                // A connection refreshed in this run is due no sooner than its
                // refresh (`refresh_due_at`), after `now`: later pages never
                // bring it up again.
                summary.due += page.ids.len() as u64;
                for id in page.ids {
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        break 'shards;
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
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        while let Some(result) = tasks.join_next().await {
            summary.count(result);
        }
        summary
    }

    async fn run(&self, id: &ConnectionId, mode: Mode, deadline: Instant) -> Result<Fresh, RefreshError> {
        // Lease owners only need to differ, not to be secret.
        let owner = format!("{}/{:016x}", self.worker, fastrand::u64(..));
        let mut forced_from: Option<u64> = None;
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
            let access_valid = usable(&conn, now);
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
            // The provider's own limit (Exact Online: one refresh per 570 s): do not even ask.
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
                return self.held_back(&conn, mode, now, until, cause);
            }
            if let Some(until) = conn.next_attempt_at.filter(|t| *t > now) {
                let cause = conn
                    .last_refresh_outcome
                    .clone()
                    .unwrap_or_else(|| "earlier failures".to_owned());
                return self.held_back(&conn, mode, now, until, cause);
            }
            let attempt = Attempt {
                conn: &conn,
                provider,
                owner: &owner,
                deadline,
                mode,
            };
            let step = match &conn.lease {
                Some(lease) if lease.until.saturating_add(CLOCK_SKEW_MS) > now => {
                    // Someone else is refreshing. A caller whose token still works uses it;
                    // one that needs the new token waits for the new version. Nobody spends.
                    if access_valid && mode == Mode::IfDue {
                        return self.fresh(&conn, false);
                    }
                    debug!(connection = %id, version = conn.token_version, "waiting for another worker's refresh");
                    tokio::time::sleep(jitter(poll)).await;
                    poll = (poll * 2).min(self.settings.poll_max);
                    continue;
                }
                Some(lease) => self.recover_abandoned(&attempt, lease).await?,
                None => {
                    let until = self.lease_until(id, now, deadline)?;
                    match self.write(
                        id,
                        self.store.take_lease(id, conn.token_version, &owner, now, until).await,
                    )? {
                        Write::Conflict(_) => Step::Again,
                        Write::Done => {
                            // A refresh whose outcome is still unknown is only ever repeated where that is safe.
                            let earlier = conn.outcome_unknown_since.map(|sent_at| Unknown {
                                sent_at,
                                detail: "an earlier refresh's outcome is unknown",
                            });
                            self.send(&attempt, until, earlier).await?
                        }
                    }
                }
            };
            match step {
                Step::Done(fresh) => return Ok(fresh),
                Step::Again => continue,
            }
        }
    }

    /// The lease end for a send starting now: it outlives the token call's
    /// timeout plus the commit budget. No send starts unless the invocation
    /// has at least the timeout and time for one commit attempt left.
    fn lease_until(&self, id: &ConnectionId, now: i64, deadline: Instant) -> Result<i64, RefreshError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < self.settings.time_for_a_send() {
            return Err(RefreshError::Deadline { id: id.clone() });
        }
        Ok(now + self.settings.lease_ms().min(millis(left)))
    }

    /// Holding the lease: spend the refresh token and act on the answer.
    /// `earlier` is set when this send repeats one whose outcome is unknown.
    async fn send(
        &self,
        attempt: &Attempt<'_>,
        lease_until: i64,
        earlier: Option<Unknown<'_>>,
    ) -> Result<Step, RefreshError> {
        let Attempt {
            conn,
            provider,
            owner,
            deadline,
            ..
        } = *attempt;
        let id = &conn.id;
        if let Some(first) = earlier
            && !self.may_resend(provider, first.sent_at)
        {
            let message = unknown_outcome_message(provider, first.sent_at, first.detail);
            return self
                .needs_reauth(attempt, reason::REFRESH_OUTCOME_UNKNOWN, &message)
                .await;
        }
        let still_unknown = earlier.map(|u| u.sent_at);
        let Some(sealed) = &conn.refresh_token else {
            return self
                .needs_reauth(attempt, "no_refresh_token", "the login returned no refresh token")
                .await;
        };
        // Every exit before the send releases the lease: a lease left behind
        // would make the next worker assume a send happened.
        let refresh_token = match self.keys.open(id.as_str(), "refresh_token", &sealed.0) {
            Ok(token) => RefreshToken::new(token),
            Err(source) => {
                self.back_off(
                    attempt,
                    "the stored refresh token cannot be decrypted",
                    still_unknown,
                    None,
                )
                .await?;
                return Err(RefreshError::Crypto { id: id.clone(), source });
            }
        };
        let credentials = match self.credentials(provider).await {
            Ok(credentials) => credentials,
            Err(e) => {
                self.back_off(attempt, "client credentials unavailable", still_unknown, None)
                    .await?;
                return Err(e.into());
            }
        };
        // Invariant 1: never start a send with less lease left than the call's
        // timeout; and never one whose commit would have no time left (what
        // came before the send, e.g. fetching the credentials, took it).
        if lease_until - now_ms() < millis(self.settings.token_timeout)
            || deadline.saturating_duration_since(Instant::now()) < self.settings.time_for_a_send()
        {
            self.back_off(attempt, "too little time left to send and commit", still_unknown, None)
                .await?;
            return Err(RefreshError::Deadline { id: id.clone() });
        }
        let sent_at = now_ms();
        let endpoint = TokenEndpoint {
            provider,
            credentials: &credentials,
            http: &self.http,
        };
        debug!(connection = %id, version = conn.token_version, resend = earlier.is_some(), "sending refresh");
        match endpoint.refresh(&refresh_token).await {
            Ok(tokens) => self.commit(attempt, tokens, sent_at).await,
            Err(TokenError::DeadToken { status, error, message }) => {
                // Consistent re-read: a newer version means someone else rotated, not a dead connection.
                let now = self.read(id).await?;
                if now.token_version != conn.token_version || now.lease.as_ref().is_none_or(|l| l.owner != owner) {
                    return Ok(Step::Again);
                }
                let message = format!("{message} (HTTP {status}, {error})");
                self.needs_reauth(attempt, reason::DEAD_REFRESH_TOKEN, &message).await
            }
            Err(e @ (TokenError::OutcomeUnknown(_) | TokenError::InvalidResponse(_))) => {
                let detail = e.to_string();
                warn!(connection = %id, version = conn.token_version, error = %detail, "refresh outcome unknown");
                let first = earlier.unwrap_or(Unknown {
                    sent_at,
                    detail: &detail,
                });
                if earlier.is_none() && self.may_resend(provider, first.sent_at) {
                    let until = self.lease_until(id, now_ms(), deadline)?;
                    return match self.write(id, self.store.extend_lease(id, conn.token_version, owner, until).await)? {
                        Write::Conflict(_) => Ok(Step::Again),
                        Write::Done => Box::pin(self.send(attempt, until, Some(first))).await,
                    };
                }
                if !provider.settings.rotates_refresh_tokens {
                    // The old token stays good: a provider that keeps failing is simply down.
                    return self.not_refreshed(attempt, &detail, None, None).await;
                }
                let message = unknown_outcome_message(provider, first.sent_at, first.detail);
                self.needs_reauth(attempt, reason::REFRESH_OUTCOME_UNKNOWN, &message)
                    .await
            }
            // The refresh did not happen. An earlier unknown outcome stays on record.
            Err(e) => {
                let wait = e.retry_after();
                self.not_refreshed(attempt, &e.to_string(), still_unknown, wait).await
            }
        }
    }

    /// A refresh that did not happen: back off, then give the caller who only
    /// needs a token the current one while it lasts; tell a caller who asked
    /// for a refresh that it failed.
    async fn not_refreshed(
        &self,
        attempt: &Attempt<'_>,
        cause: &str,
        unknown_since: Option<i64>,
        wait_at_least: Option<Duration>,
    ) -> Result<Step, RefreshError> {
        let until = self.back_off(attempt, cause, unknown_since, wait_at_least).await?;
        self.held_back(attempt.conn, attempt.mode, now_ms(), until, cause.to_owned())
            .map(Step::Done)
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
        if mode == Mode::IfDue && usable(conn, now) {
            return self.fresh(conn, false);
        }
        Err(RefreshError::RetryLater {
            id: conn.id.clone(),
            until,
            cause,
        })
    }

    /// A lease whose holder vanished before committing or releasing: it may
    /// have sent the refresh. Send again only where that is safe; otherwise
    /// the connection needs a new login.
    async fn recover_abandoned(&self, attempt: &Attempt<'_>, abandoned: &Lease) -> Result<Step, RefreshError> {
        let Attempt {
            conn, owner, deadline, ..
        } = *attempt;
        let id = &conn.id;
        let first = Unknown {
            sent_at: conn.outcome_unknown_since.unwrap_or(abandoned.taken_at),
            detail: "the worker that sent it stopped before recording the answer",
        };
        let now = now_ms();
        let until = self.lease_until(id, now, deadline)?;
        let taken = self
            .store
            .take_over_lease(id, conn.token_version, abandoned, owner, now, until)
            .await;
        if let Write::Conflict(_) = self.write(id, taken)? {
            return Ok(Step::Again);
        }
        warn!(connection = %id, version = conn.token_version, abandoned_by = %abandoned.owner, "took over an abandoned refresh lease");
        // `send` decides, from the first send's time, whether repeating it is safe.
        self.send(attempt, until, Some(first)).await
    }

    /// May the refresh token sent at `sent_at` be sent again? Only where the
    /// provider does not rotate, or the retired token is still inside the
    /// reuse grace period for the whole of the new call.
    fn may_resend(&self, provider: &Provider, sent_at: i64) -> bool {
        let settings = &provider.settings;
        if !settings.rotates_refresh_tokens {
            return true;
        }
        let grace = i64::try_from(settings.reuse_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        grace > 0 && now_ms() + millis(self.settings.token_timeout) < sent_at.saturating_add(grace)
    }

    /// Invariant 2: the new token set is committed before anything uses it,
    /// retrying with jittered backoff until the invocation's deadline, also
    /// past the lease's end: the write is conditional on the lease owner, so
    /// it can only land while nobody has taken the lease over. Each DynamoDB
    /// call is cut off at the deadline, and before giving up a last read
    /// checks whether one of them landed after all.
    async fn commit(&self, attempt: &Attempt<'_>, tokens: TokenSet, sent_at: i64) -> Result<Step, RefreshError> {
        let Attempt {
            conn,
            provider,
            owner,
            deadline,
            ..
        } = *attempt;
        let id = &conn.id;
        let seal = |field: &str, value: &str| self.seal(id, field, value);
        // The lifetime counts from when the provider could have issued it.
        let now = now_ms();
        let expires_at = expiry(sent_at, tokens.expires_in);
        let commit = Commit {
            id: id.clone(),
            seen_version: conn.token_version,
            owner: owner.to_owned(),
            commit_id: random_token().map_err(|e| RefreshError::Crypto {
                id: id.clone(),
                source: e.into(),
            })?,
            access_token: seal("access_token", tokens.access_token.secret())?,
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|t| seal("refresh_token", t.secret()))
                .transpose()?,
            access_expires_at: expires_at,
            scopes: tokens.scope.clone(),
            refresh_due_at: refresh_due_at(&provider.settings, expires_at, Some(now)),
            instance_url: tokens.instance_url.clone(),
        };
        let mut delay = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = match tokio::time::timeout(left, self.store.commit(&commit)).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::TimedOut {
                    operation: "UpdateItem(commit)",
                }),
            };
            match result {
                Ok(Write::Done) => break,
                // The write landed and its response was lost: DynamoDB shows our commit id.
                Ok(Write::Conflict(Some(now))) if now.commit_id.as_deref() == Some(commit.commit_id.as_str()) => {
                    info!(connection = %id, "commit confirmed after a lost response");
                    break;
                }
                Ok(Write::Conflict(_)) => {
                    error!(connection = %id, version = conn.token_version, "commit refused: the connection changed under our lease");
                    return Ok(Step::Again);
                }
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    warn!(connection = %id, error = %error_chain(&e), "commit failed; retrying");
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    // Did one of the attempts land after all? (Briefly: the deadline has come.)
                    if let Ok(Ok(Some(now))) = tokio::time::timeout(LAST_READ, self.store.get(id)).await
                        && now.commit_id.as_deref() == Some(commit.commit_id.as_str())
                    {
                        info!(connection = %id, "commit confirmed by a last read");
                        break;
                    }
                    error!(connection = %id, version = conn.token_version, error = %error_chain(&e),
                        "the rotated tokens could not be stored; the next worker will find the lease abandoned");
                    return Err(RefreshError::Store {
                        id: id.clone(),
                        source: e,
                    });
                }
            }
        }
        info!(connection = %id, version = conn.token_version + 1, expires_in = tokens.expires_in, rotated = tokens.refresh_token.is_some(), "refreshed");
        Ok(Step::Done(Fresh {
            access_token: tokens.access_token,
            token_version: conn.token_version + 1,
            expires_at,
            refreshed: true,
        }))
    }

    async fn needs_reauth(
        &self,
        attempt: &Attempt<'_>,
        why: &'static str,
        message: &str,
    ) -> Result<Step, RefreshError> {
        let (conn, owner) = (attempt.conn, attempt.owner);
        let id = &conn.id;
        match self.write(
            id,
            self.store
                .mark_needs_reauth(id, conn.token_version, owner, why, message)
                .await,
        )? {
            Write::Conflict(_) => Ok(Step::Again),
            Write::Done => {
                warn!(connection = %id, reason = why, message, "connection needs a new login");
                Err(RefreshError::NeedsReauth {
                    id: id.clone(),
                    reason: why,
                    message: message.to_owned(),
                })
            }
        }
    }

    /// Releases the lease after a refresh that did not happen, with
    /// exponential backoff and jitter per connection. Returns the next attempt time.
    /// `unknown_since` keeps an earlier send with an unknown outcome on record,
    /// so no later attempt repeats it where that is not safe. `wait_at_least`
    /// is the provider's `Retry-After`: the backoff is never shorter, and never
    /// longer than `max_backoff` because of it.
    async fn back_off(
        &self,
        attempt: &Attempt<'_>,
        cause: &str,
        unknown_since: Option<i64>,
        wait_at_least: Option<Duration>,
    ) -> Result<i64, RefreshError> {
        let (conn, owner) = (attempt.conn, attempt.owner);
        let failures = conn.consecutive_failures.saturating_add(1);
        let exponent = failures.saturating_sub(1).min(16);
        let delay = (self.settings.base_backoff * 2u32.saturating_pow(exponent)).min(self.settings.max_backoff);
        // The provider's wait, spread over a quarter more so that the
        // connections one 429 stopped do not all come back at the same instant.
        let floor = wait_at_least.map_or(Duration::ZERO, |wait| wait.mul_f64(1.0 + fastrand::f64() / 4.0));
        let next = now_ms() + millis(jitter(delay).max(floor).min(self.settings.max_backoff));
        warn!(connection = %conn.id, failures, cause, "refresh failed; backing off");
        self.write(
            &conn.id,
            self.store
                .release_after_failure(
                    &conn.id,
                    conn.token_version,
                    owner,
                    cause,
                    failures,
                    next,
                    unknown_since,
                )
                .await,
        )?;
        Ok(next)
    }

    /// Seals a token for `field` of connection `id`.
    fn seal(&self, id: &ConnectionId, field: &str, value: &str) -> Result<crate::connection::Sealed, RefreshError> {
        self.keys
            .seal(id.as_str(), field, value)
            .map(crate::connection::Sealed)
            .map_err(|source| RefreshError::Crypto { id: id.clone(), source })
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

/// Is the stored access token still good to hand out?
fn usable(conn: &Connection, now: i64) -> bool {
    conn.access_token.is_some() && conn.access_expires_at.is_some_and(|e| e > now + USABLE_MARGIN_MS)
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

fn unknown_outcome_message(provider: &Provider, sent_at: i64, detail: &str) -> String {
    format!(
        "a refresh sent at {sent_at} (epoch ms) has an unknown outcome ({detail}); provider `{}` rotates refresh \
         tokens without a reuse grace period, so the old one was not sent again",
        provider.name
    )
}

/// A random duration between half and all of `d`, so workers and connections
/// do not retry in lockstep.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
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
