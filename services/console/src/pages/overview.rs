//! The overview: services and replicas, workers by status, runs by state, what ended in the
//! last minutes, what waits, and the latest runs and workers.

use axum::extract::State;
use drover_protocol::{RunStatus, WorkerStatus};
use maud::{html, Markup};

use crate::access::CanAct;
use crate::index::{MinuteCounts, RunFilter};
use crate::model::{self, Overview, WorkerQuery};
use crate::pages::layout::{self, Section};
use crate::AppState;

/// Runs and workers listed on the overview.
const LATEST: usize = 10;

/// `GET /`.
pub async fn page(State(state): State<AppState>, can_act: CanAct) -> Markup {
    let body = html! {
        h1 { "Overview" }
        (layout::live("/live/overview"))
        div id="overview-live" { (live_part(&state)) }
    };
    layout::page("Overview", Section::Overview, can_act, body)
}

/// The part of the overview that the live stream re-renders.
pub fn live_part(state: &AppState) -> Markup {
    let overview = model::overview(state);
    let latest = state.runs.list(&RunFilter::default(), None, LATEST);
    let workers = model::list_workers(
        state,
        &WorkerQuery {
            limit: Some("20".to_owned()),
            ..WorkerQuery::default()
        },
    )
    .map(|page| page.workers)
    .unwrap_or_default();
    html! {
        div.cards {
            section.card id="services" {
                h2 { "Services" }
                @if overview.services.is_empty() {
                    p.muted { "No service answers discovery." }
                }
                table {
                    @for service in &overview.services {
                        tr data-service=(service.name) {
                            td { (service.name) }
                            td.num.nowrap title="replicas" { "×" (service.instances.len()) }
                            td.muted { (service.instances.first().map(|i| i.version.as_str()).unwrap_or("")) }
                        }
                    }
                }
            }
            section.card id="workers-by-status" {
                h2 { "Workers" }
                (counts(&overview, true))
            }
            section.card id="runs-by-state" {
                h2 { "Runs" span.muted { " " (overview.runs_total) " stored" } }
                (counts(&overview, false))
            }
            section.card.wide id="throughput" {
                h2 { "Ended per minute, last " (model::CHART_MINUTES) " minutes" }
                (chart(&overview.ended_per_minute))
            }
            section.card id="pending" {
                h2 { "Waiting for a worker" }
                @if overview.pending_by_routine.is_empty() {
                    p.muted { "No run is waiting." }
                } @else {
                    table {
                        @for routine in &overview.pending_by_routine {
                            tr {
                                td { a href={ "/runs?status=PENDING&routine=" (routine.routine_id) } { (routine.routine_id) } }
                                td.num { (routine.count) }
                            }
                        }
                    }
                }
            }
        }
        div.columns {
            section id="recent-runs" {
                h2 { "Latest runs " a.small href="/runs" { "all runs →" } }
                (super::runs::table(&latest.runs))
            }
            section id="workers" {
                h2 { "Workers " a.small href="/workers" { "all workers →" } }
                (super::workers::table(state, &workers))
            }
        }
    }
}

fn counts(overview: &Overview, workers: bool) -> Markup {
    html! {
        ul.counts {
            @if workers {
                @for status in WorkerStatus::ALL {
                    @let count = overview.workers_by_status.get(status.as_str()).copied().unwrap_or(0);
                    @if count > 0 {
                        li { a href={ "/workers?status=" (status.as_str()) } { (layout::worker_status(status)) } b data-count=(status.as_str()) { (count) } }
                    }
                }
                @if overview.workers_by_status.is_empty() { li.muted { "No worker has registered." } }
            } @else {
                @for status in RunStatus::ALL {
                    @let count = overview.runs_by_state.get(status.as_str()).copied().unwrap_or(0);
                    li { a href={ "/runs?status=" (status.as_str()) } { (layout::run_status(status)) } b data-count=(status.as_str()) { (count) } }
                }
            }
        }
    }
}

/// Stacked bars, oldest minute on the left: succeeded, then failed and cancelled on top.
fn chart(minutes: &[MinuteCounts]) -> Markup {
    const WIDTH: u32 = 600;
    const HEIGHT: u32 = 120;
    let slots = minutes.len().max(1) as u32;
    let bar = WIDTH / slots;
    let most = minutes
        .iter()
        .map(|m| m.succeeded + m.failed + m.cancelled)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |count: u32| count * (HEIGHT - 16) / most;
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label="runs ended per minute" {
            @for (slot, minute) in minutes.iter().rev().enumerate() {
                @let x = slot as u32 * bar + 2;
                @let ok = scale(minute.succeeded);
                @let bad = scale(minute.failed);
                @let muted = scale(minute.cancelled);
                g {
                    title { (minute.minutes_ago) " min ago: " (minute.succeeded) " succeeded, " (minute.failed) " failed, " (minute.cancelled) " cancelled" }
                    rect.ok x=(x) y=(HEIGHT - 14 - ok) width=(bar - 4) height=(ok) {}
                    rect.bad x=(x) y=(HEIGHT - 14 - ok - bad) width=(bar - 4) height=(bad) {}
                    rect.muted x=(x) y=(HEIGHT - 14 - ok - bad - muted) width=(bar - 4) height=(muted) {}
                }
            }
            text x="0" y=(HEIGHT - 2) { "−" (minutes.len()) " min" }
            text x=(WIDTH) y=(HEIGHT - 2) text-anchor="end" { "now" }
            text x="0" y="10" { (most) " / min" }
        }
    }
}
