//! Invariants 1, 2 and 4 under faults: a worker killed between send and
//! commit, a provider that processes the refresh and drops the connection (or
//! answers too late, or with garbage, or not at all), a commit or lease write
//! whose response is lost, DynamoDB refusing connections during the commit,
//! and a clock far from DynamoDB's. Each ends in the state DESIGN.md names,
//! and a refresh token whose outcome is unknown is sent exactly once more.

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
    let id = kill_worker_holding_the_lease(fixture, id, then).await;
    // The lease (10 s + 5 s) must run out before anyone may act; this call waits for it.
    fixture.service.refresh_now(&id, deadline(60)).await
}

/// Connects `id` and kills a worker that sent its refresh (processed by the
/// provider) and holds the lease, uncommitted.
async fn kill_worker_holding_the_lease(
    fixture: &RefreshFixture,
    id: &str,
    then: Option<Fault>,
) -> shared::connection::ConnectionId {
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
    id
}

/// The connection needs a new login because the provider called its token dead.
fn dead(e: &RefreshError) -> bool {
    matches!(e, RefreshError::NeedsReauth { reason, .. } if *reason == reason::DEAD_REFRESH_TOKEN)
}

/// The connection needs a new login because a refresh's outcome stayed unknown.
fn unknown(e: &RefreshError) -> bool {
    matches!(e, RefreshError::NeedsReauth { reason, .. } if *reason == reason::REFRESH_OUTCOME_UNKNOWN)
}

