//! `oauth-sync doctor`: checks a provider's set-up and names the fix for the
//! failures people hit most: client id or secret rejected, a redirect URI that
//! is not https or not the deployed callback, the scope that yields a refresh
//! token missing, secrets missing, a token endpoint that only answers
//! allow-listed IP addresses. [`check_deployment`] is `oauth-sync
//! deploy-check`: the secrets a deployment needs and whether they are there.

use url::Url;

use crate::config::discovery::{ServerMetadata, auth_method};
use crate::config::{ClientAuth, Config, PresetName, Provider, ServiceSettings};
use crate::crypto::KeyRing;
use crate::login::LinkKeys;
use crate::oauth::{ClientCredentials, TokenEndpoint, TokenError};
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

/// Checks of the stored connections (an operator's scan): an active
/// connection without a refresh token works only until its access token
/// expires, and nothing can refresh it.
pub fn check_connections(connections: &[crate::connection::Connection]) -> Vec<Finding> {
    connections
        .iter()
        .filter(|c| c.status == crate::connection::Status::Active && c.refresh_token.is_none())
        .map(|c| {
            finding(
                &format!("connection {}", c.id),
                "refresh token",
                Verdict::Warn,
                format!(
                    "active without a refresh token: it stops working when its access token expires (at {} epoch \
                     ms) and cannot be refreshed; fix the provider's offline scope (`offline_scope`, \
                     `prompt=consent`, Google's `access_type=offline`, or the app's \"allow refresh tokens\" \
                     setting), then send a new connect link",
                    c.access_expires_at.unwrap_or_default()
                ),
            )
        })
        .collect()
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
        None if provider.preset == PresetName::Generic => {
            let listed = provider
                .metadata
                .as_ref()
                .and_then(|m| m.scopes_supported.as_ref().map(|s| (m, s)))
                .filter(|(_, scopes)| scopes.iter().any(|s| s == OFFLINE_ACCESS));
            let fix = match listed {
                Some((metadata, _)) => format!(
                    "the server lists `{OFFLINE_ACCESS}` in scopes_supported ({}): set offline_scope = \
                     \"{OFFLINE_ACCESS}\" and add it to scopes",
                    metadata.document_url
                ),
                None => format!(
                    "set `offline_scope` to the scope that makes the server issue refresh tokens \
                     (offline_scope = \"{OFFLINE_ACCESS}\" for OpenID Connect servers) and add it to scopes"
                ),
            };
            out.push(finding(
                name,
                "refresh token scope",
                Verdict::Warn,
                format!("no `offline_scope`: whether a login gets a refresh token cannot be checked; {fix}"),
            ));
        }
        None => {}
    }
    if let Some(metadata) = &provider.metadata {
        out.push(finding(
            name,
            "discovery",
            Verdict::Ok,
            format!("endpoints from {}", metadata.document_url),
        ));
        out.extend(check_metadata(provider, metadata));
    }
    out
}

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

/// The OpenID Connect scope that asks for a refresh token.
const OFFLINE_ACCESS: &str = "offline_access";

/// What the provider's discovery document says about its settings: the
/// client authentication, the offline scope, PKCE S256 and RFC 9207 `iss`.
pub fn check_metadata(provider: &Provider, metadata: &ServerMetadata) -> Vec<Finding> {
    let name = provider.name.as_str();
    let settings = &provider.settings;
    let url = &metadata.document_url;
    let list = |values: &[String]| values.join(", ");
    let mut out = Vec::new();

    let auth = settings.client_auth;
    let supported = &metadata.token_endpoint_auth_methods_supported;
    out.push(if metadata.supports_client_auth(auth) {
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
    });

    if settings.offline_scope.as_deref() == Some(OFFLINE_ACCESS) {
        match &metadata.scopes_supported {
            Some(scopes) if scopes.iter().any(|s| s == OFFLINE_ACCESS) => out.push(finding(
                name,
                "offline scope supported",
                Verdict::Ok,
                format!("`{OFFLINE_ACCESS}` is in scopes_supported"),
            )),
            Some(scopes) => out.push(finding(
                name,
                "offline scope supported",
                Verdict::Warn,
                format!(
                    "`{OFFLINE_ACCESS}` is not in scopes_supported [{}] ({url}): the server may refuse it or issue \
                     no refresh token; find the scope it uses for refresh tokens and set offline_scope to it",
                    list(scopes)
                ),
            )),
            None => {}
        }
    }

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
    out.push(finding(name, "PKCE", pkce.0, pkce.1));

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
    out.push(finding(name, "issuer in the answer", iss.0, iss.1));
    out
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
            Err(e) => finding("service", check, Verdict::Fail, key_secret_fix(&e)),
        };
        out.push(result);
    }
    out
}

