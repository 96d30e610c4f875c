//! Driving the real function binaries from outside, the way an operator, a
//! browser and AWS do: a connect link from the CLI, a login over HTTP up to
//! the callback, and the scheduled event the template's schedules send.
//! Used by `watch-login`, the demo and the cold-start bench.

use std::path::Path;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::stack::{authorize, hidden_fields};

/// A signed connect link from `oauth-sync connect-link`, as an operator
/// makes it (`args` added: `--return-url`, `--label`, …). `root` is the
/// checkout whose `target/debug/oauth-sync` runs.
pub fn connect_link(
    root: &str,
    config: &Path,
    provider: &str,
    connection: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let output = std::process::Command::new(format!("{root}/target/debug/oauth-sync"))
        .arg("--config")
        .arg(config)
        .args([
            "--json",
            "connect-link",
            "--provider",
            provider,
            "--connection",
            connection,
        ])
        .args(args)
        .output()
        .context("running oauth-sync (scripts/stack start --functions builds it)")?;
    ensure!(
        output.status.success(),
        "oauth-sync connect-link: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout)?;
    Ok(json["url"].as_str().context("no url from connect-link")?.to_owned())
}

/// A login over HTTP, as a browser makes it, up to the provider's answer.
#[derive(Debug)]
pub struct AtCallback {
    /// `NAME=VALUE` of the login cookie, for the callback request.
    pub cookie: String,
    pub state: String,
    pub code: String,
    /// `{base}/callback/{provider}?state=…&code=…`.
    pub callback_url: String,
}

/// Follows `link` as a browser does: the confirmation page (200, the
/// `__Host-` login cookie, the form token), its button (`POST
/// {base}/connect/{provider}`, 303 to the provider), and the provider's
/// login. `base` is the callback function's address
/// (`…/lambda-url/oauth-callback`); `http` must not follow redirects.
pub async fn browse_to_callback(
    http: &reqwest::Client,
    link: &str,
    base: &str,
    provider: &str,
) -> anyhow::Result<AtCallback> {
    let confirm = http.get(link).send().await.context("GET the connect link")?;
    ensure!(confirm.status() == 200, "GET /connect answered {}", confirm.status());
    let cookie = confirm
        .headers()
        .get("set-cookie")
        .context("no login cookie")?
        .to_str()?
        .to_owned();
    ensure!(cookie.starts_with("__Host-oauth-sync-login="), "cookie {cookie}");
    let cookie = cookie.split(';').next().unwrap_or_default().to_owned();
    let form = hidden_fields(&confirm.text().await?);
    ensure!(form.contains_key("confirm"), "no form token on the page: {form:?}");

    let connect = http
        .post(format!("{base}/connect/{provider}"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .form(&form)
        .send()
        .await?;
    ensure!(connect.status() == 303, "POST /connect answered {}", connect.status());
    let location = url::Url::parse(connect.headers().get("location").context("no location")?.to_str()?)?;

    let answer = authorize(http, &location).await;
    let state = answer.state.context("no state")?;
    let code = answer.code.context("no code")?;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("state", state.as_str()), ("code", code.as_str())])
        .finish();
    Ok(AtCallback {
        cookie,
        callback_url: format!("{base}/callback/{provider}?{query}"),
        state,
        code,
    })
}

/// An EventBridge scheduled event, as the schedules in infra/template.yaml
/// send it to the refresher and the sync.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0", "id": "scheduled", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-12-01T00:00:00Z", "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:123456789012:rule/schedule"], "detail": {}
    })
}

/// Invokes `function` behind `cargo lambda watch` at `functions` (its
/// runtime API's address) with `event`, as Lambda does; its answer, or an
/// error naming the function and its status.
pub async fn invoke(http: &reqwest::Client, functions: &str, function: &str, event: &Value) -> anyhow::Result<Value> {
    let url = format!("{functions}/2015-03-31/functions/{function}/invocations");
    let response = http
        .post(&url)
        .json(event)
        .send()
        .await
        .with_context(|| format!("invoking {function}"))?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| format!("{function}'s answer"))?;
    ensure!(status.is_success(), "{function} answered {status}: {body}");
    Ok(body)
}

/// A command to the simulator's data API (`POST {simulator}/_sim/data`:
/// seed, insert, update or delete projects); its answer.
pub async fn sim_data(http: &reqwest::Client, simulator: &str, command: &Value) -> anyhow::Result<Value> {
    let response = http.post(format!("{simulator}/_sim/data")).json(command).send().await?;
    ensure!(response.status().is_success(), "simulator: {}", response.status());
    Ok(response.json().await?)
}
