//! Refresh throughput: 1,000 due connections refreshed through the protocol
//! (`TokenService::refresh_due`) against DynamoDB Local and the simulator,
//! with the DynamoDB operations each refresh costs, beside DynamoDB Local's
//! raw rate of conditional updates measured in the same run (the ratio is
//! the figure that holds across machines).
//!
//! Needs the local stack:
//!   scripts/stack start && . .local/stack.env && cargo bench -p oauth-sync-tests --bench refresh
//! Optional: BENCH_CONNECTIONS (default 1000), BENCH_CONCURRENCY (default "1,8,32"),
//! BENCH_RUNS (default 3: each row is the median of that many runs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{RefreshFixture, deadline};
use shared::config::PresetName;
use shared::refresh::RefreshSettings;

#[tokio::main]
async fn main() {
    let connections: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,8,32".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut rows = Vec::new();
    for concurrency in levels {
        let mut measured = Vec::new();
        for _ in 0..runs.max(1) {
            measured.push(run_once(connections, concurrency).await);
        }
        // Medians of the runs, each figure on its own.
        let median = |f: fn(&Run) -> f64| {
            let mut values: Vec<f64> = measured.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        rows.push(format!(
            "| {connections} | {concurrency} | {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0}% |",
            measured.len(),
            median(|r| r.seconds),
            median(|r| r.rate),
            median(|r| r.reads),
            median(|r| r.writes),
            median(|r| r.queries),
            median(|r| r.raw_rate),
            median(|r| 100.0 * r.rate * (r.reads + r.writes) / r.raw_rate),
        ));
    }
    let mut out = String::from(
        "| connections | concurrency | runs | seconds | refreshes/s | reads/refresh | writes/refresh | index queries | \
         raw conditional updates/s | refresh operations / raw rate |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
}

/// One run's figures.
struct Run {
    seconds: f64,
    rate: f64,
    reads: f64,
    writes: f64,
    queries: f64,
    raw_rate: f64,
}

/// Fresh tables and `connections` fresh logins, all due (60 s access tokens
/// are inside the generic preset's 5-minute refresh lead), refreshed through
/// the protocol `concurrency` at a time; DynamoDB Local's raw rate first.
async fn run_once(connections: usize, concurrency: usize) -> Run {
    let sim = SimConfig {
        access_token_ttl: Duration::from_secs(60),
        ..SimConfig::for_preset(PresetName::Generic)
    };
    let fixture = Arc::new(RefreshFixture::start(sim, RefreshSettings::default(), "", "bench").await);
    fixture.connect_many("bench", connections, 32).await;
    let raw_rate = raw_conditional_updates(&fixture, connections, concurrency).await;
    let before = fixture.service.store().ops().snapshot();
    let started = Instant::now();
    let summary = fixture
        .service
        .refresh_due(shared::refresh::DueRun::all(deadline(600), concurrency))
        .await;
    let elapsed = started.elapsed();
    let after = fixture.service.store().ops().snapshot();
    assert_eq!(summary.refreshed as usize, connections, "{summary:?}");
    let counters = fixture.sim().counters();
    assert_eq!((counters.refresh_tokens_reused, counters.families_revoked), (0, 0));
    let per = |a: u64, b: u64| (a - b) as f64 / summary.refreshed as f64;
    Run {
        seconds: elapsed.as_secs_f64(),
        rate: summary.refreshed as f64 / elapsed.as_secs_f64(),
        reads: per(after.0, before.0),
        writes: per(after.1, before.1),
        queries: (after.2 - before.2) as f64,
        raw_rate,
    }
}

/// DynamoDB Local's own rate for the protocol's kind of write, measured in
/// the same run as the anchor for the refresh rate: `n` conditional
/// `UpdateItem`s (`attribute_not_exists(v) OR v < :v`, on items of their
/// own in the connections table), `concurrency` at a time.
async fn raw_conditional_updates(fixture: &Arc<RefreshFixture>, n: usize, concurrency: usize) -> f64 {
    use aws_sdk_dynamodb::types::AttributeValue;
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let (client, table, permits) = (
            fixture.aws.dynamodb.clone(),
            fixture.connections_table().to_owned(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            client
                .update_item()
                .table_name(table)
                .key("id", AttributeValue::S(format!("raw-{i}")))
                .update_expression("SET #v = :v")
                .condition_expression("attribute_not_exists(#v) OR #v < :v")
                .expression_attribute_names("#v", "raw_version")
                .expression_attribute_values(":v", AttributeValue::N("1".to_owned()))
                .send()
                .await
                .expect("conditional update");
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("raw update");
    }
    n as f64 / started.elapsed().as_secs_f64()
}
