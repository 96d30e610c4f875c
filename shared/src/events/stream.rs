//! Record events from the records table's stream (`NEW_AND_OLD_IMAGES`),
//! decided without AWS: which change a stream record is, and its event.
//!
//! - `INSERT` → `record.inserted`;
//! - `MODIFY` where `deleted_at` appears → `record.deleted`;
//! - `MODIFY` where `content_hash` changed or `deleted_at` disappeared →
//!   `record.updated`;
//! - any other `MODIFY` (bookkeeping only: `updated_at`, a change sequence…)
//!   and `REMOVE` (records are soft-deleted; a removed item is housekeeping)
//!   → no event.
//!
//! An event larger than EventBridge takes (256 KB) drops the old image
//! first, then the record itself (`"truncated": true`): the consumer reads
//! the record through the API.

use serde_json::{Map, Number, Value};

use super::{Event, MAX_ENTRY_BYTES, RecordChanged, entry_size, rfc3339};

/// A stream record that is not what the records table writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("stream record: {0}")]
    Invalid(String),
    #[error("attribute value: {0}")]
    Attribute(String),
}

/// What a stream record is about, as the records table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamChange {
    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub event_name: String,
    /// The stream's sequence number: the record's id in a partial batch response.
    pub sequence_number: Option<String>,
    pub keys: Map<String, Value>,
    pub new_image: Option<Map<String, Value>>,
    pub old_image: Option<Map<String, Value>>,
}

impl StreamChange {
    /// Reads one record of a DynamoDB stream event (Lambda's JSON:
    /// `eventName`, `dynamodb.Keys`, `NewImage`, `OldImage`, `SequenceNumber`),
    /// its images as plain JSON.
    pub fn parse(record: &Value) -> Result<StreamChange, ShapeError> {
        let invalid = |what: &str| ShapeError::Invalid(what.to_owned());
        let event_name = record["eventName"]
            .as_str()
            .ok_or_else(|| invalid("no eventName"))?
            .to_owned();
        let change = record
            .get("dynamodb")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("no dynamodb"))?;
        let image = |name: &str| -> Result<Option<Map<String, Value>>, ShapeError> {
            change
                .get(name)
                .filter(|v| !v.is_null())
                .map(|item| plain_item(item).map_err(|e| ShapeError::Invalid(format!("{name}: {e}"))))
                .transpose()
        };
        Ok(StreamChange {
            event_name,
            sequence_number: change.get("SequenceNumber").and_then(Value::as_str).map(str::to_owned),
            keys: image("Keys")?.ok_or_else(|| invalid("no Keys"))?,
            new_image: image("NewImage")?,
            old_image: image("OldImage")?,
        })
    }

    /// The sequence number of a stream record that could not be parsed, if it has one.
    pub fn sequence_number_of(record: &Value) -> Option<String> {
        record["dynamodb"]["SequenceNumber"].as_str().map(str::to_owned)
    }
}

/// Which record event a change is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Inserted,
    Updated,
    Deleted,
}

