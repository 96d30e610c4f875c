//! Connections: one per connected account at a provider, with its encrypted
//! tokens, status, `token_version` and refresh lease. Every token write is in
//! [`store`]; the protocol that decides them is in [`crate::refresh`]. The
//! parameters a login learns are in [`params`].

pub mod clock;
pub mod params;
pub mod store;

use std::fmt;

use crate::config::ProviderSettings;

/// A connection id: 1–128 characters of `A-Z a-z 0-9 _ - . :`, so it is safe
/// in URLs, logs and DynamoDB keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection id `{0}`: use 1 to 128 characters of A-Z a-z 0-9 _ - . :")]
pub struct InvalidConnectionId(pub String);

impl ConnectionId {
    pub fn parse(value: &str) -> Result<ConnectionId, InvalidConnectionId> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if ok {
            Ok(ConnectionId(value.to_owned()))
        } else {
            Err(InvalidConnectionId(value.chars().take(140).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard of a due index of [`DUE_SHARDS`] shards this id lives in
    /// (the sync jobs' `sync-due` index).
    pub fn due_shard(&self) -> String {
        self.shard_of(DUE_SHARDS).to_string()
    }

    /// The shard of an index split `shards` ways this id lives in (FNV-1a of
    /// the id): the refresh-due index, whose shard count is the stack's
    /// `RefreshShards` ([`crate::shards::Layout`]).
    pub fn shard_of(&self, shards: u32) -> u32 {
        let hash = self.0.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        u32::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Partitions of the sync-due index, and the fewest of the refresh-due index
/// (the stack's `RefreshShards` may raise it, [`crate::shards::Layout`]):
/// enough that no single partition key gets hot, few enough that a run
/// queries them all every minute.
pub const DUE_SHARDS: u32 = 16;

/// Per end user (each user logs in once) or shared (one service account for everyone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConnectionKind {
    #[default]
    PerUser,
    Shared,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::PerUser => "per_user",
            ConnectionKind::Shared => "shared",
        }
    }

    pub fn parse(value: &str) -> Option<ConnectionKind> {
        match value {
            "per_user" => Some(ConnectionKind::PerUser),
            "shared" => Some(ConnectionKind::Shared),
            _ => None,
        }
    }
}

/// The lifecycle of DESIGN.md: pending → active → needs_reauth → (new login) active; → revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Active,
    NeedsReauth,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Active => "active",
            Status::NeedsReauth => "needs_reauth",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(value: &str) -> Option<Status> {
        match value {
            "pending" => Some(Status::Pending),
            "active" => Some(Status::Active),
            "needs_reauth" => Some(Status::NeedsReauth),
            "revoked" => Some(Status::Revoked),
            _ => None,
        }
    }
}

/// Why a connection needs a new login.
pub mod reason {
    /// The provider said the refresh token is dead.
    pub const DEAD_REFRESH_TOKEN: &str = "dead_refresh_token";
    /// A refresh was sent and its outcome stayed unknown after the one resend
    /// DESIGN.md allows (or the provider's settings allow none).
    pub const REFRESH_OUTCOME_UNKNOWN: &str = "refresh_outcome_unknown";
    /// The provider returned a token longer than the store keeps.
    pub const TOKEN_TOO_LARGE: &str = "token_too_large";
}

/// An encrypted value as stored (see [`crate::crypto::KeyRing`]). Its `Debug`
/// shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// Who holds the refresh lease, until when, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    /// Epoch milliseconds.
    pub until: i64,
    pub taken_at: i64,
}

