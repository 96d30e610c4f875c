//! Invariants 4 and 5, and the parsing of token responses, through the whole
//! protocol: each preset's dead-token answer moves the connection to
//! `needs_reauth` with the provider's message; a 503 or an unreachable
//! provider does not, and backs off instead of retrying in a storm; each
//! preset's response quirks end up correctly in the store.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use oauth_sync_tests::simulator::{Fault, FaultPlan, Grant, SimConfig};
use oauth_sync_tests::stack::{PROVIDER, RefreshFixture, deadline};
use shared::config::PresetName;
use shared::connection::store::Write;
use shared::connection::{DUE_SHARDS, Status, now_ms, reason};
use shared::refresh::{RefreshError, RefreshSettings};

fn settings() -> RefreshSettings {
    RefreshSettings {
        token_timeout: Duration::from_secs(10),
        commit_budget: Duration::from_secs(4),
        base_backoff: Duration::from_secs(4),
        ..RefreshSettings::default()
    }
}

async fn fixture(preset: PresetName, overrides: &str, test: &str) -> RefreshFixture {
    RefreshFixture::start(SimConfig::for_preset(preset), settings(), overrides, test).await
}

/// Sleeps until a little past `at` (milliseconds since the epoch).
async fn sleep_until_ms(at: i64) {
    let wait = u64::try_from(at + 50 - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

async fn in_due_index(fixture: &RefreshFixture, id: &shared::connection::ConnectionId) -> bool {
    let mut due = Vec::new();
    for shard in 0..DUE_SHARDS {
        due.extend(
            fixture
                .service
                .store()
                .due(&shard.to_string(), i64::MAX / 2, 100, None)
                .await
                .expect("query")
                .ids,
        );
    }
    due.contains(id)
}

#[tokio::test]
async fn each_presets_dead_token_answer_needs_reauth_with_its_message() {
    let expected = |preset: PresetName| match preset {
        PresetName::ExactOnline => "Old refresh token used.",
        PresetName::Hubspot => "missing or unknown refresh token",
        PresetName::Microsoft => "AADSTS70000",
        PresetName::Google => "Token has been expired or revoked.",
        PresetName::Zoho => "invalid_code",
        _ => "refresh token revoked",
    };
    for preset in PresetName::ALL {
        // Exact Online's one-refresh-per-570 s limit would (rightly) hold the refresh back.
        let fixture = fixture(preset, "min_refresh_interval_secs = 0", "dead").await;
        let id = fixture.connect("dead").await;
        assert!(
            in_due_index(&fixture, &id).await,
            "{preset}: active connections are in the due index"
        );
        let refresh = fixture.stored_refresh_token(&id).await;
        fixture.sim().kill_family_of(refresh.secret());

        let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
        let RefreshError::NeedsReauth {
            reason: why, message, ..
        } = &e
        else {
            panic!("{preset}: {e}")
        };
        assert_eq!(*why, reason::DEAD_REFRESH_TOKEN, "{preset}");
        assert!(message.contains(expected(preset)), "{preset}: {message}");
        let connection = fixture.connection(&id).await;
        assert_eq!(connection.status, Status::NeedsReauth, "{preset}");
        assert_eq!(
            connection.status_reason.as_deref(),
            Some(reason::DEAD_REFRESH_TOKEN),
            "{preset}"
        );
        assert!(
            connection
                .provider_message
                .as_deref()
                .is_some_and(|m| m.contains(expected(preset))),
            "{preset}"
        );
        assert!(connection.lease.is_none(), "{preset}");
        assert!(
            !in_due_index(&fixture, &id).await,
            "{preset}: a dead connection leaves the due index"
        );

        // It stops: no further call reaches the provider.
        let before = fixture.sim().counters().refresh_requests;
        let e = fixture.service.access_token(&id, deadline(30)).await.unwrap_err();
        assert!(
            matches!(
                e,
                RefreshError::NotActive {
                    status: Status::NeedsReauth,
                    ..
                }
            ),
            "{preset}: {e}"
        );
        assert_eq!(fixture.sim().counters().refresh_requests, before, "{preset}");
    }
}

#[tokio::test]
async fn a_503_backs_off_exponentially_and_keeps_the_connection() {
    let fixture = fixture(PresetName::ExactOnline, "min_refresh_interval_secs = 0", "unavailable").await;
    let id = fixture.connect("busy").await;
    let unavailable = FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::Status { status: 503 },
        times: 1,
    };

    fixture.sim().inject(unavailable.clone());
    let before = now_ms();
    let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    let after = now_ms();
    assert!(
        matches!(&e, RefreshError::RetryLater { cause, .. } if cause.contains("503")),
        "{e}"
    );
    let connection = fixture.connection(&id).await;
    assert_eq!(
        (
            connection.status,
            connection.consecutive_failures,
            connection.token_version
        ),
        (Status::Active, 1, 1)
    );
    // 4 s base backoff, jittered to 2–4 s after the failure (which happened between `before` and `after`).
    let next = connection.next_attempt_at.expect("a next attempt");
    assert!(
        (before + 2_000..=after + 4_000).contains(&next),
        "{} ms after the call began",
        next - before
    );
    assert!(connection.lease.is_none());

    // No retry storm: while backing off, nothing is sent; a caller that only
    // needs a token gets the one that still works.
    let fresh = fixture
        .service
        .access_token(&id, deadline(30))
        .await
        .expect("the current token");
    assert!(!fresh.refreshed);
    assert!(matches!(
        fixture.service.refresh_now(&id, deadline(30)).await,
        Err(RefreshError::RetryLater { .. })
    ));
    assert_eq!(fixture.sim().counters().refresh_requests, 1);

    // The second consecutive failure waits twice as long.
    sleep_until_ms(next).await;
    fixture.sim().inject(unavailable);
    let before = now_ms();
    fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    let after = now_ms();
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.consecutive_failures, 2);
    let next = connection.next_attempt_at.expect("a next attempt");
    assert!(
        (before + 4_000..=after + 8_000).contains(&next),
        "8 s backoff, jittered: {} ms",
        next - before
    );

    // Once the provider answers again, the failures are forgotten.
    sleep_until_ms(next).await;
    let fresh = fixture.service.refresh_now(&id, deadline(30)).await.expect("refreshed");
    assert_eq!(fresh.token_version, 2);
    let connection = fixture.connection(&id).await;
    assert_eq!((connection.consecutive_failures, connection.next_attempt_at), (0, None));
    assert_eq!(fixture.sim().counters().refresh_tokens_reused, 0);
}

