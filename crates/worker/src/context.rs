//! What a routine handler knows about the attempt it runs, and what it can do from there:
//! log, watch for cancellation, and start child runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use drover_protocol::{Assignment, Attempt, LogLevel, RoutineId, RunId, WorkerId};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::child::ChildRequest;
use crate::error::ChildError;
use crate::execution::Execution;
use crate::log::LogSink;
use crate::state::{lock, Shared, Slot};
use crate::testing::Harness;

/// The attempt a handler runs: its identity, parameters and environment, its cancellation
/// token, and access to logs and child runs. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) assignment: Assignment,
    pub(crate) slot: Slot,
    /// The execution span its lines are recorded on.
    pub(crate) execution: Arc<Execution>,
    /// Numbers children that are requested without a localRunID, in request order.
    pub(crate) child_seq: AtomicU64,
}

/// What a context reaches beyond its attempt: a running worker, or a test's harness.
///
/// An enum rather than a trait object, so that the worker's path stays a plain `Arc` clone.
pub(crate) enum Backend {
    /// A worker connected to Drover.
    Worker(Arc<Shared>),
    /// A [`RoutineEnvironment`](crate::testing::RoutineEnvironment): no broker.
    Test(Arc<Harness>),
}

impl Backend {
    /// The worker the attempt runs on.
    pub(crate) fn worker_id(&self) -> &WorkerId {
        match self {
            Backend::Worker(shared) => &shared.id,
            Backend::Test(harness) => &harness.worker_id,
        }
    }

    /// Where the attempt's log lines go.
    pub(crate) fn logs(&self) -> &LogSink {
        match self {
            Backend::Worker(shared) => &shared.logs,
            Backend::Test(harness) => &harness.logs,
        }
    }
}

impl Context {
    pub(crate) fn new(
        backend: Backend,
        assignment: Assignment,
        slot: Slot,
        execution: Arc<Execution>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                assignment,
                slot,
                execution,
                child_seq: AtomicU64::new(0),
            }),
        }
    }

    /// The run this attempt belongs to.
    pub fn run_id(&self) -> &RunId {
        &self.inner.assignment.run_id
    }

    /// The attempt number: 1 for the first assignment of the run, one more at each later one.
    pub fn attempt(&self) -> Attempt {
        self.inner.assignment.attempt
    }

    /// The routine being run.
    pub fn routine_id(&self) -> &RoutineId {
        &self.inner.assignment.routine_id
    }

    /// The run's parameters, as submitted.
    pub fn params(&self) -> &Value {
        &self.inner.assignment.params
    }

    /// The run's environment, as submitted.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.inner.assignment.env
    }

    /// The parent run, when this run is a child.
    pub fn parent_run_id(&self) -> Option<&RunId> {
        self.inner.assignment.parent_run_id.as_ref()
    }

    /// The `maxExecTimeMs` bound of this attempt, when the run has one.
    pub fn max_exec_time_ms(&self) -> Option<u64> {
        self.inner.assignment.max_exec_time_ms
    }

    /// The worker running the attempt.
    pub fn worker_id(&self) -> &WorkerId {
        self.inner.backend.worker_id()
    }

    /// A token that fires when the attempt must stop: cancelled by Drover (on request, on
    /// `maxExecTimeMs`, with its parent), no longer current, or out of shutdown grace.
    ///
    /// Once it fires, the attempt's outcome is no longer reported: the run has moved on.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.slot.token.clone()
    }

    /// True once the attempt must stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.slot.token.is_cancelled()
    }

    /// Resolves when the attempt must stop.
    pub async fn cancelled(&self) {
        self.inner.slot.token.cancelled().await;
    }

    /// Why the attempt was stopped (e.g. `max_exec_exceeded`), once it was.
    pub fn cancel_reason(&self) -> Option<String> {
        lock(&self.inner.slot.reason).clone()
    }

    /// Sends a log line about this run to Drover (`v1.log`), and records it as an event on
    /// the attempt's execution span; never blocks.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.send_log(level, message.into(), None);
    }

    /// Sends a log line with structured fields; a non-object `fields` goes under `value`.
    pub fn log_with(&self, level: LogLevel, message: impl Into<String>, fields: Value) {
        let fields = match fields {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_owned(), other)]),
        };
        self.send_log(level, message.into(), Some(fields));
    }

    fn send_log(&self, level: LogLevel, message: String, fields: Option<Map<String, Value>>) {
        let headers = self
            .inner
            .execution
            .record(level, &message, fields.as_ref());
        self.inner
            .backend
            .logs()
            .send(self.run_id(), level, message, fields, headers);
    }

    /// Runs `routine` as a child of this run and waits for its result.
    ///
    /// `local_id` names the child within this run: a retried parent that asks for the same
    /// `local_id` gets the same child (and its result at once if it has ended), so choose it
    /// deterministically (`"thumb-3"`, not a random value). Children may run concurrently
    /// (`futures::future::join_all`). While every run this worker holds waits on children,
    /// the worker reports `HANGING`.
    pub async fn run_child(
        &self,
        routine: &str,
        params: Value,
        local_id: &str,
    ) -> Result<Value, ChildError> {
        self.child(routine).params(params).local_id(local_id).await
    }

    /// A child request to fill in (params, conditions, retries, timeouts) and then `.await`.
    ///
    /// Without [`ChildRequest::local_id`], the child is named `<routine>#<n>`, where `n`
    /// counts this attempt's calls to `child`: deterministic as long as the handler requests
    /// its children in the same order every time.
    pub fn child(&self, routine: &str) -> ChildRequest {
        let seq = self.inner.child_seq.fetch_add(1, Ordering::Relaxed) + 1;
        ChildRequest::new(self.clone(), routine, seq)
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("worker_id", self.worker_id())
            .field("run_id", self.run_id())
            .field("attempt", &self.attempt())
            .field("routine_id", self.routine_id())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
