//! Talking to a provider's authorization server: the authorize URL, the code
//! exchange, the refresh and RFC 7009 revocation, with each provider's client
//! authentication and response quirks.
//!
//! Failures are classified for the refresh protocol: a dead refresh token, a
//! rejected client, a provider that is down (the request was not processed),
//! and — the dangerous one — a request whose outcome is unknown because it left
//! and no answer came back, so the provider may have rotated the token.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;
use url::form_urlencoded::byte_serialize;

use crate::config::{ClientAuth, Provider, ProviderSettings, provider_message};
use crate::secret::{AccessToken, AuthorizationCode, ClientSecret, PkceVerifier, RefreshToken};
use crate::telemetry::error_chain;

/// Largest token-endpoint answer read; a bigger one is refused.
const MAX_BODY: usize = 256 * 1024;
/// Longest provider message kept in an error.
const MAX_MESSAGE: usize = 300;

/// The OAuth client id and secret of one provider, from Secrets Manager.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: ClientSecret,
}

/// The HTTP client for authorization servers: redirects are never followed
/// (a redirecting token endpoint is an SSRF door), every call has a timeout.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("oauth-sync/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What a token endpoint gave us.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: AccessToken,
    /// `None` when the provider returned none: the caller keeps the old one.
    pub refresh_token: Option<RefreshToken>,
    /// Seconds the access token lives, from the response or the preset.
    pub expires_in: u64,
    /// `true` when the response had no `expires_in` and the preset's default was used.
    pub expires_in_assumed: bool,
    /// The granted scopes, when the provider said (RFC 6749 §5.1 returns them
    /// only when they differ from the request).
    pub scope: Option<Vec<String>>,
    /// Salesforce: the API host for this connection.
    pub instance_url: Option<String>,
    /// Zoho: the API host for this connection.
    pub api_domain: Option<String>,
    /// QuickBooks: `x_refresh_token_expires_in`.
    pub refresh_token_expires_in: Option<u64>,
}

/// Why a token call failed. No variant holds a token: messages come from the
/// provider's error fields, with anything we sent scrubbed out.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The refresh token is dead (`invalid_grant` or the provider's own way of
    /// saying so): the user must log in again.
    #[error("the provider refused the refresh token (HTTP {status}, {error}): {message}")]
    DeadToken {
        status: u16,
        error: String,
        message: String,
    },
    /// The client id or secret was refused.
    #[error("the provider refused the client credentials (HTTP {status}, {error}): {message}")]
    InvalidClient {
        status: u16,
        error: String,
        message: String,
    },
    /// Any other error answer.
    #[error("the provider refused the request (HTTP {status}, {error}): {message}")]
    Rejected {
        status: u16,
        error: String,
        message: String,
    },
    /// 429, 500 or 503: the request was not processed; try again later.
    #[error("the provider is unavailable (HTTP {status}){}", retry_after.map(|s| format!("; retry after {s} s")).unwrap_or_default())]
    Unavailable { status: u16, retry_after: Option<u64> },
    /// The request never reached the provider (connection refused, DNS): safe to retry.
    #[error("cannot reach the provider: {0}")]
    Unreachable(String),
    /// The request left and no answer came back (timeout, connection dropped,
    /// or a gateway that gave up): the provider may have processed it.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A 2xx answer we cannot use (no `access_token`, not JSON, …).
    #[error("unusable token response: {0}")]
    InvalidResponse(String),
}

impl TokenError {
    /// Worth trying again later without a new login.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Unavailable { .. } | TokenError::Unreachable(_))
    }

    /// How long the provider asked us to wait (`Retry-After` on a 429/500/503).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            TokenError::Unavailable {
                retry_after: Some(secs),
                ..
            } => Some(std::time::Duration::from_secs(*secs)),
            _ => None,
        }
    }

    fn with_retry_after(self, header: Option<u64>) -> TokenError {
        match self {
            TokenError::Unavailable { status, retry_after } => TokenError::Unavailable {
                status,
                retry_after: retry_after.or(header),
            },
            other => other,
        }
    }
}

/// The provider's token endpoint, with the credentials to call it.
#[derive(Debug, Clone)]
pub struct TokenEndpoint<'a> {
    pub provider: &'a Provider,
    pub credentials: &'a ClientCredentials,
    pub http: &'a reqwest::Client,
}

