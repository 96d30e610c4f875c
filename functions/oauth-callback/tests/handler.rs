//! The handler, called directly with API Gateway HTTP API v2 fixture events,
//! against the local stack and the simulator.

use std::collections::BTreeMap;

use lambda_http::http::header;
use lambda_http::{Body, Request, Response};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, RETURN_TO, authorize, hidden_fields};
use shared::config::PresetName;
use shared::login::flow::ATTEMPT_TTL;

/// An HTTP API v2 event from the fixture: `method path?query` with these
/// cookies, extra headers and form body.
fn request(
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    cookies: &[String],
    headers: &[(&str, &str)],
    form: Option<&BTreeMap<String, String>>,
) -> Request {
    let mut value: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/http-api-v2.json")).expect("fixture");
    let raw: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let (route, provider) = match path.rsplit_once('/') {
        Some((base, provider)) if base.ends_with("/connect") => ("/connect/{provider}", provider),
        Some((base, provider)) if base.ends_with("/callback") => ("/callback/{provider}", provider),
        _ => ("$default", ""),
    };
    value["routeKey"] = format!("{method} {route}").into();
    value["requestContext"]["routeKey"] = value["routeKey"].clone();
    value["pathParameters"] = serde_json::json!({ "provider": provider });
    value["rawPath"] = path.into();
    value["requestContext"]["http"]["path"] = path.into();
    value["requestContext"]["http"]["method"] = method.into();
    value["rawQueryString"] = raw.into();
    value["queryStringParameters"] = serde_json::json!(query);
    value["cookies"] = serde_json::json!(cookies);
    for (name, header) in headers {
        value["headers"][*name] = (*header).into();
    }
    if let Some(form) = form {
        value["headers"]["content-type"] = "application/x-www-form-urlencoded".into();
        value["body"] = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish()
            .into();
    }
    lambda_http::request::from_str(&value.to_string()).expect("a valid HTTP API v2 event")
}

