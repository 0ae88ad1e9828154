//! The HTTP API under `/api/v1`: everything the pages show and do, as JSON. Each handler's
//! `#[utoipa::path]` is its entry in the OpenAPI document (`openapi.rs`).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_protocol::{
    Accepted, ErrorCode, LogPage, PoolRestart, PoolRestarting, PoolScaled, PoolState, RunRecord,
    RunSpec, WorkerRecord,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access::Actor;
use crate::error::{ApiError, ConsoleError};
use crate::index::RunSummary;
use crate::model::{
    self, LogQuery, Overview, RunList, RunQuery, ScaleRequest, WorkerPage, WorkerQuery,
};
use crate::AppState;

/// A JSON body whose every rejection is an [`ApiError`] with a `v1.error` code.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_rejection(rejection, state.max_body_bytes).into()),
        }
    }
}

/// What a refused JSON body gets: the code a service would answer the same body with.
pub fn json_rejection(rejection: JsonRejection, limit: usize) -> ConsoleError {
    let text = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => ConsoleError::wire(ErrorCode::InvalidJson, text),
        JsonRejection::JsonDataError(_) => ConsoleError::wire(ErrorCode::SchemaViolation, text),
        JsonRejection::MissingJsonContentType(_) => ConsoleError::wire(
            ErrorCode::InvalidPayload,
            "send the body as JSON, with Content-Type: application/json",
        ),
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ConsoleError::wire(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        ),
        _ => ConsoleError::invalid(text),
    }
}

/// Query parameters whose rejection is an [`ApiError`].
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(query_rejection(rejection).into()),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ConsoleError {
    ConsoleError::invalid(rejection.body_text())
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The overview.
#[utoipa::path(get, path = "/api/v1/overview", tag = "overview",
    responses((status = 200, body = Overview)))]
pub async fn overview(state: axum::extract::State<AppState>) -> Json<Overview> {
    Json(model::overview(&state))
}

/// Runs, newest first: filtered, searched and paged by cursor.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunQuery),
    responses(
        (status = 200, body = RunList),
        (status = 400, description = "a bad filter, cursor or limit", body = crate::error::ErrorBody),
    ))]
pub async fn runs(
    state: axum::extract::State<AppState>,
    Params(query): Params<RunQuery>,
) -> ApiResult<RunList> {
    Ok(Json(model::list_runs(&state, &query)?))
}

/// A run's full record.
#[utoipa::path(get, path = "/api/v1/runs/{runID}", tag = "runs",
    params(("runID" = String, Path, description = "the run")),
    responses(
        (status = 200, body = RunRecord),
        (status = 404, description = "no such run (`unknown_run`)", body = crate::error::ErrorBody),
        (status = 503, description = "the scheduler did not answer", body = crate::error::ErrorBody),
    ))]
pub async fn run(
    state: axum::extract::State<AppState>,
    Path(run): Path<String>,
) -> ApiResult<RunRecord> {
    let run = model::parse_run_id(&run)?;
    Ok(Json(model::run(&state, &run).await?))
}

/// The runs a run requested.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Children {
    /// Oldest first.
    pub runs: Vec<RunSummary>,
}

/// The runs a run requested, oldest first.
#[utoipa::path(get, path = "/api/v1/runs/{runID}/children", tag = "runs",
    params(("runID" = String, Path, description = "the parent run")),
    responses(
        (status = 200, body = Children),
        (status = 404, description = "no such run (`unknown_run`)", body = crate::error::ErrorBody),
    ))]
pub async fn children(
    state: axum::extract::State<AppState>,
    Path(run): Path<String>,
) -> ApiResult<Children> {
    let run = model::parse_run_id(&run)?;
    Ok(Json(Children {
        runs: model::children(&state, &run)?,
    }))
}

/// A page of a run's logs, oldest first.
#[utoipa::path(get, path = "/api/v1/runs/{runID}/logs", tag = "runs",
    params(("runID" = String, Path, description = "the run"), LogQuery),
    responses(
        (status = 200, body = LogPage),
        (status = 400, description = "a bad cursor, time or limit", body = crate::error::ErrorBody),
        (status = 404, description = "no such run (`unknown_run`)", body = crate::error::ErrorBody),
        (status = 503, description = "the log-collector did not answer", body = crate::error::ErrorBody),
    ))]