#[tokio::test]
async fn an_unreachable_provider_is_transient() {
    // Nothing listens on port 9 (discard) on loopback: the request never leaves.
    let fixture = fixture(PresetName::Generic, "", "unreachable").await;
    let id = fixture.connect("unreachable").await;
    let mut config = (*fixture.config).clone();
    config.providers.get_mut(PROVIDER).expect("provider").token_url = "http://127.0.0.1:9/token".parse().expect("url");
    let service = shared::refresh::TokenService::load(
        std::sync::Arc::new(config),
        fixture.service.store().clone(),
        shared::secrets::SecretStore::new(fixture.aws.secrets.clone()),
        settings(),
    )
    .await
    .expect("service");
    let e = service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(
        matches!(&e, RefreshError::RetryLater { cause, .. } if cause.contains("cannot reach")),
        "{e}"
    );
    let connection = fixture.connection(&id).await;
    assert_eq!(
        (connection.status, connection.consecutive_failures),
        (Status::Active, 1)
    );
}

#[tokio::test]
async fn token_responses_are_stored_as_each_preset_says() {
    // Exact Online: expires_in is the string "600".
    let exact = fixture(PresetName::ExactOnline, "min_refresh_interval_secs = 0", "parse-exact").await;
    let id = exact.connect("exact").await;
    let before = now_ms();
    let fresh = exact.service.refresh_now(&id, deadline(30)).await.expect("refresh");
    assert!(
        (before + 600_000..=now_ms() + 600_000).contains(&fresh.expires_at),
        "600 s from the string"
    );
    let connection = exact.connection(&id).await;
    assert_eq!(connection.access_expires_at, Some(fresh.expires_at));
    // Due 25 s before expiry.
    assert_eq!(connection.refresh_due_at, Some(fresh.expires_at - 25_000));

    // Salesforce: no expires_in (2 h assumed), no new refresh token (the old
    // one is kept and keeps working), and instance_url recorded.
    let salesforce = fixture(PresetName::Salesforce, "", "parse-sf").await;
    let id = salesforce.connect("sf").await;
    let old = salesforce.stored_refresh_token(&id).await;
    let before = now_ms();
    let fresh = salesforce
        .service
        .refresh_now(&id, deadline(30))
        .await
        .expect("refresh");
    assert!((before + 7_200_000..=now_ms() + 7_200_000).contains(&fresh.expires_at));
    assert_eq!(
        salesforce.stored_refresh_token(&id).await,
        old,
        "no refresh token returned: the old one stays"
    );
    assert_eq!(
        salesforce.connection(&id).await.instance_url.as_deref(),
        Some(salesforce.oauth.sim.base_url.as_str())
    );
    salesforce
        .service
        .refresh_now(&id, deadline(30))
        .await
        .expect("the kept token still refreshes");

    // Microsoft: extra fields (ext_expires_in, id_token-like noise) are ignored; granted scopes are recorded.
    let microsoft = fixture(
        PresetName::Microsoft,
        "scopes = [\"offline_access\", \"User.Read\"]",
        "parse-ms",
    )
    .await;
    let id = microsoft.connect("ms").await;
    microsoft.service.refresh_now(&id, deadline(30)).await.expect("refresh");
    assert_eq!(microsoft.connection(&id).await.scopes, ["User.Read"]);
}

