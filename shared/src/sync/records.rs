//! The records table: one item per synced record, `pk = "{connection}#{sync}"`,
//! `record_id` its primary key. The record is stored as native DynamoDB
//! attributes under `record` (so it can be queried: `record.Code`), with its
//! content hash, `first_seen_at`, `updated_at` and, once the provider deleted
//! it, `deleted_at` (a soft delete: downstream consumers of the table's stream
//! see it as a change).
//!
//! Every write also sets `change_seq`, the job's change sequence number
//! handed out by the run that holds the job's lease: the `changes` local
//! secondary index orders a partition by it, so that [`RecordStore::changes`]
//! can answer "what changed since this cursor" with strongly consistent
//! reads (docs/api.md, "Changes since a cursor", says why no change is skipped).
//!
//! A page costs one consistent `BatchGetItem` per 100 keys (projection: the
//! hash and the delete mark) and writes only records that are new, changed or
//! back from deletion, in `BatchWriteItem`s of 25 whose unprocessed items are
//! retried with backoff: an unchanged record costs zero writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use serde_json::{Map, Number, Value};

use super::jobs::LeaseClock;
use crate::dynamo::{BATCH_ATTEMPTS, Conditional, OpCounts, StoreError, batch_get, conditional, n, s, sdk_failure};

/// The local secondary index of the records table that orders a partition by `change_seq`.
pub const CHANGES_INDEX: &str = "changes";

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB nests attributes at most 32 levels deep; deeper values are kept as JSON text.
const MAX_DEPTH: usize = 30;
const GET_BATCH: usize = 100;
const WRITE_BATCH: usize = 25;
/// Batch reads or writes of one page in flight at once.
const CONCURRENCY: usize = 4;

/// A record ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub id: String,
    pub data: Map<String, Value>,
    /// SHA-256 of the canonical JSON of `data` (base64url).
    pub hash: String,
}

/// What the provider said about one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The whole record.
    Upsert(Incoming),
    /// Some of the record's properties (Microsoft Graph's delta answers for
    /// directory objects carry only what changed): merged into the stored
    /// record, so the item, and the stream's new image, is the whole record.
    /// A record not stored yet is stored as it came.
    Merge(Incoming),
    Delete(String),
}

impl Change {
    fn id(&self) -> &str {
        match self {
            Change::Upsert(record) | Change::Merge(record) => &record.id,
            Change::Delete(id) => id,
        }
    }
}

/// What one page changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

/// What a page will write, decided from the stored hashes.
#[derive(Debug, Clone)]
pub struct Plan {
    pk: String,
    puts: Vec<HashMap<String, AttributeValue>>,
    deletes: Vec<String>,
    /// What the page changes (counted once, whatever retries the writes need).
    pub counts: Applied,
    now: i64,
}

/// A record as stored, for the CLI and the API.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub id: String,
    pub data: Value,
    pub first_seen_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub deleted_at: Option<i64>,
    /// The job's change sequence number of its last write (absent on records
    /// written before change sequences existed).
    pub change_seq: Option<u64>,
}

impl StoredRecord {
    fn from_item(item: &HashMap<String, AttributeValue>) -> StoredRecord {
        let number = |key: &str| match item.get(key) {
            Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
            _ => None,
        };
        StoredRecord {
            id: match item.get("record_id") {
                Some(AttributeValue::S(id)) => id.clone(),
                _ => String::new(),
            },
            data: item.get("record").map_or(Value::Null, to_json),
            first_seen_at: number("first_seen_at"),
            updated_at: number("updated_at"),
            deleted_at: number("deleted_at"),
            change_seq: number("change_seq").and_then(|n| u64::try_from(n).ok()),
        }
    }
}

/// A place in a partition's change order: after the change `seq` of record
/// `id`. Two records can share a number when a run that failed left writes
/// behind; the index keeps its own order among them, and the record id in
/// the paging key pins the place within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePlace {
    pub seq: u64,
    pub id: String,
}

