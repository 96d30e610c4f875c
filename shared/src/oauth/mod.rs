//! Talking to a provider's authorization server, on the `oauth2` crate: the
//! authorize URL, the code exchange with PKCE, the refresh and client
//! authentication (RFC 6749 §2.3.1) come from the crate; RFC 7009 revocation
//! is ours (the crate refuses revocation URLs that are not https, and our
//! simulators answer on loopback http). What the crate lacks sits on its
//! extension points: the providers' token and error answers
//! ([`answer`]) and the HTTP client it sends through ([`transport`]).
//!
//! Failures are classified for the refresh protocol: a dead refresh token, a
//! rejected client, a provider that certainly did not process the request,
//! and — the dangerous one — a request whose outcome is unknown because it left
//! and no usable answer came back, so the provider may have rotated the token.

mod answer;
mod transport;

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use oauth2::basic::BasicTokenType;
use oauth2::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use oauth2::{
    AuthType, AuthUrl, ClientId, CsrfToken, EmptyExtraTokenFields, EndpointNotSet, EndpointSet, PkceCodeChallenge,
    RedirectUrl, Scope, StandardRevocableToken, StandardTokenIntrospectionResponse, TokenUrl,
};
use serde_json::Value;
use url::Url;
use url::form_urlencoded::{Serializer, byte_serialize};

use crate::config::{ClientAuth, Provider};
use crate::secret::{AccessToken, AuthorizationCode, ClientSecret, PkceVerifier, RefreshToken};
use answer::{ProviderError, ProviderTokenResponse, classify_error, interpret};
use transport::{Transport, TransportError};

/// The OAuth client id and secret of one provider, from Secrets Manager.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: ClientSecret,
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
///
/// For a refresh, three classes ([`TokenError::is_transient`],
/// [`TokenError::outcome_unknown`], and `DeadToken`):
///
/// | class | when |
/// | --- | --- |
/// | certainly not processed | `Unreachable` (not sent), `Unavailable` (429, 503), `Rejected`/`InvalidClient` (other 4xx) |
/// | outcome unknown | `OutcomeUnknown` (timeout or dropped connection after sending; HTTP 408, 500, 502, 504, 520–527), `InvalidResponse` (an unusable 2xx) |
/// | dead token | `DeadToken` (`invalid_grant` or the preset's equivalents) |
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
    /// 429 or 503: the request was not processed; try again later.
    #[error("the provider is unavailable (HTTP {status}){}", retry_after.map(|s| format!("; retry after {s} s")).unwrap_or_default())]
    Unavailable { status: u16, retry_after: Option<u64> },
    /// The request was never sent (connection refused, DNS, TLS, or it could
    /// not be built): the provider processed nothing.
    #[error("cannot reach the provider: {0}")]
    Unreachable(String),
    /// The request left and no answer came back (timeout, connection dropped),
    /// or the answer says something broke while handling it (408, 500, 502,
    /// 504, 520–527): the provider may have processed it.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A 2xx answer we cannot use (no `access_token`, not JSON, …): the
    /// provider processed the request, and may have rotated the token.
    #[error("unusable token response: {0}")]
    InvalidResponse(String),
}

impl TokenError {
    /// Worth trying again later without a new login: the request was not processed.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Unavailable { .. } | TokenError::Unreachable(_))
    }

    /// The request may have been processed and its answer is lost: for a
    /// refresh at a rotating provider, the token sent may be spent.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, TokenError::OutcomeUnknown(_) | TokenError::InvalidResponse(_))
    }

    /// How long the provider asked us to wait (`Retry-After` on a 429/503).
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

impl From<TransportError> for TokenError {
    fn from(failure: TransportError) -> TokenError {
        match failure {
            TransportError::NotSent(cause) => TokenError::Unreachable(cause),
            e @ TransportError::Unbuildable(_) => TokenError::Unreachable(e.to_string()),
            e @ (TransportError::Timeout(_) | TransportError::Dropped(_)) => TokenError::OutcomeUnknown(e.to_string()),
            e @ TransportError::TooLarge => TokenError::InvalidResponse(e.to_string()),
        }
    }
}

/// The crate's client with our answer types; the URLs are set per call.
type OauthClient<HasAuthUrl, HasTokenUrl> = oauth2::Client<
    ProviderError,
    ProviderTokenResponse,
    StandardTokenIntrospectionResponse<EmptyExtraTokenFields, BasicTokenType>,
    StandardRevocableToken,
    ProviderError,
    HasAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
