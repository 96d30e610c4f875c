//! The `oauth-callback` Lambda function (API Gateway HTTP API):
//! `GET /connect/{provider}` shows the confirmation page of a signed connect
//! link, its button (`POST /connect/{provider}`) starts the login, and
//! `GET /callback/{provider}` finishes it. The logic is `shared::login::flow`;
//! this crate maps requests to it and its results to small pages a person can
//! read. Every page carries a correlation id and echoes no token, code or
//! state; everything shown is HTML-escaped.

use std::collections::BTreeMap;

use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use shared::login::flow::{Confirm, Finished, LoginError, LoginService, check_fetch_site};

/// The cookie that binds a login to the browser that started it.
pub const COOKIE: &str = "__Host-oauth-sync-login";
/// Longest query string or form body accepted (links and callbacks are far shorter).
pub const MAX_QUERY: usize = 4096;

/// Handles one request; never fails (every outcome is a page).
pub async fn handle(login: &LoginService, request: Request) -> Result<Response<Body>, std::convert::Infallible> {
    let correlation = request
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)));
    // A pushed configuration or a rotated key ring, at most once a minute.
    login.reload_if_changed().await;
    let path = request.uri().path().to_owned();
    let response = route(login, &request, &path, &correlation).await;
    tracing::info!(correlation = %correlation, method = %request.method(), path = %path, status = response.status().as_u16(), "request");
    Ok(response)
}

/// What a path asks for: its last two segments, `connect/{provider}` or
/// `callback/{provider}` (any stage or mapping prefix before them).
fn endpoint(path: &str) -> Option<(&str, &str)> {
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let provider = segments.next().filter(|p| !p.is_empty())?;
    let kind = segments.next()?;
    matches!(kind, "connect" | "callback").then_some((kind, provider))
}

/// One function: the routing table, one arm per route and method.
async fn route(login: &LoginService, request: &Request, path: &str, correlation: &str) -> Response<Body> {
    let Some((kind, provider)) = endpoint(path) else {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing at this address.",
            correlation,
        );
    };
    if request.uri().query().is_some_and(|q| q.len() > MAX_QUERY) {
        return page(
            StatusCode::BAD_REQUEST,
            "Request too large",
            "The address is too long to be a login link.",
            correlation,
        );
    }
    // RFC 6749 §3.1: a parameter is never sent twice. Which of two `state`s
    // or `code`s was meant cannot be known, so neither is taken.
    if let Some(name) = repeated(request.uri().query().unwrap_or_default()) {
        return page(
            StatusCode::BAD_REQUEST,
            "This address cannot be used",
            &format!("The address gives `{}` more than once.", cut(&name)),
            correlation,
        );
    }
    let query: BTreeMap<String, String> = request
        .query_string_parameters()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let cookie = browser_cookie(request);
    let method = request.method();
    match (kind, method) {
        ("connect", &Method::GET) => match login.confirm(provider, &query, cookie.as_deref()).await {
            Ok(confirm) => confirmation(&confirm, path, correlation),
            Err(e) => failure(&e, correlation),
        },
        ("connect", &Method::POST) => {
            let fetch_site = request
                .headers()
                .get("sec-fetch-site")
                .map(|v| v.to_str().unwrap_or("unreadable"));
            if let Err(e) = check_fetch_site(fetch_site) {
                return failure(&e, correlation);
            }
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !is_form(content_type) {
                return page(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Not a form",
                    "This address takes the confirmation page's form only.",
                    correlation,
                );
            }
            let Some(form) = form(request.body()) else {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Request too large",
                    "The form is too large to be a login link.",
                    correlation,
                );
            };
            match login.begin(provider, &form, cookie.as_deref()).await {
                Ok(begin) => {
                    // 303: the browser follows a POST's answer with a GET.
                    let mut response = redirect(StatusCode::SEE_OTHER, begin.location.as_str());
                    set_cookie(&mut response, &begin.cookie);
                    response
                }
                Err(e) => failure(&e, correlation),
            }
        }
        ("callback", &Method::GET) => match login.finish(provider, &query, cookie.as_deref()).await {
            Ok(finished) => connected(&finished, correlation),
            Err(e) => failure(&e, correlation),
        },
        _ => {
            let mut response = page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Not allowed",
                "This address does not answer that kind of request.",
                correlation,
            );
            let allow = if kind == "connect" { "GET, POST" } else { "GET" };
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
    }
}

