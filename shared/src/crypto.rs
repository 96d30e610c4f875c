//! Randomness, hashing, PKCE, and the encryption of tokens at rest, all from
//! aws-lc-rs (already compiled in as rustls' crypto provider).
//!
//! Tokens are sealed with AES-256-GCM under a key ring kept in Secrets Manager:
//! new values are sealed with the ring's current key, and any key still listed
//! opens old ones, so keys rotate without re-encrypting everything at once.
//! The connection id and the field name are the associated data, so a sealed
//! value copied to another connection or field does not open.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::secret::PkceVerifier;

/// The system CSPRNG failed; nothing sensible can continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// `N` bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(bytes)
}

/// 256 random bits, base64url without padding (43 characters): `state`
/// values, PKCE verifiers, simulator tokens.
pub fn random_token() -> Result<String, RandomError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// SHA-256, base64url without padding.
pub fn sha256_b64url(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, input))
}

/// A PKCE pair (RFC 7636): a 43-character verifier from 32 random bytes and
/// its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: PkceVerifier,
    pub challenge: String,
}

impl Pkce {
    pub fn generate() -> Result<Pkce, RandomError> {
        let verifier = random_token()?;
        let challenge = sha256_b64url(verifier.as_bytes());
        Ok(Pkce {
            verifier: PkceVerifier::new(verifier),
            challenge,
        })
    }

    /// The S256 challenge of a verifier.
    pub fn challenge_of(verifier: &str) -> String {
        sha256_b64url(verifier.as_bytes())
    }
}

/// Format byte of a sealed value; a new format gets a new byte.
const SEALED_V1: u8 = 1;

/// Why a key ring could not be loaded, or a value not sealed or opened. No
/// variant carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("key ring: {0}")]
    KeyRing(&'static str),
    #[error("sealed with key `{0}`, which the key ring no longer lists")]
    UnknownKey(String),
    #[error("a sealed value is corrupt or belongs to another connection or field")]
    Corrupt,
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// The token-encryption keys: `{"current": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "..."}}`.
pub struct KeyRing {
    current: String,
    keys: BTreeMap<String, LessSafeKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Parses the key ring secret. Errors describe the shape, never the content.
    pub fn from_json(text: &str) -> Result<KeyRing, CryptoError> {
        let (current, raw) = parse_key_ring(text)?;
        let mut keys = BTreeMap::new();
        for (id, bytes) in raw {
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| CryptoError::KeyRing("a key is not 32 bytes (AES-256)"))?;
            keys.insert(id, LessSafeKey::new(key));
        }
        Ok(KeyRing { current, keys })
    }

    /// A new key ring secret with one fresh random key, for `oauth-sync` set-up and tests.
    pub fn generate_json(key_id: &str) -> Result<String, CryptoError> {
        let key = STANDARD.encode(random_bytes::<32>()?);
        Ok(serde_json::json!({"current": key_id, "keys": {key_id: key}}).to_string())
    }

    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    /// Seals `plaintext` for `field` of connection `connection_id` with the current key and a fresh nonce.
    pub fn seal(&self, connection_id: &str, field: &str, plaintext: &str) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .keys
            .get(&self.current)
            .ok_or_else(|| CryptoError::UnknownKey(self.current.clone()))?;
        let nonce = random_bytes::<NONCE_LEN>()?;
        let mut sealed = plaintext.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            aad(connection_id, field),
            &mut sealed,
        )
        .map_err(|_| CryptoError::Corrupt)?;
        let id = self.current.as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.push(id.len() as u8); // key ids are at most 64 bytes (checked at load)
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed by [`KeyRing::seal`] for the same connection and field.
    pub fn open(&self, connection_id: &str, field: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        let (&format, rest) = sealed.split_first().ok_or(CryptoError::Corrupt)?;
        let (&id_len, rest) = rest.split_first().ok_or(CryptoError::Corrupt)?;
        if format != SEALED_V1 || rest.len() < usize::from(id_len) + NONCE_LEN {
            return Err(CryptoError::Corrupt);
        }
        let (id, rest) = rest.split_at(usize::from(id_len));
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| CryptoError::Corrupt)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Corrupt)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = key
            .open_in_place(nonce, aad(connection_id, field), &mut buffer)
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| CryptoError::Corrupt)
    }
}

