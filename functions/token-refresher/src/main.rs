//! Wires the `token-refresher` function: logging, clients and the token
//! service are built once; each scheduled invocation runs the handler for
//! the shard group its event names.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::runtime::App;
use shared::shards::Layout;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let layout = Layout::from_env().map_err(startup_failed)?;
    let app = App::from_env().await.map_err(startup_failed)?;
    let service = app.token_service().await.map_err(startup_failed)?;
    let service = Arc::new(service.with_token_groups(layout.groups));
    // Read beside the run's first DynamoDB reads; a run with nothing due
    // never waits for it.
    service.prefetch_keys();
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        token_refresher::function_handler(&service, &layout, event)
    }))
    .await
}
