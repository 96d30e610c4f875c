//! Login attempts in the login-attempts table, keyed by a hash of the `state`
//! (the state itself is never stored). An attempt is consumed with one
//! conditional write that also checks expiry and the browser binding, so a
//! replayed, expired or foreign-browser callback changes nothing.
//!
//! The same table records which connect links have finished a login (keyed
//! by the link's id, a hash of its signature, until the link expires), so a
//! link connects once.

use std::collections::HashMap;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use crate::connection::{ConnectionId, ConnectionKind, Sealed};
use crate::crypto::sha256_b64url;
use crate::dynamo::{Conditional, Item, StoreError, conditional, has_s, n, s, sdk_failure};

/// A login in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider: String,
    pub connection: ConnectionId,
    pub kind: ConnectionKind,
    pub return_url: Option<String>,
    /// The exact redirect URI sent to the provider (the code exchange repeats it).
    pub redirect_uri: String,
    /// The PKCE verifier, sealed for (`login:{state hash}`, `pkce_verifier`).
    pub pkce_verifier: Sealed,
    /// The connect link that started it ([`crate::login::link_id`]).
    pub link_id: String,
    /// When that link was made (epoch ms) and when it expires (epoch s).
    pub link_issued_at: i64,
    pub link_expires_at: i64,
    /// Epoch seconds (the table's TTL attribute).
    pub expires_at: i64,
}

/// Why a callback's `state` cannot be used. None of these changes the attempt.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("this login link was already used; start again from a new connect link")]
    Replayed,
    /// The provider's answer was a cancel (or a refusal) for this login: the
    /// link is still unused and starts a new login.
    #[error("this login was cancelled at the provider; open the connect link again to start over")]
    Cancelled,
    /// The same browser pressed the button of the same link again: only the
    /// newest login of a link and browser can finish.
    #[error("a newer login from the same link replaced this one in this browser; finish the newest one")]
    Superseded,
    #[error("this login took too long and expired; start again from a new connect link")]
    Expired,
    #[error("this login was started in another browser; finish it in the browser that opened the connect link")]
    OtherBrowser,
    #[error("this login is unknown; start again from a new connect link")]
    Unknown,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another attempt holds this state (256 random bits: never by chance).
    #[error("a login attempt with this state exists already")]
    StateTaken,
    #[error("a stored login attempt is malformed ({0})")]
    Malformed(&'static str),
}

/// The login-attempts table.
#[derive(Debug, Clone)]
pub struct AttemptStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The key of an attempt: the state's hash, so a table dump reveals no state.
/// Hashed under its own prefix (`state:`), as a used link's key is under
/// `link:` ([`crate::login::link::link_id`]): no `state` a caller sends can
/// name a used-link item, so a callback learns nothing about links.
pub fn state_key(state: &str) -> String {
    sha256_b64url(format!("state:{state}").as_bytes())
}

/// The key of the mark that names the one live attempt of a link in a
/// browser (a hash under its own prefix, like states and links).
pub fn press_key(link_id: &str, cookie: &str) -> String {
    sha256_b64url(format!("press:{link_id}\n{}", browser_key(cookie)).as_bytes())
}

/// The browser binding: a hash of the cookie's value.
pub fn browser_key(cookie: &str) -> String {
    sha256_b64url(format!("browser:{cookie}").as_bytes())
}

