//! The handler, called directly with API Gateway HTTP API v2 fixture events,
//! against the local stack and the simulator.

use std::collections::BTreeMap;

use lambda_http::http::header;
use lambda_http::{Body, Request, Response};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, RETURN_TO, authorize};
use shared::config::PresetName;
use shared::login::flow::ATTEMPT_TTL;

/// An HTTP API v2 event from the fixture, for `path` with this query and cookies.
fn event(path: &str, query: &BTreeMap<String, String>, cookies: &[String], provider: Option<&str>) -> Request {
    let mut value: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/http-api-v2.json")).expect("fixture");
    let raw: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    value["rawPath"] = path.into();
    value["requestContext"]["http"]["path"] = path.into();
    value["rawQueryString"] = raw.into();
    value["queryStringParameters"] = serde_json::json!(query);
    value["cookies"] = serde_json::json!(cookies);
    if let Some(provider) = provider {
        value["routeKey"] = "GET /connect/{provider}".into();
        value["pathParameters"] = serde_json::json!({ "provider": provider });
    }
    lambda_http::request::from_str(&value.to_string()).expect("a valid HTTP API v2 event")
}

fn body(response: &Response<Body>) -> String {
    match response.body() {
        Body::Text(text) => text.clone(),
        Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    }
}

fn header_of(response: &Response<Body>, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// `/connect` through the handler, then the provider's approval: the callback query and cookie.
async fn connect(
    login: &LoginFixture,
    service: &shared::login::flow::LoginService,
    connection: &str,
) -> (BTreeMap<String, String>, String) {
    let response = oauth_callback::handle(
        service,
        event("/connect/sim", &login.link(connection), &[], Some("sim")),
    )
    .await
    .expect("handle");
    assert_eq!(response.status(), 302);
    let cookie = header_of(&response, header::SET_COOKIE).to_owned();
    assert!(cookie.starts_with("__Host-oauth-sync-login=") && cookie.contains("Secure") && cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax") && cookie.contains("Path=/"), "{cookie}");
    let location = url::Url::parse(header_of(&response, header::LOCATION)).expect("location");
    assert_eq!(
        location
            .query_pairs()
            .find(|(k, _)| k == "code_challenge_method")
            .map(|(_, v)| v.into_owned())
            .as_deref(),
        Some("S256")
    );
    let query = authorize(&login.fixture.oauth.http, &location).await.callback_query();
    assert!(query.contains_key("state"), "the state comes back");
    let value = cookie.split(';').next().expect("pair").to_owned();
    (query, value)
}

#[tokio::test]
async fn a_whole_login_through_the_handler() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-login").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = connect(&login, &service, "acme").await;

    let response = oauth_callback::handle(
        &service,
        event("/callback", &query, std::slice::from_ref(&cookie), None),
    )
    .await
    .expect("handle");
    assert_eq!(response.status(), 302);
    let back = header_of(&response, header::LOCATION);
    assert!(
        back.starts_with(RETURN_TO) && back.contains("status=connected") && back.contains("connection=acme"),
        "{back}"
    );
    assert_eq!(
        header_of(&response, header::REFERRER_POLICY),
        "no-referrer",
        "the code must not leak through Referer"
    );

    // Replayed: a page with a reference, without the code or state.
    let response = oauth_callback::handle(&service, event("/callback", &query, &[cookie], None))
        .await
        .expect("handle");
    assert_eq!(response.status(), 400);
    let page = body(&response);
    assert!(page.contains("already used") && page.contains("Reference:"), "{page}");
    assert!(!page.contains(&query["code"]) && !page.contains(&query["state"]));
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-store");
}

#[tokio::test]
async fn refusals_are_pages_a_person_can_read() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-refusals").await;
    let service = login.service(ATTEMPT_TTL).await;
    let handle = |request| oauth_callback::handle(&service, request);

    // A tampered link: 403, nothing stored.
    let mut tampered = login.link("acme");
    tampered.insert("connection".to_owned(), "victim".to_owned());
    let response = handle(event("/connect/sim", &tampered, &[], Some("sim")))
        .await
        .expect("handle");
    assert_eq!(response.status(), 403);
    assert!(body(&response).contains("This link cannot be used"));
    assert_eq!(login.attempts_stored().await, 0);

    // An oversized query string.
    let mut huge = login.link("acme");
    huge.insert("padding".to_owned(), "x".repeat(5000));
    let response = handle(event("/connect/sim", &huge, &[], Some("sim")))
        .await
        .expect("handle");
    assert_eq!(response.status(), 400);
    assert!(body(&response).contains("too long"));

    // `/connect/callback` is a provider named "callback", not the callback.
    let response = handle(event("/connect/callback", &BTreeMap::new(), &[], None))
        .await
        .expect("handle");
    assert_eq!(response.status(), 404);

    // The callback without the cookie of the browser that started it.
    let (query, _) = connect(&login, &service, "acme").await;
    let response = handle(event("/callback", &query, &[], None)).await.expect("handle");
    assert_eq!(response.status(), 400);
    assert!(body(&response).contains("another browser"));

    // A provider error whose description carries markup: shown, escaped.
    let (mut query, cookie) = connect(&login, &service, "acme").await;
    query.remove("code");
    query.insert("error".to_owned(), "invalid_scope".to_owned());
    // Long, and with a line break: kept to one line of 300 characters.
    let description = format!("<script>alert(1)</script>\r\nX-Injected: 1 {}", "y".repeat(2_000));
    query.insert("error_description".to_owned(), description);
    let response = handle(event("/callback", &query, &[cookie], None))
        .await
        .expect("handle");
    assert_eq!(response.status(), 502);
    let page = body(&response);
    assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"), "{page}");
    assert!(
        page.contains("X-Injected") && !page.contains("\r\nX-Injected"),
        "{page}"
    );
    assert!(!page.contains(&"y".repeat(300)), "the description was cut short");
    assert!(header_of(&response, header::CONTENT_SECURITY_POLICY).contains("default-src 'none'"));

    // The user cancels at the provider.
    login.fixture.sim().deny_next_authorize();
    let (query, cookie) = connect(&login, &service, "acme").await;
    let response = handle(event("/callback", &query, &[cookie], None))
        .await
        .expect("handle");
    assert_eq!(response.status(), 400);
    assert!(body(&response).contains("Login cancelled"));
    let id = shared::connection::ConnectionId::parse("acme").expect("id");
    assert!(
        login.fixture.service.store().get(&id).await.expect("read").is_none(),
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_refused_code_exchange_stores_nothing() {
    use oauth_sync_tests::simulator::{Fault, FaultPlan, Grant};
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-pkce").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = connect(&login, &service, "acme").await;
    // The provider refuses the exchange as it does on a PKCE mismatch.
    let refusal = r#"{"error": "invalid_grant", "error_description": "PKCE verification failed"}"#;
    login.fixture.sim().inject(FaultPlan {
        grant: Grant::AuthorizationCode,
        fault: Fault::BodyAfterProcessing {
            status: 400,
            body: refusal.to_owned(),
        },
        times: 1,
    });
    let response = oauth_callback::handle(&service, event("/callback", &query, &[cookie], None))
        .await
        .expect("handle");
    assert_eq!(response.status(), 502);
    let page = body(&response);
    assert!(
        page.contains("PKCE verification failed") && !page.contains(&query["code"]),
        "{page}"
    );
    let id = shared::connection::ConnectionId::parse("acme").expect("id");
    assert!(
        login.fixture.service.store().get(&id).await.expect("read").is_none(),
        "nothing was stored"
    );
}
