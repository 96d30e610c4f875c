//! The cap on refreshes in flight to one provider (`token_concurrency`),
//! shared by everything one process refreshes, adjusted by AIMD: halved when
//! the provider answers a refresh with 429 or 503, raised by one per `limit`
//! refreshes that succeed, never above the cap.
//!
//! The cap is for all of the token-refresher's shard groups together; each
//! group's process keeps `cap / groups` (at least 1) and no counter is
//! shared: a counter in DynamoDB would take two writes per refresh on one
//! item, a hot key at a few hundred refreshes a second (a partition takes
//! 1,000 writes a second), and the groups are even by construction (every
//! shard holds an equal share of the connections, by hash).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// One provider's state.
#[derive(Debug)]
struct Window {
    /// The cap this process keeps.
    cap: u64,
    /// The current limit (fractional: grows by 1/limit per success).
    limit: f64,
    in_flight: u64,
    peak: u64,
    lowest: u64,
    throttled: u64,
    /// Bumped at each decrease: only a refresh started after the last
    /// decrease may cause another, so one burst of 429s halves once.
    epoch: u64,
    /// Places the limit took away while they were in flight: that many
    /// returning places are forgotten, not handed on.
    debt: u64,
}

impl Window {
    fn allowed(&self) -> u64 {
        (self.limit.floor() as u64).clamp(1, self.cap)
    }
}

/// A provider's places: a fair (first come, first served) semaphore whose
/// free places plus those in flight, less the debt, are the limit. A freed
/// place goes to the longest waiter, never to a newcomer, and wakes only
/// that one: thousands of refreshes waiting for a provider at its cap cost
/// nothing while they wait, and none waits while later ones go ahead.
#[derive(Debug)]
struct Gate {
    window: Mutex<Window>,
    places: Arc<Semaphore>,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn permit(gate: &Arc<Gate>, place: OwnedSemaphorePermit) -> Permit {
        let mut window = gate.lock();
        window.in_flight += 1;
        window.peak = window.peak.max(window.in_flight);
        Permit {
            gate: Arc::clone(gate),
            epoch: window.epoch,
            place: Mutex::new(Some(place)),
        }
    }

    /// A place if one is free and nobody waits for it.
    fn try_take(gate: &Arc<Gate>) -> Option<Permit> {
        let place = Arc::clone(&gate.places).try_acquire_owned().ok()?;
        Some(Gate::permit(gate, place))
    }

    /// A place, waited for in turn until `until`.
    async fn take(gate: &Arc<Gate>, until: Instant) -> Option<Permit> {
        let place = tokio::time::timeout_at(until.into(), Arc::clone(&gate.places).acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Gate::permit(gate, place))
    }
}

/// What a provider's cap did, for the run's metrics and the bench.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProviderLoad {
    pub provider: String,
    /// The cap this process kept (`token_concurrency / groups`).
    pub cap: u64,
    /// The limit now.
    pub limit: u64,
    /// The lowest limit since the process started.
    pub lowest_limit: u64,
    /// The most refreshes in flight at once.
    pub peak_in_flight: u64,
    /// Refreshes the provider answered with 429 or 503.
    pub throttled: u64,
}

/// Every provider's cap in one process.
#[derive(Debug)]
pub struct ProviderLimits {
    /// The caps are divided by this (the refresher's shard groups; 1 elsewhere).
    share_of: u64,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

/// A refresh in flight to one provider; dropping it (or
/// [`Permit::release`]) frees its place.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    epoch: u64,
    place: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

impl Permit {
    /// Frees the place now: the provider has answered, and what follows
    /// (the commit) is no request to it. Once; dropping it later does nothing more.
    pub fn release(&self) {
        let Some(place) = self.place.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return;
        };
        let mut window = self.gate.lock();
        window.in_flight -= 1;
        if window.debt > 0 {
            window.debt -= 1;
            place.forget();
        } else {
            drop(place);
        }
    }