fn secret_fix(error: &SecretsError) -> String {
    error.to_string()
}

/// A missing key secret is made by the CLI, never by hand.
fn key_secret_fix(error: &SecretsError) -> String {
    match error {
        SecretsError::NotFound { name } => {
            format!("secret `{name}` does not exist: create it with `oauth-sync keys init`")
        }
        other => secret_fix(other),
    }
}

/// `oauth-sync deploy-check`: every secret the deployment reads, whether it
/// is there and well-formed: the configuration (`config_secret`, compared
/// with `local_text`, the file the operator has), the token key ring, the
/// link key and each provider's client credentials. Values are read, never
/// shown.
pub async fn check_deployment_secrets(
    config: &Config,
    local_text: &str,
    config_secret: &str,
    secrets: &SecretStore,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let config_finding = match secrets.text(config_secret).await {
        // The local file's discovery documents serve the secret's text too.
        Ok(text) => match Config::parse_with(&text, &format!("secret {config_secret}"), &config.discovered()) {
            Err(e) => finding(
                "service",
                "config secret",
                Verdict::Fail,
                format!(
                    "{}: push a valid file with `oauth-sync config push FILE`",
                    e.in_one_line()
                ),
            ),
            Ok(_) if text != local_text => finding(
                "service",
                "config secret",
                Verdict::Warn,
                format!(
                    "`{config_secret}` differs from the local file: push it with `oauth-sync config push FILE` if the file is the one to deploy"
                ),
            ),
            Ok(_) => finding(
                "service",
                "config secret",
                Verdict::Ok,
                format!("`{config_secret}` holds this file"),
            ),
        },
        Err(SecretsError::NotFound { name }) => finding(
            "service",
            "config secret",
            Verdict::Fail,
            format!("secret `{name}` does not exist: create it with `oauth-sync config push FILE`"),
        ),
        Err(e) => finding("service", "config secret", Verdict::Fail, secret_fix(&e)),
    };
    out.push(config_finding);
    out.extend(check_service_secrets(&config.service, secrets).await);
    for provider in config.providers.values() {
        out.push(match secrets.client_credentials(&provider.credentials_secret).await {
            Ok(_) => finding(
                &provider.name,
                "client credentials secret",
                Verdict::Ok,
                format!("`{}` readable", provider.credentials_secret),
            ),
            Err(e) => finding(
                &provider.name,
                "client credentials secret",
                Verdict::Fail,
                secret_fix(&e),
            ),
        });
    }
    out
}

