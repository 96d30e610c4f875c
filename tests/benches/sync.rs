//! Sync engine: records per second end to end (10,000 Exact projects over
//! `sync/Project/Projects`, 1,000 a page, no rate limit), DynamoDB reads and
//! writes per record on a first run and on an unchanged full rerun, the share
//! of Exact's request rate a rate-limited run uses, and the bench process's
//! peak RSS. Against DynamoDB Local and the simulator's data APIs. Beside
//! the timed run, DynamoDB Local's raw `BatchWriteItem` rate measured in the
//! same run (the anchor: the ratio is the figure that holds across machines).
//!
//! Needs the local stack, freshly started: DynamoDB Local slows down as it
//! takes writes to tables with a stream (the records table has one), even
//! after the tables are deleted (see BENCHMARKS.md). So
//! each part runs on its own stack, and the timed part once per stack:
//! `scripts/bench sync` runs `rate`, then `records` BENCH_RUNS times, then
//! `rerun`, each against a freshly started stack, and prints the medians.
//!   scripts/stack start && . .local/stack.env && BENCH_SYNC_PART=records cargo bench -p oauth-sync-tests --bench sync
//! BENCH_SYNC_PART: rate, records or rerun (default: all three, in that
//! order, on one stack). Optional: BENCH_RECORDS (default 10000),
//! BENCH_RATE_RECORDS (default 1200: 60 pages of 20, six windows of 10),
//! BENCH_RAW_STREAM=1 (the raw rate's scratch table gets the records
//! table's stream; it slows the timed run after it, see `raw_batch_writes`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use oauth_sync_tests::simulator::{RateLimits, SimConfig};
use oauth_sync_tests::stack::{PROJECTS_INCREMENTAL, SyncFixture, deadline, quick_sync_settings};
use shared::config::PresetName;
use shared::connection::ConnectionId;
use shared::sync::engine::{RunEnd, RunReport};

/// The same endpoint read whole every run: an unchanged rerun fetches every
/// record again and compares it with the stored one.
const FULL_SYNC: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/sync/Project/Projects\"\n\
     query = { \"$select\" = \"ID,Code,Description,Timestamp\" }\nmode = \"full\"\n\
     fields = { id = \"ID\", code = \"Code\", description = \"Description\" }\ninterval_secs = 900\n";

