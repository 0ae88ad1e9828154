//! Records the services keep and hand out: workers, runs, log lines, and the events about them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{Attempt, Incarnation, LocalRunId, RoutineId, RunId, WorkerId};
use crate::payload::run::{Conditions, RetryBackoff, RunError};
use crate::payload::worker::{Labels, LogLevel, SdkInfo, WorkerStatus};
use crate::timestamp::Timestamp;
use crate::trace::TraceParent;

/// Where a worker is in its registration, apart from the runs it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerPhase {
    /// Registered, waiting for `v1.ready`.
    Initializing,
    /// Ready for work.
    Ready,
    /// Sent `v1.terminating`.
    Terminating,
    /// Went quiet after terminating.
    Offline,
    /// Went quiet without terminating.
    Lost,
}

/// A run a worker holds, as the scheduler reported it to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeldRun {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt the worker holds.
    pub attempt: Attempt,
    /// True while the run waits on child runs it requested.
    #[serde(default)]
    pub waiting: bool,
    /// Orders `waiting` reports; a report older than this one is ignored.
    #[serde(default)]
    pub waiting_version: u64,
    /// When the worker was given the run.
    pub since: Timestamp,
    /// The W3C `traceparent` of the attempt's span: what the registry and the
    /// heartbeat-monitor decide about the worker is recorded under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The registry's record of a worker: KV `DROVER_WORKERS`, `v1.registry.get`, `v1.registry.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    /// The worker.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// Current registration.
    pub incarnation: Incarnation,
    /// Derived status (DESIGN §5).
    pub status: WorkerStatus,
    /// The status the worker last reported in a pulse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_status: Option<WorkerStatus>,
    /// Registration phase; `status` is derived from it, `unresponsive` and `runs`.
    pub phase: WorkerPhase,
    /// True while the heartbeat-monitor considers the worker unresponsive.
    #[serde(default)]
    pub unresponsive: bool,
    /// Routines it can run.
    pub routines: Vec<RoutineId>,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
    /// Runs it may hold at once.
    pub capacity: u32,
    /// Runs it holds.
    #[serde(default)]
    pub runs: Vec<HeldRun>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SDK it was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<SdkInfo>,
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Process ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u64>,
    /// Heartbeat interval handed out at registration.
    pub heartbeat_interval_ms: u64,
    /// Lost-after delay handed out at registration.
    pub lost_after_ms: u64,
    /// When this incarnation registered.
    pub registered_at: Timestamp,
    /// When `status` last changed.
    pub status_changed_at: Timestamp,
    /// When it sent `v1.ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Timestamp>,
    /// Why it is terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating_reason: Option<String>,
}

impl WorkerRecord {
    /// Derives the public status from phase, liveness and held runs (DESIGN §5).
    pub fn derive_status(&self) -> WorkerStatus {
        match self.phase {
            WorkerPhase::Lost => WorkerStatus::Lost,
            WorkerPhase::Offline => WorkerStatus::Offline,
            _ if self.unresponsive => WorkerStatus::Unresponsive,
            WorkerPhase::Terminating => WorkerStatus::Terminating,
            WorkerPhase::Initializing => WorkerStatus::Initializing,
            WorkerPhase::Ready if self.runs.is_empty() => WorkerStatus::Idle,
            WorkerPhase::Ready if self.runs.iter().all(|run| run.waiting) => WorkerStatus::Hanging,
            WorkerPhase::Ready => WorkerStatus::Working,
        }
    }

    /// True while the registration is live (not LOST or OFFLINE).
    pub fn is_live(&self) -> bool {
        !matches!(self.phase, WorkerPhase::Lost | WorkerPhase::Offline)
    }

    /// True when new runs may be placed on this worker, capacity aside.
    pub fn accepts_work(&self) -> bool {
        self.phase == WorkerPhase::Ready && !self.unresponsive
    }

    /// Free run slots.
    pub fn free_slots(&self) -> u32 {
        self.capacity.saturating_sub(self.runs.len() as u32)
    }
}

