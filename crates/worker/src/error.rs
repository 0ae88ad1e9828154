//! The three error types: what stops a worker, what a routine reports, and how a child
//! run can end badly.

use std::any::Any;
use std::fmt;

use drover_protocol::{ErrorPayload, FailureReason, InvalidId, RunError, RunId, RunStatus};

/// Why [`WorkerBuilder::run`](crate::WorkerBuilder::run) could not start or keep going.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The workerID breaks the identifier rules.
    #[error("invalid worker ID{}: {source}", variable_text(.variable))]
    InvalidWorkerId {
        /// The rule it broke.
        #[source]
        source: InvalidId,
        /// The environment variable it came from (`DROVER_WORKER_ID`), if not from the code.
        variable: Option<&'static str>,
    },
    /// A routineID breaks the identifier rules.
    #[error("invalid routine ID: {0}")]
    InvalidRoutineId(#[source] InvalidId),
    /// The same routine was added twice.
    #[error("routine {0} is added twice")]
    DuplicateRoutine(String),
    /// A capacity of 0 would never take work.
    #[error("capacity must be at least 1")]
    ZeroCapacity,
    /// A NATS credential or TLS setting cannot be used (unreadable file, malformed seed).
    #[error("invalid NATS credentials: {0}")]
    Auth(#[from] drover_nats_connect::AuthError),
    /// The first connection to NATS failed.
    #[error("could not connect to NATS at {url}: {source}")]
    Connect {
        /// The URL that was tried.
        url: String,
        /// Why it failed.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The worker's inbox could not be subscribed.
    #[error("could not subscribe to the worker inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The registry refused the registration for a reason that retrying cannot fix.
    #[error("registration refused: {0}")]
    Registration(ErrorPayload),
    /// NATS refused, before the worker was registered, a publish or subscription a worker
    /// needs: the credential in use is not this workerID's (docs/security.md, "Roles").
    #[error("NATS refused worker {worker_id}: {error}; is the credential in use this workerID's?")]
    Refused {
        /// The workerID the worker runs as.
        worker_id: String,
        /// What NATS said.
        error: String,
    },
}

fn variable_text(variable: &Option<&'static str>) -> String {
    variable
        .map(|variable| format!(" (from {variable})"))
        .unwrap_or_default()
}

/// How a routine reports a failed attempt: a message, a type, and whether to retry.
///
/// Any `std::error::Error` converts into it with `?` (its type name becomes the type), the
/// way `anyhow::Error` works; for that reason `RoutineError` itself does not implement
/// `std::error::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutineError {
    message: String,
    kind: String,
    retryable: bool,
}

/// The type given to errors built with [`RoutineError::new`] and [`RoutineError::fatal`].
pub const DEFAULT_ERROR_TYPE: &str = "Error";

impl RoutineError {
    /// A failure that may be retried (while the run has retries left).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: DEFAULT_ERROR_TYPE.to_owned(),
            retryable: true,
        }
    }

    /// A failure that must not be retried (`retryable: false`).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(message).with_retryable(false)
    }

    /// Sets the machine-readable type, e.g. `CorruptImage`.
    pub fn with_type(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Sets whether the run may be retried after this failure.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The machine-readable type.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Whether the run may be retried after this failure.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The `error` object of a `v1.routine.completed`.
    pub(crate) fn to_wire(&self) -> RunError {
        RunError {
            message: self.message.clone(),
            kind: Some(self.kind.clone()),
            retryable: Some(self.retryable),
        }
    }
}

impl fmt::Display for RoutineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl<E> From<E> for RoutineError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        if let Some(child) = (&error as &dyn Any).downcast_ref::<ChildError>() {
            return child.to_routine_error();
        }
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::new(message).with_type(std::any::type_name::<E>())
    }
}

/// Why [`Context::run_child`](crate::Context::run_child) returned no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChildError {
    /// The child run ended without succeeding: failed, or cancelled.
    #[error("child run {run_id} ended {}{}", status_text(.status), error_text(.error))]
    Failed {
        /// The child run.
        run_id: RunId,
        /// Its final status (`FAILED` or `CANCELLED`).
        status: Option<RunStatus>,
        /// Why it failed, as Drover records it.
        failure_reason: Option<FailureReason>,
        /// The error its routine reported, if it reported one.
        error: Option<RunError>,
    },
    /// Drover refused the child request (for example `parent_not_running`).
    #[error("child request refused: {0}")]
    Refused(ErrorPayload),
    /// The request itself is malformed (a bad routineID or localRunID, unserialisable params).
    #[error("invalid child request: {0}")]
    Invalid(String),
    /// The parent attempt was cancelled while it waited.
    #[error("the parent attempt was cancelled while waiting for its child")]
    Cancelled,
}

fn status_text(status: &Option<RunStatus>) -> String {
    status.map_or_else(|| "badly".to_owned(), |status| status.to_string())
}

fn error_text(error: &Option<RunError>) -> String {
    error
        .as_ref()
        .map(|error| format!(": {}", error.message))
        .unwrap_or_default()
}

/// The type a failed child becomes when a parent passes it on with `?`.
pub const CHILD_FAILED_TYPE: &str = "ChildFailed";

impl ChildError {
    /// The routine error a parent reports when it passes this on with `?`.
    ///
    /// A failed child is memoized: a retried parent would get the same failure again, so
    /// that one is not retryable. A refusal or cancellation may be.
    fn to_routine_error(&self) -> RoutineError {
        match self {
            ChildError::Failed { .. } => RoutineError::fatal(self.to_string()),
            ChildError::Invalid(_) => RoutineError::fatal(self.to_string()),
            ChildError::Refused(_) | ChildError::Cancelled => RoutineError::new(self.to_string()),
        }
        .with_type(CHILD_FAILED_TYPE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_error_converts_with_its_chain_and_type() {
        let error = std::io::Error::other("disk full");
        let converted = RoutineError::from(error);
        assert!(converted.is_retryable());
        assert_eq!(converted.message(), "disk full");
        assert!(converted.kind().contains("io"), "{}", converted.kind());
    }

    #[test]
    fn fatal_errors_stop_retries_on_the_wire() {
        let wire = RoutineError::fatal("corrupt")
            .with_type("CorruptImage")
            .to_wire();
        assert_eq!(wire.retryable, Some(false));
        assert_eq!(wire.kind.as_deref(), Some("CorruptImage"));
    }

    #[test]
    fn a_failed_child_is_not_retried_by_its_parent() {
        let child = ChildError::Failed {
            run_id: RunId::generate(),
            status: Some(RunStatus::Failed),
            failure_reason: Some(FailureReason::Error),
            error: Some(RunError::new("Boom", "it broke")),
        };
        let converted = RoutineError::from(child);
        assert!(!converted.is_retryable());
        assert_eq!(converted.kind(), CHILD_FAILED_TYPE);
        assert!(converted.message().contains("it broke"));
        assert!(RoutineError::from(ChildError::Cancelled).is_retryable());
    }
}
