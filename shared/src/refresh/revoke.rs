//! Disconnecting: the tokens revoked at the provider (RFC 7009) under the
//! refresh lease, then erased, and the connection marked revoked.

use std::time::Instant;

use tracing::info;

use super::lease::LeaseState;
use super::{Mode, Pass, RefreshError, TokenService};
use crate::config::Provider;
use crate::connection::store::Write;
use crate::connection::{Connection, ConnectionId, Status, now_ms};
use crate::oauth::TokenEndpoint;

/// What [`TokenService::revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// The provider's RFC 7009 endpoint confirmed the revocation.
    pub at_provider: bool,
    /// The connection was revoked before this call.
    pub already: bool,
}

impl TokenService {
    /// Disconnects: revokes the tokens at the provider's RFC 7009 endpoint
    /// when it has one (the refresh token first, which ends the whole grant),
    /// then erases them and marks the connection revoked. The revocation holds
    /// the refresh lease, so no refresh spends the token meanwhile; a lease
    /// whose holder vanished is taken over, a live one makes the caller retry.
    /// A provider that cannot revoke right now (503) leaves everything as it
    /// was: the tokens still live there, so they are kept and the caller retries.
    pub async fn revoke(&self, id: &ConnectionId) -> Result<Revoked, RefreshError> {
        let owner = self.owner();
        let deadline = Instant::now() + self.settings.time_for_a_send() + self.settings.token_timeout;
        for _ in 0..5 {
            let conn = self.read(id).await?;
            if conn.status == Status::Revoked {
                return Ok(Revoked {
                    at_provider: false,
                    already: true,
                });
            }
            let config = self.config();
            let provider = config.provider(&conn.provider)?;
            let pass = Pass {
                conn: &conn,
                provider,
                owner: &owner,
                deadline,
                mode: Mode::Force,
                permit: None,
            };
            let taken = match LeaseState::of(&conn, &owner, now_ms()) {
                LeaseState::Live(_) => {
                    return Err(RefreshError::RetryLater {
                        id: id.clone(),
                        until: now_ms() + 1_000,
                        cause: "a refresh is in progress".to_owned(),
                    });
                }
                LeaseState::Mine(_) => true,
                LeaseState::Free => self.take_lease(&pass, false).await?.is_some(),
                LeaseState::Abandoned(lease) => self.take_over_lease(&pass, lease, false).await?.is_some(),
            };
            if !taken {
                continue;
            }
            let at_provider = match self.revoke_at_provider(&conn, provider).await {
                Ok(at_provider) => at_provider,
                Err(e) => {
                    self.write(
                        id,
                        self.store
                            .release_unused_lease(id, Some(conn.token_version), &owner)
                            .await,
                    )?;
                    return Err(e);
                }
            };
            match self.write(id, self.store.mark_revoked(id, conn.token_version, &owner).await)? {
                Write::Done => {
                    info!(connection = %id, at_provider, "connection revoked");
                    self.events
                        .publish(crate::events::Event::Revoked(crate::events::Revoked {
                            connection: id.to_string(),
                            provider: conn.provider.clone(),
                            at_provider,
                        }))
                        .await;
                    return Ok(Revoked {
                        at_provider,
                        already: false,
                    });
                }
                Write::Conflict(_) => continue,
            }
        }
        Err(RefreshError::RetryLater {
            id: id.clone(),
            until: now_ms() + 1_000,
            cause: "the connection kept changing".into(),
        })
    }

    /// Revokes the stored tokens at the provider's RFC 7009 endpoint, if it
    /// has one. `true` when the provider confirmed.
    async fn revoke_at_provider(&self, conn: &Connection, provider: &Provider) -> Result<bool, RefreshError> {
        let id = &conn.id;
        if provider.revocation_url.is_none() {
            return Ok(false);
        }
        let credentials = self.credentials(provider).await?;
        let endpoint = TokenEndpoint {
            provider,
            credentials: &credentials,
            http: &self.http,
        };
        let tokens = [
            (
                conn.refresh_token.as_ref(),
                "refresh_token",
                crate::oauth::TokenHint::RefreshToken,
            ),
            (
                conn.access_token.as_ref(),
                "access_token",
                crate::oauth::TokenHint::AccessToken,
            ),
        ];
        let mut at_provider = false;
        for (sealed, field, hint) in tokens {
            let Some(sealed) = sealed else { continue };
            let token = self
                .keys
                .get()
                .await?
                .open(id.as_str(), field, &sealed.0)
                .await
                .map_err(|source| RefreshError::Crypto { id: id.clone(), source })?;
            at_provider |= endpoint
                .revoke(&token, hint)
                .await
                .map_err(|e| RefreshError::RetryLater {
                    id: id.clone(),
                    until: now_ms() + 60_000,
                    cause: format!("revocation at the provider failed, nothing was erased: {e}"),
                })?;
        }
        Ok(at_provider)
    }
}
