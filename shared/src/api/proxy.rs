//! The proxy: a request of the operator's application forwarded to the
//! provider's API (`api_base_url`, its placeholders filled from the
//! connection) with the connection's bearer token. It draws on the same
//! shared rate budget as the sync of that rate key (Exact Online: the
//! division), so a proxy call and a sync never together exceed the
//! provider's limits; a 401 gets one refresh through the protocol and one
//! retry. The caller's `Authorization`, cookies, AWS signing headers and
//! hop-by-hop headers are not forwarded, and the target never leaves the
//! API's origin and base path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName};
use url::Url;

use super::{ApiError, seconds_until};
use crate::config::{TemplateError, fill_template};
use crate::connection::{ConnectionId, Status, now_ms};
use crate::refresh::{RefreshError, TokenService};
use crate::sync::budget::RateBudget;
use crate::sync::rate::{Answer, Draw};
use crate::telemetry::error_chain;

/// The longest the proxy waits for the rate budget before answering 429.
pub const MAX_BUDGET_WAIT: Duration = Duration::from_secs(2);
/// The largest answer the proxy returns (Lambda's response payload limit
/// is 6 MB, and a binary body grows by a third in base64).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// One provider request's timeout (API Gateway gives up after 30 s).
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(20);

/// Request headers never forwarded: hop-by-hop (RFC 9110 §7.6.1), the
/// caller's credentials and cookies, what API Gateway and SigV4 add, and
/// what the HTTP client sets itself.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "cookie",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "accept-encoding",
];

/// Answer headers never returned: hop-by-hop, the provider's cookies, and
/// the length (the answer is re-framed).
const DROPPED_ANSWER_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn forwarded_request_header(name: &HeaderName, hop_by_hop: &[String]) -> bool {
    let name = name.as_str();
    !(DROPPED_REQUEST_HEADERS.contains(&name)
        || name.starts_with("x-amz-")
        || name.starts_with("x-amzn-")
        || name.starts_with("x-forwarded-")
        || hop_by_hop.iter().any(|h| h == name))
}

/// What the caller asked the provider.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    pub method: Method,
    /// The path below `api_base_url`, as it came (percent-encoded), without its leading `/`.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// What the provider answered.
#[derive(Debug, Clone)]
pub struct ProxyAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Whether the proxy refreshed the token after a 401.
    pub refreshed: bool,
}

/// The proxy's clients: the token service, the shared budgets, an HTTP client.
#[derive(Debug)]
pub struct Proxy {
    tokens: Arc<TokenService>,
    budget: RateBudget,
    http: reqwest::Client,
}

/// The URL a proxied request goes to: `path` and `query` below `base`. The
/// result must keep `base`'s origin and stay at or below its path, after
/// the URL parser resolved every `.`, `..` and their encodings.
pub fn target_url(base: &str, path: &str, query: Option<&str>) -> Result<Url, ApiError> {
    let base = Url::parse(base).map_err(|e| ApiError::Internal(format!("api_base_url `{base}`: {e}")))?;
    let base_path = base.path().trim_end_matches('/').to_owned();
    let mut target = base.clone();
    let joined = format!("{base_path}/{}", path.trim_start_matches('/'));
    if joined.contains('\\') || joined.contains('#') || joined.contains('?') {
        return Err(ApiError::bad(
            "path",
            "a path below the provider's API, without `\\`, `#` or `?`",
        ));
    }
    target.set_path(&joined);
    target.set_query(query.filter(|q| !q.is_empty()));
    // Re-parse: `set_path` keeps dot segments that a server would resolve.
    let target = Url::parse(target.as_str()).map_err(|e| ApiError::bad("path", e.to_string()))?;
    let inside = target.origin() == base.origin()
        && (target.path() == base_path
            || target.path() == format!("{base_path}/")
            || target.path().starts_with(&format!("{base_path}/")));
    // A segment a server would decode into a dot segment or into more than
    // one segment (`%2e%2e`, `..%2f..`) could leave the base there.
    let smuggled = path.split('/').any(|segment| {
        let decoded = percent_decode(segment);
        decoded == "." || decoded == ".." || decoded.contains(['/', '\\'])
    });
    if !inside || smuggled {
        return Err(ApiError::bad(
            "path",
            format!("the target must stay below the provider's API ({base_path}/)"),
        ));
    }
    Ok(target)
}

