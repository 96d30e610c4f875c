//! Connection and sync-run events, end to end on the local stack: the
//! library publishes to a bus made from infra/template.yaml in moto's
//! EventBridge, a rule sends every `oauth-sync` event to an SQS queue, and
//! what the queue receives is checked against the facts and against the
//! event's JSON Schema (docs/events/). (Record events from the records
//! stream: functions/record-events/tests/.)

use std::sync::Arc;

use oauth_sync_tests::events::{Envelope, EventsFixture, of_type};
use oauth_sync_tests::schema::validate_event;
use oauth_sync_tests::simulator::{DataFault, DataFaultPlan, Fault, FaultPlan, Grant, SimConfig};
use oauth_sync_tests::stack::{LoginFixture, PROVIDER, SyncFixture, authorize, deadline, quick_sync_settings};
use shared::config::PresetName;
use shared::connection::reason;
use shared::events::SOURCE;
use shared::login::flow::ATTEMPT_TTL;
use shared::refresh::{RefreshError, RefreshSettings, TokenService};
use shared::sync::engine::RunEnd;

/// Every event conforms to its schema and comes from oauth-sync.
fn assert_conform(events: &[Envelope]) {
    for event in events {
        assert_eq!(event["source"], SOURCE, "{event}");
        if let Err(errors) = validate_event(event) {
            panic!("{event} breaks its schema: {errors:?}");
        }
    }
}

/// No token, code or secret the simulator issued appears in any event.
fn assert_no_secrets(events: &[Envelope], secrets: &[String]) {
    for event in events {
        let text = event.to_string();
        for secret in secrets {
            assert!(!text.contains(secret.as_str()), "a secret in {event}");
        }
    }
}

#[tokio::test]
async fn a_login_a_refresh_failure_a_dead_token_and_a_revoke_each_put_one_event() {
    let events = EventsFixture::start("ev-conn").await;
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Xero), "ev-conn").await;
    let fixture = &login.fixture;
    // The token service as `App` builds it: with the stack's sink.
    let store =
        shared::connection::store::ConnectionStore::new(fixture.aws.dynamodb.clone(), fixture.connections_table());
    let secrets = shared::secrets::SecretStore::new(fixture.aws.secrets.clone());
    let tokens = Arc::new(
        TokenService::load(login.config.clone(), store, secrets.clone(), RefreshSettings::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .with_events(events.sink()),
    );
    let service = shared::login::flow::LoginService::load(
        login.config.clone(),
        tokens.clone(),
        shared::login::attempts::AttemptStore::new(fixture.aws.dynamodb.clone(), &fixture.tables["LoginAttemptsTable"]),
        &secrets,
        ATTEMPT_TTL,
    )
    .await
    .expect("login service");

    // A login through the flow: connect link, the provider, the callback.
    let mut logins = Vec::new();
    for id in ["ev-a", "ev-b"] {
        let begin = login.begin(&service, &login.link(id)).await.expect("begin");
        let query = authorize(&fixture.oauth.http, &begin.location).await.callback_query();
        let finished = service
            .finish(PROVIDER, &query, Some(&begin.cookie))
            .await
            .expect("finish");
        logins.push(finished.connection);
    }
    let (a, b) = (&logins[0], &logins[1]);
    let connected = events
        .receive(std::time::Duration::from_secs(5), |e| e.len() >= 2)
        .await;
    assert_eq!(of_type(&connected, "connection.connected").len(), 2, "{connected:?}");
    let first = &connected[0]["detail"];
    assert_eq!(first["connection"], a.as_str());
    assert_eq!(first["provider"], PROVIDER);
    assert_eq!(first["token_version"], 1);

    // A refresh the provider answers 503: not refreshed, backed off.
    fixture.sim().inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    let failed = tokens.refresh_now(a, deadline(30)).await.expect_err("503");
    assert!(matches!(failed, RefreshError::RetryLater { .. }), "{failed}");
    // A dead refresh token: needs a new login, with the provider's message.
    fixture
        .sim()
        .kill_family_of(fixture.stored_refresh_token(b).await.secret());
    let dead = tokens.refresh_now(b, deadline(30)).await.expect_err("dead");
    assert!(matches!(dead, RefreshError::NeedsReauth { .. }), "{dead}");
    // A revoke of the first.
    let revoked = tokens.revoke(a).await.expect("revoke");
    assert!(revoked.at_provider);
    // A second revoke is a no-op, and says nothing.
    assert!(tokens.revoke(a).await.expect("again").already);

    let rest = events.drain().await;
    let types: Vec<&str> = rest.iter().filter_map(|e| e["detail-type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "connection.refresh_failed",
            "connection.needs_reauth",
            "connection.revoked"
        ],
        "one event per fact, in order: {rest:?}"
    );
    let refresh_failed = &rest[0]["detail"];
    assert_eq!(refresh_failed["connection"], a.as_str());
    assert_eq!(refresh_failed["failures"], 1);
    assert!(
        refresh_failed["cause"].as_str().is_some_and(|c| c.contains("503")),
        "{refresh_failed}"
    );
    let needs_reauth = &rest[1]["detail"];
    assert_eq!(needs_reauth["connection"], b.as_str());
    assert_eq!(needs_reauth["reason"], reason::DEAD_REFRESH_TOKEN);
    let message = needs_reauth["provider_message"].as_str().unwrap_or_default();
    let stored = fixture.connection(b).await.provider_message.unwrap_or_default();
    assert!(!message.is_empty() && message == stored, "{message} / {stored}");
    let revoked = &rest[2]["detail"];
    assert_eq!(
        (&revoked["connection"], &revoked["at_provider"]),
        (&serde_json::json!(a.as_str()), &serde_json::json!(true))
    );

    let all: Vec<Envelope> = connected.into_iter().chain(rest).collect();
    assert_conform(&all);
    assert_no_secrets(&all, &fixture.sim().issued_secrets());
}

