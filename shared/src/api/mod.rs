//! What the operator's own application can do (the `api` function's routes,
//! docs/api.md): make connect links, read connections (never a token),
//! revoke, get a fresh access token, call the provider through the proxy,
//! run a sync now, read its status, and read the records changed since a
//! cursor. Each operation goes through the same code as the CLI and the
//! functions: [`LinkOrder`] for links, [`TokenService`] for every token, the
//! shared rate budget for the proxy, the job's change numbers for changes.
//!
//! The HTTP mapping (routes, JSON, headers) is the function crate's; here
//! every failure is an [`ApiError`] that knows its status and code.

pub mod cursor;
pub mod proxy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;
use crate::connection::{Connection, ConnectionId, ConnectionKind, Status, now_ms};
use crate::login::flow::LinkKeySource;
use crate::login::link::LinkOrder;
use crate::refresh::{RefreshError, TokenService};
use crate::reload::LiveConfig;
use crate::sync::jobs::{JobStore, RunRecord, job_id};
use crate::sync::records::{ChangePlace, RecordStore};
use crate::telemetry::error_chain;

pub use cursor::Cursor;

/// The lifetime of a link made through the API when `expires_in` is not given
/// (as `connect-link --expires`); at most [`crate::login::MAX_LINK_LIFETIME`].
pub const DEFAULT_LINK_SECS: u64 = 3600;
/// How long a token from the token route must stay valid, unless asked otherwise.
pub const DEFAULT_MIN_VALID_SECS: u64 = 60;
/// The most `min_valid_secs` may ask for (tokens of most providers live an hour).
pub const MAX_MIN_VALID_SECS: u64 = 3600;
/// Page sizes: default and most, for connections and for changes.
pub const DEFAULT_PAGE: i32 = 100;
pub const MAX_PAGE: i32 = 1000;
/// Runs shown per sync.
const RUNS_SHOWN: i32 = 10;

