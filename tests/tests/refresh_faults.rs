//! Invariants 2 and 4 under faults: a worker killed between send and commit,
//! a provider that processes the refresh and drops the connection (or answers
//! too late, or with garbage), a commit whose response is lost, and DynamoDB
//! refusing connections during the commit. Each ends in the state DESIGN.md
//! names, and no refresh token is sent twice except the documented
//! grace-period (or non-rotating) retry.

use std::time::Duration;

use oauth_sync_tests::proxy::{DynamoProxy, ProxyFault};
use oauth_sync_tests::simulator::{Fault, FaultPlan, Grant, SimConfig};
use oauth_sync_tests::stack::{RefreshFixture, deadline};
use shared::config::PresetName;
use shared::connection::{Status, reason};
use shared::refresh::{RefreshError, RefreshSettings};

fn settings() -> RefreshSettings {
    RefreshSettings {
        token_timeout: Duration::from_secs(5),
        commit_budget: Duration::from_secs(6),
        poll_min: Duration::from_millis(20),
        poll_max: Duration::from_millis(200),
        ..RefreshSettings::default()
    }
}

async fn fixture(preset: PresetName, test: &str) -> RefreshFixture {
    RefreshFixture::start(SimConfig::for_preset(preset), settings(), "", test).await
}

fn fault(fault: Fault) -> FaultPlan {
    FaultPlan {
        grant: Grant::RefreshToken,
        fault,
        times: 1,
    }
}

/// Kills a worker process after the provider processed its refresh and before
/// it could commit, then lets this process find the abandoned lease. `then`
/// is a fault for the send after the killed one.
async fn kill_worker_after_send(
    fixture: &RefreshFixture,
    id: &str,
    then: Option<Fault>,
) -> Result<shared::refresh::Fresh, RefreshError> {
    let id = fixture.connect(id).await;
    fixture
        .sim()
        .inject(fault(Fault::DelayAfterProcessing { millis: 30_000 }));
    if let Some(then) = then {
        fixture.sim().inject(fault(then));
    }
    let config = std::env::temp_dir().join(format!("oauth-sync-kill-{}-{id}.toml", std::process::id()));
    std::fs::write(&config, &fixture.config_text).expect("write config");
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_refresh-worker"))
        .env("OAUTH_SYNC_CONFIG", &config)
        .env("OAUTH_SYNC_CONNECTIONS_TABLE", fixture.connections_table())
        .env("WORKER_IDS", id.as_str())
        .env("WORKER_TARGET", "2")
        .env("WORKER_TASKS", "1")
        .env("WORKER_TOKEN_TIMEOUT_MS", "10000")
        .env("WORKER_COMMIT_BUDGET_MS", "5000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn worker");
    // Wait (bounded) until the provider has processed the refresh, then kill.
    let give_up = deadline(60);
    while fixture.sim().counters().refreshes == 0 && std::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fixture.sim().counters().refreshes,
        1,
        "the worker's refresh reached the provider"
    );
    worker.kill().expect("kill");
    worker.wait().expect("reap");
    std::fs::remove_file(&config).ok();
    let connection = fixture.connection(&id).await;
    assert!(
        connection.lease.is_some() && connection.token_version == 1,
        "killed holding the lease, before committing"
    );
    // The lease (10 s + 5 s) must run out before anyone may act; this call waits for it.
    fixture.service.refresh_now(&id, deadline(60)).await
}

#[tokio::test]
async fn killed_after_sending_without_grace_needs_reauth_and_never_resends() {
    let fixture = fixture(PresetName::Generic, "kill-generic").await;
    let e = kill_worker_after_send(&fixture, "killed", None).await.unwrap_err();
    assert!(
        matches!(&e, RefreshError::NeedsReauth { reason, .. } if *reason == reason::REFRESH_OUTCOME_UNKNOWN),
        "{e}"
    );
    let id = shared::connection::ConnectionId::parse("killed").expect("id");
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.status, Status::NeedsReauth);
    assert_eq!(
        connection.status_reason.as_deref(),
        Some(reason::REFRESH_OUTCOME_UNKNOWN)
    );
    assert!(connection.lease.is_none());
    let counters = fixture.sim().counters();
    assert_eq!(
        (counters.refresh_requests, counters.refresh_tokens_reused),
        (1, 0),
        "the old token was not sent again"
    );
}

#[tokio::test]
async fn killed_after_sending_with_grace_resends_once_and_recovers() {
    let fixture = fixture(PresetName::Xero, "kill-xero").await;
    let fresh = kill_worker_after_send(&fixture, "killed", None)
        .await
        .expect("recovered inside the grace period");
    assert!(fresh.refreshed);
    assert_eq!(fresh.token_version, 2);
    let counters = fixture.sim().counters();
    assert_eq!(
        (counters.refresh_requests, counters.grace_reuses),
        (2, 1),
        "one documented grace-period resend"
    );
    assert_eq!((counters.refresh_tokens_reused, counters.families_revoked), (0, 0));
    let id = shared::connection::ConnectionId::parse("killed").expect("id");
    assert_eq!(fixture.connection(&id).await.status, Status::Active);
    assert!(fixture.stored_tokens_work(&id).await);
}