/// A run's state (DESIGN §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Waiting for placement (or for its retry backoff).
    Pending,
    /// Sent to a worker, not yet acknowledged.
    Assigned,
    /// The worker said it started.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended badly; see `failureReason`.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunStatus {
    /// Every status, in order.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Assigned,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// True for SUCCEEDED, FAILED and CANCELLED.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// The wire spelling, e.g. `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "PENDING",
            RunStatus::Assigned => "ASSIGNED",
            RunStatus::Running => "RUNNING",
            RunStatus::Succeeded => "SUCCEEDED",
            RunStatus::Failed => "FAILED",
            RunStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown run status {s:?}"))
    }
}

/// Why a run failed or was cancelled (DESIGN §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The routine reported a failure that was not retried.
    Error,
    /// The last attempt ran past `maxExecTimeMs`.
    MaxExecExceeded,
    /// The run was not placed within `maxWaitTimeMs`.
    MaxWaitExceeded,
    /// The routine failed on every allowed retry.
    RetriesExhausted,
    /// Workers were lost (or never acknowledged) more often than the reassignment bound.
    WorkerLost,
    /// Someone cancelled the run, or its parent.
    Cancelled,
}

impl FailureReason {
    /// The wire spelling, e.g. `max_exec_exceeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Error => "error",
            FailureReason::MaxExecExceeded => "max_exec_exceeded",
            FailureReason::MaxWaitExceeded => "max_wait_exceeded",
            FailureReason::RetriesExhausted => "retries_exhausted",
            FailureReason::WorkerLost => "worker_lost",
            FailureReason::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change in a run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// The state entered.
    pub status: RunStatus,
    /// When.
    pub at: Timestamp,
    /// The attempt at the time.
    pub attempt: Attempt,
    /// The worker involved, if any.
    #[serde(rename = "workerID", default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    /// Why, for retries, reassignments and failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The scheduler's record of a run: KV `DROVER_RUNS`, `v1.run.get`, `v1.run.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// Its routine.
    #[serde(rename = "routineID")]
    pub routine_id: RoutineId,
    /// Current state.
    pub status: RunStatus,
    /// Parameters.
    #[serde(default)]
    pub params: Value,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Placement conditions.
    #[serde(default)]
    pub conditions: Conditions,
    /// Placement deadline, from submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_time_ms: Option<u64>,
    /// Bound on one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_exec_time_ms: Option<u64>,
    /// Retries allowed after failed attempts.
    pub max_retries: u32,
    /// Delays between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<RetryBackoff>,
    /// The idempotency key it was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The requester's correlation ID.
    #[serde(
        rename = "localRunID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_run_id: Option<LocalRunId>,
    /// For a child run: its parent.
    #[serde(
        rename = "parentRunID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_run_id: Option<RunId>,
    /// For a child run: the worker whose request created it, which gets its events.
    #[serde(
        rename = "requestedBy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub requested_by: Option<WorkerId>,
    /// Assignments so far; the current attempt's number.
    pub attempt: Attempt,
    /// Failed attempts that were retried.
    pub retries: u32,
    /// Assignments taken back because a worker was lost or never acknowledged.
    pub reassignments: u32,
    /// The worker holding (or that last held) the run.
    #[serde(rename = "workerID", default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    /// That worker's incarnation at assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<Incarnation>,
    /// Accepted.
    pub created_at: Timestamp,
    /// Latest assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<Timestamp>,
    /// Latest start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Reached a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// A pending retry is not placed before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Every state change.
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// The routine's result, once SUCCEEDED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last failure's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// Why it FAILED or was CANCELLED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    /// Child runs this run requested that have not ended yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_children: Vec<RunId>,
    /// The run's trace: the W3C trace-id (32 hex digits), to look it up in a tracing UI.
    #[serde(rename = "traceID", default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The W3C `traceparent` the run was accepted in (the scheduler's intake span); the
    /// run's span and its attempts' spans are derived from it (see [`RunRecord::run_span`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` received at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Sequence of the run's message in `DROVER_QUEUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_seq: Option<u64>,
}

impl RunRecord {
    /// The trace context the run was accepted in (`traceparent`), when it is valid.
    pub fn submitted_in(&self) -> Option<TraceParent> {
        self.traceparent.as_deref().and_then(TraceParent::parse)
    }

    /// The context of the run's own span (`drover.run`), see [`TraceParent::run_span`].
    pub fn run_span(&self) -> Option<TraceParent> {
        self.submitted_in()
            .map(|submitted| TraceParent::run_span(&submitted, self.run_id.as_str()))
    }

