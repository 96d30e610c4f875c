//! What the provider says about our set-up: its discovery document against
//! the configuration, and its token endpoint against our client credentials
//! (including the IP allow-lists that refuse Lambda's addresses).

use super::{Finding, OFFLINE_ACCESS, Verdict, finding, secret_fix};
use crate::config::discovery::{ServerMetadata, auth_method};
use crate::config::{ClientAuth, Provider};
use crate::oauth::{ClientCredentials, TokenEndpoint, TokenError};
use crate::secret::RefreshToken;
use crate::secrets::SecretStore;

/// For a provider that names its issuer but sets its endpoints itself, so
/// that loading the configuration fetched nothing: reads the discovery
/// document now and checks the configuration against it. A document that
/// cannot be read is only a warning, since nothing depends on it.
pub async fn check_discovery(provider: &Provider) -> Vec<Finding> {
    let name = provider.name.as_str();
    let Some(issuer) = provider.settings.issuer.clone().filter(|_| provider.metadata.is_none()) else {
        return Vec::new();
    };
    let metadata = match crate::config::discovery::fetch_all([issuer.clone()]).await {
        Ok(mut found) => found.remove(&issuer),
        Err((_, e)) => {
            return vec![finding(
                name,
                "discovery",
                Verdict::Warn,
                format!("{e} (the endpoints are set in the configuration: nothing depends on it)"),
            )];
        }
    };
    let Some(metadata) = metadata else {
        return Vec::new();
    };
    let url = &metadata.document_url;
    let differing: Vec<String> = [
        (
            "authorize_url",
            &provider.authorize_url,
            "authorization_endpoint",
            &metadata.authorization_endpoint,
        ),
        (
            "token_url",
            &provider.token_url,
            "token_endpoint",
            &metadata.token_endpoint,
        ),
    ]
    .into_iter()
    .filter(|(_, configured, _, listed)| configured != listed)
    .map(|(key, configured, member, listed)| format!("{key} {configured} is not its {member} {listed}"))
    .collect();
    let mut out = vec![if differing.is_empty() {
        finding(
            name,
            "discovery",
            Verdict::Ok,
            format!("the configured endpoints are those of {url}"),
        )
    } else {
        finding(
            name,
            "discovery",
            Verdict::Warn,
            format!(
                "{} ({url}): is the issuer or the endpoint right? Leave the endpoints unset to take the document's",
                differing.join("; ")
            ),
        )
    }];
    out.extend(check_metadata(provider, &metadata));
    out
}

/// What the provider's discovery document says about its settings: the
/// client authentication, the offline scope, PKCE S256 and RFC 9207 `iss`.
pub fn check_metadata(provider: &Provider, metadata: &ServerMetadata) -> Vec<Finding> {
    let mut out = vec![client_auth_supported(provider, metadata)];
    out.extend(offline_scope_supported(provider, metadata));
    out.push(pkce_supported(provider, metadata));
    out.push(issuer_in_answer(provider, metadata));
    out
}

fn list(values: &[String]) -> String {
    values.join(", ")
}

/// The client authentication we send is one the token endpoint accepts.
fn client_auth_supported(provider: &Provider, metadata: &ServerMetadata) -> Finding {
    let name = provider.name.as_str();
    let settings = &provider.settings;
    let url = &metadata.document_url;
    let auth = settings.client_auth;
    let supported = &metadata.token_endpoint_auth_methods_supported;
    if metadata.supports_client_auth(auth) {
        finding(
            name,
            "client authentication",
            Verdict::Ok,
            format!("{} is supported", auth_method(auth)),
        )
    } else {
        let other = match auth {
            ClientAuth::Basic => ClientAuth::Body,
            ClientAuth::Body => ClientAuth::Basic,
        };
        let fix = if metadata.supports_client_auth(other) {
            format!("set client_auth = \"{}\"", client_auth_key(other))
        } else {
            "oauth-sync authenticates with client_secret_basic or client_secret_post only: allow one of them for \
             this client at the server"
                .to_owned()
        };
        finding(
            name,
            "client authentication",
            Verdict::Fail,
            format!(
                "client_auth = \"{}\" ({}) is not in token_endpoint_auth_methods_supported [{}] ({url}): {fix}",
                client_auth_key(auth),
                auth_method(auth),
                list(supported)
            ),
        )
    }
}

/// The offline scope we ask for is one the server lists.
fn offline_scope_supported(provider: &Provider, metadata: &ServerMetadata) -> Option<Finding> {
    let name = provider.name.as_str();
    let settings = &provider.settings;
    let url = &metadata.document_url;
    if settings.offline_scope.as_deref() != Some(OFFLINE_ACCESS) {
        return None;
    }
    match &metadata.scopes_supported {
        Some(scopes) if scopes.iter().any(|s| s == OFFLINE_ACCESS) => Some(finding(
            name,
            "offline scope supported",
            Verdict::Ok,
            format!("`{OFFLINE_ACCESS}` is in scopes_supported"),
        )),
        Some(scopes) => Some(finding(
            name,
            "offline scope supported",
            Verdict::Warn,
            format!(
                "`{OFFLINE_ACCESS}` is not in scopes_supported [{}] ({url}): the server may refuse it or issue \
                 no refresh token; find the scope it uses for refresh tokens and set offline_scope to it",
                list(scopes)
            ),
        )),
        None => None,
    }
}

