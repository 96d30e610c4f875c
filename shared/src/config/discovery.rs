//! OpenID Connect Discovery 1.0: a provider that sets `issuer` and leaves its
//! endpoints unset takes them from `{issuer}/.well-known/openid-configuration`.
//!
//! Fetched once, when the configuration is loaded (function start-up,
//! `oauth-sync config check`, `doctor`), for all such providers at once; a
//! provider whose endpoints are all given fetches nothing. A document that
//! cannot be fetched or trusted stops the load with an error that names its
//! URL: nothing starts on endpoints we could not check.
//!
//! Checked as the specification says: the document's `issuer` is the
//! configured one, character for character (§4.3; no normalising, which
//! would let an impostor through), the required members are there with
//! their types (§3), and every URL is https except on a loopback host (a
//! local test server).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::ClientAuth;

/// The path appended to the issuer (§4).
pub const WELL_KNOWN_PATH: &str = "/.well-known/openid-configuration";
/// Largest document read; a bigger one is refused (real ones are a few KiB).
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// How long one fetch may take, within Lambda's 10 s init phase.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What oauth-sync takes from a provider's discovery document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerMetadata {
    /// The URL the document came from.
    pub document_url: Url,
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub revocation_endpoint: Option<Url>,
    /// `client_secret_basic` when the document does not say (§3).
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// `None` when the document does not list them (it need not list all).
    pub scopes_supported: Option<Vec<String>>,
    /// `None` when absent: the server does not announce PKCE (RFC 8414 §2).
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// RFC 9207 §3: the server puts `iss` in every authorization response.
    pub authorization_response_iss_parameter_supported: bool,
}

impl ServerMetadata {
    /// Does the token endpoint accept this client authentication?
    pub fn supports_client_auth(&self, auth: ClientAuth) -> bool {
        self.token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == auth_method(auth))
    }
}

/// The name of a client authentication in `token_endpoint_auth_methods_supported`.
pub fn auth_method(auth: ClientAuth) -> &'static str {
    match auth {
        ClientAuth::Basic => "client_secret_basic",
        ClientAuth::Body => "client_secret_post",
    }
}

/// The documents of several issuers, by issuer.
pub type Discovered = BTreeMap<String, ServerMetadata>;

/// Why a discovery document cannot be used. Each names the document's URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("issuer {issuer} is not a discovery issuer: {problem}")]
    BadIssuer { issuer: String, problem: String },
    #[error("no HTTP client to fetch discovery documents with: {0}")]
    NoClient(String),
    #[error("cannot fetch the OpenID Connect discovery document {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the OpenID Connect discovery document {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the OpenID Connect discovery document {url} is larger than {MAX_DOCUMENT} bytes")]
    TooLarge { url: String },
    #[error("the OpenID Connect discovery document {url} is malformed: {problem}")]
    Malformed { url: String, problem: String },
    #[error(
        "the OpenID Connect discovery document {url} names issuer {got}, not the configured {expected}; \
         they must be identical (OpenID Connect Discovery 1.0 §4.3): correct `issuer`"
    )]
    IssuerMismatch { url: String, expected: String, got: String },
}

/// `{issuer}/.well-known/openid-configuration` (§4: a terminating `/` of
/// the issuer is removed first). The issuer must be an https URL (http on a
/// loopback host) without query or fragment (OpenID Connect Core §2).
pub fn document_url(issuer: &str) -> Result<Url, DiscoveryError> {
    let bad = |problem: &str| DiscoveryError::BadIssuer {
        issuer: short(issuer),
        problem: problem.to_owned(),
    };
    let url = Url::parse(issuer).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an issuer has no query or fragment"));
    }
    secure(&url).map_err(|e| bad(&e))?;
    let text = format!("{}{WELL_KNOWN_PATH}", issuer.trim_end_matches('/'));
    Url::parse(&text).map_err(|e| bad(&format!("not a URL ({e})")))
}

/// https, or http on a loopback host ([`super::secure_url`]).
fn secure(url: &Url) -> Result<(), String> {
    if url.host().is_none() {
        return Err("has no host".to_owned());
    }
    if super::secure_url(url) {
        Ok(())
    } else {
        Err("must use https (http only on localhost or a loopback address)".to_owned())
    }
}