#[tokio::test]
async fn the_refresher_finds_due_connections_through_the_index() {
    let fixture = fixture(PresetName::Generic, "", "due").await;
    // Access tokens for an hour: due 5 minutes before expiry, so not yet.
    let fresh_ids = [fixture.connect("fresh-1").await, fixture.connect("fresh-2").await];
    // Access tokens for a minute: inside the 5-minute lead, so due now.
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(60));
    let mut due_ids = Vec::new();
    for i in 0..5 {
        due_ids.push(fixture.connect(&format!("due-{i}")).await);
    }
    // A dead one: out of the index, never touched.
    let dead = fixture.connect("dead").await;
    fixture
        .sim()
        .kill_family_of(fixture.stored_refresh_token(&dead).await.secret());
    fixture.service.refresh_now(&dead, deadline(30)).await.unwrap_err();
    let requests_before = fixture.sim().counters().refresh_requests;

    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(3600));
    let summary = fixture
        .service
        .refresh_due(shared::refresh::DueRun::all(deadline(60), 4))
        .await;
    assert_eq!(
        (summary.due, summary.refreshed, summary.failed, summary.complete),
        (5, 5, 0, true),
        "{summary:?}"
    );
    assert_eq!(
        fixture.sim().counters().refresh_requests - requests_before,
        5,
        "only the due ones were sent"
    );
    for id in &due_ids {
        assert_eq!(fixture.connection(id).await.token_version, 2, "{id}");
    }
    for id in &fresh_ids {
        assert_eq!(fixture.connection(id).await.token_version, 1, "{id}");
    }
    // Refreshed for an hour now: nothing is due any more.
    let summary = fixture
        .service
        .refresh_due(shared::refresh::DueRun::all(deadline(60), 4))
        .await;
    assert_eq!(summary.due, 0, "{summary:?}");
}

