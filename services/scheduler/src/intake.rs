//! Intake: turning a run spec into a stored, queued run (DESIGN §6.1, §6.3 item 1).
//!
//! A run is durable before its runID is returned: the queue message is published (with the
//! runID as JetStream message id, so a retry within the dedup window does not queue it
//! twice), then the record is created. Idempotency keys and child memo keys live in
//! `DROVER_RUN_KEYS` and outlive the dedup window.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderValue};
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::{self};
use bytes::Bytes;
use drover_protocol::subject::timers::{self, TimerKind};
use drover_protocol::subject::{self, resources};
use drover_protocol::trace::TraceParent;
use drover_protocol::{
    Accepted, RunId, RunRecord, RunSpec, RunStatus, Timestamp, Transition, WorkerId,
};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::{debug, Instrument};

use crate::error::{SpecError, SubmitError};
use crate::store::{BoxError, RunStore, StoreError, Stored};

/// W3C trace context: received with a request, kept in the run record, and sent along
/// with everything sent to a worker about the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

    /// The context of the span of the run's current attempt (`drover.attempt`), or of the
    /// run's own span before its first attempt: what a directive about the run carries.
    pub fn of_attempt(record: &RunRecord) -> Self {
        let span = match record.attempt {
            0 => record.run_span(),
            attempt => record.attempt_span(attempt),
        };
        Self {
            traceparent: span.map(|span| span.to_string()),
            tracestate: record.tracestate.clone(),
        }
    }

    /// The context of the current `tracing` span, with the `tracestate` of `received`:
    /// a run accepted inside the intake span records that span as its parent. When the
    /// span is not traced (a trace filter above INFO), `received` itself.
    pub fn current(received: &TraceContext) -> Self {
        Self {
            traceparent: drover_telemetry::current_traceparent()
                .or_else(|| received.traceparent.clone()),
            tracestate: received.tracestate.clone(),
        }
    }

    /// The trace headers for a message: both `traceparent` and `tracestate`.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(traceparent) = &self.traceparent {
            headers.insert(drover_protocol::trace::TRACEPARENT, traceparent.as_str());
        }
        if let Some(tracestate) = &self.tracestate {
            headers.insert(drover_protocol::trace::TRACESTATE, tracestate.as_str());
        }
        headers
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

/// The leader's engine, as the intake sees it: it places a run the moment the run is
/// queued, when a matching worker has a free slot, so that the run's first write is its
/// assignment and no queue round trip comes between submission and worker.
pub trait Placer: Send + Sync {
    /// A slot for `record` (PENDING, not yet queued), if a worker is free right now and no
    /// older run of its routine waits.
    fn reserve(&self, record: &RunRecord) -> Option<Box<dyn Reservation>>;

    /// `record` was not placed and is about to be queued PENDING: later submissions of its
    /// routine wait behind it until it is fetched. Said before it is queued, so that the
    /// fetcher cannot take it first.
    fn queued(&self, record: &RunRecord);

    /// `record`, said to be [`Placer::queued`], could not be queued after all.
    fn unqueued(&self, record: &RunRecord);
}

/// A slot held for a run being submitted. Dropped without [`Reservation::assign`], it is
/// given back.
pub trait Reservation: Send {
    /// Writes `record` (queued) as ASSIGNED to the reserved worker, then sends it there. The
    /// answer says whether the record was created, with its revision.
    fn assign(self: Box<Self>, record: RunRecord) -> oneshot::Receiver<Result<u64, StoreError>>;
}

/// The placer of this process while it leads.
type PlacerSlot = Arc<RwLock<Option<Arc<dyn Placer>>>>;

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
    /// The engine, while this process leads.
    placer: PlacerSlot,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

/// Checks what the schema cannot: consistency between fields, and the origin's rules.
pub fn validate(spec: &RunSpec, child: bool) -> Result<(), SpecError> {
    if let Some(backoff) = &spec.retry_backoff {
        if backoff.max_ms < backoff.initial_ms {
            return Err(SpecError::BackoffMaxBelowInitial {
                initial_ms: backoff.initial_ms,
                max_ms: backoff.max_ms,
            });
        }
        if !backoff.multiplier.is_finite() || backoff.multiplier < 1.0 {
            return Err(SpecError::BackoffMultiplier);
        }
    }
    match (child, &spec.parent_run_id, &spec.local_run_id) {
        (false, Some(_), _) => Err(SpecError::ParentFromClient),
        (true, None, _) => Err(SpecError::ParentMissing),
        (true, _, None) => Err(SpecError::LocalRunIdMissing),
        _ => Ok(()),
    }
}

