//! `[syncs.NAME]`: what one sync pulls from a provider's data API and how.
//! Provider-wide facts (pagination style, record path, primary key, the
//! incremental filter, rate-limit headers) come from the provider's preset,
//! so a sync names only what is its own.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::limits::NameChars;
use super::{DeletedFeed, FieldProblem, IncrementalFilter, Pagination, Provider, all_problems, limits};

/// How a sync pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Only what changed since the stored cursor (`cursor_field`), in
    /// ascending cursor order.
    Incremental,
    /// Microsoft Graph delta queries: follow `@odata.nextLink` to the
    /// `@odata.deltaLink` and keep it; `@removed` items are deletions.
    Delta,
    /// Everything, every run; records not seen in a complete run are marked deleted.
    Full,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Incremental => "incremental",
            SyncMode::Delta => "delta",
            SyncMode::Full => "full",
        }
    }
}

/// A user's `[syncs.NAME]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncEntry {
    provider: String,
    endpoint: String,
    #[serde(default)]
    query: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    records: Option<String>,
    primary_key: Option<Vec<String>>,
    fields: Option<BTreeMap<String, String>>,
    pagination: Option<Pagination>,
    mode: Option<SyncMode>,
    cursor_field: Option<String>,
    deleted_entity_type: Option<i64>,
    sweep_interval_secs: Option<u64>,
    interval_secs: Option<u64>,
}

/// One configured sync, resolved against its provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sync {
    pub name: String,
    /// The provider (a key of `[providers]`) whose connections this sync pulls.
    pub provider: String,
    /// Path under the provider's `api_base_url`, or a full URL; `{division}`
    /// and other connection parameters are filled per connection.
    pub endpoint: String,
    /// Query parameters sent on the first page (`$select`, `$filter`).
    pub query: BTreeMap<String, String>,
    /// Extra request headers (`Xero-Tenant-Id = "{tenant_id}"`).
    pub headers: BTreeMap<String, String>,
    /// Dotted path of the record array in a page; empty: the page is the array.
    pub records: String,
    /// The field(s) whose values make a record's id.
    pub primary_key: Vec<String>,
    /// Output name → field of the provider's record; `None` keeps every field.
    pub fields: Option<BTreeMap<String, String>>,
    pub pagination: Pagination,
    pub mode: SyncMode,
    pub cursor_field: Option<String>,
    /// How the cursor is sent (from the provider), for `incremental`.
    pub incremental: Option<IncrementalFilter>,
    /// The provider's deleted-records feed and this sync's entity type in it.
    pub deleted: Option<(DeletedFeed, i64)>,
    /// An `incremental` sync re-reads everything this often to find deletions
    /// when there is no deleted-records feed.
    pub sweep_interval_secs: Option<u64>,
    /// Seconds between runs.
    pub interval_secs: u64,
}

/// Where the records are for a pagination style that implies it.
fn default_records(pagination: &Pagination) -> Option<&str> {
    match pagination {
        Pagination::OdataV2 => Some("d.results"),
        Pagination::OdataNextLink => Some("value"),
        Pagination::NextRecordsUrl => Some("records"),
        Pagination::Cursor { items_field, .. } => Some(items_field),
        Pagination::LinkHeader | Pagination::Offset { .. } | Pagination::PageNumber { .. } => None,
    }
}

/// Every problem of one sync table: its name, and the first problem of its
/// settings. A sync of a provider in `broken` (one whose own table has a
/// mistake, reported there) is checked only for its name: what the rest
/// means depends on the provider. Such a sync with a good name is `Err`
/// with no problem of its own.
pub(crate) fn resolve(
    name: &str,
    entry: SyncEntry,
    providers: &BTreeMap<String, Provider>,
    broken: &BTreeSet<String>,
) -> Result<Sync, Vec<FieldProblem>> {
    let mut problems: Vec<FieldProblem> =
        limits::check_name("sync", name, NameChars::Mixed, "it is part of record keys")
            .err()
            .into_iter()
            .collect();
    let numbers = [
        ("interval_secs", entry.interval_secs.map(i128::from)),
        ("sweep_interval_secs", entry.sweep_interval_secs.map(i128::from)),
        ("deleted_entity_type", entry.deleted_entity_type.map(i128::from)),
    ];
    for (key, value) in numbers {
        if let Some(Err(problem)) = value.map(|value| limits::check_whole(key, value)) {
            problems.push(problem);
        }
    }
    let provider = match providers.get(&entry.provider) {
        Some(provider) => provider,
        None if broken.contains(&entry.provider) => return Err(problems),
        None => {
            let known = providers
                .keys()
                .chain(broken)
                .map(String::as_str)
                .collect::<BTreeSet<_>>();
            let known = known.into_iter().collect::<Vec<_>>().join(", ");
            problems.push((
                "provider",
                format!("unknown provider `{}` (configured: {known})", entry.provider),
            ));
            return Err(problems);
        }
    };
    all_problems(problems, resolve_with(name, entry, provider))
}

