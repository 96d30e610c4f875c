//! `/connect/{provider}` (the confirmation page and its button) and
//! `/callback/{provider}` as plain functions: the HTTP function only maps
//! requests to these and their results to pages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::attempts::{Attempt, AttemptError, AttemptStore, state_key};
use super::link::{LinkError, LinkKeys, cookie_is_ours, form_token, form_token_matches, link_id, new_cookie};
use crate::config::{Config, Provider, UnknownProvider};
use crate::connection::{ConnectionId, Sealed, now_ms};
use crate::crypto::{CryptoError, Pkce, random_token};
use crate::dynamo::StoreError;
use crate::oauth::{TokenEndpoint, TokenError, TokenHint, TokenSet, authorize_url};
use crate::refresh::{RefreshError, TokenService};
use crate::reload::LiveConfig;
use crate::secret::{AuthorizationCode, PkceVerifier};
use crate::secrets::{SecretStore, SecretsError};
use crate::text::excerpt;

/// How long a login may take from `/connect` to `/callback`.
pub const ATTEMPT_TTL: Duration = Duration::from_secs(600);

/// Where to send the browser, and the cookie that binds the login to it.
#[derive(Clone)]
pub struct Begin {
    pub location: Url,
    /// Value of the `__Host-` cookie to set (the same one if the browser had it).
    pub cookie: String,
}

/// The location carries the login's `state`, and the cookie binds it: neither is printed.
impl std::fmt::Debug for Begin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut location = self.location.clone();
        location.set_query(Some("[redacted]"));
        f.debug_struct("Begin")
            .field("location", &location.as_str())
            .field("cookie", &"[redacted]")
            .finish()
    }
}

/// The confirmation page of `GET /connect/{provider}`: what it says, and
/// what its form posts back (the link and a token bound to this browser).
#[derive(Clone)]
pub struct Confirm {
    /// The provider's key (the URL segment).
    pub provider: String,
    /// The provider's name as people know it ("Exact Online").
    pub provider_display: String,
    /// What the connection is for: the link's label, or the connection id.
    pub label: String,
    /// Who the link is for, when it says.
    pub user: Option<String>,
    pub connection: ConnectionId,
    /// Where the browser goes after the click: the provider's authorize URL's
    /// origin (`https://login.example`), for the page's CSP `form-action`.
    pub authorize_origin: String,
    /// The form's fields: the link's parameters and the form token ([`FORM_TOKEN`]).
    pub fields: Vec<(String, String)>,
    /// Value of the `__Host-` cookie to set (the same one if the browser had it).
    pub cookie: String,
}

/// The form field that carries the confirmation page's token.
pub const FORM_TOKEN: &str = "confirm";

/// The link's parameters a confirmation form carries back; anything else in
/// the query is dropped.
const LINK_FIELDS: [&str; 9] = [
    "connection",
    "kind",
    "return",
    "label",
    "for",
    "issued",
    "expires",
    "kid",
    "sig",
];

impl Confirm {
    /// The form's fields as the POST brings them back.
    pub fn form(&self) -> BTreeMap<String, String> {
        self.fields.iter().cloned().collect()
    }
}

/// The form token is bound to the cookie, and the cookie binds the login: neither is printed.
impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirm")
            .field("provider", &self.provider)
            .field("label", &self.label)
            .field("user", &self.user)
            .field("connection", &self.connection)
            .field("authorize_origin", &self.authorize_origin)
            .field("fields", &"[redacted]")
            .field("cookie", &"[redacted]")
            .finish()
    }
}

/// A finished login.
#[derive(Debug, Clone)]
pub struct Finished {
    pub connection: ConnectionId,
    pub provider: String,
    /// The provider's name as people know it ("Exact Online").
    pub provider_display: String,
    pub token_version: u64,
    pub return_url: Option<String>,
    /// What the operator should know: no refresh token, narrower scopes.
    pub warnings: Vec<String>,
}

