//! OpenID Connect Discovery for generic providers, against the simulator's
//! document: the endpoints and what the server supports come from
//! `{issuer}/.well-known/openid-configuration`, explicit keys win, a broken
//! or unreachable document stops the load with an error naming its URL,
//! `doctor` reads the document, and a server that announces RFC 9207 `iss`
//! gets an answer without it refused.

use std::net::SocketAddr;
use std::sync::Arc;

use oauth_sync_tests::simulator::{DiscoveryDoc, DiscoveryFault, SimConfig, Simulator, SimulatorHandle};
use oauth_sync_tests::stack::{LoginFixture, PROVIDER};
use serde_json::{Value, json};
use shared::config::{ClientAuth, Config, PresetName, ServiceSettings};
use shared::connection::ConnectionId;
use shared::doctor::{Finding, Verdict, check_settings};
use shared::login::flow::{ATTEMPT_TTL, LoginError, LoginService};

async fn simulator(config: SimConfig) -> SimulatorHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Simulator::start(config, addr).await.expect("simulator")
}

/// A generic provider that names only its issuer (line 4).
fn oidc_provider(issuer: &str) -> String {
    format!(
        "[providers.oidc]\npreset = \"generic\"\ncredentials_secret = \"oauth-sync/oidc\"\nissuer = \"{issuer}\"\n\
         scopes = [\"openid\", \"offline_access\"]\noffline_scope = \"offline_access\"\n"
    )
}

fn found<'a>(findings: &'a [Finding], check: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no `{check}` finding in {findings:#?}"))
}

#[tokio::test]
async fn a_generic_provider_with_an_issuer_takes_its_endpoints_from_the_document_and_explicit_keys_win() {
    let sim = simulator(SimConfig {
        client_auth: ClientAuth::Basic,
        ..SimConfig::for_preset(PresetName::Generic)
    })
    .await;
    let base = &sim.base_url;
    let text = format!(
        "{}\n[providers.mixed]\npreset = \"generic\"\ncredentials_secret = \"s\"\nissuer = \"{base}\"\n\
         token_url = \"https://token.example/override\"\nclient_auth = \"body\"\n\n\
         [providers.fixed]\npreset = \"google\"\ncredentials_secret = \"s\"\n",
        oidc_provider(base)
    );
    let config = Config::parse_and_discover(&text, "oidc.toml")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let oidc = &config.providers["oidc"];
    assert_eq!(oidc.authorize_url.as_str(), format!("{base}/authorize"));
    assert_eq!(oidc.token_url.as_str(), format!("{base}/token"));
    assert_eq!(
        oidc.revocation_url.as_ref().map(url::Url::as_str),
        Some(format!("{base}/revoke").as_str())
    );
    // The document lists client_secret_basic only: the generic default (body) gives way.
    assert_eq!(oidc.settings.client_auth, ClientAuth::Basic);
    let metadata = oidc.metadata.as_ref().expect("the document is kept");
    assert_eq!(
        metadata.document_url.as_str(),
        format!("{base}/.well-known/openid-configuration")
    );

    // Explicit keys win, the rest is discovered.
    let mixed = &config.providers["mixed"];
    assert_eq!(mixed.token_url.as_str(), "https://token.example/override");
    assert_eq!(mixed.authorize_url.as_str(), format!("{base}/authorize"));
    assert_eq!(mixed.settings.client_auth, ClientAuth::Body);
    // A preset that gives its endpoints fetches nothing; one issuer is fetched once.
    assert!(config.providers["fixed"].metadata.is_none());
    assert_eq!(sim.sim.counters().discovery_requests, 1);

    // Without discovery, the file says where the endpoints come from, for
    // each provider that needs its document.
    let e = Config::parse(&text, "oidc.toml").unwrap_err();
    let places: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        places,
        [(4, "providers.oidc.issuer"), (11, "providers.mixed.issuer")],
        "{e}"
    );
    assert!(
        e.iter()
            .all(|e| e.message.contains(&format!("{base}/.well-known/openid-configuration"))),
        "{e}"
    );

    // doctor reads the document.
    let service = ServiceSettings {
        callback_url: url::Url::parse("https://abc.execute-api.eu-west-1.amazonaws.com/callback").ok(),
        ..ServiceSettings::default()
    };
    let findings = check_settings(oidc, &service);
    for check in [
        "discovery",
        "client authentication",
        "offline scope supported",
        "PKCE",
        "issuer in the answer",
        "refresh token scope",
    ] {
        assert_eq!(found(&findings, check).verdict, Verdict::Ok, "{findings:#?}");
    }
    let findings = check_settings(mixed, &service);
    let auth = found(&findings, "client authentication");
    assert_eq!(auth.verdict, Verdict::Fail, "{auth:?}");
    assert!(
        auth.detail.contains("client_secret_post")
            && auth.detail.contains("set client_auth = \"basic\"")
            && auth
                .detail
                .contains(&format!("{base}/.well-known/openid-configuration")),
        "{}",
        auth.detail
    );
    // No offline_scope on a generic provider: the server lists offline_access, so doctor suggests it.
    let scope = found(&findings, "refresh token scope");
    assert_eq!(scope.verdict, Verdict::Warn, "{scope:?}");
    assert!(
        scope.detail.contains("cannot be checked") && scope.detail.contains("set offline_scope = \"offline_access\""),
        "{}",
        scope.detail
    );
}

