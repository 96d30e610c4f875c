//! The rate limiter: what the provider's headers say is left of each window
//! (Exact Online: per minute and per day, resets in epoch milliseconds),
//! `Retry-After`, and the error budget (Exact blocks a key for an hour after
//! 10 error answers). Pure: the caller feeds it answers and the time, and
//! asks before each request whether it may send.
//!
//! Two ways to use one [`RateState`]:
//!
//! - **Per job** ([`RateState::gate`], [`RateState::spend`],
//!   [`RateState::observe`]): kept in the job's checkpoint, so the next run
//!   starts from what the last one knew.
//! - **Shared by every caller of a rate key** ([`RateState::draw`],
//!   [`RateState::answer`], [`RateState::cancel`]), stored by
//!   [`super::budget::RateBudget`] and changed only by conditional writes.
//!   Many callers draw concurrently, so the state also knows each window's
//!   size, which requests are still out ("in flight", by [`Ticket`]), and how
//!   to read answers that arrive out of order:
//!   - a draw reserves one request in every known window; nothing is
//!     reserved unless it may go;
//!   - inside one window an answer only lowers `remaining`: `min(ours,
//!     theirs)`. Ours already counts every request drawn (including those
//!     drawn after the answered one, which may land after it), so without
//!     callers outside the budget ours is never above theirs; with them,
//!     theirs is what they spent. A later reset than the one known is
//!     adopted (with the same min); an answer from an older window changes
//!     nothing. A window first learned from an answer starts at theirs less
//!     every request drawn after or still in flight before it ([`Ticket`]s
//!     are numbered);
//!   - a window whose reset (plus [`RESET_GRACE_MS`] for the clocks' skew)
//!     has passed starts again at its `limit`, less the requests still in
//!     flight (any of them may land in the new window). The late answer of
//!     such a request that says it landed in the old window gives its
//!     reservation back;
//!   - one request at a time until the first answer has said what the
//!     windows are;
//!   - errors are counted over a rolling hour; with an error budget, draws
//!     stop at half of it, and no more requests are in flight than errors
//!     left in it (each of them could be one).

use serde::{Deserialize, Serialize};

use crate::config::{RateLimitHeaders, ResetFormat};

/// How long to wait at an exhausted window whose reset time is not given.
const UNKNOWN_RESET_MS: i64 = 60_000;
/// A reset claimed further away than this is not believed (a bad clock or header).
const MAX_RESET_MS: i64 = 25 * 3_600_000;
/// The error budget's window.
const ERROR_WINDOW_MS: i64 = 3_600_000;
/// A window counts as reset only this long after its reset time: our clock
/// and the provider's may differ, and a request sent just before the
/// provider's reset would land in the old window.
pub const RESET_GRACE_MS: i64 = 1_000;
/// Resets closer than this are one window's (a reset given in seconds, or
/// as seconds from now, moves a little from answer to answer). Windows are
/// longer than this.
const SAME_WINDOW_MS: i64 = 1_000;
/// A drawn request whose answer has not been observed after this long is
/// forgotten (longer than any page timeout: its caller is gone).
pub const FLIGHT_TTL_MS: i64 = 120_000;
/// The most requests in flight on one key.
const MAX_FLIGHTS: usize = 256;
/// How soon to draw again when only an answer still in flight can free a request.
pub const POLL_MS: i64 = 100;
/// The least a 429 stops every caller of the key.
const MIN_THROTTLE_WAIT_MS: i64 = 1_000;
/// The most error times kept (far more than any budget).
const MAX_ERROR_TIMES: usize = 1_000;

/// What is known of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub remaining: u64,
    /// Epoch milliseconds; `None` when the provider does not say (or, in a
    /// shared budget, when the window started and no answer has told it yet).
    pub reset_at: Option<i64>,
    /// When this was learned (epoch ms).
    pub seen_at: i64,
    /// The window's size: the provider's limit header, or else the least it
    /// can be (one more than the `remaining` of an answered request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Shared budgets: the first ticket drawn in this window (those before
    /// were drawn in an earlier one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_ticket: u64,
    /// Shared budgets: the reset of the window before this one, to recognise
    /// the late answers of requests that landed in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_reset_at: Option<i64>,
}

/// A request drawn from a shared budget whose answer has not been observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flight {
    pub ticket: u64,
    /// Epoch ms.
    pub drawn_at: i64,
}

/// The budget of a job or of a rate key, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateState {
    /// By remaining-header name, in the provider's order.
    #[serde(default)]
    pub windows: Vec<(String, Window)>,
    /// `Retry-After` (or a 429) asked us to wait until then (epoch ms).
    #[serde(default)]
    pub retry_after_until: Option<i64>,
    /// Error answers counted since `errors_since` (epoch ms).
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub errors_since: i64,
    /// Shared budgets: when each error answer of the last hour came (epoch
    /// ms, oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_times: Vec<i64>,
    /// Shared budgets: the number of the last ticket drawn.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_ticket: u64,
    /// Shared budgets: requests drawn and not yet answered, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<Flight>,
    /// Shared budgets: an answer has been observed (until then, one request
    /// at a time: nothing is known of the windows).
    #[serde(default, skip_serializing_if = "is_false")]
    pub probed: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
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

