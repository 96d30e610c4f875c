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
//! - [`events`]: connection, sync-run and record events on the stack's EventBridge bus
//! - [`aws`]: AWS clients from the standard environment
//! - [`telemetry`]: logging for CloudWatch
//! - [`text`]: text shown to people or logged (invisible format characters)
//! - [`runtime`]: start-up of every binary (clients and configuration, once)

pub mod api;
pub mod aws;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod doctor;
pub mod events;
pub mod login;
pub mod metrics;
pub mod oauth;
pub mod refresh;
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