/// Why a login could not start or finish. Each maps to a readable page.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
    #[error(transparent)]
    Attempt(#[from] AttemptError),
    #[error("the login at {provider} was cancelled; nothing was changed")]
    Cancelled { provider: String },
    #[error("{provider} refused the login ({error}): {description}")]
    Refused {
        provider: String,
        error: String,
        description: String,
    },
    #[error("the provider's answer has no `{0}`")]
    BadCallback(&'static str),
    #[error("exchanging the authorization code failed: {0}")]
    Exchange(TokenError),
    #[error(
        "connection {connection} is connected to {existing}; a login at {requested} cannot take it over, so nothing was changed (ask for a link with another connection id)"
    )]
    OtherProvider {
        connection: ConnectionId,
        existing: String,
        requested: String,
    },
    #[error("this login was not confirmed on its page ({0}); open the connect link again and press the button there")]
    NotConfirmed(&'static str),
    #[error(
        "this answer came back to the address of provider `{path}`, but the login was started at `{started}`; \
         nothing was stored, and the login cannot be finished: open the connect link again"
    )]
    MixUp { path: String, started: String },
    #[error(
        "this answer names issuer `{got}`, not {provider}'s; nothing was stored, and the login cannot be finished: \
         open the connect link again"
    )]
    WrongIssuer { provider: String, got: String },
    #[error(
        "this answer names no issuer, and {provider} always names itself (RFC 9207); nothing was stored, and \
         the login cannot be finished: open the connect link again"
    )]
    MissingIssuer { provider: String },
    #[error(
        "connection {connection} was disconnected while this login was in progress, so nothing was stored{}; ask for a new link",
        if *revoked_at_provider { " and the new tokens were revoked at the provider" } else { "" }
    )]
    RevokedDuringLogin {
        connection: ConnectionId,
        /// The provider confirmed the revocation of the fresh tokens.
        revoked_at_provider: bool,
    },
    #[error(transparent)]
    Store(#[from] RefreshError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The token key ring could not be read (the page says to try again).
    #[error(transparent)]
    KeyRing(#[from] crate::reload::KeyRingError),
}

impl From<crate::crypto::RandomError> for LoginError {
    fn from(error: crate::crypto::RandomError) -> LoginError {
        LoginError::Crypto(error.into())
    }
}

impl LoginError {
    /// The HTTP status of the page that explains it.
    pub fn status(&self) -> u16 {
        match self {
            LoginError::Link(_) | LoginError::NotConfirmed(_) => 403,
            LoginError::MixUp { .. } | LoginError::WrongIssuer { .. } | LoginError::MissingIssuer { .. } => 400,
            LoginError::RevokedDuringLogin { .. } => 409,
            LoginError::UnknownProvider(_) => 404,
            LoginError::Attempt(AttemptError::Store(_) | AttemptError::StateTaken | AttemptError::Malformed(_)) => 503,
            LoginError::Attempt(_) | LoginError::BadCallback(_) | LoginError::Cancelled { .. } => 400,
            LoginError::Refused { .. } | LoginError::Exchange(_) => 502,
            LoginError::OtherProvider { .. } => 409,
            LoginError::Store(_) | LoginError::Secrets(_) | LoginError::Crypto(_) | LoginError::KeyRing(_) => 503,
        }
    }
}

/// The link keys, read from Secrets Manager apart from a function's
/// start-up and kept for the life of the process: a start never waits for
/// them nor fails without them, so a route that needs no link key
/// (`/callback`, most of the API) never waits for the read. A function
/// starts the read at once in the background ([`LinkKeySource::prefetch`],
/// beside its token key ring's read); the first request that needs the keys
/// waits for that read, or makes it (a link's page beside its first DynamoDB
/// reads). A failed read is that request's error ([`LoginError::Secrets`],
/// 503) and is tried again by the next. Clones share the keys.
#[derive(Clone)]
pub struct LinkKeySource {
    keys: Arc<tokio::sync::OnceCell<LinkKeys>>,
    /// Where the keys come from; `None` when they were given.
    secret: Option<(SecretStore, String)>,
}

impl LinkKeySource {
    /// Keys read from `config`'s `link_key_secret` when first needed.
    pub fn lazy(config: &Config, secrets: &SecretStore) -> LinkKeySource {
        LinkKeySource {
            keys: Arc::new(tokio::sync::OnceCell::new()),
            secret: Some((secrets.clone(), config.service.link_key_secret.clone())),
        }
    }

    /// Starts reading the keys in the background and returns at once. A
    /// failure is logged (naming the secret) and left for the first request
    /// that needs the keys to try again. Call it inside the runtime.
    pub fn prefetch(&self) {
        let source = self.clone();
        tokio::spawn(async move {
            if let Err(error) = source.get().await {
                tracing::warn!(error = %crate::telemetry::error_chain(&error),
                    "the link keys could not be read; the first request that needs them tries again");
            }
        });
    }

    /// The keys if they were read (or given) already.
    pub fn loaded(&self) -> Option<&LinkKeys> {
        self.keys.get()
    }

    /// The keys: read on the first call (concurrent callers wait for the
    /// one read), then kept. A failure keeps nothing.
    pub async fn get(&self) -> Result<&LinkKeys, LoginError> {
        self.keys
            .get_or_try_init(|| async {
                match &self.secret {
                    Some((secrets, name)) => Ok(LinkKeys::from_json(&secrets.text(name).await?)?),
                    // Given keys fill the cell at once: never reached.
                    None => Err(LinkError::Keys(CryptoError::KeyRing("no link keys were given")).into()),
                }
            })
            .await
    }
}

impl From<LinkKeys> for LinkKeySource {
    fn from(keys: LinkKeys) -> LinkKeySource {
        LinkKeySource {
            keys: Arc::new(tokio::sync::OnceCell::new_with(Some(keys))),
            secret: None,
        }
    }
}

/// Names the secret, never a key.
impl std::fmt::Debug for LinkKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkKeySource")
            .field("secret", &self.secret.as_ref().map(|(_, name)| name))
            .field("loaded", &self.keys.initialized())
            .finish()
    }
}

