//! The refresh protocol's writes on a connection (`crate::refresh`): the
//! lease taken, taken over, extended and given back; the commit of a
//! rotated token set; a failure's backoff; `needs_reauth`; a revocation; a
//! reseal under a new key. Each is conditional on the version (and the lease
//! owner) the protocol read.

use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use std::sync::atomic::Ordering;

use super::{Commit, ConnectionStore, DueLease, LEASE_FIELDS, UNKNOWN_FIELDS, Write, b, from_item, holds_lease, never};
use crate::connection::{Connection, ConnectionId, Lease, Sealed, Status, now_ms};
use crate::dynamo::{StoreError, n, s};

impl ConnectionStore {
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

    /// Takes the refresh lease of a connection the refresh-due index found
    /// due, without reading it first: one write where a read and a lease
    /// write were two. The condition is the read's whole decision: active,
    /// due (`refresh_due_at`, which a backoff moves to `next_attempt_at`),
    /// not backed off, no lease (not even an expired one: its holder may
    /// have sent), and no send with an unknown outcome on record. Taken, the
    /// answer is the item with the lease (`ReturnValues = ALL_NEW`); refused,
    /// the item as it is (`ALL_OLD` on the failed condition), so the caller
    /// goes on from it without a read. A retry of a take that landed
    /// although its answer was lost finds the caller's own lease: taken.
    pub async fn take_due_lease(
        &self,
        id: &ConnectionId,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<DueLease, StoreError> {
        self.ops.writes.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .update(id)
            .update_expression("SET lease_owner = :me, lease_until = :until, lease_taken_at = :now")
            .condition_expression(
                "#status = :active AND refresh_due_at <= :now \
                 AND attribute_not_exists(lease_owner) \
                 AND attribute_not_exists(outcome_unknown_since) AND attribute_not_exists(outcome_unknown_resent_at) \
                 AND (attribute_not_exists(next_attempt_at) OR next_attempt_at <= :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":active", s(Status::Active.as_str()))
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let error = match sent {
            Ok(output) => {
                let item = output.attributes.ok_or_else(|| StoreError::Malformed {
                    id: id.to_string(),
                    reason: "the lease write returned no item".into(),
                })?;
                return Ok(DueLease::Taken(Box::new(from_item(item)?)));
            }
            Err(error) => error,
        };
        let Some(item) = crate::dynamo::refused(error, "UpdateItem(lease due)", &self.table)? else {
            return Ok(DueLease::Refused(None));
        };
        let now = Box::new(from_item(item)?);
        if now.lease.as_ref().is_some_and(|lease| lease.owner == owner) {
            Ok(DueLease::Taken(now))
        } else {
            Ok(DueLease::Refused(Some(now)))
        }
    }

    /// Gives back the caller's own lease when nothing was sent under it (a
    /// take whose answer was an error although it landed, a revocation the
    /// provider could not do right now), unspending a resend it may have
    /// marked; nothing else changes.
    /// `seen`: the version the lease was taken on, when the caller knows it
    /// (a lease taken without a read, [`ConnectionStore::take_due_lease`],
    /// whose answer was lost, is known by its owner id alone: unique per call).
    pub async fn release_unused_lease(
        &self,
        id: &ConnectionId,
        seen: Option<u64>,
        owner: &str,
    ) -> Result<Write, StoreError> {
        let mut request = self
            .update(id)
            .update_expression(format!("REMOVE {LEASE_FIELDS}, outcome_unknown_resent_at"))
            .expression_attribute_values(":me", s(owner));
        request = match seen {
            Some(seen) => request
                .condition_expression("token_version = :seen AND lease_owner = :me")
                .expression_attribute_values(":seen", n(seen)),
            None => request.condition_expression("lease_owner = :me"),
        };
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
            .expression_attribute_values(":shard", s(&self.refresh_shard(&commit.id)))
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
}