/// The document as the specification shapes it; only what we use, plus the
/// other required members, so that a document missing them is refused.
#[derive(Deserialize)]
struct Document {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    response_types_supported: Vec<String>,
    subject_types_supported: Vec<String>,
    id_token_signing_alg_values_supported: Vec<String>,
    revocation_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// Reads a fetched document (`body`, from `url`) for the configured `issuer`.
pub fn read_document(url: &Url, issuer: &str, body: &[u8]) -> Result<ServerMetadata, DiscoveryError> {
    let malformed = |problem: String| DiscoveryError::Malformed {
        url: url.to_string(),
        problem,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let document: Document = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let inner = short(&inner.to_string());
        malformed(if path == "." { inner } else { format!("{path}: {inner}") })
    })?;
    deserializer.end().map_err(|e| malformed(e.to_string()))?;
    if document.issuer != issuer {
        return Err(DiscoveryError::IssuerMismatch {
            url: url.to_string(),
            expected: issuer.to_owned(),
            got: short(&document.issuer),
        });
    }
    let endpoint = |field: &str, text: &str| -> Result<Url, DiscoveryError> {
        let parsed = Url::parse(text).map_err(|e| malformed(format!("{field}: not a URL ({e})")))?;
        secure(&parsed).map_err(|e| malformed(format!("{field} {}: {e}", short(text))))?;
        Ok(parsed)
    };
    let authorization_endpoint = endpoint("authorization_endpoint", &document.authorization_endpoint)?;
    let token_endpoint = endpoint("token_endpoint", &document.token_endpoint)?;
    endpoint("jwks_uri", &document.jwks_uri)?;
    let revocation_endpoint = match &document.revocation_endpoint {
        Some(text) => Some(endpoint("revocation_endpoint", text)?),
        None => None,
    };
    if !document.response_types_supported.iter().any(|t| t == "code") {
        return Err(malformed(
            "response_types_supported has no `code`: the server offers no authorization-code login".to_owned(),
        ));
    }
    // Required by the specification, not used here: present and typed is enough.
    let _ = (
        document.subject_types_supported,
        document.id_token_signing_alg_values_supported,
    );
    Ok(ServerMetadata {
        document_url: url.clone(),
        issuer: document.issuer,
        authorization_endpoint,
        token_endpoint,
        revocation_endpoint,
        token_endpoint_auth_methods_supported: document
            .token_endpoint_auth_methods_supported
            .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]),
        scopes_supported: document.scopes_supported,
        code_challenge_methods_supported: document.code_challenge_methods_supported,
        authorization_response_iss_parameter_supported: document.authorization_response_iss_parameter_supported,
    })
}

/// Fetches and reads the document of `issuer`: no redirects followed, at
/// most [`FETCH_TIMEOUT`] and [`MAX_DOCUMENT`] bytes.
pub async fn fetch(http: &reqwest::Client, issuer: &str) -> Result<ServerMetadata, DiscoveryError> {
    let url = document_url(issuer)?;
    let unreachable = |e: reqwest::Error| DiscoveryError::Unreachable {
        url: url.to_string(),
        cause: crate::telemetry::error_chain(&e.without_url()),
    };
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    if !status.is_success() {
        return Err(DiscoveryError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
        return Err(DiscoveryError::TooLarge { url: url.to_string() });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(DiscoveryError::TooLarge { url: url.to_string() });
        }
        body.extend_from_slice(&chunk);
    }
    read_document(&url, issuer, &body)
}

/// Fetches the documents of several issuers at once. The first failure (in
/// issuer order) is the answer, with the issuer it is about.
pub async fn fetch_all(issuers: impl IntoIterator<Item = String>) -> Result<Discovered, (String, DiscoveryError)> {
    let (discovered, failures) = fetch_each(issuers).await;
    match failures.into_iter().next() {
        Some(failure) => Err(failure),
        None => Ok(discovered),
    }
}

