//! What the pages and the API both ask for and do: each question checked, answered from the
//! index or the services, and each action sent to the service that owns it.

use std::collections::BTreeMap;

use drover_protocol::subject::{self, keys};
use drover_protocol::{
    Accepted, ErrorCode, GroupName, LogPage, LogsQuery, PoolId, PoolRestart, PoolRestarting,
    PoolScale, PoolScaled, PoolState, PoolStatus, RoutineId, RunCancel, RunGet, RunId, RunRecord,
    RunSpec, RunStatus, Timestamp, WorkerId, WorkerRecord, WorkerStatus,
};
use serde::{Deserialize, Serialize};

use crate::directory::Service;
use crate::error::ConsoleError;
use crate::index::{MinuteCounts, Page, RunFilter, RunSummary};
use crate::AppState;

/// Runs listed on one page unless asked otherwise.
pub const DEFAULT_RUN_LIMIT: usize = 50;
/// Largest page of runs.
pub const MAX_RUN_LIMIT: usize = 1000;
/// Workers listed on one page unless asked otherwise.
pub const DEFAULT_WORKER_LIMIT: usize = 100;
/// Largest page of workers.
pub const MAX_WORKER_LIMIT: usize = 1000;
/// Minutes the overview's chart covers.
pub const CHART_MINUTES: u32 = 15;

/// The query of a run listing, as it arrives (every field text, so that each bad one gets
/// its own clear error).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Only runs in this state (`PENDING`, `ASSIGNED`, `RUNNING`, `SUCCEEDED`, `FAILED`,
    /// `CANCELLED`).
    pub status: Option<String>,
    /// Only runs of this routine.
    pub routine: Option<String>,
    /// Only runs held (or last held) by this worker.
    pub worker: Option<String>,
    /// Only runs accepted at or after this time: RFC 3339, or an age such as `10m`.
    pub since: Option<String>,
    /// Only runs accepted before this time: RFC 3339, or an age such as `10m`.
    pub until: Option<String>,
    /// A runID or an idempotency key: the one run it names.
    pub q: Option<String>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    pub limit: Option<String>,
}

fn given(text: &Option<String>) -> Option<&str> {
    text.as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
}

/// A time as RFC 3339, or an age before now such as `30s`, `10m`, `2h`, `1d`.
pub fn parse_time(name: &str, text: &str) -> Result<Timestamp, ConsoleError> {
    if let Ok(at) = Timestamp::parse(text) {
        return Ok(at);
    }
    let invalid = || {
        ConsoleError::invalid(format!(
            "{name} {text:?} is neither a time like 2026-11-22T13:00:00Z nor an age like 10m"
        ))
    };
    if text.contains(char::is_whitespace) {
        return Err(invalid());
    }
    let age = humantime::parse_duration(text).map_err(|_| invalid())?;
    i64::try_from(age.as_millis())
        .ok()
        .and_then(|age| Timestamp::now().as_millis().checked_sub(age))
        .map(Timestamp::from_millis)
        .ok_or_else(invalid)
}

fn parse_limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ConsoleError> {
    match text {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
            _ => Err(ConsoleError::invalid(format!(
                "limit {text:?} must be a number from 1 to {max}"
            ))),
        },
    }
}

/// Parses a run's ID from a path or a form.
pub fn parse_run_id(text: &str) -> Result<RunId, ConsoleError> {
    RunId::parse(text).map_err(|error| ConsoleError::wire(ErrorCode::UnknownRun, error.to_string()))
}

/// Parses a worker's ID from a path or a form.
pub fn parse_worker_id(text: &str) -> Result<WorkerId, ConsoleError> {
    WorkerId::parse(text)
        .map_err(|error| ConsoleError::wire(ErrorCode::UnknownWorker, error.to_string()))
}

/// Parses a routine's ID.
pub fn parse_routine_id(text: &str) -> Result<RoutineId, ConsoleError> {
    RoutineId::parse(text)
        .map_err(|error| ConsoleError::wire(ErrorCode::InvalidRoutineId, error.to_string()))
}

