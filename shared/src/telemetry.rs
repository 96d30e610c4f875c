//! Logging with `tracing`, fit for CloudWatch: JSON lines when Lambda's
//! `AWS_LAMBDA_LOG_FORMAT=JSON`, plain text otherwise; no ANSI colours and no
//! timestamps inside Lambda (CloudWatch adds them); the level from
//! `AWS_LAMBDA_LOG_LEVEL`, then `RUST_LOG`, then `info`.
//!
//! Nothing secret is ever a field: secret newtypes print `[redacted]` and the
//! code passes ids, never tokens, to log macros.

use tracing::Subscriber;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// Where the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A Lambda function: stdout, CloudWatch adds timestamps.
    Lambda,
    /// The operator CLI and local tools: stderr, so stdout stays for output.
    Cli,
}

/// The configured filter: `AWS_LAMBDA_LOG_LEVEL`, then `RUST_LOG`, then
/// `info`, read by [`parse_filter`].
pub fn configured_filter() -> Targets {
    let directive = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|level| level.to_lowercase())
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    parse_filter(&directive)
}

/// A `RUST_LOG`-style filter: directives separated by commas, each a level
/// (`warn`, the default for every target), `target=level`
/// (`shared::sync=debug`; a target matches as a prefix of the module path,
/// and the longest match wins) or a bare target (`shared`, at `trace`).
/// Empty directives are skipped. Span and field filters
/// (`[span{field=x}]=debug`) are not supported: the filter is
/// `tracing_subscriber`'s `Targets`, which needs no regular expressions. A
/// text that does not parse, or names no directive, means `info`.
pub fn parse_filter(directive: &str) -> Targets {
    let directives: Vec<&str> = directive.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return Targets::new().with_default(LevelFilter::INFO);
    }
    directives
        .join(",")
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
}

/// Crates whose debug and trace lines can carry a secret. They log at most
/// `info`, whatever level is configured. A target matches as a prefix of the
/// module path (`aws_smithy_` is every Smithy crate, `hyper` also `hyper_util`).
///
/// - The Lambda runtime: `lambda_runtime` traces every event it receives
///   (`raw JSON event received from Lambda`, target
///   `lambda_runtime::layers::api_response`), and an HTTP event holds the
///   authorization code, the `state` and the login cookie.
/// - The AWS SDK: `aws_smithy_runtime` traces every answer it reads, body
///   and all (`read HTTP response body`: items, queue messages), and the
///   answer of `GetSecretValue` (the client secret, the token keys) too as
///   soon as the SDK's own `LOG_SENSITIVE_BODIES=true` is set.
/// - The HTTP and TLS stack under the SDK and our token client: `reqwest`
///   traces the raw bytes of a connection in its verbose mode; `hyper`,
///   `h2` and `rustls` log sizes and frames today, and are held with the rest
///   so that no upgrade of theirs can print a token.
pub const PINNED_TARGETS: [&str; 15] = [
    "lambda_runtime",
    "lambda_runtime_api_client",
    "lambda_http",
    "aws_smithy_",
    "aws_sdk_",
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "aws_credential_types",
    "aws_types",
    "hyper",
    "h2",
    "rustls",
    "tokio_rustls",
    "reqwest",
];

/// The pin as a filter of its own, combined with the configured one by
/// "and": no directive (`RUST_LOG=lambda_runtime=trace`, a span filter)
/// can widen it, which a directive appended to the configured one could not promise.
fn pinned() -> Targets {
    PINNED_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |targets, target| {
            targets.with_target(*target, LevelFilter::INFO)
        })
}

/// The configured filter with the pinned targets held at `info`.
pub fn log_filter<S: Subscriber + for<'a> LookupSpan<'a>>(configured: Targets) -> impl Filter<S> {
    configured.and(pinned())
}

/// JSON output requested by Lambda's advanced logging controls?
pub fn json_requested() -> bool {
    std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(target: Target) {
    let layer = fmt::layer().with_ansi(false);
    let result = match (target, json_requested()) {
        (Target::Lambda, true) => tracing_subscriber::registry()
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .without_time()
                    .with_filter(log_filter(configured_filter())),
            )
            .try_init(),
        (Target::Lambda, false) => tracing_subscriber::registry()
            .with(layer.without_time().with_filter(log_filter(configured_filter())))
            .try_init(),
        (Target::Cli, true) => tracing_subscriber::registry()
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter(configured_filter())),
            )
            .try_init(),
        (Target::Cli, false) => tracing_subscriber::registry()
            .with(
                layer
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter(configured_filter())),
            )
            .try_init(),
    };
    // A second call (tests) keeps the first subscriber.
    drop(result);
    // Says why a trace log holds no line of theirs (and shows that trace is on).
    tracing::trace!(
        held_at_info = ?PINNED_TARGETS,
        "trace logging is on; the Lambda runtime, the AWS SDK and the HTTP stack log at most info, as their lines can carry secrets"
    );
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
#[derive(Clone)]
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

