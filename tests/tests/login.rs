//! The login flow (`LoginService::confirm`, `begin` and `finish`) against DynamoDB Local,
//! the Secrets Manager emulator and the simulator: a whole login, and each
//! way it must fail without changing anything it should not.

use std::collections::BTreeMap;
use std::time::Duration;

use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{LoginFixture, PROVIDER, RETURN_TO, authorize};
use shared::config::PresetName;
use shared::connection::{ConnectionId, ConnectionKind, Status};
use shared::login::LinkError;
use shared::login::attempts::AttemptError;
use shared::login::flow::{ATTEMPT_TTL, FORM_TOKEN, LoginError};

#[tokio::test]
async fn a_whole_login_stores_an_active_connection() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-ok").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = login.to_callback(&service, "acme-1").await;
    let finished = service.finish(PROVIDER, &query, Some(&cookie)).await.expect("finish");
    assert_eq!((finished.connection.as_str(), finished.token_version), ("acme-1", 1));
    assert_eq!(finished.return_url.as_deref(), Some(RETURN_TO));
    assert!(finished.warnings.is_empty(), "{:?}", finished.warnings);
    let id = ConnectionId::parse("acme-1").expect("id");
    let connection = login.fixture.connection(&id).await;
    assert_eq!(
        (connection.status, connection.kind),
        (Status::Active, ConnectionKind::PerUser)
    );
    assert!(login.fixture.stored_tokens_work(&id).await);

    // The same callback again (a replayed state) changes nothing.
    let e = service.finish(PROVIDER, &query, Some(&cookie)).await.unwrap_err();
    assert!(matches!(e, LoginError::Attempt(AttemptError::Replayed)), "{e}");
    assert_eq!(e.status(), 400);
    assert_eq!(login.fixture.connection(&id).await.token_version, 1);
    assert_eq!(
        login.fixture.sim().counters().code_requests,
        1,
        "the code was exchanged once"
    );
}

#[tokio::test]
async fn a_login_must_finish_in_the_browser_that_started_it() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-browser").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = login.to_callback(&service, "acme-2").await;
    for foreign in [None, Some("not-the-cookie")] {
        let e = service.finish(PROVIDER, &query, foreign).await.unwrap_err();
        assert!(matches!(e, LoginError::Attempt(AttemptError::OtherBrowser)), "{e}");
    }
    assert_eq!(login.fixture.sim().counters().code_requests, 0, "no code was exchanged");
    // The foreign attempts consumed nothing: the right browser still finishes.
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("the right browser finishes");
}

#[tokio::test]
async fn an_expired_login_is_refused() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-expired").await;
    let service = login.service(Duration::from_secs(1)).await;
    let (query, cookie) = login.to_callback(&service, "acme-3").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let e = service.finish(PROVIDER, &query, Some(&cookie)).await.unwrap_err();
    assert!(matches!(e, LoginError::Attempt(AttemptError::Expired)), "{e}");
    assert_eq!(login.fixture.sim().counters().code_requests, 0);
}

#[tokio::test]
async fn bad_links_write_nothing() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-links").await;
    let service = login.service(ATTEMPT_TTL).await;
    let good = login.link("acme-4");
    let mut tampered = good.clone();
    tampered.insert("connection".to_owned(), "someone-else".to_owned());
    let mut unsigned = good.clone();
    unsigned.remove("sig");
    let mut pushed_back = good.clone();
    pushed_back.insert("expires".to_owned(), "1".to_owned());
    let an_hour_ago = shared::connection::now_ms() / 1000 - 3600;
    let expired = login.link_expiring("acme-4", an_hour_ago);
    for (query, expected) in [
        (tampered, LinkError::BadSignature),
        (unsigned, LinkError::Missing("sig")),
        (pushed_back, LinkError::BadSignature),
        (expired, LinkError::Expired(an_hour_ago)),
    ] {
        let e = service.confirm(PROVIDER, &query, None).await.unwrap_err();
        assert!(matches!(&e, LoginError::Link(link) if *link == expected), "{e}");
        assert_eq!(e.status(), 403);
    }
    let e = service.confirm("nope", &good, None).await.unwrap_err();
    assert_eq!(e.status(), 404, "{e}");
    assert_eq!(login.attempts_stored().await, 0, "a refused link writes nothing");
    assert_eq!(login.fixture.sim().counters().authorize_requests, 0);
}