/// The login flow, built once per process.
#[derive(Debug)]
pub struct LoginService {
    /// Shared with the token service in the functions ([`crate::reload`]).
    config: LiveConfig,
    tokens: Arc<TokenService>,
    attempts: AttemptStore,
    links: LinkKeySource,
    attempt_ttl: Duration,
    /// Schedules the provider's syncs for a connection that logged in.
    jobs: Option<crate::sync::jobs::JobStore>,
}

impl LoginService {
    /// Loads the link keys named by the configuration from Secrets Manager.
    pub async fn load(
        config: impl Into<LiveConfig>,
        tokens: Arc<TokenService>,
        attempts: AttemptStore,
        secrets: &SecretStore,
        attempt_ttl: Duration,
    ) -> Result<LoginService, LoginError> {
        let config: LiveConfig = config.into();
        let links = Self::link_keys(&config.current(), secrets).await?;
        Ok(Self::new(config, tokens, attempts, links, attempt_ttl))
    }

    /// The link keys named by the configuration, from Secrets Manager, read
    /// at once (the functions read them lazily: [`LinkKeySource::lazy`]).
    pub async fn link_keys(config: &Config, secrets: &SecretStore) -> Result<LinkKeys, LoginError> {
        Ok(LinkKeys::from_json(
            &secrets.text(&config.service.link_key_secret).await?,
        )?)
    }

    /// `config`: an `Arc<Config>` (never reloaded), or the [`LiveConfig`]
    /// the token service reloads (the `oauth-callback` function's).
    /// `links`: the keys themselves, or a [`LinkKeySource::lazy`] that reads
    /// them when a route first needs them.
    pub fn new(
        config: impl Into<LiveConfig>,
        tokens: Arc<TokenService>,
        attempts: AttemptStore,
        links: impl Into<LinkKeySource>,
        attempt_ttl: Duration,
    ) -> LoginService {
        LoginService {
            config: config.into(),
            tokens,
            attempts,
            links: links.into(),
            attempt_ttl,
            jobs: None,
        }
    }

