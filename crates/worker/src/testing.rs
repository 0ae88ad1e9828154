//! Running a routine handler in a unit test, without NATS or Drover:
//! [`RoutineEnvironment`], in the manner of Temporal's `ActivityEnvironment`.
//!
//! The handler gets a real [`Context`], the same type it gets on a worker, and the
//! environment reports what the worker would: the `completed` outcome (after the same
//! conversions: typed parameters and results, panics, the payload limit), the log lines
//! sent with [`Context::log`], and the child runs requested. Child requests are answered
//! by the test, and the test can cancel the attempt.
//!
//! ```
//! use drover_worker::testing::{AttemptOutcome, RoutineEnvironment};
//! use drover_worker::{Context, LogLevel, RoutineError};
//! use serde_json::{json, Value};
//!
//! async fn resize(ctx: Context, params: Value) -> Result<Value, RoutineError> {
//!     ctx.log(LogLevel::Info, "resizing");
//!     let thumb = ctx.run_child("images.thumbnail", params.clone(), "thumb-1").await?;
//!     Ok(json!({"width": params["width"], "thumb": thumb}))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let report = RoutineEnvironment::new()
//!     .routine_id("images.resize")
//!     .params(json!({"width": 640}))
//!     .answer_child("images.thumbnail", Ok(json!("thumb.png")))
//!     .run(resize)
//!     .await;
//! assert_eq!(
//!     report.outcome,
//!     AttemptOutcome::Succeeded(json!({"width": 640, "thumb": "thumb.png"}))
//! );
//! assert_eq!(report.logs[0].message, "resizing");
//! assert_eq!(report.children[0].local_id, "thumb-1");
//! # }
//! ```
//!
//! `run` needs a Tokio runtime (`#[tokio::test]`): the handler runs on a task of its own,
//! as on a worker. `tracing` events inside the handler are captured as log lines too when
//! the test's subscriber has a [`LogLayer`](crate::LogLayer).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_protocol::{
    Assignment, Attempt, FailureReason, LogLevel, Outcome, RoutineId, RunError, RunId, RunSpec,
    RunStatus, WorkerId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attempt::{completion, run_handler};
use crate::context::{Backend, Context};
use crate::error::{ChildError, RoutineError};
use crate::execution::Execution;
use crate::handler::{self, Handler};
use crate::log::{LogSink, Queued};
use crate::state::{lock, Slot};

/// The workerID a [`RoutineEnvironment`] reports unless told otherwise.
pub const TEST_WORKER_ID: &str = "test-worker";

/// The routineID a [`RoutineEnvironment`] runs unless told otherwise.
pub const TEST_ROUTINE_ID: &str = "test.routine";

type AnswerFuture = Pin<Box<dyn Future<Output = Result<Value, ChildError>> + Send>>;
type Answerer = Arc<dyn Fn(ChildCall) -> AnswerFuture + Send + Sync>;

/// One attempt of a routine, run in-process: describe it, then [`run`](Self::run) a handler.
///
/// Defaults: routine [`TEST_ROUTINE_ID`] on worker [`TEST_WORKER_ID`], a fresh runID,
/// attempt 1, `null` parameters, no environment, no parent, no time bound. A child request
/// that nobody answers panics in the handler (the attempt fails with type
/// [`PANIC_TYPE`](crate::PANIC_TYPE)), so that a missing answer cannot pass unnoticed.
#[must_use = "an environment does nothing until `run` is awaited"]
pub struct RoutineEnvironment {
    worker_id: WorkerId,
    assignment: Assignment,
    answers: HashMap<String, Result<Value, ChildError>>,
    answerer: Option<Answerer>,
    slot: Slot,
}

impl Default for RoutineEnvironment {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutineEnvironment {
    /// An environment with the defaults above.
    pub fn new() -> Self {
        Self {
            worker_id: parse(WorkerId::parse(TEST_WORKER_ID)),
            assignment: Assignment {
                run_id: RunId::generate(),
                attempt: 1,
                routine_id: parse(RoutineId::parse(TEST_ROUTINE_ID)),
                params: Value::Null,
                env: BTreeMap::new(),
                max_exec_time_ms: None,
                parent_run_id: None,
            },
            answers: HashMap::new(),
            answerer: None,
            slot: Slot::detached(),
        }
    }

    /// The routine being run ([`Context::routine_id`]).
    ///
    /// # Panics
    /// If `routine_id` is not a valid routineID.
    pub fn routine_id(mut self, routine_id: impl Into<String>) -> Self {
        self.assignment.routine_id = parse(RoutineId::parse(routine_id));
        self
    }

    /// The run's parameters, as the handler receives them.
    ///
    /// # Panics
    /// If `params` does not serialise to JSON.
    pub fn params(mut self, params: impl Serialize) -> Self {
        self.assignment.params = match serde_json::to_value(params) {
            Ok(params) => params,
            Err(error) => panic!("the test's params do not serialise to JSON: {error}"),
        };
        self
    }

    /// Adds an environment variable of the run ([`Context::env`]).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.assignment.env.insert(key.into(), value.into());
        self
    }

