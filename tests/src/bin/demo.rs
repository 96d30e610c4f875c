//! The local demo, run by `scripts/demo` against the local stack: what works
//! today, end to end, with the real components.
//!
//! 1. stores a provider's client credentials in Secrets Manager (moto)
//! 2. loads a configuration whose Exact Online-style provider is the simulator
//! 3. logs in headlessly: authorize URL with PKCE S256 → code → token exchange
//! 4. refreshes twice (single-use rotation)
//! 5. replays a spent refresh token to show what oauth-sync exists to prevent:
//!    the provider revokes the whole token family
//!
//! Token values are never printed; fingerprints (first characters of their
//! SHA-256) are.

use std::time::Duration;

use anyhow::{Context, bail};
use oauth_sync_tests::simulator::{Counters, SimConfig};
use shared::config::{Config, PresetName};
use shared::crypto::{Pkce, random_token, sha256_b64url};
use shared::oauth::{TokenEndpoint, TokenError, authorize_url, http_client};
use shared::secret::AuthorizationCode;
use shared::secrets::SecretStore;

const SECRET_NAME: &str = "oauth-sync/demo-exact";
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
    let aws = shared::aws::AwsClients::from_env().await;
    let http = http_client(Duration::from_secs(10))?;

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
        "[providers.exact]\npreset = \"exact_online\"\ncredentials_secret = \"{SECRET_NAME}\"\n\
         authorize_url = \"{simulator}/authorize\"\ntoken_url = \"{simulator}/token\"\n"
    );
    let config = Config::parse(&text, "demo.toml")?;
    let provider = config.provider("exact")?;
    say(&format!(
        "   provider `exact` from preset exact_online: client auth {:?}, refresh lead {} s, at most one refresh per {} s, reuse grace {} s",
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

    let tables: Vec<String> = aws
        .dynamodb
        .list_tables()
        .send()
        .await?
        .table_names
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.starts_with("oauth-sync-"))
        .collect();
    say(&format!(
        "\nDynamoDB Local holds the tables of infra/template.yaml: {}",
        tables.join(", ")
    ));
    say("Next (issue 3): the connection store and refresh protocol that makes step 5 impossible.");
    Ok(())
}
