//! The provider simulator behaves as configured, driven through the product's
//! own OAuth client (`shared::oauth`): code flow with PKCE, single-use codes,
//! rotation, reuse detection revoking the family, grace periods, each preset's
//! quirks, RFC 7009 revocation, and fault injection; and its data APIs (Exact
//! Online's paging, sync filters, mandatory `$select`, rate limits and error
//! block, Graph's delta rounds with partial updates of users, data faults).

use std::time::Duration;

use oauth_sync_tests::simulator::{
    Counters, DataCommand, DataConfig, DataFault, DataFaultPlan, ErrorBlock, Fault, FaultPlan, Grant, RateLimits,
    SimConfig,
};
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

// ---------------------------------------------------------------------------
// Data APIs

/// A client of the simulator's data APIs with a live access token.
struct DataClient {
    f: OauthFixture,
    token: String,
}

impl DataClient {
    async fn start(data: DataConfig) -> DataClient {
        let config = SimConfig {
            data,
            ..SimConfig::for_preset(PresetName::ExactOnline)
        };
        let f = OauthFixture::start(config, TIMEOUT).await;
        let token = f.login().await.access_token.secret().to_owned();
        DataClient { f, token }
    }

    fn sim(&self) -> &oauth_sync_tests::simulator::Simulator {
        &self.f.sim.sim
    }

    fn exact(&self, path: &str) -> String {
        self.f.sim.url(&format!("/api/v1/{}/{path}", self.sim().division()))
    }

