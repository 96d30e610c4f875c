//! The `api` Lambda function (API Gateway HTTP API, every route with
//! `AWS_IAM` authorization): the operator's application makes links, reads
//! connections, gets tokens, calls the provider through the proxy, runs
//! syncs and reads changed records (docs/api.md). The operations are
//! `shared::api`; this crate maps routes, query strings and JSON bodies to
//! them and their results to JSON answers. Every answer is `no-store`;
//! errors are `{"error", "message"}` with the status the error names. No
//! body, token or query string is logged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::api::proxy::{ProxyAnswer, ProxyRequest};
use shared::api::{ApiError, ApiService, LinkBody};
use shared::connection::ConnectionId;

/// Longest JSON body accepted by the routes that take one (the proxy takes up to API Gateway's limit).
const MAX_JSON_BODY: usize = 16 * 1024;
/// How long one request may take: API Gateway answers 503 after 30 s.
const REQUEST_BUDGET: Duration = Duration::from_secs(25);

/// Handles one request; never fails (every outcome is an answer).
pub async fn handle(service: &ApiService, request: Request) -> Result<Response<Body>, std::convert::Infallible> {
    let correlation = request
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)));
    let deadline = request.lambda_context_ref().map_or_else(
        || Instant::now() + REQUEST_BUDGET,
        |c| {
            shared::runtime::deadline_from_epoch_ms(c.deadline, Duration::from_secs(1))
                .min(Instant::now() + REQUEST_BUDGET)
        },
    );
    // The raw path, as the client sent it: the URI lambda_http builds has
    // its dot segments resolved, so `/proxy/x/%2e%2e/%2e%2e/connections/c/token`
    // (authorized by IAM as a proxy call) would otherwise reach the token route.
    let raw = match request.raw_http_path() {
        "" => request.uri().path().to_owned(),
        raw => raw.to_owned(),
    };
    let path = route_path(&raw).to_owned();
    let route = if has_dot_segment(&path) {
        Route::DotSegments
    } else {
        Route::of(&path)
    };
    // A pushed configuration or a rotated key ring, at most once a minute.
    service.reload_if_changed().await;
    let result = answer(service, &request, route, deadline).await;
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status() >= 500 {
                tracing::error!(correlation = %correlation, error = %error, "request failed");
            } else {
                tracing::warn!(correlation = %correlation, error = %error, "request refused");
            }
            error_response(&error, &correlation)
        }
    };
    // The route's name, not its path: a proxied path may carry the caller's identifiers.
    tracing::info!(correlation = %correlation, method = %request.method(), route = route.name(), status = response.status().as_u16(), "request");
    Ok(response)
}

/// The path below any local prefix (`cargo lambda watch` serves functions
/// at `/lambda-url/{name}/…`; API Gateway's `$default` stage has none).
fn route_path(path: &str) -> &str {
    match path.strip_prefix("/lambda-url/") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    }
}

/// What a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Links,
    Connections,
    Connection(&'a str),
    Token(&'a str),
    /// The connection and the raw (percent-encoded) path below the API base.
    Proxy(&'a str, &'a str),
    SyncRun(&'a str, &'a str),
    Sync(&'a str, &'a str),
    Records(&'a str, &'a str),
    Record(&'a str, &'a str, &'a str),
    /// A path with `.` or `..` segments (also percent-encoded): refused, never resolved.
    DotSegments,
    Unknown,
}

/// Does a segment of `path`, percent-decoded, read `.` or `..` (or hide a `/`)?
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = decode(segment);
        decoded == "." || decoded == ".." || decoded.contains(['/', '\\'])
    })
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Route<'a> {
        let path = path.strip_prefix('/').unwrap_or(path);
        if let Some(rest) = path.strip_prefix("proxy/") {
            return match rest.split_once('/') {
                Some((id, below)) if !id.is_empty() => Route::Proxy(id, below),
                None if !rest.is_empty() => Route::Proxy(rest, ""),
                _ => Route::Unknown,
            };
        }
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        match segments.as_slice() {
            ["links"] => Route::Links,
            ["connections"] => Route::Connections,
            ["connections", id] => Route::Connection(id),
            ["connections", id, "token"] => Route::Token(id),
            ["syncs", connection, sync, "run"] => Route::SyncRun(connection, sync),
            ["syncs", connection, sync] => Route::Sync(connection, sync),
            ["records", connection, sync] => Route::Records(connection, sync),
            ["records", connection, sync, id] => Route::Record(connection, sync, id),
            _ => Route::Unknown,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Route::Links => "links",
            Route::Connections => "connections",
            Route::Connection(_) => "connection",
            Route::Token(_) => "token",
            Route::Proxy(..) => "proxy",
            Route::SyncRun(..) => "sync-run",
            Route::Sync(..) => "sync",
            Route::Records(..) => "records",
            Route::Record(..) => "record",
            Route::DotSegments => "dot-segments",
            Route::Unknown => "unknown",
        }
    }
}

