//! The provider simulator behaves as configured, driven through the product's
//! own OAuth client (`shared::oauth`): code flow with PKCE, single-use codes,
//! rotation, reuse detection revoking the family, grace periods, each preset's
//! quirks, RFC 7009 revocation, and fault injection.

use std::time::Duration;

use oauth_sync_tests::simulator::{Counters, Fault, FaultPlan, Grant, SimConfig};
use oauth_sync_tests::stack::{OauthFixture, REDIRECT_URI, authorize, http};
use shared::config::{ClientAuth, PresetName};
use shared::crypto::Pkce;
use shared::oauth::{TokenEndpoint, TokenError, TokenHint, authorize_url};
use shared::secret::{AuthorizationCode, ClientSecret, RefreshToken};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn fixture(preset: PresetName) -> OauthFixture {
    OauthFixture::start(SimConfig::for_preset(preset), TIMEOUT).await
}

#[tokio::test]
async fn code_flow_verifies_pkce_and_codes_are_single_use() {
    let config = SimConfig {
        redirect_uris: vec![REDIRECT_URI.to_owned()],
        ..SimConfig::for_preset(PresetName::Generic)
    };
    let f = OauthFixture::start(config, TIMEOUT).await;
    let client_id = &f.credentials.client_id;

    let pkce = Pkce::generate().expect("rng");
    let url = authorize_url(&f.provider, client_id, REDIRECT_URI, "state-1", Some(&pkce.challenge));
    let result = authorize(&f.http, &url).await;
    assert_eq!(result.state.as_deref(), Some("state-1"));
    let code = AuthorizationCode::new(result.code.expect("a code"));

    // A wrong verifier is refused.
    let wrong = Pkce::generate().expect("rng");
    let e = f
        .endpoint()
        .exchange_code(&code, REDIRECT_URI, Some(&wrong.verifier))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TokenError::Rejected { error, .. } if error == "invalid_grant"),
        "{e}"
    );
    assert_eq!(f.sim.sim.counters().pkce_failures, 1);

    // A fresh code with the right verifier works, once.
    let code = AuthorizationCode::new(authorize(&f.http, &url).await.code.expect("a code"));
    let tokens = f
        .endpoint()
        .exchange_code(&code, REDIRECT_URI, Some(&pkce.verifier))
        .await
        .expect("exchange");
    assert!(tokens.refresh_token.is_some());
    assert!(f.api_accepts(tokens.access_token.secret()).await);

    // Replaying it is refused and revokes what it issued (RFC 6749 §4.1.2).
    let e = f
        .endpoint()
        .exchange_code(&code, REDIRECT_URI, Some(&pkce.verifier))
        .await
        .unwrap_err();
    assert!(matches!(e, TokenError::Rejected { .. }), "{e}");
    let counters = f.sim.sim.counters();
    assert_eq!((counters.codes_replayed, counters.families_revoked), (1, 1));
    assert!(!f.api_accepts(tokens.access_token.secret()).await);

    // An unregistered redirect URI gets an error page, not a redirect.
    let other = authorize_url(
        &f.provider,
        client_id,
        "https://evil.example/cb",
        "s",
        Some(&pkce.challenge),
    );
    assert_eq!(f.http.get(other).send().await.expect("authorize").status(), 400);

    // No PKCE: the simulator insists.
    let bare = authorize_url(&f.provider, client_id, REDIRECT_URI, "s", None);
    let bare = bare.as_str().replace("&code_challenge_method=S256", "");
    let result = authorize(&f.http, &bare.parse().expect("url")).await;
    assert_eq!(result.error.as_deref(), Some("invalid_request"));

    // A user who cancels.
    f.sim.sim.deny_next_authorize();
    let result = authorize(&f.http, &url).await;
    assert_eq!((result.error.as_deref(), result.code), (Some("access_denied"), None));
}

#[tokio::test]
async fn rotation_is_single_use_and_reuse_revokes_the_family() {
    let f = fixture(PresetName::Generic).await;
    let endpoint = f.endpoint();

    let first = f.login().await.refresh_token.expect("refresh token");
    let second_set = endpoint.refresh(&first).await.expect("rotation 1");
    let second = second_set.refresh_token.clone().expect("rotated");
    assert_ne!(first, second, "a new refresh token on each use");
    let third_set = endpoint.refresh(&second).await.expect("rotation 2");
    let third = third_set.refresh_token.clone().expect("rotated");
    assert_eq!(f.sim.sim.counters().refreshes, 2);
    let latest = third_set.access_token.secret();
    assert!(f.sim.sim.is_latest_access_token(latest));
    assert!(!f.sim.sim.is_latest_access_token(second_set.access_token.secret()));
    assert!(!f.sim.sim.is_latest_access_token("at-never-issued"));

    // Spending a retired token again: refused, and the whole family dies.
    let e = endpoint.refresh(&first).await.unwrap_err();
    assert!(matches!(e, TokenError::DeadToken { .. }), "{e}");
    let counters = f.sim.sim.counters();
    assert_eq!((counters.refresh_tokens_reused, counters.families_revoked), (1, 1));
    let e = endpoint.refresh(&third).await.unwrap_err();
    assert!(
        matches!(e, TokenError::DeadToken { .. }),
        "the live token died with its family: {e}"
    );
    assert!(!f.api_accepts(third_set.access_token.secret()).await);
    assert!(
        !f.sim.sim.is_latest_access_token(latest),
        "a revoked family has no current access token"
    );
}

