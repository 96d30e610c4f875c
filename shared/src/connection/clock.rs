//! How far this host's clock is from DynamoDB's, read from the `Date` header
//! of every DynamoDB response by an SDK interceptor (the SDK's extension
//! point, no extra request). Leases are compared with times written by other
//! hosts; the CLI runs the protocol on laptops, whose clocks drift.
//!
//! A `Date` says when DynamoDB answered, to the second; we only know that
//! this was between our sending the request and reading the answer. So each
//! response bounds the offset (DynamoDB's time minus ours) to an interval:
//! at least `Date − received`, at most `Date + 1 s − sent`. A slow answer
//! (a loaded table, a busy process) widens its interval but never moves it
//! off the truth, so a host whose clock is right is never taken for a
//! skewed one, however slow DynamoDB is. The intervals of one minute are
//! intersected (each fast answer narrows it); the next minute starts over,
//! so a clock that was set meanwhile is followed within a minute, at once if
//! the new bounds contradict the old.

use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use super::now_ms;

/// The clock difference between hosts that the protocol tolerates: nobody
/// treats a lease as abandoned until this long after it ended, and a resend
/// waits this much longer than the token call's timeout.
pub const CLOCK_SKEW_MS: i64 = 5_000;

/// A worker takes or takes over a lease only while its offset from
/// DynamoDB's clock may be this small: it refuses when every measurement of
/// the minute says it is further off. A worker that passes is at most this
/// plus the interval's width off (one second of `Date` plus the fastest
/// answer's round trip): about 2 s, and two such workers differ by about 4 s
/// at most, inside [`CLOCK_SKEW_MS`].
pub const MAX_CLOCK_OFFSET_MS: i64 = 1_000;

/// How long measurements are intersected before the next one starts over.
const WINDOW_MS: i64 = 60_000;

/// DynamoDB's time minus ours, in milliseconds, as bounded by the
/// measurements of the current window. Clones share the measurement.
#[derive(Debug, Clone, Default)]
pub struct ServerClock(Arc<Mutex<Option<Bounds>>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    low: i64,
    high: i64,
    /// When (our clock) this window's first measurement was made.
    since: i64,
}

/// When this attempt's request left (our clock), kept in the attempt's
/// config bag from transmit to deserialization.
#[derive(Debug, Clone, Copy)]
struct SentAt(i64);

impl Storable for SentAt {
    type Storer = StoreReplace<SentAt>;
}

impl ServerClock {
    /// The offset nearest zero that every measurement of the window allows
    /// (DynamoDB's time minus ours), once a response carried a `Date`: 0 when
    /// our clock may be right, else how far it is off at least.
    pub fn offset_ms(&self) -> Option<i64> {
        let bounds = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bounds.map(|b| 0.clamp(b.low, b.high))
    }

    /// Records what an HTTP `Date` (RFC 9110 IMF-fixdate) says of the
    /// offset, for a request sent at `sent_ms` whose answer was read at
    /// `received_ms` (our clock). An unreadable `Date` changes nothing.
    pub fn record(&self, date: &str, sent_ms: i64, received_ms: i64) {
        let Ok(server) = DateTime::from_str(date, DateTimeFormat::HttpDate) else {
            return;
        };
        let second = server.secs().saturating_mul(1000);
        let low = second.saturating_sub(received_ms);
        let high = second.saturating_add(1000).saturating_sub(sent_ms.min(received_ms));
        let mut bounds = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = Bounds {
            low,
            high,
            since: received_ms,
        };
        *bounds = Some(match *bounds {
            Some(b) if received_ms.saturating_sub(b.since) < WINDOW_MS && low.max(b.low) <= high.min(b.high) => {
                Bounds {
                    low: low.max(b.low),
                    high: high.min(b.high),
                    since: b.since,
                }
            }
            // A new window, or a clock that was set: these bounds contradict
            // the window's.
            _ => fresh,
        });
    }
}

impl Intercept for ServerClock {
    fn name(&self) -> &'static str {
        "ServerClock"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(SentAt(now_ms()));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let received = now_ms();
        if let (Some(date), Some(SentAt(sent))) = (context.response().headers().get("date"), cfg.load::<SentAt>()) {
            self.record(date, *sent, received);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tue, 01 Dec 2026 12:00:00 GMT, in milliseconds.
    const NOON: i64 = 1_796_126_400_000;
    const AT_NOON: &str = "Tue, 01 Dec 2026 12:00:00 GMT";

    #[test]
    fn the_offset_is_bounded_by_the_date_and_the_round_trip() {
        let clock = ServerClock::default();
        assert_eq!(clock.offset_ms(), None);
        // Answered within the second we sent and read it in: we may be right.
        clock.record(AT_NOON, NOON + 100, NOON + 120);
        assert_eq!(clock.offset_ms(), Some(0));
        clock.record("not a date", 0, 0);
        assert_eq!(clock.offset_ms(), Some(0), "an unreadable header changes nothing");
    }

    #[test]
    fn a_slow_answer_is_not_a_skewed_clock() {
        // DynamoDB stamped noon and we read it 4 s later (a loaded table):
        // our clock may well be right, and is not taken for 4 s ahead.
        let clock = ServerClock::default();
        clock.record(AT_NOON, NOON + 300, NOON + 4_300);
        assert_eq!(clock.offset_ms(), Some(0));
    }

    #[test]
    fn a_clock_a_minute_behind_is_measured_and_a_fast_answer_narrows_it() {
        let clock = ServerClock::default();
        // DynamoDB says 12:01:00 while we say 12:00:00.2 (sent) to .25 (read).
        clock.record("Tue, 01 Dec 2026 12:01:00 GMT", NOON + 200, NOON + 250);
        assert_eq!(clock.offset_ms(), Some(59_750), "at least 59.75 s behind");
        // A slow answer later in the minute does not widen what is known.
        clock.record("Tue, 01 Dec 2026 12:01:03 GMT", NOON + 2_000, NOON + 5_000);
        assert_eq!(clock.offset_ms(), Some(59_750));
        // A second fast one, at another phase of the second, narrows it.
        clock.record("Tue, 01 Dec 2026 12:01:11 GMT", NOON + 10_900, NOON + 10_910);
        assert_eq!(clock.offset_ms(), Some(60_090), "between 60.09 and 60.8 s behind");
    }

    #[test]
    fn a_clock_that_was_set_is_followed() {
        let clock = ServerClock::default();
        clock.record("Tue, 01 Dec 2026 12:01:00 GMT", NOON + 200, NOON + 250);
        assert_eq!(clock.offset_ms(), Some(59_750));
        // Our clock was set right (NTP) half a minute later: the new bounds
        // contradict the old.
        clock.record("Tue, 01 Dec 2026 12:00:31 GMT", NOON + 31_100, NOON + 31_120);
        assert_eq!(clock.offset_ms(), Some(0));
        // A window ends after a minute: a slow answer then starts a new one
        // instead of keeping bounds an old clock gave.
        let slow = ServerClock::default();
        slow.record(AT_NOON, NOON - 2_500, NOON - 2_400);
        assert_eq!(slow.offset_ms(), Some(2_400), "we were 2.4 s behind at least");
        slow.record("Tue, 01 Dec 2026 12:01:30 GMT", NOON + 86_000, NOON + 95_000);
        assert_eq!(slow.offset_ms(), Some(0));
    }
}
