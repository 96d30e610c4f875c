//! `token` and `proxy`: the API's token and proxy routes (docs/api.md) from
//! the operator's terminal, through the same code: a token from
//! [`TokenService::access_token_valid_for`], a provider call through
//! [`Proxy::forward`] on the provider's shared rate budget. Every argument
//! is checked before anything touches AWS; the token goes to stdout only.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use shared::api::proxy::{Proxy, ProxyRequest};
use shared::api::{ApiError, MAX_MIN_VALID_SECS, TokenAnswer};
use shared::config::Config;
use shared::connection::{ConnectionId, now_ms};
use shared::refresh::{RefreshSettings, TokenService};
use shared::secrets::SecretStore;

use crate::output::{write_bytes, write_out};

/// How long one command may take: a refresh, then a request and its one retry.
const DEADLINE: Duration = Duration::from_secs(90);

/// The methods `proxy` sends (those of an HTTP API's `ANY` route).
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// `oauth-sync token ID`: a token valid for at least `min_valid`.
pub async fn token(config_file: &Path, id: &str, min_valid: &str, as_json: bool) -> anyhow::Result<()> {
    let min_valid = crate::parse_duration(min_valid).context("--min-valid")?;
    anyhow::ensure!(
        min_valid.as_secs() <= MAX_MIN_VALID_SECS,
        "--min-valid: at most {MAX_MIN_VALID_SECS}s (1h): a token is asked for just before it is used"
    );
    let id = ConnectionId::parse(id).context("ID")?;
    let service = crate::token_service(config_file).await?;
    let fresh = service
        .access_token_valid_for(&id, min_valid, Instant::now() + DEADLINE)
        .await?;
    // The token route's answer, field for field.
    let answer = TokenAnswer {
        access_token: fresh.access_token.secret().to_owned(),
        token_type: "Bearer",
        expires_at: shared::when::rfc3339(fresh.expires_at),
        expires_in: (fresh.expires_at - now_ms()) / 1000,
        token_version: fresh.token_version,
    };
    print_token(&id, &answer, fresh.expires_at, fresh.refreshed, as_json)
}

/// `token`: the token alone on stdout, what it is on stderr; with --json
/// the token route's answer.
fn print_token(
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
        shared::when::moment(expires_at, now_ms())
    );
    Ok(())
}

/// What `oauth-sync proxy` was given.
#[derive(Debug)]
pub struct ProxyArgs {
    pub id: String,
    pub method: String,
    /// `/project/Projects?$select=ID,Code`: below the provider's `api_base_url`.
    pub target: String,
    /// `Name: value`, as typed.
    pub headers: Vec<String>,
    /// `@FILE`, `-` (stdin) or the body itself.
    pub data: Option<String>,
}

/// `oauth-sync proxy ID METHOD /path`: the answer's status line on stderr,
/// its body on stdout; fails on a 4xx or 5xx.
pub async fn proxy(config_file: &Path, args: ProxyArgs, as_json: bool) -> anyhow::Result<()> {
    let id = ConnectionId::parse(&args.id).context("ID")?;
    let request = proxy_request(&args)?;
    let config = Arc::new(Config::load_and_discover(config_file).await?);
    let (aws, store) = crate::store().await?;
    // The budget lives in the sync-state table, beside the jobs that draw on it.
    let jobs = crate::job_store(&aws)?;
    let tokens = TokenService::load(
        config,
        store,
        SecretStore::new(aws.secrets.clone()),
        RefreshSettings::default(),
    )
    .await?;
    let proxy = Proxy::new(Arc::new(tokens), jobs.budget())?;
    let answer = proxy
        .forward(&id, request, Instant::now() + DEADLINE)
        .await
        .map_err(|e| anyhow::anyhow!(describe(&e)))?;
    print_proxied(&answer, as_json)?;
    anyhow::ensure!(
        answer.status < 400,
        "the provider answered HTTP {} (its answer is above)",
        answer.status
    );
    Ok(())
}

/// `proxy`: the status line on stderr and the body as it came on stdout;
/// with --json one object: status, headers, body (JSON when it parses,
/// else text; a binary body only by its size), and whether the token was
/// refreshed after a 401.
fn print_proxied(answer: &shared::api::proxy::ProxyAnswer, as_json: bool) -> anyhow::Result<()> {
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

/// The request `args` describe, or what is wrong with them, named by the
/// argument (METHOD, PATH, --header, --data).
fn proxy_request(args: &ProxyArgs) -> anyhow::Result<ProxyRequest> {
    let method = args.method.to_ascii_uppercase();
    anyhow::ensure!(
        METHODS.contains(&method.as_str()),
        "METHOD: `{}` is not one of {}",
        args.method,
        METHODS.join(", ")
    );
    let (path, query) = target(&args.target)?;
    let mut headers: HashMap<String, String> = HashMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .filter(|(name, _)| !name.trim().is_empty())
            .with_context(|| format!("--header: `{}` is not `Name: value`", shorten(header)))?;
        let name = name.trim().to_ascii_lowercase();
        if name == "authorization" {
            eprintln!("--header {name}: not forwarded; the proxy sends the connection's own token");
        }
        // Repeated names become one list, as RFC 9110 §5.3 allows.
        headers
            .entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value.trim());
            })
            .or_insert_with(|| value.trim().to_owned());
    }
    let body = match args.data.as_deref() {
        None => Vec::new(),
        Some("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("--data -: reading stdin")?;
            body
        }
        Some(text) => match text.strip_prefix('@') {
            Some(file) => std::fs::read(file).with_context(|| format!("--data @{file}"))?,
            None => text.as_bytes().to_vec(),
        },
    };
    if !body.is_empty()
        && !headers.contains_key("content-type")
        && serde_json::from_slice::<serde_json::Value>(&body).is_ok()
    {
        headers.insert("content-type".to_owned(), "application/json".to_owned());
    }
    Ok(ProxyRequest {
        method: method.parse().context("METHOD")?,
        path,
        query,
        headers: (&headers).try_into().map_err(|e| {
            anyhow::anyhow!("--header: {e} (names are letters, digits and `-`; values are visible ASCII)")
        })?,
        body,
    })
}

