//! The refresh protocol's decisions, as pure functions over what is known:
//! the provider's answer, an earlier send whose outcome is unknown, and the
//! provider's settings. The I/O around them is in `send.rs`; the outcome
//! table of DESIGN.md invariant 4 is tested here, as a table.

use std::time::Duration;

use crate::config::ProviderSettings;
use crate::connection::Connection;
use crate::connection::clock::CLOCK_SKEW_MS;

/// A refresh send whose outcome is unknown (a timeout, a dropped connection
/// after the request left, a 500/502/504/408/52x, an unusable 2xx, or a
/// worker that vanished holding the lease): the provider may have rotated
/// the token. Recorded on the connection until a refresh commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownSend {
    /// When the first send left (epoch ms; maybe another host's clock).
    pub first_sent_at: i64,
    /// When the one resend was started, once it was.
    pub resent_at: Option<i64>,
}

impl UnknownSend {
    /// The unknown send recorded on `conn`, if any.
    pub fn of(conn: &Connection) -> Option<UnknownSend> {
        conn.outcome_unknown_since.map(|first_sent_at| UnknownSend {
            first_sent_at,
            resent_at: conn.outcome_unknown_resent_at,
        })
    }
}

/// What a provider's settings allow after an unknown outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendPolicy {
    /// Each refresh returns a new refresh token and retires the old one.
    pub rotates: bool,
    /// How long a retired refresh token still works (0: not at all).
    pub grace_ms: i64,
    /// `resend_after_unknown_outcome`.
    pub resend: bool,
    /// The token call's timeout `T`.
    pub timeout_ms: i64,
}

impl ResendPolicy {
    pub fn new(settings: &ProviderSettings, token_timeout: Duration) -> ResendPolicy {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        ResendPolicy {
            rotates: settings.rotates_refresh_tokens,
            grace_ms: ms(Duration::from_secs(settings.reuse_grace_secs)),
            resend: settings.resend_after_unknown_outcome,
            timeout_ms: ms(token_timeout),
        }
    }

    /// The earliest time the token sent at `first_sent_at` may go again: the
    /// first send has certainly ended (its timeout), whatever the other
    /// host's clock said (the skew margin).
    fn earliest_resend(&self, first_sent_at: i64) -> i64 {
        first_sent_at
            .saturating_add(self.timeout_ms)
            .saturating_add(CLOCK_SKEW_MS)
    }

    /// Does the reuse grace period cover a whole call started at `at`?
    fn grace_covers(&self, first_sent_at: i64, at: i64) -> bool {
        self.grace_ms > 0
            && at.saturating_add(self.timeout_ms).saturating_add(CLOCK_SKEW_MS)
                < first_sent_at.saturating_add(self.grace_ms)
    }
}

/// Before a send: what to do with the stored refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// An ordinary send (nothing unknown on record, or the provider does not rotate).
    Send,
    /// Send the old token once more; this spends the one resend.
    Resend(UnknownSend),
    /// The resend may not start before this time (epoch ms).
    WaitUntil(i64),
    /// The token may not be sent again: the connection needs a new login.
    GiveUp(UnknownSend),
}

/// What to do before a send, given what is on record. `now` is epoch ms.
pub fn plan(unknown: Option<UnknownSend>, policy: &ResendPolicy, now: i64) -> Plan {
    let Some(unknown) = unknown else {
        return Plan::Send;
    };
    if !policy.rotates {
        // The old token stays good: an unknown outcome changed nothing.
        return Plan::Send;
    }
    if unknown.resent_at.is_some() {
        return Plan::GiveUp(unknown);
    }
    let at = now.max(policy.earliest_resend(unknown.first_sent_at));
    if !policy.resend && !policy.grace_covers(unknown.first_sent_at, at) {
        return Plan::GiveUp(unknown);
    }
    if now < at {
        Plan::WaitUntil(at)
    } else {
        Plan::Resend(unknown)
    }
}

