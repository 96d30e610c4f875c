//! Data APIs for a sync engine to page through, in the style of Exact Online
//! (OData v2 under `/api/v1`) and Microsoft Graph (under `/v1.0`), as their
//! documentation describes them: Exact's REST API reference
//! (<https://start.exactonline.nl/docs/HlpRestAPIResources.aspx>, each
//! endpoint at `HlpRestAPIResourcesDetails.aspx?name=SyncProjectProjects`,
//! `…=SyncDeleted`), Graph's paging and delta query pages
//! (<https://learn.microsoft.com/en-us/graph/paging>,
//! <https://learn.microsoft.com/en-us/graph/delta-query-overview>,
//! <https://learn.microsoft.com/en-us/graph/delta-query-users>).
//! docs/simulator.md lists what is served.
//!
//! Records live in B-tree indexes (projects by `ID` and by `Timestamp`, the
//! deleted feed and the contact and user changes by sequence), so one page
//! costs O(page + log n) whatever the size of the data: a sync test pulls
//! 10,000 records and a benchmark does so repeatedly.
//!
//! Everything a provider would notice about a request is checked: the bearer
//! token against the simulator's token state, the division, the per-division
//! rate limits and error block, `Accept: application/json` on Exact, and the
//! `$filter`, `$select` (mandatory on Exact's `bulk/` and `sync/`) and paging
//! tokens, strictly. Where a provider documents the least it promises (Graph:
//! an updated directory object carries "at least" its changed properties),
//! the simulator gives exactly that least, so a client that copes here copes
//! there. What the simulator saw is counted and logged for tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::MutexGuard;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Simulator, one};

/// How the data APIs behave. The defaults are the providers' documented ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataConfig {
    /// Exact Online: the one division the user may reach; `current/Me`
    /// reports it as a JSON number, any other division answers 403.
    pub division: i64,
    /// Exact Online's per-division limits; `None` switches rate limiting off
    /// entirely (no rate-limit headers at all), for tests and benchmarks that
    /// are not about limits.
    pub rate_limit: Option<RateLimits>,
    /// The `EntityType` under which project deletions appear in
    /// `sync/Deleted`. `None` (the default): they do not appear, as Exact
    /// documents no code for projects, so a client must sweep instead.
    pub project_deleted_entity_type: Option<i32>,
    /// Records per page on Exact's normal endpoints (60).
    pub page_size: usize,
    /// Records per page on Exact's `sync/` endpoints (1,000).
    pub sync_page_size: usize,
    /// Graph's page size when the client asks for none (100).
    pub graph_page_size: usize,
    /// The largest page Graph serves, whatever the client asks for (999).
    pub graph_max_page_size: usize,
    /// Exact answers XML unless the request sends `Accept: application/json`
    /// (its default is XML); `false` serves JSON regardless.
    pub require_json_accept: bool,
    /// Exact Online's error block: too many answers of 400, 401, 403 or 404
    /// for one key within a window block the key. `None` switches it off.
    pub error_block: Option<ErrorBlock>,
}

impl Default for DataConfig {
    fn default() -> DataConfig {
        DataConfig {
            division: 3_155_812,
            rate_limit: Some(RateLimits::default()),
            project_deleted_entity_type: None,
            page_size: 60,
            sync_page_size: 1_000,
            graph_page_size: 100,
            graph_max_page_size: 999,
            require_json_accept: true,
            error_block: Some(ErrorBlock::default()),
        }
    }
}

/// Exact Online's limits per division: fixed windows, each starting at the
/// first request after the previous one ended. Windows are configurable so
/// that tests can see a reset without waiting a minute or a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    pub minutely: u32,
    #[serde(rename = "minute_window_ms", with = "millis")]
    pub minute_window: Duration,
    pub daily: u32,
    #[serde(rename = "day_window_ms", with = "millis")]
    pub day_window: Duration,
}

impl Default for RateLimits {
    /// 60 a minute and 5,000 a day, as Exact documents.
    fn default() -> RateLimits {
        RateLimits {
            minutely: 60,
            minute_window: Duration::from_secs(60),
            daily: 5_000,
            day_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// Exact Online's error limit: more than `errors` answers of 400, 401, 403
/// or 404 within `window` block the key for `block` (Exact: 10 an hour, an
/// hour's block; its "will gradually increase" for repeat offenders is not
/// modelled). Windows are configurable so that tests can see a block lift.
///
/// Exact counts per API key, user, company (division) and endpoint; the
/// simulator counts per division only, over all endpoints, and blocks the
/// whole division: stricter, so a client that never trips it here never
/// trips it at Exact. The window is rolling (the errors of the last
/// `window`), so errors cannot hide on both sides of a fixed window's edge.
/// Only URLs with a division count (`current/Me` has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBlock {
    /// The most errors allowed within `window`; one more blocks the key.
    pub errors: u32,
    #[serde(rename = "window_ms", with = "millis")]
    pub window: Duration,
    #[serde(rename = "block_ms", with = "millis")]
    pub block: Duration,
}

impl Default for ErrorBlock {
    /// 10 errors an hour, an hour's block, as Exact documents.
    fn default() -> ErrorBlock {
        ErrorBlock {
            errors: 10,
            window: Duration::from_secs(3600),
            block: Duration::from_secs(3600),
        }
    }
}

/// Durations as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Something to go wrong on the next matching data request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataFault {
    /// Answer with this status (e.g. 500, 502, 503) without serving. With a
    /// large `times`, a lasting refusal until [`Simulator::clear_data_faults`]:
    /// a 403 for a division whose administrator has not granted the app its
    /// rights yet. On Exact, 400, 401, 403 and 404 count toward the error block.
    Status { status: u16 },
    /// Answer with this status and `Retry-After: secs` without serving (a
    /// Graph-style 429; with a large `times`, a 429 storm).
    RetryAfter { status: u16, secs: u64 },
    /// A slow page: wait this long, then serve normally.
    Delay { millis: u64 },
    /// Serve the page, but cut its JSON body in half.
    Truncated,
    /// Answer 200 with an HTML page instead of JSON (a proxy's error page),
    /// without serving.
    InvalidJson,
}

/// A fault for the next `times` data requests whose path and query contain
/// `path_contains` (any data request when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFaultPlan {
    pub fault: DataFault,
    #[serde(default = "one")]
    pub times: u32,
    #[serde(default)]
    pub path_contains: Option<String>,
}

/// One data request as the simulator answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRequest {
    /// As the client sent it (percent-encoding included).
    pub path_and_query: String,
    pub status: u16,
    /// When it was answered, epoch milliseconds (to check a client's backoff).
    pub at_ms: u64,
}

/// Commands of `POST /_sim/data`, for processes that cannot call the Rust API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DataCommand {
    /// Answers `{"ids": [...]}`.
    SeedProjects {
        count: usize,
    },
    /// Answers `{"id": ...}`.
    InsertProject {
        code: String,
        description: String,
    },
    /// Answers `{"updated": true}`, or 404 for an unknown id.
    UpdateProject {
        id: String,
        description: String,
    },
    /// One shared `Timestamp` for all of them; answers `{"updated": n}`.
    UpdateProjectsTogether {
        ids: Vec<String>,
        description: String,
    },
    /// Answers `{"deleted": true}`, or 404 for an unknown id.
    DeleteProject {
        id: String,
    },
    /// Answers `{"projects": [...]}`.
    Projects,
    SeedContacts {
        count: usize,
    },
    InsertContact {
        given_name: String,
        surname: String,
        email: String,
    },
    UpdateContact {
        id: String,
        display_name: String,
    },
    DeleteContact {
        id: String,
    },
    /// Answers `{"contacts": [...]}`.
    Contacts,
    /// Answers `{"ids": [...]}`.
    SeedUsers {
        count: usize,
    },
    /// Answers `{"id": ...}`.
    InsertUser {
        given_name: String,
        surname: String,
    },
    /// Answers `{"updated": true}`, or 404 for an unknown id.
    UpdateUserJobTitle {
        id: String,
        job_title: Option<String>,
    },
    /// Answers `{"updated": true}`, or 404 for an unknown id.
    UpdateUserDisplayName {
        id: String,
        display_name: String,
    },
    /// A soft deletion (`@removed` reason `changed`); answers
    /// `{"deleted": true}`, or 404 for an unknown id.
    DeleteUser {
        id: String,
    },
    /// A permanent deletion (`@removed` reason `deleted`), of a live or a
    /// soft-deleted user; answers `{"deleted": true}`, or 404.
    PurgeUser {
        id: String,
    },
    /// Answers `{"users": [...]}`.
    Users,
    /// Every delta token issued so far answers 410 from now on.
    ExpireDeltaTokens,
    /// Forgets the rate-limit windows (every division starts afresh).
    ResetRateLimits,
    /// `null` switches rate limiting off.
    SetRateLimit {
        rate_limit: Option<RateLimits>,
    },
    SetProjectDeletedEntityType {
        entity_type: Option<i32>,
    },
    /// `null` switches Exact's error block off.
    SetErrorBlock {
        error_block: Option<ErrorBlock>,
    },
    /// Forgets the errors counted and lifts every block.
    ResetErrorBlocks,
    /// Drops every queued data fault (a lasting 403 ends).
    ClearDataFaults,
    /// Answers `{"division": n}`.
    Division,
    /// Answers `{"requests": [...]}`, the data request log.
    Requests,
}

/// The data APIs' records, indexes, rate windows, faults and request log.
#[derive(Debug)]
pub(crate) struct DataStore {
    /// Makes ids differ between simulator instances.
    salt: u64,
    ids_issued: u64,
    /// Exact's global row version: every insert, update and delete takes the next one.
    row_version: i64,
    codes_issued: u64,
    projects: BTreeMap<String, Project>,
    /// Project ids by `Timestamp` (a group when an update shared one).
    projects_by_timestamp: BTreeMap<i64, BTreeSet<String>>,
    deleted: BTreeMap<i64, Deleted>,
    /// Graph's change sequence: every contact change takes the next one.
    contact_seq: u64,
    contacts: BTreeMap<String, Contact>,
    /// The latest change of each contact, live or removed, by sequence.
    contact_changes: BTreeMap<u64, Change>,
    /// Graph's change sequence of the directory's users.
    user_seq: u64,
    users: BTreeMap<String, User>,
    /// Soft-deleted users (restorable at Graph for 30 days), until purged.
    deleted_users: BTreeMap<String, DeletedUser>,
    /// The latest change of each user, live or removed, by sequence.
    user_changes: BTreeMap<u64, Change>,
    /// Delta tokens carry it; a token of another epoch answers 410.
    delta_epoch: u64,
    buckets: HashMap<i64, RateBucket>,
    /// Exact's error counts and blocks, by division.
    error_keys: HashMap<i64, ErrorKey>,
    faults: VecDeque<DataFaultPlan>,
    log: Vec<DataRequest>,
}

#[derive(Debug)]
struct Project {
    id: String,
    code: String,
    description: String,
    timestamp: i64,
    modified_ms: u64,
}

#[derive(Debug)]
struct Deleted {
    id: String,
    entity_key: String,
    entity_type: i32,
    division: i64,
    deleted_ms: u64,
}

#[derive(Debug)]
struct Contact {
    id: String,
    given_name: String,
    surname: String,
    display_name: String,
    email: String,
    modified_ms: u64,
    seq: u64,
}

/// A directory user (Graph `/users`). Unlike a contact, a user changed since
/// a delta round's start comes back with only `id` and what changed.
#[derive(Debug)]
struct User {
    id: String,
    display_name: String,
    given_name: String,
    surname: String,
    job_title: Option<String>,
    mail: String,
    user_principal_name: String,
    office_location: Option<String>,
    /// The change that created it: a round that started before it has never
    /// seen it, and gets the whole object.
    created_seq: u64,
    /// Its latest change (its key in `user_changes`).
    seq: u64,
    /// Each property's latest change, for the partial updates of delta.
    changed: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct DeletedUser {
    /// The soft deletion's key in `user_changes`.
    seq: u64,
}

#[derive(Debug)]
enum Change {
    Live(String),
    /// Gone for good: `@removed` with reason `deleted`.
    Removed(String),
    /// Soft-deleted, still restorable: `@removed` with reason `changed`
    /// (Graph's directory objects; contacts are never soft-deleted).
    SoftDeleted(String),
}

/// Where Exact's row version starts: above 32 bits, so that a client that
/// reads it into an `i32` (or a JSON number into an `f32`) fails at once.
const FIRST_ROW_VERSION: i64 = 10_000_000_000;

impl DataStore {
    pub(crate) fn new() -> DataStore {
        let random = std::collections::hash_map::RandomState::new();
        DataStore {
            salt: random.hash_one(0u8),
            ids_issued: 0,
            row_version: FIRST_ROW_VERSION,
            codes_issued: 0,
            projects: BTreeMap::new(),
            projects_by_timestamp: BTreeMap::new(),
            deleted: BTreeMap::new(),
            contact_seq: 0,
            contacts: BTreeMap::new(),
            contact_changes: BTreeMap::new(),
            user_seq: 0,
            users: BTreeMap::new(),
            deleted_users: BTreeMap::new(),
            user_changes: BTreeMap::new(),
            delta_epoch: random.hash_one(1u8),
            buckets: HashMap::new(),
            error_keys: HashMap::new(),
            faults: VecDeque::new(),
            log: Vec::new(),
        }
    }