/// A failed API call: the HTTP status, a stable code and a message for the
/// developer calling it. Messages never carry a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input, naming the field (400).
    #[error("{field}: {message}")]
    BadInput { field: String, message: String },
    /// An unknown connection, sync or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The connection needs a new login (or was revoked): 409.
    #[error("{message}")]
    NeedsLogin {
        message: String,
        status: String,
        reason: Option<String>,
        provider_message: Option<String>,
    },
    /// The shared rate budget says wait (429, `Retry-After`).
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    /// The provider failed or cannot be reached (502, `Retry-After` when known).
    #[error("{message}")]
    Provider {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// Try again shortly: someone else holds the connection's lease, or
    /// this call ran out of time (503, `Retry-After`).
    #[error("{message}")]
    Unavailable { message: String, retry_after_secs: u64 },
    /// A method the route does not answer (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Our side failed: DynamoDB, Secrets Manager, the key ring (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadInput { .. } => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::NeedsLogin { .. } => 409,
            ApiError::RateLimited { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::Provider { .. } => 502,
            ApiError::Unavailable { .. } => 503,
        }
    }

    /// The `error` field of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadInput { .. } => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::NeedsLogin { .. } => "needs_login",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal",
            ApiError::Provider { .. } => "provider_error",
            ApiError::Unavailable { .. } => "unavailable",
        }
    }

    /// The `Retry-After` header's seconds, when there is one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_secs, .. } | ApiError::Unavailable { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            ApiError::Provider { retry_after_secs, .. } => *retry_after_secs,
            _ => None,
        }
    }

    /// The JSON body: `{"error", "message"}`, and the connection's state for a 409.
    pub fn body(&self) -> Value {
        let mut body = json!({ "error": self.code(), "message": self.to_string() });
        if let ApiError::NeedsLogin {
            status,
            reason,
            provider_message,
            ..
        } = self
        {
            body["status"] = json!(status);
            body["reason"] = json!(reason);
            body["provider_message"] = json!(provider_message);
        }
        body
    }

    pub fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadInput {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn internal(error: &(dyn std::error::Error + 'static)) -> ApiError {
        ApiError::Internal(error_chain(error))
    }
}

/// Seconds from now (epoch ms) until `until`, at least 1.
pub fn seconds_until(until: i64, now: i64) -> u64 {
    u64::try_from(until.saturating_sub(now)).map_or(1, |ms| ms.div_ceil(1000).max(1))
}

impl From<RefreshError> for ApiError {
    fn from(error: RefreshError) -> ApiError {
        match error {
            RefreshError::NotFound(id) => ApiError::NotFound(format!("connection {id} does not exist")),
            RefreshError::NotActive {
                ref status,
                ref reason,
                ref message,
                ..
            } => ApiError::NeedsLogin {
                status: status.as_str().to_owned(),
                reason: reason.clone(),
                provider_message: message.clone(),
                message: format!("{error}; send its user a new connect link"),
            },
            RefreshError::NeedsReauth {
                reason, ref message, ..
            } => ApiError::NeedsLogin {
                status: Status::NeedsReauth.as_str().to_owned(),
                reason: Some(reason.to_owned()),
                provider_message: Some(message.clone()),
                message: format!("{error}; send its user a new connect link"),
            },
            RefreshError::RetryLater { until, .. } => ApiError::Provider {
                retry_after_secs: Some(seconds_until(until, now_ms())),
                message: error.to_string(),
            },
            RefreshError::Deadline { .. } => ApiError::Unavailable {
                message: error.to_string(),
                retry_after_secs: 1,
            },
            // Secrets Manager did not answer: the next request reads again.
            RefreshError::KeyRing(
                crate::reload::KeyRingError::Read(_) | crate::reload::KeyRingError::Unavailable { .. },
            ) => ApiError::Unavailable {
                message: error.to_string(),
                retry_after_secs: 5,
            },
            other => ApiError::internal(&other),
        }
    }
}

/// `POST /links`: what the caller sends.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    pub provider: String,
    pub connection: Option<String>,
    /// `per_user` (default) or `shared`.
    pub kind: Option<String>,
    pub label: Option<String>,
    #[serde(rename = "for")]
    pub user: Option<String>,
    pub return_url: Option<String>,
    /// Seconds; default [`DEFAULT_LINK_SECS`].
    pub expires_in: Option<u64>,
}

/// A link made.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub url: String,
    pub connection: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// A connection as the API shows it: everything but its tokens.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub id: String,
    pub provider: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub reason: Option<String>,
    pub provider_message: Option<String>,
    pub params: BTreeMap<String, String>,
    pub param_error: Option<String>,
    pub token_version: u64,
    /// When the access token expires (RFC 3339).
    pub expires_at: Option<String>,
    pub scopes: Vec<String>,
    pub last_refresh_at: Option<String>,
    pub last_refresh_outcome: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Each configured sync of its provider: its last run (only in `GET /connections/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syncs: Option<Vec<SyncView>>,
}

/// A sync job's state.
#[derive(Debug, Clone, Serialize)]
pub struct SyncView {
    pub sync: String,
    /// `scheduled`, `running`, `parked` or `not_scheduled`.
    pub state: &'static str,
    pub next_run_at: Option<String>,
    pub parked_reason: Option<String>,
    pub last_run: Option<RunView>,
    /// The recent runs, newest first (only in `GET /syncs/{connection}/{sync}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunView>>,
}

/// One sync run.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: String,
    pub counts: crate::sync::jobs::RunCounts,
    pub error: Option<String>,
}

impl From<&RunRecord> for RunView {
    fn from(run: &RunRecord) -> RunView {
        RunView {
            run_id: run.run_id.clone(),
            status: run.status.clone(),
            started_at: crate::when::rfc3339(run.started_at),
            finished_at: crate::when::rfc3339(run.finished_at),
            counts: run.counts.clone(),
            error: run.error.clone(),
        }
    }
}

