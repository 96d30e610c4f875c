//! The pass loop: the steps docs/sync.md describes, page after page, and
//! what happens at the end of a pass (the sweep, the cursors, the feed).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;
use tracing::warn;
use url::Url;

use super::fetch::Stop;
use super::sweep::Swept;
use super::{Context, RunEnd, SyncEngine};
use crate::config::{Provider, Sync, SyncMode, fill_template};
use crate::connection::{ConnectionId, Status, now_ms};
use crate::dynamo::StoreError;
use crate::json::{scalar_text, value_at};
use crate::sync::compare_cursors;
use crate::sync::jobs::{Checkpoint, Job, LeaseClock, Phase, RunCounts, RunState, SWEEP_MAX_AGE_MS};
use crate::sync::pages::{first_page, set_param};
use crate::telemetry::error_chain;

/// What one step of a run did.
enum Step {
    /// A page was read and stored (and `finished`: it was the run's last).
    Page { finished: bool },
    /// A step of a sweep that had yielded.
    Swept { finished: bool },
}

/// The pass's highest cursor value so far: the data's, or the deleted feed's.
fn note_highest_cursor(cx: &Context<'_>, run: &mut RunState, records: &[Value]) {
    let field = match run.phase {
        Phase::Data => cx.sync.cursor_field.as_deref(),
        Phase::Deleted => cx.sync.deleted.as_ref().map(|(feed, _)| feed.cursor_field.as_str()),
    };
    let Some(field) = field else { return };
    for value in records.iter().filter_map(|r| value_at(r, field).and_then(scalar_text)) {
        if run
            .pass_max
            .as_deref()
            .is_none_or(|max| compare_cursors(&value, max).is_gt())
        {
            run.pass_max = Some(value);
        }
    }
}

/// How a complete data pass ended.
pub(super) enum PassEnd {
    /// Cursors moved (and the sweep done): on to the feed, or finished.
    Done,
    /// The sweep found markers missing: the pass starts again from scratch.
    Again,
}

/// Starts a data pass: a fresh marker name, its start time, no pages yet.
pub(super) fn begin_pass(run: &mut RunState) {
    run.pass_id = format!("{:x}-{:08x}", now_ms(), fastrand::u32(..));
    run.pass_started_at = now_ms();
    run.pass_pages = 0;
    run.pass_max = None;
    run.sweeping = false;
    run.sweep_after = None;
    run.pending_delta_link = None;
}

/// The key of the budget a connection's requests draw on: the app (its
/// credentials secret) and the provider's `rate_key` filled from the
/// connection (Exact Online: the division). A key that cannot be filled
/// falls back to the connection alone.
pub fn rate_key(provider: &Provider, params: &BTreeMap<String, String>, connection: &ConnectionId) -> String {
    let mut params = params.clone();
    params.insert("connection".to_owned(), connection.to_string());
    let key = fill_template(&provider.settings.rate_key, &params, &[]).unwrap_or_else(|_| connection.to_string());
    format!("{}#{key}", provider.credentials_secret)
}

/// The first placeholder of the sync's URL that the connection cannot fill.
pub(super) fn unfilled(
    api_base_url: &Option<String>,
    sync: &Sync,
    params: &BTreeMap<String, String>,
) -> Option<String> {
    let templates = api_base_url
        .iter()
        .chain(std::iter::once(&sync.endpoint))
        .chain(sync.query.values())
        .chain(sync.headers.values());
    for template in templates {
        if let Err(crate::config::TemplateError::Unfilled(name)) = fill_template(template, params, &[]) {
            return Some(name);
        }
    }
    None
}

/// Two filters that must both hold. A side with an `or` goes in parentheses,
/// so that the `or` stays inside it (`A or B` and `C` is `(A or B) and C`,
/// not `A or (B and C)`); a side without one is sent as it is.
pub(super) fn and(a: &str, b: &str) -> String {
    let group = |f: &str| {
        if f.to_ascii_lowercase().contains(" or ") {
            format!("({f})")
        } else {
            f.to_owned()
        }
    };
    format!("{} and {}", group(a), group(b))
}