    /// GET with the bearer token, as a JSON client.
    async fn get(&self, url: &str, prefer: Option<&str>) -> reqwest::Response {
        let mut request = self.f.http.get(url).bearer_auth(&self.token);
        request = request.header("Accept", "application/json");
        if let Some(prefer) = prefer {
            request = request.header("Prefer", prefer);
        }
        request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    async fn json(&self, url: &str, prefer: Option<&str>) -> serde_json::Value {
        let response = self.get(url, prefer).await;
        assert_eq!(response.status(), 200, "{url}");
        response.json().await.expect("json")
    }

    /// Follows Exact's `__next` from `url`; returns the records and the number of pages.
    async fn exact_all(&self, url: &str) -> (Vec<serde_json::Value>, usize) {
        let (mut records, mut pages, mut next) = (Vec::new(), 0, Some(url.to_owned()));
        while let Some(url) = next {
            let body = self.json(&url, None).await;
            records.extend(body["d"]["results"].as_array().expect("results").iter().cloned());
            next = body["d"]["__next"].as_str().map(str::to_owned);
            pages += 1;
        }
        (records, pages)
    }

    /// Follows Graph's `@odata.nextLink` to the `@odata.deltaLink`; returns the items, pages and the delta link.
    async fn graph_round(&self, url: &str, prefer: Option<&str>) -> (Vec<serde_json::Value>, usize, String) {
        let (mut items, mut pages, mut url) = (Vec::new(), 0, url.to_owned());
        loop {
            let body = self.json(&url, prefer).await;
            pages += 1;
            items.extend(body["value"].as_array().expect("value").iter().cloned());
            match (body["@odata.nextLink"].as_str(), body["@odata.deltaLink"].as_str()) {
                (Some(next), None) => url = next.to_owned(),
                (None, Some(delta)) => return (items, pages, delta.to_owned()),
                other => panic!("a page has exactly one of nextLink and deltaLink: {other:?}"),
            }
        }
    }
}

fn timestamp(record: &serde_json::Value) -> i64 {
    let text = record["Timestamp"]
        .as_str()
        .expect("Timestamp is a JSON string (Edm.Int64)");
    text.parse().expect("an int64")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn exact_sync_endpoint_pages_through_every_project_and_the_deleted_log() {
    let c = DataClient::start(DataConfig {
        project_deleted_entity_type: Some(99),
        ..DataConfig::default()
    })
    .await;
    let sim = c.sim();
    let seeded = sim.seed_projects(2_345);

    // The division comes from current/Me, a JSON number, without rate headers.
    let me = c
        .get(&c.f.sim.url("/api/v1/current/Me?$select=CurrentDivision"), None)
        .await;
    assert_eq!(header(&me, "X-RateLimit-Minutely-Remaining"), None);
    let me: serde_json::Value = me.json().await.expect("json");
    assert_eq!(me["d"]["results"][0]["CurrentDivision"].as_i64(), Some(sim.division()));

    // A full pull from `Timestamp gt 1` (an Int32 literal), following __next.
    let first = c.exact("sync/Project/Projects?$select=ID,Code,Description,Timestamp&$filter=Timestamp gt 1");
    let (records, pages) = c.exact_all(&first).await;
    assert_eq!((records.len(), pages), (2_345, 3));
    let ids: std::collections::BTreeSet<_> = records.iter().map(|r| r["ID"].as_str().expect("ID")).collect();
    assert_eq!(ids.len(), 2_345);
    assert!(seeded.iter().all(|id| ids.contains(id.as_str())));
    assert!(records.windows(2).all(|w| timestamp(&w[0]) < timestamp(&w[1])));
    let highest = records.iter().map(timestamp).max().expect("records");
    assert!(highest > i64::from(u32::MAX), "row versions exceed 32 bits");
    assert!(records[0].get("Modified").is_none(), "$select limits the fields");

    // Changes since the highest Timestamp seen: two updates; a delete goes to sync/Deleted.
    assert!(sim.update_project(&seeded[10], "renamed"));
    assert!(sim.update_project(&seeded[20], "renamed too"));
    assert!(sim.delete_project(&seeded[30]));
    let since = c.exact(&format!(
        "sync/Project/Projects?$select=ID,Description,Timestamp&$filter=Timestamp gt {highest}L"
    ));
    let (changed, _) = c.exact_all(&since).await;
    let changed_ids: Vec<_> = changed.iter().map(|r| r["ID"].as_str().expect("ID")).collect();
    assert_eq!(changed_ids, [seeded[10].as_str(), seeded[20].as_str()]);
    assert_eq!(changed[0]["Description"], "renamed");
    let deleted = c.exact(&format!(
        "sync/Deleted?$select=EntityKey,Division,Timestamp&$filter=Timestamp gt {highest}L and EntityType eq 99"
    ));
    let (deleted, _) = c.exact_all(&deleted).await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["EntityKey"], seeded[30].as_str());
    assert_eq!(deleted[0]["Division"].as_i64(), Some(sim.division()));
    assert!(timestamp(&deleted[0]) > highest);
    assert_eq!(sim.projects().len(), 2_344);

    // The normal endpoint: 60 a page in ID order.
    let (all, pages) = c.exact_all(&c.exact("project/Projects?$select=ID,Code")).await;
    assert_eq!((all.len(), pages), (2_344, 40));
    assert!(all.windows(2).all(|w| w[0]["ID"].as_str() < w[1]["ID"].as_str()));

    // Strictness: a malformed filter, another division, no Accept: application/json.
    let bad = c
        .get(
            &c.exact("sync/Project/Projects?$select=ID&$filter=Timestamp gt 5000000000"),
            None,
        )
        .await;
    assert_eq!(bad.status(), 400, "an Int64 literal needs its L");
    let body: serde_json::Value = bad.json().await.expect("json");
    assert!(body["error"]["message"]["value"].is_string(), "{body}");
    let other = c.f.sim.url(&format!(
        "/api/v1/{}/sync/Project/Projects?$select=ID",
        sim.division() + 1
    ));
    assert_eq!(c.get(&other, None).await.status(), 403);
    let xml = c.f.http.get(&first).bearer_auth(&c.token).send().await.expect("get");
    assert!(header(&xml, "content-type").is_some_and(|t| t.contains("xml")));

    let counters = sim.counters();
    assert_eq!(
        (counters.data_errors, counters.data_429s, counters.data_401s),
        (2, 0, 0)
    );
    assert_eq!((counters.data_blocks, counters.data_blocked), (0, 0), "never blocked");
    assert_eq!(counters.data_pages, 1 + 3 + 1 + 1 + 40);
    assert_eq!(counters.data_requests, counters.data_pages + 3);
}

#[tokio::test]
async fn exact_limits_answer_429_with_only_the_exceeded_limits_headers() {
    let c = DataClient::start(DataConfig {
        rate_limit: Some(RateLimits {
            minutely: 3,
            minute_window: Duration::from_millis(700),
            daily: 5,
            day_window: Duration::from_secs(3600),
        }),
        ..DataConfig::default()
    })
    .await;
    let url = c.exact("sync/Project/Projects?$select=ID&$filter=Timestamp gt 1L");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    let number = |response: &reqwest::Response, name: &str| -> u64 {
        header(response, name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .expect("a number")
    };

    for remaining in [2, 1, 0] {
        let ok = c.get(&url, None).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(number(&ok, "X-RateLimit-Minutely-Remaining"), remaining);
        assert_eq!(number(&ok, "X-RateLimit-Remaining"), remaining + 2);
        assert_eq!(number(&ok, "X-RateLimit-Limit"), 5);
    }
    let minute = c.get(&url, None).await;
    assert_eq!(minute.status(), 429);
    assert_eq!(number(&minute, "X-RateLimit-Minutely-Limit"), 3);
    assert_eq!(number(&minute, "X-RateLimit-Minutely-Remaining"), 0);
    let reset = number(&minute, "X-RateLimit-Minutely-Reset");
    assert!(
        reset > now_ms() && reset <= now_ms() + 700,
        "epoch milliseconds: {reset}"
    );
    assert_eq!(
        header(&minute, "X-RateLimit-Limit"),
        None,
        "no daily headers on a minutely 429"
    );
    assert_eq!(header(&minute, "Retry-After"), None);
    // current/Me is not limited.
    let me = c.get(&c.f.sim.url("/api/v1/current/Me"), None).await;
    assert_eq!(me.status(), 200);

    // Wait for the minute to reset: two more, then the day is spent.
    tokio::time::sleep(Duration::from_millis(reset.saturating_sub(now_ms()) + 50)).await;
    for _ in 0..2 {
        assert_eq!(c.get(&url, None).await.status(), 200);
    }
    let day = c.get(&url, None).await;
    assert_eq!(day.status(), 429);
    assert_eq!(number(&day, "X-RateLimit-Remaining"), 0);
    assert!(number(&day, "X-RateLimit-Reset") > now_ms() + 3_500_000);
    assert_eq!(
        header(&day, "X-RateLimit-Minutely-Limit"),
        None,
        "no minutely headers on a daily 429"
    );

    let counters = c.sim().counters();
    assert_eq!((counters.data_429s, counters.data_errors), (2, 0));
    let log = c.sim().data_requests_log();
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 2);

    // Switched off: no limits and no headers at all.
    c.sim().reconfigure(|config| config.data.rate_limit = None);
    let free = c.get(&url, None).await;
    assert_eq!(free.status(), 200);
    assert!(!free.headers().keys().any(|k| k.as_str().starts_with("x-ratelimit")));
}

#[tokio::test]
async fn graph_delta_rounds_report_updates_and_removals() {
    let c = DataClient::start(DataConfig::default()).await;
    let sim = c.sim();
    let ids = sim.seed_contacts(250);
    let prefer = Some("odata.maxpagesize=100");

    let (items, pages, delta) = c.graph_round(&c.f.sim.url("/v1.0/me/contacts/delta"), prefer).await;
    assert_eq!((items.len(), pages), (250, 3));
    assert!(
        items
            .iter()
            .all(|i| i.get("@removed").is_none() && i["displayName"].is_string())
    );

    assert!(sim.update_contact(&ids[5], "Renamed Five"));
    assert!(sim.delete_contact(&ids[6]));
    let added = sim.insert_contact("New", "Person", "new@example.com");
    let (changes, pages, delta) = c.graph_round(&delta, prefer).await;
    assert_eq!(pages, 1);
    let summary: Vec<(String, bool)> = changes
        .iter()
        .map(|i| (i["id"].as_str().expect("id").to_owned(), i.get("@removed").is_some()))
        .collect();
    assert_eq!(
        summary,
        [(ids[5].clone(), false), (ids[6].clone(), true), (added.clone(), false)]
    );
    assert_eq!(changes[0]["displayName"], "Renamed Five");
    assert_eq!(changes[1]["@removed"]["reason"], "deleted");
    let (none, _, delta) = c.graph_round(&delta, prefer).await;
    assert!(none.is_empty());

    // `latest` starts from now; the plain list pages with $top.
    let latest = c.f.sim.url("/v1.0/me/contacts/delta?$deltatoken=latest");
    let (none, _, from_now) = c.graph_round(&latest, None).await;
    assert!(none.is_empty());
    sim.delete_contact(&ids[7]);
    let (removed, _, _) = c.graph_round(&from_now, None).await;
    assert_eq!(removed.len(), 1);
    let mut next = Some(c.f.sim.url("/v1.0/me/contacts?$top=100"));
    let (mut listed, mut pages) = (0, 0);
    while let Some(url) = next {
        let body = c.json(&url, None).await;
        listed += body["value"].as_array().expect("value").len();
        pages += 1;
        next = body["@odata.nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!((listed, pages), (sim.contacts().len(), 3));

    // A garbled token is refused; an expired one is gone (410): start over.
    let garbled = format!("{}x", delta.replace("$deltatoken=", "$deltatoken=AAAA"));
    let response = c.get(&garbled, None).await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("json");
    assert!(body["error"]["code"].is_string(), "{body}");
    sim.expire_delta_tokens();
    assert_eq!(c.get(&delta, None).await.status(), 410);
}

#[tokio::test]
async fn data_faults_bad_tokens_and_http_control() {
    let c = DataClient::start(DataConfig::default()).await;
    let sim = c.sim();
    let http = &c.f.http;

    // Data changes over HTTP, for other processes.
    let seeded: serde_json::Value = http
        .post(c.f.sim.url("/_sim/data"))
        .json(&DataCommand::SeedProjects { count: 5 })
        .send()
        .await
        .expect("seed")
        .json()
        .await
        .expect("json");
    assert_eq!(seeded["ids"].as_array().map(Vec::len), Some(5));
    let deleted = http
        .post(c.f.sim.url("/_sim/data"))
        .json(&serde_json::json!({"op": "delete_project", "id": seeded["ids"][0]}))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    assert_eq!(sim.projects().len(), 4);

    // A bad token: 401 with WWW-Authenticate and Exact's error body.
    let url = c.exact("sync/Project/Projects?$select=ID");
    let response = http.get(&url).bearer_auth("at-unknown").send().await.expect("get");
    assert_eq!(response.status(), 401);
    assert!(header(&response, "WWW-Authenticate").is_some_and(|v| v.contains("error=\"invalid_token\"")));
    let body: serde_json::Value = response.json().await.expect("json");
    assert!(body["error"]["message"]["value"].is_string(), "{body}");

    // Faults, queued over HTTP and in order.
    let plans = vec![
        DataFaultPlan {
            fault: DataFault::RetryAfter { status: 429, secs: 7 },
            times: 2,
            path_contains: Some("/v1.0/".to_owned()),
        },
        DataFaultPlan {
            fault: DataFault::Truncated,
            times: 1,
            path_contains: None,
        },
        DataFaultPlan {
            fault: DataFault::InvalidJson,
            times: 1,
            path_contains: None,
        },
        DataFaultPlan {
            fault: DataFault::Status { status: 503 },
            times: 1,
            path_contains: None,
        },
    ];
    let queued = http
        .post(c.f.sim.url("/_sim/data-faults"))
        .json(&plans)
        .send()
        .await
        .expect("faults");
    assert_eq!(queued.status(), 204);

    let truncated = c.get(&url, None).await;
    assert_eq!(truncated.status(), 200);
    assert!(truncated.json::<serde_json::Value>().await.is_err());
    let html = c.get(&url, None).await;
    assert!(header(&html, "content-type").is_some_and(|t| t.starts_with("text/html")));
    assert_eq!(c.get(&url, None).await.status(), 503);
    let contacts = c.f.sim.url("/v1.0/me/contacts");
    for _ in 0..2 {
        let storm = c.get(&contacts, None).await;
        assert_eq!(storm.status(), 429);
        assert_eq!(header(&storm, "Retry-After"), Some("7"));
    }
    assert_eq!(c.get(&contacts, None).await.status(), 200);
    sim.inject_data_fault(DataFaultPlan {
        fault: DataFault::Delay { millis: 300 },
        times: 1,
        path_contains: None,
    });
    let started = std::time::Instant::now();
    assert_eq!(c.get(&url, None).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let counters = sim.counters();
    assert_eq!(counters.data_faults, 6);
    assert_eq!((counters.data_401s, counters.data_429s, counters.data_pages), (1, 2, 2));
    let log = sim.data_requests_log();
    assert_eq!(log.len() as u64, counters.data_requests);
    let same_page = log
        .iter()
        .filter(|r| r.path_and_query.ends_with("/sync/Project/Projects?$select=ID"))
        .count();
    assert_eq!(same_page, 5);
}

#[tokio::test]
async fn exact_sync_endpoints_refuse_a_request_without_select() {
    let c = DataClient::start(DataConfig {
        project_deleted_entity_type: Some(99),
        ..DataConfig::default()
    })
    .await;
    let sim = c.sim();
    let ids = sim.seed_projects(3);
    assert!(sim.delete_project(&ids[0]));
    let mandatory = serde_json::json!({"error": {"code": "", "message": {"lang": "", "value": "$select is mandatory for bulk and sync APIs"}}});

    for path in [
        "sync/Project/Projects",
        "sync/Project/Projects?$filter=Timestamp gt 1",
        "sync/Deleted?$filter=Timestamp gt 1 and EntityType eq 99",
    ] {
        let response = c.get(&c.exact(path), None).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body, mandatory, "{path}");
    }
    let (projects, _) = c
        .exact_all(&c.exact("sync/Project/Projects?$select=ID&$filter=Timestamp gt 1"))
        .await;
    assert_eq!(projects.len(), 2);
    let (deleted, _) = c
        .exact_all(&c.exact("sync/Deleted?$select=EntityKey&$filter=Timestamp gt 1 and EntityType eq 99"))
        .await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["EntityKey"], ids[0].as_str());
    // The next link keeps the $select.
    sim.seed_projects(1_200);
    let first = c
        .json(
            &c.exact("sync/Project/Projects?$select=ID&$filter=Timestamp gt 1"),
            None,
        )
        .await;
    let next = first["d"]["__next"].as_str().expect("a second page");
    assert!(next.contains("$select=ID"), "{next}");
    // The normal endpoints stay as they are: all fields without $select.
    let all = c.json(&c.exact("project/Projects"), None).await;
    assert!(all["d"]["results"][0]["Modified"].is_string(), "{all}");

    let counters = sim.counters();
    assert_eq!((counters.data_errors, counters.data_blocks), (3, 0));
}

#[tokio::test]
async fn exact_blocks_a_division_after_too_many_errors_until_the_block_lifts() {
    let block = Duration::from_millis(600);
    let c = DataClient::start(DataConfig {
        error_block: Some(ErrorBlock {
            errors: 3,
            window: Duration::from_secs(60),
            block,
        }),
        ..DataConfig::default()
    })
    .await;
    let sim = c.sim();
    sim.seed_projects(5);
    let division = sim.division();
    let good = c.exact("sync/Project/Projects?$select=ID&$filter=Timestamp gt 1");
    let bad = c.exact("sync/Project/Projects?$filter=Timestamp gt 1");

    // Errors of another division count toward its key, not this one's.
    let other =
        c.f.sim
            .url(&format!("/api/v1/{}/project/Projects?$select=ID", division + 1));
    for _ in 0..4 {
        assert_eq!(c.get(&other, None).await.status(), 403);
    }
    assert_eq!(c.get(&other, None).await.status(), 429);
    assert!(sim.is_blocked(division + 1) && !sim.is_blocked(division));
    // Three errors are allowed (a 401 among them: a bad token counts too), the fourth blocks.
    let unauthorized = c.f.http.get(&good).bearer_auth("at-unknown").send().await.expect("get");
    assert_eq!(unauthorized.status(), 401);
    for _ in 0..2 {
        assert_eq!(c.get(&bad, None).await.status(), 400);
    }
    assert_eq!(c.get(&good, None).await.status(), 200);
    assert!(!sim.is_blocked(division));
    assert_eq!(c.get(&bad, None).await.status(), 400, "the error itself is answered");
    assert!(sim.is_blocked(division));

    // Blocked: every request of the division, good ones too, answers 429
    // without Retry-After or rate-limit headers; current/Me has no division.
    let blocked = c.get(&good, None).await;
    assert_eq!(blocked.status(), 429);
    assert_eq!(header(&blocked, "Retry-After"), None);
    assert!(!blocked.headers().keys().any(|k| k.as_str().starts_with("x-ratelimit")));
    let body: serde_json::Value = blocked.json().await.expect("json");
    assert!(
        body["error"]["message"]["value"]
            .as_str()
            .is_some_and(|m| m.contains("blocked")),
        "{body}"
    );
    assert_eq!(c.get(&c.exact("project/Projects"), None).await.status(), 429);
    let me = c.f.sim.url("/api/v1/current/Me?$select=CurrentDivision");
    assert_eq!(c.get(&me, None).await.status(), 200);
    let counters = sim.counters();
    assert_eq!((counters.data_blocks, counters.data_blocked), (2, 3));
    assert_eq!(counters.data_429s, 3);

    // The block lifts after its time, and the count starts afresh.
    tokio::time::sleep(block + Duration::from_millis(100)).await;
    assert_eq!(c.get(&good, None).await.status(), 200);
    assert!(!sim.is_blocked(division));

    // A lasting 403 (rights not granted yet) is a Status fault with a large
    // `times`, until cleared; it counts toward the block like any 403.
    sim.inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 403 },
        times: u32::MAX,
        path_contains: Some(format!("/api/v1/{division}/")),
    });
    for _ in 0..4 {
        let forbidden = c.get(&good, None).await;
        assert_eq!(forbidden.status(), 403);
        let body: serde_json::Value = forbidden.json().await.expect("json");
        assert!(body["error"]["message"]["value"].is_string(), "{body}");
    }
    assert_eq!(c.get(&good, None).await.status(), 429, "blocked by its own 403s");
    sim.clear_data_faults();
    sim.reset_error_blocks();
    assert_eq!(c.get(&good, None).await.status(), 200);
    assert_eq!(sim.counters().data_blocks, 3);

    // Switched off (also over HTTP): errors are only counted.
    let off =
        c.f.http
            .post(c.f.sim.url("/_sim/data"))
            .json(&DataCommand::SetErrorBlock { error_block: None })
            .send()
            .await
            .expect("command");
    assert_eq!(off.status(), 200);
    for _ in 0..5 {
        assert_eq!(c.get(&bad, None).await.status(), 400);
    }
    assert_eq!(c.get(&good, None).await.status(), 200);
    assert_eq!(sim.counters().data_blocks, 3);
}