/// One request reserved in a shared budget; hand it back with the answer
/// ([`RateState::answer`]) or, when the request never left, to
/// [`RateState::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What a draw on a shared budget gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// Send now: one request is reserved in every window.
    Go(Ticket),
    /// Not before this time (epoch ms): a window is spent, `Retry-After`, or
    /// only an answer still in flight can free a request. Nothing reserved.
    WaitUntil(i64),
    /// The error budget is spent: no request until then (epoch ms).
    ErrorBudgetSpent(i64),
}

impl Draw {
    /// As a [`Gate`], without the ticket.
    pub fn gate(&self) -> Gate {
        match *self {
            Draw::Go(_) => Gate::Go,
            Draw::WaitUntil(until) => Gate::WaitUntil(until),
            Draw::ErrorBudgetSpent(until) => Gate::ErrorBudgetSpent(until),
        }
    }
}

/// One window as an answer's headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The window's remaining-header name (its name in [`RateState::windows`]).
    pub name: String,
    pub remaining: u64,
    /// Epoch ms.
    pub reset_at: Option<i64>,
    pub limit: Option<u64>,
}

/// What an answer said about the budget, read from its status and headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `None`: no answer came (a timeout, a dropped connection): the request
    /// may have counted, so its reservation stays spent.
    pub status: Option<u16>,
    /// The windows the answer has headers for.
    pub windows: Vec<Reading>,
    /// `Retry-After` in seconds; a caller may also put its own backoff here
    /// (a 429 that says nothing).
    pub retry_after_secs: Option<u64>,
}

impl Answer {
    /// Reads an answer (any status): the configured windows' headers and
    /// `Retry-After` (in seconds; an HTTP date is not read).
    pub fn read(limits: &[RateLimitHeaders], header: impl Fn(&str) -> Option<String>, status: u16, now: i64) -> Answer {
        Answer {
            status: Some(status),
            windows: limits
                .iter()
                .filter_map(|limit| read_window(limit, &header, now))
                .collect(),
            retry_after_secs: header("Retry-After").and_then(|v| v.trim().parse::<u64>().ok()),
        }
    }

    /// No answer came: the request failed on the way (it may have counted).
    pub fn lost() -> Answer {
        Answer::default()
    }
}

/// The header that tells a window's size: one of its own configuration
/// (not there yet), else the remaining header's name with `Remaining`
/// replaced by `Limit` — Exact Online documents `X-RateLimit-Limit` beside
/// `X-RateLimit-Remaining` and `X-RateLimit-Minutely-Limit` beside
/// `X-RateLimit-Minutely-Remaining`. For other providers such a header is
/// simply absent, and the size is learned from answers.
pub fn limit_header(limit: &RateLimitHeaders) -> Option<String> {
    let name = &limit.remaining_header;
    let cut = name.len().checked_sub("remaining".len())?;
    let (stem, tail) = (name.get(..cut)?, name.get(cut..)?);
    tail.eq_ignore_ascii_case("remaining").then(|| format!("{stem}Limit"))
}

