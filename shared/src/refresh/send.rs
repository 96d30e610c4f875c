//! Holding the lease: spend the refresh token, and act on what
//! [`decide`](super::decide::decide) makes of the answer.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::decide::{Action, Answer, ResendPolicy, Sent, UnknownSend, decide};
use super::{MAX_TOKEN_BYTES, Pass, RefreshError, Step, TokenService, millis};
use crate::backoff::jitter;
use crate::connection::store::Write;
use crate::connection::{now_ms, reason};
use crate::events::Event;
use crate::oauth::{TokenEndpoint, TokenError};
use crate::secret::RefreshToken;
use crate::telemetry::error_chain;

/// How a lease's release is retried: until the caller's deadline.
fn release_retry(deadline: Instant) -> crate::dynamo::Retry {
    crate::dynamo::Retry {
        until: deadline,
        attempts: u32::MAX,
        base: Duration::from_millis(50),
        cap: Duration::from_secs(2),
    }
}

/// What the protocol makes of a failed token call.
fn answer_to(error: &TokenError) -> Answer {
    match error {
        TokenError::DeadToken { .. } => Answer::DeadToken,
        e if e.outcome_unknown() => Answer::Unknown,
        TokenError::Rejected { .. } => Answer::Refused,
        // 429, 503, not sent, or the client credentials refused before the token was looked at.
        _ => Answer::NotProcessed,
    }
}

