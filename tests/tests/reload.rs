//! Issue 19, item 6: a warm process follows `config push` and `keys rotate`
//! without a restart (`shared::reload`), against DynamoDB Local, the Secrets
//! Manager emulator and the provider simulator.
//!
//! - A pushed configuration is used from the first check that is due
//!   (the interval is made zero here instead of sleeping a minute); a bad one
//!   is refused, logged and counted, and the one in use stays.
//! - A value sealed under a key added by another process (a token, a login
//!   attempt's PKCE verifier) opens in a warm process built with the old
//!   ring, and the warm process seals under the new key once it has re-read
//!   the ring.

use std::sync::Arc;
use std::time::Duration;

use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, PROVIDER, RefreshFixture, create_secret, deadline, unique_prefix};
use shared::config::PresetName;
use shared::connection::store::ConnectionStore;
use shared::crypto::{KeyRingSecret, sealed_key_id};
use shared::login::attempts::AttemptStore;
use shared::login::flow::{ATTEMPT_TTL, LoginService};
use shared::refresh::{RefreshError, RefreshSettings, TokenService};
use shared::reload::{CHECK_INTERVAL, Reload};
use shared::secrets::SecretStore;

async fn fixture(test: &str) -> RefreshFixture {
    RefreshFixture::start(
        SimConfig::for_preset(PresetName::Generic),
        RefreshSettings::default(),
        "min_refresh_interval_secs = 0",
        test,
    )
    .await
}

/// The fixture's configuration with the provider's minimum refresh interval set to `secs`.
fn with_interval(fixture: &RefreshFixture, secs: u64) -> String {
    fixture.config_text.replace(
        "min_refresh_interval_secs = 0",
        &format!("min_refresh_interval_secs = {secs}"),
    )
}

