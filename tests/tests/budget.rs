//! The shared rate budget against DynamoDB Local and the simulator's Exact
//! Online data API: many workers of one division (several jobs over two
//! connections) draw on one budget item, and together they never get a 429,
//! use every window in full, stop for a `Retry-After` any one of them got,
//! and never exceed the error budget.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth_sync_tests::simulator::{DataFault, DataFaultPlan, RateLimits, SimConfig};
use oauth_sync_tests::stack::{OauthFixture, aws, fresh_tables};
use shared::config::{PresetName, RateLimitHeaders};
use shared::connection::now_ms;
use shared::sync::budget::RateBudget;
use shared::sync::rate::{Answer, Draw, RESET_GRACE_MS, Ticket};

/// Exact's error budget: 10 error answers an hour.
const ERROR_BUDGET: Option<u64> = Some(10);

/// 20 requests a window of 3 s (and a day far away).
fn limits() -> RateLimits {
    RateLimits {
        minutely: 20,
        minute_window: Duration::from_secs(3),
        daily: 5_000,
        day_window: Duration::from_secs(86_400),
    }
}

struct Stack {
    oauth: OauthFixture,
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    /// The rate key: app + division.
    key: String,
}

async fn stack(test: &str) -> Stack {
    let mut sim = SimConfig::for_preset(PresetName::ExactOnline);
    sim.data.rate_limit = Some(limits());
    sim.data.page_size = 5;
    let oauth = OauthFixture::start(sim, Duration::from_secs(10)).await;
    oauth.sim.sim.seed_projects(20);
    let aws = aws().await;
    let tables = fresh_tables(&aws, test).await;
    let key = format!("{}:{}", oauth.credentials.client_id, oauth.sim.sim.division());
    Stack {
        dynamodb: aws.dynamodb.clone(),
        table: tables["SyncStateTable"].clone(),
        key,
        oauth,
    }
}

/// What one request got.
#[derive(Debug, Clone)]
struct Seen {
    status: u16,
    /// The minutely window's reset (epoch ms), which names the window.
    minute_reset: Option<i64>,
}

/// One caller of the division's API: its own budget client (another
/// invocation), its connection's access token.
struct Worker {
    budget: RateBudget,
    key: String,
    http: reqwest::Client,
    url: String,
    token: String,
    limits: Vec<RateLimitHeaders>,
}

impl Worker {
    fn new(stack: &Stack, token: &str) -> Worker {
        Worker {
            budget: RateBudget::new(stack.dynamodb.clone(), &stack.table),
            key: stack.key.clone(),
            http: oauth_sync_tests::stack::http(Duration::from_secs(10)),
            url: stack.oauth.sim.url(&format!(
                "/api/v1/{}/project/Projects?$select=ID,Code",
                stack.oauth.sim.sim.division()
            )),
            token: token.to_owned(),
            limits: PresetName::ExactOnline.settings().rate_limits,
        }
    }

    async fn draw(&self) -> Draw {
        self.budget.draw(&self.key, ERROR_BUDGET).await.expect("draw")
    }

