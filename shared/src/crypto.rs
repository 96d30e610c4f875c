//! Randomness, hashing, PKCE, and the encryption of tokens at rest, all from
//! `ring` (already compiled in as rustls' crypto provider).
//!
//! Tokens are sealed with AES-256-GCM under a key ring kept in Secrets Manager:
//! new values are sealed with the ring's current key, and any key still listed
//! opens old ones, so keys rotate without re-encrypting everything at once.
//! The connection id and the field name are the associated data, so a sealed
//! value copied to another connection or field does not open.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest;

use crate::secret::PkceVerifier;

/// The system CSPRNG failed; nothing sensible can continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// `N` bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|_| RandomError)?;
    Ok(bytes)
}

/// 256 random bits, base64url without padding (43 characters): `state`
/// values, PKCE verifiers, simulator tokens.
pub fn random_token() -> Result<String, RandomError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// The first 8 bytes of an input's SHA-256, as a number: a compact, stable
/// fingerprint (a sweep's seen-id markers keep these, not the ids).
pub fn sha256_u64(input: &[u8]) -> u64 {
    let digest = digest::digest(&digest::SHA256, input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first)
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
    #[error("the key ring has no key `{0}`")]
    NoSuchKey(String),
    #[error("key `{0}` is the current key: rotate first, so another key seals new values")]
    CurrentKey(String),
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

    /// Does the ring list key `id`?
    pub fn has_key(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Opens a value and seals it again under the current key, for the same
    /// connection and field; `None` when it is already under the current key.
    pub fn reseal(&self, connection_id: &str, field: &str, sealed: &[u8]) -> Result<Option<Vec<u8>>, CryptoError> {
        if sealed_key_id(sealed)? == self.current {
            return Ok(None);
        }
        let plaintext = self.open(connection_id, field, sealed)?;
        self.seal(connection_id, field, &plaintext).map(Some)
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

/// The id of the key a value was sealed under, read from its header without
/// opening it (the id is not secret: errors and reports name it).
pub fn sealed_key_id(sealed: &[u8]) -> Result<&str, CryptoError> {
    match sealed {
        [SEALED_V1, id_len, rest @ ..] if rest.len() >= usize::from(*id_len) + NONCE_LEN => {
            std::str::from_utf8(&rest[..usize::from(*id_len)]).map_err(|_| CryptoError::Corrupt)
        }
        _ => Err(CryptoError::Corrupt),
    }
}

/// A key ring secret's text as the operator CLI edits it: `keys init`,
/// `rotate` and `retire`. It holds key material, so its `Debug` lists key ids
/// only and the text leaves it only through [`KeyRingSecret::to_secret_text`].
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRingSecret {
    current: String,
    /// Key id → base64 of 32 bytes.
    keys: BTreeMap<String, String>,
}

impl fmt::Debug for KeyRingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRingSecret")
            .field("current", &self.current)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRingSecret {
    /// A ring with one fresh random key, `{prefix}1`.
    pub fn generate(prefix: &str) -> Result<KeyRingSecret, CryptoError> {
        let id = format!("{prefix}1");
        let keys = BTreeMap::from([(id.clone(), STANDARD.encode(random_bytes::<32>()?))]);
        Ok(KeyRingSecret { current: id, keys })
    }

    /// Parses and checks a key ring secret (errors describe, never quote).
    pub fn parse(text: &str) -> Result<KeyRingSecret, CryptoError> {
        let (current, raw) = parse_key_ring(text)?;
        let keys = raw
            .into_iter()
            .map(|(id, bytes)| (id, STANDARD.encode(bytes)))
            .collect();
        Ok(KeyRingSecret { current, keys })
    }

    pub fn current(&self) -> &str {
        &self.current
    }

    /// Every key id, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Adds a fresh random key and makes it current; the old keys stay, so
    /// what they sealed still opens. The new id is the current id's letters
    /// followed by one more than the highest number any id ends in (`k1`,
    /// `k2` → `k3`).
    pub fn rotate(&mut self) -> Result<String, CryptoError> {
        let mut prefix: String = self.current.chars().take_while(|c| !c.is_ascii_digit()).collect();
        if prefix.is_empty() || prefix.len() > 40 {
            prefix = "k".to_owned();
        }
        let highest = self
            .keys
            .keys()
            .filter_map(|id| {
                let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
                id[id.len() - digits..].parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0);
        let mut next = highest.saturating_add(1);
        let mut id = format!("{prefix}{next}");
        while self.keys.contains_key(&id) {
            next = next.saturating_add(1);
            id = format!("{prefix}{next}");
        }
        self.keys.insert(id.clone(), STANDARD.encode(random_bytes::<32>()?));
        self.current = id.clone();
        Ok(id)
    }

    /// Removes a key that is not the current one.
    pub fn retire(&mut self, id: &str) -> Result<(), CryptoError> {
        if id == self.current {
            return Err(CryptoError::CurrentKey(id.to_owned()));
        }
        self.keys
            .remove(id)
            .map(drop)
            .ok_or_else(|| CryptoError::NoSuchKey(id.to_owned()))
    }

    /// The secret's text, `{"current": …, "keys": {…}}`. Only for writing to
    /// Secrets Manager: it is the key material.
    pub fn to_secret_text(&self) -> String {
        serde_json::json!({"current": self.current, "keys": self.keys}).to_string()
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

    #[test]
    fn a_rotated_ring_keeps_its_old_keys_and_reseals_old_values_under_the_new_one() {
        let mut secret = KeyRingSecret::generate("k").expect("rng");
        let before = secret.to_secret_text();
        let v1 = KeyRing::from_json(&before).expect("ring");
        let old = v1.seal("c", "refresh_token", "rt").expect("seal");
        assert_eq!(sealed_key_id(&old), Ok("k1"));

        assert_eq!(secret.rotate().expect("rng"), "k2");
        assert_eq!(secret.current(), "k2");
        assert_eq!(secret.key_ids().collect::<Vec<_>>(), ["k1", "k2"]);
        let after = secret.to_secret_text();
        let k1 = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("json")["keys"]["k1"].clone();
        assert_eq!(k1(&before), k1(&after), "the old key is kept as it was");
        assert_eq!(KeyRingSecret::parse(&after).expect("parses"), secret);

        let v2 = KeyRing::from_json(&after).expect("ring");
        let resealed = v2.reseal("c", "refresh_token", &old).expect("reseal").expect("was old");
        assert_eq!(sealed_key_id(&resealed), Ok("k2"));
        assert_eq!(v2.open("c", "refresh_token", &resealed).expect("opens"), "rt");
        assert_eq!(v2.reseal("c", "refresh_token", &resealed), Ok(None), "already current");
        assert_eq!(v2.reseal("other", "refresh_token", &old), Err(CryptoError::Corrupt));
        assert_eq!(sealed_key_id(&[1, 200, 0]), Err(CryptoError::Corrupt));
    }

    #[test]
    fn the_current_key_and_unknown_keys_cannot_be_retired() {
        let mut secret = KeyRingSecret::generate("l").expect("rng");
        secret.rotate().expect("rng");
        assert_eq!(secret.retire("l2"), Err(CryptoError::CurrentKey("l2".to_owned())));
        assert_eq!(secret.retire("l9"), Err(CryptoError::NoSuchKey("l9".to_owned())));
        assert_eq!(secret.retire("l1"), Ok(()));
        assert_eq!(secret.key_ids().collect::<Vec<_>>(), ["l2"]);
        // Ids that do not follow the pattern still get a fresh one.
        let mut dated = KeyRingSecret::parse(
            &serde_json::json!({"current": "2026-11", "keys": {"2026-11": STANDARD.encode([7u8; 32])}}).to_string(),
        )
        .expect("ring");
        assert_eq!(dated.rotate().expect("rng"), "k12");
    }

    #[test]
    fn a_key_ring_secret_debug_names_ids_not_keys() {
        let secret = KeyRingSecret::generate("k").expect("rng");
        let text = secret.to_secret_text();
        let key = serde_json::from_str::<serde_json::Value>(&text).expect("json")["keys"]["k1"]
            .as_str()
            .expect("key")
            .to_owned();
        assert_eq!(STANDARD.decode(&key).expect("base64").len(), 32);
        let printed = format!("{secret:?} {secret:#?}");
        assert!(printed.contains("k1") && !printed.contains(&key), "{printed}");
    }
}
