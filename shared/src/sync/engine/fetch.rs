//! How a page travels in: the rate budget, the access token, the request,
//! and bounded retries with jittered backoff.

use std::time::{Duration, Instant};

use tracing::warn;
use url::Url;

use super::{Context, SyncEngine, millis};
use crate::config::fill_template;
use crate::connection::now_ms;
use crate::refresh::RefreshError;
use crate::sync::jobs::{Checkpoint, RunCounts};
use crate::sync::pages::{Page, parse_page};
use crate::sync::rate::{Answer, Draw, Ticket};
use crate::telemetry::error_chain;
use crate::text::excerpt;

/// Why fetching a page stopped the run.
pub(super) enum Stop {
    Yield {
        until: i64,
        why: String,
    },
    Park(String),
    Fail(String),
    /// A 400, 404 or 410 on a link the provider gave (an expired next-page or
    /// delta link): the pass starts again, from the cursor, as a sweep.
    Gone(String),
}

/// A token that could not be had ends the run: a dead connection parks it,
/// a provider that is down makes it wait.
pub(super) fn token_stop(error: RefreshError) -> Stop {
    match error {
        RefreshError::NeedsReauth { .. } | RefreshError::NotActive { .. } | RefreshError::NotFound(_) => {
            Stop::Park(format!("{error}; a new login resumes the sync"))
        }
        RefreshError::RetryLater { until, .. } => Stop::Yield {
            until,
            why: error.to_string(),
        },
        other => Stop::Fail(format!("no access token: {}", error_chain(&other))),
    }
}

impl SyncEngine {
    /// One page: rate gate, token, request, with bounded retries.
    ///
    /// One loop, not split: each answer's branch decides whether the same page
    /// goes again, with which token and after which wait, state a helper would
    /// have to hand back.
    pub(super) async fn fetch(
        &self,
        cx: &Context<'_>,
        url: &Url,
        checkpoint: &mut Checkpoint,
        counts: &mut RunCounts,
    ) -> Result<Page, Stop> {
        let settings = &cx.provider.settings;
        let mut attempt = 0u32;
        let mut throttled = 0u32;
        let mut refreshed = false;
        loop {
            let (token, version) = match self.tokens.access_token(cx.connection, cx.deadline).await {
                Ok(fresh) => (fresh.access_token, fresh.token_version),
                Err(e) => return Err(token_stop(e)),
            };
            // The token first, then the draw: a refresh holds no reservation.
            let ticket = self.draw(cx, counts).await?;
            let mut request = self
                .http
                .get(url.clone())
                .bearer_auth(token.secret())
                .header(reqwest::header::ACCEPT, "application/json");
            for (name, value) in &cx.sync.headers {
                let value = fill_template(value, &cx.params, &[]).map_err(|e| Stop::Park(e.to_string()))?;
                request = request.header(name.as_str(), value);
            }
            counts.requests += 1;
            let sent = tokio::select! {
                sent = request.send() => sent,
                why = self.stopped() => {
                    // It may have counted at the provider: the reservation stays spent.
                    self.observe(cx, ticket, &Answer::lost()).await;
                    return Err(Stop::Yield { until: now_ms(), why });
                }
            };
            let now = now_ms();
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    // It may have counted at the provider: the reservation stays spent.
                    self.observe(cx, ticket, &Answer::lost()).await;
                    attempt += 1;
                    let why = format!("the request failed: {}", error_chain(&e));
                    self.retry(cx, attempt, None, counts, why).await?;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let mut answer = Answer::read(&settings.rate_limits, header, status, now);
            if status == 429 && answer.retry_after_secs.is_none() && answer.windows.iter().all(|w| w.remaining > 0) {
                // A 429 that says nothing of how long: back off exponentially.
                answer.retry_after_secs = Some(self.backoff(throttled + 1).as_secs().max(1));
            }
            self.observe(cx, ticket, &answer).await;
            // What this job last saw, for `sync status`; the gate is the shared budget.
            checkpoint.rate.observe(&settings.rate_limits, header, now);
            let retry_after = answer.retry_after_secs;
            let body = tokio::select! {
                body = response.bytes() => body,
                why = self.stopped() => return Err(Stop::Yield { until: now_ms(), why }),
            };
            let body = match body {
                Ok(body) => body,
                Err(e) => {
                    attempt += 1;
                    let why = format!("reading the page failed: {}", error_chain(&e));
                    self.retry(cx, attempt, None, counts, why).await?;
                    continue;
                }
            };
            match status {
                200..=299 => {
                    let link = headers.get(reqwest::header::LINK).and_then(|v| v.to_str().ok());
                    match parse_page(&cx.sync.pagination, &cx.sync.records, url, link, &body) {
                        Ok(page) => return Ok(page),
                        Err(e) if e.is_transient() => {
                            attempt += 1;
                            self.retry(cx, attempt, None, counts, e.to_string()).await?;
                        }
                        Err(e) => return Err(Stop::Fail(format!("{}: {e}", url.path()))),
                    }
                }
                401 if !refreshed => {
                    // The token expired early or was revoked: this page again
                    // with a newer token, once, never a loop. When another
                    // worker already rotated the token, its version is newer
                    // and no refresh is spent (Exact refuses a second one
                    // within 9.5 minutes); else one refresh through the protocol.
                    refreshed = true;
                    match self.tokens.replace_refused(cx.connection, version, cx.deadline).await {
                        Ok(fresh) if fresh.refreshed => counts.token_refreshes += 1,
                        Ok(_) => {}
                        Err(e) => return Err(token_stop(e)),
                    }
                }
                403 => {
                    // Access refused until somebody with rights acts (an admin
                    // grants the app or the user the module): trying again on
                    // a schedule only spends the error budget.
                    let text = excerpt(&String::from_utf8_lossy(&body), &[token.secret()]);
                    return Err(Stop::Park(format!(
                        "{} answered HTTP 403 (access refused: {text}); once access is granted, \
                         `oauth-sync sync run` or a new login resumes the sync",
                        url.path()
                    )));
                }
                429 => {
                    counts.throttled += 1;
                    throttled += 1;
                    if throttled > self.settings.max_throttled {
                        return Err(Stop::Yield {
                            until: now + millis(self.settings.max_backoff),
                            why: format!("{throttled} answers 429 in a row"),
                        });
                    }
                    // The shared budget now holds every caller of the key
                    // until the window's reset or the `Retry-After`.
                }
                408 | 500..=599 => {
                    attempt += 1;
                    let why = format!(
                        "HTTP {status}: {}",
                        excerpt(&String::from_utf8_lossy(&body), &[token.secret()])
                    );
                    self.retry(cx, attempt, retry_after, counts, why).await?;
                }
                _ => {
                    let text = excerpt(&String::from_utf8_lossy(&body), &[token.secret()]);
                    let why = format!("{} answered HTTP {status}: {text}", url.path());
                    return Err(if matches!(status, 400 | 404 | 410) {
                        Stop::Gone(why)
                    } else {
                        Stop::Fail(why)
                    });
                }
            }
        }
    }