/// Fetches the documents of several issuers at once: those that could be
/// used, and each failure with its issuer, in issuer order.
pub async fn fetch_each(issuers: impl IntoIterator<Item = String>) -> (Discovered, Vec<(String, DiscoveryError)>) {
    let mut issuers: Vec<String> = issuers.into_iter().collect();
    issuers.sort();
    issuers.dedup();
    let http = match crate::http::client(FETCH_TIMEOUT, crate::http::Pooling::Off) {
        Ok(http) => http,
        Err(e) => {
            let failures = issuers
                .into_iter()
                .map(|issuer| (issuer, DiscoveryError::NoClient(e.to_string())))
                .collect();
            return (Discovered::new(), failures);
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for issuer in &issuers {
        let (http, issuer) = (http.clone(), issuer.clone());
        tasks.spawn(async move {
            let answer = fetch(&http, &issuer).await;
            (issuer, answer)
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((issuer, answer)) = joined {
            answers.insert(issuer, answer);
        }
    }
    let mut discovered = Discovered::new();
    let mut failures = Vec::new();
    for issuer in issuers {
        match answers.remove(&issuer) {
            Some(Ok(metadata)) => {
                discovered.insert(issuer, metadata);
            }
            Some(Err(e)) => failures.push((issuer, e)),
            None => {
                let e = match document_url(&issuer) {
                    Ok(url) => DiscoveryError::Unreachable {
                        url: url.to_string(),
                        cause: "the fetch did not finish".to_owned(),
                    },
                    Err(e) => e,
                };
                failures.push((issuer, e));
            }
        }
    }
    (discovered, failures)
}

/// What an error quotes of a value the server sent: at most 60 characters,
/// no control characters.
fn short(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://id.example.com/realms/acme";

    fn document(issuer: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": "https://id.example.com/realms/acme/auth",
            "token_endpoint": "https://id.example.com/realms/acme/token",
            "revocation_endpoint": "https://id.example.com/realms/acme/revoke",
            "jwks_uri": "https://id.example.com/realms/acme/certs",
            "response_types_supported": ["code", "id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "offline_access"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    fn read(value: &serde_json::Value) -> Result<ServerMetadata, DiscoveryError> {
        let url = document_url(ISSUER).expect("url");
        read_document(&url, ISSUER, value.to_string().as_bytes())
    }

    #[test]
    fn the_document_url_is_the_issuer_without_its_trailing_slash_plus_the_well_known_path() {
        for (issuer, url) in [
            (
                "https://id.example.com",
                "https://id.example.com/.well-known/openid-configuration",
            ),
            (
                "https://id.example.com/",
                "https://id.example.com/.well-known/openid-configuration",
            ),
            (
                "https://id.example.com/realms/acme/",
                "https://id.example.com/realms/acme/.well-known/openid-configuration",
            ),
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/.well-known/openid-configuration",
            ),
            (
                "http://localhost:8080",
                "http://localhost:8080/.well-known/openid-configuration",
            ),
            (
                "http://[::1]:8080",
                "http://[::1]:8080/.well-known/openid-configuration",
            ),
        ] {
            assert_eq!(document_url(issuer).expect(issuer).as_str(), url);
        }
    }

    #[test]
    fn an_issuer_that_is_not_https_or_has_a_query_is_refused() {
        for issuer in [
            "http://id.example.com",
            "ftp://id.example.com",
            "https://id.example.com?tenant=1",
            "https://id.example.com#x",
            "id.example.com",
        ] {
            let e = document_url(issuer).expect_err(issuer);
            assert!(matches!(e, DiscoveryError::BadIssuer { .. }), "{issuer}: {e}");
        }
    }

    #[test]
    fn a_document_fills_the_endpoints_and_what_the_server_supports() {
        let metadata = read(&document(ISSUER)).expect("valid");
        assert_eq!(
            metadata.token_endpoint.as_str(),
            "https://id.example.com/realms/acme/token"
        );
        assert_eq!(
            metadata.revocation_endpoint.as_ref().map(Url::as_str),
            Some("https://id.example.com/realms/acme/revoke")
        );
        assert!(metadata.authorization_response_iss_parameter_supported);
        // Absent: client_secret_basic only (§3).
        assert!(metadata.supports_client_auth(ClientAuth::Basic));
        assert!(!metadata.supports_client_auth(ClientAuth::Body));
    }

    #[test]
    fn an_issuer_that_differs_in_any_character_is_refused() {
        for other in [
            "https://id.example.com/realms/acme/",
            "https://ID.example.com/realms/acme",
            "https://evil.example/realms/acme",
        ] {
            let e = read(&document(other)).expect_err(other);
            assert!(matches!(e, DiscoveryError::IssuerMismatch { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains("https://id.example.com/realms/acme/.well-known/openid-configuration"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_document_without_a_required_member_or_with_a_wrong_type_is_malformed_and_says_which() {
        for (member, value, says) in [
            ("token_endpoint", None, "token_endpoint"),
            ("jwks_uri", None, "jwks_uri"),
            ("subject_types_supported", None, "subject_types_supported"),
            (
                "scopes_supported",
                Some(serde_json::json!("openid")),
                "scopes_supported",
            ),
            (
                "authorization_response_iss_parameter_supported",
                Some(serde_json::json!("yes")),
                "authorization_response_iss_parameter_supported",
            ),
            (
                "token_endpoint",
                Some(serde_json::json!("http://id.example.com/token")),
                "must use https",
            ),
            (
                "response_types_supported",
                Some(serde_json::json!(["id_token"])),
                "no `code`",
            ),
        ] {
            let mut doc = document(ISSUER);
            match value {
                Some(v) => doc[member] = v,
                None => {
                    doc.as_object_mut().map(|o| o.remove(member));
                }
            }
            let e = read(&doc).expect_err(member);
            assert!(matches!(e, DiscoveryError::Malformed { .. }), "{e}");
            assert!(e.to_string().contains(says), "{member}: {e}");
        }
        let url = document_url(ISSUER).expect("url");
        for body in [&b"<html>Not here</html>"[..], b"{\"issuer\": \"https://id", b""] {
            let e = read_document(&url, ISSUER, body).expect_err("not JSON");
            assert!(matches!(e, DiscoveryError::Malformed { .. }), "{e}");
        }
    }
}