impl AttemptStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> AttemptStore {
        AttemptStore {
            client,
            table: table.into(),
        }
    }

    fn fail<E>(&self, operation: &'static str, error: SdkError<E, HttpResponse>) -> AttemptError
    where
        aws_sdk_dynamodb::Error: From<SdkError<E, HttpResponse>>,
    {
        sdk_failure(operation, &self.table, error).into()
    }

    /// Stores a new attempt under `state`, bound to the browser holding `cookie`.
    pub async fn put(&self, state: &str, cookie: &str, attempt: &Attempt, now_ms: i64) -> Result<(), AttemptError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("state_hash", s(&state_key(state)))
            .item("browser_hash", s(&browser_key(cookie)))
            .item("provider", s(&attempt.provider))
            .item("connection_id", s(attempt.connection.as_str()))
            .item("kind", s(attempt.kind.as_str()))
            .item("redirect_uri", s(&attempt.redirect_uri))
            .item(
                "pkce_verifier",
                AttributeValue::B(attempt.pkce_verifier.0.clone().into()),
            )
            .item("link_id", s(&attempt.link_id))
            .item("link_issued_at", n(attempt.link_issued_at))
            .item("link_expires_at", n(attempt.link_expires_at))
            .item("created_at", n(now_ms))
            .item("expires_at", n(attempt.expires_at))
            .condition_expression("attribute_not_exists(state_hash)");
        if let Some(return_url) = &attempt.return_url {
            request = request.item("return_url", s(return_url));
        }
        let sent = request
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        // The SDK's retry of a put whose answer was lost meets the put itself.
        let ours = |item: &Item| {
            has_s(item, "browser_hash", &browser_key(cookie))
                && has_s(item, "link_id", &attempt.link_id)
                && item.get("created_at") == Some(&n(now_ms))
        };
        match conditional(sent, "PutItem(login attempt)", &self.table, ours)? {
            Conditional::Done => self.supersede_older(state, cookie, attempt, now_ms).await,
            Conditional::Refused(_) => Err(AttemptError::StateTaken),
        }
    }

    /// Makes `state` the one live attempt of its link in this browser: the
    /// mark of (link, browser) names it now, and the attempt it named before
    /// is spent (`superseded`), so pressing the button again and again
    /// leaves one login that can finish, not one per press.
    async fn supersede_older(
        &self,
        state: &str,
        cookie: &str,
        attempt: &Attempt,
        now_ms: i64,
    ) -> Result<(), AttemptError> {
        let output = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("state_hash", s(&press_key(&attempt.link_id, cookie)))
            .item("attempt", s(&state_key(state)))
            .item("expires_at", n(attempt.expires_at))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| self.fail("PutItem(login press)", e))?;
        let older = match output.attributes.as_ref().and_then(|a| a.get("attempt")) {
            Some(AttributeValue::S(older)) if *older != state_key(state) => older.clone(),
            _ => return Ok(()),
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("state_hash", s(&older))
            .update_expression("SET consumed_at = :now, outcome = :superseded")
            .condition_expression("attribute_exists(state_hash) AND attribute_not_exists(consumed_at)")
            .expression_attribute_values(":now", n(now_ms / 1000))
            .expression_attribute_values(":superseded", s("superseded"))
            .send()
            .await;
        // Refused: finished, cancelled or expired meanwhile; nothing left to spend.
        conditional(result, "UpdateItem(supersede login attempt)", &self.table, |_| false)?;
        Ok(())
    }

    /// Whether the link `link_id` has already finished a login (consistent read).
    pub async fn link_used(&self, link_id: &str) -> Result<bool, AttemptError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("state_hash", s(link_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.fail("GetItem(connect link)", e))?;
        Ok(output.item.is_some())
    }

    /// Marks the link `link_id` as used by the login whose state is `state`,
    /// once (a conditional write): `false` when another login used it. A
    /// retried write whose first try landed unseen finds its own claim and
    /// counts as done. The record lives until the link expires, and a day at
    /// least after `now_secs`.
    pub async fn use_link(
        &self,
        link_id: &str,
        state: &str,
        link_expires_at: i64,
        now_secs: i64,
    ) -> Result<bool, AttemptError> {
        let claimed_by = state_key(state);
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("state_hash", s(link_id))
            .item("claimed_by", s(&claimed_by))
            .item("used_at", n(now_secs))
            .item("expires_at", n(link_expires_at.max(now_secs + 86_400)))
            .condition_expression("attribute_not_exists(state_hash)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let ours = |item: &Item| has_s(item, "claimed_by", &claimed_by);
        Ok(matches!(
            conditional(sent, "PutItem(connect link)", &self.table, ours)?,
            Conditional::Done
        ))
    }

    /// Consumes the attempt for `state`, once: only if it exists, is not used,
    /// has not expired and belongs to the browser holding `cookie`. `cancelled`:
    /// the provider's answer was an error (the person cancelled or the
    /// provider refused), which the attempt keeps so that a later answer for
    /// it says so instead of "already used".
    pub async fn consume(
        &self,
        state: &str,
        cookie: Option<&str>,
        now_secs: i64,
        cancelled: bool,
    ) -> Result<Attempt, AttemptError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("state_hash", s(&state_key(state)))
            .update_expression("SET consumed_at = :now, outcome = :outcome")
            .expression_attribute_values(":outcome", s(if cancelled { "cancelled" } else { "code" }))
            .condition_expression(
                "attribute_exists(state_hash) AND attribute_not_exists(consumed_at) AND expires_at > :now \
                 AND browser_hash = :browser",
            )
            .expression_attribute_values(":now", n(now_secs))
            .expression_attribute_values(":browser", s(&cookie.map(browser_key).unwrap_or_default()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let sent = match request.send().await {
            Ok(output) => return from_item(output.attributes.unwrap_or_default()),
            Err(e) => Err::<(), _>(e),
        };
        let item = match conditional(sent, "UpdateItem(consume login attempt)", &self.table, |_| false)? {
            Conditional::Refused(item) => item,
            Conditional::Done => unreachable!("a failed call is never done"),
        };
        Err(match item {
            None => AttemptError::Unknown,
            Some(item) if has_s(&item, "outcome", "cancelled") => AttemptError::Cancelled,
            Some(item) if has_s(&item, "outcome", "superseded") => AttemptError::Superseded,
            Some(item) if item.contains_key("consumed_at") => AttemptError::Replayed,
            Some(item) if number(&item, "expires_at").is_none_or(|e| e <= now_secs) => AttemptError::Expired,
            Some(_) => AttemptError::OtherBrowser,
        })
    }
}

fn number(item: &HashMap<String, AttributeValue>, key: &str) -> Option<i64> {
    match item.get(key) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn from_item(item: HashMap<String, AttributeValue>) -> Result<Attempt, AttemptError> {
    let text = |key: &'static str| match item.get(key) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(AttemptError::Malformed(key)),
    };
    let kind = match text("kind")?.as_str() {
        "shared" => ConnectionKind::Shared,
        "per_user" => ConnectionKind::PerUser,
        _ => return Err(AttemptError::Malformed("kind")),
    };
    let pkce_verifier = match item.get("pkce_verifier") {
        Some(AttributeValue::B(blob)) => Sealed(blob.clone().into_inner()),
        _ => return Err(AttemptError::Malformed("pkce_verifier")),
    };
    Ok(Attempt {
        provider: text("provider")?,
        connection: ConnectionId::parse(&text("connection_id")?)
            .map_err(|_| AttemptError::Malformed("connection_id"))?,
        kind,
        return_url: text("return_url").ok(),
        redirect_uri: text("redirect_uri")?,
        pkce_verifier,
        link_id: text("link_id")?,
        link_issued_at: number(&item, "link_issued_at").ok_or(AttemptError::Malformed("link_issued_at"))?,
        link_expires_at: number(&item, "link_expires_at").ok_or(AttemptError::Malformed("link_expires_at"))?,
        expires_at: number(&item, "expires_at").ok_or(AttemptError::Malformed("expires_at"))?,
    })
}
