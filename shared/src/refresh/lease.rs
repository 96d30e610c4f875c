//! The refresh lease: whose it is, computed once per read, and the writes
//! that take it. A write whose response was lost and that the SDK's retry
//! then met is recognised by its owner id, not mistaken for someone else's.

use std::time::Instant;

use tracing::warn;

use super::{Pass, RefreshError, TokenService};
use crate::connection::clock::{CLOCK_SKEW_MS, MAX_CLOCK_OFFSET_MS};
use crate::connection::store::{DueLease, Write};
use crate::connection::{Connection, ConnectionId, Lease, now_ms};
use crate::dynamo::StoreError;
use crate::telemetry::error_chain;

/// The connection's lease as one worker sees it at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState<'a> {
    /// Nobody holds it.
    Free,
    /// This worker holds it (a take whose answer was lost landed after all).
    Mine(&'a Lease),
    /// Another worker holds it and may be sending right now.
    Live(&'a Lease),
    /// Its holder vanished (ended more than the clock-skew margin ago): it may
    /// have sent the refresh, so its outcome is unknown.
    Abandoned(&'a Lease),
}

impl LeaseState<'_> {
    /// The state of `conn`'s lease for worker `owner` at `now` (epoch ms).
    pub(crate) fn of<'a>(conn: &'a Connection, owner: &str, now: i64) -> LeaseState<'a> {
        match &conn.lease {
            None => LeaseState::Free,
            Some(lease) if lease.owner == owner => LeaseState::Mine(lease),
            Some(lease) if lease.until.saturating_add(CLOCK_SKEW_MS) > now => LeaseState::Live(lease),
            Some(lease) => LeaseState::Abandoned(lease),
        }
    }
}