/// A token service on the fixture's tables and secrets whose configuration
/// is read from secret `name`, checked every `interval`: a warm function.
async fn warm_service(fixture: &RefreshFixture, name: &str, interval: Duration) -> TokenService {
    let secrets = SecretStore::new(fixture.aws.secrets.clone());
    let config = shared::runtime::load_config_secret(&secrets, name, interval)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store = ConnectionStore::new(fixture.aws.dynamodb.clone(), fixture.connections_table());
    TokenService::load(config, store, secrets, RefreshSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What `oauth-sync config push` does: a new current version of the secret.
async fn push(fixture: &RefreshFixture, name: &str, text: &str) {
    SecretStore::new(fixture.aws.secrets.clone())
        .put(name, text, "oauth-sync configuration")
        .await
        .expect("push");
}

/// Is a refresh right now held back by the provider's minimum interval?
async fn held_back(service: &TokenService, id: &shared::connection::ConnectionId) -> Option<String> {
    match service.refresh_now(id, deadline(30)).await {
        Ok(_) => None,
        Err(RefreshError::RetryLater { cause, .. }) => Some(cause),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_pushed_configuration_is_used_once_the_check_is_due_and_a_bad_one_is_refused() {
    let logs = oauth_sync_tests::logs::captured();
    let fixture = fixture("reload-config").await;
    let name = format!("{}config", unique_prefix("reload-config"));
    create_secret(&fixture.aws, &name, fixture.config_text.clone()).await;
    let warm = warm_service(&fixture, &name, Duration::ZERO).await;
    // The same secret, checked once a minute, as the functions do.
    let minutely = warm_service(&fixture, &name, CHECK_INTERVAL).await;
    let id = fixture.connect("reload-config").await;
    assert_eq!(held_back(&warm, &id).await, None, "v1: no minimum interval");

    // v2: one refresh per hour.
    push(&fixture, &name, &with_interval(&fixture, 3600)).await;
    assert_eq!(minutely.reload_if_changed().await.config, Reload::NotDue);
    assert_eq!(
        minutely
            .config()
            .provider(PROVIDER)
            .expect("sim")
            .settings
            .min_refresh_interval_secs,
        0
    );
    let reloaded = warm.reload_if_changed().await;
    assert!(matches!(reloaded.config, Reload::Adopted { .. }), "{reloaded:?}");
    let cause = held_back(&warm, &id).await.expect("v2 holds the refresh back");
    assert!(cause.contains("allows one refresh per 3600 s"), "{cause}");
    assert_eq!(warm.reload_if_changed().await.config, Reload::Unchanged);

    // v3 does not validate: refused, v2 stays, and the refusal is logged and counted.
    push(
        &fixture,
        &name,
        &with_interval(&fixture, 3600).replace("[service]", "[service]\nno_such_setting = 1"),
    )
    .await;
    let refused = warm.reload_if_changed().await.config;
    let Reload::Refused { version, errors } = &refused else {
        panic!("{refused:?}")
    };
    assert!(errors.contains("no_such_setting"), "{errors}");
    let metrics = refused
        .metrics("ConfigReloaded", "ConfigRefused")
        .expect("counted")
        .document(0);
    assert_eq!(metrics["ConfigRefused"], 1.0);
    let line = logs
        .text()
        .lines()
        .find(|l| l.contains("the new configuration was refused") && l.contains(version.as_str()))
        .map(str::to_owned)
        .expect("the refusal is logged with its version");
    assert!(
        line.contains("\"level\":\"ERROR\"") && line.contains("no_such_setting"),
        "{line}"
    );
    assert_eq!(
        warm.config()
            .provider(PROVIDER)
            .expect("sim")
            .settings
            .min_refresh_interval_secs,
        3600
    );
    assert!(held_back(&warm, &id).await.is_some(), "v2 still in use");
    assert_eq!(
        warm.reload_if_changed().await.config,
        Reload::Unchanged,
        "the refused version is not loaded again"
    );

    // The next push is read: v4 lifts the interval again.
    push(&fixture, &name, &fixture.config_text).await;
    assert!(matches!(warm.reload_if_changed().await.config, Reload::Adopted { .. }));
    assert_eq!(held_back(&warm, &id).await, None, "v4: no minimum interval");
}

/// What `oauth-sync keys rotate` does: a new current key, the old ones kept.
async fn rotate(fixture: &RefreshFixture) -> String {
    let secrets = SecretStore::new(fixture.aws.secrets.clone());
    let name = &fixture.config.service.token_key_secret;
    let read = secrets.versioned(name).await.expect("read the ring");
    let mut ring = KeyRingSecret::parse(&read.text).expect("ring");
    let new = ring.rotate().expect("rng");
    secrets
        .replace(name, &read.version_id, &ring.to_secret_text())
        .await
        .expect("rotate");
    new
}

#[tokio::test]
async fn a_value_sealed_under_a_rotated_key_opens_in_a_warm_process_built_with_the_old_ring() {
    let fixture = fixture("reload-keys").await;
    let warm = &fixture.service;
    assert_eq!(warm.keys().await.expect("the key ring").current_key_id(), "k1");
    assert_eq!(rotate(&fixture).await, "k2");

    // Another process, started after the rotation, logs in: sealed under k2.
    let store = ConnectionStore::new(fixture.aws.dynamodb.clone(), fixture.connections_table());
    let secrets = SecretStore::new(fixture.aws.secrets.clone());
    let other = TokenService::load(fixture.config.clone(), store, secrets, RefreshSettings::default())
        .await
        .expect("a new process");
    let id = shared::connection::ConnectionId::parse("reload-keys").expect("id");
    let tokens = fixture.oauth.login().await;
    other
        .save_login(&id, PROVIDER, shared::connection::ConnectionKind::Shared, &tokens, None)
        .await
        .expect("login");
    let sealed = fixture.connection(&id).await.access_token.expect("access token");
    assert_eq!(sealed_key_id(&sealed.0), Ok("k2"));

    // The warm process (ring k1, its minute not up) reads the token and refreshes.
    let fresh = warm.access_token(&id, deadline(30)).await.expect("opens under k2");
    assert_eq!(fresh.access_token.secret(), tokens.access_token.secret());
    assert_eq!(
        warm.keys().await.expect("the key ring").current_key_id(),
        "k2",
        "the ring was re-read"
    );
    let refreshed = warm.refresh_now(&id, deadline(30)).await.expect("refresh");
    assert!(refreshed.refreshed);
    let stored = fixture.connection(&id).await;
    assert_eq!(sealed_key_id(&stored.refresh_token.expect("refresh token").0), Ok("k2"));
}

#[tokio::test]
async fn a_warm_process_seals_under_a_rotated_key_after_its_check_so_retire_is_safe_after_the_reseal() {
    let fixture = fixture("reload-seal").await;
    let store = ConnectionStore::new(fixture.aws.dynamodb.clone(), fixture.connections_table());
    let secrets = SecretStore::new(fixture.aws.secrets.clone());
    let warm = TokenService::load(fixture.config.clone(), store, secrets, RefreshSettings::default())
        .await
        .expect("service")
        .with_key_check_interval(Duration::ZERO);
    let id = shared::connection::ConnectionId::parse("reload-seal").expect("id");
    let login = |tokens| {
        let (warm, id) = (&warm, &id);
        async move {
            warm.save_login(id, PROVIDER, shared::connection::ConnectionKind::Shared, &tokens, None)
                .await
                .expect("login")
        }
    };
    let before = login(fixture.oauth.login().await).await;
    assert_eq!(sealed_key_id(&before.access_token.expect("sealed").0), Ok("k1"));

    rotate(&fixture).await;
    let reloads = warm.reload_if_changed().await;
    assert!(matches!(reloads.keys, Reload::Adopted { .. }), "{reloads:?}");
    assert_eq!(
        reloads.config,
        Reload::Fixed,
        "a configuration given as Arc<Config> is not reloaded"
    );
    let after = login(fixture.oauth.login().await).await;
    assert_eq!(
        sealed_key_id(&after.access_token.expect("sealed").0),
        Ok("k2"),
        "nothing new is sealed under k1 once the check has run"
    );
    assert_eq!(warm.reload_if_changed().await.keys, Reload::Unchanged);
}

#[tokio::test]
async fn a_key_no_ring_lists_is_the_same_error_and_does_not_make_every_open_read_the_ring() {
    let fixture = fixture("reload-unknown").await;
    let id = fixture.connect("reload-unknown").await;
    // A value under a key the ring does not list.
    let k9 = shared::crypto::KeyRing::generate_json("k9").expect("rng");
    let stranger = shared::crypto::KeyRing::from_json(&k9).expect("ring");
    let sealed = stranger.seal(id.as_str(), "access_token", "at").expect("seal");
    let keys = fixture.service.live_keys().await.expect("the key ring");
    let unknown = Err(shared::crypto::CryptoError::UnknownKey("k9".to_owned()));
    assert_eq!(keys.open(id.as_str(), "access_token", &sealed).await, unknown);

    // k9 is added to the ring now; the ring was read for k9 a moment ago,
    // so the next open does not read it again and fails the same way.
    let secrets = SecretStore::new(fixture.aws.secrets.clone());
    let name = &fixture.config.service.token_key_secret;
    let read = secrets.versioned(name).await.expect("read");
    let mut ring: serde_json::Value = serde_json::from_str(&read.text).expect("json");
    let k9: serde_json::Value = serde_json::from_str(&k9).expect("json");
    ring["keys"]["k9"] = k9["keys"]["k9"].clone();
    secrets
        .replace(name, &read.version_id, &ring.to_string())
        .await
        .expect("write");
    assert_eq!(keys.open(id.as_str(), "access_token", &sealed).await, unknown);
    assert!(!keys.current().has_key("k9"));
    // Another unknown id is read for at once, and brings k9 along.
    assert!(!keys.learn("k10").await);
    assert_eq!(
        keys.open(id.as_str(), "access_token", &sealed).await.as_deref(),
        Ok("at")
    );
}

#[tokio::test]
async fn a_login_begun_by_an_instance_with_the_rotated_ring_finishes_at_a_warm_one_with_the_old_ring() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "reload-login").await;
    // The warm instance: the fixture's token service, built with ring k1.
    let warm = login.service(ATTEMPT_TTL).await;
    assert_eq!(rotate(&login.fixture).await, "k2");
    // A new instance starts after the rotation and begins the login: the
    // attempt's PKCE verifier is sealed under k2.
    let store = ConnectionStore::new(login.fixture.aws.dynamodb.clone(), login.fixture.connections_table());
    let secrets = SecretStore::new(login.fixture.aws.secrets.clone());
    let tokens = TokenService::load(login.config.clone(), store, secrets.clone(), RefreshSettings::default())
        .await
        .expect("a new process");
    let attempts = AttemptStore::new(
        login.fixture.aws.dynamodb.clone(),
        &login.fixture.tables["LoginAttemptsTable"],
    );
    let new = LoginService::load(login.config.clone(), Arc::new(tokens), attempts, &secrets, ATTEMPT_TTL)
        .await
        .expect("login service");
    let (query, cookie) = login.to_callback(&new, "reload-login").await;

    // The provider's callback reaches the warm instance.
    let finished = warm.finish(PROVIDER, &query, Some(&cookie)).await.expect("finish");
    assert_eq!(finished.connection.as_str(), "reload-login");
    let stored = login.fixture.connection(&finished.connection).await;
    assert_eq!(sealed_key_id(&stored.access_token.expect("sealed").0), Ok("k2"));
}