/// A GET event.
fn event(path: &str, query: &BTreeMap<String, String>, cookies: &[String]) -> Request {
    request("GET", path, query, cookies, &[], None)
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

/// The headers every page carries.
fn assert_secure_headers(response: &Response<Body>) {
    assert_eq!(header_of(response, header::X_FRAME_OPTIONS), "DENY");
    assert_eq!(
        header_of(response, header::STRICT_TRANSPORT_SECURITY),
        "max-age=31536000"
    );
    assert_eq!(header_of(response, header::CACHE_CONTROL), "no-store");
    assert_eq!(header_of(response, header::REFERRER_POLICY), "no-referrer");
    let csp = header_of(response, header::CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
}

/// `GET /connect`: the confirmation page, its form fields and the cookie pair.
async fn confirmation_page(
    service: &shared::login::flow::LoginService,
    link: &BTreeMap<String, String>,
) -> (String, BTreeMap<String, String>, String) {
    let response = oauth_callback::handle(service, event("/connect/sim", link, &[]))
        .await
        .expect("handle");
    assert_eq!(response.status(), 200, "{}", body(&response));
    assert_secure_headers(&response);
    let cookie = header_of(&response, header::SET_COOKIE).to_owned();
    assert!(cookie.starts_with("__Host-oauth-sync-login=") && cookie.contains("Secure") && cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax") && cookie.contains("Path=/"), "{cookie}");
    let page = body(&response);
    let fields = hidden_fields(&page);
    (page, fields, cookie.split(';').next().expect("pair").to_owned())
}

/// The confirmation page's button, as a same-origin form POST.
async fn press(
    service: &shared::login::flow::LoginService,
    form: &BTreeMap<String, String>,
    cookie: &str,
    fetch_site: &str,
) -> Response<Body> {
    let headers = [("sec-fetch-site", fetch_site), ("origin", "https://auth.example.com")];
    oauth_callback::handle(
        service,
        request(
            "POST",
            "/connect/sim",
            &BTreeMap::new(),
            &[cookie.to_owned()],
            &headers,
            Some(form),
        ),
    )
    .await
    .expect("handle")
}

/// `/connect` through the handler (page, then button), then the provider's
/// approval: the callback query and cookie.
async fn connect(
    login: &LoginFixture,
    service: &shared::login::flow::LoginService,
    connection: &str,
) -> (BTreeMap<String, String>, String) {
    let (_, form, cookie) = confirmation_page(service, &login.link(connection)).await;
    let response = press(service, &form, &cookie, "same-origin").await;
    assert_eq!(response.status(), 303, "{}", body(&response));
    assert_secure_headers(&response);
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
    (query, cookie)
}

#[tokio::test]
async fn a_whole_login_through_the_handler() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-login").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = connect(&login, &service, "acme").await;

    let response = oauth_callback::handle(&service, event("/callback/sim", &query, std::slice::from_ref(&cookie)))
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
    let response = oauth_callback::handle(&service, event("/callback/sim", &query, &[cookie]))
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
    let response = handle(event("/connect/sim", &tampered, &[])).await.expect("handle");
    assert_eq!(response.status(), 403);
    assert!(body(&response).contains("This link cannot be used"));
    assert_eq!(login.attempts_stored().await, 0);

    // An oversized query string.
    let mut huge = login.link("acme");
    huge.insert("padding".to_owned(), "x".repeat(5000));
    let response = handle(event("/connect/sim", &huge, &[])).await.expect("handle");
    assert_eq!(response.status(), 400);
    assert!(body(&response).contains("too long"));

    // `/connect/callback` is a provider named "callback", not the callback.
    let response = handle(event("/connect/callback", &BTreeMap::new(), &[]))
        .await
        .expect("handle");
    assert_eq!(response.status(), 404);

    // The callback without the cookie of the browser that started it.
    let (query, _) = connect(&login, &service, "acme").await;
    let response = handle(event("/callback/sim", &query, &[])).await.expect("handle");
    assert_eq!(response.status(), 400);
    assert!(body(&response).contains("another browser"));

    // A provider error whose description carries markup: shown, escaped.
    let (mut query, cookie) = connect(&login, &service, "acme").await;
    query.remove("code");
    query.insert("error".to_owned(), "invalid_scope".to_owned());
    // Long, and with a line break: kept to one line of 300 characters.
    let description = format!("<script>alert(1)</script>\r\nX-Injected: 1 {}", "y".repeat(2_000));
    query.insert("error_description".to_owned(), description);
    let response = handle(event("/callback/sim", &query, &[cookie])).await.expect("handle");
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
    let response = handle(event("/callback/sim", &query, &[cookie])).await.expect("handle");
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
    let response = oauth_callback::handle(&service, event("/callback/sim", &query, &[cookie]))
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

#[tokio::test]
async fn the_confirmation_page_says_what_is_connected_for_whom_escaped_and_writes_nothing() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-confirm").await;
    let service = login.service(ATTEMPT_TTL).await;
    let hostile = "\"><script>alert(1)</script><img src=x onerror=alert(2)> & 'Acme'";
    let link = login.link_labelled("acme", hostile, Some("<b>alice</b>@acme.example"));
    let (page, fields, cookie) = confirmation_page(&service, &link).await;
    assert!(
        page.contains("Connect your <strong>sim</strong> account to <strong>"),
        "{page}"
    );
    assert!(
        page.contains(
            "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt; &amp; &#39;Acme&#39;"
        ),
        "{page}"
    );
    assert!(page.contains("&lt;b&gt;alice&lt;/b&gt;@acme.example"), "{page}");
    assert!(
        !page.contains("<script") && !page.contains("<img") && !page.contains("<b>"),
        "{page}"
    );
    assert!(page.contains("<form method=\"post\" action=\"./sim\">"), "{page}");
    assert_eq!(fields["label"], hostile, "the label goes back intact");
    assert!(fields.contains_key("confirm") && fields.contains_key("sig"));
    assert!(
        !page.contains(cookie.split('=').nth(1).expect("value")),
        "the cookie is not in the page"
    );
    assert_eq!(login.attempts_stored().await, 0, "showing the page writes nothing");
    assert_eq!(login.fixture.sim().counters().authorize_requests, 0);

    // The page's CSP: no scripts, and its form may lead here and to the provider only.
    let response = oauth_callback::handle(&service, event("/connect/sim", &link, &[]))
        .await
        .expect("handle");
    let csp = header_of(&response, header::CONTENT_SECURITY_POLICY);
    let sim_origin = url::Url::parse(&login.fixture.oauth.sim.base_url)
        .expect("url")
        .origin()
        .ascii_serialization();
    assert!(csp.contains(&format!("form-action 'self' {sim_origin};")), "{csp}");
    assert!(
        !csp.contains("script-src") && csp.contains("default-src 'none'"),
        "{csp}"
    );

    // The button, pressed on the page, starts the login.
    let response = press(&service, &fields, &cookie, "same-origin").await;
    assert_eq!(response.status(), 303, "{}", body(&response));
    assert!(header_of(&response, header::LOCATION).starts_with(&login.fixture.oauth.sim.base_url));
    assert_eq!(login.attempts_stored().await, 1);
}

#[tokio::test]
async fn a_cross_site_post_is_refused() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-cross-site").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (_, form, cookie) = confirmation_page(&service, &login.link("acme")).await;
    for fetch_site in ["cross-site", "same-site"] {
        let response = press(&service, &form, &cookie, fetch_site).await;
        assert_eq!(response.status(), 403, "{fetch_site}");
        assert_secure_headers(&response);
        assert!(body(&response).contains("another site"), "{}", body(&response));
    }
    assert_eq!(login.attempts_stored().await, 0, "nothing was written");
    assert_eq!(login.fixture.sim().counters().authorize_requests, 0);
    // The person opening the address themselves (`none`) may.
    let response = press(&service, &form, &cookie, "none").await;
    assert_eq!(response.status(), 303);
}

#[tokio::test]
async fn a_post_without_or_with_a_wrong_confirmation_token_is_refused() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-csrf").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (_, form, cookie) = confirmation_page(&service, &login.link("acme")).await;
    let (_, _, other_cookie) = confirmation_page(&service, &login.link("acme")).await;
    let mut without = form.clone();
    without.remove("confirm");
    let mut wrong = form.clone();
    wrong.insert("confirm".to_owned(), "l1.bm90LXRoZS10b2tlbg".to_owned());
    for (form, cookie) in [(&without, &cookie), (&wrong, &cookie), (&form, &other_cookie)] {
        let response = press(&service, form, cookie, "same-origin").await;
        assert_eq!(response.status(), 403);
        let page = body(&response);
        assert!(
            page.contains("Please confirm first") && page.contains("press the button"),
            "{page}"
        );
    }
    // The link alone, posted by another page's form: no cookie, no token.
    let response = oauth_callback::handle(
        &service,
        request(
            "POST",
            "/connect/sim",
            &BTreeMap::new(),
            &[],
            &[],
            Some(&login.link("acme")),
        ),
    )
    .await
    .expect("handle");
    assert_eq!(response.status(), 403);
    assert_eq!(login.attempts_stored().await, 0, "nothing was written");
    assert_eq!(login.fixture.sim().counters().authorize_requests, 0);
}