/// Log lines kept in memory, for the tests that check what reaches a log
/// line: this module's own and the integration tests'
/// (`oauth_sync_tests::logs`, through the `test-util` feature). Lines are
/// JSON and filtered as [`init`] filters them, pinned targets included.
#[cfg(any(test, feature = "test-util"))]
pub mod capture {
    use std::sync::{Arc, Mutex, OnceLock};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, fmt};

    /// What a subscriber wrote; clones share it.
    #[derive(Debug, Clone, Default)]
    pub struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        /// A subscriber that writes here, with `directive` as the configured
        /// level (`RUST_LOG`).
        pub fn subscriber(&self, directive: &str) -> impl tracing::Subscriber + Send + Sync + use<> {
            tracing_subscriber::registry().with(
                fmt::layer()
                    .with_ansi(false)
                    .json()
                    .with_writer(self.clone())
                    .with_filter(super::log_filter(super::parse_filter(directive))),
            )
        }

        /// What was written so far.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Logs {
        type Writer = Logs;

        fn make_writer(&'a self) -> Logs {
            self.clone()
        }
    }

    /// Every log line of this test binary, from any thread, at `trace`:
    /// installs (once per binary) the global subscriber writing into the
    /// logs returned.
    pub fn captured() -> Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            #[allow(clippy::expect_used)]
            tracing::subscriber::set_global_default(logs.subscriber("trace"))
                .expect("the only global subscriber of the test binary");
            logs
        })
        .clone()
    }
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
    fn no_configured_level_prints_what_the_runtime_and_the_sdk_trace() {
        const ALL: &[&str] = &["RUNTIME-INFO-STAYS", "SDK-INFO-STAYS", "OURS-STAYS"];
        for (directive, stays) in [
            ("trace", ALL),
            ("lambda_runtime=trace", &["RUNTIME-INFO-STAYS"][..]),
            ("trace,lambda_runtime::layers=trace", ALL),
            ("trace,aws_smithy_runtime=trace,hyper=trace", ALL),
            ("aws_smithy_runtime::client::orchestrator=trace", &["SDK-INFO-STAYS"]),
            ("debug", ALL),
        ] {
            let logs = capture::Logs::default();
            tracing::subscriber::with_default(logs.subscriber(directive), || {
                // What lambda_runtime 1.x emits for each invocation, and what
                // lambda_http might: both planted with a code and a cookie.
                tracing::trace!(
                    target: "lambda_runtime::layers::api_response",
                    body = "{\"code\":\"PLANTED-CODE\"}",
                    "raw JSON event received from Lambda"
                );
                tracing::debug!(target: "lambda_http::request", cookie = "PLANTED-COOKIE", "event");
                tracing::debug!(target: "lambda_runtime_api_client", state = "PLANTED-STATE", "next");
                // What the AWS SDK 1.x emits for each answer (a secret read
                // with LOG_SENSITIVE_BODIES=true), and what the layers under
                // it might.
                tracing::trace!(
                    target: "aws_smithy_runtime::client::orchestrator::http",
                    response = "body: b\"{\\\"SecretString\\\":\\\"PLANTED-SECRET\\\"}\"",
                    "read HTTP response body"
                );
                tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", request = "PLANTED-REQUEST", "transmitting request");
                tracing::trace!(target: "aws_sdk_secretsmanager::operation", output = "PLANTED-OUTPUT");
                tracing::trace!(target: "reqwest::connect::verbose", "read: PLANTED-TOKEN");
                tracing::trace!(target: "hyper_util::client::legacy::pool", "PLANTED-HYPER");
                tracing::trace!(target: "h2::codec::framed_read", "PLANTED-H2");
                tracing::trace!(target: "rustls::conn", "PLANTED-TLS");
                tracing::info!(target: "lambda_runtime::runtime", "RUNTIME-INFO-STAYS");
                tracing::info!(target: "aws_smithy_runtime::client::orchestrator", "SDK-INFO-STAYS");
                tracing::debug!(target: "shared::login", "OURS-STAYS");
            });
            let text = logs.text();
            for planted in [
                "PLANTED-CODE",
                "PLANTED-COOKIE",
                "PLANTED-STATE",
                "PLANTED-SECRET",
                "PLANTED-REQUEST",
                "PLANTED-OUTPUT",
                "PLANTED-TOKEN",
                "PLANTED-HYPER",
                "PLANTED-H2",
                "PLANTED-TLS",
            ] {
                assert!(!text.contains(planted), "{directive}: {planted} was printed: {text}");
            }
            for line in stays {
                assert!(text.contains(line), "{directive}: {line} is missing: {text}");
            }
        }
    }

    #[test]
    fn a_rust_log_directive_sets_each_targets_level_and_a_bad_one_means_info() {
        const ALL: [&str; 5] = [
            "SYNC-DEBUG",
            "SYNC-TRACE",
            "LOGIN-TRACE",
            "REFRESH-INFO",
            "REFRESH-WARN",
        ];
        for (directive, stays) in [
            (
                "warn,shared::sync=debug,shared::login=trace",
                &["SYNC-DEBUG", "LOGIN-TRACE", "REFRESH-WARN"][..],
            ),
            // Spaces and empty directives are skipped, not read as "every target at trace".
            (" warn , shared::sync=debug ,", &["SYNC-DEBUG", "REFRESH-WARN"]),
            ("shared::login", &["LOGIN-TRACE"]),
            ("", &["REFRESH-INFO", "REFRESH-WARN"]),
            (",", &["REFRESH-INFO", "REFRESH-WARN"]),
            ("shared=loud", &["REFRESH-INFO", "REFRESH-WARN"]),
            ("off", &[]),
        ] {
            let logs = capture::Logs::default();
            tracing::subscriber::with_default(logs.subscriber(directive), || {
                tracing::debug!(target: "shared::sync::engine", "SYNC-DEBUG");
                tracing::trace!(target: "shared::sync::engine", "SYNC-TRACE");
                tracing::trace!(target: "shared::login::flow", "LOGIN-TRACE");
                tracing::info!(target: "shared::refresh", "REFRESH-INFO");
                tracing::warn!(target: "shared::refresh", "REFRESH-WARN");
            });
            let text = logs.text();
            for line in ALL {
                assert_eq!(
                    text.contains(line),
                    stays.contains(&line),
                    "{directive:?}: {line}: {text}"
                );
            }
        }
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