    /// 128 random-looking bits, unique: the first 64 are a bijection of the counter.
    fn new_id_bits(&mut self) -> (u64, u64) {
        self.ids_issued += 1;
        let high = splitmix(self.salt.wrapping_add(self.ids_issued));
        (high, splitmix(high ^ self.salt.rotate_left(17)))
    }

    fn new_guid(&mut self) -> String {
        let (high, low) = self.new_id_bits();
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        )
    }

    fn next_row_version(&mut self) -> i64 {
        self.row_version += 1;
        self.row_version
    }

    fn insert_project(&mut self, code: &str, description: &str) -> String {
        let id = self.new_guid();
        let timestamp = self.next_row_version();
        self.projects_by_timestamp
            .entry(timestamp)
            .or_default()
            .insert(id.clone());
        let project = Project {
            id: id.clone(),
            code: code.to_owned(),
            description: description.to_owned(),
            timestamp,
            modified_ms: now_ms(),
        };
        self.projects.insert(id.clone(), project);
        id
    }

    fn seed_projects(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| {
                self.codes_issued += 1;
                let n = self.codes_issued;
                self.insert_project(&format!("P{n:05}"), &format!("Project {n}"))
            })
            .collect()
    }

    /// Moves a project to `timestamp` in the index.
    fn retimestamp(&mut self, id: &str, timestamp: i64) {
        let Some(project) = self.projects.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut project.timestamp, timestamp);
        project.modified_ms = now_ms();
        if let Some(group) = self.projects_by_timestamp.get_mut(&old) {
            group.remove(id);
            if group.is_empty() {
                self.projects_by_timestamp.remove(&old);
            }
        }
        self.projects_by_timestamp
            .entry(timestamp)
            .or_default()
            .insert(id.to_owned());
    }

    /// Updates the known ones among `ids` under one shared `Timestamp`.
    fn update_projects(&mut self, ids: &[&str], description: &str) -> usize {
        let known: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| self.projects.contains_key(*id))
            .collect();
        if known.is_empty() {
            return 0;
        }
        let timestamp = self.next_row_version();
        for id in &known {
            if let Some(project) = self.projects.get_mut(*id) {
                project.description = description.to_owned();
            }
            self.retimestamp(id, timestamp);
        }
        known.len()
    }

    fn delete_project(&mut self, id: &str, logged_as: Option<i32>, division: i64) -> bool {
        let Some(project) = self.projects.remove(id) else {
            return false;
        };
        if let Some(group) = self.projects_by_timestamp.get_mut(&project.timestamp) {
            group.remove(id);
            if group.is_empty() {
                self.projects_by_timestamp.remove(&project.timestamp);
            }
        }
        let timestamp = self.next_row_version();
        if let Some(entity_type) = logged_as {
            let entry = Deleted {
                id: self.new_guid(),
                entity_key: project.id,
                entity_type,
                division,
                deleted_ms: now_ms(),
            };
            self.deleted.insert(timestamp, entry);
        }
        true
    }

    fn next_contact_seq(&mut self) -> u64 {
        self.contact_seq += 1;
        self.contact_seq
    }

    fn insert_contact(&mut self, given_name: &str, surname: &str, email: &str) -> String {
        let (high, low) = self.new_id_bits();
        let mut bytes = high.to_be_bytes().to_vec();
        bytes.extend_from_slice(&low.to_be_bytes());
        // Graph ids are long opaque base64 strings, `=` and `-` included.
        let id = format!("AAMkAD{}", URL_SAFE.encode(bytes));
        let seq = self.next_contact_seq();
        let contact = Contact {
            id: id.clone(),
            given_name: given_name.to_owned(),
            surname: surname.to_owned(),
            display_name: format!("{given_name} {surname}"),
            email: email.to_owned(),
            modified_ms: now_ms(),
            seq,
        };
        self.contacts.insert(id.clone(), contact);
        self.contact_changes.insert(seq, Change::Live(id.clone()));
        id
    }

    fn seed_contacts(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| {
                let n = self.contact_seq + 1;
                self.insert_contact(
                    &format!("Given{n}"),
                    &format!("Surname{n}"),
                    &format!("contact{n}@example.com"),
                )
            })
            .collect()
    }

    fn update_contact(&mut self, id: &str, display_name: &str) -> bool {
        if !self.contacts.contains_key(id) {
            return false;
        }
        let seq = self.next_contact_seq();
        let Some(contact) = self.contacts.get_mut(id) else {
            return false;
        };
        let old = std::mem::replace(&mut contact.seq, seq);
        contact.display_name = display_name.to_owned();
        contact.modified_ms = now_ms();
        self.contact_changes.remove(&old);
        self.contact_changes.insert(seq, Change::Live(id.to_owned()));
        true
    }

    fn delete_contact(&mut self, id: &str) -> bool {
        let Some(contact) = self.contacts.remove(id) else {
            return false;
        };
        self.contact_changes.remove(&contact.seq);
        let seq = self.next_contact_seq();
        self.contact_changes.insert(seq, Change::Removed(contact.id));
        true
    }

    fn next_user_seq(&mut self) -> u64 {
        self.user_seq += 1;
        self.user_seq
    }

    fn insert_user(&mut self, given_name: &str, surname: &str) -> String {
        let id = self.new_guid();
        let seq = self.next_user_seq();
        let nick = format!("{given_name}.{surname}").to_ascii_lowercase();
        let user = User {
            id: id.clone(),
            display_name: format!("{given_name} {surname}"),
            given_name: given_name.to_owned(),
            surname: surname.to_owned(),
            job_title: None,
            mail: format!("{nick}@contoso.example"),
            user_principal_name: format!("{nick}@contoso.example"),
            office_location: Some("Amsterdam".to_owned()),
            created_seq: seq,
            seq,
            changed: BTreeMap::new(),
        };
        self.users.insert(id.clone(), user);
        self.user_changes.insert(seq, Change::Live(id.clone()));
        id
    }

    fn seed_users(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| {
                let n = self.user_seq + 1;
                self.insert_user(&format!("Given{n}"), &format!("User{n}"))
            })
            .collect()
    }

    /// Changes one property of a user: a new change, remembered per property.
    fn update_user(&mut self, id: &str, property: &'static str, change: impl FnOnce(&mut User)) -> bool {
        if !self.users.contains_key(id) {
            return false;
        }
        let seq = self.next_user_seq();
        let Some(user) = self.users.get_mut(id) else {
            return false;
        };
        change(user);
        user.changed.insert(property, seq);
        let old = std::mem::replace(&mut user.seq, seq);
        self.user_changes.remove(&old);
        self.user_changes.insert(seq, Change::Live(id.to_owned()));
        true
    }

    fn delete_user(&mut self, id: &str) -> bool {
        let Some(user) = self.users.remove(id) else {
            return false;
        };
        self.user_changes.remove(&user.seq);
        let seq = self.next_user_seq();
        self.user_changes.insert(seq, Change::SoftDeleted(user.id.clone()));
        self.deleted_users.insert(user.id, DeletedUser { seq });
        true
    }

    fn purge_user(&mut self, id: &str) -> bool {
        let old = match (self.users.remove(id), self.deleted_users.remove(id)) {
            (Some(user), _) => user.seq,
            (None, Some(deleted)) => deleted.seq,
            (None, None) => return false,
        };
        self.user_changes.remove(&old);
        let seq = self.next_user_seq();
        self.user_changes.insert(seq, Change::Removed(id.to_owned()));
        true
    }

    fn take_fault(&mut self, path_and_query: &str) -> Option<DataFault> {
        let index = self.faults.iter().position(|p| {
            p.path_contains
                .as_deref()
                .is_none_or(|part| path_and_query.contains(part))
        })?;
        let plan = &mut self.faults[index];
        let fault = plan.fault.clone();
        plan.times = plan.times.saturating_sub(1);
        if plan.times == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Rate limits

/// One limit as the headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateWindow {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Epoch milliseconds, as Exact reports resets.
    pub(crate) reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted {
        daily: RateWindow,
        minutely: RateWindow,
    },
    /// Refused by the minutely limit: only the minutely headers go out.
    MinuteExceeded(RateWindow),
    /// Refused by the daily limit: only the daily headers go out.
    DayExceeded(RateWindow),
}

/// A division's two fixed windows.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RateBucket {
    minute: WindowCount,
    day: WindowCount,
}

#[derive(Debug, Clone, Copy, Default)]
struct WindowCount {
    start_ms: Option<u64>,
    used: u32,
}

impl WindowCount {
    fn active_start(&self, now_ms: u64, length_ms: u64) -> Option<u64> {
        self.start_ms.filter(|start| now_ms < start.saturating_add(length_ms))
    }

    /// A window ends `length_ms` after its first request; the next request opens a new one.
    fn roll(&mut self, now_ms: u64, length_ms: u64) {
        if self.active_start(now_ms, length_ms).is_none() {
            *self = WindowCount {
                start_ms: Some(now_ms),
                used: 0,
            };
        }
    }

    fn view(&self, now_ms: u64, limit: u32, length_ms: u64) -> RateWindow {
        match self.active_start(now_ms, length_ms) {
            Some(start) => RateWindow {
                limit,
                remaining: limit.saturating_sub(self.used),
                reset_ms: start.saturating_add(length_ms),
            },
            None => RateWindow {
                limit,
                remaining: limit,
                reset_ms: now_ms.saturating_add(length_ms),
            },
        }
    }
}

impl RateBucket {
    /// Counts a request, or refuses it (a refused request is not counted).
    /// The daily limit is checked first: when both are spent, waiting for
    /// the minute would not help.
    pub(crate) fn admit(&mut self, now_ms: u64, limits: &RateLimits) -> Admission {
        let (minute_ms, day_ms) = (duration_ms(limits.minute_window), duration_ms(limits.day_window));
        self.minute.roll(now_ms, minute_ms);
        self.day.roll(now_ms, day_ms);
        if self.day.used >= limits.daily {
            return Admission::DayExceeded(self.day.view(now_ms, limits.daily, day_ms));
        }
        if self.minute.used >= limits.minutely {
            return Admission::MinuteExceeded(self.minute.view(now_ms, limits.minutely, minute_ms));
        }
        self.minute.used += 1;
        self.day.used += 1;
        Admission::Admitted {
            daily: self.day.view(now_ms, limits.daily, day_ms),
            minutely: self.minute.view(now_ms, limits.minutely, minute_ms),
        }
    }

    /// The state without counting a request (for answers refused before the
    /// limits apply: 401, 403). Returns (daily, minutely).
    pub(crate) fn peek(&self, now_ms: u64, limits: &RateLimits) -> (RateWindow, RateWindow) {
        (
            self.day.view(now_ms, limits.daily, duration_ms(limits.day_window)),
            self.minute
                .view(now_ms, limits.minutely, duration_ms(limits.minute_window)),
        )
    }
}

/// One key's errors within the rolling window, and its block.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorKey {
    /// When each error still inside the window was answered (epoch ms), oldest first.
    errors: VecDeque<u64>,
    blocked_until_ms: Option<u64>,
}

impl ErrorKey {
    /// When the block lifts, while the key is blocked.
    pub(crate) fn blocked_until(&self, now_ms: u64) -> Option<u64> {
        self.blocked_until_ms.filter(|until| now_ms < *until)
    }