#[tokio::test]
async fn a_finished_a_failed_and_a_parked_run_each_put_one_event_with_the_runs_counts() {
    let events = EventsFixture::start("ev-sync").await;
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        oauth_sync_tests::stack::PROJECTS_INCREMENTAL,
        quick_sync_settings(),
        "ev-sync",
    )
    .await;
    let engine = fx
        .fixture
        .engine(quick_sync_settings())
        .await
        .with_events(events.sink());
    let ids = fx.sim().seed_projects(30);
    let conn = fx.connect("ev-s").await;

    let run = async |engine: &shared::sync::engine::SyncEngine| {
        engine
            .run_now(&conn, "projects", deadline(120), &|_| {})
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Finished: 30 inserted; then an unchanged rerun (a run, no record changes).
    let first = run(&engine).await;
    assert_eq!(first.end, RunEnd::Finished, "{first:?}");
    assert!(fx.sim().update_project(&ids[0], "renamed"));
    let second = run(&engine).await;
    assert_eq!(second.end, RunEnd::Finished, "{second:?}");
    // Failed: every page request answers 500.
    fx.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 500 },
        times: quick_sync_settings().page_attempts,
        path_contains: None,
    });
    let failed = run(&engine).await;
    assert!(matches!(failed.end, RunEnd::Failed(_)), "{failed:?}");
    // Parked: the connection needs a new login.
    fx.sim()
        .kill_family_of(fx.fixture.stored_refresh_token(&conn).await.secret());
    fx.fixture
        .service
        .refresh_now(&conn, deadline(30))
        .await
        .expect_err("the refresh token is dead");
    let parked = run(&engine).await;
    assert!(matches!(parked.end, RunEnd::Parked(_)), "{parked:?}");

    let received = events.drain().await;
    let types: Vec<&str> = received.iter().filter_map(|e| e["detail-type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "sync.run.finished",
            "sync.run.finished",
            "sync.run.failed",
            "sync.job.parked"
        ],
        "{received:?}"
    );
    let detail = |i: usize| &received[i]["detail"];
    assert_eq!(detail(0)["connection"], conn.as_str());
    assert_eq!(detail(0)["sync"], "projects");
    assert_eq!(detail(0)["job"], format!("{}#projects", conn.as_str()));
    assert_eq!(detail(0)["counts"]["inserted"], 30);
    assert_eq!(detail(0)["counts"]["pages"], first.counts.pages);
    assert_eq!(detail(1)["counts"]["updated"], 1);
    assert_eq!(detail(1)["counts"]["inserted"], 0);
    assert!(
        detail(2)["error"].as_str().is_some_and(|e| e.contains("500")),
        "{}",
        detail(2)
    );
    assert!(
        detail(3)["reason"].as_str().is_some_and(|r| r.contains("needs_reauth")),
        "{}",
        detail(3)
    );
    assert_conform(&received);
    assert_no_secrets(&received, &fx.sim().issued_secrets());
}

