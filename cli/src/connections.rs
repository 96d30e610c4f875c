//! `list`, `show`, `refresh`, `revoke` and `connect-link`: the connections,
//! read and acted on. A connection is shown with its status, its tokens'
//! times and what its login learned, never its tokens.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use shared::config::Config;
use shared::connection::{Connection, ConnectionId, ConnectionKind, now_ms};
use shared::login::{LinkKeys, LinkOrder, parse_lifetime};
use shared::secrets::SecretStore;
use shared::sync::jobs::{Job, RunRecord, job_id};
use shared::when;

use crate::args::LinkRequest;
use crate::output::{ago, pad, relative, table, write_out};
use crate::sync::{JOB_COLUMNS, job_cells, job_json};
use crate::{job_store, store, token_service};

/// `list`: every connection, with the last run of its syncs when the
/// sync-state table is known.
pub async fn list(config_file: PathBuf, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load_and_discover(&config_file).await?;
    let (aws, store) = store().await?;
    let connections = store.list().await?;
    // The newest run of each connection's jobs, when syncs are configured
    // and the sync-state table is known.
    let mut last_sync: BTreeMap<String, RunRecord> = BTreeMap::new();
    if !config.syncs.is_empty()
        && let Ok(jobs) = job_store(&aws)
    {
        for job in jobs.all().await? {
            if let Some(run) = job.last_run {
                let newer = last_sync
                    .get(job.connection.as_str())
                    .is_none_or(|known| known.finished_at < run.finished_at);
                if newer {
                    last_sync.insert(job.connection.as_str().to_owned(), run);
                }
            }
        }
    }
    print_connections(&connections, &last_sync, as_json)
}

/// `show ID`: one connection and the job of each sync of its provider.
pub async fn show(config_file: PathBuf, id: &str, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load_and_discover(&config_file).await?;
    let (aws, store) = store().await?;
    let id = ConnectionId::parse(id)?;
    let connection = store
        .get(&id)
        .await?
        .with_context(|| format!("connection {id} does not exist"))?;
    let syncs: Vec<&str> = config
        .syncs
        .values()
        .filter(|s| s.provider == connection.provider)
        .map(|s| s.name.as_str())
        .collect();
    // Without the sync tables' names the connection is still shown, with why
    // its syncs are not.
    let jobs = if syncs.is_empty() {
        Ok(Vec::new())
    } else {
        match job_store(&aws) {
            Ok(jobs) => {
                let mut found = Vec::new();
                for sync in syncs {
                    found.push((sync.to_owned(), jobs.get(&job_id(&id, sync)).await?));
                }
                Ok(found)
            }
            Err(e) => Err(format!("{e:#}")),
        }
    };
    print_connection(&connection, &jobs, as_json)
}

/// `refresh ID`: a refresh now, through the refresh protocol.
pub async fn refresh(config_file: PathBuf, id: &str, as_json: bool) -> anyhow::Result<()> {
    let service = token_service(&config_file).await?;
    let id = ConnectionId::parse(id)?;
    let fresh = service
        .refresh_now(&id, Instant::now() + Duration::from_secs(60))
        .await?;
    print_refreshed(&id, &fresh, as_json)
}

/// `revoke ID`: revoked at the provider (RFC 7009) where it can be, the
/// tokens erased.
pub async fn revoke(config_file: PathBuf, id: &str, as_json: bool) -> anyhow::Result<()> {
    let service = token_service(&config_file).await?;
    let id = ConnectionId::parse(id)?;
    let revoked = service.revoke(&id).await?;
    print_revoked(&id, revoked, as_json)
}

/// Checks everything it can before touching AWS (the same checks as the
/// API's `POST /links`: [`LinkOrder::claims`]), then signs with the link key.
pub async fn connect_link(config_file: PathBuf, request: LinkRequest, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load_and_discover(&config_file).await?;
    let lifetime = parse_lifetime(&request.expires).context("--expires")?;
    let order = LinkOrder {
        provider: request.provider,
        connection: Some(request.connection),
        kind: if request.shared {
            ConnectionKind::Shared
        } else {
            ConnectionKind::PerUser
        },
        return_url: request.return_url,
        lifetime,
        label: request.label,
        user: request.user,
    };
    let claims = order.claims(&config, now_ms()).map_err(|e| {
        let flag = match e.field {
            "provider" => "PROVIDER",
            "connection" => "--connection",
            "return_url" => "--return-url",
            "expires_in" => "--expires",
            "label" => "--label",
            "for" => "--for",
            other => other,
        };
        anyhow::anyhow!("{flag}: {}", e.reason)
    })?;
    let aws = crate::aws::clients().await;
    let secret = &config.service.link_key_secret;
    let text = SecretStore::new(aws.secrets).text(secret).await?;
    let keys = LinkKeys::from_json(&text).with_context(|| format!("link key secret `{secret}`"))?;
    let url = keys.connect_url(config.service.callback_url.as_ref(), &claims)?;
    print_link(&url, &claims, as_json)
}

