//! The command line's AWS configuration: `aws-config`'s default chain (the
//! environment, then the shared config and credentials files: profiles,
//! SSO, assumed roles, IMDS on an instance), which an operator's laptop
//! needs, with the timeouts, retry bounds, stalled-stream setting and HTTP
//! client every function uses. The functions read the environment alone
//! ([`shared::aws::sdk_config_from_env`]).

use aws_config::BehaviorVersion;
use shared::aws::{AwsClients, SdkConfig};

/// The SDK configuration for this run of the command.
pub(crate) async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(shared::aws::http::sdk_http_client())
        .timeout_config(shared::aws::timeout_config())
        .stalled_stream_protection(shared::aws::stalled_stream_protection())
        .retry_config(shared::aws::retry_config())
        .load()
        .await
}

/// The DynamoDB and Secrets Manager clients, from [`sdk_config`].
pub(crate) async fn clients() -> AwsClients {
    AwsClients::from_sdk_config(&sdk_config().await)
}
