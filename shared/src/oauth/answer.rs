//! What a token endpoint's answer means, on the `oauth2` crate's extension
//! points: a token response that takes the providers' variations of RFC 6749
//! §5.1, an error response that keeps the whole error object, and the
//! classification of every failure for the refresh protocol.

use oauth2::basic::BasicTokenType;
use oauth2::{ErrorResponse, RequestTokenError, Scope, TokenResponse};
use reqwest::StatusCode;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::transport::{Seen, TransportError};
use super::{TokenError, TokenSet};
use crate::config::{ProviderSettings, provider_message};
use crate::secret::{AccessToken, RefreshToken};
use crate::text::excerpt;

/// What the crate returns for one token call.
pub(super) type CrateResult = Result<ProviderTokenResponse, RequestTokenError<TransportError, ProviderError>>;

/// A successful token answer (RFC 6749 §5.1) as providers really send it:
/// `expires_in` as a number, a numeric string (Exact Online) or a decimal,
/// or missing (Salesforce: the preset's default applies later); `token_type`
/// missing or any case of Bearer; and the extra fields some providers add.
/// Private to this module: the crate requires `Serialize`, and serializing it
/// would write the tokens out.
#[derive(Debug, Serialize)]
pub(super) struct ProviderTokenResponse {
    access_token: oauth2::AccessToken,
    token_type: BasicTokenType,
    expires_in: Option<u64>,
    refresh_token: Option<oauth2::RefreshToken>,
    scope: Option<Vec<Scope>>,
    /// Salesforce: the API host for this connection.
    instance_url: Option<String>,
    /// Zoho: the API host for this connection.
    api_domain: Option<String>,
    /// QuickBooks: how long the refresh token lives.
    x_refresh_token_expires_in: Option<u64>,
}

/// Why a 2xx answer is not a token response. Each says what is wrong without
/// quoting a token.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Unusable {
    NotAnObject,
    /// An error object with HTTP 200 (Zoho): classified like any error answer.
    ErrorAnswer(Value),
    NoAccessToken,
    AccessTokenNotAString,
    TokenType(String),
    ExpiresIn(Value),
    RefreshTokenNotAString,
}

impl Unusable {
    fn describe(&self, status: StatusCode, body_len: usize, sent: &[&str]) -> String {
        match self {
            // Never quote a 2xx body: it may hold a token.
            Unusable::NotAnObject | Unusable::ErrorAnswer(_) => format!(
                "HTTP {} with a body that is not a JSON object ({body_len} bytes)",
                status.as_u16()
            ),
            Unusable::NoAccessToken => "no `access_token` in the response".to_owned(),
            Unusable::AccessTokenNotAString => "`access_token` is not a non-empty string".to_owned(),
            Unusable::TokenType(kind) => {
                format!("token_type `{}` is not supported (only Bearer)", excerpt(kind, sent))
            }
            Unusable::ExpiresIn(value) => format!(
                "`expires_in` is not a number of seconds: {}",
                excerpt(&value.to_string(), sent)
            ),
            Unusable::RefreshTokenNotAString => "`refresh_token` is not a non-empty string".to_owned(),
        }
    }
}

