//! The pools: groups, processes and restarts, with scale and restart where the user may act.

use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::Form;
use drover_protocol::{GroupName, PoolRestart, PoolState, RestartMode};
use maud::{html, Markup};
use serde::Deserialize;

use crate::access::{Actor, CanAct};
use crate::error::{ConsoleError, PageError};
use crate::model::{self, ScaleRequest};
use crate::pages::layout::{self, Section};
use crate::AppState;

/// `GET /pools`.
pub async fn page(State(state): State<AppState>, can_act: CanAct) -> Markup {
    let pools = model::pools(&state).await;
    let body = html! {
        h1 { "Pools" }
        @if pools.is_empty() {
            p.muted.empty { "No pool answers. Start one with " code { "drover pool run" } "." }
        }
        @for pool in &pools { (pool_section(pool, can_act)) }
    };
    layout::page("Pools", Section::Pools, can_act, body)
}

fn pool_section(pool: &PoolState, can_act: CanAct) -> Markup {
    html! {
        section.pool id={ "pool-" (pool.pool_id) } {
            h2 { "Pool " (pool.pool_id) span.muted { " started " (layout::time(pool.started_at)) } }
            @if can_act.0 {
                div.actions {
                    @for mode in [RestartMode::Soft, RestartMode::Hard] {
                        form method="post" action={ "/pools/" (pool.pool_id) "/restart" } {
                            input type="hidden" name="mode" value=(mode.as_str());
                            button type="submit" class=[(mode == RestartMode::Hard).then_some("danger")] { "Restart all (" (mode.as_str()) ")" }
                        }
                    }
                }
            }
            @for group in &pool.groups {
                div.group data-group=(group.name) {
                    h3 { "Group " (group.name) span.muted { " target " (group.target) ", " (group.min) "–" (group.max) } }
                    @if can_act.0 {
                        div.actions {
                            form method="post" action={ "/pools/" (pool.pool_id) "/scale" } {
                                input type="hidden" name="group" value=(group.name);
                                input type="number" name="target" value=(group.target) min=(group.min) max=(group.max);
                                button type="submit" { "Scale" }
                            }
                            form method="post" action={ "/pools/" (pool.pool_id) "/restart" } {
                                input type="hidden" name="group" value=(group.name);
                                input type="hidden" name="mode" value="soft";
                                button type="submit" { "Restart group" }
                            }
                        }
                    }
                    table {
                        thead { tr { th { "Worker" } th { "State" } th { "pid" } th { "Restarts" } th { "Started" } th { "Memory" } th { "Last exit" } } }
                        tbody {
                            @for process in &group.processes {
                                tr {
                                    td { a href={ "/workers/" (process.worker_id) } { (process.worker_id) } }
                                    td { (process.state.as_str()) }
                                    td.num { (process.pid.map(|pid| pid.to_string()).unwrap_or_default()) }
                                    td.num { (process.restarts) }
                                    td { (layout::maybe_time(process.started_at)) }
                                    td.num { (process.rss_bytes.map(|bytes| format!("{} MiB", bytes / (1 << 20))).unwrap_or_default()) }
                                    td { @if let Some(exit) = &process.last_exit { (exit.class.as_str()) @if let Some(code) = exit.code { " code " (code) } @if let Some(signal) = &exit.signal { " signal " (signal) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The scale form.
#[derive(Debug, Deserialize)]
pub struct ScaleForm {
    group: String,
    target: String,
}

/// `POST /pools/{poolID}/scale`.
pub async fn scale(
    State(state): State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(pool): Path<String>,
    form: Result<Form<ScaleForm>, axum::extract::rejection::FormRejection>,
) -> Result<Redirect, PageError> {
    actor?;
    let pool = model::parse_pool_id(&pool)?;
    let Form(form) = form.map_err(ConsoleError::from_form)?;
    let group = GroupName::parse(form.group.as_str())
        .map_err(|error| ConsoleError::invalid(error.to_string()))?;
    let target = form.target.trim().parse::<u32>().map_err(|_| {
        ConsoleError::invalid(format!("target {:?} must be a whole number", form.target))
    })?;
    model::scale(
        &state,
        &pool,
        ScaleRequest {
            group,
            target: Some(target),
            delta: None,
        },
    )
    .await?;
    Ok(Redirect::to("/pools"))
}

/// The restart form.
#[derive(Debug, Deserialize)]
pub struct RestartForm {
    mode: RestartMode,
    #[serde(default)]
    group: Option<String>,
}

/// `POST /pools/{poolID}/restart`.
pub async fn restart(
    State(state): State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(pool): Path<String>,
    form: Result<Form<RestartForm>, axum::extract::rejection::FormRejection>,
) -> Result<Redirect, PageError> {
    actor?;
    let pool = model::parse_pool_id(&pool)?;
    let Form(form) = form.map_err(ConsoleError::from_form)?;
    let group = form
        .group
        .filter(|group| !group.is_empty())
        .map(|group| {
            GroupName::parse(group).map_err(|error| ConsoleError::invalid(error.to_string()))
        })
        .transpose()?;
    model::restart(
        &state,
        &pool,
        &PoolRestart {
            mode: form.mode,
            group,
        },
    )
    .await?;
    Ok(Redirect::to("/pools"))
}