#[tokio::test]
async fn provider_drops_the_connection_after_processing() {
    // Rotating, no grace: the outcome is unknown and the token may be spent.
    let generic = fixture(PresetName::Generic, "drop-generic").await;
    let id = generic.connect("dropped").await;
    generic.sim().inject(fault(Fault::DropAfterProcessing));
    let e = generic.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(
        matches!(&e, RefreshError::NeedsReauth { reason, .. } if *reason == reason::REFRESH_OUTCOME_UNKNOWN),
        "{e}"
    );
    assert!(e.to_string().contains("outcome"), "{e}");
    let connection = generic.connection(&id).await;
    assert_eq!((connection.status, connection.token_version), (Status::NeedsReauth, 1));
    let counters = generic.sim().counters();
    assert_eq!((counters.refresh_requests, counters.refresh_tokens_reused), (1, 0));

    // Xero: the retired token still works for 30 minutes, so one resend recovers.
    let xero = fixture(PresetName::Xero, "drop-xero").await;
    let id = xero.connect("dropped").await;
    xero.sim().inject(fault(Fault::DropAfterProcessing));
    let fresh = xero.service.refresh_now(&id, deadline(30)).await.expect("grace resend");
    assert_eq!(fresh.token_version, 2);
    assert_eq!(xero.sim().counters().grace_reuses, 1);
    assert!(xero.stored_tokens_work(&id).await);

    // Google does not rotate: sending the same token again is harmless.
    let google = fixture(PresetName::Google, "drop-google").await;
    let id = google.connect("dropped").await;
    google.sim().inject(fault(Fault::DropAfterProcessing));
    google
        .service
        .refresh_now(&id, deadline(30))
        .await
        .expect("resend of a non-rotating token");
    assert_eq!(google.sim().counters().refresh_requests, 2);
    assert!(google.stored_tokens_work(&id).await);
}

#[tokio::test]
async fn a_late_or_garbled_answer_is_an_unknown_outcome() {
    let fixture = fixture(PresetName::Generic, "late").await;
    // Processed, but the answer comes long after the 5 s timeout.
    let id = fixture.connect("late").await;
    fixture
        .sim()
        .inject(fault(Fault::DelayAfterProcessing { millis: 60_000 }));
    let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(
        matches!(&e, RefreshError::NeedsReauth { reason, .. } if *reason == reason::REFRESH_OUTCOME_UNKNOWN),
        "{e}"
    );

    // Processed, then a truncated body: the new refresh token is lost either way.
    let id = fixture.connect("garbled").await;
    fixture.sim().inject(fault(Fault::BodyAfterProcessing {
        status: 200,
        body: "{\"access_token\": \"at-".into(),
    }));
    let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(
        matches!(&e, RefreshError::NeedsReauth { message, .. } if message.contains("not a JSON object")),
        "{e}"
    );
    assert_eq!(fixture.sim().counters().refresh_tokens_reused, 0);
}

/// Leases long enough to outlast the injected outages with room to spare.
const LONG_COMMIT_BUDGET: Duration = Duration::from_secs(20);

fn upstream() -> String {
    std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack is running")
}

/// One refresh through the fault proxy, armed with `fault` for the commit's
/// UpdateItem (the only request carrying `commit_id`), with leases of the
/// token timeout plus `commit_budget`: the commit must land as version 2
/// after one provider call, with nothing spent twice.
async fn refresh_through_commit_fault(name: &str, fault: ProxyFault, commit_budget: Duration) -> DynamoProxy {
    let fixture = fixture(PresetName::Generic, name).await;
    let proxy = DynamoProxy::start(&upstream()).await.expect("proxy");
    let settings = RefreshSettings {
        commit_budget,
        ..settings()
    };
    let service = fixture.service_via(&proxy.url, settings).await;
    let id = fixture.connect(name).await;
    proxy.arm(fault);

    let fresh = service
        .refresh_now(&id, deadline(30))
        .await
        .expect("the commit lands despite the fault");
    assert_eq!((fresh.token_version, fresh.refreshed), (2, true));
    let connection = fixture.connection(&id).await;
    assert_eq!((connection.status, connection.token_version), (Status::Active, 2));
    assert!(connection.lease.is_none());
    let counters = fixture.sim().counters();
    assert_eq!((counters.refreshes, counters.refresh_tokens_reused), (1, 0));
    assert!(fixture.stored_tokens_work(&id).await);
    proxy
}

fn on_commit() -> String {
    "commit_id".into()
}

#[tokio::test]
async fn a_lost_commit_response_is_resolved_by_reading_not_guessing() {
    let fault = ProxyFault::LoseResponse { marker: on_commit() };
    let proxy = refresh_through_commit_fault("lost-commit", fault, LONG_COMMIT_BUDGET).await;
    assert_eq!(proxy.lost_responses(), 1, "the commit's answer was lost");
}