impl TokenEndpoint<'_> {
    /// Exchanges an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.5).
    pub async fn exchange_code(
        &self,
        code: &AuthorizationCode,
        redirect_uri: &str,
        verifier: Option<&PkceVerifier>,
    ) -> Result<TokenSet, TokenError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.secret()),
            ("redirect_uri", redirect_uri),
        ];
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier.secret()));
        }
        let reply = self.post(self.provider.token_url.clone(), form).await?;
        let secret = self.credentials.client_secret.secret();
        let sent = [code.secret(), verifier.map_or("", |v| v.secret()), secret];
        parse_token_response(&self.provider.settings, reply.status, &reply.body, &sent).map_err(|e| match e {
            // `invalid_grant` here refuses the code, not a refresh token.
            TokenError::DeadToken { status, error, message } => TokenError::Rejected { status, error, message },
            other => other.with_retry_after(reply.retry_after),
        })
    }

    /// Spends a refresh token (RFC 6749 §6). Call this only while holding the
    /// connection's refresh lease: a single-use token sent twice kills the connection.
    pub async fn refresh(&self, refresh_token: &RefreshToken) -> Result<TokenSet, TokenError> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.secret()),
        ];
        let reply = self.post(self.provider.token_url.clone(), form).await?;
        let sent = [refresh_token.secret(), self.credentials.client_secret.secret()];
        parse_token_response(&self.provider.settings, reply.status, &reply.body, &sent)
            .map_err(|e| e.with_retry_after(reply.retry_after))
    }

    /// Revokes a token (RFC 7009). `Ok(false)` when the provider has no
    /// revocation endpoint. A 503 means the token still lives: the caller retries.
    pub async fn revoke(&self, token: &str, hint: TokenHint) -> Result<bool, TokenError> {
        let Some(url) = self.provider.revocation_url.clone() else {
            return Ok(false);
        };
        let form = vec![("token", token), ("token_type_hint", hint.as_str())];
        let reply = self.post(url, form).await?;
        if reply.status.is_success() {
            return Ok(true);
        }
        Err(classify_error(
            &self.provider.settings,
            reply.status,
            &reply.body,
            &[token, self.credentials.client_secret.secret()],
        )
        .with_retry_after(reply.retry_after))
    }

    async fn post(&self, url: Url, mut form: Vec<(&str, &str)>) -> Result<Reply, TokenError> {
        let mut request = self.http.post(url).header("Accept", "application/json");
        match self.provider.settings.client_auth {
            ClientAuth::Basic => {
                request = request.header(
                    "Authorization",
                    basic_auth(&self.credentials.client_id, self.credentials.client_secret.secret()),
                );
            }
            ClientAuth::Body => {
                form.push(("client_id", &self.credentials.client_id));
                form.push(("client_secret", self.credentials.client_secret.secret()));
            }
        }
        let mut response = request.form(&form).send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(TokenError::InvalidResponse(format!(
                    "answer larger than {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

/// A token endpoint's answer.
struct Reply {
    status: StatusCode,
    /// `Retry-After` in seconds, when given as such.
    retry_after: Option<u64>,
    body: Vec<u8>,
}

/// The longest `Retry-After` taken at its word (a day); longer is read as a day.
const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// `Retry-After` as delta-seconds (RFC 9110 §10.2.3). The HTTP-date form is
/// not read: token endpoints use seconds, and a date needs a clock we would
/// have to trust over our own backoff.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(|secs| secs.min(MAX_RETRY_AFTER_SECS))
}

/// RFC 7009 `token_type_hint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenHint {
    AccessToken,
    RefreshToken,
}

impl TokenHint {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenHint::AccessToken => "access_token",
            TokenHint::RefreshToken => "refresh_token",
        }
    }
}

/// RFC 6749 §2.3.1: id and secret are form-urlencoded *before* base64, so a
/// secret with `:` or `+` survives.
pub fn basic_auth(client_id: &str, client_secret: &str) -> String {
    let id: String = byte_serialize(client_id.as_bytes()).collect();
    let secret: String = byte_serialize(client_secret.as_bytes()).collect();
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn transport_error(error: reqwest::Error) -> TokenError {
    let error = error.without_url();
    if error.is_connect() {
        TokenError::Unreachable(error_chain(&error))
    } else if error.is_timeout() {
        TokenError::OutcomeUnknown(format!("no answer before the timeout ({})", error_chain(&error)))
    } else {
        TokenError::OutcomeUnknown(format!(
            "the connection failed after the request was sent ({})",
            error_chain(&error)
        ))
    }
}

/// The login URL for the user's browser (RFC 6749 §4.1.1 with RFC 7636 S256).
pub fn authorize_url(
    provider: &Provider,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    code_challenge: Option<&str>,
) -> Url {
    let mut url = provider.authorize_url.clone();
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("response_type", "code");
        query.append_pair("client_id", client_id);
        query.append_pair("redirect_uri", redirect_uri);
        if !provider.settings.scopes.is_empty() {
            query.append_pair("scope", &provider.settings.scopes.join(" "));
        }
        query.append_pair("state", state);
        if let Some(challenge) = code_challenge.filter(|_| provider.settings.pkce) {
            query.append_pair("code_challenge", challenge);
            query.append_pair("code_challenge_method", "S256");
        }
        for (key, value) in &provider.settings.authorize_params {
            query.append_pair(key, value);
        }
    }
    url
}

