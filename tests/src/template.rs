//! The DynamoDB tables of `infra/template.yaml`, read from the template itself
//! so that tests, the local stack and the deployment never drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use serde::Deserialize;
use shared::telemetry::error_chain;

/// `infra/template.yaml` of this checkout.
pub fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml")
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("creating table {table}: {message}")]
    Create { table: String, message: String },
}

#[derive(Deserialize)]
struct Template {
    #[serde(rename = "Resources")]
    resources: BTreeMap<String, Resource>,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Properties", default)]
    properties: serde_yaml::Value,
}

/// An `AWS::DynamoDB::Table` resource: what the tests need of it. Other
/// properties (SSE, point-in-time recovery) have no local meaning and are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TableDefinition {
    #[serde(skip)]
    pub logical_id: String,
    pub attribute_definitions: Vec<Attribute>,
    pub key_schema: Vec<Key>,
    #[serde(default)]
    pub global_secondary_indexes: Vec<Index>,
    #[serde(default)]
    pub local_secondary_indexes: Vec<Index>,
    pub time_to_live_specification: Option<Ttl>,
    pub stream_specification: Option<StreamSpecification>,
    pub billing_mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamSpecification {
    pub stream_view_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attribute {
    pub attribute_name: String,
    pub attribute_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Key {
    pub attribute_name: String,
    pub key_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Index {
    pub index_name: String,
    pub key_schema: Vec<Key>,
    pub projection: IndexProjection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexProjection {
    pub projection_type: String,
    #[serde(default)]
    pub non_key_attributes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ttl {
    pub attribute_name: String,
    pub enabled: bool,
}

/// Every table the template declares, by logical id.
pub fn table_definitions(path: &Path) -> Result<Vec<TableDefinition>, TemplateError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
        path: shown.clone(),
        source,
    })?;
    let invalid = |message: String| TemplateError::Invalid {
        path: shown.clone(),
        message,
    };
    let template: Template = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut tables = Vec::new();
    for (logical_id, resource) in template.resources {
        if resource.kind != "AWS::DynamoDB::Table" {
            continue;
        }
        let mut table: TableDefinition =
            serde_yaml::from_value(resource.properties).map_err(|e| invalid(format!("{logical_id}: {e}")))?;
        if table.billing_mode.as_deref().is_some_and(|m| m != "PAY_PER_REQUEST") {
            return Err(invalid(format!(
                "{logical_id}: only PAY_PER_REQUEST tables are supported"
            )));
        }
        table.logical_id = logical_id;
        tables.push(table);
    }
    if tables.is_empty() {
        return Err(invalid("no AWS::DynamoDB::Table resources".to_owned()));
    }
    Ok(tables)
}

/// The name a table gets locally: `{prefix}{LogicalId}`.
pub fn local_table_name(prefix: &str, logical_id: &str) -> String {
    format!("{prefix}{logical_id}")
}

/// Creates every table of the template under `prefix` and returns
/// logical id → table name. Tables that already exist are left as they are.
pub async fn create_tables(
    client: &aws_sdk_dynamodb::Client,
    path: &Path,
    prefix: &str,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let mut names = BTreeMap::new();
    for table in table_definitions(path)? {
        let name = local_table_name(prefix, &table.logical_id);
        create_table(client, &table, &name).await?;
        names.insert(table.logical_id.clone(), name);
    }
    Ok(names)
}

fn projection(projection: &IndexProjection) -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::from(projection.projection_type.as_str()))
        .set_non_key_attributes(
            (!projection.non_key_attributes.is_empty()).then(|| projection.non_key_attributes.clone()),
        )
        .build()
}

fn key(k: &Key) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(&k.attribute_name)
        .key_type(KeyType::from(k.key_type.as_str()))
        .build()
        .map_err(|e| e.to_string())
}

