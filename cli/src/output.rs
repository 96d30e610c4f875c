//! Tables for people, JSON for scripts.

use std::io::Write;

use serde_json::{Value, json};
use shared::config::{ClientAuth, Config, ProviderSettings};

fn write_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
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

fn settings_json(s: &ProviderSettings) -> Value {
    json!({
        "authorize_url": s.authorize_url,
        "token_url": s.token_url,
        "revocation_url": s.revocation_url,
        "params": s.params,
        "client_auth": auth(s.client_auth),
        "scopes": s.scopes,
        "authorize_params": s.authorize_params,
        "pkce": s.pkce,
        "refresh_lead_secs": s.refresh_lead_secs,
        "min_refresh_interval_secs": s.min_refresh_interval_secs,
        "rotates_refresh_tokens": s.rotates_refresh_tokens,
        "reuse_grace_secs": s.reuse_grace_secs,
        "refresh_token_idle_secs": s.refresh_token_idle_secs,
        "default_expires_in_secs": s.default_expires_in_secs,
        "api_base_url": s.api_base_url,
    })
}

pub fn presets(presets: &[(&str, ProviderSettings)], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let map: serde_json::Map<String, Value> = presets
            .iter()
            .map(|(name, s)| ((*name).to_owned(), settings_json(s)))
            .collect();
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

pub fn config(config: &Config, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let providers: serde_json::Map<String, Value> = config
            .providers
            .iter()
            .map(|(name, p)| {
                let mut value = settings_json(&p.settings);
                value["preset"] = json!(p.preset.as_str());
                value["credentials_secret"] = json!(p.credentials_secret);
                value["authorize_url"] = json!(p.authorize_url.as_str());
                value["token_url"] = json!(p.token_url.as_str());
                value["revocation_url"] = json!(p.revocation_url.as_ref().map(|u| u.as_str()));
                (name.clone(), value)
            })
            .collect();
        let syncs: serde_json::Map<String, Value> = config
            .syncs
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    json!({"provider": s.provider, "endpoint": s.endpoint, "mode": format!("{:?}", s.mode).to_lowercase(),
                           "cursor_field": s.cursor_field, "interval_secs": s.interval_secs}),
                )
            })
            .collect();
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
                format!("{:?}", s.mode).to_lowercase(),
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
        out.push_str(&table(&["sync", "provider", "endpoint", "mode", "every"], &syncs));
    }
    write_out(&out)
}

pub fn connect_link(url: &url::Url, claims: &shared::login::ConnectClaims, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let value = json!({
            "url": url.as_str(),
            "provider": claims.provider,
            "connection": claims.connection.as_str(),
            "kind": claims.kind.as_str(),
            "expires_at": claims.expires_at,
        });
        return write_out(&format!("{value}\n"));
    }
    write_out(&format!("{url}\n"))
}