    /// Counts an error answered at `now_ms`; `true` when it starts a block
    /// (the errors counted so far are then spent: the block is their price).
    pub(crate) fn count_error(&mut self, now_ms: u64, rule: &ErrorBlock) -> bool {
        if self.blocked_until(now_ms).is_some() {
            return false;
        }
        let window_ms = duration_ms(rule.window);
        while self
            .errors
            .front()
            .is_some_and(|at| at.saturating_add(window_ms) <= now_ms)
        {
            self.errors.pop_front();
        }
        self.errors.push_back(now_ms);
        if self.errors.len() <= usize::try_from(rule.errors).unwrap_or(usize::MAX) {
            return false;
        }
        self.errors.clear();
        self.blocked_until_ms = Some(now_ms.saturating_add(duration_ms(rule.block)));
        true
    }
}

fn daily_headers(w: RateWindow) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", w.limit.to_string()),
        ("x-ratelimit-remaining", w.remaining.to_string()),
        ("x-ratelimit-reset", w.reset_ms.to_string()),
    ]
}

fn minutely_headers(w: RateWindow) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-minutely-limit", w.limit.to_string()),
        ("x-ratelimit-minutely-remaining", w.remaining.to_string()),
        ("x-ratelimit-minutely-reset", w.reset_ms.to_string()),
    ]
}

// ---------------------------------------------------------------------------
// Paging, filters, tokens and links (pure)

/// Up to `size` entries after `after`, in key order, among those `keep`
/// accepts; and whether another such entry follows.
pub(crate) fn page_after<'a, K: Ord, V>(
    map: &'a BTreeMap<K, V>,
    after: Option<&K>,
    size: usize,
    keep: impl Fn(&K, &V) -> bool,
) -> (Vec<(&'a K, &'a V)>, bool) {
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut kept = map.range((lower, Bound::Unbounded)).filter(|(k, v)| keep(k, v));
    let page: Vec<_> = kept.by_ref().take(size.max(1)).collect();
    let more = kept.next().is_some();
    (page, more)
}

/// Like [`page_after`] over groups sharing a key, never splitting a group (a
/// page may run over `size` to finish one): the next page starts after the
/// last key, so a split group would lose its rest.
pub(crate) fn page_groups<'a, K: Ord, V>(
    groups: &'a BTreeMap<K, BTreeSet<V>>,
    after: Option<&K>,
    size: usize,
) -> (Vec<(&'a K, &'a V)>, bool) {
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut iter = groups.range((lower, Bound::Unbounded));
    let mut page = Vec::new();
    while page.len() < size.max(1) {
        let Some((key, group)) = iter.next() else {
            return (page, false);
        };
        page.extend(group.iter().map(|v| (key, v)));
    }
    (page, iter.next().is_some())
}

/// A parsed Exact sync `$filter`: `Timestamp gt <n>L`, possibly joined with
/// `and` to other clauses (of which `EntityType eq <n>` is understood and the
/// rest is kept, verbatim, for the next link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimestampFilter {
    pub(crate) after: i64,
    pub(crate) entity_type: Option<i32>,
    /// Every clause, the timestamp clause as `None`.
    clauses: Vec<Option<String>>,
}

impl TimestampFilter {
    /// The same filter, continuing after `timestamp`.
    pub(crate) fn continuing_after(&self, timestamp: i64) -> String {
        self.clauses
            .iter()
            .map(|c| c.clone().unwrap_or_else(|| format!("Timestamp gt {timestamp}L")))
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// Parses an Exact sync `$filter` strictly. An Int64 literal carries the `L`
/// suffix (OData v2); without it, a literal is an Int32 and must fit one
/// (`Timestamp gt 1`, Exact's documented start, is fine).
pub(crate) fn parse_timestamp_filter(filter: &str) -> Result<TimestampFilter, String> {
    let mut after = None;
    let mut entity_type = None;
    let mut clauses = Vec::new();
    for clause in filter.split(" and ") {
        let words: Vec<&str> = clause.split_whitespace().collect();
        match words.as_slice() {
            [] => return Err(format!("malformed $filter `{filter}`: empty clause")),
            ["Timestamp", "gt", literal] if after.is_none() => {
                after = Some(parse_int64_literal(literal).ok_or_else(|| {
                    format!("malformed $filter `{filter}`: `{literal}` is not an Edm.Int64 literal (like 123L)")
                })?);
                clauses.push(None);
            }
            ["Timestamp", ..] => {
                return Err(format!(
                    "malformed $filter `{filter}`: expected one `Timestamp gt <n>L`"
                ));
            }
            ["EntityType", "eq", literal] if entity_type.is_none() => {
                entity_type = Some(
                    literal
                        .parse::<i32>()
                        .map_err(|_| format!("malformed $filter `{filter}`: EntityType `{literal}`"))?,
                );
                clauses.push(Some(clause.trim().to_owned()));
            }
            ["EntityType", ..] => return Err(format!("malformed $filter `{filter}`: EntityType")),
            _ => clauses.push(Some(clause.trim().to_owned())),
        }
    }
    let after = after.ok_or_else(|| format!("malformed $filter `{filter}`: no `Timestamp gt <n>L`"))?;
    Ok(TimestampFilter {
        after,
        entity_type,
        clauses,
    })
}

fn parse_int64_literal(literal: &str) -> Option<i64> {
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match literal.strip_suffix('L') {
        Some(digits) if digits_only(digits) => digits.parse().ok(),
        Some(_) => None,
        None if digits_only(literal) => literal.parse::<i32>().ok().map(i64::from),
        None => None,
    }
}

/// `$select`: which of `allowed` to return, in the order asked (all when absent).
pub(crate) fn parse_select(
    select: Option<&str>,
    allowed: &[&'static str],
    case_sensitive: bool,
) -> Result<Vec<&'static str>, String> {
    let Some(select) = select else {
        return Ok(allowed.to_vec());
    };
    if select.trim() == "*" {
        return Ok(allowed.to_vec());
    }
    let mut fields = Vec::new();
    for name in select.split(',').map(str::trim) {
        let found = allowed.iter().find(|a| {
            if case_sensitive {
                **a == name
            } else {
                a.eq_ignore_ascii_case(name)
            }
        });
        match found {
            Some(field) if !fields.contains(field) => fields.push(*field),
            Some(_) => {}
            None => return Err(format!("$select: `{name}` is not a property of this entity")),
        }
    }
    Ok(fields)
}

/// Exact's `$skiptoken=guid'<id>'`.
pub(crate) fn parse_guid_skiptoken(token: &str) -> Option<&str> {
    let guid = token.strip_prefix("guid'")?.strip_suffix('\'')?;
    let well_formed = guid.len() == 36
        && guid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    well_formed.then_some(guid)
}

/// Which Graph collection a paging token belongs to: a token of one is
/// refused by another (400), as its sequence numbers mean nothing there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// `/me/contacts`.
    Contacts,
    /// `/users`.
    Users,
}

impl Feed {
    fn tag(self) -> &'static str {
        match self {
            Feed::Contacts => "c",
            Feed::Users => "u",
        }
    }
}

/// What a Graph paging token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GraphToken {
    /// A list (`/me/contacts`, `/users`): continue after this id.
    List { after: String },
    /// A delta round in progress: changes after `after`; removals only when
    /// newer than `floor` (so the first round skips older deletions); an
    /// item created after `base` is new to the client, one created before
    /// it is an update (for users: only what changed after `base`).
    Next { after: u64, floor: u64, base: u64 },
    /// A finished round: changes after `after`.
    Delta { after: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    /// Not a token this simulator made for this collection (400).
    Garbled,
    /// A token of an earlier epoch (`expire_delta_tokens`) or another simulator (410).
    Stale,
}

impl GraphToken {
    /// An opaque token: base64url of the fields and a checksum.
    pub(crate) fn encode(&self, epoch: u64, feed: Feed) -> String {
        let feed = feed.tag();
        let payload = match self {
            GraphToken::List { after } => format!("l|{feed}|0|{after}|0|0"),
            GraphToken::Next { after, floor, base } => format!("n|{feed}|{epoch:x}|{after}|{floor}|{base}"),
            GraphToken::Delta { after } => format!("d|{feed}|{epoch:x}|{after}|0|0"),
        };
        let check = fnv1a(payload.as_bytes());
        URL_SAFE_NO_PAD.encode(format!("{payload}|{check:x}"))
    }