#[tokio::test]
async fn a_retry_after_is_honoured_up_to_the_longest_backoff() {
    // Longer than our own backoff (4 s base): the provider's word wins,
    // spread over up to a quarter more (120–150 s).
    let fixture = fixture(PresetName::Generic, "", "retry-after").await;
    let (e, waited) = throttled_refresh(&fixture, 120).await;
    assert!(
        matches!(&e, RefreshError::RetryLater { cause, .. } if cause.contains("retry after 120 s")),
        "{e}"
    );
    assert!(*waited.end() >= 120_000 && *waited.start() <= 150_000, "{waited:?} ms");

    // A day is more than the longest backoff (1 h): capped.
    let settings = RefreshSettings {
        max_backoff: Duration::from_secs(3600),
        ..settings()
    };
    let fixture = RefreshFixture::start(SimConfig::for_preset(PresetName::Generic), settings, "", "retry-cap").await;
    let (_, waited) = throttled_refresh(&fixture, 86_400).await;
    assert!(waited.contains(&3_600_000), "{waited:?} ms");
}

/// A forced refresh answered 429 with `Retry-After: secs`: the error, and
/// the range the wait until the next attempt lies in (the answer came
/// sometime during the call).
async fn throttled_refresh(fixture: &RefreshFixture, secs: u64) -> (RefreshError, std::ops::RangeInclusive<i64>) {
    let id = fixture.connect("throttled").await;
    fixture.sim().inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::RetryAfter { status: 429, secs },
        times: 1,
    });
    let before = now_ms();
    let e = fixture
        .service
        .refresh_now(&id, deadline(30))
        .await
        .expect_err("throttled");
    let after = now_ms();
    let connection = fixture.connection(&id).await;
    let next = connection.next_attempt_at.expect("a next attempt");
    assert_eq!(connection.refresh_due_at, Some(next), "out of the due index until then");
    assert_eq!(
        fixture.sim().counters().refreshes,
        0,
        "a throttled request processes nothing"
    );
    (e, next - after..=next - before)
}

#[tokio::test]
async fn the_refresher_pages_through_a_shard_and_leaves_what_it_cannot_start() {
    let settings = RefreshSettings {
        due_page_size: 2,
        ..settings()
    };
    let sim = SimConfig {
        access_token_ttl: Duration::from_secs(60),
        ..SimConfig::for_preset(PresetName::Generic)
    };
    let fixture = RefreshFixture::start(sim, settings, "", "paging").await;
    let ids = fixture.connect_in_shard("page", "0", 5).await;
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(3600));

    // Five due in shard 0, two per page: a look and three pages there (under
    // its lease), one look at each other shard (nothing due: no lease).
    let (reads_before, writes_before, queries_before) = fixture.service.store().ops().snapshot();
    let summary = fixture
        .service
        .refresh_due(shared::refresh::DueRun::all(deadline(60), 4))
        .await;
    let (reads_after, writes_after, queries_after) = fixture.service.store().ops().snapshot();
    assert_eq!(
        (summary.due, summary.refreshed, summary.complete),
        (5, 5, true),
        "{summary:?}"
    );
    assert_eq!(queries_after - queries_before, u64::from(DUE_SHARDS) + 3);
    // A refresh the index found due is two writes, the lease and the commit,
    // with no read before the lease; and the shard's lease, taken and given back.
    assert_eq!(reads_after - reads_before, 0, "no connection read");
    assert_eq!(writes_after - writes_before, 5 * 2 + 2);
    for id in &ids {
        assert_eq!(fixture.connection(id).await.token_version, 2, "{id}");
    }

    // Three more due; one at a time, and the first refresh answers after 8 s.
    // No refresh starts once less than a send (10 s) and a commit (5 s) fit
    // before the deadline, 3 s from now: the other two (the second from the
    // first page, the third from the page read meanwhile) are left for the
    // next run.
    fixture
        .sim()
        .reconfigure(|c| c.access_token_ttl = Duration::from_secs(60));
    let late = fixture.connect_in_shard("late", "0", 3).await;
    fixture.sim().inject(FaultPlan {
        grant: Grant::RefreshToken,
        fault: Fault::DelayAfterProcessing { millis: 8_000 },
        times: 1,
    });
    let requests_before = fixture.sim().counters().refresh_requests;
    let summary = fixture
        .service
        .refresh_due(shared::refresh::DueRun::all(deadline(18), 1))
        .await;
    assert_eq!(
        (
            summary.due,
            summary.refreshed,
            summary.left_for_next_run,
            summary.complete
        ),
        (3, 1, 2, false),
        "{summary:?}"
    );
    assert_eq!(fixture.sim().counters().refresh_requests - requests_before, 1);
    let versions = token_versions(&fixture, &late).await;
    assert_eq!(versions.iter().filter(|v| **v == 2).count(), 1, "{versions:?}");
}

