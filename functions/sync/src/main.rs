//! The `sync` Lambda function: claims due sync jobs, pulls pages and upserts records (EventBridge schedule).
//! `main` wires; [`handler`] holds the logic.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::runtime::App;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        handler::function_handler(&app, event)
    }))
    .await
}
