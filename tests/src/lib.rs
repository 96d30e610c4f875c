//! Test-side code of oauth-sync: the provider simulator, the table definitions
//! read from `infra/template.yaml`, and helpers for tests that run against the
//! local stack (DynamoDB Local, the Secrets Manager emulator, the simulator).

pub mod events;
pub mod functions;
pub mod invoke;
pub mod link_keys;
pub mod logs;
pub mod proxy;
pub mod schema;
pub mod secrets_standin;
pub mod serve;
pub mod simulator;
pub mod stack;
pub mod stream;
pub mod template;
pub mod webdriver;
pub mod webhooks;