pub async fn run_logs(
    state: axum::extract::State<AppState>,
    Path(run): Path<String>,
    Params(query): Params<LogQuery>,
) -> ApiResult<LogPage> {
    let run = model::parse_run_id(&run)?;
    Ok(Json(model::run_logs(&state, &run, &query).await?))
}

/// Submits a run.
#[utoipa::path(post, path = "/api/v1/runs", tag = "actions", request_body = RunSpec,
    security(("token" = [])),
    responses(
        (status = 201, body = Accepted),
        (status = 400, description = "an invalid spec", body = crate::error::ErrorBody),
        (status = 403, description = "no token (`not_permitted`)", body = crate::error::ErrorBody),
        (status = 413, description = "the body is too large", body = crate::error::ErrorBody),
        (status = 503, description = "the scheduler did not answer", body = crate::error::ErrorBody),
    ))]
pub async fn submit(
    state: axum::extract::State<AppState>,
    actor: Result<Actor, ConsoleError>,
    body: Result<Body<RunSpec>, ApiError>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    actor?;
    let Body(spec) = body?;
    Ok((
        StatusCode::CREATED,
        Json(model::submit(&state, &spec).await?),
    ))
}

/// Why a run is cancelled.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CancelRequest {
    /// Recorded on the run and sent to its worker.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Cancels a run (and its unfinished children).
#[utoipa::path(post, path = "/api/v1/runs/{runID}/cancel", tag = "actions",
    params(("runID" = String, Path, description = "the run")),
    request_body(content = Option<CancelRequest>, description = "optional; `{}` will do"),
    security(("token" = [])),
    responses(
        (status = 200, description = "the run's record after the cancel", body = RunRecord),
        (status = 400, description = "an invalid body", body = crate::error::ErrorBody),
        (status = 403, description = "no token (`not_permitted`)", body = crate::error::ErrorBody),
        (status = 404, description = "no such run (`unknown_run`)", body = crate::error::ErrorBody),
        (status = 413, description = "the body is too large", body = crate::error::ErrorBody),
        (status = 503, description = "the scheduler did not answer", body = crate::error::ErrorBody),
    ))]
pub async fn cancel(
    state: axum::extract::State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(run): Path<String>,
    body: Result<Body<CancelRequest>, ApiError>,
) -> ApiResult<RunRecord> {
    actor?;
    let run = model::parse_run_id(&run)?;
    let reason = match body {
        Ok(Body(request)) => request.reason,
        // An empty body is no reason, not an error.
        Err(ApiError(error)) if error.code == ErrorCode::InvalidPayload.as_str() => None,
        Err(error) => return Err(error),
    };
    Ok(Json(model::cancel(&state, &run, reason).await?))
}

/// Submits a finished run again with the same spec.
#[utoipa::path(post, path = "/api/v1/runs/{runID}/resubmit", tag = "actions",
    params(("runID" = String, Path, description = "the finished run")),
    security(("token" = [])),
    responses(
        (status = 201, description = "the new run", body = Accepted),
        (status = 400, description = "the run has not finished, or is a child", body = crate::error::ErrorBody),
        (status = 403, description = "no token (`not_permitted`)", body = crate::error::ErrorBody),
        (status = 404, description = "no such run (`unknown_run`)", body = crate::error::ErrorBody),
        (status = 503, description = "the scheduler did not answer", body = crate::error::ErrorBody),
    ))]
pub async fn resubmit(
    state: axum::extract::State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(run): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    actor?;
    let run = model::parse_run_id(&run)?;
    Ok((
        StatusCode::CREATED,
        Json(model::resubmit(&state, &run).await?),
    ))
}

/// Workers, by workerID, filtered and paged by cursor.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", params(WorkerQuery),
    responses(
        (status = 200, body = WorkerPage),
        (status = 400, description = "a bad filter, cursor or limit", body = crate::error::ErrorBody),
    ))]
pub async fn workers(
    state: axum::extract::State<AppState>,
    Params(query): Params<WorkerQuery>,
) -> ApiResult<WorkerPage> {
    Ok(Json(model::list_workers(&state, &query)?))
}

/// A worker's record.
#[utoipa::path(get, path = "/api/v1/workers/{workerID}", tag = "workers",
    params(("workerID" = String, Path, description = "the worker")),
    responses(
        (status = 200, body = WorkerRecord),
        (status = 404, description = "no such worker (`unknown_worker`)", body = crate::error::ErrorBody),
    ))]