#[tokio::test]
async fn graph_users_delta_sends_only_what_changed_of_a_known_user() {
    let c = DataClient::start(DataConfig::default()).await;
    let sim = c.sim();
    let ids = sim.seed_users(150);
    let prefer = Some("odata.maxpagesize=100");
    let delta_url = c.f.sim.url("/v1.0/users/delta");

    // The first round: every user, whole.
    let (items, pages, delta) = c.graph_round(&delta_url, prefer).await;
    assert_eq!((items.len(), pages), (150, 2));
    for item in &items {
        for property in [
            "displayName",
            "givenName",
            "surname",
            "mail",
            "userPrincipalName",
            "jobTitle",
        ] {
            assert!(item.get(property).is_some(), "{property} in {item}");
        }
    }

    // Updates come back as `id` and what changed; a new user whole; a
    // deleted one soft (reason `changed`) or for good (`deleted`).
    assert!(sim.update_user_job_title(&ids[3], Some("Controller")));
    assert!(sim.update_user_display_name(&ids[4], "Renamed Four"));
    assert!(sim.update_user_job_title(&ids[5], Some("CFO")));
    assert!(sim.update_user_display_name(&ids[5], "Renamed Five"));
    assert!(sim.delete_user(&ids[6]));
    assert!(sim.purge_user(&ids[7]));
    let added = sim.insert_user("New", "Person");
    assert!(!sim.update_user_job_title("unknown", Some("x")));
    let (changes, pages, delta) = c.graph_round(&delta, prefer).await;
    assert_eq!(pages, 1);
    let by_id = |id: &str| {
        changes
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {changes:?}"))
            .clone()
    };
    assert_eq!(changes.len(), 6, "{changes:?}");
    assert_eq!(
        by_id(&ids[3]),
        serde_json::json!({"id": ids[3], "jobTitle": "Controller"})
    );
    assert_eq!(
        by_id(&ids[4]),
        serde_json::json!({"id": ids[4], "displayName": "Renamed Four"})
    );
    assert_eq!(
        by_id(&ids[5]),
        serde_json::json!({"id": ids[5], "jobTitle": "CFO", "displayName": "Renamed Five"})
    );
    assert_eq!(
        by_id(&ids[6]),
        serde_json::json!({"id": ids[6], "@removed": {"reason": "changed"}})
    );
    assert_eq!(
        by_id(&ids[7]),
        serde_json::json!({"id": ids[7], "@removed": {"reason": "deleted"}})
    );
    let new = by_id(&added);
    assert_eq!(new["displayName"], "New Person");
    assert!(new["mail"].is_string() && new.get("jobTitle").is_some(), "{new}");

    // Purging the soft-deleted one is news again; a job title cleared is a null.
    assert!(sim.purge_user(&ids[6]));
    assert!(sim.update_user_job_title(&ids[3], None));
    let (changes, _, _) = c.graph_round(&delta, prefer).await;
    assert_eq!(
        changes,
        [
            serde_json::json!({"id": ids[6], "@removed": {"reason": "deleted"}}),
            serde_json::json!({"id": ids[3], "jobTitle": null}),
        ]
    );

    // $select is carried in the links; a change outside it is reported as the bare id.
    let selected = c.f.sim.url("/v1.0/users/delta?$select=displayName,jobTitle");
    let (items, _, delta) = c.graph_round(&selected, prefer).await;
    assert_eq!(items.len(), 149);
    assert!(
        items.iter().all(|i| i.as_object().is_some_and(|o| o.len() == 3)),
        "{items:?}"
    );
    assert!(delta.contains("$select=displayName,jobTitle&"), "{delta}");
    assert!(sim.update_user_display_name(&ids[8], "Eight"));
    let (changes, _, _) = c.graph_round(&delta, prefer).await;
    assert_eq!(changes, [serde_json::json!({"id": ids[8], "displayName": "Eight"})]);

    // A user changed while a first round is under way comes again, whole.
    let first = c.json(&delta_url, Some("odata.maxpagesize=50")).await;
    let next = first["@odata.nextLink"].as_str().expect("more pages").to_owned();
    let seen = first["value"][0]["id"].as_str().expect("id").to_owned();
    assert!(sim.update_user_job_title(&seen, Some("Changed mid-round")));
    let (rest, _, _) = c.graph_round(&next, Some("odata.maxpagesize=50")).await;
    let again = rest.iter().find(|i| i["id"] == seen.as_str()).expect("served again");
    assert_eq!(again["jobTitle"], "Changed mid-round");
    assert!(
        again["mail"].is_string(),
        "whole: the client has not finished its first round"
    );

    // The plain list: live users only, whole, paged with $top.
    let mut next = Some(c.f.sim.url("/v1.0/users?$top=60"));
    let (mut listed, mut pages) = (Vec::new(), 0);
    while let Some(url) = next {
        let body = c.json(&url, None).await;
        listed.extend(body["value"].as_array().expect("value").iter().cloned());
        pages += 1;
        next = body["@odata.nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!((listed.len(), pages), (149, 3));
    assert_eq!(listed, sim.users());
    assert!(listed.iter().all(|u| u["id"] != ids[6].as_str()));

    // Over HTTP, for other processes.
    let (http, url) = (&c.f.http, c.f.sim.url("/_sim/data"));
    let command = |command: DataCommand| {
        let url = url.clone();
        async move {
            let response = http.post(url).json(&command).send().await.expect("command");
            (
                response.status(),
                response.json::<serde_json::Value>().await.expect("json"),
            )
        }
    };
    let (status, seeded) = command(DataCommand::SeedUsers { count: 2 }).await;
    assert_eq!(status, 200);
    assert_eq!(seeded["ids"].as_array().map(Vec::len), Some(2));
    let id = seeded["ids"][0].as_str().expect("id").to_owned();
    let (status, _) = command(DataCommand::UpdateUserJobTitle {
        id: id.clone(),
        job_title: Some("Buyer".to_owned()),
    })
    .await;
    assert_eq!(status, 200);
    let (status, _) = command(DataCommand::DeleteUser {
        id: "nobody".to_owned(),
    })
    .await;
    assert_eq!(status, 404);
    let (_, users) = command(DataCommand::Users).await;
    let buyer = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["id"] == id.as_str())
        .cloned()
        .expect("seeded");
    assert_eq!(buyer["jobTitle"], "Buyer");
}

#[tokio::test]
async fn graph_next_links_expire_with_the_delta_tokens_and_429s_reach_users_delta() {
    let c = DataClient::start(DataConfig::default()).await;
    let sim = c.sim();
    sim.seed_users(30);
    sim.seed_contacts(30);
    let small = Some("odata.maxpagesize=10");

    for path in ["/v1.0/users/delta", "/v1.0/me/contacts/delta"] {
        let first = c.json(&c.f.sim.url(path), small).await;
        let next = first["@odata.nextLink"]
            .as_str()
            .expect("a round in progress")
            .to_owned();
        assert!(next.contains("$skiptoken="), "{next}");
        assert_eq!(c.get(&next, small).await.status(), 200, "live before expiry");
        sim.expire_delta_tokens();
        let gone = c.get(&next, small).await;
        assert_eq!(gone.status(), 410, "{path}: a next link expires with the sync state");
        let body: serde_json::Value = gone.json().await.expect("json");
        assert_eq!(body["error"]["code"], "syncStateNotFound", "{body}");
        // Starting over works.
        let (items, _, _) = c.graph_round(&c.f.sim.url(path), small).await;
        assert_eq!(items.len(), 30, "{path}");
    }

    // A token of one collection means nothing to another.
    let (_, _, contacts_delta) = c.graph_round(&c.f.sim.url("/v1.0/me/contacts/delta"), None).await;
    let confused = contacts_delta.replace("/me/contacts/delta", "/users/delta");
    assert_eq!(c.get(&confused, None).await.status(), 400);

    // A Graph-style 429 with Retry-After on users/delta only.
    sim.inject_data_fault(DataFaultPlan {
        fault: DataFault::RetryAfter { status: 429, secs: 3 },
        times: 2,
        path_contains: Some("/v1.0/users/delta".to_owned()),
    });
    let users = c.f.sim.url("/v1.0/users/delta");
    assert_eq!(c.get(&c.f.sim.url("/v1.0/me/contacts/delta"), None).await.status(), 200);
    let throttled = c.get(&users, None).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(header(&throttled, "Retry-After"), Some("3"));
    let body: serde_json::Value = throttled.json().await.expect("json");
    assert_eq!(body["error"]["code"], "TooManyRequests");
    assert_eq!(c.get(&users, None).await.status(), 429);
    let (items, _, users_delta) = c.graph_round(&users, None).await;
    assert_eq!(items.len(), 30);
    assert!(users_delta.contains("/v1.0/users/delta?$deltatoken="));
    let counters = sim.counters();
    assert_eq!(
        (counters.data_429s, counters.data_faults, counters.data_blocks),
        (2, 2, 0)
    );
}