/// Requested scopes missing from the granted ones. `offline_access` is never
/// reported: Microsoft grants it without echoing it back.
pub fn missing_scopes(requested: &[String], granted: &[String]) -> Vec<String> {
    requested
        .iter()
        .filter(|s| s.as_str() != "offline_access" && !granted.contains(s))
        .cloned()
        .collect()
}

/// Reads a token endpoint's answer as the provider's settings say. `sent` are
/// the secrets in the request, scrubbed from any message we keep.
pub fn parse_token_response(
    settings: &ProviderSettings,
    status: StatusCode,
    body: &[u8],
    sent: &[&str],
) -> Result<TokenSet, TokenError> {
    if !status.is_success() {
        return Err(classify_error(settings, status, body, sent));
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        // Never quote a 2xx body: it may hold a token.
        return Err(TokenError::InvalidResponse(format!(
            "HTTP {} with a body that is not a JSON object ({} bytes)",
            status.as_u16(),
            body.len()
        )));
    };
    if fields.contains_key("error") && !fields.contains_key("access_token") {
        // Zoho (?) answers some errors with HTTP 200.
        return Err(classify_error(settings, status, body, sent));
    }
    let access_token = match fields.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => AccessToken::new(token.clone()),
        Some(_) => {
            return Err(TokenError::InvalidResponse(
                "`access_token` is not a non-empty string".to_owned(),
            ));
        }
        None => {
            return Err(TokenError::InvalidResponse(
                "no `access_token` in the response".to_owned(),
            ));
        }
    };
    if let Some(kind) = fields.get("token_type") {
        let kind = kind.as_str().unwrap_or_default();
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::InvalidResponse(format!(
                "token_type `{kind}` is not supported (only Bearer)"
            )));
        }
    }
    let (expires_in, expires_in_assumed) = match fields.get("expires_in") {
        None | Some(Value::Null) => (settings.default_expires_in_secs, true),
        Some(value) => (
            seconds(value).ok_or_else(|| {
                TokenError::InvalidResponse(format!(
                    "`expires_in` is not a number of seconds: {}",
                    excerpt(&value.to_string(), sent)
                ))
            })?,
            false,
        ),
    };
    let refresh_token = match fields.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) if !token.is_empty() => Some(RefreshToken::new(token.clone())),
        Some(_) => {
            return Err(TokenError::InvalidResponse(
                "`refresh_token` is not a non-empty string".to_owned(),
            ));
        }
    };
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(TokenSet {
        access_token,
        refresh_token,
        expires_in,
        expires_in_assumed,
        scope: text("scope").map(|s| s.split_whitespace().map(str::to_owned).collect()),
        instance_url: text("instance_url"),
        api_domain: text("api_domain"),
        refresh_token_expires_in: fields.get("x_refresh_token_expires_in").and_then(seconds),
    })
}

/// A number of seconds given as a JSON number or, like Exact Online, a string.
fn seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.is_finite()).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

fn classify_error(settings: &ProviderSettings, status: StatusCode, body: &[u8], sent: &[&str]) -> TokenError {
    let code = status.as_u16();
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = ["error", "status", "errorCode"]
        .iter()
        .find_map(|k| json.get(k).and_then(Value::as_str))
        .map(|e| excerpt(e, sent))
        .unwrap_or_else(|| "no error code".to_owned());
    let message = match provider_message(&json) {
        Some(m) => excerpt(m, sent),
        None if json.is_null() && !body.is_empty() => {
            format!("non-JSON answer: {}", excerpt(&String::from_utf8_lossy(body), sent))
        }
        None => "no description".to_owned(),
    };
    if settings.is_dead_token(code, &json) {
        return TokenError::DeadToken {
            status: code,
            error,
            message,
        };
    }
    if error == "invalid_client" || error == "unauthorized_client" && code == 401 {
        return TokenError::InvalidClient {
            status: code,
            error,
            message,
        };
    }
    match code {
        429 | 500 | 503 => TokenError::Unavailable {
            status: code,
            retry_after: None,
        },
        // A gateway that gave up waiting: the provider behind it may have processed the request.
        502 | 504 => TokenError::OutcomeUnknown(format!("HTTP {code} from a gateway")),
        _ => TokenError::Rejected {
            status: code,
            error,
            message,
        },
    }
}