impl ProviderTokenResponse {
    /// Reads the fields of a 2xx answer, in the order the checks have always run.
    fn from_fields(fields: &Map<String, Value>) -> Result<Self, Unusable> {
        if fields.contains_key("error") && !fields.contains_key("access_token") {
            return Err(Unusable::ErrorAnswer(Value::Object(fields.clone())));
        }
        let access_token = match fields.get("access_token") {
            Some(Value::String(token)) if !token.is_empty() => oauth2::AccessToken::new(token.clone()),
            Some(_) => return Err(Unusable::AccessTokenNotAString),
            None => return Err(Unusable::NoAccessToken),
        };
        if let Some(kind) = fields.get("token_type") {
            let kind = kind.as_str().unwrap_or_default();
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(Unusable::TokenType(kind.to_owned()));
            }
        }
        let expires_in = match fields.get("expires_in") {
            None | Some(Value::Null) => None,
            Some(value) => Some(seconds(value).ok_or_else(|| Unusable::ExpiresIn(value.clone()))?),
        };
        let refresh_token = match fields.get("refresh_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) if !token.is_empty() => Some(oauth2::RefreshToken::new(token.clone())),
            Some(_) => return Err(Unusable::RefreshTokenNotAString),
        };
        let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
        Ok(ProviderTokenResponse {
            access_token,
            token_type: BasicTokenType::Bearer,
            expires_in,
            refresh_token,
            // A space-delimited string (RFC 6749 §3.3); anything else reads as absent.
            scope: text("scope").map(|s| s.split_whitespace().map(|s| Scope::new(s.to_owned())).collect()),
            instance_url: text("instance_url"),
            api_domain: text("api_domain"),
            x_refresh_token_expires_in: fields.get("x_refresh_token_expires_in").and_then(seconds),
        })
    }

    /// Reads a 2xx body the way the crate did, to say why it failed.
    fn from_body(body: &[u8]) -> Result<Self, Unusable> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Self::from_fields(&fields),
            _ => Err(Unusable::NotAnObject),
        }
    }

    /// Our token set; a missing `expires_in` takes the preset's default.
    fn into_token_set(self, settings: &ProviderSettings) -> TokenSet {
        let (expires_in, expires_in_assumed) = match self.expires_in {
            Some(secs) => (secs, false),
            None => (settings.default_expires_in_secs, true),
        };
        TokenSet {
            access_token: AccessToken::new(self.access_token.into_secret()),
            refresh_token: self.refresh_token.map(|t| RefreshToken::new(t.into_secret())),
            expires_in,
            expires_in_assumed,
            scope: self
                .scope
                .map(|scopes| scopes.into_iter().map(|s| s.to_string()).collect()),
            instance_url: self.instance_url,
            api_domain: self.api_domain,
            refresh_token_expires_in: self.x_refresh_token_expires_in,
        }
    }
}

impl<'de> Deserialize<'de> for ProviderTokenResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = Map::<String, Value>::deserialize(deserializer)?;
        // The message is never shown: a failure is described again, from the
        // body, by `Unusable::describe`, with the secrets we sent at hand.
        Self::from_fields(&fields).map_err(|_| D::Error::custom("not a usable token response"))
    }
}

impl TokenResponse for ProviderTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &oauth2::AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<std::time::Duration> {
        self.expires_in.map(std::time::Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&oauth2::RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scope.as_ref()
    }
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

/// An error answer, kept whole: providers say "dead refresh token" in fields
/// RFC 6749 §5.2 does not name (HubSpot `status`, Zoho `errorCode`, an AADSTS
/// code inside Microsoft's `error_description`), and the provider's preset
/// decides which. `Debug` and `Display` show the error code only: the rest
/// may echo what we sent.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct ProviderError(Value);

impl ProviderError {
    /// The provider's error code: RFC 6749 `error`, or HubSpot's `status`, or `errorCode`.
    fn code(&self) -> Option<&str> {
        ["error", "status", "errorCode"]
            .iter()
            .find_map(|k| self.0.get(k).and_then(Value::as_str))
    }
}

impl std::fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderError({})", self)
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&excerpt(self.code().unwrap_or("no error code"), &[]))
    }
}

impl ErrorResponse for ProviderError {}

