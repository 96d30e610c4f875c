//! Wires the `oauth-callback` function: logging, clients, the token service
//! and the login service are built once; each request runs the handler.

use std::sync::Arc;

use lambda_http::{Error, Request, run, service_fn};
use shared::login::flow::{ATTEMPT_TTL, LoginService};
use shared::runtime::App;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    // The token key ring and the link keys are two secrets: fetched at once.
    let (tokens, links) = tokio::join!(app.token_service(), LoginService::link_keys(&app.config, &app.secrets));
    let login = LoginService::new(
        app.live_config(),
        Arc::new(tokens.map_err(startup_failed)?),
        app.attempt_store().map_err(startup_failed)?,
        links.map_err(startup_failed)?,
        ATTEMPT_TTL,
    )
    .with_jobs(app.job_store().map_err(startup_failed)?);
    run(service_fn(|request: Request| oauth_callback::handle(&login, request))).await
}