    /// One request from the rate key's shared budget: waits (in the run) for
    /// a spent window or a `Retry-After`, yields when the wait is longer or
    /// the error budget is spent.
    pub(super) async fn draw(&self, cx: &Context<'_>, counts: &mut RunCounts) -> Result<Ticket, Stop> {
        let budget_per_hour = cx.provider.settings.error_budget_per_hour;
        let mut failures = 0;
        loop {
            match self.budget.draw(&cx.rate_key, budget_per_hour).await {
                Ok(Draw::Go(ticket)) => return Ok(ticket),
                Ok(Draw::WaitUntil(until)) => self.wait_until(cx, until, counts, "rate limit").await?,
                Ok(Draw::ErrorBudgetSpent(until)) => {
                    return Err(Stop::Yield {
                        until,
                        why: "half of the provider's hourly error budget is used".to_owned(),
                    });
                }
                Err(e) if e.is_transient() && failures < 3 => {
                    failures += 1;
                    warn!(job = cx.job, error = %error_chain(&e), "the rate budget could not be read; trying again");
                    self.sleep(self.backoff(failures)).await?;
                }
                Err(e) => return Err(Stop::Fail(format!("the rate budget: {}", error_chain(&e)))),
            }
        }
    }

    /// Folds an answer into the shared budget; a failure is logged (the
    /// reservation then expires on its own, the window corrects itself with
    /// the next answer).
    pub(super) async fn observe(&self, cx: &Context<'_>, ticket: Ticket, answer: &Answer) {
        if let Err(e) = self.budget.observe(&cx.rate_key, ticket, answer).await {
            warn!(job = cx.job, error = %error_chain(&e), "an answer could not be recorded in the rate budget");
        }
    }

    /// Waits for a transient failure, or ends the run when attempts or time run out.
    pub(super) async fn retry(
        &self,
        cx: &Context<'_>,
        attempt: u32,
        retry_after: Option<u64>,
        counts: &mut RunCounts,
        why: String,
    ) -> Result<(), Stop> {
        if attempt >= self.settings.page_attempts {
            return Err(Stop::Fail(format!("{why} (after {attempt} attempts)")));
        }
        let wait = retry_after
            .map(|s| Duration::from_secs(s).min(self.settings.max_backoff))
            .unwrap_or_else(|| self.backoff(attempt));
        counts.retries += 1;
        warn!(
            job = cx.job,
            attempt,
            wait_ms = millis(wait),
            "{why}; trying the page again"
        );
        if Instant::now() + wait + self.settings.page_timeout + self.settings.commit_margin > cx.deadline {
            return Err(Stop::Yield {
                until: now_ms() + millis(wait),
                why: format!("{why}; no time left to try again in this invocation"),
            });
        }
        self.sleep(wait).await
    }

    /// Sleeps until a rate-limit window resets, if that fits in the run.
    pub(super) async fn wait_until(
        &self,
        cx: &Context<'_>,
        until: i64,
        counts: &mut RunCounts,
        what: &str,
    ) -> Result<(), Stop> {
        let wait = Duration::from_millis(u64::try_from(until - now_ms()).unwrap_or(0));
        let fits = Instant::now() + wait + self.settings.page_timeout + self.settings.commit_margin <= cx.deadline;
        if wait > self.settings.max_wait || !fits {
            return Err(Stop::Yield {
                until,
                why: format!("waiting for the {what} to reset"),
            });
        }
        counts.rate_limit_waits += 1;
        counts.waited_ms += u64::try_from(millis(wait)).unwrap_or(0);
        self.sleep(wait).await
    }

    /// Sleeps `wait` in the run, or yields at once when asked to stop.
    async fn sleep(&self, wait: Duration) -> Result<(), Stop> {
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            why = self.stopped() => Err(Stop::Yield { until: now_ms(), why }),
        }
    }

    /// Exponential from `base_backoff`, capped, with jitter.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::exponential(self.settings.base_backoff, self.settings.max_backoff, attempt)
    }
}