/// A key ring secret, `{"current": "<id>", "keys": {"<id>": "<base64>"}}`:
/// the current key id and every key's bytes. Used for the token keys and the
/// connect-link signing keys, so both rotate the same way.
pub(crate) fn parse_key_ring(text: &str) -> Result<(String, BTreeMap<String, Vec<u8>>), CryptoError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        current: String,
        keys: BTreeMap<String, String>,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|_| {
        CryptoError::KeyRing(r#"expected {"current": "<key id>", "keys": {"<key id>": "<base64 of 32 bytes>"}}"#)
    })?;
    let mut keys = BTreeMap::new();
    for (id, encoded) in raw.keys {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CryptoError::KeyRing("key ids are 1 to 64 printable ASCII characters"));
        }
        let bytes = STANDARD
            .decode(encoded.trim())
            .map_err(|_| CryptoError::KeyRing("a key is not base64"))?;
        if bytes.len() != 32 {
            return Err(CryptoError::KeyRing("a key is not 32 bytes (AES-256)"));
        }
        keys.insert(id, bytes);
    }
    if !keys.contains_key(&raw.current) {
        return Err(CryptoError::KeyRing("`current` names a key that `keys` does not list"));
    }
    Ok((raw.current, keys))
}

fn aad(connection_id: &str, field: &str) -> Aad<Vec<u8>> {
    Aad::from([connection_id.as_bytes(), b"\0", field.as_bytes()].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_for_their_connection_and_field() {
        let ring = KeyRing::from_json(&KeyRing::generate_json("k1").expect("rng")).expect("ring");
        let sealed = ring.seal("conn-1", "refresh_token", "rt-planted-secret").expect("seal");
        assert!(
            !sealed.windows(10).any(|w| w == b"rt-planted"),
            "ciphertext, not plaintext"
        );
        assert_eq!(
            ring.open("conn-1", "refresh_token", &sealed).expect("open"),
            "rt-planted-secret"
        );
        assert_eq!(ring.open("conn-2", "refresh_token", &sealed), Err(CryptoError::Corrupt));
        assert_eq!(ring.open("conn-1", "access_token", &sealed), Err(CryptoError::Corrupt));
        let mut tampered = sealed.clone();
        *tampered.last_mut().expect("bytes") ^= 1;
        assert_eq!(
            ring.open("conn-1", "refresh_token", &tampered),
            Err(CryptoError::Corrupt)
        );
        assert_eq!(ring.open("conn-1", "refresh_token", &[]), Err(CryptoError::Corrupt));
        let again = ring.seal("conn-1", "refresh_token", "rt-planted-secret").expect("seal");
        assert_ne!(sealed, again, "a fresh nonce per write");
        assert!(!format!("{ring:?}").contains(&KeyRing::generate_json("k1").expect("rng")[20..]));
    }

    #[test]
    fn keys_rotate() {
        let old: serde_json::Value = serde_json::from_str(&KeyRing::generate_json("k1").expect("rng")).expect("json");
        let new: serde_json::Value = serde_json::from_str(&KeyRing::generate_json("k2").expect("rng")).expect("json");
        let ring_v1 = KeyRing::from_json(&old.to_string()).expect("ring");
        let sealed_v1 = ring_v1.seal("c", "f", "token").expect("seal");
        let both = serde_json::json!({"current": "k2", "keys": {"k1": old["keys"]["k1"], "k2": new["keys"]["k2"]}});
        let ring_v2 = KeyRing::from_json(&both.to_string()).expect("ring");
        assert_eq!(ring_v2.open("c", "f", &sealed_v1).expect("old values open"), "token");
        let sealed_v2 = ring_v2.seal("c", "f", "token").expect("seal");
        assert_eq!(
            ring_v1.open("c", "f", &sealed_v2),
            Err(CryptoError::UnknownKey("k2".to_owned()))
        );
    }

    #[test]
    fn bad_key_rings_are_described_not_quoted() {
        for (text, expected) in [
            ("not json planted", "expected {"),
            (r#"{"current": "a", "keys": {"a": "planted!!"}}"#, "not base64"),
            (r#"{"current": "a", "keys": {"a": "cGxhbnRlZA=="}}"#, "not 32 bytes"),
            (r#"{"current": "b", "keys": {}}"#, "does not list"),
        ] {
            let e = KeyRing::from_json(text).unwrap_err().to_string();
            assert!(
                e.contains(expected) && !e.contains("planted") && !e.contains("cGxhbnRlZA"),
                "{e}"
            );
        }
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            Pkce::challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let pkce = Pkce::generate().expect("rng");
        assert_eq!(pkce.verifier.secret().len(), 43);
        assert_eq!(pkce.challenge, Pkce::challenge_of(pkce.verifier.secret()));
        assert_ne!(random_token().expect("rng"), random_token().expect("rng"));
    }
}