    /// At the start of a request: picks up a pushed configuration and a
    /// rotated key ring ([`TokenService::reload_if_changed`]).
    pub async fn reload_if_changed(&self) {
        self.config.check().await;
        self.tokens.reload_if_changed().await;
    }

    /// The configuration in use now: a request keeps the snapshot it started with.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// After each login, schedule every configured sync of the connection's
    /// provider (a parked job comes back into the schedule).
    pub fn with_jobs(mut self, jobs: crate::sync::jobs::JobStore) -> LoginService {
        self.jobs = Some(jobs);
        self
    }

    /// `GET /connect/{provider}?…`: checks the link and what it may connect,
    /// and answers what the confirmation page shows. Writes nothing: a
    /// cross-site navigation to a link starts no login.
    pub async fn confirm(
        &self,
        provider: &str,
        query: &BTreeMap<String, String>,
        browser_cookie: Option<&str>,
    ) -> Result<Confirm, LoginError> {
        let config = self.config();
        let provider = config.provider(provider)?;
        let claims = self.check_link(provider, query).await?;
        // Read by check_link: kept since.
        let links = self.links.get().await?;
        // One cookie per browser, kept across logins, so two tabs do not
        // break each other; one this service did not issue is never adopted.
        let cookie = match browser_cookie.filter(|c| cookie_is_ours(links, c)) {
            Some(existing) => existing.to_owned(),
            None => new_cookie(links, &random_token()?)?,
        };
        let link_id = link_id(query).ok_or(LinkError::Missing("sig"))?;
        let mut fields: Vec<(String, String)> = LINK_FIELDS
            .iter()
            .filter_map(|key| query.get(*key).map(|value| ((*key).to_owned(), value.clone())))
            .collect();
        fields.push((FORM_TOKEN.to_owned(), form_token(links, &cookie, &link_id)?));
        let authorize = &provider.authorize_url;
        Ok(Confirm {
            provider: provider.name.clone(),
            provider_display: display_name(provider),
            label: claims.label.unwrap_or_else(|| claims.connection.to_string()),
            user: claims.user,
            connection: claims.connection,
            authorize_origin: authorize.origin().ascii_serialization(),
            fields,
            cookie,
        })
    }

    /// `POST /connect/{provider}` from the confirmation page: checks the form
    /// token against this browser's cookie and the link, then the link again,
    /// records the attempt and answers where the browser goes next. A refused
    /// form writes nothing.
    pub async fn begin(
        &self,
        provider: &str,
        form: &BTreeMap<String, String>,
        browser_cookie: Option<&str>,
    ) -> Result<Begin, LoginError> {
        let config = self.config();
        let provider = config.provider(provider)?;
        // The form token is checked before anything is read: the keys first
        // (read here if this process has not needed them yet).
        let links = self.links.get().await?;
        let cookie = browser_cookie
            .filter(|c| cookie_is_ours(links, c))
            .ok_or(LoginError::NotConfirmed("this browser sent no login cookie"))?;
        let token = form
            .get(FORM_TOKEN)
            .ok_or(LoginError::NotConfirmed("the form has no confirmation token"))?;
        let link_id = link_id(form).ok_or(LinkError::Missing("sig"))?;
        if !form_token_matches(links, token, cookie, &link_id) {
            return Err(LoginError::NotConfirmed(
                "the confirmation token is not this browser's for this link",
            ));
        }
        let claims = self.check_link(provider, form).await?;
        let now = now_ms();
        let redirect_uri = self.redirect_uri(&provider.name)?;
        let cookie = cookie.to_owned();
        let state = random_token()?;
        let pkce = Pkce::generate()?;
        let sealed = self
            .tokens
            .keys()
            .await?
            .seal(&attempt_aad(&state), "pkce_verifier", pkce.verifier.secret())?;
        let ttl = i64::try_from(self.attempt_ttl.as_secs()).unwrap_or(600);
        let attempt = Attempt {
            provider: provider.name.clone(),
            connection: claims.connection,
            kind: claims.kind,
            return_url: claims.return_url.map(String::from),
            redirect_uri: redirect_uri.to_string(),
            pkce_verifier: Sealed(sealed),
            link_id,
            link_issued_at: claims.issued_at,
            link_expires_at: claims.expires_at,
            expires_at: now / 1000 + ttl,
        };
        self.attempts.put(&state, &cookie, &attempt, now).await?;
        let credentials = self.tokens.credentials(provider).await?;
        let location = authorize_url(
            provider,
            &credentials.client_id,
            redirect_uri.as_str(),
            &state,
            Some(&pkce.challenge),
        );
        tracing::info!(provider = %provider.name, connection = %attempt.connection, "login started");
        Ok(Begin { location, cookie })
    }

