//! The sync engine: pulls each (connection, sync) job's pages from the
//! provider's data API on a schedule and upserts the records into DynamoDB.
//! It reads like the refresh protocol: a job item, a lease, a checkpoint.
//!
//! - [`jobs`]: the sync-state table (job items, run leases, checkpoints, the
//!   `sync-due` index) and the run history.
//! - [`pages`]: the pagination styles and the shape of a page (pure).
//! - [`rate`]: the rate limiter that reads the provider's headers (pure).
//! - [`records`]: the records table: content hashes, writes only for new or
//!   changed records, soft deletes.
//! - [`engine`]: one run of one job, and the scheduled run over all due jobs.
//! - [`reconcile`]: jobs for a sync added after the logins, created once by
//!   the sync function (and the code path `sync schedule` shares).
//!
//! The engine gets every access token through
//! [`TokenService`](crate::refresh::TokenService), never from the store.

pub mod budget;
pub mod engine;
pub mod jobs;
pub mod pages;
pub mod rate;
pub mod reconcile;
pub mod records;

use std::cmp::Ordering;

/// Compares two cursor values as the provider means them: integers when both
/// are integers (Exact's int64 `Timestamp` arrives as a string, "1234"),
/// instants when both are RFC 3339 times (with offsets and fractions:
/// `…T01:00:00+01:00` is `…T00:00:00Z`, and `…:00.5Z` is after `…:00Z`,
/// which text comparison gets wrong), text otherwise.
pub fn compare_cursors(a: &str, b: &str) -> Ordering {
    if let (Ok(a), Ok(b)) = (a.parse::<i128>(), b.parse::<i128>()) {
        return a.cmp(&b);
    }
    match (crate::when::parse_rfc3339(a), crate::when::parse_rfc3339(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_compare_as_numbers_when_both_are_numbers() {
        assert_eq!(compare_cursors("9", "10"), Ordering::Less);
        assert_eq!(compare_cursors("10000000000", "9999999999"), Ordering::Greater);
        assert_eq!(
            compare_cursors("2026-01-02T00:00:00Z", "2026-01-10T00:00:00Z"),
            Ordering::Less
        );
        assert_eq!(compare_cursors("5", "5"), Ordering::Equal);
        // Times with offsets and fractions compare as instants, not as text.
        assert_eq!(
            compare_cursors("2026-01-02T00:30:00+01:00", "2026-01-01T23:45:00Z"),
            Ordering::Less,
            "23:30 UTC is before 23:45 UTC, though the text sorts after"
        );
        assert_eq!(
            compare_cursors("2026-01-02T00:00:00Z", "2026-01-02T00:00:00.5Z"),
            Ordering::Less,
            "text puts `Z` after `.`"
        );
        assert_eq!(
            compare_cursors("2026-01-02T01:00:00+01:00", "2026-01-02T00:00:00Z"),
            Ordering::Equal
        );
    }
}
