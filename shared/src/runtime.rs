//! What every binary does before its first request: build the AWS clients
//! once and load the configuration, failing at start-up rather than mid-request.
//!
//! The configuration comes from the file named by `OAUTH_SYNC_CONFIG`, or,
//! in Lambda, from the Secrets Manager secret named by
//! `OAUTH_SYNC_CONFIG_SECRET` (set by infra/template.yaml). From the secret
//! it is a [`LiveConfig`]: the services built here share it, and a pushed
//! configuration reaches them without a restart ([`crate::reload`]).

use std::sync::Arc;

use crate::aws::AwsClients;
use crate::config::{CONFIG_ENV, Config, ConfigErrors};
use crate::connection::store::ConnectionStore;
use crate::refresh::{LoadError, RefreshSettings, TokenService};
use crate::reload::{CHECK_INTERVAL, LiveConfig};
use crate::secrets::{SecretStore, SecretsError};

/// The environment variable naming the connections table (set by infra/template.yaml).
pub const CONNECTIONS_TABLE_ENV: &str = "OAUTH_SYNC_CONNECTIONS_TABLE";
/// The environment variable naming the login-attempts table (set by infra/template.yaml).
pub const LOGIN_ATTEMPTS_TABLE_ENV: &str = "OAUTH_SYNC_LOGIN_ATTEMPTS_TABLE";

/// The environment variables naming the sync engine's tables (set by infra/template.yaml).
pub const SYNC_STATE_TABLE_ENV: &str = "OAUTH_SYNC_SYNC_STATE_TABLE";
pub const SYNC_RUNS_TABLE_ENV: &str = "OAUTH_SYNC_SYNC_RUNS_TABLE";
pub const RECORDS_TABLE_ENV: &str = "OAUTH_SYNC_RECORDS_TABLE";

/// The environment variable naming the secret that holds the configuration text.
pub const CONFIG_SECRET_ENV: &str = "OAUTH_SYNC_CONFIG_SECRET";