/// `%XX` decoded (invalid escapes kept as they are), for the check above.
fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

impl Proxy {
    pub fn new(tokens: Arc<TokenService>, budget: RateBudget) -> Result<Proxy, reqwest::Error> {
        Ok(Proxy {
            tokens,
            budget,
            http: crate::http::client(PROXY_TIMEOUT, crate::http::Pooling::On)?,
        })
    }

    /// Forwards `request` for connection `id`.
    ///
    /// One function: the target's checks, the budget draw, the request and its
    /// one retry after a 401 share the draw's ticket, in the order docs/api.md
    /// tells them.
    pub async fn forward(
        &self,
        id: &ConnectionId,
        request: ProxyRequest,
        deadline: Instant,
    ) -> Result<ProxyAnswer, ApiError> {
        let config = self.tokens.config();
        let conn = self
            .tokens
            .store()
            .get(id)
            .await
            .map_err(|e| ApiError::Internal(error_chain(&e)))?
            .ok_or_else(|| ApiError::NotFound(format!("connection {id} does not exist")))?;
        if conn.status != Status::Active {
            return Err(ApiError::from(RefreshError::NotActive {
                id: id.clone(),
                status: conn.status,
                reason: conn.status_reason.clone(),
                message: conn.provider_message.clone(),
            }));
        }
        let provider = config
            .provider(&conn.provider)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let template = provider.settings.api_base_url.as_deref().ok_or_else(|| {
            ApiError::bad(
                "connection",
                format!("provider `{}` has no api_base_url to proxy to", provider.name),
            )
        })?;
        let mut params = provider.settings.params.clone();
        params.extend(conn.url_params());
        let base = match fill_template(template, &params, &[]) {
            Ok(base) => base,
            Err(TemplateError::Unfilled(name)) => {
                return Err(ApiError::NeedsLogin {
                    message: format!(
                        "connection {id} has no `{name}` ({}); a new login learns it",
                        conn.param_error.as_deref().unwrap_or("not learned at login")
                    ),
                    status: conn.status.as_str().to_owned(),
                    reason: Some("missing_parameter".to_owned()),
                    provider_message: None,
                });
            }
            Err(e) => return Err(ApiError::Internal(e.to_string())),
        };
        let url = target_url(&base, &request.path, request.query.as_deref())?;
        let key = crate::sync::engine::rate_key(provider, &params, id);
        let hop_by_hop: Vec<String> = request
            .headers
            .get_all(reqwest::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            if forwarded_request_header(name, &hop_by_hop) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut refreshed = false;
        let mut fresh = self.tokens.access_token(id, deadline).await?;
        loop {
            let ticket = self
                .draw(&key, provider.settings.error_budget_per_hour, deadline)
                .await?;
            let sent = self
                .http
                .request(request.method.clone(), url.clone())
                .headers(headers.clone())
                .bearer_auth(fresh.access_token.secret())
                .body(request.body.clone())
                .send()
                .await;
            let now = now_ms();
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    self.observe(&key, ticket, &Answer::lost()).await;
                    return Err(ApiError::Provider {
                        message: format!("the provider could not be reached: {}", error_chain(&e)),
                        retry_after_secs: None,
                    });
                }
            };
            let status = response.status().as_u16();
            let answer_headers = response.headers().clone();
            let header = |name: &str| {
                answer_headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let answer = Answer::read(&provider.settings.rate_limits, header, status, now);
            self.observe(&key, ticket, &answer).await;
            if status == 401 && !refreshed {
                // The token expired early or was revoked: one newer token, once.
                refreshed = true;
                fresh = self.tokens.replace_refused(id, fresh.token_version, deadline).await?;
                continue;
            }
            let body = read_capped(response).await?;
            let mut headers = HeaderMap::new();
            for (name, value) in &answer_headers {
                if !DROPPED_ANSWER_HEADERS.contains(&name.as_str()) {
                    headers.append(name.clone(), value.clone());
                }
            }
            return Ok(ProxyAnswer {
                status,
                headers,
                body,
                refreshed,
            });
        }
    }