/// What the stack's outputs (`aws cloudformation describe-stacks`) mean for
/// this configuration and the CLI's environment (`env`: variable → value):
/// `CallbackUrl` must be `service.callback_url`, and each table output is
/// what the CLI's variable should name.
pub fn check_stack_outputs(
    outputs: &std::collections::BTreeMap<String, String>,
    service: &ServiceSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    match outputs.get("CallbackUrl") {
        None => out.push(finding("stack", "CallbackUrl", Verdict::Fail, "the stack has no CallbackUrl output: is it an oauth-sync stack?")),
        Some(url) if service.callback_url.as_ref().map(Url::as_str).map(|c| c.trim_end_matches('/')) == Some(url.trim_end_matches('/')) => {
            out.push(finding("stack", "CallbackUrl", Verdict::Ok, format!("{url} is service.callback_url")));
        }
        Some(url) => out.push(finding(
            "stack",
            "CallbackUrl",
            Verdict::Fail,
            format!(
                "set service.callback_url = \"{url}\" (it is {}), push the configuration, and register the redirect URIs below",
                service.callback_url.as_ref().map_or_else(|| "not set".to_owned(), |u| format!("`{u}`"))
            ),
        )),
    }
    for (output, variable) in STACK_TABLES {
        let Some(name) = outputs.get(*output) else { continue };
        let (verdict, detail) = match env(variable) {
            Some(value) if &value == name => (Verdict::Ok, format!("{name} ({variable} names it)")),
            Some(value) => (
                Verdict::Warn,
                format!("{name}, but {variable} is `{value}`: export {variable}={name}"),
            ),
            None => (Verdict::Warn, format!("{name}: export {variable}={name} for the CLI")),
        };
        out.push(finding("stack", output, verdict, detail));
    }
    out
}

