//! [`LiveKeys`]: the token key ring a process seals and opens with, re-read
//! from its secret after `keys rotate`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{Reload, SecretWatch, Seen, UNKNOWN_KEY_INTERVAL};
use crate::crypto::{CryptoError, KeyRing, sealed_key_id};
use crate::secrets::{SecretStore, Versioned};

/// At most this many unknown key ids are remembered; beyond that, an unknown
/// id does not make the ring be re-read until older ones are forgotten.
const MAX_UNKNOWN_IDS: usize = 64;

/// The token key ring in use. [`LiveKeys::seal`] seals under its current key;
/// [`LiveKeys::open`] re-reads the ring once when a value names a key it does
/// not list (another process rotated the ring and sealed under the new key);
/// [`LiveKeys::check`] picks up a rotation at the start of an invocation.
pub struct LiveKeys {
    current: RwLock<Arc<KeyRing>>,
    /// `None`: a ring given by the caller (a test), never re-read.
    watch: Option<SecretWatch>,
    /// Key ids the ring was re-read for, and when. Held across the re-read:
    /// concurrent opens of a new key's values wait for one read.
    unknown: tokio::sync::Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for LiveKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveKeys")
            .field("ring", &self.current())
            .field("secret", &self.watch.as_ref().map(|w| &w.name))
            .finish_non_exhaustive()
    }
}

impl LiveKeys {
    /// A ring that is never re-read.
    pub fn fixed(ring: KeyRing) -> LiveKeys {
        LiveKeys {
            current: RwLock::new(Arc::new(ring)),
            watch: None,
            unknown: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `ring`, read from version `version` of secret `name`; checked for a
    /// new version at most once per `interval`.
    pub fn from_secret(ring: KeyRing, secrets: SecretStore, name: &str, version: &str, interval: Duration) -> LiveKeys {
        LiveKeys {
            watch: Some(SecretWatch::new(secrets, name.to_owned(), version.to_owned(), interval)),
            ..LiveKeys::fixed(ring)
        }
    }

    /// Checks the ring's version at most once per `interval` instead.
    pub fn checked_every(mut self, interval: Duration) -> LiveKeys {
        self.watch = self.watch.map(|w| w.every(interval));
        self
    }

    /// The ring in use now.
    pub fn current(&self) -> Arc<KeyRing> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`KeyRing::seal`] with the ring in use.
    pub fn seal(&self, connection_id: &str, field: &str, plaintext: &str) -> Result<Vec<u8>, CryptoError> {
        self.current().seal(connection_id, field, plaintext)
    }

    /// [`KeyRing::open`]; a value sealed under a key the ring does not list
    /// makes the ring be re-read (see [`LiveKeys::learn`]) and is opened
    /// again. A key still unknown is [`CryptoError::UnknownKey`], as before.
    pub async fn open(&self, connection_id: &str, field: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        match self.current().open(connection_id, field, sealed) {
            Err(CryptoError::UnknownKey(id)) if self.learn(&id).await => {
                self.current().open(connection_id, field, sealed)
            }
            other => other,
        }
    }

    /// Makes sure the ring can open `sealed` if a re-read allows it, for a
    /// caller that opens it later without waiting.
    pub async fn prepare(&self, sealed: &[u8]) {
        if let Ok(id) = sealed_key_id(sealed)
            && !self.current().has_key(id)
        {
            self.learn(id).await;
        }
    }

    /// Does the ring list `id`, after re-reading it if needed? A re-read for
    /// the same id happens at most once per [`UNKNOWN_KEY_INTERVAL`], so
    /// values under a key that is gone (or garbage) cannot make every request
    /// read Secrets Manager; concurrent callers wait for one re-read.
    pub async fn learn(&self, id: &str) -> bool {
        let Some(watch) = &self.watch else {
            return false;
        };
        let mut tried = self.unknown.lock().await;
        if self.current().has_key(id) {
            return true; // another caller re-read it while this one waited
        }
        let now = Instant::now();
        tried.retain(|_, at| now < *at + UNKNOWN_KEY_INTERVAL);
        if tried.contains_key(id) || tried.len() >= MAX_UNKNOWN_IDS {
            return false;
        }
        tried.insert(id.to_owned(), now);
        match watch.read().await {
            Ok(read) => {
                self.take(watch, read);
            }
            Err(reason) => {
                warn!(secret = %watch.name, key = id, reason, "the token key ring could not be re-read for an unknown key");
            }
        }
        self.current().has_key(id)
    }

    /// At the start of an invocation: when an interval has passed since the
    /// last check, re-reads the ring if its version changed, so new values
    /// are sealed under a rotated key. A ring that does not parse is refused
    /// (logged, `KeyRingRefused` counted) and the one in use stays.
    pub async fn check(&self) -> Reload {
        let Some(watch) = &self.watch else {
            return Reload::Fixed;
        };
        match watch.poll().await {
            Seen::NotDue => Reload::NotDue,
            Seen::Same => Reload::Unchanged,
            Seen::Unreadable(reason) => {
                warn!(secret = %watch.name, reason, "the token key ring could not be checked; the ring in use stays");
                Reload::Unreadable { reason }
            }
            Seen::New(read) => {
                let outcome = self.take(watch, read);
                if let Some(metrics) = outcome.metrics("KeyRingReloaded", "KeyRingRefused") {
                    metrics.emit();
                }
                outcome
            }
        }
    }

    /// Uses a version of the ring read from its secret, unless it does not
    /// parse (the error describes its shape, never its content).
    fn take(&self, watch: &SecretWatch, read: Versioned) -> Reload {
        let version = read.version_id;
        match KeyRing::from_json(&read.text) {
            Ok(ring) => {
                let current = ring.current_key_id().to_owned();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
                watch.adopted(&version);
                info!(secret = %watch.name, version, current_key = current, "token key ring reloaded");
                Reload::Adopted { version }
            }
            Err(e) => {
                watch.refused(&version);
                error!(secret = %watch.name, version, error = %e, "the new token key ring was refused; the ring in use stays");
                Reload::Refused {
                    version,
                    errors: e.to_string(),
                }
            }
        }
    }
}

/// Why the token key ring could not be had. The message names the secret,
/// never a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("token key ring: {0}")]
    Read(#[from] crate::secrets::SecretsError),
    #[error("token key ring in secret `{secret}`: {source}")]
    Invalid { secret: String, source: CryptoError },
    /// The last read failed less than [`KEY_RING_RETRY`] ago: not read again yet.
    #[error(
        "token key ring in secret `{secret}` could not be read a moment ago ({reason}); it is read again within a second"
    )]
    Unavailable { secret: String, reason: String },
}

