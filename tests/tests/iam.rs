//! Each function's IAM policy in `infra/template.yaml` against the DynamoDB,
//! Secrets Manager and EventBridge calls its code makes. Each test wires the function's
//! services the way its `main.rs` does, on clients whose traffic goes through
//! a recording proxy, drives the function's paths against the local stack,
//! and requires the recorded calls to be exactly the policy: a call the policy
//! lacks would fail in AWS; a grant no path uses is a permission too many.
//!
//! Secrets: the action is checked; the resource is the `SecretsPrefix`
//! parameter, since secret names come from the configuration at run time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use oauth_sync_tests::events::EventsFixture;
use oauth_sync_tests::proxy::{AwsCall, DynamoProxy};
use oauth_sync_tests::simulator::SimConfig;
use oauth_sync_tests::stack::{
    LoginFixture, PROVIDER, RefreshFixture, SyncFixture, authorize, deadline, quick_sync_settings,
};
use oauth_sync_tests::template::{Grant, SECRETS_RESOURCE, function_grants, template_path};
use shared::aws::AwsClients;
use shared::config::PresetName;
use shared::events::{EventSink, PublishSettings};
use shared::login::flow::ATTEMPT_TTL;
use shared::refresh::{RefreshSettings, TokenService};

/// Clients whose DynamoDB, Secrets Manager and EventBridge traffic is recorded.
struct Recorded {
    dynamodb: DynamoProxy,
    secrets: DynamoProxy,
    aws: AwsClients,
    events: DynamoProxy,
    /// A bus made from the template, and the sink `App` would build for it.
    bus: EventsFixture,
    sink: EventSink,
}

impl Recorded {
    async fn start() -> Recorded {
        let upstream = |var: &str| std::env::var(var).unwrap_or_else(|_| panic!("{var}: start the local stack"));
        let dynamodb = DynamoProxy::start(&upstream("AWS_ENDPOINT_URL_DYNAMODB"))
            .await
            .expect("proxy");
        let secrets = DynamoProxy::start(&upstream("AWS_ENDPOINT_URL_SECRETS_MANAGER"))
            .await
            .expect("proxy");
        let sdk = shared::aws::sdk_config_from_env();
        let aws = AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(&sdk)
                    .endpoint_url(&dynamodb.url)
                    .build(),
            ),
            secrets: aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(&sdk)
                    .endpoint_url(&secrets.url)
                    .build(),
            ),
        };
        let events = DynamoProxy::start(&upstream("AWS_ENDPOINT_URL_EVENTBRIDGE"))
            .await
            .expect("proxy");
        let bus = EventsFixture::start("iam").await;
        let sink = EventSink::with_config(
            aws_sdk_eventbridge::config::Builder::from(&sdk).endpoint_url(&events.url),
            &bus.bus,
            PublishSettings::default(),
        );
        Recorded {
            dynamodb,
            secrets,
            aws,
            events,
            bus,
            sink,
        }
    }

    /// The token service as `App::token_service` builds it, on these clients.
    async fn token_service(&self, fixture: &RefreshFixture) -> Arc<TokenService> {
        let store =
            shared::connection::store::ConnectionStore::new(self.aws.dynamodb.clone(), fixture.connections_table());
        let secrets = shared::secrets::SecretStore::new(self.aws.secrets.clone());
        Arc::new(
            TokenService::load(fixture.config.clone(), store, secrets, RefreshSettings::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .with_events(self.sink.clone()),
        )
    }

    /// The calls recorded, as grants on the template's logical ids.
    fn grants(&self, tables: &BTreeMap<String, String>) -> BTreeSet<Grant> {
        let mut logical: BTreeMap<&str, &str> = tables.iter().map(|(id, name)| (name.as_str(), id.as_str())).collect();
        logical.insert(self.bus.bus.as_str(), "EventBus");
        let mut calls = self.dynamodb.calls();
        calls.extend(self.secrets.calls());
        calls.extend(self.events.calls());
        let mut grants = BTreeSet::new();
        for AwsCall {
            action,
            resources,
            index,
        } in calls
        {
            for resource in resources {
                let resource = if action.starts_with("secretsmanager:") {
                    SECRETS_RESOURCE.to_owned()
                } else {
                    let id = logical
                        .get(resource.as_str())
                        .unwrap_or_else(|| panic!("unknown table or bus {resource}"));
                    match &index {
                        Some(index) => format!("{id}/index/{index}"),
                        None => (*id).to_owned(),
                    }
                };
                grants.insert(Grant::new(&action, &resource));
            }
        }
        grants
    }
}