#[tokio::test]
async fn killed_after_sending_without_grace_resends_once_and_the_dead_answer_needs_reauth() {
    // The killed worker's refresh was processed: its new token is lost. The
    // one resend only turns that into the provider's dead-token answer.
    let fixture = fixture(PresetName::Generic, "kill-generic").await;
    let e = kill_worker_after_send(&fixture, "killed", None).await.unwrap_err();
    assert!(dead(&e), "{e}");
    assert!(e.to_string().contains("one resend"), "says what happened: {e}");
    let id = shared::connection::ConnectionId::parse("killed").expect("id");
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.status, Status::NeedsReauth);
    assert!(connection.lease.is_none());
    let counters = fixture.sim().counters();
    assert_eq!(
        (counters.refresh_requests, counters.refresh_tokens_reused),
        (2, 1),
        "the killed send and exactly one resend"
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
    // Rotating, no grace: the outcome is unknown; the token was in fact spent.
    let generic = fixture(PresetName::Generic, "drop-generic").await;
    let id = generic.connect("dropped").await;
    generic.sim().inject(fault(Fault::DropAfterProcessing));
    let e = generic.service.refresh_now(&id, deadline(60)).await.unwrap_err();
    assert!(dead(&e), "the one resend meets the dead-token answer: {e}");
    assert!(e.to_string().contains("outcome"), "{e}");
    let connection = generic.connection(&id).await;
    assert_eq!((connection.status, connection.token_version), (Status::NeedsReauth, 1));
    let counters = generic.sim().counters();
    assert_eq!((counters.refresh_requests, counters.refresh_tokens_reused), (2, 1));

    // Xero: the retired token still works for 30 minutes, so one resend recovers.
    let xero = fixture(PresetName::Xero, "drop-xero").await;
    let id = xero.connect("dropped").await;
    xero.sim().inject(fault(Fault::DropAfterProcessing));
    let fresh = xero.service.refresh_now(&id, deadline(60)).await.expect("grace resend");
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
    let e = fixture.service.refresh_now(&id, deadline(60)).await.unwrap_err();
    assert!(dead(&e), "{e}");

    // Processed, then a truncated body: the new refresh token is lost either way.
    let id = fixture.connect("garbled").await;
    fixture.sim().inject(fault(Fault::BodyAfterProcessing {
        status: 200,
        body: "{\"access_token\": \"at-".into(),
    }));
    let e = fixture.service.refresh_now(&id, deadline(60)).await.unwrap_err();
    assert!(dead(&e), "{e}");
    let counters = fixture.sim().counters();
    assert_eq!(
        (counters.refresh_requests, counters.refresh_tokens_reused),
        (4, 2),
        "each unknown outcome was resent exactly once"
    );
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
async fn a_lost_lease_response_is_recognised_as_our_own_lease() {
    // The lease write lands and its answer is lost; the SDK's retry meets the
    // lease it took itself. Taken for someone else's, the worker would wait for
    // it to end and then treat its own (unsent) refresh as an unknown outcome.
    let fault = ProxyFault::LoseResponse {
        marker: "attribute_not_exists(lease_owner)".into(),
    };
    let proxy = refresh_through_commit_fault("lost-lease", fault, LONG_COMMIT_BUDGET).await;
    assert_eq!(proxy.lost_responses(), 1, "the lease write's answer was lost");
}

#[tokio::test]
async fn a_commit_stops_at_its_leases_end_so_no_takeover_meets_it_retrying() {
    // A caller with a long deadline (a sync run: 120 s here); leases of 5 s +
    // 2 s; DynamoDB unreachable for 60 s from the commit on. The commit stops
    // retrying when its lease ends, before anyone may take the lease over
    // (its end plus the clock-skew margin), not at the caller's deadline.
    let fixture = fixture(PresetName::Generic, "lease-end").await;
    let proxy = DynamoProxy::start(&upstream()).await.expect("proxy");
    let settings = RefreshSettings {
        commit_budget: Duration::from_secs(2),
        ..settings()
    };
    let service = fixture.service_via(&proxy.url, settings).await;
    let id = fixture.connect("lease-end").await;
    proxy.arm(ProxyFault::RefuseFor {
        marker: on_commit(),
        duration: Duration::from_secs(60),
    });
    let e = service.refresh_now(&id, deadline(120)).await.unwrap_err();
    let returned_at = shared::connection::now_ms();
    assert!(matches!(e, RefreshError::Store { .. }), "{e}");
    assert!(proxy.refusing(), "it stopped while DynamoDB was still unreachable");
    let connection = fixture.connection(&id).await;
    let lease = connection.lease.expect("the lease is left to be found abandoned");
    assert!(
        returned_at < lease.until + shared::connection::clock::CLOCK_SKEW_MS,
        "the commit stopped before the lease could be taken over ({returned_at} vs lease end {})",
        lease.until
    );
    assert_eq!(connection.token_version, 1, "nothing landed");
}

#[tokio::test]
async fn a_clock_far_from_dynamodbs_refuses_to_take_a_lease_and_says_why() {
    let fixture = fixture(PresetName::Generic, "skew").await;
    let proxy = DynamoProxy::start(&upstream()).await.expect("proxy");
    let service = fixture.service_via(&proxy.url, settings()).await;
    let id = fixture.connect("skewed").await;
    // DynamoDB's clock says a minute later than ours: we are a minute behind.
    proxy.shift_date(60);
    let e = service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(matches!(e, RefreshError::ClockSkew { .. }), "{e}");
    assert!(e.to_string().contains("behind"), "{e}");
    assert!(fixture.connection(&id).await.lease.is_none(), "no lease taken");
    assert_eq!(fixture.sim().counters().refresh_requests, 0, "nothing sent");
    // With DynamoDB's own clock, the same worker refreshes.
    proxy.shift_date(0);
    let fresh = service.refresh_now(&id, deadline(30)).await.expect("refreshed");
    assert_eq!(fresh.token_version, 2);
}

#[tokio::test]
async fn a_slow_answer_from_dynamodb_is_not_taken_for_a_skewed_clock() {
    // DynamoDB stamps its `Date` as it answers; an answer heard of 3 s later
    // (a loaded table, a busy process) once read as "this machine's clock
    // is 3 s ahead" and the worker refused its lease: 90,650 refusals in a
    // 200,000-connection run at 128 places a group, on one machine whose
    // clock is DynamoDB's.
    let fixture = fixture(PresetName::Generic, "slow-date").await;
    let proxy = DynamoProxy::start(&upstream()).await.expect("proxy");
    let service = fixture.service_via(&proxy.url, settings()).await;
    let id = fixture.connect("slow-date").await;
    // The first request naming the connection is the refresh's read of it.
    proxy.arm(ProxyFault::SlowAnswer {
        marker: id.to_string(),
        delay: Duration::from_secs(3),
    });
    let fresh = service.refresh_now(&id, deadline(30)).await.expect("refreshed");
    assert_eq!(fresh.token_version, 2);
    assert_eq!(fixture.sim().counters().refresh_requests, 1);
}

/// The lease's write, heard of `delay` late (a loaded table), on a service
/// whose leases are 5 s + 6 s and whose sends need 10 s of the deadline.
async fn slow_lease_write(name: &str, delay: Duration) -> (RefreshFixture, DynamoProxy, shared::refresh::TokenService) {
    let fixture = fixture(PresetName::Generic, name).await;
    let proxy = DynamoProxy::start(&upstream()).await.expect("proxy");
    let service = fixture.service_via(&proxy.url, settings()).await;
    proxy.arm(ProxyFault::SlowAnswer {
        marker: "attribute_not_exists(lease_owner)".into(),
        delay,
    });
    (fixture, proxy, service)
}

#[tokio::test]
async fn a_run_that_ends_before_the_send_leaves_no_failure_and_no_backoff() {
    // The deadline leaves time for a send when the lease is taken (10 s
    // are needed, 11 s are left) but not once its slow write is heard of.
    // That is the run's time running out, not the connection failing: the
    // lease goes back unused, nothing is counted against the connection, and
    // the next caller refreshes it at once (a backoff would hold it back for
    // 30 s, past Exact Online's 25 s window).
    let (fixture, _proxy, service) = slow_lease_write("run-ends", Duration::from_secs(2)).await;
    let id = fixture.connect("run-ends").await;
    let e = service
        .refresh_now(&id, std::time::Instant::now() + Duration::from_secs(11))
        .await
        .unwrap_err();
    assert!(matches!(e, RefreshError::Deadline { .. }), "{e}");
    let connection = fixture.connection(&id).await;
    assert!(connection.lease.is_none(), "the lease was given back");
    assert_eq!(connection.consecutive_failures, 0, "no failure counted");
    assert_eq!(connection.next_attempt_at, None, "no backoff");
    assert_eq!(connection.last_refresh_outcome, None);
    assert_eq!(fixture.sim().counters().refresh_requests, 0, "nothing sent");
    let fresh = service.refresh_now(&id, deadline(30)).await.expect("refreshed at once");
    assert_eq!((fresh.token_version, fresh.refreshed), (2, true));
}

#[tokio::test]
async fn a_lease_used_up_before_the_send_is_taken_again_within_the_deadline() {
    // The lease (11 s) has less than the 8 s a send needs once its write is
    // heard of, and the caller's deadline is far: the lease goes back and is
    // taken again, and the one refresh goes out under the new one.
    let (fixture, _proxy, service) = slow_lease_write("lease-used-up", Duration::from_millis(3500)).await;
    let id = fixture.connect("lease-used-up").await;
    let fresh = service.refresh_now(&id, deadline(60)).await.expect("refreshed");
    assert_eq!((fresh.token_version, fresh.refreshed), (2, true));
    let connection = fixture.connection(&id).await;
    assert_eq!((connection.consecutive_failures, connection.next_attempt_at), (0, None));
    let counters = fixture.sim().counters();
    assert_eq!((counters.refreshes, counters.refresh_tokens_reused), (1, 0));
}

#[tokio::test]
async fn a_revoke_takes_over_an_abandoned_lease_and_calls_the_provider_once() {
    let fixture = fixture(PresetName::Generic, "revoke-abandoned").await;
    let id = kill_worker_holding_the_lease(&fixture, "abandoned", None).await;
    let give_up = deadline(60);
    let revoked = loop {
        match fixture.service.revoke(&id).await {
            // The killed worker's lease is live until it ends.
            Err(RefreshError::RetryLater { .. }) if std::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other.expect("revoked"),
        }
    };
    assert!(revoked.at_provider && !revoked.already);
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.status, Status::Revoked);
    assert!(connection.lease.is_none() && connection.refresh_token.is_none());
    assert_eq!(
        fixture.sim().counters().revoke_requests,
        2,
        "the refresh token and the access token, once each"
    );
}

