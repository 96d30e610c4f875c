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

/// An error and its causes on one line ("error sending request: connection
/// closed"). A cause whose text the line already ends with (an error that
/// quotes its source in its own message) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A function's start-up failure: its error and causes on one line.
///
/// `main` returns it, and the runtime prints a returned error in `Debug`
/// form, so `Debug` is that readable line too, not the nested structure.
pub struct StartupError(String);

impl std::fmt::Debug for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

/// Logs a start-up failure as one error line (JSON in Lambda) and turns it
/// into a [`StartupError`] for `main` to return: `App::from_env().await.map_err(startup_failed)?`.
pub fn startup_failed(error: impl std::error::Error) -> StartupError {
    let text = error_chain(&error);
    tracing::error!(error = %text, "start-up failed");
    StartupError(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the configuration could not be loaded")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("connection c1: {source}")]
    struct Quoting {
        source: Outer,
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let error = Quoting {
            source: Outer(std::io::Error::other("refused")),
        };
        assert_eq!(
            error_chain(&error),
            "connection c1: the configuration could not be loaded: refused"
        );
    }

    #[test]
    fn a_startup_error_prints_its_causes_on_one_line_in_debug_form() {
        let error = startup_failed(Outer(std::io::Error::other("no such secret: oauth-sync/config")));
        let expected = "the configuration could not be loaded: no such secret: oauth-sync/config";
        assert_eq!(format!("{error:?}"), expected);
        let boxed: Box<dyn std::error::Error + Send + Sync> = error.into();
        assert_eq!(
            format!("{boxed:?}"),
            expected,
            "as the runtime prints what main returns"
        );
    }
}
