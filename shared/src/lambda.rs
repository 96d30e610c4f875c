//! What the Lambda functions share at their edge (cargo feature `lambda`,
//! which only the function crates turn on): the deadline of an invocation,
//! and the error type Lambda's retry and the alarms key on.

use std::fmt::Display;
use std::time::{Duration, Instant};

use lambda_runtime::{Context, Diagnostic};

/// The `errorType` of a failure worth retrying, in the function's answer:
/// part of the work could not be done, the rest was, and the next
/// invocation (Lambda's retry, or the schedule) will do it.
pub const RETRYABLE: &str = "Retryable";

/// The diagnostic of a failure worth retrying ([`RETRYABLE`]).
pub fn retryable(error: &impl Display) -> Diagnostic {
    Diagnostic {
        error_type: RETRYABLE.to_owned(),
        error_message: error.to_string(),
    }
}

/// The invocation's deadline as an `Instant`, less `margin` (time kept for
/// the last writes), read as [`crate::runtime::deadline_from_epoch_ms`] does.
pub fn deadline_of(context: &Context, margin: Duration) -> Instant {
    crate::runtime::deadline_from_epoch_ms(context.deadline, margin)
}