impl SyncEngine {
    /// The run itself, with the lease held. Returns how it ended and the
    /// counts of this invocation's part of it.
    ///
    /// One function: the run's preconditions, each parking the job with its
    /// reason, then the run state and the pass.
    pub(super) async fn run_claimed(
        &self,
        job: &Job,
        checkpoint: &mut Checkpoint,
        deadline: Instant,
        lease: &LeaseClock,
        on_page: &(dyn Fn(&RunCounts) + std::marker::Sync),
    ) -> (RunEnd, RunCounts) {
        // The configuration this pass started with, whatever is reloaded meanwhile.
        let config = self.config();
        let Some(sync) = config.syncs.get(&job.sync) else {
            return (
                RunEnd::Parked(crate::sync::jobs::unconfigured_reason(&job.sync)),
                RunCounts::default(),
            );
        };
        let provider = match config.provider(&sync.provider) {
            Ok(provider) => provider,
            Err(e) => return (RunEnd::Parked(e.to_string()), RunCounts::default()),
        };
        let connection = match self.tokens.store().get(&job.connection).await {
            Ok(Some(connection)) => connection,
            Ok(None) => {
                return (
                    RunEnd::Parked(format!("connection {} does not exist", job.connection)),
                    RunCounts::default(),
                );
            }
            Err(e) => return (RunEnd::Failed(error_chain(&e)), RunCounts::default()),
        };
        if connection.status != Status::Active {
            let reason = connection.status_reason.map(|r| format!(" ({r})")).unwrap_or_default();
            return (
                RunEnd::Parked(format!(
                    "connection {} is {}{reason}; a new login resumes the sync",
                    job.connection,
                    connection.status.as_str()
                )),
                RunCounts::default(),
            );
        }
        if connection.provider != sync.provider {
            return (
                RunEnd::Parked(format!(
                    "connection {} belongs to provider `{}`, not `{}`",
                    job.connection, connection.provider, sync.provider
                )),
                RunCounts::default(),
            );
        }
        let mut params = provider.settings.params.clone();
        params.extend(connection.url_params());
        if let Some(missing) = unfilled(&provider.settings.api_base_url, sync, &params) {
            let why = connection
                .param_error
                .clone()
                .unwrap_or_else(|| "not learned at login".to_owned());
            return (
                RunEnd::Parked(format!(
                    "connection parameter `{missing}` is missing ({why}); a new login learns it"
                )),
                RunCounts::default(),
            );
        }
        let context = Context {
            job: job.id.clone(),
            connection: &job.connection,
            sync,
            provider,
            rate_key: rate_key(provider, &params, &job.connection),
            params,
            deadline,
            lease: lease.clone(),
            changes: std::sync::atomic::AtomicU64::new(checkpoint.changes),
        };
        let now = now_ms();
        let mut run = checkpoint.run.take().unwrap_or_else(|| RunState {
            run_id: format!("{now:x}-{:04x}", fastrand::u16(..)),
            started_at: now,
            pass_started_at: now,
            sweep: match sync.mode {
                SyncMode::Full => true,
                SyncMode::Delta => false,
                SyncMode::Incremental => sync.sweep_interval_secs.is_some_and(|interval| {
                    checkpoint
                        .last_sweep_at
                        .is_none_or(|at| now - at >= i64::try_from(interval).unwrap_or(i64::MAX) * 1000)
                }),
            },
            ..RunState::default()
        });
        let end = self.pages(&context, checkpoint, &mut run, on_page).await;
        checkpoint.changes = context.next_change();
        let counts = run.counts.clone();
        checkpoint.run = Some(run);
        (end, counts)
    }

