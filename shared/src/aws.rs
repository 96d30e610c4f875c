//! AWS clients, built once per process from the environment Lambda gives
//! a function: `AWS_REGION`, the execution role's `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, and `AWS_ENDPOINT_URL_<SERVICE>`
//! (`AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL_SECRETS_MANAGER`…) or
//! `AWS_ENDPOINT_URL`, so the same binary talks to AWS or to the local
//! stack. Every SDK client sends through [`http::sdk_http_client`] (reqwest,
//! HTTP/1.1, rustls on `ring`).
//!
//! [`sdk_config_from_env`] reads those variables and nothing else, as
//! `aws-config`'s environment providers read them (the same names, the same
//! precedence), without `aws-config` itself: its default chain (profiles,
//! SSO, the web-identity and container providers, IMDS, and STS to
//! call) is 0.2 MB of every function's binary that a Lambda function never
//! uses (BENCHMARKS.md, What each crate costs). The operator's command line
//! needs that chain (profiles, SSO) and builds its configuration with
//! `aws-config`, through [`timeout_config`] and [`retry_config`] as here.

pub mod http;

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, error::CredentialsError, future};
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
pub use aws_types::SdkConfig;
use aws_types::origin::Origin;
use aws_types::region::Region;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
use tracing::warn;

/// Every AWS call gives up after these; the SDK's standard retry adds bounded,
/// jittered exponential backoff between attempts.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
pub const MAX_ATTEMPTS: u32 = 3;

/// The variable for every service's endpoint; `_<SERVICE ID>` after it
/// (upper case, spaces as `_`) names one service's.
const ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";

/// The clients every function needs.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

/// Our timeouts, for every SDK client of the process.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The SDK's stalled-stream protection, off: every attempt is cut by
/// [`ATTEMPT_TIMEOUT`] already, and our bodies are small JSON documents, so
/// a stalled one is a timed-out attempt, which the retry classifies and
/// retries as such. Left on, it fired first under load (DynamoDB Local on
/// two busy cores) with an error of its own ("minimum throughput was
/// specified at 1 B/s"), a second wording for the same failure.
pub fn stalled_stream_protection() -> StalledStreamProtectionConfig {
    StalledStreamProtectionConfig::disabled()
}

/// Our retry bounds: the SDK's standard retry (jittered exponential
/// backoff), [`MAX_ATTEMPTS`] attempts.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS)
}

/// The SDK configuration of a function, from the environment (module docs),
/// with our HTTP client, timeouts and retry bounds. Missing credentials are
/// not an error here: each call then fails with one that names the
/// variables.
pub fn sdk_config_from_env() -> SdkConfig {
    sdk_config_from(Arc::new(|name: &str| std::env::var(name).ok()))
}

/// Where variables are read from: the process's environment, or a test's.
type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A variable's value; an empty one is unset, as for `aws-config`.
fn read(env: &Env, name: &str) -> Option<String> {
    env(name).filter(|value| !value.trim().is_empty())
}

/// [`sdk_config_from_env`] over any source of variables.
fn sdk_config_from(env: Env) -> SdkConfig {
    let var = |name: &str| read(&env, name);
    let flag = |name: &str| {
        let value = var(name)?;
        match value.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                warn!(variable = name, value, "not `true` or `false`: ignored");
                None
            }
        }
    };
    let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(key), Some(secret)) => Ok(Credentials::new(
            key,
            secret,
            var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        )),
        _ => Err(
            "no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set \
             (Lambda sets them from the function's execution role)",
        ),
    };
    let ignore_endpoints = flag("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").unwrap_or(false);
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).map(Region::new))
        .credentials_provider(SharedCredentialsProvider::new(EnvCredentials(credentials)))
        .http_client(http::sdk_http_client())
        .timeout_config(timeout_config())
        .stalled_stream_protection(stalled_stream_protection())
        .retry_config(retry_config());
    builder.set_use_fips(flag("AWS_USE_FIPS_ENDPOINT"));
    builder.set_use_dual_stack(flag("AWS_USE_DUALSTACK_ENDPOINT"));
    if !ignore_endpoints && let Some(url) = var(ENDPOINT_URL) {
        builder.set_endpoint_url(Some(url));
        builder.insert_origin("endpoint_url", Origin::shared_environment_variable());
    }
    builder
        .service_config(EnvServiceConfig { ignore_endpoints, env })
        .build()
}