/// A short, single-line piece of provider text with every secret we sent
/// removed, as sent and form-encoded, before it is cut to length (so no cut
/// can leave half a secret behind).
pub fn excerpt(text: &str, sent: &[&str]) -> String {
    let mut text: String = text.chars().filter(|c| !c.is_control()).collect();
    for secret in sent.iter().filter(|s| s.len() >= 4) {
        let encoded: String = byte_serialize(secret.as_bytes()).collect();
        text = text.replace(secret, "[redacted]").replace(&encoded, "[redacted]");
    }
    text.chars().take(MAX_MESSAGE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PresetName;
    use serde_json::json;

    #[test]
    fn retry_after_is_read_as_seconds_and_bounded() {
        let header = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::RETRY_AFTER,
                reqwest::header::HeaderValue::from_str(value).expect("header value"),
            );
            retry_after(&headers)
        };
        assert_eq!(header("120"), Some(120));
        assert_eq!(header(" 7 "), Some(7));
        assert_eq!(header("99999999999"), Some(MAX_RETRY_AFTER_SECS));
        assert_eq!(header("Wed, 21 Oct 2015 07:28:00 GMT"), None, "dates are not read");
        assert_eq!(header("-5"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);

        let e = TokenError::Unavailable {
            status: 429,
            retry_after: None,
        }
        .with_retry_after(Some(30));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(30)));
        assert!(e.to_string().contains("retry after 30 s"), "{e}");
        let other = TokenError::Unreachable("refused".into()).with_retry_after(Some(30));
        assert_eq!(other.retry_after(), None, "only an unavailable answer carries it");
    }

    fn parse(preset: PresetName, status: u16, body: Value) -> Result<TokenSet, TokenError> {
        let status = StatusCode::from_u16(status).expect("status");
        parse_token_response(
            &preset.settings(),
            status,
            body.to_string().as_bytes(),
            &["rt-sent-secret"],
        )
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        // RFC 6749 §2.3.1: "a:b+c" becomes "a%3Ab%2Bc" before base64.
        let header = basic_auth("id 1", "a:b+c");
        let decoded = STANDARD.decode(header.trim_start_matches("Basic ")).expect("base64");
        assert_eq!(String::from_utf8(decoded).expect("utf8"), "id+1:a%3Ab%2Bc");
    }

    #[test]
    fn exact_expires_in_as_string() {
        let set = parse(
            PresetName::ExactOnline,
            200,
            json!({"access_token": "at", "token_type": "bearer", "expires_in": "600", "refresh_token": "rt"}),
        )
        .expect("parses");
        assert_eq!((set.expires_in, set.expires_in_assumed), (600, false));
        assert_eq!(set.refresh_token.map(|t| t.secret().to_owned()).as_deref(), Some("rt"));
    }

    #[test]
    fn salesforce_without_expires_in_uses_the_preset() {
        let set = parse(
            PresetName::Salesforce,
            200,
            json!({"access_token": "at", "instance_url": "https://na1.example", "issued_at": "1", "signature": "x"}),
        )
        .expect("parses");
        assert_eq!((set.expires_in, set.expires_in_assumed), (7200, true));
        assert_eq!(set.instance_url.as_deref(), Some("https://na1.example"));
        assert!(
            set.refresh_token.is_none(),
            "no refresh token: the caller keeps the old one"
        );
    }

    #[test]
    fn extra_fields_and_scopes() {
        let set = parse(
            PresetName::Microsoft,
            200,
            json!({"access_token": "at", "token_type": "Bearer", "expires_in": 4000, "ext_expires_in": 4000, "scope": "User.Read Contacts.Read", "refresh_token": "rt", "id_token": "x"}),
        )
        .expect("parses");
        assert_eq!(
            set.scope.as_deref(),
            Some(&["User.Read".to_owned(), "Contacts.Read".to_owned()][..])
        );
        let requested = [
            "offline_access".to_owned(),
            "User.Read".to_owned(),
            "Mail.Read".to_owned(),
        ];
        assert_eq!(
            missing_scopes(&requested, set.scope.as_deref().unwrap_or_default()),
            ["Mail.Read"]
        );
    }

    #[test]
    fn unusable_responses_are_named_without_quoting_tokens() {
        let e = parse(
            PresetName::Generic,
            200,
            json!({"token_type": "bearer", "refresh_token": "rt-planted"}),
        )
        .unwrap_err();
        assert!(
            matches!(&e, TokenError::InvalidResponse(m) if m.contains("no `access_token`")),
            "{e}"
        );
        assert!(!e.to_string().contains("planted"));

        let e = parse(
            PresetName::Generic,
            200,
            json!({"access_token": "at-planted", "expires_in": "ten"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`expires_in` is not a number"), "{e}");
        assert!(!e.to_string().contains("planted"));

        let e = parse(
            PresetName::Generic,
            200,
            json!({"access_token": "at", "token_type": "mac"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("token_type `mac`"), "{e}");

        let e = parse_token_response(
            &PresetName::Generic.settings(),
            StatusCode::OK,
            b"{\"access_token\": \"at-planted\", \"refresh_tok",
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&e, TokenError::InvalidResponse(m) if m.contains("not a JSON object")),
            "{e}"
        );
        assert!(!e.to_string().contains("planted"));
    }

    #[test]
    fn echoed_secrets_are_scrubbed_even_encoded_or_at_the_cut() {
        let secret = "cs:planted+secret/value";
        let encoded: String = byte_serialize(secret.as_bytes()).collect();
        let long = format!("{}{secret}", "x".repeat(MAX_MESSAGE - 5));
        for description in [format!("bad client {secret}"), format!("bad client {encoded}"), long] {
            let body = json!({"error": "invalid_request", "error_description": description});
            let e = parse_token_response(
                &PresetName::Generic.settings(),
                StatusCode::BAD_REQUEST,
                body.to_string().as_bytes(),
                &["rt-sent", secret],
            )
            .unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("planted") && !text.contains("cs:p") && !text.contains("cs%3Ap"),
                "{text}"
            );
        }
    }

    #[test]
    fn expires_in_as_a_decimal_string_is_read() {
        let set = parse(
            PresetName::Generic,
            200,
            json!({"access_token": "at", "expires_in": "3600.0"}),
        )
        .expect("parses");
        assert_eq!(set.expires_in, 3600);
    }

    #[test]
    fn errors_are_classified_per_preset() {
        let e = parse(
            PresetName::ExactOnline,
            401,
            json!({"error": "unauthorized_client", "error_description": "Old refresh token used."}),
        )
        .unwrap_err();
        assert!(
            matches!(&e, TokenError::DeadToken { message, .. } if message == "Old refresh token used."),
            "{e}"
        );

        let e = parse(
            PresetName::Hubspot,
            400,
            json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"}),
        )
        .unwrap_err();
        assert!(
            matches!(&e, TokenError::DeadToken { error, .. } if error == "BAD_REFRESH_TOKEN"),
            "{e}"
        );

        let e = parse(PresetName::Zoho, 200, json!({"error": "invalid_code"})).unwrap_err();
        assert!(matches!(e, TokenError::DeadToken { .. }), "{e}");

        let e = parse(
            PresetName::Microsoft,
            401,
            json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
        )
        .unwrap_err();
        assert!(matches!(e, TokenError::InvalidClient { .. }), "{e}");

        let e = parse(PresetName::Xero, 503, json!({"error": "temporarily_unavailable"})).unwrap_err();
        assert!(e.is_transient(), "{e}");
        let e = parse(PresetName::Xero, 504, json!({})).unwrap_err();
        assert!(
            matches!(e, TokenError::OutcomeUnknown(_)),
            "a gateway timeout may hide a rotation: {e}"
        );

        let e = parse_token_response(
            &PresetName::Generic.settings(),
            StatusCode::BAD_REQUEST,
            b"<html>oops rt-sent-secret</html>",
            &["rt-sent-secret"],
        )
        .unwrap_err();
        assert!(
            matches!(&e, TokenError::Rejected { message, .. } if message.contains("non-JSON answer")),
            "{e}"
        );
        assert!(
            !e.to_string().contains("rt-sent-secret"),
            "echoed secrets are scrubbed: {e}"
        );
    }
}
