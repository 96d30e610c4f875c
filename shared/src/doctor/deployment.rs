//! The secrets a deployment reads: each there and well-formed, never shown.

use super::{Finding, Verdict, finding, secret_fix};
use crate::config::{Config, ServiceSettings};
use crate::crypto::KeyRing;
use crate::login::LinkKeys;
use crate::secrets::{SecretStore, SecretsError};

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
