//! Wires the `api` function: logging, clients, the token service, the link
//! keys and the stores are built once; each request runs the handler.

use std::sync::Arc;

use lambda_http::{Error, Request, run, service_fn};
use shared::api::ApiService;
use shared::login::flow::LoginService;
use shared::runtime::App;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    // The token key ring and the link keys are two secrets: fetched at once.
    let (tokens, links) = tokio::join!(app.token_service(), LoginService::link_keys(&app.config, &app.secrets));
    let service = ApiService::new(
        app.live_config(),
        Arc::new(tokens.map_err(startup_failed)?),
        app.job_store().map_err(startup_failed)?,
        app.record_store().map_err(startup_failed)?,
        links.map_err(startup_failed)?,
    )
    .map_err(startup_failed)?;
    run(service_fn(|request: Request| api::handle(&service, request))).await
}