/// PKCE S256, which we send unless `pkce = false`, is one the server supports.
fn pkce_supported(provider: &Provider, metadata: &ServerMetadata) -> Finding {
    let name = provider.name.as_str();
    let settings = &provider.settings;
    let url = &metadata.document_url;
    let pkce = match (&metadata.code_challenge_methods_supported, settings.pkce) {
        (Some(methods), true) if methods.iter().any(|m| m == "S256") => {
            (Verdict::Ok, "S256 is in code_challenge_methods_supported".to_owned())
        }
        (Some(methods), true) => (
            Verdict::Fail,
            format!(
                "code_challenge_methods_supported [{}] has no S256, the only method oauth-sync sends ({url}): enable \
                 S256 at the server, or set pkce = false",
                list(methods)
            ),
        ),
        (None, true) => (
            Verdict::Warn,
            format!(
                "the server does not announce PKCE (no code_challenge_methods_supported at {url}): it may ignore \
                 the S256 challenge"
            ),
        ),
        (Some(methods), false) if methods.iter().any(|m| m == "S256") => (
            Verdict::Warn,
            "pkce = false, but the server supports S256: remove `pkce = false` (RFC 9700 recommends PKCE for \
             every client)"
                .to_owned(),
        ),
        (_, false) => (Verdict::Ok, "off (pkce = false)".to_owned()),
    };
    finding(name, "PKCE", pkce.0, pkce.1)
}

/// Whether an answer without `iss` (RFC 9207) is refused, and should be.
fn issuer_in_answer(provider: &Provider, metadata: &ServerMetadata) -> Finding {
    let name = provider.name.as_str();
    let settings = &provider.settings;
    let announced = metadata.authorization_response_iss_parameter_supported;
    let iss = match (announced, provider.requires_iss(), settings.require_iss) {
        (true, true, _) => (
            Verdict::Ok,
            "the server always sends `iss` (RFC 9207): an answer without it, or with another issuer, is refused"
                .to_owned(),
        ),
        (true, false, Some(false)) => (
            Verdict::Warn,
            "the server always sends `iss` (RFC 9207), but require_iss = false accepts an answer without it: \
             remove `require_iss = false`"
                .to_owned(),
        ),
        (true, false, _) => (
            Verdict::Warn,
            "the server always sends `iss` (RFC 9207), and its document is not read at start-up (the endpoints \
             are set): set require_iss = true so that an answer without it is refused"
                .to_owned(),
        ),
        (false, true, _) => (
            Verdict::Warn,
            "require_iss = true, but the server does not announce `iss` \
             (authorization_response_iss_parameter_supported): if it does not send it, every login is refused"
                .to_owned(),
        ),
        (false, false, _) => (
            Verdict::Ok,
            "the server does not announce `iss` (RFC 9207); when an answer carries one, it is compared with \
             `issuer`"
                .to_owned(),
        ),
    };
    finding(name, "issuer in the answer", iss.0, iss.1)
}

/// The configuration value of a client authentication.
fn client_auth_key(auth: ClientAuth) -> &'static str {
    match auth {
        ClientAuth::Basic => "basic",
        ClientAuth::Body => "body",
    }
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
    out.push(probe_token_endpoint(provider, &credentials, http).await);
    out
}

/// Asks the token endpoint to refresh a dummy token and reads the answer.
pub async fn probe_token_endpoint(
    provider: &Provider,
    credentials: &ClientCredentials,
    http: &reqwest::Client,
) -> Finding {
    let name = provider.name.as_str();
    let endpoint = TokenEndpoint {
        provider,
        credentials,
        http,
    };
    let probe = RefreshToken::new("oauth-sync-doctor-probe-not-a-real-token");
    let answer = endpoint.refresh(&probe).await;
    // Before the other answers: Salesforce says it with `invalid_grant`,
    // which otherwise means "credentials accepted".
    if let Err(e) = &answer
        && let Some(answer) = ip_restriction(e)
    {
        return finding(
            name,
            "client id and secret",
            Verdict::Fail,
            format!(
                "the provider refused the caller's IP address ({answer}): it only accepts allow-listed addresses. \
                 Deploy with the VpcSubnetIds and VpcSecurityGroupId parameters, so the functions leave through \
                 your NAT gateway's fixed address, and allow-list that address at the provider (this check ran from \
                 this machine's address, not the functions')"
            ),
        );
    }
    let (verdict, detail) = match answer {
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
    finding(name, "client id and secret", verdict, detail)
}

/// The provider's words when an answer says the caller's IP address is not
/// allowed: Salesforce `invalid_grant` "ip restricted" (or `IP_RESTRICTED`),
/// or a 401/403 whose message speaks of the IP address or an allow-list.
pub fn ip_restriction(error: &TokenError) -> Option<String> {
    let (status, code, message) = match error {
        TokenError::DeadToken { status, error, message }
        | TokenError::InvalidClient { status, error, message }
        | TokenError::Rejected { status, error, message } => (*status, error.as_str(), message.as_str()),
        _ => return None,
    };
    let text = format!("{code} {message}")
        .to_ascii_lowercase()
        .replace(['_', '-'], " ");
    let says_ip = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| matches!(w, "ip" | "ips" | "ipv4" | "ipv6"));
    let restricted = [
        "restrict",
        "allowlist",
        "allow list",
        "allowed",
        "whitelist",
        "trusted",
        "range",
        "blocked",
    ]
    .iter()
    .any(|w| text.contains(w));
    (says_ip && (restricted || matches!(status, 401 | 403))).then(|| format!("HTTP {status} {code}: {message}"))
}