/// Why a binary cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The first mistake and how many follow, on one line (`oauth-sync
    /// config check` lists them all).
    #[error("configuration: {}", .0.in_one_line())]
    Config(ConfigErrors),
    #[error("configuration secret: {0}")]
    Secret(#[from] SecretsError),
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    #[error("token service: {0}")]
    TokenService(#[from] LoadError),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("refresh-due index layout: {0}")]
    Layout(#[from] crate::shards::LayoutError),
}

impl From<ConfigErrors> for StartupError {
    fn from(errors: ConfigErrors) -> Self {
        StartupError::Config(errors)
    }
}

/// A key secret a function may read ahead ([`App::from_env_reading_keys_ahead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySecret {
    /// `link_key_secret`: connect links' signing keys.
    LinkKeys,
    /// `token_key_secret`: the token key ring.
    TokenKeys,
}

impl KeySecret {
    fn name(self, service: &crate::config::ServiceSettings) -> &str {
        match self {
            KeySecret::LinkKeys => &service.link_key_secret,
            KeySecret::TokenKeys => &service.token_key_secret,
        }
    }
}

/// Clients and configuration, built once per process and borrowed by handlers.
#[derive(Debug, Clone)]
pub struct App {
    /// The configuration at start-up, for what is wired once (the link key
    /// secret's name, the webhook endpoints). Services take
    /// [`App::live_config`], which follows `config push`.
    pub config: Config,
    pub aws: AwsClients,
    pub secrets: SecretStore,
    /// The stack's event bus (`OAUTH_SYNC_EVENT_BUS`), or off.
    pub events: crate::events::EventSink,
    live: LiveConfig,
}

impl App {
    pub async fn from_env() -> Result<App, StartupError> {
        App::from_env_reading_keys_ahead(&[]).await
    }

    /// [`App::from_env`], reading the key secrets `keys` need beside the
    /// configuration, under their default names
    /// ([`ServiceSettings::default`](crate::config::ServiceSettings)):
    /// a function whose first request needs a key then does not wait for
    /// the configuration's read and then the key's, one after the other (15
    /// ms each in AWS). When the configuration names another secret, that
    /// read is dropped and the named one is read as before: one call spent.
    pub async fn from_env_reading_keys_ahead(keys: &[KeySecret]) -> Result<App, StartupError> {
        let sdk = crate::aws::sdk_config_from_env();
        let aws = AwsClients::from_sdk_config(&sdk);
        App::load(&sdk, aws, keys).await
    }

    /// [`App::from_env_reading_keys_ahead`] on clients built already from
    /// `sdk`: a function that queries before its configuration is read
    /// ([`Starting`]) shares them.
    pub async fn load(sdk: &crate::aws::SdkConfig, aws: AwsClients, keys: &[KeySecret]) -> Result<App, StartupError> {
        let events = crate::events::EventSink::from_env(sdk);
        let secrets = SecretStore::new(aws.secrets.clone());
        let defaults = crate::config::ServiceSettings::default();
        for key in keys {
            secrets.read_ahead(key.name(&defaults));
        }
        let live = load_config(&secrets).await?;
        let config = Config::clone(&live.current());
        let named: Vec<&str> = keys.iter().map(|key| key.name(&config.service)).collect();
        secrets.keep_reads_ahead_of(&named);
        Ok(App {
            config,
            aws,
            secrets,
            events,
            live,
        })
    }

    /// The configuration holder every service of the process shares: from
    /// the secret, it is checked for a new version at most once a minute, at
    /// the start of an invocation (the services' `reload_if_changed`).
    pub fn live_config(&self) -> LiveConfig {
        self.live.clone()
    }

    /// The connection store on the table named by `OAUTH_SYNC_CONNECTIONS_TABLE`,
    /// writing refresh-due entries over `OAUTH_SYNC_REFRESH_SHARDS` shards.
    pub fn connection_store(&self) -> Result<ConnectionStore, StartupError> {
        connection_store_on(&self.aws)
    }

    /// The login-attempt store on the table named by `OAUTH_SYNC_LOGIN_ATTEMPTS_TABLE`.
    pub fn attempt_store(&self) -> Result<crate::login::attempts::AttemptStore, StartupError> {
        let table =
            std::env::var(LOGIN_ATTEMPTS_TABLE_ENV).map_err(|_| StartupError::MissingEnv(LOGIN_ATTEMPTS_TABLE_ENV))?;
        Ok(crate::login::attempts::AttemptStore::new(
            self.aws.dynamodb.clone(),
            table,
        ))
    }

    /// The sync-state and sync-runs tables named by the environment.
    pub fn job_store(&self) -> Result<crate::sync::jobs::JobStore, StartupError> {
        job_store_on(&self.aws)
    }

    /// The records table named by `OAUTH_SYNC_RECORDS_TABLE`.
    pub fn record_store(&self) -> Result<crate::sync::records::RecordStore, StartupError> {
        Ok(crate::sync::records::RecordStore::new(
            self.aws.dynamodb.clone(),
            env(RECORDS_TABLE_ENV)?,
        ))
    }

    /// The sync engine on the tables named by the environment.
    pub fn sync_engine(
        &self,
        tokens: Arc<TokenService>,
        settings: crate::sync::engine::SyncSettings,
    ) -> Result<crate::sync::engine::SyncEngine, StartupError> {
        let records = self.record_store()?;
        Ok(
            crate::sync::engine::SyncEngine::new(self.live_config(), tokens, self.job_store()?, records, settings)?
                .with_events(self.events.clone()),
        )
    }

    /// The token service (loads the key ring from Secrets Manager), on the
    /// shared configuration.
    pub async fn token_service(&self) -> Result<TokenService, StartupError> {
        let store = self.connection_store()?;
        Ok(TokenService::load(
            self.live_config(),
            store,
            self.secrets.clone(),
            RefreshSettings::default(),
        )
        .await?
        .with_events(self.events.clone()))
    }
}

/// An invocation's deadline (Lambda's epoch milliseconds) as an `Instant`,
/// less `margin`.
pub fn deadline_from_epoch_ms(deadline_ms: u64, margin: std::time::Duration) -> std::time::Instant {
    std::time::Instant::now() + time_left(deadline_ms, crate::connection::now_ms()).saturating_sub(margin)
}

/// Deadlines below this (2001-09-09) are not epoch times.
const EPOCH_MS_FLOOR: u64 = 1_000_000_000_000;

/// The time from `now_ms` to the deadline. Lambda sends epoch milliseconds;
/// `cargo lambda watch` sends a constant 600000, its 10-minute timeout as a
/// duration, which read as a time would be in 1970 and leave no time at all.
fn time_left(deadline_ms: u64, now_ms: i64) -> std::time::Duration {
    if deadline_ms < EPOCH_MS_FLOOR {
        return std::time::Duration::from_millis(deadline_ms);
    }
    crate::when::until(i64::try_from(deadline_ms).unwrap_or(i64::MAX), now_ms)
}

/// The connection store on the table named by `OAUTH_SYNC_CONNECTIONS_TABLE`
/// through `aws`, writing refresh-due entries over
/// `OAUTH_SYNC_REFRESH_SHARDS` shards: from the environment alone, so a
/// function can query before its configuration is read.
pub fn connection_store_on(aws: &AwsClients) -> Result<ConnectionStore, StartupError> {
    let layout = crate::shards::Layout::from_env()?;
    Ok(ConnectionStore::new(aws.dynamodb.clone(), env(CONNECTIONS_TABLE_ENV)?).with_refresh_shards(layout.shards))
}

/// The sync-state and sync-runs tables named by the environment, through
/// `aws`: from the environment alone, as [`connection_store_on`].
pub fn job_store_on(aws: &AwsClients) -> Result<crate::sync::jobs::JobStore, StartupError> {
    Ok(crate::sync::jobs::JobStore::new(
        aws.dynamodb.clone(),
        env(SYNC_STATE_TABLE_ENV)?,
        env(SYNC_RUNS_TABLE_ENV)?,
    ))
}

/// A function's start-up (reading its configuration, building its
/// services) running beside its runtime loop instead of before it, so that
/// the first invocation starts what needs none of it (the first queries of a
/// due index) while the configuration is still being read. A failed
/// start-up ends the process with its error, as one awaited before the loop
/// does ([`Starting::beside`]), and is each waiting invocation's error.
#[derive(Debug)]
pub struct Starting<T> {
    done: tokio::sync::watch::Receiver<Option<Started<T>>>,
}

/// What a start-up came to.
pub type Started<T> = Result<Arc<T>, crate::telemetry::StartupError>;

impl<T: Send + Sync + 'static> Starting<T> {
    /// Starts `start` in the background. Call it inside the runtime; log its
    /// failure in it ([`crate::telemetry::startup_failed`]).
    pub fn spawn(start: impl std::future::Future<Output = Started<T>> + Send + 'static) -> Starting<T> {
        let (done, waiting) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let started = start.await;
            done.send_replace(Some(started));
        });
        Starting { done: waiting }
    }

    /// Whether the start-up has ended, well or not.
    pub fn ended(&self) -> bool {
        self.done.borrow().is_some()
    }

    /// What the start-up built, once it has; its error when it failed.
    pub async fn get(&self) -> Started<T> {
        let mut done = self.done.clone();
        let ended = done.wait_for(Option::is_some).await.map(|started| started.clone());
        match ended {
            Ok(Some(started)) => started,
            // The start-up's task ended without an answer: it panicked.
            _ => Err(crate::telemetry::startup_failed(std::io::Error::other(
                "the start-up ended without a result",
            ))),
        }
    }

    /// Runs `runtime`, the function's runtime loop, beside the start-up:
    /// a start-up that fails ends it with that error. When the loop ends by
    /// itself (it cannot reach the runtime API), a failed start-up is still
    /// the error reported, as it would have been had the start-up run first.
    pub async fn beside<E: From<crate::telemetry::StartupError>>(
        &self,
        runtime: impl std::future::Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        let failed = async {
            match self.get().await {
                Err(e) => e,
                Ok(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            e = failed => Err(e.into()),
            ended = runtime => match self.get().await {
                Err(e) => Err(e.into()),
                Ok(_) => ended,
            },
        }
    }
}

fn env(name: &'static str) -> Result<String, StartupError> {
    std::env::var(name).map_err(|_| StartupError::MissingEnv(name))
}

/// `OAUTH_SYNC_CONFIG_SECRET` when set, else the file of `OAUTH_SYNC_CONFIG`,
/// with the discovery documents its providers need fetched once, here (a
/// document that cannot be fetched or used stops the start). From the
/// secret, it is checked for new versions every [`CHECK_INTERVAL`]; a file is
/// read once.
pub async fn load_config(secrets: &SecretStore) -> Result<LiveConfig, StartupError> {
    match std::env::var(CONFIG_SECRET_ENV) {
        Ok(name) if !name.is_empty() => load_config_secret(secrets, &name, CHECK_INTERVAL).await,
        _ => {
            tracing::debug!(variable = CONFIG_ENV, "reading the configuration file");
            let path = std::env::var(CONFIG_ENV).unwrap_or_else(|_| "oauth-sync.toml".to_owned());
            Ok(Config::load_and_discover(std::path::Path::new(&path)).await?.into())
        }
    }
}

/// The configuration in secret `name`, checked for a new version at most
/// once per `interval`.
pub async fn load_config_secret(
    secrets: &SecretStore,
    name: &str,
    interval: std::time::Duration,
) -> Result<LiveConfig, StartupError> {
    let read = secrets.versioned(name).await?;
    let config = Config::parse_and_discover(&read.text, &format!("secret {name}")).await?;
    Ok(LiveConfig::from_secret(
        config,
        secrets.clone(),
        name,
        &read.version_id,
        interval,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Starting, time_left};
    use crate::telemetry::startup_failed;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    #[tokio::test]
    async fn a_start_up_beside_the_loop_is_waited_for_and_its_failure_ends_the_loop() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let starting = Starting::spawn(async move {
            let _ = released.await;
            Ok(Arc::new(7))
        });
        assert!(!starting.ended());
        release.send(()).expect("the start-up waits");
        assert_eq!(*starting.get().await.expect("started"), 7);
        assert!(starting.ended());
        // A loop that ends by itself ends the process with its own outcome.
        let ended = starting
            .beside(async { Err::<(), BoxError>("no runtime API".into()) })
            .await;
        assert_eq!(ended.expect_err("the loop's").to_string(), "no runtime API");

        let failing: Starting<u8> =
            Starting::spawn(async { Err(startup_failed(std::io::Error::other("the configuration is missing"))) });
        // A loop that would wait for events forever is ended by the failure.
        let ended: Result<(), BoxError> = failing.beside(std::future::pending()).await;
        let error = ended.expect_err("the start-up failed");
        assert_eq!(error.to_string(), "the configuration is missing");
        let again = failing.get().await.expect_err("each waiting invocation gets it");
        assert_eq!(again.to_string(), "the configuration is missing");
        // A loop that cannot reach the runtime API reports the start-up's failure.
        let ended = failing
            .beside(async { Err::<(), BoxError>("no runtime API".into()) })
            .await;
        assert_eq!(
            ended.expect_err("the start-up's").to_string(),
            "the configuration is missing"
        );
    }

    #[test]
    fn a_deadline_is_an_epoch_time_unless_it_is_cargo_lambda_watchs_duration() {
        let now = 1_796_000_000_000;
        for (deadline, left) in [
            (1_796_000_900_000, Duration::from_secs(900)),
            (1_795_999_000_000, Duration::ZERO),
            (600_000, Duration::from_secs(600)),
            (0, Duration::ZERO),
        ] {
            assert_eq!(time_left(deadline, now), left, "deadline {deadline}");
        }
    }
}
