//! Client requests and replies (DESIGN §4, "Clients to services").

use serde::{Deserialize, Serialize};

use crate::ids::{RoutineId, RunId, WorkerId};
use crate::payload::record::{LogRecord, RunRecord, RunStatus, WorkerRecord};
use crate::payload::worker::{Labels, WorkerStatus};
use crate::timestamp::Timestamp;

/// `v1.run.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunGet {
    /// The run to fetch.
    #[serde(rename = "runID")]
    pub run_id: RunId,
}

/// `v1.run.list`: filters and paging; records come newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunList {
    /// Only runs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Only runs of this routine.
    #[serde(rename = "routineID", default, skip_serializing_if = "Option::is_none")]
    pub routine_id: Option<RoutineId>,
    /// Only runs held (or last held) by this worker.
    #[serde(rename = "workerID", default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    /// Page size (1 to 1000, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl RunList {
    /// Page size used when `limit` is not given.
    pub const DEFAULT_LIMIT: u32 = 50;
    /// Largest page size.
    pub const MAX_LIMIT: u32 = 1000;
}

/// `v1.run.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunCancel {
    /// The run to cancel.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// Why; recorded and sent to the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `v1.run.records`: a page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `v1.registry.list`: filters; every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RegistryList {
    /// Only workers with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkerStatus>,
    /// Only workers that registered this routine.
    #[serde(rename = "routineID", default, skip_serializing_if = "Option::is_none")]
    pub routine_id: Option<RoutineId>,
    /// Only workers carrying every one of these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// At most this many workers (1 to 10000); without it, every matching worker that
    /// fits in one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page: continue after this workerID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl RegistryList {
    /// Largest page size.
    pub const MAX_LIMIT: u32 = 10_000;
}

/// `v1.registry.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RegistryGet {
    /// The worker to fetch.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
}

/// `v1.registry.workers`: worker records, ordered by workerID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkerList {
    /// The workers.
    pub workers: Vec<WorkerRecord>,
    /// Present when more workers match than this reply holds (because of `limit`, or
    /// because they would not fit in one NATS message): pass it as `cursor` to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `v1.logs.query`: stored log records, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogsQuery {
    /// Only lines about this run.
    #[serde(rename = "runID", default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// Only lines from this worker.
    #[serde(rename = "workerID", default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    /// Only lines stored at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Page size (1 to 1000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl LogsQuery {
    /// Page size used when `limit` is not given.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// Largest page size.
    pub const MAX_LIMIT: u32 = 1000;
}

/// `v1.logs.records`: a page of log records, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogPage {
    /// The records.
    pub logs: Vec<LogRecord>,
    /// Pass as `cursor` to continue after the last record; present whenever records were
    /// returned, so that a follower can poll from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