/// One configured window as this answer's headers describe it.
fn read_window(limit: &RateLimitHeaders, header: &impl Fn(&str) -> Option<String>, now: i64) -> Option<Reading> {
    let remaining = header(&limit.remaining_header).and_then(|v| v.trim().parse::<u64>().ok())?;
    let reset_at = limit
        .reset_header
        .as_deref()
        .and_then(header)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(|v| match limit.reset_format.unwrap_or(ResetFormat::DeltaSecs) {
            ResetFormat::EpochMs => v,
            ResetFormat::EpochSecs => v.saturating_mul(1000),
            ResetFormat::DeltaSecs => now.saturating_add(v.saturating_mul(1000)),
        })
        .filter(|at| *at - now <= MAX_RESET_MS);
    let size = limit_header(limit)
        .and_then(|name| header(&name))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|size| *size > 0);
    Some(Reading {
        name: limit.remaining_header.clone(),
        remaining,
        reset_at,
        limit: size,
    })
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl RateState {
    /// Per job: reads the window headers of an answer (any status); what
    /// they say replaces what was known.
    pub fn observe(&mut self, limits: &[RateLimitHeaders], header: impl Fn(&str) -> Option<String>, now: i64) {
        for reading in limits.iter().filter_map(|limit| read_window(limit, &header, now)) {
            let window = Window {
                remaining: reading.remaining,
                reset_at: reading.reset_at,
                seen_at: now,
                limit: reading.limit,
                ..Window::default()
            };
            match self.windows.iter_mut().find(|(name, _)| *name == reading.name) {
                Some((_, known)) => {
                    let limit = window.limit.or(known.limit);
                    *known = Window { limit, ..window };
                }
                None => self.windows.push((reading.name, window)),
            }
        }
    }

    /// `Retry-After` in seconds (a 429 or 503).
    pub fn retry_after(&mut self, secs: u64, now: i64) {
        let secs = i64::try_from(secs.min(86_400)).unwrap_or(86_400);
        self.wait_until(now.saturating_add(secs * 1000));
    }

    /// Nobody sends before `until` (epoch ms); a later wait already asked for stays.
    fn wait_until(&mut self, until: i64) {
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

    /// Per job, before each request. A window known to be spent waits for
    /// its reset (a window whose reset has passed is full again);
    /// `budget_per_hour` stops requests once half the provider's error
    /// budget is used, leaving the rest for other jobs and the refresher on
    /// the same key.
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

    /// Per job: a request was sent: one less in every window (the answer's
    /// headers correct it), so concurrent pages of one job cannot overrun.
    pub fn spend(&mut self) {
        for (_, window) in &mut self.windows {
            window.remaining = window.remaining.saturating_sub(1);
        }
    }

    /// The smallest known remaining count, for status output.
    pub fn least_remaining(&self) -> Option<u64> {
        self.windows.iter().map(|(_, w)| w.remaining).min()
    }

    /// Shared: before each request. [`Draw::Go`] reserves one request in
    /// every known window and puts its ticket in flight; anything else
    /// changes nothing that needs saving. `error_budget_per_hour`: draws
    /// stop at half of it (the rest is left for the refresher and for
    /// answers in flight), and no more requests are in flight than errors
    /// are left in it.
    pub fn draw(&mut self, now: i64, error_budget_per_hour: Option<u64>) -> Draw {
        self.settle(now);
        if let Some(budget) = error_budget_per_hour {
            let stop_at = usize::try_from((budget / 2).max(1)).unwrap_or(usize::MAX);
            let errors = self.error_times.len();
            if errors >= stop_at {
                // The errors that must leave the hour before one more may come.
                let oldest = self.error_times.get(errors - stop_at).copied().unwrap_or(now);
                return Draw::ErrorBudgetSpent(oldest + ERROR_WINDOW_MS);
            }
            if count(errors + self.in_flight.len()) >= budget {
                return Draw::WaitUntil(now + POLL_MS);
            }
        }
        let mut until = self.retry_after_until.filter(|u| *u > now);
        let mut later = |at: i64| until = Some(until.map_or(at, |u: i64| u.max(at)));
        if (!self.probed && !self.in_flight.is_empty()) || self.in_flight.len() >= MAX_FLIGHTS {
            later(now + POLL_MS);
        }
        for (_, window) in &self.windows {
            if window.remaining > 0 {
                continue;
            }
            later(match window.reset_at {
                Some(reset) => reset + RESET_GRACE_MS,
                // Started, and the answers that will tell its reset are on their way.
                None if !self.in_flight.is_empty() => now + POLL_MS,
                None => window.seen_at + UNKNOWN_RESET_MS + RESET_GRACE_MS,
            });
        }
        if let Some(until) = until {
            return Draw::WaitUntil(until.max(now + 1));
        }
        self.last_ticket += 1;
        self.in_flight.push(Flight {
            ticket: self.last_ticket,
            drawn_at: now,
        });
        self.spend();
        Draw::Go(Ticket(self.last_ticket))
    }

    /// Shared: the answer to the request drawn as `ticket` (see the module
    /// documentation for how out-of-order answers and resets are read). A
    /// 4xx other than 429 counts as an error; a 429 stops every caller
    /// until the spent window's reset (at least a second) or its
    /// `Retry-After`.
    pub fn answer(&mut self, ticket: Ticket, answer: &Answer, now: i64) {
        self.settle(now);
        let flying = self.land(ticket);
        // Drawn after this request: they may have reached the provider after
        // it, so its headers do not count them.
        let since = self.last_ticket.saturating_sub(ticket.0);
        // Drawn before it and still out: they too may land after it.
        let older = count(self.in_flight.iter().filter(|f| f.ticket < ticket.0).count());
        let served = answer.status.is_some_and(|s| (200..300).contains(&s));
        if served || !answer.windows.is_empty() {
            self.probed = true;
        }
        let landing = Landing {
            ticket,
            flying,
            since,
            older,
            served,
            now,
        };
        for reading in &answer.windows {
            let Some((_, window)) = self.windows.iter_mut().find(|(name, _)| *name == reading.name) else {
                let window = Window {
                    remaining: reading.remaining.saturating_sub(since + older),
                    reset_at: reading.reset_at,
                    seen_at: now,
                    limit: reading.limit.or(served.then_some(reading.remaining + 1)),
                    first_ticket: 0,
                    previous_reset_at: None,
                };
                self.windows.push((reading.name.clone(), window));
                continue;
            };
            merge(window, reading, &landing);
        }
        if answer.status == Some(429) {
            let mut until = now + MIN_THROTTLE_WAIT_MS;
            for reading in answer.windows.iter().filter(|r| r.remaining == 0) {
                if let Some(reset) = reading.reset_at {
                    until = until.max(reset + RESET_GRACE_MS);
                }
            }
            self.wait_until(until);
        }
        if let Some(secs) = answer.retry_after_secs {
            self.retry_after(secs, now);
        }
        if let Some(status) = answer.status
            && (400..500).contains(&status)
            && status != 429
        {
            self.record_error(now);
        }
    }

    /// Shared: the request drawn as `ticket` was never sent; its reservation
    /// goes back.
    pub fn cancel(&mut self, ticket: Ticket, now: i64) {
        self.settle(now);
        if self.land(ticket) {
            for (_, window) in &mut self.windows {
                window.remaining = (window.remaining + 1).min(window.limit.unwrap_or(u64::MAX));
            }
        }
    }

    /// Takes `ticket` out of flight; whether it was there.
    fn land(&mut self, ticket: Ticket) -> bool {
        match self.in_flight.iter().position(|f| f.ticket == ticket.0) {
            Some(index) => {
                self.in_flight.remove(index);
                true
            }
            None => false,
        }
    }

    /// Shared: an error answer, in the rolling hour and in the per-job count.
    fn record_error(&mut self, now: i64) {
        self.count_error(now);
        let at = self.error_times.partition_point(|t| *t <= now);
        self.error_times.insert(at, now);
        if self.error_times.len() > MAX_ERROR_TIMES {
            self.error_times.remove(0);
        }
    }

    /// Shared: forgets what time has made obsolete (answers that will not
    /// come, errors older than an hour, a passed `Retry-After`) and starts
    /// every window whose reset has passed again at its limit, less what is
    /// in flight.
    fn settle(&mut self, now: i64) {
        self.in_flight.retain(|f| now - f.drawn_at < FLIGHT_TTL_MS);
        self.error_times.retain(|t| now - t < ERROR_WINDOW_MS);
        if self.retry_after_until.is_some_and(|u| u <= now) {
            self.retry_after_until = None;
        }
        let flying = count(self.in_flight.len());
        let next = self.last_ticket + 1;
        for (_, window) in &mut self.windows {
            let reset = window.reset_at.unwrap_or(window.seen_at + UNKNOWN_RESET_MS);
            if now < reset + RESET_GRACE_MS {
                continue;
            }
            *window = Window {
                // Unknown size: one request, whose answer tells it.
                remaining: window.limit.unwrap_or(1).saturating_sub(flying),
                reset_at: None,
                seen_at: now,
                limit: window.limit,
                first_ticket: next,
                previous_reset_at: window.reset_at.or(window.previous_reset_at),
            };
        }
    }
}

/// What is known of an answered request besides its headers.
struct Landing {
    ticket: Ticket,
    /// It was in flight (not cancelled, answered or forgotten before).
    flying: bool,
    /// Tickets drawn after it.
    since: u64,
    /// Tickets drawn before it, still in flight.
    older: u64,
    /// A 2xx: the provider counted it.
    served: bool,
    now: i64,
}

/// Folds one window's reading of an answer into what is known.
fn merge(window: &mut Window, reading: &Reading, landing: &Landing) {
    let Landing {
        ticket,
        flying,
        since,
        older,
        served,
        now,
    } = *landing;
    if let Some(size) = reading.limit {
        window.limit = Some(size);
    } else if served {
        window.limit = Some(window.limit.unwrap_or(0).max(reading.remaining + 1));
    }
    let cap = window.limit.unwrap_or(u64::MAX);
    let ours = window.remaining.min(cap);
    let Some(reset) = reading.reset_at else {
        window.remaining = if window.reset_at.is_none() && window.previous_reset_at.is_none() {
            // A window without resets (a rolling one): the headers are the
            // truth, less what may land after this request.
            reading.remaining.saturating_sub(since + older).min(cap)
        } else {
            // Which window it speaks of is unknown: it may only lower.
            ours.min(reading.remaining)
        };
        window.seen_at = now;
        return;
    };
    let previous = window
        .previous_reset_at
        .is_some_and(|before| reset <= before + SAME_WINDOW_MS);
    if ticket.0 < window.first_ticket && previous {
        // Drawn before this window started, landed in the one before: its
        // reservation, taken from this window at its start, comes back.
        if flying {
            window.remaining = (ours + 1).min(cap);
        }
        return;
    }
    let older_window = match window.reset_at {
        Some(known) => reset + SAME_WINDOW_MS < known,
        None => previous,
    };
    if older_window {
        return;
    }
    if window
        .reset_at
        .is_some_and(|known| now >= known && reset > known + SAME_WINDOW_MS)
    {
        // Our window's reset has passed and the provider speaks of its next
        // one (it starts one at the first request after the last ended; our
        // count of the old one stops only at its reset and a margin): what it
        // says is left, less every request that may land after this one, not
        // the rest of the old window's count.
        window.previous_reset_at = window.reset_at;
        window.first_ticket = ticket.0 + 1;
        window.remaining = reading.remaining.saturating_sub(since + older).min(cap);
        window.reset_at = Some(reset);
        window.seen_at = now;
        return;
    }
    // Without callers outside the budget `ours` is never above `remaining`
    // (every request that landed before this one was drawn, and counted, in
    // this window); with them, this is what the headers prove they spent.
    // Subtracting the requests drawn since would count those that landed
    // before this one twice.
    window.remaining = ours.min(reading.remaining);
    window.reset_at = Some(window.reset_at.map_or(reset, |known| known.max(reset)));
    window.seen_at = now;
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

    #[test]
    fn the_per_job_state_is_stored_as_before() {
        // A checkpoint written before the shared fields existed still reads,
        // and a state that never drew writes none of them.
        let old = r#"{"windows":[["X-RateLimit-Remaining",{"remaining":3,"reset_at":9,"seen_at":1}]],
                      "retry_after_until":null,"errors":0,"errors_since":0}"#;
        let state: RateState = serde_json::from_str(old).unwrap();
        assert_eq!(state.windows[0].1.remaining, 3);
        assert_eq!(state.windows[0].1.limit, None);
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"windows":[["X-RateLimit-Remaining",{"remaining":3,"reset_at":9,"seen_at":1}]],"retry_after_until":null,"errors":0,"errors_since":0}"#
        );
    }

    #[test]
    fn limit_headers_are_the_remaining_headers_named_limit() {
        let cases = [
            ("X-RateLimit-Minutely-Remaining", Some("X-RateLimit-Minutely-Limit")),
            ("X-RateLimit-Remaining", Some("X-RateLimit-Limit")),
            ("x-ratelimit-remaining", Some("x-ratelimit-Limit")),
            ("X-MinLimit-Remaining", Some("X-MinLimit-Limit")),
            ("Remaining-Requests", None),
            ("", None),
        ];
        for (remaining, expected) in cases {
            let limit = RateLimitHeaders {
                remaining_header: remaining.to_owned(),
                reset_header: None,
                reset_format: None,
            };
            assert_eq!(limit_header(&limit).as_deref(), expected, "{remaining}");
        }
    }

    #[test]
    fn an_answer_is_read_with_its_limits_and_retry_after() {
        let now = 1_700_000_000_000;
        let answer = Answer::read(
            &exact(),
            headers(&[
                ("X-RateLimit-Minutely-Limit", "60"),
                ("X-RateLimit-Minutely-Remaining", "59"),
                ("X-RateLimit-Minutely-Reset", &(now + 60_000).to_string()),
                ("X-RateLimit-Remaining", "4999"),
                ("Retry-After", " 7 "),
            ]),
            200,
            now,
        );
        assert_eq!(answer.status, Some(200));
        assert_eq!(answer.retry_after_secs, Some(7));
        assert_eq!(
            answer.windows,
            vec![
                Reading {
                    name: "X-RateLimit-Minutely-Remaining".to_owned(),
                    remaining: 59,
                    reset_at: Some(now + 60_000),
                    limit: Some(60),
                },
                Reading {
                    name: "X-RateLimit-Remaining".to_owned(),
                    remaining: 4999,
                    reset_at: None,
                    limit: None,
                },
            ]
        );
        assert_eq!(Answer::lost().status, None);
    }

    // ---- the shared budget: draw, answer, cancel ----

    const T0: i64 = 1_700_000_000_000;
    const MINUTE: &str = "X-RateLimit-Minutely-Remaining";
    const DAY: &str = "X-RateLimit-Remaining";

    /// An Exact answer: status, and the minutely window (remaining, reset) out of 20.
    fn exact_answer(status: u16, minute: Option<(u64, i64)>) -> Answer {
        Answer {
            status: Some(status),
            windows: minute
                .map(|(remaining, reset)| Reading {
                    name: MINUTE.to_owned(),
                    remaining,
                    reset_at: Some(reset),
                    limit: Some(20),
                })
                .into_iter()
                .collect(),
            retry_after_secs: None,
        }
    }

    fn go(state: &mut RateState, now: i64) -> Ticket {
        match state.draw(now, Some(10)) {
            Draw::Go(ticket) => ticket,
            other => panic!("expected Go at {now}, got {other:?}"),
        }
    }

    fn minute(state: &RateState) -> &Window {
        &state
            .windows
            .iter()
            .find(|(n, _)| n == MINUTE)
            .expect("the minute window")
            .1
    }

    /// One answered probe: the window (20 a window, resetting at T0 + 3 s) is known, 19 left.
    fn probed() -> RateState {
        let mut state = RateState::default();
        let ticket = go(&mut state, T0);
        state.answer(ticket, &exact_answer(200, Some((19, T0 + 3_000))), T0 + 10);
        state
    }

    #[test]
    fn the_first_request_goes_alone_until_an_answer_tells_the_windows() {
        let mut state = RateState::default();
        let first = go(&mut state, T0);
        assert_eq!(state.draw(T0 + 1, Some(10)), Draw::WaitUntil(T0 + 1 + POLL_MS));
        state.answer(first, &exact_answer(200, Some((19, T0 + 3_000))), T0 + 5);
        assert!(state.probed);
        assert_eq!(minute(&state).remaining, 19);
        assert_eq!(minute(&state).limit, Some(20));
        go(&mut state, T0 + 6);
        go(&mut state, T0 + 6);
        assert_eq!(minute(&state).remaining, 17, "after the probe, concurrently");
        // A provider without window headers: its first 2xx ends the probe.
        let mut state = RateState::default();
        let first = go(&mut state, T0);
        state.answer(first, &exact_answer(200, None), T0 + 5);
        go(&mut state, T0 + 6);
        go(&mut state, T0 + 6);
    }

    /// One step of a table-driven scenario on the minute window.
    #[derive(Debug)]
    enum Step {
        /// Draws at this time; expects a ticket (numbered from 1, the probe).
        Go(i64),
        /// Draws at this time and expects to wait until then.
        Wait(i64, i64),
        /// The answer to ticket n: (status, minute (remaining, reset)), at a time.
        Answer(u64, u16, Option<(u64, i64)>, i64),
        /// Ticket n never left.
        Cancel(u64, i64),
        /// Expected: the minute window's remaining and reset.
        Is(u64, Option<i64>),
    }

    fn run(name: &str, steps: &[Step]) {
        let mut state = probed();
        for (i, step) in steps.iter().enumerate() {
            let at = format!("{name}, step {i}: {step:?}");
            match *step {
                Step::Go(now) => {
                    assert!(matches!(state.draw(now, Some(10)), Draw::Go(_)), "{at}: {state:?}")
                }
                Step::Wait(now, until) => assert_eq!(state.draw(now, Some(10)), Draw::WaitUntil(until), "{at}"),
                Step::Answer(ticket, status, window, now) => {
                    state.answer(Ticket(ticket), &exact_answer(status, window), now)
                }
                Step::Cancel(ticket, now) => state.cancel(Ticket(ticket), now),
                Step::Is(remaining, reset) => {
                    let window = minute(&state);
                    assert_eq!(
                        (window.remaining, window.reset_at),
                        (remaining, reset),
                        "{at}: {state:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn answers_out_of_order_never_raise_what_is_left() {
        use Step::*;
        let reset = T0 + 3_000;
        let cases: &[(&str, &[Step])] = &[
            (
                "an answer cannot give back what was drawn after it",
                &[
                    Go(T0 + 20), // 2
                    Go(T0 + 20), // 3
                    Go(T0 + 20), // 4
                    Is(16, Some(reset)),
                    // 4 landed last: 16 left, as we count.
                    Answer(4, 200, Some((16, reset)), T0 + 30),
                    Is(16, Some(reset)),
                    // 2's answer comes late and says 18: two were drawn after it.
                    Answer(2, 200, Some((18, reset)), T0 + 40),
                    Is(16, Some(reset)),
                ],
            ),
            (
                "a lower count lowers (someone outside the budget spent some)",
                &[
                    Go(T0 + 20),
                    Answer(2, 200, Some((10, reset)), T0 + 30),
                    Is(10, Some(reset)),
                ],
            ),
            (
                "an answer from an older window changes nothing",
                &[
                    Go(T0 + 20),
                    Answer(2, 200, Some((19, reset - 3_000)), T0 + 30),
                    Is(18, Some(reset)),
                ],
            ),
            (
                "a later reset is adopted, and only lowers",
                &[
                    Go(T0 + 20),
                    Answer(2, 200, Some((19, reset + 3_000)), T0 + 30),
                    Is(18, Some(reset + 3_000)),
                ],
            ),
            (
                "a spent window waits for its reset and the grace",
                &[
                    Answer(1, 200, Some((0, reset)), T0 + 30),
                    Is(0, Some(reset)),
                    Wait(T0 + 40, reset + RESET_GRACE_MS),
                    Wait(reset + RESET_GRACE_MS - 1, reset + RESET_GRACE_MS),
                    // The first request after the reset goes, and the window
                    // starts again at its limit: 19 left after it.
                    Go(reset + RESET_GRACE_MS),
                    Is(19, None),
                    // Its answer tells the new reset.
                    Answer(
                        2,
                        200,
                        Some((19, reset + RESET_GRACE_MS + 3_005)),
                        reset + RESET_GRACE_MS + 5,
                    ),
                    Is(19, Some(reset + RESET_GRACE_MS + 3_005)),
                ],
            ),
            (
                "a new window starts less what is in flight; late answers from the old one give it back",
                &[
                    Go(T0 + 20), // 2
                    Go(T0 + 20), // 3
                    Go(T0 + 20), // 4
                    Is(16, Some(reset)),
                    // 2, 3 and 4 are in flight at the reset: any may land in the new window.
                    Go(reset + RESET_GRACE_MS), // 5
                    Is(20 - 3 - 1, None),
                    // 2 landed in the old window: its reservation comes back.
                    Answer(2, 200, Some((17, reset)), reset + RESET_GRACE_MS + 1),
                    Is(17, None),
                    // 3 landed in the new one (the first there): it stays spent.
                    Answer(3, 200, Some((19, reset + 3_100)), reset + RESET_GRACE_MS + 2),
                    Is(17, Some(reset + 3_100)),
                    // 2 again (a repeated answer) gives nothing back twice.
                    Answer(2, 200, Some((17, reset)), reset + RESET_GRACE_MS + 3),
                    Is(17, Some(reset + 3_100)),
                    // 5, drawn after the start, says 18 left: 4 may still land.
                    Answer(5, 200, Some((18, reset + 3_100)), reset + RESET_GRACE_MS + 4),
                    Is(17, Some(reset + 3_100)),
                ],
            ),
            (
                "an unknown reset after a start: wait for the answers in flight, then for the reset",
                &[
                    Answer(1, 200, Some((0, reset)), T0 + 30),
                    Go(reset + RESET_GRACE_MS), // 2
                    Is(19, None),
                ],
            ),
            (
                "a request that never left is given back",
                &[
                    Go(T0 + 20),
                    Is(18, Some(reset)),
                    Cancel(2, T0 + 30),
                    Is(19, Some(reset)),
                    Cancel(2, T0 + 31),
                    Is(19, Some(reset)),
                ],
            ),
            (
                "a lost answer leaves its reservation spent",
                &[
                    Go(T0 + 20),
                    Step::Answer(2, 0, None, T0 + 30), // status 0: see below
                    Is(18, Some(reset)),
                ],
            ),
            (
                "a 429 stops everyone until its window's reset",
                &[
                    Go(T0 + 20),
                    Answer(2, 429, Some((0, reset)), T0 + 30),
                    Is(0, Some(reset)),
                    Wait(T0 + 40, reset + RESET_GRACE_MS),
                ],
            ),
            (
                "a 429 that says nothing stops everyone a second",
                &[
                    Go(T0 + 20),
                    Answer(2, 429, None, T0 + 30),
                    Wait(T0 + 40, T0 + 30 + 1_000),
                ],
            ),
        ];
        for (name, steps) in cases {
            run(name, steps);
        }
    }

    #[test]
    fn a_window_started_with_every_request_drawn_waits_for_the_answers_in_flight() {
        let mut state = probed();
        let reset = T0 + 3_000;
        state.answer(Ticket(1), &exact_answer(200, Some((1, reset))), T0 + 30);
        // The window starts again with one still... none in flight here: 20.
        let start = reset + RESET_GRACE_MS;
        let mut tickets = Vec::new();
        for _ in 0..20 {
            match state.draw(start, None) {
                Draw::Go(ticket) => tickets.push(ticket),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(minute(&state).remaining, 0);
        assert_eq!(
            state.draw(start + 1, None),
            Draw::WaitUntil(start + 1 + POLL_MS),
            "its reset comes with the first answer"
        );
        state.answer(tickets[0], &exact_answer(200, Some((19, start + 3_002))), start + 3);
        assert_eq!(
            state.draw(start + 4, None),
            Draw::WaitUntil(start + 3_002 + RESET_GRACE_MS)
        );
    }

    #[test]
    fn a_lost_answer_keeps_the_reservation_and_frees_the_flight() {
        let mut state = probed();
        let ticket = go(&mut state, T0 + 20);
        assert_eq!(state.in_flight.len(), 1);
        state.answer(ticket, &Answer::lost(), T0 + 30);
        assert!(state.in_flight.is_empty());
        assert_eq!(minute(&state).remaining, 18);
        assert_eq!(state.errors, 0);
    }

    #[test]
    fn flights_whose_answers_never_come_are_forgotten() {
        let mut state = probed();
        go(&mut state, T0 + 20);
        go(&mut state, T0 + 20);
        assert_eq!(state.draw(T0 + 20 + FLIGHT_TTL_MS - 1, None).gate(), Gate::Go);
        assert_eq!(state.in_flight.len(), 3);
        state.draw(T0 + 20 + FLIGHT_TTL_MS, None);
        assert_eq!(state.in_flight.len(), 2, "the two first are forgotten, the third went");
    }

    #[test]
    fn retry_after_from_one_answer_stops_every_drawer() {
        let mut state = probed();
        let ticket = go(&mut state, T0 + 20);
        let mut answer = exact_answer(503, None);
        answer.retry_after_secs = Some(2);
        state.answer(ticket, &answer, T0 + 30);
        assert_eq!(state.draw(T0 + 40, None), Draw::WaitUntil(T0 + 2_030));
        assert!(matches!(state.draw(T0 + 2_030, None), Draw::Go(_)));
        assert_eq!(state.errors, 0, "a 503 is not an error answer");
    }

    #[test]
    fn the_error_budget_is_never_exceeded_by_requests_in_flight() {
        // Exact: 10 an hour. Draws stop at 5 errors, and no more requests are
        // out than errors are left: even if every one comes back 401, 10 at most.
        let mut state = probed();
        let mut out = Vec::new();
        for _ in 0..10 {
            out.push(go(&mut state, T0 + 20));
        }
        assert_eq!(
            state.draw(T0 + 20, Some(10)),
            Draw::WaitUntil(T0 + 20 + POLL_MS),
            "10 in flight"
        );
        for (i, ticket) in out.iter().take(4).enumerate() {
            state.answer(*ticket, &exact_answer(401, Some((15, T0 + 3_000))), T0 + 100 + i as i64);
        }
        assert_eq!(state.errors, 4);
        // 4 errors and 6 in flight: still 10.
        assert_eq!(state.draw(T0 + 200, Some(10)), Draw::WaitUntil(T0 + 200 + POLL_MS));
        state.answer(out[4], &exact_answer(200, Some((15, T0 + 3_000))), T0 + 210);
        assert!(matches!(state.draw(T0 + 220, Some(10)), Draw::Go(_)));
        state.answer(out[5], &exact_answer(404, Some((15, T0 + 3_000))), T0 + 230);
        assert_eq!(
            state.draw(T0 + 240, Some(10)),
            Draw::ErrorBudgetSpent(T0 + 100 + ERROR_WINDOW_MS),
            "half the budget: stop until the first error leaves the hour"
        );
        assert_eq!(state.draw(T0 + 240, None).gate(), Gate::Go, "no budget, no stop");
        // The hour rolls: once the first error is an hour old, four remain.
        let later = T0 + 100 + ERROR_WINDOW_MS;
        for ticket in &out[6..] {
            state.cancel(*ticket, later - 1);
        }
        assert!(matches!(state.draw(later, Some(10)), Draw::Go(_)));
        assert_eq!(state.error_times.len(), 4);
    }

    // ---- many drawers against a provider with fixed windows (a simulation) ----

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Windows {
        /// A window starts at the first request after the previous one
        /// ended (the simulator; maybe Exact).
        FromFirstRequest,
        /// Windows start at multiples of their length.
        OnTheClock,
    }

    struct Provider {
        windows: Windows,
        length: i64,
        limit: u64,
        /// The provider's clock minus ours.
        skew: i64,
        start: Option<i64>,
        used: u64,
        admitted: std::collections::BTreeMap<i64, u64>,
        throttled: u64,
    }

    impl Provider {
        fn request(&mut self, now: i64) -> Answer {
            let t = now + self.skew;
            match self.windows {
                Windows::FromFirstRequest => {
                    if self.start.is_none_or(|s| t >= s + self.length) {
                        self.start = Some(t);
                        self.used = 0;
                    }
                }
                Windows::OnTheClock => {
                    let s = t - t.rem_euclid(self.length);
                    if self.start != Some(s) {
                        self.start = Some(s);
                        self.used = 0;
                    }
                }
            }
            let reset = self.start.unwrap_or(t) + self.length;
            let window = |remaining| Reading {
                name: MINUTE.to_owned(),
                remaining,
                reset_at: Some(reset),
                limit: Some(self.limit),
            };
            if self.used >= self.limit {
                self.throttled += 1;
                return Answer {
                    status: Some(429),
                    windows: vec![window(0)],
                    retry_after_secs: None,
                };
            }
            self.used += 1;
            *self.admitted.entry(reset).or_default() += 1;
            let day = Reading {
                name: DAY.to_owned(),
                remaining: 1_000_000,
                reset_at: Some(T0 + 86_400_000),
                limit: Some(1_000_001),
            };
            Answer {
                status: Some(200),
                windows: vec![window(self.limit - self.used), day],
                retry_after_secs: None,
            }
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Event {
        Try(usize),
        Arrive(usize, u64),
        Return(usize, u64, usize),
    }

    /// Runs `clients` drawers on one shared state for `secs` (each request
    /// travels up to `latency` ms each way; a client thinks up to `think` ms
    /// between requests). Returns the provider.
    fn simulate(clients: usize, windows: Windows, skew: i64, latency: u64, think: u64, seed: u64) -> Provider {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut provider = Provider {
            windows,
            length: 3_000,
            limit: 20,
            skew,
            start: None,
            used: 0,
            admitted: Default::default(),
            throttled: 0,
        };
        let end = T0 + 60_000;
        let mut state = RateState::default();
        let mut answers: Vec<Answer> = Vec::new();
        let mut queue = BinaryHeap::new();
        for client in 0..clients {
            queue.push(Reverse((T0 + rng.i64(0..50), Event::Try(client))));
        }
        while let Some(Reverse((now, event))) = queue.pop() {
            match event {
                Event::Try(client) => {
                    if now > end {
                        continue;
                    }
                    match state.draw(now, Some(10)) {
                        Draw::Go(ticket) => {
                            let arrive = now + rng.i64(0..=latency as i64);
                            queue.push(Reverse((arrive, Event::Arrive(client, ticket.0))));
                        }
                        Draw::WaitUntil(until) => {
                            assert!(until > now);
                            queue.push(Reverse((until + rng.i64(0..20), Event::Try(client))));
                        }
                        Draw::ErrorBudgetSpent(_) => panic!("no errors here"),
                    }
                }
                Event::Arrive(client, ticket) => {
                    answers.push(provider.request(now));
                    let back = now + rng.i64(0..=latency as i64);
                    queue.push(Reverse((back, Event::Return(client, ticket, answers.len() - 1))));
                }
                Event::Return(client, ticket, answer) => {
                    state.answer(Ticket(ticket), &answers[answer], now);
                    queue.push(Reverse((now + rng.i64(0..=think as i64), Event::Try(client))));
                }
            }
        }
        provider
    }

    #[test]
    fn many_drawers_never_get_a_429_and_fill_every_window() {
        for seed in 0..20 {
            for (windows, skew) in [
                (Windows::FromFirstRequest, 0),
                (Windows::FromFirstRequest, 700),
                (Windows::FromFirstRequest, -700),
                (Windows::OnTheClock, 0),
                (Windows::OnTheClock, 900),
                (Windows::OnTheClock, -900),
            ] {
                let provider = simulate(8, windows, skew, 150, 0, seed);
                let case = format!("seed {seed}, {windows:?}, skew {skew} ms");
                assert_eq!(provider.throttled, 0, "{case}");
                let counts: Vec<u64> = provider.admitted.values().copied().collect();
                // Every window but the last (cut by the end) and, on the
                // clock, the first (begun before the start) is used in full.
                let first = usize::from(windows == Windows::OnTheClock);
                let full = &counts[first..counts.len() - 1];
                assert!(full.len() >= 10, "{case}: {counts:?}");
                assert!(full.iter().all(|n| *n >= 18), "{case}: {counts:?}");
            }
        }
    }

    #[test]
    fn drawers_that_do_not_fill_a_window_never_get_a_429_either() {
        // Slow clients: windows end with requests in flight, so windows start
        // again less what is out, and late answers give their share back.
        for seed in 0..20 {
            for windows in [Windows::FromFirstRequest, Windows::OnTheClock] {
                for (clients, latency, think) in [(3, 300, 300), (6, 600, 400), (8, 1_200, 0)] {
                    let provider = simulate(clients, windows, 0, latency, think, seed);
                    assert_eq!(
                        provider.throttled, 0,
                        "seed {seed}, {windows:?}, {clients} clients, {latency} ms, {:?}",
                        provider.admitted
                    );
                }
            }
        }
    }
}