fn assert_policy_is(function: &str, recorded: &BTreeSet<Grant>) {
    let policy = &function_grants(&template_path()).unwrap_or_else(|e| panic!("{e}"))[function];
    let missing: Vec<_> = recorded.difference(policy).collect();
    let unused: Vec<_> = policy.difference(recorded).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "{function}: its code calls what its policy lacks: {missing:?}; its policy grants what no path called: {unused:?}"
    );
}

#[tokio::test]
async fn the_webhooks_function_may_call_exactly_what_its_code_calls() {
    use oauth_sync_tests::proxy::DynamoProxy as RecordingProxy;
    use oauth_sync_tests::stack::{create_secret, unique_prefix};
    use oauth_sync_tests::webhooks::{Behaviour, Queues, Receiver, event, receive};
    use shared::webhooks::sign::SigningSecret;
    use shared::webhooks::{RetrySchedule, WebhookService, queue::DeliveryQueue};

    let aws = oauth_sync_tests::stack::aws().await;
    let queues = Queues::create("iam-wh", 3).await.expect("queues");
    let prefix = unique_prefix("iam-wh");
    let (up_secret, down_secret) = (
        SigningSecret::generate().expect("rng"),
        SigningSecret::generate().expect("rng"),
    );
    let up = Receiver::start(&up_secret, Behaviour::Accept).await.expect("receiver");
    let down = Receiver::start(&down_secret, Behaviour::AlwaysFail)
        .await
        .expect("receiver");
    let mut text = "[providers.g]\npreset = \"google\"\ncredentials_secret = \"oauth-sync/g\"\n".to_owned();
    for (name, receiver, secret) in [("up", &up, &up_secret), ("down", &down, &down_secret)] {
        let secret_name = format!("oauth-sync/{prefix}{name}");
        create_secret(&aws, &secret_name, secret.clone()).await;
        text.push_str(&format!(
            "[webhooks.{name}]\nurl = \"{}\"\nevents = [\"*\"]\nsigning_secret = \"{secret_name}\"\n",
            receiver.url
        ));
    }
    let config = shared::config::Config::parse(&text, "iam.toml").unwrap_or_else(|e| panic!("{e}"));

    // As `main.rs` wires it, on recorded Secrets Manager and SQS clients.
    let recorded = Recorded::start().await;
    let sqs_proxy = RecordingProxy::start(&std::env::var("AWS_ENDPOINT_URL_SQS").expect("AWS_ENDPOINT_URL_SQS"))
        .await
        .expect("proxy");
    let sdk = shared::aws::sdk_config_from_env();
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .endpoint_url(&sqs_proxy.url)
            .build(),
    );
    let service = Arc::new(
        WebhookService::new(
            &config.webhooks,
            shared::secrets::SecretStore::new(recorded.aws.secrets.clone()),
            DeliveryQueue::new(sqs, &queues.deliveries.url),
            RetrySchedule::default(),
        )
        .expect("service"),
    );

    // What the handler does with a batch from each queue: the fan-out, then
    // one delivery that succeeds and one that fails (its backoff set).
    queues
        .put_event(&event("e-iam-1", "connection.revoked", serde_json::json!({})))
        .await
        .expect("put");
    let fanned = service
        .handle(receive(&queues.sqs, &queues.events).await.expect("receive"))
        .await;
    assert_eq!((fanned.events, fanned.enqueued), (1, 2), "{fanned:?}");
    let sent = service
        .handle(receive(&queues.sqs, &queues.deliveries).await.expect("receive"))
        .await;
    assert_eq!((sent.delivered, sent.retrying), (1, 1), "{sent:?}");
    // A second event: the signing secrets were read once, by the first delivery.
    queues
        .put_event(&event("e-iam-2", "connection.revoked", serde_json::json!({})))
        .await
        .expect("put");
    service
        .handle(receive(&queues.sqs, &queues.events).await.expect("receive"))
        .await;
    let again = service
        .handle(receive(&queues.sqs, &queues.deliveries).await.expect("receive"))
        .await;
    assert_eq!((again.delivered, again.retrying), (1, 1), "{again:?}");
    let reads = recorded.secrets.calls();
    for name in ["up", "down"] {
        let secret = format!("oauth-sync/{prefix}{name}");
        assert_eq!(
            reads.iter().filter(|c| c.resources.contains(&secret)).count(),
            1,
            "{secret} read once per process: {reads:?}"
        );
    }

    let mut grants = BTreeSet::new();
    for call in recorded.secrets.calls().into_iter().chain(sqs_proxy.calls()) {
        for resource in &call.resources {
            let resource = if call.action.starts_with("secretsmanager:") {
                SECRETS_RESOURCE
            } else if *resource == queues.deliveries.url {
                "WebhookDeliveriesQueue"
            } else {
                panic!("{}: unknown queue {resource}", call.action)
            };
            grants.insert(Grant::new(&call.action, resource));
        }
    }
    assert_policy_is("webhooks", &grants);
}

