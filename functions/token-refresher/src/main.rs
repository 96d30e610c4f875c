//! Wires the `token-refresher` function: logging, clients and the token
//! service are built once; each scheduled invocation runs the handler for
//! the shard group its event names. The start-up (the configuration's read)
//! runs beside the runtime loop, so the first run's index queries go out
//! while it does ([`token_refresher::handle_starting`]).

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::aws::AwsClients;
use shared::runtime::{App, Starting, connection_store_on};
use shared::shards::Layout;
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let layout = Layout::from_env().map_err(startup_failed)?;
    let sdk = shared::aws::sdk_config_from_env();
    let aws = AwsClients::from_sdk_config(&sdk);
    let store = connection_store_on(&aws).map_err(startup_failed)?;
    let groups = layout.groups;
    let starting = Starting::spawn(async move {
        let app = App::load(&sdk, aws, &[]).await.map_err(startup_failed)?;
        let service = app.token_service().await.map_err(startup_failed)?;
        let service = service.with_token_groups(groups);
        // Read beside the run's first DynamoDB reads; a run with nothing due
        // never waits for it.
        service.prefetch_keys();
        Ok(Arc::new(service))
    });
    // Boxed: the run's state would otherwise make `main`'s future too deep
    // for the compiler to lay out.
    let runtime = run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        Box::pin(token_refresher::handle_starting(&starting, &store, &layout, event))
    }));
    starting.beside(runtime).await
}
