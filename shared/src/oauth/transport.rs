//! The HTTP client the `oauth2` crate sends through: our reqwest client, with a
//! transport failure classified as *not sent* or *outcome unknown*, and the
//! answer's status and `Retry-After` kept for us (the crate drops both).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use reqwest::StatusCode;

use crate::telemetry::error_chain;

/// Largest token-endpoint answer read; a bigger one is refused.
const MAX_BODY: usize = 256 * 1024;

/// The longest `Retry-After` taken at its word (a day); longer is read as a day.
pub(super) const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub(super) enum TransportError {
    /// Refused, DNS, TLS: the connection failed before the request left.
    #[error("{0}")]
    NotSent(String),
    /// The request could not be built; it was not sent either.
    #[error("the request could not be built: {0}")]
    Unbuildable(String),
    /// The request left and the timeout came first.
    #[error("no answer before the timeout ({0})")]
    Timeout(String),
    /// The request left and the connection failed (dropped, reset, cut body).
    #[error("the connection failed after the request was sent ({0})")]
    Dropped(String),
    #[error("answer larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// The status and `Retry-After` of the answer, as the provider sent them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub status: StatusCode,
    /// `Retry-After` in seconds, when given as such.
    pub retry_after: Option<u64>,
}

/// One token call's transport: used for one request, then asked what it saw.
/// It owns what its future needs (a reqwest client is a handle), so the
/// future is `'static`: the refresh runs in spawned tasks.
#[derive(Debug)]
pub(super) struct Transport {
    http: reqwest::Client,
    seen: Arc<OnceLock<Seen>>,
}

impl Transport {
    pub fn new(http: &reqwest::Client) -> Self {
        Transport {
            http: http.clone(),
            seen: Arc::new(OnceLock::new()),
        }
    }

    /// The answer's status and `Retry-After`; `None` when none came.
    pub fn seen(&self) -> Option<Seen> {
        self.seen.get().copied()
    }

    pub fn send(
        &self,
        request: HttpRequest,
    ) -> impl Future<Output = Result<HttpResponse, TransportError>> + Send + 'static {
        let http = self.http.clone();
        let seen = Arc::clone(&self.seen);
        async move {
            let request = reqwest::Request::try_from(request)
                .map_err(|e| TransportError::Unbuildable(error_chain(&e.without_url())))?;
            let mut response = http.execute(request).await.map_err(failed)?;
            let status = response.status();
            // Set once: a transport serves one request.
            let _ = seen.set(Seen {
                status,
                retry_after: retry_after(response.headers()),
            });
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(failed)? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(TransportError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(for_the_crate(status, body))
        }
    }
}

impl<'c> AsyncHttpClient<'c> for Transport {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'static>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// The answer as the crate gets it: any 2xx as 200 (the crate reads only 200
/// as success; we have always taken any 2xx, and RFC 7009 revocation answers
/// of 204 exist), and no headers: the crate would refuse a token answer whose
/// `Content-Type` is not JSON, while we read the body as JSON whatever it is
/// labelled. What we need of the headers is in [`Seen`].
pub(super) fn for_the_crate(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut response = HttpResponse::new(body);
    *response.status_mut() = if status.is_success() { StatusCode::OK } else { status };
    response
}

/// Not sent, or sent with the outcome unknown. reqwest calls every failure of
/// the connector a connect error: refused, DNS, the TLS handshake, and the
/// connect timeout; the request had not left in any of them.
fn failed(error: reqwest::Error) -> TransportError {
    let error = error.without_url();
    if error.is_connect() {
        TransportError::NotSent(error_chain(&error))
    } else if error.is_timeout() {
        TransportError::Timeout(error_chain(&error))
    } else {
        TransportError::Dropped(error_chain(&error))
    }
}

/// `Retry-After` as delta-seconds (RFC 9110 §10.2.3). The HTTP-date form is
/// not read: token endpoints use seconds, and a date needs a clock we would
/// have to trust over our own backoff.
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(|secs| secs.min(MAX_RETRY_AFTER_SECS))
}