async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &TableDefinition,
    name: &str,
) -> Result<(), TemplateError> {
    let fail = |message: String| TemplateError::Create {
        table: name.to_owned(),
        message,
    };
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for attribute in &table.attribute_definitions {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(&attribute.attribute_name)
                .attribute_type(ScalarAttributeType::from(attribute.attribute_type.as_str()))
                .build()
                .map_err(|e| fail(e.to_string()))?,
        );
    }
    for k in &table.key_schema {
        request = request.key_schema(key(k).map_err(fail)?);
    }
    for index in &table.global_secondary_indexes {
        let mut gsi = GlobalSecondaryIndex::builder()
            .index_name(&index.index_name)
            .projection(projection(&index.projection));
        for k in &index.key_schema {
            gsi = gsi.key_schema(key(k).map_err(fail)?);
        }
        request = request.global_secondary_indexes(gsi.build().map_err(|e| fail(e.to_string()))?);
    }
    for index in &table.local_secondary_indexes {
        let mut lsi = aws_sdk_dynamodb::types::LocalSecondaryIndex::builder()
            .index_name(&index.index_name)
            .projection(projection(&index.projection));
        for k in &index.key_schema {
            lsi = lsi.key_schema(key(k).map_err(fail)?);
        }
        request = request.local_secondary_indexes(lsi.build().map_err(|e| fail(e.to_string()))?);
    }
    if let Some(stream) = &table.stream_specification {
        request = request.stream_specification(
            aws_sdk_dynamodb::types::StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(aws_sdk_dynamodb::types::StreamViewType::from(
                    stream.stream_view_type.as_str(),
                ))
                .build()
                .map_err(|e| fail(e.to_string()))?,
        );
    }
    match request.send().await {
        Ok(_) => {}
        Err(e) => {
            let e = aws_sdk_dynamodb::Error::from(e);
            if !matches!(e, aws_sdk_dynamodb::Error::ResourceInUseException(_)) {
                return Err(fail(error_chain(&e)));
            }
        }
    }
    if let Some(ttl) = &table.time_to_live_specification {
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(&ttl.attribute_name)
                    .enabled(ttl.enabled)
                    .build()
                    .map_err(|e| fail(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| fail(error_chain(&aws_sdk_dynamodb::Error::from(e))))?;
    }
    Ok(())
}

/// The template's `AWS::Events::EventBus` resources: logical id → the bus's
/// name for a stack called `stack` (`!Sub ${AWS::StackName}-events`).
pub fn event_buses(path: &Path, stack: &str) -> Result<BTreeMap<String, String>, TemplateError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
        path: shown.clone(),
        source,
    })?;
    let invalid = |message: String| TemplateError::Invalid {
        path: shown.clone(),
        message,
    };
    let template: Template = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut buses = BTreeMap::new();
    for (logical_id, resource) in template.resources {
        if resource.kind != "AWS::Events::EventBus" {
            continue;
        }
        let name = tagged(&resource.properties["Name"], "Sub")
            .ok_or_else(|| invalid(format!("{logical_id}: Name is not a !Sub")))?
            .replace("${AWS::StackName}", stack);
        buses.insert(logical_id, name);
    }
    Ok(buses)
}

/// Creates every event bus of the template for a stack called `stack`
/// (those that exist are left as they are); logical id → bus name.
pub async fn create_event_buses(
    client: &aws_sdk_eventbridge::Client,
    path: &Path,
    stack: &str,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let buses = event_buses(path, stack)?;
    for name in buses.values() {
        if let Err(e) = client.create_event_bus().name(name).send().await {
            let exists = e
                .as_service_error()
                .is_some_and(|e| e.is_resource_already_exists_exception());
            if !exists {
                return Err(TemplateError::Create {
                    table: name.clone(),
                    message: error_chain(&aws_sdk_eventbridge::Error::from(e)),
                });
            }
        }
    }
    Ok(buses)
}

/// One IAM permission: an action on a resource named by the template's
/// logical id (`ConnectionsTable`, `ConnectionsTable/index/refresh-due`) or,
/// for secrets, `secret:${SecretsPrefix}*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub action: String,
    pub resource: String,
}

impl Grant {
    pub fn new(action: &str, resource: &str) -> Grant {
        Grant {
            action: action.to_owned(),
            resource: resource.to_owned(),
        }
    }
}

/// The resource a secret grant names (any secret under the prefix parameter).
pub const SECRETS_RESOURCE: &str = "secret:${SecretsPrefix}*";

