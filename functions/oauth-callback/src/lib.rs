//! The `oauth-callback` Lambda function (API Gateway HTTP API):
//! `GET /connect/{provider}` starts a login from a signed connect link, and
//! `GET /callback` finishes it. The logic is `shared::login::flow`; this
//! crate maps requests to it and its results to small pages a person can
//! read. Every page carries a correlation id and echoes no token, code or
//! state; provider text is HTML-escaped.

use std::collections::BTreeMap;

use lambda_http::http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use shared::login::flow::{Finished, LoginError, LoginService};

/// The cookie that binds a login to the browser that started it.
pub const COOKIE: &str = "__Host-oauth-sync-login";
/// Longest query string accepted (links and callbacks are far shorter).
pub const MAX_QUERY: usize = 4096;

/// Handles one request; never fails (every outcome is a page).
pub async fn handle(login: &LoginService, request: Request) -> Result<Response<Body>, std::convert::Infallible> {
    let correlation = request
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)));
    let path = request.uri().path().to_owned();
    let response = route(login, &request, &path, &correlation).await;
    tracing::info!(correlation = %correlation, path = %path, status = response.status().as_u16(), "request");
    Ok(response)
}

async fn route(login: &LoginService, request: &Request, path: &str, correlation: &str) -> Response<Body> {
    if request.method() != lambda_http::http::Method::GET {
        return page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "Only GET is served here.",
            correlation,
        );
    }
    if request.uri().query().is_some_and(|q| q.len() > MAX_QUERY) {
        return page(
            StatusCode::BAD_REQUEST,
            "Request too large",
            "The address is too long to be a login link.",
            correlation,
        );
    }
    let query: BTreeMap<String, String> = request
        .query_string_parameters()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let cookie = browser_cookie(request);
    if path.ends_with("/callback") && !path.contains("/connect/") {
        return match login.finish(&query, cookie.as_deref()).await {
            Ok(finished) => connected(&finished, correlation),
            Err(e) => failure(&e, correlation),
        };
    }
    let provider = request
        .path_parameters()
        .first("provider")
        .map(str::to_owned)
        .or_else(|| {
            path.rsplit_once("/connect/")
                .map(|(_, p)| p.trim_end_matches('/').to_owned())
        });
    match provider {
        Some(provider) => match login.begin(&provider, &query, cookie.as_deref()).await {
            Ok(begin) => {
                let mut response = redirect(begin.location.as_str());
                let cookie = format!(
                    "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600",
                    begin.cookie
                );
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(header::SET_COOKIE, value);
                }
                response
            }
            Err(e) => failure(&e, correlation),
        },
        None => page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing at this address.",
            correlation,
        ),
    }
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

fn connected(finished: &Finished, correlation: &str) -> Response<Body> {
    tracing::info!(correlation, connection = %finished.connection, provider = %finished.provider, version = finished.token_version, "login finished");
    if let Some(Ok(mut url)) = finished.return_url.as_deref().map(url::Url::parse) {
        url.query_pairs_mut()
            .append_pair("status", "connected")
            .append_pair("connection", finished.connection.as_str());
        return redirect(url.as_str());
    }
    let mut text = format!(
        "Your {} account is connected. You can close this window.",
        finished.provider
    );
    for warning in &finished.warnings {
        text.push_str("\n\nNote for the operator: ");
        text.push_str(warning);
    }
    page(StatusCode::OK, "Connected", &text, correlation)
}

fn failure(error: &LoginError, correlation: &str) -> Response<Body> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(correlation, error = %error, "login failed");
    } else {
        tracing::warn!(correlation, error = %error, "login refused");
    }
    let title = match error {
        LoginError::Cancelled { .. } => "Login cancelled",
        LoginError::Link(_) => "This link cannot be used",
        LoginError::UnknownProvider(_) => "Unknown provider",
        _ if status.is_server_error() => "Something went wrong",
        _ => "This login cannot be finished",
    };
    page(status, title, &error.to_string(), correlation)
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    secure_headers(&mut response);
    response
}

/// A small page a person can read.
pub fn page(status: StatusCode, title: &str, text: &str, correlation: &str) -> Response<Body> {
    let paragraphs: String = text.split("\n\n").map(|p| format!("<p>{}</p>", escape(p))).collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}}\
         small{{color:#777}}</style></head><body><h1>{title}</h1>{paragraphs}\
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

/// No caching, no referrer (the callback URL carries a code), no scripts.
fn secure_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
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
