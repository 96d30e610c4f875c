//! The operator's application's API through the real `api` binary behind the
//! Lambda runtime API, as the local stack serves it (`scripts/stack start
//! --functions`: `cargo lambda watch`, function URL events; locally there is
//! no API Gateway, so no SigV4), against the stack's simulator (provider
//! `sim`), over HTTP as an application calls it:
//!
//! a link from `POST /links` and a login through it; the connection from
//! `GET /connections/{id}`; a token from `POST /connections/{id}/token` that
//! works at the provider; the provider's projects through the proxy; a sync
//! run asked for with `POST /syncs/…/run` and done by the real `sync`
//! binary; the records since the start from `GET /records/…`, then, after an
//! upstream insert, update and delete and another run, exactly those three
//! since the stored cursor; bad input refused with the field named; a revoke.
//! What the functions wrote to their log during the run must hold none of
//! the tokens handed out.
//!
//! Run by `scripts/test` after `watch-login`. Needs the stack's environment
//! with the functions and the stack's own configuration.

use std::time::Duration;

use anyhow::{Context, ensure};
use oauth_sync_tests::functions::{browse_to_callback, invoke, scheduled_event, sim_data};
use oauth_sync_tests::stack::RETURN_TO;
use serde_json::{Value, json};

const PROVIDER: &str = "sim";

fn say(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name}: start the functions (scripts/stack start --functions) and source the stack's env file")
    })
}

struct Client {
    http: reqwest::Client,
    functions: String,
    simulator: String,
}

