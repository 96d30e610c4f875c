//! Tables for people, JSON for scripts.

use std::io::Write;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use shared::connection::{Connection, ConnectionId, now_ms};
use shared::sync::jobs::{Job, RunRecord};
use shared::when;

use crate::sync::{JOB_COLUMNS, job_cells, job_json};

pub fn write_out(text: &str) -> anyhow::Result<()> {
    write_bytes(text.as_bytes())
}

fn write_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// The most characters a table cell shows; `--json` has every value whole.
const MAX_CELL: usize = 200;

/// `text` in at most [`MAX_CELL`] characters, cut with `…`.
fn cut_cell(text: &str) -> String {
    if text.chars().count() <= MAX_CELL {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// `text` and spaces up to `width` characters. Padded by hand: a `{:<w$}`
/// width of 65,536 or more panics ("Formatting argument out of range").
pub fn pad(text: &str, width: usize) -> String {
    let mut padded = text.to_owned();
    padded.extend(std::iter::repeat_n(' ', width.saturating_sub(text.chars().count())));
    padded
}

/// Left-aligned columns, two spaces apart; long cells cut ([`MAX_CELL`]).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| cut_cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| pad(c, *w)).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    out
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

/// "in 9 min 30 s", "3 min ago": how far an epoch-ms time is from now.
pub fn relative(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| when::relative(ms, now_ms()))
}

/// How long ago something happened ("just now" also for a time a little
/// ahead: another host's clock, not the future).
pub fn ago(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| when::ago(ms, now_ms()))
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
pub fn connections(list: &[Connection], last_sync: &BTreeMap<String, RunRecord>, as_json: bool) -> anyhow::Result<()> {
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

/// `token`: the token alone on stdout, what it is on stderr; with --json
/// the token route's answer.
pub fn token(
    id: &ConnectionId,
    answer: &shared::api::TokenAnswer,
    expires_at: i64,
    refreshed: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        return write_out(&format!("{}\n", serde_json::to_string(answer)?));
    }
    write_out(&format!("{}\n", answer.access_token))?;
    eprintln!(
        "{id}: token_version {}{}, expires {}",
        answer.token_version,
        if refreshed { " (refreshed now)" } else { "" },
        when::moment(expires_at, now_ms())
    );
    Ok(())
}

/// `proxy`: the status line on stderr and the body as it came on stdout;
/// with --json one object: status, headers, body (JSON when it parses,
/// else text; a binary body only by its size), and whether the token was
/// refreshed after a 401.
pub fn proxied(answer: &shared::api::proxy::ProxyAnswer, as_json: bool) -> anyhow::Result<()> {
    let refreshed = if answer.refreshed {
        " (after one refresh: the provider refused the first token)"
    } else {
        ""
    };
    if !as_json {
        eprintln!("HTTP {}{refreshed}", answer.status);
        write_bytes(&answer.body)?;
        // A terminal's prompt starts on a line of its own; a pipe gets the bytes unchanged.
        if std::io::IsTerminal::is_terminal(&std::io::stdout())
            && !answer.body.ends_with(b"\n")
            && !answer.body.is_empty()
        {
            write_out("\n")?;
        }
        return Ok(());
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &answer.headers {
        let value = json!(String::from_utf8_lossy(value.as_bytes()));
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(value),
            Some(one) => *one = json!([one.take(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    let mut out = json!({
        "status": answer.status,
        "headers": headers,
        "refreshed": answer.refreshed,
    });
    match (
        serde_json::from_slice::<Value>(&answer.body),
        std::str::from_utf8(&answer.body),
    ) {
        (_, Ok("")) => out["body"] = Value::Null,
        (Ok(value), _) => out["body"] = value,
        (Err(_), Ok(text)) => out["body"] = json!(text),
        (Err(_), Err(_)) => {
            out["body"] = Value::Null;
            out["body_bytes"] = json!(answer.body.len());
            out["note"] = json!("a binary body: without --json the bytes go to stdout");
        }
    }
    write_out(&format!("{}\n", serde_json::to_string_pretty(&out)?))
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

/// Text cut to `max` characters, on one line.
pub fn shorten(text: &str, max: usize) -> String {
    let line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// "1.2s", "3m 05s".
pub fn elapsed(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}

/// `jobs`: the job of each configured sync of the connection's provider (or
/// why the sync tables could not be read).
pub fn show(
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
    let mut out = String::new();
    let rows = vec![
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
    let mut rows = rows;
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
    let width = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
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