/// The rule of the module's doc: the change's kind, or `None` for no event.
pub fn classify(change: &StreamChange) -> Option<Kind> {
    match change.event_name.as_str() {
        "INSERT" => Some(Kind::Inserted),
        "MODIFY" => {
            let field =
                |image: &Option<Map<String, Value>>, name: &str| image.as_ref().and_then(|i| i.get(name)).cloned();
            let deleted = |image| field(image, "deleted_at").is_some_and(|v| !v.is_null());
            let (was_deleted, is_deleted) = (deleted(&change.old_image), deleted(&change.new_image));
            if is_deleted && !was_deleted {
                Some(Kind::Deleted)
            } else if (was_deleted && !is_deleted)
                || field(&change.old_image, "content_hash") != field(&change.new_image, "content_hash")
            {
                Some(Kind::Updated)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The event of a stream record, or `None` when it is no record change.
pub fn record_event(change: &StreamChange) -> Result<Option<Event>, ShapeError> {
    let Some(kind) = classify(change) else {
        return Ok(None);
    };
    let text = |map: &Map<String, Value>, name: &str| map.get(name).and_then(Value::as_str).map(str::to_owned);
    let pk = text(&change.keys, "pk").ok_or_else(|| ShapeError::Invalid("no pk key".into()))?;
    let record_id = text(&change.keys, "record_id").ok_or_else(|| ShapeError::Invalid("no record_id key".into()))?;
    // `{connection}#{sync}`; a connection id has no `#`.
    let (connection, sync) = pk
        .split_once('#')
        .ok_or_else(|| ShapeError::Invalid(format!("pk `{pk}` is not connection#sync")))?;
    let record_of = |image: &Option<Map<String, Value>>| image.as_ref().and_then(|i| i.get("record")).cloned();
    let time_of = |name: &str| {
        change
            .new_image
            .as_ref()
            .and_then(|i| i.get(name))
            .and_then(Value::as_i64)
            .map(rfc3339)
    };
    let mut detail = RecordChanged {
        connection: connection.to_owned(),
        sync: sync.to_owned(),
        record_id,
        record: record_of(&change.new_image),
        old_record: match kind {
            Kind::Updated => record_of(&change.old_image),
            _ => None,
        },
        truncated: false,
        changed_at: match kind {
            Kind::Deleted => time_of("deleted_at"),
            _ => time_of("updated_at"),
        },
    };
    let wrap = |detail: RecordChanged| match kind {
        Kind::Inserted => Event::RecordInserted(detail),
        Kind::Updated => Event::RecordUpdated(detail),
        Kind::Deleted => Event::RecordDeleted(detail),
    };
    let fits = |event: &Event| entry_size(event.detail_type(), &event.detail().to_string()) <= MAX_ENTRY_BYTES;
    let event = wrap(detail.clone());
    if detail.record.is_some() && fits(&event) {
        return Ok(Some(event));
    }
    detail.old_record = None;
    let event = wrap(detail.clone());
    if detail.record.is_some() && fits(&event) {
        return Ok(Some(event));
    }
    detail.record = None;
    detail.truncated = true;
    Ok(Some(wrap(detail)))
}

/// What one stream batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub records: usize,
    pub published: usize,
    /// Bookkeeping changes and removals: no event.
    pub skipped: usize,
    /// The sequence numbers of the stream records that could not be read or
    /// published: the partial batch response names them, and Lambda retries
    /// from them.
    pub failed: Vec<String>,
}

/// A stream record without a sequence number cannot be reported alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream record {index} of the batch has no SequenceNumber: {reason}")]
pub struct BatchError {
    pub index: usize,
    pub reason: String,
}

/// A batch of the records table's stream (Lambda's event JSON): each
/// record's event, published together through `events`.
pub async fn publish_batch(events: &super::EventSink, payload: &Value) -> Result<BatchOutcome, BatchError> {
    let records = payload["Records"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut outcome = BatchOutcome {
        records: records.len(),
        ..BatchOutcome::default()
    };
    let (mut sequences, mut batch) = (Vec::new(), Vec::new());
    for (index, record) in records.iter().enumerate() {
        let decided =
            StreamChange::parse(record).and_then(|change| Ok((change.sequence_number.clone(), record_event(&change)?)));
        match decided {
            Ok((_, None)) => outcome.skipped += 1,
            Ok((Some(sequence), Some(event))) => {
                sequences.push(sequence);
                batch.push(event);
            }
            Ok((None, Some(_))) => {
                return Err(BatchError {
                    index,
                    reason: "a change to publish".to_owned(),
                });
            }
            Err(e) => {
                tracing::error!(index, error = %e, "a stream record could not be read");
                let Some(sequence) = StreamChange::sequence_number_of(record) else {
                    return Err(BatchError {
                        index,
                        reason: e.to_string(),
                    });
                };
                outcome.failed.push(sequence);
            }
        }
    }
    for ((sequence, event), result) in sequences.into_iter().zip(&batch).zip(events.put(&batch).await) {
        match result {
            Ok(()) => outcome.published += 1,
            Err(e) => {
                tracing::warn!(detail_type = event.detail_type(), connection = event.connection(), error = %e, "a record event could not be published; Lambda retries from it");
                outcome.failed.push(sequence);
            }
        }
    }
    Ok(outcome)
}

/// An item in DynamoDB's attribute JSON (`{"name": {"S": "x"}}`) as plain JSON.
pub fn plain_item(item: &Value) -> Result<Map<String, Value>, ShapeError> {
    let map = item
        .as_object()
        .ok_or_else(|| ShapeError::Attribute("an item is not an object".into()))?;
    map.iter().map(|(k, v)| Ok((k.clone(), plain(v)?))).collect()
}

/// One attribute value (`{"N": "12"}`, `{"M": {…}}`…) as plain JSON: what
/// the records writer stored from JSON comes back as that JSON. Numbers
/// keep their text's precision; binaries stay base64 text.
pub fn plain(attribute: &Value) -> Result<Value, ShapeError> {
    let bad = |what: &str| ShapeError::Attribute(format!("{what}: {attribute}"));
    let map = attribute
        .as_object()
        .filter(|m| m.len() == 1)
        .ok_or_else(|| bad("not one type"))?;
    let Some((kind, value)) = map.iter().next() else {
        return Err(bad("empty"));
    };
    let number = |v: &Value| -> Result<Value, ShapeError> {
        let text = v.as_str().ok_or_else(|| bad("N is not text"))?;
        Ok(text
            .parse::<Number>()
            .map_or_else(|_| Value::String(text.to_owned()), Value::Number))
    };
    Ok(match kind.as_str() {
        "S" | "B" => Value::String(value.as_str().ok_or_else(|| bad("not text"))?.to_owned()),
        "N" => number(value)?,
        "BOOL" => Value::Bool(value.as_bool().ok_or_else(|| bad("not a boolean"))?),
        "NULL" => Value::Null,
        "M" => Value::Object(plain_item(value)?),
        "L" => Value::Array(list(value, &bad)?.iter().map(plain).collect::<Result<_, _>>()?),
        "SS" | "BS" => Value::Array(list(value, &bad)?.clone()),
        "NS" => Value::Array(list(value, &bad)?.iter().map(number).collect::<Result<_, _>>()?),
        _ => return Err(bad("unknown type")),
    })
}

fn list<'a>(value: &'a Value, bad: &dyn Fn(&str) -> ShapeError) -> Result<&'a Vec<Value>, ShapeError> {
    value.as_array().ok_or_else(|| bad("not a list"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A stream record of the records table, images in attribute JSON.
    fn record(name: &str, old: Option<Value>, new: Option<Value>) -> Value {
        let mut change = json!({
            "Keys": {"pk": {"S": "c1#projects"}, "record_id": {"S": "42"}},
            "SequenceNumber": "100",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        });
        if let Some(old) = old {
            change["OldImage"] = old;
        }
        if let Some(new) = new {
            change["NewImage"] = new;
        }
        json!({"eventID": "e1", "eventName": name, "eventSource": "aws:dynamodb", "dynamodb": change})
    }

    fn image(hash: &str, code: &str, extra: &[(&str, Value)]) -> Value {
        let mut item = json!({
            "pk": {"S": "c1#projects"},
            "record_id": {"S": "42"},
            "record": {"M": {"ID": {"S": "42"}, "Code": {"S": code}, "Budget": {"N": "1250.50"}, "Tags": {"L": [{"S": "a"}, {"NULL": true}, {"BOOL": false}]}}},
            "content_hash": {"S": hash},
            "first_seen_at": {"N": "1796126400000"},
            "updated_at": {"N": "1796126400000"},
        });
        for (k, v) in extra {
            item[*k] = v.clone();
        }
        item
    }

    fn event_of(record: &Value) -> Option<Event> {
        record_event(&StreamChange::parse(record).expect("parses")).expect("an event or none")
    }

    #[test]
    fn attribute_json_becomes_the_json_that_was_stored() {
        let attribute = json!({"M": {
            "s": {"S": "x"}, "n": {"N": "12"}, "f": {"N": "-1.5e3"}, "big": {"N": "123456789012345678901234567890"},
            "t": {"BOOL": true}, "z": {"NULL": true}, "l": {"L": [{"N": "1"}, {"M": {}}]},
            "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5"]}, "b": {"B": "AAE="}
        }});
        let plain = plain(&attribute).expect("plain");
        assert_eq!(plain["s"], "x");
        assert_eq!(plain["n"], 12);
        assert_eq!(plain["f"], -1500.0);
        assert!(plain["big"].is_number() || plain["big"].is_string());
        assert_eq!(plain["t"], true);
        assert_eq!(plain["z"], Value::Null);
        assert_eq!(plain["l"], json!([1, {}]));
        assert_eq!(plain["ss"], json!(["a", "b"]));
        assert_eq!(plain["ns"], json!([1, 2.5]));
        assert_eq!(plain["b"], "AAE=");
        assert!(super::plain(&json!({"X": 1})).is_err(), "an unknown type");
        assert!(super::plain(&json!({"S": "a", "N": "1"})).is_err(), "two types");
    }

    #[test]
    fn an_insert_is_an_inserted_record_with_its_new_image() {
        let event = event_of(&record("INSERT", None, Some(image("h1", "P-1", &[])))).expect("an event");
        assert_eq!(event.detail_type(), "record.inserted");
        let detail = event.detail();
        assert_eq!(detail["connection"], "c1");
        assert_eq!(detail["sync"], "projects");
        assert_eq!(detail["record_id"], "42");
        assert_eq!(detail["record"]["Code"], "P-1");
        assert_eq!(detail["record"]["Budget"], 1250.5);
        assert_eq!(detail["changed_at"], "2026-12-01T12:00:00.000Z");
        assert!(detail.get("old_record").is_none() && detail.get("truncated").is_none());
    }

    #[test]
    fn a_changed_hash_is_an_update_with_both_images() {
        let event = event_of(&record(
            "MODIFY",
            Some(image("h1", "P-1", &[])),
            Some(image("h2", "P-2", &[])),
        ))
        .expect("an event");
        assert_eq!(event.detail_type(), "record.updated");
        assert_eq!(event.detail()["record"]["Code"], "P-2");
        assert_eq!(event.detail()["old_record"]["Code"], "P-1");
    }

    #[test]
    fn a_soft_delete_is_a_deletion_and_an_undelete_an_update() {
        let deleted_at = ("deleted_at", json!({"N": "1796126460000"}));
        let deleted = event_of(&record(
            "MODIFY",
            Some(image("h1", "P-1", &[])),
            Some(image("h1", "P-1", std::slice::from_ref(&deleted_at))),
        ))
        .expect("an event");
        assert_eq!(deleted.detail_type(), "record.deleted");
        assert_eq!(deleted.detail()["changed_at"], "2026-12-01T12:01:00.000Z");
        let back = event_of(&record(
            "MODIFY",
            Some(image("h1", "P-1", &[deleted_at])),
            Some(image("h1", "P-1", &[])),
        ))
        .expect("an event");
        assert_eq!(back.detail_type(), "record.updated");
    }

    #[test]
    fn bookkeeping_changes_and_removals_are_no_events() {
        let old = image("h1", "P-1", &[]);
        let new = image(
            "h1",
            "P-1",
            &[
                ("updated_at", json!({"N": "1796126999000"})),
                ("change_seq", json!({"N": "7"})),
            ],
        );
        assert_eq!(event_of(&record("MODIFY", Some(old.clone()), Some(new))), None);
        assert_eq!(event_of(&record("REMOVE", Some(old), None)), None);
    }

    #[test]
    fn a_record_too_large_for_an_event_is_flagged_and_left_out() {
        let big = |c: char| json!({"S": c.to_string().repeat(150 * 1024)});
        let with = |hash: &str, c: char| {
            let mut item = image(hash, "P", &[]);
            item["record"]["M"]["Blob"] = big(c);
            item
        };
        // Both images do not fit; the new one does.
        let update = event_of(&record("MODIFY", Some(with("h1", 'a')), Some(with("h2", 'b')))).expect("an event");
        assert!(update.detail()["record"]["Blob"].is_string());
        assert!(update.detail().get("old_record").is_none());
        // A record alone over the limit: the id and the flag.
        let mut huge = image("h3", "P", &[]);
        huge["record"]["M"]["Blob"] = json!({"S": "x".repeat(MAX_ENTRY_BYTES)});
        let insert = event_of(&record("INSERT", None, Some(huge))).expect("an event");
        assert_eq!(insert.detail()["truncated"], true);
        assert_eq!(insert.detail()["record_id"], "42");
        assert!(insert.detail().get("record").is_none());
    }

    #[test]
    fn a_record_without_the_tables_keys_is_refused_with_its_sequence_number_known() {
        let mut bad = record("INSERT", None, Some(image("h1", "P-1", &[])));
        bad["dynamodb"]["Keys"] = json!({"id": {"S": "x"}});
        let change = StreamChange::parse(&bad).expect("parses");
        assert!(record_event(&change).is_err());
        assert_eq!(StreamChange::sequence_number_of(&bad).as_deref(), Some("100"));
        let broken = json!({"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {"Q": 1}}, "SequenceNumber": "7"}});
        assert!(StreamChange::parse(&broken).is_err());
        assert_eq!(StreamChange::sequence_number_of(&broken).as_deref(), Some("7"));
    }
}
