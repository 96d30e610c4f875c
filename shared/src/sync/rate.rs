//! The rate limiter: what the provider's headers say is left of each window
//! (Exact Online: per minute and per day, resets in epoch milliseconds),
//! `Retry-After`, and the error budget (Exact blocks a key for an hour after
//! 10 error answers). Kept on the job between invocations, so the next run
//! starts from what the last one knew. Pure: the engine feeds it headers and
//! the time, and asks before each request whether it may send.

use serde::{Deserialize, Serialize};

use crate::config::{RateLimitHeaders, ResetFormat};

/// How long to wait at an exhausted window whose reset time is not given.
const UNKNOWN_RESET_MS: i64 = 60_000;
/// A reset claimed further away than this is not believed (a bad clock or header).
const MAX_RESET_MS: i64 = 25 * 3_600_000;
/// The error budget's window.
const ERROR_WINDOW_MS: i64 = 3_600_000;

/// What is known of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub remaining: u64,
    /// Epoch milliseconds; `None` when the provider does not say.
    pub reset_at: Option<i64>,
    /// When this was learned (epoch ms).
    pub seen_at: i64,
}

/// The budget of a job, as stored between invocations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateState {
    /// By remaining-header name, in the provider's order.
    #[serde(default)]
    pub windows: Vec<(String, Window)>,
    /// `Retry-After` asked us to wait until then (epoch ms).
    #[serde(default)]
    pub retry_after_until: Option<i64>,
    /// Error answers counted since `errors_since` (epoch ms).
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub errors_since: i64,
}

/// May a request go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Not before this time (epoch ms): a window is spent, or `Retry-After`.
    WaitUntil(i64),
    /// The error budget is spent: no request until then (epoch ms).
    ErrorBudgetSpent(i64),
}

