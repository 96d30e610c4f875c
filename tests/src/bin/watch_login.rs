//! A whole login through the real `oauth-callback` binary behind the Lambda
//! runtime API, served by `cargo lambda watch` (function URL events), against
//! the local stack and the simulator, twice:
//!
//! 1. with `reqwest` as the browser: the confirmation page, its button, the
//!    provider, the callback, and a replayed callback refused;
//! 2. in headless Chromium driven over WebDriver: the connect link, the
//!    confirmation page, a click on its button, the provider, the callback
//!    page. It saves screenshots of both pages into `target/screenshots/`
//!    (`OAUTH_SYNC_SCREENSHOTS=docs/images` refreshes the copies docs/login.md shows).
//!
//! The function logs at `trace` (`RUST_LOG` and `AWS_LAMBDA_LOG_LEVEL`), and
//! its output must hold none of the codes, states and login cookies seen.
//!
//! Run by `scripts/test` after `cargo test` (a nested cargo build inside
//! `cargo test` would wait for the build lock). Needs the stack's environment,
//! `.local/venv/bin/cargo-lambda`, `/usr/bin/chromium` and `/usr/bin/chromedriver`.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{CALLBACK, LoginFixture, authorize, hidden_fields};
use oauth_sync_tests::webdriver::Driver;
use shared::config::PresetName;
use shared::connection::{ConnectionId, Status};

/// The simulator's name on the pages (and in the screenshots).
const DISPLAY_NAME: &str = "Example Books (simulator)";