#[tokio::test]
async fn grace_period_allows_reuse_without_revoking() {
    // Xero: HTTP Basic, and the previous refresh token works for 30 minutes.
    let f = fixture(PresetName::Xero).await;
    let secret = f.credentials.client_secret.secret();
    assert!(
        secret.contains(':') && secret.contains('+'),
        "exercises RFC 6749 §2.3.1 encoding"
    );
    let endpoint = f.endpoint();

    let first = f.login().await.refresh_token.expect("refresh token");
    let second = endpoint
        .refresh(&first)
        .await
        .expect("rotation")
        .refresh_token
        .expect("rotated");
    let again = endpoint.refresh(&first).await.expect("reuse inside the grace period");
    assert_eq!(
        again.refresh_token.as_ref(),
        Some(&second),
        "the grace reuse answers with the live token"
    );
    let counters = f.sim.sim.counters();
    assert_eq!(
        (
            counters.grace_reuses,
            counters.refresh_tokens_reused,
            counters.families_revoked
        ),
        (1, 0, 0)
    );

    // With the grace period gone, the same reuse kills the family.
    f.sim.sim.reconfigure(|c| c.reuse_grace = Duration::ZERO);
    let e = endpoint.refresh(&first).await.unwrap_err();
    assert!(matches!(e, TokenError::DeadToken { .. }), "{e}");
    assert_eq!(f.sim.sim.counters().families_revoked, 1);
}

#[tokio::test]
async fn each_preset_answers_with_its_quirks() {
    for preset in PresetName::ALL {
        let f = fixture(preset).await;
        let endpoint = f.endpoint();
        let base_url = f.sim.base_url.as_str();

        let login = f.login().await;
        let refresh_token = login
            .refresh_token
            .clone()
            .unwrap_or_else(|| panic!("{preset}: refresh token at login"));
        let refreshed = endpoint
            .refresh(&refresh_token)
            .await
            .unwrap_or_else(|e| panic!("{preset}: {e}"));
        assert!(f.api_accepts(refreshed.access_token.secret()).await, "{preset}");

        match preset {
            PresetName::Salesforce => {
                assert!(refreshed.expires_in_assumed, "Salesforce sends no expires_in");
                assert_eq!(refreshed.expires_in, 7200);
                assert_eq!(refreshed.instance_url.as_deref(), Some(base_url));
            }
            PresetName::Zoho => assert_eq!(refreshed.api_domain.as_deref(), Some(base_url)),
            PresetName::Quickbooks => assert_eq!(refreshed.refresh_token_expires_in, Some(8_640_000)),
            PresetName::ExactOnline => assert_eq!(refreshed.expires_in, 600, "Exact's string expires_in is read"),
            _ => assert!(!refreshed.expires_in_assumed, "{preset}"),
        }
        match (preset.settings().rotates_refresh_tokens, preset) {
            (true, _) => {
                assert!(
                    refreshed.refresh_token.as_ref().is_some_and(|t| *t != refresh_token),
                    "{preset} rotates"
                )
            }
            (false, PresetName::Hubspot) => assert_eq!(refreshed.refresh_token.as_ref(), Some(&refresh_token)),
            (false, _) => assert!(
                refreshed.refresh_token.is_none(),
                "{preset}: no new refresh token; keep the old one"
            ),
        }

        // Every preset's dead-token answer is recognised as such.
        let e = endpoint
            .refresh(&RefreshToken::new("rt-never-issued"))
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::DeadToken { .. }), "{preset}: {e}");
        match preset {
            PresetName::ExactOnline => assert!(e.to_string().contains("Old refresh token used."), "{e}"),
            PresetName::Hubspot => assert!(e.to_string().contains("BAD_REFRESH_TOKEN"), "{e}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn client_authentication_is_strict() {
    let f = fixture(PresetName::Xero).await;
    let refresh_token = f.login().await.refresh_token.expect("refresh token");

    let mut wrong = f.credentials.clone();
    wrong.client_secret = ClientSecret::new("not-the-secret");
    let endpoint = TokenEndpoint {
        provider: &f.provider,
        credentials: &wrong,
        http: &f.http,
    };
    let e = endpoint.refresh(&refresh_token).await.unwrap_err();
    assert!(matches!(e, TokenError::InvalidClient { .. }), "{e}");
    assert_eq!(f.sim.sim.counters().refreshes, 0, "nothing was spent");

    // The right client in the body, where the provider wants HTTP Basic, is refused too.
    let mut body_provider = f.provider.clone();
    body_provider.settings.client_auth = ClientAuth::Body;
    let endpoint = TokenEndpoint {
        provider: &body_provider,
        credentials: &f.credentials,
        http: &f.http,
    };
    assert!(matches!(
        endpoint.refresh(&refresh_token).await,
        Err(TokenError::InvalidClient { .. })
    ));
}

#[tokio::test]
async fn faults_are_injected_as_configured() {
    let f = OauthFixture::start(SimConfig::for_preset(PresetName::Generic), Duration::from_secs(3)).await;
    let endpoint = f.endpoint();
    let sim = &f.sim.sim;
    let token = f.login().await.refresh_token.expect("refresh token");

    // A 503 processes nothing: the same token still works afterwards.
    sim.inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    let e = endpoint.refresh(&token).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(sim.counters().refreshes, 0);
    let token = endpoint
        .refresh(&token)
        .await
        .expect("after the 503")
        .refresh_token
        .expect("rotated");

    // Accept-then-drop: the provider rotated, the client never heard.
    sim.inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::DropAfterProcessing,
        times: 1,
    });
    let e = endpoint.refresh(&token).await.unwrap_err();
    assert!(matches!(e, TokenError::OutcomeUnknown(_)), "{e}");
    let counters = sim.counters();
    assert_eq!((counters.refreshes, counters.dropped_after_processing), (2, 1));
    // Which is why a blind retry is fatal: the token was spent.
    let e = endpoint.refresh(&token).await.unwrap_err();
    assert!(matches!(e, TokenError::DeadToken { .. }), "{e}");
    assert_eq!(sim.counters().families_revoked, 1);

    // A delay longer than the client's timeout, after processing: also unknown.
    let token = f.login().await.refresh_token.expect("refresh token");
    let fault = Fault::DelayAfterProcessing { millis: 60_000 };
    sim.inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault,
        times: 1,
    });
    let e = endpoint.refresh(&token).await.unwrap_err();
    assert!(
        matches!(&e, TokenError::OutcomeUnknown(m) if m.contains("timeout")),
        "{e}"
    );
    assert_eq!(sim.counters().refreshes, 3);
}