/// A connection's status as people read it: the reason when it has one, and
/// an active connection without a refresh token marked as such, with when it
/// stops working (nothing can refresh it: it needs a new login by then).
fn status_text(c: &Connection) -> String {
    let mut text = c.status.as_str().to_owned();
    if let Some(reason) = &c.status_reason {
        text.push_str(&format!(" ({reason})"));
    }
    if c.status == shared::connection::Status::Active && c.refresh_token.is_none() {
        let when = c.access_expires_at.map_or_else(
            || "when its access token expires".to_owned(),
            |at| when::moment(at, now_ms()),
        );
        text.push_str(&format!(", no refresh token — stops working {when}"));
    }
    text
}

fn connection_json(c: &Connection) -> Value {
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
        "outcome_unknown_since": c.outcome_unknown_since,
        "outcome_unknown_resent_at": c.outcome_unknown_resent_at,
        "refresh_due_at": c.refresh_due_at,
        "params": c.params,
        "param_error": c.param_error,
        "lease_owner": c.lease.as_ref().map(|l| l.owner.clone()),
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "revoked_at": c.revoked_at,
    })
}

/// `last_sync`: the newest run of each connection's sync jobs, by connection id.
fn print_connections(
    list: &[Connection],
    last_sync: &BTreeMap<String, RunRecord>,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<Value> = list
            .iter()
            .map(|c| {
                let mut value = connection_json(c);
                value["last_sync"] = json!(last_sync.get(c.id.as_str()));
                value
            })
            .collect();
        return write_out(&format!("{}\n", serde_json::to_string_pretty(&values)?));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.provider.clone(),
                status_text(c),
                c.token_version.to_string(),
                relative(c.access_expires_at),
                ago(c.last_refresh_at),
                c.last_refresh_outcome.clone().unwrap_or_else(|| "-".to_owned()),
                last_sync.get(c.id.as_str()).map_or_else(
                    || "-".to_owned(),
                    |run| format!("{} {}", run.status, ago(Some(run.finished_at))),
                ),
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
            "refresh outcome",
            "last sync",
        ],
        &rows,
    ))
}

/// `jobs`: the job of each configured sync of the connection's provider (or
/// why the sync tables could not be read).
fn print_connection(
    connection: &Connection,
    jobs: &Result<Vec<(String, Option<Job>)>, String>,
    as_json: bool,
) -> anyhow::Result<()> {
    let now = now_ms();
    if as_json {
        let mut value = connection_json(connection);
        match jobs {
            Ok(jobs) => {
                value["syncs"] = jobs
                    .iter()
                    .map(|(sync, job)| json!({"sync": sync, "job": job.as_ref().map(|job| job_json(job, now))}))
                    .collect();
            }
            Err(why) => value["syncs_error"] = json!(why),
        }
        return write_out(&format!("{}\n", serde_json::to_string_pretty(&[value])?));
    }
    let rows = connection_rows(connection);
    let width = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        out.push_str(&format!("{}  {value}\n", pad(&format!("{key}:"), width)));
    }
    match jobs {
        Ok(jobs) if jobs.is_empty() => {}
        Ok(jobs) => {
            out.push('\n');
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|(sync, job)| {
                    let mut row = vec![sync.clone()];
                    match job {
                        Some(job) => row.extend(job_cells(job, now)),
                        None => row.push("no job yet: a login creates it, or `oauth-sync sync run`".to_owned()),
                    }
                    row
                })
                .collect();
            let mut header = vec!["sync"];
            header.extend(JOB_COLUMNS);
            out.push_str(&table(&header, &rows));
        }
        Err(why) => out.push_str(&format!("\nsyncs: not shown: {why}\n")),
    }
    write_out(&out)
}

/// `show`'s lines: what the connection is, its tokens' times, what its
/// login learned, and a refresh whose outcome is not known yet.
fn connection_rows(connection: &Connection) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("connection", connection.id.to_string()),
        ("provider", connection.provider.clone()),
        ("kind", connection.kind.as_str().to_owned()),
        ("status", status_text(connection)),
        (
            "provider message",
            connection.provider_message.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("token version", connection.token_version.to_string()),
        ("access token expires", relative(connection.access_expires_at)),
        ("last refresh", ago(connection.last_refresh_at)),
        (
            "last refresh outcome",
            connection
                .last_refresh_outcome
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ),
        ("next refresh due", relative(connection.refresh_due_at)),
        (
            "scopes",
            if connection.scopes.is_empty() {
                "-".to_owned()
            } else {
                connection.scopes.join(" ")
            },
        ),
        (
            "params",
            if connection.params.is_empty() {
                "-".to_owned()
            } else {
                connection
                    .params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ];
    if let Some(since) = connection.outcome_unknown_since {
        let resend = match connection.outcome_unknown_resent_at {
            Some(at) => format!("its one resend started {}", ago(Some(at))),
            None => "the old token goes once more".to_owned(),
        };
        rows.push((
            "refresh outcome",
            format!("unknown for a refresh sent {}; {resend}", ago(Some(since))),
        ));
    }
    if let Some(error) = &connection.param_error {
        rows.push(("param error", error.clone()));
    }
    rows
}

fn print_refreshed(
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

fn print_revoked(
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

fn print_link(url: &url::Url, claims: &shared::login::ConnectClaims, as_json: bool) -> anyhow::Result<()> {
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
