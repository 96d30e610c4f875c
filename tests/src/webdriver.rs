//! Just enough of the W3C WebDriver protocol to drive headless Chromium
//! through chromedriver with the HTTP client we already have: a session,
//! navigation, finding and clicking an element, the current URL, the page
//! source and screenshots. No WebDriver crate for six endpoints.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian's `chromium` and `chromium-driver` packages put them
/// (`scripts/bootstrap` installs them).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process in a process group of its own, with the Chromium
/// it starts and the browser profile Chromium writes; when dropped, the
/// whole group is stopped and then the profile removed, so a failed test
/// leaves no browser and no profile behind.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    /// Dropped after `drop` below has stopped the browser that writes into it.
    profile: Profile,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
        // Chromium's processes may outlive chromedriver by a moment, and one
        // still running could write into the profile after it is removed.
        let give_up = Instant::now() + Duration::from_secs(5);
        while Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            if Instant::now() > give_up {
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A fresh Chromium profile directory under the system's temporary
/// directory, removed with everything in it when dropped (whether the test
/// passed, failed or panicked).
#[derive(Debug)]
struct Profile(PathBuf);

impl Profile {
    fn create() -> anyhow::Result<Profile> {
        let random = shared::crypto::random_token().context("a random profile name")?;
        let path = std::env::temp_dir().join(format!("oauth-sync-chromium-{}-{}", std::process::id(), &random[..12]));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Profile(path))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is ready.
    pub async fn start() -> anyhow::Result<Driver> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER} (scripts/bootstrap installs chromium-driver)"))?;
        shared::http::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http,
            profile: Profile::create()?,
        };
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(status) = ready
                && status.await.is_ok_and(|s| s["value"]["ready"] == true)
            {
                return Ok(driver);
            }
            if Instant::now() > give_up {
                bail!("chromedriver did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A new headless Chromium session with the driver's fresh profile (one
    /// session at a time).
    pub async fn session(&self) -> anyhow::Result<Session> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Containers often have a tiny /dev/shm.
            "--disable-dev-shm-usage",
            "--window-size=900,640",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("--user-data-dir={}", self.profile.0.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
                }
            }
        });
        let answer = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(capabilities),
        )
        .await?;
        let id = answer["sessionId"]
            .as_str()
            .context("no session id in the answer to New Session")?
            .to_owned();
        Ok(Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
        })
    }
}

/// One browser session. [`Session::quit`] ends it; chromedriver's exit ends it too.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        call(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    /// Navigates and waits for the page to load.
    pub async fn go(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        let value = self.call(reqwest::Method::GET, "/url", None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    pub async fn source(&self) -> anyhow::Result<String> {
        let value = self.call(reqwest::Method::GET, "/source", None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Clicks the element the CSS selector finds first.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await
            .with_context(|| format!("finding `{css}`"))?;
        let element = found[ELEMENT].as_str().context("no element reference")?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Waits until the current URL satisfies `done` (a click's navigation may
    /// still be under way when the click returns).
    pub async fn wait_for_url(&self, what: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let give_up = Instant::now() + Duration::from_secs(120);
        loop {
            let url = self.current_url().await?;
            if done(&url) {
                return Ok(url);
            }
            if Instant::now() > give_up {
                bail!("the browser did not reach {what} within 120 s; it is at {url}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG screenshot of the viewport.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let value = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap_or_default())?;
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    pub async fn quit(self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "", None).await.map(drop)
    }
}

/// One WebDriver command: its `value`, or the WebDriver error as an error.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("WebDriver {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.context("WebDriver answered without JSON")?;
    if !status.is_success() {
        bail!(
            "WebDriver {url}: {} {}",
            answer["value"]["error"].as_str().unwrap_or("error"),
            answer["value"]["message"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
        );
    }
    Ok(answer["value"].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_removed_with_what_was_written_into_it() {
        let profile = Profile::create().expect("create");
        let path = profile.0.clone();
        assert!(path.starts_with(std::env::temp_dir()), "{}", path.display());
        std::fs::create_dir_all(path.join("Default/Cache")).expect("mkdir");
        std::fs::write(path.join("Default/Cache/data_0"), b"written by the browser").expect("write");
        assert_ne!(Profile::create().expect("another").0, path, "each profile is fresh");
        drop(profile);
        assert!(!path.exists(), "{} is left behind", path.display());
    }

    #[test]
    fn a_profile_is_removed_when_a_test_panics() {
        let path = std::panic::catch_unwind(|| {
            let profile = Profile::create().expect("create");
            std::fs::write(profile.0.join("Local State"), b"{}").expect("write");
            std::panic::panic_any(profile.0.clone());
        })
        .expect_err("it panicked")
        .downcast::<PathBuf>()
        .expect("the profile's path");
        assert!(!path.exists(), "{} is left behind", path.display());
    }
}