    /// `GET /callback/{provider}?…`: consumes the attempt once (it must come
    /// back to the browser that started it, on the address of the provider it
    /// was started at, naming that provider's issuer when it names one),
    /// exchanges the code and stores the tokens.
    ///
    /// An answer on another provider's address, or from another issuer,
    /// consumes the attempt: the state may have been seen by the wrong
    /// authorization server, so it must never be good again. The link stays
    /// unused, so the person starts again from it.
    pub async fn finish(
        &self,
        path_provider: &str,
        query: &BTreeMap<String, String>,
        browser_cookie: Option<&str>,
    ) -> Result<Finished, LoginError> {
        // An address no provider has touches nothing.
        let config = self.config();
        let path_provider = config.provider(path_provider)?;
        let state = query.get("state").ok_or(LoginError::BadCallback("state"))?;
        // RFC 6749 §4.1.2: an answer carries a `code` or an `error`. One with
        // neither is malformed (perhaps not the provider's): it is refused
        // without spending the state, so the real answer can still come.
        if !query.contains_key("code") && !query.contains_key("error") {
            return Err(LoginError::BadCallback("code"));
        }
        let cancelled = query.contains_key("error");
        let attempt = self
            .attempts
            .consume(state, browser_cookie, now_ms() / 1000, cancelled)
            .await?;
        let code = answer_code(path_provider, query, &attempt)?;
        let provider = config.provider(&attempt.provider)?;
        // Checked again, now that the login is about to count: the connection
        // may have been revoked meanwhile, and two tabs may race on one link.
        self.check_connection(&attempt.connection, &provider.name, attempt.link_issued_at)
            .await?;
        if !self
            .attempts
            .use_link(&attempt.link_id, state, attempt.link_expires_at, now_ms() / 1000)
            .await?
        {
            return Err(LinkError::Used.into());
        }
        let (stored, warnings) = self.exchange_and_store(provider, &attempt, state, &code).await?;
        let warnings = self.ready_to_sync(provider, &attempt, &stored, warnings).await;
        Ok(Finished {
            connection: attempt.connection,
            provider: provider.name.clone(),
            provider_display: display_name(provider),
            token_version: stored.token_version,
            return_url: attempt.return_url,
            warnings,
        })
    }
}

