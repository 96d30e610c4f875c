//! For tests that run against the local stack started by `scripts/stack`:
//! AWS clients pointed at it (through the standard `AWS_ENDPOINT_URL_*`
//! variables the script exports) and a private set of tables per test.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use shared::aws::AwsClients;

use crate::simulator::{SimConfig, Simulator, SimulatorHandle};
use crate::template::{create_tables, template_path};

const NOT_RUNNING: &str = "the local stack is not running: run the README's test command (scripts/test), \
     or `scripts/stack start` and `. .local/stack.env` before `cargo test`";

/// AWS clients for the local stack. Panics with the fix when it is not running:
/// these tests never pass by skipping.
pub async fn aws() -> AwsClients {
    for var in ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SECRETS_MANAGER"] {
        let value = std::env::var(var).unwrap_or_default();
        assert!(
            value.starts_with("http://127.0.0.1:"),
            "{var} is `{value}`; {NOT_RUNNING}"
        );
    }
    AwsClients::from_env().await
}

/// A unique prefix so parallel tests never see each other's items.
pub fn unique_prefix(test: &str) -> String {
    #[allow(clippy::expect_used)]
    let random = shared::crypto::random_token().expect("rng");
    format!("t-{test}-{}-", &random[..8].replace(['-', '_'], "x"))
}

/// Creates the template's tables under a fresh prefix; logical id → name.
pub async fn fresh_tables(clients: &AwsClients, test: &str) -> BTreeMap<String, String> {
    let prefix = unique_prefix(test);
    match create_tables(&clients.dynamodb, &template_path(), &prefix).await {
        Ok(names) => names,
        Err(e) => panic!("{e}; {NOT_RUNNING}"),
    }
}

/// Starts a simulator on a free loopback port.
pub async fn simulator(config: SimConfig) -> SimulatorHandle {
    #[allow(clippy::expect_used)]
    Simulator::start(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind a loopback port")
}

/// A provider of the simulator's preset whose endpoints are the simulator.
pub fn provider_for(sim: &SimulatorHandle) -> shared::config::Provider {
    let preset = sim.sim.config().preset;
    let base = &sim.base_url;
    let text = format!(
        "[providers.sim]\npreset = \"{preset}\"\ncredentials_secret = \"unused\"\n\
         authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nrevocation_url = \"{base}/revoke\"\n"
    );
    match shared::config::Config::parse(&text, "simulator.toml") {
        Ok(mut config) => config.providers.remove("sim").unwrap_or_else(|| unreachable!()),
        Err(e) => panic!("{e}"),
    }
}

/// The client credentials the simulator accepts.
pub fn credentials_for(sim: &SimulatorHandle) -> shared::oauth::ClientCredentials {
    let config = sim.sim.config();
    shared::oauth::ClientCredentials {
        client_id: config.client_id,
        client_secret: shared::secret::ClientSecret::new(config.client_secret),
    }
}

/// The redirect URI tests use; nothing listens there, the code is read from
/// the simulator's redirect.
pub const REDIRECT_URI: &str = "https://callback.example/callback";

/// What the simulator's `/authorize` redirected to: a code, or an error.
#[derive(Debug)]
pub struct AuthorizeResult {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// The browser's part of a login, headless: open the authorize URL and read
/// the redirect.
pub async fn authorize(http: &reqwest::Client, url: &url::Url) -> AuthorizeResult {
    let response = http
        .get(url.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("authorize: {e}"));
    assert_eq!(response.status(), 302, "authorize should redirect");
    let location = response.headers()["location"].to_str().unwrap_or_default().to_owned();
    let location = url::Url::parse(&location).unwrap_or_else(|e| panic!("redirect {location}: {e}"));
    let get = |key: &str| {
        location
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    AuthorizeResult {
        code: get("code"),
        state: get("state"),
        error: get("error"),
    }
}

/// A whole login against the simulator: authorize with PKCE, then exchange the code.
pub async fn login(sim: &SimulatorHandle, http: &reqwest::Client) -> shared::oauth::TokenSet {
    let provider = provider_for(sim);
    let credentials = credentials_for(sim);
    #[allow(clippy::expect_used)]
    let pkce = shared::crypto::Pkce::generate().expect("rng");
    let url = shared::oauth::authorize_url(
        &provider,
        &credentials.client_id,
        REDIRECT_URI,
        "st",
        Some(&pkce.challenge),
    );
    let code = authorize(http, &url).await.code.unwrap_or_else(|| panic!("no code"));
    let endpoint = shared::oauth::TokenEndpoint {
        provider: &provider,
        credentials: &credentials,
        http,
    };
    endpoint
        .exchange_code(
            &shared::secret::AuthorizationCode::new(code),
            REDIRECT_URI,
            Some(&pkce.verifier),
        )
        .await
        .unwrap_or_else(|e| panic!("code exchange: {e}"))
}

/// An HTTP client like the product's (no redirects), with this timeout.
pub fn http(timeout: std::time::Duration) -> reqwest::Client {
    #[allow(clippy::expect_used)]
    shared::oauth::http_client(timeout).expect("http client")
}

/// A simulator with the product's OAuth client set up against it.
#[derive(Debug)]
pub struct OauthFixture {
    pub sim: SimulatorHandle,
    pub http: reqwest::Client,
    pub provider: shared::config::Provider,
    pub credentials: shared::oauth::ClientCredentials,
}

impl OauthFixture {
    /// Starts a simulator; the client's calls time out after `timeout`.
    pub async fn start(config: SimConfig, timeout: std::time::Duration) -> OauthFixture {
        let sim = simulator(config).await;
        let provider = provider_for(&sim);
        let credentials = credentials_for(&sim);
        OauthFixture {
            sim,
            http: http(timeout),
            provider,
            credentials,
        }
    }

    pub fn endpoint(&self) -> shared::oauth::TokenEndpoint<'_> {
        shared::oauth::TokenEndpoint {
            provider: &self.provider,
            credentials: &self.credentials,
            http: &self.http,
        }
    }

    /// A whole login: authorize with PKCE, exchange the code.
    pub async fn login(&self) -> shared::oauth::TokenSet {
        login(&self.sim, &self.http).await
    }

    /// Does the simulator's API accept this access token?
    pub async fn api_accepts(&self, token: &str) -> bool {
        let response = self.http.get(self.sim.url("/api/me")).bearer_auth(token).send().await;
        response
            .unwrap_or_else(|e| panic!("api call: {e}"))
            .status()
            .is_success()
    }
}
