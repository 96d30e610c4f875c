//! When a failed delivery is tried again: exponential backoff from the
//! message's receive count, jittered, capped at SQS's 12-hour visibility
//! limit. The queue keeps the message invisible that long
//! (ChangeMessageVisibility); after `max_attempts` receives its redrive
//! policy moves it to the dead-letter queue.

use std::time::Duration;

/// SQS's longest visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// The environment variables that set the schedule (infra/template.yaml sets
/// both from its parameters; the max attempts there is also the deliveries
/// queue's `maxReceiveCount`).
pub const FIRST_DELAY_ENV: &str = "OAUTH_SYNC_WEBHOOK_FIRST_RETRY_SECS";
pub const MAX_ATTEMPTS_ENV: &str = "OAUTH_SYNC_WEBHOOK_MAX_ATTEMPTS";

/// The retry schedule of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait after the first failed attempt; each later one doubles.
    pub first_delay: Duration,
    /// Attempts in all, the first included; the last failure dead-letters.
    pub max_attempts: u32,
}

impl Default for RetrySchedule {
    /// 1 min, 2, 4 … 512 min, then 12 h: 12 attempts over about 29 hours.
    fn default() -> Self {
        RetrySchedule {
            first_delay: Duration::from_secs(60),
            max_attempts: 12,
        }
    }
}

/// A schedule variable that is set but not a number in range.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{variable} must be a whole number from {min} to {max}")]
pub struct ScheduleError {
    pub variable: &'static str,
    pub min: u64,
    pub max: u64,
}

impl RetrySchedule {
    /// The default, with what `OAUTH_SYNC_WEBHOOK_FIRST_RETRY_SECS` (1–43200)
    /// and `OAUTH_SYNC_WEBHOOK_MAX_ATTEMPTS` (1–1000, SQS's maxReceiveCount range) set.
    pub fn from_env() -> Result<RetrySchedule, ScheduleError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<RetrySchedule, ScheduleError> {
        let read = |variable: &'static str, min: u64, max: u64| -> Result<Option<u64>, ScheduleError> {
            match var(variable).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(text) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|v| (min..=max).contains(v))
                    .map(Some)
                    .ok_or(ScheduleError { variable, min, max }),
            }
        };
        let mut schedule = RetrySchedule::default();
        if let Some(secs) = read(FIRST_DELAY_ENV, 1, MAX_VISIBILITY.as_secs())? {
            schedule.first_delay = Duration::from_secs(secs);
        }
        if let Some(attempts) = read(MAX_ATTEMPTS_ENV, 1, 1000)? {
            schedule.max_attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        }
        Ok(schedule)
    }

    /// Was the attempt that made `receive_count` the last one?
    pub fn is_last(&self, receive_count: u32) -> bool {
        receive_count >= self.max_attempts
    }

    /// The ceiling of the wait after the attempt numbered `receive_count`
    /// (1 for the first): `first_delay × 2^(receive_count − 1)`, at most 12 h.
    pub fn ceiling(&self, receive_count: u32) -> Duration {
        let doublings = receive_count.saturating_sub(1).min(31);
        self.first_delay
            .checked_mul(1 << doublings)
            .unwrap_or(MAX_VISIBILITY)
            .min(MAX_VISIBILITY)
    }

    /// The wait after the attempt numbered `receive_count`, "equal jitter":
    /// between half the ceiling and the ceiling, `unit` (in [0, 1)) choosing
    /// where, so retries of many deliveries that failed together spread
    /// out. Whole seconds (what SQS takes), at least one.
    pub fn delay(&self, receive_count: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(receive_count).as_secs_f64();
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        let secs = (ceiling / 2.0 + ceiling / 2.0 * unit).ceil();
        // Bounded by MAX_VISIBILITY's 43200: exact as u64.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Duration::from_secs((secs as u64).clamp(1, MAX_VISIBILITY.as_secs()))
    }

    /// The wait after a failed last attempt: none, so the next receive
    /// moves the message to the dead-letter queue (the queue's
    /// `maxReceiveCount` is `max_attempts`). Past the last attempt (a queue
    /// that allows more receives than the function's setting), the backoff
    /// goes on rather than retrying at once.
    pub fn after_last(&self, receive_count: u32) -> Duration {
        if receive_count > self.max_attempts {
            self.jittered(receive_count)
        } else {
            Duration::ZERO
        }
    }

    /// [`RetrySchedule::delay`] with a random jitter.
    pub fn jittered(&self, receive_count: u32) -> Duration {
        self.delay(receive_count, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_doubles_from_a_minute_to_the_12_hour_cap_over_about_a_day() {
        let schedule = RetrySchedule::default();
        let ceilings: Vec<u64> = (1..=12).map(|n| schedule.ceiling(n).as_secs()).collect();
        assert_eq!(
            ceilings,
            [60, 120, 240, 480, 960, 1920, 3840, 7680, 15_360, 30_720, 43_200, 43_200]
        );
        // The waits between the 12 attempts (the last failure dead-letters).
        let span: u64 = ceilings[..11].iter().sum();
        assert!((24 * 3600..36 * 3600).contains(&span), "{span}");
        assert!(!schedule.is_last(11) && schedule.is_last(12) && schedule.is_last(13));
        assert_eq!(schedule.ceiling(u32::MAX), MAX_VISIBILITY);
        assert_eq!(
            schedule.after_last(12),
            Duration::ZERO,
            "to the dead-letter queue at once"
        );
        assert!(
            schedule.after_last(13) >= MAX_VISIBILITY / 2,
            "never a hot loop past the last"
        );
    }

    #[test]
    fn jitter_stays_between_half_the_ceiling_and_the_ceiling() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.delay(3, 0.0), Duration::from_secs(120));
        assert_eq!(schedule.delay(3, 0.999_999), Duration::from_secs(240));
        assert_eq!(schedule.delay(3, f64::NAN), Duration::from_secs(120));
        for n in 1..=20 {
            let d = schedule.jittered(n);
            assert!(d >= schedule.ceiling(n) / 2 && d <= schedule.ceiling(n), "{n}: {d:?}");
        }
        let quick = RetrySchedule {
            first_delay: Duration::from_secs(1),
            max_attempts: 4,
        };
        assert_eq!(quick.delay(1, 0.0), Duration::from_secs(1), "never below a second");
    }

    #[test]
    fn the_schedule_comes_from_the_environment_or_says_what_is_wrong() {
        let vars = |first: Option<&str>, max: Option<&str>| {
            let (first, max) = (first.map(str::to_owned), max.map(str::to_owned));
            RetrySchedule::from_vars(move |name| {
                if name == FIRST_DELAY_ENV {
                    first.clone()
                } else {
                    max.clone()
                }
            })
        };
        assert_eq!(vars(None, None).expect("default"), RetrySchedule::default());
        let quick = vars(Some("1"), Some("4")).expect("quick");
        assert_eq!((quick.first_delay, quick.max_attempts), (Duration::from_secs(1), 4));
        for (first, max) in [
            (Some("0"), None),
            (Some("x"), None),
            (None, Some("0")),
            (None, Some("1001")),
        ] {
            let e = vars(first, max).expect_err("out of range");
            assert!(e.to_string().contains("must be a whole number"), "{e}");
        }
    }
}