/// A page of connections.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsPage {
    pub connections: Vec<ConnectionView>,
    /// Pass as `cursor` for the next page; absent after the last one.
    pub next_cursor: Option<String>,
}

/// What the token route answers. The token is a secret: `Debug` redacts it.
#[derive(Clone, Serialize)]
pub struct TokenAnswer {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_at: String,
    /// Seconds from now.
    pub expires_in: i64,
    pub token_version: u64,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("token_version", &self.token_version)
            .finish()
    }
}

/// One record in a page of changes.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    pub id: String,
    /// `inserted`, `updated` or `deleted`: what its last write did.
    pub change: &'static str,
    pub record: Value,
    pub first_seen_at: Option<String>,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
}

/// A page of changes since a cursor.
#[derive(Debug, Clone, Serialize)]
pub struct ChangesAnswer {
    pub records: Vec<ChangeView>,
    /// Store it and pass it as `since` next time (also when `records` is empty).
    pub next_cursor: String,
    /// More changes can be read now: ask again at once with `next_cursor`.
    pub has_more: bool,
}

/// The services the API's operations use, built once per process.
#[derive(Debug)]
pub struct ApiService {
    /// Shared with the token service in the functions ([`crate::reload`]).
    config: LiveConfig,
    tokens: Arc<TokenService>,
    jobs: JobStore,
    records: RecordStore,
    links: LinkKeySource,
    proxy: proxy::Proxy,
}

impl ApiService {
    /// `config`: an `Arc<Config>` (never reloaded), or the [`LiveConfig`]
    /// the token service reloads (the `api` function's).
    pub fn new(
        config: impl Into<LiveConfig>,
        tokens: Arc<TokenService>,
        jobs: JobStore,
        records: RecordStore,
        links: impl Into<LinkKeySource>,
    ) -> Result<ApiService, reqwest::Error> {
        let proxy = proxy::Proxy::new(tokens.clone(), jobs.budget())?;
        Ok(ApiService {
            config: config.into(),
            tokens,
            jobs,
            records,
            links: links.into(),
            proxy,
        })
    }

    /// The configuration in use now: a request keeps the snapshot it started with.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// At the start of a request: picks up a pushed configuration and a
    /// rotated key ring ([`TokenService::reload_if_changed`]).
    pub async fn reload_if_changed(&self) {
        self.config.check().await;
        self.tokens.reload_if_changed().await;
    }

    pub fn tokens(&self) -> &Arc<TokenService> {
        &self.tokens
    }

    pub fn proxy(&self) -> &proxy::Proxy {
        &self.proxy
    }

    /// `POST /links`: the checks of `oauth-sync connect-link`, then the
    /// signed URL (the link key is read here the first time: a failed read
    /// is a 500 naming the secret, and the next call reads again).
    pub async fn create_link(&self, body: LinkBody) -> Result<Link, ApiError> {
        let kind = match body.kind.as_deref() {
            None => ConnectionKind::PerUser,
            Some(text) => ConnectionKind::parse(text).ok_or_else(|| ApiError::bad("kind", "`per_user` or `shared`"))?,
        };
        let order = LinkOrder {
            provider: body.provider,
            connection: body.connection,
            kind,
            return_url: body.return_url,
            lifetime: Duration::from_secs(body.expires_in.unwrap_or(DEFAULT_LINK_SECS)),
            label: body.label,
            user: body.user,
        };
        let claims = order
            .claims(&self.config(), now_ms())
            .map_err(|e| ApiError::bad(e.field, e.reason))?;
        let url = self
            .links
            .get()
            .await
            .map_err(|e| ApiError::internal(&e))?
            .connect_url(self.config().service.callback_url.as_ref(), &claims)
            .map_err(|e| ApiError::internal(&e))?;
        Ok(Link {
            url: url.to_string(),
            connection: claims.connection.to_string(),
            expires_at: crate::when::rfc3339(claims.expires_at.saturating_mul(1000)),
        })
    }