#[tokio::test]
async fn a_cancelled_login_changes_nothing() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-cancel").await;
    let service = login.service(ATTEMPT_TTL).await;
    login.fixture.sim().deny_next_authorize();
    let link = login.link("acme-5");
    let (query, cookie) = login.to_callback_via(&service, &link).await;
    let e = service.finish(PROVIDER, &query, Some(&cookie)).await.unwrap_err();
    assert!(
        matches!(&e, LoginError::Cancelled { provider } if provider == PROVIDER),
        "{e}"
    );
    assert!(e.to_string().contains("cancelled"));
    let id = ConnectionId::parse("acme-5").expect("id");
    assert!(
        login.fixture.service.store().get(&id).await.expect("read").is_none(),
        "no connection"
    );
    // The state was used up; a later answer for it says what happened, not
    // "already used": the link itself still works.
    let mut with_code = query.clone();
    with_code.remove("error");
    with_code.insert("code".to_owned(), "a-code".to_owned());
    let e = service.finish(PROVIDER, &with_code, Some(&cookie)).await.unwrap_err();
    assert!(matches!(e, LoginError::Attempt(AttemptError::Cancelled)), "{e}");
    assert!(e.to_string().contains("cancelled at the provider"), "{e}");
    let (again, again_cookie) = login.to_callback_via(&service, &link).await;
    let finished = service
        .finish(PROVIDER, &again, Some(&again_cookie))
        .await
        .expect("the same link connects after a cancel");
    assert_eq!(finished.connection.as_str(), "acme-5");
}

/// An answer with neither `code` nor `error` (RFC 6749 §4.1.2 allows
/// neither) is refused without spending the state: the real answer that
/// follows still connects.
#[tokio::test]
async fn a_callback_without_code_or_error_spends_nothing() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-nocode").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = login.to_callback(&service, "acme-nocode").await;
    let bare: BTreeMap<String, String> = query
        .iter()
        .filter(|(k, _)| *k == "state")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let e = service.finish(PROVIDER, &bare, Some(&cookie)).await.unwrap_err();
    assert!(matches!(e, LoginError::BadCallback("code")), "{e}");
    let finished = service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("the real answer");
    assert_eq!(finished.connection.as_str(), "acme-nocode");
}

/// Login states and used-link marks live in one table, under hashes with
/// their own prefixes: a `state` shaped like a link's key learns nothing
/// (a used and an unused link answer alike: an unknown login).
#[tokio::test]
async fn a_state_shaped_like_a_used_link_is_just_unknown() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-keyspace").await;
    let service = login.service(ATTEMPT_TTL).await;
    let used = login.link("acme-used");
    let (query, cookie) = login.to_callback_via(&service, &used).await;
    service.finish(PROVIDER, &query, Some(&cookie)).await.expect("login");
    let unused = login.link("acme-unused");
    for link in [&used, &unused] {
        let probe = BTreeMap::from([
            ("state".to_owned(), format!("link:{}", link["sig"])),
            ("code".to_owned(), "x".to_owned()),
        ]);
        let e = service.finish(PROVIDER, &probe, Some(&cookie)).await.unwrap_err();
        assert!(matches!(e, LoginError::Attempt(AttemptError::Unknown)), "{e}");
    }
}

#[tokio::test]
async fn a_login_without_a_refresh_token_names_the_fix() {
    let sim = SimConfig {
        issue_refresh_token: false,
        ..SimConfig::for_preset(PresetName::Google)
    };
    let login = LoginFixture::start(sim, "login-no-rt").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = login.to_callback(&service, "acme-6").await;
    let finished = service.finish(PROVIDER, &query, Some(&cookie)).await.expect("finish");
    assert_eq!(finished.warnings.len(), 1, "{:?}", finished.warnings);
    assert!(finished.warnings[0].contains("no refresh token") && finished.warnings[0].contains("prompt=consent"));
}