/// A connection record as stored. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: ConnectionId,
    pub provider: String,
    pub kind: ConnectionKind,
    pub status: Status,
    pub status_reason: Option<String>,
    /// The provider's own words when it killed the connection.
    pub provider_message: Option<String>,
    pub access_token: Option<Sealed>,
    pub refresh_token: Option<Sealed>,
    pub access_expires_at: Option<i64>,
    pub scopes: Vec<String>,
    /// Grows by one with every token write; every write is conditional on it.
    pub token_version: u64,
    pub lease: Option<Lease>,
    /// Random id of the last commit, to recognise our own write after a lost response.
    pub commit_id: Option<String>,
    pub last_refresh_at: Option<i64>,
    pub last_refresh_outcome: Option<String>,
    pub consecutive_failures: u32,
    pub next_attempt_at: Option<i64>,
    /// Set when a refresh's outcome became unknown: when it was sent.
    pub outcome_unknown_since: Option<i64>,
    /// Set when the one resend of that refresh was started.
    pub outcome_unknown_resent_at: Option<i64>,
    pub refresh_due_at: Option<i64>,
    pub instance_url: Option<String>,
    pub api_domain: Option<String>,
    /// Parameters learned at login for the data API's URLs (Exact Online's
    /// `division`), see [`crate::config::Discovery`].
    pub params: std::collections::BTreeMap<String, String>,
    /// Why a parameter could not be learned at login; the connection is not
    /// synced until a new login learns it.
    pub param_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// When it was last revoked (epoch ms), kept across later logins: no
    /// connect link made before it may connect again.
    pub revoked_at: Option<i64>,
}

impl Connection {
    /// Every value a URL template may name for this connection: the learned
    /// parameters, and `instance_url` / `api_domain` from the token response.
    pub fn url_params(&self) -> std::collections::BTreeMap<String, String> {
        let mut params = self.params.clone();
        for (key, value) in [("instance_url", &self.instance_url), ("api_domain", &self.api_domain)] {
            if let Some(value) = value {
                params.insert(key.to_owned(), value.trim_end_matches('/').to_owned());
            }
        }
        params
    }
}

/// When the connection should next be refreshed: `refresh_lead` before the
/// access token expires, or halfway through the refresh token's idle life so
/// an unused connection does not die, but never sooner than the provider's
/// minimum interval after the last refresh.
pub fn refresh_due_at(settings: &ProviderSettings, access_expires_at: i64, last_refresh_at: Option<i64>) -> i64 {
    let secs = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut due = access_expires_at.saturating_sub(secs(settings.refresh_lead_secs));
    if let (Some(idle), Some(last)) = (settings.refresh_token_idle_secs, last_refresh_at) {
        due = due.min(last.saturating_add(secs(idle / 2)));
    }
    if let Some(last) = last_refresh_at {
        due = due.max(last.saturating_add(secs(settings.min_refresh_interval_secs)));
    }
    due
}

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PresetName;

    #[test]
    fn connection_ids_are_checked() {
        assert!(ConnectionId::parse("acme-42:exact.nl_1").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(ConnectionId::parse(bad).is_err(), "{bad}");
        }
        let shards: std::collections::BTreeSet<_> = (0..200)
            .map(|i| ConnectionId::parse(&format!("c{i}")).expect("id").due_shard())
            .collect();
        assert_eq!(shards.len(), DUE_SHARDS as usize, "ids spread over every shard");
    }

    #[test]
    fn due_time_respects_lead_idle_life_and_minimum_interval() {
        let generic = PresetName::Generic.settings();
        assert_eq!(refresh_due_at(&generic, 1_000_000, None), 1_000_000 - 300_000);

        // Exact Online: 25 s before expiry, but never within 570 s of the last refresh.
        let exact = PresetName::ExactOnline.settings();
        assert_eq!(refresh_due_at(&exact, 600_000, Some(0)), 575_000);
        assert_eq!(refresh_due_at(&exact, 100_000, Some(0)), 570_000);

        // An idle Xero connection is refreshed well before its 60-day idle limit.
        let xero = PresetName::Xero.settings();
        let day = 86_400_000;
        assert_eq!(refresh_due_at(&xero, 100 * day, Some(0)), 30 * day);
    }
}
