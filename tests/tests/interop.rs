//! Interoperability: a whole login, a refresh and a revocation through the
//! product's own code against an OAuth 2.0 server we did not write, the
//! unmodified npm package `oauth2-mock-server` (PKCE S256 verified,
//! refresh-token grant, RFC 7009 revocation).

use std::sync::Arc;
use std::time::Duration;

use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, PROVIDER, deadline};
use shared::config::{Config, PresetName};
use shared::connection::store::ConnectionStore;
use shared::connection::{ConnectionId, Status};
use shared::login::attempts::AttemptStore;
use shared::login::flow::{ATTEMPT_TTL, LoginService};
use shared::refresh::{RefreshSettings, TokenService};
use shared::secrets::SecretStore;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The third-party server, on a free loopback port; stopped when dropped.
struct MockServer {
    _child: tokio::process::Child,
    url: String,
    /// Its issuer identifier as it names itself (`http://localhost:PORT`).
    issuer: String,
}

async fn start_mock_server() -> MockServer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/oauth2-mock-server.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .arg("0")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (installed by scripts/bootstrap) runs tools/oauth2-mock-server.mjs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("oauth2-mock-server started within 30 s")
        .expect("read")
        .expect("a line");
    let issuer = line.strip_prefix("listening ").expect("the listening line").to_owned();
    let url = issuer.replace("localhost", "127.0.0.1");
    MockServer {
        _child: child,
        url,
        issuer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refresh_and_revoke_against_oauth2_mock_server() {
    let mock = start_mock_server().await;
    // The fixture's secrets and tables, with the provider's endpoints moved to the mock server.
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "interop").await;
    let text = login.config_text.replace(&login.fixture.oauth.sim.base_url, &mock.url);
    let config = Arc::new(Config::parse(&text, "interop.toml").unwrap_or_else(|e| panic!("{e}")));
    assert!(config.providers[PROVIDER].token_url.as_str().starts_with(&mock.url));
    // Login: /connect (page and button), the third-party /authorize redirect, /callback/sim.
    let tokens = log_in_and_refresh(&login, config, &mock.url, "interop-1").await;
    let id = ConnectionId::parse("interop-1").expect("id");

    // Revoke (RFC 7009), then the tokens are gone.
    let revoked = tokens.revoke(&id).await.expect("revoke");
    assert!(revoked.at_provider);
    let connection = tokens.store().get(&id).await.expect("read").expect("exists");
    assert_eq!(connection.status, Status::Revoked);
    assert!(connection.access_token.is_none() && connection.refresh_token.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_at_oauth2_mock_server_fills_the_endpoints_and_a_login_and_refresh_go_through_them() {
    let mock = start_mock_server().await;
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "interop-discovery").await;
    let text = login.config_discovering(&mock.issuer, "");
    let config = Arc::new(
        Config::parse_and_discover(&text, "interop.toml")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let provider = &config.providers[PROVIDER];
    assert_eq!(provider.token_url.as_str(), format!("{}/token", mock.issuer));
    assert_eq!(provider.authorize_url.as_str(), format!("{}/authorize", mock.issuer));
    assert_eq!(
        provider.revocation_url.as_ref().map(url::Url::as_str),
        Some(format!("{}/revoke", mock.issuer).as_str())
    );

    // What doctor makes of the third party's document: it lists only `none`
    // for client authentication, and S256.
    let findings = shared::doctor::check_settings(provider, &config.service);
    let verdict = |check: &str| {
        findings
            .iter()
            .find(|f| f.check == check)
            .map(|f| (f.verdict, f.detail.clone()))
            .unwrap_or_else(|| panic!("no `{check}` in {findings:#?}"))
    };
    let (auth, detail) = verdict("client authentication");
    assert_eq!(auth, shared::doctor::Verdict::Fail, "{detail}");
    assert!(
        detail.contains("token_endpoint_auth_methods_supported [none]"),
        "{detail}"
    );
    assert_eq!(verdict("PKCE").0, shared::doctor::Verdict::Ok);

    // The same server named by another spelling of its address is not the same issuer (§4.3).
    let e = Config::parse_and_discover(&login.config_discovering(&mock.url, ""), "interop.toml")
        .await
        .expect_err("127.0.0.1 is not the issuer localhost");
    assert!(
        e.to_string().contains(&format!(
            "{}/.well-known/openid-configuration names issuer {}",
            mock.url, mock.issuer
        )),
        "{e}"
    );

    // A login and a refresh through the discovered endpoints.
    log_in_and_refresh(&login, config, &mock.issuer, "interop-d1").await;
}

/// A login through the connect link's page, the server's `/authorize` (at
/// `origin`) and the callback, then a refresh through the protocol.
async fn log_in_and_refresh(
    login: &LoginFixture,
    config: Arc<Config>,
    origin: &str,
    connection: &str,
) -> Arc<TokenService> {
    let aws = &login.fixture.aws;
    let secrets = SecretStore::new(aws.secrets.clone());
    let store = ConnectionStore::new(aws.dynamodb.clone(), login.fixture.connections_table());
    let tokens = Arc::new(
        TokenService::load(config.clone(), store, secrets.clone(), RefreshSettings::default())
            .await
            .expect("tokens"),
    );
    let attempts = AttemptStore::new(aws.dynamodb.clone(), &login.fixture.tables["LoginAttemptsTable"]);
    let service = LoginService::load(config, tokens.clone(), attempts, &secrets, ATTEMPT_TTL)
        .await
        .expect("login");
    let begin = login.begin(&service, &login.link(connection)).await.expect("begin");
    assert!(begin.location.as_str().starts_with(origin), "{}", begin.location);
    let query = oauth_sync_tests::stack::authorize(&login.fixture.oauth.http, &begin.location)
        .await
        .callback_query();
    assert!(query.contains_key("state") && query.contains_key("code"), "{query:?}");
    let finished = service
        .finish(PROVIDER, &query, Some(&begin.cookie))
        .await
        .expect("code exchange with PKCE S256");
    assert_eq!(finished.token_version, 1);
    assert!(finished.warnings.is_empty(), "{:?}", finished.warnings);

    let id = ConnectionId::parse(connection).expect("id");
    let fresh = tokens.refresh_now(&id, deadline(30)).await.expect("refresh");
    assert_eq!((fresh.token_version, fresh.refreshed), (2, true));
    tokens
}
