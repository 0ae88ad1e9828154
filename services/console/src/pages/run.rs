//! A run: its transitions as a timeline, each attempt, params and result, its children as a
//! tree, its logs as they arrive, and a link to its trace.

use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::Form;
use drover_protocol::{Attempt, LogRecord, RunRecord, RunStatus, Timestamp, WorkerId};
use maud::{html, Markup};
use serde::Deserialize;

use crate::access::{Actor, CanAct};
use crate::error::{ConsoleError, PageError};
use crate::model;
use crate::pages::layout::{self, Section};
use crate::AppState;

/// How deep the children tree goes before it links on.
const TREE_DEPTH: usize = 4;
/// Children shown at one level before the tree links on.
const TREE_WIDTH: usize = 100;

/// `GET /runs/{runID}`.
pub async fn page(
    State(state): State<AppState>,
    can_act: CanAct,
    Path(run): Path<String>,
) -> Result<Markup, PageError> {
    let run = model::parse_run_id(&run)?;
    let record = model::run(&state, &run).await?;
    let body = html! {
        (layout::live(&format!("/live/runs/{run}")))
        div.run-head {
            h1 { "Run " span.mono { (run) } }
            div.actions {
                @if let Some(trace) = &record.trace_id {
                    a.button id="trace-link" target="_blank" rel="noopener"
                        href={ (state.config.jaeger_url) "/trace/" (trace) } { "Trace in Jaeger" }
                }
                @if can_act.0 && !record.status.is_terminal() {
                    form method="post" action={ "/runs/" (run) "/cancel" } id="cancel-form" {
                        input name="reason" placeholder="reason (optional)";
                        button.danger type="submit" id="cancel" { "Cancel run" }
                    }
                }
                @if can_act.0 && record.status.is_terminal() && record.parent_run_id.is_none() {
                    form method="post" action={ "/runs/" (run) "/resubmit" } id="resubmit-form" {
                        button type="submit" id="resubmit" { "Submit again" }
                    }
                }
            }
        }
        div id="run-live" { (live_part(&state, &record)) }
        div.columns {
            section {
                h2 { "Params" }
                (layout::json_block("params", "params", &record.params))
            }
            section {
                h2 { "Spec" }
                dl.facts {
                    dt { "maxRetries" } dd { (record.max_retries) }
                    dt { "maxWaitTimeMs" } dd { (record.max_wait_time_ms.map(|ms| ms.to_string()).unwrap_or_else(|| "–".into())) }
                    dt { "maxExecTimeMs" } dd { (record.max_exec_time_ms.map(|ms| ms.to_string()).unwrap_or_else(|| "–".into())) }
                    @if let Some(key) = &record.idempotency_key { dt { "idempotencyKey" } dd.mono { (key) } }
                    @if !record.conditions.labels.is_empty() || !record.conditions.worker_ids.is_empty() {
                        dt { "conditions" } dd.mono { (serde_json::to_string(&record.conditions).unwrap_or_default()) }
                    }
                    @if let Some(parent) = &record.parent_run_id {
                        dt { "parent" } dd.mono { a href={ "/runs/" (parent) } { (parent) } }
                    }
                }
            }
        }
        section id="logs-section" {
            h2 { "Logs" }
            div.logs id="logs" {
                p.muted id="logs-empty" { "No log lines yet; they appear here as they arrive." }
            }
        }
    };
    Ok(layout::page(
        &format!("Run {run}"),
        Section::Runs,
        can_act,
        body,
    ))
}

/// The part of a run's page that changes with the run: state, timeline, attempts, result
/// and children.
pub fn live_part(state: &AppState, record: &RunRecord) -> Markup {
    let children = state.runs.children(&record.run_id);
    html! {
        dl.facts.head id="run-facts" {
            dt { "State" } dd id="status" { (layout::run_status(record.status)) @if let Some(reason) = record.failure_reason { " " span id="failure-reason" { (reason.as_str()) } } }
            dt { "Routine" } dd { a href={ "/runs?routine=" (record.routine_id) } { (record.routine_id) } }
            dt { "Worker" } dd { @if let Some(worker) = &record.worker_id { a href={ "/workers/" (worker) } { (worker) } } @else { "–" } }
            dt { "Attempt" } dd { (record.attempt) " (" (record.retries) " retries, " (record.reassignments) " reassignments)" }
            dt { "Accepted" } dd { (layout::time(record.created_at)) }
            dt { "Ended" } dd { (layout::maybe_time(record.ended_at)) }
        }
        div.columns {
            section {
                h2 { "Timeline" }
                ol.timeline id="timeline" {
                    @for transition in &record.transitions {
                        li data-status=(transition.status.as_str()) {
                            (layout::precise_time(transition.at)) " " (layout::run_status(transition.status))
                            @if transition.attempt > 0 { " attempt " (transition.attempt) }
                            @if let Some(worker) = &transition.worker_id { " on " a href={ "/workers/" (worker) } { (worker) } }
                            @if let Some(reason) = &transition.reason { " " span.muted { "— " (reason) } }
                        }
                    }
                }
            }
            section {
                h2 { "Attempts" }
                (attempts_table(record))
            }
        }
        @if record.result.is_some() || record.error.is_some() {
            section {
                h2 { "Outcome" }
                @if let Some(result) = &record.result { (layout::json_block("result", "result", result)) }
                @if let Some(error) = &record.error {
                    (layout::json_block("run-error", "error", &serde_json::to_value(error).unwrap_or_default()))
                }
            }
        }
        section id="children" {
            h2 { "Children" }
            @if children.is_empty() {
                p.muted { "This run requested no child runs." }
            } @else {
                (tree(state, &children, TREE_DEPTH))
            }
        }
    }
}