    /// The provider answered 429 or 503: halve the limit (once per burst).
    pub fn throttled(&self) {
        let mut window = self.gate.lock();
        window.throttled += 1;
        if self.epoch == window.epoch {
            window.epoch += 1;
            let before = window.allowed();
            window.limit = (window.limit / 2.0).max(1.0);
            let fewer = before - window.allowed();
            // Free places go at once; places in flight as they come back.
            let forgotten = self.gate.places.forget_permits(fewer as usize) as u64;
            window.debt += fewer - forgotten;
            window.lowest = window.lowest.min(window.allowed());
        }
    }

    /// The refresh went through: one more place per `limit` of these.
    pub fn succeeded(&self) {
        let mut window = self.gate.lock();
        let before = window.allowed();
        window.limit = (window.limit + 1.0 / window.limit).min(window.cap as f64);
        if window.allowed() > before {
            if window.debt > 0 {
                window.debt -= 1;
            } else {
                self.gate.places.add_permits(1);
            }
        }
    }
}

impl ProviderLimits {
    /// Caps divided among `groups` processes (1 outside the refresher).
    pub fn new(groups: u32) -> ProviderLimits {
        ProviderLimits {
            share_of: u64::from(groups.max(1)),
            gates: Mutex::new(HashMap::new()),
        }
    }

    fn gate(&self, provider: &str, cap: u64) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        let gate = gates.entry(provider.to_owned()).or_insert_with(|| {
            let cap = (cap / self.share_of).max(1);
            Arc::new(Gate {
                window: Mutex::new(Window {
                    cap,
                    limit: cap as f64,
                    in_flight: 0,
                    peak: 0,
                    lowest: cap,
                    throttled: 0,
                    epoch: 0,
                    debt: 0,
                }),
                places: Arc::new(Semaphore::new(cap as usize)),
            })
        });
        Arc::clone(gate)
    }

    /// A place among the refreshes in flight to `provider` (whose whole cap
    /// is `cap`), waiting for one until `until`; `None` when none came.
    /// Places go in the order they were asked for.
    pub async fn acquire(&self, provider: &str, cap: u64, until: Instant) -> Option<Permit> {
        Gate::take(&self.gate(provider, cap), until).await
    }

    /// A place now, or `None` when every place is taken or others wait for one.
    pub fn try_acquire(&self, provider: &str, cap: u64) -> Option<Permit> {
        Gate::try_take(&self.gate(provider, cap))
    }

    /// Each provider's load so far.
    pub fn loads(&self) -> Vec<ProviderLoad> {
        let gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        let mut loads: Vec<ProviderLoad> = gates
            .iter()
            .map(|(provider, gate)| {
                let window = gate.lock();
                ProviderLoad {
                    provider: provider.clone(),
                    cap: window.cap,
                    limit: window.allowed(),
                    lowest_limit: window.lowest,
                    peak_in_flight: window.peak,
                    throttled: window.throttled,
                }
            })
            .collect();
        loads.sort_by(|a, b| a.provider.cmp(&b.provider));
        loads
    }
}

/// The places of one refresher run (`refresh_concurrency`): a fair
/// semaphore for newly due refreshes, and a queue ahead of it for refreshes
/// that gave their place back while they waited for their provider's
/// (see [`RunPlace`]).
#[derive(Debug)]
pub struct RunPlaces {
    places: Arc<Semaphore>,
    /// Refreshes holding a place under their provider's cap and waiting for
    /// one in the run again, first come first served. Each freed place goes
    /// to the first of them before any newly due refresh.
    returning: Mutex<VecDeque<oneshot::Sender<OwnedSemaphorePermit>>>,
}

impl RunPlaces {
    pub fn new(places: usize) -> Arc<RunPlaces> {
        Arc::new(RunPlaces {
            places: Arc::new(Semaphore::new(places)),
            returning: Mutex::new(VecDeque::new()),
        })
    }

