//! The shared rate budget of a provider's rate key (Exact Online: app +
//! division): one item in the sync-state table that every job, invocation,
//! the CLI and the proxy draw on, so that together they stay under the
//! provider's limits (windows, `Retry-After`, the error budget).
//!
//! The item is `id = "rate#{key}"` with the [`RateState`] as JSON in `state`,
//! a `version` and `updated_at`. It has no `due_shard` or `next_run_at`, so
//! it is never in the `sync-due` index. Every change is a consistent read,
//! the pure [`RateState`] function, and a `PutItem` conditional on the
//! version read (`attribute_not_exists(id)` for the first); a lost race or a
//! transient DynamoDB error is tried again, a bounded number of times with
//! jittered backoff, and every call has a timeout.
//!
//! The order of one request: [`RateBudget::draw`] → (if [`Draw::Go`]) send →
//! [`RateBudget::observe`] with the ticket and the [`Answer`] (or
//! [`Answer::lost`] when none came); a drawn request that is never sent goes
//! back with [`RateBudget::cancel`].

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use tracing::warn;

use super::rate::{Answer, Draw, POLL_MS, RateState, Ticket};
use crate::backoff::jitter;
use crate::connection::now_ms;
use crate::dynamo::{Conditional, StoreError, conditional, n, s, sdk_failure};

/// How long one DynamoDB call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries at a draw; after that many lost races the caller is told to wait a moment.
const DRAW_ATTEMPTS: u32 = 8;
/// Tries at recording an answer (it carries the error count: worth more tries).
const OBSERVE_ATTEMPTS: u32 = 16;
const BASE_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// Why the budget could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every try lost its conditional write to another writer of the key.
    #[error("rate budget `{key}`: all {attempts} conditional writes lost to other writers")]
    Contended { key: String, attempts: u32 },
}

impl BudgetError {
    /// Worth trying again later.
    pub fn is_transient(&self) -> bool {
        match self {
            BudgetError::Store(e) => e.is_transient(),
            BudgetError::Contended { .. } => true,
        }
    }
}

/// The shared budgets in the sync-state table.
#[derive(Debug, Clone)]
pub struct RateBudget {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The item's id for a rate key.
pub fn budget_id(key: &str) -> String {
    format!("rate#{key}")
}

/// One try: what the change gave, or that its write lost the race.
enum Tried<T> {
    Done(T),
    Lost,
}

impl RateBudget {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> RateBudget {
        RateBudget {
            client,
            table: table.into(),
        }
    }

    /// Before a request on `key`: when every known window has a request left
    /// and neither `Retry-After` nor the error budget says stop, reserves
    /// one in every window and returns [`Draw::Go`] with the ticket for
    /// [`RateBudget::observe`]. Otherwise nothing is reserved or written.
    /// When every try lost to other drawers, the answer is to wait a moment.
    pub async fn draw(&self, key: &str, error_budget_per_hour: Option<u64>) -> Result<Draw, BudgetError> {
        let drawn = self
            .change(key, DRAW_ATTEMPTS, |state, now| {
                let draw = state.draw(now, error_budget_per_hour);
                (draw, matches!(draw, Draw::Go(_)))
            })
            .await;
        match drawn {
            Err(BudgetError::Contended { key, attempts }) => {
                warn!(key, attempts, "the rate budget is contended; waiting a moment");
                let wait = jitter(Duration::from_millis(u64::try_from(POLL_MS).unwrap_or(100) * 2));
                Ok(Draw::WaitUntil(
                    now_ms() + i64::try_from(wait.as_millis()).unwrap_or(POLL_MS),
                ))
            }
            other => other,
        }
    }

    /// After the request drawn as `ticket` (any status, or
    /// [`Answer::lost`]): folds its window headers, a `Retry-After` and (a
    /// 4xx other than 429) one error into the shared budget.
    pub async fn observe(&self, key: &str, ticket: Ticket, answer: &Answer) -> Result<(), BudgetError> {
        self.change(key, OBSERVE_ATTEMPTS, |state, now| {
            state.answer(ticket, answer, now);
            ((), true)
        })
        .await
    }

    /// The request drawn as `ticket` was never sent: its reservation goes back.
    pub async fn cancel(&self, key: &str, ticket: Ticket) -> Result<(), BudgetError> {
        self.change(key, OBSERVE_ATTEMPTS, |state, now| {
            state.cancel(ticket, now);
            ((), true)
        })
        .await
    }

