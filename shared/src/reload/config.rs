//! [`LiveConfig`]: the configuration a process serves with, re-read from its
//! secret when a new version is pushed.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{error, info, warn};

use super::{CHECK_TIMEOUT, Reload, SecretWatch, Seen};
use crate::config::Config;
use crate::secrets::SecretStore;

/// The configuration in use: a snapshot for each piece of work
/// ([`LiveConfig::current`]) and, when it came from a secret, a check for
/// a new version ([`LiveConfig::check`]). Clones share one holder, so every
/// service of a process sees the same configuration.
#[derive(Clone)]
pub struct LiveConfig {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Arc<Config>>,
    /// `None`: from a file or a test, never reloaded.
    watch: Option<SecretWatch>,
}

impl fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveConfig")
            .field("secret", &self.inner.watch.as_ref().map(|w| &w.name))
            .finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// A configuration that never changes (a file, a test).
    pub fn fixed(config: Arc<Config>) -> LiveConfig {
        LiveConfig {
            inner: Arc::new(Inner {
                current: RwLock::new(config),
                watch: None,
            }),
        }
    }

    /// `config`, read from version `version` of secret `name`; checked for a
    /// new version at most once per `interval` ([`super::CHECK_INTERVAL`]
    /// in the functions).
    pub fn from_secret(
        config: Config,
        secrets: SecretStore,
        name: &str,
        version: &str,
        interval: Duration,
    ) -> LiveConfig {
        LiveConfig {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(config)),
                watch: Some(SecretWatch::new(secrets, name.to_owned(), version.to_owned(), interval)),
            }),
        }
    }

    /// The configuration to start a piece of work with. Keep the snapshot
    /// for the whole of it: a reload meanwhile does not change it.
    pub fn current(&self) -> Arc<Config> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// At the start of an invocation: when an interval has passed since the
    /// last check, reads the secret and, if its version is new, loads it
    /// (with its discovery documents) and uses it from now on. A version that
    /// does not load is refused and remembered; the errors are logged (the
    /// configuration holds secret names, never secret values) and
    /// `ConfigRefused` is counted.
    pub async fn check(&self) -> Reload {
        let Some(watch) = &self.inner.watch else {
            return Reload::Fixed;
        };
        let read = match watch.poll().await {
            Seen::NotDue => return Reload::NotDue,
            Seen::Same => return Reload::Unchanged,
            Seen::Unreadable(reason) => {
                warn!(secret = %watch.name, reason, "the configuration secret could not be checked; the configuration in use stays");
                return Reload::Unreadable { reason };
            }
            Seen::New(read) => read,
        };
        let version = read.version_id;
        let source = format!("secret {}", watch.name);
        let parsed = tokio::time::timeout(CHECK_TIMEOUT, Config::parse_and_discover(&read.text, &source)).await;
        let outcome = match parsed {
            Err(_) => {
                let reason = format!(
                    "the discovery documents of version {version} took over {} s",
                    CHECK_TIMEOUT.as_secs()
                );
                warn!(secret = %watch.name, reason, "the new configuration was not loaded; the configuration in use stays");
                // Not refused: the next check tries this version again.
                return Reload::Unreadable { reason };
            }
            Ok(Ok(config)) => {
                *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                watch.adopted(&version);
                info!(secret = %watch.name, version, "configuration reloaded");
                Reload::Adopted { version }
            }
            Ok(Err(errors)) => {
                watch.refused(&version);
                error!(
                    secret = %watch.name,
                    version,
                    error_count = errors.as_slice().len(),
                    errors = %errors.in_one_line(),
                    "the new configuration was refused; the configuration in use stays (run `oauth-sync config check` on the file, then `config push`)"
                );
                Reload::Refused {
                    version,
                    errors: errors.in_one_line(),
                }
            }
        };
        if let Some(metrics) = outcome.metrics("ConfigReloaded", "ConfigRefused") {
            metrics.emit();
        }
        outcome
    }
}

impl From<Arc<Config>> for LiveConfig {
    fn from(config: Arc<Config>) -> LiveConfig {
        LiveConfig::fixed(config)
    }
}

impl From<Config> for LiveConfig {
    fn from(config: Config) -> LiveConfig {
        LiveConfig::fixed(Arc::new(config))
    }
}

impl From<&LiveConfig> for LiveConfig {
    fn from(config: &LiveConfig) -> LiveConfig {
        config.clone()
    }
}
