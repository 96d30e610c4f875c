//! Tables for people, JSON for scripts.

use std::io::Write;

use std::time::Duration;

use serde_json::{Value, json};
use shared::connection::{ConnectionId, now_ms};
use shared::when;

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

/// "in 9 min 30 s", "3 min ago": how far an epoch-ms time is from now.
pub fn relative(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| when::relative(ms, now_ms()))
}

/// How long ago something happened ("just now" also for a time a little
/// ahead: another host's clock, not the future).
pub fn ago(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| when::ago(ms, now_ms()))
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