#[tokio::test]
async fn a_new_login_renews_a_connection_that_needs_one() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Xero), "login-renew").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = login.to_callback(&service, "tenant").await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("first login");
    let id = ConnectionId::parse("tenant").expect("id");
    login
        .fixture
        .sim()
        .kill_family_of(login.fixture.stored_refresh_token(&id).await.secret());
    login
        .fixture
        .service
        .refresh_now(&id, oauth_sync_tests::stack::deadline(30))
        .await
        .unwrap_err();
    assert_eq!(login.fixture.connection(&id).await.status, Status::NeedsReauth);

    let (query, cookie) = login.to_callback(&service, "tenant").await;
    let finished = service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("second login");
    assert_eq!(finished.token_version, 2, "same id, next version");
    let connection = login.fixture.connection(&id).await;
    assert_eq!((connection.status, connection.status_reason), (Status::Active, None));
}

#[tokio::test]
async fn a_connection_keeps_its_provider() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-other").await;
    let service = login.service(ATTEMPT_TTL).await;
    let id = ConnectionId::parse("acme-other").expect("id");
    let now = shared::connection::now_ms();
    let elsewhere = shared::connection::store::NewLogin {
        id: id.clone(),
        provider: "another-provider".to_owned(),
        kind: ConnectionKind::PerUser,
        access_token: shared::connection::Sealed(vec![1; 40]),
        refresh_token: Some(shared::connection::Sealed(vec![2; 40])),
        access_expires_at: now + 3_600_000,
        scopes: Vec::new(),
        refresh_due_at: now + 3_300_000,
        instance_url: None,
        api_domain: None,
        params: Default::default(),
        param_error: None,
    };
    let store = login.fixture.service.store();
    store
        .save_login(&elsewhere, None)
        .await
        .expect("a connection at another provider");

    // Refused at /connect, before the user logs in: nothing is written.
    let e = login.begin(&service, &login.link("acme-other")).await.unwrap_err();
    assert!(matches!(e, LoginError::OtherProvider { .. }), "{e}");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("another-provider"), "{e}");
    assert_eq!(login.attempts_stored().await, 0);
    assert_eq!(login.fixture.sim().counters().authorize_requests, 0);

    // And by the store itself: the refresh token is never handed to another provider.
    let tokens = login.fixture.oauth.login().await;
    let e = login
        .fixture
        .service
        .save_login(&id, PROVIDER, ConnectionKind::PerUser, &tokens, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another-provider"), "{e}");
    let connection = login.fixture.connection(&id).await;
    assert_eq!(
        (connection.provider.as_str(), connection.token_version),
        ("another-provider", 1)
    );
}

#[tokio::test]
async fn an_oidc_server_that_drops_offline_access_is_named_with_the_fix() {
    // OpenID Connect Core §11: without prompt=consent the server ignores the
    // offline_access request and issues no refresh token, saying so only by
    // leaving the scope out of `scope`.
    let sim = SimConfig {
        offline_access_needs_consent: true,
        ..SimConfig::for_preset(PresetName::Generic)
    };
    let login = LoginFixture::start(sim, "login-oidc-offline").await;
    let scoped = |text: &str, extra: &str| {
        text.replacen(
            "[providers.sim]\n",
            &format!(
                "[providers.sim]\nscopes = [\"openid\", \"offline_access\", \"api\"]\n\
                 offline_scope = \"offline_access\"\n{extra}"
            ),
            1,
        )
    };
    let service = login.service_with(|text| scoped(text, ""), ATTEMPT_TTL).await;
    let (query, cookie) = login.to_callback(&service, "acme-oidc-1").await;
    let finished = service.finish(PROVIDER, &query, Some(&cookie)).await.expect("finish");
    assert_eq!(finished.warnings.len(), 1, "{:?}", finished.warnings);
    let warning = &finished.warnings[0];
    assert!(
        warning.contains("dropped the `offline_access` scope and sent no refresh token"),
        "{warning}"
    );
    assert!(
        warning.contains("add `authorize_params = { prompt = \"consent\" }` in [providers.sim]"),
        "{warning}"
    );

    // With the fix the same server grants the scope and a refresh token.
    let service = login
        .service_with(
            |text| scoped(text, "authorize_params = { prompt = \"consent\" }\n"),
            ATTEMPT_TTL,
        )
        .await;
    let (query, cookie) = login.to_callback(&service, "acme-oidc-2").await;
    let finished = service.finish(PROVIDER, &query, Some(&cookie)).await.expect("finish");
    assert!(finished.warnings.is_empty(), "{:?}", finished.warnings);
    let id = ConnectionId::parse("acme-oidc-2").expect("id");
    assert!(login.fixture.connection(&id).await.refresh_token.is_some());
}

