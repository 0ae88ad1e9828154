//! The workers, and one worker with its runs and logs.

use axum::extract::{Path, Query, State};
use drover_protocol::{WorkerRecord, WorkerStatus};
use maud::{html, Markup};

use crate::access::CanAct;
use crate::error::{ConsoleError, PageError};
use crate::index::RunFilter;
use crate::model::{self, WorkerQuery};
use crate::pages::layout::{self, Section};
use crate::pages::runs::encode;
use crate::AppState;

/// Runs listed on a worker's page.
const WORKER_RUNS: usize = 20;

/// `GET /workers`.
pub async fn list(
    State(state): State<AppState>,
    can_act: CanAct,
    query: Result<Query<WorkerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Markup, PageError> {
    let Query(query) = query.map_err(|rejection| ConsoleError::invalid(rejection.body_text()))?;
    let page = model::list_workers(&state, &query)?;
    let value = |field: &Option<String>| field.clone().unwrap_or_default();
    let next = page.next_cursor.as_ref().map(|cursor| {
        let mut pairs = vec![format!("cursor={}", encode(cursor))];
        for (name, field) in [
            ("status", &query.status),
            ("routine", &query.routine),
            ("pool", &query.pool),
            ("limit", &query.limit),
        ] {
            if let Some(text) = field.as_deref().filter(|text| !text.is_empty()) {
                pairs.push(format!("{name}={}", encode(text)));
            }
        }
        format!("/workers?{}", pairs.join("&"))
    });
    let body = html! {
        h1 { "Workers" }
        form.filters method="get" action="/workers" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for status in WorkerStatus::ALL {
                        option value=(status.as_str()) selected[query.status.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(status.as_str()))] { (status.as_str()) }
                    }
                }
            }
            label { "Routine " input name="routine" value=(value(&query.routine)) placeholder="any"; }
            label { "Pool " input name="pool" value=(value(&query.pool)) placeholder="any"; }
            button type="submit" { "Filter" }
        }
        (table(&state, &page.workers))
        nav.pager { @if let Some(next) = next { a href=(next) id="next-page" { "more →" } } }
    };
    Ok(layout::page("Workers", Section::Workers, can_act, body))
}

/// A table of workers.
pub fn table(state: &AppState, workers: &[WorkerRecord]) -> Markup {
    html! {
        @if workers.is_empty() {
            p.muted.empty { "No workers." }
        } @else {
            table.workers {
                thead { tr { th { "Worker" } th { "Status" } th { "Routines" } th { "Runs" } th { "Labels" } th { "Incarnation" } th { "Last pulse" } } }
                tbody {
                    @for worker in workers {
                        tr data-worker-id=(worker.worker_id) {
                            td { a href={ "/workers/" (worker.worker_id) } { (worker.worker_id) } }
                            td { (layout::worker_status(worker.status)) }
                            td { (worker.routines.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                            td.num { (worker.runs.len()) " / " (worker.capacity) }
                            td.mono { @for (name, value) in &worker.labels { span.label { (name) "=" (value) } " " } }
                            td.num { (worker.incarnation) }
                            td { (layout::maybe_time(state.pulses.last(&worker.worker_id))) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /workers/{workerID}`.
pub async fn page(
    State(state): State<AppState>,
    can_act: CanAct,
    Path(worker): Path<String>,
) -> Result<Markup, PageError> {
    let worker_id = model::parse_worker_id(&worker)?;
    let worker = model::worker(&state, &worker_id)?;
    let runs = state.runs.list(
        &RunFilter {
            worker: Some(worker_id.clone()),
            ..RunFilter::default()
        },
        None,
        WORKER_RUNS,
    );
    let body = html! {
        (layout::live(&format!("/live/workers/{worker_id}")))
        h1 { "Worker " (worker_id) }
        dl.facts.head {
            dt { "Status" } dd id="status" { (layout::worker_status(worker.status)) @if let Some(reported) = worker.reported_status { " " span.muted { "(reports " (reported.as_str()) ")" } } }
            dt { "Routines" } dd { (worker.routines.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
            dt { "Capacity" } dd { (worker.runs.len()) " of " (worker.capacity) " slots held" }
            dt { "Incarnation" } dd { (worker.incarnation) }
            dt { "Pool" } dd { (worker.labels.get("pool").map(String::as_str).unwrap_or("–")) @if let Some(group) = worker.labels.get("group") { " / group " (group) } }
            dt { "Labels" } dd.mono { @for (name, value) in &worker.labels { span.label { (name) "=" (value) } " " } }
            dt { "Last pulse" } dd id="last-pulse" { (layout::maybe_time(state.pulses.last(&worker_id))) }
            dt { "Registered" } dd { (layout::time(worker.registered_at)) }
            @if let Some(host) = &worker.host { dt { "Host" } dd { (host) @if let Some(pid) = worker.pid { " pid " (pid) } } }
            @if let Some(sdk) = &worker.sdk { dt { "SDK" } dd { (sdk.language) " " (sdk.version) } }
        }
        section {
            h2 { "Runs it holds" }
            @if worker.runs.is_empty() { p.muted { "None." } }
            ul { @for held in &worker.runs { li { a.mono href={ "/runs/" (held.run_id) } { (held.run_id) } " attempt " (held.attempt) } } }
        }
        section {
            h2 { "Latest runs " a.small href={ "/runs?worker=" (worker_id) } { "all →" } }
            (super::runs::table(&runs.runs))
        }
        section {
            h2 { "Logs" }
            div.logs id="logs" { p.muted id="logs-empty" { "No log lines yet; they appear here as they arrive." } }
        }
    };
    Ok(layout::page(
        &format!("Worker {worker_id}"),
        Section::Workers,
        can_act,
        body,
    ))
}