    /// The budget as stored (status output); `None` before the first draw.
    pub async fn get(&self, key: &str) -> Result<Option<RateState>, BudgetError> {
        Ok(self.read(&budget_id(key)).await?.map(|(state, _)| state))
    }

    /// Read → `apply` → conditional write, until a write holds (`apply`'s
    /// `false`: nothing to write). Lost races and transient errors are tried
    /// again with jittered exponential backoff, `attempts` times in all.
    async fn change<T>(
        &self,
        key: &str,
        attempts: u32,
        mut apply: impl FnMut(&mut RateState, i64) -> (T, bool),
    ) -> Result<T, BudgetError> {
        let id = budget_id(key);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_once(&id, &mut apply).await {
                Ok(Tried::Done(value)) => return Ok(value),
                Ok(Tried::Lost) if attempt >= attempts => {
                    return Err(BudgetError::Contended {
                        key: key.to_owned(),
                        attempts,
                    });
                }
                Err(e) if !e.is_transient() || attempt >= attempts => return Err(e.into()),
                Ok(Tried::Lost) | Err(_) => {}
            }
            tokio::time::sleep(crate::backoff::exponential(BASE_BACKOFF, MAX_BACKOFF, attempt + 1)).await;
        }
    }

    async fn try_once<T>(
        &self,
        id: &str,
        apply: &mut impl FnMut(&mut RateState, i64) -> (T, bool),
    ) -> Result<Tried<T>, StoreError> {
        let (mut state, version) = self.read(id).await?.unwrap_or_default();
        let (value, write) = apply(&mut state, now_ms());
        if !write {
            return Ok(Tried::Done(value));
        }
        let json = serde_json::to_string(&state).map_err(|e| malformed(id, &e.to_string()))?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("id", s(id))
            .item("state", s(&json))
            .item("version", n(version + 1))
            .item("updated_at", n(now_ms()));
        put = if version == 0 {
            put.condition_expression("attribute_not_exists(id)")
        } else {
            put.condition_expression("version = :version")
                .expression_attribute_values(":version", n(version))
        };
        let sent = tokio::time::timeout(CALL_TIMEOUT, put.send())
            .await
            .map_err(|_| StoreError::TimedOut {
                operation: "PutItem(rate budget)",
            })?;
        // Refused: another caller wrote first (a lost answer of our own
        // write reads the same way; its ticket expires on its own).
        Ok(
            match conditional(sent, "PutItem(rate budget)", &self.table, |_| false)? {
                Conditional::Done => Tried::Done(value),
                Conditional::Refused(_) => Tried::Lost,
            },
        )
    }

    /// The stored state and its version, read consistently.
    async fn read(&self, id: &str) -> Result<Option<(RateState, u64)>, StoreError> {
        let get = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id))
            .consistent_read(true)
            .send();
        let output = tokio::time::timeout(CALL_TIMEOUT, get)
            .await
            .map_err(|_| StoreError::TimedOut {
                operation: "GetItem(rate budget)",
            })?
            .map_err(|e| sdk_failure("GetItem(rate budget)", &self.table, e))?;
        output.item.map(|item| from_item(id, &item)).transpose()
    }
}

fn malformed(id: &str, reason: &str) -> StoreError {
    StoreError::Malformed {
        id: id.to_owned(),
        reason: reason.to_owned(),
    }
}

fn from_item(id: &str, item: &HashMap<String, AttributeValue>) -> Result<(RateState, u64), StoreError> {
    let version = item
        .get("version")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| malformed(id, "no version"))?;
    let state = match item.get("state").and_then(|v| v.as_s().ok()) {
        Some(json) => serde_json::from_str(json).map_err(|e| malformed(id, &format!("state: {e}")))?,
        None => RateState::default(),
    };
    Ok((state, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_back_and_a_bad_one_is_named() {
        let mut item = HashMap::new();
        item.insert("id".to_owned(), s("rate#k"));
        item.insert("version".to_owned(), n(3));
        item.insert("state".to_owned(), s(r#"{"windows":[],"last_ticket":7,"probed":true}"#));
        let (state, version) = from_item("rate#k", &item).unwrap();
        assert_eq!((state.last_ticket, state.probed, version), (7, true, 3));
        item.remove("version");
        assert!(matches!(
            from_item("rate#k", &item),
            Err(StoreError::Malformed { id, .. }) if id == "rate#k"
        ));
        assert_eq!(budget_id("app:3155812"), "rate#app:3155812");
    }
}