#[tokio::test]
async fn a_takeover_resend_that_fails_too_is_not_repeated() {
    // Inside Xero's grace the takeover may resend once, measured from the
    // killed worker's send; when that resend's outcome is unknown too, no third send.
    let fixture = fixture(PresetName::Xero, "takeover-twice").await;
    let e = kill_worker_after_send(&fixture, "killed", Some(Fault::DropAfterProcessing))
        .await
        .unwrap_err();
    assert!(unknown(&e), "{e}");
    assert!(e.to_string().contains("one resend"), "names the resend: {e}");
    let counters = fixture.sim().counters();
    assert_eq!(counters.refresh_requests, 2, "the killed send and one resend, no more");
    assert_eq!(counters.refresh_tokens_reused, 0);
}

#[tokio::test]
async fn an_unknown_outcome_that_was_not_processed_is_saved_by_the_one_resend() {
    // A 502 from a gateway: the outcome is unknown to us; the provider never
    // saw the request. The one resend saves the connection, also without grace.
    let fixture = fixture(PresetName::Generic, "unprocessed").await;
    let id = fixture.connect("gateway").await;
    fixture.sim().inject(fault(Fault::Status { status: 502 }));
    let fresh = fixture.service.refresh_now(&id, deadline(60)).await.expect("saved");
    assert_eq!((fresh.token_version, fresh.refreshed), (2, true));
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.status, Status::Active);
    assert_eq!(
        (connection.outcome_unknown_since, connection.outcome_unknown_resent_at),
        (None, None),
        "the commit clears the record"
    );
    let counters = fixture.sim().counters();
    assert_eq!((counters.refresh_requests, counters.refresh_tokens_reused), (2, 0));
    assert!(fixture.stored_tokens_work(&id).await);
}

