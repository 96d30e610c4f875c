//! Wires the `webhooks` function: logging, the configuration's endpoints,
//! the deliveries queue and the HTTP client are built once; each SQS batch
//! runs the handler.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::runtime::App;
use shared::telemetry::{Target, init, startup_failed};
use shared::webhooks::queue::DeliveryQueue;
use shared::webhooks::{RetrySchedule, WebhookService};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let app = App::from_env().await.map_err(startup_failed)?;
    let queue = DeliveryQueue::from_env().await.map_err(startup_failed)?;
    let schedule = RetrySchedule::from_env().map_err(startup_failed)?;
    let service = Arc::new(
        WebhookService::new(&app.config.webhooks, app.secrets.clone(), queue, schedule).map_err(startup_failed)?,
    );
    run(service_fn(|event: LambdaEvent<webhooks::SqsEvent>| {
        webhooks::function_handler(&service, event)
    }))
    .await
}
