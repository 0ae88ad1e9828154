//! Live pages: Server-Sent Events that replace a region of a page (`replace`, data: the
//! region's id, a newline, its HTML) or add to one (`append`). The one script in
//! `assets/console.js` applies them.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use drover_protocol::subject;
use drover_protocol::{LogPage, LogsQuery, RunRecord, Timestamp};
use futures::{Stream, StreamExt};
use maud::Markup;
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::ApiError;
use crate::model;
use crate::pages;
use crate::AppState;

/// How often the overview is rendered again for a watcher.
const OVERVIEW_EVERY: Duration = Duration::from_secs(2);
/// How often logs are asked for new lines.
const LOGS_EVERY: Duration = Duration::from_millis(500);
/// How far back a worker's page starts its logs.
const WORKER_LOGS_SINCE_MS: u64 = 15 * 60 * 1000;

type Events = Sse<
    axum::response::sse::KeepAliveStream<
        futures::stream::BoxStream<'static, Result<Event, Infallible>>,
    >,
>;

fn replace(target: &str, html: Markup) -> Event {
    Event::default()
        .event("replace")
        .data(format!("{target}\n{}", html.into_string()))
}

fn append(target: &str, html: String) -> Event {
    Event::default()
        .event("append")
        .data(format!("{target}\n{html}"))
}

/// A stream of what a task sends, until the task ends or the watcher leaves.
fn stream_of(mut events: mpsc::Receiver<Event>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::poll_fn(move |cx| events.poll_recv(cx).map(|event| event.map(Ok)))
}

fn sse(events: mpsc::Receiver<Event>) -> Events {
    Sse::new(stream_of(events).boxed()).keep_alive(KeepAlive::default())
}

/// `GET /live/overview`.
pub async fn overview(State(state): State<AppState>) -> Events {
    let (sender, events) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(OVERVIEW_EVERY);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = sender.closed() => return,
                _ = ticks.tick() => {
                    let part = pages::overview::live_part(&state);
                    if sender.send(replace("overview-live", part)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    sse(events)
}

/// Follows a log query, remembering where it stopped.
struct LogFollower {
    query: LogsQuery,
}

impl LogFollower {
    /// New lines since the last call, rendered.
    async fn poll(&mut self, state: &AppState) -> Option<String> {
        let mut html = String::new();
        loop {
            let page: LogPage = match model::logs(state, &self.query).await {
                Ok(page) => page,
                Err(error) => {
                    debug!(%error, "log query failed; trying again");
                    break;
                }
            };
            let full =
                page.logs.len() as u32 >= self.query.limit.unwrap_or(LogsQuery::DEFAULT_LIMIT);
            for line in &page.logs {
                html.push_str(&pages::run::log_line(line).into_string());
            }
            if let Some(cursor) = page.next_cursor {
                self.query.cursor = Some(cursor);
            }
            if !full {
                break;
            }
        }
        (!html.is_empty()).then_some(html)
    }
}

/// `GET /live/runs/{runID}`: the run's changes, its children's, and its new log lines.
pub async fn run(
    State(state): State<AppState>,
    Path(run): Path<String>,
) -> Result<Events, ApiError> {
    let run = model::parse_run_id(&run)?;
    // Subscribed before the record is read, so that no change falls between the two.
    let mut changes = state
        .backend
        .nats()
        .subscribe(subject::run_events(&run))
        .await
        .map_err(|error| {
            crate::error::ConsoleError::wire(
                drover_protocol::ErrorCode::Unavailable,
                format!("cannot follow run {run}: {error}"),
            )
        })?;
    let record = model::run(&state, &run).await?;
    let (sender, events) = mpsc::channel(16);
    // The page may have been rendered before a change this stream will not see again.
    let first = replace("run-live", pages::run::live_part(&state, &record));
    if sender.send(first).await.is_err() {
        return Ok(sse(events));
    }
    tokio::spawn(async move {
        let mut record: RunRecord = record;
        let mut logs = LogFollower {
            query: LogsQuery {
                run_id: Some(run.clone()),
                limit: Some(LogsQuery::MAX_LIMIT),
                ..LogsQuery::default()
            },
        };
        let mut index_changes = state.runs.changes();
        let mut children = state.runs.children(&run);
        let mut ticks = tokio::time::interval(LOGS_EVERY);
        loop {
            let event = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = sender.closed() => return,
                change = changes.next() => {
                    if change.is_none() { return; }
                    match model::run(&state, &run).await {
                        Ok(latest) => record = latest,
                        Err(error) => { debug!(%error, "run refresh failed"); continue; }
                    }
                    Some(replace("run-live", pages::run::live_part(&state, &record)))
                }
                changed = index_changes.changed() => {
                    if changed.is_err() { return; }
                    let now = state.runs.children(&run);
                    if now == children { continue; }
                    children = now;
                    Some(replace("run-live", pages::run::live_part(&state, &record)))
                }
                _ = ticks.tick() => logs.poll(&state).await.map(|html| append("logs", html)),
            };
            if let Some(event) = event {
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(sse(events))
}

/// `GET /live/workers/{workerID}`: the worker's new log lines.
pub async fn worker(
    State(state): State<AppState>,
    Path(worker): Path<String>,
) -> Result<Events, ApiError> {
    let worker = model::parse_worker_id(&worker)?;
    model::worker(&state, &worker)?;
    let (sender, events) = mpsc::channel(16);
    tokio::spawn(async move {
        let since = Timestamp::now().as_millis() - WORKER_LOGS_SINCE_MS as i64;
        let mut logs = LogFollower {
            query: LogsQuery {
                worker_id: Some(worker),
                since: Some(Timestamp::from_millis(since)),
                limit: Some(LogsQuery::MAX_LIMIT),
                ..LogsQuery::default()
            },
        };
        let mut ticks = tokio::time::interval(LOGS_EVERY);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = sender.closed() => return,
                _ = ticks.tick() => {
                    if let Some(html) = logs.poll(&state).await {
                        if sender.send(append("logs", html)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(sse(events))
}