#[tokio::test]
async fn dynamodb_refusing_connections_during_the_commit_is_outlasted() {
    let fault = ProxyFault::RefuseFor {
        marker: on_commit(),
        duration: Duration::from_secs(3),
    };
    let proxy = refresh_through_commit_fault("refused-commit", fault, LONG_COMMIT_BUDGET).await;
    assert!(
        proxy.refused() >= 2,
        "DynamoDB was unreachable for a while ({} refusals)",
        proxy.refused()
    );
}

#[tokio::test]
async fn dynamodb_answering_503_to_the_commit_is_outlasted() {
    // More 503s than the SDK's own attempts: the protocol's retry must treat
    // an unmodelled 5xx as transient, or the rotated tokens would be lost.
    let times = shared::aws::MAX_ATTEMPTS + 2;
    let fault = ProxyFault::Unavailable {
        marker: on_commit(),
        times,
    };
    let proxy = refresh_through_commit_fault("unavailable-commit", fault, LONG_COMMIT_BUDGET).await;
    assert_eq!(proxy.unavailable(), u64::from(times), "every injected 503 was seen");
}

#[tokio::test]
async fn a_commit_outlasts_its_lease_while_nobody_takes_over() {
    // Leases of 5 s + 2 s; DynamoDB is unreachable for 10 s from the commit on.
    // The commit is conditional on the lease owner, so retrying past the
    // lease's end is safe, and it saves the rotated tokens (invariant 2).
    let fault = ProxyFault::RefuseFor {
        marker: on_commit(),
        duration: Duration::from_secs(10),
    };
    let proxy = refresh_through_commit_fault("past-lease", fault, Duration::from_secs(2)).await;
    assert!(proxy.refused() >= 2, "{} refusals", proxy.refused());
}

#[tokio::test]
async fn a_takeover_resend_that_fails_too_is_not_repeated() {
    // Inside Xero's grace the takeover may resend once, measured from the
    // killed worker's send; when that resend's outcome is unknown too, no third send.
    let fixture = fixture(PresetName::Xero, "takeover-twice").await;
    let e = kill_worker_after_send(&fixture, "killed", Some(Fault::DropAfterProcessing))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RefreshError::NeedsReauth { reason, .. } if *reason == reason::REFRESH_OUTCOME_UNKNOWN),
        "{e}"
    );
    assert!(
        e.to_string().contains("stopped before recording"),
        "names the first send: {e}"
    );
    let counters = fixture.sim().counters();
    assert_eq!(counters.refresh_requests, 2, "the killed send and one resend, no more");
    assert_eq!(counters.refresh_tokens_reused, 0);
}

#[tokio::test]
async fn an_unknown_outcome_stays_on_record_when_the_resend_fails() {
    // A 12-second grace period (configured, as a provider might): the resend
    // meets a 503, and by the next attempt the grace no longer covers a send.
    let sim = SimConfig {
        reuse_grace: Duration::from_secs(12),
        ..SimConfig::for_preset(PresetName::Xero)
    };
    let settings = RefreshSettings {
        base_backoff: Duration::from_millis(500),
        ..settings()
    };
    let fixture = RefreshFixture::start(sim, settings, "reuse_grace_secs = 12", "unknown-kept").await;
    let id = fixture.connect("tenant").await;
    fixture.sim().inject(fault(Fault::DropAfterProcessing));
    fixture.sim().inject(fault(Fault::Status { status: 503 }));

    let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(matches!(e, RefreshError::RetryLater { .. }), "{e}");
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.status, Status::Active);
    assert!(
        connection.outcome_unknown_since.is_some(),
        "the unknown outcome is on record"
    );
    assert!(connection.lease.is_none());

    // Past the backoff and past what the grace period can cover for a 5 s
    // call: the first send was more than 7 s ago.
    tokio::time::sleep(Duration::from_millis(7_600)).await;
    let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(
        matches!(&e, RefreshError::NeedsReauth { reason, .. } if *reason == reason::REFRESH_OUTCOME_UNKNOWN),
        "{e}"
    );
    let counters = fixture.sim().counters();
    assert_eq!(
        counters.refresh_requests, 2,
        "the old token was not sent outside the grace period"
    );
    assert_eq!(counters.refresh_tokens_reused, 0);
}

#[tokio::test]
async fn a_non_rotating_provider_that_keeps_dropping_is_just_down() {
    let fixture = fixture(PresetName::Google, "non-rotating-down").await;
    let id = fixture.connect("google").await;
    fixture.sim().inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::DropAfterProcessing,
        times: 2,
    });
    let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(matches!(e, RefreshError::RetryLater { .. }), "{e}");
    let connection = fixture.connection(&id).await;
    assert_eq!(
        (connection.status, connection.consecutive_failures),
        (Status::Active, 1)
    );
    assert_eq!(
        connection.outcome_unknown_since, None,
        "nothing to remember: the old token stays good"
    );
    assert_eq!(fixture.sim().counters().refresh_requests, 2);
}