impl LoginService {
    /// The code exchanged (with the attempt's PKCE verifier) and the tokens
    /// stored as the connection's; tokens issued while the connection was
    /// being revoked are revoked at the provider too. Returns what was
    /// stored and the grant's warnings.
    async fn exchange_and_store(
        &self,
        provider: &Provider,
        attempt: &Attempt,
        state: &str,
        code: &AuthorizationCode,
    ) -> Result<(crate::connection::Connection, Vec<String>), LoginError> {
        // Sealed by the instance that began the login, whose ring may be newer.
        let verifier = PkceVerifier::new(
            self.tokens
                .live_keys()
                .await?
                .open(&attempt_aad(state), "pkce_verifier", &attempt.pkce_verifier.0)
                .await?,
        );
        let credentials = self.tokens.credentials(provider).await?;
        let endpoint = TokenEndpoint {
            provider,
            credentials: &credentials,
            http: self.tokens.http(),
        };
        let tokens = endpoint
            .exchange_code(
                code,
                &attempt.redirect_uri,
                Some(&verifier).filter(|_| provider.settings.pkce),
            )
            .await
            .map_err(LoginError::Exchange)?;
        let warnings = super::grant::warnings(provider, &tokens);
        for warning in &warnings {
            tracing::warn!(provider = %provider.name, connection = %attempt.connection, "{warning}");
        }
        let saved = self
            .tokens
            .save_login(
                &attempt.connection,
                &provider.name,
                attempt.kind,
                &tokens,
                Some(attempt.link_issued_at),
            )
            .await;
        if let Err(RefreshError::RevokedDuringLogin { .. }) = &saved {
            // Revoked after the code exchange began: the tokens just issued
            // must not outlive the refusal at the provider either.
            let revoked_at_provider = revoke_fresh_tokens(&endpoint, &tokens).await;
            tracing::warn!(connection = %attempt.connection, provider = %provider.name, revoked_at_provider,
                "the connection was revoked during the login; nothing stored");
            return Err(LoginError::RevokedDuringLogin {
                connection: attempt.connection.clone(),
                revoked_at_provider,
            });
        }
        let stored = saved.map_err(|e| match e {
            RefreshError::Store {
                source: StoreError::OtherProvider {
                    existing, requested, ..
                },
                id,
            } => LoginError::OtherProvider {
                connection: id,
                existing,
                requested,
            },
            other => other.into(),
        })?;
        Ok((stored, warnings))
    }

    /// The person's warnings once the tokens are stored: a parameter that
    /// could not be learned (in plain words; the detail goes to the log), and
    /// the provider's syncs scheduled for the connection.
    async fn ready_to_sync(
        &self,
        provider: &Provider,
        attempt: &Attempt,
        stored: &crate::connection::Connection,
        warnings: Vec<String>,
    ) -> Vec<String> {
        let mut warnings = warnings;
        if let Some(error) = &stored.param_error {
            // The detail (a DNS error, the provider's internal URL) is for the
            // log and `oauth-sync show`; the person gets a plain sentence.
            tracing::warn!(connection = %attempt.connection, provider = %provider.name, error = %error,
                "connected, but a connection parameter could not be learned; not ready to sync");
            warnings.push(format!(
                "connected, but not ready to sync yet: a detail of the account could not be read from {}. \
                 Try connecting again; if it happens again, the operator sees why with `oauth-sync show {}`.",
                display_name(provider),
                attempt.connection
            ));
        }
        if let Some(jobs) = &self.jobs {
            for sync in self.config().syncs.values().filter(|s| s.provider == provider.name) {
                if let Err(e) = jobs.schedule(&attempt.connection, &sync.name).await {
                    tracing::error!(connection = %attempt.connection, sync = %sync.name, error = %crate::telemetry::error_chain(&e),
                        "the sync job could not be scheduled; `oauth-sync sync run` schedules it");
                    warnings.push(format!(
                        "sync `{}` could not be scheduled yet; it will be retried by the operator",
                        sync.name
                    ));
                }
            }
        }
        warnings
    }

    /// The link's claims, if it is signed, unexpired, unused, and its
    /// connection may be connected at `provider`. Reads, never writes.
    async fn check_link(
        &self,
        provider: &Provider,
        query: &BTreeMap<String, String>,
    ) -> Result<super::link::ConnectClaims, LoginError> {
        // A process's first link: the key's read and the link's two
        // DynamoDB reads at once, the connection read under the id the link
        // names before its signature is checked (nothing is decided on it
        // until then). Afterwards the signature comes first, so a forged
        // link costs no read.
        let early = match (self.links.loaded(), link_id(query), query.get("connection")) {
            (None, Some(link), Some(named)) => match ConnectionId::parse(named) {
                Ok(named) => {
                    let (keys, reads) = tokio::join!(self.links.get(), self.link_reads(link, named));
                    keys?;
                    Some(reads)
                }
                Err(_) => None,
            },
            _ => None,
        };
        let claims = self.links.get().await?.verify(
            &provider.name,
            query,
            now_ms() / 1000,
            &self.config().service.return_url_allow_list,
        )?;
        self.redirect_uri(&provider.name)?;
        // Refused before the user logs in: a used link, another provider's
        // connection, a connection revoked after the link was made.
        // The two reads are independent: one round trip, not two.
        let link_id = link_id(query).ok_or(LinkError::Missing("sig"))?;
        let reads = match early {
            Some(reads) if reads.connection == claims.connection => reads,
            _ => self.link_reads(link_id, claims.connection.clone()).await,
        };
        if reads.used? {
            return Err(LinkError::Used.into());
        }
        may_connect(reads.existing?, &claims.connection, &provider.name, claims.issued_at)?;
        Ok(claims)
    }