    pub(crate) fn decode(token: &str, epoch: u64, feed: Feed) -> Result<GraphToken, TokenProblem> {
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenProblem::Garbled)?;
        let text = String::from_utf8(bytes).map_err(|_| TokenProblem::Garbled)?;
        let (payload, check) = text.rsplit_once('|').ok_or(TokenProblem::Garbled)?;
        if format!("{:x}", fnv1a(payload.as_bytes())) != check {
            return Err(TokenProblem::Garbled);
        }
        let parts: Vec<&str> = payload.split('|').collect();
        let [kind, token_feed, token_epoch, a, b, c] = parts.as_slice() else {
            return Err(TokenProblem::Garbled);
        };
        if *token_feed != feed.tag() {
            return Err(TokenProblem::Garbled);
        }
        let number = |s: &str| s.parse::<u64>().map_err(|_| TokenProblem::Garbled);
        if *kind != "l" && u64::from_str_radix(token_epoch, 16).map_err(|_| TokenProblem::Garbled)? != epoch {
            return Err(TokenProblem::Stale);
        }
        match *kind {
            "l" => Ok(GraphToken::List { after: (*a).to_owned() }),
            "n" => Ok(GraphToken::Next {
                after: number(a)?,
                floor: number(b)?,
                base: number(c)?,
            }),
            "d" => Ok(GraphToken::Delta { after: number(a)? }),
            _ => Err(TokenProblem::Garbled),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Graph's page size: `Prefer: odata.maxpagesize=N` wins, then `$top` where
/// it applies, else the default; never above the maximum. Also whether the
/// preference was applied (for `Preference-Applied`).
pub(crate) fn graph_page_size(
    prefer: Option<&str>,
    top: Option<&str>,
    default: usize,
    max: usize,
) -> Result<(usize, Option<usize>), String> {
    let preferred = prefer.into_iter().flat_map(|p| p.split(',')).find_map(|p| {
        p.trim()
            .strip_prefix("odata.maxpagesize=")
            .and_then(|n| n.trim().parse::<usize>().ok())
    });
    let max = max.max(1);
    if let Some(n) = preferred {
        let n = n.clamp(1, max);
        return Ok((n, Some(n)));
    }
    match top {
        Some(top) => {
            let n = top
                .parse::<usize>()
                .map_err(|_| format!("Invalid value '{top}' for $top"))?;
            Ok((n.clamp(1, max), None))
        }
        None => Ok((default.clamp(1, max), None)),
    }
}

/// A query string: `pairs` in their order, with `set` replacing (or added
/// after) the same keys and `drop` left out. Encoded as providers do it:
/// `$`, `,` and `'` plain, spaces as `%20`.
pub(crate) fn query_with(pairs: &[(String, String)], set: &[(&str, &str)], drop: &[&str]) -> String {
    let mut out: Vec<(&str, &str)> = Vec::new();
    let mut done = vec![false; set.len()];
    for (key, value) in pairs {
        if drop.contains(&key.as_str()) {
            continue;
        }
        match set.iter().position(|(k, _)| k == key) {
            Some(i) if !done[i] => {
                out.push((set[i].0, set[i].1));
                done[i] = true;
            }
            Some(_) => {}
            None => out.push((key, value)),
        }
    }
    for (i, pair) in set.iter().enumerate() {
        if !done[i] {
            out.push(*pair);
        }
    }
    out.iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$,'()*:/@!;".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// RFC 3339 in UTC, whole seconds, as Graph writes `lastModifiedDateTime`.
pub(crate) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = shared::when::civil_from_days(i64::try_from(secs / 86_400).unwrap_or_default());
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// Answers

/// A data answer before it becomes HTTP.
#[derive(Debug, Clone)]
pub(crate) struct DataAnswer {
    pub(crate) status: u16,
    /// Lower-case header names.
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: DataBody,
    /// A whole, usable page of data (counted in `data_pages`).
    pub(crate) page: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum DataBody {
    Json(Value),
    Text { content_type: &'static str, text: String },
}

impl DataAnswer {
    fn json(status: u16, body: Value) -> DataAnswer {
        DataAnswer {
            status,
            headers: Vec::new(),
            body: DataBody::Json(body),
            page: false,
        }
    }

    fn page(body: Value) -> DataAnswer {
        DataAnswer {
            page: true,
            ..DataAnswer::json(200, body)
        }
    }

    fn with_headers(mut self, headers: impl IntoIterator<Item = (&'static str, String)>) -> DataAnswer {
        self.headers.extend(headers);
        self
    }

    /// The same answer with its body cut in half mid-JSON.
    pub(crate) fn truncated(self) -> DataAnswer {
        let text = match &self.body {
            DataBody::Json(value) => value.to_string(),
            DataBody::Text { text, .. } => text.clone(),
        };
        let mut cut = text.len() / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        DataAnswer {
            body: DataBody::Text {
                content_type: "application/json",
                text: text[..cut].to_owned(),
            },
            page: false,
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Exact,
    Graph,
}

fn api_of(path: &str) -> Api {
    if path.starts_with("/v1.0/") {
        Api::Graph
    } else {
        Api::Exact
    }
}

/// Exact's error body.
fn exact_error(status: u16, message: &str) -> DataAnswer {
    DataAnswer::json(
        status,
        json!({"error": {"code": "", "message": {"lang": "", "value": message}}}),
    )
}

/// Graph's error body.
fn graph_error(status: u16, code: &str, message: &str) -> DataAnswer {
    DataAnswer::json(status, json!({"error": {"code": code, "message": message}}))
}

impl DataFault {
    /// The answer of a fault that answers without serving.
    pub(crate) fn answer_instead(&self, path: &str) -> Option<DataAnswer> {
        let error = |status: u16| match api_of(path) {
            Api::Exact => exact_error(
                status,
                match status {
                    400 => "Bad request.",
                    401 => "Unauthorized.",
                    403 => "Forbidden: the user has no rights for this division.",
                    404 => "Not found.",
                    429 => "API rate limit exceeded.",
                    _ => "The service is temporarily unavailable.",
                },
            ),
            Api::Graph => match status {
                400 => graph_error(status, "BadRequest", "Bad request."),
                401 => graph_error(status, "InvalidAuthenticationToken", "Access token validation failure."),
                403 => graph_error(
                    status,
                    "Authorization_RequestDenied",
                    "Insufficient privileges to complete the operation.",
                ),
                404 => graph_error(status, "ResourceNotFound", "Resource not found."),
                429 => graph_error(status, "TooManyRequests", "Too many requests."),
                _ => graph_error(status, "serviceNotAvailable", "The service is temporarily unavailable."),
            },
        };
        match self {
            DataFault::Status { status } => Some(error(*status)),
            DataFault::RetryAfter { status, secs } => {
                Some(error(*status).with_headers([("retry-after", secs.to_string())]))
            }
            DataFault::InvalidJson => Some(DataAnswer {
                status: 200,
                headers: Vec::new(),
                body: DataBody::Text {
                    content_type: "text/html; charset=utf-8",
                    text: "<!DOCTYPE html><html><head><title>Maintenance</title></head>\
                           <body><h1>We will be back shortly</h1></body></html>"
                        .to_owned(),
                },
                page: false,
            }),
            DataFault::Delay { .. } | DataFault::Truncated => None,
        }
    }
}

/// The request as the data handlers need it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DataCall<'a> {
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) authorization: Option<&'a str>,
    pub(crate) accept: Option<&'a str>,
    pub(crate) prefer: Option<&'a str>,
}

/// The query's pairs in order; the first of a repeated key counts.
#[derive(Debug)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Query {
        Query(url::form_urlencoded::parse(query.as_bytes()).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bearer {
    Live,
    Expired,
    Invalid,
}

const PROJECT_FIELDS: &[&str] = &["ID", "Code", "Description", "Timestamp", "Modified"];
const DELETED_FIELDS: &[&str] = &["Timestamp", "Division", "EntityKey", "EntityType", "ID", "DeletedDate"];
const ME_FIELDS: &[&str] = &["CurrentDivision", "UserName", "FullName", "UserID"];
const CONTACT_FIELDS: &[&str] = &[
    "id",
    "displayName",
    "givenName",
    "surname",
    "emailAddresses",
    "lastModifiedDateTime",
];
const USER_FIELDS: &[&str] = &[
    "id",
    "displayName",
    "givenName",
    "surname",
    "jobTitle",
    "mail",
    "userPrincipalName",
    "officeLocation",
    "mobilePhone",
    "businessPhones",
];

/// What Exact answers a `bulk/` or `sync/` request without `$select`.
const SELECT_MANDATORY: &str = "$select is mandatory for bulk and sync APIs";

/// `$select` on an Exact endpoint; on `bulk/` and `sync/` ones (`mandatory`)
/// it must be there: Exact answers 400 without it instead of all fields.
fn exact_select(query: &Query, allowed: &[&'static str], mandatory: bool) -> Result<Vec<&'static str>, DataAnswer> {
    match query.get("$select") {
        None if mandatory => Err(exact_error(400, SELECT_MANDATORY)),
        select => parse_select(select, allowed, true).map_err(|problem| exact_error(400, &problem)),
    }
}

/// The division of an Exact URL (`/api/v1/{division}/…`): the error block's
/// key. `current/Me` has none.
fn exact_division(path: &str) -> Option<i64> {
    let (division, _) = path.strip_prefix("/api/v1/")?.split_once('/')?;
    division.parse().ok()
}

/// What Exact records carry besides their fields.
#[derive(Debug)]
struct ExactContext {
    base_url: String,
    division: i64,
}

impl ExactContext {
    fn record(&self, uri: String, kind: &str, fields: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
        let mut record = Map::new();
        record.insert("__metadata".to_owned(), json!({"uri": uri, "type": kind}));
        record.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
        Value::Object(record)
    }

    fn project(&self, p: &Project, fields: &[&'static str]) -> Value {
        let uri = format!(
            "{}/api/v1/{}/project/Projects(guid'{}')",
            self.base_url, self.division, p.id
        );
        let value = |field: &str| match field {
            "ID" => json!(p.id),
            "Code" => json!(p.code),
            "Description" => json!(p.description),
            // OData v2 writes Edm.Int64 as a string.
            "Timestamp" => json!(p.timestamp.to_string()),
            "Modified" => json!(format!("/Date({})/", p.modified_ms)),
            _ => Value::Null,
        };
        self.record(
            uri,
            "Exact.Web.Api.Models.Project",
            fields.iter().map(|f| (*f, value(f))),
        )
    }

    fn deleted(&self, timestamp: i64, d: &Deleted, fields: &[&'static str]) -> Value {
        let uri = format!(
            "{}/api/v1/{}/sync/Deleted(guid'{}')",
            self.base_url, self.division, d.id
        );
        let value = |field: &str| match field {
            "Timestamp" => json!(timestamp.to_string()),
            "Division" => json!(d.division),
            "EntityKey" => json!(d.entity_key),
            "EntityType" => json!(d.entity_type),
            "ID" => json!(d.id),
            "DeletedDate" => json!(format!("/Date({})/", d.deleted_ms)),
            _ => Value::Null,
        };
        self.record(
            uri,
            "Exact.Web.Api.Models.Sync.Deleted",
            fields.iter().map(|f| (*f, value(f))),
        )
    }

    fn next(&self, path: &str, query: &str) -> String {
        format!("{}/api/v1/{}/{path}?{query}", self.base_url, self.division)
    }
}

fn contact_json(c: &Contact, fields: &[&'static str]) -> Value {
    let mut record = Map::new();
    record.insert(
        "@odata.etag".to_owned(),
        json!(format!("W/\"{}\"", URL_SAFE_NO_PAD.encode(c.seq.to_be_bytes()))),
    );
    record.insert("id".to_owned(), json!(c.id));
    for field in fields {
        let value = match *field {
            "displayName" => json!(c.display_name),
            "givenName" => json!(c.given_name),
            "surname" => json!(c.surname),
            "emailAddresses" => json!([{"address": c.email, "name": c.display_name}]),
            "lastModifiedDateTime" => json!(rfc3339(c.modified_ms)),
            _ => continue,
        };
        record.insert((*field).to_owned(), value);
    }
    Value::Object(record)
}

/// A user as Graph writes it: `id` always, then the selected properties;
/// with `changed_after`, only those changed after that point (an update in a
/// delta round: Graph promises no more than `id` and what changed).
fn user_json(u: &User, fields: &[&'static str], changed_after: Option<u64>) -> Value {
    let mut record = Map::new();
    record.insert("id".to_owned(), json!(u.id));
    for field in fields {
        if changed_after.is_some_and(|after| u.changed.get(field).is_none_or(|seq| *seq <= after)) {
            continue;
        }
        let value = match *field {
            "displayName" => json!(u.display_name),
            "givenName" => json!(u.given_name),
            "surname" => json!(u.surname),
            "jobTitle" => json!(u.job_title),
            "mail" => json!(u.mail),
            "userPrincipalName" => json!(u.user_principal_name),
            "officeLocation" => json!(u.office_location),
            "mobilePhone" => Value::Null,
            "businessPhones" => json!([]),
            _ => continue,
        };
        record.insert((*field).to_owned(), value);
    }
    Value::Object(record)
}

// ---------------------------------------------------------------------------
// The simulator's data side

impl Simulator {
    fn data(&self) -> MutexGuard<'_, DataStore> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exact_context(&self) -> ExactContext {
        ExactContext {
            base_url: self.base_url(),
            division: self.division(),
        }
    }

    /// Exact Online: the division of `current/Me` and the only one served.
    pub fn division(&self) -> i64 {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).data.division
    }

    /// Adds `count` projects (codes `P00001`, …); returns their ids.
    pub fn seed_projects(&self, count: usize) -> Vec<String> {
        self.data().seed_projects(count)
    }

    pub fn insert_project(&self, code: &str, description: &str) -> String {
        self.data().insert_project(code, description)
    }

    /// Changes the description and gives the project a new `Timestamp`;
    /// `false` for an unknown id.
    pub fn update_project(&self, id: &str, description: &str) -> bool {
        self.data().update_projects(&[id], description) == 1
    }

    /// Updates these projects under one shared `Timestamp`, as records that
    /// share a row version (a checkpoint must not split them). Returns how
    /// many were known.
    pub fn update_projects_together(&self, ids: &[String], description: &str) -> usize {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.data().update_projects(&ids, description)
    }

    /// Deletes a project, logging it in `sync/Deleted` when
    /// `project_deleted_entity_type` is set; `false` for an unknown id.
    pub fn delete_project(&self, id: &str) -> bool {
        let config = self.config().data;
        self.data()
            .delete_project(id, config.project_deleted_entity_type, config.division)
    }

    /// The current projects, in `ID` order, as the normal endpoint returns them without `$select`.
    pub fn projects(&self) -> Vec<Value> {
        let context = self.exact_context();
        let data = self.data();
        data.projects
            .values()
            .map(|p| context.project(p, PROJECT_FIELDS))
            .collect()
    }

    /// The highest row version given out so far (by any insert, update or delete).
    pub fn project_row_version(&self) -> i64 {
        self.data().row_version
    }

    /// Adds `count` contacts; returns their ids.
    pub fn seed_contacts(&self, count: usize) -> Vec<String> {
        self.data().seed_contacts(count)
    }

    pub fn insert_contact(&self, given_name: &str, surname: &str, email: &str) -> String {
        self.data().insert_contact(given_name, surname, email)
    }

    /// Changes the display name; `false` for an unknown id.
    pub fn update_contact(&self, id: &str, display_name: &str) -> bool {
        self.data().update_contact(id, display_name)
    }

    pub fn delete_contact(&self, id: &str) -> bool {
        self.data().delete_contact(id)
    }

    /// The current contacts, in id order, as `/me/contacts` returns them.
    pub fn contacts(&self) -> Vec<Value> {
        self.data()
            .contacts
            .values()
            .map(|c| contact_json(c, CONTACT_FIELDS))
            .collect()
    }

    /// Adds `count` directory users (`Given1 User1`, …); returns their ids.
    pub fn seed_users(&self, count: usize) -> Vec<String> {
        self.data().seed_users(count)
    }

    pub fn insert_user(&self, given_name: &str, surname: &str) -> String {
        self.data().insert_user(given_name, surname)
    }

    /// Sets (or with `None` clears) the job title; `false` for an unknown
    /// id. The next delta round reports the user with `id` and `jobTitle`
    /// only (plus whatever else changed since the round's start).
    pub fn update_user_job_title(&self, id: &str, job_title: Option<&str>) -> bool {
        self.data()
            .update_user(id, "jobTitle", |u| u.job_title = job_title.map(str::to_owned))
    }

    /// Changes the display name; `false` for an unknown id.
    pub fn update_user_display_name(&self, id: &str, display_name: &str) -> bool {
        self.data()
            .update_user(id, "displayName", |u| u.display_name = display_name.to_owned())
    }

    /// Deletes a user softly, as Entra does first (restorable for 30 days):
    /// delta reports `@removed` with reason `changed`. `false` for an unknown id.
    pub fn delete_user(&self, id: &str) -> bool {
        self.data().delete_user(id)
    }

    /// Deletes a user for good, live or soft-deleted: delta reports
    /// `@removed` with reason `deleted`. `false` for an unknown id.
    pub fn purge_user(&self, id: &str) -> bool {
        self.data().purge_user(id)
    }

    /// The live users, in id order, whole, as `/users` returns them.
    pub fn users(&self) -> Vec<Value> {
        self.data()
            .users
            .values()
            .map(|u| user_json(u, USER_FIELDS, None))
            .collect()
    }

    /// Every delta and skip token issued so far answers 410 from now on (a
    /// provider that lost the sync state: the client must start over).
    pub fn expire_delta_tokens(&self) {
        let mut data = self.data();
        data.delta_epoch = data.delta_epoch.wrapping_add(1);
    }

    /// Forgets the rate-limit windows: every division starts afresh.
    pub fn reset_rate_limits(&self) {
        self.data().buckets.clear();
    }

    /// Forgets Exact's error counts and lifts every error block.
    pub fn reset_error_blocks(&self) {
        self.data().error_keys.clear();
    }

    /// Whether Exact's error block refuses this division's requests now.
    pub fn is_blocked(&self, division: i64) -> bool {
        self.config().data.error_block.is_some()
            && self
                .data()
                .error_keys
                .get(&division)
                .is_some_and(|key| key.blocked_until(now_ms()).is_some())
    }

    pub fn inject_data_fault(&self, plan: DataFaultPlan) {
        self.data().faults.push_back(plan);
    }

    /// Drops every queued data fault, the unused rest of a large `times` included.
    pub fn clear_data_faults(&self) {
        self.data().faults.clear();
    }

    /// Every data request answered so far, in order.
    pub fn data_requests_log(&self) -> Vec<DataRequest> {
        self.data().log.clone()
    }

    /// `POST /_sim/data`.
    pub(crate) fn data_command(&self, command: DataCommand) -> (u16, Value) {
        let unknown = |what: &str| (404, json!({"error": format!("unknown {what}")}));
        match command {
            DataCommand::SeedProjects { count } => (200, json!({"ids": self.seed_projects(count)})),
            DataCommand::InsertProject { code, description } => {
                (200, json!({"id": self.insert_project(&code, &description)}))
            }
            DataCommand::UpdateProject { id, description } => {
                if self.update_project(&id, &description) {
                    (200, json!({"updated": true}))
                } else {
                    unknown("project")
                }
            }
            DataCommand::UpdateProjectsTogether { ids, description } => (
                200,
                json!({"updated": self.update_projects_together(&ids, &description)}),
            ),
            DataCommand::DeleteProject { id } => {
                if self.delete_project(&id) {
                    (200, json!({"deleted": true}))
                } else {
                    unknown("project")
                }
            }
            DataCommand::Projects => (200, json!({"projects": self.projects()})),
            DataCommand::SeedContacts { count } => (200, json!({"ids": self.seed_contacts(count)})),
            DataCommand::InsertContact {
                given_name,
                surname,
                email,
            } => (200, json!({"id": self.insert_contact(&given_name, &surname, &email)})),
            DataCommand::UpdateContact { id, display_name } => {
                if self.update_contact(&id, &display_name) {
                    (200, json!({"updated": true}))
                } else {
                    unknown("contact")
                }
            }
            DataCommand::DeleteContact { id } => {
                if self.delete_contact(&id) {
                    (200, json!({"deleted": true}))
                } else {
                    unknown("contact")
                }
            }
            DataCommand::Contacts => (200, json!({"contacts": self.contacts()})),
            DataCommand::SeedUsers { count } => (200, json!({"ids": self.seed_users(count)})),
            DataCommand::InsertUser { given_name, surname } => {
                (200, json!({"id": self.insert_user(&given_name, &surname)}))
            }
            DataCommand::UpdateUserJobTitle { id, job_title } => {
                if self.update_user_job_title(&id, job_title.as_deref()) {
                    (200, json!({"updated": true}))
                } else {
                    unknown("user")
                }
            }
            DataCommand::UpdateUserDisplayName { id, display_name } => {
                if self.update_user_display_name(&id, &display_name) {
                    (200, json!({"updated": true}))
                } else {
                    unknown("user")
                }
            }
            DataCommand::DeleteUser { id } => {
                if self.delete_user(&id) {
                    (200, json!({"deleted": true}))
                } else {
                    unknown("user")
                }
            }
            DataCommand::PurgeUser { id } => {
                if self.purge_user(&id) {
                    (200, json!({"deleted": true}))
                } else {
                    unknown("user")
                }
            }
            DataCommand::Users => (200, json!({"users": self.users()})),
            DataCommand::ExpireDeltaTokens => {
                self.expire_delta_tokens();
                (200, json!({}))
            }
            DataCommand::ResetRateLimits => {
                self.reset_rate_limits();
                (200, json!({}))
            }
            DataCommand::SetRateLimit { rate_limit } => {
                self.reconfigure(|c| c.data.rate_limit = rate_limit);
                (200, json!({}))
            }
            DataCommand::SetProjectDeletedEntityType { entity_type } => {
                self.reconfigure(|c| c.data.project_deleted_entity_type = entity_type);
                (200, json!({}))
            }
            DataCommand::SetErrorBlock { error_block } => {
                self.reconfigure(|c| c.data.error_block = error_block);
                (200, json!({}))
            }
            DataCommand::ResetErrorBlocks => {
                self.reset_error_blocks();
                (200, json!({}))
            }
            DataCommand::ClearDataFaults => {
                self.clear_data_faults();
                (200, json!({}))
            }
            DataCommand::Division => (200, json!({"division": self.division()})),
            DataCommand::Requests => (200, json!({"requests": self.data_requests_log()})),
        }
    }

    /// Counts a data request and takes the fault queued for it, if any; or,
    /// while Exact's error block holds the request's division, the answer
    /// that refuses it (before any fault: the gateway answers first).
    ///
    /// Exact documents the block but not how a blocked request is answered;
    /// the simulator answers 429, the status of Exact's other throttles, in
    /// Exact's error shape, without `Retry-After` (Exact sends none) and
    /// without `X-RateLimit-*` headers (neither limit is spent, and nothing
    /// tells when the block lifts): a client cannot wait it out cheaply, so
    /// it must not earn it. The refused request counts toward no limit.
    pub(crate) fn begin_data_request(&self, path: &str, path_and_query: &str) -> Result<Option<DataFault>, DataAnswer> {
        let rule = self.config().data.error_block;
        let blocked = {
            let data = self.data();
            rule.and(exact_division(path))
                .and_then(|division| data.error_keys.get(&division))
                .and_then(|key| key.blocked_until(now_ms()))
        };
        if let Some(until) = blocked {
            let mut state = self.state();
            state.counters.data_requests += 1;
            state.counters.data_blocked += 1;
            return Err(exact_error(
                429,
                &format!(
                    "Too many errors (400, 401, 403, 404): this API key is blocked for this division until {}.",
                    rfc3339(until)
                ),
            ));
        }
        let fault = self.data().take_fault(path_and_query);
        let mut state = self.state();
        state.counters.data_requests += 1;
        if fault.is_some() {
            state.counters.data_faults += 1;
        }
        Ok(fault)
    }

    /// Counts and logs how a data request was answered; on Exact, a 400,
    /// 401, 403 or 404 counts toward its division's error block, whether the
    /// API or a fault answered it.
    pub(crate) fn finish_data_request(&self, path_and_query: String, answer: &DataAnswer) {
        let status = answer.status;
        let rule = self.config().data.error_block;
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query.as_str(), |(p, _)| p);
        let now = now_ms();
        let blocks = match (rule, exact_division(path)) {
            (Some(rule), Some(division)) if matches!(status, 400 | 401 | 403 | 404) => self
                .data()
                .error_keys
                .entry(division)
                .or_default()
                .count_error(now, &rule),
            _ => false,
        };
        {
            let mut state = self.state();
            let counters = &mut state.counters;
            if answer.page && (200..300).contains(&status) {
                counters.data_pages += 1;
            }
            match status {
                429 => counters.data_429s += 1,
                401 => {
                    counters.data_401s += 1;
                    counters.data_errors += 1;
                }
                400..=499 => counters.data_errors += 1,
                _ => {}
            }
            if blocks {
                counters.data_blocks += 1;
            }
        }
        self.data().log.push(DataRequest {
            path_and_query,
            status,
            at_ms: now,
        });
    }

    /// Whether a bearer token is live, checked like `/api/me` does.
    fn bearer(&self, authorization: Option<&str>) -> Bearer {
        let token = authorization.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let state = self.state();
        let Some(record) = token.and_then(|t| state.access_tokens.get(t.trim())) else {
            return Bearer::Invalid;
        };
        if state.families[record.family].revoked {
            Bearer::Invalid
        } else if record.expires <= Instant::now() {
            Bearer::Expired
        } else {
            Bearer::Live
        }
    }

    /// Serves a request under `/api/v1/` or `/v1.0/`.
    pub(crate) fn serve_data(&self, call: &DataCall<'_>) -> DataAnswer {
        let bearer = self.bearer(call.authorization);
        let query = Query::parse(call.query);
        match (call.path.strip_prefix("/api/v1/"), call.path.strip_prefix("/v1.0/")) {
            (Some(rest), _) => self.serve_exact(rest, call, bearer, &query),
            (_, Some(rest)) => self.serve_graph(rest, call, bearer, &query),
            _ => exact_error(404, "Not found"),
        }
    }

    fn serve_exact(&self, rest: &str, call: &DataCall<'_>, bearer: Bearer, query: &Query) -> DataAnswer {
        let config = self.config();
        let unauthorized = |description: &str| {
            exact_error(401, "Unauthorized").with_headers([(
                "www-authenticate",
                format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
            )])
        };
        let refused = match bearer {
            Bearer::Live => None,
            Bearer::Expired => Some(unauthorized("access token expired")),
            Bearer::Invalid => Some(unauthorized("invalid token")),
        };
        let json_accepted = !config.data.require_json_accept
            || call
                .accept
                .is_some_and(|a| a.to_ascii_lowercase().contains("application/json"));
        let context = ExactContext {
            base_url: self.base_url(),
            division: config.data.division,
        };

        // The one URL without a division: no rate limits, no rate headers.
        if rest == "current/Me" {
            if let Some(refused) = refused {
                return refused;
            }
            if !json_accepted {
                return atom_feed(&context.base_url, rest);
            }
            return match exact_select(query, ME_FIELDS, false) {
                Ok(fields) => {
                    let value = |field: &str| match field {
                        "CurrentDivision" => json!(config.data.division),
                        "UserName" => json!(config.user),
                        "FullName" => json!("Simulated User"),
                        "UserID" => json!("5f2c1a40-7b1e-4d6a-9c3e-0a1b2c3d4e5f"),
                        _ => Value::Null,
                    };
                    let me = context.record(
                        format!(
                            "{}/api/v1/current/Me(guid'5f2c1a40-7b1e-4d6a-9c3e-0a1b2c3d4e5f')",
                            context.base_url
                        ),
                        "Exact.Web.Api.System.Me",
                        fields.iter().map(|f| (*f, value(f))),
                    );
                    DataAnswer::page(json!({"d": {"results": [me]}}))
                }
                Err(refused) => refused,
            };
        }

        let Some((division, path)) = rest.split_once('/') else {
            return refused.unwrap_or_else(|| exact_error(404, "Not found"));
        };
        let Ok(division) = division.parse::<i64>() else {
            return refused.unwrap_or_else(|| exact_error(404, "Not found"));
        };
        let now = now_ms();
        let mut data = self.data();
        let rate_headers = |data: &mut DataStore| -> Vec<(&'static str, String)> {
            let Some(limits) = config.data.rate_limit else {
                return Vec::new();
            };
            let (daily, minutely) = data.buckets.entry(division).or_default().peek(now, &limits);
            daily_headers(daily)
                .into_iter()
                .chain(minutely_headers(minutely))
                .collect()
        };
        if let Some(refused) = refused {
            return refused.with_headers(rate_headers(&mut data));
        }
        if division != config.data.division {
            return exact_error(403, "Forbidden: no access to this division").with_headers(rate_headers(&mut data));
        }
        let mut headers = Vec::new();
        if let Some(limits) = config.data.rate_limit {
            match data.buckets.entry(division).or_default().admit(now, &limits) {
                Admission::Admitted { daily, minutely } => {
                    headers.extend(daily_headers(daily));
                    headers.extend(minutely_headers(minutely));
                }
                Admission::MinuteExceeded(window) => {
                    return exact_error(429, "API rate limit exceeded (minutely)")
                        .with_headers(minutely_headers(window));
                }
                Admission::DayExceeded(window) => {
                    return exact_error(429, "API rate limit exceeded (daily)").with_headers(daily_headers(window));
                }
            }
        }
        let answer = if !json_accepted {
            atom_feed(&context.base_url, rest)
        } else {
            match path {
                "project/Projects" => exact_projects(&data, query, &context, config.data.page_size),
                "sync/Project/Projects" => exact_sync_projects(&data, query, &context, config.data.sync_page_size),
                "sync/Deleted" => exact_sync_deleted(&data, query, &context, config.data.sync_page_size),
                _ => exact_error(404, "Not found"),
            }
        };
        answer.with_headers(headers)
    }

    fn serve_graph(&self, rest: &str, call: &DataCall<'_>, bearer: Bearer, query: &Query) -> DataAnswer {
        let unauthorized = |description: &str, message: &str| {
            graph_error(401, "InvalidAuthenticationToken", message).with_headers([(
                "www-authenticate",
                format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
            )])
        };
        match bearer {
            Bearer::Live => {}
            Bearer::Expired => {
                return unauthorized(
                    "access token expired",
                    "Lifetime validation failed, the token is expired.",
                );
            }
            Bearer::Invalid => return unauthorized("invalid token", "Access token validation failure."),
        }
        let config = self.config();
        let base_url = self.base_url();
        let (feed, delta) = match rest {
            "me/contacts" => (Feed::Contacts, false),
            "me/contacts/delta" => (Feed::Contacts, true),
            "users" => (Feed::Users, false),
            "users/delta" => (Feed::Users, true),
            _ => {
                return graph_error(
                    400,
                    "BadRequest",
                    &format!("Resource not found for the segment '{rest}'."),
                );
            }
        };
        let allowed = match feed {
            Feed::Contacts => CONTACT_FIELDS,
            Feed::Users => USER_FIELDS,
        };
        let fields = match parse_select(query.get("$select"), allowed, false) {
            Ok(fields) => fields,
            Err(problem) => return graph_error(400, "BadRequest", &problem),
        };
        // `$top` is ignored on delta, as on some of Graph's delta endpoints.
        let top = if delta { None } else { query.get("$top") };
        let (size, applied) = match graph_page_size(
            call.prefer,
            top,
            config.data.graph_page_size,
            config.data.graph_max_page_size,
        ) {
            Ok(size) => size,
            Err(problem) => return graph_error(400, "BadRequest", &problem),
        };
        let data = self.data();
        let page = GraphPage {
            epoch: data.delta_epoch,
            query,
            size,
            base_url: &base_url,
        };
        let answer = match (feed, delta) {
            (Feed::Contacts, false) => page.list(
                Feed::Contacts,
                &data.contacts,
                "me/contacts",
                &format!("users('{}')/contacts", config.user),
                |c| contact_json(c, &fields),
            ),
            (Feed::Users, false) => page.list(Feed::Users, &data.users, "users", "users", |u| {
                user_json(u, &fields, None)
            }),
            (Feed::Contacts, true) => page.delta(
                &DeltaFeed {
                    feed: Feed::Contacts,
                    path: "me/contacts/delta",
                    context: "Collection(contact)",
                    changes: &data.contact_changes,
                    seq: data.contact_seq,
                },
                // Outlook items come back whole, changed or new.
                |id, _| data.contacts.get(id).map(|c| contact_json(c, &fields)),
            ),
            (Feed::Users, true) => page.delta(
                &DeltaFeed {
                    feed: Feed::Users,
                    path: "users/delta",
                    context: "users",
                    changes: &data.user_changes,
                    seq: data.user_seq,
                },
                // Directory objects: new ones whole, known ones as `id` and what changed.
                |id, base| {
                    data.users
                        .get(id)
                        .map(|u| user_json(u, &fields, (u.created_seq <= base).then_some(base)))
                },
            ),
        };
        match applied {
            Some(n) if answer.page => answer.with_headers([("preference-applied", format!("odata.maxpagesize={n}"))]),
            _ => answer,
        }
    }
}

/// What Exact answers a client that did not ask for JSON: its default, Atom XML.
fn atom_feed(base_url: &str, path: &str) -> DataAnswer {
    DataAnswer {
        status: 200,
        headers: Vec::new(),
        body: DataBody::Text {
            content_type: "application/atom+xml;type=feed;charset=utf-8",
            text: format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><feed xml:base=\"{base_url}/api/v1/\" \
                 xmlns=\"http://www.w3.org/2005/Atom\"><title type=\"text\">{path}</title></feed>"
            ),
        },
        page: false,
    }
}

/// `project/Projects`: 60 a page in `ID` order, `$skiptoken=guid'<last ID>'`.
fn exact_projects(data: &DataStore, query: &Query, context: &ExactContext, page_size: usize) -> DataAnswer {
    let fields = match exact_select(query, PROJECT_FIELDS, false) {
        Ok(fields) => fields,
        Err(refused) => return refused,
    };
    if query.get("$filter").is_some() {
        return exact_error(
            400,
            "$filter is not supported on project/Projects by the simulator; use sync/Project/Projects",
        );
    }
    let after = match query.get("$skiptoken").map(parse_guid_skiptoken) {
        None => None,
        Some(Some(guid)) => Some(guid.to_owned()),
        Some(None) => return exact_error(400, "malformed $skiptoken: expected guid'<ID>'"),
    };
    let top = match query.get("$top").map(str::parse::<usize>) {
        None => None,
        Some(Ok(top)) => Some(top),
        Some(Err(_)) => return exact_error(400, "malformed $top"),
    };
    if top == Some(0) {
        return DataAnswer::page(json!({"d": {"results": []}}));
    }
    let size = top.map_or(page_size, |top| top.min(page_size));
    let (page, more) = page_after(&data.projects, after.as_ref(), size, |_, _| true);
    let results: Vec<Value> = page.iter().map(|(_, p)| context.project(p, &fields)).collect();
    let mut body = json!({"d": {"results": results}});
    let left = top.map(|top| top - page.len());
    if let (true, Some((last, _))) = (more && left != Some(0), page.last()) {
        let skiptoken = format!("guid'{last}'");
        let left = left.map(|n| n.to_string());
        let mut set = vec![("$skiptoken", skiptoken.as_str())];
        if let Some(left) = &left {
            set.push(("$top", left.as_str()));
        }
        body["d"]["__next"] = json!(context.next("project/Projects", &query_with(&query.0, &set, &[])));
    }
    DataAnswer::page(body)
}

/// `sync/Project/Projects`: ascending `Timestamp`, 1,000 a page, `__next`
/// with the filter moved to the last `Timestamp` served.
fn exact_sync_projects(data: &DataStore, query: &Query, context: &ExactContext, page_size: usize) -> DataAnswer {
    let fields = match exact_select(query, PROJECT_FIELDS, true) {
        Ok(fields) => fields,
        Err(refused) => return refused,
    };
    let filter = match query.get("$filter").map(parse_timestamp_filter).transpose() {
        Ok(filter) => filter,
        Err(problem) => return exact_error(400, &problem),
    };
    let after = filter.as_ref().map(|f| f.after);
    let (page, more) = page_groups(&data.projects_by_timestamp, after.as_ref(), page_size);
    let results: Vec<Value> = page
        .iter()
        .filter_map(|(_, id)| data.projects.get(*id))
        .map(|p| context.project(p, &fields))
        .collect();
    let mut body = json!({"d": {"results": results}});
    if let (true, Some((last, _))) = (more, page.last()) {
        let next_filter = match &filter {
            Some(filter) => filter.continuing_after(**last),
            None => format!("Timestamp gt {last}L"),
        };
        let next = query_with(&query.0, &[("$filter", &next_filter)], &["$skiptoken"]);
        body["d"]["__next"] = json!(context.next("sync/Project/Projects", &next));
    }
    DataAnswer::page(body)
}

/// `sync/Deleted`: the deletion log in ascending `Timestamp`, optionally of one `EntityType`.
fn exact_sync_deleted(data: &DataStore, query: &Query, context: &ExactContext, page_size: usize) -> DataAnswer {
    let fields = match exact_select(query, DELETED_FIELDS, true) {
        Ok(fields) => fields,
        Err(refused) => return refused,
    };
    let filter = match query.get("$filter").map(parse_timestamp_filter).transpose() {
        Ok(filter) => filter,
        Err(problem) => return exact_error(400, &problem),
    };
    let after = filter.as_ref().map(|f| f.after);
    let entity_type = filter.as_ref().and_then(|f| f.entity_type);
    let (page, more) = page_after(&data.deleted, after.as_ref(), page_size, |_, d| {
        entity_type.is_none_or(|t| d.entity_type == t)
    });
    let results: Vec<Value> = page
        .iter()
        .map(|(timestamp, d)| context.deleted(**timestamp, d, &fields))
        .collect();
    let mut body = json!({"d": {"results": results}});
    if let (true, Some((last, _))) = (more, page.last()) {
        let next_filter = match &filter {
            Some(filter) => filter.continuing_after(**last),
            None => format!("Timestamp gt {last}L"),
        };
        let next = query_with(&query.0, &[("$filter", &next_filter)], &["$skiptoken"]);
        body["d"]["__next"] = json!(context.next("sync/Deleted", &next));
    }
    DataAnswer::page(body)
}

fn graph_token_error(problem: TokenProblem) -> DataAnswer {
    match problem {
        TokenProblem::Garbled => graph_error(400, "BadRequest", "The paging token is malformed."),
        TokenProblem::Stale => graph_error(
            410,
            "syncStateNotFound",
            "The sync state is not found or has expired; start a new delta round.",
        ),
    }
}

/// One Graph request's paging: the token epoch, the query to carry over, the page size.
struct GraphPage<'a> {
    epoch: u64,
    query: &'a Query,
    size: usize,
    base_url: &'a str,
}

/// A delta feed: its changes, latest per item, by sequence.
struct DeltaFeed<'a> {
    feed: Feed,
    /// Under `/v1.0/`.
    path: &'static str,
    /// After `$metadata#`.
    context: &'static str,
    changes: &'a BTreeMap<u64, Change>,
    /// The latest sequence given out.
    seq: u64,
}

impl GraphPage<'_> {
    fn decode(&self, token: &str, feed: Feed) -> Result<GraphToken, TokenProblem> {
        GraphToken::decode(token, self.epoch, feed)
    }

    /// A list (`/me/contacts`, `/users`): `value` in id order, `@odata.nextLink`
    /// with an opaque `$skiptoken`.
    fn list<V>(
        &self,
        feed: Feed,
        items: &BTreeMap<String, V>,
        path: &str,
        context: &str,
        json: impl Fn(&V) -> Value,
    ) -> DataAnswer {
        let after = match self.query.get("$skiptoken").map(|t| self.decode(t, feed)) {
            None => None,
            Some(Ok(GraphToken::List { after })) => Some(after),
            Some(Ok(_)) => return graph_token_error(TokenProblem::Garbled),
            Some(Err(problem)) => return graph_token_error(problem),
        };
        let (page, more) = page_after(items, after.as_ref(), self.size, |_, _| true);
        let value: Vec<Value> = page.iter().map(|(_, item)| json(item)).collect();
        let mut body = json!({
            "@odata.context": format!("{}/v1.0/$metadata#{context}", self.base_url),
            "value": value,
        });
        if let (true, Some((last, _))) = (more, page.last()) {
            let token = GraphToken::List { after: (*last).clone() }.encode(self.epoch, feed);
            let next = query_with(&self.query.0, &[("$skiptoken", &token)], &[]);
            body["@odata.nextLink"] = json!(format!("{}/v1.0/{path}?{next}", self.base_url));
        }
        DataAnswer::page(body)
    }

    /// A delta round: pages linked by `@odata.nextLink`, the last one with
    /// `@odata.deltaLink` (never both); the deltaLink answers what changed
    /// since, removals as `@removed`. `live(id, base)` is the item of a live
    /// change in a round based at `base`.
    fn delta(&self, feed: &DeltaFeed<'_>, live: impl Fn(&str, u64) -> Option<Value>) -> DataAnswer {
        let link = |token: GraphToken| {
            let (set, drop) = match token {
                GraphToken::Delta { .. } => ("$deltatoken", "$skiptoken"),
                _ => ("$skiptoken", "$deltatoken"),
            };
            let encoded = token.encode(self.epoch, feed.feed);
            let next = query_with(&self.query.0, &[(set, &encoded)], &[drop]);
            format!("{}/v1.0/{}?{next}", self.base_url, feed.path)
        };
        let context = format!("{}/v1.0/$metadata#{}", self.base_url, feed.context);
        let (after, floor, base) = match (self.query.get("$skiptoken"), self.query.get("$deltatoken")) {
            (Some(_), Some(_)) => {
                return graph_error(400, "BadRequest", "Give either $skiptoken or $deltatoken, not both.");
            }
            // The first round: everything live, all of it new to the client;
            // deletions before it are not news.
            (None, None) => (0, feed.seq, 0),
            (None, Some("latest")) => {
                let body = json!({
                    "@odata.context": context,
                    "value": [],
                    "@odata.deltaLink": link(GraphToken::Delta { after: feed.seq }),
                });
                return DataAnswer::page(body);
            }
            (Some(token), None) => match self.decode(token, feed.feed) {
                Ok(GraphToken::Next { after, floor, base }) => (after, floor, base),
                Ok(_) => return graph_token_error(TokenProblem::Garbled),
                Err(problem) => return graph_token_error(problem),
            },
            (None, Some(token)) => match self.decode(token, feed.feed) {
                Ok(GraphToken::Delta { after }) => (after, after, after),
                Ok(_) => return graph_token_error(TokenProblem::Garbled),
                Err(problem) => return graph_token_error(problem),
            },
        };
        let (page, more) = page_after(feed.changes, Some(&after), self.size, |seq, change| {
            matches!(change, Change::Live(_)) || *seq > floor
        });
        let value: Vec<Value> = page
            .iter()
            .filter_map(|(_, change)| match change {
                Change::Live(id) => live(id, base),
                Change::Removed(id) => Some(json!({"id": id, "@removed": {"reason": "deleted"}})),
                Change::SoftDeleted(id) => Some(json!({"id": id, "@removed": {"reason": "changed"}})),
            })
            .collect();
        let mut body = json!({"@odata.context": context, "value": value});
        match (more, page.last()) {
            (true, Some((last, _))) => {
                body["@odata.nextLink"] = json!(link(GraphToken::Next {
                    after: **last,
                    floor,
                    base
                }));
            }
            // Everything after `after` was served: the next round starts from now.
            _ => body["@odata.deltaLink"] = json!(link(GraphToken::Delta { after: feed.seq })),
        }
        DataAnswer::page(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_filters_are_parsed_strictly() {
        let f = parse_timestamp_filter("Timestamp gt 10000000123L").expect("int64");
        assert_eq!((f.after, f.entity_type), (10_000_000_123, None));
        assert_eq!(f.continuing_after(10_000_000_999), "Timestamp gt 10000000999L");
        assert_eq!(parse_timestamp_filter("Timestamp gt 1").expect("int32").after, 1);

        let f = parse_timestamp_filter("Timestamp gt 5L and EntityType eq 2 and Division eq 7").expect("and");
        assert_eq!((f.after, f.entity_type), (5, Some(2)));
        assert_eq!(
            f.continuing_after(9),
            "Timestamp gt 9L and EntityType eq 2 and Division eq 7"
        );
        let f = parse_timestamp_filter("EntityType eq 14 and Timestamp  gt  7L").expect("either order");
        assert_eq!((f.after, f.entity_type), (7, Some(14)));
        assert_eq!(f.continuing_after(8), "EntityType eq 14 and Timestamp gt 8L");

        for bad in [
            "",
            "Timestamp gt",
            "Timestamp ge 5L",
            "Timestamp gt 5l",
            "Timestamp gt -5L",
            "Timestamp gt 5 L",
            "Timestamp gt L",
            "Timestamp gt 0x10L",
            // Too big for the Int32 an unsuffixed literal is.
            "Timestamp gt 10000000000",
            "Timestamp gt 99999999999999999999L",
            "Modified gt datetime'2024-01-01'",
            "Timestamp gt 5L and Timestamp gt 6L",
            "Timestamp gt 5L and EntityType eq x",
            "Timestamp gt 5L and ",
        ] {
            assert!(parse_timestamp_filter(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn pages_follow_the_key_order_and_say_whether_more_follow() {
        let map: BTreeMap<i64, i64> = (1..=10).map(|k| (k, k * 10)).collect();
        let (page, more) = page_after(&map, None, 4, |_, _| true);
        assert_eq!(page.iter().map(|(k, _)| **k).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(more);
        let (page, more) = page_after(&map, Some(&6), 4, |_, _| true);
        assert_eq!(page.iter().map(|(k, _)| **k).collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert!(!more, "an exactly full last page has no next link");
        let (page, more) = page_after(&map, Some(&2), 3, |k, _| k % 2 == 0);
        assert_eq!(page.iter().map(|(k, _)| **k).collect::<Vec<_>>(), [4, 6, 8]);
        assert!(more);
        let (page, more) = page_after(&map, Some(&6), 3, |k, _| k % 5 == 0);
        assert_eq!(page.iter().map(|(k, _)| **k).collect::<Vec<_>>(), [10]);
        assert!(!more);
        let (page, more) = page_after(&map, Some(&10), 3, |_, _| true);
        assert!(page.is_empty() && !more);
    }

    #[test]
    fn a_group_sharing_a_timestamp_is_never_split() {
        let mut groups: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
        for (ts, id) in [(1, "a"), (2, "b"), (2, "c"), (2, "d"), (3, "e"), (4, "f")] {
            groups.entry(ts).or_default().insert(id);
        }
        let (page, more) = page_groups(&groups, None, 2);
        assert_eq!(page.iter().map(|(_, v)| **v).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert!(more);
        let (page, more) = page_groups(&groups, Some(&2), 2);
        assert_eq!(page.iter().map(|(_, v)| **v).collect::<Vec<_>>(), ["e", "f"]);
        assert!(!more);
        let (page, more) = page_groups(&groups, Some(&4), 2);
        assert!(page.is_empty() && !more);
    }

    #[test]
    fn rate_windows_are_fixed_and_start_at_the_first_request() {
        let limits = RateLimits {
            minutely: 2,
            minute_window: Duration::from_secs(60),
            daily: 3,
            day_window: Duration::from_secs(3600),
        };
        let mut bucket = RateBucket::default();
        let t0 = 1_700_000_000_000;
        let Admission::Admitted { daily, minutely } = bucket.admit(t0, &limits) else {
            panic!("first request refused");
        };
        assert_eq!(
            minutely,
            RateWindow {
                limit: 2,
                remaining: 1,
                reset_ms: t0 + 60_000
            }
        );
        assert_eq!(
            daily,
            RateWindow {
                limit: 3,
                remaining: 2,
                reset_ms: t0 + 3_600_000
            }
        );
        assert!(matches!(bucket.admit(t0 + 10_000, &limits), Admission::Admitted { .. }));
        // The third in the minute: the minute window refuses, and is not moved.
        assert_eq!(
            bucket.admit(t0 + 59_999, &limits),
            Admission::MinuteExceeded(RateWindow {
                limit: 2,
                remaining: 0,
                reset_ms: t0 + 60_000
            })
        );
        // A new minute window starts with the next request after the reset.
        let Admission::Admitted { daily, minutely } = bucket.admit(t0 + 75_000, &limits) else {
            panic!("refused after the minute reset");
        };
        assert_eq!((minutely.remaining, minutely.reset_ms), (1, t0 + 135_000));
        assert_eq!((daily.remaining, daily.reset_ms), (0, t0 + 3_600_000));
        // The day is spent: refused by the daily limit even in a fresh minute.
        assert_eq!(
            bucket.admit(t0 + 200_000, &limits),
            Admission::DayExceeded(RateWindow {
                limit: 3,
                remaining: 0,
                reset_ms: t0 + 3_600_000
            })
        );
        let (daily, minutely) = bucket.peek(t0 + 200_000, &limits);
        assert_eq!((daily.remaining, minutely.remaining), (0, 2));
        assert!(matches!(
            bucket.admit(t0 + 3_600_000, &limits),
            Admission::Admitted { .. }
        ));
    }

    #[test]
    fn graph_tokens_are_opaque_checked_and_expire_with_the_epoch() {
        for token in [
            GraphToken::List {
                after: "AAMkADx-_y==".to_owned(),
            },
            GraphToken::Next {
                after: 5,
                floor: 3,
                base: 2,
            },
            GraphToken::Delta { after: 42 },
        ] {
            let encoded = token.encode(7, Feed::Contacts);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{encoded}"
            );
            assert_eq!(GraphToken::decode(&encoded, 7, Feed::Contacts), Ok(token.clone()));
            assert_eq!(
                GraphToken::decode(&encoded, 7, Feed::Users),
                Err(TokenProblem::Garbled),
                "a contacts token means nothing to /users"
            );
            let mut garbled = encoded.into_bytes();
            garbled[3] = if garbled[3] == b'A' { b'B' } else { b'A' };
            let garbled = String::from_utf8(garbled).expect("ascii");
            assert_eq!(
                GraphToken::decode(&garbled, 7, Feed::Contacts),
                Err(TokenProblem::Garbled)
            );
        }
        let next = GraphToken::Next {
            after: 1,
            floor: 1,
            base: 1,
        };
        assert_eq!(
            GraphToken::decode(&next.encode(7, Feed::Users), 8, Feed::Users),
            Err(TokenProblem::Stale),
            "a next link of a round in progress expires too"
        );
        assert_eq!(
            GraphToken::decode(&GraphToken::Delta { after: 42 }.encode(7, Feed::Users), 8, Feed::Users),
            Err(TokenProblem::Stale)
        );
        assert_eq!(
            GraphToken::decode("not a token", 7, Feed::Users),
            Err(TokenProblem::Garbled)
        );
        assert_eq!(GraphToken::decode("", 7, Feed::Users), Err(TokenProblem::Garbled));
    }

    #[test]
    fn the_error_block_counts_a_rolling_window_and_lifts_after_the_block() {
        let rule = ErrorBlock {
            errors: 3,
            window: Duration::from_secs(60),
            block: Duration::from_secs(600),
        };
        let t0 = 1_700_000_000_000;
        let mut key = ErrorKey::default();
        for at in [0, 30_000, 31_000] {
            assert!(!key.count_error(t0 + at, &rule), "{at}: within the allowance");
        }
        // The first error leaves the window: the fourth is only the third in it.
        assert!(!key.count_error(t0 + 60_000, &rule));
        assert_eq!(key.blocked_until(t0 + 60_000), None);
        // A fixed window [t0, t0 + 60 s) would count this one afresh; a rolling one does not.
        assert!(key.count_error(t0 + 61_000, &rule), "four within 60 s");
        assert_eq!(key.blocked_until(t0 + 61_000), Some(t0 + 661_000));
        assert_eq!(key.blocked_until(t0 + 660_999), Some(t0 + 661_000));
        assert!(!key.count_error(t0 + 100_000, &rule), "no counting while blocked");
        assert_eq!(key.blocked_until(t0 + 661_000), None, "lifted");
        // After the block the count starts afresh.
        for i in 0..3 {
            assert!(!key.count_error(t0 + 700_000 + i, &rule));
        }
        assert!(key.count_error(t0 + 700_003, &rule));

        let exact = ErrorBlock::default();
        assert_eq!(
            (exact.errors, exact.window, exact.block),
            (10, Duration::from_secs(3600), Duration::from_secs(3600))
        );
        assert_eq!(exact_division("/api/v1/3155812/sync/Deleted"), Some(3_155_812));
        assert_eq!(exact_division("/api/v1/current/Me"), None);
        assert_eq!(exact_division("/v1.0/users/delta"), None);
    }

    #[test]
    fn users_remember_which_properties_changed_and_deletions_are_soft_first() {
        let mut store = DataStore::new();
        let ids = store.seed_users(3);
        assert!(store.update_user(&ids[0], "jobTitle", |u| u.job_title = Some("CFO".to_owned())));
        let seq_after_job = store.user_seq;
        assert!(store.update_user(&ids[0], "displayName", |u| u.display_name = "Renamed".to_owned()));
        assert!(!store.update_user("unknown", "jobTitle", |_| {}));
        let user = &store.users[&ids[0]];
        let fields = USER_FIELDS;
        // New to the round: whole.
        let whole = user_json(user, fields, None);
        assert_eq!(whole["mail"], "given1.user1@contoso.example");
        assert_eq!(whole["jobTitle"], "CFO");
        // Known since seq 3: both changes; since the job title: only the name.
        let since_seed = user_json(user, fields, Some(3));
        assert_eq!(
            since_seed,
            json!({"id": ids[0], "jobTitle": "CFO", "displayName": "Renamed"})
        );
        let since_job = user_json(user, fields, Some(seq_after_job));
        assert_eq!(since_job, json!({"id": ids[0], "displayName": "Renamed"}));
        let unselected = user_json(user, &["mail"], Some(3));
        assert_eq!(
            unselected,
            json!({"id": ids[0]}),
            "only id when nothing selected changed"
        );

        assert!(store.delete_user(&ids[1]));
        assert!(!store.delete_user(&ids[1]), "already gone");
        assert!(!store.update_user(&ids[1], "jobTitle", |_| {}));
        assert!(store.purge_user(&ids[1]), "a soft-deleted user can be purged");
        assert!(store.purge_user(&ids[2]), "so can a live one");
        assert!(!store.purge_user(&ids[2]));
        let changes: Vec<String> = store
            .user_changes
            .values()
            .map(|change| match change {
                Change::Live(id) => format!("live {id}"),
                Change::Removed(id) => format!("deleted {id}"),
                Change::SoftDeleted(id) => format!("changed {id}"),
            })
            .collect();
        assert_eq!(
            changes,
            [
                format!("live {}", ids[0]),
                format!("deleted {}", ids[1]),
                format!("deleted {}", ids[2])
            ]
        );
        assert!(store.deleted_users.is_empty());
    }

    #[test]
    fn graph_page_size_prefers_the_header() {
        assert_eq!(graph_page_size(None, None, 100, 999), Ok((100, None)));
        assert_eq!(
            graph_page_size(Some("odata.maxpagesize=25"), Some("5"), 100, 999),
            Ok((25, Some(25)))
        );
        assert_eq!(
            graph_page_size(Some("return=minimal, odata.maxpagesize=7"), None, 100, 999),
            Ok((7, Some(7)))
        );
        assert_eq!(graph_page_size(None, Some("5"), 100, 999), Ok((5, None)));
        assert_eq!(graph_page_size(None, Some("5000"), 100, 999), Ok((999, None)));
        assert!(graph_page_size(None, Some("many"), 100, 999).is_err());
    }

    #[test]
    fn next_links_keep_the_query_and_encode_like_the_providers() {
        let query = Query::parse("$select=ID,Code&$filter=Timestamp%20gt%201L&$top=5");
        assert_eq!(
            query_with(&query.0, &[("$filter", "Timestamp gt 9L")], &["$top"]),
            "$select=ID,Code&$filter=Timestamp%20gt%209L"
        );
        assert_eq!(
            query_with(&query.0, &[("$skiptoken", "guid'ab-1'")], &[]),
            "$select=ID,Code&$filter=Timestamp%20gt%201L&$top=5&$skiptoken=guid'ab-1'"
        );
        assert_eq!(query_with(&[], &[("a", "x+y&z=1")], &[]), "a=x%2By%26z%3D1");
    }

    #[test]
    fn select_skiptoken_and_dates() {
        assert_eq!(parse_select(None, PROJECT_FIELDS, true), Ok(PROJECT_FIELDS.to_vec()));
        let refused = |answer: Result<Vec<&str>, DataAnswer>| match answer {
            Err(DataAnswer {
                status: 400,
                body: DataBody::Json(body),
                ..
            }) => body,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(exact_select(&Query::parse(""), PROJECT_FIELDS, true)),
            json!({"error": {"code": "", "message": {"lang": "", "value": "$select is mandatory for bulk and sync APIs"}}})
        );
        assert_eq!(
            refused(exact_select(
                &Query::parse("$filter=Timestamp%20gt%201"),
                DELETED_FIELDS,
                true
            ))["error"]["message"]["value"],
            SELECT_MANDATORY
        );
        assert!(exact_select(&Query::parse("$select="), PROJECT_FIELDS, true).is_err());
        assert_eq!(
            exact_select(&Query::parse("$select=ID"), PROJECT_FIELDS, true).ok(),
            Some(vec!["ID"])
        );
        assert_eq!(
            exact_select(&Query::parse(""), PROJECT_FIELDS, false).ok(),
            Some(PROJECT_FIELDS.to_vec()),
            "the normal endpoints return all fields without $select"
        );
        assert_eq!(
            parse_select(Some("Code, ID,Code"), PROJECT_FIELDS, true),
            Ok(vec!["Code", "ID"])
        );
        assert!(parse_select(Some("code"), PROJECT_FIELDS, true).is_err());
        assert!(parse_select(Some("ID,"), PROJECT_FIELDS, true).is_err());
        assert_eq!(
            parse_select(Some("DISPLAYNAME"), CONTACT_FIELDS, false),
            Ok(vec!["displayName"])
        );

        let guid = "0123abcd-0000-4000-8000-00000000ffff";
        assert_eq!(parse_guid_skiptoken(&format!("guid'{guid}'")), Some(guid));
        assert_eq!(parse_guid_skiptoken(guid), None);
        assert_eq!(parse_guid_skiptoken("guid'0123abcd-0000-4000-8000-00000000fff'"), None);
        assert_eq!(parse_guid_skiptoken("guid'0123abcd-0000-4000-8000x00000000ffff'"), None);

        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199_999), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn project_changes_move_through_the_timestamp_index() {
        let mut store = DataStore::new();
        let ids = store.seed_projects(3);
        assert_eq!(store.projects[&ids[0]].code, "P00001");
        assert_eq!(store.projects[&ids[2]].timestamp, FIRST_ROW_VERSION + 3);
        assert!(
            ids.iter()
                .all(|id| parse_guid_skiptoken(&format!("guid'{id}'")).is_some())
        );

        assert_eq!(store.update_projects(&[&ids[0], &ids[1], "unknown"], "together"), 2);
        let shared = FIRST_ROW_VERSION + 4;
        assert_eq!(store.projects_by_timestamp[&shared].len(), 2);
        assert!(!store.projects_by_timestamp.contains_key(&(FIRST_ROW_VERSION + 1)));

        assert!(store.delete_project(&ids[0], None, 1));
        assert!(!store.delete_project(&ids[0], None, 1), "already gone");
        assert!(store.deleted.is_empty(), "projects are not logged by default");
        assert!(store.delete_project(&ids[1], Some(99), 1));
        let (ts, entry) = store.deleted.iter().next().expect("logged");
        assert_eq!(
            (*ts, entry.entity_key.as_str(), entry.entity_type),
            (FIRST_ROW_VERSION + 6, ids[1].as_str(), 99)
        );
        assert!(!store.projects_by_timestamp.contains_key(&shared));
        assert_eq!(store.row_version, FIRST_ROW_VERSION + 6);
    }

    #[test]
    fn contact_changes_keep_only_the_latest_change_of_each_contact() {
        let mut store = DataStore::new();
        let ids = store.seed_contacts(3);
        assert!(store.update_contact(&ids[0], "Renamed"));
        assert!(store.delete_contact(&ids[1]));
        assert!(!store.update_contact(&ids[1], "gone"));
        let changes: Vec<(u64, String)> = store
            .contact_changes
            .iter()
            .map(|(seq, change)| match change {
                Change::Live(id) => (*seq, format!("live {id}")),
                Change::Removed(id) | Change::SoftDeleted(id) => (*seq, format!("removed {id}")),
            })
            .collect();
        assert_eq!(
            changes,
            [
                (3, format!("live {}", ids[2])),
                (4, format!("live {}", ids[0])),
                (5, format!("removed {}", ids[1])),
            ]
        );
    }

    /// A simulator holding one access token, live for `ttl`.
    fn simulator_with_token(ttl: Duration) -> (std::sync::Arc<Simulator>, String) {
        let sim = Simulator::new(super::super::SimConfig::for_preset(
            shared::config::PresetName::ExactOnline,
        ));
        let token = "at-test".to_owned();
        let mut state = sim.state();
        state.families.push(super::super::Family {
            revoked: false,
            scopes: Vec::new(),
            live_refresh_token: None,
            last_access_token: Some(token.clone()),
            last_access_expires: Instant::now() + ttl,
        });
        let record = super::super::AccessRecord {
            family: 0,
            expires: Instant::now() + ttl,
        };
        state.access_tokens.insert(token.clone(), record);
        drop(state);
        (sim, token)
    }

    fn call<'a>(path: &'a str, query: &'a str, authorization: Option<&'a str>) -> DataCall<'a> {
        DataCall {
            path,
            query,
            authorization,
            accept: Some("application/json"),
            prefer: None,
        }
    }

    #[test]
    fn bearer_tokens_are_checked_against_the_token_state() {
        let (sim, token) = simulator_with_token(Duration::from_secs(600));
        let bearer = format!("Bearer {token}");
        let division = sim.division();
        let path = format!("/api/v1/{division}/sync/Project/Projects");
        let answer = sim.serve_data(&call(&path, "$select=ID", Some(&bearer)));
        assert_eq!(answer.status, 200);
        let answer = sim.serve_data(&call(&path, "", Some(&bearer)));
        assert_eq!(answer.status, 400, "no $select on a sync endpoint");
        let header =
            |answer: &DataAnswer, name: &str| answer.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());

        let answer = sim.serve_data(&call(&path, "", Some("Bearer at-unknown")));
        assert_eq!(answer.status, 401);
        assert_eq!(
            header(&answer, "www-authenticate").as_deref(),
            Some("Bearer error=\"invalid_token\", error_description=\"invalid token\"")
        );
        assert_eq!(
            header(&answer, "x-ratelimit-minutely-remaining").as_deref(),
            Some("58"),
            "a 401 reports the limits without counting"
        );
        let DataBody::Json(body) = &answer.body else {
            panic!("json");
        };
        assert!(body["error"]["message"]["value"].is_string(), "{body}");
        assert_eq!(sim.serve_data(&call(&path, "", None)).status, 401);

        sim.state()
            .access_tokens
            .values_mut()
            .for_each(|r| r.expires = Instant::now());
        let answer = sim.serve_data(&call(&path, "", Some(&bearer)));
        assert_eq!(answer.status, 401);
        assert!(
            header(&answer, "www-authenticate").is_some_and(|v| v.contains("access token expired")),
            "{answer:?}"
        );
        let answer = sim.serve_data(&call("/v1.0/me/contacts", "", Some(&bearer)));
        assert_eq!(answer.status, 401);
        assert!(header(&answer, "www-authenticate").is_some_and(|v| v.contains("access token expired")));

        sim.state()
            .access_tokens
            .values_mut()
            .for_each(|r| r.expires = Instant::now() + Duration::from_secs(60));
        sim.state().families[0].revoked = true;
        let answer = sim.serve_data(&call(&path, "", Some(&bearer)));
        assert!(header(&answer, "www-authenticate").is_some_and(|v| v.contains("invalid token")));
    }

    #[test]
    fn ten_thousand_projects_page_quickly_over_the_sync_endpoint() {
        let (sim, token) = simulator_with_token(Duration::from_secs(600));
        sim.reconfigure(|c| c.data.rate_limit = None);
        let bearer = format!("Bearer {token}");
        sim.seed_projects(10_000);
        let path = format!("/api/v1/{}/sync/Project/Projects", sim.division());
        let started = Instant::now();
        let mut query = "$select=ID,Timestamp&$filter=Timestamp%20gt%201".to_owned();
        let (mut records, mut pages, mut last) = (0, 0, 0i64);
        loop {
            let answer = sim.serve_data(&call(&path, &query, Some(&bearer)));
            assert!(answer.headers.is_empty(), "no rate headers when limits are off");
            let DataBody::Json(body) = answer.body else {
                panic!("json");
            };
            pages += 1;
            for record in body["d"]["results"].as_array().expect("results") {
                let timestamp: i64 = record["Timestamp"].as_str().expect("a string").parse().expect("int64");
                assert!(timestamp > last);
                last = timestamp;
                records += 1;
            }
            let Some(next) = body["d"]["__next"].as_str() else {
                break;
            };
            query = next.split_once('?').expect("a query").1.to_owned();
        }
        assert_eq!((records, pages), (10_000, 10));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn truncation_cuts_the_body_in_half() {
        let body = json!({"value": ["ééé", "abc"]});
        let answer = DataAnswer::page(body.clone()).truncated();
        let DataBody::Text { text, .. } = &answer.body else {
            panic!("text body");
        };
        assert!(!answer.page);
        assert!(serde_json::from_str::<Value>(text).is_err());
        assert!(text.len() * 2 <= body.to_string().len(), "{text}");
    }
}