/// One function: the routing table, one arm per route and method.
async fn answer(
    service: &ApiService,
    request: &Request,
    route: Route<'_>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let method = request.method().clone();
    let query = query(request)?;
    let only = |allowed: &'static str| ApiError::MethodNotAllowed(format!("this route answers {allowed}"));
    match route {
        Route::Links if method == Method::POST => {
            let body: LinkBody = json_body(request)?;
            Ok(json_response(StatusCode::CREATED, &service.create_link(body).await?))
        }
        Route::Links => Err(only("POST")),
        Route::Connections if method == Method::GET => {
            let limit = number(&query, "limit")?;
            let page = service
                .list_connections(
                    text(&query, "provider"),
                    text(&query, "status"),
                    text(&query, "cursor"),
                    limit,
                )
                .await?;
            Ok(json_response(StatusCode::OK, &page))
        }
        Route::Connections => Err(only("GET")),
        Route::Connection(id) if method == Method::GET => {
            Ok(json_response(StatusCode::OK, &service.connection(&decode(id)).await?))
        }
        Route::Connection(id) if method == Method::DELETE => {
            Ok(json_response(StatusCode::OK, &service.revoke(&decode(id)).await?))
        }
        Route::Connection(_) => Err(only("GET, DELETE")),
        Route::Token(id) if method == Method::POST => {
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct TokenBody {
                min_valid_secs: Option<u64>,
            }
            let body: TokenBody = if body_bytes(request).is_empty() {
                TokenBody::default()
            } else {
                json_body(request)?
            };
            let token = service.token(&decode(id), body.min_valid_secs, deadline).await?;
            Ok(json_response(StatusCode::OK, &token))
        }
        Route::Token(_) => Err(only("POST")),
        Route::Proxy(id, below) => proxy(service, request, &decode(id), below, deadline).await,
        Route::SyncRun(connection, sync) if method == Method::POST => {
            let view = service.run_sync(&decode(connection), &decode(sync)).await?;
            Ok(json_response(StatusCode::ACCEPTED, &view))
        }
        Route::SyncRun(..) => Err(only("POST")),
        Route::Sync(connection, sync) if method == Method::GET => {
            let view = service.sync_status(&decode(connection), &decode(sync)).await?;
            Ok(json_response(StatusCode::OK, &view))
        }
        Route::Sync(..) => Err(only("GET")),
        Route::Records(connection, sync) if method == Method::GET => {
            let limit = number(&query, "limit")?;
            let page = service
                .changes(&decode(connection), &decode(sync), text(&query, "since"), limit)
                .await?;
            Ok(json_response(StatusCode::OK, &page))
        }
        Route::Records(..) => Err(only("GET")),
        Route::Record(connection, sync, id) if method == Method::GET => {
            let record = service.record(&decode(connection), &decode(sync), &decode(id)).await?;
            Ok(json_response(StatusCode::OK, &record))
        }
        Route::Record(..) => Err(only("GET")),
        Route::DotSegments => Err(ApiError::bad(
            "path",
            "`.` and `..` segments (also percent-encoded) and encoded slashes are refused",
        )),
        Route::Unknown => Err(ApiError::NotFound(
            "there is no such route (see docs/api.md)".to_owned(),
        )),
    }
}

