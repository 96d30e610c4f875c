//! Wires the `token-refresher` function: logging, clients and the token
//! service are built once; each scheduled invocation runs the handler.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::runtime::App;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    let service = Arc::new(app.token_service().await.map_err(startup_failed)?);
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        token_refresher::function_handler(&service, event)
    }))
    .await
}
