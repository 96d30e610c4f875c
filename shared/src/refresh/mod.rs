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
//!
//! A refresher run's refresh of a connection its index found due starts at
//! step 3 without step 1: the lease write's condition is the read's decision
//! and the write returns the item either way ([`TokenService::access_token_in_run`]).
//!
//! Beside the steps: the token-refresher's run over the refresh-due index
//! (`due.rs`), disconnecting (`revoke.rs`), the errors (`error.rs`) and the
//! protocol's timing (`settings.rs`).

mod commit;
mod decide;
mod due;
mod error;
mod lease;
mod limit;
mod revoke;
mod send;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

pub use self::decide::{Action, Answer, Plan, ResendPolicy, Sent, UnknownSend, decide, plan};
pub use self::due::{DueRun, DueSummary, shards_with_due};
pub use self::error::{LoadError, RefreshError};
use self::lease::LeaseState;
pub use self::limit::{Permit, ProviderLimits, ProviderLoad, RunPlace, RunPlaces};
pub use self::revoke::Revoked;
pub use self::settings::RefreshSettings;
use crate::config::{Config, Provider};
use crate::connection::store::{ConnectionStore, DueLease, Write};
use crate::connection::{Connection, ConnectionId, Status, now_ms, refresh_due_at};
use crate::crypto::KeyRing;
use crate::dynamo::StoreError;
use crate::oauth::{ClientCredentials, TokenSet};
use crate::reload::{CHECK_INTERVAL, KeyRingError, KeySource, LiveConfig, LiveKeys, Reloads};
use crate::secret::AccessToken;
use crate::secrets::{SecretStore, SecretsError};

/// The longest token (access or refresh) stored, in bytes. Real ones are a
/// few kilobytes (Microsoft: ~1,800-character refresh tokens, ~2,500-character
/// JWT access tokens); the bound keeps every lease and commit write small.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

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
    /// This refresh's place under the provider's `token_concurrency`.
    permit: Option<&'a Permit>,
}

/// Where a call's pass through the protocol starts.
#[derive(Default)]
struct Start<'a> {
    /// A refresher run's place, given back while the refresh waits for its
    /// provider's.
    run_place: Option<&'a RunPlace>,
    /// The call's lease owner, when a lease was taken under it before the loop.
    owner: Option<String>,
    /// The configuration that decided before the loop.
    config: Option<Arc<Config>>,
    /// The item as a write returned it: the first pass needs no read.
    first: Option<Connection>,
}

/// Why no refresh is sent before an unknown send's resend may go.
const WAITING_TO_RESEND: &str = "waiting to resend a refresh whose outcome is unknown";

/// The one entry point for access tokens: every function and the CLI go
/// through it. Build it once per process.
///
/// The configuration and the key ring follow their secrets without a
/// restart ([`crate::reload`]): [`TokenService::reload_if_changed`] at the
/// start of an invocation, and a re-read of the ring when a value names a
/// key it does not list. Each call takes a snapshot of the configuration
/// ([`TokenService::config`]) when it starts.
#[derive(Debug)]
pub struct TokenService {
    store: ConnectionStore,
    keys: KeySource,
    config: LiveConfig,
    secrets: SecretStore,
    /// By credentials secret name, so a reloaded configuration that names
    /// another secret reads it.
    credentials: Mutex<HashMap<String, ClientCredentials>>,
    http: reqwest::Client,
    settings: RefreshSettings,
    worker: String,
    /// Sends with an unknown outcome since the process started (for metrics).
    unknown_outcomes: std::sync::atomic::AtomicU64,
    /// Where connection events go (off unless [`TokenService::with_events`]).
    events: crate::events::EventSink,
    /// Refreshes in flight per provider (`token_concurrency`, AIMD).
    limits: ProviderLimits,
}

impl TokenService {
    /// The token service on `store`. The key ring named by the configuration
    /// is read from Secrets Manager when first needed, or in the background
    /// from [`TokenService::prefetch_keys`] on. `config`: an `Arc<Config>`
    /// (never reloaded) or a [`LiveConfig`] that the process's other
    /// services share.
    pub async fn load(
        config: impl Into<LiveConfig>,
        store: ConnectionStore,
        secrets: SecretStore,
        settings: RefreshSettings,
    ) -> Result<TokenService, LoadError> {
        let config: LiveConfig = config.into();
        let name = config.current().service.token_key_secret.clone();
        let keys = KeySource::lazy(secrets.clone(), &name, CHECK_INTERVAL);
        let http = crate::http::client(settings.token_timeout, crate::http::Pooling::Off).map_err(LoadError::Http)?;
        Ok(TokenService {
            store,
            keys,
            config,
            secrets,
            credentials: Mutex::new(HashMap::new()),
            http,
            settings,
            worker: format!("{:08x}", fastrand::u32(..)),
            unknown_outcomes: std::sync::atomic::AtomicU64::new(0),
            events: crate::events::EventSink::off(),
            limits: ProviderLimits::new(1),
        })
    }

