//! The refresh protocol up close, against a running local stack (`scripts/stack
//! start`, then `target/debug/demo`); `scripts/demo` shows the main job instead.
//!
//! 1. stores a provider's client credentials in Secrets Manager (moto)
//! 2. loads a configuration whose Exact Online-style provider is the simulator
//! 3. logs in headlessly: authorize URL with PKCE S256 → code → token exchange
//! 4. refreshes twice (single-use rotation)
//! 5. replays a spent refresh token to show what oauth-sync exists to prevent:
//!    the provider revokes the whole token family
//! 6. logs in the way an end user does: a signed connect link, `/connect`,
//!    its confirmation page and button, the provider, `/callback/exact` (the
//!    connection is stored encrypted)
//! 7. lets 16 concurrent workers refresh that connection through the refresh
//!    protocol: one refreshes, the others wait for its result, nothing is
//!    spent twice
//!
//! Token values are never printed; fingerprints (first characters of their
//! SHA-256) are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oauth_sync_tests::simulator::{Counters, SimConfig};
use shared::config::{Config, PresetName};
use shared::connection::now_ms;
use shared::connection::store::ConnectionStore;
use shared::connection::{ConnectionId, ConnectionKind};
use shared::crypto::{KeyRing, Pkce, random_token, sha256_b64url};
use shared::login::attempts::AttemptStore;
use shared::login::flow::{ATTEMPT_TTL, LoginService};
use shared::login::{ConnectClaims, LinkKeys};
use shared::oauth::{TokenEndpoint, TokenError, authorize_url};
use shared::refresh::{RefreshSettings, TokenService};
use shared::secret::AuthorizationCode;
use shared::secrets::SecretStore;

const SECRET_NAME: &str = "oauth-sync/demo-exact";
const KEY_RING_NAME: &str = "oauth-sync/demo-token-keys";
const LINK_KEY_NAME: &str = "oauth-sync/demo-link-key";
const REDIRECT_URI: &str = "https://demo.example/callback";

fn say(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
}