pub async fn worker(
    state: axum::extract::State<AppState>,
    Path(worker): Path<String>,
) -> ApiResult<WorkerRecord> {
    let worker = model::parse_worker_id(&worker)?;
    Ok(Json(model::worker(&state, &worker)?))
}

/// A page of a worker's logs, oldest first.
#[utoipa::path(get, path = "/api/v1/workers/{workerID}/logs", tag = "workers",
    params(("workerID" = String, Path, description = "the worker"), LogQuery),
    responses(
        (status = 200, body = LogPage),
        (status = 400, description = "a bad cursor, time or limit", body = crate::error::ErrorBody),
        (status = 404, description = "no such worker (`unknown_worker`)", body = crate::error::ErrorBody),
        (status = 503, description = "the log-collector did not answer", body = crate::error::ErrorBody),
    ))]
pub async fn worker_logs(
    state: axum::extract::State<AppState>,
    Path(worker): Path<String>,
    Params(query): Params<LogQuery>,
) -> ApiResult<LogPage> {
    let worker = model::parse_worker_id(&worker)?;
    Ok(Json(model::worker_logs(&state, &worker, &query).await?))
}

/// The pools that answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Pools {
    /// Each pool's status.
    pub pools: Vec<PoolState>,
}

/// Every pool's status.
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools",
    responses((status = 200, body = Pools)))]
pub async fn pools(state: axum::extract::State<AppState>) -> Json<Pools> {
    Json(Pools {
        pools: model::pools(&state).await,
    })
}

/// A pool's status.
#[utoipa::path(get, path = "/api/v1/pools/{poolID}", tag = "pools",
    params(("poolID" = String, Path, description = "the pool")),
    responses(
        (status = 200, body = PoolState),
        (status = 404, description = "no such pool answers (`not_found`)", body = crate::error::ErrorBody),
        (status = 503, description = "the pool did not answer in time", body = crate::error::ErrorBody),
    ))]
pub async fn pool(
    state: axum::extract::State<AppState>,
    Path(pool): Path<String>,
) -> ApiResult<PoolState> {
    let pool = model::parse_pool_id(&pool)?;
    Ok(Json(model::pool(&state, &pool).await?))
}

/// Scales a pool's group.
#[utoipa::path(post, path = "/api/v1/pools/{poolID}/scale", tag = "actions",
    params(("poolID" = String, Path, description = "the pool")),
    request_body = ScaleRequest,
    security(("token" = [])),
    responses(
        (status = 200, body = PoolScaled),
        (status = 400, description = "an invalid request, or out of the group's bounds", body = crate::error::ErrorBody),
        (status = 403, description = "no token (`not_permitted`)", body = crate::error::ErrorBody),
        (status = 404, description = "no such pool or group", body = crate::error::ErrorBody),
        (status = 413, description = "the body is too large", body = crate::error::ErrorBody),
        (status = 503, description = "the pool did not answer in time", body = crate::error::ErrorBody),
    ))]
pub async fn scale(
    state: axum::extract::State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(pool): Path<String>,
    body: Result<Body<ScaleRequest>, ApiError>,
) -> ApiResult<PoolScaled> {
    actor?;
    let pool = model::parse_pool_id(&pool)?;
    let Body(request) = body?;
    Ok(Json(model::scale(&state, &pool, request).await?))
}

/// Restarts a pool's processes, hard or soft.
#[utoipa::path(post, path = "/api/v1/pools/{poolID}/restart", tag = "actions",
    params(("poolID" = String, Path, description = "the pool")),
    request_body = PoolRestart,
    security(("token" = [])),
    responses(
        (status = 200, body = PoolRestarting),
        (status = 400, description = "an invalid request", body = crate::error::ErrorBody),
        (status = 403, description = "no token (`not_permitted`)", body = crate::error::ErrorBody),
        (status = 404, description = "no such pool or group", body = crate::error::ErrorBody),
        (status = 413, description = "the body is too large", body = crate::error::ErrorBody),
        (status = 503, description = "the pool did not answer in time", body = crate::error::ErrorBody),
    ))]
pub async fn restart(
    state: axum::extract::State<AppState>,
    actor: Result<Actor, ConsoleError>,
    Path(pool): Path<String>,
    body: Result<Body<PoolRestart>, ApiError>,
) -> ApiResult<PoolRestarting> {
    actor?;
    let pool = model::parse_pool_id(&pool)?;
    let Body(request) = body?;
    Ok(Json(model::restart(&state, &pool, &request).await?))
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Response {
    Json(crate::openapi::openapi_document()).into_response()
}