#[tokio::test]
async fn a_new_login_without_a_refresh_token_drops_the_old_one() {
    // The old refresh token may belong to another account at the provider:
    // it must not sit next to the new access token.
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-drop-rt").await;
    let service = login.service(ATTEMPT_TTL).await;
    let (query, cookie) = login.to_callback(&service, "acme-7").await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("first login");
    let id = ConnectionId::parse("acme-7").expect("id");
    assert!(login.fixture.connection(&id).await.refresh_token.is_some());

    login.fixture.sim().reconfigure(|c| c.issue_refresh_token = false);
    let (query, cookie) = login.to_callback(&service, "acme-7").await;
    let finished = service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("second login");
    assert_eq!(finished.token_version, 2);
    assert!(
        finished.warnings[0].contains("no refresh token"),
        "{:?}",
        finished.warnings
    );
    let connection = login.fixture.connection(&id).await;
    assert!(connection.refresh_token.is_none(), "the old refresh token was removed");
    assert_eq!(connection.status, Status::Active);
}

#[tokio::test]
async fn a_link_connects_once() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-once").await;
    let service = login.service(ATTEMPT_TTL).await;
    let link = login.link("acme-8");
    let (query, cookie) = login.to_callback_via(&service, &link).await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("the first login");

    // The same link again: refused at /connect, before the user logs in.
    let authorizations = login.fixture.sim().counters().authorize_requests;
    let e = login.begin(&service, &link).await.unwrap_err();
    assert!(matches!(e, LoginError::Link(LinkError::Used)), "{e}");
    assert_eq!(e.status(), 403);
    assert_eq!(login.fixture.sim().counters().authorize_requests, authorizations);

    // Two tabs opened from one link: the first to come back connects, the
    // second is refused before its code is exchanged.
    let link = login.link("acme-9");
    let (first, first_cookie) = login.to_callback_via(&service, &link).await;
    let (second, second_cookie) = login.to_callback_via(&service, &link).await;
    service
        .finish(PROVIDER, &first, Some(&first_cookie))
        .await
        .expect("the first tab");
    let exchanges = login.fixture.sim().counters().code_requests;
    let e = service
        .finish(PROVIDER, &second, Some(&second_cookie))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::Link(LinkError::Used)), "{e}");
    assert_eq!(
        login.fixture.sim().counters().code_requests,
        exchanges,
        "no code exchanged"
    );
    let id = ConnectionId::parse("acme-9").expect("id");
    assert_eq!(login.fixture.connection(&id).await.token_version, 1);
}

#[tokio::test]
async fn a_link_made_before_a_revoke_cannot_undo_it() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-revoked").await;
    let service = login.service(ATTEMPT_TTL).await;
    let made_before = shared::connection::now_ms() - 1_000;
    let stale = login.link_made("acme-10", made_before, made_before / 1000 + 600);
    let (query, cookie) = login.to_callback(&service, "acme-10").await;
    service.finish(PROVIDER, &query, Some(&cookie)).await.expect("login");
    let id = ConnectionId::parse("acme-10").expect("id");
    login.fixture.service.revoke(&id).await.expect("revoke");

    let e = login.begin(&service, &stale).await.unwrap_err();
    assert!(matches!(e, LoginError::Link(LinkError::PredatesRevoke(_))), "{e}");
    assert_eq!(e.status(), 403);
    assert_eq!(login.fixture.connection(&id).await.status, Status::Revoked);

    // A link made after the revoke connects it again, same id.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (query, cookie) = login.to_callback(&service, "acme-10").await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("a new login");
    assert_eq!(login.fixture.connection(&id).await.status, Status::Active);

    // And the stale link stays refused once the connection is active again.
    let e = login.begin(&service, &stale).await.unwrap_err();
    assert!(matches!(e, LoginError::Link(LinkError::PredatesRevoke(_))), "{e}");
}

#[tokio::test]
async fn a_retried_link_claim_finds_its_own_claim() {
    // The claim's first write may land with its answer lost; the SDK's retry
    // then meets the condition and must recognise the claim as its own.
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-claim").await;
    let attempts = shared::login::attempts::AttemptStore::new(
        login.fixture.aws.dynamodb.clone(),
        &login.fixture.tables["LoginAttemptsTable"],
    );
    let now = shared::connection::now_ms() / 1000;
    let link = "link-id-for-the-test";
    assert!(attempts.use_link(link, "state-a", now + 600, now).await.expect("claim"));
    assert!(
        attempts.use_link(link, "state-a", now + 600, now).await.expect("retry"),
        "our own claim"
    );
    assert!(
        !attempts.use_link(link, "state-b", now + 600, now).await.expect("other"),
        "another login's claim"
    );
    assert!(attempts.link_used(link).await.expect("read"));
}