/// What the crate's answer means for us. `seen` is the status the provider
/// sent (the crate keeps none); `sent` are the secrets in the request,
/// scrubbed from any message we keep.
pub(super) fn interpret(
    settings: &ProviderSettings,
    seen: Option<Seen>,
    result: CrateResult,
    sent: &[&str],
) -> Result<TokenSet, TokenError> {
    let error = match result {
        Ok(tokens) => return Ok(tokens.into_token_set(settings)),
        Err(RequestTokenError::Request(failure)) => return Err(failure.into()),
        Err(error) => error,
    };
    let Some(Seen { status, retry_after }) = seen else {
        // No answer and no transport failure: the crate refused before sending.
        return Err(TokenError::Unreachable(format!("the request was not sent: {error}")));
    };
    let body: &[u8] = match &error {
        RequestTokenError::Parse(_, body) => body,
        // `Other`: the crate's "empty body".
        _ => b"",
    };
    let failure = match &error {
        RequestTokenError::ServerResponse(answer) if !status.is_success() => {
            classify_error(settings, status.as_u16(), &answer.0, body, sent)
        }
        _ if status.is_success() => match ProviderTokenResponse::from_body(body) {
            Err(Unusable::ErrorAnswer(json)) => classify_error(settings, status.as_u16(), &json, body, sent),
            Err(unusable) => TokenError::InvalidResponse(unusable.describe(status, body.len(), sent)),
            // The crate and we disagree on a body: unusable for want of a reason.
            Ok(_) => {
                TokenError::InvalidResponse(format!("HTTP {} with a token answer we cannot read", status.as_u16()))
            }
        },
        _ => {
            let json = serde_json::from_slice(body).unwrap_or(Value::Null);
            classify_error(settings, status.as_u16(), &json, body, sent)
        }
    };
    Err(failure.with_retry_after(retry_after))
}

/// An error answer, per the provider's preset: a dead refresh token, a
/// refused client, a provider that certainly did not process the request
/// (429, 503), one that may have ([`outcome_unknown_status`]), or a refusal.
pub(super) fn classify_error(
    settings: &ProviderSettings,
    code: u16,
    json: &Value,
    body: &[u8],
    sent: &[&str],
) -> TokenError {
    let error = ["error", "status", "errorCode"]
        .iter()
        .find_map(|k| json.get(k).and_then(Value::as_str))
        .map(|e| excerpt(e, sent))
        .unwrap_or_else(|| "no error code".to_owned());
    let message = match provider_message(json) {
        Some(m) => excerpt(m, sent),
        None if json.is_null() && !body.is_empty() => non_json_answer(body, sent),
        None => "no description".to_owned(),
    };
    if settings.is_dead_token(code, json) {
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
        429 | 503 => TokenError::Unavailable {
            status: code,
            retry_after: None,
        },
        code if outcome_unknown_status(code) => TokenError::OutcomeUnknown(format!(
            "HTTP {code}: the provider or a gateway failed while handling the request, which may have been processed"
        )),
        _ => TokenError::Rejected {
            status: code,
            error,
            message,
        },
    }
}

/// A body that is not JSON is quoted (a gateway's "Bad Gateway" page says
/// what went wrong), unless it may be a token answer: JSON cut short or
/// garbled (after a BOM or a stray byte too), or anything naming a token
/// field. The secrets we sent are scrubbed either way, but a token the
/// provider just issued is not one of them.
fn non_json_answer(body: &[u8], sent: &[&str]) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text.trim_start_matches(|c: char| {
        c.is_whitespace() || c.is_control() || matches!(c, '\u{feff}' | char::REPLACEMENT_CHARACTER)
    });
    let may_hold_a_token = start.starts_with(['{', '['])
        || ["access_token", "refresh_token", "id_token"]
            .iter()
            .any(|field| text.contains(field));
    if may_hold_a_token {
        return format!(
            "an answer that is not valid JSON ({} bytes, not quoted: it may hold a token)",
            body.len()
        );
    }
    format!("non-JSON answer: {}", excerpt(&text, sent))
}

/// Statuses after which the request may have been processed: an internal
/// error (500) can come after the rotation was written; a gateway or CDN that
/// gave up (502, 504, Cloudflare's 520–527) may have passed the request on;
/// 408 is sent by proxies that did.
pub(super) fn outcome_unknown_status(code: u16) -> bool {
    matches!(code, 408 | 500 | 502 | 504 | 520..=527)
}