/// The sync its table and its provider make, or the first problem.
///
/// One function: a list of checks in the order of the table's keys, each
/// depending on the ones before (mode, then cursor, then pagination), as
/// docs/configuration.md lists them.
fn resolve_with(name: &str, entry: SyncEntry, provider: &Provider) -> Result<Sync, FieldProblem> {
    let settings = &provider.settings;
    let endpoint = entry.endpoint.trim();
    if endpoint.is_empty() {
        return Err(("endpoint", "must not be empty".to_owned()));
    }
    if !endpoint.starts_with('/') && !endpoint.starts_with("https://") && !endpoint.starts_with("http://") {
        return Err((
            "endpoint",
            format!("`{endpoint}` must start with `/` (under api_base_url) or be a full http(s) URL"),
        ));
    }
    if endpoint.starts_with('/') && settings.api_base_url.is_none() {
        return Err((
            "endpoint",
            format!(
                "provider `{}` has no `api_base_url`, so the endpoint must be a full URL",
                provider.name
            ),
        ));
    }
    let pagination = entry.pagination.or_else(|| settings.pagination.clone()).ok_or((
        "pagination",
        format!(
            "provider `{}` has no pagination style; set `pagination = {{ style = ... }}`",
            provider.name
        ),
    ))?;
    let records = entry
        .records
        .or_else(|| default_records(&pagination).map(str::to_owned))
        .or_else(|| settings.records_path.clone())
        .unwrap_or_default();
    let primary_key = entry.primary_key.unwrap_or_else(|| settings.record_key.clone());
    if primary_key.is_empty() || primary_key.iter().any(|k| k.trim().is_empty()) {
        return Err((
            "primary_key",
            "name the record's primary key field(s): `primary_key = [\"id\"]`".to_owned(),
        ));
    }
    if let Some(fields) = &entry.fields {
        if fields.is_empty() {
            return Err((
                "fields",
                "an empty field list would store empty records; leave `fields` out to keep every field".to_owned(),
            ));
        }
        if let Some((name, _)) = fields.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
            return Err(("fields", format!("field `{name}` needs a source field name")));
        }
    }
    let mode = entry.mode.unwrap_or(SyncMode::Full);
    let incremental = match mode {
        SyncMode::Incremental if matches!(pagination, Pagination::Offset { .. } | Pagination::PageNumber { .. }) => {
            // Rows ordered by a cursor that changes shift under a position:
            // a record updated during the pass moves to the end and the one
            // after it slides into a page already read, skipped for good
            // once the cursor passes it.
            return Err((
                "mode",
                "`incremental` cannot page by offset or page number: a record changed during a pass shifts the \
                 rows after it, and one would be skipped; use `full` (with deletion detection) or a provider \
                 link or cursor style"
                    .to_owned(),
            ));
        }
        SyncMode::Incremental => {
            if entry.cursor_field.as_deref().is_none_or(str::is_empty) {
                return Err(("cursor_field", "an incremental sync needs `cursor_field`".to_owned()));
            }
            Some(settings.incremental.clone().ok_or((
                "mode",
                format!(
                    "provider `{}` has no `incremental` filter (how to ask for changes since a cursor); set it on the provider",
                    provider.name
                ),
            ))?)
        }
        SyncMode::Delta => {
            if pagination != Pagination::OdataNextLink {
                return Err((
                    "mode",
                    "`delta` follows `@odata.deltaLink`: it needs pagination style `odata_next_link`".to_owned(),
                ));
            }
            None
        }
        SyncMode::Full => None,
    };
    if mode != SyncMode::Incremental && entry.cursor_field.is_some() {
        return Err((
            "cursor_field",
            format!(
                "only an incremental sync has a cursor (this one is `{}`)",
                mode.as_str()
            ),
        ));
    }
    let deleted = match entry.deleted_entity_type {
        None => None,
        Some(entity_type) => {
            let feed = settings.deleted_feed.clone().ok_or((
                "deleted_entity_type",
                format!("provider `{}` has no deleted-records feed", provider.name),
            ))?;
            if mode != SyncMode::Incremental {
                return Err((
                    "deleted_entity_type",
                    "the deleted-records feed serves incremental syncs (a full sync finds deletions itself)".to_owned(),
                ));
            }
            Some((feed, entity_type))
        }
    };
    if entry.sweep_interval_secs.is_some() && mode != SyncMode::Incremental {
        return Err((
            "sweep_interval_secs",
            "only an incremental sync sweeps (a full sync sweeps every run)".to_owned(),
        ));
    }
    let interval_secs = entry.interval_secs.unwrap_or(3600);
    if let Some(sweep) = entry.sweep_interval_secs
        && sweep < interval_secs
    {
        return Err((
            "sweep_interval_secs",
            format!("{sweep} is shorter than `interval_secs` ({interval_secs})"),
        ));
    }
    Ok(Sync {
        name: name.to_owned(),
        provider: entry.provider,
        endpoint: endpoint.to_owned(),
        query: entry.query,
        headers: entry.headers,
        records,
        primary_key,
        fields: entry.fields,
        pagination,
        mode,
        cursor_field: entry.cursor_field,
        incremental,
        deleted,
        sweep_interval_secs: entry.sweep_interval_secs,
        interval_secs,
    })
}