/// The key in `DROVER_RUN_KEYS` that makes a repeated request return the run it created:
/// the parent and `localRunID` for a child (so a retried parent gets the same child), the
/// idempotency key for a client's request; none for a client's request without one.
pub fn run_key(spec: &RunSpec, origin: &Origin) -> Option<String> {
    match (origin, &spec.idempotency_key) {
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
    }
}

/// When a run not placed by then fails with `max_wait_exceeded`: `maxWaitTimeMs` after it
/// was created. The deadline comes from the record alone, so it holds across leaders.
pub fn wait_deadline(record: &RunRecord) -> Option<Timestamp> {
    record
        .max_wait_time_ms
        .map(|wait| record.created_at.plus_millis(wait))
}

/// The record of a new run: PENDING, created at `now`, in the trace of the request (or in a
/// new trace).
pub fn new_record(
    run_id: RunId,
    spec: RunSpec,
    origin: &Origin,
    trace: TraceContext,
    now: Timestamp,
) -> RunRecord {
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

fn not_stored(error: impl Into<BoxError>) -> SubmitError {
    SubmitError::NotStored(error.into())
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
            placer: PlacerSlot::default(),
        })
    }

    /// Places runs at intake through `placer` from now on (this process leads), or no
    /// longer (`None`: leadership ended).
    pub fn set_placer(&self, placer: Option<Arc<dyn Placer>>) {
        *self
            .placer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = placer;
    }

    fn placer(&self) -> Option<Arc<dyn Placer>> {
        self.placer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs stored from now on, with their revision.
    pub fn stored(&self) -> tokio::sync::broadcast::Receiver<Stored> {
        self.stored.subscribe()
    }

    /// Stores and queues a run, or returns the existing one for a repeated key, in a
    /// `drover.enqueue` span under `trace`, the intake's span, which the run's record keeps
    /// as the parent of the run's own span.
    pub async fn submit(
        &self,
        spec: RunSpec,
        origin: Origin,
        trace: TraceContext,
    ) -> Result<Submitted, SubmitError> {
        let span = tracing::info_span!(
            "drover.enqueue",
            drover.routine_id = %spec.routine_id,
            drover.run_id = tracing::field::Empty,
        );
        if let Some(traceparent) = &trace.traceparent {
            drover_telemetry::set_parent_from_traceparent(
                &span,
                traceparent,
                trace.tracestate.as_deref(),
            );
        }
        self.store_and_queue(spec, origin, trace)
            .instrument(span)
            .await
    }

    async fn store_and_queue(
        &self,
        spec: RunSpec,
        origin: Origin,
        trace: TraceContext,
    ) -> Result<Submitted, SubmitError> {
        validate(&spec, matches!(origin, Origin::Child { .. }))?;
        let mut run_id = RunId::generate();
        if let Some(key) = run_key(&spec, &origin) {
            match self
                .keys
                .create_with_ttl(&key, Bytes::from(run_id.to_string()), self.key_ttl)
                .await
            {
                Ok(_) => {}
                Err(create) if create.kind() == CreateErrorKind::AlreadyExists => {
                    let existing = self
                        .keys
                        .get(&key)
                        .await
                        .map_err(not_stored)?
                        .ok_or_else(|| not_stored("a run key vanished while read"))?;
                    run_id = RunId::parse(String::from_utf8_lossy(&existing).into_owned())
                        .map_err(not_stored)?;
                    if let Some(stored) = self.store.get(&run_id).await.map_err(not_stored)? {
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
                Err(error) => return Err(not_stored(error)),
            }
        }
        tracing::Span::current().record("drover.run_id", tracing::field::display(&run_id));
        let mut record = new_record(run_id.clone(), spec, &origin, trace, Timestamp::now());
        // The slot first: once queued, the run is fetched at once by a leader with room.
        let placer = self.placer();
        let reservation = placer.as_ref().and_then(|placer| placer.reserve(&record));
        let queued = match (&placer, &reservation) {
            (Some(placer), None) => {
                placer.queued(&record);
                Some(placer)
            }
            _ => None,
        };
        let seq = match self.enqueue(&record.run_id, &record).await {
            Ok(seq) => seq,
            Err(error) => {
                if let Some(placer) = queued {
                    placer.unqueued(&record);
                }
                return Err(SubmitError::NotStored(error));
            }
        };
        record.queue_seq = Some(seq);
        let placed = match reservation {
            // The engine writes the record as ASSIGNED and announces it.
            Some(reservation) => match reservation.assign(record.clone()).await {
                Ok(Ok(_)) => true,
                Ok(Err(StoreError::Exists)) => false,
                Ok(Err(error)) => return Err(not_stored(error)),
                Err(_) => return Err(not_stored("leadership ended while placing the run")),
            },
            None => {
                self.store_pending(&record).await?;
                false
            }
        };
        if placed {
            crate::metrics::submitted(&record);
            debug!(run = %record.run_id, routine = %record.routine_id, parent = ?record.parent_run_id, "run accepted and placed");
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

    /// Stores a queued run that was not placed at once as PENDING, with its `maxWaitTimeMs`
    /// timer, and hands it to this process's engine, if it leads.
    async fn store_pending(&self, record: &RunRecord) -> Result<(), SubmitError> {
        if let Some(due) = wait_deadline(record) {
            self.schedule_max_wait(&record.run_id, due)
                .await
                .map_err(SubmitError::NotStored)?;
        }
        let revision = match self.store.create(record).await {
            Ok(revision) => {
                crate::metrics::submitted(record);
                Some(revision)
            }
            Err(StoreError::Exists) => None,
            Err(error) => return Err(not_stored(error)),
        };
        debug!(run = %record.run_id, routine = %record.routine_id, parent = ?record.parent_run_id, "run accepted");
        self.store.announce(None, record).await;
        // After the PENDING event, so that the ASSIGNED one cannot overtake it.
        if let Some(revision) = revision.filter(|_| self.stored.receiver_count() > 0) {
            // A lagging or absent engine reads the record itself: nothing is lost.
            let _ = self.stored.send(Stored {
                record: record.clone(),
                revision,
            });
        }
        Ok(())
    }

    async fn enqueue(&self, run: &RunId, record: &RunRecord) -> Result<u64, BoxError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, run.as_str());
        let ack = self
            .js
            .publish_with_headers(
                subject::queue(&record.routine_id),
                headers,
                Bytes::from(run.to_string()),
            )
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Schedules the `maxWaitTimeMs` timer as a NATS message schedule.
    async fn schedule_max_wait(&self, run: &RunId, due: Timestamp) -> Result<(), BoxError> {
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
            .await?
            .await?;
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
        // Without reading the stream's info first: a run placed at intake that ends before
        // its queue message was fetched comes here, so this is on a busy path.
        let stream = self.js.get_stream_no_info(resources::QUEUE_STREAM).await;
        match stream {
            Ok(stream) => {
                if let Err(error) = stream.delete_message(seq).await {
                    debug!(seq, %error, "could not delete a queue message");
                }
            }
            Err(error) => debug!(seq, %error, "could not open the queue stream"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, routine, w};
    use drover_protocol::{LocalRunId, RetryBackoff};

    fn child_spec(parent: &RunId, local: &str) -> RunSpec {
        let mut spec = RunSpec::new(routine("r"));
        spec.parent_run_id = Some(parent.clone());
        spec.local_run_id = Some(LocalRunId::parse(local).expect("valid"));
        spec
    }

    fn child_of(parent: &RunId) -> Origin {
        Origin::Child {
            worker: w("a"),
            parent: parent.clone(),
        }
    }

    fn client_spec(key: Option<&str>) -> RunSpec {
        let mut spec = RunSpec::new(routine("r"));
        spec.idempotency_key = key.map(str::to_owned);
        spec
    }

    #[test]
    fn the_same_parent_and_local_run_id_name_the_same_child() {
        let parent = RunId::generate();
        let first = run_key(&child_spec(&parent, "step-1"), &child_of(&parent));
        let again = run_key(&child_spec(&parent, "step-1"), &child_of(&parent));
        assert!(first
            .as_deref()
            .is_some_and(|key| key.starts_with("child.")));
        assert_eq!(first, again, "a retried parent asking again");
        let other_step = run_key(&child_spec(&parent, "step-2"), &child_of(&parent));
        assert_ne!(first, other_step);
        let other_parent = RunId::generate();
        let elsewhere = run_key(
            &child_spec(&other_parent, "step-1"),
            &child_of(&other_parent),
        );
        assert_ne!(first, elsewhere);
    }

    #[test]
    fn a_childs_key_ignores_any_idempotency_key() {
        let parent = RunId::generate();
        let mut keyed = child_spec(&parent, "step-1");
        keyed.idempotency_key = Some("k".to_owned());
        assert_eq!(
            run_key(&keyed, &child_of(&parent)),
            run_key(&child_spec(&parent, "step-1"), &child_of(&parent))
        );
    }

    #[test]
    fn a_client_key_is_its_idempotency_key_if_any() {
        let key = run_key(&client_spec(Some("order-7")), &Origin::Client);
        assert!(key.as_deref().is_some_and(|key| key.starts_with("idem.")));
        assert_eq!(key, run_key(&client_spec(Some("order-7")), &Origin::Client));
        assert_ne!(key, run_key(&client_spec(Some("order-8")), &Origin::Client));
        assert_eq!(run_key(&client_spec(None), &Origin::Client), None);
    }

    #[test]
    fn key_parts_cannot_run_into_each_other() {
        assert_ne!(hashed(&["ab", "c"]), hashed(&["a", "bc"]));
    }

    #[test]
    fn a_new_run_is_pending_in_the_trace_of_its_request() {
        const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = RunId::generate();
        let trace = TraceContext {
            traceparent: Some(TRACEPARENT.to_owned()),
            tracestate: Some("vendor=a".to_owned()),
        };
        let record = new_record(
            RunId::generate(),
            child_spec(&parent, "s"),
            &child_of(&parent),
            trace,
            at(3),
        );
        assert_eq!(record.status, RunStatus::Pending);
        assert_eq!(
            (record.attempt, record.retries, record.reassignments),
            (0, 0, 0)
        );
        assert_eq!(record.created_at, at(3));
        assert_eq!(record.transitions.len(), 1);
        assert_eq!(record.requested_by, Some(w("a")));
        assert_eq!(record.parent_run_id, Some(parent));
        assert_eq!(
            record.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(record.tracestate.as_deref(), Some("vendor=a"));
        let root = new_record(
            RunId::generate(),
            client_spec(None),
            &Origin::Client,
            TraceContext::default(),
            at(3),
        );
        assert!(
            root.traceparent.is_some(),
            "a run starts a trace of its own"
        );
        assert_eq!(root.requested_by, None);
    }

    #[test]
    fn the_wait_deadline_counts_from_creation() {
        let record = pending(0);
        assert_eq!(wait_deadline(&record), Some(at(100)));
        let mut unbounded = pending(0);
        unbounded.max_wait_time_ms = None;
        assert_eq!(wait_deadline(&unbounded), None);
    }

    #[test]
    fn a_backoff_must_grow_and_stay_under_its_cap() {
        let mut spec = client_spec(None);
        spec.retry_backoff = Some(RetryBackoff {
            initial_ms: 500,
            multiplier: 2.0,
            max_ms: 100,
        });
        assert_eq!(
            validate(&spec, false),
            Err(SpecError::BackoffMaxBelowInitial {
                initial_ms: 500,
                max_ms: 100
            })
        );
        for multiplier in [0.5, f64::NAN, f64::INFINITY] {
            spec.retry_backoff = Some(RetryBackoff {
                initial_ms: 10,
                multiplier,
                max_ms: 100,
            });
            assert_eq!(validate(&spec, false), Err(SpecError::BackoffMultiplier));
        }
        spec.retry_backoff = Some(RetryBackoff {
            initial_ms: 10,
            multiplier: 1.0,
            max_ms: 10,
        });
        assert_eq!(validate(&spec, false), Ok(()));
    }

    #[test]
    fn only_a_worker_asks_for_children_and_names_them() {
        let parent = RunId::generate();
        assert_eq!(
            validate(&child_spec(&parent, "s"), false),
            Err(SpecError::ParentFromClient)
        );
        assert_eq!(validate(&child_spec(&parent, "s"), true), Ok(()));
        assert_eq!(
            validate(&client_spec(None), true),
            Err(SpecError::ParentMissing)
        );
        let mut nameless = child_spec(&parent, "s");
        nameless.local_run_id = None;
        assert_eq!(validate(&nameless, true), Err(SpecError::LocalRunIdMissing));
    }
}
