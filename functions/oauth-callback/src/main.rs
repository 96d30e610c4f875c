//! Wires the `oauth-callback` function: logging, clients, the token service
//! and the login service are built once; each request runs the handler.

use std::sync::Arc;

use lambda_http::{Error, Request, run, service_fn};
use shared::login::flow::{ATTEMPT_TTL, LinkKeySource, LoginService};
use shared::runtime::{App, KeySecret};
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    // The link keys and the token key ring are read in the background from
    // the start, beside the configuration (not after it): no request waits
    // for the link keys but a link's page or button (never `/callback`),
    // none for the ring but the button and `/callback` (they seal and open
    // the PKCE verifier), and a start fails for the want of neither.
    let app = App::from_env_reading_keys_ahead(&[KeySecret::LinkKeys, KeySecret::TokenKeys])
        .await
        .map_err(startup_failed)?;
    let links = LinkKeySource::lazy(&app.config, &app.secrets);
    links.prefetch();
    let tokens = Arc::new(app.token_service().await.map_err(startup_failed)?);
    tokens.prefetch_keys();
    let login = LoginService::new(
        app.live_config(),
        tokens,
        app.attempt_store().map_err(startup_failed)?,
        links,
        ATTEMPT_TTL,
    )
    .with_jobs(app.job_store().map_err(startup_failed)?);
    run(service_fn(|request: Request| oauth_callback::handle(&login, request))).await
}