    /// The attempt number ([`Context::attempt`]), 1 by default.
    pub fn attempt(mut self, attempt: Attempt) -> Self {
        self.assignment.attempt = attempt;
        self
    }

    /// The runID ([`Context::run_id`]) instead of a fresh one.
    ///
    /// # Panics
    /// If `run_id` is not a valid runID.
    pub fn run_id(mut self, run_id: impl Into<String>) -> Self {
        self.assignment.run_id = parse(RunId::parse(run_id));
        self
    }

    /// Makes the run a child of `parent` ([`Context::parent_run_id`]).
    ///
    /// # Panics
    /// If `parent` is not a valid runID.
    pub fn parent_run_id(mut self, parent: impl Into<String>) -> Self {
        self.assignment.parent_run_id = Some(parse(RunId::parse(parent)));
        self
    }

    /// The attempt's `maxExecTimeMs` ([`Context::max_exec_time_ms`]). Nothing enforces it
    /// here: cancel through [`canceller`](Self::canceller) to play Drover's part.
    pub fn max_exec_time(mut self, limit: Duration) -> Self {
        self.assignment.max_exec_time_ms =
            Some(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The worker the attempt runs on ([`Context::worker_id`]).
    ///
    /// # Panics
    /// If `worker_id` is not a valid workerID.
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = parse(WorkerId::parse(worker_id));
        self
    }

    /// Answers every child request for `routine` with `answer`: a result, or an error such
    /// as [`failed_child`] or [`ChildError::Cancelled`]. Takes precedence over
    /// [`on_child`](Self::on_child).
    pub fn answer_child(
        mut self,
        routine: impl Into<String>,
        answer: Result<Value, ChildError>,
    ) -> Self {
        self.answers.insert(routine.into(), answer);
        self
    }

    /// Answers child requests that [`answer_child`](Self::answer_child) does not cover.
    ///
    /// The answer may take its time: the handler waits for it, unless the attempt is
    /// cancelled meanwhile, when the child request ends with [`ChildError::Cancelled`].
    pub fn on_child<F, Fut>(mut self, answer: F) -> Self
    where
        F: Fn(ChildCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ChildError>> + Send + 'static,
    {
        self.answerer = Some(Arc::new(move |call| Box::pin(answer(call))));
        self
    }

    /// The runID the handler will see.
    pub fn current_run_id(&self) -> &RunId {
        &self.assignment.run_id
    }

    /// A handle that cancels the attempt, as Drover would (on request, on `maxExecTimeMs`,
    /// with its parent). Take it before `run`.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            slot: self.slot.clone(),
        }
    }

    /// Runs a handler that takes and returns JSON, as
    /// [`WorkerBuilder::routine`](crate::WorkerBuilder::routine) would.
    pub async fn run<F, Fut>(self, handler: F) -> AttemptReport
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RoutineError>> + Send + 'static,
    {
        self.execute(handler::plain(handler)).await
    }

    /// Runs a handler with typed parameters and result, as
    /// [`WorkerBuilder::routine_typed`](crate::WorkerBuilder::routine_typed) would.
    pub async fn run_typed<P, O, F, Fut>(self, handler: F) -> AttemptReport
    where
        P: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Context, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, RoutineError>> + Send + 'static,
    {
        self.execute(handler::typed(handler)).await
    }

    async fn execute(self, handler: Handler) -> AttemptReport {
        let (logs, mut lines) = LogSink::channel();
        let harness = Arc::new(Harness {
            worker_id: self.worker_id,
            logs,
            answers: self.answers,
            answerer: self.answerer,
            calls: Mutex::new(Vec::new()),
        });
        let (span, execution) =
            Execution::start(&harness.worker_id, &self.assignment, &harness.logs, None);
        let execution = Arc::new(execution);
        let ctx = Context::new(
            Backend::Test(Arc::clone(&harness)),
            self.assignment.clone(),
            self.slot.clone(),
            Arc::clone(&execution),
        );
        let result = run_handler(&handler, ctx, self.assignment.params.clone())
            .instrument(span)
            .await;
        execution.end();
        let outcome = if self.slot.token.is_cancelled() {
            AttemptOutcome::Cancelled {
                reason: lock(&self.slot.reason).clone().unwrap_or_default(),
            }
        } else {
            AttemptOutcome::reported(&self.assignment, result)
        };
        let mut captured = Vec::new();
        while let Ok(Queued { line, .. }) = lines.try_recv() {
            captured.push(LogEntry {
                level: line.level,
                message: line.message,
                fields: line.fields.unwrap_or_default(),
            });
        }
        let children = lock(&harness.calls).clone();
        AttemptReport {
            outcome,
            logs: captured,
            children,
        }
    }
}

