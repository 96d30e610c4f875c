//! The JSON Schemas of the events (`docs/events/<detail-type>.json`) and a
//! validator for the part of JSON Schema (2020-12) they use: `type`,
//! `properties`, `required`, `additionalProperties: false`, `items`,
//! `enum`, `const`, `anyOf`, `minimum`, `format: date-time`, and the
//! annotations (`$schema`, `title`, `description`). A keyword outside that
//! set is an error, so a schema can never pass by using something this does
//! not check. Why not a crate: the full validators pull in regex engines,
//! URL resolvers and HTTP clients for ten small schemas.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `docs/events/` of this checkout.
pub fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events")
}

/// The schema of `detail_type`.
pub fn event_schema(detail_type: &str) -> Value {
    let path = schema_dir().join(format!("{detail_type}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Validates a received event (its envelope and detail) against the schema
/// of its `detail-type`.
pub fn validate_event(event: &Value) -> Result<(), Vec<String>> {
    let detail_type = event["detail-type"]
        .as_str()
        .ok_or_else(|| vec!["no detail-type".to_owned()])?;
    validate(&event_schema(detail_type), event)
}

/// Every way `value` breaks `schema`, by JSON pointer; empty when it conforms.
pub fn validate(schema: &Value, value: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn type_matches(name: &str, value: &Value) -> Option<bool> {
    Some(match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => return None,
    })
}

fn check(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        errors.push(format!("{at}: the schema is not an object"));
        return;
    };
    let mut fail = |message: String| errors.push(format!("{}: {message}", if at.is_empty() { "/" } else { at }));
    let mut nested = Vec::new();
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$schema" | "title" | "description" => {}
            "type" => {
                let names: Vec<&str> = match rule {
                    Value::String(one) => vec![one.as_str()],
                    Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                match names
                    .iter()
                    .map(|n| type_matches(n, value))
                    .collect::<Option<Vec<bool>>>()
                {
                    None => fail(format!("unknown type in {rule}")),
                    Some(matches) if !matches.contains(&true) => fail(format!("{value} is not of type {rule}")),
                    Some(_) => {}
                }
            }
            "const" if value != rule => fail(format!("{value} is not {rule}")),
            "const" => {}
            "enum" if !rule.as_array().is_some_and(|options| options.contains(value)) => {
                fail(format!("{value} is not one of {rule}"));
            }
            "enum" => {}
            "minimum" => {
                if let (Some(min), Some(n)) = (rule.as_f64(), value.as_f64())
                    && n < min
                {
                    fail(format!("{n} is below {min}"));
                }
            }
            "format" => match rule.as_str() {
                Some("date-time") => {
                    if let Some(text) = value.as_str()
                        && shared::when::parse_rfc3339(text).is_none()
                    {
                        fail(format!("`{text}` is not an RFC 3339 date-time"));
                    }
                }
                _ => fail(format!("unsupported format {rule}")),
            },
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in rule.as_array().into_iter().flatten().filter_map(Value::as_str) {
                        if !object.contains_key(name) {
                            fail(format!("`{name}` is required"));
                        }
                    }
                }
            }
            "properties" => {
                if let (Some(object), Some(properties)) = (value.as_object(), rule.as_object()) {
                    for (name, property) in properties {
                        if let Some(v) = object.get(name) {
                            nested.push((property, v, format!("{at}/{name}")));
                        }
                    }
                }
            }
            "additionalProperties" => match (rule, value.as_object()) {
                (Value::Bool(false), Some(object)) => {
                    let known = schema.get("properties").and_then(Value::as_object);
                    for name in object.keys() {
                        if !known.is_some_and(|k| k.contains_key(name)) {
                            fail(format!("`{name}` is not allowed"));
                        }
                    }
                }
                (Value::Bool(_), _) => {}
                _ => fail("additionalProperties other than a boolean is not supported".to_owned()),
            },
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    nested.push((rule, item, format!("{at}/{i}")));
                }
            }
            "anyOf" => {
                let options = rule.as_array().map(Vec::as_slice).unwrap_or_default();
                if !options.iter().any(|option| validate(option, value).is_ok()) {
                    fail(format!("{value} matches none of {rule}"));
                }
            }
            other => fail(format!("unsupported keyword `{other}`")),
        }
    }
    for (schema, value, at) in nested {
        check(schema, value, &at, errors);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_keyword_refuses_what_breaks_it() {
        let schema = json!({
            "type": "object",
            "required": ["a", "when"],
            "additionalProperties": false,
            "properties": {
                "a": {"type": "integer", "minimum": 0},
                "kind": {"enum": ["x", "y"]},
                "fixed": {"const": "oauth-sync"},
                "when": {"type": "string", "format": "date-time"},
                "list": {"type": "array", "items": {"type": "string"}},
                "either": {"type": ["string", "null"]}
            },
            "anyOf": [{"required": ["kind"]}, {"required": ["fixed"]}]
        });
        let good = json!({"a": 1, "kind": "x", "fixed": "oauth-sync", "when": "2026-12-06T10:00:00.000Z", "list": ["p"], "either": null});
        assert_eq!(validate(&schema, &good), Ok(()));
        for (bad, expected) in [
            (json!({"when": "2026-12-06T10:00:00Z", "kind": "x"}), "`a` is required"),
            (json!({"a": -1, "when": "2026-12-06T10:00:00Z", "kind": "x"}), "below"),
            (
                json!({"a": 1.5, "when": "2026-12-06T10:00:00Z", "kind": "x"}),
                "not of type",
            ),
            (json!({"a": 1, "when": "yesterday", "kind": "x"}), "RFC 3339"),
            (
                json!({"a": 1, "when": "2026-12-06T10:00:00Z", "kind": "z"}),
                "not one of",
            ),
            (
                json!({"a": 1, "when": "2026-12-06T10:00:00Z", "fixed": "other"}),
                "is not \"oauth-sync\"",
            ),
            (
                json!({"a": 1, "when": "2026-12-06T10:00:00Z", "kind": "x", "extra": 1}),
                "`extra` is not allowed",
            ),
            (
                json!({"a": 1, "when": "2026-12-06T10:00:00Z", "kind": "x", "list": [1]}),
                "/list/0",
            ),
            (json!({"a": 1, "when": "2026-12-06T10:00:00Z"}), "matches none"),
        ] {
            let errors = validate(&schema, &bad).expect_err("refused");
            assert!(errors.iter().any(|e| e.contains(expected)), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn a_keyword_it_does_not_check_is_an_error_not_a_pass() {
        let errors = validate(&json!({"pattern": "^a"}), &json!("b")).expect_err("refused");
        assert!(errors[0].contains("unsupported keyword `pattern`"), "{errors:?}");
    }

    #[test]
    fn every_event_type_has_a_schema_for_its_source_and_detail_type() {
        let mut files: Vec<String> = std::fs::read_dir(schema_dir())
            .expect("docs/events")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        files.sort();
        let mut expected: Vec<String> = shared::events::DETAIL_TYPES
            .iter()
            .map(|t| format!("{t}.json"))
            .collect();
        expected.sort();
        assert_eq!(files, expected, "one schema per event type, nothing else");
        for detail_type in shared::events::DETAIL_TYPES {
            let schema = event_schema(detail_type);
            let envelope = json!({"source": "oauth-sync", "detail-type": detail_type, "detail": {}});
            let errors = validate(&schema, &envelope).expect_err("an empty detail lacks its fields");
            assert!(
                errors.iter().all(|e| e.starts_with("/detail")),
                "{detail_type}: {errors:?}"
            );
            let wrong = json!({"source": "elsewhere", "detail-type": "other", "detail": {}});
            let errors = validate(&schema, &wrong).expect_err("another source");
            assert!(
                errors.iter().any(|e| e.starts_with("/source")),
                "{detail_type}: {errors:?}"
            );
        }
    }

    /// One event of each type as the library builds it, in its envelope.
    fn samples() -> Vec<shared::events::Event> {
        use shared::events::*;
        let run = RunEnded {
            connection: "c1".into(),
            sync: "projects".into(),
            job: "c1#projects".into(),
            run_id: "r1".into(),
            started_at: rfc3339(1_796_126_400_000),
            finished_at: rfc3339(1_796_126_401_000),
            counts: Counts::default(),
            error: None,
            next_run_at: rfc3339(1_796_127_300_000),
        };
        let record = RecordChanged {
            connection: "c1".into(),
            sync: "projects".into(),
            record_id: "42".into(),
            record: Some(json!({"ID": "42"})),
            old_record: Some(json!({"ID": "42", "Code": "old"})),
            truncated: false,
            changed_at: Some(rfc3339(1_796_126_400_000)),
        };
        vec![
            Event::Connected(Connected {
                connection: "c1".into(),
                provider: "sim".into(),
                kind: "shared".into(),
                token_version: 1,
                scopes: vec!["openid".into()],
            }),
            Event::RefreshFailed(RefreshFailed {
                connection: "c1".into(),
                provider: "sim".into(),
                token_version: 1,
                failures: 1,
                cause: "HTTP 503".into(),
                next_attempt_at: rfc3339(1_796_126_430_000),
            }),
            Event::NeedsReauth(NeedsReauth {
                connection: "c1".into(),
                provider: "sim".into(),
                token_version: 2,
                reason: shared::connection::reason::DEAD_REFRESH_TOKEN.into(),
                provider_message: "refresh token revoked (HTTP 400, invalid_grant)".into(),
            }),
            Event::Revoked(Revoked {
                connection: "c1".into(),
                provider: "sim".into(),
                at_provider: true,
            }),
            Event::RunFinished(run.clone()),
            Event::RunFailed(RunEnded {
                error: Some("HTTP 500".into()),
                ..run
            }),
            Event::JobParked(JobParked {
                connection: "c1".into(),
                sync: "projects".into(),
                job: "c1#projects".into(),
                reason: "connection c1 is needs_reauth".into(),
            }),
            Event::RecordInserted(RecordChanged {
                old_record: None,
                ..record.clone()
            }),
            Event::RecordUpdated(record.clone()),
            Event::RecordDeleted(RecordChanged {
                record: None,
                old_record: None,
                truncated: true,
                ..record
            }),
        ]
    }

    #[test]
    fn the_events_the_library_builds_conform_to_their_schemas() {
        let samples = samples();
        let types: Vec<&str> = samples.iter().map(shared::events::Event::detail_type).collect();
        assert_eq!(types, shared::events::DETAIL_TYPES, "one sample per type");
        for event in samples {
            let envelope = json!({
                "version": "0", "id": "e1", "source": shared::events::SOURCE, "detail-type": event.detail_type(),
                "account": "123456789012", "time": "2026-12-06T10:00:00Z", "region": "eu-west-1", "resources": [],
                "detail": event.detail(),
            });
            assert_eq!(validate_event(&envelope), Ok(()), "{envelope}");
        }
        let failed_without_error = json!({"source": "oauth-sync", "detail-type": "sync.run.failed", "detail": {}});
        assert!(validate_event(&failed_without_error).is_err());
    }
}