#[tokio::test]
async fn doctor_names_what_the_document_says_the_configuration_gets_wrong() {
    let sim = simulator(SimConfig {
        discovery: DiscoveryDoc::default()
            .with("scopes_supported", json!(["openid", "refresh"]))
            .with("code_challenge_methods_supported", json!(["plain"]))
            .with("authorization_response_iss_parameter_supported", json!(true))
            .with("token_endpoint_auth_methods_supported", json!(["private_key_jwt"])),
        ..SimConfig::for_preset(PresetName::Generic)
    })
    .await;
    let text = format!("{}require_iss = false\n", oidc_provider(&sim.base_url));
    let config = Config::parse_and_discover(&text, "oidc.toml")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let findings = check_settings(&config.providers["oidc"], &ServiceSettings::default());
    for (check, verdict, says) in [
        (
            "client authentication",
            Verdict::Fail,
            "not in token_endpoint_auth_methods_supported [private_key_jwt]",
        ),
        (
            "offline scope supported",
            Verdict::Warn,
            "`offline_access` is not in scopes_supported [openid, refresh]",
        ),
        ("PKCE", Verdict::Fail, "has no S256"),
        ("issuer in the answer", Verdict::Warn, "remove `require_iss = false`"),
    ] {
        let finding = found(&findings, check);
        assert_eq!(finding.verdict, verdict, "{finding:?}");
        assert!(finding.detail.contains(says), "{check}: {}", finding.detail);
    }
}

#[tokio::test]
async fn a_broken_or_unreachable_document_is_an_error_that_names_its_url_and_nothing_is_configured() {
    let cases: Vec<(&str, DiscoveryDoc, &str)> = vec![
        (
            "not JSON",
            DiscoveryDoc {
                fault: Some(DiscoveryFault::NotJson),
                ..DiscoveryDoc::default()
            },
            "is malformed",
        ),
        (
            "oversized",
            DiscoveryDoc {
                fault: Some(DiscoveryFault::Oversized),
                ..DiscoveryDoc::default()
            },
            "is larger than 65536 bytes",
        ),
        (
            "not found",
            DiscoveryDoc {
                fault: Some(DiscoveryFault::Status(404)),
                ..DiscoveryDoc::default()
            },
            "answered HTTP 404",
        ),
        (
            "another issuer",
            DiscoveryDoc::default().with("issuer", json!("https://attacker.example")),
            "names issuer https://attacker.example, not the configured",
        ),
        (
            "a required member missing",
            DiscoveryDoc::default().with("token_endpoint", Value::Null),
            "missing field `token_endpoint`",
        ),
        (
            "an endpoint on plain http",
            DiscoveryDoc::default().with("token_endpoint", json!("http://id.example/token")),
            "must use https",
        ),
    ];
    for (case, discovery, says) in cases {
        let sim = simulator(SimConfig {
            discovery,
            ..SimConfig::for_preset(PresetName::Generic)
        })
        .await;
        let url = format!("{}/.well-known/openid-configuration", sim.base_url);
        let e = Config::parse_and_discover(&oidc_provider(&sim.base_url), "oidc.toml")
            .await
            .expect_err(case)
            .first()
            .clone();
        assert_eq!(
            (e.file.as_str(), e.line, e.field.as_str()),
            ("oidc.toml", 4, "providers.oidc.issuer"),
            "{case}: {e}"
        );
        assert!(e.message.contains(&url), "{case}: {e}");
        assert!(e.message.contains(says), "{case}: {e}");
    }

    // Nothing listens on the discard port.
    let e = Config::parse_and_discover(&oidc_provider("http://127.0.0.1:9"), "oidc.toml")
        .await
        .expect_err("unreachable")
        .first()
        .clone();
    assert!(
        e.message.contains(
            "cannot fetch the OpenID Connect discovery document http://127.0.0.1:9/.well-known/openid-configuration"
        ),
        "{e}"
    );
    // An issuer that is not https is refused before anything is fetched.
    let e = Config::parse_and_discover(&oidc_provider("http://id.example.com"), "oidc.toml")
        .await
        .expect_err("http issuer")
        .first()
        .clone();
    assert!(e.message.contains("must use https"), "{e}");
}

