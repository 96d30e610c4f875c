//! The oauth-sync library: everything the Lambda functions and the operator
//! CLI share. Organised by what it is about:
//!
//! - [`config`]: the configuration file and the built-in provider presets
//! - [`oauth`]: the provider's authorization server (authorize URL, code
//!   exchange, refresh, revocation) with each provider's quirks
//! - [`connection`]: connection records and the connections table (every token write)
//! - [`refresh`]: the refresh protocol and `TokenService`, the one entry point for tokens
//! - [`secret`]: secret newtypes whose `Debug` is redacted
//! - [`secrets`]: Secrets Manager
//! - [`crypto`]: randomness, hashing, PKCE, the token key ring
//! - [`login`]: the login flow: signed connect links
//! - [`sync`]: the sync engine: jobs, pages, rate limits, records
//! - [`webhooks`]: signed webhooks: fan-out, delivery, retry schedule
//! - [`doctor`]: set-up checks with the fix named
//! - [`reload`]: the configuration and the token key ring of a warm process, kept current without a restart
//! - [`events`]: connection, sync-run and record events on the stack's EventBridge bus
//! - [`aws`]: AWS clients from the standard environment
//! - [`dynamo`]: what every table shares: attributes, errors, batched reads, the one retry and lost-answer check
//! - [`backoff`]: jitter and exponential backoff, for every retry
//! - [`http`]: every outbound HTTP client (timeouts, no redirects, pooling by need)
//! - [`telemetry`]: logging for CloudWatch
//! - [`json`]: reading providers' JSON answers (dotted paths, scalars as text)
//! - [`text`]: text shown to people or logged (provider excerpts, invisible format characters)
//! - `lambda` (feature `lambda`): the functions' deadline and retryable errors
//! - [`runtime`]: start-up of every binary (clients and configuration, once)

pub mod api;
pub mod aws;
pub mod backoff;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod doctor;
pub mod dynamo;
pub mod events;
pub mod http;
pub mod json;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod login;
pub mod metrics;
pub mod oauth;
pub mod refresh;
pub mod reload;
pub mod runtime;
pub mod secret;
pub mod secrets;
pub mod shards;
pub mod sync;
pub mod telemetry;
pub mod text;
pub mod webhooks;
pub mod when;

#[cfg(test)]
mod fuzz;
