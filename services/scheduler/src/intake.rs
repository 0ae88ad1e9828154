//! Intake: turning a run spec into a stored, queued run (DESIGN §6.1, §6.3 item 1).
//!
//! A run is durable before its runID is returned: the queue message is published (with the
//! runID as JetStream message id, so a retry within the dedup window does not queue it
//! twice), then the record is created. Idempotency keys and child memo keys live in
//! `DROVER_RUN_KEYS` and outlive the dedup window.

use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderValue};
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::{self};
use bytes::Bytes;
use drover_protocol::subject::timers::{self, TimerKind};
use drover_protocol::subject::{self, resources};
use drover_protocol::trace::TraceParent;
use drover_protocol::{
    Accepted, ErrorCode, ErrorPayload, RunId, RunRecord, RunSpec, RunStatus, Timestamp, Transition,
    Violation, WorkerId,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::store::{RunStore, StoreError, Stored};

/// Trace context received with a request.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    /// W3C traceparent header.
    pub traceparent: Option<String>,
    /// W3C tracestate header.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Reads the trace headers of a message.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Self {
        let get = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        Self {
            traceparent: get(drover_protocol::trace::TRACEPARENT),
            tracestate: get(drover_protocol::trace::TRACESTATE),
        }
    }
}

/// Who asked for the run.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A client on `v1.routine.request_start`.
    Client,
    /// A worker running `parent`, on `v1.routine.request_start.<worker>`.
    Child {
        /// The requesting worker.
        worker: WorkerId,
        /// The parent run.
        parent: RunId,
    },
}

/// The result of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The reply.
    pub accepted: Accepted,
    /// The record as stored (or as found, for a repeated request).
    pub record: RunRecord,
    /// True when an existing run was returned instead of a new one.
    pub existed: bool,
}