#[tokio::test]
async fn with_the_resend_turned_off_an_unknown_outcome_needs_reauth_without_a_resend() {
    let fixture = RefreshFixture::start(
        SimConfig::for_preset(PresetName::Generic),
        settings(),
        "resend_after_unknown_outcome = false",
        "resend-off",
    )
    .await;
    let id = fixture.connect("careful").await;
    fixture.sim().inject(fault(Fault::Status { status: 502 }));
    let e = fixture.service.refresh_now(&id, deadline(60)).await.unwrap_err();
    assert!(unknown(&e), "{e}");
    assert!(
        e.to_string().contains("resend_after_unknown_outcome"),
        "names the setting: {e}"
    );
    assert_eq!(fixture.sim().counters().refresh_requests, 1, "no resend");
}

#[tokio::test]
async fn a_resend_answered_503_is_not_spent_and_the_unknown_outcome_stays_on_record() {
    // Processed, then the connection dropped: the token was rotated. The
    // resend meets a 503 (certainly not processed): the resend is not spent,
    // the unknown outcome stays on record, and the next attempt resends.
    let settings = RefreshSettings {
        base_backoff: Duration::from_millis(500),
        ..settings()
    };
    let fixture = RefreshFixture::start(SimConfig::for_preset(PresetName::Generic), settings, "", "resend-503").await;
    let id = fixture.connect("tenant").await;
    fixture.sim().inject(fault(Fault::DropAfterProcessing));
    fixture.sim().inject(fault(Fault::Status { status: 503 }));

    let e = fixture.service.refresh_now(&id, deadline(60)).await.unwrap_err();
    assert!(matches!(e, RefreshError::RetryLater { .. }), "{e}");
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.status, Status::Active);
    assert!(
        connection.outcome_unknown_since.is_some(),
        "the unknown outcome is on record"
    );
    assert_eq!(connection.outcome_unknown_resent_at, None, "the resend is not spent");
    assert!(connection.lease.is_none());

    let give_up = deadline(60);
    let e = loop {
        match fixture.service.refresh_now(&id, deadline(60)).await {
            Err(RefreshError::RetryLater { .. }) if std::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other.unwrap_err(),
        }
    };
    assert!(dead(&e), "the resend meets the dead-token answer: {e}");
    let counters = fixture.sim().counters();
    assert_eq!(
        (counters.refresh_requests, counters.refresh_tokens_reused),
        (3, 1),
        "the first send, the 503, and the one resend"
    );
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

#[tokio::test]
async fn a_lease_taken_on_a_stale_read_cannot_skip_a_recorded_unknown_outcome() {
    // B reads the connection (nothing unknown on record) and plans an
    // ordinary send; before B's lease write lands, A takes the lease, meets an
    // unknown outcome and records it. B's write must fail: its plan is stale.
    let fixture = fixture(PresetName::Generic, "stale-plan").await;
    let id = fixture.connect("stale").await;
    let store = fixture.service.store();
    let stale = fixture.connection(&id).await;
    let now = shared::connection::now_ms();
    let until = now + 30_000;
    let a = store
        .take_lease(&stale, "worker-a", now, until, false)
        .await
        .expect("A's take");
    assert!(matches!(a, shared::connection::store::Write::Done));
    let released = store
        .release_after_failure(
            &id,
            stale.token_version,
            "worker-a",
            "outcome unknown",
            1,
            now,
            Some(now),
        )
        .await
        .expect("A records the unknown outcome");
    assert!(matches!(released, shared::connection::store::Write::Done));
    let b = store
        .take_lease(&stale, "worker-b", now, until, false)
        .await
        .expect("B's take");
    assert!(
        matches!(b, shared::connection::store::Write::Conflict(_)),
        "a take planned without the unknown outcome is refused"
    );
    let fresh = fixture.connection(&id).await;
    assert!(fresh.lease.is_none() && fresh.outcome_unknown_since == Some(now));
}
