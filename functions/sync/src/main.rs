//! Wires the `sync` function: logging, clients, the token service, the sync
//! engine and the job reconciliation are built once; each scheduled
//! invocation runs the handler.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::runtime::App;
use shared::sync::engine::SyncSettings;
use shared::sync::reconcile::{ReconcileSettings, Reconciler};
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    let tokens = Arc::new(app.token_service().await.map_err(startup_failed)?);
    // Read beside the run's first DynamoDB reads; a run with nothing due
    // never waits for it.
    tokens.prefetch_keys();
    let engine = Arc::new(
        app.sync_engine(tokens.clone(), SyncSettings::default())
            .map_err(startup_failed)?,
    );
    let reconciler = Reconciler::new(
        tokens.live_config(),
        tokens.store().clone(),
        engine.jobs().clone(),
        ReconcileSettings::default(),
    );
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        sync::function_handler(&engine, &reconciler, event)
    }))
    .await
}
