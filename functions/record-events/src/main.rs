//! Wires the `record-events` function: logging and the event sink are built
//! once; each batch of the records table's stream runs the handler.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use shared::events::EventSink;
use shared::telemetry::{Target, init};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init(Target::Lambda);
    let events = EventSink::from_env(&shared::aws::sdk_config_from_env());
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        record_events::function_handler(&events, event)
    }))
    .await
}
