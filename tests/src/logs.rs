//! Every log line of a test binary, at trace level and filtered as the
//! functions filter them, for tests that check no secret reaches a log line.
//! The one helper lives in `shared` (its own unit tests use it too, and they
//! cannot depend on this crate).

pub use shared::telemetry::capture::{Logs, captured};
