//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` headers, the
//! signing secret `whsec_<base64>`, and the payload shape `{type, timestamp,
//! data}`. Pure functions: no clock, no I/O.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac};
use serde_json::{Value, json};

/// The prefix the specification gives a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The specification's bounds on the secret's decoded length, in bytes.
pub const SECRET_MIN_BYTES: usize = 24;
pub const SECRET_MAX_BYTES: usize = 64;

/// An endpoint's signing key: the bytes of its `whsec_` secret. `Debug`
/// is redacted and nothing prints the bytes.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// Why a secret's text is not a signing secret. Never quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    #[error("a signing secret starts with `whsec_` (whsec_ followed by base64)")]
    NoPrefix,
    #[error("the part after `whsec_` is not standard base64")]
    NotBase64,
    #[error("the secret decodes to {0} bytes; the specification asks for 24 to 64")]
    Length(usize),
}

impl SigningSecret {
    /// Parses `whsec_<base64 of 24–64 bytes>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<SigningSecret, SecretFormatError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretFormatError::NoPrefix)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretFormatError::NotBase64)?;
        if !(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&bytes.len()) {
            return Err(SecretFormatError::Length(bytes.len()));
        }
        Ok(SigningSecret(bytes))
    }

    /// A fresh secret of 32 random bytes, as its `whsec_` text (for docs and tests).
    pub fn generate() -> Result<String, crate::crypto::RandomError> {
        Ok(format!(
            "{SECRET_PREFIX}{}",
            STANDARD.encode(crate::crypto::random_bytes::<32>()?)
        ))
    }
}

/// The signature header value, `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(mac(secret, id, timestamp, body)))
}

fn mac(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
    let mut context = hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    context.sign().as_ref().to_vec()
}

/// Why a receiver refuses a webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now, beyond the tolerance")]
    Stale(i64),
    #[error("no v1 signature in webhook-signature matches the body")]
    NoMatch,
}

/// What a receiver does (the specification's verification): the timestamp
/// within `tolerance_secs` of `now`, and one of the space-separated `v1,`
/// signatures equal, in constant time, to ours. For tests and the docs'
/// example; the sender only signs.
pub fn verify(
    secret: &SigningSecret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now.saturating_sub(timestamp);
    if skew.abs() > tolerance_secs {
        return Err(VerifyError::Stale(skew));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
    let message = [id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body].concat();
    let matches = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|tag| hmac::verify(&key, &message, &tag).is_ok());
    if matches { Ok(()) } else { Err(VerifyError::NoMatch) }
}

/// The `webhook-id` of `event_id` sent to `endpoint`: the same on every
/// retry (receivers deduplicate on it) and different per endpoint.
/// `msg_` and 32 hex digits of SHA-256 over both, the endpoint first.
pub fn webhook_id(event_id: &str, endpoint: &str) -> String {
    let input = [endpoint.as_bytes(), b"\n", event_id.as_bytes()].concat();
    let digest = digest::digest(&digest::SHA256, &input);
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// The body a receiver gets: `{"type": detail-type, "timestamp": time, "data": detail}`.
pub fn payload(event_type: &str, time: &str, detail: &Value) -> Vec<u8> {
    json!({"type": event_type, "timestamp": time, "data": detail})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector the Standard Webhooks reference libraries share.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specifications_test_vector_signs_and_verifies() {
        let secret = SigningSecret::parse(SECRET).expect("the vector's secret");
        assert_eq!(sign(&secret, ID, TIMESTAMP, BODY), SIGNATURE);
        let header = format!("v1,bm9wZQ== {SIGNATURE}");
        assert_eq!(
            verify(&secret, ID, "1614265330", &header, BODY, TIMESTAMP + 10, 300),
            Ok(())
        );
        let tampered = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&secret, ID, "1614265330", SIGNATURE, tampered, TIMESTAMP, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, "msg_other", "1614265330", SIGNATURE, BODY, TIMESTAMP, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, ID, "1614265330", SIGNATURE, BODY, TIMESTAMP + 301, 300),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(&secret, ID, "soon", SIGNATURE, BODY, TIMESTAMP, 300),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn a_secret_is_whsec_and_24_to_64_bytes_and_never_printed() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretFormatError::NoPrefix
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!").unwrap_err(),
            SecretFormatError::NotBase64
        );
        assert_eq!(
            SigningSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 16]))).unwrap_err(),
            SecretFormatError::Length(16)
        );
        assert_eq!(
            SigningSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 65]))).unwrap_err(),
            SecretFormatError::Length(65)
        );
        let generated = SigningSecret::generate().expect("rng");
        let secret = SigningSecret::parse(&generated).expect("a generated secret parses");
        assert_eq!(format!("{secret:?}"), "SigningSecret([redacted])");
        assert!(!format!("{secret:?}").contains(&generated[6..12]));
    }

    #[test]
    fn a_webhook_id_is_stable_per_event_and_endpoint() {
        let id = webhook_id("6f1c1a7e-0000-4000-8000-000000000001", "crm");
        assert_eq!(id, webhook_id("6f1c1a7e-0000-4000-8000-000000000001", "crm"));
        assert_ne!(id, webhook_id("6f1c1a7e-0000-4000-8000-000000000001", "billing"));
        assert_ne!(id, webhook_id("6f1c1a7e-0000-4000-8000-000000000002", "crm"));
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
    }

    #[test]
    fn the_payload_is_the_standard_webhooks_shape() {
        let body = payload("sync.run.finished", "2026-12-06T10:00:00Z", &json!({"inserted": 3}));
        let value: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            value,
            json!({"type": "sync.run.finished", "timestamp": "2026-12-06T10:00:00Z", "data": {"inserted": 3}})
        );
    }
}
