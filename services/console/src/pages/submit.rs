//! Submitting a run from a form: the routine, its params as JSON (checked before anything is
//! sent), and the most used parts of the spec.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use drover_protocol::{ErrorCode, RunSpec};
use maud::{html, Markup};
use serde::Deserialize;

use crate::access::{Actor, CanAct};
use crate::error::{ConsoleError, PageError};
use crate::model;
use crate::pages::layout::{self, Section};
use crate::AppState;

/// The form as it arrives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitForm {
    #[serde(default, rename = "routineID")]
    routine_id: String,
    #[serde(default)]
    params: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    max_retries: String,
    #[serde(default)]
    max_exec_time_ms: String,
}

impl SubmitForm {
    /// The spec it asks for, or what is wrong with it.
    fn spec(&self) -> Result<RunSpec, ConsoleError> {
        let routine = model::parse_routine_id(self.routine_id.trim())?;
        let params = if self.params.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&self.params).map_err(|error| {
                ConsoleError::wire(
                    ErrorCode::InvalidJson,
                    format!("params are not valid JSON: {error}"),
                )
            })?
        };
        let number = |name: &str, text: &str| -> Result<Option<u64>, ConsoleError> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            text.parse::<u64>().map(Some).map_err(|_| {
                ConsoleError::invalid(format!("{name} {text:?} must be a whole number"))
            })
        };
        let mut spec = RunSpec::new(routine);
        spec.params = params;
        spec.max_retries = number("maxRetries", &self.max_retries)?
            .map(|retries| u32::try_from(retries).unwrap_or(u32::MAX))
            .unwrap_or(0);
        spec.max_exec_time_ms = number("maxExecTimeMs", &self.max_exec_time_ms)?;
        let key = self.idempotency_key.trim();
        spec.idempotency_key = (!key.is_empty()).then(|| key.to_owned());
        Ok(spec)
    }
}

fn form_page(
    state: &AppState,
    can_act: CanAct,
    form: &SubmitForm,
    error: Option<&ConsoleError>,
) -> Markup {
    let routines: BTreeSet<String> = state
        .workers
        .values()
        .iter()
        .flat_map(|worker| worker.routines.iter().map(|r| r.to_string()))
        .collect();
    let params = if form.params.is_empty() {
        "{}"
    } else {
        form.params.as_str()
    };
    let body = html! {
        h1 { "Submit a run" }
        @if !can_act.0 {
            p.error id="form-error" { (state.access.refusal().message) }
        }
        @if let Some(error) = error {
            p.error id="form-error" { code { (error.code) } ": " (error.message) }
        }
        form.submit id="submit-form" method="post" action="/runs/new" {
            label { "Routine" input name="routineID" list="routines" required value=(form.routine_id) placeholder="images.resize"; }
            datalist id="routines" { @for routine in &routines { option value=(routine) {} } }
            label { "Params (JSON)" textarea name="params" rows="8" spellcheck="false" { (params) } }
            div.row {
                label { "Idempotency key" input name="idempotencyKey" value=(form.idempotency_key); }
                label { "maxRetries" input name="maxRetries" inputmode="numeric" value=(form.max_retries) placeholder="0"; }
                label { "maxExecTimeMs" input name="maxExecTimeMs" inputmode="numeric" value=(form.max_exec_time_ms) placeholder="none"; }
            }
            button type="submit" id="submit" disabled[!can_act.0] { "Submit" }
        }
    };
    layout::page("Submit a run", Section::Runs, can_act, body)
}

/// `GET /runs/new`.
pub async fn form(State(state): State<AppState>, can_act: CanAct) -> Markup {
    form_page(&state, can_act, &SubmitForm::default(), None)
}

/// `POST /runs/new`: submits, or shows the form again with what is wrong and submits nothing.
pub async fn submit(
    State(state): State<AppState>,
    can_act: CanAct,
    actor: Result<Actor, ConsoleError>,
    form: Result<Form<SubmitForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    actor?;
    let Form(form) = form.map_err(ConsoleError::from_form)?;
    let outcome = match form.spec() {
        Ok(spec) => model::submit(&state, &spec).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(accepted) => Ok(Redirect::to(&format!("/runs/{}", accepted.run_id)).into_response()),
        Err(error) => {
            crate::metrics::count_error(error.code);
            let status = if error.status.is_server_error() {
                error.status
            } else {
                StatusCode::BAD_REQUEST
            };
            Ok((status, form_page(&state, can_act, &form, Some(&error))).into_response())
        }
    }
}