async fn token_versions(fixture: &RefreshFixture, ids: &[shared::connection::ConnectionId]) -> Vec<u64> {
    let mut versions = Vec::new();
    for id in ids {
        versions.push(fixture.connection(id).await.token_version);
    }
    versions
}

#[tokio::test]
async fn exact_onlines_refresh_limit_is_kept_without_asking() {
    let fixture = fixture(PresetName::ExactOnline, "", "exact-limit").await;
    let id = fixture.connect("exact").await;
    // The login counts: a refresh within 570 s is not sent at all.
    let e = fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert!(
        matches!(&e, RefreshError::RetryLater { cause, .. } if cause.contains("one refresh per 570 s")),
        "{e}"
    );
    // A caller that needs a token gets the valid one.
    let fresh = fixture
        .service
        .access_token(&id, deadline(30))
        .await
        .expect("the current token");
    assert!(!fresh.refreshed);
    assert_eq!(fixture.sim().counters().refresh_requests, 0);
    let connection = fixture.connection(&id).await;
    assert_eq!(
        (connection.consecutive_failures, connection.lease),
        (0, None),
        "not a failure, nothing held"
    );
}

#[tokio::test]
async fn a_new_login_brings_a_dead_connection_back_with_the_same_id() {
    let fixture = fixture(PresetName::Xero, "", "relogin").await;
    let id = fixture.connect("tenant").await;
    fixture
        .sim()
        .kill_family_of(fixture.stored_refresh_token(&id).await.secret());
    fixture.service.refresh_now(&id, deadline(30)).await.unwrap_err();
    assert_eq!(fixture.connection(&id).await.status, Status::NeedsReauth);

    // The same id logs in again: the next version, active, reason and message cleared, due again.
    let again = fixture.connect("tenant").await;
    assert_eq!(again, id);
    let connection = fixture.connection(&id).await;
    assert_eq!((connection.status, connection.token_version), (Status::Active, 2));
    assert_eq!((connection.status_reason, connection.provider_message), (None, None));
    assert!(in_due_index(&fixture, &id).await);
    let fresh = fixture
        .service
        .refresh_now(&id, deadline(30))
        .await
        .expect("refreshes again");
    assert_eq!(fresh.token_version, 3);
    assert!(fixture.stored_tokens_work(&id).await);
}

#[tokio::test]
async fn microsofts_long_tokens_are_stored_refreshed_and_used_intact() {
    // Microsoft issues ~1,800-character refresh tokens and ~2,500-character
    // JWT access tokens; nothing on the path may cut them (the seed
    // platform's users lost refresh tokens longer than 1,024 characters).
    let fixture = fixture(PresetName::Microsoft, "", "long-tokens").await;
    let id = fixture.connect("graph").await;
    let fresh = fixture.service.access_token(&id, deadline(30)).await.expect("token");
    assert!(
        fresh.access_token.secret().len() > 2_400,
        "{}",
        fresh.access_token.secret().len()
    );
    assert!(fixture.sim().is_latest_access_token(fresh.access_token.secret()));
    let refresh = fixture.stored_refresh_token(&id).await;
    assert!(refresh.secret().len() > 1_700, "{}", refresh.secret().len());

    let fresh = fixture.service.refresh_now(&id, deadline(30)).await.expect("refreshed");
    assert_eq!(fresh.token_version, 2);
    assert!(fixture.sim().is_latest_access_token(fresh.access_token.secret()));
    assert!(fixture.stored_tokens_work(&id).await, "the rotated long tokens work");
    assert_eq!(fixture.sim().counters().refresh_tokens_reused, 0);
}

