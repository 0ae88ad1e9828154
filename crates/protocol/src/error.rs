//! The `v1.error` payload and its codes: the one place where error kinds meet the wire.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every `code` a `v1.error` can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not UTF-8 JSON.
    InvalidJson,
    /// The `payloadKey` is not the directive key of the subject.
    PayloadKeyMismatch,
    /// The envelope or payload breaks its schema; `details.violations` lists each one.
    SchemaViolation,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The subject is not a Drover directive subject, or its workerID token is invalid.
    InvalidSubject,
    /// The workerID in the payload differs from the one in the subject.
    WorkerIdMismatch,
    /// No worker with this workerID has ever registered.
    UnknownWorker,
    /// The worker was declared LOST or OFFLINE and must register again.
    NotRegistered,
    /// The directive carries an incarnation older than the worker's current one.
    StaleIncarnation,
    /// The directive is about an attempt that is no longer current.
    StaleAttempt,
    /// No run with this runID exists.
    UnknownRun,
    /// The routineID does not follow the routineID rules.
    InvalidRoutineId,
    /// `retryBackoff` is inconsistent (for example `maxMs` below `initialMs`).
    InvalidBackoff,
    /// A child request names a parentRunID that does not exist.
    UnknownParentRun,
    /// A child request names a parent that this worker is not running right now.
    ParentNotRunning,
    /// A list cursor that this service did not hand out.
    InvalidCursor,
    /// A pool request names a group the pool does not have.
    UnknownGroup,
    /// A pool scale request asks for a size outside the group's `min` and `max`.
    OutOfBounds,
    /// The payload satisfies its schema but asks for something impossible that the schema
    /// cannot rule out. (A scale request with both `target` and `delta` is a
    /// `schema_violation`: the schema's `oneOf` refuses it.)
    InvalidPayload,
    /// A service that this request needs is not reachable right now; retry later.
    Unavailable,
    /// An unexpected failure inside the service.
    Internal,
}

impl ErrorCode {
    /// The wire spelling, e.g. `stale_attempt`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::PayloadKeyMismatch => "payload_key_mismatch",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidSubject => "invalid_subject",
            ErrorCode::WorkerIdMismatch => "worker_id_mismatch",
            ErrorCode::UnknownWorker => "unknown_worker",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::StaleIncarnation => "stale_incarnation",
            ErrorCode::StaleAttempt => "stale_attempt",
            ErrorCode::UnknownRun => "unknown_run",
            ErrorCode::InvalidRoutineId => "invalid_routine_id",
            ErrorCode::InvalidBackoff => "invalid_backoff",
            ErrorCode::UnknownParentRun => "unknown_parent_run",
            ErrorCode::ParentNotRunning => "parent_not_running",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::UnknownGroup => "unknown_group",
            ErrorCode::OutOfBounds => "out_of_bounds",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for documentation and schema tests.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::InvalidJson,
        ErrorCode::PayloadKeyMismatch,
        ErrorCode::SchemaViolation,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidSubject,
        ErrorCode::WorkerIdMismatch,
        ErrorCode::UnknownWorker,
        ErrorCode::NotRegistered,
        ErrorCode::StaleIncarnation,
        ErrorCode::StaleAttempt,
        ErrorCode::UnknownRun,
        ErrorCode::InvalidRoutineId,
        ErrorCode::InvalidBackoff,
        ErrorCode::UnknownParentRun,
        ErrorCode::ParentNotRunning,
        ErrorCode::InvalidCursor,
        ErrorCode::UnknownGroup,
        ErrorCode::OutOfBounds,
        ErrorCode::InvalidPayload,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The status code for the NATS service error header (`Nats-Service-Error-Code`).
    pub fn service_status(self) -> u16 {
        match self {
            ErrorCode::UnknownWorker
            | ErrorCode::UnknownRun
            | ErrorCode::UnknownParentRun
            | ErrorCode::UnknownGroup => 404,
            ErrorCode::StaleIncarnation
            | ErrorCode::StaleAttempt
            | ErrorCode::NotRegistered
            | ErrorCode::ParentNotRunning => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One schema violation: where it is (a JSON pointer into the envelope) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer to the offending value, e.g. `/payload/routines/0`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
    /// The JSON Schema keyword that failed, e.g. `required` or `pattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
}

/// The `v1.error` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPayload {
    /// What kind of error this is.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// Structured context, such as `violations` or the current `attempt`.
    #[serde(default)]
    pub details: Value,
    /// The subject of the message that was rejected.
    pub in_reply_to: String,
}

impl ErrorPayload {
    /// An error about the message received on `in_reply_to`.
    pub fn new(
        code: ErrorCode,
        message: impl Into<String>,
        in_reply_to: impl Into<String>,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            details: Value::Object(Default::default()),
            in_reply_to: in_reply_to.into(),
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

impl fmt::Display for ErrorPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorPayload {}
