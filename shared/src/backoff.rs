//! Waits between tries: one jitter and one exponential backoff for every
//! retry in the library (DynamoDB writes, token-store commits, data pages,
//! rate budgets, event puts, webhook deliveries, failed sync runs), so that
//! workers and connections never retry in lockstep and every wait is bounded.

use std::time::Duration;

/// A random duration between half and all of `d`, so workers and connections
/// do not retry in lockstep.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// The wait before try `attempt` + 1 (`attempt` from 1): `base` doubling
/// with each attempt, at most `cap`, with [`jitter`].
pub fn exponential(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    jitter(base.saturating_mul(factor).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_stay_under_the_cap_and_are_jittered() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 1..40 {
            let full = base.saturating_mul(1 << (attempt - 1).min(20)).min(cap);
            let wait = exponential(base, cap, attempt);
            assert!(wait <= full && wait >= full / 2, "{attempt}: {wait:?} of {full:?}");
        }
    }
}