impl RunQuery {
    /// The filter, cursor and page size it asks for.
    pub fn parse(&self) -> Result<(RunFilter, Option<RunId>, usize), ConsoleError> {
        let status = given(&self.status)
            .map(|text| {
                text.to_ascii_uppercase().parse::<RunStatus>().map_err(|_| {
                    ConsoleError::invalid(format!(
                        "status {text:?} is not one of {}",
                        RunStatus::ALL.map(RunStatus::as_str).join(", ")
                    ))
                })
            })
            .transpose()?;
        let routine = given(&self.routine).map(parse_routine_id).transpose()?;
        let worker = given(&self.worker)
            .map(|text| {
                WorkerId::parse(text).map_err(|error| ConsoleError::invalid(error.to_string()))
            })
            .transpose()?;
        let since = given(&self.since)
            .map(|text| parse_time("since", text))
            .transpose()?;
        let until = given(&self.until)
            .map(|text| parse_time("until", text))
            .transpose()?;
        let cursor = given(&self.cursor)
            .map(|text| {
                // Cursors are runIDs, which the scheduler makes as UUIDs.
                let handed_out = uuid::Uuid::try_parse(text).is_ok();
                RunId::parse(text)
                    .ok()
                    .filter(|_| handed_out)
                    .ok_or_else(|| {
                        ConsoleError::wire(
                            ErrorCode::InvalidCursor,
                            format!("cursor {text:?} was not handed out by this console"),
                        )
                    })
            })
            .transpose()?;
        let limit = parse_limit(given(&self.limit), DEFAULT_RUN_LIMIT, MAX_RUN_LIMIT)?;
        Ok((
            RunFilter {
                status,
                routine,
                worker,
                since,
                until,
            },
            cursor,
            limit,
        ))
    }

    /// The search text, when there is one.
    pub fn search(&self) -> Option<&str> {
        given(&self.q)
    }
}

/// A page of runs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunList {
    /// The runs, newest first.
    pub runs: Vec<RunSummary>,
    /// Pass it as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl From<Page> for RunList {
    fn from(page: Page) -> Self {
        Self {
            runs: page.runs,
            next_cursor: page.next_cursor.map(RunId::into_string),
        }
    }
}

/// The run a search names: by runID, then by idempotency key.
pub fn search(state: &AppState, text: &str) -> Option<RunSummary> {
    RunId::parse(text)
        .ok()
        .and_then(|run| state.runs.get(&run))
        .or_else(|| state.runs.by_idempotency_key(text))
}

/// A listing of runs, or the one run a search names.
pub fn list_runs(state: &AppState, query: &RunQuery) -> Result<RunList, ConsoleError> {
    let (filter, cursor, limit) = query.parse()?;
    if let Some(text) = query.search() {
        return Ok(RunList {
            runs: search(state, text).into_iter().collect(),
            next_cursor: None,
        });
    }
    Ok(state.runs.list(&filter, cursor.as_ref(), limit).into())
}

/// A run's full record, from the scheduler.
pub async fn run(state: &AppState, run: &RunId) -> Result<RunRecord, ConsoleError> {
    state
        .backend
        .call(
            keys::RUN_GET,
            &RunGet {
                run_id: run.clone(),
            },
        )
        .await
}

/// The runs `parent` requested, oldest first; an unknown parent is an error.
pub fn children(state: &AppState, parent: &RunId) -> Result<Vec<RunSummary>, ConsoleError> {
    if state.runs.get(parent).is_none() {
        return Err(unknown_run(parent));
    }
    Ok(state.runs.children(parent))
}

fn unknown_run(run: &RunId) -> ConsoleError {
    ConsoleError::wire(ErrorCode::UnknownRun, format!("no run {run}"))
}

/// A page of the logs of a run or a worker, oldest first, from the log-collector.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Only lines stored at or after this time: RFC 3339, or an age such as `10m`.
    pub since: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<String>,
}

impl LogQuery {
    fn to_query(&self) -> Result<LogsQuery, ConsoleError> {
        let limit = parse_limit(
            given(&self.limit),
            LogsQuery::DEFAULT_LIMIT as usize,
            LogsQuery::MAX_LIMIT as usize,
        )?;
        Ok(LogsQuery {
            since: given(&self.since)
                .map(|text| parse_time("since", text))
                .transpose()?,
            limit: Some(limit as u32),
            cursor: given(&self.cursor).map(str::to_owned),
            ..LogsQuery::default()
        })
    }
}

/// A page of a run's logs.
pub async fn run_logs(
    state: &AppState,
    run: &RunId,
    query: &LogQuery,
) -> Result<LogPage, ConsoleError> {
    let mut request = query.to_query()?;
    if state.runs.get(run).is_none() {
        return Err(unknown_run(run));
    }
    request.run_id = Some(run.clone());
    logs(state, &request).await
}

/// A page of a worker's logs.
pub async fn worker_logs(
    state: &AppState,
    worker: &WorkerId,
    query: &LogQuery,
) -> Result<LogPage, ConsoleError> {
    let mut request = query.to_query()?;
    self::worker(state, worker)?;
    request.worker_id = Some(worker.clone());
    logs(state, &request).await
}

/// One page of `v1.logs.query`.
pub async fn logs(state: &AppState, request: &LogsQuery) -> Result<LogPage, ConsoleError> {
    state.backend.call(keys::LOGS_QUERY, request).await
}

