//! Child runs (protocol §6): a request on `v1.routine.request_start.<workerID>` naming the
//! parent, then the child's completion, forwarded into the worker's inbox.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use drover_protocol::subject::keys;
use drover_protocol::{
    decode_reply, encode, Accepted, ChildCompleted, Conditions, ErrorCode, LocalRunId, Outcome,
    RetryBackoff, RoutineId, RunSpec, WorkerId,
};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{Backend, Context};
use crate::deliver::{Backoff, REQUEST_TIMEOUT};
use crate::error::ChildError;
use crate::state::Shared;

/// A child run to start from a handler: fill it in, then `.await` it for the child's result.
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn example(ctx: drover_worker::Context) -> Result<(), drover_worker::ChildError> {
/// let thumbnail = ctx
///     .child("images.thumbnail")
///     .params(serde_json::json!({"url": "s3://bucket/cat.png"}))
///     .local_id("thumb-1")
///     .label("gpu", "true")
///     .max_retries(2)
///     .max_exec_time(Duration::from_secs(30))
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a child request does nothing until it is awaited"]
pub struct ChildRequest {
    ctx: Context,
    routine: String,
    params: Result<Value, String>,
    local_id: String,
    env: BTreeMap<String, String>,
    worker_ids: Vec<String>,
    labels: BTreeMap<String, String>,
    max_wait_time_ms: Option<u64>,
    max_exec_time_ms: Option<u64>,
    max_retries: u32,
    retry_backoff: Option<RetryBackoff>,
}

impl ChildRequest {
    pub(crate) fn new(ctx: Context, routine: &str, seq: u64) -> Self {
        Self {
            ctx,
            routine: routine.to_owned(),
            params: Ok(Value::Null),
            local_id: format!("{routine}#{seq}"),
            env: BTreeMap::new(),
            worker_ids: Vec::new(),
            labels: BTreeMap::new(),
            max_wait_time_ms: None,
            max_exec_time_ms: None,
            max_retries: 0,
            retry_backoff: None,
        }
    }

    /// The child's parameters (anything serde can turn into JSON).
    pub fn params(mut self, params: impl Serialize) -> Self {
        self.params = serde_json::to_value(params).map_err(|error| error.to_string());
        self
    }

    /// The child's localRunID: its name within this run, the key of memoization.
    pub fn local_id(mut self, local_id: impl Into<String>) -> Self {
        self.local_id = local_id.into();
        self
    }

    /// Adds an environment variable for the child.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Restricts the child to this worker (call again to allow more).
    pub fn worker(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_ids.push(worker_id.into());
        self
    }

    /// Restricts the child to workers carrying this label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Fails the child with `max_wait_exceeded` if it is not placed within `limit`.
    pub fn max_wait_time(mut self, limit: Duration) -> Self {
        self.max_wait_time_ms = Some(millis(limit));
        self
    }

    /// Bounds each attempt of the child, from its `starting`.
    pub fn max_exec_time(mut self, limit: Duration) -> Self {
        self.max_exec_time_ms = Some(millis(limit));
        self
    }

    /// Retries the child this many times after failed attempts.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The delay before retry `n`: `min(initial × multiplier^(n-1), max)`.
    pub fn retry_backoff(mut self, initial: Duration, multiplier: f64, max: Duration) -> Self {
        self.retry_backoff = Some(RetryBackoff {
            initial_ms: millis(initial),
            multiplier,
            max_ms: millis(max),
        });
        self
    }

    /// The run spec this request sends.
    fn spec(&self) -> Result<RunSpec, ChildError> {
        let invalid = |error: &dyn std::fmt::Display| ChildError::Invalid(error.to_string());
        let routine = RoutineId::parse(self.routine.as_str()).map_err(|e| invalid(&e))?;
        let local = LocalRunId::parse(self.local_id.as_str()).map_err(|e| invalid(&e))?;
        let params = self
            .params
            .clone()
            .map_err(|error| invalid(&format!("params do not serialise: {error}")))?;
        let worker_ids = self
            .worker_ids
            .iter()
            .map(|id| WorkerId::parse(id.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let mut spec = RunSpec::new(routine);
        spec.params = params;
        spec.env = self.env.clone();
        spec.conditions = Conditions {
            worker_ids,
            labels: self.labels.clone(),
        };
        spec.max_wait_time_ms = self.max_wait_time_ms;
        spec.max_exec_time_ms = self.max_exec_time_ms;
        spec.max_retries = self.max_retries;
        spec.retry_backoff = self.retry_backoff;
        spec.local_run_id = Some(local);
        spec.parent_run_id = Some(self.ctx.run_id().clone());
        Ok(spec)
    }

    /// Requests the child and waits for its result.
    pub async fn run(self) -> Result<Value, ChildError> {
        let spec = self.spec()?;
        let ctx = self.ctx;
        let token = ctx.cancellation_token();
        if token.is_cancelled() {
            return Err(ChildError::Cancelled);
        }
        let span = tracing::info_span!(
            target: "drover_worker",
            "drover.child",
            routine_id = %spec.routine_id,
            local_run_id = spec.local_run_id.as_ref().map(LocalRunId::as_str),
        );
        let shared = match &ctx.inner.backend {
            Backend::Worker(shared) => Arc::clone(shared),
            Backend::Test(harness) => {
                let harness = Arc::clone(harness);
                return harness.answer_child(spec, &token).instrument(span).await;
            }
        };
        async move {
            // Counted as waiting, and listening, before the request goes out: the
            // completion of a memoized child comes at once.
            let _waiting = shared.waiting_on_child(ctx.run_id(), ctx.attempt());
            let local = spec
                .local_run_id
                .clone()
                .ok_or_else(|| ChildError::Invalid("no localRunID".to_owned()))?;
            let (key, receiver) = shared.children.register(local);
            let _listening = Listening {
                shared: Arc::clone(&shared),
                key,
            };
            let accepted = request(&shared, &spec, &token).await?;
            tracing::debug!(child_run_id = %accepted.run_id, "child run accepted");
            shared.children.accepted(key, accepted.run_id);
            let completed = tokio::select! {
                _ = token.cancelled() => return Err(ChildError::Cancelled),
                completed = receiver => completed.map_err(|_| ChildError::Cancelled)?,
            };
            outcome(completed)
        }
        .instrument(span)
        .await
    }
}

impl IntoFuture for ChildRequest {
    type Output = Result<Value, ChildError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

impl std::fmt::Debug for ChildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildRequest")
            .field("routine", &self.routine)
            .field("local_id", &self.local_id)
            .finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Removes the waiter when the wait ends, however it ends.
struct Listening {
    shared: Arc<Shared>,
    key: u64,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.shared.children.remove(self.key);
    }
}

/// Sends the child request until Drover accepts or refuses it.
///
/// Retrying is safe: children are memoized by (parent, localRunID), so a request whose
/// reply was lost gets the same child again.
async fn request(
    shared: &Shared,
    spec: &RunSpec,
    token: &CancellationToken,
) -> Result<Accepted, ChildError> {
    let subject = shared.subject(keys::REQUEST_START);
    let body = encode(spec);
    let mut headers = HeaderMap::new();
    drover_telemetry::inject_current(&mut headers);
    let mut backoff = Backoff::new();
    loop {
        let request =
            shared
                .client
                .request_with_headers(subject.clone(), headers.clone(), body.clone());
        let outcome = tokio::select! {
            _ = token.cancelled() => return Err(ChildError::Cancelled),
            outcome = tokio::time::timeout(REQUEST_TIMEOUT, request) => outcome,
        };
        match outcome {
            Ok(Ok(reply)) => match decode_reply::<Accepted>(&reply.payload) {
                Ok(Ok(accepted)) => return Ok(accepted),
                Ok(Err(error)) if error.code == ErrorCode::Unavailable => {
                    tracing::debug!(%error, "child request not taken yet; retrying");
                }
                Ok(Err(error)) => return Err(ChildError::Refused(error)),
                Err(error) => tracing::warn!(%error, "unreadable reply to a child request"),
            },
            Ok(Err(error)) => tracing::debug!(%error, "child request not sent yet; retrying"),
            Err(_) => tracing::debug!("no reply to a child request in time; retrying"),
        }
        if !backoff.wait(token).await {
            return Err(ChildError::Cancelled);
        }
    }
}

fn outcome(completed: ChildCompleted) -> Result<Value, ChildError> {
    match completed.outcome {
        Outcome::Succeeded => Ok(completed.result.unwrap_or(Value::Null)),
        Outcome::Failed => Err(ChildError::Failed {
            run_id: completed.run_id,
            status: completed.status,
            failure_reason: completed.failure_reason,
            error: completed.error,
        }),
    }
}
