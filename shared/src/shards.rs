//! Reading a due index sharded over [`DUE_SHARDS`] partition keys (the
//! connections' refresh-due index, the sync jobs' due index): every shard at
//! once, page by page, while the caller works through what was found. A run
//! with nothing due costs one query round trip, not one per shard.

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

/// One page of a shard: its items and where the next page starts.
pub type Page<T, C> = (Vec<T>, Option<C>);

/// Reads every shard with `query(shard, after)` until its last page, a
/// failed query or `start_by`, and hands the pages over as they come. The
/// readers run at most a few pages ahead of the receiver (a bounded
/// channel); the receiver ends when every shard is done.
pub fn read_all<T, C, E, F, Fut>(start_by: Instant, query: F) -> mpsc::Receiver<ShardPage<T>>
where
    T: Send + 'static,
    C: Send + 'static,
    E: std::fmt::Display + Send,
    F: Fn(u32, Option<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Page<T, C>, E>> + Send,
{
    let (pages, found) = mpsc::channel(DUE_SHARDS as usize);
    let query = Arc::new(query);
    for shard in 0..DUE_SHARDS {
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
        let mut found = read_all(
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
        let mut found = read_all(Instant::now(), |_, _: Option<u32>| async {
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
