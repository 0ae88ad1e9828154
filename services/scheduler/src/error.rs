//! The scheduler's errors, and the one place where they become `v1.error` payloads.
//!
//! Inside, each part fails with its own enum: a run that does not exist, a spec that breaks
//! a rule, a store that does not answer. The edge (a request's reply, a directive's
//! settlement) turns it into the wire form with [`Error::to_wire`], naming the subject it
//! answers; nothing inside needs to know that subject.

use drover_protocol::envelope::DecodeError;
use drover_protocol::subject::SubjectError;
use drover_protocol::{ErrorCode, ErrorPayload, RunId, RunStatus, Violation, WorkerId};
use drover_service_kit::WireError;
use serde_json::{json, Value};

use crate::store::{BoxError, StoreError};
use crate::transitions::StaleAttempt;

/// A run spec breaks a rule that its schema cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `retryBackoff.maxMs` is below `retryBackoff.initialMs`.
    #[error("retryBackoff.maxMs ({max_ms}) is below retryBackoff.initialMs ({initial_ms})")]
    BackoffMaxBelowInitial {
        /// The first delay asked for.
        initial_ms: u64,
        /// The cap asked for.
        max_ms: u64,
    },
    /// `retryBackoff.multiplier` is below 1 or not a number.
    #[error("retryBackoff.multiplier must be a finite number of at least 1")]
    BackoffMultiplier,
    /// A client named a parent run: only the parent's worker may.
    #[error("schema violation: {}: {}", self.path(), self.rule())]
    ParentFromClient,
    /// A worker's request names no parent run.
    #[error("schema violation: {}: {}", self.path(), self.rule())]
    ParentMissing,
    /// A worker's request carries no `localRunID`.
    #[error("schema violation: {}: {}", self.path(), self.rule())]
    LocalRunIdMissing,
}

impl SpecError {
    /// The JSON pointer of the offending field.
    pub fn path(&self) -> &'static str {
        match self {
            Self::BackoffMaxBelowInitial { .. } => "/payload/retryBackoff/maxMs",
            Self::BackoffMultiplier => "/payload/retryBackoff/multiplier",
            Self::ParentFromClient | Self::ParentMissing => "/payload/parentRunID",
            Self::LocalRunIdMissing => "/payload/localRunID",
        }
    }

    fn rule(&self) -> &'static str {
        match self {
            Self::ParentFromClient => {
                "child runs are requested by the parent's worker on v1.routine.request_start.<workerID>"
            }
            Self::ParentMissing => "a worker's request must name the parentRunID it runs",
            Self::LocalRunIdMissing => "a worker's request must carry a localRunID",
            Self::BackoffMaxBelowInitial { .. } | Self::BackoffMultiplier => "",
        }
    }

    /// The schema violation this is, for the rules that read as one.
    fn violation(&self) -> Option<Violation> {
        let keyword = match self {
            Self::BackoffMaxBelowInitial { .. } | Self::BackoffMultiplier => return None,
            Self::ParentFromClient => None,
            Self::ParentMissing | Self::LocalRunIdMissing => Some("required".to_owned()),
        };
        Some(Violation {
            path: self.path().to_owned(),
            message: self.rule().to_owned(),
            keyword,
        })
    }
}

/// A run could not be stored and queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The spec breaks a rule.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// JetStream did not store it.
    #[error("the run could not be stored: {0}")]
    NotStored(#[source] BoxError),
}

/// `v1.run.cancel` failed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No run has this runID.
    #[error("no run {0}")]
    UnknownRun(RunId),
    /// The record could not be read or written.
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// A worker's request for a child run failed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The parent run does not exist.
    #[error("parent run {0} does not exist")]
    UnknownParent(RunId),
    /// The requesting worker does not hold the parent's current attempt.
    #[error("parent run {parent} is {status} and not running on worker {worker}")]
    ParentNotRunning {
        /// The parent run.
        parent: RunId,
        /// Its status.
        status: RunStatus,
        /// The worker that asked.
        worker: WorkerId,
        /// The worker the parent is on, if any.
        holder: Option<WorkerId>,
    },
    /// The parent's record could not be read.
    #[error(transparent)]
    Unavailable(StoreError),
    /// The child could not be stored.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// `v1.run.get` or `v1.run.list` failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No run has this runID.
    #[error("no run {0}")]
    UnknownRun(RunId),
    /// A cursor that `v1.run.list` did not hand out.
    #[error("cursor {0:?} was not handed out by v1.run.list")]
    InvalidCursor(String),
    /// The bucket could not be read.
    #[error("{0}")]
    Unavailable(#[source] BoxError),
}

/// A worker's `starting` or `completed` refused for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    /// No run has this runID.
    #[error("no run {0}")]
    UnknownRun(RunId),
    /// It is about an attempt that is not current.
    #[error(transparent)]
    Stale(#[from] StaleAttempt),
}

