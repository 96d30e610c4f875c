//! The AWS SDK's HTTP client: our reqwest client behind the SDK's
//! [`HttpClient`] extension point, so every call, to AWS or to a provider,
//! goes through one HTTP/1.1 stack and one TLS stack (rustls on `ring`).
//!
//! The SDK's own client (`aws-smithy-http-client`) would bring a second
//! hyper client with HTTP/2 (`h2`, which none of the services we call needs)
//! and aws-lc, the C crypto library: about 1.5 MB of every function's binary
//! (BENCHMARKS.md, What each crate costs).
//!
//! What the SDK asks of a client, and what this one does:
//! - **Timeouts.** The SDK's `HttpConnectorSettings` give a connect timeout
//!   and, if set, a read timeout; each distinct pair gets its own reqwest
//!   client (one, in practice: `shared::aws` sets the connect timeout and no
//!   read timeout), with connections kept 30 s between calls. The attempt
//!   and operation timeouts are the SDK's own, around this.
//! - **Errors the retry policy can read.** A timeout is
//!   [`ConnectorError::timeout`], a failure to connect or an I/O error (a
//!   pooled connection the service closed while Lambda froze the process)
//!   is [`ConnectorError::io`]: both transient, so the SDK's bounded,
//!   jittered retries take them. A request that cannot be built is
//!   [`ConnectorError::user`] and is not retried.
//! - **No redirects, no proxy from the environment**, as the SDK's client.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// How long an idle connection to an AWS endpoint is kept for the next call.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The client every SDK client of this process uses (see the module docs).
pub fn sdk_http_client() -> SharedHttpClient {
    SharedHttpClient::new(ReqwestSdkClient::default())
}

/// One reqwest client per distinct connect/read timeout pair the SDK asks
/// for, built on first use.
#[derive(Debug, Default)]
struct ReqwestSdkClient {
    connectors: Mutex<Vec<(Timeouts, SharedHttpConnector)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeouts {
    connect: Option<Duration>,
    read: Option<Duration>,
}

impl HttpClient for ReqwestSdkClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        let timeouts = Timeouts {
            connect: settings.connect_timeout(),
            read: settings.read_timeout(),
        };
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, connector)) = connectors.iter().find(|(t, _)| *t == timeouts) {
            return connector.clone();
        }
        let connector = SharedHttpConnector::new(ReqwestConnector::new(timeouts));
        connectors.push((timeouts, connector.clone()));
        connector
    }
}

/// A reqwest client with one pair of timeouts, or the reason it could not be
/// built (each call then fails with it, as a user error).
#[derive(Debug)]
struct ReqwestConnector {
    client: Result<reqwest::Client, Arc<reqwest::Error>>,
}

impl ReqwestConnector {
    fn new(timeouts: Timeouts) -> ReqwestConnector {
        crate::http::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(IDLE_TIMEOUT);
        if let Some(connect) = timeouts.connect {
            builder = builder.connect_timeout(connect);
        }
        if let Some(read) = timeouts.read {
            builder = builder.read_timeout(read);
        }
        ReqwestConnector {
            client: builder.build().map_err(Arc::new),
        }
    }
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(err) => {
                return HttpConnectorFuture::ready(Err(ConnectorError::user(Box::new(SharedError(err.clone())))));
            }
        };
        let request = match to_reqwest(request) {
            Ok(request) => request,
            Err(err) => return HttpConnectorFuture::ready(Err(ConnectorError::user(err))),
        };
        HttpConnectorFuture::new(async move {
            let response = client.execute(request).await.map_err(connector_error)?;
            let response: http::Response<reqwest::Body> = response.into();
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|err| ConnectorError::other(Box::new(err), None))
        })
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// The SDK's request as reqwest's: its body in memory when it is (every
/// call we make), else streamed.
fn to_reqwest(request: HttpRequest) -> Result<reqwest::Request, BoxError> {
    let request = request.try_into_http1x()?;
    let request = request.map(|body| match body.bytes() {
        Some(bytes) => reqwest::Body::from(bytes.to_vec()),
        None => reqwest::Body::wrap(body),
    });
    Ok(reqwest::Request::try_from(request)?)
}

/// How the SDK's retry policy should read a failed call (module docs).
fn connector_error(err: reqwest::Error) -> ConnectorError {
    if err.is_timeout() {
        ConnectorError::timeout(Box::new(err))
    } else if err.is_builder() {
        ConnectorError::user(Box::new(err))
    } else if err.is_connect() || has_source::<std::io::Error>(&err) || err.is_request() {
        ConnectorError::io(Box::new(err))
    } else {
        ConnectorError::other(Box::new(err), None)
    }
}

fn has_source<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<E>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// A build error kept for every call of a connector that could not be built.
#[derive(Debug)]
struct SharedError(Arc<reqwest::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the HTTP client for AWS calls could not be built: {}", self.0)
    }
}

impl StdError for SharedError {}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_types::retry::RetryConfig;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::sdk_http_client;

    /// A DynamoDB client through our HTTP client to `endpoint`, three
    /// attempts 1 ms apart.
    fn dynamodb(endpoint: &str) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKIDTEST", "not-a-secret", None, None, "test"))
            .endpoint_url(endpoint)
            .http_client(sdk_http_client())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(1)),
            )
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// Serves each connection with `answer` (closing at once if empty),
    /// counting connections.
    pub(crate) async fn server(answer: String) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut request = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (endpoint, accepted)
    }

    fn is_io<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool {
        matches!(err, aws_sdk_dynamodb::error::SdkError::DispatchFailure(f) if f.is_io())
    }

    #[tokio::test]
    async fn an_answer_reaches_the_sdk_whole() {
        let body = r#"{"TableNames":["connections","records"]}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (endpoint, _) = server(answer).await;
        let tables = dynamodb(&endpoint).list_tables().send().await.expect("list tables");
        assert_eq!(tables.table_names(), ["connections", "records"]);
    }

    /// A connection closed without an answer (a pooled socket the service
    /// dropped while Lambda froze the process) is an I/O error, which the
    /// SDK's standard retry takes: every attempt is made.
    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_retried_as_io() {
        let (endpoint, accepted) = server(String::new()).await;
        let err = dynamodb(&endpoint).list_tables().send().await.expect_err("no answer");
        assert!(is_io(&err), "{err:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "each of the 3 attempts connected");
    }

    #[tokio::test]
    async fn nothing_listening_is_an_io_error_and_retried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        drop(listener);
        let err = dynamodb(&endpoint)
            .list_tables()
            .send()
            .await
            .expect_err("nothing listens");
        assert!(is_io(&err), "{err:?}");
    }
}
