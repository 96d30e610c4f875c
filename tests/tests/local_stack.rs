//! The local stack is real: DynamoDB Local enforces conditional writes (also
//! under concurrency, which is why it and not moto backs our tests), the tables
//! match infra/template.yaml, and secrets round-trip through the Secrets
//! Manager emulator.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use oauth_sync_tests::stack::{aws, fresh_tables, unique_prefix};
use oauth_sync_tests::template::{table_definitions, template_path};
use shared::secrets::{SecretStore, SecretsError};

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

#[tokio::test]
async fn a_conditional_write_that_must_fail_fails() {
    let clients = aws().await;
    let tables = fresh_tables(&clients, "cond").await;
    let table = &tables["ConnectionsTable"];
    let db = &clients.dynamodb;

    db.put_item()
        .table_name(table)
        .item("id", s("conn-1"))
        .item("token_version", n(1))
        .condition_expression("attribute_not_exists(id)")
        .send()
        .await
        .expect("first insert");

    // The same insert again must fail.
    let e = db
        .put_item()
        .table_name(table)
        .item("id", s("conn-1"))
        .item("token_version", n(1))
        .condition_expression("attribute_not_exists(id)")
        .send()
        .await
        .expect_err("a second insert of the same id");
    assert!(
        e.as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "{e:?}"
    );

    // A write conditional on a stale version fails and says what is there now.
    let e = db
        .update_item()
        .table_name(table)
        .key("id", s("conn-1"))
        .update_expression("SET token_version = :next")
        .condition_expression("token_version = :seen")
        .expression_attribute_values(":seen", n(0))
        .expression_attribute_values(":next", n(1))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await
        .expect_err("stale version");
    let failed = e.as_service_error().expect("service error");
    assert!(failed.is_conditional_check_failed_exception(), "{failed:?}");
    let item = match failed {
        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(item.and_then(|i| i.get("token_version").cloned()), Some(n(1)));

    // With the version it read, it succeeds.
    db.update_item()
        .table_name(table)
        .key("id", s("conn-1"))
        .update_expression("SET token_version = :next")
        .condition_expression("token_version = :seen")
        .expression_attribute_values(":seen", n(1))
        .expression_attribute_values(":next", n(2))
        .send()
        .await
        .expect("current version");
}

#[tokio::test]
async fn concurrent_conditional_writes_have_exactly_one_winner() {
    let clients = aws().await;
    let tables = fresh_tables(&clients, "race").await;
    let table = tables["ConnectionsTable"].clone();
    for round in 0..10u64 {
        let id = format!("conn-{round}");
        clients
            .dynamodb
            .put_item()
            .table_name(&table)
            .item("id", s(&id))
            .item("token_version", n(0))
            .send()
            .await
            .expect("seed");
        let tasks: Vec<_> = (0..16)
            .map(|worker| {
                let db = clients.dynamodb.clone();
                let (table, id) = (table.clone(), id.clone());
                tokio::spawn(async move {
                    db.update_item()
                        .table_name(table)
                        .key("id", s(&id))
                        .update_expression("SET token_version = :next, lease_owner = :me")
                        .condition_expression("token_version = :seen")
                        .expression_attribute_values(":seen", n(0))
                        .expression_attribute_values(":next", n(1))
                        .expression_attribute_values(":me", s(&format!("worker-{worker}")))
                        .send()
                        .await
                        .is_ok()
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.expect("task"));
        }
        assert_eq!(winners, 1, "round {round}: exactly one worker may win the version");
    }
}

#[tokio::test]
async fn tables_match_the_template() {
    let clients = aws().await;
    let tables = fresh_tables(&clients, "shape").await;
    for definition in table_definitions(&template_path()).expect("template") {
        let name = &tables[&definition.logical_id];
        let described = clients
            .dynamodb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .expect("describe")
            .table
            .expect("table");
        let keys: HashMap<_, _> = described
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name().to_owned(), k.key_type().as_str().to_owned()))
            .collect();
        for key in &definition.key_schema {
            assert_eq!(keys.get(&key.attribute_name), Some(&key.key_type), "{name}");
        }
        let mut indexes: Vec<_> = described
            .global_secondary_indexes()
            .iter()
            .filter_map(|i| i.index_name())
            .chain(
                described
                    .local_secondary_indexes()
                    .iter()
                    .filter_map(|i| i.index_name()),
            )
            .collect();
        let mut declared: Vec<_> = definition
            .global_secondary_indexes
            .iter()
            .chain(&definition.local_secondary_indexes)
            .map(|i| i.index_name.as_str())
            .collect();
        indexes.sort_unstable();
        declared.sort_unstable();
        assert_eq!(indexes, declared, "{name}");
        if let Some(ttl) = &definition.time_to_live_specification {
            let described = clients
                .dynamodb
                .describe_time_to_live()
                .table_name(name)
                .send()
                .await
                .expect("ttl");
            let attribute = described.time_to_live_description().and_then(|d| d.attribute_name());
            assert_eq!(attribute, Some(ttl.attribute_name.as_str()), "{name}");
        }
    }
}

#[tokio::test]
async fn a_secret_round_trips_and_a_missing_one_is_named() {
    let clients = aws().await;
    let name = format!("{}exact", unique_prefix("secret"));
    clients
        .secrets
        .create_secret()
        .name(&name)
        .secret_string(r#"{"client_id": "exact-client", "client_secret": "cs-planted:+/"}"#)
        .send()
        .await
        .expect("create secret");
    let store = SecretStore::new(clients.secrets.clone());
    let credentials = store.client_credentials(&name).await.expect("read back");
    assert_eq!(credentials.client_id, "exact-client");
    assert_eq!(credentials.client_secret.secret(), "cs-planted:+/");
    assert!(!format!("{credentials:?}").contains("planted"));

    let missing = format!("{name}-missing");
    let e = store.client_credentials(&missing).await.unwrap_err();
    assert!(matches!(&e, SecretsError::NotFound { name } if *name == missing), "{e}");
    assert!(e.to_string().contains(&missing));
}

#[test]
fn the_stack_environment_names_a_region_for_the_aws_cli_too() {
    // The stack's env file is sourced before `cargo test` (scripts/test).
    let region = std::env::var("AWS_REGION").unwrap_or_default();
    assert!(!region.is_empty(), "AWS_REGION is set by the stack");
    assert_eq!(
        std::env::var("AWS_DEFAULT_REGION").ok().as_deref(),
        Some(region.as_str()),
        "the AWS CLI v1 reads AWS_DEFAULT_REGION"
    );
}
