//! `oauth-sync presets`, `config check` and `config push`: the built-in
//! provider presets, and a configuration file checked, shown and written to
//! the config secret the functions read when they start.

use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};
use shared::config::{ClientAuth, Config, PresetName};
use shared::runtime::CONFIG_SECRET_ENV;
use shared::secrets::SecretStore;

use crate::output::{table, write_out};

/// The config secret when `OAUTH_SYNC_CONFIG_SECRET` is not set (the template's default).
pub const DEFAULT_CONFIG_SECRET: &str = "oauth-sync/config";

/// The config secret's name: `OAUTH_SYNC_CONFIG_SECRET`, else `oauth-sync/config`.
pub fn config_secret_name() -> String {
    std::env::var(CONFIG_SECRET_ENV)
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| DEFAULT_CONFIG_SECRET.to_owned())
}

/// `presets`: each built-in preset and what it sets.
pub fn presets(as_json: bool) -> anyhow::Result<()> {
    let presets: Vec<_> = PresetName::ALL.iter().map(|p| (p.as_str(), p.settings())).collect();
    if as_json {
        let map: serde_json::Map<String, Value> = presets
            .iter()
            .map(|(name, s)| Ok(((*name).to_owned(), serde_json::to_value(s)?)))
            .collect::<Result<_, serde_json::Error>>()?;
        return write_out(&format!("{}\n", serde_json::to_string_pretty(&map)?));
    }
    let rows: Vec<Vec<String>> = presets
        .iter()
        .map(|(name, s)| {
            vec![
                (*name).to_owned(),
                auth(s.client_auth).to_owned(),
                if s.rotates_refresh_tokens {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
                format!("{}s", s.reuse_grace_secs),
                days(s.refresh_token_idle_secs),
                format!("{}s", s.refresh_lead_secs),
                if s.revocation_url.is_some() {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
            ]
        })
        .collect();
    write_out(&table(
        &[
            "preset",
            "client auth",
            "rotates",
            "reuse grace",
            "idle life",
            "refresh lead",
            "RFC 7009",
        ],
        &rows,
    ))
}

fn days(secs: Option<u64>) -> String {
    secs.map_or_else(|| "-".to_owned(), |s| format!("{}d", s / 86_400))
}

fn auth(auth: ClientAuth) -> &'static str {
    match auth {
        ClientAuth::Basic => "basic",
        ClientAuth::Body => "body",
    }
}

/// `config check`: the file validated, its providers and syncs shown as
/// resolved (presets applied, discovery documents read).
pub async fn check(file: &Path, as_json: bool) -> anyhow::Result<()> {
    match Config::load_and_discover(file).await {
        Ok(loaded) => print_config(&loaded, as_json),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

fn print_config(config: &Config, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let providers: serde_json::Map<String, Value> = config
            .providers
            .iter()
            .map(|(name, p)| {
                let mut value = serde_json::to_value(&p.settings)?;
                value["preset"] = json!(p.preset.as_str());
                value["credentials_secret"] = json!(p.credentials_secret);
                value["authorize_url"] = json!(p.authorize_url.as_str());
                value["token_url"] = json!(p.token_url.as_str());
                value["revocation_url"] = json!(p.revocation_url.as_ref().map(|u| u.as_str()));
                Ok((name.clone(), value))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        let syncs: serde_json::Map<String, Value> = config
            .syncs
            .iter()
            .map(|(name, s)| Ok((name.clone(), serde_json::to_value(s)?)))
            .collect::<Result<_, serde_json::Error>>()?;
        return write_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({"providers": providers, "syncs": syncs}))?
        ));
    }
    let providers: Vec<Vec<String>> = config
        .providers
        .values()
        .map(|p| {
            vec![
                p.name.clone(),
                p.preset.to_string(),
                p.token_url.to_string(),
                p.credentials_secret.clone(),
            ]
        })
        .collect();
    let syncs: Vec<Vec<String>> = config
        .syncs
        .values()
        .map(|s| {
            vec![
                s.name.clone(),
                s.provider.clone(),
                s.endpoint.clone(),
                s.mode.as_str().to_owned(),
                s.cursor_field.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{}s", s.interval_secs),
            ]
        })
        .collect();
    let mut out = String::from("configuration is valid\n\n");
    out.push_str(&table(
        &["provider", "preset", "token endpoint", "credentials secret"],
        &providers,
    ));
    if !syncs.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["sync", "provider", "endpoint", "mode", "cursor field", "every"],
            &syncs,
        ));
    }
    write_out(&out)
}

/// Checks the file exactly as `config check` does, then writes it to the
/// config secret. A file with errors writes nothing.
pub async fn push(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let label = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        // The same error `config check` gives.
        Err(_) => {
            return Err(Config::load_and_discover(file)
                .await
                .err()
                .map_or_else(|| anyhow::anyhow!("cannot read {label}"), Into::into));
        }
    };
    let config = Config::parse_and_discover(&text, &label)
        .await
        .context("nothing was written")?;
    let name = config_secret_name();
    let aws = crate::aws::clients().await;
    SecretStore::new(aws.secrets.clone())
        .put(
            &name,
            &text,
            "oauth-sync configuration (written by `oauth-sync config push`)",
        )
        .await?;
    if as_json {
        let value = serde_json::json!({"secret": name, "file": label, "providers": config.providers.len(), "syncs": config.syncs.len()});
        return write_out(&format!("{value}\n"));
    }
    write_out(&format!(
        "configuration is valid ({} provider(s), {} sync(s)); written to secret `{name}`. The functions read it when \
         they start.\n",
        config.providers.len(),
        config.syncs.len()
    ))
}