    /// Reads pages until the run ends.
    pub(super) async fn pages(
        &self,
        cx: &Context<'_>,
        checkpoint: &mut Checkpoint,
        run: &mut RunState,
        on_page: &(dyn Fn(&RunCounts) + std::marker::Sync),
    ) -> RunEnd {
        loop {
            // Boxed: a step's state (a page in flight, its writes) is large,
            // and the run's future would otherwise carry it inline.
            match Box::pin(self.step(cx, checkpoint, run)).await {
                Ok(Step::Page { finished }) => {
                    on_page(&run.counts);
                    if finished {
                        return RunEnd::Finished;
                    }
                }
                Ok(Step::Swept { finished: true }) => return RunEnd::Finished,
                Ok(Step::Swept { finished: false }) => {}
                Err(end) => return end,
            }
        }
    }

    /// One step of a run, as docs/sync.md tells it: yield when asked to stop or near the deadline;
    /// a page of the pass (fetch, store, the pass's highest cursor) and, after
    /// its last page, the end of the pass (sweep, cursors, feed); then the
    /// checkpoint. A sweep that yielded goes on first.
    async fn step(&self, cx: &Context<'_>, checkpoint: &mut Checkpoint, run: &mut RunState) -> Result<Step, RunEnd> {
        if let Some(why) = self.stop_requested() {
            return Err(RunEnd::Yielded {
                until: now_ms(),
                reason: why,
            });
        }
        let left = cx.deadline.saturating_duration_since(Instant::now());
        if left < self.settings.page_timeout + self.settings.commit_margin {
            return Err(RunEnd::Yielded {
                until: now_ms(),
                reason: "the invocation's deadline is near".to_owned(),
            });
        }
        if run.phase == Phase::Data && run.sweeping {
            let finished = self.data_pass_done(cx, checkpoint, run, None).await?;
            self.save(cx, checkpoint, run).await?;
            return Ok(Step::Swept { finished });
        }
        let url = self.page_url(cx, checkpoint, run)?;
        let page = match Box::pin(self.fetch(cx, &url, checkpoint, &mut run.counts)).await {
            Ok(page) => page,
            Err(Stop::Yield { until, why }) => return Err(RunEnd::Yielded { until, reason: why }),
            Err(Stop::Park(why)) => return Err(RunEnd::Parked(why)),
            Err(Stop::Fail(why)) => return Err(RunEnd::Failed(why)),
            Err(Stop::Gone(why)) => return Err(self.gone(cx, checkpoint, run, why)),
        };
        self.store(cx, run, &page.records).await?;
        run.pass_pages += 1;
        run.counts.pages += 1;
        note_highest_cursor(cx, run, &page.records);
        run.next_url = page.next.as_ref().map(Url::to_string);
        let finished = match (&page.next, run.phase) {
            (Some(_), _) => false,
            (None, Phase::Data) => {
                self.data_pass_done(cx, checkpoint, run, page.delta_link.as_ref())
                    .await?
            }
            (None, Phase::Deleted) => {
                if let Some(max) = run.pass_max.take() {
                    checkpoint.deleted_cursor = Some(max);
                }
                true
            }
        };
        // The page's writes are durable: now the checkpoint.
        self.save(cx, checkpoint, run).await?;
        Ok(Step::Page { finished })
    }

    /// Where the pass goes next: its stored next-page link, or (a pass that
    /// starts) its first page. A data pass older than its markers' life
    /// starts again.
    fn page_url(&self, cx: &Context<'_>, checkpoint: &Checkpoint, run: &mut RunState) -> Result<Url, RunEnd> {
        if run.phase == Phase::Data
            && run.sweep
            && run.next_url.is_some()
            && now_ms() - run.pass_started_at > SWEEP_MAX_AGE_MS
        {
            // Its first markers may be gone: a pass this old starts again.
            warn!(
                job = cx.job,
                "a sweep older than its seen-id markers' life starts again from scratch"
            );
            run.next_url = None;
        }
        if run.phase == Phase::Data && run.next_url.is_none() {
            begin_pass(run);
        }
        match &run.next_url {
            Some(next) => {
                Url::parse(next).map_err(|e| RunEnd::Failed(format!("the stored next-page link is not a URL: {e}")))
            }
            None => self.first_url(cx, checkpoint, run).map_err(RunEnd::Parked),
        }
    }

