//! Why no access token could be had, and why a
//! [`TokenService`](super::TokenService) could not be built.

use super::MAX_TOKEN_BYTES;
use crate::config::UnknownProvider;
use crate::connection::{ConnectionId, Status, now_ms};
use crate::crypto::CryptoError;
use crate::dynamo::StoreError;
use crate::secrets::SecretsError;

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
    /// The token key ring could not be read (or does not parse): nothing was
    /// sealed or opened.
    #[error(transparent)]
    KeyRing(#[from] crate::reload::KeyRingError),
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
    /// A login's tokens were not stored: the connection was revoked at or
    /// after the time its connect link was made.
    #[error("connection {id} was revoked after this login's link was made; nothing was stored")]
    RevokedDuringLogin { id: ConnectionId },
}

/// Why a [`TokenService`](super::TokenService) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
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
}