#[tokio::test]
async fn a_run_resends_an_unknown_outcome_from_the_item_its_refused_lease_write_returned() {
    // A worker sent a refresh a minute ago and never heard back: the unknown
    // outcome is on record, and the connection is due. The run's lease write
    // (taken without a read) is refused by the record; the protocol goes on
    // from the item the refusal returned, without a read, to the one resend.
    let sim = SimConfig {
        access_token_ttl: Duration::from_secs(60),
        ..SimConfig::for_preset(PresetName::Generic)
    };
    let fixture = RefreshFixture::start(sim, settings(), "", "due-unknown").await;
    let id = fixture.connect("unknown").await;
    let store = fixture.service.store();
    let read = fixture.connection(&id).await;
    let now = now_ms();
    let taken = store
        .take_lease(&read, "vanished", now - 60_000, now - 30_000, false)
        .await
        .expect("the vanished worker's lease");
    assert!(matches!(taken, Write::Done));
    let recorded = store
        .release_after_failure(
            &id,
            read.token_version,
            "vanished",
            "outcome unknown",
            1,
            now - 1,
            Some(now - 60_000),
        )
        .await
        .expect("its unknown outcome on record");
    assert!(matches!(recorded, Write::Done));

    let (reads_before, ..) = store.ops().snapshot();
    let summary = fixture
        .service
        .refresh_due(shared::refresh::DueRun::all(deadline(60), 4))
        .await;
    assert_eq!((summary.due, summary.refreshed), (1, 1), "{summary:?}");
    assert_eq!(store.ops().snapshot().0 - reads_before, 0, "no connection read");
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.token_version, 2);
    assert!(connection.lease.is_none() && connection.outcome_unknown_since.is_none());
    let counters = fixture.sim().counters();
    assert_eq!(
        (counters.refresh_requests, counters.refresh_tokens_reused),
        (1, 0),
        "the one resend (the planted send never reached the provider)"
    );
    assert!(fixture.stored_tokens_work(&id).await);
}

#[tokio::test]
async fn a_lease_taken_without_a_read_goes_back_unused_when_the_configuration_holds_the_refresh_back() {
    // A due time written under an older configuration (here: planted) says
    // due, the provider's interval since the login (now 600 s) says not
    // yet. The run's lease, taken on the due time alone, is given back
    // unsent, and the connection keeps its token, as the configuration says.
    let fixture = RefreshFixture::start(
        SimConfig::for_preset(PresetName::Generic),
        settings(),
        "min_refresh_interval_secs = 600",
        "due-held-back",
    )
    .await;
    let id = fixture.connect("interval").await;
    fixture
        .aws
        .dynamodb
        .update_item()
        .table_name(fixture.connections_table())
        .key("id", AttributeValue::S(id.to_string()))
        .update_expression("SET refresh_due_at = :due")
        .expression_attribute_values(":due", AttributeValue::N((now_ms() - 1).to_string()))
        .send()
        .await
        .expect("plant a due time");

    let summary = fixture
        .service
        .refresh_due(shared::refresh::DueRun::all(deadline(60), 4))
        .await;
    assert_eq!(
        (summary.due, summary.refreshed, summary.still_fresh),
        (1, 0, 1),
        "{summary:?}"
    );
    let connection = fixture.connection(&id).await;
    assert_eq!(connection.token_version, 1, "not refreshed");
    assert!(connection.lease.is_none(), "the lease went back");
    assert_eq!(connection.consecutive_failures, 0, "no failure counted");
    assert_eq!(fixture.sim().counters().refresh_requests, 0, "nothing sent");
}
