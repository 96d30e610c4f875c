//! Wires the `oauth-callback` function: logging, clients, the token service
//! and the login service are built once; each request runs the handler.

use std::sync::Arc;

use lambda_http::{Error, Request, run, service_fn};
use shared::login::flow::{ATTEMPT_TTL, LoginService};
use shared::runtime::App;
use shared::telemetry::{Target, init};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await?;
    let tokens = Arc::new(app.token_service().await?);
    let config = Arc::new(app.config.clone());
    let login = LoginService::load(config, tokens, app.attempt_store()?, &app.secrets, ATTEMPT_TTL).await?;
    run(service_fn(|request: Request| oauth_callback::handle(&login, request))).await
}
