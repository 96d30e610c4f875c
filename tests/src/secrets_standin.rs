//! A Secrets Manager stand-in on loopback for the cold-start bench: it
//! answers `GetSecretValue` (the JSON protocol, `X-Amz-Target:
//! secretsmanager.GetSecretValue`) with the values of the stack's secrets,
//! each answer after a fixed delay, so a function's start-up pays what a
//! call to the real service costs instead of what moto (a Python server)
//! costs. The values are copied once from the stack's Secrets Manager when
//! the stand-in starts; any other operation is refused.
//!
//! The delay is an assumption, not a measurement: AWS publishes no latency
//! for Secrets Manager. [`DEFAULT_LATENCY`] (15 ms) is the middle of the
//! 10–20 ms that an in-region `GetSecretValue` over a warm connection
//! typically takes; a cold process also pays its TLS handshake, which the
//! local stack's plain HTTP leaves out.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::serve::{Server, serve};

/// The stand-in's delay per answer unless told otherwise (an assumption; see the module's doc).
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(15);

/// The secrets served, and the delay before each answer.
#[derive(Debug)]
struct Secrets {
    values: BTreeMap<String, String>,
    latency: Duration,
}

/// A running stand-in; stops when dropped.
#[derive(Debug)]
pub struct SecretsStandIn {
    server: Server,
}

impl SecretsStandIn {
    /// Serves `values` (name → `SecretString`) on a free loopback port,
    /// each answer `latency` after its request.
    pub async fn start(values: BTreeMap<String, String>, latency: Duration) -> std::io::Result<SecretsStandIn> {
        let state = Arc::new(Secrets { values, latency });
        let router = Router::new().fallback(answer).with_state(state);
        let server = serve(router, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), || true).await?;
        Ok(SecretsStandIn { server })
    }

    /// Serves a copy of every secret in `secrets` (the stack's Secrets Manager).
    pub async fn copy_of(
        secrets: &aws_sdk_secretsmanager::Client,
        latency: Duration,
    ) -> anyhow::Result<SecretsStandIn> {
        let mut values = BTreeMap::new();
        let mut pages = secrets.list_secrets().into_paginator().send();
        while let Some(page) = pages.next().await {
            for name in page?.secret_list().iter().filter_map(|s| s.name()) {
                let value = secrets.get_secret_value().secret_id(name).send().await?;
                if let Some(text) = value.secret_string() {
                    values.insert(name.to_owned(), text.to_owned());
                }
            }
        }
        Ok(SecretsStandIn::start(values, latency).await?)
    }

    /// Its address as `AWS_ENDPOINT_URL_SECRETS_MANAGER` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr)
    }
}

/// One request: `GetSecretValue` of a known secret is its value, anything
/// else the error the service gives.
async fn answer(State(secrets): State<Arc<Secrets>>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::time::sleep(secrets.latency).await;
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if target != "secretsmanager.GetSecretValue" {
        return error(
            "UnknownOperationException",
            &format!("the stand-in answers GetSecretValue only, not `{target}`"),
        );
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(name) = request["SecretId"].as_str() else {
        return error("InvalidParameterException", "SecretId is missing");
    };
    let Some(value) = secrets.values.get(name) else {
        return error(
            "ResourceNotFoundException",
            "Secrets Manager can't find the specified secret.",
        );
    };
    let body = json!({
        "ARN": format!("arn:aws:secretsmanager:eu-west-1:123456789012:secret:{name}"),
        "Name": name,
        "SecretString": value,
        "VersionId": "00000000-0000-4000-8000-000000000001",
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": 1_796_083_200.0,
    });
    json_response(StatusCode::OK, &body)
}

fn error(kind: &str, message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({"__type": kind, "message": message}))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    response
}