/// Which send an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// An ordinary send that left at this time (epoch ms).
    First { at: i64 },
    /// The one resend of an unknown send.
    Resend(UnknownSend),
}

/// The provider's answer to a refresh, as far as the protocol cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A usable token set.
    Tokens,
    /// The refresh token is dead (`invalid_grant` and the providers' equivalents).
    DeadToken,
    /// Certainly not processed: not sent, 503, 429, the client refused.
    NotProcessed,
    /// Another refusal that does not say the token is dead (a 4xx): for a
    /// first send, an ordinary failure; for the resend, it does not settle the
    /// unknown outcome, and the resend is spent.
    Refused,
    /// Maybe processed: see [`UnknownSend`].
    Unknown,
}

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Store the new tokens.
    Commit,
    /// The token is dead: `needs_reauth` (after a consistent re-read shows
    /// nobody else rotated it). `after` is the unknown send the resend followed.
    NeedsReauth { after: Option<UnknownSend> },
    /// The refresh did not happen: release the lease and back off, keeping an
    /// earlier unknown send on record (its resend not spent).
    BackOff { unknown: Option<UnknownSend> },
    /// Resend the old token at `at` (epoch ms), in this call if the time
    /// left allows, else by a later one.
    Resend { unknown: UnknownSend, at: i64 },
    /// The outcome stays unknown and the token may not go again: `needs_reauth`.
    GiveUp(UnknownSend),
}