#[tokio::test]
async fn a_retried_attempt_put_finds_its_own_attempt() {
    // The attempt's PutItem may land with its answer lost; the SDK's retry
    // then meets `attribute_not_exists` and must count the attempt as stored
    // (it answered 503 before), while the same state from another browser
    // stays refused.
    use shared::login::attempts::{Attempt, AttemptStore};
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-put").await;
    let attempts = AttemptStore::new(
        login.fixture.aws.dynamodb.clone(),
        &login.fixture.tables["LoginAttemptsTable"],
    );
    let now = shared::connection::now_ms();
    let attempt = Attempt {
        provider: PROVIDER.to_owned(),
        connection: ConnectionId::parse("acme-put").expect("id"),
        kind: ConnectionKind::PerUser,
        return_url: None,
        redirect_uri: "https://example.test/callback/sim".to_owned(),
        pkce_verifier: shared::connection::Sealed(vec![1, 2, 3]),
        link_id: "link-of-the-put".to_owned(),
        link_issued_at: now,
        link_expires_at: now / 1000 + 600,
        expires_at: now / 1000 + 600,
    };
    attempts.put("state-put", "cookie-a", &attempt, now).await.expect("put");
    attempts
        .put("state-put", "cookie-a", &attempt, now)
        .await
        .expect("the retry finds its own attempt");
    let e = attempts.put("state-put", "cookie-b", &attempt, now).await.unwrap_err();
    assert!(matches!(e, AttemptError::StateTaken), "{e}");
    let consumed = attempts
        .consume("state-put", Some("cookie-a"), now / 1000, false)
        .await
        .expect("the attempt is live");
    assert_eq!(consumed, attempt);
}

#[tokio::test]
async fn a_login_starts_only_from_its_confirmation_page_in_the_same_browser() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-confirm").await;
    let service = login.service(ATTEMPT_TTL).await;
    let link = login.link("acme-11");
    let confirm = service.confirm(PROVIDER, &link, None).await.expect("the page");
    assert_eq!(login.attempts_stored().await, 0, "the page writes nothing");
    let other = service
        .confirm(PROVIDER, &login.link("acme-12"), None)
        .await
        .expect("another page");

    let mut without_token = confirm.form();
    without_token.remove(FORM_TOKEN);
    let mut wrong_token = confirm.form();
    wrong_token.insert(
        FORM_TOKEN.to_owned(),
        "l1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
    );
    // The right token of another link, or of this link for another browser.
    let mut other_links_token = confirm.form();
    other_links_token.insert(FORM_TOKEN.to_owned(), other.form()[FORM_TOKEN].clone());
    let forged: [(&BTreeMap<String, String>, Option<&str>); 5] = [
        (&without_token, Some(&confirm.cookie)),
        (&wrong_token, Some(&confirm.cookie)),
        (&other_links_token, Some(&confirm.cookie)),
        (&confirm.form(), Some(&other.cookie)),
        (&confirm.form(), None),
    ];
    for (form, cookie) in forged {
        let e = service.begin(PROVIDER, form, cookie).await.unwrap_err();
        assert!(matches!(e, LoginError::NotConfirmed(_)), "{e}");
        assert_eq!(e.status(), 403);
    }
    assert_eq!(login.attempts_stored().await, 0, "a refused button writes nothing");
    assert_eq!(login.fixture.sim().counters().authorize_requests, 0);

    // The page's own form from the page's browser starts the login.
    let begin = service
        .begin(PROVIDER, &confirm.form(), Some(&confirm.cookie))
        .await
        .expect("begin");
    assert_eq!(begin.cookie, confirm.cookie, "the browser keeps its cookie");
    assert_eq!(login.attempts_stored().await, 1);
}