    /// Stores a page's records (only while the lease holds) and, in a sweep,
    /// the ids it saw.
    async fn store(&self, cx: &Context<'_>, run: &mut RunState, records: &[Value]) -> Result<(), RunEnd> {
        let (changes, seen) = self.changes(cx, run, records);
        run.counts.fetched += records.len() as u64;
        if !self.lease_holds(cx).await {
            return Err(RunEnd::LostLease);
        }
        match self.store_page(cx, changes).await {
            Ok(applied) => {
                run.counts.inserted += applied.inserted;
                run.counts.updated += applied.updated;
                run.counts.unchanged += applied.unchanged;
                run.counts.deleted += applied.deleted;
            }
            Err(StoreError::LeaseLost) => return Err(RunEnd::LostLease),
            Err(e) => return Err(RunEnd::Failed(format!("storing the page failed: {}", error_chain(&e)))),
        }
        if run.sweep && run.phase == Phase::Data {
            let saved = self.jobs.save_seen(&cx.job, &run.pass_id, run.pass_pages, &seen).await;
            saved.map_err(|e| RunEnd::Failed(format!("saving the sweep's seen ids failed: {}", error_chain(&e))))?;
        }
        Ok(())
    }

    /// After the last page of a data pass, or to go on with its sweep:
    /// whether the run is finished (else the feed or a new pass follows).
    async fn data_pass_done(
        &self,
        cx: &Context<'_>,
        checkpoint: &mut Checkpoint,
        run: &mut RunState,
        delta_link: Option<&Url>,
    ) -> Result<bool, RunEnd> {
        match self.end_data_pass(cx, checkpoint, run, delta_link).await? {
            PassEnd::Done if cx.sync.deleted.is_some() => {
                run.phase = Phase::Deleted;
                run.pass_pages = 0;
                Ok(false)
            }
            PassEnd::Done => Ok(true),
            PassEnd::Again => Ok(false),
        }
    }