#[tokio::test]
async fn an_unreachable_event_bus_fails_no_login_and_no_revoke_but_is_counted() {
    // EventBridge refuses every connection: each call fails at once, is
    // retried (bounded), and the event is given up on.
    let sink = sink_at("http://127.0.0.1:1", "nowhere").await;
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "ev-refused").await;
    let fixture = &login.fixture;
    let store =
        shared::connection::store::ConnectionStore::new(fixture.aws.dynamodb.clone(), fixture.connections_table());
    let tokens = TokenService::load(
        login.config.clone(),
        store,
        shared::secrets::SecretStore::new(fixture.aws.secrets.clone()),
        RefreshSettings::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .with_events(sink.clone());
    let id = shared::connection::ConnectionId::parse("ev-r").expect("id");
    let saved = tokens
        .save_login(
            &id,
            PROVIDER,
            shared::connection::ConnectionKind::Shared,
            &fixture.oauth.login().await,
            None,
        )
        .await
        .expect("the login is stored although its event is not");
    assert_eq!(saved.token_version, 1);
    assert!(!tokens.revoke(&id).await.expect("revoked").already);
    assert_eq!(sink.failed(), 2, "both events counted as failed");
}

/// A sink whose EventBridge is at `endpoint`, with short backoffs.
async fn sink_at(endpoint: &str, bus: &str) -> shared::events::EventSink {
    let sdk = shared::aws::sdk_config_from_env();
    shared::events::EventSink::with_config(
        aws_sdk_eventbridge::config::Builder::from(&sdk).endpoint_url(endpoint),
        bus,
        quick_publish(),
    )
}

fn quick_publish() -> shared::events::PublishSettings {
    shared::events::PublishSettings {
        base_backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(5),
        ..shared::events::PublishSettings::default()
    }
}

/// The entries of each PutEvents request a stub EventBridge received.
type Requests = Arc<std::sync::Mutex<Vec<Vec<serde_json::Value>>>>;

/// An EventBridge stand-in that refuses the first entry of its first
/// request (`FailedEntryCount: 1`, as under throttling) and accepts the rest.
async fn refusing_once() -> (oauth_sync_tests::serve::Server, Requests) {
    use axum::body::Bytes;
    use axum::extract::State;
    let requests: Requests = Arc::default();
    let router = axum::Router::new()
        .fallback(|State(requests): State<Requests>, body: Bytes| async move {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let entries = request["Entries"].as_array().cloned().unwrap_or_default();
            let mut seen = requests.lock().unwrap_or_else(|p| p.into_inner());
            let first = seen.is_empty();
            seen.push(entries.clone());
            let results: Vec<serde_json::Value> = (0..entries.len())
                .map(|i| match (first, i) {
                    (true, 0) => {
                        serde_json::json!({"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"})
                    }
                    _ => serde_json::json!({"EventId": format!("e{i}")}),
                })
                .collect();
            let failed = usize::from(first);
            (
                [("content-type", "application/x-amz-json-1.1")],
                serde_json::json!({"FailedEntryCount": failed, "Entries": results}).to_string(),
            )
        })
        .with_state(requests.clone());
    let server = oauth_sync_tests::serve::serve(
        router,
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
        || true,
    )
    .await
    .expect("stub");
    (server, requests)
}

#[tokio::test]
async fn a_refused_entry_is_sent_again_alone_and_a_batch_holds_at_most_ten() {
    let (server, requests) = refusing_once().await;
    let sink = sink_at(&format!("http://{}", server.addr), "stub-bus").await;
    let events: Vec<shared::events::Event> = (0..12)
        .map(|i| {
            shared::events::Event::Revoked(shared::events::Revoked {
                connection: format!("c{i}"),
                provider: "sim".into(),
                at_provider: false,
            })
        })
        .collect();
    let results = sink.put(&events).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(sink.failed(), 0);
    let requests = requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let sizes: Vec<usize> = requests.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 1, 2], "ten, the refused one again, then the last two");
    let detail = |entry: &serde_json::Value| {
        serde_json::from_str::<serde_json::Value>(entry["Detail"].as_str().unwrap_or_default()).unwrap_or_default()
    };
    assert_eq!(detail(&requests[1][0])["connection"], "c0", "the refused entry, alone");
    for entry in requests.iter().flatten() {
        assert_eq!(entry["Source"], SOURCE);
        assert_eq!(entry["EventBusName"], "stub-bus");
        assert_eq!(entry["DetailType"], "connection.revoked");
    }
}