/// Submits a run; `spec` comes from a client, so it may not name a parent.
pub async fn submit(state: &AppState, spec: &RunSpec) -> Result<Accepted, ConsoleError> {
    if spec.parent_run_id.is_some() {
        return Err(ConsoleError::invalid(
            "parentRunID is for workers requesting children; submit without it",
        ));
    }
    let accepted = state.backend.call(keys::REQUEST_START, spec).await?;
    crate::metrics::count_action("submit");
    Ok(accepted)
}

/// The spec a run was submitted with, to submit it again (without its idempotency key,
/// which would only return the same run).
pub fn spec_of(record: &RunRecord) -> RunSpec {
    RunSpec {
        routine_id: record.routine_id.clone(),
        params: record.params.clone(),
        env: record.env.clone(),
        conditions: record.conditions.clone(),
        max_wait_time_ms: record.max_wait_time_ms,
        max_exec_time_ms: record.max_exec_time_ms,
        max_retries: record.max_retries,
        retry_backoff: record.retry_backoff,
        idempotency_key: None,
        local_run_id: None,
        parent_run_id: None,
    }
}

/// Submits a finished run again with the same spec.
pub async fn resubmit(state: &AppState, run: &RunId) -> Result<Accepted, ConsoleError> {
    let record = self::run(state, run).await?;
    if !record.status.is_terminal() {
        return Err(ConsoleError::invalid(format!(
            "run {run} is {}: only a finished run can be submitted again",
            record.status
        )));
    }
    if record.parent_run_id.is_some() {
        return Err(ConsoleError::invalid(format!(
            "run {run} is a child run: submit its parent again instead"
        )));
    }
    let accepted = submit(state, &spec_of(&record)).await?;
    crate::metrics::count_action("resubmit");
    Ok(accepted)
}

/// Cancels a run.
pub async fn cancel(
    state: &AppState,
    run: &RunId,
    reason: Option<String>,
) -> Result<RunRecord, ConsoleError> {
    let reason = reason.filter(|reason| !reason.trim().is_empty());
    let record = state
        .backend
        .call(
            keys::RUN_CANCEL,
            &RunCancel {
                run_id: run.clone(),
                reason: Some(reason.unwrap_or_else(|| "cancelled from the console".to_owned())),
            },
        )
        .await?;
    crate::metrics::count_action("cancel");
    Ok(record)
}

/// Which workers a listing wants.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkerQuery {
    /// Only workers with this status (`IDLE`, `WORKING`, `LOST`, ...).
    pub status: Option<String>,
    /// Only workers that registered this routine.
    pub routine: Option<String>,
    /// Only workers of this pool (their `pool` label).
    pub pool: Option<String>,
    /// `nextCursor` of the previous page: continue after this workerID.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<String>,
}

/// A page of workers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPage {
    /// The workers, by workerID.
    pub workers: Vec<WorkerRecord>,
    /// Pass it as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A listing of workers from the console's copy of `DROVER_WORKERS`.
pub fn list_workers(state: &AppState, query: &WorkerQuery) -> Result<WorkerPage, ConsoleError> {
    let status = given(&query.status)
        .map(|text| {
            WorkerStatus::ALL
                .into_iter()
                .find(|status| status.as_str().eq_ignore_ascii_case(text))
                .ok_or_else(|| {
                    ConsoleError::invalid(format!(
                        "status {text:?} is not one of {}",
                        WorkerStatus::ALL.map(WorkerStatus::as_str).join(", ")
                    ))
                })
        })
        .transpose()?;
    let routine = given(&query.routine).map(parse_routine_id).transpose()?;
    let pool = given(&query.pool);
    let cursor = given(&query.cursor)
        .map(|text| {
            WorkerId::parse(text).map_err(|_| {
                ConsoleError::wire(
                    ErrorCode::InvalidCursor,
                    format!("cursor {text:?} was not handed out by this console"),
                )
            })
        })
        .transpose()?;
    let limit = parse_limit(given(&query.limit), DEFAULT_WORKER_LIMIT, MAX_WORKER_LIMIT)?;
    let mut matching: Vec<std::sync::Arc<WorkerRecord>> = state
        .workers
        .values()
        .into_iter()
        .filter(|worker| {
            cursor
                .as_ref()
                .is_none_or(|cursor| &worker.worker_id > cursor)
                && status.is_none_or(|status| worker.status == status)
                && routine
                    .as_ref()
                    .is_none_or(|routine| worker.routines.contains(routine))
                && pool
                    .is_none_or(|pool| worker.labels.get("pool").map(String::as_str) == Some(pool))
        })
        .collect();
    matching.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    let next_cursor = (matching.len() > limit).then(|| matching[limit - 1].worker_id.to_string());
    let workers = matching
        .iter()
        .take(limit)
        .map(|worker| (**worker).clone())
        .collect();
    Ok(WorkerPage {
        workers,
        next_cursor,
    })
}