    /// `GET /connections`: a page of connections, by provider (in the
    /// configuration's order) then id, optionally of one provider and one status.
    pub async fn list_connections(
        &self,
        provider: Option<&str>,
        status: Option<&str>,
        cursor: Option<&str>,
        limit: Option<i32>,
    ) -> Result<ConnectionsPage, ApiError> {
        let limit = page_size(limit)?;
        let status = status
            .map(|s| {
                Status::parse(s).ok_or_else(|| ApiError::bad("status", "one of pending, active, needs_reauth, revoked"))
            })
            .transpose()?;
        let providers: Vec<String> = match provider {
            Some(name) => vec![
                self.config()
                    .provider(name)
                    .map_err(|e| ApiError::bad("provider", e.to_string()))?
                    .name
                    .clone(),
            ],
            None => self.config().providers.keys().cloned().collect(),
        };
        let mut place = match cursor {
            Some(text) => Some(
                Cursor::decode(text)
                    .and_then(|c| c.connections())
                    .map_err(|e| ApiError::bad("cursor", e))?,
            ),
            None => None,
        };
        let mut index = match &place {
            Some((p, _)) => providers
                .iter()
                .position(|name| name == p)
                .ok_or_else(|| ApiError::bad("cursor", "it belongs to another listing"))?,
            None => 0,
        };
        let mut connections = Vec::new();
        while index < providers.len() && connections.len() < limit as usize {
            let name = &providers[index];
            let after = place.take().and_then(|(_, id)| id);
            let (page, last) = self
                .tokens
                .store()
                .page_of_provider(name, after.as_ref(), limit - connections.len() as i32)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            connections.extend(
                page.iter()
                    .filter(|c| status.is_none_or(|s| c.status == s))
                    .map(|c| view(c, None)),
            );
            match last {
                Some(last) => place = Some((name.clone(), Some(last))),
                None => index += 1,
            }
        }
        let next_cursor = match place {
            Some((provider, id)) => Some(
                Cursor::Connections {
                    provider,
                    after: id.map(|id| id.to_string()).unwrap_or_default(),
                }
                .encode(),
            ),
            None if index < providers.len() => Some(
                Cursor::Connections {
                    provider: providers[index].clone(),
                    after: String::new(),
                }
                .encode(),
            ),
            None => None,
        };
        Ok(ConnectionsPage {
            connections,
            next_cursor,
        })
    }

    /// `GET /connections/{id}`: the connection and each of its provider's syncs.
    pub async fn connection(&self, id: &str) -> Result<ConnectionView, ApiError> {
        let conn = self.read(id).await?;
        let mut syncs = Vec::new();
        for sync in self.config().syncs.values().filter(|s| s.provider == conn.provider) {
            syncs.push(self.sync_view(&conn.id, &sync.name, false).await?);
        }
        Ok(view(&conn, Some(syncs)))
    }

