//! Every outbound HTTP client: to authorization servers, discovery
//! documents, data APIs (the sync and the API's proxy), webhook endpoints and
//! `doctor`'s probes. All of them follow no redirect (a redirecting endpoint
//! is an SSRF door, and a token endpoint that redirects is misconfigured),
//! time out every call, connect within 5 s and name themselves. The AWS SDK's
//! clients use reqwest too (`shared::aws::http`): one HTTP stack, one TLS
//! stack, rustls on `ring`.

use std::time::Duration;

/// Whether a client keeps connections open between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Every request opens its own connection. For token calls: a socket
    /// left idle in the pool while Lambda froze the process may have been
    /// closed by the provider, and a refresh sent on it fails after it left,
    /// which reads as an unknown outcome. The cost is one TCP and TLS
    /// handshake per call, and such calls are rare.
    Off,
    /// Idle connections are kept 30 s. For data pages: a socket the provider
    /// closed while Lambda was frozen only fails a GET, which is retried.
    On,
}

/// The one way to build an outbound client: `timeout` for each whole call
/// (connecting within the lesser of it and 5 s), no redirects, our user
/// agent, and connections kept or not by `pooling`.
pub fn client(timeout: Duration, pooling: Pooling) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("oauth-sync/", env!("CARGO_PKG_VERSION")));
    match pooling {
        // 0 disables hyper's pool: every request opens its own connection.
        Pooling::Off => builder.pool_max_idle_per_host(0),
        Pooling::On => builder.pool_idle_timeout(Duration::from_secs(30)),
    }
    .build()
}

/// Makes `ring` rustls' crypto provider for this process, once, before any
/// client is built (reqwest goes without a provider of its own: its default,
/// aws-lc, is a C library of about 1 MB in every binary; `ring` is a few
/// hundred KiB and needs no start-up work). Every client builder here calls
/// it; a provider installed before (a test's, say) is kept.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Err: a provider was installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
