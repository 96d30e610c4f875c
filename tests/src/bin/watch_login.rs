//! A whole login through the real `oauth-callback` binary behind the Lambda
//! runtime API, served by `cargo lambda watch` (function URL events), against
//! the local stack and the simulator. Run by `scripts/test` after
//! `cargo test` (a nested cargo build inside `cargo test` would wait for the
//! build lock).
//!
//! Needs the stack's environment and `.local/venv/bin/cargo-lambda`.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, RETURN_TO, authorize};
use shared::config::PresetName;
use shared::connection::{ConnectionId, Status};

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
    let config = std::env::temp_dir().join(format!("oauth-sync-watch-{}.toml", std::process::id()));
    std::fs::write(&config, &login.config_text)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

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
        .stdout(std::process::Stdio::null())
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
    let base = format!("http://127.0.0.1:{port}/lambda-url/oauth-callback");
    let link = login.link("watch-1");
    let link_query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&link)
        .finish();
    // The first request starts (and if need be builds) the function; wait for the server first.
    let mut answer = None;
    let give_up = std::time::Instant::now() + Duration::from_secs(300);
    while answer.is_none() && std::time::Instant::now() < give_up {
        match http.get(format!("{base}/connect/sim?{link_query}")).send().await {
            Ok(response) => answer = Some(response),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let connect = answer.context("cargo lambda watch did not answer within 300 s")?;
    ensure!(connect.status() == 302, "/connect answered {}", connect.status());
    let cookie = connect
        .headers()
        .get("set-cookie")
        .context("no cookie")?
        .to_str()?
        .to_owned();
    ensure!(cookie.starts_with("__Host-oauth-sync-login="), "cookie {cookie}");
    let location = url::Url::parse(connect.headers().get("location").context("no location")?.to_str()?)?;
    say(&format!(
        "/connect: 302 to the provider, cookie {}",
        cookie.split('=').next().unwrap_or_default()
    ));

    let result = authorize(&login.fixture.oauth.http, &location).await;
    let state = result.state.context("no state")?;
    let code = result.code.context("no code")?;
    let callback: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("state", &state), ("code", &code)])
        .finish();
    let cookie_pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let finish = http
        .get(format!("{base}/callback?{callback}"))
        .header("cookie", &cookie_pair)
        .send()
        .await?;
    ensure!(
        finish.status() == 302,
        "/callback answered {}: {}",
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
    say(&format!("/callback: 302 to {back}"));

    let replay = http
        .get(format!("{base}/callback?{callback}"))
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

    let id = ConnectionId::parse("watch-1")?;
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
    std::fs::remove_file(&config).ok();
    say("login through cargo lambda watch: ok (connection active, replay refused)");
    Ok(())
}