/// What each function's role lets its code call (the role's policy named
/// `code`), by the function's binary name (`BuildProperties.Binary`).
pub fn function_grants(path: &Path) -> Result<BTreeMap<String, BTreeSet<Grant>>, TemplateError> {
    let shown = path.display().to_string();
    let invalid = |message: String| TemplateError::Invalid {
        path: shown.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
        path: shown.clone(),
        source,
    })?;
    let template: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let resources = template["Resources"]
        .as_mapping()
        .ok_or_else(|| invalid("no Resources".to_owned()))?;
    let mut grants = BTreeMap::new();
    for (id, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let id = id.as_str().unwrap_or_default();
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .ok_or_else(|| invalid(format!("{id}: no BuildProperties.Binary")))?;
        let role = logical_id_of(&resource["Properties"]["Role"])
            .ok_or_else(|| invalid(format!("{id}: Role is not !GetAtt <its role>.Arn")))?;
        let policies = resources
            .get(role.as_str())
            .and_then(|role| role["Properties"]["Policies"].as_sequence())
            .ok_or_else(|| invalid(format!("{id}: role {role} has no Policies")))?;
        let code = policies
            .iter()
            .find(|p| p["PolicyName"].as_str() == Some("code"))
            .ok_or_else(|| invalid(format!("{role}: no policy named `code`")))?;
        let mut set = BTreeSet::new();
        for statement in code["PolicyDocument"]["Statement"].as_sequence().into_iter().flatten() {
            if statement["Effect"].as_str() != Some("Allow") {
                return Err(invalid(format!("{role}: only Allow statements are expected")));
            }
            let actions = one_or_many(&statement["Action"]);
            for resource in one_or_many(&statement["Resource"]) {
                let resource = resource_name(resource)
                    .ok_or_else(|| invalid(format!("{role}: unreadable Resource {resource:?}")))?;
                for action in &actions {
                    let action = action
                        .as_str()
                        .ok_or_else(|| invalid(format!("{role}: an Action is not a string")))?;
                    set.insert(Grant::new(action, &resource));
                }
            }
        }
        grants.insert(binary.to_owned(), set);
    }
    Ok(grants)
}

fn one_or_many(value: &serde_yaml::Value) -> Vec<&serde_yaml::Value> {
    match value.as_sequence() {
        Some(values) => values.iter().collect(),
        None if value.is_null() => Vec::new(),
        None => vec![value],
    }
}

fn tagged<'a>(value: &'a serde_yaml::Value, tag: &str) -> Option<&'a str> {
    match value {
        serde_yaml::Value::Tagged(tagged) if tagged.tag == tag => tagged.value.as_str(),
        _ => None,
    }
}

/// `!GetAtt X.Arn` → `X`.
fn logical_id_of(value: &serde_yaml::Value) -> Option<String> {
    tagged(value, "GetAtt")?.strip_suffix(".Arn").map(str::to_owned)
}

/// `!GetAtt X.Arn` → `X`; `!Sub ${X.Arn}/index/i` → `X/index/i`; a secret ARN
/// under the prefix parameter → [`SECRETS_RESOURCE`].
fn resource_name(value: &serde_yaml::Value) -> Option<String> {
    if let Some(id) = logical_id_of(value) {
        return Some(id);
    }
    let sub = tagged(value, "Sub")?;
    if let Some(rest) = sub.strip_prefix("${")
        && let Some((id, tail)) = rest.split_once(".Arn}")
    {
        return Some(format!("{id}{tail}"));
    }
    sub.strip_prefix("arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:")
        .filter(|secret| *secret == SECRETS_RESOURCE)
        .map(str::to_owned)
}

/// The namespace of the CloudWatch Embedded Metric Format metrics the
/// functions write (dimension `Function`): the alarms may only watch those.
pub const METRIC_NAMESPACE: &str = shared::metrics::NAMESPACE;