impl Sync {
    /// What makes this sync's jobs: its name (a job is a (connection, sync)
    /// pair) and its provider (whose active connections get one). The rest
    /// of a sync's settings change how its jobs run, not which jobs exist.
    pub fn job_key(&self) -> String {
        format!("{}\t{}", self.name, self.provider)
    }

    /// A fingerprint of a set of syncs as far as jobs go (the
    /// [`Sync::job_key`] of each, sorted): SHA-256, base64url. Equal
    /// fingerprints mean the same jobs are wanted; the sync function
    /// compares the configuration's with the one its jobs were last
    /// reconciled for (`sync::reconcile`).
    pub fn jobs_fingerprint<'a>(syncs: impl IntoIterator<Item = &'a Sync>) -> String {
        let mut keys: Vec<String> = syncs.into_iter().map(Sync::job_key).collect();
        keys.sort_unstable();
        crate::crypto::sha256_b64url(keys.join("\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::Sync;
    use crate::config::Config;

    fn fingerprint(syncs: &str) -> String {
        let text = format!(
            "[providers.a]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\n\
             [providers.b]\npreset = \"microsoft\"\ncredentials_secret = \"s\"\n{syncs}"
        );
        let config = Config::parse(&text, "oauth-sync.toml").unwrap_or_else(|e| panic!("{e}"));
        Sync::jobs_fingerprint(config.syncs.values())
    }

    const USERS: &str = "[syncs.users]\nprovider = \"a\"\nendpoint = \"/users\"\n";
    const GROUPS: &str = "[syncs.groups]\nprovider = \"a\"\nendpoint = \"/groups\"\n";

    #[test]
    fn the_jobs_fingerprint_changes_with_the_jobs_a_configuration_wants_and_nothing_else() {
        let both = fingerprint(&format!("{USERS}{GROUPS}"));
        assert_eq!(both, fingerprint(&format!("{GROUPS}{USERS}")), "order does not matter");
        assert_ne!(both, fingerprint(USERS), "a sync added or removed");
        let moved = GROUPS.replace("\"a\"", "\"b\"");
        assert_ne!(
            both,
            fingerprint(&format!("{USERS}{moved}")),
            "a sync moved to another provider"
        );
        let slower = format!("{USERS}{GROUPS}interval_secs = 86400\n");
        assert_eq!(both, fingerprint(&slower), "how a job runs is not which jobs exist");
    }
}