/// A form body (`application/x-www-form-urlencoded`), or `None` when it is
/// too large or gives a field twice.
fn form(body: &Body) -> Option<BTreeMap<String, String>> {
    let bytes: &[u8] = match body {
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    };
    let text = std::str::from_utf8(bytes).ok()?;
    (bytes.len() <= MAX_QUERY && repeated(text).is_none())
        .then(|| url::form_urlencoded::parse(bytes).into_owned().collect())
}

/// Is this `Content-Type` a form's (`application/x-www-form-urlencoded`, any parameters)?
fn is_form(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// The first parameter name given more than once in a query or form.
fn repeated(query: &str) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, _)| name.into_owned())
        .find(|name| !seen.insert(name.clone()))
}

/// The login cookie from the `Cookie` header(s) (HTTP API v2 passes `cookies` as one).
pub fn browser_cookie(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn set_cookie(response: &mut Response<Body>, value: &str) {
    let cookie = format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// The confirmation page: what will be connected, for whom, and one button.
/// Its form goes back to this same address (relative, so any stage prefix
/// works), and its CSP lets a form lead only here and to the provider (the
/// 303 after the POST is a form navigation too).
fn confirmation(confirm: &Confirm, path: &str, correlation: &str) -> Response<Body> {
    let action = if path.ends_with('/') {
        ".".to_owned()
    } else {
        format!("./{}", confirm.provider)
    };
    let display = escape(&confirm.provider_display);
    let mut text = format!(
        "<p>Connect your <strong>{display}</strong> account to <strong>{}</strong>.</p>",
        escape(&confirm.label)
    );
    if let Some(user) = &confirm.user {
        text.push_str(&format!("<p>This link is for <strong>{}</strong>.</p>", escape(user)));
    }
    text.push_str(&format!(
        "<p>After you continue, {display} asks you to sign in and to allow access. \
         If you did not expect this, close this window.</p>"
    ));
    let hidden: String = confirm
        .fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect();
    let body = format!(
        "{text}<form method=\"post\" action=\"{action}\">{hidden}\
         <button type=\"submit\" id=\"connect\">Continue to {display}</button></form>",
        action = escape(&action)
    );
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {}; base-uri 'none'; frame-ancestors 'none'",
        confirm.authorize_origin
    );
    let mut response = html(
        StatusCode::OK,
        &format!("Connect your {} account", confirm.provider_display),
        &body,
        correlation,
    );
    match HeaderValue::from_str(&csp) {
        Ok(value) => {
            response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, value);
        }
        // An origin no header can carry: no form may go anywhere rather than anywhere.
        Err(_) => tracing::error!(correlation, "the provider's authorize origin cannot be put in a CSP"),
    }
    set_cookie(&mut response, &confirm.cookie);
    response
}

fn connected(finished: &Finished, correlation: &str) -> Response<Body> {
    tracing::info!(correlation, connection = %finished.connection, provider = %finished.provider, version = finished.token_version, "login finished");
    if let Some(Ok(mut url)) = finished.return_url.as_deref().map(url::Url::parse) {
        url.query_pairs_mut()
            .append_pair("status", "connected")
            .append_pair("connection", finished.connection.as_str());
        return redirect(StatusCode::FOUND, url.as_str());
    }
    let mut text = format!(
        "Your {} account is connected. You can close this window.",
        finished.provider_display
    );
    for warning in &finished.warnings {
        text.push_str("\n\nNote for the operator: ");
        text.push_str(warning);
    }
    page(StatusCode::OK, "Connected", &text, correlation)
}