impl Client {
    /// `METHOD /path` of the API; its status, `Cache-Control` and JSON body.
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/lambda-url/api{path}", self.functions));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let cache = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ensure!(
            cache.as_deref() == Some("no-store"),
            "{method} {path}: Cache-Control {cache:?}"
        );
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn invoke(&self, function: &str) -> anyhow::Result<Value> {
        invoke(&self.http, &self.functions, function, &scheduled_event()).await
    }

    async fn sim_data(&self, command: Value) -> anyhow::Result<Value> {
        sim_data(&self.http, &self.simulator, &command).await
    }

    /// Every change since `cursor`, `limit` a page: (id, change), and the cursor after them.
    async fn changes(&self, id: &str, cursor: &str, limit: u32) -> anyhow::Result<(Vec<(String, String)>, String)> {
        let mut seen = Vec::new();
        let mut cursor = cursor.to_owned();
        loop {
            let path = format!("/records/{id}/projects?since={cursor}&limit={limit}");
            let (status, page) = self.api(reqwest::Method::GET, &path, None).await?;
            ensure!(status == 200, "GET {path}: {status} {page}");
            for record in page["records"].as_array().cloned().unwrap_or_default() {
                seen.push((
                    record["id"].as_str().unwrap_or_default().to_owned(),
                    record["change"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            cursor = page["next_cursor"].as_str().context("no next_cursor")?.to_owned();
            if page["has_more"] != true {
                return Ok((seen, cursor));
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    use reqwest::Method;
    shared::http::install_crypto_provider();
    let client = Client {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()?,
        functions: env("OAUTH_SYNC_FUNCTIONS_URL")?,
        simulator: env("OAUTH_SYNC_SIMULATOR_URL")?,
    };
    let log_path = env("OAUTH_SYNC_FUNCTIONS_LOG_FILE")?;
    let log_start = std::fs::metadata(&log_path)
        .with_context(|| format!("the functions' log {log_path}"))?
        .len();
    let id = format!("api-{}", std::process::id());

    // A link from the API, and a login through it.
    let (status, link) = client
        .api(
            Method::POST,
            "/links",
            Some(json!({"provider": PROVIDER, "connection": id, "return_url": RETURN_TO, "label": "Acme"})),
        )
        .await?;
    ensure!(status == 201, "POST /links: {status} {link}");
    let url = link["url"].as_str().context("no url")?;
    let base = url.split("/connect/").next().unwrap_or_default();
    let at = browse_to_callback(&client.http, url, base, PROVIDER).await?;
    let finish = client
        .http
        .get(&at.callback_url)
        .header("cookie", &at.cookie)
        .send()
        .await?;
    ensure!(finish.status() == 302, "/callback answered {}", finish.status());
    say("POST /links: 201, and a login through the link");

    let (status, shown) = client.api(Method::GET, &format!("/connections/{id}"), None).await?;
    ensure!(
        status == 200 && shown["status"] == "active",
        "GET /connections/{id}: {status} {shown}"
    );
    say("GET /connections/{id}: 200, active");

    // A token that works at the provider.
    let (status, token) = client
        .api(
            Method::POST,
            &format!("/connections/{id}/token"),
            Some(json!({"min_valid_secs": 60})),
        )
        .await?;
    ensure!(status == 200, "POST /connections/{id}/token: {status} {token}");
    let access = token["access_token"].as_str().context("no access_token")?.to_owned();
    let me = client
        .http
        .get(format!("{}/api/v1/current/Me", client.simulator))
        .bearer_auth(&access)
        .header("accept", "application/json")
        .send()
        .await?;
    ensure!(
        me.status() == 200,
        "the token is refused by the provider: {}",
        me.status()
    );
    say("POST /connections/{id}/token: 200, Cache-Control: no-store, the token works at the provider");

    // The provider's projects through the proxy.
    let seeded = client.sim_data(json!({"op": "seed_projects", "count": 12})).await?;
    let projects: Vec<String> = serde_json::from_value(seeded["ids"].clone())?;
    let proxied = client
        .http
        .get(format!(
            "{}/lambda-url/api/proxy/{id}/project/Projects?$select=ID,Code",
            client.functions
        ))
        .header("accept", "application/json")
        .header("authorization", "AWS4-HMAC-SHA256 the caller's own, never forwarded")
        .send()
        .await?;
    let status = proxied.status();
    let body = proxied.text().await?;
    ensure!(
        status == 200 && projects.iter().all(|p| body.contains(p.as_str())),
        "GET /proxy/{id}/project/Projects: {status} {body}"
    );
    say("GET /proxy/{id}/project/Projects: 200, the provider's projects");

    // Run now; the sync binary picks the job up.
    let (status, job) = client
        .api(Method::POST, &format!("/syncs/{id}/projects/run"), None)
        .await?;
    ensure!(status == 202, "POST /syncs/{id}/projects/run: {status} {job}");
    client.invoke("sync").await?;
    let (status, job) = client.api(Method::GET, &format!("/syncs/{id}/projects"), None).await?;
    ensure!(
        status == 200 && job["last_run"]["status"] == "finished",
        "GET /syncs/{id}/projects: {status} {job}"
    );
    let (first, cursor) = client.changes(&id, "", 5).await?;
    ensure!(
        first.len() >= projects.len() && first.iter().all(|(_, c)| c == "inserted"),
        "{first:?}"
    );
    say(&format!(
        "POST /syncs/{{id}}/projects/run: 202; the sync ran; GET /records: {} inserted",
        first.len()
    ));

    // Three upstream changes, another run, and exactly those since the cursor.
    let added = client
        .sim_data(json!({"op": "insert_project", "code": "P-API", "description": "new"}))
        .await?;
    let added = added["id"].as_str().context("id")?.to_owned();
    client
        .sim_data(json!({"op": "update_project", "id": projects[0], "description": "renamed"}))
        .await?;
    client
        .sim_data(json!({"op": "delete_project", "id": projects[1]}))
        .await?;
    client
        .api(Method::POST, &format!("/syncs/{id}/projects/run"), None)
        .await?;
    client.invoke("sync").await?;
    let (since, _) = client.changes(&id, &cursor, 2).await?;
    let mut since = since;
    since.sort();
    let mut expected = vec![
        (added, "inserted".to_owned()),
        (projects[0].clone(), "updated".to_owned()),
    ];
    expected.sort();
    // The incremental sync sees the insert and the update; Exact's deleted
    // feed is not configured on the stack's sync, so the delete is not seen.
    ensure!(since == expected, "since the cursor: {since:?}, expected {expected:?}");
    say("GET /records?since=CURSOR: exactly the insert and the update made upstream since");

    // Bad input: the field named, nothing changed.
    let (status, error) = client
        .api(
            Method::POST,
            "/links",
            Some(json!({"provider": PROVIDER, "return_url": "https://evil.example/"})),
        )
        .await?;
    ensure!(
        status == 400 && error["message"].as_str().is_some_and(|m| m.starts_with("return_url")),
        "{status} {error}"
    );
    let (status, _) = client.api(Method::GET, "/connections/nobody-here", None).await?;
    ensure!(status == 404, "unknown connection: {status}");
    say("bad input: 400 naming the field; an unknown connection: 404");

    let (status, revoked) = client.api(Method::DELETE, &format!("/connections/{id}"), None).await?;
    ensure!(status == 200 && revoked["status"] == "revoked", "{status} {revoked}");
    let (status, error) = client
        .api(Method::POST, &format!("/connections/{id}/token"), None)
        .await?;
    ensure!(status == 409 && error["error"] == "needs_login", "{status} {error}");
    say("DELETE /connections/{id}: revoked; its token route answers 409");

    let mut log = std::fs::File::open(&log_path)?;
    std::io::Seek::seek(&mut log, std::io::SeekFrom::Start(log_start))?;
    let mut written = String::new();
    std::io::Read::read_to_string(&mut log, &mut written)?;
    ensure!(
        !written.contains(&access),
        "the token handed out reached the functions' log"
    );
    say("the functions' log holds no token handed out");
    Ok(())
}
