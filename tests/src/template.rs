//! The DynamoDB tables of `infra/template.yaml`, read from the template itself
//! so that tests, the local stack and the deployment never drift apart.

use std::collections::BTreeMap;
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
        let projection = Projection::builder()
            .projection_type(ProjectionType::from(index.projection.projection_type.as_str()))
            .set_non_key_attributes(
                (!index.projection.non_key_attributes.is_empty()).then(|| index.projection.non_key_attributes.clone()),
            )
            .build();
        let mut gsi = GlobalSecondaryIndex::builder()
            .index_name(&index.index_name)
            .projection(projection);
        for k in &index.key_schema {
            gsi = gsi.key_schema(key(k).map_err(fail)?);
        }
        request = request.global_secondary_indexes(gsi.build().map_err(|e| fail(e.to_string()))?);
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
}