#[tokio::test]
async fn the_redirect_uri_names_the_provider_and_an_answer_on_another_providers_address_is_refused() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-mixup").await;
    // A second provider ("other") in the same deployment.
    let service = login
        .service_with(
            |text| {
                let sim = text[text.find("[providers.sim]").expect("sim table")..].to_owned();
                format!("{text}\n{}", sim.replacen("[providers.sim]", "[providers.other]", 1))
            },
            ATTEMPT_TTL,
        )
        .await;
    let begin = login.begin(&service, &login.link("acme-13")).await.expect("begin");
    let redirect_uri = begin
        .location
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned());
    assert_eq!(
        redirect_uri.as_deref(),
        Some("https://auth.example.com/prod/callback/sim")
    );
    let query = authorize(&login.fixture.oauth.http, &begin.location)
        .await
        .callback_query();

    // An address no provider has: refused without touching the attempt.
    let e = service.finish("nope", &query, Some(&begin.cookie)).await.unwrap_err();
    assert_eq!(e.status(), 404, "{e}");
    // Another provider's address: refused, and the state is spent.
    let e = service.finish("other", &query, Some(&begin.cookie)).await.unwrap_err();
    assert!(
        matches!(&e, LoginError::MixUp { path, started } if path == "other" && started == PROVIDER),
        "{e}"
    );
    assert_eq!(e.status(), 400);
    let e = service.finish(PROVIDER, &query, Some(&begin.cookie)).await.unwrap_err();
    assert!(matches!(e, LoginError::Attempt(AttemptError::Replayed)), "{e}");
    assert_eq!(login.fixture.sim().counters().code_requests, 0, "no code was exchanged");
    let id = ConnectionId::parse("acme-13").expect("id");
    assert!(login.fixture.service.store().get(&id).await.expect("read").is_none());

    // The link was not used up: the person starts again from it.
    let (query, cookie) = login.to_callback(&service, "acme-13").await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("a login on the right address");
}

#[tokio::test]
async fn an_authorization_response_from_another_issuer_is_refused_and_the_right_one_accepted() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-iss").await;
    let issuer = "https://sim.example/issuer";
    let service = login
        .service_with(
            |text| {
                text.replacen(
                    "[providers.sim]\n",
                    &format!("[providers.sim]\nissuer = \"{issuer}\"\n"),
                    1,
                )
            },
            ATTEMPT_TTL,
        )
        .await;
    let sim = login.fixture.sim();

    sim.reconfigure(|c| c.issuer = Some("https://attacker.example".to_owned()));
    let (query, cookie) = login.to_callback(&service, "acme-14").await;
    assert_eq!(query.get("iss").map(String::as_str), Some("https://attacker.example"));
    let e = service.finish(PROVIDER, &query, Some(&cookie)).await.unwrap_err();
    assert!(
        matches!(&e, LoginError::WrongIssuer { got, .. } if got == "https://attacker.example"),
        "{e}"
    );
    assert_eq!(e.status(), 400);
    assert_eq!(sim.counters().code_requests, 0, "no code was exchanged");
    let id = ConnectionId::parse("acme-14").expect("id");
    assert!(
        login.fixture.service.store().get(&id).await.expect("read").is_none(),
        "nothing stored"
    );

    sim.reconfigure(|c| c.issuer = Some(issuer.to_owned()));
    let (query, cookie) = login.to_callback(&service, "acme-14").await;
    let finished = service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("the right issuer");
    assert_eq!(finished.token_version, 1);
}