/// What to do with `answer` to the send `sent`. `now` is epoch ms.
pub fn decide(answer: Answer, sent: Sent, policy: &ResendPolicy, now: i64) -> Action {
    let earlier = match sent {
        Sent::First { .. } => None,
        Sent::Resend(unknown) => Some(unknown),
    };
    match answer {
        Answer::Tokens => Action::Commit,
        Answer::DeadToken => Action::NeedsReauth { after: earlier },
        // A resend that was certainly not processed is not spent; an
        // ordinary answer never clears the unknown outcome.
        Answer::NotProcessed => Action::BackOff {
            unknown: earlier.map(|u| UnknownSend { resent_at: None, ..u }),
        },
        Answer::Refused => match sent {
            Sent::First { .. } => Action::BackOff { unknown: None },
            Sent::Resend(unknown) if policy.rotates => Action::GiveUp(unknown),
            Sent::Resend(_) => Action::BackOff { unknown: None },
        },
        Answer::Unknown => match sent {
            // The old token stays good: send it once more now, then call it down.
            Sent::First { at } if !policy.rotates => Action::Resend {
                unknown: UnknownSend {
                    first_sent_at: at,
                    resent_at: None,
                },
                at: now,
            },
            Sent::Resend(_) if !policy.rotates => Action::BackOff { unknown: None },
            Sent::First { at } => {
                let unknown = UnknownSend {
                    first_sent_at: at,
                    resent_at: None,
                };
                match plan(Some(unknown), policy, now) {
                    Plan::WaitUntil(at) => Action::Resend { unknown, at },
                    Plan::GiveUp(unknown) => Action::GiveUp(unknown),
                    // (`Send` is only planned where the provider does not rotate.)
                    Plan::Resend(_) | Plan::Send => Action::Resend { unknown, at: now },
                }
            }
            Sent::Resend(unknown) => Action::GiveUp(unknown),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 10_000;

    fn policy(rotates: bool, grace_ms: i64, resend: bool) -> ResendPolicy {
        ResendPolicy {
            rotates,
            grace_ms,
            resend,
            timeout_ms: T,
        }
    }

    fn unknown(first_sent_at: i64, resent_at: Option<i64>) -> UnknownSend {
        UnknownSend {
            first_sent_at,
            resent_at,
        }
    }

    const ROTATING: ResendPolicy = ResendPolicy {
        rotates: true,
        grace_ms: 0,
        resend: true,
        timeout_ms: T,
    };

    #[test]
    fn before_a_send_the_record_decides_between_send_resend_wait_and_give_up() {
        let first = 1_000_000;
        let ready = first + T + CLOCK_SKEW_MS;
        let off = policy(true, 0, false);
        let xero = policy(true, 1_800_000, false);
        let google = policy(false, 0, true);
        let table = [
            // (what is on record, policy, now, plan)
            (None, ROTATING, first, Plan::Send),
            (Some(unknown(first, None)), ROTATING, first + 1, Plan::WaitUntil(ready)),
            (
                Some(unknown(first, None)),
                ROTATING,
                ready,
                Plan::Resend(unknown(first, None)),
            ),
            (
                Some(unknown(first, Some(ready))),
                ROTATING,
                ready + 1,
                Plan::GiveUp(unknown(first, Some(ready))),
            ),
            // The setting off: no resend, unless a grace period covers it.
            (
                Some(unknown(first, None)),
                off,
                ready,
                Plan::GiveUp(unknown(first, None)),
            ),
            (
                Some(unknown(first, None)),
                xero,
                ready,
                Plan::Resend(unknown(first, None)),
            ),
            (
                Some(unknown(first, None)),
                xero,
                first + 1_800_000,
                Plan::GiveUp(unknown(first, None)),
            ),
            // A provider that does not rotate: the old token stays good.
            (Some(unknown(first, Some(ready))), google, first, Plan::Send),
        ];
        for (record, policy, now, expected) in table {
            assert_eq!(plan(record, &policy, now), expected, "{record:?} {policy:?} at {now}");
        }
    }

    #[test]
    fn an_answer_and_its_send_decide_the_action() {
        let at = 1_000_000;
        let first = Sent::First { at };
        let u = unknown(at, None);
        let resend = Sent::Resend(unknown(at, Some(at + 20_000)));
        let now = at + 1_000;
        let ready = at + T + CLOCK_SKEW_MS;
        let table = [
            (Answer::Tokens, first, ROTATING, Action::Commit),
            (Answer::Tokens, resend, ROTATING, Action::Commit),
            (Answer::DeadToken, first, ROTATING, Action::NeedsReauth { after: None }),
            // Processed the first time: the resend meets the dead-token answer.
            (
                Answer::DeadToken,
                resend,
                ROTATING,
                Action::NeedsReauth {
                    after: Some(unknown(at, Some(at + 20_000))),
                },
            ),
            (Answer::NotProcessed, first, ROTATING, Action::BackOff { unknown: None }),
            // A resend answered 503/429 is not spent, and the record stays.
            (
                Answer::NotProcessed,
                resend,
                ROTATING,
                Action::BackOff { unknown: Some(u) },
            ),
            // Any other refusal of the resend spends it: no loop of resends.
            (Answer::Refused, first, ROTATING, Action::BackOff { unknown: None }),
            (
                Answer::Refused,
                resend,
                ROTATING,
                Action::GiveUp(unknown(at, Some(at + 20_000))),
            ),
            // Unknown: one resend, no sooner than T (and the skew margin) after the first.
            (
                Answer::Unknown,
                first,
                ROTATING,
                Action::Resend { unknown: u, at: ready },
            ),
            (
                Answer::Unknown,
                resend,
                ROTATING,
                Action::GiveUp(unknown(at, Some(at + 20_000))),
            ),
            (Answer::Unknown, first, policy(true, 0, false), Action::GiveUp(u)),
            (
                Answer::Unknown,
                first,
                policy(true, 1_800_000, false),
                Action::Resend { unknown: u, at: ready },
            ),
            (
                Answer::Unknown,
                first,
                policy(false, 0, false),
                Action::Resend { unknown: u, at: now },
            ),
            (
                Answer::Unknown,
                resend,
                policy(false, 0, false),
                Action::BackOff { unknown: None },
            ),
        ];
        for (answer, sent, policy, expected) in table {
            assert_eq!(
                decide(answer, sent, &policy, now),
                expected,
                "{answer:?} to {sent:?} with {policy:?}"
            );
        }
    }
}
