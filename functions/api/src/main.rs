//! Wires the `api` function: logging, clients, the token service and the
//! stores are built once; each request runs the handler. The link keys and
//! the token key ring are read in the background from the start: only
//! `POST /links` waits for the link keys, and only a route that opens a
//! token (a fresh token, the proxy) for the ring.

use std::sync::Arc;

use lambda_http::{Error, Request, run, service_fn};
use shared::api::ApiService;
use shared::login::flow::LinkKeySource;
use shared::runtime::{App, KeySecret};
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    // The link keys (`POST /links`) and the token key ring (the token
    // route) are read beside the configuration, not after it.
    let app = App::from_env_reading_keys_ahead(&[KeySecret::LinkKeys, KeySecret::TokenKeys])
        .await
        .map_err(startup_failed)?;
    let links = LinkKeySource::lazy(&app.config, &app.secrets);
    links.prefetch();
    let tokens = Arc::new(app.token_service().await.map_err(startup_failed)?);
    tokens.prefetch_keys();
    let service = ApiService::new(
        app.live_config(),
        tokens,
        app.job_store().map_err(startup_failed)?,
        app.record_store().map_err(startup_failed)?,
        links,
    )
    .map_err(startup_failed)?;
    run(service_fn(|request: Request| api::handle(&service, request))).await
}
