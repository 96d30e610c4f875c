//! The oauth-sync library: everything the Lambda functions and the operator
//! CLI share. Organised by what it is about:
//!
//! - [`config`]: the configuration file and the built-in provider presets
//! - [`oauth`]: the provider's authorization server (authorize URL, code
//!   exchange, refresh, revocation) with each provider's quirks
//! - [`secret`]: secret newtypes whose `Debug` is redacted
//! - [`secrets`]: Secrets Manager
//! - [`crypto`]: randomness, hashing, PKCE
//! - [`aws`]: AWS clients from the standard environment
//! - [`telemetry`]: logging for CloudWatch
//! - [`runtime`]: start-up of every binary (clients and configuration, once)

pub mod aws;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod oauth;
pub mod refresh;
pub mod runtime;
pub mod secret;
pub mod secrets;
pub mod telemetry;
