//! AWS clients, built once per process from the standard environment:
//! `AWS_REGION`, credentials, and `AWS_ENDPOINT_URL_DYNAMODB` /
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER` (or `AWS_ENDPOINT_URL`), so the same
//! binary talks to AWS or to the local stack. Every SDK client sends through
//! [`http::sdk_http_client`] (reqwest, HTTP/1.1, rustls on `ring`).

pub mod http;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

/// Every AWS call gives up after these; the SDK's standard retry adds bounded,
/// jittered exponential backoff between attempts.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
pub const MAX_ATTEMPTS: u32 = 3;

/// The clients every function needs.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

/// Loads the shared SDK configuration from the environment, with our timeouts
/// and retry bounds.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http::sdk_http_client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .load()
        .await
}

impl AwsClients {
    pub async fn from_env() -> AwsClients {
        AwsClients::from_sdk_config(&load_sdk_config().await)
    }

    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> AwsClients {
        AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
        }
    }
}

/// This process's name in the leases it takes (a sync job's `lease_owner`,
/// the refresher's shard leases), so that whoever waits can say for whom: the Lambda function and log stream (where its
/// logs are), else the process id and host; plus a random suffix, as two
/// engines of one process must not share a lease.
pub fn worker_name() -> String {
    let who = match (
        std::env::var("AWS_LAMBDA_FUNCTION_NAME"),
        std::env::var("AWS_LAMBDA_LOG_STREAM_NAME"),
    ) {
        (Ok(function), Ok(stream)) => format!("{function} {stream}"),
        _ => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.chars().filter(char::is_ascii_graphic).take(100).collect::<String>())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "an unnamed host".to_owned());
            format!("pid {} on {host}", std::process::id())
        }
    };
    format!("{who} #{:08x}", fastrand::u32(..))
}