    /// Whether link `link_id` was used, and the stored `connection`: read at once.
    async fn link_reads(&self, link_id: String, connection: ConnectionId) -> LinkReads {
        let (used, existing) = tokio::join!(self.attempts.link_used(&link_id), self.stored(&connection));
        LinkReads {
            used,
            existing,
            connection,
        }
    }

    /// The stored connection `connection`, if any.
    async fn stored(&self, connection: &ConnectionId) -> Result<Option<crate::connection::Connection>, LoginError> {
        self.tokens.store().get(connection).await.map_err(|source| {
            LoginError::from(RefreshError::Store {
                id: connection.clone(),
                source,
            })
        })
    }

    /// `{callback_url}/{provider}`.
    fn redirect_uri(&self, provider: &str) -> Result<Url, LinkError> {
        self.config()
            .service
            .redirect_uri(provider)
            .ok_or(LinkError::NoCallbackUrl)
    }

    /// May a login through a link made at `link_issued_at` (epoch ms) store
    /// tokens in `connection` at `provider`? [`may_connect`] on what is stored.
    async fn check_connection(
        &self,
        connection: &ConnectionId,
        provider: &str,
        link_issued_at: i64,
    ) -> Result<(), LoginError> {
        may_connect(self.stored(connection).await?, connection, provider, link_issued_at)
    }
}

/// What [`LoginService::link_reads`] read.
struct LinkReads {
    /// Whether the link was used.
    used: Result<bool, AttemptError>,
    /// The stored connection, if any.
    existing: Result<Option<crate::connection::Connection>, LoginError>,
    /// The id it was read under.
    connection: ConnectionId,
}

/// Not when the stored connection belongs to another provider, nor when it
/// was revoked after the link was made (`link_issued_at`, epoch ms).
fn may_connect(
    existing: Option<crate::connection::Connection>,
    connection: &ConnectionId,
    provider: &str,
    link_issued_at: i64,
) -> Result<(), LoginError> {
    match existing {
        Some(existing) if existing.provider != provider => Err(LoginError::OtherProvider {
            connection: connection.clone(),
            existing: existing.provider,
            requested: provider.to_owned(),
        }),
        Some(existing) if existing.revoked_at.is_some_and(|revoked| revoked >= link_issued_at) => {
            Err(LinkError::PredatesRevoke(connection.clone()).into())
        }
        _ => Ok(()),
    }
}

/// The sealed verifier belongs to this attempt only.
fn attempt_aad(state: &str) -> String {
    format!("login:{}", state_key(state))
}

/// The provider's name as people know it, or its key.
fn display_name(provider: &Provider) -> String {
    provider
        .settings
        .display_name
        .clone()
        .unwrap_or_else(|| provider.name.clone())
}

/// `Sec-Fetch-Site` of a POST that starts a login: only the confirmation
/// page itself (`same-origin`) or the person (`none`) may send it. Browsers
/// that send no such header rely on the form token alone.
pub fn check_fetch_site(value: Option<&str>) -> Result<(), LoginError> {
    match value {
        None | Some("same-origin" | "none") => Ok(()),
        Some(_) => Err(LoginError::NotConfirmed("the request came from another site")),
    }
}