#[tokio::test]
async fn a_revoke_during_a_login_is_not_undone_and_the_fresh_tokens_are_revoked() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-revoke-race").await;
    let service = login.service(ATTEMPT_TTL).await;
    let sim = login.fixture.sim();
    let id = ConnectionId::parse("acme-15").expect("id");
    let (query, cookie) = login.to_callback(&service, "acme-15").await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("first login");

    // Revoked between the button and the callback: refused before the code is exchanged.
    let (query, cookie) = login.to_callback(&service, "acme-15").await;
    login.fixture.service.revoke(&id).await.expect("revoke");
    let e = service.finish(PROVIDER, &query, Some(&cookie)).await.unwrap_err();
    assert!(matches!(e, LoginError::Link(LinkError::PredatesRevoke(_))), "{e}");
    assert_eq!(sim.counters().code_requests, 1, "only the first login's code");

    // A new login, and a new revoke while its code is being exchanged: the
    // provider has issued the tokens, the login has passed its checks, and
    // only the store's own condition stands between them and the revoke.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (query, cookie) = login.to_callback(&service, "acme-15").await;
    service
        .finish(PROVIDER, &query, Some(&cookie))
        .await
        .expect("second login");
    assert_eq!(login.fixture.connection(&id).await.status, Status::Active);
    let (query, cookie) = login.to_callback(&service, "acme-15").await;
    let held = sim.hold_next_code_exchange();
    let revoke = async {
        held.reached.await.expect("the exchange was processed");
        let revoked = login.fixture.service.revoke(&id).await.expect("revoke");
        drop(held.release);
        revoked
    };
    let (finished, revoked) = tokio::join!(service.finish(PROVIDER, &query, Some(&cookie)), revoke);
    assert!(revoked.at_provider && !revoked.already, "{revoked:?}");
    let e = finished.unwrap_err();
    assert!(
        matches!(
            e,
            LoginError::RevokedDuringLogin {
                revoked_at_provider: true,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("revoked at the provider"), "{e}");
    let connection = login.fixture.connection(&id).await;
    assert_eq!(connection.status, Status::Revoked, "the revoke stands");
    assert!(connection.access_token.is_none() && connection.refresh_token.is_none());
    assert_eq!(sim.counters().code_requests, 3);
    assert_eq!(
        sim.live_families(),
        0,
        "the fresh tokens were revoked at the provider too"
    );
}

/// A parameter the login could not learn (the provider's `current/Me`
/// failing): the person reads a plain sentence, the detail is the
/// connection's (for `oauth-sync show` and the log), never the page's.
#[tokio::test]
async fn a_parameter_not_learned_is_a_plain_sentence_for_the_person_and_the_detail_for_the_operator() {
    use oauth_sync_tests::simulator::{DataFault, DataFaultPlan};
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::ExactOnline), "login-param").await;
    let service = login.service(ATTEMPT_TTL).await;
    login.fixture.sim().inject_data_fault(DataFaultPlan {
        fault: DataFault::Status { status: 503 },
        times: 100,
        path_contains: Some("current/Me".to_owned()),
    });
    let (query, cookie) = login.to_callback(&service, "acme-param").await;
    let finished = service.finish(PROVIDER, &query, Some(&cookie)).await.expect("finish");
    let page = finished.warnings.join("\n");
    assert!(page.contains("not ready to sync yet"), "{page}");
    assert!(page.contains("oauth-sync show acme-param"), "{page}");
    let base = &login.fixture.oauth.sim.base_url;
    assert!(
        !page.contains(base.as_str()) && !page.contains("503"),
        "no internals: {page}"
    );
    let connection = login
        .fixture
        .connection(&ConnectionId::parse("acme-param").expect("id"))
        .await;
    assert!(
        connection.param_error.as_deref().is_some_and(|e| e.contains("503")),
        "{:?}",
        connection.param_error
    );
}

/// Pressing the confirmation button again and again leaves one login that
/// can finish: each press supersedes the one before in this browser.
#[tokio::test]
async fn pressing_the_button_again_leaves_one_live_login() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "login-presses").await;
    let service = login.service(ATTEMPT_TTL).await;
    let link = login.link("acme-presses");
    let (first, cookie) = login.to_callback_via(&service, &link).await;
    let (second, second_cookie) = login.to_callback_via(&service, &link).await;
    assert_ne!(cookie, second_cookie, "each confirmation page here is a new browser");
    // The same browser pressing again: replay the button with its cookie.
    let begin = login
        .begin_with_cookie(&service, &link, &cookie)
        .await
        .expect("begin again");
    let newest = oauth_sync_tests::stack::authorize(&login.fixture.oauth.http, &begin.location)
        .await
        .callback_query();
    let e = service.finish(PROVIDER, &first, Some(&cookie)).await.unwrap_err();
    assert!(matches!(e, LoginError::Attempt(AttemptError::Superseded)), "{e}");
    let finished = service
        .finish(PROVIDER, &newest, Some(&cookie))
        .await
        .expect("the newest finishes");
    assert_eq!(finished.connection.as_str(), "acme-presses");
    // Another browser's login of the same link was not touched by these
    // presses (it loses to the link being used, as two tabs do).
    let e = service
        .finish(PROVIDER, &second, Some(&second_cookie))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::Link(LinkError::Used)), "{e}");
}