    /// One request from the shared budget: waits up to [`MAX_BUDGET_WAIT`],
    /// else answers 429 with when to come back.
    async fn draw(
        &self,
        key: &str,
        error_budget_per_hour: Option<u64>,
        deadline: Instant,
    ) -> Result<crate::sync::rate::Ticket, ApiError> {
        let mut failures = 0u32;
        loop {
            let now = now_ms();
            match self.budget.draw(key, error_budget_per_hour).await {
                Ok(Draw::Go(ticket)) => return Ok(ticket),
                Ok(Draw::WaitUntil(until)) => {
                    let wait = Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
                    if wait > MAX_BUDGET_WAIT || Instant::now() + wait >= deadline {
                        return Err(ApiError::RateLimited {
                            message: "the provider's rate limit for this connection is spent; try again later"
                                .to_owned(),
                            retry_after_secs: seconds_until(until, now),
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
                Ok(Draw::ErrorBudgetSpent(until)) => {
                    return Err(ApiError::RateLimited {
                        message: "half of the provider's hourly error budget is used; try again later".to_owned(),
                        retry_after_secs: seconds_until(until, now),
                    });
                }
                Err(e) if e.is_transient() && failures < 3 => {
                    failures += 1;
                    tokio::time::sleep(crate::backoff::exponential(
                        Duration::from_millis(50),
                        Duration::from_secs(1),
                        failures,
                    ))
                    .await;
                }
                Err(e) => return Err(ApiError::Internal(format!("the rate budget: {}", error_chain(&e)))),
            }
        }
    }

    async fn observe(&self, key: &str, ticket: crate::sync::rate::Ticket, answer: &Answer) {
        if let Err(e) = self.budget.observe(key, ticket, answer).await {
            tracing::warn!(error = %error_chain(&e), "an answer could not be recorded in the rate budget");
        }
    }
}

/// The answer's body, at most [`MAX_ANSWER_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(ApiError::Provider {
                        message: format!(
                            "the provider's answer is larger than the proxy returns ({} MiB); page or narrow the request",
                            MAX_ANSWER_BYTES / (1024 * 1024)
                        ),
                        retry_after_secs: None,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(ApiError::Provider {
                    message: format!("reading the provider's answer failed: {}", error_chain(&e)),
                    retry_after_secs: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_stays_below_the_api_base() {
        let base = "https://start.exactonline.nl/api/v1/123";
        let ok = |path: &str, query: Option<&str>| target_url(base, path, query).map(|u| u.to_string());
        assert_eq!(
            ok("project/Projects", Some("$top=1")).ok().as_deref(),
            Some("https://start.exactonline.nl/api/v1/123/project/Projects?$top=1")
        );
        assert!(ok("", None).is_ok());
        for bad in [
            "../456/project/Projects",
            "a/../../456",
            "%2e%2e/456",
            "%2E%2E/456",
            "a%2f..%2f..%2f456",
            "..",
            "a\\..\\..\\x",
            "x#frag",
        ] {
            assert!(ok(bad, None).is_err(), "{bad}");
        }
        // Another origin through the path is impossible: it is a path.
        let url = ok("//evil.example/x", None).unwrap_or_default();
        assert!(url.starts_with("https://start.exactonline.nl/api/v1/123/"), "{url}");
    }

    #[test]
    fn credentials_signing_and_hop_by_hop_headers_stay_behind() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let extra = vec!["x-custom-hop".to_owned()];
        for dropped in [
            "authorization",
            "cookie",
            "host",
            "x-amz-date",
            "x-amz-security-token",
            "x-amzn-trace-id",
            "x-forwarded-for",
            "transfer-encoding",
            "x-custom-hop",
        ] {
            assert!(!forwarded_request_header(&name(dropped), &extra), "{dropped}");
        }
        for kept in ["accept", "content-type", "if-none-match", "prefer", "x-custom"] {
            assert!(forwarded_request_header(&name(kept), &extra), "{kept}");
        }
    }
}
