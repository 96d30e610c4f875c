//! Randomness and hashing for `state`, PKCE and token ids, from aws-lc-rs
//! (already compiled in as rustls' crypto provider).

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::secret::PkceVerifier;

/// The system CSPRNG failed; nothing sensible can continue.
#[derive(Debug, Clone, Copy, thiserror::Error)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