    /// Sends the request drawn as `ticket` (after `delay`), and records the
    /// answer in the budget (`lag` after it came).
    async fn send(&self, ticket: Ticket, delay: Duration, lag: Duration) -> Seen {
        tokio::time::sleep(delay).await;
        let response = self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .expect("the simulator answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let answer = Answer::read(&self.limits, header, status, now_ms());
        let minute_reset = header("X-RateLimit-Minutely-Reset").and_then(|v| v.parse().ok());
        tokio::time::sleep(lag).await;
        self.budget.observe(&self.key, ticket, &answer).await.expect("observe");
        Seen { status, minute_reset }
    }

    /// Draws and sends until `until`, waiting when told; jittered delays
    /// before the send and before the answer is recorded, so that requests
    /// reach the provider and their answers reach the budget out of order.
    async fn run(&self, until: Instant, seen: &Mutex<Vec<Seen>>) {
        while Instant::now() < until {
            match self.draw().await {
                Draw::Go(ticket) => {
                    let delay = Duration::from_millis(random(40));
                    let lag = Duration::from_millis(random(40));
                    let got = self.send(ticket, delay, lag).await;
                    seen.lock().expect("lock").push(got);
                }
                Draw::WaitUntil(at) => sleep_until(at + random(20) as i64).await,
                Draw::ErrorBudgetSpent(at) => panic!("no errors expected; the budget is spent until {at}"),
            }
        }
    }
}

/// A random number below `below` (std's randomly keyed hasher: no extra crate).
fn random(below: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish() % below.max(1)
}

async fn sleep_until(at: i64) {
    let wait = u64::try_from(at - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

#[tokio::test]
async fn workers_of_one_division_share_one_budget_without_a_429() {
    let stack = stack("budget-share").await;
    // Two connections of one division (two users of one company)…
    let tokens = [stack.oauth.login().await, stack.oauth.login().await];
    // …and 4 jobs on each connection, each its own invocation: 8 workers.
    let workers: Vec<Arc<Worker>> = (0..8)
        .map(|i| Arc::new(Worker::new(&stack, tokens[i % 2].access_token.secret())))
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(22);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in &workers {
        let (worker, seen) = (worker.clone(), seen.clone());
        tasks.spawn(async move { worker.run(until, &seen).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("worker");
    }

    let seen = seen.lock().expect("lock").clone();
    let throttled = seen.iter().filter(|s| s.status == 429).count();
    let mut windows: BTreeMap<i64, u64> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.status == 200) {
        *windows.entry(s.minute_reset.expect("a minutely reset")).or_default() += 1;
    }
    let counts: Vec<u64> = windows.values().copied().collect();
    eprintln!(
        "{} requests, {throttled} answered 429, {} windows: {counts:?} of {} each",
        seen.len(),
        counts.len(),
        limits().minutely
    );
    assert_eq!(throttled, 0, "no 429: {counts:?}");
    assert_eq!(stack.oauth.sim.sim.counters().data_429s, 0);
    assert!(seen.iter().all(|s| s.status == 200), "only pages");
    // Every window but the last (cut off by the end) is used to ≥ 90 %.
    let complete = &counts[..counts.len().saturating_sub(1)];
    assert!(complete.len() >= 4, "several windows: {counts:?}");
    for used in complete {
        assert!(
            *used * 10 >= u64::from(limits().minutely) * 9,
            "a window used {used} of {}: {counts:?}",
            limits().minutely
        );
    }
    let state = workers[0]
        .budget
        .get(&stack.key)
        .await
        .expect("read")
        .expect("the budget item");
    assert!(state.in_flight.is_empty(), "every answer recorded: {state:?}");
    assert_eq!(state.errors, 0);
    assert_eq!(state.last_ticket, seen.len() as u64, "one ticket a request");
    let minute = &state.windows[0].1;
    assert_eq!(minute.limit, Some(20), "the window's size is known: {state:?}");
}

#[tokio::test]
async fn the_first_request_after_a_reset_is_allowed() {
    let stack = stack("budget-reset").await;
    let token = stack.oauth.login().await;
    let worker = Worker::new(&stack, token.access_token.secret());
    // Spend the window.
    let mut last = None;
    for i in 0..20 {
        let Draw::Go(ticket) = worker.draw().await else {
            panic!("request {i} of 20 may go");
        };
        let seen = worker.send(ticket, Duration::ZERO, Duration::ZERO).await;
        assert_eq!(seen.status, 200);
        last = seen.minute_reset;
    }
    let reset = last.expect("a minutely reset");
    // The 21st waits for the reset (and the grace for the clocks)…
    let Draw::WaitUntil(at) = worker.draw().await else {
        panic!("the window is spent");
    };
    assert_eq!(at, reset + RESET_GRACE_MS);
    sleep_until(at).await;
    // …and then goes, in a new window that starts at its limit.
    let Draw::Go(ticket) = worker.draw().await else {
        panic!("the first request after the reset may go");
    };
    let state = worker.budget.get(&stack.key).await.expect("read").expect("item");
    assert_eq!(state.windows[0].1.remaining, 19, "{state:?}");
    assert_eq!(state.windows[0].1.reset_at, None, "not told yet");
    let seen = worker.send(ticket, Duration::ZERO, Duration::ZERO).await;
    assert_eq!(seen.status, 200);
    assert!(seen.minute_reset.expect("a reset") >= reset + limits().minute_window.as_millis() as i64);
    let state = worker.budget.get(&stack.key).await.expect("read").expect("item");
    assert_eq!(
        state.windows[0].1.reset_at, seen.minute_reset,
        "learned from the answer"
    );
    assert_eq!(stack.oauth.sim.sim.counters().data_429s, 0);
}

#[tokio::test]
async fn a_retry_after_from_one_worker_stops_the_others() {
    let stack = stack("budget-retry-after").await;
    let tokens = [stack.oauth.login().await, stack.oauth.login().await];
    let first = Worker::new(&stack, tokens[0].access_token.secret());
    let other = Worker::new(&stack, tokens[1].access_token.secret());
    stack.oauth.sim.sim.inject_data_fault(DataFaultPlan {
        fault: DataFault::RetryAfter { status: 429, secs: 2 },
        times: 1,
        path_contains: None,
    });
    let Draw::Go(ticket) = first.draw().await else {
        panic!("the first request goes");
    };
    let seen = first.send(ticket, Duration::ZERO, Duration::ZERO).await;
    assert_eq!(seen.status, 429);
    let answered = now_ms();
    // Another connection's worker, another invocation: it waits too.
    let Draw::WaitUntil(at) = other.draw().await else {
        panic!("the other worker must wait for the Retry-After");
    };
    assert!(
        (answered + 1_500..=answered + 2_100).contains(&at),
        "waits ~2 s: {}",
        at - answered
    );
    let Draw::WaitUntil(again) = first.draw().await else {
        panic!("so does the first");
    };
    assert_eq!(again, at);
    sleep_until(at).await;
    let Draw::Go(ticket) = other.draw().await else {
        panic!("after the Retry-After, requests go again");
    };
    assert_eq!(other.send(ticket, Duration::ZERO, Duration::ZERO).await.status, 200);
    let log = stack.oauth.sim.sim.data_requests_log();
    assert_eq!(log.len(), 2, "nothing was sent while waiting: {log:?}");
    assert!(log[1].at_ms as i64 >= at, "{log:?}");
}

#[tokio::test]
async fn concurrent_errors_never_exceed_the_error_budget() {
    let stack = stack("budget-errors").await;
    let token = stack.oauth.login().await;
    // Eight workers whose every request is refused (a revoked token: 401),
    // until the budget stops them all.
    let mut workers: Vec<Arc<Worker>> = (0..8).map(|_| Arc::new(Worker::new(&stack, "not-a-token"))).collect();
    workers.push(Arc::new(Worker::new(&stack, token.access_token.secret())));
    let stopped_until = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in &workers[..8] {
        let (worker, stopped_until) = (worker.clone(), stopped_until.clone());
        tasks.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                assert!(Instant::now() < deadline, "the budget stops the errors");
                match worker.draw().await {
                    Draw::Go(ticket) => {
                        let delay = Duration::from_millis(random(30));
                        let status = worker.send(ticket, delay, delay).await.status;
                        assert_eq!(status, 401);
                    }
                    Draw::WaitUntil(at) => sleep_until(at).await,
                    Draw::ErrorBudgetSpent(until) => {
                        stopped_until.lock().expect("lock").push(until);
                        return;
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("worker");
    }
    let errors = stack.oauth.sim.sim.counters().data_errors;
    eprintln!("{errors} error answers before every worker stopped (budget 10, stop at 5)");
    assert!((5..=10).contains(&errors), "{errors} errors");
    let state = workers[0].budget.get(&stack.key).await.expect("read").expect("item");
    assert_eq!(state.error_times.len() as u64, errors, "every error counted: {state:?}");
    let first_error = state.error_times[0];
    let stopped = stopped_until.lock().expect("lock").clone();
    assert_eq!(stopped.len(), 8);
    assert!(
        stopped.iter().all(|until| *until >= first_error + 3_600_000),
        "{stopped:?}"
    );
    // Everyone on the key stops, a working token too.
    assert!(matches!(workers[8].draw().await, Draw::ErrorBudgetSpent(_)));
}