/// The environment's credentials, or why there are none.
#[derive(Debug)]
struct EnvCredentials(Result<Credentials, &'static str>);

impl ProvideCredentials for EnvCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(self.0.clone().map_err(CredentialsError::not_loaded))
    }
}

/// A service's own setting from `<VARIABLE>_<SERVICE ID>` (upper case,
/// spaces as `_`: `AWS_ENDPOINT_URL_SECRETS_MANAGER`), else `<VARIABLE>`,
/// as `aws-config` reads them (without its profile file). Each SDK client
/// asks once, when it is built.
struct EnvServiceConfig {
    ignore_endpoints: bool,
    env: Env,
}

impl std::fmt::Debug for EnvServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvServiceConfig")
            .field("ignore_endpoints", &self.ignore_endpoints)
            .finish_non_exhaustive()
    }
}

impl LoadServiceConfig for EnvServiceConfig {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        if self.ignore_endpoints && key.env() == ENDPOINT_URL {
            return None;
        }
        let service = key.service_id().to_uppercase().replace(' ', "_");
        read(&self.env, &format!("{}_{service}", key.env())).or_else(|| read(&self.env, key.env()))
    }
}

impl AwsClients {
    /// A function's clients ([`sdk_config_from_env`]).
    pub fn from_env() -> AwsClients {
        AwsClients::from_sdk_config(&sdk_config_from_env())
    }

    pub fn from_sdk_config(config: &SdkConfig) -> AwsClients {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{Env, sdk_config_from};

    fn env(vars: &[(&str, &str)]) -> Env {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Arc::new(move |name: &str| vars.get(name).cloned())
    }

    const LIST_TABLES: &str = r#"{"TableNames":["from-the-service-variable"]}"#;

    fn answer() -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{LIST_TABLES}",
            LIST_TABLES.len()
        )
    }

    #[test]
    fn stalled_stream_protection_is_off_and_the_attempt_timeout_bounds_a_stall() {
        let config = sdk_config_from(env(&[]));
        let stalled = config
            .stalled_stream_protection()
            .expect("set, not left to the SDK's default (on)");
        assert!(!stalled.is_enabled());
        let timeouts = config.timeout_config().expect("our timeouts");
        assert_eq!(timeouts.operation_attempt_timeout(), Some(super::ATTEMPT_TIMEOUT));
    }

    #[tokio::test]
    async fn a_services_own_endpoint_variable_wins_over_the_shared_one() {
        let (endpoint, _) = super::http::tests::server(answer()).await;
        let config = sdk_config_from(env(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
            // Nothing listens here: a call that went to it would fail.
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ENDPOINT_URL_DYNAMODB", &endpoint),
        ]));
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
        let tables = aws_sdk_dynamodb::Client::new(&config)
            .list_tables()
            .send()
            .await
            .expect("DynamoDB at its own endpoint");
        assert_eq!(tables.table_names(), ["from-the-service-variable"]);
    }

    #[tokio::test]
    async fn the_shared_endpoint_variable_serves_a_service_without_its_own() {
        let (endpoint, _) = super::http::tests::server(answer()).await;
        let config = sdk_config_from(env(&[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:9"),
        ]));
        let tables = aws_sdk_dynamodb::Client::new(&config)
            .list_tables()
            .send()
            .await
            .expect("DynamoDB at the shared endpoint");
        assert_eq!(tables.table_names(), ["from-the-service-variable"]);
    }

    #[tokio::test]
    async fn without_credentials_a_call_fails_naming_the_variables_and_sends_nothing() {
        let (endpoint, accepted) = super::http::tests::server(answer()).await;
        let config = sdk_config_from(env(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_ENDPOINT_URL_DYNAMODB", &endpoint),
        ]));
        let err = aws_sdk_dynamodb::Client::new(&config)
            .list_tables()
            .send()
            .await
            .expect_err("no credentials");
        let text = crate::telemetry::error_chain(&err);
        assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn ignoring_configured_endpoints_ignores_both_variables() {
        let config = sdk_config_from(env(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]));
        assert_eq!(config.endpoint_url(), None);
        let service = config.service_config().expect("service config");
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("DynamoDB")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .expect("key");
        assert_eq!(service.load_config(key), None);
    }
}