/// The stack's table outputs and the variables the CLI reads them from.
pub const STACK_TABLES: &[(&str, &str)] = &[
    ("ConnectionsTableName", crate::runtime::CONNECTIONS_TABLE_ENV),
    ("SyncStateTableName", crate::runtime::SYNC_STATE_TABLE_ENV),
    ("SyncRunsTableName", crate::runtime::SYNC_RUNS_TABLE_ENV),
    ("RecordsTableName", crate::runtime::RECORDS_TABLE_ENV),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, error: &str, message: &str) -> [TokenError; 3] {
        let (error, message) = (error.to_owned(), message.to_owned());
        [
            TokenError::DeadToken {
                status,
                error: error.clone(),
                message: message.clone(),
            },
            TokenError::InvalidClient {
                status,
                error: error.clone(),
                message: message.clone(),
            },
            TokenError::Rejected { status, error, message },
        ]
    }

    #[test]
    fn ip_restriction_answers_are_named_as_such_and_others_are_not() {
        for (status, error, message, restricted) in [
            (400, "invalid_grant", "ip restricted", true),
            (400, "invalid_grant", "IP_RESTRICTED", true),
            (400, "IP_RESTRICTED", "no description", true),
            (
                403,
                "access_denied",
                "Your IP address 203.0.113.9 is not on the allow-list",
                true,
            ),
            (403, "no error code", "non-JSON answer: Forbidden: IP not allowed", true),
            (401, "unauthorized", "Requests from this IP are blocked", true),
            (400, "invalid_grant", "expired access/refresh token", false),
            (400, "invalid_grant", "token is invalid", false),
            (401, "invalid_client", "invalid client credentials", false),
            (403, "forbidden", "redirect_uri is not in the allowlist", false),
            (403, "insufficient_scope", "ship it", false),
        ] {
            for e in answer(status, error, message) {
                let found = ip_restriction(&e);
                assert_eq!(found.is_some(), restricted, "{e}");
                if let Some(found) = found {
                    assert!(found.contains(message), "{found}");
                }
            }
        }
        assert_eq!(ip_restriction(&TokenError::Unreachable("ip".into())), None);
    }

    /// A token endpoint that answers every request with `status` and `body`.
    async fn token_endpoint(status: u16, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        format!("http://{address}/token")
    }

    #[tokio::test]
    async fn doctor_names_a_salesforce_ip_restriction_and_suggests_the_vpc_parameters() {
        let url = token_endpoint(400, r#"{"error":"invalid_grant","error_description":"ip restricted"}"#).await;
        let text = format!(
            "[providers.sf]\npreset = \"salesforce\"\ncredentials_secret = \"s\"\n\
             authorize_url = \"https://login.salesforce.com/services/oauth2/authorize\"\ntoken_url = \"{url}\"\n"
        );
        let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let credentials = ClientCredentials {
            client_id: "id".into(),
            client_secret: crate::secret::ClientSecret::new("cs-planted"),
        };
        let http = crate::oauth::http_client(std::time::Duration::from_secs(5)).expect("client");
        let found = probe_token_endpoint(&config.providers["sf"], &credentials, &http).await;
        assert_eq!(found.verdict, Verdict::Fail, "{found:?}");
        assert!(
            found
                .detail
                .contains("refused the caller's IP address (HTTP 400 invalid_grant: ip restricted)")
                && found.detail.contains("VpcSubnetIds and VpcSecurityGroupId"),
            "{}",
            found.detail
        );
        assert!(!found.detail.contains("planted"));

        // The same endpoint's ordinary dead-token answer means the credentials were accepted.
        let url = token_endpoint(
            400,
            r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
        )
        .await;
        let config = Config::parse(&text.replace(&url_of(&text), &url), "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let found = probe_token_endpoint(&config.providers["sf"], &credentials, &http).await;
        assert_eq!(found.verdict, Verdict::Ok, "{found:?}");
    }

    fn url_of(text: &str) -> String {
        let start = text.find("token_url = \"").expect("token_url") + "token_url = \"".len();
        text[start..].split('"').next().expect("url").to_owned()
    }

    #[test]
    fn a_generic_provider_without_an_offline_scope_is_told_how_to_check_refresh_tokens() {
        let findings = |table: &str| {
            let text = format!("[providers.p]\ncredentials_secret = \"s\"\n{table}");
            let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
            check_settings(&config.providers["p"], &config.service)
                .into_iter()
                .filter(|f| f.check == "refresh token scope")
                .collect::<Vec<_>>()
        };
        let generic = "preset = \"generic\"\nauthorize_url = \"https://id.example/auth\"\n\
                       token_url = \"https://id.example/token\"\n";
        let found = findings(generic);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].verdict, Verdict::Warn);
        assert!(
            found[0]
                .detail
                .contains("whether a login gets a refresh token cannot be checked")
                && found[0]
                    .detail
                    .contains("offline_scope = \"offline_access\" for OpenID Connect servers"),
            "{}",
            found[0].detail
        );
        // Set, it is checked instead; a preset that knows its provider is not warned about.
        let set = findings(&format!(
            "{generic}scopes = [\"offline_access\"]\noffline_scope = \"offline_access\"\n"
        ));
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].verdict, Verdict::Ok);
        assert!(findings("preset = \"hubspot\"\n").is_empty());
    }

    #[test]
    fn stack_outputs_name_the_callback_url_to_set_and_the_tables_to_export() {
        let outputs: std::collections::BTreeMap<String, String> = [
            (
                "CallbackUrl",
                "https://abc.execute-api.eu-west-1.amazonaws.com/callback",
            ),
            ("ConnectionsTableName", "stack-Connections-1"),
            ("RecordsTableName", "stack-Records-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut service = ServiceSettings::default();
        let env = |var: &str| (var == crate::runtime::CONNECTIONS_TABLE_ENV).then(|| "stack-Connections-1".to_owned());
        let found = check_stack_outputs(&outputs, &service, &env);
        assert_eq!(found[0].verdict, Verdict::Fail);
        assert!(
            found[0]
                .detail
                .contains("set service.callback_url = \"https://abc.execute-api"),
            "{:?}",
            found[0]
        );
        assert_eq!(
            (found[1].check, found[1].verdict),
            ("ConnectionsTableName", Verdict::Ok)
        );
        assert_eq!((found[2].check, found[2].verdict), ("RecordsTableName", Verdict::Warn));
        assert!(
            found[2]
                .detail
                .contains("export OAUTH_SYNC_RECORDS_TABLE=stack-Records-1")
        );
        service.callback_url = Url::parse("https://abc.execute-api.eu-west-1.amazonaws.com/callback").ok();
        assert_eq!(check_stack_outputs(&outputs, &service, &env)[0].verdict, Verdict::Ok);
    }
}