#[tokio::test]
async fn an_unknown_provider_page_names_no_configured_provider_and_every_page_forbids_framing() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "handler-404").await;
    let service = login.service(ATTEMPT_TTL).await;
    let link = login.link("acme");
    for request in [
        event("/connect/nope", &link, &[]),
        request("POST", "/connect/nope", &BTreeMap::new(), &[], &[], Some(&link)),
        event("/callback/nope", &BTreeMap::new(), &[]),
    ] {
        let response = oauth_callback::handle(&service, request).await.expect("handle");
        assert_eq!(response.status(), 404);
        assert_secure_headers(&response);
        let page = body(&response);
        assert!(page.contains("no provider `nope`"), "{page}");
        assert!(!page.contains("sim") && !page.contains("configured"), "{page}");
    }
    for (method, path) in [("PUT", "/connect/sim"), ("POST", "/callback/sim"), ("GET", "/callback")] {
        let response = oauth_callback::handle(&service, request(method, path, &BTreeMap::new(), &[], &[], None))
            .await
            .expect("handle");
        assert!(matches!(response.status().as_u16(), 404 | 405), "{method} {path}");
        assert_secure_headers(&response);
    }
}

/// A GET with a raw query string as a client sent it (repeats included).
fn raw_get(path: &str, raw: &str) -> Request {
    let mut value: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/http-api-v2.json")).expect("fixture");
    value["routeKey"] = "GET /callback/{provider}".into();
    value["requestContext"]["routeKey"] = value["routeKey"].clone();
    value["pathParameters"] = serde_json::json!({ "provider": "sim" });
    value["rawPath"] = path.into();
    value["requestContext"]["http"]["path"] = path.into();
    value["requestContext"]["http"]["method"] = "GET".into();
    value["rawQueryString"] = raw.into();
    let mut parameters = serde_json::Map::new();
    for (name, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        let joined = match parameters.get(name.as_ref()).and_then(|p| p.as_str()) {
            Some(before) => format!("{before},{v}"),
            None => v.into_owned(),
        };
        parameters.insert(name.into_owned(), joined.into());
    }
    value["queryStringParameters"] = serde_json::Value::Object(parameters);
    value["cookies"] = serde_json::json!([]);
    lambda_http::request::from_str(&value.to_string()).expect("a valid HTTP API v2 event")
}