    /// The context of the span of `attempt` (`drover.attempt`), see
    /// [`TraceParent::attempt_span`]: what every directive about that attempt carries.
    pub fn attempt_span(&self, attempt: Attempt) -> Option<TraceParent> {
        self.submitted_in()
            .map(|submitted| TraceParent::attempt_span(&submitted, self.run_id.as_str(), attempt))
    }
}

/// A `v1.run.events.<runID>` payload: a run changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The state it entered.
    pub status: RunStatus,
    /// The state it left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<RunStatus>,
    /// The attempt at the time.
    pub attempt: Attempt,
    /// When.
    pub at: Timestamp,
    /// The record after the change.
    pub run: RunRecord,
}

/// A [`RunEvent`] that borrows its record, for the scheduler to announce a change without
/// copying the record: the same JSON, field for field.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEventRef<'a> {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: &'a RunId,
    /// The state it entered.
    pub status: RunStatus,
    /// The state it left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<RunStatus>,
    /// The attempt at the time.
    pub attempt: Attempt,
    /// When.
    pub at: Timestamp,
    /// The record after the change.
    pub run: &'a RunRecord,
}

/// A `v1.registry.events.<workerID>` payload: a worker changed status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkerEvent {
    /// The worker.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// The status it entered.
    pub status: WorkerStatus,
    /// The status it left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<WorkerStatus>,
    /// When.
    pub at: Timestamp,
    /// The record after the change.
    pub worker: WorkerRecord,
}

/// A stored, enriched log line: `v1.logs.query` returns these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    /// Position in `DROVER_LOGS`; strictly increasing.
    pub seq: u64,
    /// The worker that wrote it.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// The run it is about.
    #[serde(rename = "runID", default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// The run's routine.
    #[serde(rename = "routineID", default, skip_serializing_if = "Option::is_none")]
    pub routine_id: Option<RoutineId>,
    /// The run's attempt when the line arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
    /// The run's trace-id.
    #[serde(rename = "traceID", default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// Structured fields.
    #[serde(default)]
    pub fields: serde_json::Map<String, Value>,
    /// When the worker wrote it (the arrival time when it did not say).
    pub timestamp: Timestamp,
    /// When the collector received it.
    pub received_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(phase: WorkerPhase, unresponsive: bool, runs: &[bool]) -> WorkerRecord {
        let now = Timestamp::now();
        WorkerRecord {
            worker_id: WorkerId::parse("w").unwrap(),
            incarnation: 1,
            status: WorkerStatus::Initializing,
            reported_status: None,
            phase,
            unresponsive,
            routines: vec![],
            labels: Labels::new(),
            capacity: 4,
            runs: runs
                .iter()
                .map(|&waiting| HeldRun {
                    run_id: RunId::generate(),
                    attempt: 1,
                    waiting,
                    waiting_version: 0,
                    since: now,
                    traceparent: None,
                })
                .collect(),
            name: None,
            sdk: None,
            host: None,
            pid: None,
            heartbeat_interval_ms: 5000,
            lost_after_ms: 15000,
            registered_at: now,
            status_changed_at: now,
            ready_at: None,
            terminating_reason: None,
        }
    }

    #[test]
    fn status_derivation() {
        use WorkerPhase::*;
        use WorkerStatus as S;
        assert_eq!(
            worker(Initializing, false, &[]).derive_status(),
            S::Initializing
        );
        assert_eq!(worker(Ready, false, &[]).derive_status(), S::Idle);
        assert_eq!(
            worker(Ready, false, &[false, true]).derive_status(),
            S::Working
        );
        assert_eq!(
            worker(Ready, false, &[true, true]).derive_status(),
            S::Hanging
        );
        assert_eq!(
            worker(Ready, true, &[false]).derive_status(),
            S::Unresponsive
        );
        assert_eq!(
            worker(Terminating, false, &[false]).derive_status(),
            S::Terminating
        );
        assert_eq!(
            worker(Terminating, true, &[]).derive_status(),
            S::Unresponsive
        );
        assert_eq!(worker(Lost, true, &[]).derive_status(), S::Lost);
        assert_eq!(worker(Offline, false, &[]).derive_status(), S::Offline);
    }
}
