//! The configuration and the token key ring of a warm process, kept current
//! without a restart (issue 19, item 6).
//!
//! A Lambda instance lives for hours and reads its secrets when it starts.
//! Two holders let it follow the operator's changes:
//!
//! - [`LiveConfig`]: the configuration. At the start of an invocation it asks
//!   the configuration secret, at most once per [`CHECK_INTERVAL`], whether its
//!   version changed (one `GetSecretValue`; the text is parsed only when the
//!   version id differs from the one in use). A new version that does not
//!   parse or validate is refused: the old configuration stays, the errors are
//!   logged and `ConfigRefused` is counted, and that version is not read
//!   again (the next `config push` is).
//! - [`LiveKeys`]: the token key ring. It is checked the same way, so new
//!   values are sealed under a rotated key within a minute; and a sealed
//!   value naming a key the ring does not list makes it re-read the ring at
//!   once (coalesced, at most once per [`UNKNOWN_KEY_INTERVAL`] per key id).
//!
//! Both hand out snapshots (`Arc`s): work that started with one keeps it, and
//! work that starts after a reload sees the new one. The check runs in the
//! invocation, not in a background task: Lambda freezes a process between
//! invocations.

mod config;
mod keys;

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use self::config::LiveConfig;
pub use self::keys::{KEY_RING_RETRY, KeyRingError, KeySource, LiveKeys};
use crate::metrics::Metrics;
use crate::secrets::{SecretStore, Versioned};

/// How often a warm process asks whether a secret changed.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// The longest a check waits for Secrets Manager (and for the discovery
/// documents of a new configuration) before it keeps what it has.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A key id the ring does not list makes the ring be re-read at most this often.
pub const UNKNOWN_KEY_INTERVAL: Duration = Duration::from_secs(10);

/// What one check of a secret did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Not read from a secret (a file, a test): never reloaded.
    Fixed,
    /// Checked less than an interval ago (or another task is checking now).
    NotDue,
    /// The version in use (or the one refused before) is still current.
    Unchanged,
    /// A new version is in use from now on.
    Adopted { version: String },
    /// A new version that does not load; the old one stays.
    Refused { version: String, errors: String },
    /// Secrets Manager did not answer in time or refused the read; the old
    /// one stays and the next check tries again.
    Unreadable { reason: String },
}

impl Reload {
    /// The counts this outcome adds to the `reload` metrics (none when
    /// nothing changed): `{what}Reloaded` or `{what}Refused`.
    pub fn metrics(&self, reloaded: &'static str, refused: &'static str) -> Option<Metrics> {
        match self {
            Reload::Adopted { .. } => Some(Metrics::new("reload").count(reloaded, 1)),
            Reload::Refused { .. } => Some(Metrics::new("reload").count(refused, 1)),
            _ => None,
        }
    }
}

/// The two checks of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloads {
    pub config: Reload,
    pub keys: Reload,
}

/// One secret watched for new versions: the version in use, the one refused
/// last, and when it may be read next.
#[derive(Debug)]
struct SecretWatch {
    secrets: SecretStore,
    name: String,
    interval: Duration,
    state: Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    next_read: Instant,
    version: String,
    refused: Option<String>,
}

/// What a poll of a watched secret found.
enum Seen {
    NotDue,
    Same,
    New(Versioned),
    Unreadable(String),
}

impl SecretWatch {
    fn new(secrets: SecretStore, name: String, version: String, interval: Duration) -> SecretWatch {
        SecretWatch {
            secrets,
            name,
            interval,
            state: Mutex::new(WatchState {
                next_read: Instant::now() + interval,
                version,
                refused: None,
            }),
        }
    }

    /// Reads at most once per `interval`, from now.
    fn every(mut self, interval: Duration) -> SecretWatch {
        self.interval = interval;
        self.state().next_read = Instant::now() + interval;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the secret when an interval has passed since the last read.
    /// The caller that finds it due takes the slot: concurrent callers see
    /// "not due" and go on with what they have.
    async fn poll(&self) -> Seen {
        let (known, refused) = {
            let mut state = self.state();
            let now = Instant::now();
            if now < state.next_read {
                return Seen::NotDue;
            }
            state.next_read = now + self.interval;
            (state.version.clone(), state.refused.clone())
        };
        match self.read().await {
            Err(reason) => Seen::Unreadable(reason),
            Ok(read) if read.version_id == known || refused.as_deref() == Some(read.version_id.as_str()) => Seen::Same,
            Ok(read) => Seen::New(read),
        }
    }

    /// The current version, within [`CHECK_TIMEOUT`]; the error names the
    /// secret, never its value.
    async fn read(&self) -> Result<Versioned, String> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.secrets.versioned(&self.name)).await {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(e)) => Err(crate::telemetry::error_chain(&e)),
            Err(_) => Err(format!(
                "secret `{}` did not answer within {} s",
                self.name,
                CHECK_TIMEOUT.as_secs()
            )),
        }
    }

    fn adopted(&self, version: &str) {
        let mut state = self.state();
        state.version = version.to_owned();
        state.refused = None;
    }

    fn refused(&self, version: &str) {
        self.state().refused = Some(version.to_owned());
    }
}