/// One page of [`RecordStore::changes`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChangesPage {
    pub records: Vec<StoredRecord>,
    /// Where the next page starts: the last record's place, or the place
    /// asked for when nothing changed since.
    pub next: Option<ChangePlace>,
    /// More changes are readable right now (the page was cut by its limit).
    pub more: bool,
}

/// The records table.
#[derive(Debug, Clone)]
pub struct RecordStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    ops: Arc<OpCounts>,
}

/// What is stored of a record the page needs to compare.
struct Known {
    hash: Option<String>,
    deleted: bool,
    first_seen_at: Option<i64>,
    /// The stored record, read only when the page has partial records to merge.
    record: Option<Map<String, Value>>,
}

impl RecordStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> RecordStore {
        RecordStore {
            client,
            table: table.into(),
            ops: Arc::new(OpCounts::default()),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Items read (`reads`), items written (`writes`) and queries, for the
    /// benchmark and for tests that count writes.
    pub fn ops(&self) -> &OpCounts {
        &self.ops
    }

    /// Reads the stored hashes of the page's keys and decides what to write:
    /// new, changed and undeleted records, and deletions of live ones. The
    /// last change of a record in the page wins.
    pub async fn plan(&self, pk: &str, changes: Vec<Change>, now: i64) -> Result<Plan, StoreError> {
        let mut latest: BTreeMap<String, Change> = BTreeMap::new();
        for change in changes {
            latest.insert(change.id().to_owned(), change);
        }
        let ids: Vec<String> = latest.keys().cloned().collect();
        let merging = latest.values().any(|c| matches!(c, Change::Merge(_)));
        let known = self.known(pk, ids, merging).await?;
        let mut plan = Plan {
            pk: pk.to_owned(),
            puts: Vec::new(),
            deletes: Vec::new(),
            counts: Applied::default(),
            now,
        };
        for (id, change) in latest {
            let stored = known.get(&id);
            match change {
                Change::Upsert(record) => plan.upsert(record, stored),
                Change::Merge(patch) => plan.upsert(merged(patch, stored), stored),
                Change::Delete(id) => {
                    if stored.is_some_and(|k| !k.deleted) {
                        plan.counts.deleted += 1;
                        plan.deletes.push(id);
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Carries out a plan. Safe to repeat after a failure: puts replace the
    /// same items, and a deletion that already landed is not written again.
    /// No batch is sent once `fence` says the run's lease ran out
    /// ([`StoreError::LeaseLost`]): a run paused past its lease cannot write
    /// what it read before over what a newer run wrote since.
    ///
    /// The writes carry the change numbers `first_seq ..
    /// first_seq + plan.writes()`, in the plan's order; the caller makes
    /// them visible to readers of [`RecordStore::changes`] only after this
    /// returns `Ok`.
    pub async fn write(&self, plan: &Plan, fence: &LeaseClock, first_seq: u64) -> Result<(), StoreError> {
        let puts = plan
            .puts
            .iter()
            .zip(first_seq..)
            .map(|(item, seq)| {
                let mut item = item.clone();
                item.insert("change_seq".to_owned(), n(seq));
                item
            })
            .collect();
        self.put_all(puts, fence).await?;
        let deletes_from = first_seq + plan.puts.len() as u64;
        self.mark_deleted(&plan.pk, &plan.deletes, deletes_from, plan.now, fence)
            .await?;
        Ok(())
    }

    /// One page of a sweep: the ids of up to `limit` live (not deleted)
    /// records of `pk` after `after`, in key order, and the last id read
    /// (`None` when the partition ends). Only the key and the delete mark
    /// are read; memory is bounded by `limit`, whatever the partition's size.
    pub async fn live_page(
        &self,
        pk: &str,
        after: Option<&str>,
        limit: i32,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let start = after.map(|id| HashMap::from([("pk".to_owned(), s(pk)), ("record_id".to_owned(), s(id))]));
        let (items, last) = self
            .query_page(pk, Some("record_id, deleted_at"), Some(limit), start)
            .await?;
        let live = items
            .iter()
            .filter(|item| !item.contains_key("deleted_at"))
            .filter_map(|item| match item.get("record_id") {
                Some(AttributeValue::S(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let last = last.and_then(|k| match k.get("record_id") {
            Some(AttributeValue::S(id)) => Some(id.clone()),
            _ => None,
        });
        Ok((live, last))
    }

    /// Marks the records `ids` of `pk` deleted, a few at a time, while
    /// `fence` holds, with the change numbers `first_seq .. first_seq +
    /// ids.len()`; those already deleted are left as they are. Returns how
    /// many it marked.
    pub async fn delete_many(
        &self,
        pk: &str,
        ids: &[String],
        now: i64,
        fence: &LeaseClock,
        first_seq: u64,
    ) -> Result<u64, StoreError> {
        let batches = ids
            .chunks(WRITE_BATCH)
            .zip((first_seq..).step_by(WRITE_BATCH))
            .map(|(chunk, seq)| (chunk.to_vec(), seq))
            .collect();
        let pk = pk.to_owned();
        let deleted = self
            .concurrently(batches, |store, (chunk, seq)| {
                let (pk, fence) = (pk.clone(), fence.clone());
                async move { store.mark_deleted(&pk, &chunk, seq, now, &fence).await }
            })
            .await?;
        Ok(deleted.into_iter().sum())
    }

    /// Records of `pk` changed after `after` (from the start: `None`), in
    /// change order, with change numbers below `below` only: the job's
    /// committed number, below which every write has landed. Strongly
    /// consistent reads of the `changes` index; at most `limit` records.
    pub async fn changes(
        &self,
        pk: &str,
        after: Option<&ChangePlace>,
        below: u64,
        limit: i32,
    ) -> Result<ChangesPage, StoreError> {
        // A place with no id is the start (DynamoDB keys cannot be empty).
        let start = after.filter(|place| !place.id.is_empty()).map(|place| {
            HashMap::from([
                ("pk".to_owned(), s(pk)),
                ("record_id".to_owned(), s(&place.id)),
                ("change_seq".to_owned(), n(place.seq)),
            ])
        });
        self.ops.queries.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(CHANGES_INDEX)
            .key_condition_expression("pk = :pk AND change_seq < :below")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":below", n(below))
            .consistent_read(true)
            .select(aws_sdk_dynamodb::types::Select::AllAttributes)
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_failure("Query(records changes)", &self.table, e))?;
        let records: Vec<StoredRecord> = output.items().iter().map(StoredRecord::from_item).collect();
        let more = output.last_evaluated_key.as_ref().is_some_and(|k| !k.is_empty());
        let next = records
            .last()
            .and_then(|r| {
                Some(ChangePlace {
                    seq: r.change_seq?,
                    id: r.id.clone(),
                })
            })
            .or_else(|| after.cloned());
        Ok(ChangesPage { records, next, more })
    }

    /// One record of `pk` as stored (deleted ones too), with a strongly consistent read.
    pub async fn get(&self, pk: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        self.ops.reads.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("record_id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_failure("GetItem(record)", &self.table, e))?;
        Ok(output.item.as_ref().map(StoredRecord::from_item))
    }

    /// Up to `limit` records of `pk`, in key order.
    pub async fn list(&self, pk: &str, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let items = self.partition(pk, None, limit).await?;
        Ok(items.iter().map(StoredRecord::from_item).collect())
    }

    /// Up to `limit` items (`usize::MAX`: all) of the partition `pk`, with
    /// only `projection` if given, a `Query` page at a time.
    async fn partition(
        &self,
        pk: &str,
        projection: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        while items.len() < limit {
            // No limit for an unbounded read: DynamoDB's 1 MB pages.
            let left = i32::try_from(limit - items.len()).ok();
            let (page, last) = self.query_page(pk, projection, left, start).await?;
            items.extend(page);
            start = last;
            if start.is_none() {
                break;
            }
        }
        Ok(items)
    }

    /// One `Query` page of the partition `pk`: its items and the key to go
    /// on from (`None` at the end).
    async fn query_page(
        &self,
        pk: &str,
        projection: Option<&str>,
        limit: Option<i32>,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<
        (
            Vec<HashMap<String, AttributeValue>>,
            Option<HashMap<String, AttributeValue>>,
        ),
        StoreError,
    > {
        self.ops.queries.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .set_projection_expression(projection.map(str::to_owned))
            .set_limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_failure("Query(records)", &self.table, e))?;
        let last = output.last_evaluated_key.filter(|k| !k.is_empty());
        Ok((output.items.unwrap_or_default(), last))
    }

    /// The stored hash, delete mark and first sighting of each id that
    /// exists: batches of 100 keys, a few at a time.
    async fn known(&self, pk: &str, ids: Vec<String>, with_record: bool) -> Result<HashMap<String, Known>, StoreError> {
        let batches = ids.chunks(GET_BATCH).map(<[String]>::to_vec).collect();
        let pk = pk.to_owned();
        let found = self
            .concurrently(batches, move |store, chunk| {
                let pk = pk.clone();
                async move { store.known_batch(&pk, &chunk, with_record).await }
            })
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Runs `step` over every batch, [`CONCURRENCY`] at a time; the first
    /// error ends it.
    async fn concurrently<T, R, F, Fut>(&self, batches: Vec<T>, step: F) -> Result<Vec<R>, StoreError>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(RecordStore, T) -> Fut,
        Fut: std::future::Future<Output = Result<R, StoreError>> + Send + 'static,
    {
        let mut batches = batches.into_iter();
        let mut results = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < CONCURRENCY {
                let Some(batch) = batches.next() else { break };
                tasks.spawn(step(self.clone(), batch));
            }
            match tasks.join_next().await {
                None => return Ok(results),
                Some(Ok(result)) => results.push(result?),
                Some(Err(e)) => {
                    return Err(StoreError::Malformed {
                        id: self.table.clone(),
                        reason: format!("a batch task failed: {e}"),
                    });
                }
            }
        }
    }

    async fn known_batch(
        &self,
        pk: &str,
        chunk: &[String],
        with_record: bool,
    ) -> Result<HashMap<String, Known>, StoreError> {
        let mut known = HashMap::new();
        let keys = chunk
            .iter()
            .map(|id| HashMap::from([("pk".to_owned(), s(pk)), ("record_id".to_owned(), s(id))]))
            .collect();
        let request = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .projection_expression(if with_record {
                "record_id, content_hash, deleted_at, first_seen_at, #record"
            } else {
                "record_id, content_hash, deleted_at, first_seen_at"
            })
            .set_expression_attribute_names(
                with_record.then(|| HashMap::from([("#record".to_owned(), "record".to_owned())])),
            )
            .build()
            .map_err(|e| StoreError::Malformed {
                id: pk.to_owned(),
                reason: e.to_string(),
            })?;
        let items = batch_get(&self.client, &self.table, request, &self.ops, "BatchGetItem(records)").await?;
        for item in items {
            let Some(AttributeValue::S(id)) = item.get("record_id") else {
                continue;
            };
            known.insert(
                id.clone(),
                Known {
                    hash: match item.get("content_hash") {
                        Some(AttributeValue::S(h)) => Some(h.clone()),
                        _ => None,
                    },
                    deleted: item.contains_key("deleted_at"),
                    first_seen_at: match item.get("first_seen_at") {
                        Some(AttributeValue::N(v)) => v.parse().ok(),
                        _ => None,
                    },
                    record: match item.get("record").map(to_json) {
                        Some(Value::Object(map)) => Some(map),
                        _ => None,
                    },
                },
            );
        }
        Ok(known)
    }

    /// Writes items in batches of 25, a few batches at a time; unprocessed
    /// items are retried with jittered backoff, a bounded number of times.
    async fn put_all(&self, items: Vec<HashMap<String, AttributeValue>>, fence: &LeaseClock) -> Result<(), StoreError> {
        let requests = items
            .into_iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Malformed {
                id: "record".to_owned(),
                reason: e.to_string(),
            })?;
        let batches = requests.chunks(WRITE_BATCH).map(<[_]>::to_vec).collect();
        self.concurrently(batches, |store, batch| {
            let fence = fence.clone();
            async move { store.write_batch(batch, &fence).await }
        })
        .await?;
        Ok(())
    }

    async fn write_batch(&self, mut batch: Vec<WriteRequest>, fence: &LeaseClock) -> Result<(), StoreError> {
        let mut attempt = 0;
        while !batch.is_empty() {
            if !fence.holds() {
                return Err(StoreError::LeaseLost);
            }
            let sent = batch.len() as u64;
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, std::mem::take(&mut batch))
                .send()
                .await
                .map_err(|e| sdk_failure("BatchWriteItem(records)", &self.table, e))?;
            batch = output
                .unprocessed_items
                .and_then(|mut u| u.remove(&self.table))
                .unwrap_or_default();
            self.ops.writes.fetch_add(sent - batch.len() as u64, Ordering::Relaxed);
            if !batch.is_empty() {
                attempt += 1;
                backoff(attempt, "BatchWriteItem(records)", &self.table)?;
                tokio::time::sleep(crate::dynamo::batch_backoff(attempt)).await;
            }
        }
        Ok(())
    }

    /// Soft-deletes: `deleted_at` on records that exist and are not deleted
    /// yet, with the change numbers `first_seq ..` in `ids`' order.
    async fn mark_deleted(
        &self,
        pk: &str,
        ids: &[String],
        first_seq: u64,
        now: i64,
        fence: &LeaseClock,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for (id, seq) in ids.iter().zip(first_seq..) {
            if !fence.holds() {
                return Err(StoreError::LeaseLost);
            }
            self.ops.writes.fetch_add(1, Ordering::Relaxed);
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("record_id", s(id))
                .update_expression("SET deleted_at = :now, updated_at = :now, change_seq = :seq")
                .condition_expression("attribute_exists(record_id) AND attribute_not_exists(deleted_at)")
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":seq", n(seq))
                .send()
                .await;
            // Refused: deleted already, or gone.
            if let Conditional::Done = conditional(result, "UpdateItem(delete record)", &self.table, |_| false)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

fn backoff(attempt: u32, operation: &'static str, table: &str) -> Result<(), StoreError> {
    if attempt >= BATCH_ATTEMPTS {
        return Err(StoreError::Unprocessed {
            operation,
            table: table.to_owned(),
            attempts: attempt,
        });
    }
    Ok(())
}

impl Plan {
    /// How many writes (and change numbers) the plan needs.
    pub fn writes(&self) -> u64 {
        (self.puts.len() + self.deletes.len()) as u64
    }

    /// A whole record: nothing when it is stored unchanged, else a put.
    fn upsert(&mut self, record: Incoming, stored: Option<&Known>) {
        match stored {
            Some(k) if !k.deleted && k.hash.as_deref() == Some(record.hash.as_str()) => self.counts.unchanged += 1,
            Some(k) => {
                self.counts.updated += 1;
                let first_seen_at = k.first_seen_at.unwrap_or(self.now);
                self.puts.push(item(&self.pk, &record, first_seen_at, self.now));
            }
            None => {
                self.counts.inserted += 1;
                self.puts.push(item(&self.pk, &record, self.now, self.now));
            }
        }
    }
}

/// A partial record merged into the stored one (when there is a live one).
fn merged(patch: Incoming, stored: Option<&Known>) -> Incoming {
    match stored {
        Some(Known {
            deleted: false,
            record: Some(record),
            ..
        }) => {
            let mut data = record.clone();
            data.extend(patch.data);
            let hash = content_hash(&data);
            Incoming {
                id: patch.id,
                data,
                hash,
            }
        }
        _ => patch,
    }
}

/// The item of a record.
fn item(pk: &str, record: &Incoming, first_seen_at: i64, now: i64) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(pk)),
        ("record_id".to_owned(), s(&record.id)),
        (
            "record".to_owned(),
            AttributeValue::M(map_to_attributes(&record.data, 1)),
        ),
        ("content_hash".to_owned(), s(&record.hash)),
        ("first_seen_at".to_owned(), n(first_seen_at)),
        ("updated_at".to_owned(), n(now)),
    ])
}

fn map_to_attributes(map: &Map<String, Value>, depth: usize) -> HashMap<String, AttributeValue> {
    map.iter()
        .map(|(k, v)| (k.clone(), to_attribute(v, depth + 1)))
        .collect()
}

/// A JSON value as a native DynamoDB attribute. Numbers DynamoDB cannot hold
/// (more than 38 digits, beyond ±1E125) and values nested deeper than
/// DynamoDB allows are kept as text.
pub fn to_attribute(value: &Value, depth: usize) -> AttributeValue {
    if depth > MAX_DEPTH && (value.is_object() || value.is_array()) {
        return AttributeValue::S(value.to_string());
    }
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(number) if fits_dynamodb(number) => AttributeValue::N(number.to_string()),
        Value::Number(number) => AttributeValue::S(number.to_string()),
        Value::String(text) => AttributeValue::S(text.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(|v| to_attribute(v, depth + 1)).collect()),
        Value::Object(map) => AttributeValue::M(map_to_attributes(map, depth)),
    }
}

fn fits_dynamodb(number: &Number) -> bool {
    let text = number.to_string();
    let digits = text.chars().filter(char::is_ascii_digit).count();
    match number.as_f64() {
        _ if number.is_i64() || number.is_u64() => digits <= 38,
        Some(f) => f == 0.0 || (f.abs() < 1e125 && f.abs() > 1e-129),
        None => false,
    }
}

/// A stored attribute back as JSON (for the CLI).
pub fn to_json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(text) => Value::String(text.clone()),
        AttributeValue::N(number) => serde_json::from_str(number).unwrap_or_else(|_| Value::String(number.clone())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::L(items) => Value::Array(items.iter().map(to_json).collect()),
        AttributeValue::M(map) => {
            let sorted: BTreeMap<_, _> = map.iter().collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        _ => Value::Null,
    }
}

/// SHA-256 of the record's canonical JSON (keys sorted at every level), so
/// the same content always hashes alike whatever order the provider sent.
pub fn content_hash(data: &Map<String, Value>) -> String {
    let mut text = String::new();
    canonical(&Value::Object(data.clone()), &mut text);
    crate::crypto::sha256_b64url(text.as_bytes())
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<_, _> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_key_order_and_sees_every_change() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[1,"z"]}}"#).unwrap_or_default();
        let b: Map<String, Value> = serde_json::from_str(r#"{"a":{"x":[1,"z"],"y":2},"b":1}"#).unwrap_or_default();
        let c: Map<String, Value> = serde_json::from_str(r#"{"a":{"x":[1,"z"],"y":2},"b":2}"#).unwrap_or_default();
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }

    #[test]
    fn json_becomes_native_attributes_and_back() {
        let v =
            serde_json::json!({"ID": "a", "n": 12, "f": 1.5, "big": 1e200, "ok": true, "none": null, "l": [1, "x"]});
        let attribute = to_attribute(&v, 0);
        let AttributeValue::M(map) = &attribute else {
            panic!("a map")
        };
        assert_eq!(map["n"], AttributeValue::N("12".into()));
        assert_eq!(
            map["big"],
            AttributeValue::S("1e+200".into()),
            "beyond DynamoDB's range: kept as text"
        );
        assert_eq!(map["none"], AttributeValue::Null(true));
        let back = to_json(&attribute);
        assert_eq!(back["l"], serde_json::json!([1, "x"]));
        assert_eq!(back["f"], serde_json::json!(1.5));
    }

    #[test]
    fn very_deep_values_are_kept_as_text() {
        let mut v = serde_json::json!("leaf");
        for _ in 0..40 {
            v = serde_json::json!({ "k": v });
        }
        let mut attribute = to_attribute(&v, 0);
        let mut depth = 0;
        while let AttributeValue::M(map) = attribute {
            attribute = map["k"].clone();
            depth += 1;
        }
        assert!(depth <= 32, "{depth}");
        assert!(matches!(attribute, AttributeValue::S(_)));
    }
}
