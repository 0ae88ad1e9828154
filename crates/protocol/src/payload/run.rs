//! Payloads about runs (DESIGN §4, §6).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{Attempt, LocalRunId, RoutineId, RunId, WorkerId};
use crate::payload::worker::Labels;

/// Which workers a run may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Conditions {
    /// When not empty, only these workers may run it.
    #[serde(rename = "workerIDs", default, skip_serializing_if = "Vec::is_empty")]
    pub worker_ids: Vec<WorkerId>,
    /// The worker must carry every one of these labels with the same value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

impl Conditions {
    /// True when there are no conditions at all.
    pub fn is_empty(&self) -> bool {
        self.worker_ids.is_empty() && self.labels.is_empty()
    }
}

/// How long to wait before each retry: `min(initialMs * multiplier^(n-1), maxMs)` before retry `n`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RetryBackoff {
    /// Delay before the first retry.
    pub initial_ms: u64,
    /// Growth factor between retries (at least 1).
    pub multiplier: f64,
    /// Upper bound on any delay.
    pub max_ms: u64,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 60_000,
        }
    }
}

impl RetryBackoff {
    /// The delay before retry number `retry` (1-based), in milliseconds.
    pub fn delay_ms(&self, retry: u32) -> u64 {
        let exponent = retry.saturating_sub(1).min(1_000) as i32;
        let raw = self.initial_ms as f64 * self.multiplier.powi(exponent);
        if raw.is_finite() {
            (raw as u64).min(self.max_ms)
        } else {
            self.max_ms
        }
    }
}

/// A run spec (DESIGN §6.1): the payload of `v1.routine.request_start` from a client or a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    /// The routine to run.
    #[serde(rename = "routineID")]
    pub routine_id: RoutineId,
    /// Parameters handed to the routine.
    #[serde(default)]
    pub params: Value,
    /// Environment handed to the routine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Which workers may run it.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// Fail with `max_wait_exceeded` if not placed within this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_time_ms: Option<u64>,
    /// Bound on one attempt; the worker is sent a cancel when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_exec_time_ms: Option<u64>,
    /// How many times a failed attempt is retried.
    #[serde(default)]
    pub max_retries: u32,
    /// Delays between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<RetryBackoff>,
    /// Requests with the same key get the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The caller's own correlation ID, echoed back.
    #[serde(
        rename = "localRunID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_run_id: Option<LocalRunId>,
    /// For a child run: the run that requested it.
    #[serde(
        rename = "parentRunID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_run_id: Option<RunId>,
}

impl RunSpec {
    /// A spec with defaults for everything but the routine.
    pub fn new(routine_id: RoutineId) -> Self {
        Self {
            routine_id,
            params: Value::Null,
            env: BTreeMap::new(),
            conditions: Conditions::default(),
            max_wait_time_ms: None,
            max_exec_time_ms: None,
            max_retries: 0,
            retry_backoff: None,
            idempotency_key: None,
            local_run_id: None,
            parent_run_id: None,
        }
    }
}

/// `v1.routine.accepted`: the run is stored and has this runID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The run's ID.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// Echoes the request's localRunID.
    #[serde(
        rename = "localRunID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_run_id: Option<LocalRunId>,
}

/// `v1.routine.starting` from a worker: it started an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Starting {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt from the assignment.
    pub attempt: Attempt,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The routine succeeded.
    Succeeded,
    /// The routine failed.
    Failed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        })
    }
}

/// Why an attempt failed, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunError {
    /// A human-readable explanation.
    pub message: String,
    /// A machine-readable kind, e.g. the exception class.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `false` stops retries; anything else allows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

impl RunError {
    /// An error with a message and a type.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: Some(kind.into()),
            retryable: None,
        }
    }
}

/// `v1.routine.completed` from a worker: an attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Completed {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt from the assignment.
    pub attempt: Attempt,
    /// How it ended.
    pub outcome: Outcome,
    /// The routine's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

/// `v1.routine.request_start` into a worker's inbox: run this attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt; echo it in starting and completed.
    pub attempt: Attempt,
    /// The routine to run.
    #[serde(rename = "routineID")]
    pub routine_id: RoutineId,
    /// Parameters from the run spec.
    #[serde(default)]
    pub params: Value,
    /// Environment from the run spec.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bound on this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_exec_time_ms: Option<u64>,
    /// The parent, for a child run.
    #[serde(
        rename = "parentRunID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_run_id: Option<RunId>,
}

/// `v1.routine.starting` into a worker's inbox: a child it requested has started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ChildStarting {
    /// The child run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The localRunID of the request.
    #[serde(rename = "localRunID")]
    pub local_run_id: LocalRunId,
    /// The child's routine.
    #[serde(rename = "routineID")]
    pub routine_id: RoutineId,
    /// The worker running it.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
}

/// `v1.routine.completed` into a worker's inbox: a child it requested has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ChildCompleted {
    /// The child run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The localRunID of the request.
    #[serde(rename = "localRunID")]
    pub local_run_id: LocalRunId,
    /// `succeeded`, or `failed` for every other end (including cancellation).
    pub outcome: Outcome,
    /// The child's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why the child failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// The child's final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::payload::record::RunStatus>,
    /// Why the child failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<crate::payload::record::FailureReason>,
}

/// `v1.routine.cancel` into a worker's inbox: stop working on this attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Cancel {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt to stop.
    pub attempt: Attempt,
    /// Why, e.g. `cancelled` or `max_exec_exceeded`.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let backoff = RetryBackoff {
            initial_ms: 100,
            multiplier: 2.0,
            max_ms: 500,
        };
        assert_eq!(backoff.delay_ms(1), 100);
        assert_eq!(backoff.delay_ms(2), 200);
        assert_eq!(backoff.delay_ms(3), 400);
        assert_eq!(backoff.delay_ms(4), 500);
        assert_eq!(backoff.delay_ms(u32::MAX), 500);
    }
}
