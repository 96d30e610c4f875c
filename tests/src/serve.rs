//! Serving an axum router one task per connection, so that a handler can
//! close its own connection without answering: the simulator's
//! accept-then-drop and the DynamoDB proxy's lost responses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

/// Handlers take this extension; [`Kill::drop_connection`] closes the
/// connection the request came on, unanswered.
#[derive(Debug, Clone)]
pub struct Kill(Arc<Notify>);

impl Kill {
    /// Closes this request's connection without an answer. Never returns.
    pub async fn drop_connection(&self) -> ! {
        self.0.notify_one();
        std::future::pending::<()>().await;
        unreachable!("the connection task is dropped first")
    }
}

/// Stops the server when dropped.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves `router` on `addr`. `accept` decides, per new TCP connection,
/// whether to serve it (`false` closes it at once: a refused connection).
pub async fn serve(
    router: Router,
    addr: SocketAddr,
    accept: impl Fn() -> bool + Send + Sync + 'static,
) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = oneshot::channel();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = &mut rx => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            if !accept() {
                drop(stream);
                continue;
            }
            let kill = Arc::new(Notify::new());
            let service = TowerToHyperService::new(router.clone().layer(Extension(Kill(kill.clone()))));
            tokio::spawn(async move {
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    // Dropping the connection closes the socket, unanswered.
                    _ = kill.notified() => {}
                }
            });
        }
    });
    Ok(Server {
        addr,
        shutdown: Some(tx),
    })
}
