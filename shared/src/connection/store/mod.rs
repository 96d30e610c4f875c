//! The connections table in DynamoDB: every read and every token write.
//!
//! Each write is conditional. A write that loses its condition comes back as
//! [`Write::Conflict`] with the item as it is now (DynamoDB's
//! `ReturnValuesOnConditionCheckFailure`), so the caller decides from facts,
//! not guesses: "was that my commit whose response got lost?" is answered by
//! the `commit_id` in the returned item.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

mod read;
mod refresh;
mod shard_lease;

pub use read::{DueCursor, DuePage};
pub use shard_lease::ShardLease;

use super::clock::ServerClock;
use super::{Connection, ConnectionId, ConnectionKind, DUE_SHARDS, Lease, Sealed, Status, now_ms};
use crate::dynamo::{Conditional, Item, OpCounts, StoreError, n, s, sdk_failure};

/// The result of a conditional write.
#[derive(Debug)]
pub enum Write {
    Done,
    /// The condition did not hold; the item as it is now, when it exists.
    Conflict(Option<Box<Connection>>),
}

/// The tokens of a successful login, sealed, for [`ConnectionStore::save_login`].
#[derive(Debug, Clone)]
pub struct NewLogin {
    pub id: ConnectionId,
    pub provider: String,
    pub kind: ConnectionKind,
    pub access_token: Sealed,
    /// `None` removes the refresh token the connection had, if any.
    pub refresh_token: Option<Sealed>,
    pub access_expires_at: i64,
    pub scopes: Vec<String>,
    pub refresh_due_at: i64,
    pub instance_url: Option<String>,
    pub api_domain: Option<String>,
    /// Parameters learned at login (replacing the old ones).
    pub params: std::collections::BTreeMap<String, String>,
    /// Why a parameter could not be learned.
    pub param_error: Option<String>,
}

/// What [`ConnectionStore::take_due_lease`] came to.
#[derive(Debug)]
pub enum DueLease {
    /// The lease is the caller's: the item with it.
    Taken(Box<Connection>),
    /// The item was not due for a refresh by this caller (or someone holds
    /// its lease): the item as it is, when it exists.
    Refused(Option<Box<Connection>>),
}

/// A refreshed token set, sealed, for [`ConnectionStore::commit`].
#[derive(Debug, Clone)]
pub struct Commit {
    pub id: ConnectionId,
    /// The version the lease was taken on; the commit writes `seen_version + 1`.
    pub seen_version: u64,
    pub owner: String,
    pub commit_id: String,
    pub access_token: Sealed,
    /// `None` when the provider returned no new refresh token: the old one stays.
    pub refresh_token: Option<Sealed>,
    pub access_expires_at: i64,
    pub scopes: Option<Vec<String>>,
    pub refresh_due_at: i64,
    pub instance_url: Option<String>,
}

/// The connections table.
#[derive(Debug, Clone)]
pub struct ConnectionStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    ops: Arc<OpCounts>,
    clock: ServerClock,
    refresh_shards: u32,
}

/// The index of the connections table by provider (keys only), for the API's listing.
pub const PROVIDER_INDEX: &str = "by-provider";

const LEASE_FIELDS: &str = "lease_owner, lease_until, lease_taken_at";
/// A refresh whose outcome is unknown: when it was first sent, and when its one resend was.
const UNKNOWN_FIELDS: &str = "outcome_unknown_since, outcome_unknown_resent_at";

fn b(value: &Sealed) -> AttributeValue {
    AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(value.0.clone()))
}