fn fingerprint(secret: &str) -> String {
    format!("sha256:{}…", &sha256_b64url(secret.as_bytes())[..10])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let simulator =
        std::env::var("OAUTH_SYNC_SIMULATOR_URL").context("OAUTH_SYNC_SIMULATOR_URL: start the stack first")?;
    let aws = shared::aws::AwsClients::from_env();
    let http = shared::http::client(Duration::from_secs(10), shared::http::Pooling::Off)?;

    say("1. client credentials → Secrets Manager");
    let sim = SimConfig::for_preset(PresetName::ExactOnline);
    let credentials = serde_json::json!({"client_id": sim.client_id, "client_secret": sim.client_secret}).to_string();
    match aws
        .secrets
        .create_secret()
        .name(SECRET_NAME)
        .secret_string(&credentials)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_exists_exception()) => {
            aws.secrets
                .put_secret_value()
                .secret_id(SECRET_NAME)
                .secret_string(&credentials)
                .send()
                .await?;
        }
        Err(e) => return Err(e).context("storing the client credentials"),
    }
    let credentials = SecretStore::new(aws.secrets.clone())
        .client_credentials(SECRET_NAME)
        .await?;
    say(&format!(
        "   stored and read back `{SECRET_NAME}`: client_id={}, secret {:?}",
        credentials.client_id, credentials.client_secret
    ));

    say("2. configuration");
    let text = format!(
        "[service]\ntoken_key_secret = \"{KEY_RING_NAME}\"\nlink_key_secret = \"{LINK_KEY_NAME}\"\n\
         callback_url = \"{REDIRECT_URI}\"\n\n\
         [providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"{SECRET_NAME}\"\n\
         authorize_url = \"{simulator}/authorize\"\ntoken_url = \"{simulator}/token\"\n\
         api_base_url = \"{simulator}/api/v1/{{division}}\"\n\
         discover = {{ division = {{ url = \"{simulator}/api/v1/current/Me?$select=CurrentDivision\", field = \"d.results.0.CurrentDivision\" }} }}\n\
         # The simulator does not enforce Exact Online's one-refresh-per-570 s limit.\n\
         min_refresh_interval_secs = 0\n"
    );
    let config = Config::parse(&text, "demo.toml")?;
    let provider = config.provider("exact")?;
    say(&format!(
        "   provider `exact` from preset exact_online: client auth {:?}, refresh lead {} s, \
         refresh limit lifted to {} s for the simulator (Exact Online: 570), reuse grace {} s",
        provider.settings.client_auth,
        provider.settings.refresh_lead_secs,
        provider.settings.min_refresh_interval_secs,
        provider.settings.reuse_grace_secs
    ));

    say("3. login (authorization code + PKCE S256)");
    let pkce = Pkce::generate()?;
    let state = random_token()?;
    let url = authorize_url(
        provider,
        &credentials.client_id,
        REDIRECT_URI,
        &state,
        Some(&pkce.challenge),
    );
    let response = http.get(url).send().await?;
    let location = response
        .headers()
        .get("location")
        .context("the simulator did not redirect")?
        .to_str()?
        .to_owned();
    let location = url::Url::parse(&location)?;
    let param = |key: &str| {
        location
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    if param("state").as_deref() != Some(state.as_str()) {
        bail!("state did not round-trip");
    }
    let code = AuthorizationCode::new(param("code").context("no code in the redirect")?);
    let endpoint = TokenEndpoint {
        provider,
        credentials: &credentials,
        http: &http,
    };
    let login = endpoint
        .exchange_code(&code, REDIRECT_URI, Some(&pkce.verifier))
        .await?;
    let first = login.refresh_token.context("no refresh token")?;
    say(&format!(
        "   tokens issued: access {} (expires in {} s, sent as the string Exact Online uses), refresh {}",
        fingerprint(login.access_token.secret()),
        login.expires_in,
        fingerprint(first.secret())
    ));

    say("4. two refreshes: each refresh token is single-use and replaced");
    let second = endpoint.refresh(&first).await?.refresh_token.context("no rotation")?;
    say(&format!(
        "   {} → {}",
        fingerprint(first.secret()),
        fingerprint(second.secret())
    ));
    let third = endpoint.refresh(&second).await?.refresh_token.context("no rotation")?;
    say(&format!(
        "   {} → {}",
        fingerprint(second.secret()),
        fingerprint(third.secret())
    ));

    say("5. what oauth-sync prevents: spending a refresh token twice");
    match endpoint.refresh(&first).await {
        Err(TokenError::DeadToken { status, message, .. }) => {
            say(&format!(
                "   the provider answered HTTP {status} \"{message}\" and revoked the whole family;"
            ));
        }
        other => bail!("expected a dead-token answer, got {other:?}"),
    }
    match endpoint.refresh(&third).await {
        Err(TokenError::DeadToken { .. }) => {
            say("   even the newest refresh token is dead now: the user must log in again.")
        }
        other => bail!("expected the newest token to be dead, got {other:?}"),
    }
    let counters: Counters = http
        .get(format!("{simulator}/_sim/counters"))
        .send()
        .await?
        .json()
        .await?;
    say(&format!(
        "   simulator counters: {} tokens issued, {} refreshes, {} refresh token reused, {} family revoked",
        counters.tokens_issued, counters.refreshes, counters.refresh_tokens_reused, counters.families_revoked
    ));

    say(
        "6. a login the way an end user makes it: signed connect link, the confirmation page and its button, the provider, /callback/exact",
    );
    for (name, key_id) in [(KEY_RING_NAME, "demo-1"), (LINK_KEY_NAME, "link-1")] {
        let key_ring = KeyRing::generate_json(key_id)?;
        if let Err(e) = aws
            .secrets
            .create_secret()
            .name(name)
            .secret_string(&key_ring)
            .send()
            .await
            && !e.as_service_error().is_some_and(|e| e.is_resource_exists_exception())
        {
            return Err(e).context("storing a key ring");
        }
    }
    let table = std::env::var("OAUTH_SYNC_CONNECTIONS_TABLE").context("OAUTH_SYNC_CONNECTIONS_TABLE")?;
    let store = ConnectionStore::new(aws.dynamodb.clone(), table.clone());
    let settings = RefreshSettings {
        poll_min: Duration::from_millis(10),
        ..RefreshSettings::default()
    };
    let service = Arc::new(
        TokenService::load(
            Arc::new(config.clone()),
            store,
            SecretStore::new(aws.secrets.clone()),
            settings,
        )
        .await?,
    );
    let id = ConnectionId::parse("demo-exact-1")?;
    let secrets = SecretStore::new(aws.secrets.clone());
    let attempts_table = std::env::var("OAUTH_SYNC_LOGIN_ATTEMPTS_TABLE").context("OAUTH_SYNC_LOGIN_ATTEMPTS_TABLE")?;
    let attempts = AttemptStore::new(aws.dynamodb.clone(), attempts_table);
    let login = LoginService::load(
        Arc::new(config.clone()),
        service.clone(),
        attempts,
        &secrets,
        ATTEMPT_TTL,
    )
    .await?;
    let links = LinkKeys::from_json(&secrets.text(LINK_KEY_NAME).await?)?;
    let claims = ConnectClaims {
        provider: "exact".to_owned(),
        connection: id.clone(),
        kind: ConnectionKind::Shared,
        return_url: None,
        issued_at: now_ms(),
        expires_at: now_ms() / 1000 + 3600,
        label: Some("the demo's project sync".to_owned()),
        user: None,
    };
    let link = links.connect_url(config.service.callback_url.as_ref(), &claims)?;
    say(&format!(
        "   connect link (HMAC-SHA256, 1 h): {}…",
        &link.as_str()[..link.as_str().len().min(90)]
    ));
    let confirm = login
        .confirm("exact", &link.query_pairs().into_owned().collect(), None)
        .await?;
    say(&format!(
        "   GET /connect: link verified, confirmation page \"Connect your {} account to {}\", browser cookie set",
        confirm.provider_display, confirm.label
    ));
    let begin = login.begin("exact", &confirm.form(), Some(&confirm.cookie)).await?;
    say("   POST /connect: form token checked, login attempt stored (state hashed, PKCE verifier encrypted)");
    let approved = http.get(begin.location).send().await?;
    let back = url::Url::parse(approved.headers().get("location").context("no redirect")?.to_str()?)?;
    let finished = login
        .finish("exact", &back.query_pairs().into_owned().collect(), Some(&begin.cookie))
        .await?;
    say(&format!(
        "   /callback/exact: state consumed once, code exchanged with the PKCE verifier, connection `{}` version {}",
        finished.connection, finished.token_version
    ));
    let stored = service.store().get(&id).await?.context("the connection")?;

    say(&format!(
        "   connection `{id}` stored in {table}: token_version {}, access and refresh token encrypted (AES-256-GCM, {} and {})",
        stored.token_version,
        stored
            .access_token
            .as_ref()
            .map(|s| format!("{} bytes", s.0.len()))
            .unwrap_or_default(),
        stored
            .refresh_token
            .as_ref()
            .map(|s| format!("{} bytes", s.0.len()))
            .unwrap_or_default(),
    ));
    say("7. the refresh protocol: 16 workers, one connection, one refresh");
    let before: Counters = http
        .get(format!("{simulator}/_sim/counters"))
        .send()
        .await?
        .json()
        .await?;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (service, id) = (service.clone(), id.clone());
        workers.spawn(async move { service.refresh_now(&id, Instant::now() + Duration::from_secs(60)).await });
    }
    let mut refreshed = 0;
    while let Some(result) = workers.join_next().await {
        refreshed += usize::from(result??.refreshed);
    }
    let after: Counters = http
        .get(format!("{simulator}/_sim/counters"))
        .send()
        .await?
        .json()
        .await?;
    let stored = service.store().get(&id).await?.context("the connection")?;
    say(&format!(
        "   16 concurrent refresh_now calls: {refreshed} sent the refresh, {} waited for it and used its result",
        16 - refreshed
    ));
    say(&format!(
        "   provider side: {} refresh request(s), {} refresh token reused, {} family revoked; stored token_version {}",
        after.refresh_requests - before.refresh_requests,
        after.refresh_tokens_reused - before.refresh_tokens_reused,
        after.families_revoked - before.families_revoked,
        stored.token_version
    ));
    let fresh = service
        .access_token(&id, Instant::now() + Duration::from_secs(10))
        .await?;
    say(&format!(
        "   access_token() now answers from the store without a refresh: {} (refreshed: {})",
        fingerprint(fresh.access_token.secret()),
        fresh.refreshed
    ));
    Ok(())
}
