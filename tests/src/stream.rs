//! The records table's stream, read from DynamoDB Local, as Lambda hands it
//! to a stream consumer: the JSON of a DynamoDB stream event (`Records`,
//! each with `eventName` and `dynamodb.Keys`/`NewImage`/`OldImage` in
//! attribute JSON, `SequenceNumber`).

use aws_sdk_dynamodbstreams::types::{AttributeValue, ShardIteratorType};
use base64::Engine;
use serde_json::{Map, Value, json};

/// Every stream record of `table` so far, oldest first, in Lambda's JSON.
pub async fn stream_records(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Value> {
    let arn = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .expect("describe table")
        .table
        .and_then(|t| t.latest_stream_arn)
        .expect("the table has a stream");
    let sdk = shared::aws::sdk_config_from_env();
    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack");
    let streams = aws_sdk_dynamodbstreams::Client::from_conf(
        aws_sdk_dynamodbstreams::config::Builder::from(&sdk)
            .endpoint_url(endpoint)
            .build(),
    );
    let shards = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .expect("describe stream")
        .stream_description
        .and_then(|d| d.shards)
        .unwrap_or_default();
    let mut records = Vec::new();
    for shard in shards {
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(shard.shard_id.unwrap_or_default())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator;
        while let Some(current) = iterator.take() {
            let output = streams
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .expect("get records");
            let page = output.records.unwrap_or_default();
            if page.is_empty() {
                break;
            }
            for record in page {
                let change = record.dynamodb.unwrap_or_else(|| panic!("a change"));
                let mut dynamodb = Map::new();
                for (name, image) in [
                    ("Keys", change.keys),
                    ("NewImage", change.new_image),
                    ("OldImage", change.old_image),
                ] {
                    if let Some(image) = image {
                        dynamodb.insert(name.to_owned(), item(&image));
                    }
                }
                dynamodb.insert("SequenceNumber".into(), json!(change.sequence_number));
                dynamodb.insert("SizeBytes".into(), json!(change.size_bytes));
                dynamodb.insert("StreamViewType".into(), json!("NEW_AND_OLD_IMAGES"));
                records.push(json!({
                    "eventID": record.event_id,
                    "eventName": record.event_name.map(|e| e.as_str().to_owned()),
                    "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb",
                    "awsRegion": "eu-west-1",
                    "eventSourceARN": arn,
                    "dynamodb": dynamodb,
                }));
            }
            iterator = output.next_shard_iterator;
        }
    }
    records
}

/// A DynamoDB stream event of these records.
pub fn stream_event(records: &[Value]) -> Value {
    json!({ "Records": records })
}

fn item(image: &std::collections::HashMap<String, AttributeValue>) -> Value {
    Value::Object(image.iter().map(|(k, v)| (k.clone(), attribute(v))).collect())
}

/// An attribute as DynamoDB's attribute JSON.
pub fn attribute(value: &AttributeValue) -> Value {
    let b64 =
        |b: &aws_sdk_dynamodbstreams::primitives::Blob| base64::engine::general_purpose::STANDARD.encode(b.as_ref());
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::M(m) => json!({ "M": item(m) }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(attribute).collect::<Vec<_>>() }),
        AttributeValue::Ss(ss) => json!({ "SS": ss }),
        AttributeValue::Ns(ns) => json!({ "NS": ns }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Bs(bs) => json!({ "BS": bs.iter().map(b64).collect::<Vec<_>>() }),
        _ => Value::Null,
    }
}