/// A request that could not be taken to where it is handled.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The leader stepped down while handling it.
    #[error("leadership changed")]
    LeadershipChanged,
    /// No leader answered in time.
    #[error("no scheduler leader is available; retry later")]
    NoLeader,
    /// The subject is not a directive subject.
    #[error(transparent)]
    InvalidSubject(#[from] SubjectError),
    /// A child request on a subject that names no worker.
    #[error("a child request must come on v1.routine.request_start.<workerID>")]
    NotFromWorker,
}

/// Every way the scheduler refuses a request or a directive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message is not a valid directive.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Intake refused or could not store a run.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A cancellation failed.
    #[error(transparent)]
    Cancel(#[from] CancelError),
    /// A child request failed.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A directive was refused.
    #[error(transparent)]
    Directive(#[from] DirectiveError),
    /// The request could not be routed.
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl From<SpecError> for Error {
    fn from(error: SpecError) -> Self {
        Self::Submit(error.into())
    }
}

impl Error {
    /// The `v1.error` code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Decode(error) => error.code(),
            Self::Submit(error) => submit_code(error),
            Self::Cancel(CancelError::UnknownRun(_)) => ErrorCode::UnknownRun,
            Self::Cancel(CancelError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Child(ChildError::UnknownParent(_)) => ErrorCode::UnknownParentRun,
            Self::Child(ChildError::ParentNotRunning { .. }) => ErrorCode::ParentNotRunning,
            Self::Child(ChildError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Child(ChildError::Submit(error)) => submit_code(error),
            Self::Query(QueryError::UnknownRun(_)) => ErrorCode::UnknownRun,
            Self::Query(QueryError::InvalidCursor(_)) => ErrorCode::InvalidCursor,
            Self::Query(QueryError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Directive(DirectiveError::UnknownRun(_)) => ErrorCode::UnknownRun,
            Self::Directive(DirectiveError::Stale(_)) => ErrorCode::StaleAttempt,
            Self::Route(RouteError::LeadershipChanged | RouteError::NoLeader) => {
                ErrorCode::Unavailable
            }
            Self::Route(RouteError::InvalidSubject(_) | RouteError::NotFromWorker) => {
                ErrorCode::InvalidSubject
            }
        }
    }

    /// The structured `details` of the `v1.error`.
    pub fn details(&self) -> Value {
        match self {
            Self::Decode(error) => error.to_error("").details,
            Self::Submit(SubmitError::Spec(error))
            | Self::Child(ChildError::Submit(SubmitError::Spec(error))) => spec_details(error),
            Self::Child(ChildError::ParentNotRunning { status, holder, .. }) => {
                json!({"status": status, "workerID": holder})
            }
            Self::Directive(DirectiveError::Stale(stale)) => json!({
                "runID": stale.run,
                "attempt": stale.attempt,
                "currentAttempt": stale.current_attempt,
                "status": stale.status,
            }),
            _ => Value::Object(Default::default()),
        }
    }
}

impl WireError for Error {
    /// The `v1.error` answering the message received on `in_reply_to`.
    fn to_wire(&self, in_reply_to: &str) -> ErrorPayload {
        if let Self::Decode(error) = self {
            return error.to_error(in_reply_to);
        }
        ErrorPayload::new(self.code(), self.to_string(), in_reply_to).with_details(self.details())
    }
}

fn submit_code(error: &SubmitError) -> ErrorCode {
    match error {
        SubmitError::Spec(
            SpecError::BackoffMaxBelowInitial { .. } | SpecError::BackoffMultiplier,
        ) => ErrorCode::InvalidBackoff,
        SubmitError::Spec(_) => ErrorCode::SchemaViolation,
        SubmitError::NotStored(_) => ErrorCode::Unavailable,
    }
}

fn spec_details(error: &SpecError) -> Value {
    match error.violation() {
        Some(violation) => json!({ "violations": [violation] }),
        None => json!({ "path": error.path() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "v1.routine.request_start.w1";

    fn run() -> RunId {
        RunId::parse("0190a0b0-0000-7000-8000-000000000001").unwrap()
    }

    #[test]
    fn backoff_rules_answer_invalid_backoff_with_the_field() {
        let wire = Error::from(SpecError::BackoffMaxBelowInitial {
            initial_ms: 500,
            max_ms: 100,
        })
        .to_wire(SUBJECT);
        assert_eq!(wire.code, ErrorCode::InvalidBackoff);
        assert_eq!(
            wire.message,
            "retryBackoff.maxMs (100) is below retryBackoff.initialMs (500)"
        );
        assert_eq!(wire.details, json!({"path": "/payload/retryBackoff/maxMs"}));
        assert_eq!(wire.in_reply_to, SUBJECT);
        let multiplier = Error::from(SpecError::BackoffMultiplier).to_wire(SUBJECT);
        assert_eq!(multiplier.code, ErrorCode::InvalidBackoff);
        assert_eq!(
            multiplier.details,
            json!({"path": "/payload/retryBackoff/multiplier"})
        );
    }

    #[test]
    fn origin_rules_read_as_schema_violations() {
        let wire = Error::from(SpecError::LocalRunIdMissing).to_wire(SUBJECT);
        assert_eq!(wire.code, ErrorCode::SchemaViolation);
        assert_eq!(
            wire.message,
            "schema violation: /payload/localRunID: a worker's request must carry a localRunID"
        );
        assert_eq!(
            wire.details,
            json!({"violations": [{
                "path": "/payload/localRunID",
                "message": "a worker's request must carry a localRunID",
                "keyword": "required",
            }]})
        );
        let client = Error::from(SpecError::ParentFromClient).to_wire("v1.routine.request_start");
        assert_eq!(
            client.details["violations"][0].get("keyword"),
            None,
            "no keyword for a rule the schema does not have"
        );
    }

    #[test]
    fn unknown_runs_answer_unknown_run() {
        for error in [
            Error::from(CancelError::UnknownRun(run())),
            Error::from(QueryError::UnknownRun(run())),
            Error::from(DirectiveError::UnknownRun(run())),
        ] {
            let wire = error.to_wire("v1.run.cancel");
            assert_eq!(wire.code, ErrorCode::UnknownRun);
            assert_eq!(wire.message, format!("no run {}", run()));
            assert_eq!(wire.in_reply_to, "v1.run.cancel");
        }
    }

    #[test]
    fn a_parent_not_running_here_says_where_it_is() {
        let error = Error::from(ChildError::ParentNotRunning {
            parent: run(),
            status: RunStatus::Pending,
            worker: WorkerId::parse("w1").unwrap(),
            holder: None,
        });
        let wire = error.to_wire(SUBJECT);
        assert_eq!(wire.code, ErrorCode::ParentNotRunning);
        assert_eq!(
            wire.message,
            format!(
                "parent run {} is PENDING and not running on worker w1",
                run()
            )
        );
        assert_eq!(wire.details, json!({"status": "PENDING", "workerID": null}));
        let unknown = Error::from(ChildError::UnknownParent(run())).to_wire(SUBJECT);
        assert_eq!(unknown.code, ErrorCode::UnknownParentRun);
        assert_eq!(
            unknown.message,
            format!("parent run {} does not exist", run())
        );
    }

    #[test]
    fn a_child_spec_error_keeps_its_own_code() {
        let error = Error::from(ChildError::Submit(SpecError::ParentMissing.into()));
        assert_eq!(error.code(), ErrorCode::SchemaViolation);
        assert_eq!(
            error.details()["violations"][0]["path"],
            "/payload/parentRunID"
        );
    }

    #[test]
    fn stale_attempts_carry_the_current_attempt() {
        let stale = StaleAttempt {
            run: run(),
            attempt: 1,
            current_attempt: 2,
            status: RunStatus::Running,
            why: crate::transitions::Staleness::OtherAttempt(2),
        };
        let wire = Error::from(DirectiveError::from(stale)).to_wire("v1.routine.completed.w1");
        assert_eq!(wire.code, ErrorCode::StaleAttempt);
        assert_eq!(
            wire.message,
            format!(
                "attempt 1 of run {} is not current: the current attempt is 2",
                run()
            )
        );
        assert_eq!(
            wire.details,
            json!({"runID": run(), "attempt": 1, "currentAttempt": 2, "status": "RUNNING"})
        );
    }

    #[test]
    fn store_failures_answer_unavailable_with_their_text() {
        let store = || StoreError::unavailable("timed out");
        let submit = Error::from(SubmitError::NotStored(store().into()));
        assert_eq!(submit.code(), ErrorCode::Unavailable);
        assert_eq!(
            submit.to_string(),
            "the run could not be stored: run store unavailable: timed out"
        );
        let cancel = Error::from(CancelError::from(store()));
        assert_eq!(cancel.code(), ErrorCode::Unavailable);
        assert_eq!(cancel.to_string(), "run store unavailable: timed out");
        let child = Error::from(ChildError::Unavailable(store()));
        assert_eq!(child.code(), ErrorCode::Unavailable);
        let query = Error::from(QueryError::Unavailable(store().into()));
        assert_eq!(query.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn routing_failures() {
        let leader = Error::from(RouteError::LeadershipChanged).to_wire("v1.run.cancel");
        assert_eq!(leader.code, ErrorCode::Unavailable);
        assert_eq!(leader.message, "leadership changed");
        let none = Error::from(RouteError::NoLeader);
        assert_eq!(none.code(), ErrorCode::Unavailable);
        assert_eq!(
            none.to_string(),
            "no scheduler leader is available; retry later"
        );
        assert_eq!(
            Error::from(RouteError::NotFromWorker).code(),
            ErrorCode::InvalidSubject
        );
    }

    #[test]
    fn decode_errors_keep_the_protocol_mapping() {
        let decode = DecodeError::InvalidJson("eof".to_owned());
        let wire = Error::from(decode.clone()).to_wire("v1.run.get");
        assert_eq!(wire, decode.to_error("v1.run.get"));
        assert_eq!(wire.code, ErrorCode::InvalidJson);
    }
}
