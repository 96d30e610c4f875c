//! The token-refresher's shard leases: one item per shard of the refresh-due
//! index (`refresh-shard#N`; no connection id has a `#`), so that two
//! invocations never work the same shard at once. The lease is only about
//! work: the refresh protocol's own lease on each connection keeps a refresh
//! token from being spent twice whatever the shard leases do.

use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

use super::ConnectionStore;
use crate::dynamo::{Conditional, Item, StoreError, has_s, n, s};

/// What [`ConnectionStore::take_shard_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardLease {
    /// Ours until the time asked for.
    Taken,
    /// Another invocation holds it until `until` (epoch ms).
    Held { owner: String, until: i64 },
}

fn lease_id(shard: u32) -> String {
    format!("refresh-shard#{shard}")
}

impl ConnectionStore {
    /// Takes `shard`'s lease for `owner` until `until` (epoch ms): one
    /// conditional write that succeeds when nobody holds it, its holder's
    /// time is over (`now`), or `owner` holds it already.
    pub async fn take_shard_lease(
        &self,
        shard: u32,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<ShardLease, StoreError> {
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(&lease_id(shard)))
            .update_expression("SET lease_owner = :me, lease_until = :until")
            .condition_expression("attribute_not_exists(lease_owner) OR lease_until <= :now OR lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        self.count_write();
        let ours = |item: &Item| has_s(item, "lease_owner", owner);
        match crate::dynamo::conditional(sent, "UpdateItem(shard lease)", &self.table, ours)? {
            Conditional::Done => Ok(ShardLease::Taken),
            Conditional::Refused(item) => {
                let item = item.unwrap_or_default();
                let owner = item
                    .get("lease_owner")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let until = item
                    .get("lease_until")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(now);
                Ok(ShardLease::Held { owner, until })
            }
        }
    }

    /// Gives `shard`'s lease back if `owner` still holds it (a lease taken
    /// over meanwhile is left alone).
    pub async fn release_shard_lease(&self, shard: u32, owner: &str) -> Result<(), StoreError> {
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(&lease_id(shard)))
            .update_expression("REMOVE lease_owner, lease_until")
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        self.count_write();
        crate::dynamo::conditional(sent, "UpdateItem(shard lease release)", &self.table, |_| false)?;
        Ok(())
    }

    fn count_write(&self) {
        self.ops.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
