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

use super::clock::ServerClock;
use super::{Connection, ConnectionId, ConnectionKind, Lease, Sealed, Status, now_ms};
use crate::dynamo::{Conditional, Item, OpCounts, StoreError, batch_get, n, s, sdk_failure};

/// The result of a conditional write.
#[derive(Debug)]
pub enum Write {
    Done,
    /// The condition did not hold; the item as it is now, when it exists.
    Conflict(Option<Box<Connection>>),
}

/// One page of the refresh-due index, from [`ConnectionStore::due`].
#[derive(Debug)]
pub struct DuePage {
    pub ids: Vec<ConnectionId>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<DueCursor>,
}

/// An opaque position in the refresh-due index (DynamoDB's `LastEvaluatedKey`:
/// ids and due times only, nothing secret).
#[derive(Debug, Clone)]
pub struct DueCursor(HashMap<String, AttributeValue>);

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
        }
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
            .expression_attribute_values(":shard", s(&login.id.due_shard()))
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

    /// Takes the refresh lease, if the version is still `seen` and nobody holds
    /// a lease. An expired lease is not free: its holder may have sent the
    /// refresh, so it goes through [`ConnectionStore::take_over_lease`].
    /// Takes the refresh lease on the item as it was `read`: the same
    /// version and status, no lease, and the same record of an unknown send
    /// (so a plan made from the read cannot meet a record written since).
    /// With `resend`, the lease is taken to resend that unknown send, and the
    /// item records that the one resend is being spent. An expired lease is
    /// not free: its holder may have sent the refresh, so it goes through
    /// [`ConnectionStore::take_over_lease`].
    pub async fn take_lease(
        &self,
        read: &Connection,
        owner: &str,
        now: i64,
        until: i64,
        resend: bool,
    ) -> Result<Write, StoreError> {
        let spend = if resend {
            ", outcome_unknown_resent_at = :now"
        } else {
            ""
        };
        let mut condition = vec![
            "token_version = :seen",
            "#status = :status",
            "attribute_not_exists(lease_owner)",
        ];
        let mut request = self
            .update(&read.id)
            .update_expression(format!(
                "SET lease_owner = :me, lease_until = :until, lease_taken_at = :now{spend}"
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":seen", n(read.token_version))
            .expression_attribute_values(":status", s(read.status.as_str()));
        for (value, equal, absent, placeholder) in [
            (
                read.outcome_unknown_since,
                "outcome_unknown_since = :since",
                "attribute_not_exists(outcome_unknown_since)",
                ":since",
            ),
            (
                read.outcome_unknown_resent_at,
                "outcome_unknown_resent_at = :resent",
                "attribute_not_exists(outcome_unknown_resent_at)",
                ":resent",
            ),
        ] {
            match value {
                Some(value) => {
                    condition.push(equal);
                    request = request.expression_attribute_values(placeholder, n(value));
                }
                None => condition.push(absent),
            }
        }
        let request = request.condition_expression(condition.join(" AND "));
        self.conditional_update("UpdateItem(lease)", request, |now| {
            holds_lease(now, read.token_version, owner)
        })
        .await
    }

    /// Gives back the caller's own lease when nothing was sent under it (a
    /// take whose answer was an error although it landed, a revocation the
    /// provider could not do right now), unspending a resend it may have
    /// marked; nothing else changes.
    pub async fn release_unused_lease(&self, id: &ConnectionId, seen: u64, owner: &str) -> Result<Write, StoreError> {
        let request = self
            .update(id)
            .update_expression(format!("REMOVE {LEASE_FIELDS}, outcome_unknown_resent_at"))
            .condition_expression("token_version = :seen AND lease_owner = :me")
            .expression_attribute_values(":seen", n(seen))
            .expression_attribute_values(":me", s(owner));
        self.conditional_update("UpdateItem(release unused lease)", request, never)
            .await
    }

    /// Takes over a lease whose holder vanished after it may have sent the
    /// refresh, remembering when that send happened (`outcome_unknown_since`).
    /// With `resend`, the taker is about to resend it and records that the one
    /// resend is being spent. `stale_before` is the latest lease end that
    /// counts as abandoned (now minus the clock-skew margin).
    #[allow(clippy::too_many_arguments)]
    pub async fn take_over_lease(
        &self,
        id: &ConnectionId,
        seen: u64,
        abandoned: &Lease,
        owner: &str,
        now: i64,
        until: i64,
        stale_before: i64,
        resend: bool,
    ) -> Result<Write, StoreError> {
        let spend = if resend {
            ", outcome_unknown_resent_at = :now"
        } else {
            ""
        };
        let request = self
            .update(id)
            .update_expression(format!(
                "SET lease_owner = :me, lease_until = :until, lease_taken_at = :now, \
                 outcome_unknown_since = if_not_exists(outcome_unknown_since, :sent){spend}"
            ))
            .condition_expression("token_version = :seen AND lease_owner = :old AND lease_until < :stale")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":stale", n(stale_before))
            .expression_attribute_values(":sent", n(abandoned.taken_at))
            .expression_attribute_values(":seen", n(seen))
            .expression_attribute_values(":old", s(&abandoned.owner));
        self.conditional_update("UpdateItem(take over lease)", request, |now| {
            holds_lease(now, seen, owner)
        })
        .await
    }

    /// Extends the caller's own lease to resend a refresh whose outcome is
    /// unknown: records when the first send left (`first_sent_at`) and that
    /// the one resend is being spent, before it is sent.
    pub async fn extend_lease_to_resend(
        &self,
        id: &ConnectionId,
        seen: u64,
        owner: &str,
        until: i64,
        first_sent_at: i64,
    ) -> Result<Write, StoreError> {
        let request = self
            .update(id)
            .update_expression(
                "SET lease_until = :until, outcome_unknown_since = if_not_exists(outcome_unknown_since, :first), \
                 outcome_unknown_resent_at = :now",
            )
            .condition_expression("token_version = :seen AND lease_owner = :me")
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":first", n(first_sent_at))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":seen", n(seen))
            .expression_attribute_values(":me", s(owner));
        self.conditional_update("UpdateItem(extend lease)", request, never)
            .await
    }

    /// Commits a refreshed token set: version + 1, lease released, failures cleared.
    pub async fn commit(&self, commit: &Commit) -> Result<Write, StoreError> {
        let now = now_ms();
        let mut set = vec![
            "access_token = :access",
            "access_expires_at = :expires",
            "token_version = :next",
            "commit_id = :commit",
            "last_refresh_at = :now",
            "last_refresh_outcome = :ok",
            "consecutive_failures = :zero",
            "refresh_due_at = :due",
            "due_shard = :shard",
            "updated_at = :now",
        ];
        let mut request = self
            .update(&commit.id)
            .expression_attribute_values(":access", b(&commit.access_token))
            .expression_attribute_values(":expires", n(commit.access_expires_at))
            .expression_attribute_values(":seen", n(commit.seen_version))
            .expression_attribute_values(":next", n(commit.seen_version + 1))
            .expression_attribute_values(":commit", s(&commit.commit_id))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ok", s("ok"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":due", n(commit.refresh_due_at))
            .expression_attribute_values(":shard", s(&commit.id.due_shard()))
            .expression_attribute_values(":me", s(&commit.owner));
        if let Some(refresh) = &commit.refresh_token {
            set.push("refresh_token = :refresh");
            request = request.expression_attribute_values(":refresh", b(refresh));
        }
        if let Some(scopes) = &commit.scopes {
            set.push("scopes = :scopes");
            request = request.expression_attribute_values(":scopes", s(&scopes.join(" ")));
        }
        if let Some(instance_url) = &commit.instance_url {
            set.push("instance_url = :instance_url");
            request = request.expression_attribute_values(":instance_url", s(instance_url));
        }
        let update = format!(
            "SET {} REMOVE {LEASE_FIELDS}, next_attempt_at, {UNKNOWN_FIELDS}",
            set.join(", ")
        );
        let request = request
            .update_expression(update)
            .condition_expression("token_version = :seen AND lease_owner = :me");
        self.conditional_update("UpdateItem(commit)", request, |now| {
            now.commit_id.as_deref() == Some(commit.commit_id.as_str())
        })
        .await
    }

    /// Releases the lease after a refresh that did not happen (the provider
    /// was down or refused), recording the failure and when to try again, and
    /// keeping (`Some`) or clearing (`None`) the time of an earlier send whose
    /// outcome is unknown. A resend that did not happen is not spent: its
    /// mark is removed.
    #[allow(clippy::too_many_arguments)]
    pub async fn release_after_failure(
        &self,
        id: &ConnectionId,
        seen: u64,
        owner: &str,
        outcome: &str,
        failures: u32,
        next_attempt_at: i64,
        unknown_since: Option<i64>,
    ) -> Result<Write, StoreError> {
        let (unknown_set, unknown_remove) = match unknown_since {
            Some(_) => (
                ", outcome_unknown_since = :unknown",
                ", outcome_unknown_resent_at".to_owned(),
            ),
            None => ("", format!(", {UNKNOWN_FIELDS}")),
        };
        let mut request = self
            .update(id)
            .update_expression(format!(
                "SET last_refresh_outcome = :outcome, consecutive_failures = :failures, next_attempt_at = :next, \
                 refresh_due_at = :next, updated_at = :now{unknown_set} REMOVE {LEASE_FIELDS}{unknown_remove}"
            ))
            .condition_expression("token_version = :seen AND lease_owner = :me")
            .expression_attribute_values(":outcome", s(outcome))
            .expression_attribute_values(":failures", n(failures))
            .expression_attribute_values(":next", n(next_attempt_at))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":seen", n(seen))
            .expression_attribute_values(":me", s(owner));
        if let Some(sent_at) = unknown_since {
            request = request.expression_attribute_values(":unknown", n(sent_at));
        }
        self.conditional_update("UpdateItem(release)", request, never).await
    }

    /// Moves the connection to `needs_reauth` (out of the refresh-due index),
    /// if the version is still `seen` and the caller holds the lease.
    pub async fn mark_needs_reauth(
        &self,
        id: &ConnectionId,
        seen: u64,
        owner: &str,
        reason: &str,
        message: &str,
    ) -> Result<Write, StoreError> {
        let request = self
            .update(id)
            .update_expression(format!(
                "SET #status = :needs, status_reason = :reason, provider_message = :message, \
                 last_refresh_outcome = :reason, updated_at = :now REMOVE {LEASE_FIELDS}, due_shard, refresh_due_at"
            ))
            .condition_expression("token_version = :seen AND lease_owner = :me")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":needs", s(Status::NeedsReauth.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":message", s(message))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":seen", n(seen))
            .expression_attribute_values(":me", s(owner));
        self.conditional_update("UpdateItem(needs_reauth)", request, never)
            .await
    }

    /// Marks the connection revoked and erases its tokens, if the version is
    /// still `seen` and the caller holds the lease (no refresh is in flight).
    pub async fn mark_revoked(&self, id: &ConnectionId, seen: u64, owner: &str) -> Result<Write, StoreError> {
        let request = self
            .update(id)
            .update_expression(format!(
                "SET #status = :revoked, token_version = :next, updated_at = :now, revoked_at = :now \
                 REMOVE access_token, refresh_token, access_expires_at, due_shard, refresh_due_at, {LEASE_FIELDS}, \
                 status_reason, provider_message, next_attempt_at, {UNKNOWN_FIELDS}"
            ))
            .condition_expression("token_version = :seen AND lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":revoked", s(Status::Revoked.as_str()))
            .expression_attribute_values(":seen", n(seen))
            .expression_attribute_values(":next", n(seen + 1))
            .expression_attribute_values(":now", n(now_ms()));
        self.conditional_update("UpdateItem(revoke)", request, never).await
    }

    /// Writes tokens re-encrypted under another key (`oauth-sync keys
    /// reseal`): the same tokens, so `token_version` and everything else stay
    /// as they are. Only if the item is still as `read`: the same version and
    /// the exact sealed bytes of both tokens. A refresh, login or revoke that
    /// landed meanwhile wins; the caller gets [`Write::Conflict`] with the
    /// item as it is now. `None` leaves that token as it is.
    pub async fn reseal(
        &self,
        read: &Connection,
        access_token: Option<&Sealed>,
        refresh_token: Option<&Sealed>,
    ) -> Result<Write, StoreError> {
        let mut set = Vec::new();
        let mut condition = vec!["token_version = :seen"];
        let mut request = self
            .update(&read.id)
            .expression_attribute_values(":seen", n(read.token_version));
        // (token read, its replacement, the condition when it was there or not, the assignment)
        for (was, now, (same, absent), assign, old, new) in [
            (
                &read.access_token,
                access_token,
                ("access_token = :old_access", "attribute_not_exists(access_token)"),
                "access_token = :access",
                ":old_access",
                ":access",
            ),
            (
                &read.refresh_token,
                refresh_token,
                ("refresh_token = :old_refresh", "attribute_not_exists(refresh_token)"),
                "refresh_token = :refresh",
                ":old_refresh",
                ":refresh",
            ),
        ] {
            match was {
                Some(was) => {
                    condition.push(same);
                    request = request.expression_attribute_values(old, b(was));
                }
                None => condition.push(absent),
            }
            if let Some(now) = now {
                set.push(assign);
                request = request.expression_attribute_values(new, b(now));
            }
        }
        if set.is_empty() {
            return Ok(Write::Done);
        }
        let request = request
            .update_expression(format!("SET {}", set.join(", ")))
            .condition_expression(condition.join(" AND "));
        self.conditional_update("UpdateItem(reseal)", request, never).await
    }

    /// Every connection, for the operator's `list` (a paginated Scan: an
    /// operator command, never on a function's path).
    pub async fn list(&self) -> Result<Vec<Connection>, StoreError> {
        let mut connections = Vec::new();
        let mut start = None;
        loop {
            self.ops.queries.fetch_add(1, Ordering::Relaxed);
            let output = self
                .client
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.fail("Scan", e))?;
            for item in output.items.unwrap_or_default() {
                connections.push(from_item(item)?);
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        connections.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(connections)
    }

    /// One page of the connections of `provider`, in id order after `after`:
    /// a `Query` of the `by-provider` index (keys only, so token writes never
    /// touch it), then a consistent `BatchGetItem` of those ids. Returns the
    /// connections and the last id read (`None`: the provider's last page).
    pub async fn page_of_provider(
        &self,
        provider: &str,
        after: Option<&ConnectionId>,
        limit: i32,
    ) -> Result<(Vec<Connection>, Option<ConnectionId>), StoreError> {
        self.ops.queries.fetch_add(1, Ordering::Relaxed);
        let start =
            after.map(|id| HashMap::from([("id".to_owned(), s(id.as_str())), ("provider".to_owned(), s(provider))]));
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PROVIDER_INDEX)
            .key_condition_expression("provider = :provider")
            .expression_attribute_values(":provider", s(provider))
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| self.fail("Query(by-provider)", e))?;
        let ids: Vec<String> = output
            .items()
            .iter()
            .filter_map(|item| match item.get("id") {
                Some(AttributeValue::S(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let last = match output.last_evaluated_key() {
            Some(key) if !key.is_empty() => ids.last().map(|id| ConnectionId::parse(id)).transpose().ok().flatten(),
            _ => None,
        };
        let mut connections = self.get_many(&ids).await?;
        connections.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((connections, last))
    }

    /// The connections `ids` that exist (consistent reads, 100 keys a request).
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Connection>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let keys = chunk
                .iter()
                .map(|id| HashMap::from([("id".to_owned(), s(id))]))
                .collect();
            let request = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .map_err(|e| StoreError::Malformed {
                    id: self.table.clone(),
                    reason: e.to_string(),
                })?;
            for item in batch_get(&self.client, &self.table, request, &self.ops, "BatchGetItem").await? {
                found.push(from_item(item)?);
            }
        }
        Ok(found)
    }

    /// One page of the ids of active connections in `shard` whose refresh is
    /// due by `now`, oldest due first; `after` is the previous page's `next`.
    pub async fn due(
        &self,
        shard: &str,
        now: i64,
        limit: i32,
        after: Option<DueCursor>,
    ) -> Result<DuePage, StoreError> {
        self.ops.queries.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("refresh-due")
            .key_condition_expression("due_shard = :shard AND refresh_due_at <= :now")
            .expression_attribute_values(":shard", s(shard))
            .expression_attribute_values(":now", n(now))
            .limit(limit)
            .set_exclusive_start_key(after.map(|cursor| cursor.0))
            .send()
            .await
            .map_err(|e| self.fail("Query(refresh-due)", e))?;
        let ids = output
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| match item.get("id") {
                Some(AttributeValue::S(id)) => ConnectionId::parse(id).map_err(|e| StoreError::Malformed {
                    id: id.clone(),
                    reason: e.to_string(),
                }),
                _ => Err(StoreError::Malformed {
                    id: "?".into(),
                    reason: "index item without id".into(),
                }),
            })
            .collect::<Result<_, _>>()?;
        Ok(DuePage {
            ids,
            next: output.last_evaluated_key.filter(|key| !key.is_empty()).map(DueCursor),
        })
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