/// `/project/Projects?$select=ID` as the proxy's path (without its leading
/// `/`) and query; a URL is refused: the proxy adds the provider's origin.
fn target(text: &str) -> anyhow::Result<(String, Option<String>)> {
    anyhow::ensure!(
        !text.contains("://"),
        "PATH: `{}` is a URL; give the path below the provider's api_base_url (`/project/Projects`)",
        shorten(text)
    );
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned()).filter(|q| !q.is_empty())),
        None => (text, None),
    };
    Ok((path.trim_start_matches('/').to_owned(), query))
}

/// An [`ApiError`] as the CLI says it: the field named as its argument, and
/// when to try again.
fn describe(error: &ApiError) -> String {
    let mut text = match error {
        ApiError::BadInput { field, message } => {
            let argument = match field.as_str() {
                "path" => "PATH",
                "connection" => "ID",
                other => other,
            };
            format!("{argument}: {message}")
        }
        other => other.to_string(),
    };
    if let Some(secs) = error.retry_after_secs() {
        text.push_str(&format!(" (retry after {secs}s)"));
    }
    text
}

/// At most 80 characters of what the operator typed, for an error message.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 80 {
        return text.to_owned();
    }
    let cut: String = text.chars().take(79).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(method: &str, target: &str, headers: &[&str], data: Option<&str>) -> ProxyArgs {
        ProxyArgs {
            id: "acme".to_owned(),
            method: method.to_owned(),
            target: target.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            data: data.map(str::to_owned),
        }
    }

    #[test]
    fn a_request_is_built_from_the_arguments() {
        let request = proxy_request(&args(
            "get",
            "/project/Projects?$select=ID,Code",
            &["Accept: application/json", "Prefer:  x", "prefer: y"],
            None,
        ))
        .expect("valid");
        assert_eq!(request.method.as_str(), "GET");
        assert_eq!(request.path, "project/Projects");
        assert_eq!(request.query.as_deref(), Some("$select=ID,Code"));
        assert_eq!(
            request.headers.get("accept").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_eq!(
            request.headers.get("prefer").and_then(|v| v.to_str().ok()),
            Some("x, y")
        );
        assert!(request.body.is_empty());

        let request = proxy_request(&args("POST", "crm/Accounts", &[], Some(r#"{"Name": "A"}"#))).expect("valid");
        assert_eq!(
            (request.path.as_str(), request.query.as_deref()),
            ("crm/Accounts", None)
        );
        assert_eq!(
            request.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "a JSON body is sent as JSON"
        );
        let request = proxy_request(&args("POST", "/x", &[], Some("a=b"))).expect("valid");
        assert!(request.headers.get("content-type").is_none(), "other bodies: as told");
        assert_eq!(request.body, b"a=b");
    }

    #[test]
    fn bad_arguments_are_named() {
        let error = |a: ProxyArgs| proxy_request(&a).map(|_| ()).unwrap_err().to_string();
        assert!(error(args("GTE", "/x", &[], None)).starts_with("METHOD: `GTE` is not one of GET"));
        assert!(error(args("GET", "https://evil.example/x", &[], None)).starts_with("PATH: "));
        assert!(error(args("GET", "/x", &["no colon"], None)).starts_with("--header: `no colon`"));
        assert!(error(args("GET", "/x", &[": v"], None)).starts_with("--header: "));
        assert!(error(args("GET", "/x", &["Bad Name: v"], None)).starts_with("--header: "));
        assert!(error(args("GET", "/x", &[], Some("@/nonexistent/body.json"))).starts_with("--data @/nonexistent"));
    }

    #[test]
    fn api_errors_name_the_argument_and_when_to_come_back() {
        assert_eq!(
            describe(&ApiError::bad(
                "path",
                "the target must stay below the provider's API (/api/)"
            )),
            "PATH: the target must stay below the provider's API (/api/)"
        );
        assert_eq!(
            describe(&ApiError::RateLimited {
                message: "spent".to_owned(),
                retry_after_secs: 12
            }),
            "spent (retry after 12s)"
        );
    }
}