/// One worker's record.
pub fn worker(state: &AppState, worker: &WorkerId) -> Result<WorkerRecord, ConsoleError> {
    state
        .workers
        .get(worker.as_str())
        .map(|versioned| (*versioned.value).clone())
        .ok_or_else(|| ConsoleError::wire(ErrorCode::UnknownWorker, format!("no worker {worker}")))
}

/// Parses a pool's ID from a path.
pub fn parse_pool_id(text: &str) -> Result<PoolId, ConsoleError> {
    PoolId::parse(text).map_err(|error| ConsoleError::not_found(error.to_string()))
}

/// The error for a pool that nothing answers for.
fn no_pool(pool: &PoolId) -> impl FnOnce() -> ConsoleError + '_ {
    move || ConsoleError::not_found(format!("no pool {pool} answers"))
}

/// A pool's status, from the pool.
pub async fn pool(state: &AppState, pool: &PoolId) -> Result<PoolState, ConsoleError> {
    state
        .backend
        .call_or(&subject::pool::status(pool), &PoolStatus {}, no_pool(pool))
        .await
}

/// Every pool's status; a pool that does not answer is left out.
pub async fn pools(state: &AppState) -> Vec<PoolState> {
    let pools = state.directory.pools();
    let answers = futures::future::join_all(pools.iter().map(|id| pool(state, id))).await;
    answers.into_iter().filter_map(Result::ok).collect()
}

/// What a scale request asks, as the API takes it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRequest {
    /// The group.
    pub group: GroupName,
    /// The number of processes wanted.
    #[serde(default)]
    pub target: Option<u32>,
    /// Processes to add (positive) or remove (negative).
    #[serde(default)]
    pub delta: Option<i64>,
}

/// Scales a pool's group.
pub async fn scale(
    state: &AppState,
    pool: &PoolId,
    request: ScaleRequest,
) -> Result<PoolScaled, ConsoleError> {
    let scale: PoolScale = serde_json::from_value(
        serde_json::to_value(&request).map_err(|error| ConsoleError::invalid(error.to_string()))?,
    )
    .map_err(|error| ConsoleError::wire(ErrorCode::SchemaViolation, error.to_string()))?;
    let scaled = state
        .backend
        .call_or(&subject::pool::scale(pool), &scale, no_pool(pool))
        .await?;
    crate::metrics::count_action("scale");
    Ok(scaled)
}

/// Restarts a pool's processes.
pub async fn restart(
    state: &AppState,
    pool: &PoolId,
    request: &PoolRestart,
) -> Result<PoolRestarting, ConsoleError> {
    let restarting = state
        .backend
        .call_or(&subject::pool::restart(pool), request, no_pool(pool))
        .await?;
    crate::metrics::count_action("restart");
    Ok(restarting)
}

/// The overview: services, workers, runs, throughput and what waits.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// Services answering discovery, with their replicas.
    pub services: Vec<Service>,
    /// Workers by status.
    pub workers_by_status: BTreeMap<String, usize>,
    /// Runs by state.
    pub runs_by_state: BTreeMap<String, usize>,
    /// Runs that ended in each of the last minutes, the current minute first.
    pub ended_per_minute: Vec<MinuteCounts>,
    /// Runs waiting for placement, by routine, most first.
    pub pending_by_routine: Vec<RoutineCount>,
    /// Runs stored.
    pub runs_total: usize,
}

/// A routine and a count.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutineCount {
    /// The routine.
    #[serde(rename = "routineID")]
    pub routine_id: RoutineId,
    /// How many.
    pub count: usize,
}

/// The overview, from the index, the workers and discovery.
pub fn overview(state: &AppState) -> Overview {
    let mut workers_by_status = BTreeMap::new();
    for worker in state.workers.values() {
        *workers_by_status
            .entry(worker.status.as_str().to_owned())
            .or_insert(0) += 1;
    }
    let runs_by_state = state
        .runs
        .count_by_status()
        .into_iter()
        .map(|(status, count)| (status.as_str().to_owned(), count))
        .collect();
    Overview {
        services: state.directory.services(),
        workers_by_status,
        runs_by_state,
        ended_per_minute: state.runs.ended_per_minute(Timestamp::now(), CHART_MINUTES),
        pending_by_routine: state
            .runs
            .pending_by_routine()
            .into_iter()
            .map(|(routine_id, count)| RoutineCount { routine_id, count })
            .collect(),
        runs_total: state.runs.len(),
    }
}
