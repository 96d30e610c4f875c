use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::runtime::App;

/// Not built yet: the connection store and refresh protocol is the next piece of work. Until then the function
/// starts (configuration and clients are checked) and fails every invocation
/// loudly instead of pretending to work.
#[derive(Debug, thiserror::Error)]
#[error("token-refresher is not implemented yet (the connection store and refresh protocol)")]
pub struct NotImplemented;

impl From<NotImplemented> for Diagnostic {
    fn from(error: NotImplemented) -> Diagnostic {
        Diagnostic {
            error_type: "NonRetryable".to_owned(),
            error_message: error.to_string(),
        }
    }
}

pub async fn function_handler(
    app: &App,
    event: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, NotImplemented> {
    tracing::error!(request_id = %event.context.request_id, providers = app.config.providers.len(), "{}", NotImplemented);
    Err(NotImplemented)
}
