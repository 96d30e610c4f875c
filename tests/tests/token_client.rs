//! The token client never sends a refresh on a connection left idle from an
//! earlier call. Lambda freezes a process between invocations; a provider that
//! closes the idle keep-alive socket meanwhile is not heard until the process
//! thaws, so a pooled socket would carry the next refresh out and meet a closed
//! connection: an unknown outcome where nothing was processed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shared::config::{Config, Provider};
use shared::oauth::{ClientCredentials, TokenEndpoint, TokenError};
use shared::secret::{ClientSecret, RefreshToken};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A token endpoint that answers the first request of each connection and
/// keeps the connection open, and then treats it as closed: a later request
/// on it is read and the socket shut without an answer. That is what a client
/// frozen across the provider's idle close meets, made deterministic: the
/// client cannot see the close before its request leaves.
struct ClosesIdleConnections {
    token_url: String,
    connections: Arc<AtomicUsize>,
    unanswered: Arc<AtomicUsize>,
}

impl ClosesIdleConnections {
    async fn start() -> ClosesIdleConnections {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let unanswered = Arc::new(AtomicUsize::new(0));
        let (count, lost) = (connections.clone(), unanswered.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(stream, n, lost.clone()));
            }
        });
        ClosesIdleConnections {
            token_url: format!("http://{addr}/token"),
            connections,
            unanswered,
        }
    }

    fn provider(&self) -> Provider {
        let text = format!(
            "[providers.p]\npreset = \"generic\"\ncredentials_secret = \"unused\"\n\
             authorize_url = \"http://127.0.0.1:1/authorize\"\ntoken_url = \"{}\"\n",
            self.token_url
        );
        let mut config = Config::parse(&text, "token_client.toml").unwrap_or_else(|e| panic!("{e}"));
        config.providers.remove("p").expect("the provider")
    }
}

async fn serve(stream: TcpStream, connection: usize, unanswered: Arc<AtomicUsize>) {
    let mut stream = BufReader::new(stream);
    if !read_request(&mut stream).await {
        return;
    }
    let body = format!(
        r#"{{"access_token":"at-{connection}","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-{connection}"}}"#
    );
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    // Idle now, and closed as far as the provider is concerned.
    if read_request(&mut stream).await {
        unanswered.fetch_add(1, Ordering::SeqCst);
    }
    // Dropping the stream closes the socket, unanswered.
}

/// Reads one HTTP/1.1 request (headers and a `content-length` body); `false` at end of stream.
async fn read_request(stream: &mut BufReader<TcpStream>) -> bool {
    let mut length = 0;
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.is_ok()
}

fn credentials() -> ClientCredentials {
    ClientCredentials {
        client_id: "client".to_owned(),
        client_secret: ClientSecret::new("client-secret"),
    }
}

/// Two refreshes with an idle pause between them, through `http`.
async fn two_refreshes(server: &ClosesIdleConnections, http: &reqwest::Client) -> [Result<(), TokenError>; 2] {
    let provider = server.provider();
    let credentials = credentials();
    let endpoint = TokenEndpoint {
        provider: &provider,
        credentials: &credentials,
        http,
    };
    let first = endpoint.refresh(&RefreshToken::new("rt-0")).await.map(drop);
    // The invocation ends; the next one comes later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = endpoint.refresh(&RefreshToken::new("rt-1")).await.map(drop);
    [first, second]
}

#[tokio::test]
async fn a_refresh_never_leaves_on_a_connection_the_provider_may_have_closed() {
    let server = ClosesIdleConnections::start().await;
    let http = shared::http::client(Duration::from_secs(5), shared::http::Pooling::Off).expect("client");
    for (i, result) in two_refreshes(&server, &http).await.into_iter().enumerate() {
        if let Err(e) = result {
            panic!(
                "refresh {} failed (outcome unknown: {}): {e}",
                i + 1,
                e.outcome_unknown()
            );
        }
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        2,
        "one connection per token call"
    );
    assert_eq!(server.unanswered.load(Ordering::SeqCst), 0);
}

/// The server above does reproduce the failure: a pooling client sends the
/// second refresh on the idle connection and cannot know what became of it.
#[tokio::test]
async fn a_pooling_client_would_turn_the_idle_close_into_an_unknown_outcome() {
    let server = ClosesIdleConnections::start().await;
    shared::http::install_crypto_provider();
    let pooling = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let [first, second] = two_refreshes(&server, &pooling).await;
    assert!(first.is_ok(), "{first:?}");
    let e = second.expect_err("the reused connection was closed");
    assert!(e.outcome_unknown(), "{e}");
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "the second call reused the first connection"
    );
    assert_eq!(server.unanswered.load(Ordering::SeqCst), 1);
}
