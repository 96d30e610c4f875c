//! Wires the `api` function: logging, clients, the token service and the
//! stores are built once; each request runs the handler. The link keys are
//! read in the background from the start; only `POST /links` waits for them.

use std::sync::Arc;

use lambda_http::{Error, Request, run, service_fn};
use shared::api::ApiService;
use shared::login::flow::LinkKeySource;
use shared::runtime::App;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    let links = LinkKeySource::lazy(&app.config, &app.secrets);
    links.prefetch();
    let service = ApiService::new(
        app.live_config(),
        Arc::new(app.token_service().await.map_err(startup_failed)?),
        app.job_store().map_err(startup_failed)?,
        app.record_store().map_err(startup_failed)?,
        links,
    )
    .map_err(startup_failed)?;
    run(service_fn(|request: Request| api::handle(&service, request))).await
}