async fn login_service(login: &LoginFixture, text: &str) -> LoginService {
    let config = Arc::new(
        Config::parse_and_discover(text, "login.toml")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    login.service_for(config, ATTEMPT_TTL).await
}

#[tokio::test]
async fn when_the_document_announces_iss_an_answer_without_it_is_refused_and_one_with_it_accepted() {
    let login = LoginFixture::start(
        SimConfig {
            discovery: DiscoveryDoc::default().with("authorization_response_iss_parameter_supported", json!(true)),
            ..SimConfig::for_preset(PresetName::Generic)
        },
        "discovery-iss",
    )
    .await;
    let sim = login.fixture.sim();
    let base = login.fixture.oauth.sim.base_url.clone();
    let service = login_service(&login, &login.config_discovering(&base, "")).await;

    // The simulator announces `iss` but leaves it out.
    let (query, cookie) = login.to_callback(&service, "oidc-1").await;
    assert!(!query.contains_key("iss"), "{query:?}");
    let e = service.finish(PROVIDER, &query, Some(&cookie)).await.unwrap_err();
    assert!(matches!(&e, LoginError::MissingIssuer { .. }), "{e}");
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("names no issuer"), "{e}");
    assert_eq!(sim.counters().code_requests, 0, "no code was exchanged");
    let id = ConnectionId::parse("oidc-1").expect("id");
    assert!(
        login.fixture.service.store().get(&id).await.expect("read").is_none(),
        "nothing stored"
    );

    // With it, the login goes through the discovered endpoints.
    sim.reconfigure(|c| c.issuer = Some(base.clone()));
    let (query, cookie) = login.to_callback(&service, "oidc-1").await;
    let finished = service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("an answer that names the issuer");
    assert_eq!(finished.token_version, 1);

    // An explicit key wins over the document.
    sim.reconfigure(|c| c.issuer = None);
    let service = login_service(&login, &login.config_discovering(&base, "require_iss = false\n")).await;
    let (query, cookie) = login.to_callback(&service, "oidc-2").await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("require_iss = false accepts an answer without iss");
}

#[tokio::test]
async fn doctor_reads_the_document_of_a_provider_that_sets_its_endpoints_itself() {
    let sim = simulator(SimConfig {
        discovery: DiscoveryDoc::default().with("authorization_response_iss_parameter_supported", json!(true)),
        ..SimConfig::for_preset(PresetName::Generic)
    })
    .await;
    let base = &sim.base_url;
    let text = |token_url: &str, issuer: &str| {
        format!(
            "[providers.own]\npreset = \"generic\"\ncredentials_secret = \"s\"\nissuer = \"{issuer}\"\n\
             authorize_url = \"{base}/authorize\"\ntoken_url = \"{token_url}\"\n"
        )
    };
    let load = |text: String| async move {
        Config::parse_and_discover(&text, "own.toml")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };

    let config = load(text(&format!("{base}/token"), base)).await;
    assert_eq!(sim.sim.counters().discovery_requests, 0, "loading fetched nothing");
    let findings = shared::doctor::check_discovery(&config.providers["own"]).await;
    assert_eq!(found(&findings, "discovery").verdict, Verdict::Ok, "{findings:#?}");
    let iss = found(&findings, "issuer in the answer");
    assert_eq!(iss.verdict, Verdict::Warn);
    assert!(iss.detail.contains("set require_iss = true"), "{}", iss.detail);
    assert_eq!(found(&findings, "client authentication").verdict, Verdict::Ok);

    let config = load(text("https://elsewhere.example/token", base)).await;
    let findings = shared::doctor::check_discovery(&config.providers["own"]).await;
    let discovery = found(&findings, "discovery");
    assert_eq!(discovery.verdict, Verdict::Warn);
    assert!(
        discovery.detail.contains(&format!(
            "token_url https://elsewhere.example/token is not its token_endpoint {base}/token"
        )),
        "{}",
        discovery.detail
    );

    // Unreachable: a warning that names the URL, and nothing else to say.
    let config = load(text(&format!("{base}/token"), "http://127.0.0.1:9")).await;
    let findings = shared::doctor::check_discovery(&config.providers["own"]).await;
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].verdict, Verdict::Warn);
    assert!(
        findings[0]
            .detail
            .contains("http://127.0.0.1:9/.well-known/openid-configuration"),
        "{}",
        findings[0].detail
    );
}
