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
//!
//! The engine gets every access token through
//! [`TokenService`](crate::refresh::TokenService), never from the store.

pub mod budget;
pub mod engine;
pub mod jobs;
pub mod pages;
pub mod rate;
pub mod records;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::config::{ProviderSettings, fill_template};
use crate::secret::AccessToken;
use crate::telemetry::error_chain;

/// How long the login waits for a connection parameter's API call.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The value at a dotted path (`d.results.0.CurrentDivision`); a number
/// segment indexes an array. The empty path is the value itself.
pub fn value_at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, segment| match v {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A scalar as text: strings as they are, numbers and booleans printed;
/// `None` for null, arrays and objects.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

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

/// Learns the provider's connection parameters (Exact Online's division) with
/// a fresh access token, one API call each. Returns what was learned and, when
/// something could not be, why (the connection is then not synced).
pub async fn discover(
    http: &reqwest::Client,
    settings: &ProviderSettings,
    access_token: &AccessToken,
) -> (BTreeMap<String, String>, Option<String>) {
    let mut params = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, discovery) in &settings.discover {
        match discover_one(http, settings, discovery, access_token).await {
            Ok(value) => {
                params.insert(name.clone(), value);
            }
            Err(e) => errors.push(format!("`{name}`: {e}")),
        }
    }
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    (params, error)
}

async fn discover_one(
    http: &reqwest::Client,
    settings: &ProviderSettings,
    discovery: &crate::config::Discovery,
    access_token: &AccessToken,
) -> Result<String, String> {
    let url = fill_template(&discovery.url, &settings.params, &[]).map_err(|e| e.to_string())?;
    let response = http
        .get(&url)
        .bearer_auth(access_token.secret())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(DISCOVERY_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("the API call failed: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the answer failed: {}", error_chain(&e)))?;
    if !status.is_success() {
        return Err(format!(
            "the API answered HTTP {}: {}",
            status.as_u16(),
            crate::oauth::excerpt(&String::from_utf8_lossy(&body), &[access_token.secret()])
        ));
    }
    let json: Value = serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    value_at(&json, &discovery.field)
        .and_then(scalar_text)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("the answer has no `{}`", discovery.field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let v = serde_json::json!({"d": {"results": [{"CurrentDivision": 42}]}});
        assert_eq!(
            value_at(&v, "d.results.0.CurrentDivision"),
            Some(&serde_json::json!(42))
        );
        assert_eq!(value_at(&v, "d.results.1"), None);
        assert_eq!(value_at(&v, ""), Some(&v));
        assert_eq!(scalar_text(&serde_json::json!(42)).as_deref(), Some("42"));
        assert_eq!(scalar_text(&Value::Null), None);
    }

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
