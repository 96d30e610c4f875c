//! Reading many connections: the operator's listing, a provider's page for
//! the API, and the refresh-due index for the token-refresher.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use aws_sdk_dynamodb::types::AttributeValue;

use super::{ConnectionStore, PROVIDER_INDEX, from_item};
use crate::connection::{Connection, ConnectionId};
use crate::dynamo::{StoreError, batch_get, n, s, scan_all};

/// One page of the refresh-due index, from [`ConnectionStore::due`].
#[derive(Debug)]
pub struct DuePage {
    pub ids: Vec<ConnectionId>,
    /// Each id's `refresh_due_at` (epoch ms), in the same order.
    pub due_at: Vec<i64>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<DueCursor>,
}

/// An opaque position in the refresh-due index (DynamoDB's `LastEvaluatedKey`:
/// ids and due times only, nothing secret).
#[derive(Debug, Clone)]
pub struct DueCursor(HashMap<String, AttributeValue>);

impl ConnectionStore {
    /// Every connection, for the operator's `list` (a paginated Scan: an
    /// operator command, never on a function's path).
    pub async fn list(&self) -> Result<Vec<Connection>, StoreError> {
        let items = scan_all(&self.client, &self.table, Some(&self.ops), "Scan").await?;
        // The refresher's shard leases share the table; a `#` is in no connection id.
        let connections = items
            .into_iter()
            .filter(|item| !matches!(item.get("id"), Some(AttributeValue::S(id)) if id.contains('#')));
        let mut connections = connections.map(from_item).collect::<Result<Vec<_>, _>>()?;
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
    /// due by `until` (epoch ms), with their due times, soonest first; `after`
    /// is the previous page's `next`.
    pub async fn due(
        &self,
        shard: &str,
        until: i64,
        limit: i32,
        after: Option<DueCursor>,
    ) -> Result<DuePage, StoreError> {
        self.ops.queries.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("refresh-due")
            .key_condition_expression("due_shard = :shard AND refresh_due_at <= :until")
            .expression_attribute_values(":shard", s(shard))
            .expression_attribute_values(":until", n(until))
            .limit(limit)
            .set_exclusive_start_key(after.map(|cursor| cursor.0))
            .send()
            .await
            .map_err(|e| self.fail("Query(refresh-due)", e))?;
        let (ids, due_at) = output
            .items
            .unwrap_or_default()
            .iter()
            .map(due_entry)
            .collect::<Result<(Vec<_>, Vec<_>), _>>()?;
        Ok(DuePage {
            ids,
            due_at,
            next: output.last_evaluated_key.filter(|key| !key.is_empty()).map(DueCursor),
        })
    }
}

/// An entry of the refresh-due index: the id and its due time (the index's
/// keys, which a keys-only projection carries).
fn due_entry(item: &HashMap<String, AttributeValue>) -> Result<(ConnectionId, i64), StoreError> {
    let malformed = |id: &str, reason: &str| StoreError::Malformed {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(AttributeValue::S(id)) = item.get("id") else {
        return Err(malformed("?", "index item without id"));
    };
    let parsed = ConnectionId::parse(id).map_err(|e| malformed(id, &e.to_string()))?;
    let due_at = match item.get("refresh_due_at") {
        Some(AttributeValue::N(due)) => due
            .parse()
            .map_err(|_| malformed(id, "refresh_due_at is not a number"))?,
        _ => return Err(malformed(id, "index item without refresh_due_at")),
    };
    Ok((parsed, due_at))
}