    /// Saves the checkpoint with the run's place, while the lease holds.
    pub(super) async fn save(&self, cx: &Context<'_>, checkpoint: &Checkpoint, run: &RunState) -> Result<(), RunEnd> {
        let mut saved = checkpoint.clone();
        saved.run = Some(run.clone());
        saved.changes = cx.next_change();
        match self.jobs.checkpoint(&cx.job, &self.worker, &saved).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(RunEnd::LostLease),
            Err(e) => Err(RunEnd::Failed(format!(
                "saving the checkpoint failed: {}",
                error_chain(&e)
            ))),
        }
    }

    /// A 400, 404 or 410 on a link the provider gave (an expired next-page or
    /// delta link). The pass starts again as a sweep, from scratch: neither
    /// the stored delta link nor the cursor (both only know recent changes),
    /// so that deletions missed with the lost link are still found, and
    /// nothing is marked deleted on the word of a pass that did not read
    /// everything.
    pub(super) fn gone(
        &self,
        cx: &Context<'_>,
        checkpoint: &mut Checkpoint,
        run: &mut RunState,
        why: String,
    ) -> RunEnd {
        let had_next = run.next_url.take().is_some();
        let had_delta =
            cx.sync.mode == SyncMode::Delta && run.phase == Phase::Data && checkpoint.delta_link.take().is_some();
        if !had_next && !had_delta {
            return RunEnd::Failed(why);
        }
        if run.phase == Phase::Data {
            run.sweep = cx.sync.mode != SyncMode::Incremental || cx.sync.sweep_interval_secs.is_some();
        }
        RunEnd::Failed(format!("{why}; the next run starts the pass again"))
    }

    /// The end of a complete data pass: a sweep marks what the pass did not
    /// see as deleted, if every page's seen-id marker is still there (else
    /// the pass starts again); only then do the cursor and the delta link
    /// move, so a pass that fails at its end is read again from scratch,
    /// never resumed from a link that knows only recent changes.
    pub(super) async fn end_data_pass(
        &self,
        cx: &Context<'_>,
        checkpoint: &mut Checkpoint,
        run: &mut RunState,
        delta_link: Option<&Url>,
    ) -> Result<PassEnd, RunEnd> {
        if let Some(link) = delta_link {
            run.pending_delta_link = Some(link.to_string());
        }
        if run.sweep {
            run.sweeping = true;
            if self.sweep(cx, checkpoint, run).await? == Swept::Again {
                return Ok(PassEnd::Again);
            }
            run.sweeping = false;
            checkpoint.last_sweep_at = Some(run.pass_started_at);
        }
        if let Some(link) = run.pending_delta_link.take() {
            checkpoint.delta_link = Some(link);
        }
        if let Some(max) = run.pass_max.take()
            && checkpoint
                .cursor
                .as_deref()
                .is_none_or(|c| compare_cursors(&max, c).is_gt())
        {
            checkpoint.cursor = Some(max);
        }
        Ok(PassEnd::Done)
    }

    /// The first page of the current pass.
    pub(super) fn first_url(&self, cx: &Context<'_>, checkpoint: &Checkpoint, run: &RunState) -> Result<Url, String> {
        let sync = cx.sync;
        if run.phase == Phase::Data
            && sync.mode == SyncMode::Delta
            && !run.sweep
            && let Some(link) = &checkpoint.delta_link
        {
            return Url::parse(link).map_err(|e| format!("the stored delta link is not a URL: {e}"));
        }
        let (endpoint, mut query, cursor_field, cursor) = match run.phase {
            Phase::Data => (
                sync.endpoint.as_str(),
                sync.query.clone(),
                sync.cursor_field.as_deref(),
                if run.sweep { None } else { checkpoint.cursor.clone() },
            ),
            Phase::Deleted => {
                let Some((feed, _)) = &sync.deleted else {
                    return Err("no deleted-records feed".to_owned());
                };
                (
                    feed.endpoint.as_str(),
                    feed.query.clone(),
                    Some(feed.cursor_field.as_str()),
                    checkpoint.deleted_cursor.clone(),
                )
            }
        };
        let filter_on_cursor = sync.mode == SyncMode::Incremental;
        if filter_on_cursor
            && let (Some(incremental), Some(field)) = (&sync.incremental, cursor_field)
            && let Some(cursor) = cursor.or_else(|| incremental.initial.clone())
        {
            let filter = incremental
                .filter
                .replace("{field}", field)
                .replace("{cursor}", &cursor);
            let value = match query.remove(&incremental.param) {
                Some(own) => and(&own, &filter),
                None => filter,
            };
            query.insert(incremental.param.clone(), value);
        }
        if run.phase == Phase::Deleted
            && let Some((feed, entity_type)) = &sync.deleted
        {
            let param = sync.incremental.as_ref().map_or("$filter", |i| i.param.as_str());
            let extra = format!("{} eq {entity_type}", feed.type_field);
            let value = match query.remove(param) {
                Some(filter) => and(&filter, &extra),
                None => extra,
            };
            query.insert(param.to_owned(), value);
        }
        let endpoint = fill_template(endpoint, &cx.params, &[]).map_err(|e| e.to_string())?;
        let full = if endpoint.starts_with('/') {
            let base = cx.provider.settings.api_base_url.as_deref().unwrap_or_default();
            let base = fill_template(base, &cx.params, &[]).map_err(|e| e.to_string())?;
            format!("{}{endpoint}", base.trim_end_matches('/'))
        } else {
            endpoint
        };
        let mut url = Url::parse(&full).map_err(|e| format!("the endpoint `{full}` is not a URL: {e}"))?;
        for (key, value) in &query {
            let value = fill_template(value, &cx.params, &[]).map_err(|e| e.to_string())?;
            set_param(&mut url, key, &value);
        }
        Ok(first_page(&sync.pagination, url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_joined_so_that_an_or_stays_inside_its_side() {
        assert_eq!(and("A or B", "T gt 1L"), "(A or B) and T gt 1L");
        assert_eq!(and("A eq 1", "T gt 1L"), "A eq 1 and T gt 1L");
        assert_eq!(and("A eq 1", "X OR Y"), "A eq 1 and (X OR Y)");
    }
}
