//! The routes: pages, live streams, the API and the assets, with a bound on bodies, a
//! count of every request, and errors in the form each caller reads.

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::{ApiError, ConsoleError, PageError, METHOD_NOT_ALLOWED};
use crate::{api, live, pages, AppState};

/// The console's stylesheet.
const STYLE: &str = include_str!("../assets/console.css");
/// The console's one script: live updates by Server-Sent Events.
const SCRIPT: &str = include_str!("../assets/console.js");

/// Every route of the console.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let api = Router::new()
        .route("/overview", get(api::overview))
        .route("/runs", get(api::runs).post(api::submit))
        .route("/runs/{run}", get(api::run))
        .route("/runs/{run}/children", get(api::children))
        .route("/runs/{run}/logs", get(api::run_logs))
        .route("/runs/{run}/cancel", post(api::cancel))
        .route("/runs/{run}/resubmit", post(api::resubmit))
        .route("/workers", get(api::workers))
        .route("/workers/{worker}", get(api::worker))
        .route("/workers/{worker}/logs", get(api::worker_logs))
        .route("/pools", get(api::pools))
        .route("/pools/{pool}", get(api::pool))
        .route("/pools/{pool}/scale", post(api::scale))
        .route("/pools/{pool}/restart", post(api::restart))
        .route("/openapi.json", get(api::openapi))
        .fallback(api_not_found)
        .method_not_allowed_fallback(api_method_not_allowed);
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/runs", get(pages::runs::page))
        .route(
            "/runs/new",
            get(pages::submit::form).post(pages::submit::submit),
        )
        .route("/runs/{run}", get(pages::run::page))
        .route("/runs/{run}/cancel", post(pages::run::cancel))
        .route("/runs/{run}/resubmit", post(pages::run::resubmit))
        .route("/workers", get(pages::workers::list))
        .route("/workers/{worker}", get(pages::workers::page))
        .route("/pools", get(pages::pools::page))
        .route("/pools/{pool}/scale", post(pages::pools::scale))
        .route("/pools/{pool}/restart", post(pages::pools::restart))
        .route("/login", get(pages::login::form).post(pages::login::login))
        .route("/logout", post(pages::login::logout))
        .route("/live/overview", get(live::overview))
        .route("/live/runs/{run}", get(live::run))
        .route("/live/workers/{worker}", get(live::worker))
        .route("/assets/console.css", get(style))
        .route("/assets/console.js", get(script))
        .nest("/api/v1", api)
        .fallback(page_not_found)
        .method_not_allowed_fallback(page_method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(count))
        .with_state(state)
}

async fn count(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    crate::metrics::count_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn style() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
}

async fn api_not_found(uri: Uri) -> ApiError {
    ConsoleError::not_found(format!("no API endpoint {}", uri.path())).into()
}

async fn api_method_not_allowed(method: Method, uri: Uri) -> ApiError {
    method_not_allowed(&method, &uri).into()
}

async fn page_not_found(uri: Uri) -> PageError {
    ConsoleError::not_found(format!("there is no page {}", uri.path())).into()
}

async fn page_method_not_allowed(method: Method, uri: Uri) -> PageError {
    method_not_allowed(&method, &uri).into()
}

fn method_not_allowed(method: &Method, uri: &Uri) -> ConsoleError {
    ConsoleError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: METHOD_NOT_ALLOWED,
        message: format!("{} does not take {method}", uri.path()),
        details: serde_json::Value::Null,
    }
}