    /// `DELETE /connections/{id}`: `oauth-sync revoke`.
    pub async fn revoke(&self, id: &str) -> Result<Value, ApiError> {
        let id = connection_id(id)?;
        match self.tokens.revoke(&id).await {
            Ok(revoked) => Ok(json!({
                "connection": id.as_str(),
                "status": "revoked",
                "revoked_at_provider": revoked.at_provider,
                "already_revoked": revoked.already,
            })),
            Err(RefreshError::RetryLater { until, cause, .. }) => Err(ApiError::Unavailable {
                message: format!("connection {id} cannot be revoked right now ({cause}); try again"),
                retry_after_secs: seconds_until(until, now_ms()),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// `POST /connections/{id}/token`: a token valid for at least
    /// `min_valid_secs`, through the refresh protocol.
    pub async fn token(
        &self,
        id: &str,
        min_valid_secs: Option<u64>,
        deadline: Instant,
    ) -> Result<TokenAnswer, ApiError> {
        let id = connection_id(id)?;
        let min_valid = min_valid_secs.unwrap_or(DEFAULT_MIN_VALID_SECS);
        if min_valid > MAX_MIN_VALID_SECS {
            return Err(ApiError::bad("min_valid_secs", format!("at most {MAX_MIN_VALID_SECS}")));
        }
        let fresh = self
            .tokens
            .access_token_valid_for(&id, Duration::from_secs(min_valid), deadline)
            .await?;
        Ok(TokenAnswer {
            access_token: fresh.access_token.secret().to_owned(),
            token_type: "Bearer",
            expires_at: crate::when::rfc3339(fresh.expires_at),
            expires_in: (fresh.expires_at - now_ms()) / 1000,
            token_version: fresh.token_version,
        })
    }

    /// `POST /syncs/{connection}/{sync}/run`: the job due now.
    pub async fn run_sync(&self, connection: &str, sync: &str) -> Result<SyncView, ApiError> {
        let conn = self.read(connection).await?;
        self.sync_of(&conn, sync)?;
        if conn.status != Status::Active {
            return Err(ApiError::from(RefreshError::NotActive {
                id: conn.id.clone(),
                status: conn.status,
                reason: conn.status_reason.clone(),
                message: conn.provider_message.clone(),
            }));
        }
        self.jobs
            .make_due(&conn.id, sync)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        self.sync_view(&conn.id, sync, false).await
    }

    /// `GET /syncs/{connection}/{sync}`: the job and its recent runs.
    pub async fn sync_status(&self, connection: &str, sync: &str) -> Result<SyncView, ApiError> {
        let conn = self.read(connection).await?;
        self.sync_of(&conn, sync)?;
        self.sync_view(&conn.id, sync, true).await
    }

    /// `GET /records/{connection}/{sync}?since=&limit=`: the records changed
    /// since the cursor, oldest change first. Reads the job's committed
    /// change number first, then only changes below it: every write below
    /// it has landed, so nothing below can still appear behind the cursor.
    pub async fn changes(
        &self,
        connection: &str,
        sync: &str,
        since: Option<&str>,
        limit: Option<i32>,
    ) -> Result<ChangesAnswer, ApiError> {
        let limit = page_size(limit)?;
        let id = connection_id(connection)?;
        let after = match since {
            Some(text) if !text.is_empty() => Some(
                Cursor::decode(text)
                    .and_then(|c| c.changes(&job_id(&id, sync)))
                    .map_err(|e| ApiError::bad("since", e))?,
            ),
            _ => None,
        };
        let job = job_id(&id, sync);
        if !self.config().syncs.contains_key(sync) {
            return Err(ApiError::NotFound(format!("there is no sync `{sync}`")));
        }
        let Some(state) = self.jobs.get(&job).await.map_err(|e| ApiError::internal(&e))? else {
            return Err(ApiError::NotFound(format!(
                "connection {id} has no sync `{sync}` (no login scheduled it yet)"
            )));
        };
        let below = state.checkpoint.changes;
        let page = self
            .records
            .changes(&job, after.as_ref(), below, limit)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let next = page.next.unwrap_or(ChangePlace {
            seq: 0,
            id: String::new(),
        });
        Ok(ChangesAnswer {
            records: page.records.iter().map(change_view).collect(),
            next_cursor: Cursor::Changes {
                job,
                seq: next.seq,
                id: next.id,
            }
            .encode(),
            has_more: page.more,
        })
    }

    /// `GET /records/{connection}/{sync}/{id}`: one record as stored (a
    /// `record.*` event too large for EventBridge names it and says `truncated`).
    pub async fn record(&self, connection: &str, sync: &str, id: &str) -> Result<ChangeView, ApiError> {
        let conn = connection_id(connection)?;
        if !self.config().syncs.contains_key(sync) {
            return Err(ApiError::NotFound(format!("there is no sync `{sync}`")));
        }
        if id.is_empty() || id.len() > 1024 {
            return Err(ApiError::bad("id", "a record id of 1 to 1024 bytes"));
        }
        let stored = self
            .records
            .get(&job_id(&conn, sync), id)
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("connection {conn} has no record `{id}` in sync `{sync}`")))?;
        Ok(change_view(&stored))
    }

    async fn read(&self, id: &str) -> Result<Connection, ApiError> {
        let id = connection_id(id)?;
        self.tokens
            .store()
            .get(&id)
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("connection {id} does not exist")))
    }

