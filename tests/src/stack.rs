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
    AwsClients::from_env()
}

/// A unique prefix so parallel tests never see each other's items.
pub fn unique_prefix(test: &str) -> String {
    #[allow(clippy::expect_used)]
    let random = shared::crypto::random_token().expect("rng");
    format!("t-{test}-{}-", &random[..8].replace(['-', '_'], "x"))
}

/// A DynamoDB client of the stack's configuration that sends to `url` (a
/// [`crate::proxy::DynamoProxy`]).
pub fn dynamodb_via(url: &str) -> aws_sdk_dynamodb::Client {
    let sdk = shared::aws::sdk_config_from_env();
    aws_sdk_dynamodb::Client::from_conf(aws_sdk_dynamodb::config::Builder::from(&sdk).endpoint_url(url).build())
}

/// Creates the template's tables under a fresh prefix; logical id → name.
pub async fn fresh_tables(clients: &AwsClients, test: &str) -> BTreeMap<String, String> {
    let prefix = unique_prefix(test);
    match create_tables(&clients.dynamodb, &template_path(), &prefix).await {
        Ok(names) => names,
        Err(e) => panic!("{e}; {NOT_RUNNING}"),
    }
}

/// Creates a secret in the Secrets Manager emulator.
pub async fn create_secret(aws: &AwsClients, name: &str, value: String) {
    #[allow(clippy::expect_used)]
    aws.secrets
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create secret");
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
    /// RFC 9207's issuer, when the provider sends it.
    pub iss: Option<String>,
}

impl AuthorizeResult {
    /// The query the browser brings to `/callback`.
    pub fn callback_query(&self) -> BTreeMap<String, String> {
        [
            ("state", &self.state),
            ("code", &self.code),
            ("error", &self.error),
            ("iss", &self.iss),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key.to_owned(), v)))
        .collect()
    }
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
        iss: get("iss"),
    }
}