    fn returning(&self) -> MutexGuard<'_, VecDeque<oneshot::Sender<OwnedSemaphorePermit>>> {
        self.returning.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A freed place: to the longest-waiting returning refresh, else to the
    /// semaphore (and its first newly due refresh). Under the queue's lock,
    /// so that a returning refresh that found no free place is always in the
    /// queue before the next place is freed.
    fn free(&self, mut place: OwnedSemaphorePermit) {
        let mut returning = self.returning();
        while let Some(waiter) = returning.pop_front() {
            match waiter.send(place) {
                Ok(()) => return,
                // It stopped waiting (its task ended): the next one.
                Err(back) => place = back,
            }
        }
        drop(place);
    }
}

/// A place among one refresher run's refreshes, given back while its
/// refresh waits for a place under its provider's cap: a provider at its
/// cap (or throttled by AIMD) does not keep the run's places from the other
/// providers' due refreshes. Taking one again goes **ahead of every newly
/// due refresh**: a refresh that holds its provider's place must not wait
/// behind the run's whole backlog with it, or the provider's places are
/// held by refreshes that are not sending, and a busy provider (Exact's
/// 40 % of the mix) starves while the others run.
#[derive(Debug)]
pub struct RunPlace {
    places: Arc<RunPlaces>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl RunPlace {
    /// Waits for one of `places`; `None` once they are closed.
    pub async fn take(places: Arc<RunPlaces>) -> Option<RunPlace> {
        let permit = Arc::clone(&places.places).acquire_owned().await.ok()?;
        Some(RunPlace {
            places,
            held: Mutex::new(Some(permit)),
        })
    }

    fn held(&self) -> MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets another refresh of the run have the place meanwhile.
    pub fn give_back(&self) {
        // Out of `held` first: `free` takes the queue's lock, which
        // `retake` holds while it takes `held`.
        let place = self.held().take();
        if let Some(place) = place {
            self.places.free(place);
        }
    }

    /// Takes a place again (after [`RunPlace::give_back`]), before any
    /// newly due refresh.
    pub async fn retake(&self) {
        if self.held().is_some() {
            return;
        }
        let waiting = {
            let mut returning = self.places.returning();
            match Arc::clone(&self.places.places).try_acquire_owned() {
                Ok(place) => {
                    *self.held() = Some(place);
                    return;
                }
                Err(_) => {
                    let (tx, rx) = oneshot::channel();
                    returning.push_back(tx);
                    rx
                }
            }
        };
        if let Ok(place) = waiting.await {
            *self.held() = Some(place);
        }
    }
}

impl Drop for RunPlace {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn the_cap_is_divided_among_the_groups_and_never_exceeded() {
        // A cap of 10 over 4 groups: 2 places here; the other tries wait in vain.
        let limits = ProviderLimits::new(4);
        let mut held = Vec::new();
        for _ in 0..5 {
            let briefly = Instant::now() + Duration::from_millis(20);
            held.push(limits.acquire("exact", 10, briefly).await);
        }
        assert_eq!(held.iter().filter(|p| p.is_some()).count(), 2);
        let load = &limits.loads()[0];
        assert_eq!((load.cap, load.peak_in_flight), (2, 2));
    }

    #[tokio::test]
    async fn a_burst_of_429s_halves_the_limit_once_and_successes_win_it_back() {
        let limits = ProviderLimits::new(1);
        let mut permits = Vec::new();
        for _ in 0..8 {
            permits.push(limits.acquire("xero", 8, soon()).await.expect("place"));
        }
        for permit in &permits {
            permit.throttled();
        }
        assert_eq!(limits.loads()[0].limit, 4, "eight 429s of one burst halve once");
        drop(permits);
        let permit = limits.acquire("xero", 8, soon()).await.expect("place");
        permit.throttled();
        assert_eq!(limits.loads()[0].limit, 2, "a 429 after the decrease halves again");
        assert_eq!(limits.loads()[0].lowest_limit, 2);
        // Additive increase, 1/limit per success: about one place per
        // limit's worth of successes (2 → 3 in three, 3 → 4 in four more).
        for _ in 0..3 {
            permit.succeeded();
        }
        assert_eq!(limits.loads()[0].limit, 3);
        for _ in 0..4 {
            permit.succeeded();
        }
        assert_eq!(limits.loads()[0].limit, 4);
        assert_eq!(limits.loads()[0].throttled, 9);
    }

