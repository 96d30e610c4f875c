//! One webhook POST: the payload signed with the endpoint's secret, through
//! the HTTP client of [`crate::http::client`] (a timeout on every call,
//! redirects never followed, no pooled sockets across Lambda freezes). Any
//! answer but a 2xx is a failure, a redirect too.

use std::time::Duration;

use crate::config::{Webhook, webhook_url_allowed};
use crate::secrets::{SecretStore, SecretsError};

use super::Event;
use super::sign::{SecretFormatError, SigningSecret, payload, sign};

/// The longest a delivery may take, connection included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a delivery failed. Names neither the URL (it may carry a token in
/// its path) nor the secret.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("no answer within {DELIVERY_TIMEOUT:?}")]
    Timeout,
    #[error("the request failed: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("the URL is not https (nor http to a loopback address)")]
    UrlRefused,
}

/// Why the endpoint's signing secret is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SigningSecretError {
    #[error(transparent)]
    Read(#[from] SecretsError),
    #[error("secret `{name}` is not a signing secret: {reason}")]
    Format {
        name: String,
        #[source]
        reason: SecretFormatError,
    },
}

/// Reads and parses the signing secret named `name`.
pub async fn signing_secret(secrets: &SecretStore, name: &str) -> Result<SigningSecret, SigningSecretError> {
    let text = secrets.text(name).await?;
    SigningSecret::parse(&text).map_err(|reason| SigningSecretError::Format {
        name: name.to_owned(),
        reason,
    })
}

/// POSTs `event` to `webhook` as `webhook_id`, signed at `timestamp` (epoch
/// seconds, a fresh one per attempt as the specification asks); the status
/// of a 2xx answer.
pub async fn send(
    http: &reqwest::Client,
    webhook: &Webhook,
    secret: &SigningSecret,
    webhook_id: &str,
    timestamp: i64,
    event: &Event,
) -> Result<u16, DeliveryError> {
    // The configuration checked it; checked again where it is used.
    if !webhook_url_allowed(&webhook.url) {
        return Err(DeliveryError::UrlRefused);
    }
    let body = payload(&event.detail_type, &event.time, &event.detail);
    let signature = sign(secret, webhook_id, timestamp, &body);
    let answer = http
        .post(webhook.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                DeliveryError::Timeout
            } else {
                DeliveryError::Transport(e.without_url())
            }
        })?;
    let status = answer.status();
    // The answer's body is not read: nothing in it changes the outcome.
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(DeliveryError::Status(status.as_u16()))
    }
}