impl TokenService {
    /// Sends the refresh token (`sent` says whether this is the one resend
    /// of an unknown send) and acts on the answer.
    ///
    /// One function: the send and what each kind of answer leads to, in the
    /// order docs/refresh.md tells them.
    pub(super) async fn send(&self, pass: &Pass<'_>, lease_until: i64, sent: Sent) -> Result<Step, RefreshError> {
        let Pass {
            conn,
            provider,
            deadline,
            ..
        } = *pass;
        let id = &conn.id;
        let earlier = match sent {
            Sent::First { .. } => None,
            Sent::Resend(unknown) => Some(unknown),
        };
        let Some(sealed) = &conn.refresh_token else {
            return self
                .needs_reauth(pass, "no_refresh_token", "the login returned no refresh token")
                .await;
        };
        // Every exit before the send releases the lease (and unspends a
        // resend): a lease left behind would make the next worker assume a send happened.
        let keys = match self.keys.get().await {
            Ok(keys) => keys,
            Err(e) => {
                self.back_off(pass, "the token key ring could not be read", earlier, None)
                    .await?;
                return Err(e.into());
            }
        };
        let refresh_token = match keys.open(id.as_str(), "refresh_token", &sealed.0).await {
            Ok(token) => RefreshToken::new(token),
            Err(source) => {
                self.back_off(pass, "the stored refresh token cannot be decrypted", earlier, None)
                    .await?;
                return Err(RefreshError::Crypto { id: id.clone(), source });
            }
        };
        let credentials = match self.credentials(provider).await {
            Ok(credentials) => credentials,
            Err(e) => {
                self.back_off(pass, "client credentials unavailable", earlier, None)
                    .await?;
                return Err(e.into());
            }
        };
        // Invariant 1: never start a send with less lease left than the call's
        // timeout and a commit attempt; and never one whose commit would have
        // no time left (what came before the send, e.g. the lease's write
        // under load or fetching the credentials, took it). Time running out
        // is no failure of the connection's: the lease goes back unused, with
        // no failure counted and no backoff, so the next run (or a retake,
        // while the deadline allows one) refreshes it at once.
        if self.settings.no_send_before(deadline)
            || lease_until - now_ms() < millis(self.settings.lease_needed_to_send())
        {
            self.give_back_unsent(conn, pass.owner, deadline).await?;
            // Asked again: the release took some of the time.
            if self.settings.no_send_before(deadline) {
                debug!(connection = %id, "too little of the invocation left to send and commit; left for the next run");
                return Err(RefreshError::Deadline { id: id.clone() });
            }
            return Ok(Step::Again);
        }
        let sent = match sent {
            Sent::First { .. } => Sent::First { at: now_ms() },
            resend => resend,
        };
        let endpoint = TokenEndpoint {
            provider,
            credentials: &credentials,
            http: &self.http,
        };
        debug!(connection = %id, version = conn.token_version, resend = earlier.is_some(), "sending refresh");
        let answer = endpoint.refresh(&refresh_token).await;
        if let Some(permit) = pass.permit {
            match &answer {
                Ok(_) => {
                    permit.succeeded();
                    // The provider has answered: the commit is no request to it.
                    permit.release();
                }
                Err(TokenError::Unavailable { .. }) => permit.throttled(),
                Err(_) => {}
            }
        }
        let error = match answer {
            Ok(tokens) => {
                let sent_at = match sent {
                    Sent::First { at } => at,
                    Sent::Resend(unknown) => unknown.resent_at.unwrap_or_else(now_ms),
                };
                return match self.commit(pass, tokens, sent_at, lease_until).await {
                    // Refused before any write, while we hold the lease: the rotated token cannot be kept.
                    Err(RefreshError::TokenTooLarge { field, bytes, .. }) => {
                        let message = format!(
                            "the provider returned a {field} of {bytes} bytes; at most {MAX_TOKEN_BYTES} are stored"
                        );
                        self.needs_reauth(pass, reason::TOKEN_TOO_LARGE, &message).await
                    }
                    other => other,
                };
            }
            Err(error) => error,
        };
        let policy = ResendPolicy::new(&provider.settings, self.settings.token_timeout);
        let answer = answer_to(&error);
        if answer == Answer::Unknown {
            self.unknown_outcomes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match decide(answer, sent, &policy, now_ms()) {
            Action::NeedsReauth { after } => {
                // Consistent re-read: a newer version means someone else rotated, not a dead connection.
                let current = self.read(id).await?;
                if current.token_version != conn.token_version
                    || current.lease.as_ref().is_none_or(|l| l.owner != pass.owner)
                {
                    return Ok(Step::Again);
                }
                let mut message = match error {
                    TokenError::DeadToken { status, error, message } => format!("{message} (HTTP {status}, {error})"),
                    other => other.to_string(),
                };
                if let Some(unknown) = after {
                    message.push_str(&format!(
                        "; this was the one resend after a refresh sent at {} whose outcome was unknown: \
                         that refresh had been processed and its new refresh token was lost",
                        crate::when::utc(unknown.first_sent_at)
                    ));
                }
                self.needs_reauth(pass, reason::DEAD_REFRESH_TOKEN, &message).await
            }
            Action::Resend { unknown, at } => {
                let detail = error.to_string();
                warn!(connection = %id, version = conn.token_version, error = %detail, "refresh outcome unknown; the old token goes once more");
                self.resend_at(pass, unknown, at, &detail).await
            }
            Action::GiveUp(unknown) => self.give_up(pass, unknown, &error.to_string()).await,
            Action::BackOff { unknown } => {
                self.not_refreshed(pass, &error.to_string(), unknown, error.retry_after())
                    .await
            }
            // Never the answer to an error; if it were, nothing was stored: not refreshed.
            Action::Commit => {
                let unknown = earlier.map(|u| UnknownSend { resent_at: None, ..u });
                self.not_refreshed(pass, &error.to_string(), unknown, error.retry_after())
                    .await
            }
        }
    }

    /// Resends the token of `unknown` at `at`: in this call when the lease can
    /// be extended and a send and a commit still fit before the deadline;
    /// otherwise the unknown send is recorded and a later call resends it.
    async fn resend_at(
        &self,
        pass: &Pass<'_>,
        unknown: UnknownSend,
        at: i64,
        detail: &str,
    ) -> Result<Step, RefreshError> {
        let (conn, id) = (pass.conn, &pass.conn.id);
        let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
        if pass.deadline.saturating_duration_since(Instant::now()) < wait + self.settings.time_for_a_send() {
            let cause = format!(
                "outcome unknown ({detail}); the old refresh token goes once more after {}",
                crate::when::utc(at)
            );
            return self.not_refreshed(pass, &cause, Some(unknown), Some(wait)).await;
        }
        tokio::time::sleep(wait).await;
        let cause = format!("outcome unknown ({detail}); the old refresh token goes once more");
        let Ok(until) = self.lease_until(id, now_ms(), pass.deadline) else {
            return self.not_refreshed(pass, &cause, Some(unknown), None).await;
        };
        // Recorded before it is sent: a worker that takes over after us knows the resend is spent.
        let extended = self
            .store
            .extend_lease_to_resend(id, conn.token_version, pass.owner, until, unknown.first_sent_at)
            .await;
        match extended {
            // Not extended, or not known to be: release, unspending the resend, and leave it to a later call.
            Err(e) => {
                warn!(connection = %id, error = %error_chain(&e), "the lease could not be extended for the resend");
                self.not_refreshed(pass, &cause, Some(unknown), None).await
            }
            Ok(Write::Conflict(_)) => Ok(Step::Again),
            Ok(Write::Done) => {
                let resend = UnknownSend {
                    resent_at: Some(now_ms()),
                    ..unknown
                };
                Box::pin(self.send(pass, until, Sent::Resend(resend))).await
            }
        }
    }

    /// The outcome stays unknown and the token may not go again.
    pub(super) async fn give_up(
        &self,
        pass: &Pass<'_>,
        unknown: UnknownSend,
        detail: &str,
    ) -> Result<Step, RefreshError> {
        let provider = pass.provider;
        let detail = if detail.is_empty() {
            "the worker that sent it stopped before recording the answer".to_owned()
        } else {
            detail.to_owned()
        };
        let message = match unknown.resent_at {
            Some(_) => format!(
                "a refresh sent at {} had an unknown outcome, and its one resend did not settle it \
                 ({detail}); the old refresh token is not sent a third time",
                crate::when::utc(unknown.first_sent_at)
            ),
            None => format!(
                "a refresh sent at {} has an unknown outcome ({detail}); provider `{}` does not resend \
                 after an unknown outcome (resend_after_unknown_outcome = false) and no reuse grace period covers one",
                crate::when::utc(unknown.first_sent_at),
                provider.name
            ),
        };
        self.needs_reauth(pass, reason::REFRESH_OUTCOME_UNKNOWN, &message).await
    }

    /// A refresh that did not happen: back off, then give the caller who only
    /// needs a token the current one while it lasts; tell a caller who asked
    /// for a refresh that it failed.
    pub(super) async fn not_refreshed(
        &self,
        pass: &Pass<'_>,
        cause: &str,
        unknown: Option<UnknownSend>,
        wait_at_least: Option<Duration>,
    ) -> Result<Step, RefreshError> {
        let until = self.back_off(pass, cause, unknown, wait_at_least).await?;
        self.held_back(pass.conn, pass.mode, now_ms(), until, cause.to_owned())
            .map(Step::Done)
    }

    pub(super) async fn needs_reauth(
        &self,
        pass: &Pass<'_>,
        why: &'static str,
        message: &str,
    ) -> Result<Step, RefreshError> {
        let (conn, owner) = (pass.conn, pass.owner);
        let id = &conn.id;
        match self.write(
            id,
            self.store
                .mark_needs_reauth(id, conn.token_version, owner, why, message)
                .await,
        )? {
            Write::Conflict(_) => Ok(Step::Again),
            Write::Done => {
                warn!(connection = %id, reason = why, message, "connection needs a new login");
                self.events
                    .publish(Event::NeedsReauth(crate::events::NeedsReauth {
                        connection: id.to_string(),
                        provider: conn.provider.clone(),
                        token_version: conn.token_version,
                        reason: why.to_owned(),
                        provider_message: message.to_owned(),
                    }))
                    .await;
                Err(RefreshError::NeedsReauth {
                    id: id.clone(),
                    reason: why,
                    message: message.to_owned(),
                })
            }
        }
    }

    /// Gives back a lease under which nothing was sent (a resend it marked
    /// is unspent; an unknown outcome on record stays), retried until the
    /// caller's deadline: a lease left behind would read as a send to the
    /// next worker. Nothing is counted against the connection.
    pub(super) async fn give_back_unsent(
        &self,
        conn: &crate::connection::Connection,
        owner: &str,
        deadline: Instant,
    ) -> Result<(), RefreshError> {
        let released = crate::dynamo::retry_transient(
            release_retry(deadline),
            &format!("giving back the unused lease of {}", conn.id),
            || {
                self.store
                    .release_unused_lease(&conn.id, Some(conn.token_version), owner)
            },
        )
        .await;
        self.write(&conn.id, released).map(drop)
    }

    /// Releases the lease after a refresh that did not happen, with
    /// exponential backoff and jitter per connection. Returns the next attempt time.
    /// `unknown` keeps an earlier send with an unknown outcome on record (its
    /// resend not spent), so the next attempt resends it. `wait_at_least` is the
    /// provider's `Retry-After` (or the time before a resend may go): the
    /// backoff is never shorter, and never longer than `max_backoff` because of it.
    pub(super) async fn back_off(
        &self,
        pass: &Pass<'_>,
        cause: &str,
        unknown: Option<UnknownSend>,
        wait_at_least: Option<Duration>,
    ) -> Result<i64, RefreshError> {
        let (conn, owner) = (pass.conn, pass.owner);
        let failures = conn.consecutive_failures.saturating_add(1);
        let exponent = failures.saturating_sub(1).min(16);
        let delay = (self.settings.base_backoff * 2u32.saturating_pow(exponent)).min(self.settings.max_backoff);
        // The provider's wait, spread over a quarter more so that the
        // connections one 429 stopped do not all come back at the same instant.
        let floor = wait_at_least.map_or(Duration::ZERO, |wait| wait.mul_f64(1.0 + fastrand::f64() / 4.0));
        let next = now_ms() + millis(jitter(delay).max(floor).min(self.settings.max_backoff));
        warn!(connection = %conn.id, failures, cause, "refresh failed; backing off");
        // A lease left behind would read as a send to the next worker: the
        // release is retried (conditional on our lease, so a late one is harmless).
        let retry = release_retry(pass.deadline);
        let released = crate::dynamo::retry_transient(retry, &format!("releasing the lease of {}", conn.id), || {
            self.store.release_after_failure(
                &conn.id,
                conn.token_version,
                owner,
                cause,
                failures,
                next,
                unknown.map(|u| u.first_sent_at),
            )
        })
        .await;
        if let Write::Done = self.write(&conn.id, released)? {
            self.events
                .publish(Event::RefreshFailed(crate::events::RefreshFailed {
                    connection: conn.id.to_string(),
                    provider: conn.provider.clone(),
                    token_version: conn.token_version,
                    failures,
                    cause: cause.to_owned(),
                    next_attempt_at: crate::events::rfc3339(next),
                }))
                .await;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresher_run_becomes_the_metrics_the_alarms_watch() {
        let summary = super::super::DueSummary {
            refreshed: 3,
            needs_reauth: 1,
            outcome_unknown: 2,
            ..Default::default()
        };
        let doc = summary.metrics().document(0);
        assert_eq!(doc["Function"], "token-refresher");
        assert_eq!(doc["Refreshed"], 3.0);
        assert_eq!(doc["NeedsReauth"], 1.0);
        assert_eq!(doc["OutcomeUnknown"], 2.0);
        assert_eq!(doc["RefreshFailed"], 0.0, "zeros are written: the alarm sees a value");
    }

    #[test]
    fn token_errors_map_to_the_protocols_answers() {
        let dead = TokenError::DeadToken {
            status: 400,
            error: "invalid_grant".into(),
            message: String::new(),
        };
        assert_eq!(answer_to(&dead), Answer::DeadToken);
        assert_eq!(
            answer_to(&TokenError::OutcomeUnknown("timeout".into())),
            Answer::Unknown
        );
        assert_eq!(
            answer_to(&TokenError::InvalidResponse("not JSON".into())),
            Answer::Unknown
        );
        let busy = TokenError::Unavailable {
            status: 503,
            retry_after: None,
        };
        assert_eq!(answer_to(&busy), Answer::NotProcessed);
        assert_eq!(
            answer_to(&TokenError::Unreachable("refused".into())),
            Answer::NotProcessed
        );
    }
}