>;

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
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| TokenError::Unreachable(format!("not sent: the redirect URI is not a URL ({e})")))?;
        let client = self.client();
        let mut request = client
            .exchange_code(oauth2::AuthorizationCode::new(code.secret().to_owned()))
            .set_redirect_uri(Cow::Owned(redirect));
        if let Some(verifier) = verifier {
            request = request.set_pkce_verifier(oauth2::PkceCodeVerifier::new(verifier.secret().to_owned()));
        }
        let transport = Transport::new(self.http);
        let result = request.request_async(&transport).await;
        let secret = self.credentials.client_secret.secret();
        let sent = [code.secret(), verifier.map_or("", |v| v.secret()), secret];
        interpret(&self.provider.settings, transport.seen(), result, &sent).map_err(|e| match e {
            // `invalid_grant` here refuses the code, not a refresh token.
            TokenError::DeadToken { status, error, message } => TokenError::Rejected { status, error, message },
            other => other,
        })
    }

    /// Spends a refresh token (RFC 6749 §6). Call this only while holding the
    /// connection's refresh lease: a single-use token sent twice kills the connection.
    pub async fn refresh(&self, refresh_token: &RefreshToken) -> Result<TokenSet, TokenError> {
        let client = self.client();
        let token = oauth2::RefreshToken::new(refresh_token.secret().to_owned());
        let transport = Transport::new(self.http);
        let result = client.exchange_refresh_token(&token).request_async(&transport).await;
        let sent = [refresh_token.secret(), self.credentials.client_secret.secret()];
        interpret(&self.provider.settings, transport.seen(), result, &sent)
    }

    /// Revokes a token (RFC 7009). `Ok(false)` when the provider has no
    /// revocation endpoint. A 503 means the token still lives: the caller retries.
    pub async fn revoke(&self, token: &str, hint: TokenHint) -> Result<bool, TokenError> {
        let Some(url) = &self.provider.revocation_url else {
            return Ok(false);
        };
        let secret = self.credentials.client_secret.secret();
        let mut form = vec![("token", token), ("token_type_hint", hint.as_str())];
        let mut request = oauth2::http::Request::post(url.as_str())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        match self.provider.settings.client_auth {
            ClientAuth::Basic => {
                request = request.header(AUTHORIZATION, basic_auth(&self.credentials.client_id, secret))
            }
            ClientAuth::Body => {
                form.push(("client_id", &self.credentials.client_id));
                form.push(("client_secret", secret));
            }
        }
        let body = Serializer::new(String::new()).extend_pairs(form).finish().into_bytes();
        // The error names what was wrong (a header, the URI), never a value.
        let request = request
            .body(body)
            .map_err(|e| TransportError::Unbuildable(e.to_string()))?;
        let transport = Transport::new(self.http);
        let reply = transport.send(request).await?;
        let seen = transport.seen();
        match seen {
            Some(seen) if !seen.status.is_success() => {
                let json = serde_json::from_slice(reply.body()).unwrap_or(Value::Null);
                let sent = [token, secret];
                Err(classify_error(
                    &self.provider.settings,
                    seen.status.as_u16(),
                    &json,
                    reply.body(),
                    &sent,
                )
                .with_retry_after(seen.retry_after))
            }
            _ => Ok(true),
        }
    }

    /// The crate's client for the token endpoint, with the provider's client
    /// authentication: Basic (form-encoded before base64, RFC 6749 §2.3.1) or
    /// in the body.
    fn client(&self) -> OauthClient<EndpointNotSet, EndpointSet> {
        let auth_type = match self.provider.settings.client_auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Body => AuthType::RequestBody,
        };
        OauthClient::new(ClientId::new(self.credentials.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(
                self.credentials.client_secret.secret().to_owned(),
            ))
            .set_auth_type(auth_type)
            .set_token_uri(TokenUrl::from_url(self.provider.token_url.clone()))
    }
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
/// secret with `:` or `+` survives. The crate's `AuthType::BasicAuth` does the
/// same for token calls; this is for revocation, which is ours.
pub fn basic_auth(client_id: &str, client_secret: &str) -> String {
    let id: String = byte_serialize(client_id.as_bytes()).collect();
    let secret: String = byte_serialize(client_secret.as_bytes()).collect();
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// The login URL for the user's browser (RFC 6749 §4.1.1 with RFC 7636 S256).
/// `code_challenge` is the S256 challenge of the verifier made at login start.
pub fn authorize_url(
    provider: &Provider,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    code_challenge: Option<&str>,
) -> Url {
    let client = OauthClient::new(ClientId::new(client_id.to_owned()))
        .set_auth_uri(AuthUrl::from_url(provider.authorize_url.clone()));
    let mut request = client
        .authorize_url(|| CsrfToken::new(state.to_owned()))
        .add_scopes(provider.settings.scopes.iter().map(|s| Scope::new(s.clone())));
    request = match RedirectUrl::new(redirect_uri.to_owned()) {
        Ok(redirect) => request.set_redirect_uri(Cow::Owned(redirect)),
        // Not a URL: sent as given, for the provider to refuse.
        Err(_) => request.add_extra_param("redirect_uri", redirect_uri),
    };
    if let Some(challenge) = code_challenge.filter(|_| provider.settings.pkce) {
        request = match s256(challenge) {
            Some(challenge) => request.set_pkce_challenge(challenge),
            None => request
                .add_extra_param("code_challenge", challenge)
                .add_extra_param("code_challenge_method", "S256"),
        };
    }
    for (key, value) in &provider.settings.authorize_params {
        request = request.add_extra_param(key.as_str(), value.as_str());
    }
    request.url().0
}

/// The crate's S256 challenge from its value: the crate derives one only from
/// a verifier in hand, and ours was derived at login start (`crypto::Pkce`),
/// before the verifier was sealed away. Its serde form is the public way in.
fn s256(challenge: &str) -> Option<PkceCodeChallenge> {
    serde_json::from_value(serde_json::json!({
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }))
    .ok()
}

/// A token answer read the way a refresh reads it: the crate's response
/// handling (through its synchronous interface, with a canned answer), then
/// ours. For the unit tests and the fuzz targets (`crate::fuzz`).
#[cfg(test)]
pub(crate) fn parse_token_response(
    settings: &crate::config::ProviderSettings,
    status: reqwest::StatusCode,
    body: &[u8],
    sent: &[&str],
) -> Result<TokenSet, TokenError> {
    let client = OauthClient::new(ClientId::new("client".to_owned()))
        .set_token_uri(TokenUrl::new("https://auth.example/token".to_owned()).expect("url"));
    let token = oauth2::RefreshToken::new("rt".to_owned());
    let answer = |_| Ok::<_, TransportError>(transport::for_the_crate(status, body.to_vec()));
    let result = client.exchange_refresh_token(&token).request(&answer);
    let seen = transport::Seen {
        status,
        retry_after: None,
    };
    interpret(settings, Some(seen), result, sent)
}

#[cfg(test)]
mod tests;