/// RFC 7009 for tokens that must not be kept: the refresh token first (which
/// ends the grant at most providers), then the access token. Whether the
/// provider confirmed every revocation; a failure is logged, never retried
/// here (the user is told and the operator sees the log line).
async fn revoke_fresh_tokens(endpoint: &TokenEndpoint<'_>, tokens: &TokenSet) -> bool {
    let mut all = true;
    let refresh = tokens
        .refresh_token
        .as_ref()
        .map(|t| (t.secret(), TokenHint::RefreshToken));
    for (token, hint) in refresh
        .into_iter()
        .chain([(tokens.access_token.secret(), TokenHint::AccessToken)])
    {
        match endpoint.revoke(token, hint).await {
            Ok(confirmed) => all &= confirmed,
            Err(e) => {
                tracing::error!(provider = %endpoint.provider.name, hint = hint.as_str(), error = %e,
                    "a token issued to a refused login could not be revoked at the provider");
                all = false;
            }
        }
    }
    all
}

/// What the provider's answer says, checked against the attempt it is for:
/// on the address of the provider the login started at, naming that
/// provider's issuer when it names one (RFC 9207), and a code, not an error.
fn answer_code(
    path_provider: &Provider,
    query: &BTreeMap<String, String>,
    attempt: &Attempt,
) -> Result<AuthorizationCode, LoginError> {
    if attempt.provider != path_provider.name {
        tracing::warn!(path = %path_provider.name, started = %attempt.provider, connection = %attempt.connection,
                "an authorization response came back on another provider's redirect URI (possible mix-up attack)");
        return Err(LoginError::MixUp {
            path: path_provider.name.clone(),
            started: attempt.provider.clone(),
        });
    }
    if let (Some(got), Some(expected)) = (query.get("iss"), &path_provider.settings.issuer)
        && got != expected
    {
        tracing::warn!(provider = %path_provider.name, connection = %attempt.connection,
                "the authorization response names another issuer (possible mix-up attack)");
        return Err(LoginError::WrongIssuer {
            provider: path_provider.name.clone(),
            got: excerpt(got, &[]).chars().take(60).collect(),
        });
    }
    // RFC 9207 §2.4: a server that announces `iss` always sends it.
    if !query.contains_key("iss") && path_provider.requires_iss() {
        tracing::warn!(provider = %path_provider.name, connection = %attempt.connection,
                "the authorization response has no `iss` although the provider always sends one (possible mix-up attack)");
        return Err(LoginError::MissingIssuer {
            provider: path_provider.name.clone(),
        });
    }
    if let Some(error) = query.get("error") {
        // The provider's words, but short, on one line, without control characters.
        let error = excerpt(error, &[]);
        let provider = attempt.provider.clone();
        tracing::info!(%provider, connection = %attempt.connection, error, "login not completed at the provider");
        return Err(if error == "access_denied" {
            LoginError::Cancelled { provider }
        } else {
            let description = query
                .get("error_description")
                .map_or_else(|| "no description".into(), |d| excerpt(d, &[]));
            LoginError::Refused {
                provider,
                error,
                description,
            }
        });
    }
    Ok(AuthorizationCode::new(
        query.get("code").ok_or(LoginError::BadCallback("code"))?.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_itself_or_the_person_may_start_a_login() {
        for allowed in [None, Some("same-origin"), Some("none")] {
            assert!(check_fetch_site(allowed).is_ok(), "{allowed:?}");
        }
        for refused in [Some("cross-site"), Some("same-site"), Some("SAME-ORIGIN"), Some("")] {
            let e = check_fetch_site(refused).unwrap_err();
            assert!(
                matches!(e, LoginError::NotConfirmed(_)) && e.status() == 403,
                "{refused:?}"
            );
        }
    }

    #[test]
    fn begin_prints_neither_state_nor_cookie() {
        let begin = Begin {
            location: Url::parse("https://login.example/authorize?state=s3cr3t-state&client_id=c").expect("url"),
            cookie: "c00kie-value".to_owned(),
        };
        let printed = format!("{begin:?}");
        assert!(printed.contains("https://login.example/authorize"), "{printed}");
        assert!(
            !printed.contains("s3cr3t-state") && !printed.contains("c00kie-value"),
            "{printed}"
        );
    }
}