#[tokio::test]
async fn the_refresher_may_call_exactly_what_its_code_calls() {
    let sim = SimConfig {
        // Inside every preset's refresh lead, so due at once.
        access_token_ttl: std::time::Duration::from_secs(60),
        ..SimConfig::for_preset(PresetName::Xero)
    };
    let fixture = RefreshFixture::start(sim, RefreshSettings::default(), "", "iam-refresher").await;
    fixture.connect("iam-a").await;
    // And one whose refresh token is dead: it needs a new login (an event).
    let dead = fixture.connect("iam-dead").await;
    fixture
        .sim()
        .kill_family_of(fixture.stored_refresh_token(&dead).await.secret());
    let recorded = Recorded::start().await;
    // What the handler does: every due connection, through the refresh-due index.
    let summary = recorded
        .token_service(&fixture)
        .await
        .refresh_due(shared::refresh::DueRun::all(
            deadline(30),
            token_refresher_concurrency(),
        ))
        .await;
    assert_eq!(
        (summary.due, summary.refreshed, summary.needs_reauth),
        (2, 1, 1),
        "{summary:?}"
    );
    assert_policy_is("token-refresher", &recorded.grants(&fixture.tables));
}

#[tokio::test]
async fn record_events_may_call_exactly_what_its_code_calls() {
    let recorded = Recorded::start().await;
    // A stream batch as Lambda hands it over: one insert, one bookkeeping change.
    let insert = serde_json::json!({"eventID": "1", "eventName": "INSERT", "dynamodb": {
        "Keys": {"pk": {"S": "c1#projects"}, "record_id": {"S": "42"}},
        "NewImage": {"pk": {"S": "c1#projects"}, "record_id": {"S": "42"}, "record": {"M": {"ID": {"S": "42"}}},
                     "content_hash": {"S": "h"}, "updated_at": {"N": "1796126400000"}},
        "SequenceNumber": "1"}});
    let mut touched = insert.clone();
    touched["eventName"] = "MODIFY".into();
    touched["dynamodb"]["OldImage"] = insert["dynamodb"]["NewImage"].clone();
    touched["dynamodb"]["SequenceNumber"] = "2".into();
    let batch = serde_json::json!({"Records": [insert, touched]});
    // What the handler does (functions/record-events calls just this).
    let outcome = shared::events::stream::publish_batch(&recorded.sink, &batch)
        .await
        .expect("a batch");
    assert!(outcome.failed.is_empty(), "{outcome:?}");
    assert_eq!(
        (outcome.published, outcome.skipped),
        (1, 1),
        "one published, one skipped"
    );
    assert_policy_is("record-events", &recorded.grants(&BTreeMap::new()));
}

/// `token_refresher::CONCURRENCY`; the value does not change the calls.
fn token_refresher_concurrency() -> usize {
    16
}

/// The sync function's reconciliation of jobs with the configured syncs,
/// as its `main.rs` wires it, on the recorded clients.
async fn reconcile(
    fx: &SyncFixture,
    tokens: &TokenService,
    engine: &shared::sync::engine::SyncEngine,
) -> shared::sync::reconcile::Reconciled {
    let reconciler = shared::sync::reconcile::Reconciler::new(
        fx.fixture.config.clone(),
        tokens.store().clone(),
        engine.jobs().clone(),
        shared::sync::reconcile::ReconcileSettings::default(),
    );
    reconciler.run(deadline(120)).await.expect("reconcile")
}

