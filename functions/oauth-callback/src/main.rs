//! Wires the `oauth-callback` function: logging, clients, the token service
//! and the login service are built once; each request runs the handler.

use std::sync::Arc;

use lambda_http::{Error, Request, run, service_fn};
use shared::login::flow::{ATTEMPT_TTL, LinkKeySource, LoginService};
use shared::runtime::App;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    // The link keys are read in the background from here, beside the token
    // key ring: no request waits for them but a link's page or button (never
    // `/callback`), and a start does not fail without them.
    let links = LinkKeySource::lazy(&app.config, &app.secrets);
    links.prefetch();
    let login = LoginService::new(
        app.live_config(),
        Arc::new(app.token_service().await.map_err(startup_failed)?),
        app.attempt_store().map_err(startup_failed)?,
        links,
        ATTEMPT_TTL,
    )
    .with_jobs(app.job_store().map_err(startup_failed)?);
    run(service_fn(|request: Request| oauth_callback::handle(&login, request))).await
}