/// The hidden inputs of a page the callback function wrote (name, then value,
/// escaped): what its form posts back.
pub fn hidden_fields(page: &str) -> BTreeMap<String, String> {
    let unescape = |t: &str| {
        t.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    page.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once("\" value=\"")?;
            let (value, _) = rest.split_once('"')?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
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
    shared::http::client(timeout, shared::http::Pooling::Off).expect("http client")
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

/// Everything a refresh-protocol test needs: a simulator, private tables,
/// the client credentials and a token key ring in the Secrets Manager
/// emulator, a configuration pointing at the simulator, and a `TokenService`.
#[derive(Debug)]
pub struct RefreshFixture {
    pub oauth: OauthFixture,
    pub aws: AwsClients,
    pub tables: BTreeMap<String, String>,
    /// The configuration text, for worker processes.
    pub config_text: String,
    pub config: std::sync::Arc<shared::config::Config>,
    pub service: std::sync::Arc<shared::refresh::TokenService>,
}

/// The provider name the fixture's configuration uses.
pub const PROVIDER: &str = "sim";

impl RefreshFixture {
    /// `overrides` are extra lines for the `[providers.sim]` table.
    pub async fn start(
        sim: SimConfig,
        settings: shared::refresh::RefreshSettings,
        overrides: &str,
        test: &str,
    ) -> RefreshFixture {
        RefreshFixture::start_with(sim, settings, |_| overrides.to_owned(), test).await
    }

    /// Like [`RefreshFixture::start`], with the overrides made from the
    /// simulator's base URL (they may end with more tables, such as syncs).
    pub async fn start_with(
        sim: SimConfig,
        settings: shared::refresh::RefreshSettings,
        overrides: impl FnOnce(&str) -> String,
        test: &str,
    ) -> RefreshFixture {
        let oauth = OauthFixture::start(sim, std::time::Duration::from_secs(10)).await;
        let mut overrides = overrides(&oauth.sim.base_url);
        if oauth.sim.sim.config().preset == shared::config::PresetName::ExactOnline && !overrides.contains("discover =")
        {
            // Every test stays on loopback: the division comes from the simulator.
            overrides = format!(
                "discover = {{ division = {{ url = \"{}/api/v1/current/Me?$select=CurrentDivision\", field = \"d.results.0.CurrentDivision\" }} }}\n{overrides}",
                oauth.sim.base_url
            );
        }
        let aws = aws().await;
        let tables = fresh_tables(&aws, test).await;
        let prefix = unique_prefix(test);
        let credentials_secret = format!("{prefix}credentials");
        let keys_secret = format!("{prefix}keys");
        let credentials = serde_json::json!({
            "client_id": oauth.credentials.client_id,
            "client_secret": oauth.credentials.client_secret.secret(),
        });
        create_secret(&aws, &credentials_secret, credentials.to_string()).await;
        create_secret(
            &aws,
            &keys_secret,
            shared::crypto::KeyRing::generate_json("k1").expect("rng"),
        )
        .await;
        let base = &oauth.sim.base_url;
        let preset = oauth.sim.sim.config().preset;
        let config_text = format!(
            "[service]\ntoken_key_secret = \"{keys_secret}\"\n\n[providers.{PROVIDER}]\npreset = \"{preset}\"\n\
             credentials_secret = \"{credentials_secret}\"\nauthorize_url = \"{base}/authorize\"\n\
             token_url = \"{base}/token\"\nrevocation_url = \"{base}/revoke\"\n{overrides}\n"
        );
        let config = std::sync::Arc::new(
            shared::config::Config::parse(&config_text, "fixture.toml").unwrap_or_else(|e| panic!("{e}")),
        );
        let store = shared::connection::store::ConnectionStore::new(aws.dynamodb.clone(), &tables["ConnectionsTable"]);
        let service = shared::refresh::TokenService::load(
            config.clone(),
            store,
            shared::secrets::SecretStore::new(aws.secrets.clone()),
            settings,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        RefreshFixture {
            oauth,
            aws,
            tables,
            config_text,
            config,
            service: std::sync::Arc::new(service),
        }
    }

    pub fn sim(&self) -> &std::sync::Arc<Simulator> {
        &self.oauth.sim.sim
    }

    pub fn connections_table(&self) -> &str {
        &self.tables["ConnectionsTable"]
    }

    /// A second `TokenService` on the same tables and configuration whose
    /// DynamoDB traffic goes to `dynamodb_url` (a fault proxy).
    pub async fn service_via(
        &self,
        dynamodb_url: &str,
        settings: shared::refresh::RefreshSettings,
    ) -> shared::refresh::TokenService {
        let store =
            shared::connection::store::ConnectionStore::new(dynamodb_via(dynamodb_url), self.connections_table());
        shared::refresh::TokenService::load(
            self.config.clone(),
            store,
            shared::secrets::SecretStore::new(self.aws.secrets.clone()),
            settings,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Logs in at the simulator and stores the tokens as connection `id`.
    pub async fn connect(&self, id: &str) -> shared::connection::ConnectionId {
        let id = shared::connection::ConnectionId::parse(id).expect("connection id");
        let tokens = self.oauth.login().await;
        let kind = shared::connection::ConnectionKind::Shared;
        self.service
            .save_login(&id, PROVIDER, kind, &tokens, None)
            .await
            .expect("save login");
        id
    }

    /// Logs in `count` connections named `{prefix}-N` whose refresh-due
    /// shard is `shard` ([`ids_in_shard`]), one after the other.
    pub async fn connect_in_shard(
        &self,
        prefix: &str,
        shard: &str,
        count: usize,
    ) -> Vec<shared::connection::ConnectionId> {
        let mut ids = Vec::with_capacity(count);
        for name in ids_in_shard(prefix, shard, count) {
            ids.push(self.connect(&name).await);
        }
        ids
    }

    /// Logs in `n` connections named `{prefix}-N` (`concurrency` logins at a time).
    pub async fn connect_many(self: &std::sync::Arc<Self>, prefix: &str, n: usize, concurrency: usize) {
        // At most `concurrency` tasks exist at a time: a task per connection
        // spawned up front made the allocator the bottleneck at 100,000.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            while tasks.len() >= concurrency.max(1) {
                if let Some(result) = tasks.join_next().await {
                    result.expect("login");
                }
            }
            let (fixture, id) = (self.clone(), format!("{prefix}-{i}"));
            tasks.spawn(async move {
                fixture.connect(&id).await;
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.expect("login");
        }
    }

    /// The stored connection, read consistently.
    pub async fn connection(&self, id: &shared::connection::ConnectionId) -> shared::connection::Connection {
        self.service
            .store()
            .get(id)
            .await
            .expect("read")
            .expect("the connection exists")
    }

    /// The stored refresh token, decrypted.
    pub async fn stored_refresh_token(&self, id: &shared::connection::ConnectionId) -> shared::secret::RefreshToken {
        let connection = self.connection(id).await;
        let sealed = connection.refresh_token.expect("a refresh token");
        shared::secret::RefreshToken::new(
            self.service
                .keys()
                .await
                .expect("the key ring")
                .open(id.as_str(), "refresh_token", &sealed.0)
                .expect("open"),
        )
    }

    /// Do the stored tokens work? The access token is the newest the provider
    /// issued to a family it has not revoked (nothing was lost), and the
    /// refresh token works at the token endpoint (which spends it: call last).
    pub async fn stored_tokens_work(&self, id: &shared::connection::ConnectionId) -> bool {
        let connection = self.connection(id).await;
        let sealed = connection.access_token.expect("an access token");
        let access = self
            .service
            .keys()
            .await
            .expect("the key ring")
            .open(id.as_str(), "access_token", &sealed.0)
            .expect("open");
        let refresh = self.stored_refresh_token(id).await;
        // Whether the access token is the family's newest, not whether it is
        // still live: a test's short-lived tokens may expire before the check.
        self.sim().is_latest_access_token(&access) && self.oauth.endpoint().refresh(&refresh).await.is_ok()
    }
}

/// `count` ids named `{prefix}-N` whose refresh-due shard is `shard`.
pub fn ids_in_shard(prefix: &str, shard: &str, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|name| shared::connection::ConnectionId::parse(name).is_ok_and(|id| id.due_shard() == shard))
        .take(count)
        .collect()
}

/// A deadline this many seconds away.
pub fn deadline(secs: u64) -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(secs)
}

pub const CALLBACK: &str = "https://auth.example.com/prod/callback";
pub const RETURN_TO: &str = "https://app.example.com/integrations/done";

/// A refresh fixture plus the login side: a link key in Secrets Manager and a
/// configuration with a callback URL and a return-URL allow-list.
#[derive(Debug)]
pub struct LoginFixture {
    pub fixture: RefreshFixture,
    pub links: shared::login::LinkKeys,
    pub config: std::sync::Arc<shared::config::Config>,
    /// The whole configuration text (service settings included).
    pub config_text: String,
}

impl LoginFixture {
    pub async fn start(sim: SimConfig, test: &str) -> LoginFixture {
        let fixture = RefreshFixture::start(sim, shared::refresh::RefreshSettings::default(), "", test).await;
        let secret = format!("{}link-key", unique_prefix(test));
        let key = shared::crypto::KeyRing::generate_json("l1").expect("rng");
        create_secret(&fixture.aws, &secret, key.clone()).await;
        let text = fixture.config_text.replace(
            "[service]\n",
            &format!(
                "[service]\nlink_key_secret = \"{secret}\"\ncallback_url = \"{CALLBACK}\"\n\
                 return_url_allow_list = [\"https://app.example.com/integrations\"]\n"
            ),
        );
        let config =
            std::sync::Arc::new(shared::config::Config::parse(&text, "login.toml").unwrap_or_else(|e| panic!("{e}")));
        LoginFixture {
            links: shared::login::LinkKeys::from_json(&key).expect("keys"),
            fixture,
            config,
            config_text: text,
        }
    }

    pub async fn service(&self, ttl: std::time::Duration) -> shared::login::flow::LoginService {
        let attempts = shared::login::attempts::AttemptStore::new(
            self.fixture.aws.dynamodb.clone(),
            &self.fixture.tables["LoginAttemptsTable"],
        );
        let secrets = shared::secrets::SecretStore::new(self.fixture.aws.secrets.clone());
        shared::login::flow::LoginService::load(
            self.config.clone(),
            self.fixture.service.clone(),
            attempts,
            &secrets,
            ttl,
        )
        .await
        .expect("login service")
    }

    /// A login service whose configuration is this fixture's, edited by `edit`
    /// (another provider, an issuer); the token service stays the fixture's.
    pub async fn service_with(
        &self,
        edit: impl FnOnce(&str) -> String,
        ttl: std::time::Duration,
    ) -> shared::login::flow::LoginService {
        let text = edit(&self.config_text);
        let config =
            std::sync::Arc::new(shared::config::Config::parse(&text, "login.toml").unwrap_or_else(|e| panic!("{e}")));
        self.service_for(config, ttl).await
    }

    /// This fixture's configuration with the provider's endpoints left to
    /// OpenID Connect discovery at `issuer`, and `extra` lines in its table.
    pub fn config_discovering(&self, issuer: &str, extra: &str) -> String {
        let kept: Vec<&str> = self
            .config_text
            .lines()
            .filter(|l| {
                !["authorize_url =", "token_url =", "revocation_url ="]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect();
        kept.join("\n").replacen(
            &format!("[providers.{PROVIDER}]\n"),
            &format!("[providers.{PROVIDER}]\nissuer = \"{issuer}\"\n{extra}"),
            1,
        ) + "\n"
    }

    /// A login service on `config` (one loaded with discovery); the token
    /// service stays the fixture's.
    pub async fn service_for(
        &self,
        config: std::sync::Arc<shared::config::Config>,
        ttl: std::time::Duration,
    ) -> shared::login::flow::LoginService {
        let attempts = shared::login::attempts::AttemptStore::new(
            self.fixture.aws.dynamodb.clone(),
            &self.fixture.tables["LoginAttemptsTable"],
        );
        let secrets = shared::secrets::SecretStore::new(self.fixture.aws.secrets.clone());
        shared::login::flow::LoginService::load(config, self.fixture.service.clone(), attempts, &secrets, ttl)
            .await
            .expect("login service")
    }

    /// The query of a fresh connect link for `connection`.
    pub fn link(&self, connection: &str) -> BTreeMap<String, String> {
        self.link_made(
            connection,
            shared::connection::now_ms(),
            shared::connection::now_ms() / 1000 + 600,
        )
    }

    /// A correctly signed link that expires at `expires_at` (epoch seconds).
    pub fn link_expiring(&self, connection: &str, expires_at: i64) -> BTreeMap<String, String> {
        self.link_made(connection, shared::connection::now_ms() - 7_200_000, expires_at)
    }

    /// A correctly signed link made at `issued_at` (epoch ms), expiring at `expires_at` (epoch s).
    pub fn link_made(&self, connection: &str, issued_at: i64, expires_at: i64) -> BTreeMap<String, String> {
        self.signed(&shared::login::ConnectClaims {
            provider: PROVIDER.to_owned(),
            connection: shared::connection::ConnectionId::parse(connection).expect("id"),
            kind: shared::connection::ConnectionKind::PerUser,
            return_url: Some(url::Url::parse(RETURN_TO).expect("url")),
            issued_at,
            expires_at,
            label: None,
            user: None,
        })
    }

    /// A fresh link that names what it connects and for whom, and sends the
    /// person to no return URL (the callback shows its own page).
    pub fn link_labelled(&self, connection: &str, label: &str, user: Option<&str>) -> BTreeMap<String, String> {
        let now = shared::connection::now_ms();
        self.signed(&shared::login::ConnectClaims {
            provider: PROVIDER.to_owned(),
            connection: shared::connection::ConnectionId::parse(connection).expect("id"),
            kind: shared::connection::ConnectionKind::PerUser,
            return_url: None,
            issued_at: now,
            expires_at: now / 1000 + 600,
            label: Some(label.to_owned()),
            user: user.map(str::to_owned),
        })
    }

    /// The query of the link with these claims.
    pub fn signed(&self, claims: &shared::login::ConnectClaims) -> BTreeMap<String, String> {
        let callback = url::Url::parse(CALLBACK).expect("url");
        let url = self.links.connect_url(Some(&callback), claims).expect("link");
        assert_eq!(url.path(), "/prod/connect/sim");
        url.query_pairs().into_owned().collect()
    }

    /// `/connect` (page and button), then the provider's headless approval: the callback's query and the cookie.
    pub async fn to_callback(
        &self,
        service: &shared::login::flow::LoginService,
        connection: &str,
    ) -> (BTreeMap<String, String>, String) {
        self.to_callback_via(service, &self.link(connection)).await
    }

    /// The confirmation page's answer (`GET /connect`), then its button
    /// (`POST /connect`): where the browser goes, and its cookie.
    pub async fn begin(
        &self,
        service: &shared::login::flow::LoginService,
        link: &BTreeMap<String, String>,
    ) -> Result<shared::login::flow::Begin, shared::login::flow::LoginError> {
        let confirm = service.confirm(PROVIDER, link, None).await?;
        service.begin(PROVIDER, &confirm.form(), Some(&confirm.cookie)).await
    }

    /// `/connect` (page and button) again in the browser holding `cookie`.
    pub async fn begin_with_cookie(
        &self,
        service: &shared::login::flow::LoginService,
        link: &BTreeMap<String, String>,
        cookie: &str,
    ) -> Result<shared::login::flow::Begin, shared::login::flow::LoginError> {
        let confirm = service.confirm(PROVIDER, link, Some(cookie)).await?;
        service.begin(PROVIDER, &confirm.form(), Some(&confirm.cookie)).await
    }

    /// `/connect` (page and button) with this link, then the provider's headless approval.
    pub async fn to_callback_via(
        &self,
        service: &shared::login::flow::LoginService,
        link: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, String) {
        let begin = self.begin(service, link).await.expect("begin");
        assert!(begin.location.as_str().starts_with(&self.fixture.oauth.sim.base_url));
        let query = authorize(&self.fixture.oauth.http, &begin.location)
            .await
            .callback_query();
        assert!(query.contains_key("state"), "the state comes back");
        (query, begin.cookie)
    }

    /// How many login attempts are stored (not the used-link or press marks).
    pub async fn attempts_stored(&self) -> usize {
        let table = &self.fixture.tables["LoginAttemptsTable"];
        let scan = self
            .fixture
            .aws
            .dynamodb
            .scan()
            .table_name(table)
            .send()
            .await
            .expect("scan");
        // Login attempts only: not the used-link marks nor the press marks.
        scan.items
            .unwrap_or_default()
            .iter()
            .filter(|item| item.contains_key("browser_hash"))
            .count()
    }
}

/// The sync the benches measure: Exact Online's projects, incrementally
/// over `sync/Project/Projects` (1,000 a page), as provider `sim`'s `projects`.
pub const PROJECTS_INCREMENTAL: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
     query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"incremental\"\ncursor_field = \"Timestamp\"\n\
     fields = { id = \"ID\", code = \"Code\", description = \"Description\" }\ninterval_secs = 900\n";

/// A refresh fixture plus the sync engine on its own tables: the simulator's
/// data APIs as the provider's API (Exact Online style under `/api/v1`,
/// Graph style under `/v1.0`) and the syncs given as TOML.
#[derive(Debug)]
pub struct SyncFixture {
    pub fixture: RefreshFixture,
    pub engine: std::sync::Arc<shared::sync::engine::SyncEngine>,
}

impl SyncFixture {
    /// `provider` and `syncs` are extra TOML for the `[providers.sim]` table
    /// and after it; `{sim}` in them is the simulator's base URL.
    pub async fn start(
        sim: SimConfig,
        provider: &str,
        syncs: &str,
        settings: shared::sync::engine::SyncSettings,
        test: &str,
    ) -> SyncFixture {
        let api = match sim.preset {
            shared::config::PresetName::Microsoft => "{sim}/v1.0",
            _ => "{sim}/api/v1/{division}",
        };
        let text = format!("api_base_url = \"{api}\"\n{provider}\n{syncs}\n");
        let fixture = RefreshFixture::start_with(
            sim,
            shared::refresh::RefreshSettings::default(),
            |base| text.replace("{sim}", base),
            test,
        )
        .await;
        let engine = fixture.engine(settings).await;
        SyncFixture {
            engine: std::sync::Arc::new(engine),
            fixture,
        }
    }

    pub fn sim(&self) -> &std::sync::Arc<Simulator> {
        self.fixture.sim()
    }

    /// Logs in as connection `id` (learning its parameters) and schedules its syncs.
    pub async fn connect(&self, id: &str) -> shared::connection::ConnectionId {
        let id = self.fixture.connect(id).await;
        for sync in self.fixture.config.syncs.keys() {
            self.engine.jobs().schedule(&id, sync).await.expect("schedule");
        }
        id
    }

    /// One run of `sync` for `id`, now, with a five-minute deadline.
    pub async fn run(&self, id: &shared::connection::ConnectionId, sync: &str) -> shared::sync::engine::RunReport {
        self.engine
            .run_now(id, sync, deadline(300), &|_| {})
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every stored record of the job (deleted ones too).
    pub async fn records(
        &self,
        id: &shared::connection::ConnectionId,
        sync: &str,
    ) -> Vec<shared::sync::records::StoredRecord> {
        self.engine
            .records()
            .list(&shared::sync::jobs::job_id(id, sync), usize::MAX)
            .await
            .expect("list records")
    }
}

impl RefreshFixture {
    /// A sync engine on this fixture's tables and token service. Its
    /// DynamoDB calls may take longer than the product's 5 s per attempt:
    /// DynamoDB Local answers a consistent 100-key BatchGetItem slowly on a
    /// loaded 2-core machine, and that is not what these tests are about.
    pub async fn engine(&self, settings: shared::sync::engine::SyncSettings) -> shared::sync::engine::SyncEngine {
        let sdk = shared::aws::sdk_config_from_env();
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .timeout_config(
                    aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                        .connect_timeout(std::time::Duration::from_secs(5))
                        .operation_attempt_timeout(std::time::Duration::from_secs(30))
                        .operation_timeout(std::time::Duration::from_secs(90))
                        .build(),
                )
                .build(),
        );
        let jobs = shared::sync::jobs::JobStore::new(
            dynamodb.clone(),
            &self.tables["SyncStateTable"],
            &self.tables["SyncRunsTable"],
        );
        let records = shared::sync::records::RecordStore::new(dynamodb, &self.tables["RecordsTable"]);
        shared::sync::engine::SyncEngine::new(self.config.clone(), self.service.clone(), jobs, records, settings)
            .expect("sync engine")
    }
}

/// Sync settings for tests: short backoffs, so retries do not slow the suite.
pub fn quick_sync_settings() -> shared::sync::engine::SyncSettings {
    shared::sync::engine::SyncSettings {
        base_backoff: std::time::Duration::from_millis(50),
        max_backoff: std::time::Duration::from_secs(2),
        page_timeout: std::time::Duration::from_secs(15),
        ..shared::sync::engine::SyncSettings::default()
    }
}