#[tokio::test]
async fn the_sync_may_call_exactly_what_its_code_calls() {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    // A full sync: its sweep reads what a run saw and marks the rest deleted.
    let syncs = "[syncs.projects]\nprovider = \"sim\"\nendpoint = \"/project/Projects\"\n\
                 query = { \"$select\" = \"ID,Code,Description\" }\nmode = \"full\"\n";
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        syncs,
        quick_sync_settings(),
        "iam-sync",
    )
    .await;
    let projects = fx.sim().seed_projects(30);
    let id = fx.connect("iam-s").await;
    let job = shared::sync::jobs::job_id(&id, "projects");
    let tables = &fx.fixture.tables;

    let recorded = Recorded::start().await;
    let tokens = recorded.token_service(&fx.fixture).await;
    let engine = Arc::new(
        shared::sync::engine::SyncEngine::new(
            fx.fixture.config.clone(),
            tokens.clone(),
            shared::sync::jobs::JobStore::new(
                recorded.aws.dynamodb.clone(),
                &tables["SyncStateTable"],
                &tables["SyncRunsTable"],
            ),
            shared::sync::records::RecordStore::new(recorded.aws.dynamodb.clone(), &tables["RecordsTable"]),
            quick_sync_settings(),
        )
        .expect("engine")
        .with_events(recorded.sink.clone()),
    );
    let make_due = async || {
        fx.fixture
            .aws
            .dynamodb
            .update_item()
            .table_name(&tables["SyncStateTable"])
            .key("id", aws_sdk_dynamodb::types::AttributeValue::S(job.clone()))
            .update_expression("SET next_run_at = :zero")
            .expression_attribute_values(":zero", aws_sdk_dynamodb::types::AttributeValue::N("0".to_owned()))
            .send()
            .await
            .expect("make the job due");
    };

    // What the handler does (`run_due`), three times: the first run; a run
    // that finds a deletion and an expired access token (a 401, so a
    // refresh); and one that finds the job held by another invocation.
    let first = engine.run_due(deadline(120)).await;
    assert_eq!(first.finished, 1, "{first:?}");
    assert!(fx.sim().delete_project(&projects[3]));
    fx.sim().expire_access_tokens();
    make_due().await;
    let second = engine.run_due(deadline(120)).await;
    assert_eq!(second.finished, 1, "{second:?}");
    assert!(fx.sim().counters().refreshes >= 1, "the 401 was answered by a refresh");
    let other = shared::connection::now_ms() + 60_000;
    assert!(
        fx.engine
            .jobs()
            .claim(&job, "another-invocation", other, true)
            .await
            .expect("claim")
            .is_some()
    );
    make_due().await;
    let third = engine.run_due(deadline(120)).await;
    assert_eq!(third.busy, 1, "{third:?}");
    // What the handler does first: the jobs of the configured syncs (the
    // first invocation walks every sync once; the job exists).
    let reconciled = reconcile(&fx, &tokens, &engine).await;
    assert!(reconciled.finished && reconciled.existing == 1, "{reconciled:?}");

    assert_policy_is("sync", &recorded.grants(tables));
}

