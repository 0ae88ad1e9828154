//! Service-to-service messages on `drover.internal.*` subjects. Not part of the worker
//! protocol and free to change between releases.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{Attempt, Incarnation, RunId, WorkerId};
use crate::payload::worker::WorkerStatus;

/// Scheduler to registry: worker `worker_id` now holds `run_id` at `attempt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// The worker.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// The incarnation the scheduler placed the run on.
    pub incarnation: Incarnation,
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt.
    pub attempt: Attempt,
    /// The W3C `traceparent` of the attempt's span, kept in the worker's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Scheduler to registry: worker `worker_id` no longer holds `run_id` at `attempt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// The worker.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt; a release of another attempt changes nothing.
    pub attempt: Attempt,
}

/// Scheduler to registry: whether a held run waits on its children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// The worker.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt.
    pub attempt: Attempt,
    /// True while it waits.
    pub waiting: bool,
    /// Reports with a version below the last one applied are ignored.
    pub version: u64,
}

/// One change to the runs a worker holds, as the scheduler leader decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Holding {
    /// The worker now holds the run. Unlike a [`Claim`], capacity is not checked: the
    /// leader placed the run from its own view of the worker's slots.
    Hold(Claim),
    /// The worker no longer holds the run.
    Release(Release),
    /// A held run starts or stops waiting on its children.
    Waiting(Waiting),
}

impl Holding {
    /// The worker the change is about.
    pub fn worker_id(&self) -> &WorkerId {
        match self {
            Holding::Hold(claim) => &claim.worker_id,
            Holding::Release(release) => &release.worker_id,
            Holding::Waiting(waiting) => &waiting.worker_id,
        }
    }

    /// The run the change is about.
    pub fn run_id(&self) -> &RunId {
        match self {
            Holding::Hold(claim) => &claim.run_id,
            Holding::Release(release) => &release.run_id,
            Holding::Waiting(waiting) => &waiting.run_id,
        }
    }
}

/// Scheduler to registry: changes to the runs workers hold, in the order they happened,
/// sent in batches off the runs' critical path. The registry applies each worker's share in
/// one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holdings {
    /// The changes, oldest first.
    pub changes: Vec<Holding>,
}

/// What the heartbeat-monitor concluded about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Pulses resumed after the worker was unresponsive.
    Alive,
    /// It missed its heartbeats and did not answer a probe.
    Unresponsive,
    /// Silent past `lostAfterMs`.
    Lost,
    /// A terminating worker went quiet.
    Offline,
}

/// Heartbeat-monitor to registry: a liveness conclusion, and what the worker reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LivenessReport {
    /// The worker.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// The incarnation the conclusion is about; ignored if no longer current.
    pub incarnation: Incarnation,
    /// The conclusion, or none when only the reported status changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Liveness>,
    /// The status the worker last reported in a pulse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_status: Option<WorkerStatus>,
}

/// The reply to every internal request: success, or an error code with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalReply {
    /// True when the request was applied (or was already in effect).
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Explanation, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl InternalReply {
    /// Success.
    pub fn ok() -> Self {
        Self {
            ok: true,
            code: None,
            message: None,
        }
    }

    /// Failure with a code and explanation.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            code: Some(code),
            message: Some(message.into()),
        }
    }
}