impl TokenService {
    /// The lease end for a send starting now: it outlives the token call's
    /// timeout plus the commit budget, and never the invocation. No send
    /// starts unless the invocation has at least the timeout and time for one
    /// commit attempt left.
    pub(crate) fn lease_until(&self, id: &ConnectionId, now: i64, deadline: Instant) -> Result<i64, RefreshError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < self.settings.time_for_a_send() {
            return Err(RefreshError::Deadline { id: id.clone() });
        }
        Ok(now + self.settings.lease_ms().min(super::millis(left)))
    }

    /// Refuses to take a lease when this host's clock is further from
    /// DynamoDB's than the protocol tolerates: its lease ends and resend
    /// times would be misread by every other worker.
    pub(crate) fn check_clock(&self, id: &ConnectionId) -> Result<(), RefreshError> {
        match self.store.clock().offset_ms() {
            Some(offset) if offset.abs() > MAX_CLOCK_OFFSET_MS => Err(RefreshError::ClockSkew {
                id: id.clone(),
                offset_ms: offset,
            }),
            _ => Ok(()),
        }
    }

    /// Takes the free lease of `pass` (to resend, with `resend`). Returns
    /// the lease end, or `None` when someone else got there first.
    pub(crate) async fn take_lease(&self, pass: &Pass<'_>, resend: bool) -> Result<Option<i64>, RefreshError> {
        let conn = pass.conn;
        self.check_clock(&conn.id)?;
        let now = now_ms();
        let until = self.lease_until(&conn.id, now, pass.deadline)?;
        let written = self.store.take_lease(conn, pass.owner, now, until, resend).await;
        match self.landed_or_released(pass, written).await? {
            Write::Done => Ok(Some(until)),
            Write::Conflict(_) => Ok(None),
        }
    }

    /// Takes the lease of a connection the refresh-due index found due,
    /// without reading it first ([`ConnectionStore::take_due_lease`]): a
    /// refresher run's refresh is then two writes, this and the commit. A
    /// write that failed may still have landed: it is given back (nothing
    /// was sent under it), known by `owner` alone.
    ///
    /// [`ConnectionStore::take_due_lease`]: crate::connection::store::ConnectionStore::take_due_lease
    pub(crate) async fn lease_due(
        &self,
        id: &ConnectionId,
        owner: &str,
        deadline: Instant,
    ) -> Result<DueLease, RefreshError> {
        self.check_clock(id)?;
        let now = now_ms();
        let until = self.lease_until(id, now, deadline)?;
        match self.store.take_due_lease(id, owner, now, until).await {
            Ok(taken) => Ok(taken),
            Err(source) => Err(self.release_possible_lease(id, None, owner, source).await),
        }
    }

    /// Takes over a lease whose holder vanished (to resend, with `resend`).
    /// Returns the lease end, or `None` when someone else got there first.
    pub(crate) async fn take_over_lease(
        &self,
        pass: &Pass<'_>,
        abandoned: &Lease,
        resend: bool,
    ) -> Result<Option<i64>, RefreshError> {
        let conn = pass.conn;
        self.check_clock(&conn.id)?;
        let now = now_ms();
        let until = self.lease_until(&conn.id, now, pass.deadline)?;
        let written = self
            .store
            .take_over_lease(
                &conn.id,
                conn.token_version,
                abandoned,
                pass.owner,
                now,
                until,
                now - CLOCK_SKEW_MS,
                resend,
            )
            .await;
        match self.landed_or_released(pass, written).await? {
            Write::Done => {
                warn!(connection = %conn.id, version = conn.token_version, abandoned_by = %abandoned.owner, "took over an abandoned refresh lease");
                Ok(Some(until))
            }
            Write::Conflict(_) => Ok(None),
        }
    }

    /// A lease write that failed (the SDK gave up) may still have landed:
    /// nothing was sent under it, so it is given back if it is ours, rather
    /// than left for the next worker to read as a send with an unknown outcome.
    async fn landed_or_released(
        &self,
        pass: &Pass<'_>,
        written: Result<Write, StoreError>,
    ) -> Result<Write, RefreshError> {
        let conn = pass.conn;
        match written {
            Ok(write) => Ok(write),
            Err(source) => Err(self
                .release_possible_lease(&conn.id, Some(conn.token_version), pass.owner, source)
                .await),
        }
    }

    /// After a lease write of `owner`'s failed with `source`: gives back
    /// the lease it may have taken (on version `seen`, when known), and
    /// returns the write's error.
    async fn release_possible_lease(
        &self,
        id: &ConnectionId,
        seen: Option<u64>,
        owner: &str,
        source: StoreError,
    ) -> RefreshError {
        if let Err(e) = self.store.release_unused_lease(id, seen, owner).await {
            warn!(connection = %id, error = %error_chain(&e), "a lease write failed and its possible lease could not be given back");
        }
        RefreshError::Store { id: id.clone(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(lease: Option<Lease>) -> Connection {
        Connection {
            id: ConnectionId::parse("c").expect("id"),
            provider: "p".into(),
            kind: crate::connection::ConnectionKind::Shared,
            status: crate::connection::Status::Active,
            status_reason: None,
            provider_message: None,
            access_token: None,
            refresh_token: None,
            access_expires_at: None,
            scopes: Vec::new(),
            token_version: 3,
            lease,
            commit_id: None,
            last_refresh_at: None,
            last_refresh_outcome: None,
            consecutive_failures: 0,
            next_attempt_at: None,
            outcome_unknown_since: None,
            outcome_unknown_resent_at: None,
            refresh_due_at: None,
            instance_url: None,
            api_domain: None,
            params: Default::default(),
            param_error: None,
            created_at: 0,
            updated_at: 0,
            revoked_at: None,
        }
    }

    fn lease(owner: &str, until: i64) -> Lease {
        Lease {
            owner: owner.into(),
            until,
            taken_at: until - 30_000,
        }
    }

    #[test]
    fn the_lease_state_is_computed_once_from_owner_and_time() {
        let now = 1_000_000;
        let free = connection(None);
        assert_eq!(LeaseState::of(&free, "me", now), LeaseState::Free);
        let mine = connection(Some(lease("me", now - 60_000)));
        assert!(matches!(LeaseState::of(&mine, "me", now), LeaseState::Mine(_)));
        let live = connection(Some(lease("other", now + 1)));
        assert!(matches!(LeaseState::of(&live, "me", now), LeaseState::Live(_)));
        // Ended, but within the clock-skew margin: still live for us.
        let ending = connection(Some(lease("other", now - CLOCK_SKEW_MS + 1)));
        assert!(matches!(LeaseState::of(&ending, "me", now), LeaseState::Live(_)));
        let gone = connection(Some(lease("other", now - CLOCK_SKEW_MS)));
        assert!(matches!(LeaseState::of(&gone, "me", now), LeaseState::Abandoned(_)));
    }

    #[test]
    fn a_refused_lease_write_that_shows_our_own_lease_landed() {
        use crate::connection::store::holds_lease;
        let ours = connection(Some(lease("me", 2_000_000)));
        assert!(holds_lease(&ours, 3, "me"));
        let theirs = connection(Some(lease("other", 2_000_000)));
        assert!(!holds_lease(&theirs, 3, "me"));
        // Our lease on another version is not this write's doing.
        assert!(!holds_lease(&ours, 2, "me"));
    }
}
