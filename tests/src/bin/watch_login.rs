//! A whole login through the real `oauth-callback` binary behind the Lambda
//! runtime API, as the local stack serves it (`scripts/stack start
//! --functions`: `cargo lambda watch`, function URL events), against the
//! stack's simulator (provider `sim`), twice:
//!
//! 1. with `reqwest` as the browser: the confirmation page, its button, the
//!    provider, the callback, and a replayed callback refused;
//! 2. in headless Chromium driven over WebDriver: the connect link, the
//!    confirmation page, a click on its button, the provider, the callback
//!    page. It saves screenshots of both pages into `target/screenshots/`
//!    (`OAUTH_SYNC_SCREENSHOTS=docs/images` refreshes the copies docs/login.md shows).
//!
//! The connect links come from `oauth-sync connect-link`, as an operator makes
//! them. The function logs at `trace` (`OAUTH_SYNC_FUNCTIONS_RUST_LOG=trace`
//! when the stack starts the functions), and what it wrote during the run
//! must hold none of the codes, states and login cookies seen.
//!
//! Run by `scripts/test` after `cargo test`. Needs the stack's environment
//! with the functions and the stack's own configuration (no
//! `OAUTH_SYNC_CONFIG` of yours), `/usr/bin/chromium` and `/usr/bin/chromedriver`.

use std::io::{Read, Seek};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use oauth_sync_tests::functions::{AtCallback, browse_to_callback, connect_link};
use oauth_sync_tests::stack::RETURN_TO;
use oauth_sync_tests::webdriver::Driver;
use shared::config::Config;
use shared::connection::store::ConnectionStore;
use shared::connection::{ConnectionId, Status};

/// The provider of the stack's own configuration (`scripts/stack`).
const PROVIDER: &str = "sim";
/// Its name on the pages (and in the screenshots).
const DISPLAY_NAME: &str = "Example Books (simulator)";

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

/// The stack's functions, and what the run needs to reach them.
struct Stack {
    root: &'static str,
    /// `…/lambda-url/oauth-callback`.
    base: String,
    config: std::path::PathBuf,
    store: ConnectionStore,
}

