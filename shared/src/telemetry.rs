//! Logging with `tracing`, fit for CloudWatch: JSON lines when Lambda's
//! `AWS_LAMBDA_LOG_FORMAT=JSON`, plain text otherwise; no ANSI colours and no
//! timestamps inside Lambda (CloudWatch adds them); the level from
//! `AWS_LAMBDA_LOG_LEVEL`, then `RUST_LOG`, then `info`.
//!
//! Nothing secret is ever a field: secret newtypes print `[redacted]` and the
//! code passes ids, never tokens, to log macros.

use tracing_subscriber::EnvFilter;

/// Where the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A Lambda function: stdout, CloudWatch adds timestamps.
    Lambda,
    /// The operator CLI and local tools: stderr, so stdout stays for output.
    Cli,
}

/// The filter: `AWS_LAMBDA_LOG_LEVEL`, then `RUST_LOG`, then `info`.
pub fn env_filter() -> EnvFilter {
    let directive = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|level| level.to_lowercase())
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// JSON output requested by Lambda's advanced logging controls?
pub fn json_requested() -> bool {
    std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(target: Target) {
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter()).with_ansi(false);
    let result = match (target, json_requested()) {
        (Target::Lambda, true) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .without_time()
            .try_init(),
        (Target::Lambda, false) => builder.without_time().try_init(),
        (Target::Cli, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
        (Target::Cli, false) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second call (tests) keeps the first subscriber.
    drop(result);
}

/// An error and its causes on one line ("error sending request: connection closed").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