    /// Keeps `token_concurrency / groups` of each provider's cap: the
    /// token-refresher, one of the stack's `RefreshGroups` shard groups.
    pub fn with_token_groups(mut self, groups: u32) -> TokenService {
        self.limits = ProviderLimits::new(groups);
        self
    }

    /// Each provider's refreshes in flight and limit so far (the refresher's
    /// metrics).
    pub fn provider_loads(&self) -> Vec<ProviderLoad> {
        self.limits.loads()
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

    /// The key ring's version is checked at most once per `interval`
    /// (default [`CHECK_INTERVAL`]; tests make it shorter).
    pub fn with_key_check_interval(mut self, interval: std::time::Duration) -> TokenService {
        self.keys = self.keys.checked_every(interval);
        self
    }

    /// The configuration in use now: keep the snapshot for the whole of a
    /// piece of work.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// The configuration's holder, for services that share it.
    pub fn live_config(&self) -> &LiveConfig {
        &self.config
    }

    /// The key ring in use now (read first if it was not yet).
    pub async fn keys(&self) -> Result<Arc<KeyRing>, KeyRingError> {
        Ok(self.keys.get().await?.current())
    }

    /// The key ring's holder: seals under the current key, and opens values
    /// under a key added since the process started. Read from its secret on
    /// the first call, unless [`TokenService::prefetch_keys`] did already.
    pub async fn live_keys(&self) -> Result<&LiveKeys, KeyRingError> {
        self.keys.get().await
    }

    /// Starts reading the key ring in the background and returns at once: a
    /// function's start does not wait for it, only the first work that seals
    /// or opens a token does ([`KeySource`]). Call it inside the runtime.
    pub fn prefetch_keys(&self) {
        self.keys.prefetch();
    }

    /// At the start of an invocation: picks up a pushed configuration and a
    /// rotated key ring, each checked at most once a minute
    /// ([`crate::reload`]).
    pub async fn reload_if_changed(&self) -> Reloads {
        let (config, keys) = tokio::join!(self.config.check(), self.keys.check());
        Reloads { config, keys }
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
        let config = self.config();
        let settings = &config.provider(provider)?.settings;
        let (params, param_error) = crate::connection::params::learn(&self.http, settings, &tokens.access_token).await;
        if let Some(error) = &param_error {
            warn!(connection = %id, provider, error, "a connection parameter could not be learned; the connection will not be synced");
        }
        let (access_token, refresh_token) = self.seal_tokens(id, tokens).await?;
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
        // Boxed: the protocol's state is large, and every caller's future would carry it.
        Box::pin(self.run(id, Mode::IfDue, deadline, None, 0, Start::default())).await
    }

    /// [`TokenService::access_token`] for a refresher run, of a connection
    /// the refresh-due index found due, holding one of the run's places
    /// (given back while the refresh waits for a place under its provider's
    /// cap). The lease is taken first, without a read: the write's condition
    /// is the read's decision, and the item comes back either way (see
    /// [`ConnectionStore::take_due_lease`]), so a refresh is two writes, the
    /// lease and the commit. A connection the write finds not due, leased or
    /// with an unknown send on record goes through the protocol from the
    /// item it returned.
    ///
    /// [`ConnectionStore::take_due_lease`]: crate::connection::store::ConnectionStore::take_due_lease
    pub async fn access_token_in_run(
        &self,
        id: &ConnectionId,
        deadline: Instant,
        place: &RunPlace,
    ) -> Result<Fresh, RefreshError> {
        Box::pin(self.run_due(id, deadline, place)).await
    }

    /// [`TokenService::access_token_in_run`]'s lease first, then the loop.
    async fn run_due(&self, id: &ConnectionId, deadline: Instant, place: &RunPlace) -> Result<Fresh, RefreshError> {
        let owner = self.owner();
        let config = self.config();
        let (keys, taken) = tokio::join!(self.keys.get(), self.lease_due(id, &owner, deadline));
        let first = match taken? {
            DueLease::Refused(None) => return Err(RefreshError::NotFound(id.clone())),
            DueLease::Refused(Some(conn)) => Some(*conn),
            DueLease::Taken(conn) if keys.is_ok() && send_on_due_lease(&config, &conn) => Some(*conn),
            DueLease::Taken(conn) => {
                // The ring could not be read, or the configuration holds
                // this refresh back (a provider it no longer has, a longer
                // lead or interval since the due time was written): the
                // lease goes back unused, and the loop reads and decides.
                self.give_back_unsent(&conn, &owner, deadline).await?;
                None
            }
        };
        keys?;
        let start = Start {
            run_place: Some(place),
            owner: Some(owner),
            config: Some(config),
            first,
        };
        self.run(id, Mode::IfDue, deadline, None, 0, start).await
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
        self.run(id, Mode::IfDue, deadline, None, millis(valid_for), Start::default())
            .await
    }

    /// Refreshes now, unless another worker refreshed it while this call waited.
    pub async fn refresh_now(&self, id: &ConnectionId, deadline: Instant) -> Result<Fresh, RefreshError> {
        self.run(id, Mode::Force, deadline, None, 0, Start::default()).await
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
        self.run(id, Mode::Force, deadline, Some(refused_version), 0, Start::default())
            .await
    }

    /// A lease owner id for one call: unique, not secret.
    fn owner(&self) -> String {
        format!("{}/{:016x}", self.worker, fastrand::u64(..))
    }

    /// The protocol's loop. `forced_from`, with [`Mode::Force`]: the version
    /// to replace (`None`: the one first read). `valid_for_ms`: how long the
    /// caller needs the token (see [`TokenService::access_token_valid_for`]).
    ///
    /// One loop: the protocol's steps as the module comment numbers them, read
    /// in one place.
    async fn run(
        &self,
        id: &ConnectionId,
        mode: Mode,
        deadline: Instant,
        forced_from: Option<u64>,
        valid_for_ms: i64,
        start: Start<'_>,
    ) -> Result<Fresh, RefreshError> {
        let Start {
            run_place,
            owner,
            config,
            mut first,
        } = start;
        let owner = owner.unwrap_or_else(|| self.owner());
        let config = config.unwrap_or_else(|| self.config());
        let mut forced_from = forced_from;
        let mut poll = self.settings.poll_min;
        loop {
            if Instant::now() >= deadline {
                return Err(RefreshError::Deadline { id: id.clone() });
            }
            // The first work of a process waits for its key ring here,
            // beside the connection's read (none when the call starts from
            // an item a write returned).
            let read = async {
                match first.take() {
                    Some(conn) => Ok(conn),
                    None => self.read(id).await,
                }
            };
            let (keys, conn) = tokio::join!(self.keys.get(), read);
            let (keys, conn) = (keys?, conn?);
            if let Some(sealed) = &conn.access_token {
                // Sealed by a process with a rotated ring: re-read ours.
                keys.prepare(&sealed.0).await;
            }
            if conn.status != Status::Active {
                return Err(RefreshError::NotActive {
                    id: id.clone(),
                    status: conn.status,
                    reason: conn.status_reason,
                    message: conn.provider_message,
                });
            }
            let provider = config.provider(&conn.provider)?;
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
                permit: None,
            };
            let lease = LeaseState::of(&conn, &owner, now);
            if let LeaseState::Free = lease
                && let Some(held_back) = self.held_back_by_provider(&pass, now)
            {
                return held_back;
            }
            // A place under the provider's cap before the lease: a refresh
            // waiting for one holds no lease and spends none of it.
            let permit = match lease {
                LeaseState::Live(_) => None,
                LeaseState::Mine(mine) => {
                    match self.place_at(provider, id, deadline, run_place, Some(mine.until)).await {
                        Ok(permit) => Some(permit),
                        // No place before too little of our lease was left to
                        // send: it goes back unused, and the loop waits for a
                        // place without one.
                        Err(e) => {
                            self.give_back_unsent(&conn, &owner, deadline).await?;
                            if self.settings.no_send_before(deadline) {
                                return Err(e);
                            }
                            continue;
                        }
                    }
                }
                _ => Some(self.place_at(provider, id, deadline, run_place, None).await?),
            };
            let pass = Pass {
                permit: permit.as_ref(),
                ..pass
            };
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

    /// A place among the refreshes in flight to `provider`, waited for while
    /// a send still fits before `deadline` and, for a caller that holds the
    /// lease already (until `lease_until`, epoch ms), in what is left of it.
    /// A refresher run's refresh gives its place in the run back while it
    /// waits (`run_place`), and takes one again once it has the provider's.
    async fn place_at(
        &self,
        provider: &Provider,
        id: &ConnectionId,
        deadline: Instant,
        run_place: Option<&RunPlace>,
        lease_until: Option<i64>,
    ) -> Result<Permit, RefreshError> {
        let cap = provider.token_concurrency(&self.config().service);
        if let Some(permit) = self.limits.try_acquire(&provider.name, cap) {
            return Ok(permit);
        }
        if let Some(place) = run_place {
            place.give_back();
        }
        let mut until = deadline
            .checked_sub(self.settings.time_for_a_send())
            .unwrap_or_else(Instant::now);
        if let Some(lease_until) = lease_until {
            let lease_left = crate::when::instant_of(lease_until, now_ms())
                .checked_sub(self.settings.lease_needed_to_send())
                .unwrap_or_else(Instant::now);
            until = until.min(lease_left);
        }
        let permit = self
            .limits
            .acquire(&provider.name, cap, until)
            .await
            .ok_or_else(|| RefreshError::Deadline { id: id.clone() })?;
        if let Some(place) = run_place {
            place.retake().await;
        }
        Ok(permit)
    }

    /// The provider's own limits before any lease: one refresh per interval
    /// (Exact Online: 570 s), and the backoff after earlier failures.
    fn held_back_by_provider(&self, pass: &Pass<'_>, now: i64) -> Option<Result<Fresh, RefreshError>> {
        let (conn, provider) = (pass.conn, pass.provider);
        if let Some(until) = next_refresh_allowed_at(conn, provider).filter(|t| *t > now) {
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

    /// Seals a token set's access and refresh token for connection `id`:
    /// the one place tokens are sealed, so the one place they are bounded.
    async fn seal_tokens(
        &self,
        id: &ConnectionId,
        tokens: &TokenSet,
    ) -> Result<(crate::connection::Sealed, Option<crate::connection::Sealed>), RefreshError> {
        let keys = self.keys.get().await?.current();
        let access = seal_bounded(&keys, id, "access_token", tokens.access_token.secret())?;
        let refresh = tokens
            .refresh_token
            .as_ref()
            .map(|t| seal_bounded(&keys, id, "refresh_token", t.secret()))
            .transpose()?;
        Ok((access, refresh))
    }

    /// The connection's access token, opened with the ring its pass read
    /// (every pass reads the ring before the connection is decided on).
    fn fresh(&self, conn: &Connection, refreshed: bool) -> Result<Fresh, RefreshError> {
        let id = &conn.id;
        let sealed = conn.access_token.as_ref().ok_or_else(|| RefreshError::NotActive {
            id: id.clone(),
            status: conn.status,
            reason: Some("no access token".to_owned()),
            message: None,
        })?;
        let keys = self.keys.loaded().ok_or_else(|| self.keys.not_read())?;
        let access = keys
            .current()
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

    /// The provider's client credentials, read from Secrets Manager once per
    /// process and secret.
    pub(crate) async fn credentials(&self, provider: &Provider) -> Result<ClientCredentials, SecretsError> {
        if let Some(found) = self
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&provider.credentials_secret)
        {
            return Ok(found.clone());
        }
        let loaded = self.secrets.client_credentials(&provider.credentials_secret).await?;
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider.credentials_secret.clone(), loaded.clone());
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

/// Whether a lease taken without a read is one the loop sends under:
/// `config` knows the provider and has the connection due, and the
/// provider's interval since the last refresh has passed (the rest of the
/// read's decision was the write's condition).
fn send_on_due_lease(config: &Config, conn: &Connection) -> bool {
    let Ok(provider) = config.provider(&conn.provider) else {
        return false;
    };
    let now = now_ms();
    let interval_passed = next_refresh_allowed_at(conn, provider).is_none_or(|t| t <= now);
    interval_passed && (!usable(conn, now, USABLE_MARGIN_MS) || is_due(conn, provider, now))
}

/// When the provider's minimum interval since the last refresh ends
/// (Exact Online: 570 s), if the connection was refreshed.
fn next_refresh_allowed_at(conn: &Connection, provider: &Provider) -> Option<i64> {
    let interval = millis(Duration::from_secs(provider.settings.min_refresh_interval_secs));
    conn.last_refresh_at.map(|t| t.saturating_add(interval))
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

#[cfg(test)]
mod tests {
    use super::*;

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