/// The metric names each function writes, read from the code that writes
/// them (the EMF documents of an empty run: every metric is written, zeros too,
/// except `SyncLagRatio`, which a run with due jobs adds).
pub fn emitted_metrics(function: &str) -> Vec<String> {
    let document = match function {
        "token-refresher" => shared::refresh::DueSummary::default().metrics().document(0),
        "events" => shared::metrics::Metrics::new("events")
            .count(shared::events::EVENTS_FAILED_METRIC, 1)
            .document(0),
        "sync" => shared::sync::engine::DueRuns {
            due: 1,
            ..Default::default()
        }
        .metrics()
        .document(0),
        "webhooks" => shared::webhooks::BatchReport::default().metrics().document(0),
        _ => return Vec::new(),
    };
    document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["Name"].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_declares_the_tables_the_design_needs() {
        let tables = table_definitions(&template_path()).expect("template parses");
        let ids: Vec<_> = tables.iter().map(|t| t.logical_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "ConnectionsTable",
                "LoginAttemptsTable",
                "RecordsTable",
                "SyncRunsTable",
                "SyncStateTable"
            ]
        );
        let connections = &tables[0];
        assert_eq!(connections.global_secondary_indexes[0].index_name, "refresh-due");
        let attempts = &tables[1];
        assert_eq!(
            attempts
                .time_to_live_specification
                .as_ref()
                .map(|t| t.attribute_name.as_str()),
            Some("expires_at")
        );
    }

    #[test]
    fn the_callback_function_serves_the_confirmation_page_its_button_and_one_callback_per_provider() {
        let text = std::fs::read_to_string(template_path()).expect("template");
        let template: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        let events = template["Resources"]["OAuthCallbackFunction"]["Properties"]["Events"]
            .as_mapping()
            .expect("events");
        let mut routes: Vec<(String, String)> = events
            .values()
            .map(|event| {
                let properties = &event["Properties"];
                (
                    properties["Method"].as_str().unwrap_or_default().to_owned(),
                    properties["Path"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        routes.sort();
        let expected = [
            ("GET", "/callback/{provider}"),
            ("GET", "/connect/{provider}"),
            ("POST", "/connect/{provider}"),
        ]
        .map(|(m, p)| (m.to_owned(), p.to_owned()));
        assert_eq!(routes, expected);
    }

    /// Every route of the HTTP API, with its authorizer: `AWS_IAM` by the
    /// API's default unless the event names another.
    fn routes() -> Vec<(String, String, String, String)> {
        let text = std::fs::read_to_string(template_path()).expect("template");
        let template: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        let api = &template["Resources"]["HttpApi"]["Properties"]["Auth"];
        assert_eq!(api["EnableIamAuthorizer"].as_bool(), Some(true));
        let default = api["DefaultAuthorizer"]
            .as_str()
            .expect("a default authorizer")
            .to_owned();
        let mut routes = Vec::new();
        for (id, resource) in template["Resources"].as_mapping().expect("resources") {
            let Some(events) = resource["Properties"]["Events"].as_mapping() else {
                continue;
            };
            for event in events.values().filter(|e| e["Type"].as_str() == Some("HttpApi")) {
                let properties = &event["Properties"];
                routes.push((
                    id.as_str().unwrap_or_default().to_owned(),
                    properties["Method"].as_str().unwrap_or_default().to_owned(),
                    properties["Path"].as_str().unwrap_or_default().to_owned(),
                    properties["Auth"]["Authorizer"]
                        .as_str()
                        .map_or_else(|| default.clone(), str::to_owned),
                ));
            }
        }
        routes.sort();
        routes
    }

    #[test]
    fn every_route_but_the_login_pages_requires_iam() {
        let routes = routes();
        let api: Vec<(&str, &str)> = routes
            .iter()
            .filter(|r| r.0 == "ApiFunction")
            .map(|r| (r.1.as_str(), r.2.as_str()))
            .collect();
        assert_eq!(
            api,
            [
                ("ANY", "/proxy/{id}/{path+}"),
                ("DELETE", "/connections/{id}"),
                ("GET", "/connections"),
                ("GET", "/connections/{id}"),
                ("GET", "/records/{connection}/{sync}"),
                ("GET", "/records/{connection}/{sync}/{id}"),
                ("GET", "/syncs/{connection}/{sync}"),
                ("POST", "/connections/{id}/token"),
                ("POST", "/links"),
                ("POST", "/syncs/{connection}/{sync}/run"),
            ]
        );
        for (function, method, path, authorizer) in &routes {
            let public = path.starts_with("/connect/") || path.starts_with("/callback/");
            assert_eq!(public, function == "OAuthCallbackFunction", "{method} {path}");
            let expected = if public { "NONE" } else { "AWS_IAM" };
            assert_eq!(authorizer, expected, "{function}: {method} {path}");
        }
    }

    fn grants() -> BTreeMap<String, BTreeSet<Grant>> {
        function_grants(&template_path()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_function_has_its_own_role_and_nothing_can_scan() {
        let grants = grants();
        assert_eq!(
            grants.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "api",
                "oauth-callback",
                "record-events",
                "sync",
                "token-refresher",
                "webhooks"
            ]
        );
        for (function, set) in &grants {
            for grant in set {
                assert!(
                    !grant.action.ends_with(":Scan") && !grant.action.contains('*') && grant.resource != "*",
                    "{function}: {grant:?}"
                );
            }
        }
    }

    #[test]
    fn the_refresher_cannot_read_records_and_the_callback_cannot_query_an_index() {
        let grants = grants();
        assert!(
            grants["token-refresher"]
                .iter()
                .all(|g| !g.resource.starts_with("RecordsTable")),
            "{:?}",
            grants["token-refresher"]
        );
        assert!(
            grants["oauth-callback"]
                .iter()
                .all(|g| g.action != "dynamodb:Query" && !g.resource.contains("/index/")),
            "{:?}",
            grants["oauth-callback"]
        );
    }

    #[test]
    fn the_stack_has_its_own_bus_every_function_but_webhooks_may_put_on() {
        let buses = event_buses(&template_path(), "my-stack").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            buses,
            BTreeMap::from([("EventBus".to_owned(), "my-stack-events".to_owned())])
        );
        let put = Grant::new("events:PutEvents", "EventBus");
        for (function, set) in grants() {
            // The webhooks function consumes the bus's events through its queue.
            let publishes = function != "webhooks";
            assert_eq!(
                set.contains(&put),
                publishes,
                "{function} publishes events: {publishes}"
            );
        }
        let text = std::fs::read_to_string(template_path()).expect("template");
        let template: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        let variables = &template["Globals"]["Function"]["Environment"]["Variables"];
        assert_eq!(
            tagged(&variables[shared::events::EVENT_BUS_ENV], "Ref"),
            Some("EventBus")
        );
        assert_eq!(
            tagged(&template["Outputs"]["EventBusName"]["Value"], "Ref"),
            Some("EventBus")
        );
    }

    #[test]
    fn record_events_reads_the_stream_with_partial_batch_failures_and_a_bounded_retry() {
        let text = std::fs::read_to_string(template_path()).expect("template");
        let template: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        let resources = &template["Resources"];
        let stream = &resources["RecordEventsFunction"]["Properties"]["Events"]["Stream"];
        assert_eq!(stream["Type"].as_str(), Some("DynamoDB"));
        let p = &stream["Properties"];
        assert_eq!(tagged(&p["Stream"], "GetAtt"), Some("RecordsTable.StreamArn"));
        assert_eq!(p["StartingPosition"].as_str(), Some("TRIM_HORIZON"));
        assert_eq!(p["FunctionResponseTypes"].as_sequence().map(|s| s.len()), Some(1));
        assert_eq!(p["FunctionResponseTypes"][0].as_str(), Some("ReportBatchItemFailures"));
        assert_eq!(p["BisectBatchOnFunctionError"].as_bool(), Some(true));
        let retries = p["MaximumRetryAttempts"].as_i64().expect("a bounded retry");
        assert!((0..=10_000).contains(&retries));
        let queue = tagged(&p["DestinationConfig"]["OnFailure"]["Destination"], "GetAtt")
            .and_then(|d| d.strip_suffix(".Arn"))
            .expect("an on-failure queue");
        assert_eq!(resources[queue]["Type"].as_str(), Some("AWS::SQS::Queue"));
        let watched = resources.as_mapping().expect("resources").values().any(|r| {
            r["Type"].as_str() == Some("AWS::CloudWatch::Alarm")
                && tagged(&r["Properties"]["Dimensions"][0]["Value"], "GetAtt")
                    == Some(format!("{queue}.QueueName").as_str())
        });
        assert!(watched, "an alarm watches {queue}");
    }

    #[test]
    fn the_alarms_watch_only_metrics_the_functions_emit() {
        let text = std::fs::read_to_string(template_path()).expect("template");
        let template: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        let mut custom = 0;
        for (id, resource) in template["Resources"].as_mapping().expect("resources") {
            if resource["Type"].as_str() != Some("AWS::CloudWatch::Alarm") {
                continue;
            }
            let properties = &resource["Properties"];
            assert_eq!(properties["TreatMissingData"].as_str(), Some("notBreaching"), "{id:?}");
            if properties["Namespace"].as_str() != Some(METRIC_NAMESPACE) {
                continue;
            }
            custom += 1;
            let dimensions = properties["Dimensions"].as_sequence().expect("dimensions");
            assert_eq!(
                dimensions.len(),
                1,
                "{id:?}: the metrics have the one dimension Function"
            );
            assert_eq!(dimensions[0]["Name"].as_str(), Some("Function"), "{id:?}");
            let function = dimensions[0]["Value"].as_str().expect("function");
            let metric = properties["MetricName"].as_str().expect("metric");
            let emitted = emitted_metrics(function);
            assert!(
                emitted.iter().any(|m| m == metric),
                "{id:?}: {function} does not emit {metric}"
            );
        }
        assert_eq!(
            custom, 5,
            "needs_reauth, refresh failures, sync lag, failed events and dead-lettered webhooks"
        );
    }

    #[test]
    fn the_webhooks_function_reads_both_queues_reports_partial_failures_and_dead_letters_after_its_attempts() {
        let text = std::fs::read_to_string(template_path()).expect("template");
        let template: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        let resources = &template["Resources"];
        let rule = &resources["WebhookEventsRule"]["Properties"];
        assert_eq!(rule["EventPattern"]["source"][0].as_str(), Some("oauth-sync"));
        assert_eq!(ref_of(&rule["EventBusName"]).as_deref(), Some("EventBus"));
        assert_eq!(
            logical_id_of(&rule["Targets"][0]["Arn"]).as_deref(),
            Some("WebhookEventsQueue")
        );
        let function = &resources["WebhooksFunction"]["Properties"];
        let mut queues: Vec<String> = function["Events"]
            .as_mapping()
            .expect("events")
            .values()
            .map(|event| {
                assert_eq!(event["Type"].as_str(), Some("SQS"));
                assert_eq!(
                    event["Properties"]["FunctionResponseTypes"][0].as_str(),
                    Some("ReportBatchItemFailures")
                );
                logical_id_of(&event["Properties"]["Queue"]).expect("queue")
            })
            .collect();
        queues.sort();
        assert_eq!(queues, ["WebhookDeliveriesQueue", "WebhookEventsQueue"]);
        // The function's idea of the last attempt is the queue's redrive count.
        let variables = &function["Environment"]["Variables"];
        let redrive = &resources["WebhookDeliveriesQueue"]["Properties"]["RedrivePolicy"];
        assert_eq!(
            ref_of(&variables[shared::webhooks::retry::MAX_ATTEMPTS_ENV]).as_deref(),
            Some("WebhookMaxAttempts")
        );
        assert_eq!(
            ref_of(&redrive["maxReceiveCount"]).as_deref(),
            Some("WebhookMaxAttempts")
        );
        assert_eq!(
            logical_id_of(&redrive["deadLetterTargetArn"]).as_deref(),
            Some("WebhookDeadLetterQueue")
        );
        assert_eq!(
            ref_of(&variables[shared::webhooks::queue::DELIVERIES_QUEUE_ENV]).as_deref(),
            Some("WebhookDeliveriesQueue")
        );
    }

    /// `!Ref X` → `X`.
    fn ref_of(value: &serde_yaml::Value) -> Option<String> {
        tagged(value, "Ref").map(str::to_owned)
    }
}
