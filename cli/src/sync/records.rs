//! `records`: the stored records of one connection's sync, in key order; a
//! table of the records' first fields, or every field with `--json`.

use std::path::PathBuf;

use serde_json::{Value, json};
use shared::config::Config;
use shared::connection::ConnectionId;
use shared::sync::jobs::job_id;
use shared::sync::records::StoredRecord;

use super::sync_definition;
use crate::output::{ago, shorten, table, write_out};
use crate::record_store;

/// `records ID SYNC`: the first `limit` records the job stored, in key order.
pub async fn records(config_file: PathBuf, id: &str, sync: &str, limit: usize, as_json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(limit > 0, "--limit: at least 1");
    let config = Config::load_and_discover(&config_file).await?;
    let id = ConnectionId::parse(id)?;
    sync_definition(&config, sync)?;
    let aws = crate::aws::clients().await;
    let store = record_store(&aws)?;
    let job = job_id(&id, sync);
    let records = store.list(&job, limit).await?;
    print_records(&job, &records, as_json)
}

/// Data columns a records table shows at most.
const RECORD_COLUMNS: usize = 5;

/// A value in a table cell: strings as they are, everything else as JSON.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => shorten(s, 28),
        Some(other) => shorten(&other.to_string(), 28),
    }
}

fn print_records(job: &str, records: &[StoredRecord], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<Value> = records
            .iter()
            .map(|r| json!({"id": r.id, "record": r.data, "updated_at": r.updated_at, "deleted_at": r.deleted_at}))
            .collect();
        return write_out(&format!("{}\n", serde_json::to_string_pretty(&values)?));
    }
    if records.is_empty() {
        return write_out(&format!("no records stored for {job}\n"));
    }
    // The records' top-level fields in order of first appearance, scalar
    // ones first, leaving out protocol annotations (OData's `__metadata`,
    // `@odata.etag`) and a field that only repeats the id.
    let mut columns: Vec<&str> = Vec::new();
    for record in records {
        if let Value::Object(map) = &record.data {
            for key in map.keys() {
                if !columns.contains(&key.as_str()) && !key.starts_with("__") && !key.starts_with("@odata") {
                    columns.push(key);
                }
            }
        }
    }
    columns.retain(|column| {
        !records
            .iter()
            .all(|r| r.data.get(*column).and_then(Value::as_str) == Some(r.id.as_str()))
    });
    let nested = |column: &str| {
        records
            .iter()
            .any(|r| matches!(r.data.get(column), Some(Value::Object(_) | Value::Array(_))))
    };
    columns.sort_by_key(|column| nested(column));
    let hidden = columns.len().saturating_sub(RECORD_COLUMNS);
    columns.truncate(RECORD_COLUMNS);
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut row = vec![r.id.clone()];
            row.extend(columns.iter().map(|c| cell(r.data.get(*c))));
            row.push(
                r.deleted_at
                    .map_or_else(String::new, |at| format!("deleted {}", ago(Some(at)))),
            );
            row
        })
        .collect();
    let mut header = vec!["id"];
    header.extend(&columns);
    header.push("");
    let mut out = table(&header, &rows);
    if hidden > 0 {
        out.push_str(&format!("({hidden} more fields; --json shows every field)\n"));
    }
    write_out(&out)
}
