//! The handler, called with the records table's real stream (DynamoDB
//! Local) as Lambda hands it over, publishing to a bus made from the
//! template in moto's EventBridge; a rule sends the events to a queue.

use std::collections::BTreeMap;

use lambda_runtime::{Context, LambdaEvent};
use oauth_sync_tests::events::{EventsFixture, of_type};
use oauth_sync_tests::schema::validate_event;
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{SyncFixture, quick_sync_settings};
use oauth_sync_tests::stream::{stream_event, stream_records};
use serde_json::{Value, json};
use shared::config::PresetName;
use shared::sync::engine::RunEnd;

/// A full sync of the simulator's projects (new records inserted, changed
/// ones updated, missing ones marked deleted).
const FULL: &str = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
                    query = { \"$select\" = \"ID,Code,Description\" }\nmode = \"full\"\n";

fn invocation(payload: Value) -> LambdaEvent<Value> {
    let mut context = Context::default();
    context.request_id = "req-1".to_owned();
    LambdaEvent::new(payload, context)
}

/// detail-type → record ids.
fn by_type(events: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in events {
        map.entry(event["detail-type"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(event["detail"]["record_id"].as_str().unwrap_or_default().to_owned());
    }
    for ids in map.values_mut() {
        ids.sort();
    }
    map
}

#[tokio::test]
async fn a_sync_runs_changes_become_one_event_each_and_unchanged_records_none() {
    let events = EventsFixture::start("rec-events").await;
    let sink = events.sink();
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        FULL,
        quick_sync_settings(),
        "rec-events",
    )
    .await;
    let table = &fx.fixture.tables["RecordsTable"];
    let dynamodb = &fx.fixture.aws.dynamodb;
    let mut ids = fx.sim().seed_projects(12);
    ids.sort();
    let conn = fx.connect("rec-a").await;

    // The first run: twelve inserts on the stream, twelve events.
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    let first = stream_records(dynamodb, table).await;
    assert_eq!(first.len(), 12);
    let response = record_events::function_handler(&sink, invocation(stream_event(&first)))
        .await
        .expect("handled");
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let inserted = events.drain().await;
    assert_eq!(
        by_type(&inserted),
        BTreeMap::from([("record.inserted".to_owned(), ids.clone())])
    );
    let one = &inserted[0]["detail"];
    assert_eq!(one["connection"], conn.as_str());
    assert_eq!(one["sync"], "projects");
    assert_eq!(
        one["record"]["ID"], one["record_id"],
        "the record itself, as plain JSON"
    );

    // Upstream: one renamed, one deleted, one new; nine unchanged.
    assert!(fx.sim().update_project(&ids[0], "renamed upstream"));
    assert!(fx.sim().delete_project(&ids[1]));
    let added = fx.sim().seed_projects(1);
    assert_eq!(fx.run(&conn, "projects").await.end, RunEnd::Finished);
    // And a change of bookkeeping only, as another writer may make.
    dynamodb
        .update_item()
        .table_name(table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("{}#projects", conn.as_str())),
        )
        .key("record_id", aws_sdk_dynamodb::types::AttributeValue::S(ids[5].clone()))
        .update_expression("SET change_seq = :n, updated_at = :n")
        .expression_attribute_values(":n", aws_sdk_dynamodb::types::AttributeValue::N("7".to_owned()))
        .send()
        .await
        .expect("bookkeeping update");
    let all = stream_records(dynamodb, table).await;
    let second = &all[first.len()..];
    assert_eq!(second.len(), 4, "three changes and the bookkeeping: {second:?}");
    let response = record_events::function_handler(&sink, invocation(stream_event(second)))
        .await
        .expect("handled");
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let changed = events.drain().await;
    assert_eq!(
        by_type(&changed),
        BTreeMap::from([
            ("record.deleted".to_owned(), vec![ids[1].clone()]),
            ("record.inserted".to_owned(), added.clone()),
            ("record.updated".to_owned(), vec![ids[0].clone()]),
        ]),
        "one event per change, none for the nine unchanged or the bookkeeping"
    );
    let updated = &of_type(&changed, "record.updated")[0]["detail"];
    assert_eq!(updated["record"]["Description"], "renamed upstream");
    assert_ne!(
        updated["old_record"]["Description"], "renamed upstream",
        "the old image too"
    );
    let deleted = &of_type(&changed, "record.deleted")[0]["detail"];
    assert!(deleted["changed_at"].is_string(), "{deleted}");

    for event in inserted.iter().chain(&changed) {
        assert_eq!(validate_event(event), Ok(()), "{event}");
    }
}

#[tokio::test]
async fn a_stream_record_that_cannot_be_read_or_published_is_reported_alone() {
    let events = EventsFixture::start("rec-fail").await;
    let good = |sequence: &str, id: &str| {
        json!({"eventID": sequence, "eventName": "INSERT", "eventSource": "aws:dynamodb", "dynamodb": {
            "Keys": {"pk": {"S": "c1#projects"}, "record_id": {"S": id}},
            "NewImage": {"pk": {"S": "c1#projects"}, "record_id": {"S": id}, "record": {"M": {"ID": {"S": id}}},
                         "content_hash": {"S": "h"}, "updated_at": {"N": "1796126400000"}},
            "SequenceNumber": sequence, "StreamViewType": "NEW_AND_OLD_IMAGES"}})
    };
    let mut unreadable = good("200", "b");
    unreadable["dynamodb"]["NewImage"]["record"] = json!({"Q": "?"});
    let batch = stream_event(&[good("100", "a"), unreadable, good("300", "c")]);

    // The unreadable one is reported; the others are published.
    let response = record_events::function_handler(&events.sink(), invocation(batch.clone()))
        .await
        .expect("handled");
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, ["200"]);
    assert_eq!(
        by_type(&events.drain().await),
        BTreeMap::from([("record.inserted".to_owned(), vec!["a".to_owned(), "c".to_owned()])])
    );

    // EventBridge refusing everything (a bus that does not exist): every
    // record is reported, none is lost.
    let sdk = shared::aws::sdk_config_from_env();
    let missing = shared::events::EventSink::new(
        &sdk,
        format!("{}-missing", events.bus),
        shared::events::PublishSettings {
            base_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(5),
            ..shared::events::PublishSettings::default()
        },
    );
    let response = record_events::function_handler(&missing, invocation(batch))
        .await
        .expect("handled");
    let mut failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect();
    failed.sort();
    assert_eq!(failed, ["100", "200", "300"]);
    assert!(missing.failed() >= 2);
}