impl RateState {
    /// Reads the window headers of an answer (any status).
    pub fn observe(&mut self, limits: &[RateLimitHeaders], header: impl Fn(&str) -> Option<String>, now: i64) {
        for limit in limits {
            let Some(remaining) = header(&limit.remaining_header).and_then(|v| v.trim().parse::<u64>().ok()) else {
                continue;
            };
            let reset_at = limit
                .reset_header
                .as_deref()
                .and_then(&header)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|v| match limit.reset_format.unwrap_or(ResetFormat::DeltaSecs) {
                    ResetFormat::EpochMs => v,
                    ResetFormat::EpochSecs => v.saturating_mul(1000),
                    ResetFormat::DeltaSecs => now.saturating_add(v.saturating_mul(1000)),
                })
                .filter(|at| *at - now <= MAX_RESET_MS);
            let window = Window {
                remaining,
                reset_at,
                seen_at: now,
            };
            match self
                .windows
                .iter_mut()
                .find(|(name, _)| *name == limit.remaining_header)
            {
                Some((_, known)) => *known = window,
                None => self.windows.push((limit.remaining_header.clone(), window)),
            }
        }
    }

    /// `Retry-After` in seconds (a 429 or 503).
    pub fn retry_after(&mut self, secs: u64, now: i64) {
        let secs = i64::try_from(secs.min(86_400)).unwrap_or(86_400);
        let until = now.saturating_add(secs * 1000);
        self.retry_after_until = Some(self.retry_after_until.map_or(until, |u| u.max(until)));
    }

    /// An error answer (4xx other than 429) counts against the budget.
    pub fn count_error(&mut self, now: i64) {
        if self.errors == 0 || now - self.errors_since >= ERROR_WINDOW_MS {
            self.errors_since = now;
            self.errors = 0;
        }
        self.errors += 1;
    }

    /// Before each request. A window known to be spent waits for its reset
    /// (a window whose reset has passed is full again); `budget_per_hour`
    /// stops requests once half the provider's error budget is used, leaving
    /// the rest for other jobs and the refresher on the same key.
    pub fn gate(&self, now: i64, budget_per_hour: Option<u64>) -> Gate {
        if let Some(budget) = budget_per_hour
            && now - self.errors_since < ERROR_WINDOW_MS
            && self.errors >= (budget / 2).max(1)
        {
            return Gate::ErrorBudgetSpent(self.errors_since + ERROR_WINDOW_MS);
        }
        let mut until = self.retry_after_until.filter(|u| *u > now);
        for (_, window) in &self.windows {
            if window.remaining > 0 {
                continue;
            }
            let reset = window.reset_at.unwrap_or(window.seen_at + UNKNOWN_RESET_MS);
            if reset > now {
                until = Some(until.map_or(reset, |u| u.max(reset)));
            }
        }
        match until {
            Some(until) => Gate::WaitUntil(until),
            None => Gate::Go,
        }
    }

    /// A request was sent: one less in every window (the answer's headers
    /// correct it), so concurrent pages of one job cannot overrun.
    pub fn spend(&mut self) {
        for (_, window) in &mut self.windows {
            window.remaining = window.remaining.saturating_sub(1);
        }
    }

    /// The smallest known remaining count, for status output.
    pub fn least_remaining(&self) -> Option<u64> {
        self.windows.iter().map(|(_, w)| w.remaining).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact() -> Vec<RateLimitHeaders> {
        crate::config::PresetName::ExactOnline.settings().rate_limits
    }

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_lowercase(), v.to_string())).collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name.to_lowercase())
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn a_spent_minute_waits_for_its_reset_in_epoch_ms() {
        let mut state = RateState::default();
        let now = 1_700_000_000_000;
        state.observe(
            &exact(),
            headers(&[
                ("X-RateLimit-Minutely-Remaining", "1"),
                ("X-RateLimit-Minutely-Reset", &(now + 30_000).to_string()),
                ("X-RateLimit-Remaining", "4000"),
                ("X-RateLimit-Reset", &(now + 3_600_000).to_string()),
            ]),
            now,
        );
        assert_eq!(state.gate(now, None), Gate::Go);
        state.spend();
        assert_eq!(
            state.gate(now, None),
            Gate::WaitUntil(now + 30_000),
            "slow down before the 429"
        );
        assert_eq!(state.gate(now + 30_000, None), Gate::Go, "the window reset");
    }

    #[test]
    fn a_429_with_only_the_daily_headers_waits_for_the_day() {
        let mut state = RateState::default();
        let now = 1_700_000_000_000;
        let reset = now + 5 * 3_600_000;
        state.observe(
            &exact(),
            headers(&[
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", &reset.to_string()),
            ]),
            now,
        );
        assert_eq!(state.gate(now, None), Gate::WaitUntil(reset));
    }

    #[test]
    fn retry_after_and_the_error_budget() {
        let mut state = RateState::default();
        state.retry_after(3, 1_000);
        assert_eq!(state.gate(1_000, None), Gate::WaitUntil(4_000));
        assert_eq!(state.gate(4_000, None), Gate::Go);
        for _ in 0..4 {
            state.count_error(10_000);
        }
        assert_eq!(state.gate(10_000, Some(10)), Gate::Go);
        state.count_error(10_000);
        assert_eq!(state.gate(10_000, Some(10)), Gate::ErrorBudgetSpent(10_000 + 3_600_000));
        assert_eq!(state.gate(10_000, None), Gate::Go, "no budget: no stop");
        state.count_error(10_000 + 3_600_000);
        assert_eq!(state.errors, 1, "a new hour starts a new count");
    }

    #[test]
    fn an_exhausted_window_without_reset_waits_a_minute() {
        let mut state = RateState::default();
        let limits = crate::config::PresetName::Xero.settings().rate_limits;
        state.observe(&limits, headers(&[("X-MinLimit-Remaining", "0")]), 5_000);
        assert_eq!(state.gate(5_000, None), Gate::WaitUntil(65_000));
    }
}
