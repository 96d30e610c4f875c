//! How far this host's clock is from DynamoDB's, read from the `Date` header
//! of every DynamoDB response by an SDK interceptor (the SDK's extension
//! point, no extra request). Leases are compared with times written by other
//! hosts; the CLI runs the protocol on laptops, whose clocks drift.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};

use super::now_ms;

/// The clock difference between hosts that the protocol tolerates: nobody
/// treats a lease as abandoned until this long after it ended, and a resend
/// waits this much longer than the token call's timeout.
pub const CLOCK_SKEW_MS: i64 = 5_000;

/// The largest measured offset from DynamoDB's clock at which a worker still
/// takes or takes over a lease. `Date` has a resolution of one second (read
/// as its middle, so a measurement is up to ~0.5 s off, plus the response's
/// latency): a worker that passes is at most ~2 s off, and two such workers
/// differ by at most ~4 s, inside [`CLOCK_SKEW_MS`].
pub const MAX_CLOCK_OFFSET_MS: i64 = 1_500;

const UNKNOWN: i64 = i64::MIN;

/// The last measured offset (DynamoDB's time minus ours, in milliseconds).
/// Clones share the measurement.
#[derive(Debug, Clone)]
pub struct ServerClock(Arc<AtomicI64>);

impl Default for ServerClock {
    fn default() -> Self {
        ServerClock(Arc::new(AtomicI64::new(UNKNOWN)))
    }
}

impl ServerClock {
    /// DynamoDB's time minus ours, once a response carried a `Date`.
    pub fn offset_ms(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|o| *o != UNKNOWN)
    }

    /// Records the offset shown by an HTTP `Date` (RFC 9110 IMF-fixdate),
    /// received at `local_ms`. The header truncates to the second, so the
    /// server's time is taken as the middle of that second.
    pub fn record(&self, date: &str, local_ms: i64) {
        if let Ok(server) = DateTime::from_str(date, DateTimeFormat::HttpDate) {
            let server_ms = server.secs().saturating_mul(1000).saturating_add(500);
            self.0.store(server_ms.saturating_sub(local_ms), Ordering::Relaxed);
        }
    }
}

impl Intercept for ServerClock {
    fn name(&self) -> &'static str {
        "ServerClock"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            self.record(date, now_ms());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_read_from_an_http_date() {
        let clock = ServerClock::default();
        assert_eq!(clock.offset_ms(), None);
        // Tue, 01 Dec 2026 12:00:00 GMT = 1796126400 s.
        clock.record("Tue, 01 Dec 2026 12:00:00 GMT", 1_796_126_400_000);
        assert_eq!(clock.offset_ms(), Some(500));
        clock.record("Tue, 01 Dec 2026 12:01:00 GMT", 1_796_126_400_000);
        assert_eq!(clock.offset_ms(), Some(60_500), "a minute ahead of us");
        clock.record("not a date", 0);
        assert_eq!(clock.offset_ms(), Some(60_500), "an unreadable header changes nothing");
    }
}