/// RFC 6749 §3.1: a parameter given twice is refused before anything is
/// looked up or spent; a POST that is not a form is refused too.
#[tokio::test]
async fn a_repeated_parameter_and_a_post_that_is_not_a_form_are_refused() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "cb-repeat").await;
    let service = login.service(ATTEMPT_TTL).await;
    for raw in [
        "state=a&state=b&code=c",
        "state=a&code=b&code=c",
        "state=a&code=b&iss=x&iss=y",
    ] {
        let response = oauth_callback::handle(&service, raw_get("/callback/sim", raw))
            .await
            .expect("handle");
        assert_eq!(response.status(), 400, "{raw}");
        assert!(body(&response).contains("more than once"), "{raw}");
        assert_secure_headers(&response);
    }
    let response = oauth_callback::handle(&service, raw_get("/connect/sim", "connection=a&connection=b"))
        .await
        .expect("handle");
    assert_eq!(response.status(), 400);
    let (_, fields, cookie) = confirmation_page(&service, &login.link("acme-form")).await;
    let not_a_form = request(
        "POST",
        "/connect/sim",
        &BTreeMap::new(),
        &[cookie],
        &[("sec-fetch-site", "same-origin"), ("content-type", "application/json")],
        None,
    );
    let response = oauth_callback::handle(&service, not_a_form).await.expect("handle");
    assert_eq!(response.status(), 415, "{}", body(&response));
    assert!(!fields.is_empty());
    assert_eq!(login.attempts_stored().await, 0, "nothing was written");
}

/// A login cookie the server did not issue (planted by someone else) is
/// never adopted: the confirmation page sets a fresh one, and the button
/// refuses the planted one.
#[tokio::test]
async fn a_planted_login_cookie_is_replaced_not_adopted() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "cb-cookie").await;
    let service = login.service(ATTEMPT_TTL).await;
    let planted = format!("__Host-oauth-sync-login={}", "A".repeat(43));
    let link = login.link("acme-cookie");
    let response = oauth_callback::handle(&service, event("/connect/sim", &link, std::slice::from_ref(&planted)))
        .await
        .expect("handle");
    assert_eq!(response.status(), 200);
    let set = header_of(&response, header::SET_COOKIE)
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(set.starts_with("__Host-oauth-sync-login=") && set != planted, "{set}");
    let fields = hidden_fields(&body(&response));
    let with_planted = request(
        "POST",
        "/connect/sim",
        &BTreeMap::new(),
        &[planted],
        &[("sec-fetch-site", "same-origin")],
        Some(&fields),
    );
    let response = oauth_callback::handle(&service, with_planted).await.expect("handle");
    assert_eq!(response.status(), 403, "{}", body(&response));
    assert_eq!(login.attempts_stored().await, 0);
}