impl fmt::Debug for RoutineEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutineEnvironment")
            .field("worker_id", &self.worker_id)
            .field("assignment", &self.assignment)
            .field(
                "answered_routines",
                &self.answers.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn parse<T>(id: Result<T, drover_protocol::InvalidId>) -> T {
    id.unwrap_or_else(|error| panic!("RoutineEnvironment: {error}"))
}

/// Cancels the attempt of a [`RoutineEnvironment`]: the handler's cancellation token fires.
#[derive(Clone)]
pub struct Canceller {
    slot: Slot,
}

impl Canceller {
    /// Cancels the attempt with this reason ([`Context::cancel_reason`]); the first reason
    /// given stays.
    pub fn cancel(&self, reason: impl AsRef<str>) {
        self.slot.cancel(reason.as_ref());
    }

    /// The attempt's cancellation token, e.g. to wait until the handler is cancelled.
    pub fn token(&self) -> CancellationToken {
        self.slot.token.clone()
    }
}

impl fmt::Debug for Canceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceller")
            .field("cancelled", &self.slot.token.is_cancelled())
            .finish()
    }
}

/// What a [`RoutineEnvironment`] saw of one attempt.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AttemptReport {
    /// What the worker would report.
    pub outcome: AttemptOutcome,
    /// Lines sent with [`Context::log`] (and `tracing` events, with a [`LogLayer`](crate::LogLayer)), in order.
    pub logs: Vec<LogEntry>,
    /// Child runs requested, in request order.
    pub children: Vec<ChildCall>,
}

/// How an attempt ended, as the worker reports it in `v1.routine.completed`.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// `SUCCEEDED` with this result.
    Succeeded(Value),
    /// `FAILED` with this error: its message, type and retryability.
    Failed(RunError),
    /// The attempt was cancelled, so the worker reports no outcome at all.
    Cancelled {
        /// Why, as given to [`Canceller::cancel`].
        reason: String,
    },
}

impl AttemptOutcome {
    fn reported(assignment: &Assignment, result: Result<Value, RoutineError>) -> Self {
        let completed = completion(assignment, result);
        match completed.outcome {
            Outcome::Succeeded => Self::Succeeded(completed.result.unwrap_or(Value::Null)),
            Outcome::Failed => Self::Failed(
                completed
                    .error
                    .unwrap_or_else(|| RunError::new("Error", "failed without an error")),
            ),
        }
    }

    /// The result, if the attempt succeeded.
    pub fn result(&self) -> Option<&Value> {
        match self {
            Self::Succeeded(result) => Some(result),
            _ => None,
        }
    }

    /// The error, if the attempt failed.
    pub fn error(&self) -> Option<&RunError> {
        match self {
            Self::Failed(error) => Some(error),
            _ => None,
        }
    }
}

/// A log line of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its level.
    pub level: LogLevel,
    /// Its text.
    pub message: String,
    /// Its structured fields (empty when it has none).
    pub fields: Map<String, Value>,
}

/// A child run the handler requested.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChildCall {
    /// The child's routineID.
    pub routine: String,
    /// The child's localRunID (given, or `<routine>#<n>`).
    pub local_id: String,
    /// The child's parameters.
    pub params: Value,
    /// The whole request as it would go to Drover (conditions, retries, timeouts, parent).
    pub spec: RunSpec,
}

impl From<RunSpec> for ChildCall {
    fn from(spec: RunSpec) -> Self {
        Self {
            routine: spec.routine_id.to_string(),
            local_id: spec
                .local_run_id
                .as_ref()
                .map(|local| local.as_str().to_owned())
                .unwrap_or_default(),
            params: spec.params.clone(),
            spec,
        }
    }
}

/// The error of a child run that ended `FAILED` with an error of this type and message, as
/// [`Context::run_child`] returns it.
pub fn failed_child(kind: impl Into<String>, message: impl Into<String>) -> ChildError {
    ChildError::Failed {
        run_id: RunId::generate(),
        status: Some(RunStatus::Failed),
        failure_reason: Some(FailureReason::Error),
        error: Some(RunError::new(kind, message)),
    }
}

/// What a context of a [`RoutineEnvironment`] reaches instead of a worker.
pub(crate) struct Harness {
    pub(crate) worker_id: WorkerId,
    pub(crate) logs: LogSink,
    answers: HashMap<String, Result<Value, ChildError>>,
    answerer: Option<Answerer>,
    calls: Mutex<Vec<ChildCall>>,
}

impl Harness {
    /// Records a child request and answers it, or ends it when the attempt is cancelled.
    pub(crate) async fn answer_child(
        &self,
        spec: RunSpec,
        token: &CancellationToken,
    ) -> Result<Value, ChildError> {
        let call = ChildCall::from(spec);
        lock(&self.calls).push(call.clone());
        let answer: AnswerFuture = if let Some(answer) = self.answers.get(&call.routine) {
            Box::pin(std::future::ready(answer.clone()))
        } else if let Some(answerer) = &self.answerer {
            answerer(call)
        } else {
            panic!(
                "RoutineEnvironment has no answer for a child run of {} (localRunID {}): \
                 add one with answer_child or on_child",
                call.routine, call.local_id
            );
        };
        tokio::select! {
            _ = token.cancelled() => Err(ChildError::Cancelled),
            answer = answer => answer,
        }
    }
}
