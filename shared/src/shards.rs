//! Reading a due index sharded over partition keys (the connections'
//! refresh-due index, the sync jobs' due index): every shard at once, page by
//! page, while the caller works through what was found. A run with nothing
//! due costs one query round trip, not one per shard. And how the
//! refresh-due index is split ([`Layout`]): the stack's `RefreshShards`
//! shards, worked by `RefreshGroups` concurrent invocations.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::connection::DUE_SHARDS;

/// What a reader of one shard found.
#[derive(Debug)]
pub enum ShardPage<T> {
    /// A page of due items.
    Items(Vec<T>),
    /// The shard's query failed; the shard waits for the next run.
    Failed { shard: u32, error: String },
    /// Time ran out (`start_by`) before the shard was read to its end.
    OutOfTime,
}

/// The shards of `shards` where `look` (one query: is anything due?) says
/// yes, all asked at once. A look that fails keeps its shard: the run reads
/// it again and reports it. A function's first invocation asks while its
/// configuration is still being read ([`crate::runtime::Starting`]), then
/// works only these.
pub async fn with_due<E, F, Fut>(shards: &[u32], look: F) -> Vec<u32>
where
    E: Send + 'static,
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<bool, E>> + Send + 'static,
{
    let mut looks = tokio::task::JoinSet::new();
    for &shard in shards {
        let due = look(shard);
        looks.spawn(async move { (shard, due.await.unwrap_or(true)) });
    }
    let mut due: Vec<u32> = looks
        .join_all()
        .await
        .into_iter()
        .filter_map(|(shard, due)| due.then_some(shard))
        .collect();
    due.sort_unstable();
    due
}

/// One page of a shard: its items and where the next page starts.
pub type Page<T, C> = (Vec<T>, Option<C>);

/// How the refresh-due index is split and worked: `shards` shards (at least
/// [`DUE_SHARDS`]), in `groups` groups, each worked by its own scheduled
/// invocation; shard `s` belongs to group `s % groups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub shards: u32,
    pub groups: u32,
}

/// The most shards of the refresh-due index (and so the most groups).
pub const MAX_SHARDS: u32 = 1024;

/// A layout that cannot be worked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{name} must be a whole number between {min} and {max}; `{value}` is not")]
    OutOfRange {
        name: &'static str,
        value: String,
        min: u32,
        max: u32,
    },
    #[error("shard group {group} does not exist: there are {groups} groups (0 to {last})", last = groups - 1)]
    NoSuchGroup { group: u32, groups: u32 },
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            shards: DUE_SHARDS,
            groups: 1,
        }
    }
}

impl Layout {
    /// `shards` in `DUE_SHARDS..=MAX_SHARDS`, `groups` in `1..=shards`.
    pub fn new(shards: u32, groups: u32) -> Result<Layout, LayoutError> {
        let range = |name, value: u32, min, max| {
            if (min..=max).contains(&value) {
                Ok(value)
            } else {
                Err(LayoutError::OutOfRange {
                    name,
                    value: value.to_string(),
                    min,
                    max,
                })
            }
        };
        let shards = range("OAUTH_SYNC_REFRESH_SHARDS", shards, DUE_SHARDS, MAX_SHARDS)?;
        let groups = range("OAUTH_SYNC_REFRESH_GROUPS", groups, 1, shards)?;
        Ok(Layout { shards, groups })
    }

    /// From the stack's `OAUTH_SYNC_REFRESH_SHARDS` and
    /// `OAUTH_SYNC_REFRESH_GROUPS` (each optional: 16 shards, one group).
    pub fn from_env() -> Result<Layout, LayoutError> {
        let read = |name: &'static str, default: u32| match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(text) => text.trim().parse().map_err(|_| LayoutError::OutOfRange {
                name,
                value: text.chars().take(40).collect(),
                min: 1,
                max: MAX_SHARDS,
            }),
        };
        Layout::new(
            read("OAUTH_SYNC_REFRESH_SHARDS", DUE_SHARDS)?,
            read("OAUTH_SYNC_REFRESH_GROUPS", 1)?,
        )
    }

    /// The shards of `group`.
    pub fn shards_of(&self, group: u32) -> Result<Vec<u32>, LayoutError> {
        if group >= self.groups {
            return Err(LayoutError::NoSuchGroup {
                group,
                groups: self.groups,
            });
        }
        Ok((group..self.shards).step_by(self.groups as usize).collect())
    }
}

