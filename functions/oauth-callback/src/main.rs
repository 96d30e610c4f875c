//! The `oauth-callback` Lambda function: serves GET /connect/{provider} and GET /callback (API Gateway HTTP API).
//! `main` wires; [`handler`] holds the logic.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::runtime::App;
use shared::telemetry::{Target, init};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        handler::function_handler(&app, event)
    }))
    .await
}