/// Stops `cargo lambda watch` and the function it started (one process group).
struct Watch(std::process::Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

fn say(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "watch").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}/lambda-url/oauth-callback");
    // The provider sends the browser back to this function, not to the fixture's
    // example address: the real browser follows that redirect.
    let config_text = login
        .config_text
        .replace(CALLBACK, &format!("{base}/callback"))
        .replacen(
            "[providers.sim]\n",
            &format!("[providers.sim]\ndisplay_name = \"{DISPLAY_NAME}\"\n"),
            1,
        );
    let config = std::env::temp_dir().join(format!("oauth-sync-watch-{}.toml", std::process::id()));
    std::fs::write(&config, &config_text)?;
    let log_path = std::env::temp_dir().join(format!("oauth-sync-watch-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)?;

    let mut command = std::process::Command::new(format!("{root}/.local/venv/bin/cargo-lambda"));
    command
        .current_dir(root)
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .arg("--env-var")
        .arg(format!("OAUTH_SYNC_CONFIG={}", config.display()))
        .arg("--env-var")
        .arg(format!(
            "OAUTH_SYNC_CONNECTIONS_TABLE={}",
            login.fixture.connections_table()
        ))
        .arg("--env-var")
        .arg(format!(
            "OAUTH_SYNC_LOGIN_ATTEMPTS_TABLE={}",
            login.fixture.tables["LoginAttemptsTable"]
        ))
        .arg("--env-var")
        .arg(format!(
            "OAUTH_SYNC_SYNC_STATE_TABLE={}",
            login.fixture.tables["SyncStateTable"]
        ))
        .arg("--env-var")
        .arg(format!(
            "OAUTH_SYNC_SYNC_RUNS_TABLE={}",
            login.fixture.tables["SyncRunsTable"]
        ))
        // The most verbose logging there is: no level may print a code, state or cookie.
        .args(["--env-var", "RUST_LOG=trace", "--env-var", "AWS_LAMBDA_LOG_LEVEL=TRACE"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    for var in [
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    ] {
        command.arg("--env-var").arg(format!(
            "{var}={}",
            std::env::var(var).with_context(|| format!("{var}: start the stack"))?
        ));
    }
    let _watch = Watch(
        command
            .spawn()
            .context("starting cargo lambda watch (scripts/bootstrap installs it)")?,
    );

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(900))
        .build()?;
    let query = |pairs: &BTreeMap<String, String>| -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    let link = login.link("watch-1");
    // The first request starts (and if need be builds) the function; wait for the server first.
    let mut answer = None;
    let give_up = std::time::Instant::now() + Duration::from_secs(300);
    while answer.is_none() && std::time::Instant::now() < give_up {
        match http.get(format!("{base}/connect/sim?{}", query(&link))).send().await {
            Ok(response) => answer = Some(response),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let confirm = answer.context("cargo lambda watch did not answer within 300 s")?;
    ensure!(confirm.status() == 200, "GET /connect answered {}", confirm.status());
    let cookie = confirm
        .headers()
        .get("set-cookie")
        .context("no cookie")?
        .to_str()?
        .to_owned();
    ensure!(cookie.starts_with("__Host-oauth-sync-login="), "cookie {cookie}");
    let cookie_pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let form = hidden_fields(&confirm.text().await?);
    ensure!(form.contains_key("confirm"), "no form token on the page: {form:?}");
    say("GET /connect: 200, the confirmation page and the login cookie");

    let connect = http
        .post(format!("{base}/connect/sim"))
        .header("cookie", &cookie_pair)
        .header("sec-fetch-site", "same-origin")
        .form(&form)
        .send()
        .await?;
    ensure!(connect.status() == 303, "POST /connect answered {}", connect.status());
    let location = url::Url::parse(connect.headers().get("location").context("no location")?.to_str()?)?;
    say("POST /connect: 303 to the provider");

    let result = authorize(&login.fixture.oauth.http, &location).await;
    let state = result.state.context("no state")?;
    let code = result.code.context("no code")?;
    let callback = query(
        &[("state", &state), ("code", &code)]
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .into(),
    );
    let finish = http
        .get(format!("{base}/callback/sim?{callback}"))
        .header("cookie", &cookie_pair)
        .send()
        .await?;
    ensure!(
        finish.status() == 302,
        "/callback/sim answered {}: {}",
        finish.status(),
        finish.text().await.unwrap_or_default()
    );
    let back = finish
        .headers()
        .get("location")
        .context("no location")?
        .to_str()?
        .to_owned();
    ensure!(
        back.starts_with(oauth_sync_tests::stack::RETURN_TO) && back.contains("status=connected"),
        "returned to {back}"
    );
    say(&format!("/callback/sim: 302 to {back}"));

    let replay = http
        .get(format!("{base}/callback/sim?{callback}"))
        .header("cookie", &cookie_pair)
        .send()
        .await?;
    ensure!(
        replay.status() == 400,
        "a replayed callback answered {}",
        replay.status()
    );
    let page = replay.text().await?;
    ensure!(
        page.contains("already used") && !page.contains(&code),
        "replay page: {page}"
    );
    expect_active(&login, "watch-1").await?;
    say("login with reqwest as the browser: ok (connection active, replay refused)");

    let mut seen = vec![
        code,
        state,
        cookie_pair.split('=').nth(1).unwrap_or_default().to_owned(),
    ];
    seen.extend(in_browser(&login, &base, root).await?);

    // The function's own output, at trace level, never holds them.
    let logs = std::fs::read_to_string(&log_path)?;
    ensure!(
        logs.contains("TRACE") || logs.contains("\"level\":\"TRACE\""),
        "the function did not log at trace level; is RUST_LOG passed?"
    );
    for secret in seen.iter().filter(|s| s.len() >= 16) {
        if logs.contains(secret.as_str()) {
            bail!(
                "a code, state or login cookie reached the function's trace log ({})",
                log_path.display()
            );
        }
    }
    say(&format!(
        "trace logs: {} KiB, no code, state or login cookie in them",
        logs.len() / 1024
    ));
    std::fs::remove_file(&config).ok();
    std::fs::remove_file(&log_path).ok();
    Ok(())
}

async fn expect_active(login: &LoginFixture, id: &str) -> anyhow::Result<()> {
    let id = ConnectionId::parse(id)?;
    let connection = login
        .fixture
        .service
        .store()
        .get(&id)
        .await?
        .context("the connection was not stored")?;
    if connection.status != Status::Active || connection.token_version != 1 {
        bail!("stored {connection:?}");
    }
    Ok(())
}

/// The whole login in headless Chromium; screenshots of the confirmation and
/// callback pages go to `target/screenshots/` (or `$OAUTH_SYNC_SCREENSHOTS`). Returns the code, state and cookie the
/// browser carried, for the log check.
async fn in_browser(login: &LoginFixture, base: &str, root: &str) -> anyhow::Result<Vec<String>> {
    let link = login.link_labelled("watch-browser", "Acme B.V. project sync", Some("alice@acme.example"));
    let address = format!(
        "{base}/connect/sim?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&link)
            .finish()
    );
    let driver = Driver::start().await?;
    let profile = std::env::temp_dir().join(format!("oauth-sync-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&profile)?;
    let browser = driver.session(&profile).await?;
    // Every run takes the screenshots (their reference ids differ); only a run
    // asked to refresh docs/images (shown by docs/login.md) writes them into the checkout.
    let images = match std::env::var_os("OAUTH_SYNC_SCREENSHOTS") {
        Some(dir) => Path::new(root).join(dir),
        None => Path::new(root).join("target/screenshots"),
    };
    std::fs::create_dir_all(&images)?;

    browser.go(&address).await?;
    let page = browser.source().await?;
    ensure!(
        page.contains(&format!(
            "Connect your <strong>{DISPLAY_NAME}</strong> account to <strong>Acme B.V. project sync</strong>"
        )) && page.contains("alice@acme.example"),
        "the confirmation page: {page}"
    );
    browser.screenshot(&images.join("login-confirm.png")).await?;
    say(&format!(
        "chromium: the confirmation page ({})",
        images.join("login-confirm.png").display()
    ));

    // The page's CSP names the provider in `form-action`: without it Chromium
    // refuses the 303 that follows the POST, and the browser stays here.
    browser.click("#connect").await?;
    let at = browser
        .wait_for_url("the callback page", |url| url.contains("/callback/sim?"))
        .await?;
    let page = browser.source().await?;
    ensure!(
        page.contains("<h1>Connected</h1>") && page.contains("account is connected"),
        "the callback page at {at}: {page}"
    );
    browser.screenshot(&images.join("login-connected.png")).await?;
    say(&format!(
        "chromium: the click, the provider, the callback page ({})",
        images.join("login-connected.png").display()
    ));
    browser.quit().await?;
    drop(driver);
    std::fs::remove_dir_all(&profile).ok();
    expect_active(login, "watch-browser").await?;
    say("login in headless Chromium: ok (connection active)");

    let at = url::Url::parse(&at)?;
    Ok(at
        .query_pairs()
        .filter(|(k, _)| k == "code" || k == "state")
        .map(|(_, v)| v.into_owned())
        .collect())
}
