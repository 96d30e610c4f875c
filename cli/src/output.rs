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

pub fn presets(presets: &[(&str, ProviderSettings)], as_json: bool) -> anyhow::Result<()> {
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

pub fn config(config: &Config, as_json: bool) -> anyhow::Result<()> {
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

/// "in 5m", "3h ago": how far an epoch-ms time is from now.
fn relative(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".to_owned() };
    let delta = (ms - shared::connection::now_ms()) / 1000;
    let (amount, unit) = match delta.unsigned_abs() {
        s if s < 120 => (s, "s"),
        s if s < 7_200 => (s / 60, "m"),
        s if s < 172_800 => (s / 3_600, "h"),
        s => (s / 86_400, "d"),
    };
    if delta >= 0 {
        format!("in {amount}{unit}")
    } else {
        format!("{amount}{unit} ago")
    }
}

fn connection_json(c: &shared::connection::Connection) -> Value {
    json!({
        "id": c.id.as_str(),
        "provider": c.provider,
        "kind": c.kind.as_str(),
        "status": c.status.as_str(),
        "status_reason": c.status_reason,
        "provider_message": c.provider_message,
        "token_version": c.token_version,
        "has_access_token": c.access_token.is_some(),
        "has_refresh_token": c.refresh_token.is_some(),
        "access_expires_at": c.access_expires_at,
        "scopes": c.scopes,
        "last_refresh_at": c.last_refresh_at,
        "last_refresh_outcome": c.last_refresh_outcome,
        "consecutive_failures": c.consecutive_failures,
        "next_attempt_at": c.next_attempt_at,
        "refresh_due_at": c.refresh_due_at,
        "lease_owner": c.lease.as_ref().map(|l| l.owner.clone()),
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "revoked_at": c.revoked_at,
    })
}

pub fn connections(list: &[shared::connection::Connection], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<Value> = list.iter().map(connection_json).collect();
        return write_out(&format!("{}\n", serde_json::to_string_pretty(&values)?));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.provider.clone(),
                c.status.as_str().to_owned() + &c.status_reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
                c.token_version.to_string(),
                relative(c.access_expires_at),
                format!(
                    "{} {}",
                    relative(c.last_refresh_at),
                    c.last_refresh_outcome.as_deref().unwrap_or_default()
                )
                .trim()
                .to_owned(),
                "-".to_owned(),
            ]
        })
        .collect();
    write_out(&table(
        &[
            "connection",
            "provider",
            "status",
            "version",
            "access token expires",
            "last refresh",
            "last sync",
        ],
        &rows,
    ))
}

pub fn refreshed(
    id: &shared::connection::ConnectionId,
    fresh: &shared::refresh::Fresh,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        let value = json!({"id": id.as_str(), "token_version": fresh.token_version, "expires_at": fresh.expires_at, "refreshed": fresh.refreshed});
        return write_out(&format!("{value}\n"));
    }
    let how = if fresh.refreshed {
        "refreshed"
    } else {
        "refreshed meanwhile by another worker"
    };
    write_out(&format!(
        "{id}: {how}; token_version {}, access token expires {}\n",
        fresh.token_version,
        relative(Some(fresh.expires_at))
    ))
}

pub fn revoked(
    id: &shared::connection::ConnectionId,
    revoked: shared::refresh::Revoked,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        return write_out(&format!(
            "{}\n",
            json!({"id": id.as_str(), "at_provider": revoked.at_provider, "already": revoked.already})
        ));
    }
    let text = match (revoked.already, revoked.at_provider) {
        (true, _) => format!("{id} was already revoked\n"),
        (false, true) => format!("{id}: revoked at the provider, tokens erased\n"),
        (false, false) => format!(
            "{id}: tokens erased; the provider has no revocation endpoint, so also remove the app's access in the provider's settings\n"
        ),
    };
    write_out(&text)
}

pub fn findings(findings: &[shared::doctor::Finding], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return write_out(&format!("{}\n", serde_json::to_string_pretty(findings)?));
    }
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            let verdict = match f.verdict {
                shared::doctor::Verdict::Ok => "ok",
                shared::doctor::Verdict::Warn => "warn",
                shared::doctor::Verdict::Fail => "FAIL",
            };
            vec![
                f.subject.clone(),
                f.check.to_owned(),
                verdict.to_owned(),
                f.detail.clone(),
            ]
        })
        .collect();
    write_out(&table(&["subject", "check", "result", "detail"], &rows))
}