impl ConnectionStore {
    /// The store reads DynamoDB's clock from every response (see
    /// [`ServerClock`]) through an interceptor added to `client`'s config.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> ConnectionStore {
        let clock = ServerClock::default();
        let client =
            aws_sdk_dynamodb::Client::from_conf(client.config().to_builder().interceptor(clock.clone()).build());
        ConnectionStore {
            client,
            table: table.into(),
            ops: Arc::new(OpCounts::default()),
            clock,
            refresh_shards: DUE_SHARDS,
        }
    }

    /// Writes each connection's refresh-due entry into one of `shards`
    /// shards (the stack's `RefreshShards`; [`DUE_SHARDS`] when not given).
    /// Every writer of one deployment must use the same count or fewer: the
    /// refresher reads shards `0..RefreshShards`, so an entry written to a
    /// shard beyond it would never be found.
    pub fn with_refresh_shards(mut self, shards: u32) -> ConnectionStore {
        self.refresh_shards = shards.max(1);
        self
    }

    /// The shard of the refresh-due index `id`'s entry goes to.
    pub(crate) fn refresh_shard(&self, id: &ConnectionId) -> String {
        id.shard_of(self.refresh_shards).to_string()
    }

    /// How far our clock is from DynamoDB's, as last measured.
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn ops(&self) -> &OpCounts {
        &self.ops
    }

    fn fail<E>(
        &self,
        operation: &'static str,
        error: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    ) -> StoreError
    where
        aws_sdk_dynamodb::Error: From<SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>>,
    {
        sdk_failure(operation, &self.table, error)
    }

    /// An `UpdateItem` on the connection `id`, to be given its expressions.
    fn update(&self, id: &ConnectionId) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id.as_str()))
    }

    /// A strongly consistent read: the protocol never decides on stale data.
    pub async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.ops.reads.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.fail("GetItem", e))?;
        output.item.map(from_item).transpose()
    }

    /// Stores the tokens of a login: creates the connection at version 1, or
    /// gives an existing one (same id, same provider) new tokens at the next
    /// version, active again whatever its status was. A login without a
    /// refresh token removes the old one: it may belong to another account.
    ///
    /// `Ok(None)`, and nothing written, when the connection was revoked at or
    /// after `link_issued_at` (epoch ms, when the login's connect link was
    /// made): a login in flight cannot undo a revoke. The write is conditional
    /// on the version read, and a revoke raises the version, so a revoke
    /// landing between the read and the write sends this round again and is
    /// seen.
    pub async fn save_login(
        &self,
        login: &NewLogin,
        link_issued_at: Option<i64>,
    ) -> Result<Option<Connection>, StoreError> {
        for _ in 0..8 {
            let now = now_ms();
            let existing = self.get(&login.id).await?;
            if let Some(current) = &existing
                && current.provider != login.provider
            {
                return Err(StoreError::OtherProvider {
                    id: login.id.to_string(),
                    existing: current.provider.clone(),
                    requested: login.provider.clone(),
                });
            }
            if let (Some(current), Some(issued)) = (&existing, link_issued_at)
                && current.revoked_at.is_some_and(|revoked| revoked >= issued)
            {
                return Ok(None);
            }
            let written = self
                .write_login(login, existing.as_ref().map(|c| c.token_version), now)
                .await?;
            if let Write::Done = written
                && let Some(connection) = self.get(&login.id).await?
            {
                return Ok(Some(connection));
            }
        }
        Err(StoreError::Malformed {
            id: login.id.to_string(),
            reason: "the login kept losing to concurrent writes".into(),
        })
    }

    /// One conditional UpdateItem for both cases: `seen` is the version of the
    /// existing connection (same provider), or `None` to create it at version 1.
    ///
    /// One function: the one conditional write of a login, its expression built
    /// a field at a time.
    async fn write_login(&self, login: &NewLogin, seen: Option<u64>, now: i64) -> Result<Write, StoreError> {
        let mut set = vec![
            "provider = :provider",
            "kind = :kind",
            "#status = :active",
            "access_token = :access",
            "access_expires_at = :expires",
            "scopes = :scopes",
            "token_version = :next",
            "consecutive_failures = :zero",
            "due_shard = :shard",
            "refresh_due_at = :due",
            "last_refresh_at = :now",
            "updated_at = :now",
            "created_at = if_not_exists(created_at, :now)",
        ];
        let mut remove = vec![
            "status_reason",
            "provider_message",
            "lease_owner",
            "lease_until",
            "lease_taken_at",
            "next_attempt_at",
            "outcome_unknown_since",
            "outcome_unknown_resent_at",
        ];
        let mut request = self
            .update(&login.id)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":provider", s(&login.provider))
            .expression_attribute_values(":kind", s(login.kind.as_str()))
            .expression_attribute_values(":active", s(Status::Active.as_str()))
            .expression_attribute_values(":access", b(&login.access_token))
            .expression_attribute_values(":expires", n(login.access_expires_at))
            .expression_attribute_values(":scopes", s(&login.scopes.join(" ")))
            .expression_attribute_values(":next", n(seen.unwrap_or(0) + 1))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":shard", s(&self.refresh_shard(&login.id)))
            .expression_attribute_values(":due", n(login.refresh_due_at))
            .expression_attribute_values(":now", n(now));
        match &login.refresh_token {
            Some(refresh) => {
                set.push("refresh_token = :refresh");
                request = request.expression_attribute_values(":refresh", b(refresh));
            }
            None => remove.push("refresh_token"),
        }
        // Set when the token response had them, removed when it did not.
        for (assignment, key, value) in [
            ("instance_url = :instance_url", "instance_url", &login.instance_url),
            ("api_domain = :api_domain", "api_domain", &login.api_domain),
        ] {
            match value {
                Some(value) => {
                    set.push(assignment);
                    request = request.expression_attribute_values(format!(":{key}"), s(value));
                }
                None => remove.push(key),
            }
        }
        if login.params.is_empty() {
            remove.push("params");
        } else {
            set.push("params = :params");
            let map = login.params.iter().map(|(k, v)| (k.clone(), s(v))).collect();
            request = request.expression_attribute_values(":params", AttributeValue::M(map));
        }
        match &login.param_error {
            Some(error) => {
                set.push("param_error = :param_error");
                request = request.expression_attribute_values(":param_error", s(error));
            }
            None => remove.push("param_error"),
        }
        request = match seen {
            None => request.condition_expression("attribute_not_exists(id)"),
            Some(seen) => request
                .condition_expression("token_version = :seen AND provider = :provider")
                .expression_attribute_values(":seen", n(seen)),
        };
        let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        self.conditional_update("UpdateItem(login)", request.update_expression(update), never)
            .await
    }

    /// A conditional update of a connection, read through
    /// [`crate::dynamo::conditional`]: a retry that met the write its lost
    /// answer came from is [`Write::Done`] when `ours` recognises that write
    /// in the item as it is now; any other refusal is [`Write::Conflict`]
    /// with the item.
    async fn conditional_update(
        &self,
        operation: &'static str,
        request: UpdateItemFluentBuilder,
        ours: impl FnOnce(&Connection) -> bool,
    ) -> Result<Write, StoreError> {
        self.ops.writes.fetch_add(1, Ordering::Relaxed);
        let sent = request
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let ours = |item: &Item| from_item(item.clone()).is_ok_and(|now| ours(&now));
        match crate::dynamo::conditional(sent, operation, &self.table, ours)? {
            Conditional::Done => Ok(Write::Done),
            Conditional::Refused(item) => Ok(Write::Conflict(item.map(from_item).transpose()?.map(Box::new))),
        }
    }
}