#[tokio::test]
async fn revocation_follows_rfc7009() {
    let f = fixture(PresetName::Google).await;
    let endpoint = f.endpoint();
    let tokens = f.login().await;
    let refresh_token = tokens.refresh_token.expect("refresh token");

    assert!(
        endpoint
            .revoke(refresh_token.secret(), TokenHint::RefreshToken)
            .await
            .expect("revoke")
    );
    assert!(matches!(
        endpoint.refresh(&refresh_token).await,
        Err(TokenError::DeadToken { .. })
    ));
    assert!(
        !f.api_accepts(tokens.access_token.secret()).await,
        "access tokens of the grant die too"
    );
    // Unknown tokens: still 200.
    assert!(
        endpoint
            .revoke("never-issued", TokenHint::AccessToken)
            .await
            .expect("revoke unknown")
    );
    // A 503 means the token still lives: reported, not swallowed.
    f.sim.sim.inject(FaultPlan {
        grant: Grant::Revoke,
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    assert!(
        endpoint
            .revoke("x", TokenHint::AccessToken)
            .await
            .is_err_and(|e| e.is_transient())
    );
}

/// The simulator binary started by `scripts/stack` answers over HTTP: counters
/// and fault injection for tests in other processes.
#[tokio::test]
async fn the_stack_simulator_process_serves_counters_and_faults() {
    let base = std::env::var("OAUTH_SYNC_SIMULATOR_URL")
        .expect("OAUTH_SYNC_SIMULATOR_URL: the local stack is not running (scripts/stack start; . .local/stack.env)");
    let http = http(TIMEOUT);
    let counters = || async {
        let response = http
            .get(format!("{base}/_sim/counters"))
            .send()
            .await
            .expect("counters");
        response.json::<Counters>().await.expect("json")
    };
    let before = counters().await;
    let plan = vec![FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::Status { status: 503 },
        times: 1,
    }];
    let response = http
        .post(format!("{base}/_sim/faults"))
        .json(&plan)
        .send()
        .await
        .expect("faults");
    assert_eq!(response.status(), 204);
    let form = [("grant_type", "refresh_token"), ("refresh_token", "x")];
    let answer = http
        .post(format!("{base}/token"))
        .form(&form)
        .send()
        .await
        .expect("token");
    assert_eq!(answer.status(), 503);
    let after = counters().await;
    assert_eq!(after.faults_injected, before.faults_injected + 1);
    assert_eq!(after.refresh_requests, before.refresh_requests + 1);
}