    fn sync_of(&self, conn: &Connection, sync: &str) -> Result<(), ApiError> {
        match self.config().syncs.get(sync) {
            Some(s) if s.provider == conn.provider => Ok(()),
            Some(s) => Err(ApiError::NotFound(format!(
                "sync `{sync}` is for provider `{}`, and connection {} is of `{}`",
                s.provider, conn.id, conn.provider
            ))),
            None => Err(ApiError::NotFound(format!("there is no sync `{sync}`"))),
        }
    }

    async fn sync_view(&self, connection: &ConnectionId, sync: &str, with_runs: bool) -> Result<SyncView, ApiError> {
        let id = job_id(connection, sync);
        let job = self.jobs.get(&id).await.map_err(|e| ApiError::internal(&e))?;
        let runs = if with_runs && job.is_some() {
            let runs = self
                .jobs
                .runs(&id, RUNS_SHOWN)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            Some(runs.iter().map(RunView::from).collect())
        } else {
            None
        };
        let now = now_ms();
        Ok(match job {
            None => SyncView {
                sync: sync.to_owned(),
                state: "not_scheduled",
                next_run_at: None,
                parked_reason: None,
                last_run: None,
                runs,
            },
            Some(job) => SyncView {
                sync: sync.to_owned(),
                state: if job.lease_until.is_some_and(|until| until > now) {
                    "running"
                } else if job.next_run_at.is_none() {
                    "parked"
                } else {
                    "scheduled"
                },
                next_run_at: job.next_run_at.map(crate::when::rfc3339),
                parked_reason: job.parked_reason.clone(),
                last_run: job.last_run.as_ref().map(RunView::from),
                runs,
            },
        })
    }
}

fn connection_id(id: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(id).map_err(|e| ApiError::bad("connection", e.to_string()))
}

fn page_size(limit: Option<i32>) -> Result<i32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad("limit", format!("1 to {MAX_PAGE}"))),
    }
}

fn view(conn: &Connection, syncs: Option<Vec<SyncView>>) -> ConnectionView {
    ConnectionView {
        id: conn.id.to_string(),
        provider: conn.provider.clone(),
        kind: conn.kind.as_str(),
        status: conn.status.as_str(),
        reason: conn.status_reason.clone(),
        provider_message: conn.provider_message.clone(),
        params: conn.params.clone(),
        param_error: conn.param_error.clone(),
        token_version: conn.token_version,
        expires_at: conn.access_expires_at.map(crate::when::rfc3339),
        scopes: conn.scopes.clone(),
        last_refresh_at: conn.last_refresh_at.map(crate::when::rfc3339),
        last_refresh_outcome: conn.last_refresh_outcome.clone(),
        created_at: crate::when::rfc3339(conn.created_at),
        updated_at: crate::when::rfc3339(conn.updated_at),
        syncs,
    }
}

fn change_view(record: &crate::sync::records::StoredRecord) -> ChangeView {
    let change = if record.deleted_at.is_some() {
        "deleted"
    } else if record.first_seen_at.is_some() && record.first_seen_at == record.updated_at {
        "inserted"
    } else {
        "updated"
    };
    ChangeView {
        id: record.id.clone(),
        change,
        record: record.data.clone(),
        first_seen_at: record.first_seen_at.map(crate::when::rfc3339),
        updated_at: record.updated_at.map(crate::when::rfc3339),
        deleted_at: record.deleted_at.map(crate::when::rfc3339),
    }
}