/// Stores and queues runs.
#[derive(Clone)]
pub struct Intake {
    js: jetstream::Context,
    store: RunStore,
    keys: kv::Store,
    key_ttl: Duration,
    /// Runs just stored, for the engine in this process: its actor can take the record
    /// from here instead of reading it back (or waiting for it, when the queue message
    /// arrived first).
    stored: tokio::sync::broadcast::Sender<Stored>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

fn error(code: ErrorCode, message: impl Into<String>, subject: &str) -> ErrorPayload {
    ErrorPayload::new(code, message, subject)
}

fn unavailable(error: impl std::fmt::Display, subject: &str) -> ErrorPayload {
    ErrorPayload::new(
        ErrorCode::Unavailable,
        format!("the run could not be stored: {error}"),
        subject,
    )
}

fn violation(path: &str, keyword: Option<&str>, message: &str, subject: &str) -> ErrorPayload {
    let violations = vec![Violation {
        path: path.to_owned(),
        message: message.to_owned(),
        keyword: keyword.map(str::to_owned),
    }];
    ErrorPayload::new(
        ErrorCode::SchemaViolation,
        format!("schema violation: {path}: {message}"),
        subject,
    )
    .with_details(json!({ "violations": violations }))
}

/// Checks what the schema cannot: consistency between fields, and the origin's rules.
pub fn validate(spec: &RunSpec, child: bool, subject: &str) -> Result<(), ErrorPayload> {
    if let Some(backoff) = &spec.retry_backoff {
        if backoff.max_ms < backoff.initial_ms {
            return Err(error(
                ErrorCode::InvalidBackoff,
                format!(
                    "retryBackoff.maxMs ({}) is below retryBackoff.initialMs ({})",
                    backoff.max_ms, backoff.initial_ms
                ),
                subject,
            )
            .with_details(json!({"path": "/payload/retryBackoff/maxMs"})));
        }
        if !backoff.multiplier.is_finite() || backoff.multiplier < 1.0 {
            return Err(error(
                ErrorCode::InvalidBackoff,
                "retryBackoff.multiplier must be a finite number of at least 1",
                subject,
            )
            .with_details(json!({"path": "/payload/retryBackoff/multiplier"})));
        }
    }
    if !child && spec.parent_run_id.is_some() {
        return Err(violation(
            "/payload/parentRunID",
            None,
            "child runs are requested by the parent's worker on v1.routine.request_start.<workerID>",
            subject,
        ));
    }
    if child && spec.parent_run_id.is_none() {
        return Err(violation(
            "/payload/parentRunID",
            Some("required"),
            "a worker's request must name the parentRunID it runs",
            subject,
        ));
    }
    if child && spec.local_run_id.is_none() {
        return Err(violation(
            "/payload/localRunID",
            Some("required"),
            "a worker's request must carry a localRunID",
            subject,
        ));
    }
    Ok(())
}

fn hashed(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Intake {
    /// Opens the key bucket.
    pub async fn open(
        js: jetstream::Context,
        store: RunStore,
        key_ttl: Duration,
    ) -> Result<Self, StoreError> {
        let keys = js
            .get_key_value(resources::RUN_KEYS_BUCKET)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Self {
            js,
            store,
            keys,
            key_ttl,
            stored: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Runs stored from now on, with their revision.
    pub fn stored(&self) -> tokio::sync::broadcast::Receiver<Stored> {
        self.stored.subscribe()
    }

    /// Stores and queues a run, or returns the existing one for a repeated key.
    pub async fn submit(
        &self,
        spec: RunSpec,
        origin: Origin,
        trace: TraceContext,
        subject: &str,
    ) -> Result<Submitted, ErrorPayload> {
        validate(&spec, matches!(origin, Origin::Child { .. }), subject)?;
        let key = match (&origin, &spec.idempotency_key) {
            (Origin::Child { parent, .. }, _) => {
                let local = spec
                    .local_run_id
                    .as_ref()
                    .map_or("", |local| local.as_str());
                Some(format!("child.{}", hashed(&[parent.as_str(), local])))
            }
            (Origin::Client, Some(idempotency_key)) => {
                Some(format!("idem.{}", hashed(&[idempotency_key])))
            }
            (Origin::Client, None) => None,
        };
        let mut run_id = RunId::generate();
        if let Some(key) = &key {
            match self
                .keys
                .create_with_ttl(key, Bytes::from(run_id.to_string()), self.key_ttl)
                .await
            {
                Ok(_) => {}
                Err(create) if create.kind() == CreateErrorKind::AlreadyExists => {
                    let existing = self
                        .keys
                        .get(key)
                        .await
                        .map_err(|error| unavailable(error, subject))?
                        .ok_or_else(|| unavailable("a run key vanished while read", subject))?;
                    run_id = RunId::parse(String::from_utf8_lossy(&existing).into_owned())
                        .map_err(|error| unavailable(error, subject))?;
                    if let Some(stored) = self
                        .store
                        .get(&run_id)
                        .await
                        .map_err(|error| unavailable(error, subject))?
                    {
                        debug!(run = %run_id, "repeated request answered with the existing run");
                        return Ok(Submitted {
                            accepted: Accepted {
                                run_id,
                                local_run_id: spec.local_run_id.clone(),
                            },
                            record: stored.record,
                            existed: true,
                        });
                    }
                    // The first request stopped before storing the run: finish it now.
                }
                Err(error) => return Err(unavailable(error, subject)),
            }
        }
        let record = self.new_record(run_id.clone(), spec, &origin, trace);
        if let Some(wait) = record.max_wait_time_ms {
            self.schedule_max_wait(&record.run_id, record.created_at.plus_millis(wait))
                .await
                .map_err(|error| unavailable(error, subject))?;
        }
        let seq = self
            .enqueue(&record.run_id, &record)
            .await
            .map_err(|error| unavailable(error, subject))?;
        let mut record = record;
        record.queue_seq = Some(seq);
        let revision = match self.store.create(&record).await {
            Ok(revision) => Some(revision),
            Err(StoreError::Exists) => None,
            Err(error) => return Err(unavailable(error, subject)),
        };
        info!(run = %record.run_id, routine = %record.routine_id, parent = ?record.parent_run_id, "run accepted");
        self.store.announce(None, &record).await;
        // After the PENDING event, so that the ASSIGNED one cannot overtake it.
        if let Some(revision) = revision.filter(|_| self.stored.receiver_count() > 0) {
            // A lagging or absent engine reads the record itself: nothing is lost.
            let _ = self.stored.send(Stored {
                record: record.clone(),
                revision,
            });
        }
        Ok(Submitted {
            accepted: Accepted {
                run_id: record.run_id.clone(),
                local_run_id: record.local_run_id.clone(),
            },
            record,
            existed: false,
        })
    }

    fn new_record(
        &self,
        run_id: RunId,
        spec: RunSpec,
        origin: &Origin,
        trace: TraceContext,
    ) -> RunRecord {
        let now = Timestamp::now();
        let parent = trace
            .traceparent
            .as_deref()
            .and_then(TraceParent::parse)
            .unwrap_or_else(TraceParent::new_root);
        let requested_by = match origin {
            Origin::Child { worker, .. } => Some(worker.clone()),
            Origin::Client => None,
        };
        RunRecord {
            run_id,
            routine_id: spec.routine_id,
            status: RunStatus::Pending,
            params: spec.params,
            env: spec.env,
            conditions: spec.conditions,
            max_wait_time_ms: spec.max_wait_time_ms,
            max_exec_time_ms: spec.max_exec_time_ms,
            max_retries: spec.max_retries,
            retry_backoff: spec.retry_backoff,
            idempotency_key: spec.idempotency_key,
            local_run_id: spec.local_run_id,
            parent_run_id: spec.parent_run_id,
            requested_by,
            attempt: 0,
            retries: 0,
            reassignments: 0,
            worker_id: None,
            incarnation: None,
            created_at: now,
            assigned_at: None,
            started_at: None,
            ended_at: None,
            not_before: None,
            transitions: vec![Transition {
                status: RunStatus::Pending,
                at: now,
                attempt: 0,
                worker_id: None,
                reason: None,
            }],
            result: None,
            error: None,
            failure_reason: None,
            open_children: Vec::new(),
            trace_id: Some(parent.trace_id.clone()),
            traceparent: Some(parent.to_string()),
            tracestate: trace.tracestate,
            queue_seq: None,
        }
    }

    async fn enqueue(&self, run: &RunId, record: &RunRecord) -> Result<u64, String> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, run.as_str());
        let ack = self
            .js
            .publish_with_headers(
                subject::queue(&record.routine_id),
                headers,
                Bytes::from(run.to_string()),
            )
            .await
            .map_err(|error| error.to_string())?
            .await
            .map_err(|error| error.to_string())?;
        Ok(ack.sequence)
    }

    /// Schedules the `maxWaitTimeMs` timer as a NATS message schedule.
    async fn schedule_max_wait(&self, run: &RunId, due: Timestamp) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Schedule",
            HeaderValue::from(format!("@at {due}").as_str()),
        );
        headers.insert(
            "Nats-Schedule-Target",
            timers::timer_fire(TimerKind::MaxWait, run).as_str(),
        );
        self.js
            .publish_with_headers(
                timers::timer_schedule(TimerKind::MaxWait, run),
                headers,
                Bytes::from(run.to_string()),
            )
            .await
            .map_err(|error| error.to_string())?
            .await
            .map_err(|error| error.to_string())?;
        Ok(())
    }

    /// Cancels a run's `maxWaitTimeMs` timer (it is moot once the run was placed).
    pub async fn cancel_max_wait(&self, run: &RunId) {
        let subject = timers::timer_schedule(TimerKind::MaxWait, run);
        match self.js.get_stream(resources::TIMERS_STREAM).await {
            Ok(stream) => {
                if let Err(error) = stream.purge().filter(subject).await {
                    debug!(run = %run, %error, "could not cancel a wait timer");
                }
            }
            Err(error) => debug!(run = %run, %error, "could not open the timers stream"),
        }
    }

    /// Removes a run's queue message (for a run that ends without being held).
    pub async fn drop_queue_message(&self, seq: u64) {
        match self.js.get_stream(resources::QUEUE_STREAM).await {
            Ok(stream) => {
                if let Err(error) = stream.delete_message(seq).await {
                    debug!(seq, %error, "could not delete a queue message");
                }
            }
            Err(error) => debug!(seq, %error, "could not open the queue stream"),
        }
    }
}