/// After a failed read of the key ring, work that needs it fails at once
/// for this long instead of reading again: a refresher run of thousands of
/// due connections makes one read a second, not one per connection.
pub const KEY_RING_RETRY: Duration = Duration::from_secs(1);

/// A process's token key ring, read from its secret apart from the start:
/// a function starts the read in the background ([`KeySource::prefetch`],
/// beside its first DynamoDB reads) and only work that seals or opens a
/// token waits for it ([`KeySource::get`]); a scheduled run that finds
/// nothing due, `GET /connections` or `/callback`'s first reads never do.
/// A failed read is the error of the work that needed the ring (it names
/// the secret) and is tried again by the next. Clones share the ring.
#[derive(Clone)]
pub struct KeySource {
    inner: Arc<KeySourceInner>,
}

struct KeySourceInner {
    keys: tokio::sync::OnceCell<LiveKeys>,
    /// Where the ring comes from; `None` when it was given.
    secret: Option<(SecretStore, String)>,
    /// How often the ring, once read, is checked for a new version.
    interval: std::sync::Mutex<Duration>,
    /// When the last read failed, and why (the error's text names the
    /// secret, never a key).
    failed: std::sync::Mutex<Option<(Instant, String)>>,
}

impl KeySource {
    /// The ring in secret `name`, read when first needed, then checked for
    /// a new version at most once per `interval`.
    pub fn lazy(secrets: SecretStore, name: &str, interval: Duration) -> KeySource {
        KeySource {
            inner: Arc::new(KeySourceInner {
                keys: tokio::sync::OnceCell::new(),
                secret: Some((secrets, name.to_owned())),
                interval: std::sync::Mutex::new(interval),
                failed: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Checks the ring's version at most once per `interval` instead (for a
    /// ring not read yet; tests make it shorter).
    pub fn checked_every(self, interval: Duration) -> KeySource {
        *self.inner.interval.lock().unwrap_or_else(|p| p.into_inner()) = interval;
        self
    }

    /// Starts reading the ring in the background and returns at once. A
    /// failure is logged (naming the secret) and left for the first work
    /// that needs the ring to try again. Call it inside the runtime.
    pub fn prefetch(&self) {
        let source = self.clone();
        tokio::spawn(async move {
            if let Err(error) = source.get().await {
                warn!(error = %crate::telemetry::error_chain(&error),
                    "the token key ring could not be read; the first work that needs it tries again");
            }
        });
    }

    /// The ring's holder if it was read (or given) already.
    pub fn loaded(&self) -> Option<&LiveKeys> {
        self.inner.keys.get()
    }

    /// The ring's holder: read on the first call (concurrent callers wait
    /// for the one read), then kept and checked by [`LiveKeys::check`]. A
    /// failure keeps nothing; for [`KEY_RING_RETRY`] after it, callers get
    /// [`KeyRingError::Unavailable`] without a read.
    pub async fn get(&self) -> Result<&LiveKeys, KeyRingError> {
        self.inner
            .keys
            .get_or_try_init(|| async {
                // Callers that waited for a read that failed do not each read again.
                if let Some(reason) = self.failed_recently() {
                    return Err(self.unavailable(reason));
                }
                let read = self.read().await;
                if let Err(error) = &read {
                    *self.failed() = Some((Instant::now(), crate::telemetry::error_chain(error)));
                }
                read
            })
            .await
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.inner.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the last read failed, if that was less than [`KEY_RING_RETRY`] ago.
    fn failed_recently(&self) -> Option<String> {
        self.failed()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < KEY_RING_RETRY)
            .map(|(_, reason)| reason.clone())
    }

    /// The error of work that needs a ring not read yet and cannot wait for it.
    pub fn not_read(&self) -> KeyRingError {
        self.unavailable("not read yet".to_owned())
    }

    fn unavailable(&self, reason: String) -> KeyRingError {
        let secret = self
            .inner
            .secret
            .as_ref()
            .map(|(_, name)| name.clone())
            .unwrap_or_default();
        KeyRingError::Unavailable { secret, reason }
    }

    /// One read of the ring's secret.
    async fn read(&self) -> Result<LiveKeys, KeyRingError> {
        let Some((secrets, name)) = &self.inner.secret else {
            // A given ring fills the cell at once: never reached.
            return Err(KeyRingError::Invalid {
                secret: String::new(),
                source: CryptoError::KeyRing("no token key ring was given"),
            });
        };
        let read = secrets.versioned(name).await?;
        let ring = KeyRing::from_json(&read.text).map_err(|source| KeyRingError::Invalid {
            secret: name.clone(),
            source,
        })?;
        let interval = *self.inner.interval.lock().unwrap_or_else(|p| p.into_inner());
        Ok(LiveKeys::from_secret(
            ring,
            secrets.clone(),
            name,
            &read.version_id,
            interval,
        ))
    }

    /// At the start of an invocation: [`LiveKeys::check`] once the ring was
    /// read; before that there is nothing to compare ([`Reload::NotDue`]).
    pub async fn check(&self) -> Reload {
        match self.loaded() {
            Some(keys) => keys.check().await,
            None => Reload::NotDue,
        }
    }
}

impl From<LiveKeys> for KeySource {
    fn from(keys: LiveKeys) -> KeySource {
        KeySource {
            inner: Arc::new(KeySourceInner {
                keys: tokio::sync::OnceCell::new_with(Some(keys)),
                secret: None,
                interval: std::sync::Mutex::new(super::CHECK_INTERVAL),
                failed: std::sync::Mutex::new(None),
            }),
        }
    }
}

/// Names the secret, never a key.
impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySource")
            .field("secret", &self.inner.secret.as_ref().map(|(_, name)| name))
            .field("keys", &self.loaded())
            .finish()
    }
}