impl Stack {
    /// A signed connect link from `oauth-sync connect-link` (`args` added),
    /// served by the stack's functions.
    fn link(&self, connection: &str, args: &[&str]) -> anyhow::Result<String> {
        let url = connect_link(self.root, &self.config, PROVIDER, connection, args)?;
        ensure!(
            url.starts_with(&format!("{}/connect/{PROVIDER}?", self.base)),
            "the link {url} is not served by the stack's functions at {}",
            self.base
        );
        Ok(url)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let base = format!("{}/lambda-url/oauth-callback", env("OAUTH_SYNC_FUNCTIONS_URL")?);
    let config = std::path::PathBuf::from(env("OAUTH_SYNC_CONFIG")?);
    let callback = Config::load(&config)?.service.redirect_uri(PROVIDER);
    ensure!(
        callback.as_ref().map(url::Url::as_str) == Some(format!("{base}/callback/{PROVIDER}").as_str()),
        "{} is not the stack's own configuration (provider `{PROVIDER}` called back at {base}): \
         start the functions without OAUTH_SYNC_CONFIG",
        config.display()
    );
    let aws = shared::aws::AwsClients::from_env();
    let stack = Stack {
        root,
        base: base.clone(),
        config,
        store: ConnectionStore::new(aws.dynamodb.clone(), env(shared::runtime::CONNECTIONS_TABLE_ENV)?),
    };
    // Only what the functions write from here on is searched.
    let log_path = env("OAUTH_SYNC_FUNCTIONS_LOG_FILE")?;
    let log_start = std::fs::metadata(&log_path)
        .with_context(|| format!("the functions' log {log_path}"))?
        .len();
    // Connection ids of this run: the stack's tables outlive it.
    let run = format!("watch-{}", std::process::id());

    shared::http::install_crypto_provider();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let reqwest_id = format!("{run}-1");
    let link = stack.link(&reqwest_id, &["--return-url", RETURN_TO])?;
    no_cors(&http, &link).await?;
    say("another origin: no CORS headers, as the deployed API (no CORS configured) answers");
    let AtCallback {
        cookie: cookie_pair,
        code,
        state,
        callback_url,
    } = browse_to_callback(&http, &link, &base, PROVIDER).await?;
    say("GET /connect: 200, the confirmation page and the login cookie");
    say("POST /connect: 303 to the provider");

    let finish = http.get(&callback_url).header("cookie", &cookie_pair).send().await?;
    ensure!(
        finish.status() == 302,
        "/callback/{PROVIDER} answered {}: {}",
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
        back.starts_with(RETURN_TO) && back.contains("status=connected"),
        "returned to {back}"
    );
    say(&format!("/callback/{PROVIDER}: 302 to {back}"));

    let replay = http.get(&callback_url).header("cookie", &cookie_pair).send().await?;
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
    expect_active(&stack, &reqwest_id).await?;
    say("login with reqwest as the browser: ok (connection active, replay refused)");

    let mut seen = vec![
        code,
        state,
        cookie_pair.split('=').nth(1).unwrap_or_default().to_owned(),
    ];
    seen.extend(in_browser(&stack, &format!("{run}-browser")).await?);

    // The function's own output during the run, at trace level, never holds
    // them. That trace is on, each function said as it started (before the
    // run: shared::telemetry::init), as no line of the crates that trace
    // most (the runtime, the AWS SDK) gets through below info.
    let mut logs = String::new();
    let mut file = std::fs::File::open(&log_path)?;
    ensure!(
        std::io::read_to_string(&file)?.contains("trace logging is on"),
        "the function did not log at trace level: start the functions with OAUTH_SYNC_FUNCTIONS_RUST_LOG=trace"
    );
    file.seek(std::io::SeekFrom::Start(log_start))?;
    file.read_to_string(&mut logs)?;
    for secret in seen.iter().filter(|s| s.len() >= 16) {
        if logs.contains(secret.as_str()) {
            bail!("a code, state or login cookie reached the function's trace log ({log_path})");
        }
    }
    say(&format!(
        "trace logs: {} KiB, no code, state or login cookie in them",
        logs.len() / 1024
    ));
    Ok(())
}

/// The login pages answer another site's script as the deployed API does:
/// without `Access-Control-Allow-*`, so a browser keeps the answer from it.
/// `cargo lambda watch` adds permissive CORS (any origin, with credentials)
/// unless started with `--disable-cors`, as `scripts/stack` does.
async fn no_cors(http: &reqwest::Client, link: &str) -> anyhow::Result<()> {
    const ORIGIN: &str = "https://attacker.example";
    let preflight = http
        .request(reqwest::Method::OPTIONS, link)
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    let get = http.get(link).header("origin", ORIGIN).send().await?;
    for answer in [&preflight, &get] {
        let cors: Vec<_> = answer
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .map(|name| name.as_str().to_owned())
            .collect();
        ensure!(
            cors.is_empty(),
            "{} {link} from {ORIGIN} answered with CORS headers {cors:?}: start cargo lambda watch with --disable-cors",
            answer.status()
        );
    }
    Ok(())
}

async fn expect_active(stack: &Stack, id: &str) -> anyhow::Result<()> {
    let id = ConnectionId::parse(id)?;
    let connection = stack.store.get(&id).await?.context("the connection was not stored")?;
    if connection.status != Status::Active || connection.token_version != 1 {
        bail!("stored {connection:?}");
    }
    Ok(())
}

/// The whole login in headless Chromium; screenshots of the confirmation and
/// callback pages go to `target/screenshots/` (or `$OAUTH_SYNC_SCREENSHOTS`). Returns the code, state and cookie the
/// browser carried, for the log check.
async fn in_browser(stack: &Stack, connection: &str) -> anyhow::Result<Vec<String>> {
    let address = stack.link(
        connection,
        &["--label", "Acme B.V. project sync", "--for", "alice@acme.example"],
    )?;
    let root = stack.root;
    let driver = Driver::start().await?;
    let browser = driver.session().await?;
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
        .wait_for_url("the callback page", |url| {
            url.contains(&format!("/callback/{PROVIDER}?"))
        })
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
    // The browser and its profile go with the driver (on every path out).
    drop(driver);
    expect_active(stack, connection).await?;
    say("login in headless Chromium: ok (connection active)");

    let at = url::Url::parse(&at)?;
    Ok(at
        .query_pairs()
        .filter(|(k, _)| k == "code" || k == "state")
        .map(|(_, v)| v.into_owned())
        .collect())
}
