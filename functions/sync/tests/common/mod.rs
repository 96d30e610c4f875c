//! What the handler tests share.

use lambda_runtime::{Context, LambdaEvent};
use shared::connection::now_ms;

/// The fixture EventBridge schedule event, with `left_ms` left in the
/// invocation (0: its deadline has passed).
pub fn scheduled_event(left_ms: u64) -> LambdaEvent<serde_json::Value> {
    let event: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/eventbridge-schedule.json")).expect("fixture event");
    let mut context = Context::default();
    context.request_id = "req-1".to_owned();
    context.deadline = u64::try_from(now_ms()).expect("time") + left_ms;
    LambdaEvent::new(event, context)
}
