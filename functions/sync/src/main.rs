//! Wires the `sync` function: logging, clients, the token service, the sync
//! engine and the job reconciliation are built once; each scheduled
//! invocation runs the handler. The start-up (the configuration's read)
//! runs beside the runtime loop, so the first invocation's index queries go
//! out while it does ([`sync::invoke_starting`]).

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::aws::AwsClients;
use shared::runtime::{App, Starting, job_store_on};
use shared::sync::engine::SyncSettings;
use shared::sync::reconcile::{ReconcileSettings, Reconciler};
use shared::telemetry::{Target, init, startup_failed};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let sdk = shared::aws::sdk_config_from_env();
    let aws = AwsClients::from_sdk_config(&sdk);
    let jobs = job_store_on(&aws).map_err(startup_failed)?;
    let starting = Starting::spawn(async move {
        let app = App::load(&sdk, aws, &[]).await.map_err(startup_failed)?;
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
        Ok(Arc::new(sync::Services { engine, reconciler }))
    });
    let runtime = run(service_fn(|event: LambdaEvent<serde_json::Value>| async {
        // Boxed: the invocation's state would otherwise make `main`'s
        // future too deep for the compiler to lay out.
        Box::pin(sync::invoke_starting(&starting, &jobs, event))
            .await
            .map(|done| done.runs)
    }));
    starting.beside(runtime).await
}
