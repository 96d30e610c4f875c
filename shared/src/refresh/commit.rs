//! Invariant 2: the new token set is committed before anything uses it.

use std::time::{Duration, Instant};

use tracing::{error, info};

use super::{Fresh, Pass, RefreshError, Step, TokenService, expiry};
use crate::connection::store::{Commit, Write};
use crate::connection::{now_ms, refresh_due_at};
use crate::crypto::random_token;
use crate::dynamo::{Retry, retry_transient, within};
use crate::oauth::TokenSet;
use crate::telemetry::error_chain;

/// How long the read that looks for a commit that landed unseen may take
/// after the commit stopped.
const LAST_READ: Duration = Duration::from_secs(1);

impl TokenService {
    /// Commits `tokens` (sent at `sent_at`), retrying with jittered backoff
    /// until the lease ends at `lease_until` (or the invocation's deadline,
    /// if sooner) and no longer: the lease is sized for the token call and
    /// the commit budget, and from its end (plus the clock-skew margin)
    /// another worker may take it over. The write is conditional on the
    /// lease owner, and each DynamoDB call is cut off at the lease's end.
    /// Before giving up a last read checks whether one of them landed after all.
    pub(super) async fn commit(
        &self,
        pass: &Pass<'_>,
        tokens: TokenSet,
        sent_at: i64,
        lease_until: i64,
    ) -> Result<Step, RefreshError> {
        let Pass {
            conn,
            provider,
            owner,
            deadline,
            ..
        } = *pass;
        let id = &conn.id;
        // Sealed before any write: a token over the bound is refused while we hold the lease.
        let (access_token, refresh_token) = self.seal_tokens(id, &tokens).await?;
        // The lifetime counts from when the provider could have issued it.
        let now = now_ms();
        let expires_at = expiry(sent_at, tokens.expires_in);
        let commit = Commit {
            id: id.clone(),
            seen_version: conn.token_version,
            owner: owner.to_owned(),
            commit_id: random_token().map_err(|e| RefreshError::Crypto {
                id: id.clone(),
                source: e.into(),
            })?,
            access_token,
            refresh_token,
            access_expires_at: expires_at,
            scopes: tokens.scope.clone(),
            refresh_due_at: refresh_due_at(&provider.settings, expires_at, Some(now)),
            instance_url: tokens.instance_url.clone(),
        };
        let lease_left = Duration::from_millis(u64::try_from(lease_until - now).unwrap_or(0));
        let stop_at = deadline.min(Instant::now() + lease_left);
        let retry = Retry {
            until: stop_at,
            attempts: u32::MAX,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        };
        let written = retry_transient(retry, &format!("the commit of {id}"), || {
            within(stop_at, "UpdateItem(commit)", self.store.commit(&commit))
        })
        .await;
        match written {
            // Also when a retry met the write its lost answer came from: the
            // item shows our commit id (`ConnectionStore::commit`).
            Ok(Write::Done) => {}
            Ok(Write::Conflict(_)) => {
                error!(connection = %id, version = conn.token_version, "commit refused: the connection changed under our lease");
                return Ok(Step::Again);
            }
            Err(e) => {
                // Did one of the attempts land after all?
                if let Ok(Ok(Some(item))) = tokio::time::timeout(LAST_READ, self.store.get(id)).await
                    && item.commit_id.as_deref() == Some(commit.commit_id.as_str())
                {
                    info!(connection = %id, "commit confirmed by a last read");
                } else {
                    error!(connection = %id, version = conn.token_version, error = %error_chain(&e),
                        "the rotated tokens could not be stored before the lease ended; the next worker will find the lease abandoned");
                    return Err(RefreshError::Store {
                        id: id.clone(),
                        source: e,
                    });
                }
            }
        }
        info!(connection = %id, version = conn.token_version + 1, expires_in = tokens.expires_in, rotated = tokens.refresh_token.is_some(), "refreshed");
        Ok(Step::Done(Fresh {
            access_token: tokens.access_token,
            token_version: conn.token_version + 1,
            expires_at,
            refreshed: true,
        }))
    }
}