fn failure(error: &LoginError, correlation: &str) -> Response<Body> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let LoginError::UnknownProvider(unknown) = error {
        // The configured providers go to the log only: the page is for anyone.
        tracing::warn!(correlation, provider = %cut(&unknown.name), configured = %unknown.known, "unknown provider");
        let text = format!(
            "There is no provider `{}` here. Check the link you were given.",
            cut(&unknown.name)
        );
        return page(status, "Unknown provider", &text, correlation);
    }
    if status.is_server_error() {
        tracing::error!(correlation, error = %error, "login failed");
    } else {
        tracing::warn!(correlation, error = %error, "login refused");
    }
    let title = match error {
        LoginError::Cancelled { .. } => "Login cancelled",
        LoginError::Link(_) => "This link cannot be used",
        LoginError::NotConfirmed(_) => "Please confirm first",
        LoginError::RevokedDuringLogin { .. } => "Disconnected meanwhile",
        _ if status.is_server_error() => "Something went wrong",
        _ => "This login cannot be finished",
    };
    page(status, title, &error.to_string(), correlation)
}

/// The first 60 characters of something the visitor typed, without
/// controls or invisible format characters (a bidi override would make it
/// read otherwise on the page and in the log).
fn cut(text: &str) -> String {
    let shown = |c: &char| !c.is_control() && !shared::text::is_invisible_format(*c);
    let mut cut: String = text.chars().filter(shown).take(60).collect();
    if text.chars().count() > 60 {
        cut.push('…');
    }
    cut
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    secure_headers(&mut response);
    response
}

/// A small page a person can read: `text` is escaped, paragraphs split on blank lines.
pub fn page(status: StatusCode, title: &str, text: &str, correlation: &str) -> Response<Body> {
    let paragraphs: String = text.split("\n\n").map(|p| format!("<p>{}</p>", escape(p))).collect();
    html(status, title, &paragraphs, correlation)
}

/// The page frame around `body`, which must already be escaped HTML.
fn html(status: StatusCode, title: &str, body: &str, correlation: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222;line-height:1.5}}\
         small{{color:#777}}button{{font:inherit;padding:.6em 1.4em;border:0;border-radius:.3em;background:#1f5fbf;color:#fff;cursor:pointer}}\
         </style></head><body><h1>{title}</h1>{body}\
         <p><small>Reference: {correlation}</small></p></body></html>",
        title = escape(title),
        correlation = escape(correlation),
    );
    let mut response = Response::new(Body::Text(html));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(&mut response);
    response
}

/// No caching, no referrer (the callback URL carries a code), no scripts, no
/// framing (CSP for current browsers, `X-Frame-Options` for older ones), and
/// https only from the first visit on.
fn secure_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
}

/// HTML-escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_parameter_is_found_and_only_forms_are_forms() {
        assert_eq!(repeated("state=a&code=b&state=c").as_deref(), Some("state"));
        assert_eq!(repeated("state=a&code=b"), None);
        assert_eq!(repeated(""), None);
        assert!(is_form("application/x-www-form-urlencoded"));
        assert!(is_form("Application/X-WWW-Form-Urlencoded; charset=UTF-8"));
        for other in ["", "text/plain", "application/json", "multipart/form-data; boundary=x"] {
            assert!(!is_form(other), "{other}");
        }
    }

    #[test]
    fn what_a_visitor_typed_is_shown_without_controls_or_invisible_formatting() {
        assert_eq!(cut("exa\u{202e}ct\u{200b}\n"), "exact");
        assert_eq!(cut(&"x".repeat(70)).chars().count(), 61, "60 and an ellipsis");
    }

    #[test]
    fn a_path_names_its_endpoint_after_any_prefix() {
        assert_eq!(endpoint("/connect/exact"), Some(("connect", "exact")));
        assert_eq!(endpoint("/prod/connect/exact/"), Some(("connect", "exact")));
        assert_eq!(
            endpoint("/lambda-url/oauth-callback/callback/xero"),
            Some(("callback", "xero"))
        );
        assert_eq!(endpoint("/connect/callback"), Some(("connect", "callback")));
        for nothing in ["/", "/callback", "/connect/", "/other/exact", ""] {
            assert_eq!(endpoint(nothing), None, "{nothing}");
        }
    }
}