const FULL_NORMAL: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
     query = { \"$select\" = \"ID,Code,Description\" }\nmode = \"full\"\n";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn exact() -> SimConfig {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    sim
}

async fn fixture(sim: SimConfig, syncs: &str, name: &str) -> SyncFixture {
    SyncFixture::start(sim, "min_refresh_interval_secs = 0", syncs, quick_sync_settings(), name).await
}

/// One run with a ten-minute deadline (the fixture's two minutes is too
/// short for 10,000 records on a busy machine).
async fn run(fx: &SyncFixture, conn: &ConnectionId) -> RunReport {
    fx.engine
        .run_now(conn, "projects", deadline(600), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Fresh tables, `records` projects at an Exact simulator without a rate
/// limit, and a connection `name` with `syncs` scheduled.
async fn seeded(syncs: &str, name: &str, records: usize) -> (SyncFixture, ConnectionId) {
    let fx = fixture(exact(), syncs, name).await;
    fx.sim().seed_projects(records);
    let conn = fx.connect(name).await;
    (fx, conn)
}

/// A first run, which must finish with every record inserted.
async fn first_run(fx: &SyncFixture, conn: &ConnectionId, records: usize) {
    let report = run(fx, conn).await;
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.inserted as usize, records, "{report:?}");
}

/// Deletes the fixture's tables: DynamoDB Local slows down as its in-memory
/// database grows, so each run starts from an otherwise empty one.
async fn drop_tables(fx: SyncFixture) {
    for table in fx.fixture.tables.values() {
        let _ = fx.fixture.aws.dynamodb.delete_table().table_name(table).send().await;
    }
}

/// (reads, writes) of the record store so far.
fn ops(fx: &SyncFixture) -> (u64, u64) {
    let ops = fx.engine.records().ops();
    (ops.reads.load(Ordering::Relaxed), ops.writes.load(Ordering::Relaxed))
}

/// The process's peak resident set (`VmHWM`), in kB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let records = env("BENCH_RECORDS", 10_000);
    let rate_records = env("BENCH_RATE_RECORDS", 1_200);
    let part = std::env::var("BENCH_SYNC_PART").unwrap_or_default();
    let mut lines = Vec::new();
    if matches!(part.as_str(), "" | "rate") {
        lines.push(rate_share(rate_records).await);
    }
    if matches!(part.as_str(), "" | "records") {
        lines.extend(records_per_second(records).await);
    }
    if matches!(part.as_str(), "" | "rerun") {
        lines.extend(unchanged_rerun(records).await);
    }
    assert!(
        !lines.is_empty(),
        "BENCH_SYNC_PART is `{part}`: rate, records or rerun (or unset: all three)"
    );
    #[allow(clippy::print_stdout)]
    {
        for line in lines {
            println!("{line}");
        }
    }
}

/// The share of the allowed request rate used under a scaled-down Exact
/// minutely limit: 10 per 5 s instead of 60 per minute. On a just-started
/// stack, so that DynamoDB Local's latency does not pace the run.
async fn rate_share(rate_records: usize) -> String {
    let limits = RateLimits {
        minutely: 10,
        minute_window: Duration::from_secs(5),
        daily: 5_000,
        day_window: Duration::from_secs(86_400),
    };
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.page_size = 20;
    sim.data.rate_limit = Some(limits);
    let fx = fixture(sim, FULL_NORMAL, "bench-sync-rate").await;
    fx.sim().seed_projects(rate_records);
    let conn = fx.connect("bench-sync-rate").await;
    let logged = fx.sim().data_requests_log().len();
    let before = fx.sim().counters();
    let started = Instant::now();
    let report = run(&fx, &conn).await;
    let elapsed = started.elapsed();
    assert_eq!(report.end, RunEnd::Finished, "{report:?}");
    assert_eq!(report.counts.inserted as usize, rate_records, "{report:?}");
    let after = fx.sim().counters();
    let log = fx.sim().data_requests_log();
    let during = &log[logged..];
    let requests = during.len() as u64;
    let window_ms = limits.minute_window.as_millis() as u64;
    // Windows touched, counted from the first request as back-to-back
    // windows: the last, partly used one counts whole.
    let windows = match (during.first(), during.last()) {
        (Some(first), Some(last)) => (last.at_ms - first.at_ms) / window_ms + 1,
        _ => 0,
    };
    let share = 100.0 * requests as f64 / (windows * u64::from(limits.minutely)) as f64;
    drop_tables(fx).await;
    format!(
        "rate: {requests} requests in {windows} windows of {} per {} s = {share:.0} % of the allowed rate, {} x 429 ({rate_records} records, 20 a page, {:.1} s, {} waits)",
        limits.minutely,
        limits.minute_window.as_secs(),
        after.data_429s - before.data_429s,
        elapsed.as_secs_f64(),
        report.counts.rate_limit_waits
    )
}

/// One timed first run on fresh tables and a fresh connection, as a table
/// row (`scripts/bench` takes the median of the rows of several stacks),
/// with the record store's reads and writes, DynamoDB Local's raw
/// `BatchWriteItem` rate measured just before on the same stack, the ratio,
/// and the bench process's peak RSS after it.
async fn records_per_second(records: usize) -> Vec<String> {
    let (fx, conn) = seeded(PROJECTS_INCREMENTAL, "bench-sync", records).await;
    let raw = raw_batch_writes(&fx, records).await;
    let before = ops(&fx);
    let started = Instant::now();
    first_run(&fx, &conn, records).await;
    let elapsed = started.elapsed();
    let after = ops(&fx);
    drop_tables(fx).await;
    let per = |n: u64| n as f64 / records as f64;
    let rate = records as f64 / elapsed.as_secs_f64();
    vec![
        "| sync | seconds | records/s | reads/record | writes/record | raw BatchWriteItem items/s | records/s ÷ raw items/s | bench process peak RSS MiB |".to_owned(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
        format!(
            "| {records} projects, incremental, first run | {:.1} | {rate:.0} | {:.2} | {:.2} | {raw:.0} | {:.0}% | {:.1} |",
            elapsed.as_secs_f64(),
            per(after.0 - before.0),
            per(after.1 - before.1),
            100.0 * rate / raw,
            peak_rss_kb().unwrap_or(0) as f64 / 1024.0
        ),
    ]
}

/// DynamoDB Local's own rate for the sync's kind of write, measured on the
/// same stack just before the timed run, as the anchor for the records
/// rate: `n` items of the size of the bench's stored projects (key, the
/// record's three fields as a map, content hash, two times) written with
/// plain `BatchWriteItem`s of 25, 4 batches in flight (the records writer's
/// batch size and concurrency), into a scratch table with the records
/// table's keys, deleted after. Items per second.
///
/// The scratch table has no stream (the records table has one), unless
/// `BENCH_RAW_STREAM=1`: in DynamoDB Local every write to a table with a
/// stream slows the later writes to any table with one, even after the
/// table is deleted, so 10,000 raw writes with a stream made the sync after
/// them four times slower (BENCHMARKS.md).
async fn raw_batch_writes(fx: &SyncFixture, n: usize) -> f64 {
    use aws_sdk_dynamodb::types::{AttributeValue, BillingMode, PutRequest, WriteRequest};
    use shared::sync::records::{content_hash, to_attribute};
    let client = fx.fixture.aws.dynamodb.clone();
    let records = &fx.fixture.tables["RecordsTable"];
    let described = client
        .describe_table()
        .table_name(records)
        .send()
        .await
        .expect("describe records table");
    let definition = described.table.expect("records table description");
    let scratch = format!("{records}-raw");
    client
        .create_table()
        .table_name(&scratch)
        .set_attribute_definitions(definition.attribute_definitions)
        .set_key_schema(definition.key_schema)
        .set_stream_specification(
            definition
                .stream_specification
                .filter(|_| std::env::var("BENCH_RAW_STREAM").is_ok_and(|v| v == "1")),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create the scratch table");
    let now = shared::connection::now_ms().to_string();
    let requests: Vec<WriteRequest> = (0..n)
        .map(|i| {
            // GUIDs like the simulator's, in scattered key order.
            let id = format!("{:08x}-0000-4000-8000-{i:012x}", (i as u32).wrapping_mul(2_654_435_761));
            let data = serde_json::json!({"id": id, "code": format!("P{i:05}"), "description": format!("Project {i}")});
            let serde_json::Value::Object(data) = data else {
                unreachable!()
            };
            let item = std::collections::HashMap::from([
                ("pk".to_owned(), AttributeValue::S("bench-raw#projects".to_owned())),
                ("record_id".to_owned(), AttributeValue::S(id)),
                ("content_hash".to_owned(), AttributeValue::S(content_hash(&data))),
                ("record".to_owned(), to_attribute(&serde_json::Value::Object(data), 1)),
                ("first_seen_at".to_owned(), AttributeValue::N(now.clone())),
                ("updated_at".to_owned(), AttributeValue::N(now.clone())),
            ]);
            let put = PutRequest::builder().set_item(Some(item)).build().expect("put request");
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for batch in requests.chunks(25) {
        let (client, table, permits, mut batch) = (client.clone(), scratch.clone(), permits.clone(), batch.to_vec());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            while !batch.is_empty() {
                let output = client
                    .batch_write_item()
                    .request_items(&table, std::mem::take(&mut batch))
                    .send()
                    .await
                    .expect("BatchWriteItem");
                batch = output
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&table))
                    .unwrap_or_default();
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("raw batch write");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = client.delete_table().table_name(&scratch).send().await;
    rate
}

/// A full-mode first run, then an unchanged full rerun over the same endpoint.
async fn unchanged_rerun(records: usize) -> Vec<String> {
    let (fx, conn) = seeded(FULL_SYNC, "bench-sync-full", records).await;
    let before = ops(&fx);
    first_run(&fx, &conn, records).await;
    let middle = ops(&fx);
    let rerun = run(&fx, &conn).await;
    assert_eq!(rerun.end, RunEnd::Finished, "{rerun:?}");
    assert_eq!(rerun.counts.unchanged as usize, records, "{rerun:?}");
    let after = ops(&fx);
    drop_tables(fx).await;
    let per = |n: u64| n as f64 / records as f64;
    vec![
        format!(
            "first run (full): {:.2} reads/record, {:.2} writes/record",
            per(middle.0 - before.0),
            per(middle.1 - before.1)
        ),
        format!(
            "unchanged full rerun: {:.2} reads/record, {:.2} writes/record ({} record writes; plus {} seen-id marker items, one per page, in the runs table)",
            per(after.0 - middle.0),
            per(after.1 - middle.1),
            after.1 - middle.1,
            rerun.counts.pages
        ),
    ]
}
