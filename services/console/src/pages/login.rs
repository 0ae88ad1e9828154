//! Signing in with the console's token, so that the browser may act; signing out.

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use crate::access::{CanAct, COOKIE_NAME};
use crate::pages::layout::{self, Section};
use crate::AppState;

fn form_page(state: &AppState, can_act: CanAct, error: Option<&str>) -> maud::Markup {
    let body = html! {
        h1 { "Sign in" }
        @if !state.access.actions_enabled() {
            p.error id="form-error" { (state.access.refusal().message) }
        }
        @if let Some(error) = error { p.error id="form-error" { (error) } }
        @if can_act.0 { p { "You are signed in and may act." } }
        form.submit id="login-form" method="post" action="/login" {
            label { "Console token" input type="password" name="token" autocomplete="current-password" required; }
            button type="submit" id="login" { "Sign in" }
        }
    };
    layout::page("Sign in", Section::None, can_act, body)
}

/// `GET /login`.
pub async fn form(State(state): State<AppState>, can_act: CanAct) -> maud::Markup {
    form_page(&state, can_act, None)
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`.
pub async fn login(
    State(state): State<AppState>,
    can_act: CanAct,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let token = form.map(|Form(form)| form.token).unwrap_or_default();
    match state.access.cookie_value(&token) {
        Some(value) => (
            [(
                SET_COOKIE,
                format!("{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict"),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        None => {
            crate::metrics::count_error(crate::error::NOT_PERMITTED);
            (
                StatusCode::FORBIDDEN,
                form_page(&state, can_act, Some("That is not the console's token.")),
            )
                .into_response()
        }
    }
}

/// `POST /logout`.
pub async fn logout() -> Response {
    (
        [(
            SET_COOKIE,
            format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}
