//! The runs: filtered by state, routine, worker and time, searched by runID or idempotency
//! key, and paged by cursor.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use drover_protocol::RunStatus;
use maud::{html, Markup};

use crate::access::CanAct;
use crate::error::PageError;
use crate::index::RunSummary;
use crate::model::{self, RunQuery};
use crate::pages::layout::{self, Section};
use crate::AppState;

/// `GET /runs`.
pub async fn page(
    State(state): State<AppState>,
    can_act: CanAct,
    query: Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(query) =
        query.map_err(|rejection| crate::error::ConsoleError::invalid(rejection.body_text()))?;
    if let Some(text) = query.search() {
        if let Some(run) = model::search(&state, text) {
            return Ok(Redirect::to(&format!("/runs/{}", run.run_id)).into_response());
        }
    }
    let list = model::list_runs(&state, &query)?;
    let routines = state.runs.routines();
    let next = list.next_cursor.as_ref().map(|cursor| {
        let mut next = query.clone();
        next.cursor = Some(cursor.clone());
        format!("/runs?{}", serde_urlencoded(&next))
    });
    let first = query.cursor.is_some().then(|| {
        let mut first = query.clone();
        first.cursor = None;
        format!("/runs?{}", serde_urlencoded(&first))
    });
    let value = |field: &Option<String>| field.clone().unwrap_or_default();
    let body = html! {
        h1 { "Runs" }
        form.filters id="run-filters" method="get" action="/runs" {
            label { "State "
                select name="status" {
                    option value="" { "any" }
                    @for status in RunStatus::ALL {
                        option value=(status.as_str()) selected[query.status.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(status.as_str()))] { (status.as_str()) }
                    }
                }
            }
            label { "Routine " input name="routine" list="routines" value=(value(&query.routine)) placeholder="any"; }
            datalist id="routines" { @for routine in &routines { option value=(routine) {} } }
            label { "Worker " input name="worker" value=(value(&query.worker)) placeholder="any"; }
            label { "Since " input name="since" value=(value(&query.since)) placeholder="10m or 2026-11-22T13:00:00Z"; }
            label { "Until " input name="until" value=(value(&query.until)) placeholder="time or age"; }
            button type="submit" { "Filter" }
        }
        form.search method="get" action="/runs" {
            input name="q" id="search" value=(value(&query.q)) placeholder="runID or idempotency key" size="40";
            button type="submit" { "Find" }
        }
        @if query.search().is_some() {
            p.muted id="no-match" { "No run has that runID or idempotency key." }
        } @else {
            (table(&list.runs))
        }
        nav.pager {
            @if let Some(first) = first { a href=(first) id="first-page" { "← newest" } }
            @if let Some(next) = next { a href=(next) id="next-page" { "older →" } }
        }
    };
    Ok(layout::page("Runs", Section::Runs, can_act, body).into_response())
}

fn serde_urlencoded(query: &RunQuery) -> String {
    let pairs = [
        ("status", &query.status),
        ("routine", &query.routine),
        ("worker", &query.worker),
        ("since", &query.since),
        ("until", &query.until),
        ("cursor", &query.cursor),
        ("limit", &query.limit),
    ];
    pairs
        .iter()
        .filter_map(|(name, value)| {
            value
                .as_deref()
                .filter(|value| !value.is_empty())
                .map(|value| format!("{name}={}", encode(value)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A table of runs.
pub fn table(runs: &[RunSummary]) -> Markup {
    html! {
        @if runs.is_empty() {
            p.muted.empty { "No runs." }
        } @else {
            table.runs {
                thead { tr { th { "Run" } th { "Routine" } th { "State" } th { "Attempt" } th { "Worker" } th { "Accepted" } th { "Took" } } }
                tbody {
                    @for run in runs {
                        tr data-run-id=(run.run_id) {
                            td.mono { a href={ "/runs/" (run.run_id) } { (run.run_id) } }
                            td { (run.routine_id) }
                            td { (layout::run_status(run.status)) @if let Some(reason) = run.failure_reason { " " span.muted { (reason.as_str()) } } }
                            td.num { (run.attempt) }
                            td { @if let Some(worker) = &run.worker_id { a href={ "/workers/" (worker) } { (worker) } } }
                            td { (layout::time(run.created_at)) }
                            td.num { @if let Some(ended) = run.ended_at { (layout::duration(run.created_at, ended)) } }
                        }
                    }
                }
            }
        }
    }
}
