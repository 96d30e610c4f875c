//! The simulator's HTTP side. Connections are served one task each so that a
//! handler can close its own connection without answering (accept-then-drop).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;

use crate::serve::{Kill, Server};

use super::data::{DataAnswer, DataBody, DataCall, DataCommand, DataFault, DataFaultPlan};
use super::{Answer, Fault, FaultPlan, Grant, Simulator};

/// A running simulator; dropping it stops the server.
#[derive(Debug)]
pub struct SimulatorHandle {
    pub sim: Arc<Simulator>,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    _server: Server,
}

impl SimulatorHandle {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

pub(super) async fn serve(sim: Arc<Simulator>, addr: SocketAddr) -> std::io::Result<SimulatorHandle> {
    let router = Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/api/me", get(me))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/_sim/counters", get(counters))
        .route("/_sim/faults", post(faults))
        // The data APIs, whatever the preset; `data` routes within them.
        .route("/api/v1/{*rest}", get(data))
        .route("/v1.0/{*rest}", get(data))
        .route("/_sim/data", post(data_command))
        .route("/_sim/data-faults", post(data_faults))
        .with_state(sim.clone());
    let server = crate::serve::serve(router, addr, || true).await?;
    let addr = server.addr;
    let base_url = format!("http://{addr}");
    *sim.base_url.lock().unwrap_or_else(|p| p.into_inner()) = base_url.clone();
    Ok(SimulatorHandle {
        sim,
        addr,
        base_url,
        _server: server,
    })
}

async fn authorize(State(sim): State<Arc<Simulator>>, Query(query): Query<HashMap<String, String>>) -> Response {
    match sim.authorize(&query) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(problem) => (
            StatusCode::BAD_REQUEST,
            Html(format!("<h1>Bad authorization request</h1><p>{problem}</p>")),
        )
            .into_response(),
    }
}

async fn token(
    State(sim): State<Arc<Simulator>>,
    Extension(kill): Extension<Kill>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form = parse_form(&body);
    let grant = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => Grant::AuthorizationCode,
        Some("refresh_token") => Grant::RefreshToken,
        _ => return answer((400, serde_json::json!({"error": "unsupported_grant_type"}))),
    };
    sim.count(Some(grant));
    let _in_flight = (grant == Grant::RefreshToken).then(|| sim.refresh_in_flight());
    let latency = sim.config().token_latency;
    if grant == Grant::RefreshToken && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = with_faults(&sim, &kill, grant, &headers, &form, |sim, form| match grant {
        Grant::AuthorizationCode => sim.exchange_code(form),
        _ => sim.refresh(form),
    })
    .await;
    if grant == Grant::AuthorizationCode
        && let Some((reached, release)) = sim.take_hold()
    {
        let _ = reached.send(());
        let _ = release.await;
    }
    response
}

async fn revoke(
    State(sim): State<Arc<Simulator>>,
    Extension(kill): Extension<Kill>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form = parse_form(&body);
    sim.count(Some(Grant::Revoke));
    with_faults(&sim, &kill, Grant::Revoke, &headers, &form, Simulator::revoke).await
}

/// Authenticates the client and processes the request, with whatever fault is queued.
async fn with_faults(
    sim: &Simulator,
    kill: &Kill,
    grant: Grant,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    process: impl FnOnce(&Simulator, &HashMap<String, String>) -> Answer,
) -> Response {
    let fault = sim.take_fault(grant);
    let unavailable = serde_json::json!({"error": "temporarily_unavailable"});
    match fault {
        Some(Fault::Status { status }) => return answer((status, unavailable)),
        Some(Fault::RetryAfter { status, secs }) => {
            let mut response = answer((status, unavailable));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            return response;
        }
        _ => {}
    }
    if let Err(refused) = sim.authenticate(basic_credentials(headers), form) {
        return answer(refused);
    }
    let result = process(sim, form);
    match fault {
        Some(Fault::DelayAfterProcessing { millis }) => tokio::time::sleep(Duration::from_millis(millis)).await,
        Some(Fault::DropAfterProcessing) => {
            sim.note_dropped();
            kill.drop_connection().await;
        }
        Some(Fault::BodyAfterProcessing { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return (status, body).into_response();
        }
        _ => {}
    }
    answer(result)
}

async fn me(State(sim): State<Arc<Simulator>>, headers: HeaderMap) -> Response {
    sim.count(None);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match sim.whoami(bearer) {
        Some(body) => Json(body).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            Json(serde_json::json!({"error": "invalid_token"})),
        )
            .into_response(),
    }
}

async fn discovery(State(sim): State<Arc<Simulator>>) -> Response {
    let (status, content_type, body) = sim.discovery();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn counters(State(sim): State<Arc<Simulator>>) -> Response {
    Json(sim.counters()).into_response()
}

async fn faults(State(sim): State<Arc<Simulator>>, Json(plans): Json<Vec<FaultPlan>>) -> Response {
    for plan in plans {
        sim.inject(plan);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A data-API request: Exact's error block may refuse it, a queued fault may
/// answer instead, slow it down or spoil its body; then it is counted and logged.
async fn data(State(sim): State<Arc<Simulator>>, uri: Uri, headers: HeaderMap) -> Response {
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let begun = sim.begin_data_request(uri.path(), &path_and_query);
    let header = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let call = DataCall {
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        authorization: header(header::AUTHORIZATION),
        accept: header(header::ACCEPT),
        prefer: header(HeaderName::from_static("prefer")),
    };
    let fault = match begun {
        Ok(fault) => fault,
        Err(blocked) => {
            sim.finish_data_request(path_and_query, &blocked);
            return data_response(blocked);
        }
    };
    let answer = match fault.as_ref().and_then(|f| f.answer_instead(call.path)) {
        Some(instead) => instead,
        None => {
            if let Some(DataFault::Delay { millis }) = fault {
                tokio::time::sleep(Duration::from_millis(millis)).await;
            }
            let served = sim.serve_data(&call);
            match fault {
                Some(DataFault::Truncated) => served.truncated(),
                _ => served,
            }
        }
    };
    sim.finish_data_request(path_and_query, &answer);
    data_response(answer)
}

fn data_response(answer: DataAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match answer.body {
        DataBody::Json(body) => (status, Json(body)).into_response(),
        DataBody::Text { content_type, text } => (status, [(header::CONTENT_TYPE, content_type)], text).into_response(),
    };
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn data_command(State(sim): State<Arc<Simulator>>, Json(command): Json<DataCommand>) -> Response {
    answer(sim.data_command(command))
}

async fn data_faults(State(sim): State<Arc<Simulator>>, Json(plans): Json<Vec<DataFaultPlan>>) -> Response {
    for plan in plans {
        sim.inject_data_fault(plan);
    }
    StatusCode::NO_CONTENT.into_response()
}

fn answer((status, body): Answer) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

fn parse_form(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes()).into_owned().collect()
}

/// RFC 6749 §2.3.1: base64, then form-urldecode id and secret. A client that
/// skipped the encoding gets its `+` read as a space, and fails.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(value).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}