fn tree(state: &AppState, children: &[crate::index::RunSummary], depth: usize) -> Markup {
    html! {
        ul.tree {
            @for child in children.iter().take(TREE_WIDTH) {
                li data-run-id=(child.run_id) {
                    a.mono href={ "/runs/" (child.run_id) } { (child.run_id) }
                    " " (child.routine_id) " " (layout::run_status(child.status))
                    @let grandchildren = state.runs.children(&child.run_id);
                    @if !grandchildren.is_empty() {
                        @if depth > 1 { (tree(state, &grandchildren, depth - 1)) }
                        @else { " " a href={ "/runs/" (child.run_id) } { "(" (grandchildren.len()) " more)" } }
                    }
                }
            }
            @if children.len() > TREE_WIDTH {
                li.muted { "and " (children.len() - TREE_WIDTH) " more" }
            }
        }
    }
}

/// One attempt of a run, read off its transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptView {
    /// Its number.
    pub attempt: Attempt,
    /// The worker it went to.
    pub worker: Option<WorkerId>,
    /// When it was assigned.
    pub assigned_at: Option<Timestamp>,
    /// When the worker said it started.
    pub started_at: Option<Timestamp>,
    /// Where it ended: the state it left the run in.
    pub outcome: Option<RunStatus>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Why it ended as it did.
    pub reason: Option<String>,
}

/// Each attempt, from the transitions: the assignment that began it, the start, and the
/// first transition after the start that is not part of it (a retry's PENDING, or the end).
pub fn attempts(record: &RunRecord) -> Vec<AttemptView> {
    let mut views: Vec<AttemptView> = Vec::new();
    for transition in &record.transitions {
        if transition.attempt == 0 {
            continue;
        }
        if views
            .last()
            .is_none_or(|view| view.attempt != transition.attempt)
        {
            views.push(AttemptView {
                attempt: transition.attempt,
                worker: None,
                assigned_at: None,
                started_at: None,
                outcome: None,
                ended_at: None,
                reason: None,
            });
        }
        let view = views.last_mut().expect("pushed above");
        match transition.status {
            RunStatus::Assigned => {
                view.assigned_at = Some(transition.at);
                view.worker = transition.worker_id.clone().or(view.worker.take());
            }
            RunStatus::Running => view.started_at = Some(transition.at),
            status => {
                view.outcome = Some(status);
                view.ended_at = Some(transition.at);
                view.reason = transition.reason.clone();
                if view.worker.is_none() {
                    view.worker = transition.worker_id.clone();
                }
            }
        }
    }
    views
}

fn attempts_table(record: &RunRecord) -> Markup {
    let views = attempts(record);
    html! {
        @if views.is_empty() {
            p.muted id="attempts-empty" { "Not assigned yet." }
        } @else {
            table id="attempts" {
                thead { tr { th { "#" } th { "Worker" } th { "Assigned" } th { "Started" } th { "Outcome" } th { "Reason" } } }
                tbody {
                    @for view in &views {
                        tr data-attempt=(view.attempt) {
                            td.num { (view.attempt) }
                            td { @if let Some(worker) = &view.worker { a href={ "/workers/" (worker) } { (worker) } } }
                            td { (layout::maybe_time(view.assigned_at)) }
                            td { (layout::maybe_time(view.started_at)) }
                            td.outcome {
                                @match view.outcome {
                                    Some(RunStatus::Pending) => span.badge.wait { "RETRIED" },
                                    Some(status) => (layout::run_status(status)),
                                    None if record.attempt == view.attempt => span.muted { "in progress" },
                                    None => span.muted { "–" },
                                }
                            }
                            td { (view.reason.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    }
}

/// One log line.
pub fn log_line(line: &LogRecord) -> Markup {
    html! {
        div class={ "log-line " (line.level.as_str()) } data-seq=(line.seq) {
            (layout::time(line.timestamp)) " "
            span.level { (line.level.as_str()) } " "
            a.muted href={ "/workers/" (line.worker_id) } { (line.worker_id) } " "
            @if let Some(attempt) = line.attempt { span.muted { "#" (attempt) } " " }
            span.message { (line.message) }
            @if !line.fields.is_empty() { " " span.fields { (serde_json::Value::Object(line.fields.clone())) } }
        }
    }
}

/// The cancel form.
#[derive(Debug, Deserialize)]
pub struct CancelForm {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /runs/{runID}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(run): Path<String>,
    form: Result<Form<CancelForm>, axum::extract::rejection::FormRejection>,
) -> Result<Redirect, PageError> {
    actor?;
    let run = model::parse_run_id(&run)?;
    let Form(form) = form.map_err(ConsoleError::from_form)?;
    let reason = form.reason;
    model::cancel(&state, &run, reason).await?;
    Ok(Redirect::to(&format!("/runs/{run}")))
}

/// `POST /runs/{runID}/resubmit`.
pub async fn resubmit(
    State(state): State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(run): Path<String>,
) -> Result<Redirect, PageError> {
    actor?;
    let run = model::parse_run_id(&run)?;
    let accepted = model::resubmit(&state, &run).await?;
    Ok(Redirect::to(&format!("/runs/{}", accepted.run_id)))
}
