//! `oauth-sync doctor`: checks a provider's set-up and names the fix for the
//! failures people hit most: client id or secret rejected, a redirect URI that
//! is not https or not the deployed callback, the scope that yields a refresh
//! token missing, secrets missing.

use crate::config::{Provider, ServiceSettings};
use crate::crypto::KeyRing;
use crate::login::LinkKeys;
use crate::oauth::{TokenEndpoint, TokenError};
use crate::secret::RefreshToken;
use crate::secrets::{SecretStore, SecretsError};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check's result, with the fix when it failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The provider it is about, or `service`.
    pub subject: String,
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn finding(subject: &str, check: &'static str, verdict: Verdict, detail: impl Into<String>) -> Finding {
    Finding {
        subject: subject.to_owned(),
        check,
        verdict,
        detail: detail.into(),
    }
}

/// Checks that need nothing but the configuration.
pub fn check_settings(provider: &Provider, service: &ServiceSettings) -> Vec<Finding> {
    let name = provider.name.as_str();
    let settings = &provider.settings;
    let mut out = Vec::new();
    match service.callback_url.as_ref().zip(service.redirect_uri(name)) {
        Some((callback, _)) if !callback.path().trim_end_matches('/').ends_with("/callback") => out.push(finding(
            name,
            "redirect URI",
            Verdict::Warn,
            format!("service.callback_url `{callback}` does not end in /callback: is it the deployed CallbackUrl?"),
        )),
        None => out.push(finding(
            name,
            "redirect URI",
            Verdict::Fail,
            "service.callback_url is not set: set it to the stack's CallbackUrl output and register it at the provider",
        )),
        // One redirect URI per provider (RFC 9700 §4.4): `{callback_url}/{provider}`.
        Some((_, url)) => {
            let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if url.scheme() != "https" && (settings.redirect_requires_https || !local) {
                out.push(finding(
                    name,
                    "redirect URI",
                    Verdict::Fail,
                    format!("`{url}` is not https; providers refuse it (use the deployed CallbackUrl)"),
                ));
            } else if local && settings.redirect_requires_https {
                out.push(finding(
                    name,
                    "redirect URI",
                    Verdict::Fail,
                    format!(
                        "`{url}` is local; {} refuses localhost redirect URIs (use the deployed CallbackUrl)",
                        provider.preset
                    ),
                ));
            } else {
                out.push(finding(
                    name,
                    "redirect URI",
                    Verdict::Ok,
                    format!("{url} (register exactly this at the provider)"),
                ));
            }
        }
    }
    match &settings.offline_scope {
        Some(scope) if !settings.scopes.contains(scope) => out.push(finding(
            name,
            "refresh token scope",
            Verdict::Fail,
            format!("`{scope}` is not in scopes, so no refresh token comes back: add it"),
        )),
        Some(scope) => out.push(finding(
            name,
            "refresh token scope",
            Verdict::Ok,
            format!("`{scope}` requested"),
        )),
        None => {}
    }
    out
}

/// Reads the provider's credentials and asks its token endpoint to refresh a
/// token that does not exist: `invalid_grant` means the client id and secret
/// were accepted; `invalid_client` means they were not.
pub async fn check_credentials(provider: &Provider, secrets: &SecretStore, http: &reqwest::Client) -> Vec<Finding> {
    let name = provider.name.as_str();
    let credentials = match secrets.client_credentials(&provider.credentials_secret).await {
        Ok(credentials) => credentials,
        Err(e) => {
            return vec![finding(
                name,
                "client credentials secret",
                Verdict::Fail,
                secret_fix(&e),
            )];
        }
    };
    let mut out = vec![finding(
        name,
        "client credentials secret",
        Verdict::Ok,
        format!("`{}` readable", provider.credentials_secret),
    )];
    let endpoint = TokenEndpoint {
        provider,
        credentials: &credentials,
        http,
    };
    let probe = RefreshToken::new("oauth-sync-doctor-probe-not-a-real-token");
    let (verdict, detail) = match endpoint.refresh(&probe).await {
        Err(TokenError::DeadToken { .. }) => (
            Verdict::Ok,
            "accepted (a dummy refresh token was refused as it should be)".to_owned(),
        ),
        Err(TokenError::InvalidClient { message, .. }) => (
            Verdict::Fail,
            format!(
                "the provider rejected the client id or secret ({message}): check the values in `{}` and the client \
                 authentication style (`client_auth`)",
                provider.credentials_secret
            ),
        ),
        Err(e @ (TokenError::Unreachable(_) | TokenError::Unavailable { .. } | TokenError::OutcomeUnknown(_))) => {
            (Verdict::Warn, format!("could not ask the token endpoint: {e}"))
        }
        Err(e) => (Verdict::Warn, format!("unexpected answer to a dummy refresh: {e}")),
        Ok(_) => (Verdict::Warn, "a dummy refresh token was accepted?".to_owned()),
    };
    out.push(finding(name, "client id and secret", verdict, detail));
    out
}

/// The deployment's own secrets: the token key ring and the link key.
pub async fn check_service_secrets(service: &ServiceSettings, secrets: &SecretStore) -> Vec<Finding> {
    let mut out = Vec::new();
    for (check, name, parse) in [
        (
            "token key ring",
            &service.token_key_secret,
            (|t: &str| KeyRing::from_json(t).map(drop)) as fn(&str) -> _,
        ),
        ("link key", &service.link_key_secret, |t: &str| {
            LinkKeys::from_json(t).map(drop)
        }),
    ] {
        let result = match secrets.text(name).await {
            Ok(text) => match parse(&text) {
                Ok(()) => finding("service", check, Verdict::Ok, format!("`{name}` is a valid key ring")),
                Err(e) => finding("service", check, Verdict::Fail, format!("`{name}`: {e}")),
            },
            Err(e) => finding("service", check, Verdict::Fail, secret_fix(&e)),
        };
        out.push(result);
    }
    out
}

fn secret_fix(error: &SecretsError) -> String {
    error.to_string()
}