    #[tokio::test]
    async fn a_freed_place_wakes_a_waiter() {
        let limits = Arc::new(ProviderLimits::new(1));
        let first = limits.acquire("google", 1, soon()).await.expect("place");
        let waiter = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.acquire("google", 1, soon()).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiter.await.expect("task"), "the waiter got the freed place");
    }

    #[tokio::test]
    async fn a_freed_place_goes_to_the_longest_waiter_not_a_newcomer() {
        // Thousands of due Exact connections may wait for its cap: each freed
        // place goes to the one that waited longest, so none starves while
        // later ones (or a refresh that just arrived) go ahead.
        let limits = Arc::new(ProviderLimits::new(1));
        let first = limits.acquire("exact", 1, soon()).await.expect("place");
        let (order, mut waiters) = (Arc::new(Mutex::new(Vec::new())), Vec::new());
        for n in 0..3 {
            let (limits, order) = (Arc::clone(&limits), Arc::clone(&order));
            waiters.push(tokio::spawn(async move {
                let permit = limits.acquire("exact", 1, soon()).await.expect("place");
                order.lock().expect("order").push(n);
                tokio::task::yield_now().await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(first);
        assert!(
            limits.try_acquire("exact", 1).is_none(),
            "a newcomer does not take a waiter's place"
        );
        for waiter in waiters {
            waiter.await.expect("waiter");
        }
        assert_eq!(*order.lock().expect("order"), vec![0, 1, 2], "in the order they came");
    }

    #[tokio::test]
    async fn a_refresh_back_from_its_providers_wait_goes_before_newly_due_ones() {
        // One place in the run. A refresh gives it back to wait for its
        // provider's cap; a newly due refresh takes it, another queues.
        // When the first has its provider's place, the next freed run
        // place is its, not the queued newcomer's: it holds one of its
        // provider's few places and must not wait behind the run's backlog.
        let places = RunPlaces::new(1);
        let returning = Arc::new(RunPlace::take(Arc::clone(&places)).await.expect("a place"));
        returning.give_back();
        let newcomer = RunPlace::take(Arc::clone(&places)).await.expect("the freed place");
        let queued = tokio::spawn(RunPlace::take(Arc::clone(&places)));
        tokio::task::yield_now().await;
        let back = {
            let returning = Arc::clone(&returning);
            tokio::spawn(async move { returning.retake().await })
        };
        tokio::task::yield_now().await;
        drop(newcomer);
        // A bound only so that the old behaviour fails instead of hanging.
        tokio::time::timeout(Duration::from_secs(10), back)
            .await
            .expect("the returning refresh has the freed place")
            .expect("task");
        assert!(!queued.is_finished(), "the newcomer still waits");
        drop(returning);
        let place = queued.await.expect("task").expect("then the newcomer's turn");
        assert_eq!(places.places.available_permits(), 0, "one place, held once");
        drop(place);
        assert_eq!(places.places.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_place_released_after_the_answer_is_freed_once() {
        let limits = ProviderLimits::new(1);
        let answered = limits.try_acquire("xero", 1).expect("place");
        answered.release();
        let next = limits.try_acquire("xero", 1).expect("the released place");
        drop(answered);
        assert!(
            limits.try_acquire("xero", 1).is_none(),
            "dropping it later frees nothing more"
        );
        assert_eq!(limits.loads()[0].peak_in_flight, 1);
        drop(next);
    }

    #[tokio::test]
    async fn a_decrease_while_every_place_is_in_flight_takes_effect_as_they_return() {
        let limits = ProviderLimits::new(1);
        let held: Vec<_> = (0..4)
            .map(|_| limits.try_acquire("google", 4).expect("place"))
            .collect();
        held[0].throttled();
        assert_eq!(limits.loads()[0].limit, 2);
        drop(held);
        let again: Vec<_> = (0..3).filter_map(|_| limits.try_acquire("google", 4)).collect();
        assert_eq!(again.len(), 2, "two of the four returned places were forgotten");
    }
}