/// Reads every shard with `query(shard, after)` until its last page, a
/// failed query or `start_by`, and hands the pages over as they come. The
/// readers run at most a few pages ahead of the receiver (a bounded
/// channel); the receiver ends when every shard is done.
pub fn read_all<T, C, E, F, Fut>(shards: &[u32], start_by: Instant, query: F) -> mpsc::Receiver<ShardPage<T>>
where
    T: Send + 'static,
    C: Send + 'static,
    E: std::fmt::Display + Send,
    F: Fn(u32, Option<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Page<T, C>, E>> + Send,
{
    let (pages, found) = mpsc::channel(shards.len().max(1));
    let query = Arc::new(query);
    for &shard in shards {
        let (query, pages) = (Arc::clone(&query), pages.clone());
        tokio::spawn(async move {
            let mut after = None;
            loop {
                if Instant::now() >= start_by {
                    let _ = pages.send(ShardPage::OutOfTime).await;
                    return;
                }
                let (items, next) = match query(shard, after).await {
                    Ok(page) => page,
                    Err(error) => {
                        let error = error.to_string();
                        let _ = pages.send(ShardPage::Failed { shard, error }).await;
                        return;
                    }
                };
                if !items.is_empty() && pages.send(ShardPage::Items(items)).await.is_err() {
                    return;
                }
                match next {
                    Some(next) => after = Some(next),
                    None => return,
                }
            }
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Every shard's first query is in flight before any answers: the
    /// queries overlap instead of running one after another.
    #[tokio::test]
    async fn every_shard_is_queried_at_once_and_read_to_its_end() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let all_started = Arc::new(tokio::sync::Barrier::new(DUE_SHARDS as usize));
        let (flight, barrier) = (Arc::clone(&in_flight), Arc::clone(&all_started));
        let all: Vec<u32> = (0..DUE_SHARDS).collect();
        let mut found = read_all(
            &all,
            Instant::now() + Duration::from_secs(600),
            move |shard, after: Option<u32>| {
                let (flight, barrier) = (Arc::clone(&flight), Arc::clone(&barrier));
                async move {
                    if after.is_none() {
                        flight.fetch_add(1, Ordering::SeqCst);
                        // Waits until all 16 first queries started: a reader
                        // that queried the shards in turn would never get here.
                        barrier.wait().await;
                    }
                    match (shard, after) {
                        (3, None) => Ok::<_, String>((vec![(3, 0)], Some(1))),
                        (3, Some(page)) => Ok((vec![(3, page)], None)),
                        (7, None) => Err("throttled".to_owned()),
                        _ => Ok((Vec::new(), None)),
                    }
                }
            },
        );
        let mut items = Vec::new();
        let mut failed = Vec::new();
        let read = async {
            while let Some(page) = found.recv().await {
                match page {
                    ShardPage::Items(mut page) => items.append(&mut page),
                    ShardPage::Failed { shard, error } => failed.push((shard, error)),
                    ShardPage::OutOfTime => panic!("no deadline was near"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the shards' first queries never overlapped");
        assert_eq!(in_flight.load(Ordering::SeqCst), DUE_SHARDS as usize);
        assert_eq!(items, [(3, 0), (3, 1)]);
        assert_eq!(failed, [(7, "throttled".to_owned())]);
    }

    #[tokio::test]
    async fn nothing_is_read_once_time_is_up() {
        let all: Vec<u32> = (0..DUE_SHARDS).collect();
        let mut found = read_all(&all, Instant::now(), |_, _: Option<u32>| async {
            Ok::<_, String>((vec![1], None))
        });
        let mut out_of_time = 0;
        while let Some(page) = found.recv().await {
            assert!(matches!(page, ShardPage::OutOfTime), "{page:?}");
            out_of_time += 1;
        }
        assert_eq!(out_of_time, DUE_SHARDS);
    }
}
