//! `oauth-sync doctor`: checks a provider's set-up and names the fix for the
//! failures people hit most: client id or secret rejected, a redirect URI that
//! is not https or not the deployed callback, the scope that yields a refresh
//! token missing, secrets missing, a token endpoint that only answers
//! allow-listed IP addresses. [`check_deployment`] is `oauth-sync
//! deploy-check`: the secrets a deployment needs and whether they are there.

mod deployment;
mod provider;

pub use deployment::{check_deployment_secrets, check_service_secrets};
pub use provider::{check_credentials, check_discovery, check_metadata, ip_restriction, probe_token_endpoint};

use url::Url;

use crate::config::{PresetName, Provider, ServiceSettings};
use crate::secrets::SecretsError;

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
///
/// One function: a list of independent checks, each a few lines, in the order
/// `oauth-sync doctor` prints them.
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

/// The OpenID Connect scope that asks for a refresh token.
const OFFLINE_ACCESS: &str = "offline_access";

fn secret_fix(error: &SecretsError) -> String {
    error.to_string()
}

#[cfg(test)]
mod tests;