async fn proxy(
    service: &ApiService,
    request: &Request,
    id: &str,
    below: &str,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let id = ConnectionId::parse(id).map_err(|e| ApiError::bad("connection", e.to_string()))?;
    let forwarded = ProxyRequest {
        method: request.method().clone(),
        path: below.to_owned(),
        query: request.uri().query().map(str::to_owned),
        headers: request.headers().clone(),
        body: body_bytes(request).to_vec(),
    };
    let ProxyAnswer {
        status, headers, body, ..
    } = service.proxy().forward(&id, forwarded, deadline).await?;
    let mut response = Response::new(if body.is_empty() {
        Body::Empty
    } else {
        Body::Binary(body)
    });
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The query string as single values: a parameter given twice is refused
/// (which one was meant cannot be known).
fn query(request: &Request) -> Result<BTreeMap<String, String>, ApiError> {
    let parameters = request.query_string_parameters();
    let mut query = BTreeMap::new();
    for (name, _) in parameters.iter() {
        let all = parameters.all(name).unwrap_or_default();
        if all.len() > 1 {
            return Err(ApiError::bad(name, "given more than once"));
        }
        if let Some(value) = all.first() {
            query.insert(name.to_owned(), (*value).to_owned());
        }
    }
    Ok(query)
}

fn text<'a>(query: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    query.get(name).map(String::as_str)
}

fn number(query: &BTreeMap<String, String>, name: &str) -> Result<Option<i32>, ApiError> {
    query
        .get(name)
        .map(|v| v.parse().map_err(|_| ApiError::bad(name, "a whole number")))
        .transpose()
}

/// A path segment, percent-decoded (ids and sync names are checked by the operations).
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn body_bytes(request: &Request) -> &[u8] {
    match request.body() {
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    }
}

/// A JSON body, naming the field that is wrong.
fn json_body<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    let bytes = body_bytes(request);
    if bytes.len() > MAX_JSON_BODY {
        return Err(ApiError::bad("body", format!("at most {MAX_JSON_BODY} bytes")));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !bytes.is_empty() && !content_type.to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::bad("body", "send JSON with Content-Type: application/json"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(if bytes.is_empty() { b"{}" } else { bytes });
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::bad(&field, e.into_inner().to_string())
    })
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let text = serde_json::to_string(value)
        .unwrap_or_else(|e| json!({"error": "internal", "message": e.to_string()}).to_string());
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Tokens and connection state must not sit in any cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_response(error: &ApiError, correlation: &str) -> Response<Body> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body: Value = error.body();
    body["correlation"] = json!(correlation);
    let mut response = json_response(status, &body);
    if let Some(seconds) = error.retry_after_secs()
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_routes_after_a_local_prefix() {
        assert_eq!(route_path("/lambda-url/api/connections/c1"), "/connections/c1");
        assert_eq!(route_path("/connections"), "/connections");
        assert_eq!(Route::of("/links"), Route::Links);
        assert_eq!(Route::of("/connections/"), Route::Connections);
        assert_eq!(Route::of("/connections/c1"), Route::Connection("c1"));
        assert_eq!(Route::of("/connections/c1/token"), Route::Token("c1"));
        assert_eq!(
            Route::of("/proxy/c1/project/Projects"),
            Route::Proxy("c1", "project/Projects")
        );
        assert_eq!(Route::of("/proxy/c1"), Route::Proxy("c1", ""));
        assert_eq!(Route::of("/syncs/c1/projects/run"), Route::SyncRun("c1", "projects"));
        assert_eq!(Route::of("/syncs/c1/projects"), Route::Sync("c1", "projects"));
        assert_eq!(Route::of("/records/c1/projects"), Route::Records("c1", "projects"));
        assert_eq!(
            Route::of("/records/c1/projects/a%7Cb"),
            Route::Record("c1", "projects", "a%7Cb")
        );
        for unknown in ["/", "/proxy/", "/connections/c1/tokens", "/records/c1", "/x"] {
            assert_eq!(Route::of(unknown), Route::Unknown, "{unknown}");
        }
        for dotted in [
            "/proxy/x/../../connections/c/token",
            "/proxy/x/%2e%2e/%2E%2e/connections/c/token",
            "/connections/./c",
            "/proxy/x/a%2f..%2fb",
        ] {
            assert!(has_dot_segment(dotted), "{dotted}");
        }
        assert!(!has_dot_segment("/proxy/x/project/Projects.json"));
    }
}
