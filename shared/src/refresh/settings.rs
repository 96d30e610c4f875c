//! The protocol's timing.

use std::time::Duration;

use super::millis;

/// Time a commit needs at least: one DynamoDB attempt (see `aws::ATTEMPT_TIMEOUT`).
pub(super) const MIN_COMMIT: Duration = Duration::from_secs(5);

/// Timing of the protocol.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// `T`: the token call's timeout.
    pub token_timeout: Duration,
    /// Lease time kept after `T` for committing. The commit stops retrying
    /// at the lease's end, also for a caller with a long deadline (a sync
    /// run): from that end plus the clock-skew margin another worker may take
    /// the lease over, and nothing of ours may still be retrying then.
    pub commit_budget: Duration,
    /// First backoff after a failed refresh; doubles per consecutive failure.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How often a worker that lost the lease race looks for the new version.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Ids per query of the refresh-due index in [`TokenService::refresh_due`].
    pub due_page_size: i32,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            token_timeout: Duration::from_secs(10),
            commit_budget: Duration::from_secs(20),
            base_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            poll_min: Duration::from_millis(50),
            poll_max: Duration::from_secs(1),
            due_page_size: 100,
        }
    }
}

impl RefreshSettings {
    pub(super) fn lease_ms(&self) -> i64 {
        millis(self.token_timeout + self.commit_budget)
    }

    /// The least lease left at which a send may start: the token call's
    /// timeout and one commit attempt (or half the commit budget, if shorter:
    /// what came before the send may take a little of the lease).
    pub(super) fn lease_needed_to_send(&self) -> Duration {
        self.token_timeout + (self.commit_budget / 2).min(MIN_COMMIT)
    }

    /// The least time before the deadline in which a send may start: the
    /// token call's timeout and one commit attempt. A run given the deadline
    /// `now + w + time_for_a_send()` starts refreshes for `w`.
    pub fn time_for_a_send(&self) -> Duration {
        self.token_timeout + MIN_COMMIT
    }

    /// Whether `deadline` is too near for a send to start now.
    pub(super) fn no_send_before(&self, deadline: std::time::Instant) -> bool {
        deadline.saturating_duration_since(std::time::Instant::now()) < self.time_for_a_send()
    }
}