/// The lease write of `owner` on version `seen` as it shows in the item: a
/// lease write that "failed" only because an earlier try of the same request
/// (the SDK's retry after a lost answer) already made it.
pub(crate) fn holds_lease(now: &Connection, seen: u64, owner: &str) -> bool {
    now.token_version == seen && now.lease.as_ref().is_some_and(|l| l.owner == owner)
}

/// Writes that no later state can be told apart by: never "ours".
fn never(_: &Connection) -> bool {
    false
}

/// One function: one line per attribute of the item.
fn from_item(item: HashMap<String, AttributeValue>) -> Result<Connection, StoreError> {
    let id_text = match item.get("id") {
        Some(AttributeValue::S(id)) => id.clone(),
        _ => {
            return Err(StoreError::Malformed {
                id: "?".into(),
                reason: "no id".into(),
            });
        }
    };
    let malformed = |reason: String| StoreError::Malformed {
        id: id_text.clone(),
        reason,
    };
    let id = ConnectionId::parse(&id_text).map_err(|e| malformed(e.to_string()))?;
    let text = |key: &str| match item.get(key) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let number = |key: &str| -> Result<Option<i64>, StoreError> {
        match item.get(key) {
            Some(AttributeValue::N(v)) => v
                .parse()
                .map(Some)
                .map_err(|_| malformed(format!("{key} is not a number"))),
            None => Ok(None),
            Some(_) => Err(malformed(format!("{key} is not a number"))),
        }
    };
    let sealed = |key: &str| match item.get(key) {
        Some(AttributeValue::B(blob)) => Some(Sealed(blob.clone().into_inner())),
        _ => None,
    };
    let required = |key: &str| text(key).ok_or_else(|| malformed(format!("no {key}")));
    let lease = match (text("lease_owner"), number("lease_until")?) {
        (Some(owner), Some(until)) => Some(Lease {
            owner,
            until,
            taken_at: number("lease_taken_at")?.unwrap_or(until),
        }),
        _ => None,
    };
    let count = |key: &str| -> Result<u64, StoreError> {
        number(key)?.map_or(Ok(0), |v| {
            u64::try_from(v).map_err(|_| malformed(format!("{key} is negative")))
        })
    };
    Ok(Connection {
        provider: required("provider")?,
        kind: ConnectionKind::parse(&required("kind")?).ok_or_else(|| malformed("unknown kind".into()))?,
        status: Status::parse(&required("status")?).ok_or_else(|| malformed("unknown status".into()))?,
        status_reason: text("status_reason"),
        provider_message: text("provider_message"),
        access_token: sealed("access_token"),
        refresh_token: sealed("refresh_token"),
        access_expires_at: number("access_expires_at")?,
        scopes: text("scopes")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        token_version: count("token_version")?,
        lease,
        commit_id: text("commit_id"),
        last_refresh_at: number("last_refresh_at")?,
        last_refresh_outcome: text("last_refresh_outcome"),
        consecutive_failures: u32::try_from(count("consecutive_failures")?).unwrap_or(u32::MAX),
        next_attempt_at: number("next_attempt_at")?,
        outcome_unknown_since: number("outcome_unknown_since")?,
        outcome_unknown_resent_at: number("outcome_unknown_resent_at")?,
        refresh_due_at: number("refresh_due_at")?,
        instance_url: text("instance_url"),
        api_domain: text("api_domain"),
        params: match item.get("params") {
            Some(AttributeValue::M(map)) => map
                .iter()
                .filter_map(|(k, v)| match v {
                    AttributeValue::S(v) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            _ => std::collections::BTreeMap::new(),
        },
        param_error: text("param_error"),
        created_at: number("created_at")?.unwrap_or_default(),
        updated_at: number("updated_at")?.unwrap_or_default(),
        revoked_at: number("revoked_at")?,
        id,
    })
}