#[tokio::test]
async fn the_callback_may_call_exactly_what_its_code_calls() {
    let login = LoginFixture::start(SimConfig::for_preset(PresetName::Generic), "iam-login").await;
    let recorded = Recorded::start().await;
    // As `main.rs` wires it, with a sync configured so a login schedules it.
    let text = format!(
        "{}\n[syncs.things]\nprovider = \"{PROVIDER}\"\nendpoint = \"https://api.example.com/things\"\nmode = \"full\"\n\
         pagination = {{ style = \"cursor\", param = \"cursor\", next_field = \"next\", items_field = \"data\" }}\nprimary_key = [\"id\"]\n",
        login.config_text
    );
    let config = Arc::new(shared::config::Config::parse(&text, "iam.toml").unwrap_or_else(|e| panic!("{e}")));
    let store = shared::connection::store::ConnectionStore::new(
        recorded.aws.dynamodb.clone(),
        login.fixture.connections_table(),
    );
    let secrets = shared::secrets::SecretStore::new(recorded.aws.secrets.clone());
    let tokens = Arc::new(
        TokenService::load(config.clone(), store, secrets.clone(), RefreshSettings::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .with_events(recorded.sink.clone()),
    );
    let tables = &login.fixture.tables;
    let service = shared::login::flow::LoginService::load(
        config,
        tokens,
        shared::login::attempts::AttemptStore::new(recorded.aws.dynamodb.clone(), &tables["LoginAttemptsTable"]),
        &secrets,
        ATTEMPT_TTL,
    )
    .await
    .expect("login service")
    .with_jobs(shared::sync::jobs::JobStore::new(
        recorded.aws.dynamodb.clone(),
        &tables["SyncStateTable"],
        &tables["SyncRunsTable"],
    ));

    // The confirmation page, its button, the provider's approval, the callback.
    let begin = login.begin(&service, &login.link("iam-c")).await.expect("begin");
    let query = authorize(&login.fixture.oauth.http, &begin.location)
        .await
        .callback_query();
    let finished = service
        .finish(PROVIDER, &query, Some(&begin.cookie))
        .await
        .expect("finish");
    assert_eq!(finished.connection.as_str(), "iam-c");

    assert_policy_is("oauth-callback", &recorded.grants(tables));
}

#[tokio::test]
async fn the_api_may_call_exactly_what_its_code_calls() {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = None;
    let fx = SyncFixture::start(
        sim,
        "min_refresh_interval_secs = 0",
        oauth_sync_tests::stack::PROJECTS_INCREMENTAL,
        quick_sync_settings(),
        "iam-api",
    )
    .await;
    fx.sim().seed_projects(5);
    let id = fx.connect("iam-p").await;
    fx.run(&id, "projects").await;
    let tables = &fx.fixture.tables;

    // As `main.rs` wires it: the token service, the job and record stores, the link keys.
    let recorded = Recorded::start().await;
    let text = fx.fixture.config_text.replace(
        "[service]\n",
        "[service]\ncallback_url = \"https://auth.example.com/callback\"\n",
    );
    let config = Arc::new(shared::config::Config::parse(&text, "iam.toml").unwrap_or_else(|e| panic!("{e}")));
    let store =
        shared::connection::store::ConnectionStore::new(recorded.aws.dynamodb.clone(), fx.fixture.connections_table());
    let secrets = shared::secrets::SecretStore::new(recorded.aws.secrets.clone());
    let tokens = Arc::new(
        TokenService::load(config.clone(), store, secrets, RefreshSettings::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .with_events(recorded.sink.clone()),
    );
    let links =
        shared::login::LinkKeys::from_json(&shared::crypto::KeyRing::generate_json("k1").expect("rng")).expect("keys");
    let api = shared::api::ApiService::new(
        config,
        tokens,
        shared::sync::jobs::JobStore::new(
            recorded.aws.dynamodb.clone(),
            &tables["SyncStateTable"],
            &tables["SyncRunsTable"],
        ),
        shared::sync::records::RecordStore::new(recorded.aws.dynamodb.clone(), &tables["RecordsTable"]),
        links,
    )
    .expect("api");

    // Every route's path: a link, the listing and one connection, a token,
    // a proxied call that needs a refresh, run now, a sync's status, the
    // changes since the start, and a revoke.
    api.create_link(shared::api::LinkBody {
        provider: PROVIDER.to_owned(),
        ..Default::default()
    })
    .await
    .expect("link");
    let page = api.list_connections(None, None, None, None).await.expect("list");
    assert_eq!(page.connections.len(), 1);
    api.connection("iam-p").await.expect("connection");
    api.token("iam-p", Some(60), deadline(30)).await.expect("token");
    // The provider no longer takes the token: the proxy's 401 refreshes it.
    fx.sim().expire_access_tokens();
    let answer = api
        .proxy()
        .forward(
            &id,
            shared::api::proxy::ProxyRequest {
                method: reqwest::Method::GET,
                path: "project/Projects".to_owned(),
                query: Some("$select=ID".to_owned()),
                headers: reqwest::header::HeaderMap::new(),
                body: Vec::new(),
            },
            deadline(30),
        )
        .await
        .expect("proxy");
    assert_eq!((answer.status, answer.refreshed), (200, true));
    api.run_sync("iam-p", "projects").await.expect("run now");
    api.sync_status("iam-p", "projects").await.expect("status");
    let changes = api.changes("iam-p", "projects", None, None).await.expect("changes");
    assert_eq!(changes.records.len(), 5);
    api.record("iam-p", "projects", &changes.records[0].id)
        .await
        .expect("one record");
    api.revoke("iam-p").await.expect("revoke");

    assert_policy_is("api", &recorded.grants(tables));
}
